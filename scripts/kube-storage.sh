#!/usr/bin/env bash
# Kubernetes' storage conformance suites (k8s.io/apiserver/pkg/storage/testing, run through
# kube-apiserver's etcd3 store: tests/kube/storage) against a datastore, and a count of
# passed / failed / skipped tests.
#
#   scripts/kube-storage.sh [VERSION] [TARGET]
#
# VERSION: 1.37 (default) or 1.34. TARGET: netsy (default; NETSY_BIN, else
# target/debug/netsy), etcd (embedded, the version the apiserver module pins) or kine
# (SQLite; built by scripts/kube-build.sh refs). Exits non-zero when a test failed.
# The full `go test -v` output is kept in target/kube/storage-VERSION-TARGET[-LABEL].log
# (KUBE_STORAGE_LABEL); kine takes KINE_ENDPOINT and KINE_ARGS, netsy NETSY_STORAGE_S3=1 (on
# LocalStack) and NETSY_STORAGE_FOLLOWER=1 (through a follower) (tests/kube/storage).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-1.37}
target=${2:-netsy}
flags=()
case "$version" in
  1.37) ;;
  1.34) flags=(-modfile=k8s-1.34.mod -tags k8s134) ;;
  *) echo "kube-storage: unknown Kubernetes version $version (1.37 or 1.34)" >&2; exit 2 ;;
esac
case "$target" in
  netsy) export NETSY_BIN=${NETSY_BIN:-$here/target/debug/netsy}
    [ -x "$NETSY_BIN" ] || { echo "kube-storage: no $NETSY_BIN (cargo build first)" >&2; exit 1; } ;;
  kine) export KINE_BIN=${KINE_BIN:-$("$here/scripts/kube-build.sh" refs)/kine} ;;
  etcd) ;;
  *) echo "kube-storage: unknown target $target (netsy, etcd or kine)" >&2; exit 2 ;;
esac
mkdir -p "$here/target/kube"
log=$here/target/kube/storage-$version-$target${KUBE_STORAGE_LABEL:+-$KUBE_STORAGE_LABEL}.log
cd "$here/tests/kube"
echo "kube-storage: Kubernetes $version storage suites against $target" >&2
status=0
KUBE_STORAGE_TARGET=$target go test "${flags[@]}" -count=1 -v -timeout 30m ./storage/ > "$log" 2>&1 || status=$?
count() { grep -a -c -E "^ *--- $1:" "$log" || true; }
passed=$(count PASS); failed=$(count FAIL); skipped=$(count SKIP)
echo "kube-storage: Kubernetes $version, $target: $passed passed, $failed failed, $skipped skipped (tests and subtests; log: $log)" >&2
if [ "$status" != 0 ]; then
  grep -a -E "^ *--- FAIL:" "$log" | head -40 >&2
  tail -5 "$log" >&2
fi
exit "$status"
