//! `netsy bench` keeps working: every workload runs against a real Netsy, briefly, and
//! reports sane, error-free results (no figure is asserted: speed is the bench's output,
//! not a test's).

mod common;

use common::Netsy;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_workload_runs_and_reports() {
    let dir = tempfile::tempdir().unwrap();
    let n = Netsy::start(dir.path().join("data").to_str().unwrap(), &[]).await;
    let json = dir.path().join("bench.json");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["bench", "--target", &format!("netsy={}", n.addr)])
        .args([
            "--workload",
            "memory,put,get,get-serializable,txn,list,watch,mixed,startup",
        ])
        .args([
            "--duration-seconds",
            "1",
            "--clients",
            "4",
            "--connections",
            "2",
        ])
        .args(["--keys", "100", "--watchers", "3", "--memory-keys", "500"])
        .args([
            "--startup-records",
            "5000",
            "--startup-records-per-chunk",
            "100",
        ])
        .args(["--startup-snapshot-mib", "1"])
        .args(["--json", json.to_str().unwrap()])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let results: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let names: Vec<&str> = results
        .iter()
        .map(|r| r["workload"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "memory",
            "put",
            "get",
            "get-serializable",
            "txn",
            "list",
            "watch",
            "mixed",
            "startup-chunks",
            "startup-snapshot"
        ]
    );
    for r in &results {
        assert!(r["ops"].as_u64().unwrap() > 0, "{r}");
        assert_eq!(r["errors"].as_u64(), Some(0), "{r}");
        assert!(stdout.contains(r["workload"].as_str().unwrap()));
    }
    let by = |w: &str| results.iter().find(|r| r["workload"] == w).unwrap();
    assert_eq!(by("watch")["extra"]["lost_events"].as_f64(), Some(0.0));
    assert_eq!(by("startup-chunks")["ops"].as_u64(), Some(5000));
    assert!(by("put")["extra"]["records_per_put"].as_f64().unwrap() >= 1.0);
    assert!(by("memory")["extra"]["rss_bytes_per_key"].is_number());
}
