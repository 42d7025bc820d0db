//! Resource limits, side by side with a real etcd where etcd has the same limit: the space
//! quota (NOSPACE alarm), oversize requests. A growing dataset meets a clear error, not an
//! out-of-memory kill.

mod common;

use common::{etcdctl, Etcd, Netsy};
use etcd_client::{Client, GetOptions};
use tonic::Code;

/// Fills the store until the quota refuses a put; returns the error's code and message.
async fn fill_until_refused(c: &mut Client) -> (Code, String) {
    let value = vec![b'x'; 4096];
    for i in 0..100_000 {
        match c.put(format!("/fill/{i:06}"), value.clone(), None).await {
            Ok(_) => {}
            Err(etcd_client::Error::GRpcStatus(s)) => return (s.code(), s.message().to_string()),
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    panic!("the quota never refused a put");
}

/// The NOSPACE story an operator goes through: writes refused with etcd's error, the alarm
/// listed, reads and deletes still served, the alarm staying until disarmed, writes back.
async fn nospace_story(addr: &str) -> Vec<String> {
    let mut c = Client::connect([addr], None).await.unwrap();
    let mut seen = Vec::new();
    let (code, message) = fill_until_refused(&mut c).await;
    seen.push(format!("{code:?}: {message}"));
    let (ok, alarms, _) = etcdctl(&["--endpoints", addr, "alarm", "list"]);
    assert!(ok);
    // Member ids differ between the two servers.
    seen.push(
        alarms
            .split("alarm:")
            .nth(1)
            .unwrap_or("(none)")
            .trim()
            .to_string(),
    );
    // Lease grants add data too.
    seen.push(match c.lease_grant(60, None).await {
        Ok(_) => "lease granted".into(),
        Err(e) => e.to_string(),
    });
    let got = c
        .get(
            "/fill/",
            Some(GetOptions::new().with_prefix().with_count_only()),
        )
        .await
        .unwrap();
    assert!(got.count() > 0, "reads are served under the alarm");
    let deleted = c
        .delete(
            "/fill/",
            Some(etcd_client::DeleteOptions::new().with_prefix()),
        )
        .await
        .unwrap();
    assert!(deleted.deleted() > 0, "deletes are served under the alarm");
    let rev = deleted.header().unwrap().revision();
    c.compact(rev, None).await.unwrap();
    let (ok, _, err) = etcdctl(&["--endpoints", addr, "defrag"]);
    assert!(ok, "{err}");
    // Still refused: the alarm stays until disarmed.
    seen.push(match c.put("/after", "1", None).await {
        Ok(_) => "put accepted before disarm".into(),
        Err(e) => e.to_string(),
    });
    let (ok, out, err) = etcdctl(&["--endpoints", addr, "alarm", "disarm"]);
    assert!(ok, "{err}");
    seen.push(
        out.split("alarm:")
            .nth(1)
            .unwrap_or("(none)")
            .trim()
            .to_string(),
    );
    c.put("/after", "1", None)
        .await
        .expect("writes are accepted once disarmed");
    let (_, alarms, _) = etcdctl(&["--endpoints", addr, "alarm", "list"]);
    seen.push(if alarms.trim().is_empty() {
        "no alarms".into()
    } else {
        alarms
    });
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn space_quota_raises_nospace_like_etcd() {
    let quota = "2000000";
    let etcd = Etcd::start_with(&["--quota-backend-bytes", quota]).await;
    let expected = nospace_story(&etcd.addr).await;
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let n = Netsy::start(&store, &["--quota-backend-bytes", quota]).await;
    let got = nospace_story(&n.addr).await;
    assert_eq!(got, expected);
    eprintln!("NOSPACE story, etcd and Netsy alike: {got:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nospace_is_raised_again_at_start_when_the_data_exceeds_the_quota() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let mut n = Netsy::start(&store, &[]).await;
    let mut c = n.client().await.unwrap();
    for i in 0..20 {
        c.put(format!("/k/{i}"), vec![b'v'; 10_000], None)
            .await
            .unwrap();
    }
    n.terminate();
    let n = Netsy::start(&store, &["--quota-backend-bytes", "100000"]).await;
    let mut c = n.client().await.unwrap();
    let err = c.put("/k/more", "v", None).await.unwrap_err();
    assert!(err.to_string().contains("database space exceeded"), "{err}");
    assert!(n.log().contains("NOSPACE alarm raised"), "{}", n.log());
    // Reads still work.
    assert_eq!(c.get("/k/1", None).await.unwrap().count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watchers_per_stream_are_bounded_and_the_stream_goes_on() {
    let dir = tempfile::tempdir().unwrap();
    let store = format!("file://{}", dir.path().display());
    let n = Netsy::start(&store, &["--max-watchers-per-stream", "3"]).await;
    let mut c = n.client().await.unwrap();
    let (mut sender, mut stream) = c
        .watch(
            "/w/0",
            Some(etcd_client::WatchOptions::new().with_watch_id(1)),
        )
        .await
        .unwrap()
        .split();
    for id in 2..=4 {
        let opts = etcd_client::WatchOptions::new().with_watch_id(id);
        sender.watch(format!("/w/{id}"), Some(opts)).await.unwrap();
    }
    let mut created = Vec::new();
    let mut refused = Vec::new();
    while created.len() + refused.len() < 4 {
        let resp = stream.message().await.unwrap().unwrap();
        if resp.canceled() {
            refused.push(resp.cancel_reason().to_string());
        } else if resp.created() {
            created.push(resp.watch_id());
        }
    }
    assert_eq!(created, [1, 2, 3]);
    assert_eq!(refused.len(), 1);
    assert!(refused[0].contains("too many watchers"), "{refused:?}");
    // The stream and its watchers keep working.
    c.put("/w/2", "v", None).await.unwrap();
    let resp = stream.message().await.unwrap().unwrap();
    assert_eq!(resp.watch_id(), 2);
    assert_eq!(resp.events()[0].kv().unwrap().value(), b"v");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversize_requests_get_etcds_error_and_change_nothing() {
    let etcd = Etcd::start().await;
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(&format!("file://{}", dir.path().display()), &[]).await;
    let mut seen = Vec::new();
    for addr in [&etcd.addr, &n.addr] {
        let mut c = Client::connect([addr.as_str()], None).await.unwrap();
        let big = vec![b'x'; 1536 * 1024 + 1];
        let err = c.put("/big", big, None).await.unwrap_err();
        let after = c.get("/big", None).await.unwrap().count();
        seen.push((err.to_string(), after));
    }
    assert_eq!(seen[0], seen[1]);
    assert!(seen[1].0.contains("request is too large"), "{seen:?}");
}
