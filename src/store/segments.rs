//! `segments:///dir`: a local directory whose chunk objects are appended to segment files,
//! so a commit costs one `fdatasync` of an append instead of a new file, its inode and two
//! syncs (the [`LocalStore`]'s create-if-absent). Commits arriving while one is being
//! synced are written and synced together: with several chunk PUTs in flight that is
//! etcd's WAL, group commit included, behind the object store's interface.
//!
//! Keys under the appended prefixes (the log's `chunks/`) live in `.segments/` as records
//! (put or delete, key, data, CRC-64) in append-only segment files. Every other key
//! (snapshots, the leader lease) is a plain file of the [`LocalStore`], as are chunk files
//! written by earlier versions, which are still read, listed and deleted.
//!
//! The semantics are S3's, for several processes sharing the directory as for one, and no
//! process ever waits for another: one paused mid-commit (SIGSTOP) holds nothing a
//! successor needs. That rules out a lock around the append; instead, writing is owned:
//! - A process writes under an *epoch* it claimed by creating `{epoch}.claim` (a symlink:
//!   created whole or not at all, and only once), one past the highest it saw. It appends
//!   only to its own segments, `{epoch}-{seq}.seg`, so nobody else's bytes interleave.
//! - Claiming fences every earlier epoch; the claimer then *seals* them: it syncs their
//!   segments and publishes `{epoch}.seal`, the length of each at a record boundary.
//!   Readers go no further into a sealed epoch, and read epochs strictly in order, so the
//!   log is the sealed prefix of each epoch followed by the live one.
//! - A group is answered only after its append is synced and the writer then finds
//!   `{epoch+1}.claim` absent and its own claim present: a claim made after that check
//!   seals the group in, since its length is read after the claim. A writer that finds
//!   itself fenced claims again, reads the seal to learn which of its records made it
//!   (those are answered as done), and decides the rest afresh: each put or delete takes
//!   effect once, in an order consistent with real time, like a conditional PUT on S3.
//! - Once checked, the writer records in `{epoch}.head` how far its epoch is committed;
//!   other processes read a live epoch only that far, so nobody sees a write before it is
//!   durable. The owner holds `flock` on its head while it lives; a head nobody holds is a
//!   dead owner's, read (after a sync) to its last whole record.
//! - A record cut short by a crash is left where it is (beyond a seal or head, or at the
//!   end of a dead owner's segment) and never read. A record whose CRC does not match
//!   within what is committed is corruption, and is reported, never skipped.
//! - A segment is removed once everything in it, and in every segment before it, is
//!   deleted or overwritten (the log deletes chunks oldest first, once a snapshot covers
//!   them), and never while it is the live epoch's last. An epoch whose segments are all
//!   gone loses its claim, head and seal, oldest first (a fenced writer that then finds its
//!   own claim gone knows it is fenced).
//!
//! Segments named `{seq}.seg` are an earlier version's (epoch 0, written under a lock on
//! `LOCK`); the first claim seals them like any other epoch.

use super::local::{sync_dir, LocalStore};
use super::{content_etag, Object, ObjectMeta, ObjectStore, PutMode, Result, StoreError};
use crate::clock::now_ms;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

/// The directory holding the segments, under the store's root. Not a valid object key.
pub const SEGMENTS_DIR: &str = ".segments";
const SEGMENT_SUFFIX: &str = ".seg";
const CLAIM_SUFFIX: &str = ".claim";
const SEAL_SUFFIX: &str = ".seal";
const HEAD_SUFFIX: &str = ".head";
const TMP_PREFIX: &str = ".tmp-";
/// A segment is closed once it holds this much; the next append starts a new one.
const SEGMENT_BYTES: u64 = 64 << 20;
/// At most this many puts and deletes share one sync.
const GROUP_MAX: usize = 256;
/// A group fenced this many times in a row (other processes claiming the directory back
/// and forth) is answered with a transient error.
const CLAIM_ATTEMPTS: u32 = 16;

const MAGIC: u32 = 0x4753_534e; // "NSSG" little-endian
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// magic u32, kind u8, key length u16, data length u32, modified ms i64, CRC-64 u64.
const HEADER: usize = 4 + 1 + 2 + 4 + 8 + 8;
/// A head: segment seq u64, committed length u64, CRC-64 of both.
const HEAD_BYTES: usize = 24;

/// A segment: the `seq`-th written under `epoch` (0: an earlier version's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
struct SegId {
    epoch: u64,
    seq: u64,
}

impl SegId {
    fn name(self) -> String {
        if self.epoch == 0 {
            format!("{:020}{SEGMENT_SUFFIX}", self.seq)
        } else {
            format!("{:020}-{:020}{SEGMENT_SUFFIX}", self.epoch, self.seq)
        }
    }

    fn parse(name: &str) -> Option<Self> {
        let stem = name.strip_suffix(SEGMENT_SUFFIX)?;
        match stem.split_once('-') {
            Some((e, s)) => Some(Self {
                epoch: e.parse().ok().filter(|e| *e > 0)?,
                seq: s.parse().ok()?,
            }),
            None => Some(Self {
                epoch: 0,
                seq: stem.parse().ok()?,
            }),
        }
    }
}

/// Where an object's current version is.
#[derive(Debug, Clone)]
struct Entry {
    segment: SegId,
    /// Offset of the data in the segment.
    offset: u64,
    len: u64,
    modified_ms: i64,
}

#[derive(Debug, Default)]
struct SegmentState {
    /// Bytes read and indexed (every record before this offset is complete and checked).
    scanned: u64,
    /// Entries whose current version is in this segment.
    live: usize,
}

/// This process's view of the segments, brought up to date before every answer.
#[derive(Debug, Default)]
struct Index {
    objects: BTreeMap<String, Entry>,
    segments: BTreeMap<SegId, SegmentState>,
    /// Seals read so far: epoch, then segment seq to sealed length. A seal never changes.
    seals: HashMap<u64, HashMap<u64, u64>>,
    /// The epoch this handle's committer writes under: its segments are indexed as they
    /// are committed, not read back.
    own: Option<u64>,
}

/// One record as read back.
struct Record {
    kind: u8,
    key: String,
    modified_ms: i64,
    data_offset: u64,
    len: u64,
}

/// What reading a segment from an offset found.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    /// Every record up to the limit (or the end of the file) is whole.
    Clean,
    /// The file ends inside the record at this offset (or in zeros) before the limit.
    Torn(u64),
    /// The record at this offset is damaged, and is not at the end of the file, or
    /// crosses the limit: corruption.
    Damaged(u64),
}

/// How far to read a segment.
#[derive(Debug, Clone, Copy)]
enum Bound {
    /// Exactly this many bytes, all whole records (a seal or a head says so).
    Exact(u64),
    /// To the last whole record: what a dead owner left, or an earlier version.
    Whole,
}

fn encode(kind: u8, key: &str, data: &[u8], modified_ms: i64, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&MAGIC.to_le_bytes());
    out.push(kind);
    out.extend_from_slice(&(key.len() as u16).to_le_bytes());
    out.extend_from_slice(&(data.len() as u32).to_le_bytes());
    out.extend_from_slice(&modified_ms.to_le_bytes());
    let crc_at = out.len();
    out.extend_from_slice(&[0; 8]);
    out.extend_from_slice(key.as_bytes());
    out.extend_from_slice(data);
    let mut digest = crc64fast::Digest::new();
    digest.write(&out[start..crc_at]);
    digest.write(&out[crc_at + 8..]);
    out[crc_at..crc_at + 8].copy_from_slice(&digest.sum64().to_le_bytes());
}

