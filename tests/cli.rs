//! The `netsy` command line: `inspect` on good and corrupt files, the Go Netsy's S3
//! environment names, and a second `netsy serve` on the same bucket following, then leading.

mod common;

use common::Netsy;
use std::process::Command;
use std::time::{Duration, Instant};

const GO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/testdata/go-netsy");

fn netsy(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn inspect_shows_a_go_file_and_exits_zero() {
    let out = netsy(&["inspect", &format!("{GO}/chunk-plain.netsy")]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("FILE_KIND_CHUNK"));
    assert!(text.contains("/registry/pods/ns3/obj-0"));
    assert!(text.contains("all CRCs verified"));

    let out = netsy(&[
        "inspect",
        "--json",
        &format!("file://{GO}/chunk-zstd.netsy"),
    ]);
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let want: Vec<serde_json::Value> =
        std::fs::read_to_string(format!("{GO}/chunk-zstd.records.jsonl"))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
    assert_eq!(v["records"].as_array().unwrap(), &want);
    assert_eq!(v["header"]["compression"], "FILE_COMPRESSION_ZSTD");
}

#[test]
fn inspect_reads_a_chunk_of_a_directory_store_by_its_path() {
    // The directory store keeps chunks in segment files: inspect finds them by key.
    let dir = tempfile::tempdir().unwrap();
    let key = "chunks/0007/0000000000000000007.netsy";
    let data = std::fs::read(format!("{GO}/chunk-plain.netsy")).unwrap();
    tokio::runtime::Runtime::new().unwrap().block_on(async {
        use netsy::store::PutMode;
        let url = format!("file://{}", dir.path().display());
        let store = netsy::store::open(&url, &Default::default()).await.unwrap();
        store.put(key, data.into(), PutMode::Create).await.unwrap();
    });
    assert!(!dir.path().join(key).exists());
    let path = dir.path().join(key);
    let out = netsy(&["inspect", &format!("file://{}", path.display())]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("/registry/pods/ns3/obj-0"), "{text}");
    let missing = dir.path().join("chunks/0008/0000000000000000008.netsy");
    let out = netsy(&["inspect", missing.to_str().unwrap()]);
    assert!(!out.status.success());
}

#[test]
fn inspect_accepts_every_go_reference_file() {
    for f in [
        "chunk-plain.netsy",
        "chunk-zstd.netsy",
        "chunk-binary-zstd.netsy",
        "bucket/snapshots/0000000000000000150.netsy",
        "bucket/chunks/0200/0000000000000000200.netsy",
    ] {
        let out = netsy(&["inspect", &format!("{GO}/{f}")]);
        assert!(
            out.status.success(),
            "{f}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspect_reads_s3_urls() {
    use netsy::store::{ObjectStore, PutMode};
    let store = common::s3_store("inspect").await;
    let data = std::fs::read(format!("{GO}/chunk-plain.netsy")).unwrap();
    store
        .put("x/chunk.netsy", data.into(), PutMode::Create)
        .await
        .unwrap();
    let url = format!("{}/x/chunk.netsy", store.describe());
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["inspect", "--json", &url, "--s3-force-path-style"])
        .env("NETSY_S3_ENDPOINT", common::s3_endpoint())
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["records"].as_array().unwrap().len(), 2);
}

#[test]
fn inspect_names_the_file_and_check_on_corruption() {
    let dir = tempfile::tempdir().unwrap();
    let mut data = std::fs::read(format!("{GO}/chunk-plain.netsy")).unwrap();
    data[200] ^= 0x01;
    let bad = dir.path().join("bad.netsy");
    std::fs::write(&bad, &data).unwrap();
    let out = netsy(&["inspect", bad.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("bad.netsy"), "{err}");
    assert!(err.contains("crc mismatch"), "{err}");

    let truncated = dir.path().join("short.netsy");
    std::fs::write(&truncated, &data[..100]).unwrap();
    let out = netsy(&["inspect", truncated.to_str().unwrap()]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr).unwrap().contains("truncated"));
}

#[test]
fn invalid_config_fails_at_start_naming_the_option() {
    let out = netsy(&["serve", "--leader-lease-seconds", "1"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("--leader-lease-seconds"));
    let out = netsy(&["serve", "--store", "ftp://nope"]);
    assert!(!out.status.success());
    assert!(String::from_utf8(out.stderr)
        .unwrap()
        .contains("ftp://nope"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn go_netsy_s3_env_names_select_the_bucket_and_prefix() {
    common::s3_store("probe").await;
    let prefix = common::unique_prefix("envnames");
    let port = common::free_port();
    let addr = format!("127.0.0.1:{port}");
    let log =
        std::fs::File::create(std::env::temp_dir().join(format!("netsy-env-{port}.log"))).unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .arg("serve")
        .env("NETSY_S3_BUCKET_NAME", common::s3_bucket())
        .env("NETSY_S3_KEY_PREFIX", &prefix)
        .env("NETSY_S3_FORCE_PATH_STYLE", "true")
        .env("NETSY_S3_ENDPOINT", common::s3_endpoint())
        .env("NETSY_LISTEN_CLIENTS_ADDR", &addr)
        .env("AWS_ACCESS_KEY_ID", "test")
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", "us-east-1")
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut client = loop {
        if let Ok(mut c) = etcd_client::Client::connect([addr.as_str()], None).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        assert!(Instant::now() < deadline, "netsy did not start");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    client.put("from-env", "1", None).await.unwrap();
    let _ = child.kill();
    let _ = child.wait();
    // The chunk went to the bucket under the prefix.
    use netsy::store::ObjectStore;
    let store = netsy::store::s3::S3Store::connect(common::s3_options(&prefix))
        .await
        .unwrap();
    let chunks = store.list("chunks/", None).await.unwrap();
    assert_eq!(chunks.len(), 1, "{chunks:?}");
    assert_eq!(chunks[0].key, "chunks/0002/0000000000000000002.netsy");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_server_follows_then_takes_over_after_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let flags = ["--leader-lease-seconds", "3"];
    let mut first = Netsy::start(&store, &flags).await;
    first
        .client()
        .await
        .unwrap()
        .put("a", "1", None)
        .await
        .unwrap();

    // The second process serves as a follower while the first holds the lease: it reads
    // what the first wrote and forwards its writes there.
    let second = Netsy::start(&store, &flags).await;
    assert!(
        second
            .log()
            .contains("another writer holds the leader lease"),
        "{}",
        second.log()
    );
    let mut c = second.client().await.unwrap();
    assert_eq!(c.get("a", None).await.unwrap().kvs()[0].value(), b"1");
    let status = c.status().await.unwrap();
    assert_ne!(status.leader(), status.header().unwrap().member_id());
    first.kill9();
    let deadline = Instant::now() + Duration::from_secs(20);
    let put = loop {
        match c.put("b", "2", None).await {
            Ok(put) => break put,
            Err(e) => assert!(
                Instant::now() < deadline,
                "second server never took over ({e}):\n{}",
                second.log()
            ),
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    assert_eq!(put.header().unwrap().revision(), 3);
    let status = c.status().await.unwrap();
    assert_eq!(status.leader(), status.header().unwrap().member_id());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn config_file_sets_options_that_flags_and_env_override() {
    let dir = tempfile::tempdir().unwrap();
    let port = common::free_port();
    let file = dir.path().join("netsy.toml");
    std::fs::write(
        &file,
        format!(
            r#"store = "{store}"
listen-client-addr = "127.0.0.1:{port}"
name = "from-file"
max-txn-ops = 2
advertise-client-urls = ["http://a.example:2379", "http://b.example:2379"]
log-format = "json"
progress-notify-interval-ms = 7000
"#,
            store = dir.path().join("data").display()
        ),
    )
    .unwrap();
    let log = dir.path().join("log");
    let mut child = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--config-file", file.to_str().unwrap()])
        .args(["--name", "from-flag"])
        .env("NETSY_PROGRESS_NOTIFY_INTERVAL_MS", "6000")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let addr = format!("127.0.0.1:{port}");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut c = loop {
        if let Ok(mut c) = etcd_client::Client::connect([addr.as_str()], None).await {
            if c.status().await.is_ok() {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "{}",
            std::fs::read_to_string(&log).unwrap()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let members = c.member_list().await.unwrap();
    let m = &members.members()[0];
    assert_eq!(m.name(), "from-flag", "a flag beats the file");
    assert_eq!(
        m.client_urls(),
        ["http://a.example:2379", "http://b.example:2379"]
    );
    let ops: Vec<etcd_client::TxnOp> = (0..3)
        .map(|i| etcd_client::TxnOp::put(format!("k{i}"), "v", None))
        .collect();
    let err = c
        .txn(etcd_client::Txn::new().and_then(ops))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("too many operations in txn request"),
        "{err}"
    );
    let _ = child.kill();
    let _ = child.wait();
    let text = std::fs::read_to_string(&log).unwrap();
    let first: serde_json::Value =
        serde_json::from_str(text.lines().next().unwrap()).expect("JSON logs from the file");
    assert_eq!(first["level"], "INFO");

    // Bad files fail at start naming the file and the option.
    for (content, expected) in [
        (
            "max-txn-ops = \"lots\"",
            "invalid value 'lots' for '--max-txn-ops",
        ),
        ("no-such-option = 1", "unknown option `no-such-option`"),
        (
            "client-cert-auth = \"yes\"",
            "`client-cert-auth` must be true or false",
        ),
        ("store = [", "TOML parse error"),
    ] {
        std::fs::write(&file, content).unwrap();
        let out = netsy(&["serve", "--config-file", file.to_str().unwrap()]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{content} must fail");
        assert!(
            err.contains(&format!("config file {}", file.display())) && err.contains(expected),
            "{content}: expected {expected:?} in {err}"
        );
    }
}
