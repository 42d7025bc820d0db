//! An in-memory store for tests, with fault injection: fail, delay, or apply-then-fail the
//! Nth call of an operation, so tests can drive the log through every failure interleaving
//! without a real network.

use super::{content_etag, Object, ObjectMeta, ObjectStore, PutMode, Result, StoreError};
use crate::clock::now_ms;
use async_trait::async_trait;
use bytes::Bytes;
use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

/// The operations a fault can target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Get,
    Put,
    List,
    Delete,
}

/// What happens to a targeted call.
#[derive(Debug, Clone)]
pub enum Fault {
    /// Fail with a transient error without applying.
    Fail,
    /// Wait, then proceed normally.
    Delay(Duration),
    /// Apply the operation, then report a transient error (a PUT whose response was lost).
    ApplyThenFail,
    /// Wait, then fail with a transient error without applying (a request that timed out
    /// while later ones went through).
    DelayThenFail(Duration),
    /// Wait, apply, then report a transient error (a slow PUT whose response was lost).
    DelayApplyThenFail(Duration),
    /// Fail every call of this operation from now on until faults are cleared.
    Outage,
}

#[derive(Debug, Default)]
struct Inner {
    objects: BTreeMap<String, (Bytes, String, i64)>,
    calls: std::collections::HashMap<Op, u64>,
    /// (op, call number counted from 1, fault)
    faults: Vec<(Op, u64, Fault)>,
}

#[derive(Debug, Default)]
pub struct MemoryStore {
    inner: Mutex<Inner>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    /// Injects `fault` into the `nth` future call of `op` (1 = the next one).
    pub fn inject(&self, op: Op, nth: u64, fault: Fault) {
        let mut inner = self.inner.lock().unwrap();
        let at = inner.calls.get(&op).copied().unwrap_or(0) + nth;
        inner.faults.push((op, at, fault));
    }

    pub fn clear_faults(&self) {
        self.inner.lock().unwrap().faults.clear();
    }

    /// How many calls of `op` were made.
    pub fn calls(&self, op: Op) -> u64 {
        self.inner
            .lock()
            .unwrap()
            .calls
            .get(&op)
            .copied()
            .unwrap_or(0)
    }

    /// Keys currently stored.
    pub fn keys(&self) -> Vec<String> {
        self.inner.lock().unwrap().objects.keys().cloned().collect()
    }

    /// Raw access for tests that corrupt objects.
    pub fn raw_put(&self, key: &str, data: Bytes) {
        let etag = content_etag(&data);
        self.inner
            .lock()
            .unwrap()
            .objects
            .insert(key.to_string(), (data, etag, now_ms()));
    }

    pub fn raw_delete(&self, key: &str) {
        self.inner.lock().unwrap().objects.remove(key);
    }

    /// Counts the call and returns the fault planned for it, if any.
    fn enter(&self, op: Op) -> Option<Fault> {
        let mut inner = self.inner.lock().unwrap();
        let n = {
            let c = inner.calls.entry(op).or_default();
            *c += 1;
            *c
        };
        inner
            .faults
            .iter()
            .find(|(o, at, f)| *o == op && (*at == n || (matches!(f, Fault::Outage) && n >= *at)))
            .map(|(_, _, f)| f.clone())
    }

    async fn fault(&self, op: Op, key: &str) -> Result<bool> {
        match self.enter(op) {
            None => Ok(false),
            Some(Fault::Fail) | Some(Fault::Outage) => Err(injected(key)),
            Some(Fault::Delay(d)) => {
                tokio::time::sleep(d).await;
                Ok(false)
            }
            Some(Fault::ApplyThenFail) => Ok(true),
            Some(Fault::DelayThenFail(d)) => {
                tokio::time::sleep(d).await;
                Err(injected(key))
            }
            Some(Fault::DelayApplyThenFail(d)) => {
                tokio::time::sleep(d).await;
                Ok(true)
            }
        }
    }
}

