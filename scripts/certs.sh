#!/usr/bin/env bash
# Development certificates for TLS and mutual TLS on Netsy's client port:
#   ca.pem / ca-key.pem          a CA (10 years)
#   server.pem / server-key.pem  server and client auth, SANs from NETSY_CERT_SANS
#   client.pem / client-key.pem  client auth (for etcdctl, kube-apiserver)
# Certificates start an hour in the past, so a peer whose clock is a little behind still
# accepts them. Existing files are kept unless --force is given.
#
# Usage: scripts/certs.sh [DIR] [--force]     (DIR defaults to ./certs)
# Env:   NETSY_CERT_SANS (default DNS:localhost,IP:127.0.0.1,IP:::1), NETSY_CERT_DAYS (365)
set -euo pipefail

dir=certs
force=0
for arg in "$@"; do
  case "$arg" in
    --force) force=1 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) dir=$arg ;;
  esac
done
command -v openssl >/dev/null || { echo "certs.sh: openssl is required (apt-get install openssl)" >&2; exit 1; }
mkdir -p "$dir"
if [[ $force == 0 && -s $dir/ca.pem && -s $dir/server.pem && -s $dir/client.pem ]]; then
  echo "certs.sh: certificates already in $dir (use --force to make new ones)"
  exit 0
fi

sans=${NETSY_CERT_SANS:-DNS:localhost,IP:127.0.0.1,IP:::1}
days=${NETSY_CERT_DAYS:-365}
start=$(date -u -d '-1 hour' +%y%m%d%H%M%SZ)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
: > "$work/index.txt"
echo 1000 > "$work/serial"
cat > "$work/ca.cnf" <<CNF
[ ca ]
default_ca = dev
[ dev ]
database = $work/index.txt
serial = $work/serial
new_certs_dir = $work
default_md = sha256
policy = any
unique_subject = no
copy_extensions = none
[ any ]
commonName = supplied
[ v3_ca ]
basicConstraints = critical,CA:true
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[ server ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = serverAuth,clientAuth
subjectAltName = $sans
authorityKeyIdentifier = keyid
[ client ]
basicConstraints = critical,CA:false
keyUsage = critical,digitalSignature,keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
CNF

newkey() { # name cn
  openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes \
    -keyout "$dir/$1-key.pem" -out "$work/$1.csr" -subj "/CN=$2" 2>/dev/null
  chmod 600 "$dir/$1-key.pem"
}
sign() { # name extensions days [selfsign]
  local extra=(-cert "$dir/ca.pem")
  [[ ${4:-} == selfsign ]] && extra=(-selfsign)
  openssl ca -batch -notext -config "$work/ca.cnf" "${extra[@]}" -keyfile "$dir/ca-key.pem" \
    -in "$work/$1.csr" -out "$dir/$1.pem" -extensions "$2" -startdate "$start" -days "$3" 2>/dev/null
}

newkey ca netsy-dev-ca
sign ca v3_ca 3650 selfsign
newkey server netsy-server
sign server server "$days"
newkey client netsy-client
sign client client "$days"
openssl verify -CAfile "$dir/ca.pem" "$dir/server.pem" "$dir/client.pem" >/dev/null
echo "certs.sh: wrote CA, server ($sans) and client certificates to $dir"
