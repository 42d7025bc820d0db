//! The shared object-store conformance suite against a real S3 server (LocalStack).

mod common;

use bytes::Bytes;
use netsy::store::{conformance, ObjectStore, PutMode};

#[tokio::test]
async fn s3_passes_conformance() {
    let store = common::s3_store("conformance").await;
    conformance::run_all(&store).await;
}

/// The listing as an S3 Express One Zone directory bucket needs it (no start-after, only
/// prefixes ending in '/', any order back), on a general purpose bucket: the same answers.
#[tokio::test]
async fn s3_passes_conformance_listing_as_for_a_directory_bucket() {
    let mut opts = common::s3_options(&common::unique_prefix("directory"));
    opts.directory_bucket = Some(true);
    let store = netsy::store::s3::S3Store::connect(opts).await.unwrap();
    conformance::run_all(&store).await;
}

#[tokio::test]
async fn a_directory_bucket_is_refused_path_style_or_another_storage_class() {
    let opts = netsy::store::s3::S3Options {
        bucket: "netsy--use1-az4--x-s3".into(),
        region: Some("us-east-1".into()),
        force_path_style: true,
        ..Default::default()
    };
    let err = netsy::store::s3::S3Store::connect(opts.clone())
        .await
        .unwrap_err();
    assert!(err.to_string().contains("virtual-hosted"), "{err}");
    let opts = netsy::store::s3::S3Options {
        force_path_style: false,
        storage_class: Some("STANDARD".into()),
        ..opts
    };
    let err = netsy::store::s3::S3Store::connect(opts).await.unwrap_err();
    assert!(err.to_string().contains("EXPRESS_ONEZONE"), "{err}");
}

#[tokio::test]
async fn s3_lists_past_one_page() {
    let store = common::s3_store("paging").await;
    // ListObjectsV2 returns at most 1000 keys a page. Written 32 at a time: 1100 requests at
    // once to LocalStack on a loaded two-core machine timed some out.
    use futures::StreamExt;
    futures::stream::iter(0..1100)
        .for_each_concurrent(32, |i| {
            let store = &store;
            async move {
                store
                    .put(
                        &format!("p/{i:05}"),
                        Bytes::from_static(b"x"),
                        PutMode::Create,
                    )
                    .await
                    .unwrap();
            }
        })
        .await;
    let all = store.list("p/", None).await.unwrap();
    assert_eq!(all.len(), 1100);
    assert!(all.windows(2).all(|w| w[0].key < w[1].key));
    let tail = store.list("p/", Some("p/01049")).await.unwrap();
    assert_eq!(tail.len(), 50);
}

#[tokio::test]
async fn s3_create_retried_after_landing_is_recognised() {
    // The write below lands; repeating the identical conditional PUT (what a retry after a
    // lost response does) must be recognised as ours, while different bytes conflict.
    let store = common::s3_store("idempotent").await;
    let data = Bytes::from_static(b"chunk-bytes");
    let first = store.put("k", data.clone(), PutMode::Create).await.unwrap();
    let again = store.put("k", data, PutMode::Create).await.unwrap();
    assert_eq!(first, again);
    let other = store
        .put("k", Bytes::from_static(b"other"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(other.is_conflict());
}

#[tokio::test]
async fn s3_writes_with_sse_and_storage_class() {
    let mut opts = common::s3_options(&common::unique_prefix("sse"));
    opts.sse = Some("AES256".into());
    opts.storage_class = Some("STANDARD_IA".into());
    let store = netsy::store::s3::S3Store::connect(opts).await.unwrap();
    store
        .put("obj", Bytes::from_static(b"secret"), PutMode::Create)
        .await
        .unwrap();
    assert_eq!(store.get("obj").await.unwrap().data, "secret");
    let mut bad = common::s3_options("x");
    bad.sse = Some("rot13".into());
    assert!(netsy::store::s3::S3Store::connect(bad).await.is_err());
}

/// Through a proxy that throttles and loses responses: writes succeed exactly once.
#[tokio::test]
async fn s3_retries_throttling_and_recognises_a_put_whose_response_was_lost() {
    use common::proxy::{FaultyProxy, ProxyFault};
    let proxy = FaultyProxy::default();
    let upstream = common::s3_endpoint()
        .trim_start_matches("http://")
        .to_string();
    let endpoint = proxy.start(upstream).await;
    let mut opts = common::s3_options(&common::unique_prefix("faults"));
    opts.endpoint = Some(endpoint);
    opts.max_attempts = Some(5);
    let store = netsy::store::s3::S3Store::connect(opts).await.unwrap();

    proxy.push(ProxyFault::SlowDown);
    proxy.push(ProxyFault::SlowDown);
    store
        .put("a", Bytes::from_static(b"1"), PutMode::Create)
        .await
        .expect("throttled PUT is retried");

    // The conditional PUT lands but its response is lost; the SDK retries, S3 answers 412,
    // and the store recognises its own bytes instead of reporting a conflict.
    proxy.push(ProxyFault::LoseResponse);
    store
        .put("b", Bytes::from_static(b"chunk"), PutMode::Create)
        .await
        .expect("a landed PUT must count as success");
    assert_eq!(store.get("b").await.unwrap().data, "chunk");
    assert_eq!(
        *proxy.faulted.lock().unwrap(),
        vec![
            ProxyFault::SlowDown,
            ProxyFault::SlowDown,
            ProxyFault::LoseResponse
        ]
    );
    // Someone else's bytes at that key are still a conflict.
    let err = store
        .put("b", Bytes::from_static(b"other"), PutMode::Create)
        .await
        .unwrap_err();
    assert!(err.is_conflict());
}
