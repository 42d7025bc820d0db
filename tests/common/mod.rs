//! Helpers shared by the behaviour tests: a LocalStack-backed S3 store under a fresh prefix,
//! and a `netsy serve` process started from the built binary.
#![allow(dead_code)]

use netsy::store::s3::{S3Options, S3Store};
use std::time::Duration;

/// LocalStack's endpoint; the test command starts it (scripts/localstack.sh).
pub fn s3_endpoint() -> String {
    std::env::var("NETSY_TEST_S3_ENDPOINT").unwrap_or_else(|_| "http://127.0.0.1:4566".into())
}

pub fn s3_bucket() -> String {
    std::env::var("NETSY_TEST_BUCKET").unwrap_or_else(|_| "netsy-test".into())
}

/// A unique prefix so tests sharing the bucket never see each other's objects.
pub fn unique_prefix(name: &str) -> String {
    format!("{name}-{:016x}", rand::random::<u64>())
}

pub fn s3_options(prefix: &str) -> S3Options {
    S3Options {
        bucket: s3_bucket(),
        prefix: prefix.to_string(),
        endpoint: Some(s3_endpoint()),
        region: Some("us-east-1".into()),
        force_path_style: true,
        access_key_id: Some("test".into()),
        secret_access_key: Some("test".into()),
        max_attempts: Some(3),
        attempt_timeout: Some(Duration::from_secs(5)),
        ..Default::default()
    }
}

/// Connects to LocalStack, failing loudly (not skipping) when it is not running.
pub async fn s3_store(name: &str) -> S3Store {
    let store = S3Store::connect(s3_options(&unique_prefix(name)))
        .await
        .expect("S3 client");
    use netsy::store::ObjectStore;
    if let Err(e) = store.list("probe/", None).await {
        panic!(
            "LocalStack S3 is not reachable at {} ({e}); start it with scripts/localstack.sh",
            s3_endpoint()
        );
    }
    store
}
