//! `netsy inspect`: show a `.netsy` file and verify every CRC, for operators looking at a
//! bucket. Reads a local path, `file://` URL or `s3://bucket/key`; a chunk of a directory
//! store (kept in its segments) by the path it would have as a file.

use crate::format::{self, json, DataFile};
use crate::proto::netsy::{FileCompression, FileKind, RecordKind};
use crate::store::s3::{S3Options, S3Store};
use crate::store::ObjectStore;
use anyhow::Context;
use std::fmt::Write as _;

/// Fetches the bytes `target` names.
pub async fn fetch(target: &str, s3: &S3Options) -> anyhow::Result<Vec<u8>> {
    if let Some(rest) = target.strip_prefix("s3://") {
        let (bucket, key) = rest
            .split_once('/')
            .with_context(|| format!("{target}: expected s3://bucket/key"))?;
        let store = S3Store::connect(S3Options {
            bucket: bucket.to_string(),
            prefix: String::new(),
            ..s3.clone()
        })
        .await?;
        Ok(store.get(key).await?.data.to_vec())
    } else {
        let path = target.strip_prefix("file://").unwrap_or(target);
        match std::fs::read(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(data) = from_directory_store(std::path::Path::new(path)).await? {
                    return Ok(data);
                }
                Err(e).with_context(|| format!("reading {path}"))
            }
            read => read.with_context(|| format!("reading {path}")),
        }
    }
}

/// A chunk of a directory store is in its segments, not a file of its own: `path` is
/// looked up as a key of the nearest directory above it that holds segments.
async fn from_directory_store(path: &std::path::Path) -> anyhow::Result<Option<Vec<u8>>> {
    use crate::store::segments::{SegmentStore, SEGMENTS_DIR};
    let path = std::path::absolute(path)?;
    for root in path.ancestors().skip(1) {
        if root.join(SEGMENTS_DIR).is_dir() {
            let key = path.strip_prefix(root)?.to_string_lossy().into_owned();
            let store = SegmentStore::open(root, &[crate::log::layout::CHUNKS])?;
            return match store.get(&key).await {
                Ok(object) => Ok(Some(object.data.to_vec())),
                Err(crate::store::StoreError::NotFound { .. }) => Ok(None),
                Err(e) => Err(e.into()),
            };
        }
    }
    Ok(None)
}

/// Renders a decoded file as JSON: `{"header":…, "records":[…], "footer":…}`.
pub fn to_json(file: &DataFile) -> serde_json::Value {
    serde_json::json!({
        "header": json::header(&file.header),
        "records": file.records.iter().map(json::record).collect::<Vec<_>>(),
        "footer": json::footer(&file.footer),
    })
}

fn printable(bytes: &[u8]) -> String {
    bytes.escape_ascii().to_string()
}

/// Renders a decoded file as a human table.
pub fn to_table(name: &str, file: &DataFile) -> String {
    let h = &file.header;
    let mut out = String::new();
    let kind = FileKind::try_from(h.kind).map_or("?", |k| k.as_str_name());
    let comp = FileCompression::try_from(h.compression).map_or("?", |c| c.as_str_name());
    let _ = writeln!(out, "file        {name}");
    let _ = writeln!(out, "kind        {kind}");
    let _ = writeln!(out, "compression {comp}");
    let _ = writeln!(out, "records     {}", h.records_count);
    let _ = writeln!(out, "leader      {}", h.leader_id);
    if let Some(ts) = &h.created_at {
        let _ = writeln!(out, "created     {}", json::rfc3339(ts));
    }
    if h.revision != 0 || h.compact_revision != 0 {
        let _ = writeln!(
            out,
            "revision    {} (compacted at {})",
            h.revision, h.compact_revision
        );
    }
    let _ = writeln!(
        out,
        "\n{:>10} {:<12} {:>8} {:>8} {:>7} {:>18} {:>8}  key",
        "revision", "kind", "create", "prev", "version", "lease", "value"
    );
    for r in &file.records {
        let kind = match RecordKind::try_from(r.kind) {
            Ok(RecordKind::Kv) if r.deleted => "delete".to_string(),
            Ok(RecordKind::Kv) if r.created => "create".to_string(),
            Ok(RecordKind::Kv) => "update".to_string(),
            Ok(RecordKind::Compact) => format!("compact@{}", r.compact_revision),
            Ok(RecordKind::LeaseGrant) => format!("grant ttl={}", r.ttl),
            Ok(RecordKind::LeaseRevoke) => "revoke".to_string(),
            Ok(RecordKind::Auth) => "auth".to_string(),
            Err(_) => format!("kind {}", r.kind),
        };
        let _ = writeln!(
            out,
            "{:>10} {:<12} {:>8} {:>8} {:>7} {:>18} {:>8}  {}",
            r.revision,
            kind,
            r.create_revision,
            r.prev_revision,
            r.version,
            if r.lease != 0 {
                format!("{:x}", r.lease)
            } else {
                "-".into()
            },
            r.value.len(),
            printable(&r.key)
        );
    }
    let f = &file.footer;
    let _ = writeln!(
        out,
        "\nrevisions   {}..{}\nrecords crc {:#018x}\nfooter crc  {:#018x}\nall CRCs verified",
        f.first_revision, f.last_revision, f.records_crc, f.crc
    );
    out
}

/// Decodes and renders; a corrupt file is an error naming it and the failing check.
pub fn render(name: &str, data: &[u8], as_json: bool) -> anyhow::Result<String> {
    let file = format::decode(name, data)?;
    Ok(if as_json {
        serde_json::to_string_pretty(&to_json(&file))?
    } else {
        to_table(name, &file)
    })
}
