//! Request validation before any work, returning etcd's exact errors (etcd's
//! `v3rpc/key.go` checks: empty keys, ignore_* misuse, sort options, txn op counts and
//! overlapping writes).

use super::errors;
use crate::mvcc::key_in_range;
use crate::proto::etcdserverpb::{
    range_request, request_op, Compare, DeleteRangeRequest, PutRequest, RangeRequest, TxnRequest,
};
use bytes::Bytes;
use tonic::Status;

pub fn range(r: &RangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if range_request::SortOrder::try_from(r.sort_order).is_err()
        || range_request::SortTarget::try_from(r.sort_target).is_err()
    {
        return Err(errors::invalid_sort_option());
    }
    Ok(())
}

/// etcd 3.7's RangeStream checks: those of Range, and only key order without revision
/// filters (a stream is cut in key order). etcd also takes a sort target other than the
/// key with no order, then sorts each chunk by that target and goes on after its last
/// key, which sends keys twice and a wrong count; Netsy refuses it as a custom order.
pub fn range_stream(r: &RangeRequest) -> Result<(), Status> {
    range(r)?;
    let order = r.sort_order();
    let default_order = r.sort_target() == range_request::SortTarget::Key
        && matches!(
            order,
            range_request::SortOrder::None | range_request::SortOrder::Ascend
        );
    if !default_order {
        return Err(Status::unimplemented(
            "RangeStream does not support custom sort orders",
        ));
    }
    if crate::mvcc::has_revision_filters(r) {
        return Err(Status::unimplemented(
            "RangeStream does not support revision filters",
        ));
    }
    Ok(())
}

pub fn put(r: &PutRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    if r.ignore_value && !r.value.is_empty() {
        return Err(errors::value_provided());
    }
    if r.ignore_lease && r.lease != 0 {
        return Err(errors::lease_provided());
    }
    Ok(())
}

pub fn delete(r: &DeleteRangeRequest) -> Result<(), Status> {
    if r.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

fn compare(c: &Compare) -> Result<(), Status> {
    if c.key.is_empty() {
        return Err(errors::empty_key());
    }
    Ok(())
}

pub fn txn(t: &TxnRequest, max_ops: usize) -> Result<(), Status> {
    if t.compare.len() > max_ops || t.success.len() > max_ops || t.failure.len() > max_ops {
        return Err(errors::too_many_ops());
    }
    for c in &t.compare {
        compare(c)?;
    }
    for op in t.success.iter().chain(&t.failure) {
        match &op.request {
            Some(request_op::Request::RequestRange(r)) => range(r)?,
            Some(request_op::Request::RequestPut(r)) => put(r)?,
            Some(request_op::Request::RequestDeleteRange(r)) => delete(r)?,
            Some(request_op::Request::RequestTxn(r)) => txn(r, max_ops)?,
            None => {}
        }
    }
    let mut puts = Vec::new();
    let mut deletes = Vec::new();
    check_intervals(&t.success, &mut puts, &mut deletes)?;
    let (mut puts, mut deletes) = (Vec::new(), Vec::new());
    check_intervals(&t.failure, &mut puts, &mut deletes)?;
    Ok(())
}

/// Within one branch (nested txns included), no key may be put twice, and no put may fall
/// inside a deleted range.
fn check_intervals(
    ops: &[crate::proto::etcdserverpb::RequestOp],
    puts: &mut Vec<Bytes>,
    deletes: &mut Vec<(Bytes, Bytes)>,
) -> Result<(), Status> {
    for op in ops {
        match &op.request {
            Some(request_op::Request::RequestPut(p)) => {
                if puts.contains(&p.key) || deletes.iter().any(|(s, e)| key_in_range(&p.key, s, e))
                {
                    return Err(errors::duplicate_key());
                }
                puts.push(p.key.clone());
            }
            Some(request_op::Request::RequestDeleteRange(d)) => {
                if puts.iter().any(|k| key_in_range(k, &d.key, &d.range_end)) {
                    return Err(errors::duplicate_key());
                }
                deletes.push((d.key.clone(), d.range_end.clone()));
            }
            Some(request_op::Request::RequestTxn(inner)) => {
                // Each nested branch is checked against what this branch already writes;
                // what either could write then counts for the ops after it.
                let (mut new_puts, mut new_deletes) = (Vec::new(), Vec::new());
                for branch in [&inner.success, &inner.failure] {
                    let (mut p, mut d) = (puts.clone(), deletes.clone());
                    check_intervals(branch, &mut p, &mut d)?;
                    new_puts.extend(p.into_iter().skip(puts.len()));
                    new_deletes.extend(d.into_iter().skip(deletes.len()));
                }
                puts.extend(new_puts);
                deletes.extend(new_deletes);
            }
            Some(request_op::Request::RequestRange(_)) | None => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::RequestOp;

    fn p(k: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestPut(PutRequest {
                key: Bytes::from(k.to_string()),
                ..Default::default()
            })),
        }
    }
    fn d(k: &str, end: &str) -> RequestOp {
        RequestOp {
            request: Some(request_op::Request::RequestDeleteRange(
                DeleteRangeRequest {
                    key: Bytes::from(k.to_string()),
                    range_end: Bytes::from(end.to_string()),
                    ..Default::default()
                },
            )),
        }
    }
    fn t(success: Vec<RequestOp>, failure: Vec<RequestOp>) -> TxnRequest {
        TxnRequest {
            compare: vec![],
            success,
            failure,
        }
    }

    #[test]
    fn duplicate_and_overlapping_writes_are_refused() {
        assert!(txn(&t(vec![p("a"), p("b")], vec![p("a")]), 128).is_ok());
        let dup = txn(&t(vec![p("a"), p("a")], vec![]), 128).unwrap_err();
        assert_eq!(
            dup.message(),
            "etcdserver: duplicate key given in txn request"
        );
        assert!(txn(&t(vec![d("a", "c"), p("b")], vec![]), 128).is_err());
        assert!(txn(&t(vec![p("b"), d("a", "c")], vec![]), 128).is_err());
        assert!(txn(&t(vec![d("a", "c"), d("b", "d")], vec![]), 128).is_ok());
        let nested = RequestOp {
            request: Some(request_op::Request::RequestTxn(t(vec![p("a")], vec![]))),
        };
        assert!(txn(&t(vec![p("a"), nested], vec![]), 128).is_err());
    }

    #[test]
    fn limits_and_empty_keys() {
        let many = t((0..129).map(|i| p(&format!("k{i}"))).collect(), vec![]);
        assert_eq!(
            txn(&many, 128).unwrap_err().message(),
            "etcdserver: too many operations in txn request"
        );
        assert_eq!(
            put(&PutRequest::default()).unwrap_err().message(),
            "etcdserver: key is not provided"
        );
        let bad = PutRequest {
            key: Bytes::from_static(b"k"),
            value: Bytes::from_static(b"v"),
            ignore_value: true,
            ..Default::default()
        };
        assert_eq!(
            put(&bad).unwrap_err().message(),
            "etcdserver: value is provided"
        );
    }
}
