//! `segments:///dir`, opt-in: a local directory whose chunk objects are appended to segment
//! files, so a commit costs one `fdatasync` of an append instead of a new file, its inode
//! and two syncs (the [`LocalStore`]'s create-if-absent). Commits arriving while one is
//! being synced are written and synced together: with several chunk PUTs in flight that is
//! etcd's WAL, group commit included, behind the object store's interface.
//!
//! Keys under the appended prefixes (the log's `chunks/`) live in `.segments/`, a sequence
//! of append-only files of records (put or delete, key, data, CRC-64). Every other key
//! (snapshots, the leader lease) is a plain file of the [`LocalStore`], as are chunk files
//! written by earlier versions, which are still read, listed and deleted. The semantics are
//! S3's, for several processes sharing the directory as for one:
//! - Writers append only under an exclusive `flock` on `.segments/LOCK`, after reading
//!   whatever other processes appended, so a create-if-absent sees every earlier create;
//!   the lock is held through the sync, so an object is visible only once durable.
//! - Readers take the lock shared to read what was appended since they last looked: they
//!   never see a record before it is synced.
//! - A record cut short by a crash is at the end of the last segment; the next writer,
//!   holding the lock, truncates it (its PUT was never answered). A record whose CRC does
//!   not match anywhere else is corruption, and is reported, never skipped.
//! - Not the default: under load the lock is held most of the time, so a process paused
//!   while holding it (SIGSTOP) stalls every other process on the directory until it
//!   continues or dies. Safety holds; a successor's availability does not.
//! - A segment is removed once it is not the last one and everything in it, and in every
//!   segment before it, is deleted or overwritten (the log deletes chunks oldest first,
//!   once a snapshot covers them).

use super::local::LocalStore;
use super::{content_etag, Object, ObjectMeta, ObjectStore, PutMode, Result, StoreError};
use crate::clock::now_ms;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::{BTreeMap, HashMap};
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};

/// The directory holding the segments, under the store's root. Not a valid object key.
pub const SEGMENTS_DIR: &str = ".segments";
const LOCK_FILE: &str = "LOCK";
const SEGMENT_SUFFIX: &str = ".seg";
/// A segment is closed once it holds this much; the next append starts a new one.
const SEGMENT_BYTES: u64 = 64 << 20;
/// At most this many puts and deletes share one sync.
const GROUP_MAX: usize = 256;

const MAGIC: u32 = 0x4753_534e; // "NSSG" little-endian
const KIND_PUT: u8 = 1;
const KIND_DELETE: u8 = 2;
/// magic u32, kind u8, key length u16, data length u32, modified ms i64, CRC-64 u64.
const HEADER: usize = 4 + 1 + 2 + 4 + 8 + 8;