/// Reads the records of `file` from `from` up to `limit` (None: its end), calling `f` on
/// each.
fn read_records(
    file: &mut File,
    from: u64,
    limit: Option<u64>,
    mut f: impl FnMut(Record),
) -> std::io::Result<Tail> {
    let file_len = file.metadata()?.len();
    let len = limit.map_or(file_len, |l| l.min(file_len));
    file.seek(SeekFrom::Start(from))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut at = from;
    let mut head = [0u8; HEADER];
    // A record that does not fit: torn if the file ends there, damaged if it goes on.
    let cut = |at: u64, end: u64| {
        if end >= file_len && limit.is_none_or(|l| l >= file_len) {
            Tail::Torn(at)
        } else {
            Tail::Damaged(at)
        }
    };
    while at < len {
        if len - at < HEADER as u64 {
            return Ok(cut(at, at + HEADER as u64));
        }
        reader.read_exact(&mut head)?;
        if head.iter().all(|b| *b == 0) {
            let mut rest = vec![0u8; (len - at) as usize - HEADER];
            reader.read_exact(&mut rest)?;
            let zeros = rest.iter().all(|b| *b == 0);
            return Ok(if zeros && limit.is_none() {
                Tail::Torn(at)
            } else {
                Tail::Damaged(at)
            });
        }
        let magic = u32::from_le_bytes(head[0..4].try_into().unwrap());
        let kind = head[4];
        let key_len = u16::from_le_bytes(head[5..7].try_into().unwrap()) as u64;
        let data_len = u32::from_le_bytes(head[7..11].try_into().unwrap()) as u64;
        let modified_ms = i64::from_le_bytes(head[11..19].try_into().unwrap());
        let crc = u64::from_le_bytes(head[19..27].try_into().unwrap());
        if magic != MAGIC || !(kind == KIND_PUT || kind == KIND_DELETE) {
            return Ok(Tail::Damaged(at));
        }
        let end = at + HEADER as u64 + key_len + data_len;
        if end > len {
            return Ok(cut(at, end));
        }
        let mut body = vec![0u8; (key_len + data_len) as usize];
        reader.read_exact(&mut body)?;
        let data = body.split_off(key_len as usize);
        let key = String::from_utf8(body);
        let mut digest = crc64fast::Digest::new();
        digest.write(&head[..19]);
        digest.write(key.as_ref().map_or(&[][..], |k| k.as_bytes()));
        digest.write(&data);
        let (Ok(key), true) = (key, digest.sum64() == crc) else {
            return Ok(if end == file_len && limit.is_none() {
                Tail::Torn(at)
            } else {
                Tail::Damaged(at)
            });
        };
        f(Record {
            kind,
            key,
            modified_ms,
            data_offset: at + HEADER as u64 + key_len,
            len: data_len,
        });
        at = end;
    }
    Ok(Tail::Clean)
}

fn corrupt(message: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message)
}

fn epoch_file(epoch: u64, suffix: &str) -> String {
    format!("{epoch:020}{suffix}")
}

fn encode_head(seq: u64, len: u64) -> [u8; HEAD_BYTES] {
    let mut out = [0u8; HEAD_BYTES];
    out[..8].copy_from_slice(&seq.to_le_bytes());
    out[8..16].copy_from_slice(&len.to_le_bytes());
    let mut digest = crc64fast::Digest::new();
    digest.write(&out[..16]);
    out[16..].copy_from_slice(&digest.sum64().to_le_bytes());
    out
}

fn decode_head(bytes: &[u8]) -> Option<(u64, u64)> {
    if bytes.len() != HEAD_BYTES {
        return None;
    }
    let mut digest = crc64fast::Digest::new();
    digest.write(&bytes[..16]);
    (digest.sum64().to_le_bytes() == bytes[16..]).then(|| {
        (
            u64::from_le_bytes(bytes[..8].try_into().unwrap()),
            u64::from_le_bytes(bytes[8..16].try_into().unwrap()),
        )
    })
}

/// How long a fenced group waits before it is decided again: jittered, so processes fencing
/// each other do not retry in step.
fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(rand::random_range(1..=4) * u64::from(attempt.min(8)))
}

