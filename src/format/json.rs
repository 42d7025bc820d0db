//! A protojson-shaped view of data files (camelCase names, int64 as strings, bytes as base64,
//! zero fields omitted), the same shape the Go reader prints, so `netsy inspect --json` output
//! can be compared with Go tooling line by line.

use crate::proto::netsy::{FileCompression, FileFooter, FileHeader, FileKind, Record, RecordKind};
use base64::Engine;
use serde_json::{Map, Value};

fn b64(data: &[u8]) -> Value {
    Value::String(base64::engine::general_purpose::STANDARD.encode(data))
}

fn put_i64(m: &mut Map<String, Value>, name: &str, v: i64) {
    if v != 0 {
        m.insert(name.into(), Value::String(v.to_string()));
    }
}

fn put_u64(m: &mut Map<String, Value>, name: &str, v: u64) {
    if v != 0 {
        m.insert(name.into(), Value::String(v.to_string()));
    }
}

fn put_ts(m: &mut Map<String, Value>, name: &str, ts: &Option<prost_types::Timestamp>) {
    if let Some(ts) = ts {
        m.insert(name.into(), Value::String(rfc3339(ts)));
    }
}

/// A record as protojson.
pub fn record(r: &Record) -> Value {
    let mut m = Map::new();
    put_i64(&mut m, "revision", r.revision);
    if !r.key.is_empty() {
        m.insert("key".into(), b64(&r.key));
    }
    if r.created {
        m.insert("created".into(), Value::Bool(true));
    }
    if r.deleted {
        m.insert("deleted".into(), Value::Bool(true));
    }
    put_i64(&mut m, "createRevision", r.create_revision);
    put_i64(&mut m, "prevRevision", r.prev_revision);
    put_i64(&mut m, "version", r.version);
    put_i64(&mut m, "lease", r.lease);
    put_i64(&mut m, "dek", r.dek);
    if !r.value.is_empty() {
        m.insert("value".into(), b64(&r.value));
    }
    put_ts(&mut m, "createdAt", &r.created_at);
    put_ts(&mut m, "compactedAt", &r.compacted_at);
    if !r.leader_id.is_empty() {
        m.insert("leaderId".into(), Value::String(r.leader_id.clone()));
    }
    put_ts(&mut m, "replicatedAt", &r.replicated_at);
    if r.kind != 0 {
        let name = RecordKind::try_from(r.kind)
            .map(|k| k.as_str_name().to_string())
            .unwrap_or_else(|_| r.kind.to_string());
        m.insert("kind".into(), Value::String(name));
    }
    put_i64(&mut m, "compactRevision", r.compact_revision);
    put_i64(&mut m, "ttl", r.ttl);
    put_u64(&mut m, "crc", r.crc);
    Value::Object(m)
}

/// A header as protojson.
pub fn header(h: &FileHeader) -> Value {
    let mut m = Map::new();
    put_u64(&mut m, "crc", h.crc);
    if h.schema_version != 0 {
        m.insert("schemaVersion".into(), Value::from(h.schema_version));
    }
    let kind = FileKind::try_from(h.kind)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| h.kind.to_string());
    m.insert("kind".into(), Value::String(kind));
    let compression = FileCompression::try_from(h.compression)
        .map(|k| k.as_str_name().to_string())
        .unwrap_or_else(|_| h.compression.to_string());
    m.insert("compression".into(), Value::String(compression));
    put_i64(&mut m, "recordsCount", h.records_count);
    if !h.leader_id.is_empty() {
        m.insert("leaderId".into(), Value::String(h.leader_id.clone()));
    }
    put_ts(&mut m, "createdAt", &h.created_at);
    put_i64(&mut m, "compactRevision", h.compact_revision);
    put_i64(&mut m, "revision", h.revision);
    Value::Object(m)
}

/// A footer as protojson.
pub fn footer(f: &FileFooter) -> Value {
    let mut m = Map::new();
    put_u64(&mut m, "recordsCrc", f.records_crc);
    put_i64(&mut m, "firstRevision", f.first_revision);
    put_i64(&mut m, "lastRevision", f.last_revision);
    put_u64(&mut m, "crc", f.crc);
    Value::Object(m)
}

/// RFC 3339 in UTC with 0, 3, 6 or 9 fractional digits, as protojson prints timestamps.
pub fn rfc3339(ts: &prost_types::Timestamp) -> String {
    let secs = ts.seconds;
    let days = secs.div_euclid(86_400);
    let sod = secs.rem_euclid(86_400);
    let (y, mo, d) = civil_from_days(days);
    let (h, mi, s) = (sod / 3600, sod % 3600 / 60, sod % 60);
    let nanos = ts.nanos.max(0);
    let frac = if nanos == 0 {
        String::new()
    } else if nanos % 1_000_000 == 0 {
        format!(".{:03}", nanos / 1_000_000)
    } else if nanos % 1_000 == 0 {
        format!(".{:06}", nanos / 1_000)
    } else {
        format!(".{nanos:09}")
    };
    format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}Z")
}

/// Days since 1970-01-01 to (year, month, day) in the proleptic Gregorian calendar
/// (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_timestamps_like_protojson() {
        let ts = |seconds, nanos| prost_types::Timestamp { seconds, nanos };
        assert_eq!(rfc3339(&ts(0, 0)), "1970-01-01T00:00:00Z");
        assert_eq!(
            rfc3339(&ts(1_751_371_200, 1_000_000)),
            "2025-07-01T12:00:00.001Z"
        );
        assert_eq!(
            rfc3339(&ts(951_782_400, 1_000)),
            "2000-02-29T00:00:00.000001Z"
        );
        assert_eq!(rfc3339(&ts(-1, 5)), "1969-12-31T23:59:59.000000005Z");
    }
}