fn injected(key: &str) -> StoreError {
    StoreError::Transient {
        key: key.to_string(),
        message: "injected fault".into(),
    }
}

#[async_trait]
impl ObjectStore for MemoryStore {
    async fn get(&self, key: &str) -> Result<Object> {
        let fail_after = self.fault(Op::Get, key).await?;
        let found = self.inner.lock().unwrap().objects.get(key).cloned();
        if fail_after {
            return Err(injected(key));
        }
        match found {
            Some((data, etag, _)) => Ok(Object { data, etag }),
            None => Err(StoreError::NotFound {
                key: key.to_string(),
            }),
        }
    }

    async fn get_range(&self, key: &str, start: u64, end: u64) -> Result<Bytes> {
        let obj = self.get(key).await?;
        let end = (end as usize).min(obj.data.len());
        let start = (start as usize).min(end);
        Ok(obj.data.slice(start..end))
    }

    async fn put(&self, key: &str, data: Bytes, mode: PutMode) -> Result<String> {
        let fail_after = self.fault(Op::Put, key).await?;
        let etag = content_etag(&data);
        {
            let mut inner = self.inner.lock().unwrap();
            let existing = inner.objects.get(key);
            match (&mode, existing) {
                (PutMode::Create, Some(_)) => {
                    return Err(StoreError::AlreadyExists {
                        key: key.to_string(),
                    })
                }
                (PutMode::Update(_), None) => {
                    return Err(StoreError::Precondition {
                        key: key.to_string(),
                    })
                }
                (PutMode::Update(want), Some((_, have, _))) if want != have => {
                    return Err(StoreError::Precondition {
                        key: key.to_string(),
                    })
                }
                _ => {}
            }
            inner
                .objects
                .insert(key.to_string(), (data, etag.clone(), now_ms()));
        }
        if fail_after {
            return Err(injected(key));
        }
        Ok(etag)
    }

    async fn list(&self, prefix: &str, start_after: Option<&str>) -> Result<Vec<ObjectMeta>> {
        let fail_after = self.fault(Op::List, prefix).await?;
        let inner = self.inner.lock().unwrap();
        let out = inner
            .objects
            .range(prefix.to_string()..)
            .take_while(|(k, _)| k.starts_with(prefix))
            .filter(|(k, _)| start_after.is_none_or(|s| k.as_str() > s))
            .map(|(k, (data, _, modified))| ObjectMeta {
                key: k.clone(),
                size: data.len() as u64,
                last_modified_ms: *modified,
            })
            .collect();
        if fail_after {
            return Err(injected(prefix));
        }
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<()> {
        let fail_after = self.fault(Op::Delete, key).await?;
        self.inner.lock().unwrap().objects.remove(key);
        if fail_after {
            return Err(injected(key));
        }
        Ok(())
    }

    fn describe(&self) -> String {
        "memory://".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passes_conformance() {
        crate::store::conformance::run_all(&MemoryStore::new()).await;
    }

    #[tokio::test]
    async fn apply_then_fail_lands_the_put_but_reports_an_error() {
        let store = MemoryStore::new();
        store.inject(Op::Put, 1, Fault::ApplyThenFail);
        let err = store
            .put("a", Bytes::from_static(b"1"), PutMode::Create)
            .await
            .unwrap_err();
        assert!(matches!(err, StoreError::Transient { .. }));
        assert_eq!(store.get("a").await.unwrap().data, "1");
        assert_eq!(store.calls(Op::Put), 1);
    }

    #[tokio::test]
    async fn outage_fails_until_cleared() {
        let store = MemoryStore::new();
        store.inject(Op::Get, 1, Fault::Outage);
        assert!(store.get("x").await.is_err());
        assert!(matches!(
            store.get("x").await,
            Err(StoreError::Transient { .. })
        ));
        store.clear_faults();
        assert!(matches!(
            store.get("x").await,
            Err(StoreError::NotFound { .. })
        ));
    }
}