/// Removes `path`; one already gone is fine (another process removed it).
fn remove_if_present(path: &Path) -> std::io::Result<()> {
    match fs::remove_file(path) {
        Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

impl Index {
    fn apply(&mut self, segment: SegId, record: Record) {
        if let Some(old) = self.objects.remove(&record.key) {
            if let Some(s) = self.segments.get_mut(&old.segment) {
                s.live = s.live.saturating_sub(1);
            }
        }
        if record.kind == KIND_PUT {
            self.segments.entry(segment).or_default().live += 1;
            let entry = Entry {
                segment,
                offset: record.data_offset,
                len: record.len,
                modified_ms: record.modified_ms,
            };
            self.objects.insert(record.key, entry);
        }
    }
}

/// What `.segments/` holds.
#[derive(Debug, Default)]
struct Listing {
    segments: Vec<SegId>,
    claims: BTreeSet<u64>,
    seals: BTreeSet<u64>,
}

impl Listing {
    fn latest_claim(&self) -> Option<u64> {
        self.claims.last().copied()
    }
}

/// What a live epoch's head says.
enum Head {
    /// The owner is alive and has committed up to this segment and length.
    At(u64, u64),
    /// The owner is alive and has committed nothing (or has not written its head yet).
    Empty,
    /// Nobody holds the head: the owner is gone, and what it left is read whole.
    Dead,
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
}

impl Shared {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    fn list(&self) -> std::io::Result<Listing> {
        let mut listing = Listing::default();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            if let Some(id) = SegId::parse(name) {
                listing.segments.push(id);
            } else if let Some(e) = name.strip_suffix(CLAIM_SUFFIX) {
                listing.claims.extend(e.parse::<u64>().ok());
            } else if let Some(e) = name.strip_suffix(SEAL_SUFFIX) {
                listing.seals.extend(e.parse::<u64>().ok());
            }
        }
        listing.segments.sort_unstable();
        Ok(listing)
    }

    /// Whether the writer of `epoch` has been fenced: a later claim exists, or its own
    /// claim is gone (removed, oldest first, after a later claim). Checked in that order,
    /// so a removal between the two looks is seen.
    fn fenced(&self, epoch: u64) -> std::io::Result<bool> {
        let exists = |e: u64| match fs::symlink_metadata(self.path(&epoch_file(e, CLAIM_SUFFIX))) {
            Ok(_) => Ok(true),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        };
        Ok(exists(epoch + 1)? || !exists(epoch)?)
    }

    /// The sealed lengths of `epoch`'s segments, read once.
    fn seal<'a>(&self, index: &'a mut Index, epoch: u64) -> std::io::Result<&'a HashMap<u64, u64>> {
        if let std::collections::hash_map::Entry::Vacant(vacant) = index.seals.entry(epoch) {
            let text = fs::read_to_string(self.path(&epoch_file(epoch, SEAL_SUFFIX)))?;
            let mut lengths = HashMap::new();
            for line in text.lines().filter(|l| !l.is_empty()) {
                let parsed = line
                    .split_once(' ')
                    .and_then(|(s, l)| Some((s.parse().ok()?, l.parse().ok()?)));
                let Some((seq, len)) = parsed else {
                    return Err(corrupt(format!("seal of epoch {epoch}: bad line {line:?}")));
                };
                lengths.insert(seq, len);
            }
            vacant.insert(lengths);
        }
        Ok(&index.seals[&epoch])
    }

    /// Seals `epoch` (a later claim exists, so its writer can only be fenced): syncs each
    /// of its segments and records where its last whole record ends. Racing sealers agree
    /// on the first seal published.
    fn write_seal(&self, index: &Index, epoch: u64, listing: &Listing) -> std::io::Result<()> {
        let mut text = String::new();
        for &id in listing.segments.iter().filter(|s| s.epoch == epoch) {
            let mut file = match File::open(self.path(&id.name())) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed: dead
                Err(e) => return Err(e),
            };
            file.sync_data()?;
            let from = index.segments.get(&id).map_or(0, |s| s.scanned);
            let mut end = from;
            match read_records(&mut file, from, None, |r| end = r.data_offset + r.len)? {
                Tail::Clean | Tail::Torn(_) => {}
                Tail::Damaged(at) => return Err(self.damaged(id, at)),
            }
            text.push_str(&format!("{} {end}\n", id.seq));
        }
        let tmp = self.path(&format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        let mut file = File::create(&tmp)?;
        file.write_all(text.as_bytes())?;
        file.sync_all()?;
        let linked = fs::hard_link(&tmp, self.path(&epoch_file(epoch, SEAL_SUFFIX)));
        let _ = fs::remove_file(&tmp);
        match linked {
            Ok(()) => {
                sync_dir(&self.dir)?;
                tracing::debug!(epoch, "sealed a fenced epoch's segments");
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn damaged(&self, id: SegId, at: u64) -> std::io::Error {
        corrupt(format!(
            "segment {} is damaged at offset {at}: its record there fails its CRC or ends \
             past what was committed (restore the directory from a copy, or remove the \
             segment and everything after it to keep what precedes)",
            self.path(&id.name()).display()
        ))
    }

    /// What the head of live `epoch` says (see [`Head`]).
    fn head(&self, epoch: u64) -> std::io::Result<Head> {
        let file = match File::open(self.path(&epoch_file(epoch, HEAD_SUFFIX))) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Head::Empty),
            Err(e) => return Err(e),
        };
        match file.try_lock_shared() {
            Ok(()) => return Ok(Head::Dead),
            Err(std::fs::TryLockError::WouldBlock) => {}
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
        // Written in place while we read: a torn read fails its CRC; read again.
        let mut buf = [0u8; HEAD_BYTES];
        for _ in 0..100 {
            let n = file.read_at(&mut buf, 0)?;
            if n == 0 {
                return Ok(Head::Empty);
            }
            if let Some((seq, len)) = decode_head(&buf[..n]) {
                return Ok(Head::At(seq, len));
            }
            std::thread::yield_now();
        }
        Err(corrupt(format!(
            "the head of epoch {epoch} keeps failing its CRC"
        )))
    }

    /// Reads what was committed since this process last looked, epoch by epoch. An epoch a
    /// later claim fenced is sealed first if its claimer has not yet (the claimer may have
    /// died): nothing of a later epoch is read before the earlier one is sealed.
    fn catch_up(&self, index: &mut Index) -> std::io::Result<()> {
        let mut listing = self.list()?;
        if let Some(latest) = listing.latest_claim() {
            let fenced: BTreeSet<u64> = listing
                .claims
                .iter()
                .copied()
                .chain(listing.segments.iter().map(|s| s.epoch).filter(|e| *e == 0))
                .filter(|e| *e < latest && !listing.seals.contains(e))
                .collect();
            for e in fenced {
                self.write_seal(index, e, &listing)?;
                listing.seals.insert(e);
            }
        }
        let latest = listing.latest_claim();
        let mut heads: HashMap<u64, Head> = HashMap::new();
        for &id in &listing.segments {
            let bound = if listing.seals.contains(&id.epoch) {
                Bound::Exact(
                    self.seal(index, id.epoch)?
                        .get(&id.seq)
                        .copied()
                        .unwrap_or(0),
                )
            } else if index.own == Some(id.epoch) {
                continue; // indexed as committed
            } else if id.epoch == 0 && latest.is_none() {
                Bound::Whole // an earlier version's, nobody has claimed since
            } else if !listing.claims.contains(&id.epoch) || latest != Some(id.epoch) {
                // Made by a fenced writer after its epoch was sealed and cleaned up, or
                // after a claim this listing has not seen: nothing in it is committed.
                Bound::Exact(0)
            } else {
                let head = match heads.entry(id.epoch) {
                    std::collections::hash_map::Entry::Occupied(h) => h.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => v.insert(self.head(id.epoch)?),
                };
                match *head {
                    Head::At(seq, _) if id.seq < seq => Bound::Whole,
                    Head::At(seq, len) if id.seq == seq => Bound::Exact(len),
                    Head::At(..) | Head::Empty => Bound::Exact(0),
                    Head::Dead => Bound::Whole,
                }
            };
            self.read_segment(index, id, bound)?;
        }
        // Segments removed by another process: everything in them was dead, so after reading
        // the later ones nothing should still point there.
        let gone: Vec<SegId> = index
            .segments
            .keys()
            .filter(|id| listing.segments.binary_search(id).is_err())
            .copied()
            .collect();
        if !gone.is_empty() {
            index.objects.retain(|key, e| {
                let keep = !gone.contains(&e.segment);
                if !keep {
                    tracing::warn!(
                        key,
                        segment = e.segment.name(),
                        "object in a removed segment"
                    );
                }
                keep
            });
            for id in gone {
                index.segments.remove(&id);
            }
        }
        let present: BTreeSet<u64> = listing.segments.iter().map(|s| s.epoch).collect();
        index.seals.retain(|e, _| present.contains(e));
        Ok(())
    }

    /// Reads and indexes segment `id` from where this process stopped to `bound`.
    fn read_segment(&self, index: &mut Index, id: SegId, bound: Bound) -> std::io::Result<()> {
        let scanned = index.segments.get(&id).map_or(0, |s| s.scanned);
        index.segments.entry(id).or_default();
        if matches!(bound, Bound::Exact(n) if n <= scanned) {
            return Ok(());
        }
        let mut file = match File::open(self.path(&id.name())) {
            Ok(f) => f,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()), // removed meanwhile
            Err(e) => return Err(e),
        };
        if let Bound::Whole = bound {
            if file.metadata()?.len() == scanned {
                return Ok(());
            }
            // Left by a dead owner and perhaps never synced: make it durable before anyone
            // is answered from it.
            file.sync_data()?;
        }
        let limit = match bound {
            Bound::Exact(n) => Some(n),
            Bound::Whole => None,
        };
        let mut end = scanned;
        let tail = read_records(&mut file, scanned, limit, |r| {
            end = r.data_offset + r.len;
            index.apply(id, r);
        })?;
        index.segments.entry(id).or_default().scanned = end;
        match (tail, bound) {
            (Tail::Clean, _) | (Tail::Torn(_), Bound::Whole) => Ok(()),
            (Tail::Torn(at) | Tail::Damaged(at), _) => Err(self.damaged(id, at)),
        }
    }

    /// Brings the index up to date.
    fn refresh(&self) -> std::io::Result<()> {
        let mut index = self.index.lock().unwrap();
        self.catch_up(&mut index)
    }

    fn read(&self, entry: &Entry, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let end = end.min(entry.len);
        let start = start.min(end);
        let file = File::open(self.path(&entry.segment.name()))?;
        let mut buf = vec![0; (end - start) as usize];
        file.read_exact_at(&mut buf, entry.offset + start)?;
        Ok(buf)
    }
}

