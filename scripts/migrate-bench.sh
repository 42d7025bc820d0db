#!/usr/bin/env bash
# The downtime of moving a cluster's datastore from etcd to Netsy and back, step by step,
# as the migration guide does it (`just migrate-bench [OBJECTS] [VALUE_BYTES]`):
#   1. an etcd 3.7 (tests/refs) holding OBJECTS keys of VALUE_BYTES (Kubernetes-like names,
#      written 100 to a transaction), then each key updated once more and compacted;
#   2. "apiservers stopped": etcdctl snapshot save; netsy snapshot restore into a directory
#      (and into LocalStack if it answers); netsy serve until /readyz; etcdctl endpoint
#      hashkv on both must print the same number;
#   3. and back: etcdctl snapshot save against Netsy; etcdutl snapshot restore; etcd started
#      until /health; hashkv again.
# Prints each step's seconds and the total of each direction (the downtime: from the
# apiservers' stop to a datastore they can start on, verified).
set -euo pipefail
cd "$(dirname "$0")/.."
objects=${1:-50000}
value_bytes=${2:-2048}
refs=$(scripts/kube-build.sh refs)
cargo build --release --quiet
netsy=$PWD/target/release/netsy
etcd=$refs/etcd etcdctl=$refs/etcdctl etcdutl=$refs/etcdutl
work=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
secs() { python3 -c "print(f'{$2 - $1:.2f}')"; }
wait_url() { # url what
  for _ in $(seq 1 600); do curl -fsS "$1" >/dev/null 2>&1 && return; sleep 0.1; done
  echo "migrate-bench: $2 did not come up" >&2; exit 1
}
start_etcd() { # data-dir
  local client peer
  client=$(port); peer=$(port)
  "$etcd" --name m --data-dir "$1" --listen-client-urls "http://127.0.0.1:$client" \
    --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer" \
    --initial-advertise-peer-urls "http://127.0.0.1:$peer" --initial-cluster "m=http://127.0.0.1:$peer" \
    >"$1.log" 2>&1 &
  pids+=($!)
  etcd_peer=http://127.0.0.1:$peer
  etcd_addr=127.0.0.1:$client
  wait_url "http://$etcd_addr/health" etcd
}
hashkv() { "$etcdctl" --endpoints="$1" endpoint hashkv -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["HashKV"]["hash"])'; }
step() { printf '  %-44s %6s s\n' "$1" "$2"; }

echo "migrate-bench: loading $objects objects of $value_bytes bytes into etcd $("$etcd" --version | head -1 | awk '{print $3}')" >&2
start_etcd "$work/etcd"
src=$etcd_addr
value=$(head -c $((value_bytes * 3 / 4)) /dev/urandom | base64 -w0)
for round in 1 2; do
  for ((i = 0; i < objects; i += 100)); do
    {
      echo
      for ((j = i; j < i + 100 && j < objects; j++)); do
        echo "put /registry/configmaps/ns$((j % 50))/cm-$j $round$value"
      done
      echo
      echo
    } | "$etcdctl" --endpoints="$src" txn >/dev/null
  done
done
rev=$("$etcdctl" --endpoints="$src" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["header"]["revision"])')
"$etcdctl" --endpoints="$src" compact "$((rev - 100))" >/dev/null
size=$("$etcdctl" --endpoints="$src" endpoint status -w json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["Status"]["dbSize"])')
echo "etcd -> Netsy ($objects objects, revision $rev, etcd db $((size / 1048576)) MiB)"
t0=$(now)
a=$(now); "$etcdctl" --endpoints="$src" snapshot save "$work/etcd.db" >/dev/null 2>&1; b=$(now)
step "etcdctl snapshot save (from etcd)" "$(secs "$a" "$b")"
a=$(now); "$netsy" snapshot restore "$work/etcd.db" --store "file://$work/netsy" >/dev/null 2>&1; b=$(now)
step "netsy snapshot restore (directory)" "$(secs "$a" "$b")"
nport=$(port)
a=$(now)
"$netsy" serve --store "file://$work/netsy" --listen-client-addr "127.0.0.1:$nport" >"$work/netsy.log" 2>&1 &
pids+=($!)
wait_url "http://127.0.0.1:$nport/readyz" netsy
b=$(now)
step "netsy serve until /readyz" "$(secs "$a" "$b")"
a=$(now); h1=$(hashkv "$src"); h2=$(hashkv "127.0.0.1:$nport"); b=$(now)
step "hashkv on both ($h1, $h2)" "$(secs "$a" "$b")"
[ "$h1" = "$h2" ] || { echo "migrate-bench: HashKV differs" >&2; exit 1; }
step "total (downtime)" "$(secs "$t0" "$(now)")"
if curl -fsS http://127.0.0.1:4566/_localstack/health >/dev/null 2>&1; then
  prefix=migrate-bench-$(date +%s)
  a=$(now)
  AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    "$netsy" snapshot restore "$work/etcd.db" --store "s3://netsy-test/$prefix" \
    --s3-endpoint http://127.0.0.1:4566 --s3-force-path-style >/dev/null 2>&1
  b=$(now)
  step "(netsy snapshot restore into LocalStack)" "$(secs "$a" "$b")"
fi

echo "Netsy -> etcd"
t0=$(now)
a=$(now); "$etcdctl" --endpoints="127.0.0.1:$nport" snapshot save "$work/netsy.db" >/dev/null 2>&1; b=$(now)
step "etcdctl snapshot save (from Netsy)" "$(secs "$a" "$b")"
a=$(now)
peer_port=$(port)
"$etcdutl" snapshot restore "$work/netsy.db" --data-dir "$work/back" --name m \
  --initial-cluster "m=http://127.0.0.1:$peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" >/dev/null 2>&1
b=$(now)
step "etcdutl snapshot restore" "$(secs "$a" "$b")"
a=$(now)
client=$(port)
"$etcd" --name m --data-dir "$work/back" --listen-client-urls "http://127.0.0.1:$client" \
  --advertise-client-urls "http://127.0.0.1:$client" --listen-peer-urls "http://127.0.0.1:$peer_port" \
  --initial-advertise-peer-urls "http://127.0.0.1:$peer_port" --initial-cluster "m=http://127.0.0.1:$peer_port" \
  >"$work/back.log" 2>&1 &
pids+=($!)
wait_url "http://127.0.0.1:$client/health" "restored etcd"
b=$(now)
step "etcd start until /health" "$(secs "$a" "$b")"
a=$(now); h3=$(hashkv "127.0.0.1:$client"); b=$(now)
step "hashkv ($h3)" "$(secs "$a" "$b")"
[ "$h3" = "$h2" ] || { echo "migrate-bench: HashKV differs after the way back" >&2; exit 1; }
step "total (downtime)" "$(secs "$t0" "$(now)")"
