//! Moving a cluster between Netsy and etcd with etcd's own tools: `etcdctl snapshot save`
//! against Netsy, `snapshot status` and `snapshot restore` by the etcd under test (3.4's
//! etcdctl, or etcdutl for 3.5+), and that etcd started on the restored data dir must answer
//! as the Netsy did: the same head revision, the same ranges at every retained revision,
//! the same leases, the same watch history and the same HashKV.

mod common;

use common::{etcd_bin, etcd_version, etcdctl_bin, etcdctl_env, Etcd, Netsy};
use etcd_client::{
    Client, CompactionOptions, EventType, GetOptions, LeaseGrantOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};
use std::path::Path;
use std::process::Command;

/// The tool that reads and restores snapshots for the etcd under test: etcdutl beside a
/// 3.5+ etcd (or on the PATH), 3.4's etcdctl.
fn snapshot_tool() -> (String, Vec<(&'static str, &'static str)>) {
    if etcd_version() >= (3, 5) {
        let beside = Path::new(&etcd_bin()).with_file_name("etcdutl");
        let tool = if beside.exists() {
            beside.display().to_string()
        } else {
            "etcdutl".to_string()
        };
        (tool, vec![])
    } else {
        (etcdctl_bin(), etcdctl_env())
    }
}

fn run(cmd: &str, args: &[&str], env: &[(&str, &str)]) -> String {
    let out = Command::new(cmd)
        .args(args)
        .envs(env.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("{cmd}: {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// A history with what a snapshot must carry: multi-key transactions, deletes, leases with
/// keys and a revoked one, a compaction, values larger than a page, enough keys for branch
/// pages. Returns the compacted revision.
async fn write_history(c: &mut Client) -> i64 {
    for i in 0..1500 {
        c.put(format!("/registry/pods/ns/p{i:05}"), format!("v{i}"), None)
            .await
            .unwrap();
    }
    let txn = Txn::new().and_then(vec![
        TxnOp::put("multi/b", "1", None),
        TxnOp::put("multi/a", "1", None),
        TxnOp::delete("/registry/pods/ns/p00001", None),
    ]);
    c.txn(txn).await.unwrap();
    c.put("big", vec![7u8; 100_000], None).await.unwrap();
    for i in 0..300 {
        c.put(format!("/registry/pods/ns/p{i:05}"), format!("w{i}"), None)
            .await
            .unwrap();
    }
    let kept = c.lease_grant(3600, Some(LeaseGrantOptions::new().with_id(0x1234)));
    let kept = kept.await.unwrap().id();
    let gone = c.lease_grant(3600, None).await.unwrap().id();
    for (k, lease) in [("l/1", kept), ("l/2", kept), ("g/1", gone), ("g/2", gone)] {
        c.put(k, "x", Some(PutOptions::new().with_lease(lease)))
            .await
            .unwrap();
    }
    c.lease_revoke(gone).await.unwrap();
    c.delete(
        "/registry/pods/ns/p0",
        Some(etcd_client::DeleteOptions::new().with_prefix()),
    )
    .await
    .unwrap();
    let compact = c
        .get("big", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision()
        - 5;
    c.compact(compact, Some(CompactionOptions::new().with_physical()))
        .await
        .unwrap();
    for i in 0..50 {
        c.put(format!("after/{i}"), vec![b'a'; i * 100], None)
            .await
            .unwrap();
    }
    c.put("big", vec![8u8; 70_000], None).await.unwrap();
    compact
}

/// Everything a client can read of a store, for comparison.
async fn observe(c: &mut Client, compact: i64) -> Vec<String> {
    let mut seen = Vec::new();
    let head = c
        .get("none", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    seen.push(format!("head {head}"));
    for rev in compact..=head {
        let r = c
            .get(
                "\0",
                Some(GetOptions::new().with_from_key().with_revision(rev)),
            )
            .await
            .unwrap();
        let kvs: Vec<String> = r
            .kvs()
            .iter()
            .map(|kv| {
                format!(
                    "{:?} c{} m{} v{} l{} {}",
                    kv.key_str().unwrap(),
                    kv.create_revision(),
                    kv.mod_revision(),
                    kv.version(),
                    kv.lease(),
                    crc32c::crc32c(kv.value())
                )
            })
            .collect();
        seen.push(format!("at {rev}: {} {kvs:?}", r.count()));
    }
    let err = c
        .get("x", Some(GetOptions::new().with_revision(compact - 1)))
        .await
        .unwrap_err();
    seen.push(format!("below compaction: {err}"));
    let mut leases: Vec<i64> = c
        .leases()
        .await
        .unwrap()
        .leases()
        .iter()
        .map(|l| l.id())
        .collect();
    leases.sort();
    for id in leases {
        let ttl = c.lease_time_to_live(id, None).await.unwrap();
        seen.push(format!("lease {id:x} granted {}", ttl.granted_ttl()));
    }
    let users = c.user_list().await.unwrap();
    seen.push(format!("users {:?}", users.users()));
    for user in users.users() {
        seen.push(format!(
            "{user}'s roles {:?}",
            c.user_get(user.as_str()).await.unwrap().roles()
        ));
    }
    let roles = c.role_list().await.unwrap();
    for role in roles.roles() {
        let perms: Vec<String> = c
            .role_get(role.as_str())
            .await
            .unwrap()
            .permissions()
            .iter()
            .map(|p| format!("{:?} {:?} {:?}", p.get_type(), p.key(), p.range_end()))
            .collect();
        seen.push(format!("role {role}: {perms:?}"));
    }
    // HashKV at every revision but the compacted one (a live etcd or Netsy answers the hash
    // taken while compacting there, one restored from a snapshot cannot).
    for rev in (compact + 1..=head).chain([0]) {
        let h = c.hash_kv(rev).await.unwrap();
        seen.push(format!(
            "hashkv {rev}: {} compacted {}",
            h.hash(),
            h.compact_version()
        ));
    }
    let mut stream = c
        .watch(
            "\0",
            Some(
                WatchOptions::new()
                    .with_from_key()
                    .with_start_revision(compact)
                    .with_prev_key(),
            ),
        )
        .await
        .unwrap();
    let mut events = 0;
    while let Ok(Some(msg)) =
        tokio::time::timeout(std::time::Duration::from_secs(2), stream.message())
            .await
            .unwrap()
    {
        for e in msg.events() {
            let kv = e.kv().unwrap();
            let kind = if e.event_type() == EventType::Put {
                "put"
            } else {
                "delete"
            };
            seen.push(format!(
                "event {kind} {:?} m{} prev {:?}",
                kv.key_str().unwrap(),
                kv.mod_revision(),
                e.prev_kv().map(|p| p.mod_revision())
            ));
            events += 1;
        }
        if msg
            .events()
            .last()
            .is_some_and(|e| e.kv().unwrap().mod_revision() == head)
        {
            break;
        }
    }
    assert!(events > 0, "no watch events from the compacted revision");
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_restores_a_netsy_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let netsy = Netsy::start(
        &format!("file://{}", dir.path().join("data").display()),
        &[],
    )
    .await;
    let mut c = netsy.client().await.unwrap();
    let compact = write_history(&mut c).await;
    let file = dir.path().join("netsy.db");
    let file = file.to_str().unwrap();
    // The URL form of the endpoint, as Netsy prints it at start-up.
    let endpoint = format!("--endpoints=http://{}", netsy.addr);
    let out = run(
        &etcdctl_bin(),
        &[&endpoint, "snapshot", "save", file],
        &etcdctl_env(),
    );
    assert!(out.contains("Snapshot saved at"), "{out}");

    let (tool, env) = snapshot_tool();
    let status = run(&tool, &["snapshot", "status", file, "-w", "json"], &env);
    let head = c
        .get("none", None)
        .await
        .unwrap()
        .header()
        .unwrap()
        .revision();
    let status: serde_json::Value = serde_json::from_str(status.lines().last().unwrap()).unwrap();
    assert_eq!(status["revision"], head, "snapshot status: {status}");

    let want = observe(&mut c, compact).await;
    let etcd = Etcd::launch(&[], |data, peer| {
        let cluster = format!("diff={peer}");
        run(
            &tool,
            &[
                "snapshot",
                "restore",
                file,
                "--data-dir",
                data.to_str().unwrap(),
                "--name",
                "diff",
                "--initial-cluster",
                &cluster,
                "--initial-advertise-peer-urls",
                peer,
            ],
            &env,
        );
    })
    .await;
    let mut e = Client::connect([etcd.addr.as_str()], None).await.unwrap();
    let got = observe(&mut e, compact).await;
    assert_eq!(want.len(), got.len(), "different lengths");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            g, w,
            "etcd restored from Netsy's snapshot (left), Netsy (right)"
        );
    }
}

fn netsy_bin() -> &'static str {
    env!("CARGO_BIN_EXE_netsy")
}

/// `netsy snapshot restore`: exit status and output.
fn netsy_restore(file: &str, store: &str, extra: &[&str]) -> (bool, String) {
    let out = Command::new(netsy_bin())
        .args(["snapshot", "restore", file, "--store", store])
        .args(extra)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn netsy_restores_an_etcd_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let etcd = Etcd::start().await;
    let mut e = Client::connect([etcd.addr.as_str()], None).await.unwrap();
    let compact = write_history(&mut e).await;
    let file = dir.path().join("etcd.db");
    let file = file.to_str().unwrap();
    let endpoint = format!("--endpoints=http://{}", etcd.addr);
    run(
        &etcdctl_bin(),
        &[&endpoint, "snapshot", "save", file],
        &etcdctl_env(),
    );
    let store = format!("file://{}", dir.path().join("netsy").display());
    let (ok, out) = netsy_restore(file, &store, &[]);
    assert!(ok, "{out}");
    let want = observe(&mut e, compact).await;
    let netsy = Netsy::start(&store, &[]).await;
    let mut c = netsy.client().await.unwrap();
    let got = observe(&mut c, compact).await;
    assert_eq!(want.len(), got.len(), "different lengths");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(
            g, w,
            "Netsy restored from etcd's snapshot (left), etcd (right)"
        );
    }
    drop(netsy);

    // Refused, naming the problem, and nothing written: a store that is not empty, a
    // truncated file, a corrupted one, a file that is not an etcd database.
    let (ok, out) = netsy_restore(file, &store, &[]);
    assert!(!ok && out.contains("is not empty"), "{out}");
    let data = std::fs::read(file).unwrap();
    let bad = |name: &str, bytes: &[u8]| {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path.display().to_string()
    };
    let empty = dir.path().join("empty");
    let empty_store = format!("file://{}", empty.display());
    let truncated = bad("truncated.db", &data[..data.len() / 2]);
    let (ok, out) = netsy_restore(&truncated, &empty_store, &[]);
    assert!(!ok && out.contains("no SHA-256 trailer"), "{out}");
    let (ok, out) = netsy_restore(&truncated, &empty_store, &["--skip-hash-check"]);
    assert!(!ok && out.contains("truncated"), "{out}");
    let mut flipped = data.clone();
    flipped[3 * 4096 + 100] ^= 0xff;
    let flipped = bad("flipped.db", &flipped);
    let (ok, out) = netsy_restore(&flipped, &empty_store, &[]);
    assert!(!ok && out.contains("SHA-256 mismatch"), "{out}");
    let foreign = bad("foreign.db", &vec![b'x'; 8192 + 32]);
    let (ok, out) = netsy_restore(&foreign, &empty_store, &["--skip-hash-check"]);
    assert!(!ok && out.contains("not a bbolt database"), "{out}");
    let listed = std::fs::read_dir(&empty).map(|d| d.count()).unwrap_or(0);
    assert_eq!(listed, 0, "a refused restore wrote into the store");
}
