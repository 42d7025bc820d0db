//! Evaluating writes: Put, DeleteRange and Txn against a working copy of the state, at the
//! next revision, producing the etcd response and the log records that make it durable.
//!
//! As in etcd, every compare of a transaction (nested ones too) is decided against the state
//! before the transaction, then the chosen branches run in order; reads inside the
//! transaction see its earlier writes; the transaction bumps the revision once if it changed
//! anything. A failing op (unknown lease, ignore_value on a missing key) leaves the state
//! untouched.

use super::range::live_keys;
use super::{Error, KeyRange, State, Version};
use crate::proto::etcdserverpb::{
    compare, request_op, response_op, Compare, DeleteRangeRequest, DeleteRangeResponse, PutRequest,
    PutResponse, RangeResponse, RequestOp, ResponseHeader, ResponseOp, TxnRequest, TxnResponse,
};
use crate::proto::netsy::Record;
use bytes::Bytes;

/// The outcome of evaluating one write request.
#[derive(Debug)]
pub struct Evaluated<R> {
    pub response: R,
    /// Records to append; empty when nothing changed (no new revision).
    pub records: Vec<Record>,
}

/// Evaluation of one request at `base + 1` over a working state.
pub struct TxnEval<'a> {
    state: &'a mut State,
    base: i64,
    rev: i64,
    records: Vec<Record>,
}

impl<'a> TxnEval<'a> {
    fn new(state: &'a mut State) -> Self {
        let base = state.revision;
        Self {
            state,
            base,
            rev: base + 1,
            records: Vec::new(),
        }
    }

    fn changed(&self) -> bool {
        !self.records.is_empty()
    }

    /// The revision reads inside the transaction see.
    fn read_rev(&self) -> i64 {
        if self.changed() {
            self.rev
        } else {
            self.base
        }
    }

    fn put(&mut self, r: &PutRequest) -> Result<PutResponse, Error> {
        let existing = self.state.keys.get(&r.key[..]);
        let prev = existing.and_then(|h| h.live_at(self.read_rev())).cloned();
        let new = existing.is_none();
        if (r.ignore_value || r.ignore_lease) && prev.is_none() {
            return Err(Error::KeyNotFound);
        }
        let value = if r.ignore_value {
            prev.as_ref().map(|p| p.value.clone()).unwrap_or_default()
        } else {
            // A request's bytes are a slice of the gRPC receive buffer; keeping that slice
            // would pin the whole buffer for as long as this version lives. One exact copy.
            Bytes::copy_from_slice(&r.value)
        };
        let lease = if r.ignore_lease {
            prev.as_ref().map_or(0, |p| p.lease)
        } else {
            r.lease
        };
        if lease != 0 && self.state.lease(lease).is_none() {
            return Err(Error::LeaseNotFound);
        }
        let v = Version {
            mod_revision: self.rev,
            create_revision: prev.as_ref().map_or(self.rev, |p| p.create_revision),
            version: prev.as_ref().map_or(1, |p| p.version + 1),
            lease,
            value,
        };
        self.records.push(Record {
            revision: self.rev,
            // The request's bytes: a record lives only until its chunk is written.
            key: r.key.clone(),
            created: prev.is_none(),
            deleted: false,
            create_revision: v.create_revision,
            prev_revision: prev.as_ref().map_or(0, |p| p.mod_revision),
            version: v.version,
            lease: v.lease,
            value: v.value.clone(),
            ..Default::default()
        });
        let pushed = self.state.push_version(&r.key, v, new, 0);
        debug_assert!(pushed, "a key is written once per revision");
        Ok(PutResponse {
            header: None,
            prev_kv: if r.prev_kv {
                prev.map(|p| p.to_kv(&r.key, false))
            } else {
                None
            },
        })
    }