/// A put or delete waiting for the next group commit.
struct Job {
    key: String,
    /// None for a delete.
    put: Option<(Bytes, PutMode)>,
    done: tokio::sync::oneshot::Sender<Answer>,
}

type Answer = std::result::Result<String, Refused>;

/// Why a job was not applied.
#[derive(Debug, Clone)]
enum Refused {
    Exists,
    Precondition,
    /// Fenced again and again by other processes claiming the directory.
    Contended,
    Io(String),
}

/// The epoch a committer writes under.
struct Owned {
    epoch: u64,
    /// Locked for as long as this handle owns the epoch: readers tell a live owner's
    /// epoch from a dead one's by it.
    head: File,
    /// The segment being appended to: its seq and the file.
    active: Option<(u64, File)>,
}

impl Owned {
    /// The segment being appended to.
    fn active_id(&self) -> Option<SegId> {
        self.active.as_ref().map(|(seq, _)| SegId {
            epoch: self.epoch,
            seq: *seq,
        })
    }
}

/// Records appended by a group that then found itself fenced: whether each made it is
/// known once the epoch is sealed.
struct Unconfirmed {
    segment: SegId,
    /// Job index, where its record ends, and its answer if the record made it.
    records: Vec<(usize, u64, Answer)>,
}

/// A group's decisions: answers by job, and the records to append for them.
struct Decided {
    decided: Vec<(usize, Answer)>,
    buf: Vec<u8>,
    /// Each appended record (offsets relative to the start of `buf`) and its job.
    written: Vec<(usize, Record)>,
}

/// How an attempt at a group ended.
enum Attempt {
    /// Every job is answered.
    Done,
    /// Fenced before the group could be answered, with what it appended.
    Fenced(Option<Unconfirmed>),
}

/// Appends groups of jobs: one thread per store handle, so one sync at a time per handle.
struct Committer {
    shared: Arc<Shared>,
    files: LocalStore,
    owned: Option<Owned>,
}

impl Committer {
    fn run(mut self, jobs: mpsc::Receiver<Job>) {
        while let Ok(first) = jobs.recv() {
            let mut group = vec![first];
            while group.len() < GROUP_MAX {
                match jobs.try_recv() {
                    Ok(job) => group.push(job),
                    Err(_) => break,
                }
            }
            let answers = self.commit(&group);
            for (job, answer) in group.into_iter().zip(answers) {
                let _ = job.done.send(answer);
            }
        }
    }

    /// Answers every job of `group`: claiming the directory first if this handle does not
    /// own an epoch, and again whenever it finds itself fenced.
    fn commit(&mut self, group: &[Job]) -> Vec<Answer> {
        let mut answers: Vec<Option<Answer>> = vec![None; group.len()];
        let mut unconfirmed = None;
        let mut attempt = 0;
        // None: every job is answered.
        let failure: Option<Refused> = loop {
            if attempt == CLAIM_ATTEMPTS {
                break Some(Refused::Contended);
            }
            attempt += 1;
            if self.owned.is_none() && unconfirmed.is_none() {
                match self.answer_without_writing(group, &mut answers) {
                    Ok(true) => break None,
                    Ok(false) => {}
                    Err(e) => break Some(Refused::Io(e.to_string())),
                }
            }
            if self.owned.is_none() {
                if let Err(e) = self.claim(&mut answers, unconfirmed.take()) {
                    tracing::warn!(error = %e, "could not claim the segments directory");
                    break Some(Refused::Io(e.to_string()));
                }
                if answers.iter().all(Option::is_some) {
                    break None;
                }
            }
            match self.attempt(group, &mut answers) {
                Ok(Attempt::Done) => break None,
                Ok(Attempt::Fenced(fenced)) => {
                    tracing::info!(
                        epoch = self.owned.as_ref().map(|o| o.epoch),
                        attempt,
                        "another process claimed the segments directory; deciding the group again"
                    );
                    self.disown();
                    unconfirmed = fenced;
                    std::thread::sleep(backoff(attempt));
                }
                Err(e) => {
                    tracing::warn!(error = %e, jobs = group.len(), "segment append failed");
                    // What was appended may still be sealed in by the next claim: the
                    // answer is an error, as for a PUT whose response was lost.
                    self.disown();
                    break Some(Refused::Io(e.to_string()));
                }
            }
        };
        let failure = failure.unwrap_or_else(|| Refused::Io("left unanswered".into()));
        answers
            .into_iter()
            .map(|a| a.unwrap_or_else(|| Err(failure.clone())))
            .collect()
    }

    /// Gives the epoch up: this process reads it back like any other from now on.
    fn disown(&mut self) {
        self.owned = None;
        self.shared.index.lock().unwrap().own = None;
    }

    /// Claims the next epoch, seals the earlier ones, reads everything up to them, and
    /// answers the jobs whose records from a fenced attempt made it into the seal.
    fn claim(
        &mut self,
        answers: &mut [Option<Answer>],
        unconfirmed: Option<Unconfirmed>,
    ) -> std::io::Result<()> {
        let shared = self.shared.clone();
        let mut index = shared.index.lock().unwrap();
        let listing = shared.list()?;
        let highest = listing
            .latest_claim()
            .into_iter()
            .chain(listing.segments.iter().map(|s| s.epoch))
            .chain(index.own)
            .max()
            .unwrap_or(0);
        let owner = format!("pid {}", std::process::id());
        let mut epoch = highest + 1;
        loop {
            match std::os::unix::fs::symlink(&owner, shared.path(&epoch_file(epoch, CLAIM_SUFFIX)))
            {
                Ok(()) => break,
                Err(e) if e.kind() == ErrorKind::AlreadyExists => epoch += 1,
                Err(e) => return Err(e),
            }
        }
        // The head, locked before it is visible, so it is never taken for a dead owner's.
        let tmp = shared.path(&format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        let head = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)?;
        head.lock()?;
        fs::rename(&tmp, shared.path(&epoch_file(epoch, HEAD_SUFFIX)))?;
        sync_dir(&shared.dir)?;
        tracing::info!(epoch, "claimed the segments directory");
        index.own = Some(epoch);
        shared.catch_up(&mut index)?;
        if let Some(u) = unconfirmed {
            let sealed = shared
                .seal(&mut index, u.segment.epoch)?
                .get(&u.segment.seq)
                .copied()
                .unwrap_or(0);
            for (job, end, answer) in u.records {
                if end <= sealed {
                    answers[job] = Some(answer);
                }
            }
        }
        self.owned = Some(Owned {
            epoch,
            head,
            active: None,
        });
        Ok(())
    }

