#!/usr/bin/env bash
# etcd client libraries' own integration suites, run against etcd and against Netsy
# (`just client-suites`):
#   - etcd-client (Rust, the crate's tests/ as published on crates.io, the version
#     Cargo.lock pins), on 127.0.0.1:2379 as its tests expect;
#   - aetcd (Python, its sdist's tests/integration from PyPI, in a venv under
#     ~/.cache/netsy), pointed at the server by TEST_ETCD_HTTP_URL.
# Each runs as its upstream CI runs it (a root user with the upstream password, auth
# tokens living 2 s), first against etcd 3.7 (tests/refs), then against Netsy. Prints each
# suite's results side by side and exits non-zero if a test that passes on etcd does not
# pass on Netsy. Port 2379 must be free.
set -euo pipefail
cd "$(dirname "$0")/.."
here=$PWD
refs=$(scripts/kube-build.sh refs)
cargo build --quiet
netsy=$here/target/debug/netsy
work=$here/target/client-suites
mkdir -p "$work"
pids=()
stop_all() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; pids=(); }
trap stop_all EXIT
wait_health() {
  for _ in $(seq 1 300); do curl -fsS "http://$1/health" >/dev/null 2>&1 && return; sleep 0.2; done
  echo "client-suites: $2 did not start" >&2; exit 1
}
start() { # etcd|netsy [root]
  rm -rf "$work/data"
  if [ "$1" = etcd ]; then
    "$refs/etcd" --data-dir "$work/data" --listen-client-urls http://127.0.0.1:2379 \
      --advertise-client-urls http://127.0.0.1:2379 --listen-peer-urls http://127.0.0.1:23800 \
      --initial-advertise-peer-urls http://127.0.0.1:23800 --initial-cluster default=http://127.0.0.1:23800 \
      --auth-token-ttl 2 >"$work/etcd.log" 2>&1 &
  else
    "$netsy" serve --store "file://$work/data" --listen-client-addr 127.0.0.1:2379 \
      --auth-token-ttl 2 >"$work/netsy.log" 2>&1 &
  fi
  pids+=($!)
  wait_health 127.0.0.1:2379 "$1"
  # etcd-client's setup: a root user with its password, auth left disabled (aetcd's
  # fixtures make their own).
  if [ "${2:-}" = root ]; then
    "$refs/etcdctl" --endpoints=127.0.0.1:2379 user add root --new-user-password=rootpwd >/dev/null
    "$refs/etcdctl" --endpoints=127.0.0.1:2379 user grant-role root root >/dev/null
  fi
}

# etcd-client (Rust).
version=$(awk '/^name = "etcd-client"/ {getline; print $3}' Cargo.lock | tr -d '"')
cargo fetch --quiet
src=$(ls -d "${CARGO_HOME:-$HOME/.cargo}"/registry/src/*/etcd-client-"$version" | head -n 1)
rm -rf "$work/etcd-client" && cp -r "$src" "$work/etcd-client"
echo "client-suites: building etcd-client $version's tests" >&2
bins=$(cd "$work/etcd-client" && PROTOC="$here/scripts/protoc" CARGO_TARGET_DIR="$work/target" \
  cargo test --tests --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m=json.loads(l)
    if m.get("reason")=="compiler-artifact" and m.get("executable") and m["target"]["kind"]==["test"]:
        print(m["executable"])')
run_rust() { # label
  for b in $bins; do (cd "$work/etcd-client" && "$b" --test-threads 1 2>&1 || true); done |
    sed -n 's/^test \([a-z_0-9:]*\) \.\.\. \(ok\|FAILED\|ignored.*\)$/\1 \2/p' | sort >"$work/rust-$1.txt"
}
# aetcd (Python).
venv=${XDG_CACHE_HOME:-$HOME/.cache}/netsy/client-suites-venv
wants="aetcd==1.0.0 pytest pytest-asyncio pytest-mock"
if [ "$(cat "$venv/.installed" 2>/dev/null)" != "$wants" ]; then
  echo "client-suites: installing $wants into $venv" >&2
  python3 -m venv "$venv"
  # shellcheck disable=SC2086
  "$venv/bin/pip" install --quiet $wants
  echo "$wants" >"$venv/.installed"
fi
if [ ! -d "$work/aetcd-1.0.0" ]; then
  "$venv/bin/pip" download --quiet --no-deps --no-binary :all: aetcd==1.0.0 -d "$work"
  tar xzf "$work/aetcd-1.0.0.tar.gz" -C "$work"
fi
run_python() { # label
  # Its fixtures call `etcdctl` (Debian's 3.4: `snapshot status` left etcdctl in 3.6).
  (cd "$work/aetcd-1.0.0" && TEST_ETCD_HTTP_URL=http://127.0.0.1:2379 \
    "$venv/bin/python" -m pytest -p no:cacheprovider -o addopts="" -q -rA tests/integration 2>&1 || true) |
    sed -n 's/^\(PASSED\|FAILED\|ERROR\|SKIPPED\) \([^ ]*\).*/\2 \1/p' | sort >"$work/python-$1.txt"
}

for target in etcd netsy; do
  echo "client-suites: running both suites against $target" >&2
  start "$target" root; run_rust "$target"; stop_all
  start "$target"; run_python "$target"; stop_all
done

status=0
for suite in rust python; do
  pass="ok|PASSED"
  etcd_ok=$(grep -E " ($pass)$" "$work/$suite-etcd.txt" | cut -d' ' -f1 | sort)
  netsy_ok=$(grep -E " ($pass)$" "$work/$suite-netsy.txt" | cut -d' ' -f1 | sort)
  echo "== $suite suite: $(echo "$etcd_ok" | grep -c .) pass on etcd, $(echo "$netsy_ok" | grep -c .) on Netsy"
  join -a1 -a2 -e '-' -o 0,1.2,2.2 "$work/$suite-etcd.txt" "$work/$suite-netsy.txt" |
    awk '{printf "  %-70s etcd: %-8s netsy: %s\n", $1, $2, $3}'
  missing=$(comm -23 <(echo "$etcd_ok") <(echo "$netsy_ok"))
  if [ -n "$missing" ]; then
    echo "client-suites: pass on etcd but not on Netsy ($suite):" >&2
    echo "$missing" | sed 's/^/  /' >&2
    status=1
  fi
done
exit $status
