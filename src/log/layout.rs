//! Where things live in the bucket. Every key is a pure function of what it holds, so that
//! two writers racing for the same log position collide on the same key.
//!
//! ```text
//! chunks/{R % 10000:04}/{R:019}.netsy          first chunk at log position (R, 0)
//! chunks/{R % 10000:04}/{R:019}.{n:06}.netsy   n-th chunk at position (R, n), n > 0
//! snapshots/{S:019}.netsy                       every retained version up to revision S
//! leader.netsy                                  the single-writer lease
//! ```
//!
//! A log position is (R, n): R is the next revision to be written, n counts the control-only
//! chunks (lease grants, compactions) written since the head reached R - 1; those use no
//! revision, as in etcd. A chunk that writes keys starts at revision R and moves the
//! position to (last + 1, 0); a control-only chunk moves it to (R, n + 1). The Go Netsy
//! preview keys one-record chunks by revision (position (R, 0)) and Netsy 1.0 keys chunks by
//! their last revision, so recovery reads positions from footers, not from key names.

/// Prefix of chunk objects.
pub const CHUNKS: &str = "chunks/";
/// Prefix of snapshot objects.
pub const SNAPSHOTS: &str = "snapshots/";
/// The single-writer lease object (a `.netsy` file holding one JSON record, so that every
/// object in the bucket is a file the Go reader accepts).
pub const LEADER: &str = "leader.netsy";

/// A position in the log: the next revision and the control-chunk sequence at it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Position {
    pub revision: i64,
    pub seq: u32,
}

impl Position {
    pub fn new(revision: i64, seq: u32) -> Self {
        Self { revision, seq }
    }
}

impl std::fmt::Display for Position {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "revision {} seq {}", self.revision, self.seq)
    }
}

/// Chunks are spread over this many prefixes by revision (S3 scales request rates per
/// prefix).
const PARTITIONS: i64 = 10_000;

/// The object key of the chunk at `pos`.
pub fn chunk_key(pos: Position) -> String {
    let r = pos.revision;
    if pos.seq == 0 {
        format!("{CHUNKS}{:04}/{r:019}.netsy", r.rem_euclid(PARTITIONS))
    } else {
        format!(
            "{CHUNKS}{:04}/{r:019}.{:06}.netsy",
            r.rem_euclid(PARTITIONS),
            pos.seq
        )
    }
}

/// Every chunk partition prefix, starting with the one revision `from` falls in: the order
/// in which a log at `from` needs them.
pub fn chunk_partitions_from(from: i64) -> Vec<String> {
    (0..PARTITIONS)
        .map(|i| format!("{CHUNKS}{:04}/", (from + i).rem_euclid(PARTITIONS)))
        .collect()
}

/// The revision and sequence a chunk key names (for Netsy 1.0 keys, the revision is the
/// chunk's last one).
pub fn parse_chunk_key(key: &str) -> Option<(i64, u32)> {
    let name = key.strip_prefix(CHUNKS)?.split_once('/')?.1;
    let stem = name.strip_suffix(".netsy")?;
    let (rev, seq) = match stem.split_once('.') {
        Some((r, s)) => (r, s.parse().ok()?),
        None => (stem, 0),
    };
    if rev.len() != 19 {
        return None;
    }
    Some((rev.parse().ok()?, seq))
}

pub fn snapshot_key(revision: i64) -> String {
    format!("{SNAPSHOTS}{revision:019}.netsy")
}

pub fn parse_snapshot_key(key: &str) -> Option<i64> {
    let stem = key.strip_prefix(SNAPSHOTS)?.strip_suffix(".netsy")?;
    if stem.len() != 19 {
        return None;
    }
    stem.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_match_the_go_layout() {
        assert_eq!(
            chunk_key(Position::new(151, 0)),
            "chunks/0151/0000000000000000151.netsy"
        );
        assert_eq!(
            chunk_key(Position::new(123_456, 2)),
            "chunks/3456/0000000000000123456.000002.netsy"
        );
        for pos in [Position::new(2, 0), Position::new(10_001, 7)] {
            assert_eq!(
                parse_chunk_key(&chunk_key(pos)),
                Some((pos.revision, pos.seq))
            );
        }
        assert_eq!(snapshot_key(150), "snapshots/0000000000000000150.netsy");
        assert_eq!(parse_snapshot_key(&snapshot_key(150)), Some(150));
        assert_eq!(parse_chunk_key("chunks/0001/1.netsy"), None);
        assert_eq!(parse_chunk_key("snapshots/0000000000000000150.netsy"), None);
    }

    #[test]
    fn partitions_cover_every_chunk_key_once_starting_where_the_log_is() {
        let parts = chunk_partitions_from(123_456);
        assert_eq!(parts[0], "chunks/3456/");
        assert_eq!(parts[1], "chunks/3457/");
        assert_eq!(parts.last().unwrap(), "chunks/3455/");
        let distinct: std::collections::HashSet<&String> = parts.iter().collect();
        assert_eq!(distinct.len(), parts.len());
        for r in [1, 9_999, 10_000, 123_457, 5_000_000_001] {
            let key = chunk_key(Position::new(r, 0));
            assert_eq!(parts.iter().filter(|p| key.starts_with(*p)).count(), 1);
        }
    }
}
