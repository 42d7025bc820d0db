#!/usr/bin/env bash
# Netsy next to etcd, same client, same machine, same run (`just bench`):
#   1. builds the release binary;
#   2. starts a fresh etcd (the Debian etcd-server package, 3.4), a fresh kine on SQLite (the
#      datastore the Go Netsy compares itself with; built from github.com/k3s-io/kine by
#      scripts/kube-build.sh refs, skipped with a note if Go is missing), and fresh Netsy
#      nodes on the local directory store, on the same store with every request delayed as
#      S3 Standard's (25 ms) and S3 Express One Zone's (5 ms) would be (a mean of L ms:
#      --store-latency-ms 0.8 L plus up to --store-jitter-ms 0.4 L), and, if LocalStack
#      answers (scripts/localstack.sh start),
#      on LocalStack;
#   3. runs `netsy bench` against all of them (ratios are to etcd) and the in-process
#      `startup` workload; then `etcdctl check perf --load=l` against etcd, Netsy (file) and
#      examples/noop_kv.rs, a gRPC server that stores nothing: the most any server can reach
#      with that client on this machine (etcdctl's own CPU time is printed with each);
#   4. runs etcd's own benchmark tool (go.etcd.io/etcd/v3/tools/benchmark, built by
#      scripts/kube-build.sh refs-benchmark) with the configurations etcd's performance
#      docs publish, against etcd and Netsy (file): figures comparable with etcd's.
# Arguments go to `netsy bench` (e.g. --duration-seconds 5 --workload put,get);
# BENCH_TARGETS_ONLY=1 skips the startup workload and the etcdctl checks.
# Results: a table on stdout, JSON in ${BENCH_OUT:-target/bench}.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${BENCH_OUT:-target/bench}
mkdir -p "$out"
cargo build --release --quiet
cargo build --release --quiet --example noop_kv
bin=$PWD/target/release/netsy
command -v etcd >/dev/null || { echo "bench.sh: etcd is not installed (apt-get install etcd-server etcd-client)" >&2; exit 1; }

work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_health() { # url name
  for _ in $(seq 1 300); do curl -fsS "$1/health" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "bench.sh: $2 did not become healthy" >&2; exit 1
}

# A fresh etcd and a fresh Netsy on the directory store, named NAME: sets etcd_port and
# file_port.
start_pair() { # name
  etcd_port=$(port); local peer_port; peer_port=$(port)
  etcd --name "$1" --data-dir "$work/etcd-$1" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" \
    --initial-cluster "$1=http://127.0.0.1:$peer_port" --quota-backend-bytes $((8 * 1024 * 1024 * 1024)) \
    >"$work/etcd-$1.log" 2>&1 &
  pids+=($!)
  file_port=$(port)
  RUST_LOG=warn "$bin" serve --store "$work/netsy-$1" --listen-client-addr "127.0.0.1:$file_port" >"$work/netsy-$1.log" 2>&1 &
  pids+=($!)
}

start_pair bench
targets=(--target "etcd=127.0.0.1:$etcd_port" --target "netsy-file=127.0.0.1:$file_port")
wait_health "http://127.0.0.1:$etcd_port" etcd
wait_health "http://127.0.0.1:$file_port" "netsy (file)"
if refs=$(scripts/kube-build.sh refs 2>"$work/refs.log"); then
  kine_port=$(port)
  mkdir -p "$work/kine"
  "$refs/kine" --endpoint "sqlite://$work/kine/state.db" --listen-address "127.0.0.1:$kine_port" \
    --metrics-bind-address 0 >"$work/kine.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 1 150); do ETCDCTL_API=3 etcdctl --endpoints "127.0.0.1:$kine_port" endpoint health >/dev/null 2>&1 && break; sleep 0.2; done
  targets+=(--target "kine-sqlite=127.0.0.1:$kine_port")
else
  echo "bench.sh: kine could not be built (scripts/kube-build.sh refs: $(tail -1 "$work/refs.log")); skipping it" >&2
fi
for lat in 25 5; do
  lat_port=$(port)
  RUST_LOG=warn "$bin" serve --store "$work/netsy-$lat" --listen-client-addr "127.0.0.1:$lat_port" \
    --store-latency-ms "$(python3 -c "print($lat * 0.8)")" --store-jitter-ms "$(python3 -c "print($lat * 0.4)")" \
    >"$work/netsy-$lat.log" 2>&1 &
  pids+=($!)
  wait_health "http://127.0.0.1:$lat_port" "netsy (+$lat ms)"
  targets+=(--target "netsy-${lat}ms=127.0.0.1:$lat_port")
