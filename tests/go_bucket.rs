//! Taking over a bucket the Go Netsy wrote: served exactly as `bucket.expected.json` says,
//! history replayable, and the log continues at revision 201. On the file store and on S3.

mod common;

use base64::Engine;
use common::Netsy;
use etcd_client::{GetOptions, WatchOptions};
use netsy::store::{ObjectStore, PutMode};

const BUCKET: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/go-netsy/bucket");
const EXPECTED: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/testdata/go-netsy/bucket.expected.json"
);

fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        let target = to.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &target);
        } else {
            std::fs::copy(e.path(), &target).unwrap();
        }
    }
}

async fn check_serves_expected(n: &Netsy) {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(EXPECTED).unwrap()).unwrap();
    let b64 = |s: &serde_json::Value| {
        base64::engine::general_purpose::STANDARD
            .decode(s.as_str().unwrap())
            .unwrap()
    };
    let mut c = n.client().await.unwrap();
    let all = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .unwrap();
    assert_eq!(
        all.header().unwrap().revision(),
        expected["revision"].as_i64().unwrap()
    );
    assert_eq!(all.count(), expected["count"].as_i64().unwrap());
    let want = expected["kvs"].as_array().unwrap();
    assert_eq!(all.kvs().len(), want.len());
    for (got, want) in all.kvs().iter().zip(want) {
        assert_eq!(got.key(), b64(&want["key"]).as_slice());
        assert_eq!(got.value(), b64(&want["value"]).as_slice());
        assert_eq!(
            got.create_revision(),
            want["create_revision"].as_i64().unwrap()
        );
        assert_eq!(got.mod_revision(), want["mod_revision"].as_i64().unwrap());
        assert_eq!(got.version(), want["version"].as_i64().unwrap());
        assert_eq!(got.lease(), want["lease"].as_i64().unwrap());
    }

    // A watch from 151 replays the 50 chunk events, each non-create with its prev_kv.
    let mut stream = c
        .watch(
            vec![0u8],
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_start_revision(151)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut events = Vec::new();
    while events.len() < 50 {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(10), stream.message())
            .await
            .expect("watch replay timed out")
            .unwrap()
            .unwrap();
        events.extend(resp.events().to_vec());
    }
    assert_eq!(events.len(), 50);
    for (i, ev) in events.iter().enumerate() {
        let kv = ev.kv().unwrap();
        assert_eq!(kv.mod_revision(), 151 + i as i64);
        let is_create = ev.event_type() == etcd_client::EventType::Put && kv.version() == 1;
        if !is_create {
            let prev = ev.prev_kv().expect("non-create event without prev_kv");
            assert!(prev.mod_revision() < kv.mod_revision());
            // prev_kv is what a historical read just before the event returns.
            let at = c
                .get(
                    kv.key(),
                    Some(GetOptions::new().with_revision(kv.mod_revision() - 1)),
                )
                .await
                .unwrap();
            assert_eq!(at.kvs()[0].value(), prev.value());
        }
    }

    // The log goes on at 201.
    let put = c.put("/after/takeover", "x", None).await.unwrap();
    assert_eq!(put.header().unwrap().revision(), 201);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_bucket_on_file_store() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(std::path::Path::new(BUCKET), dir.path());
    let store = format!("file://{}", dir.path().display());
    let n = Netsy::start(&store, &[]).await;
    check_serves_expected(&n).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_bucket_on_s3_under_a_prefix() {
    let s3 = common::s3_store("gobucket").await;
    let local = netsy::store::local::LocalStore::open(BUCKET).unwrap();
    for m in local.list("", None).await.unwrap() {
        let data = local.get(&m.key).await.unwrap().data;
        s3.put(&m.key, data, PutMode::Create).await.unwrap();
    }
    let store = s3.describe();
    let n = Netsy::start(&store, &[]).await;
    check_serves_expected(&n).await;
}
