# Developer shortcuts; every recipe is a plain script or cargo command underneath.
# `scripts/test.sh` installs just if it is missing (cargo install --locked just).

# Run Netsy on the embedded default store (./data), plain HTTP on 127.0.0.1:2379.
run *ARGS:
    cargo run --release -- serve {{ARGS}}

# LocalStack, dev certificates (./certs), then Netsy against LocalStack with mutual TLS on
# 127.0.0.1:2379 and /metrics on 127.0.0.1:2381. Talk to it with `just etcdctl ...`.
dev *ARGS:
    scripts/localstack.sh start
    scripts/certs.sh certs
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    cargo run --release -- serve --store s3://netsy-test/dev \
      --s3-endpoint http://127.0.0.1:4566 --s3-force-path-style \
      --cert-file certs/server.pem --key-file certs/server-key.pem \
      --trusted-ca-file certs/ca.pem --client-cert-auth \
      --listen-metrics-addr 127.0.0.1:2381 {{ARGS}}

# Stop the LocalStack that `just dev` or the tests started (Docker or host).
localstack-stop:
    scripts/localstack.sh stop

# The whole test suite (installs LocalStack, etcd, etcdctl, openssl and just if missing).
test *ARGS:
    scripts/test.sh {{ARGS}}

# Run each fuzz target for SECONDS (default 30) over fuzz/corpus; cargo-fuzz is installed if absent.
fuzz SECONDS="30":
    NETSY_FUZZ_SECONDS={{SECONDS}} scripts/fuzz.sh

lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# etcdctl against the local Netsy (TLS with ./certs when it speaks TLS).
etcdctl *ARGS:
    scripts/etcdctl.sh {{ARGS}}

# Make (or keep) the dev certificates in ./certs.
certs *ARGS:
    scripts/certs.sh certs {{ARGS}}

# kube-apiserver (Docker) against `just dev`.
kube-apiserver:
    scripts/kube-apiserver.sh

# Netsy next to a fresh etcd (and LocalStack if running): `netsy bench` + check perf.
bench *ARGS:
    cargo build --release
    scripts/bench.sh {{ARGS}}

# An idle control plane's S3 requests and their cost, for 1 and 3 nodes on LocalStack.
bench-idle *ARGS:
    scripts/bench-idle.sh {{ARGS}}

# Writes at S3-like latency (25 ms, 5 ms): throughput by clients and chunk PUTs in flight.
bench-pipeline *ARGS:
    scripts/bench-pipeline.sh {{ARGS}}

# Kubernetes and etcd 3.7 from Go modules into target/kube: `just kube-build k8s 1.37`, `refs`.
kube-build *ARGS:
    scripts/kube-build.sh {{ARGS}}

# Kubernetes' storage conformance suites against netsy, etcd or kine (VERSION 1.37 or 1.34).
kube-storage VERSION="1.37" TARGET="netsy":
    cargo build
    scripts/kube-storage.sh {{VERSION}} {{TARGET}}

# A real control plane on Netsy driven by kubectl (STORE dir or s3, TLS mtls or plain).
kube-e2e VERSION="1.37" STORE="dir" TLS="mtls":
    cargo build
    scripts/kube-e2e.sh {{VERSION}} {{STORE}} {{TLS}}

# Three nodes on LocalStack failing over under load for DURATION (tests/robustness).
# etcd client libraries' own suites (etcd-client, aetcd) against etcd 3.7 and Netsy.
client-suites:
    scripts/client-suites.sh

# The downtime of moving 50k objects from etcd to Netsy and back (the migration guide's steps).
migrate-bench OBJECTS="50000" VALUE_BYTES="2048":
    scripts/migrate-bench.sh {{OBJECTS}} {{VALUE_BYTES}}

robustness DURATION="2m":
    cargo build
    scripts/localstack.sh start
    cd tests/robustness && ROBUSTNESS_DURATION={{DURATION}} go test -count=1 -v -timeout 30m ./...
