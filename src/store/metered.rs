//! Timing and outcome of every store request, for `netsy_store_request_duration_seconds`.
//!
//! A wrapper rather than code in each backend, so that all backends are measured the same
//! way and the backends stay about storage only.

use super::{DynStore, Object, ObjectMeta, ObjectStore, PutMode, Result};
use crate::metrics::{outcome, METRICS};
use async_trait::async_trait;
use bytes::Bytes;
use std::time::Instant;

#[derive(Debug)]
pub struct Metered(pub DynStore);

fn observe<T>(op: &str, started: Instant, r: &Result<T>) {
    METRICS
        .store_seconds
        .with_label_values(&[op, outcome(r)])
        .observe(started.elapsed().as_secs_f64());
}

#[async_trait]
impl ObjectStore for Metered {
    async fn get(&self, key: &str) -> Result<Object> {
        let t = Instant::now();
        let r = self.0.get(key).await;
        observe("get", t, &r);
        r
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let t = Instant::now();
        let r = self.0.get_range(key, start, end).await;
        observe("get_range", t, &r);
        r
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        let t = Instant::now();
        let r = self.0.put(key, data, mode).await;
        observe("put", t, &r);
        r
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let t = Instant::now();
        let r = self.0.list(prefix, start_after).await;
        observe("list", t, &r);
        r
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let t = Instant::now();
        let r = self.0.delete(key).await;
        observe("delete", t, &r);
        r
    }

    fn prepare_prefixes(&self, prefixes: Vec<String>) {
        self.0.prepare_prefixes(prefixes)
    }

    fn describe(&self) -> String {
        self.0.describe()
    }
}
