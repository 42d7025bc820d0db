//! The fuzz targets' inputs, run on every `cargo test`: the committed corpus
//! (`fuzz/corpus/<target>/`, grown by `cargo fuzz` and minimised), every file the Go Netsy
//! wrote, each of those truncated at every length and with each byte flipped, and a few
//! request sequences built here. `NETSY_WRITE_FUZZ_SEEDS=1` writes the built sequences into
//! the corpus (how the corpus was seeded).

use netsy::proto::etcdserverpb::{
    compare, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, RequestOp,
    TxnRequest,
};
use prost::Message;
use std::path::{Path, PathBuf};

fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(dir) else {
        return out;
    };
    for e in entries {
        let path = e.unwrap().path();
        if path.is_dir() {
            out.extend(files_in(&path));
        } else {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn decoder_corpus_and_go_files_with_every_truncation_and_flip() {
    let mut inputs = files_in(&root().join("fuzz/corpus/decode_file"));
    let go: Vec<PathBuf> = files_in(&root().join("testdata/go-netsy"))
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "netsy"))
        .collect();
    assert!(go.len() >= 5, "the Go reference files are missing");
    inputs.extend(go.iter().cloned());
    for path in &inputs {
        netsy::fuzz::decode_file(&std::fs::read(path).unwrap());
    }
    let mut variants = 0;
    for path in &go {
        let data = std::fs::read(path).unwrap();
        if data.len() > 64 * 1024 {
            continue;
        }
        for len in 0..data.len() {
            netsy::fuzz::decode_file(&data[..len]);
        }
        for i in 0..data.len() {
            let mut flipped = data.clone();
            flipped[i] ^= 0x5a;
            netsy::fuzz::decode_file(&flipped);
        }
        variants += 2 * data.len();
    }
    eprintln!(
        "decoded {} files and {variants} damaged variants",
        inputs.len()
    );
}

fn op(code: u8, body: Vec<u8>) -> Vec<u8> {
    assert!(body.len() < 256, "seed bodies fit one length byte");
    let mut out = vec![code, body.len() as u8];
    out.extend(body);
    out
}

fn put(key: &str, value: &str, lease: i64) -> Vec<u8> {
    PutRequest {
        key: key.as_bytes().to_vec().into(),
        value: value.as_bytes().to_vec().into(),
        lease,
        prev_kv: true,
        ..Default::default()
    }
    .encode_to_vec()
}

/// Request sequences in the shapes Kubernetes sends: creates, guarded updates, deletes,
/// prefix reads, compaction and leases.
fn seeds() -> Vec<Vec<u8>> {
    let create = |key: &str| {
        TxnRequest {
            compare: vec![Compare {
                result: compare::CompareResult::Equal as i32,
                target: compare::CompareTarget::Mod as i32,
                key: key.as_bytes().to_vec().into(),
                target_union: Some(compare::TargetUnion::ModRevision(0)),
                ..Default::default()
            }],
            success: vec![RequestOp {
                request: Some(request_op::Request::RequestPut(PutRequest {
                    key: key.as_bytes().to_vec().into(),
                    value: b"v".to_vec().into(),
                    ..Default::default()
                })),
            }],
            failure: vec![RequestOp {
                request: Some(request_op::Request::RequestRange(RangeRequest {
                    key: key.as_bytes().to_vec().into(),
                    ..Default::default()
                })),
            }],
        }
        .encode_to_vec()
    };
    let prefix = RangeRequest {
        key: b"/registry/".to_vec().into(),
        range_end: b"/registry0".to_vec().into(),
        limit: 2,
        ..Default::default()
    }
    .encode_to_vec();
    let delete_prefix = DeleteRangeRequest {
        key: b"/registry/a".to_vec().into(),
        range_end: b"/registry/b".to_vec().into(),
        prev_kv: true,
    }
    .encode_to_vec();
    vec![
        [
            op(1, put("/registry/a", "1", 0)),
            op(1, put("/registry/a", "2", 0)),
            op(0, prefix.clone()),
        ]
        .concat(),
        [
            op(3, create("/registry/pods/x")),
            op(3, create("/registry/pods/x")),
            op(4, vec![2]),
        ]
        .concat(),
        [
            op(5, vec![7, 30]),
            op(1, put("/registry/events/e", "1", 7)),
            op(6, vec![7]),
            op(0, prefix.clone()),
        ]
        .concat(),
        [
            op(1, put("/registry/a1", "x", 0)),
            op(1, put("/registry/a2", "y", 0)),
            op(2, delete_prefix),
            op(4, vec![3]),
            op(0, prefix),
        ]
        .concat(),
    ]
}

#[test]
fn request_corpus_and_seeds() {
    let seeds = seeds();
    if std::env::var_os("NETSY_WRITE_FUZZ_SEEDS").is_some() {
        let dir = root().join("fuzz/corpus/requests");
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }
    let corpus = files_in(&root().join("fuzz/corpus/requests"));
    for s in &seeds {
        netsy::fuzz::requests(s);
    }
    for path in &corpus {
        netsy::fuzz::requests(&std::fs::read(path).unwrap());
    }
    eprintln!(
        "ran {} seeds and {} corpus inputs",
        seeds.len(),
        corpus.len()
    );
}