    fn delete(&mut self, r: &DeleteRangeRequest) -> Result<DeleteRangeResponse, Error> {
        let range = KeyRange::new(r.key.clone(), r.range_end.clone());
        let victims = live_keys(&self.state.keys, &range, self.read_rev());
        let mut prev_kvs = Vec::new();
        for (key, prev) in &victims {
            self.records.push(Record {
                revision: self.rev,
                key: key.to_bytes(),
                deleted: true,
                create_revision: prev.create_revision,
                prev_revision: prev.mod_revision,
                ..Default::default()
            });
            let pushed = self.state.push_version(
                key,
                Version {
                    mod_revision: self.rev,
                    create_revision: prev.create_revision,
                    version: 0,
                    lease: 0,
                    value: Bytes::new(),
                },
                false,
                0,
            );
            debug_assert!(pushed, "a key is written once per revision");
            if r.prev_kv {
                prev_kvs.push(prev.to_kv(key, false));
            }
        }
        Ok(DeleteRangeResponse {
            header: None,
            deleted: victims.len() as i64,
            prev_kvs,
        })
    }

    fn range(
        &mut self,
        r: &crate::proto::etcdserverpb::RangeRequest,
    ) -> Result<RangeResponse, Error> {
        let at = self.read_rev();
        self.state.range(r, Some(at))
    }

    /// Decides every compare (nested too) against the pre-transaction state: the branch path,
    /// depth first, as etcd computes it before executing anything.
    fn path(&self, t: &TxnRequest, out: &mut Vec<bool>) {
        let ok = t.compare.iter().all(|c| compare(self.state, self.base, c));
        out.push(ok);
        let ops = if ok { &t.success } else { &t.failure };
        for op in ops {
            if let Some(request_op::Request::RequestTxn(inner)) = &op.request {
                self.path(inner, out);
            }
        }
    }

    fn txn(
        &mut self,
        t: &TxnRequest,
        path: &mut std::slice::Iter<'_, bool>,
    ) -> Result<TxnResponse, Error> {
        let succeeded = *path.next().expect("path covers every txn");
        let ops: &[RequestOp] = if succeeded { &t.success } else { &t.failure };
        let mut responses = Vec::with_capacity(ops.len());
        for op in ops {
            let response = match &op.request {
                Some(request_op::Request::RequestRange(r)) => {
                    response_op::Response::ResponseRange(self.range(r)?)
                }
                Some(request_op::Request::RequestPut(r)) => {
                    response_op::Response::ResponsePut(self.put(r)?)
                }
                Some(request_op::Request::RequestDeleteRange(r)) => {
                    response_op::Response::ResponseDeleteRange(self.delete(r)?)
                }
                Some(request_op::Request::RequestTxn(r)) => {
                    response_op::Response::ResponseTxn(self.txn(r, path)?)
                }
                None => continue,
            };
            responses.push(ResponseOp {
                response: Some(response),
            });
        }
        Ok(TxnResponse {
            header: None,
            succeeded,
            responses,
        })
    }
}

/// etcd's compare: every live key in the compare's range must satisfy it; a missing key
/// compares as zeros, except that a value compare on a missing key is always false.
fn compare(state: &State, rev: i64, c: &Compare) -> bool {
    let range = KeyRange::new(c.key.clone(), c.range_end.clone());
    let kvs: Vec<&Version> = state.live_in(&range, rev).map(|(_, v)| v).collect();
    if kvs.is_empty() {
        if c.target() == compare::CompareTarget::Value {
            return false;
        }
        return compare_one(
            c,
            &Version {
                mod_revision: 0,
                create_revision: 0,
                version: 0,
                lease: 0,
                value: Bytes::new(),
            },
        );
    }
    kvs.into_iter().all(|v| compare_one(c, v))
}