    /// Decides each unanswered job against the index and the jobs before it in the group,
    /// encoding what is to be appended.
    fn decide(
        &self,
        shared: &Shared,
        index: &Index,
        group: &[Job],
        answers: &[Option<Answer>],
    ) -> std::io::Result<Decided> {
        let now = now_ms();
        // Decide each job against the index and the jobs before it in this group.
        let mut view: HashMap<&str, Option<String>> = HashMap::new();
        let mut decided: Vec<(usize, Answer)> = Vec::new();
        let mut buf = Vec::new();
        // What is appended, offsets relative to the start of `buf`, and its job.
        let mut written: Vec<(usize, Record)> = Vec::new();
        for (i, job) in group.iter().enumerate() {
            if answers[i].is_some() {
                continue;
            }
            // Only a conditional update needs the current object's etag: the others only
            // whether it exists. None: absent; Some(None): present, etag not computed.
            let want_etag = matches!(&job.put, Some((_, PutMode::Update(_))));
            let current: Option<Option<String>> = match view.get(job.key.as_str()) {
                Some(v) => v.clone().map(Some),
                None => match index.objects.get(&job.key) {
                    Some(e) if want_etag => {
                        Some(Some(content_etag(&shared.read(e, 0, u64::MAX)?)))
                    }
                    Some(_) => Some(None),
                    None => self.legacy_etag(&job.key)?.map(Some),
                },
            };
            let answer = match &job.put {
                Some((data, mode)) => {
                    let allowed = match mode {
                        PutMode::Overwrite => Ok(()),
                        PutMode::Create if current.is_some() => Err(Refused::Exists),
                        PutMode::Create => Ok(()),
                        PutMode::Update(want) if current.as_ref() == Some(&Some(want.clone())) => {
                            Ok(())
                        }
                        PutMode::Update(_) => Err(Refused::Precondition),
                    };
                    allowed.map(|()| {
                        let etag = content_etag(data);
                        encode(KIND_PUT, &job.key, data, now, &mut buf);
                        written.push((
                            i,
                            Record {
                                kind: KIND_PUT,
                                key: job.key.clone(),
                                modified_ms: now,
                                data_offset: (buf.len() - data.len()) as u64,
                                len: data.len() as u64,
                            },
                        ));
                        view.insert(&job.key, Some(etag.clone()));
                        etag
                    })
                }
                None => {
                    if current.is_some() {
                        encode(KIND_DELETE, &job.key, &[], now, &mut buf);
                        written.push((
                            i,
                            Record {
                                kind: KIND_DELETE,
                                key: job.key.clone(),
                                modified_ms: now,
                                data_offset: buf.len() as u64,
                                len: 0,
                            },
                        ));
                    }
                    view.insert(&job.key, None);
                    Ok(String::new())
                }
            };
            decided.push((i, answer));
        }
        Ok(Decided {
            decided,
            buf,
            written,
        })
    }

    /// Answers a group that writes nothing (refused creates and updates, deletes of absent
    /// keys) on what is committed, without claiming the directory: a refusal rests only on
    /// committed records, which no later claim takes back. False (nothing answered) when
    /// some job has to write.
    fn answer_without_writing(
        &mut self,
        group: &[Job],
        answers: &mut [Option<Answer>],
    ) -> std::io::Result<bool> {
        let shared = self.shared.clone();
        let mut index = shared.index.lock().unwrap();
        shared.catch_up(&mut index)?;
        let d = self.decide(&shared, &index, group, answers)?;
        if !d.buf.is_empty() {
            return Ok(false);
        }
        for (i, answer) in d.decided {
            answers[i] = Some(answer);
        }
        Ok(true)
    }

    /// Decides and appends the unanswered jobs under the owned epoch.
    fn attempt(
        &mut self,
        group: &[Job],
        answers: &mut [Option<Answer>],
    ) -> std::io::Result<Attempt> {
        let shared = self.shared.clone();
        let mut index = shared.index.lock().unwrap();
        let Decided {
            decided,
            buf,
            written,
        } = self.decide(&shared, &index, group, answers)?;
        let removed = self
            .owned
            .as_ref()
            .and_then(Owned::active_id)
            .is_some_and(|id| !index.segments.contains_key(&id));
        if removed {
            // Only a later epoch's owner removes the segment being appended to.
            return Ok(Attempt::Fenced(None));
        }
        let appended = if buf.is_empty() {
            None
        } else {
            Some(self.append(&mut index, &buf)?)
        };
        let owned = self.owned.as_ref().expect("claimed before an attempt");
        if shared.fenced(owned.epoch)? {
            // Every decision above may rest on a stale view: none is answered yet. The
            // records appended are answered if the seal takes them in.
            let unconfirmed = appended.map(|(segment, start)| Unconfirmed {
                segment,
                records: written
                    .iter()
                    .map(|(i, r)| {
                        let answer = decided.iter().find(|(j, _)| j == i).unwrap().1.clone();
                        (*i, start + r.data_offset + r.len, answer)
                    })
                    .collect(),
            });
            return Ok(Attempt::Fenced(unconfirmed));
        }
        if let Some((id, start)) = appended {
            for (_, mut r) in written {
                r.data_offset += start;
                index.apply(id, r);
            }
            let end = start + buf.len() as u64;
            index.segments.entry(id).or_default().scanned = end;
            owned.head.write_all_at(&encode_head(id.seq, end), 0)?;
            // The group is committed: a segment that cannot be removed now is removed later.
            if let Err(e) = self.remove_dead(&mut index) {
                tracing::warn!(error = %e, "could not remove an emptied segment");
            }
        }
        drop(index);
        for (i, mut answer) in decided {
            // Deletes also remove a plain file of the same key (a chunk of an earlier
            // version).
            if group[i].put.is_none() && answer.is_ok() {
                if let Err(e) = self.files.delete_blocking(&group[i].key) {
                    answer = Err(Refused::Io(e.to_string()));
                }
            }
            answers[i] = Some(answer);
        }
        Ok(Attempt::Done)
    }

