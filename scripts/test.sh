#!/usr/bin/env bash
# The whole test suite, on a fresh Debian machine with only Rust installed.
#
# Installs, if missing: LocalStack (pinned, in a Python venv under ~/.cache/netsy, or Docker
# when an engine answers) and etcd 3.4 + etcdctl (Debian packages etcd-server and
# etcd-client, for the etcdctl and differential tests). Then starts LocalStack, and runs
# cargo fmt --check, clippy with -D warnings, and every test (unit tests, and behaviour
# tests against the real binary, LocalStack and etcd).
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v etcd >/dev/null || ! command -v etcdctl >/dev/null || ! command -v curl >/dev/null; then
  echo "test.sh: installing etcd-server etcd-client curl (Debian packages)" >&2
  sudo_cmd=""; [ "$(id -u)" = 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-server etcd-client curl >/dev/null
fi

scripts/localstack.sh start

echo "test.sh: cargo fmt --check" >&2
cargo fmt --all -- --check
echo "test.sh: cargo clippy --all-targets -- -D warnings" >&2
cargo clippy --all-targets -- -D warnings
echo "test.sh: cargo test" >&2
cargo test --all-targets -- "$@"
