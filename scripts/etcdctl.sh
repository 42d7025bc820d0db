#!/usr/bin/env bash
# etcdctl wired to the dev Netsy: https with the certificates in ./certs when the endpoint
# speaks TLS (`just dev`), plain http otherwise (`just run`).
#
#   scripts/etcdctl.sh put foo bar
#   scripts/etcdctl.sh endpoint status -w table
#
# Env: NETSY_ENDPOINT (default 127.0.0.1:2379), NETSY_CERTS (default ./certs).
set -euo pipefail
endpoint=${NETSY_ENDPOINT:-127.0.0.1:2379}
certs=${NETSY_CERTS:-certs}
export ETCDCTL_API=3
if [[ -s $certs/client.pem ]] && curl -fsS --max-time 2 --cacert "$certs/ca.pem" \
    --cert "$certs/client.pem" --key "$certs/client-key.pem" "https://$endpoint/livez" >/dev/null 2>&1; then
  exec etcdctl --endpoints="https://$endpoint" --cacert="$certs/ca.pem" \
    --cert="$certs/client.pem" --key="$certs/client-key.pem" "$@"
fi
exec etcdctl --endpoints="http://$endpoint" "$@"