    /// The etag of a plain file holding `key` (written by an earlier version), if any.
    fn legacy_etag(&self, key: &str) -> std::io::Result<Option<String>> {
        match self.files.read_blocking(key) {
            Ok(data) => Ok(Some(content_etag(&data))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends `buf` to the owned epoch's segment (starting a new one when it is full) and
    /// syncs it; returns the segment and the offset the bytes start at.
    fn append(&mut self, index: &mut Index, buf: &[u8]) -> std::io::Result<(SegId, u64)> {
        let owned = self.owned.as_mut().expect("claimed before an append");
        let epoch = owned.epoch;
        let full = |seq: u64| {
            index
                .segments
                .get(&SegId { epoch, seq })
                .map_or(0, |s| s.scanned)
                >= SEGMENT_BYTES
        };
        let seq = match &owned.active {
            Some((seq, _)) if !full(*seq) => *seq,
            active => {
                let seq = active.as_ref().map_or(0, |(s, _)| s + 1);
                let id = SegId { epoch, seq };
                let file = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.shared.path(&id.name()))?;
                sync_dir(&self.shared.dir)?;
                index.segments.entry(id).or_default();
                owned.active = Some((seq, file));
                seq
            }
        };
        let id = SegId { epoch, seq };
        let (_, file) = owned.active.as_mut().expect("opened above");
        let start = index.segments[&id].scanned;
        file.write_all_at(buf, start)?;
        crate::crashpoint::hit("segment-before-sync");
        file.sync_data()?;
        Ok((id, start))
    }

    /// Removes leading segments that hold nothing current (never the one being appended
    /// to), then the claims, heads and seals of epochs left without segments.
    fn remove_dead(&mut self, index: &mut Index) -> std::io::Result<()> {
        let active = self.owned.as_ref().and_then(Owned::active_id);
        let mut removed = false;
        while let Some((&id, state)) = index.segments.iter().next() {
            if Some(id) == active || state.live > 0 {
                break;
            }
            remove_if_present(&self.shared.path(&id.name()))?;
            index.segments.remove(&id);
            removed = true;
            tracing::debug!(
                segment = id.name(),
                "removed a segment holding nothing current"
            );
        }
        if !removed {
            return Ok(());
        }
        // Epochs before the first remaining segment's, below this one: claim first (a
        // fenced writer checks the later claim, then its own), then head and seal.
        let own = self.owned.as_ref().map_or(0, |o| o.epoch);
        let first = index
            .segments
            .keys()
            .next()
            .map_or(own, |s| s.epoch)
            .min(own);
        let listing = self.shared.list()?;
        let old: BTreeSet<u64> = listing
            .claims
            .iter()
            .chain(&listing.seals)
            .copied()
            .filter(|e| *e < first)
            .collect();
        for e in old {
            for suffix in [CLAIM_SUFFIX, HEAD_SUFFIX, SEAL_SUFFIX] {
                remove_if_present(&self.shared.path(&epoch_file(e, suffix)))?;
            }
            index.seals.remove(&e);
        }
        sync_dir(&self.shared.dir)
    }
}

/// A directory store whose keys under the appended prefixes live in segment files.
#[derive(Debug)]
pub struct SegmentStore {
    files: LocalStore,
    shared: Arc<Shared>,
    prefixes: Vec<String>,
    jobs: mpsc::Sender<Job>,
}

impl SegmentStore {
    /// Opens (creating if needed) the store at `root`; keys under `prefixes` are appended to
    /// segments. Reads every segment to build the index.
    pub fn open(root: impl AsRef<Path>, prefixes: &[&str]) -> std::io::Result<Self> {
        let files = LocalStore::open(root)?;
        let dir = files.root().join(SEGMENTS_DIR);
        if !dir.is_dir() {
            fs::create_dir_all(&dir)?;
            sync_dir(files.root())?;
        }
        let shared = Arc::new(Shared {
            dir,
            index: Mutex::default(),
        });
        shared.refresh()?;
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            shared: shared.clone(),
            files: files.clone(),
            owned: None,
        };
        std::thread::Builder::new()
            .name("netsy-segments".into())
            .spawn(move || committer.run(rx))?;
        Ok(Self {
            files,
            shared,
            prefixes: prefixes.iter().map(|p| p.to_string()).collect(),
            jobs: tx,
        })
    }

    fn appended(&self, key: &str) -> bool {
        self.prefixes.iter().any(|p| key.starts_with(p.as_str()))
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&Shared) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let shared = self.shared.clone();
        let k = key.to_string();
        tokio::task::spawn_blocking(move || f(&shared))
            .await
            .map_err(|e| StoreError::Other {
                key: k.clone(),
                message: e.to_string(),
            })?
            .map_err(|e| StoreError::Other {
                key: k,
                message: e.to_string(),
            })
    }

    /// The current entry for `key` after reading what other processes appended.
    async fn entry(&self, key: &str) -> Result<Option<Entry>> {
        let k = key.to_string();
        self.blocking(key, move |shared| {
            shared.refresh()?;
            Ok(shared.index.lock().unwrap().objects.get(&k).cloned())
        })
        .await
    }

    async fn read(&self, key: &str, start: u64, end: u64) -> Result<Option<Bytes>> {
        // A segment removed between the lookup and the read held nothing current by then:
        // look again.
        for _ in 0..3 {
            let Some(entry) = self.entry(key).await? else {
                return Ok(None);
            };
            let e = entry.clone();
            let read = tokio::task::spawn_blocking({
                let shared = self.shared.clone();
                move || shared.read(&e, start, end)
            })
            .await
            .map_err(|e| StoreError::Other {
                key: key.to_string(),
                message: e.to_string(),
            })?;
            match read {
                Ok(data) => return Ok(Some(data.into())),
                Err(e) if e.kind() == ErrorKind::NotFound => continue,
                Err(e) => {
                    return Err(StoreError::Other {
                        key: key.to_string(),
                        message: e.to_string(),
                    })
                }
            }
        }
        Err(StoreError::Transient {
            key: key.to_string(),
            message: "its segment kept being removed".into(),
        })
    }

    async fn submit(&self, key: &str, put: Option<(Bytes, PutMode)>) -> Result<String> {
        let (done, answer) = tokio::sync::oneshot::channel();
        let job = Job {
            key: key.to_string(),
            put,
            done,
        };
        let closed = || StoreError::Other {
            key: key.to_string(),
            message: "the segment writer stopped".into(),
        };
        self.jobs.send(job).map_err(|_| closed())?;
        match answer.await.map_err(|_| closed())? {
            Ok(etag) => Ok(etag),
            Err(Refused::Exists) => Err(StoreError::AlreadyExists {
                key: key.to_string(),
            }),
            Err(Refused::Precondition) => Err(StoreError::Precondition {
                key: key.to_string(),
            }),
            Err(Refused::Contended) => Err(StoreError::Transient {
                key: key.to_string(),
                message: "other processes kept claiming the segments directory".into(),
            }),
            Err(Refused::Io(message)) => Err(StoreError::Other {
                key: key.to_string(),
                message,
            }),
        }
    }
}

