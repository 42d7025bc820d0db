#!/usr/bin/env bash
# Starts moto's S3 server on 127.0.0.1:4567 from a pinned Python venv (moto/requirements.txt)
# and creates the bucket: a second S3 implementation, so that the store conformance suite
# does not take a LocalStack quirk for S3's behaviour. Idempotent.
#
#   scripts/moto.sh [start|stop|status]
#
# Env: NETSY_MOTO_VENV (default ~/.cache/netsy/moto-venv), NETSY_TEST_BUCKET (default
# netsy-test), MOTO_LOG (default /tmp/netsy-moto.log).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
port=4567
endpoint=http://127.0.0.1:$port
bucket=${NETSY_TEST_BUCKET:-netsy-test}
venv=${NETSY_MOTO_VENV:-$HOME/.cache/netsy/moto-venv}
log=${MOTO_LOG:-/tmp/netsy-moto.log}
pidfile=/tmp/netsy-moto.pid

healthy() { curl -fsS -o /dev/null "$endpoint/moto-api/" 2>/dev/null; }

ensure_bucket() {
  code=$(curl -s -o /dev/null -w '%{http_code}' -X PUT "$endpoint/$bucket")
  case "$code" in 200|409) ;; *) echo "moto: creating bucket $bucket answered HTTP $code" >&2; exit 1 ;; esac
}

start() {
  if healthy; then ensure_bucket; echo "moto: already running at $endpoint"; return; fi
  if ! "$venv/bin/python" -c 'import moto' 2>/dev/null; then
    echo "moto: installing moto into $venv (pinned, see moto/requirements.txt)" >&2
    python3 -m venv "$venv"
    "$venv/bin/pip" install -q --disable-pip-version-check -r "$here/moto/requirements.txt"
  fi
  (cd /tmp
   nohup "$venv/bin/moto_server" -H 127.0.0.1 -p "$port" >"$log" 2>&1 &
   echo $! >"$pidfile")
  for _ in $(seq 1 60); do
    if healthy; then ensure_bucket; echo "moto: S3 ready at $endpoint, bucket $bucket"; return; fi
    sleep 0.5
  done
  echo "moto: not answering after 30 s; last log lines:" >&2
  tail -n 20 "$log" >&2 || true
  exit 1
}

stop() {
  if [ -f "$pidfile" ]; then kill "$(cat "$pidfile")" 2>/dev/null || true; rm -f "$pidfile"; fi
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) if healthy; then echo "moto: running at $endpoint"; else echo "moto: not running"; exit 1; fi ;;
  *) echo "usage: $0 [start|stop|status]" >&2; exit 2 ;;
esac
