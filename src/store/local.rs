//! A local directory as the object store: the embedded default, so `netsy serve` works with
//! no cloud at all, and with the same semantics as S3.
//!
//! Create-if-absent writes a temporary file, fsyncs it, then hard-links it into place:
//! `link` fails atomically if the target exists, so two processes racing for one chunk key
//! get exactly one winner, and a crash leaves either the whole object or nothing. Directories
//! are fsynced before success so an acknowledged object survives power loss. Conditional
//! updates (If-Match) and deletes hold an exclusive `flock` on the root directory itself,
//! which makes compare-and-swap atomic across processes sharing the directory without
//! leaving any file in it that is not an object.

use super::{content_etag, Object, ObjectMeta, ObjectStore, PutMode, Result, StoreError};
use async_trait::async_trait;
use bytes::Bytes;
use dashmap::DashSet;
use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct LocalStore {
    root: Arc<PathBuf>,
    /// Directories whose entry in their parent this process has synced: a write into one
    /// needs neither a `mkdir` nor a directory sync. A new bucket's chunk partitions
    /// otherwise cost a `mkdir` and two more syncs on each of its first 10,000 chunks,
    /// which doubled the commit time.
    durable_dirs: Arc<DashSet<PathBuf>>,
    /// Whether a [`ObjectStore::prepare_prefixes`] pass is running.
    preparing: Arc<AtomicBool>,
}

const TMP_PREFIX: &str = ".tmp-";

/// Directories created ahead between two syncs of their parent.
const PREPARE_BATCH: usize = 500;

/// The path of `key` under `root`, or None for a key that could escape it or name a
/// temporary file.
fn key_path(root: &Path, key: &str) -> Option<PathBuf> {
    let valid = !key.is_empty()
        && !key.starts_with('/')
        && key.split('/').next() != Some(super::segments::SEGMENTS_DIR)
        && key
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.starts_with(TMP_PREFIX));
    valid.then(|| root.join(key))
}

