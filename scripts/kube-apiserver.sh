#!/usr/bin/env bash
# Runs a real kube-apiserver (container image, needs a Docker engine) against the dev Netsy
# started by `just dev` (https://127.0.0.1:2379 with the client certificate in ./certs), and
# prints how to reach it with kubectl. Stop it with Ctrl-C.
#
# Env: KUBE_VERSION (default v1.31.4), NETSY_ENDPOINT (127.0.0.1:2379), NETSY_CERTS (./certs).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${KUBE_VERSION:-v1.31.4}
endpoint=${NETSY_ENDPOINT:-127.0.0.1:2379}
certs=$(cd "${NETSY_CERTS:-certs}" && pwd)
docker info >/dev/null 2>&1 || { echo "kube-apiserver.sh: needs a running Docker engine" >&2; exit 1; }
[[ -s $certs/client.pem ]] || { echo "kube-apiserver.sh: no certificates in $certs; run scripts/certs.sh (just dev does)" >&2; exit 1; }

state=${XDG_CACHE_HOME:-$HOME/.cache}/netsy/kube-apiserver
mkdir -p "$state"
# Service-account signing key and a static admin token (development only).
[[ -s $state/sa.key ]] || openssl genrsa -out "$state/sa.key" 2048 2>/dev/null
openssl rsa -in "$state/sa.key" -pubout -out "$state/sa.pub" 2>/dev/null
echo "netsy-dev-token,admin,admin,system:masters" > "$state/tokens.csv"

echo "kube-apiserver.sh: kube-apiserver $version on https://127.0.0.1:6443, etcd at https://$endpoint"
echo "  kubectl --server=https://127.0.0.1:6443 --insecure-skip-tls-verify --token=netsy-dev-token get namespaces"
exec docker run --rm --name netsy-kube-apiserver --network host \
  -v "$certs:/certs:ro" -v "$state:/state" \
  "registry.k8s.io/kube-apiserver:$version" kube-apiserver \
  --etcd-servers="https://$endpoint" \
  --etcd-cafile=/certs/ca.pem --etcd-certfile=/certs/client.pem --etcd-keyfile=/certs/client-key.pem \
  --storage-backend=etcd3 \
  --bind-address=127.0.0.1 --secure-port=6443 --cert-dir=/state/serving \
  --service-cluster-ip-range=10.96.0.0/16 \
  --service-account-issuer=https://kubernetes.default.svc.cluster.local \
  --service-account-key-file=/state/sa.pub --service-account-signing-key-file=/state/sa.key \
  --token-auth-file=/state/tokens.csv --authorization-mode=RBAC \
  --enable-priority-and-fairness=false
