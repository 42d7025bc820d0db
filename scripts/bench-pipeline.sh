#!/usr/bin/env bash
# Writes at S3-like latency (`just bench-pipeline`): a fresh Netsy on the in-memory store
# whose every request is delayed by a mean of L ms (--store-latency-ms 0.8 L plus up to
# --store-jitter-ms 0.4 L, uniform: 25 ms is about S3 Standard's PUT, 5 ms S3 Express One
# Zone's; the memory store, so that no local fsync is counted on top), for each number of
# chunk PUTs in flight; `netsy bench` puts with 1..256 clients and the Kubernetes-shaped workload
# with 16. Prints one table row per run and a summary (writes/s and p50 against one PUT).
# LATENCIES, DEPTHS, CLIENTS and SECONDS override the lists (space-separated).
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-target/bench}/pipeline
mkdir -p "$out"
rm -f "$out"/*.json
latencies=${LATENCIES:-"25 5"}
depths=${DEPTHS:-"1 4 8"}
clients_list=${CLIENTS:-"16 64 256"}
seconds=${SECONDS_PER_RUN:-10}
cargo build --release --quiet
bin=$PWD/target/release/netsy
work=$(mktemp -d)
pid=""
trap '[ -n "$pid" ] && kill "$pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$work"' EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
echo "# machine: $(nproc) cores, netsy $("$bin" --version | cut -d' ' -f2)"
for lat in $latencies; do
  base=$(python3 -c "print($lat * 0.8)")
  jitter=$(python3 -c "print($lat * 0.4)")
  for depth in $depths; do
    p=$(port)
    RUST_LOG=warn "$bin" serve --store memory:// --listen-client-addr "127.0.0.1:$p" \
      --store-latency-ms "$base" --store-jitter-ms "$jitter" --max-chunks-in-flight "$depth" \
      >"$work/netsy.log" 2>&1 &
    pid=$!
    for _ in $(seq 1 300); do curl -fsS "http://127.0.0.1:$p/readyz" >/dev/null 2>&1 && break; sleep 0.2; done
    name="${lat}ms-x$depth"
    for c in $clients_list; do
      "$bin" bench --target "$name=127.0.0.1:$p" --workload put --clients "$c" \
        --duration-seconds "$seconds" --json "$out/$name-put-$c.json" 2>/dev/null | tail -n +2
    done
    "$bin" bench --target "$name=127.0.0.1:$p" --workload kubernetes --clients 16 \
      --duration-seconds "$seconds" --json "$out/$name-kubernetes-16.json" 2>/dev/null | tail -n +2
    kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  done
done
python3 - "$out" <<'PY'
import glob, json, os, sys
rows = []
for f in sorted(glob.glob(os.path.join(sys.argv[1], "*.json"))):
    for o in json.load(open(f)):
        rows.append(o)
print("\n# summary: writes/s and p50 over the mean chunk PUT, per latency, PUTs in flight, workload, clients")
print(f"{'target':<10} {'workload':<11} {'clients':>7} {'writes/s':>9} {'p50 ms':>8} {'PUT ms':>7} {'p50/PUT':>8} {'PUTs/s':>7}")
for o in sorted(rows, key=lambda o: (o["target"], o["workload"], o["clients"])):
    put = o["extra"].get("mean_put_ms", 0)
    ratio = o["p50_ms"] / put if put else 0
    print(f"{o['target']:<10} {o['workload']:<11} {o['clients']:>7} {o['ops_per_sec']:>9.0f} {o['p50_ms']:>8.1f} {put:>7.1f} {ratio:>8.2f} {o['extra'].get('store_puts_per_sec', 0):>7.0f}")
PY
