#!/usr/bin/env bash
# Starts LocalStack's S3 on 127.0.0.1:4566 (Docker compose when a Docker engine answers,
# else on the host from a pinned Python venv), waits until it is healthy, and creates the
# bucket. Idempotent: if LocalStack already answers, it only ensures the bucket.
#
#   scripts/localstack.sh [start|stop|status]
#
# Env: NETSY_LOCALSTACK_VENV (default ~/.cache/netsy/localstack-venv), NETSY_TEST_BUCKET
# (default netsy-test), LOCALSTACK_LOG (default /tmp/netsy-localstack.log).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
endpoint=http://127.0.0.1:4566
bucket=${NETSY_TEST_BUCKET:-netsy-test}
venv=${NETSY_LOCALSTACK_VENV:-$HOME/.cache/netsy/localstack-venv}
log=${LOCALSTACK_LOG:-/tmp/netsy-localstack.log}
pidfile=/tmp/netsy-localstack.pid

healthy() { curl -fsS "$endpoint/_localstack/health" 2>/dev/null | grep -q '"s3": *"\(available\|running\)"'; }

ensure_bucket() {
  # A plain path-style PUT creates the bucket; 409 (already owned) is fine.
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$endpoint/$bucket")
  case "$code" in 200|409) ;; *) echo "localstack: creating bucket $bucket answered HTTP $code" >&2; exit 1 ;; esac
}

install_venv() {
  if [ ! -x "$venv/bin/python" ] || ! "$venv/bin/python" -c 'import localstack' 2>/dev/null; then
    echo "localstack: installing localstack-core 4.4.0 into $venv (pinned, see localstack/requirements.txt)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/localstack/requirements.txt"
  fi
}

start() {
  if healthy; then ensure_bucket; echo "localstack: already running at $endpoint"; return; fi
  if docker info >/dev/null 2>&1; then
    docker compose -f "$here/localstack/docker-compose.yml" up -d
  else
    install_venv
    # Only the command goes to the background (`cd x && cmd &` would background a subshell,
    # and $! would name it, not LocalStack); nohup execs, so $! is LocalStack's own pid.
    (cd /tmp
     SERVICES=s3 GATEWAY_LISTEN=127.0.0.1:4566 LOCALSTACK_HOST=127.0.0.1:4566 \
       nohup "$venv/bin/python" -m localstack.runtime.main >"$log" 2>&1 &
     echo $! >"$pidfile")
  fi
  for _ in $(seq 1 120); do
    if healthy; then ensure_bucket; echo "localstack: S3 ready at $endpoint, bucket $bucket"; return; fi
    sleep 1
  done
  echo "localstack: not healthy after 120 s; last log lines:" >&2
  tail -n 30 "$log" >&2 || true
  exit 1
}

stop() {
  if docker info >/dev/null 2>&1; then docker compose -f "$here/localstack/docker-compose.yml" down || true; fi
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
  # One started by an older copy of this script recorded the wrong pid: find it by its
  # command line (only the venv's LocalStack, never another Python).
  local running="$venv/bin/python -m localstack.runtime.main"
  pkill -f "$running" 2>/dev/null || true
  for _ in $(seq 1 30); do
    if ! healthy && ! pgrep -f "$running" >/dev/null; then
      echo "localstack: stopped"; return
    fi
    sleep 1
  done
  echo "localstack: still answering at $endpoint after 30 s" >&2
  exit 1
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo running; else echo stopped; exit 1; fi ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
