//! TLS and mutual TLS on the client port, through etcdctl and curl-less HTTPS probes, with
//! certificates made by `scripts/certs.sh` (so the script is tested too).

mod common;

use common::{etcdctl, free_port, Netsy};
use std::path::{Path, PathBuf};

fn certs(dir: &Path) -> PathBuf {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/certs.sh"))
        .arg(dir)
        .output()
        .expect("run scripts/certs.sh");
    assert!(
        out.status.success(),
        "certs.sh failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.to_path_buf()
}

fn p(dir: &Path, f: &str) -> String {
    dir.join(f).display().to_string()
}

/// etcdctl against `https://addr` trusting `ca`, with an optional client cert pair.
fn etcdctl_tls(
    addr: &str,
    ca: &str,
    client: Option<(&str, &str)>,
    command: &[&str],
) -> (bool, String, String) {
    let mut args = vec![
        format!("--endpoints=https://{addr}"),
        format!("--cacert={ca}"),
        "--dial-timeout=2s".into(),
        "--command-timeout=3s".into(),
    ];
    if let Some((c, k)) = client {
        args.push(format!("--cert={c}"));
        args.push(format!("--key={k}"));
    }
    args.extend(command.iter().map(|s| s.to_string()));
    etcdctl(&args.iter().map(String::as_str).collect::<Vec<_>>())
}

/// `etcdctl put KEY v` over TLS: whether it answered OK, and its stderr.
fn put(addr: &str, ca: &str, client: Option<(&str, &str)>, key: &str) -> (bool, String) {
    let (ok, out, err) = etcdctl_tls(addr, ca, client, &["put", key, "v"]);
    (ok && out.trim() == "OK", err)
}

async fn start_tls(store: &str, extra: &[&str]) -> (Netsy, String) {
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut args = vec!["--listen-metrics-addr", metrics.as_str()];
    args.extend(extra);
    let mut n = Netsy::spawn(store, free_port(), &args);
    n.wait_http(&metrics, "/readyz", 200).await;
    (n, metrics)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_requires_a_client_certificate_from_the_trusted_ca() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let other = certs(&dir.path().join("other"));
    let store = dir.path().join("data");
    let (n, _) = start_tls(
        store.to_str().unwrap(),
        &[
            "--cert-file",
            &p(&a, "server.pem"),
            "--key-file",
            &p(&a, "server-key.pem"),
            "--trusted-ca-file",
            &p(&a, "ca.pem"),
            "--client-cert-auth",
        ],
    )
    .await;
    let ca = p(&a, "ca.pem");
    let good = (p(&a, "client.pem"), p(&a, "client-key.pem"));
    let (ok, err) = put(&n.addr, &ca, Some((&good.0, &good.1)), "k1");
    assert!(ok, "client with a certificate from the trusted CA: {err}");
    // etcdctl's per-endpoint commands send the whole `https://` URL as `:authority`.
    for cmd in [
        &["endpoint", "status"][..],
        &["endpoint", "health"],
        &["defrag"],
    ] {
        let (ok, out, err) = etcdctl_tls(&n.addr, &ca, Some((&good.0, &good.1)), cmd);
        assert!(ok, "etcdctl {cmd:?} over https://: {out}{err}");
    }
    let (ok, _) = put(&n.addr, &ca, None, "k2");
    assert!(!ok, "a client without a certificate must be refused");
    let stranger = (p(&other, "client.pem"), p(&other, "client-key.pem"));
    let (ok, _) = put(&n.addr, &ca, Some((&stranger.0, &stranger.1)), "k3");
    assert!(!ok, "a client certificate from another CA must be refused");
    let (ok, _) = put(
        &n.addr,
        &p(&other, "ca.pem"),
        Some((&good.0, &good.1)),
        "k4",
    );
    assert!(
        !ok,
        "a client that does not trust the server's CA must fail"
    );
    // Nothing the refused clients sent was written.
    let (ok, out, err) = etcdctl(&[
        &format!("--endpoints=https://{}", n.addr),
        &format!("--cacert={ca}"),
        &format!("--cert={}", good.0),
        &format!("--key={}", good.1),
        "get",
        "k",
        "--prefix",
        "--keys-only",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.split_whitespace().collect::<Vec<_>>(), ["k1"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_tls_without_client_auth_and_plain_clients_refused() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let store = dir.path().join("data");
    let (n, _) = start_tls(
        store.to_str().unwrap(),
        &[
            "--cert-file",
            &p(&a, "server.pem"),
            "--key-file",
            &p(&a, "server-key.pem"),
        ],
    )
    .await;
    let (ok, err) = put(&n.addr, &p(&a, "ca.pem"), None, "k");
    assert!(ok, "TLS without client certificates: {err}");
    // A plaintext client gets no service from a TLS port.
    let (ok, _, _) = etcdctl(&[
        &format!("--endpoints=http://{}", n.addr),
        "--dial-timeout=2s",
        "--command-timeout=3s",
        "put",
        "plain",
        "v",
    ]);
    assert!(!ok, "a plaintext client must not reach a TLS port");
    assert!(common::http_get(&n.addr, "/health")
        .await
        .map_or(true, |(code, _)| code != 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificates_are_reloaded_when_the_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let b = certs(&dir.path().join("b"));
    let live = dir.path().join("live");
    std::fs::create_dir(&live).unwrap();
    for f in ["server.pem", "server-key.pem", "ca.pem"] {
        std::fs::copy(a.join(f), live.join(f)).unwrap();
    }
    let store = dir.path().join("data");
    let (n, _) = start_tls(
        store.to_str().unwrap(),
        &[
            "--cert-file",
            &p(&live, "server.pem"),
            "--key-file",
            &p(&live, "server-key.pem"),
            "--trusted-ca-file",
            &p(&live, "ca.pem"),
        ],
    )
    .await;
    let client_a = (p(&a, "client.pem"), p(&a, "client-key.pem"));
    let client_b = (p(&b, "client.pem"), p(&b, "client-key.pem"));
    let (ok, err) = put(
        &n.addr,
        &p(&a, "ca.pem"),
        Some((&client_a.0, &client_a.1)),
        "a",
    );
    assert!(ok, "set A before the rotation: {err}");

    // Rotate: a key written before its certificate must not break anything meanwhile.
    std::fs::copy(b.join("server-key.pem"), live.join("server-key.pem")).unwrap();
    let (ok, err) = put(
        &n.addr,
        &p(&a, "ca.pem"),
        Some((&client_a.0, &client_a.1)),
        "mid",
    );
    assert!(
        ok,
        "a half-rotated set keeps the previous certificates: {err}"
    );
    std::fs::copy(b.join("server.pem"), live.join("server.pem")).unwrap();
    std::fs::copy(b.join("ca.pem"), live.join("ca.pem")).unwrap();

    let (ok, err) = put(
        &n.addr,
        &p(&b, "ca.pem"),
        Some((&client_b.0, &client_b.1)),
        "b",
    );
    assert!(ok, "set B after the rotation, same process: {err}");
    let (ok, _) = put(
        &n.addr,
        &p(&a, "ca.pem"),
        Some((&client_a.0, &client_a.1)),
        "old",
    );
    assert!(!ok, "set A no longer accepted after the rotation");
    assert!(n.log().contains("reloaded TLS certificates"), "{}", n.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unusable_tls_options_fail_at_start_naming_the_option() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let store = dir.path().join("data");
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec!["--cert-file".into(), p(&a, "server.pem")],
            "--cert-file needs --key-file",
        ),
        (
            vec![
                "--cert-file".into(),
                p(&a, "server.pem"),
                "--key-file".into(),
                p(&a, "server-key.pem"),
                "--client-cert-auth".into(),
            ],
            "--client-cert-auth needs --trusted-ca-file",
        ),
        (
            vec![
                "--cert-file".into(),
                p(&a, "missing.pem"),
                "--key-file".into(),
                p(&a, "server-key.pem"),
            ],
            "--cert-file",
        ),
        (
            vec![
                "--cert-file".into(),
                p(&a, "server.pem"),
                "--key-file".into(),
                p(&a, "client-key.pem"),
            ],
            "do not form a usable pair",
        ),
        (
            vec!["--trusted-ca-file".into(), p(&a, "ca.pem")],
            "need TLS",
        ),
    ];
    for (args, expected) in cases {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
            .args(["serve", "--store", store.to_str().unwrap()])
            .args([
                "--listen-client-addr",
                &format!("127.0.0.1:{}", free_port()),
            ])
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} must fail");
        assert!(
            err.contains(expected),
            "{args:?}: expected {expected:?} in {err}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_reaches_the_leader_over_mutual_tls() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let store = dir.path().join("data");
    let flags = [
        "--cert-file",
        &p(&a, "server.pem"),
        "--key-file",
        &p(&a, "server-key.pem"),
        "--trusted-ca-file",
        &p(&a, "ca.pem"),
        "--client-cert-auth",
    ]
    .map(|s| s.to_string());
    let flags: Vec<&str> = flags.iter().map(|s| s.as_str()).collect();
    let (_leader, _) = start_tls(store.to_str().unwrap(), &flags).await;
    // Ready only once it follows: its stream to the leader runs over mutual TLS.
    let (follower, _) = start_tls(store.to_str().unwrap(), &flags).await;
    let ca = p(&a, "ca.pem");
    let good = (p(&a, "client.pem"), p(&a, "client-key.pem"));
    let (ok, err) = put(
        &follower.addr,
        &ca,
        Some((&good.0, &good.1)),
        "via-follower",
    );
    assert!(ok, "a write forwarded over TLS: {err}\n{}", follower.log());
    let (ok, out, err) = etcdctl(&[
        &format!("--endpoints=https://{}", follower.addr),
        &format!("--cacert={ca}"),
        &format!("--cert={}", good.0),
        &format!("--key={}", good.1),
        "get",
        "via-follower",
    ]);
    assert!(ok, "{err}");
    assert_eq!(out.lines().collect::<Vec<_>>(), ["via-follower", "v"]);
}

/// Every command of the endpoint-form suite (`etcdctl`'s) over `https://` endpoints, against
/// an etcd and a Netsy serving TLS with the same certificate: each answers as etcd's does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_answers_over_https_as_with_etcd() {
    let dir = tempfile::tempdir().unwrap();
    let a = certs(&dir.path().join("a"));
    let (cert, key, ca) = (
        p(&a, "server.pem"),
        p(&a, "server-key.pem"),
        p(&a, "ca.pem"),
    );
    let store = dir.path().join("data");
    let (n, _) = start_tls(
        store.to_str().unwrap(),
        &["--cert-file", &cert, "--key-file", &key],
    )
    .await;
    let etcd = common::Etcd::start_tls(&cert, &key).await;
    let snap = dir.path().join("s.db");
    for args in common::endpoint_commands(snap.to_str().unwrap()) {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let (ok, out, err) = etcdctl_tls(&etcd.addr, &ca, None, &args);
        assert!(ok, "etcd: etcdctl {args:?} over https://: {out}{err}");
        let (ok, out, err) = etcdctl_tls(&n.addr, &ca, None, &args);
        assert!(ok, "netsy: etcdctl {args:?} over https://: {out}{err}");
        assert!(!err.contains("PROTOCOL_ERROR"), "{err}");
    }
}
