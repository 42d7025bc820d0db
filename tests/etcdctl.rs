//! The real `etcdctl` (3.4, Debian's etcd-client; or 3.7 with its etcd, see
//! `common::etcd_bin`) against Netsy, and against a real etcd with the same commands wherever the output is deterministic: same text out, same exit
//! status.

mod common;

use common::{Etcd, Netsy};
use std::process::{Command, Output, Stdio};

fn etcdctl(addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    etcdctl_within(3, addr, args, stdin)
}

/// Every call is bounded: `watch` runs until killed.
fn etcdctl_within(seconds: u32, addr: &str, args: &[&str], stdin: Option<&str>) -> Output {
    let etcdctl = common::etcdctl_bin();
    let mut child = Command::new("timeout")
        .args([seconds.to_string().as_str(), etcdctl.as_str()])
        .envs(common::etcdctl_env())
        .arg(format!("--endpoints={addr}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("etcdctl is not installed (apt-get install etcd-client)");
    use std::io::Write;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
    } else {
        drop(child.stdin.take());
    }
    child.wait_with_output().unwrap()
}

/// Output with what legitimately differs replaced: addresses, ids and the client's log
/// timestamps.
fn normal(out: &Output, addr: &str, lease: Option<&str>) -> (bool, String, String) {
    let clean = |b: &[u8]| {
        let mut s = String::from_utf8_lossy(b).replace(addr, "ADDR");
        if let Some(l) = lease {
            s = s.replace(l, "LEASE");
        }
        if let Ok(mut v) = serde_json::from_str::<serde_json::Value>(&s) {
            if let Some(h) = v.get_mut("header") {
                for f in ["cluster_id", "member_id", "raft_term"] {
                    h.as_object_mut().map(|o| o.remove(f));
                }
            }
            s = v.to_string();
        }
        // etcdctl's own retry warnings carry timestamps and client ids.
        s.lines()
            .filter(|l| !l.starts_with("{\"level\""))
            .collect::<Vec<_>>()
            .join("\n")
    };
    (out.status.success(), clean(&out.stdout), clean(&out.stderr))
}

struct Pair {
    etcd: Etcd,
    netsy: Netsy,
    steps: usize,
}

impl Pair {
    fn run(&mut self, args: &[&str], stdin: Option<&str>) -> (bool, String, String) {
        self.steps += 1;
        let want = normal(
            &etcdctl(&self.etcd.addr, args, stdin),
            &self.etcd.addr,
            None,
        );
        let got = normal(
            &etcdctl(&self.netsy.addr, args, stdin),
            &self.netsy.addr,
            None,
        );
        assert_eq!(
            got, want,
            "etcdctl {args:?}: netsy (left) differs from etcd (right)"
        );
        got
    }
}

fn lease_id(out: &Output) -> String {
    // "lease 694d7a2b4c1f2a0b granted with TTL(100s)"
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .nth(1)
        .unwrap()
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_behaves_as_with_etcd() {
    let dir = tempfile::tempdir().unwrap();
    same_as_etcd(&format!("file://{}", dir.path().display())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_behaves_as_with_etcd_on_s3() {
    common::s3_store("probe").await;
    same_as_etcd(&format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("etcdctl")
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_behaves_as_with_etcd_through_a_follower() {
    common::s3_store("probe").await;
    let store = format!(
        "s3://{}/{}",
        common::s3_bucket(),
        common::unique_prefix("etcdctl-follower")
    );
    let _leader = Netsy::start(&store, &["--name", "n0"]).await;
    // Started second, it follows the first; etcdctl talks only to it.
    same_as_etcd_on(Netsy::start(&store, &["--name", "n1"]).await).await;
}

async fn same_as_etcd(store: &str) {
    same_as_etcd_on(Netsy::start(store, &[]).await).await;
}

async fn same_as_etcd_on(netsy: Netsy) {
    let mut p = Pair {
        etcd: Etcd::start().await,
        netsy,
        steps: 0,
    };
    p.run(&["put", "foo", "bar"], None);
    p.run(&["put", "foo", "baz", "--prev-kv"], None);
    p.run(&["get", "foo"], None);
    p.run(&["get", "foo", "-w", "json"], None);
    p.run(&["get", "missing"], None);
    for (k, v) in [("/a/1", "x"), ("/a/2", "y"), ("/a/3", "z"), ("/b", "w")] {
        p.run(&["put", k, v], None);
    }
    p.run(&["get", "/a", "--prefix"], None);
    p.run(&["get", "/a", "--prefix", "--limit=2", "-w", "json"], None);
    p.run(&["get", "/a/2", "--from-key", "--keys-only"], None);
    p.run(
        &["get", "/", "--prefix", "--count-only", "-w", "json"],
        None,
    );
    p.run(
        &["get", "/", "--prefix", "--sort-by=VALUE", "--order=DESCEND"],
        None,
    );
    p.run(
        &[
            "get",
            "/",
            "--prefix",
            "--sort-by=CREATE",
            "--order=ASCEND",
            "--print-value-only",
        ],
        None,
    );
    p.run(&["get", "foo", "--rev=2"], None);
    p.run(&["get", "foo", "--rev=100"], None);
    p.run(&["del", "/a/1"], None);
    p.run(&["del", "/a", "--prefix", "--prev-kv"], None);
    p.run(&["del", "nothing"], None);
    p.run(
        &["txn"],
        Some("value(\"foo\") = \"baz\"\n\nput foo qux\nget foo\n\nput foo nope\n\n"),
    );
    p.run(
        &["txn", "-w", "json"],
        Some("mod(\"foo\") = \"1\"\n\nput x 1\n\nget foo\n\n"),
    );
    // Watch history replay (etcdctl prints events until `timeout` stops it).
    p.run(&["watch", "--rev=2", "foo"], None);
    p.run(&["watch", "--rev=1", "--prefix", "/", "--prev-kv"], None);

    // Leases: the ids differ, so each side's id is masked in its own output.
    let (le, ln) = (
        etcdctl(&p.etcd.addr, &["lease", "grant", "100"], None),
        etcdctl(&p.netsy.addr, &["lease", "grant", "100"], None),
    );
    let (le, ln) = (lease_id(&le), lease_id(&ln));
    let (e, n) = (Some(le.as_str()), Some(ln.as_str()));
    // Each side gets its own id.
    let netsy_put = etcdctl(
        &p.netsy.addr,
        &["put", "leased", "v", &format!("--lease={ln}")],
        None,
    );
    assert!(netsy_put.status.success());
    let etcd_put = etcdctl(
        &p.etcd.addr,
        &["put", "leased", "v", &format!("--lease={le}")],
        None,
    );
    assert!(etcd_put.status.success());
    let ttl_e = normal(
        &etcdctl(&p.etcd.addr, &["lease", "timetolive", &le, "--keys"], None),
        &p.etcd.addr,
        e,
    );
    let ttl_n = normal(
        &etcdctl(&p.netsy.addr, &["lease", "timetolive", &ln, "--keys"], None),
        &p.netsy.addr,
        n,
    );
    let strip_remaining = |s: &str| s.split("remaining(").next().unwrap().to_string();
    assert_eq!(strip_remaining(&ttl_n.1), strip_remaining(&ttl_e.1));
    assert!(ttl_n.1.contains("attached keys([leased])"), "{}", ttl_n.1);
    let ka = etcdctl(&p.netsy.addr, &["lease", "keep-alive", "--once", &ln], None);
    assert!(String::from_utf8_lossy(&ka.stdout).contains("keepalived with TTL(100)"));
    let list = etcdctl(&p.netsy.addr, &["lease", "list"], None);
    assert!(String::from_utf8_lossy(&list.stdout).contains(&ln));
    let rev_e = normal(
        &etcdctl(&p.etcd.addr, &["lease", "revoke", &le], None),
        &p.etcd.addr,
        e,
    );
    let rev_n = normal(
        &etcdctl(&p.netsy.addr, &["lease", "revoke", &ln], None),
        &p.netsy.addr,
        n,
    );
    assert_eq!(rev_n, rev_e);
    p.run(&["get", "leased"], None);

    // Compaction.
    p.run(&["compaction", "5"], None);
    p.run(&["get", "foo", "--rev=3"], None);
    p.run(&["compaction", "3"], None);
    eprintln!("{} etcdctl commands matched etcd", p.steps);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcdctl_cluster_and_maintenance() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(&format!("file://{}", dir.path().display()), &[]).await;
    let status = etcdctl(&n.addr, &["endpoint", "status", "-w", "json"], None);
    assert!(status.status.success());
    let v: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    let s = &v[0]["Status"];
    assert_eq!(s["version"], "3.7.0");
    assert_eq!(s["leader"], s["header"]["member_id"]);
    let health = etcdctl(&n.addr, &["endpoint", "health"], None);
    assert!(
        String::from_utf8_lossy(&health.stderr).contains("is healthy")
            || String::from_utf8_lossy(&health.stdout).contains("is healthy")
    );
    let members = etcdctl(&n.addr, &["member", "list"], None);
    let text = String::from_utf8_lossy(&members.stdout).to_string();
    assert!(text.contains(&format!("http://{}", n.addr)), "{text}");
    assert!(text.contains("started, netsy"), "{text}");
    let alarms = etcdctl(&n.addr, &["alarm", "list"], None);
    assert!(alarms.status.success() && alarms.stdout.is_empty());
    let defrag = etcdctl(&n.addr, &["defrag"], None);
    assert!(defrag.status.success());
    let snap = etcdctl(
        &n.addr,
        &[
            "snapshot",
            "save",
            dir.path().join("x.db").to_str().unwrap(),
        ],
        None,
    );
    assert!(
        snap.status.success(),
        "{}",
        String::from_utf8_lossy(&snap.stderr)
    );
    let users = etcdctl(&n.addr, &["user", "list"], None);
    assert!(users.status.success());
    // As etcd: authentication needs a root user first.
    let enable = etcdctl(&n.addr, &["auth", "enable"], None);
    assert!(!enable.status.success());
    let stderr = String::from_utf8_lossy(&enable.stderr);
    assert!(stderr.contains("root user does not exist"), "{stderr}");
}

/// Every endpoint form etcd accepts answers every command as etcd's does: bare
/// `host:port`, `http://host:port` (etcdctl sends the whole URL as the HTTP/2 `:authority`
/// from its per-endpoint clients: `endpoint status`, `hashkv`, `defrag`, `snapshot save`),
/// and `unix://` sockets (both listening on one, as with etcd's `--listen-client-urls`).
/// `https://` is in `tls`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_endpoint_form_works() {
    let dir = tempfile::tempdir().unwrap();
    let sock = |name: &str| dir.path().join(name).display().to_string();
    let port = common::free_port();
    let urls = format!("http://127.0.0.1:{port},unix://{}", sock("netsy.sock"));
    let netsy = Netsy::start_on(
        &format!("file://{}", dir.path().join("data").display()),
        port,
        &["--listen-client-urls", &urls],
    )
    .await;
    let (etcd, etcd_sock) = Etcd::start_with_socket().await;
    let snap = dir.path().join("s.db");
    let commands = common::endpoint_commands(snap.to_str().unwrap());
    let forms = [
        (etcd.addr.clone(), netsy.addr.clone()),
        (
            format!("http://{}", etcd.addr),
            format!("http://{}", netsy.addr),
        ),
        (
            format!("unix://{etcd_sock}"),
            format!("unix://{}", sock("netsy.sock")),
        ),
    ];
    let mut checked = 0;
    for (etcd_ep, netsy_ep) in &forms {
        for args in &commands {
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let args = args.as_slice();
            let e = etcdctl(etcd_ep, args, None);
            let n = etcdctl(netsy_ep, args, None);
            let stderr = String::from_utf8_lossy(&n.stderr);
            assert!(
                !stderr.contains("PROTOCOL_ERROR"),
                "{netsy_ep}: etcdctl {args:?}: {stderr}"
            );
            assert!(e.status.success(), "etcd: {etcd_ep}: etcdctl {args:?}");
            assert!(n.status.success(), "{netsy_ep}: etcdctl {args:?}: {stderr}");
            checked += 1;
        }
    }
    eprintln!("{checked} commands answered with every endpoint form");
}