/// Creates `dir` unless it exists; true if it was created.
fn create_dir_if_absent(dir: &Path) -> std::io::Result<bool> {
    match fs::create_dir(dir) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes `dir` (below `root`) exist durably: its parents first, then `dir` itself, then a
/// sync of its parent. A directory that already existed is synced into its parent as well:
/// the process that created it may have died before doing so.
fn make_durable(root: &Path, durable: &DashSet<PathBuf>, dir: &Path) -> std::io::Result<()> {
    if dir == root || durable.contains(dir) {
        return Ok(());
    }
    let parent = dir
        .parent()
        .filter(|p| p.starts_with(root))
        .ok_or_else(|| std::io::Error::other("directory outside the store"))?;
    make_durable(root, durable, parent)?;
    create_dir_if_absent(dir)?;
    sync_dir(parent)?;
    durable.insert(dir.to_path_buf());
    Ok(())
}

/// Creates the directories of `prefixes` in batches, one parent sync per batch, and marks
/// them durable. Stops when the store is dropped or on the first error (the write path
/// creates what is missing anyway, and reports its own errors).
fn prepare(root: &Path, durable: std::sync::Weak<DashSet<PathBuf>>, prefixes: &[String]) {
    let started = std::time::Instant::now();
    let mut created = 0usize;
    for batch in prefixes.chunks(PREPARE_BATCH) {
        let Some(durable) = durable.upgrade() else {
            return;
        };
        let result = (|| {
            let mut made = Vec::new();
            let mut parents = std::collections::BTreeSet::new();
            for prefix in batch {
                let Some(dir) = key_path(root, prefix.trim_end_matches('/')) else {
                    continue;
                };
                if durable.contains(&dir) {
                    continue;
                }
                let parent = dir.parent().expect("a key path is below the root");
                make_durable(root, &durable, parent)?;
                created += usize::from(create_dir_if_absent(&dir)?);
                parents.insert(parent.to_path_buf());
                made.push(dir);
            }
            for parent in &parents {
                sync_dir(parent)?;
            }
            for dir in made {
                durable.insert(dir);
            }
            Ok::<_, std::io::Error>(())
        })();
        if let Err(e) = result {
            tracing::debug!(root = %root.display(), error = %e, "stopped preparing directories");
            return;
        }
    }
    tracing::debug!(
        root = %root.display(),
        prefixes = prefixes.len(),
        created,
        ms = started.elapsed().as_millis() as u64,
        "prepared directories"
    );
}

impl LocalStore {
    /// Opens (creating if needed) a directory store.
    pub fn open(root: impl AsRef<Path>) -> std::io::Result<Self> {
        let root = root.as_ref().to_path_buf();
        fs::create_dir_all(&root)?;
        Ok(Self {
            root: Arc::new(fs::canonicalize(root)?),
            durable_dirs: Arc::default(),
            preparing: Arc::default(),
        })
    }

    /// The directory this store keeps its objects in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Refuses a key that could escape the root or name something that is not an object.
    pub(crate) fn check_key(&self, key: &str) -> Result<()> {
        self.path(key).map(|_| ())
    }

    /// An object's bytes, on the calling thread.
    pub(crate) fn read_blocking(&self, key: &str) -> std::io::Result<Vec<u8>> {
        match key_path(&self.root, key) {
            Some(path) => fs::read(path),
            None => Err(ErrorKind::NotFound.into()),
        }
    }

    /// Deletes an object (a missing one too), on the calling thread.
    pub(crate) fn delete_blocking(&self, key: &str) -> std::io::Result<()> {
        let Some(path) = key_path(&self.root, key) else {
            return Ok(());
        };
        let _lock = self.lock()?;
        match fs::remove_file(&path) {
            Ok(()) => sync_dir(path.parent().expect("keys have a parent")),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e),
        }
    }

    fn path(&self, key: &str) -> Result<PathBuf> {
        key_path(&self.root, key).ok_or_else(|| StoreError::Other {
            key: key.to_string(),
            message: "invalid object key".into(),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        key: &str,
        f: impl FnOnce(&LocalStore) -> std::io::Result<T> + Send + 'static,
    ) -> Result<T> {
        let this = self.clone();
        let k = key.to_string();
        tokio::task::spawn_blocking(move || f(&this))
            .await
            .map_err(|e| StoreError::Other {
                key: k.clone(),
                message: e.to_string(),
            })?
            .map_err(|e| io_error(&k, e))
    }

    fn lock(&self) -> std::io::Result<File> {
        let dir = File::open(self.root.as_path())?;
        dir.lock()?;
        Ok(dir)
    }
    /// Makes sure `dir` exists and its entry is durable before an object is linked into it.
    fn ensure_dir(&self, dir: &Path) -> std::io::Result<()> {
        make_durable(&self.root, &self.durable_dirs, dir)
    }

    /// Create-if-absent without a temporary name (Linux): an unnamed file (`O_TMPFILE`)
    /// is written and synced, then linked in, which fails if the target exists. Saves
    /// creating and removing a temporary directory entry per chunk. Ok(false) when the
    /// filesystem or the environment (no /proc) does not support it.
    #[cfg(target_os = "linux")]
    fn create_unnamed(&self, target: &Path, data: &[u8]) -> std::io::Result<bool> {
        use rustix::fs::{linkat, openat, AtFlags, Mode, OFlags, CWD};
        use std::os::fd::AsRawFd;
        let dir = target.parent().expect("keys have a parent");
        self.ensure_dir(dir)?;
        let fd = match openat(
            CWD,
            dir,
            OFlags::TMPFILE | OFlags::WRONLY | OFlags::CLOEXEC,
            Mode::from_raw_mode(0o644),
        ) {
            Ok(fd) => fd,
            Err(
                rustix::io::Errno::OPNOTSUPP | rustix::io::Errno::ISDIR | rustix::io::Errno::INVAL,
            ) => return Ok(false),
            Err(e) => return Err(e.into()),
        };
        let mut f = File::from(fd);
        f.write_all(data)?;
        f.sync_data()?;
        crate::crashpoint::hit("store-before-link");
        let proc = format!("/proc/self/fd/{}", f.as_raw_fd());
        match linkat(CWD, proc.as_str(), CWD, target, AtFlags::SYMLINK_FOLLOW) {
            Ok(()) => Ok(true),
            Err(rustix::io::Errno::NOENT) if !Path::new("/proc/self/fd").exists() => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    #[cfg(not(target_os = "linux"))]
    fn create_unnamed(&self, _target: &Path, _data: &[u8]) -> std::io::Result<bool> {
        Ok(false)
    }

    /// Writes `data` to a new temporary file beside `target` and fsyncs it.
    fn write_tmp(&self, target: &Path, data: &[u8]) -> std::io::Result<PathBuf> {
        let dir = target.parent().expect("keys have a parent");
        self.ensure_dir(dir)?;
        let tmp = dir.join(format!("{TMP_PREFIX}{:016x}", rand::random::<u64>()));
        let mut f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
        crate::crashpoint::hit("store-before-link");
        Ok(tmp)
    }
}

pub(super) fn sync_dir(dir: &Path) -> std::io::Result<()> {
    File::open(dir)?.sync_all()
}

fn io_error(key: &str, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::NotFound => StoreError::NotFound {
            key: key.to_string(),
        },
        ErrorKind::AlreadyExists => StoreError::AlreadyExists {
            key: key.to_string(),
        },
        _ => StoreError::Other {
            key: key.to_string(),
            message: e.to_string(),
        },
    }
}

fn precondition() -> std::io::Error {
    std::io::Error::other("precondition failed")
}

#[async_trait]
impl ObjectStore for LocalStore {
    async fn get(&self, key: &str) -> Result<Object> {
        let path = self.path(key)?;
        let data = self.blocking(key, move |_| fs::read(path)).await?;
        let etag = content_etag(&data);
        Ok(Object {
            data: data.into(),
            etag,
        })
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let path = self.path(key)?;
        self.blocking(key, move |_| {
            let mut f = File::open(path)?;
            let len = f.metadata()?.len();
            let end = end.min(len);
            let start = start.min(end);
            f.seek(SeekFrom::Start(start))?;
            let mut buf = vec![0; (end - start) as usize];
            f.read_exact(&mut buf)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        let path = self.path(key)?;
        let etag = content_etag(&data);
        let k = key.to_string();
        let outcome = self
            .blocking(key, move |store| {
                let dir = path.parent().expect("keys have a parent").to_path_buf();
                if mode == PutMode::Create && store.create_unnamed(&path, &data)? {
                    sync_dir(&dir)?;
                    return Ok(());
                }
                let tmp = store.write_tmp(&path, &data)?;
                let result = (|| match &mode {
                    PutMode::Create => {
                        // Atomic create-if-absent: link fails if the target exists.
                        fs::hard_link(&tmp, &path)?;
                        Ok(true)
                    }
                    PutMode::Overwrite => {
                        let _lock = store.lock()?;
                        fs::rename(&tmp, &path)?;
                        Ok(true)
                    }
                    PutMode::Update(want) => {
                        let _lock = store.lock()?;
                        match fs::read(&path) {
                            Ok(current) if &content_etag(&current) == want => {
                                fs::rename(&tmp, &path)?;
                                Ok(true)
                            }
                            Ok(_) => Ok(false),
                            Err(e) if e.kind() == ErrorKind::NotFound => Ok(false),
                            Err(e) => Err(e),
                        }
                    }
                })();
                let _ = fs::remove_file(&tmp);
                let applied = result?;
                if applied {
                    sync_dir(&dir)?;
                    Ok(())
                } else {
                    Err(precondition())
                }
            })
            .await;
        match outcome {
            Ok(()) => Ok(etag),
            Err(StoreError::Other { message, .. }) if message == "precondition failed" => {
                Err(StoreError::Precondition { key: k })
            }
            Err(e) => Err(e),
        }
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let prefix = prefix.to_string();
        let start_after = start_after.map(str::to_string);
        self.blocking(&prefix.clone(), move |store| {
            // Walk only the directory the prefix's complete components name.
            let base = match prefix.rfind('/') {
                Some(i) => &prefix[..i],
                None => "",
            };
            let mut out = Vec::new();
            let dir = if base.is_empty() {
                store.root.to_path_buf()
            } else {
                store.root.join(base)
            };
            walk(&dir, base, &mut |key, meta| {
                if key.starts_with(&prefix) && start_after.as_deref().is_none_or(|s| key > s) {
                    let modified = meta
                        .modified()
                        .ok()
                        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                        .map_or(0, |d| d.as_millis() as i64);
                    out.push(ObjectMeta {
                        key: key.to_string(),
                        size: meta.len(),
                        last_modified_ms: modified,
                    });
                }
            })?;
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.path(key)?;
        let k = key.to_string();
        self.blocking(key, move |store| store.delete_blocking(&k))
            .await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }

    fn prepare_prefixes(&self, prefixes: Vec<String>) {
        if self.preparing.swap(true, Ordering::AcqRel) {
            return;
        }
        let root = self.root.to_path_buf();
        let durable = Arc::downgrade(&self.durable_dirs);
        let preparing = self.preparing.clone();
        let spawned = std::thread::Builder::new()
            .name("netsy-prepare-dirs".into())
            .spawn(move || {
                prepare(&root, durable, &prefixes);
                preparing.store(false, Ordering::Release);
            });
        if let Err(e) = spawned {
            self.preparing.store(false, Ordering::Release);
            tracing::debug!(error = %e, "could not start preparing directories");
        }
    }
}

fn walk(dir: &Path, rel: &str, f: &mut impl FnMut(&str, &fs::Metadata)) -> std::io::Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(TMP_PREFIX) || (rel.is_empty() && name == super::segments::SEGMENTS_DIR)
        {
            continue;
        }
        let key = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        let meta = entry.metadata()?;
        if meta.is_dir() {
            walk(&entry.path(), &key, f)?;
        } else {
            f(&key, &meta);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_conformance() {
        let dir = tempfile::tempdir().unwrap();
        crate::store::conformance::run_all(&LocalStore::open(dir.path()).unwrap()).await;
    }

    #[tokio::test]
    async fn prepared_prefixes_become_durable_directories_that_hold_no_objects() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        let prefixes: Vec<String> = (0..1200).map(|i| format!("chunks/{i:04}/")).collect();
        // Invalid prefixes are skipped, not created.
        let mut asked = prefixes.clone();
        asked.push("../escape/".into());
        store.prepare_prefixes(asked);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
        let root = store.root.to_path_buf();
        while prefixes.iter().any(|p| {
            !store
                .durable_dirs
                .contains(&root.join(p.trim_end_matches('/')))
        }) {
            assert!(std::time::Instant::now() < deadline, "not prepared in 30 s");
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        assert!(store.durable_dirs.contains(&root.join("chunks")));
        assert!(root.join("chunks/1199").is_dir());
        assert!(!dir.path().parent().unwrap().join("escape").exists());
        // Empty directories are not objects; an object in a prepared one is found.
        assert!(store.list("chunks/", None).await.unwrap().is_empty());
        store
            .put(
                "chunks/0007/x.netsy",
                Bytes::from_static(b"x"),
                PutMode::Create,
            )
            .await
            .unwrap();
        let listed: Vec<String> = store
            .list("chunks/", None)
            .await
            .unwrap()
            .into_iter()
            .map(|m| m.key)
            .collect();
        assert_eq!(listed, ["chunks/0007/x.netsy"]);
        // A directory created outside this handle is synced once, then known.
        fs::create_dir(root.join("snapshots")).unwrap();
        store
            .put(
                "snapshots/1.netsy",
                Bytes::from_static(b"s"),
                PutMode::Create,
            )
            .await
            .unwrap();
        assert!(store.durable_dirs.contains(&root.join("snapshots")));
    }

    #[tokio::test]
    async fn refuses_keys_that_escape_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        for key in ["../x", "/abs", "a//b", "a/./b", ".tmp-1"] {
            assert!(store.get(key).await.is_err(), "{key}");
            assert!(store
                .put(key, Bytes::from_static(b"x"), PutMode::Overwrite)
                .await
                .is_err());
        }
    }

    #[tokio::test]
    async fn racing_conditional_updates_from_separate_handles_have_one_winner() {
        // Separate store handles stand for separate processes: only the directory lock
        // orders them.
        let dir = tempfile::tempdir().unwrap();
        let first = LocalStore::open(dir.path()).unwrap();
        let mut etag = first
            .put("leader.netsy", Bytes::from_static(b"v0"), PutMode::Create)
            .await
            .unwrap();
        let handles: Vec<_> = (0..16)
            .map(|_| LocalStore::open(dir.path()).unwrap())
            .collect();
        for round in 0..20 {
            let results =
                futures::future::join_all(handles.iter().enumerate().map(|(i, store)| {
                    let etag = etag.clone();
                    async move {
                        store
                            .put(
                                "leader.netsy",
                                Bytes::from(format!("round {round} writer {i}")),
                                PutMode::Update(etag),
                            )
                            .await
                    }
                }))
                .await;
            let winners: Vec<_> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
            assert_eq!(winners.len(), 1, "round {round}: {results:?}");
            assert!(results
                .iter()
                .filter_map(|r| r.as_ref().err())
                .all(|e| matches!(e, StoreError::Precondition { .. })));
            etag = winners[0].clone();
            assert_eq!(first.get("leader.netsy").await.unwrap().etag, etag);
        }
        // Nothing but the object is left in the directory.
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["leader.netsy"]);
    }

    #[tokio::test]
    async fn leaves_no_temporary_files() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalStore::open(dir.path()).unwrap();
        store
            .put("a/b", Bytes::from_static(b"1"), PutMode::Create)
            .await
            .unwrap();
        let _ = store
            .put("a/b", Bytes::from_static(b"2"), PutMode::Create)
            .await;
        let names: Vec<_> = fs::read_dir(dir.path().join("a"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec!["b"]);
    }
}
