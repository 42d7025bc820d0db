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

/// Every record of the Go bucket, in revision order (snapshot, then chunks).
async fn go_records() -> Vec<netsy::proto::netsy::Record> {
    let local = netsy::store::local::LocalStore::open(BUCKET).unwrap();
    let mut out = Vec::new();
    for m in local.list("", None).await.unwrap() {
        let data = local.get(&m.key).await.unwrap().data;
        out.extend(netsy::format::decode(&m.key, &data).unwrap().records);
    }
    out.sort_by_key(|r| r.revision);
    out
}

/// A Netsy 1.0 chunk: several records, named by its LAST revision.
async fn put_v1_chunk(store: &dyn ObjectStore, records: &[netsy::proto::netsy::Record]) {
    let mut records = records.to_vec();
    let bytes = netsy::format::encode(
        netsy::proto::netsy::FileKind::Chunk,
        &Default::default(),
        &mut records,
    )
    .unwrap();
    let last = records.last().unwrap().revision;
    let key = format!("chunks/{:04}/{last:019}.netsy", last % 10_000);
    store
        .put(&key, bytes.into(), PutMode::Create)
        .await
        .unwrap();
}

/// Shapes of bucket that must all serve `bucket.expected.json`.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Netsy 1.0: no snapshot, multi-record chunks keyed by last revision.
    V1,
    /// The Go preview's snapshot, preview chunks for 151-170, 1.0 chunks for 171-200.
    Mixed,
}

