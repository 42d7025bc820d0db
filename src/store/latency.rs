//! A store that answers as slowly as a remote one: every request waits a fixed latency plus
//! a uniformly drawn jitter before it reaches the store underneath.
//!
//! The write path's figures depend mostly on how long a PUT takes, and LocalStack or a
//! local directory answer in a millisecond where S3 Standard takes about 25 ms and S3
//! Express One Zone about 5. Wrapping the store (as object_store's throttled store does)
//! lets the bench and the tests show S3-like figures beside local ones, with the same
//! binary and no proxy. Not for production: `--store-latency-ms` is a testing flag.

use super::{DynStore, Object, ObjectMeta, ObjectStore, PutMode, Result};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Duration;

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LatencySpec {
    /// Added to every request.
    pub base: Duration,
    /// Up to this much more, drawn uniformly per request.
    pub jitter: Duration,
}

impl LatencySpec {
    pub fn is_zero(&self) -> bool {
        self.base.is_zero() && self.jitter.is_zero()
    }

    fn draw(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.base;
        }
        let extra = rand::random::<f64>() * self.jitter.as_secs_f64();
        self.base + Duration::from_secs_f64(extra)
    }
}

#[derive(Debug)]
pub struct Latency {
    inner: DynStore,
    spec: LatencySpec,
}

impl Latency {
    pub fn new(inner: DynStore, spec: LatencySpec) -> Self {
        Self { inner, spec }
    }

    async fn wait(&self) {
        let d = self.spec.draw();
        if !d.is_zero() {
            tokio::time::sleep(d).await;
        }
    }
}

#[async_trait]
impl ObjectStore for Latency {
    async fn get(&self, key: &str) -> Result<Object> {
        self.wait().await;
        self.inner.get(key).await
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        self.wait().await;
        self.inner.get_range(key, start, end).await
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        self.wait().await;
        self.inner.put(key, data, mode).await
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        self.wait().await;
        self.inner.list(prefix, start_after).await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.wait().await;
        self.inner.delete(key).await
    }

    fn describe(&self) -> String {
        format!(
            "{} (+{:?} latency, +{:?} jitter)",
            self.inner.describe(),
            self.spec.base,
            self.spec.jitter
        )
    }

    fn prepare_prefixes(&self, prefixes: Vec<String>) {
        self.inner.prepare_prefixes(prefixes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::memory::MemoryStore;
    use std::sync::Arc;

    #[tokio::test(start_paused = true)]
    async fn every_request_waits_the_latency_and_at_most_the_jitter_more() {
        let spec = LatencySpec {
            base: Duration::from_millis(25),
            jitter: Duration::from_millis(10),
        };
        let store = Latency::new(Arc::new(MemoryStore::new()), spec);
        for _ in 0..20 {
            let t = tokio::time::Instant::now();
            store
                .put("k", Bytes::from_static(b"v"), PutMode::Overwrite)
                .await
                .unwrap();
            let took = t.elapsed();
            assert!(
                took >= spec.base && took <= spec.base + spec.jitter,
                "{took:?}"
            );
        }
        crate::store::conformance::run_all(&store).await;
    }
}
