# Developer shortcuts; every recipe is a plain script underneath.

# Run Netsy on the embedded default store (./data).
run *ARGS:
    cargo run --release -- serve {{ARGS}}

# LocalStack, then Netsy against it.
dev:
    scripts/localstack.sh start
    AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 \
    cargo run --release -- serve --store s3://netsy-test/dev --s3-endpoint http://127.0.0.1:4566 --s3-force-path-style

# The whole test suite (installs LocalStack and etcd if missing).
test *ARGS:
    scripts/test.sh {{ARGS}}

lint:
    cargo fmt --all -- --check
    cargo clippy --all-targets -- -D warnings

# etcdctl against the local Netsy.
etcdctl *ARGS:
    ETCDCTL_API=3 etcdctl --endpoints=127.0.0.1:2379 {{ARGS}}
