//! The object store: the only durable state Netsy has.
//!
//! One small trait with exactly the operations the log needs, and backends that must
//! behave identically: S3 (production), a local directory (the embedded default: chunks
//! appended to segment files by [`segments`], every other key a file of [`local`]; or,
//! with `files://`, a file per object), and
//! memory (tests, with fault injection). Faults, throttles and limits are added by wrapping
//! a store, not by flags inside backends. Every backend passes the same [`conformance`]
//! suite.
//!
//! The distinction that matters to callers is between "someone else wrote it"
//! ([`StoreError::AlreadyExists`] / [`StoreError::Precondition`]) and everything else: the
//! first means another writer extended the log, the second means the outcome is unknown or
//! the store is unavailable.

pub mod conformance;
pub mod latency;
pub mod local;
pub mod memory;
pub mod metered;
pub mod s3;
pub mod segments;

use async_trait::async_trait;
use bytes::Bytes;
use std::sync::Arc;

/// How a put treats an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PutMode {
    /// Replace whatever is there.
    Overwrite,
    /// Create only if absent (`If-None-Match: *`).
    Create,
    /// Replace only if the current object has this etag (`If-Match`).
    Update(String),
}

/// An object's content and the etag a conditional update must name.
#[derive(Debug, Clone)]
pub struct Object {
    pub data: Bytes,
    pub etag: String,
}

/// One entry of a listing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    /// Key relative to the store's root (no backend prefix).
    pub key: String,
    pub size: u64,
    /// Last modification, milliseconds since the Unix epoch.
    pub last_modified_ms: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("object {key} not found")]
    NotFound { key: String },
    #[error("object {key} already exists")]
    AlreadyExists { key: String },
    #[error("object {key} changed (precondition failed)")]
    Precondition { key: String },
    /// The request may be retried; after the backend's own retries were spent.
    #[error("transient store error on {key}: {message}")]
    Transient { key: String, message: String },
    #[error("store error on {key}: {message}")]
    Other { key: String, message: String },
}

impl StoreError {
    /// True when another writer won a conditional put.
    pub fn is_conflict(&self) -> bool {
        matches!(self, Self::AlreadyExists { .. } | Self::Precondition { .. })
    }
}

pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// The operations Netsy needs from an object store. Keys are relative to the store's root
/// and use `/` as separator.
#[async_trait]
pub trait ObjectStore: Send + Sync + std::fmt::Debug + 'static {
    async fn get(&self, key: &str) -> Result<Object>;
    /// Bytes `start..end` of an object (end clamped to the object's size).
    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes>;
    /// Writes an object; returns its new etag.
    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String>;
    /// Every object whose key starts with `prefix` and sorts after `start_after`, in key order.
    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>>;
    /// Deletes an object; deleting a missing object succeeds.
    async fn delete(&self, key: &str) -> Result<()>;
    /// A URL naming this store, for logs and status.
    fn describe(&self) -> String;
    /// A hint, in the order they will be needed: keys under these prefixes are about to be
    /// written. A store that keeps prefixes as directories creates them ahead, off the
    /// write path; the others have nothing to do.
    fn prepare_prefixes(&self, _prefixes: Vec<String>) {}
}

pub type DynStore = Arc<dyn ObjectStore>;

/// Content-derived etag used by the local and memory backends.
pub(crate) fn content_etag(data: &[u8]) -> String {
    format!("\"{:016x}\"", crate::format::crc64(data))
}

/// Options for opening a store from a URL.
#[derive(Debug, Clone, Default)]
pub struct StoreOptions {
    pub s3: s3::S3Options,
    /// Latency added to every request (testing and benchmarks only).
    pub latency: latency::LatencySpec,
}

/// Opens a store from a URL: `file:///path`, a plain directory path, `s3://bucket/prefix`
/// or `memory://`, slowed by [`latency::Latency`] if asked, measured by
/// [`metered::Metered`].
pub async fn open(url: &str, options: &StoreOptions) -> anyhow::Result<DynStore> {
    let mut store = open_backend(url, options).await?;
    if !options.latency.is_zero() {
        tracing::warn!(
            latency_ms = options.latency.base.as_millis() as u64,
            jitter_ms = options.latency.jitter.as_millis() as u64,
            "every store request is delayed (--store-latency-ms): for tests and benchmarks only"
        );
        store = Arc::new(latency::Latency::new(store, options.latency));
    }
    Ok(Arc::new(metered::Metered(store)))
}

/// The embedded store: the log's chunks appended to segment files, everything else a file.
fn directory(path: &str) -> std::io::Result<segments::SegmentStore> {
    segments::SegmentStore::open(path, &[crate::log::layout::CHUNKS])
}

async fn open_backend(url: &str, options: &StoreOptions) -> anyhow::Result<DynStore> {
    // `segments://` named the segment store while it was not the default.
    if let Some((scheme, path)) = ["file://", "segments://", "files://"]
        .into_iter()
        .find_map(|s| Some((s, url.strip_prefix(s)?)))
    {
        anyhow::ensure!(
            path.starts_with('/'),
            "store URL {url}: {scheme} needs an absolute path ({scheme}/var/lib/netsy)"
        );
        if scheme == "files://" {
            Ok(Arc::new(local::LocalStore::open(path)?))
        } else {
            Ok(Arc::new(directory(path)?))
        }
    } else if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        anyhow::ensure!(!bucket.is_empty(), "store URL {url}: missing bucket name");
        let mut opts = options.s3.clone();
        opts.bucket = bucket.to_string();
        if !prefix.is_empty() {
            opts.prefix = prefix.to_string();
        }
        Ok(Arc::new(s3::S3Store::connect(opts).await?))
    } else if url == "memory://" {
        Ok(Arc::new(memory::MemoryStore::new()))
    } else if !url.contains("://") && !url.is_empty() {
        // A plain directory path, relative or absolute.
        Ok(Arc::new(directory(url)?))
    } else {
        anyhow::bail!("store URL {url}: expected file:///path, files:///path, s3://bucket/prefix or memory://")
    }
}