async fn build(store: &dyn ObjectStore, shape: Shape) {
    let records = go_records().await;
    let local = netsy::store::local::LocalStore::open(BUCKET).unwrap();
    match shape {
        Shape::V1 => {
            for group in records.chunks(7) {
                put_v1_chunk(store, group).await;
            }
        }
        Shape::Mixed => {
            for m in local.list("", None).await.unwrap() {
                let rev = netsy::log::layout::parse_chunk_key(&m.key).map(|(r, _)| r);
                if rev.is_none_or(|r| r <= 170) {
                    let data = local.get(&m.key).await.unwrap().data;
                    store.put(&m.key, data, PutMode::Create).await.unwrap();
                }
            }
            let tail: Vec<_> = records.into_iter().filter(|r| r.revision > 170).collect();
            for group in tail.chunks(4) {
                put_v1_chunk(store, group).await;
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netsy_1_0_and_mixed_buckets_on_file_store() {
    for shape in [Shape::V1, Shape::Mixed] {
        let dir = tempfile::tempdir().unwrap();
        let store = netsy::store::local::LocalStore::open(dir.path()).unwrap();
        build(&store, shape).await;
        let n = Netsy::start(&format!("file://{}", dir.path().display()), &[]).await;
        check_serves_expected(&n).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netsy_1_0_and_mixed_buckets_on_s3() {
    for shape in [Shape::V1, Shape::Mixed] {
        let s3 = common::s3_store(&format!("{shape:?}").to_lowercase()).await;
        build(&s3, shape).await;
        let n = Netsy::start(&s3.describe(), &[]).await;
        check_serves_expected(&n).await;
    }
}

/// Runs `netsy serve` expecting it to refuse to start; returns what it said.
fn refuses_to_start(store: &str) -> String {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--store", store, "--listen-client-addr"])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .env("NETSY_S3_ENDPOINT", common::s3_endpoint())
        .env("NETSY_S3_FORCE_PATH_STYLE", "true")
        .output()
        .unwrap();
    assert!(!out.status.success());
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_or_an_overlap_in_a_mixed_bucket_stops_start_up_on_s3() {
    let records = go_records().await;
    let s3 = common::s3_store("overlap").await;
    build(&s3, Shape::Mixed).await;
    let dup: Vec<_> = records
        .iter()
        .filter(|r| (165..=172).contains(&r.revision))
        .cloned()
        .collect();
    put_v1_chunk(&s3, &dup).await;
    let err = refuses_to_start(&s3.describe());
    assert!(err.contains("both claim log position"), "{err}");

    let s3 = common::s3_store("gap").await;
    build(&s3, Shape::Mixed).await;
    s3.delete("chunks/0160/0000000000000000160.netsy")
        .await
        .unwrap();
    let err = refuses_to_start(&s3.describe());
    assert!(err.contains("gap") && err.contains("revision 160"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_or_an_overlap_in_a_mixed_bucket_stops_start_up() {
    // A 1.0 chunk duplicating revisions the preview chunks already hold: an overlap.
    let dir = tempfile::tempdir().unwrap();
    let store = netsy::store::local::LocalStore::open(dir.path()).unwrap();
    build(&store, Shape::Mixed).await;
    let records = go_records().await;
    // 165-172: overlaps the preview chunks 165-170 and the 1.0 chunk 171-174; named 172.
    let dup: Vec<_> = records
        .iter()
        .filter(|r| (165..=172).contains(&r.revision))
        .cloned()
        .collect();
    put_v1_chunk(&store, &dup).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args([
            "serve",
            "--store",
            dir.path().to_str().unwrap(),
            "--listen-client-addr",
        ])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("both claim log position"), "{err}");

    // A missing preview chunk: a gap, named.
    let dir = tempfile::tempdir().unwrap();
    let store = netsy::store::local::LocalStore::open(dir.path()).unwrap();
    build(&store, Shape::Mixed).await;
    store
        .delete("chunks/0160/0000000000000000160.netsy")
        .await
        .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args([
            "serve",
            "--store",
            dir.path().to_str().unwrap(),
            "--listen-client-addr",
        ])
        .arg(format!("127.0.0.1:{}", common::free_port()))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("gap") && err.contains("revision 160"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_the_go_netsy_never_stored_are_recreated_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    copy_dir(std::path::Path::new(BUCKET), dir.path());
    orphan_leases_expire(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_the_go_netsy_never_stored_are_recreated_and_expire_on_s3() {
    let s3 = common::s3_store("orphans").await;
    let local = netsy::store::local::LocalStore::open(BUCKET).unwrap();
    for m in local.list("", None).await.unwrap() {
        let data = local.get(&m.key).await.unwrap().data;
        s3.put(&m.key, data, PutMode::Create).await.unwrap();
    }
    orphan_leases_expire(&s3.describe()).await;
}

async fn orphan_leases_expire(store: &str) {
    let n = Netsy::start(store, &["--orphan-lease-ttl-seconds", "3"]).await;
    let mut c = n.client().await.unwrap();
    let leased = c
        .get(vec![0u8], Some(GetOptions::new().with_from_key()))
        .await
        .unwrap()
        .kvs()
        .iter()
        .filter(|kv| kv.lease() != 0)
        .count();
    assert_eq!(leased, 12);
    let leases = c.leases().await.unwrap();
    assert_eq!(
        leases.leases().len(),
        5,
        "the five lease ids the keys reference"
    );
    let mut stream = c
        .watch(
            vec![0u8],
            Some(WatchOptions::new().with_from_key().with_prev_key()),
        )
        .await
        .unwrap();
    let mut deletes = 0;
    while deletes < 12 {
        let resp = tokio::time::timeout(std::time::Duration::from_secs(15), stream.message())
            .await
            .expect("leased keys never expired")
            .unwrap()
            .unwrap();
        for ev in resp.events() {
            assert_eq!(ev.event_type(), etcd_client::EventType::Delete);
            assert_ne!(ev.prev_kv().unwrap().lease(), 0);
            deletes += 1;
        }
    }
    assert!(n.log().contains("recreated a lease"), "{}", n.log());
    let left = c
        .get(
            vec![0u8],
            Some(GetOptions::new().with_from_key().with_count_only()),
        )
        .await
        .unwrap();
    assert_eq!(left.count(), 76 - 12);
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
