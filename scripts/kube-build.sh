#!/usr/bin/env bash
# Builds, from Go modules (the Go module proxy only), what the Kubernetes and reference
# suites run, once per module file:
#
#   scripts/kube-build.sh k8s [1.37|1.34]   kube-apiserver, kube-controller-manager,
#                                            kube-scheduler, kubectl from k8s.io/kubernetes
#                                            (tests/kube/go.mod, tests/kube/k8s-1.34.mod)
#   scripts/kube-build.sh refs              etcd, etcdctl, etcdutl (go.etcd.io/etcd 3.7) and
#                                            kine (tests/refs/go.mod)
#   scripts/kube-build.sh refs-3.6          etcd, etcdctl, etcdutl 3.6 (tests/refs/etcd-3.6.mod)
#   scripts/kube-build.sh refs-3.5          and 3.5 (etcd-3.5.mod): the migration suite
#                                            restores their snapshots, and they Netsy's
#   scripts/kube-build.sh refs-benchmark    etcd's benchmark tool (go.etcd.io/etcd/v3/
#                                            tools/benchmark, etcd-benchmark.mod), the one
#                                            etcd's performance docs use: `just bench`
#
# Binaries land in target/kube/<1.37|1.34|refs|refs-3.5|refs-3.6|refs-benchmark>/ and are rebuilt only when the module file
# (or its go.sum) changed. The directory is printed on stdout.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
what=${1:-k8s}
case "$what" in
  k8s)
    version=${2:-1.37}
    dir=$here/tests/kube
    case "$version" in
      1.37) modfile=$dir/go.mod ;;
      1.34) modfile=$dir/k8s-1.34.mod ;;
      *) echo "kube-build: unknown Kubernetes version $version (1.37 or 1.34)" >&2; exit 2 ;;
    esac
    out=$here/target/kube/$version
    pkgs=(k8s.io/kubernetes/cmd/kube-apiserver k8s.io/kubernetes/cmd/kube-controller-manager
      k8s.io/kubernetes/cmd/kube-scheduler k8s.io/kubernetes/cmd/kubectl)
    ;;
  refs)
    dir=$here/tests/refs
    modfile=$dir/go.mod
    out=$here/target/kube/refs
    pkgs=(./cmd/etcd go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3 github.com/k3s-io/kine)
    ;;
  refs-3.5|refs-3.6)
    dir=$here/tests/refs
    modfile=$dir/etcd-${what#refs-}.mod
    out=$here/target/kube/$what
    pkgs=(./cmd/etcd go.etcd.io/etcd/etcdctl/v3 go.etcd.io/etcd/etcdutl/v3)
    ;;
  refs-benchmark)
    dir=$here/tests/refs
    modfile=$dir/etcd-benchmark.mod
    out=$here/target/kube/$what
    pkgs=(go.etcd.io/etcd/v3/tools/benchmark)
    ;;
  *) echo "kube-build: build k8s [VERSION], refs, refs-3.5, refs-3.6 or refs-benchmark" >&2; exit 2 ;;
esac
stamp=$out/.built-from
want=$(cat "$modfile" "${modfile%.mod}.sum" | sha256sum | cut -c1-16)
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  echo "$out"
  exit 0
fi
if ! command -v go >/dev/null; then
  echo "kube-build: Go is not installed (needs Go 1.26+)" >&2
  exit 1
fi
mkdir -p "$out"
cd "$dir"
flags=(-trimpath "-ldflags=-s -w")
[ "$modfile" = "$dir/go.mod" ] || flags+=("-modfile=$modfile")
start=$(date +%s)
echo "kube-build: building ${pkgs[*]} into $out" >&2
go build "${flags[@]}" -o "$out/" "${pkgs[@]}"
echo "kube-build: built in $(( $(date +%s) - start )) s" >&2
echo "$want" > "$stamp"
echo "$out"