/// Where an object's current version is.
#[derive(Debug, Clone)]
struct Entry {
    segment: u64,
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
    segments: BTreeMap<u64, SegmentState>,
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
    /// The file ends at a record boundary.
    Clean,
    /// The file ends inside the record at this offset (or in zeros): a write cut short by a
    /// crash, never acknowledged (as etcd's WAL treats an unexpected end).
    Torn(u64),
    /// The record at this offset is damaged and is not the last one: corruption.
    Damaged(u64),
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

/// Reads the records of `file` from `from` to its end, calling `f` on each.
fn read_records(file: &mut File, from: u64, mut f: impl FnMut(Record)) -> std::io::Result<Tail> {
    let len = file.metadata()?.len();
    file.seek(SeekFrom::Start(from))?;
    let mut reader = std::io::BufReader::with_capacity(1 << 20, file);
    let mut at = from;
    let mut head = [0u8; HEADER];
    while at < len {
        if len - at < HEADER as u64 {
            return Ok(Tail::Torn(at));
        }
        reader.read_exact(&mut head)?;
        if head.iter().all(|b| *b == 0) {
            let mut rest = Vec::new();
            reader.read_to_end(&mut rest)?;
            let zeros = rest.iter().all(|b| *b == 0);
            return Ok(if zeros {
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
            return Ok(Tail::Torn(at));
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
            return Ok(if end == len {
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

fn segment_name(id: u64) -> String {
    format!("{id:020}{SEGMENT_SUFFIX}")
}

fn corrupt(message: String) -> std::io::Error {
    std::io::Error::new(ErrorKind::InvalidData, message)
}

fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Index {
    fn apply(&mut self, segment: u64, record: Record) {
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

    fn last_segment(&self) -> Option<u64> {
        self.segments.keys().next_back().copied()
    }
}

#[derive(Debug)]
struct Shared {
    dir: PathBuf,
    index: Mutex<Index>,
}

impl Shared {
    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(segment_name(id))
    }

    fn lock_file(&self) -> std::io::Result<File> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(self.dir.join(LOCK_FILE))
    }

    /// The segments on disk, in order.
    fn segment_ids(&self) -> std::io::Result<Vec<u64>> {
        let mut ids: Vec<u64> = fs::read_dir(&self.dir)?
            .filter_map(|e| {
                let name = e.ok()?.file_name();
                name.to_str()?.strip_suffix(SEGMENT_SUFFIX)?.parse().ok()
            })
            .collect();
        ids.sort_unstable();
        Ok(ids)
    }

    /// Reads what was appended since this process last looked. `writer` holds the lock
    /// exclusively: a torn record at the end of the last segment is then a crashed writer's
    /// and is cut off; a reader stops before it (it cannot be mid-write: readers hold the
    /// lock shared).
    fn catch_up(&self, index: &mut Index, writer: bool) -> std::io::Result<()> {
        let ids = self.segment_ids()?;
        let last = ids.last().copied();
        for &id in &ids {
            let scanned = index.segments.get(&id).map_or(0, |s| s.scanned);
            let mut file = match File::open(self.segment_path(id)) {
                Ok(f) => f,
                Err(e) if e.kind() == ErrorKind::NotFound => continue, // removed meanwhile
                Err(e) => return Err(e),
            };
            if file.metadata()?.len() == scanned {
                index.segments.entry(id).or_default();
                continue;
            }
            let mut end = scanned;
            let tail = read_records(&mut file, scanned, |r| {
                end = r.data_offset + r.len;
                index.apply(id, r);
            })?;
            index.segments.entry(id).or_default().scanned = end;
            let at = match tail {
                Tail::Clean => continue,
                Tail::Torn(at) if Some(id) == last => at,
                Tail::Torn(at) | Tail::Damaged(at) => {
                    return Err(corrupt(format!(
                        "segment {} is damaged at offset {at}: its record there fails its CRC \
                         and is not the last one written (restore the directory from a copy, \
                         or remove the segment and everything after it to keep what precedes)",
                        self.segment_path(id).display()
                    )))
                }
            };
            if writer {
                tracing::warn!(
                    segment = %self.segment_path(id).display(),
                    offset = at,
                    "cutting off a record left incomplete by a crash (never acknowledged)"
                );
                let f = OpenOptions::new().write(true).open(self.segment_path(id))?;
                f.set_len(at)?;
                f.sync_data()?;
            }
        }
        // Segments removed by another process: everything in them was dead, so after reading
        // the later ones nothing should still point there.
        let gone: Vec<u64> = index
            .segments
            .keys()
            .filter(|id| ids.binary_search(id).is_err())
            .copied()
            .collect();
        if !gone.is_empty() {
            index.objects.retain(|key, e| {
                let keep = !gone.contains(&e.segment);
                if !keep {
                    tracing::warn!(key, segment = e.segment, "object in a removed segment");
                }
                keep
            });
            for id in gone {
                index.segments.remove(&id);
            }
        }
        Ok(())
    }

    /// Brings the index up to date under the shared lock.
    fn refresh(&self) -> std::io::Result<()> {
        let lock = self.lock_file()?;
        lock.lock_shared()?;
        let mut index = self.index.lock().unwrap();
        self.catch_up(&mut index, false)
    }

    fn read(&self, entry: &Entry, start: u64, end: u64) -> std::io::Result<Vec<u8>> {
        let end = end.min(entry.len);
        let start = start.min(end);
        let mut file = File::open(self.segment_path(entry.segment))?;
        file.seek(SeekFrom::Start(entry.offset + start))?;
        let mut buf = vec![0; (end - start) as usize];
        file.read_exact(&mut buf)?;
        Ok(buf)
    }
}

/// A put or delete waiting for the next group commit.
struct Job {
    key: String,
    /// None for a delete.
    put: Option<(Bytes, PutMode)>,
    done: tokio::sync::oneshot::Sender<std::result::Result<String, Refused>>,
}

/// Why a job was not applied.
#[derive(Debug)]
enum Refused {
    Exists,
    Precondition,
    Io(String),
}

/// Appends groups of jobs: one thread per store handle, so one sync at a time per process.
struct Committer {
    shared: Arc<Shared>,
    files: LocalStore,
    lock: File,
    /// The last segment, open for appending, with its id.
    active: Option<(u64, File)>,
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
            let answers = match self.commit(&group) {
                Ok(answers) => answers,
                Err(e) => {
                    tracing::warn!(error = %e, jobs = group.len(), "segment append failed");
                    group
                        .iter()
                        .map(|_| Err(Refused::Io(e.to_string())))
                        .collect()
                }
            };
            for (job, answer) in group.into_iter().zip(answers) {
                let _ = job.done.send(answer);
            }
        }
    }

    fn commit(
        &mut self,
        group: &[Job],
    ) -> std::io::Result<Vec<std::result::Result<String, Refused>>> {
        self.lock.lock()?;
        let result = self.commit_locked(group);
        let _ = self.lock.unlock();
        result
    }

    fn commit_locked(
        &mut self,
        group: &[Job],
    ) -> std::io::Result<Vec<std::result::Result<String, Refused>>> {
        let shared = self.shared.clone();
        let mut index = shared.index.lock().unwrap();
        shared.catch_up(&mut index, true)?;
        let now = now_ms();
        // Decide each job against the index and the jobs before it in this group.
        let mut view: HashMap<&str, Option<String>> = HashMap::new();
        let mut answers = Vec::with_capacity(group.len());
        let mut buf = Vec::new();
        // What is appended, offsets relative to the start of `buf`.
        let mut written = Vec::new();
        for job in group {
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
                        written.push(Record {
                            kind: KIND_PUT,
                            key: job.key.clone(),
                            modified_ms: now,
                            data_offset: (buf.len() - data.len()) as u64,
                            len: data.len() as u64,
                        });
                        view.insert(&job.key, Some(etag.clone()));
                        etag
                    })
                }
                None => {
                    if current.is_some() {
                        encode(KIND_DELETE, &job.key, &[], now, &mut buf);
                        written.push(Record {
                            kind: KIND_DELETE,
                            key: job.key.clone(),
                            modified_ms: now,
                            data_offset: buf.len() as u64,
                            len: 0,
                        });
                    }
                    view.insert(&job.key, None);
                    Ok(String::new())
                }
            };
            answers.push(answer);
        }
        if !buf.is_empty() {
            let (id, start) = self.append(&mut index, &buf)?;
            for mut r in written {
                r.data_offset += start;
                index.apply(id, r);
            }
            index.segments.entry(id).or_default().scanned = start + buf.len() as u64;
            // The group is durable: a segment that cannot be removed now is removed later.
            if let Err(e) = self.remove_dead(&mut index) {
                tracing::warn!(error = %e, "could not remove an emptied segment");
            }
        }
        drop(index);
        // Deletes also remove a plain file of the same key (a chunk of an earlier version).
        for (job, answer) in group.iter().zip(answers.iter_mut()) {
            if job.put.is_none() && answer.is_ok() {
                if let Err(e) = self.files.delete_blocking(&job.key) {
                    *answer = Err(Refused::Io(e.to_string()));
                }
            }
        }
        Ok(answers)
    }

    /// The etag of a plain file holding `key` (written by an earlier version), if any.
    fn legacy_etag(&self, key: &str) -> std::io::Result<Option<String>> {
        match self.files.read_blocking(key) {
            Ok(data) => Ok(Some(content_etag(&data))),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Appends `buf` to the last segment (starting a new one when it is full) and syncs it;
    /// returns the segment and the offset the bytes start at.
    fn append(&mut self, index: &mut Index, buf: &[u8]) -> std::io::Result<(u64, u64)> {
        let last = index.last_segment();
        let scanned = last.map_or(0, |id| index.segments[&id].scanned);
        let id = match last {
            Some(id) if scanned < SEGMENT_BYTES => id,
            _ => {
                let id = last.map_or(1, |id| id + 1);
                OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(self.shared.segment_path(id))?;
                sync_dir(&self.shared.dir)?;
                index.segments.entry(id).or_default();
                id
            }
        };
        if self.active.as_ref().map(|(a, _)| *a) != Some(id) {
            let file = OpenOptions::new()
                .write(true)
                .open(self.shared.segment_path(id))?;
            self.active = Some((id, file));
        }
        let (_, file) = self.active.as_mut().expect("opened above");
        let start = index.segments[&id].scanned;
        file.seek(SeekFrom::Start(start))?;
        file.write_all(buf)?;
        crate::crashpoint::hit("segment-before-sync");
        file.sync_data()?;
        Ok((id, start))
    }

    /// Removes leading segments that hold nothing current (never the last one).
    fn remove_dead(&mut self, index: &mut Index) -> std::io::Result<()> {
        let last = index.last_segment();
        let mut removed = false;
        while let Some((&id, state)) = index.segments.iter().next() {
            if Some(id) == last || state.live > 0 {
                break;
            }
            match fs::remove_file(self.shared.segment_path(id)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            index.segments.remove(&id);
            removed = true;
            tracing::debug!(segment = id, "removed a segment holding nothing current");
        }
        if removed {
            sync_dir(&self.shared.dir)?;
        }
        Ok(())
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
        let lock = shared.lock_file()?;
        {
            lock.lock()?;
            let mut index = shared.index.lock().unwrap();
            let caught_up = shared.catch_up(&mut index, true);
            let _ = lock.unlock();
            caught_up?;
        }
        let (tx, rx) = mpsc::channel();
        let committer = Committer {
            shared: shared.clone(),
            files: files.clone(),
            lock,
            active: None,
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
        // Separate handles stand for separate processes: only the lock orders them.
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

    #[tokio::test]
    async fn a_record_cut_short_by_a_crash_is_cut_off_and_the_rest_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(dir.path(), &[""]);
        store
            .put("a", Bytes::from_static(b"kept"), PutMode::Create)
            .await
            .unwrap();
        let seg = dir.path().join(SEGMENTS_DIR).join(segment_name(1));
        let whole = fs::metadata(&seg).unwrap().len();
        let mut record = Vec::new();
        encode(KIND_PUT, "b", b"never acknowledged", 1, &mut record);
        let torn = &record[..record.len() - 3];
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(torn)
            .unwrap();
        // A reader neither sees it nor cuts it.
        assert_eq!(store.get("a").await.unwrap().data, "kept");
        assert!(matches!(
            store.get("b").await.unwrap_err(),
            StoreError::NotFound { .. }
        ));
        assert_eq!(fs::metadata(&seg).unwrap().len(), whole + torn.len() as u64);
        // The next write cuts it off and starts where the last whole record ends.
        store
            .put("b", Bytes::from_static(b"written"), PutMode::Create)
            .await
            .unwrap();
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            whole + record.len() as u64 - b"never acknowledged".len() as u64 + 7
        );
        // So does opening the store (zeros, as a file extended by a crash can hold).
        drop(store);
        OpenOptions::new()
            .append(true)
            .open(&seg)
            .unwrap()
            .write_all(&[0; 100])
            .unwrap();
        let store = open(dir.path(), &[""]);
        assert_eq!(store.get("b").await.unwrap().data, "written");
        assert_eq!(store.list("", None).await.unwrap().len(), 2);
        assert_eq!(
            fs::metadata(&seg).unwrap().len(),
            whole + record.len() as u64 - 11
        );
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
        drop(store);
        let segs = dir.path().join(SEGMENTS_DIR);
        // Move the records into segment 1 followed by an empty segment 2, then flip a byte.
        let seg = segs.join(segment_name(1));
        let mut bytes = fs::read(&seg).unwrap();
        bytes[HEADER + 10] ^= 0xff;
        fs::write(&seg, bytes).unwrap();
        File::create(segs.join(segment_name(2))).unwrap();
        let err = SegmentStore::open(dir.path(), &[""]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::InvalidData, "{err}");
        assert!(err.to_string().contains("damaged"), "{err}");
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
        let segs = |dir: &Path| {
            let s = Shared {
                dir: dir.join(SEGMENTS_DIR),
                index: Mutex::default(),
            };
            s.segment_ids().unwrap()
        };
        assert_eq!(segs(dir.path()), [1, 2]);
        for i in 0..60 {
            store.delete(&format!("chunks/{i:03}")).await.unwrap();
        }
        assert_eq!(
            segs(dir.path()),
            [1, 2],
            "segment 1 still holds chunks 60..63"
        );
        for i in 60..70 {
            store.delete(&format!("chunks/{i:03}")).await.unwrap();
        }
        assert_eq!(segs(dir.path()), [2], "the last segment stays");
        assert!(store.list("chunks/", None).await.unwrap().is_empty());
        store
            .put("chunks/new", Bytes::from_static(b"x"), PutMode::Create)
            .await
            .unwrap();
        drop(store);
        let store = open(dir.path(), &["chunks/"]);
        let listed = store.list("chunks/", None).await.unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(store.get("chunks/new").await.unwrap().data, "x");
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
