#!/usr/bin/env bash
# What an idle control plane costs in S3 requests (`just bench-idle`): Netsy clusters of 1
# and 3 nodes on LocalStack (started if needed) under `netsy bench --workload idle` (each
# node's kubelet and apiserver renewing their leases every 10 s, the controller-manager and
# scheduler leaders every 2 s, an event every 5 s), the S3 requests of every node counted
# from their metrics and priced at S3 Standard and S3 Express One Zone request prices.
# Extra arguments go to every `netsy serve` (e.g. --heartbeat-prefixes "" to see the cost
# without the heartbeat class). SECONDS per run: ${IDLE_SECONDS:-120}; cluster sizes:
# ${IDLE_NODES:-"1 3"}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-target/bench}
mkdir -p "$out"
seconds=${IDLE_SECONDS:-120}
cargo build --release --quiet
bin=$PWD/target/release/netsy
scripts/localstack.sh start >/dev/null
export AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1
work=$(mktemp -d)
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap 'stop_all; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
ready() { # port
  for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$1/readyz" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "bench-idle.sh: node on $1 did not become ready" >&2; exit 1
}
for nodes in ${IDLE_NODES:-1 3}; do
  prefix="s3://netsy-test/idle-$nodes-$(date +%s)"
  endpoints=()
  for i in $(seq 1 "$nodes"); do
    p=$(port)
    RUST_LOG=warn "$bin" serve --store "$prefix" --s3-endpoint http://127.0.0.1:4566 \
      --s3-force-path-style --name "idle$i" --listen-client-addr "127.0.0.1:$p" "$@" \
      >"$work/node-$nodes-$i.log" 2>&1 &
    pids+=($!)
    ready "$p"
    endpoints+=("127.0.0.1:$p")
  done
  # The cluster settles (followers connect, the first snapshot check passes).
  sleep 5
  target="netsy-${nodes}node=$(IFS=,; echo "${endpoints[*]}")"
  "$bin" bench --target "$target" --workload idle --duration-seconds "$seconds" \
    --json "$out/idle-$nodes.json" 2>/dev/null | tail -n +2
  stop_all
done