fn compare_one(c: &Compare, v: &Version) -> bool {
    use compare::TargetUnion as U;
    use std::cmp::Ordering;
    let ord = match (c.target(), &c.target_union) {
        (compare::CompareTarget::Version, Some(U::Version(x))) => v.version.cmp(x),
        (compare::CompareTarget::Create, Some(U::CreateRevision(x))) => v.create_revision.cmp(x),
        (compare::CompareTarget::Mod, Some(U::ModRevision(x))) => v.mod_revision.cmp(x),
        (compare::CompareTarget::Value, Some(U::Value(x))) => v.value.as_ref().cmp(x.as_ref()),
        (compare::CompareTarget::Lease, Some(U::Lease(x))) => v.lease.cmp(x),
        // A target without its operand compares against the zero value, as etcd's
        // generated getters do.
        (compare::CompareTarget::Version, None) => v.version.cmp(&0),
        (compare::CompareTarget::Create, None) => v.create_revision.cmp(&0),
        (compare::CompareTarget::Mod, None) => v.mod_revision.cmp(&0),
        (compare::CompareTarget::Value, None) => v.value.as_ref().cmp(&[][..]),
        (compare::CompareTarget::Lease, None) => v.lease.cmp(&0),
        _ => return false,
    };
    match c.result() {
        compare::CompareResult::Equal => ord == Ordering::Equal,
        compare::CompareResult::Greater => ord == Ordering::Greater,
        compare::CompareResult::Less => ord == Ordering::Less,
        compare::CompareResult::NotEqual => ord != Ordering::Equal,
    }
}

fn header(revision: i64) -> Option<ResponseHeader> {
    Some(ResponseHeader {
        revision,
        ..Default::default()
    })
}

/// Fills the per-op headers of a transaction response with the revision after it
/// (Kubernetes reads `ResponsePut.Header.Revision` and needs delete headers non-nil). As in
/// etcd, a nested transaction's own header is present but empty.
fn fill_headers(resp: &mut TxnResponse, rev: i64, nested: bool) {
    resp.header = if nested {
        Some(ResponseHeader::default())
    } else {
        header(rev)
    };
    for op in &mut resp.responses {
        match &mut op.response {
            Some(response_op::Response::ResponsePut(p)) => p.header = header(rev),
            Some(response_op::Response::ResponseDeleteRange(d)) => d.header = header(rev),
            Some(response_op::Response::ResponseTxn(t)) => fill_headers(t, rev, true),
            Some(response_op::Response::ResponseRange(_)) | None => {}
        }
    }
}

impl State {
    /// Evaluates a transaction; on success the state holds its effects.
    pub fn txn(&mut self, t: &TxnRequest) -> Result<Evaluated<TxnResponse>, Error> {
        let mut work = self.clone();
        let mut eval = TxnEval::new(&mut work);
        let mut path = Vec::new();
        eval.path(t, &mut path);
        let mut response = eval.txn(t, &mut path.iter())?;
        let records = std::mem::take(&mut eval.records);
        fill_headers(&mut response, work.revision, false);
        *self = work;
        Ok(Evaluated { response, records })
    }

    pub fn put(&mut self, r: &PutRequest) -> Result<Evaluated<PutResponse>, Error> {
        let mut work = self.clone();
        let mut eval = TxnEval::new(&mut work);
        let mut response = eval.put(r)?;
        let records = std::mem::take(&mut eval.records);
        response.header = header(work.revision);
        *self = work;
        Ok(Evaluated { response, records })
    }

    pub fn delete_range(
        &mut self,
        r: &DeleteRangeRequest,
    ) -> Result<Evaluated<DeleteRangeResponse>, Error> {
        let mut work = self.clone();
        let mut eval = TxnEval::new(&mut work);
        let mut response = eval.delete(r)?;
        let records = std::mem::take(&mut eval.records);
        response.header = header(work.revision);
        *self = work;
        Ok(Evaluated { response, records })
    }
}

/// Whether `pred` holds for every operation of both branches of `t`, nested
/// transactions' included (an empty operation counts as holding).
pub fn txn_all_ops(t: &TxnRequest, pred: &impl Fn(&request_op::Request) -> bool) -> bool {
    t.success
        .iter()
        .chain(&t.failure)
        .all(|op| match &op.request {
            None => true,
            Some(request_op::Request::RequestTxn(inner)) => txn_all_ops(inner, pred),
            Some(other) => pred(other),
        })
}

/// Whether a transaction can change anything (a read-only one never reaches the writer).
pub fn txn_is_read_only(t: &TxnRequest) -> bool {
    txn_all_ops(t, &|op| matches!(op, request_op::Request::RequestRange(_)))
}
