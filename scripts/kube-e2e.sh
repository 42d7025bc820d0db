#!/usr/bin/env bash
# A real Kubernetes control plane on Netsy, driven by kubectl (tests/kube/e2e):
# kube-apiserver, kube-controller-manager and kube-scheduler built from k8s.io/kubernetes by
# scripts/kube-build.sh.
#
#   scripts/kube-e2e.sh [VERSION] [STORE] [TLS]
#
# VERSION: 1.37 (default) or 1.34. STORE: dir (default) or s3 (LocalStack, which must be
# running: scripts/localstack.sh start). TLS: mtls (default; Netsy requires client
# certificates and kube-apiserver presents one) or plain. NETSY_BIN defaults to
# target/debug/netsy. The output is kept in target/kube/e2e-VERSION-STORE-TLS.log.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
version=${1:-1.37}
store=${2:-dir}
tls=${3:-mtls}
export NETSY_BIN=${NETSY_BIN:-$here/target/debug/netsy}
[ -x "$NETSY_BIN" ] || { echo "kube-e2e: no $NETSY_BIN (cargo build first)" >&2; exit 1; }
KUBE_BIN_DIR=$("$here/scripts/kube-build.sh" k8s "$version")
export KUBE_BIN_DIR KUBE_E2E_STORE=$store KUBE_E2E_TLS=$tls
flags=()
[ "$version" = 1.34 ] && flags=(-modfile=k8s-1.34.mod -tags k8s134)
log=$here/target/kube/e2e-$version-$store-$tls.log
echo "kube-e2e: Kubernetes $version control plane on Netsy ($store store, $tls)" >&2
cd "$here/tests/kube"
status=0
go test "${flags[@]}" -count=1 -v -timeout 20m ./e2e/ > "$log" 2>&1 || status=$?
grep -a -E "^ *--- (PASS|FAIL|SKIP)" "$log" >&2 || true
[ "$status" = 0 ] || { grep -a -v -E "^\s*[IWE][0-9]{4} " "$log" | tail -80 >&2; echo "kube-e2e: failed (log: $log)" >&2; }
exit "$status"
