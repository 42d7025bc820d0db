//! What an operator observes: /metrics, /health, /readyz over HTTP on the client port and
//! on the metrics port, `etcdctl check datascale`, readiness across a leader hand-over.

mod common;

use common::{etcdctl, free_port, http_get, Netsy};
use std::time::Duration;

/// The value of an unlabelled sample, or of the first sample whose line contains `labels`.
fn sample(text: &str, name: &str, labels: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| {
            l.starts_with(name)
                && (l[name.len()..].starts_with(' ') || l[name.len()..].starts_with('{'))
                && l.contains(labels)
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_on_the_client_port() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(dir.path().to_str().unwrap(), &[]).await;
    let mut c = n.client().await.unwrap();
    for i in 0..10 {
        c.put(format!("k{i}"), vec![b'x'; 100], None).await.unwrap();
    }
    let _ = c.get("missing", None).await.unwrap();
    // An error is counted with its code.
    let err = c
        .get(
            "k",
            Some(etcd_client::GetOptions::new().with_revision(1_000_000)),
        )
        .await;
    assert!(err.is_err());

    let (code, text) = http_get(&n.addr, "/metrics").await.unwrap();
    assert_eq!(code, 200);
    let put = "grpc_method=\"Put\",grpc_service=\"etcdserverpb.KV\",grpc_type=\"unary\"";
    assert_eq!(sample(&text, "grpc_server_started_total", put), Some(10.0));
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            "grpc_code=\"OK\",grpc_method=\"Put\""
        ),
        Some(10.0)
    );
    assert_eq!(
        sample(
            &text,
            "grpc_server_handled_total",
            "grpc_code=\"OutOfRange\",grpc_method=\"Range\""
        ),
        Some(1.0)
    );
    assert_eq!(sample(&text, "etcd_server_has_leader", ""), Some(1.0));
    assert_eq!(sample(&text, "etcd_server_is_leader", ""), Some(1.0));
    assert_eq!(
        sample(&text, "etcd_debugging_mvcc_keys_total", ""),
        Some(10.0)
    );
    assert_eq!(
        sample(&text, "etcd_debugging_mvcc_current_revision", ""),
        Some(11.0)
    );
    let size = sample(&text, "etcd_mvcc_db_total_size_in_bytes", "").unwrap();
    assert!(size >= 10.0 * 102.0, "db size {size}");
    assert!(sample(&text, "process_resident_memory_bytes", "").unwrap() > 1e6);
    assert_eq!(sample(&text, "netsy_ready", ""), Some(1.0));
    let batches = sample(&text, "netsy_commit_batch_requests_count", "").unwrap();
    let requests = sample(&text, "netsy_commit_batch_requests_sum", "").unwrap();
    assert!(
        (1.0..=10.0).contains(&batches) && requests == 10.0,
        "{batches} {requests}"
    );
    assert_eq!(
        sample(&text, "netsy_chunk_put_duration_seconds_count", ""),
        Some(batches)
    );
    assert!(
        sample(
            &text,
            "netsy_store_request_duration_seconds_count",
            "op=\"put\",outcome=\"ok\""
        )
        .unwrap()
            >= batches
    );
    assert_eq!(sample(&text, "netsy_snapshot_age_seconds", ""), Some(-1.0));

    let (code, body) = http_get(&n.addr, "/health").await.unwrap();
    assert_eq!(
        (code, body.as_str()),
        (200, r#"{"health":"true","reason":""}"#)
    );
    let (code, _) = http_get(&n.addr, "/readyz").await.unwrap();
    assert_eq!(code, 200);
    let (code, body) = http_get(&n.addr, "/version").await.unwrap();
    assert_eq!(code, 200);
    assert!(body.contains("\"etcdserver\":\"3.7.0\""), "{body}");

    // A watch stream is counted while open.
    let _stream = c.watch("k", None).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (_, text) = http_get(&n.addr, "/metrics").await.unwrap();
    assert_eq!(
        sample(&text, "etcd_debugging_mvcc_watcher_total", ""),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, "etcd_debugging_mvcc_watch_stream_total", ""),
        Some(1.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_check_datascale_reads_our_metrics() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(dir.path().to_str().unwrap(), &[]).await;
    let (ok, out, err) = etcdctl(&[
        &format!("--endpoints={}", n.addr),
        "check",
        "datascale",
        "--load=s",
    ]);
    assert!(ok, "{out}\n{err}");
    assert!(
        out.contains("PASS: Approximate system memory used"),
        "{out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_is_ready_not_ready_without_a_leader_and_leads_after_hand_over() {
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().to_str().unwrap();
    let mut first = Netsy::start(store, &["--leader-lease-seconds", "3"]).await;
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut second = Netsy::spawn(
        store,
        free_port(),
        &[
            "--leader-lease-seconds",
            "3",
            "--listen-metrics-addr",
            &metrics,
        ],
    );
    // The metrics port answers at once; the follower is ready once it follows the leader.
    let body = second.wait_http(&metrics, "/livez", 200).await;
    assert!(body.contains("\"health\":\"true\""));
    second.wait_http(&metrics, "/readyz", 200).await;
    second.wait_http(&metrics, "/health", 200).await;
    let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert_eq!(sample(&text, "netsy_ready", ""), Some(1.0));
    assert_eq!(sample(&text, "etcd_server_has_leader", ""), Some(1.0));
    assert_eq!(sample(&text, "etcd_server_is_leader", ""), Some(0.0));

    let mut c = first.client().await.unwrap();
    c.put("before", "1", None).await.unwrap();
    // The leader gone without a word: no leader until its lease expires.
    first.kill9();
    let body = second.wait_http(&metrics, "/readyz", 503).await;
    assert!(body.contains("no leader"), "{body}");
    let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert_eq!(sample(&text, "etcd_server_has_leader", ""), Some(0.0));
    // Serializable reads still answer from the follower's own state.
    let mut c = second.client().await.unwrap();
    let got = c
        .get(
            "before",
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    second.wait_http(&metrics, "/readyz", 200).await;
    second.wait_http(&metrics, "/health", 200).await;
    let (_, text) = http_get(&metrics, "/metrics").await.unwrap();
    assert_eq!(sample(&text, "etcd_server_is_leader", ""), Some(1.0));
    let got = c.get("before", None).await.unwrap();
    assert_eq!(got.kvs()[0].value(), b"1");
    for phase in ["store", "follower", "replay", "serving"] {
        assert!(
            second.log().contains(&format!("phase=\"{phase}\"")),
            "no {phase} phase line:\n{}",
            second.log()
        );
    }
}
