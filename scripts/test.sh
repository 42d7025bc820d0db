#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only Rust installed.
#
# Installs, if missing: LocalStack (pinned, in a Python venv under ~/.cache/netsy, or Docker
# when an engine answers); etcd 3.4 + etcdctl, curl and openssl (Debian packages
# etcd-server, etcd-client, curl, openssl: the etcdctl, differential and TLS tests); and
# just and cargo-fuzz (cargo install --locked). Builds from Go modules (Go 1.26+ must be
# there): etcd 3.7, etcdctl, etcdutl and kine (tests/refs), etcd 3.5 and 3.6 with their
# etcdctl and etcdutl, and kube-apiserver, kube-controller-manager, kube-scheduler and
# kubectl 1.37 (tests/kube), once per module file, into target/kube. Then starts
# LocalStack, and runs cargo fmt --check, clippy with -D warnings, every test (unit tests,
# and behaviour tests against the real binary, LocalStack and etcd 3.4), the S3 store's
# suite again on moto (a second S3 server, pinned in moto/requirements.txt), the etcd
# comparisons again against etcd 3.7, snapshots to and from etcd 3.5 and 3.6, two etcd
# client libraries' own suites against etcd 3.7 and Netsy (scripts/client-suites.sh;
# aetcd and pytest into a venv under ~/.cache/netsy), Kubernetes'
# storage suites (1.37 and 1.34, and 1.37 through a follower), a 1.37 control plane on
# Netsy, three nodes failing over under load (tests/robustness), and each fuzz target for
# 30 s.
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
for pair in etcd:etcd-server etcdctl:etcd-client curl:curl openssl:openssl; do
  command -v "${pair%%:*}" >/dev/null || missing+=("${pair#*:}")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "test.sh: installing ${missing[*]} (Debian packages)" >&2
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
if ! command -v just >/dev/null; then
  echo "test.sh: installing just 1.59.0 (cargo install --locked)" >&2
  cargo install --locked --quiet just@1.59.0
fi

scripts/localstack.sh start

echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets -- -D warnings
echo "test.sh: cargo test" >&2
cargo test --all-targets -- "$@"
# The S3 store's conformance suite again on a second S3 implementation (moto), so that no
# LocalStack quirk is taken for S3's behaviour.
scripts/moto.sh start
echo "test.sh: the S3 store suite on moto (scripts/moto.sh)" >&2
NETSY_TEST_S3_ENDPOINT=http://127.0.0.1:4567 cargo test --test store_s3 -- "$@"
# Go suites (tests/kube): Kubernetes' storage conformance suites through kube-apiserver's
# own etcd3 store, for both Kubernetes versions, against the debug binary cargo test built.
if ! command -v go >/dev/null; then
  echo "test.sh: Go 1.26+ is needed for the Kubernetes suites (tests/kube)" >&2
  exit 1
fi
(cd tests/kube && test -z "$(gofmt -l .)" && go vet ./... && go vet -modfile=k8s-1.34.mod -tags k8s134 ./...) \
  || { echo "test.sh: tests/kube is not gofmt/vet clean" >&2; exit 1; }
(cd tests/refs && test -z "$(gofmt -l .)" && go vet ./...) \
  || { echo "test.sh: tests/refs is not gofmt/vet clean" >&2; exit 1; }
(cd tests/robustness && test -z "$(gofmt -l .)" && go vet ./...) \
  || { echo "test.sh: tests/robustness is not gofmt/vet clean" >&2; exit 1; }
# etcd 3.7 (built from go.etcd.io/etcd, what kube-apiserver 1.34+ is built against) as the
# reference beside Debian's 3.4: the suites that compare Netsy with etcd run again on it.
refs=$(scripts/kube-build.sh refs)
echo "test.sh: the etcd comparisons again with etcd and etcdctl 3.7 ($refs)" >&2
NETSY_TEST_ETCD=$refs/etcd NETSY_TEST_ETCDCTL=$refs/etcdctl \
  cargo test --test differential --test etcdctl --test limits --test migration --test auth \
  --test concurrency -- "$@"
# Snapshots both ways with etcd 3.5 and 3.6 too (their etcdutl restores Netsy's; Netsy
# restores theirs).
for v in 3.5 3.6; do
  refsv=$(scripts/kube-build.sh "refs-$v")
  echo "test.sh: migration to and from etcd $v ($refsv)" >&2
  NETSY_TEST_ETCD=$refsv/etcd NETSY_TEST_ETCDCTL=$refsv/etcdctl \
    cargo test --test migration -- "$@"
done
# Two etcd client libraries' own suites (etcd-client, aetcd) against etcd 3.7 and Netsy:
# every test that passes on etcd must pass on Netsy.
echo "test.sh: client libraries' own suites (scripts/client-suites.sh)" >&2
scripts/client-suites.sh
echo "test.sh: RangeStream against etcd 3.7, message by message (tests/kube/etcdapi)" >&2
(cd tests/kube && NETSY_BIN="$PWD/../../target/debug/netsy" go test -count=1 ./etcdapi/)
scripts/kube-storage.sh 1.37 netsy
# The same suites through a follower: every write forwarded, every read and watch served
# from the second node's state.
KUBE_STORAGE_LABEL=follower NETSY_STORAGE_FOLLOWER=1 scripts/kube-storage.sh 1.37 netsy
scripts/kube-storage.sh 1.34 netsy
# A real control plane (kube-apiserver, controller-manager, scheduler 1.37) on Netsy, driven
# by kubectl: on the directory store with mutual TLS, and on LocalStack in plain HTTP.
scripts/kube-e2e.sh 1.37 dir mtls
scripts/kube-e2e.sh 1.37 s3 plain
# Three nodes on LocalStack under Kubernetes-shaped load, the leader killed, paused or
# stopped every 10 s for two minutes; acknowledged writes, watches and linearizability
# checked (porcupine).
echo "test.sh: failovers under load (tests/robustness)" >&2
(cd tests/robustness && NETSY_BIN="$PWD/../../target/debug/netsy" go test -count=1 -v -timeout 15m ./...)
echo "test.sh: fuzzing (scripts/fuzz.sh)" >&2
scripts/fuzz.sh
