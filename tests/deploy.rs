//! The deployment files and docs stay true to the code: the IAM policy grants exactly the S3
//! calls the store makes, every variable they set is one `netsy serve` reads, every option
//! is documented in the README, the userdata embeds the systemd unit, and the scripts and
//! the Justfile parse.

use std::collections::BTreeSet;
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

fn read(path: &str) -> String {
    std::fs::read_to_string(format!("{ROOT}/{path}")).unwrap()
}

fn serve_help() -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_netsy"))
        .args(["serve", "--help"])
        .output()
        .unwrap();
    assert!(out.status.success());
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn iam_policy_grants_exactly_the_s3_calls_the_store_makes() {
    let code = read("src/store/s3.rs");
    let mut used = BTreeSet::new();
    for call in code.split('.').filter_map(|s| s.trim().strip_suffix("()")) {
        let action = match call {
            "get_object" | "head_object" => "s3:GetObject",
            "put_object" => "s3:PutObject",
            "delete_object" => "s3:DeleteObject",
            "list_objects_v2" => "s3:ListBucket",
            c if c.ends_with("_object") || c.ends_with("_bucket") || c.starts_with("list_") => {
                panic!(
                    "src/store/s3.rs calls {c}: map it here and grant it in deploy/iam-policy.json"
                )
            }
            _ => continue,
        };
        used.insert(action.to_string());
    }
    let policy: serde_json::Value = serde_json::from_str(&read("deploy/iam-policy.json")).unwrap();
    let granted: BTreeSet<String> = policy["Statement"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|s| s["Action"].as_array().unwrap().clone())
        .map(|a| a.as_str().unwrap().to_string())
        .filter(|a| a.starts_with("s3:"))
        .collect();
    assert_eq!(used, granted);
    assert_eq!(used.len(), 4, "{used:?}");
}

#[test]
fn every_variable_the_deploy_files_set_is_read_by_netsy_serve() {
    let help = serve_help();
    for file in ["deploy/netsy.env", "deploy/userdata.sh", "Containerfile"] {
        let text = read(file);
        let names: BTreeSet<&str> = text
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|w| w.starts_with("NETSY_") && w.len() > 6)
            .collect();
        assert!(!names.is_empty(), "{file}");
        for name in names {
            assert!(
                help.contains(&format!("env: {name}=")),
                "{file} sets {name}, which `netsy serve` does not read"
            );
        }
    }
}

#[test]
fn every_serve_option_is_in_the_readme() {
    let readme = read("README.md");
    let help = serve_help();
    let flags: BTreeSet<&str> = help
        .split_whitespace()
        .filter(|w| w.starts_with("--") && w.len() > 2)
        .map(|w| w.trim_end_matches([',', '.', ')', ':']))
        .filter(|w| !matches!(*w, "--help" | "--version"))
        .collect();
    assert!(flags.len() > 30, "{flags:?}");
    let missing: Vec<&&str> = flags
        .iter()
        .filter(|f| !readme.contains(&format!("`{f}`")))
        .collect();
    assert!(
        missing.is_empty(),
        "README's configuration table lacks {missing:?}"
    );
}

#[test]
fn userdata_embeds_the_systemd_unit() {
    assert!(read("deploy/userdata.sh").contains(&read("deploy/netsy.service")));
}

#[test]
fn scripts_parse_and_the_justfile_lists_its_recipes() {
    for script in [
        "scripts/test.sh",
        "scripts/localstack.sh",
        "scripts/certs.sh",
        "scripts/etcdctl.sh",
        "scripts/kube-apiserver.sh",
        "scripts/bench.sh",
        "scripts/fuzz.sh",
        "scripts/protoc",
        "deploy/userdata.sh",
        ".ci/run",
    ] {
        let out = Command::new("bash")
            .args(["-n", &format!("{ROOT}/{script}")])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let out = Command::new("just")
        .args(["--justfile", &format!("{ROOT}/Justfile"), "--summary"])
        .output()
        .expect("just is installed (scripts/test.sh installs it)");
    assert!(out.status.success());
    let recipes: BTreeSet<String> = String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .map(String::from)
        .collect();
    for r in [
        "run",
        "dev",
        "test",
        "lint",
        "etcdctl",
        "certs",
        "kube-apiserver",
        "fuzz",
    ] {
        assert!(
            recipes.contains(r),
            "Justfile has no {r} recipe: {recipes:?}"
        );
    }
}