#[async_trait]
impl ObjectStore for SegmentStore {
    async fn get(&self, key: &str) -> Result<Object> {
        if self.appended(key) {
            if let Some(data) = self.read(key, 0, u64::MAX).await? {
                let etag = content_etag(&data);
                return Ok(Object { data, etag });
            }
        }
        self.files.get(key).await
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        if self.appended(key) {
            if let Some(data) = self.read(key, start, end).await? {
                return Ok(data);
            }
        }
        self.files.get_range(key, start, end).await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        if !self.appended(key) {
            return self.files.put(key, data, mode).await;
        }
        self.files.check_key(key)?;
        if key.len() > u16::MAX as usize || data.len() > u32::MAX as usize {
            return Err(StoreError::Other {
                key: key.to_string(),
                message: "key or object too large for a segment record".into(),
            });
        }
        self.submit(key, Some((data, mode))).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let mut out = self.files.list(prefix, start_after).await?;
        if self
            .prefixes
            .iter()
            .any(|p| p.starts_with(prefix) || prefix.starts_with(p.as_str()))
        {
            let p = prefix.to_string();
            let after = start_after.map(str::to_string);
            let appended = self
                .blocking(prefix, move |shared| {
                    shared.refresh()?;
                    let index = shared.index.lock().unwrap();
                    let from = match &after {
                        Some(a) if a.as_str() >= p.as_str() => a.clone(),
                        _ => p.clone(),
                    };
                    Ok(index
                        .objects
                        .range(from..)
                        .take_while(|(k, _)| k.starts_with(&p))
                        .filter(|(k, _)| after.as_deref().is_none_or(|a| k.as_str() > a))
                        .map(|(k, e)| ObjectMeta {
                            key: k.clone(),
                            size: e.len,
                            last_modified_ms: e.modified_ms,
                        })
                        .collect::<Vec<_>>())
                })
                .await?;
            if !appended.is_empty() {
                let keys: std::collections::HashSet<&str> =
                    appended.iter().map(|m| m.key.as_str()).collect();
                out.retain(|m| !keys.contains(m.key.as_str()));
                out.extend(appended);
                out.sort_by(|a, b| a.key.cmp(&b.key));
            }
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        if !self.appended(key) {
            return self.files.delete(key).await;
        }
        self.files.check_key(key)?;
        self.submit(key, None).await.map(|_| ())
    }

    fn describe(&self) -> String {
        self.files.describe()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn open(dir: &Path, prefixes: &[&str]) -> SegmentStore {
        SegmentStore::open(dir, prefixes).unwrap()
    }

    #[tokio::test]
    async fn passes_conformance_with_every_key_in_segments() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::run_all(&open(dir.path(), &[""])).await;
    }

    #[tokio::test]
    async fn passes_conformance_with_some_keys_in_segments() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::run_all(&open(dir.path(), &["c3/", "c4/", "c2/"])).await;
    }