done
if scripts/localstack.sh status >/dev/null 2>&1; then
  s3_port=$(port)
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 RUST_LOG=warn \
    "$bin" serve --store "s3://netsy-test/bench-$(date +%s)" --s3-endpoint http://127.0.0.1:4566 \
    --s3-force-path-style --listen-client-addr "127.0.0.1:$s3_port" >"$work/netsy-s3.log" 2>&1 &
  pids+=($!)
  wait_health "http://127.0.0.1:$s3_port" "netsy (LocalStack)"
  targets+=(--target "netsy-s3=127.0.0.1:$s3_port")
else
  echo "bench.sh: LocalStack is not running; skipping the S3 target (scripts/localstack.sh start)" >&2
fi

echo "# machine: $(nproc) cores, $(free -g | awk '/Mem:/{print $2}') GiB, $(etcd --version | head -1), netsy $("$bin" --version | cut -d' ' -f2)"
"$bin" bench "${targets[@]}" --json "$out/bench.json" "$@"
# BENCH_TARGETS_ONLY=1: only the workloads above (repeated runs for a range).
[ "${BENCH_TARGETS_ONLY:-0}" = 1 ] && exit 0
"$bin" bench --workload startup --json "$out/startup.json"

noop_port=$(port)
target/release/examples/noop_kv "127.0.0.1:$noop_port" >"$work/noop.log" 2>&1 &
pids+=($!)
export ETCDCTL_API=3
TIMEFORMAT='etcdctl CPU: %U s user, %S s system in %R s'
for t in "etcd=$etcd_port" "netsy-file=$file_port" "noop-grpc=$noop_port"; do
  echo "# etcdctl check perf --load=l on ${t%%=*}"
  time (etcdctl --endpoints="127.0.0.1:${t#*=}" check perf --load=l 2>&1 | grep -E '^(PASS|FAIL)' || true)
done

if tool=$(scripts/kube-build.sh refs-benchmark 2>"$work/benchmark-build.log"); then
  # Fresh servers, alone: the ones above hold what the workloads wrote.
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  pids=()
  echo "# etcd's benchmark tool (the configurations of etcd's performance docs), fresh etcd and Netsy (file)"
  start_pair tool
  wait_health "http://127.0.0.1:$etcd_port" etcd
  wait_health "http://127.0.0.1:$file_port" "netsy (file)"
  for t in "etcd=$etcd_port" "netsy-file=$file_port"; do
    etcdctl --endpoints="127.0.0.1:${t#*=}" put foo bar >/dev/null
  done
  while IFS='|' read -r name args; do
    for t in "etcd=$etcd_port" "netsy-file=$file_port"; do
      printf '%-32s %-11s ' "$name" "${t%%=*}"
      # shellcheck disable=SC2086
      "$tool/benchmark" --endpoints="127.0.0.1:${t#*=}" $args 2>&1 |
        awk '/Requests\/sec/{r=$2} /Average/{a=$2} /Slowest/{s=$2} END{printf "%9.0f req/s  average %.4f s  slowest %.4f s\n", r, a, s}'
    done
  done <<'CONFIGS'
put, 1 connection, 1 client|--conns=1 --clients=1 put --key-size=8 --sequential-keys --total=10000 --val-size=256
put, 100 connections, 1000 clients|--conns=100 --clients=1000 put --key-size=8 --sequential-keys --total=100000 --val-size=256
range l, 1 connection, 1 client|--conns=1 --clients=1 range foo --consistency=l --total=10000
range l, 100 conns, 1000 clients|--conns=100 --clients=1000 range foo --consistency=l --total=100000
range s, 1 connection, 1 client|--conns=1 --clients=1 range foo --consistency=s --total=10000
range s, 100 conns, 1000 clients|--conns=100 --clients=1000 range foo --consistency=s --total=100000
CONFIGS
else
  echo "bench.sh: etcd's benchmark tool could not be built (scripts/kube-build.sh refs-benchmark: $(tail -1 "$work/benchmark-build.log")); skipping it" >&2
fi