    #[tokio::test]
    async fn another_handle_sees_appends_and_deletes_and_a_reopened_one_too() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), &["chunks/"]);
        let b = open(dir.path(), &["chunks/"]);
        a.put("chunks/1", Bytes::from_static(b"one"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(b.get("chunks/1").await.unwrap().data, "one");
        let err = b
            .put("chunks/1", Bytes::from_static(b"two"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        b.delete("chunks/1").await.unwrap();
        assert!(matches!(
            a.get("chunks/1").await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        a.put("chunks/1", Bytes::from_static(b"three"), PutMode::Create)
            .await
            .unwrap();
        a.put("chunks/2", Bytes::from_static(b"four"), PutMode::Create)
            .await
            .unwrap();
        drop((a, b));
        let c = open(dir.path(), &["chunks/"]);
        let listed: Vec<_> = c.list("chunks/", None).await.unwrap();
        assert_eq!(
            listed.iter().map(|m| m.key.as_str()).collect::<Vec<_>>(),
            ["chunks/1", "chunks/2"]
        );
        assert_eq!(listed[0].size, 5);
        assert_eq!(c.get("chunks/1").await.unwrap().data, "three");
        // Nothing but the segments directory is in the root: no chunk files.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(names, [SEGMENTS_DIR]);
    }

    #[tokio::test]
    async fn puts_committed_together_read_back_from_the_writer_and_from_a_new_handle() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["chunks/"]);
        let keys: Vec<String> = (0..64).map(|i| format!("chunks/{i:02}")).collect();
        futures::future::join_all(keys.iter().enumerate().map(|(i, k)| {
            let data = Bytes::from(format!("value {i} ").repeat(i + 1));
            store.put(k, data, PutMode::Create)
        }))
        .await
        .into_iter()
        .collect::<Result<Vec<_>>>()
        .unwrap();
        let other = open(dir.path(), &["chunks/"]);
        for (i, k) in keys.iter().enumerate() {
            let want = format!("value {i} ").repeat(i + 1);
            assert_eq!(store.get(k).await.unwrap().data, want, "{k}, writer");
            assert_eq!(other.get(k).await.unwrap().data, want, "{k}, other");
        }
    }

    #[tokio::test]
    async fn racing_creates_from_separate_handles_have_one_winner() {
        // Separate handles stand for separate processes: only claims order them.
        let dir = tempfile::tempdir().unwrap();
        let handles: Vec<_> = (0..8).map(|_| open(dir.path(), &["chunks/"])).collect();
        for round in 0..20 {
            let key = format!("chunks/{round}");
            let results = futures::future::join_all(handles.iter().enumerate().map(|(i, s)| {
                let key = key.clone();
                async move {
                    s.put(&key, Bytes::from(format!("writer {i}")), PutMode::Create)
                        .await
                }
            }))
            .await;
            let winners: Vec<_> = results
                .iter()
                .enumerate()
                .filter(|(_, r)| r.is_ok())
                .map(|(i, _)| i)
                .collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            for (i, s) in handles.iter().enumerate() {
                assert_eq!(
                    s.get(&key).await.unwrap().data,
                    format!("writer {}", winners[0]),
                    "handle {i}"
                );
            }
        }
    }

    fn seg(epoch: u64, seq: u64) -> SegId {
        SegId { epoch, seq }
    }

    fn segments_of(dir: &Path) -> Vec<SegId> {
        let s = Shared {
            dir: dir.join(SEGMENTS_DIR),
            index: Mutex::default(),
        };
        s.list().unwrap().segments
    }

    /// Drops a handle and waits until its committer has let its epoch go, as a process
    /// that exited would have.
    async fn close(store: SegmentStore) {
        let shared = store.shared.clone();
        drop(store);
        for _ in 0..200 {
            if Arc::strong_count(&shared) == 1 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the committer did not stop");
    }

    #[tokio::test]
    async fn a_record_cut_short_by_a_crash_is_never_read_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[""]);
        store
            .put("a", Bytes::from_static(b"kept"), PutMode::Create)
            .await
            .unwrap();
        close(store).await;
        let first = dir.path().join(SEGMENTS_DIR).join(seg(1, 0).name());
        let whole = fs::metadata(&first).unwrap().len();
        let mut record = Vec::new();
        encode(KIND_PUT, "b", b"never acknowledged", 1, &mut record);
        let torn = &record[..record.len() - 3];
        OpenOptions::new()
            .append(true)
            .open(&first)
            .unwrap()
            .write_all(torn)
            .unwrap();
        // The owner is gone: its segment is read to the last whole record, and left as is.
        let store = open(dir.path(), &[""]);
        assert_eq!(store.get("a").await.unwrap().data, "kept");
        assert!(matches!(
            store.get("b").await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        // The next write claims a new epoch, seals the first where its whole records end,
        // and appends to a segment of its own.
        store
            .put("b", Bytes::from_static(b"written"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(segments_of(dir.path()), [seg(1, 0), seg(2, 0)]);
        assert_eq!(
            fs::metadata(&first).unwrap().len(),
            whole + torn.len() as u64
        );
        close(store).await;
        // Zeros, as a file extended by a crash can hold, after the second epoch's records.
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(SEGMENTS_DIR).join(seg(2, 0).name()))
            .unwrap()
            .write_all(&[0; 100])
            .unwrap();
        let store = open(dir.path(), &[""]);
        assert_eq!(store.get("a").await.unwrap().data, "kept");
        assert_eq!(store.get("b").await.unwrap().data, "written");
        assert_eq!(store.list("", None).await.unwrap().len(), 2);
    }

    #[tokio::test]
    async fn damage_before_the_end_is_an_error_not_a_silent_gap() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[""]);
        for key in ["a", "b", "c"] {
            store
                .put(key, Bytes::from(key.repeat(100)), PutMode::Create)
                .await
                .unwrap();
        }
        close(store).await;
        let first = dir.path().join(SEGMENTS_DIR).join(seg(1, 0).name());
        let mut bytes = fs::read(&first).unwrap();
        bytes[HEADER + 10] ^= 0xff;
        fs::write(&first, bytes).unwrap();
        let err = SegmentStore::open(dir.path(), &[""]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
    }

    #[tokio::test]
    async fn a_fenced_writer_appending_late_is_never_read_and_claims_its_way_back() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), &["chunks/"]);
        a.put("chunks/1", Bytes::from_static(b"a"), PutMode::Create)
            .await
            .unwrap();
        // b writes: it claims epoch 2, which fences a and seals a's segment.
        let b = open(dir.path(), &["chunks/"]);
        b.put("chunks/2", Bytes::from_static(b"b"), PutMode::Create)
            .await
            .unwrap();
        // a, paused mid-commit until now, appends a whole record to its segment (the
        // write a paused process finishes when it continues): past the seal, never read.
        let mut late = Vec::new();
        encode(KIND_PUT, "chunks/late", b"fenced", 1, &mut late);
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(SEGMENTS_DIR).join(seg(1, 0).name()))
            .unwrap()
            .write_all(&late)
            .unwrap();
        let c = open(dir.path(), &["chunks/"]);
        for (name, s) in [("a", &a), ("b", &b), ("c", &c)] {
            let keys: Vec<_> = s
                .list("chunks/", None)
                .await
                .unwrap()
                .into_iter()
                .map(|m| m.key)
                .collect();
            assert_eq!(keys, ["chunks/1", "chunks/2"], "handle {name}");
        }
        // a's next write finds it fenced, claims epoch 3, and is decided on what b wrote.
        let err = a
            .put("chunks/2", Bytes::from_static(b"a again"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        a.put("chunks/3", Bytes::from_static(b"a"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(b.get("chunks/3").await.unwrap().data, "a");
        assert_eq!(c.get("chunks/2").await.unwrap().data, "b");
        assert!(c.get("chunks/late").await.is_err());
    }

    #[tokio::test]
    async fn a_group_that_writes_nothing_does_not_fence_the_owner() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), &[""]);
        a.put("k", Bytes::from_static(b"a"), PutMode::Create)
            .await
            .unwrap();
        let b = open(dir.path(), &[""]);
        let err = b
            .put("k", Bytes::from_static(b"b"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        let err = b
            .put(
                "k",
                Bytes::from_static(b"b"),
                PutMode::Update("stale".into()),
            )
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Precondition { .. }), "{err}");
        b.delete("absent").await.unwrap();
        let claims = |dir: &Path| {
            let s = Shared {
                dir: dir.join(SEGMENTS_DIR),
                index: Mutex::default(),
            };
            s.list().unwrap().claims.into_iter().collect::<Vec<_>>()
        };
        assert_eq!(claims(dir.path()), [1], "only a claimed");
        // A write does claim.
        b.put("k2", Bytes::from_static(b"b"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(claims(dir.path()), [1, 2]);
        assert_eq!(a.get("k2").await.unwrap().data, "b");
    }

    #[tokio::test]
    async fn a_live_owners_uncommitted_bytes_are_not_read_by_others() {
        let dir = tempfile::tempdir().unwrap();
        let a = open(dir.path(), &[""]);
        a.put("k", Bytes::from_static(b"committed"), PutMode::Create)
            .await
            .unwrap();
        // Bytes past the head (a record being synced, as far as others can tell).
        let mut pending = Vec::new();
        encode(KIND_PUT, "p", b"not yet", 1, &mut pending);
        OpenOptions::new()
            .append(true)
            .open(dir.path().join(SEGMENTS_DIR).join(seg(1, 0).name()))
            .unwrap()
            .write_all(&pending)
            .unwrap();
        let b = open(dir.path(), &[""]);
        assert_eq!(b.get("k").await.unwrap().data, "committed");
        assert!(b.get("p").await.is_err());
        // Once a is gone, what it left whole is read (it may have been a PUT whose answer
        // was lost).
        close(a).await;
        assert_eq!(b.get("p").await.unwrap().data, "not yet");
    }

    #[tokio::test]
    async fn segments_holding_nothing_current_are_removed_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &["chunks/"]);
        let big = Bytes::from(vec![7u8; 1 << 20]);
        // 70 MiB: the first segment closes at 64 MiB.
        for i in 0..70 {
            store
                .put(&format!("chunks/{i:03}"), big.clone(), PutMode::Create)
                .await
                .unwrap();
        }
        assert_eq!(segments_of(dir.path()), [seg(1, 0), seg(1, 1)]);
        for i in 0..60 {
            store.delete(&format!("chunks/{i:03}")).await.unwrap();
        }
        assert_eq!(
            segments_of(dir.path()),
            [seg(1, 0), seg(1, 1)],
            "the first segment still holds chunks 60..63"
        );
        for i in 60..70 {
            store.delete(&format!("chunks/{i:03}")).await.unwrap();
        }
        assert_eq!(
            segments_of(dir.path()),
            [seg(1, 1)],
            "the segment being appended to stays"
        );
        assert!(store.list("chunks/", None).await.unwrap().is_empty());
        store
            .put("chunks/new", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        close(store).await;
        let store = open(dir.path(), &["chunks/"]);
        let listed = store.list("chunks/", None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(store.get("chunks/new").await.unwrap().data, "x");
        // A new epoch's first commit removes the emptied segment before it, then the
        // claim, head and seal of the epoch left without segments.
        store.delete("chunks/new").await.unwrap();
        assert_eq!(segments_of(dir.path()), [seg(2, 0)]);
        let mut names: Vec<_> = fs::read_dir(dir.path().join(SEGMENTS_DIR))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        let mut want = [
            epoch_file(2, CLAIM_SUFFIX),
            epoch_file(2, HEAD_SUFFIX),
            seg(2, 0).name(),
        ];
        want.sort();
        assert_eq!(names, want);
    }

    #[tokio::test]
    async fn chunk_files_of_earlier_versions_are_read_listed_and_guarded() {
        let dir = tempfile::tempdir().unwrap();
        let files = LocalStore::open(dir.path()).unwrap();
        files
            .put(
                "chunks/0001/old",
                Bytes::from_static(b"old"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let store = open(dir.path(), &["chunks/"]);
        assert_eq!(store.get("chunks/0001/old").await.unwrap().data, "old");
        let err = store
            .put(
                "chunks/0001/old",
                Bytes::from_static(b"new"),
                PutMode::Create,
            )
            .await
            .unwrap_err();
        assert!(err.is_conflict(), "{err}");
        store
            .put(
                "chunks/0001/new",
                Bytes::from_static(b"new"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let keys: Vec<_> = store
            .list("chunks/", None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(keys, ["chunks/0001/new", "chunks/0001/old"]);
        store.delete("chunks/0001/old").await.unwrap();
        assert!(!dir.path().join("chunks/0001/old").exists());
        assert_eq!(store.list("chunks/", None).await.unwrap().len(), 1);
    }
}
