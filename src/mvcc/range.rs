//! Key ranges and etcd's Range semantics (limit, count, sort, revision filters).

use super::{Error, History, Key, State};
use crate::proto::etcdserverpb::{range_request, RangeRequest, RangeResponse, ResponseHeader};
use bytes::Bytes;
use imbl::OrdMap;
use std::ops::Bound;

/// etcd's key/range_end pair: empty `end` is the single key, `end == "\0"` means every key
/// from `start` on, anything else the half-open interval `[start, end)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyRange {
    pub start: Bytes,
    pub end: Bytes,
}

/// The end of the range of keys starting with `prefix` (etcd's `WithPrefix`): the prefix
/// with its last byte below 0xff incremented, or `\0` (every key) when there is none.
pub fn prefix_end(prefix: &[u8]) -> Bytes {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end.into();
        }
    }
    Bytes::from_static(&[0])
}

impl KeyRange {
    /// Every key starting with `prefix`.
    pub fn prefix(prefix: &[u8]) -> Self {
        Self::new(Bytes::copy_from_slice(prefix), prefix_end(prefix))
    }

    pub fn new(key: Bytes, range_end: Bytes) -> Self {
        Self {
            start: key,
            end: range_end,
        }
    }

    pub fn is_single(&self) -> bool {
        self.end.is_empty()
    }

    pub fn contains(&self, key: &[u8]) -> bool {
        key_in_range(key, &self.start, &self.end)
    }

    /// Entries of `map` inside the range, in key order.
    pub fn iter<'a, V: Clone>(
        &'a self,
        map: &'a OrdMap<Key, V>,
    ) -> Box<dyn Iterator<Item = (&'a Key, &'a V)> + 'a> {
        if self.is_single() {
            return Box::new(map.get_key_value(&self.start[..]).into_iter());
        }
        let lower = Bound::Included(&self.start[..]);
        if self.end.as_ref() == b"\0" {
            Box::new(map.range::<_, [u8]>((lower, Bound::Unbounded)))
        } else if self.end <= self.start {
            Box::new(std::iter::empty())
        } else {
            Box::new(map.range::<_, [u8]>((lower, Bound::Excluded(&self.end[..]))))
        }
    }
}

/// Whether `key` falls in etcd's `[start, end)` interval (see [`KeyRange`]).
pub fn key_in_range(key: &[u8], start: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        key == start
    } else if end == b"\0" {
        key >= start
    } else {
        key >= start && key < end
    }
}

impl State {
    /// Evaluates a Range request at its revision (0 = head) or at `at` when reading inside a
    /// transaction.
    pub fn range(&self, r: &RangeRequest, at: Option<i64>) -> Result<RangeResponse, Error> {
        let rev = match at {
            Some(rev) if r.revision == 0 => rev,
            _ => self.check_revision(r.revision)?,
        };
        let range = KeyRange::new(r.key.clone(), r.range_end.clone());
        let mut sort_order = r.sort_order();
        let sort_target = r.sort_target();
        if sort_order == range_request::SortOrder::None
            && sort_target != range_request::SortTarget::Key
        {
            // etcd sorts ascending by the target when a non-key target is given alone.
            sort_order = range_request::SortOrder::Ascend;
        }
        let filtered = has_revision_filters(r);
        let keep = |v: &super::Version| {
            (r.min_mod_revision == 0 || v.mod_revision >= r.min_mod_revision)
                && (r.max_mod_revision == 0 || v.mod_revision <= r.max_mod_revision)
                && (r.min_create_revision == 0 || v.create_revision >= r.min_create_revision)
                && (r.max_create_revision == 0 || v.create_revision <= r.max_create_revision)
        };
        let header = Some(ResponseHeader {
            revision: rev,
            ..Default::default()
        });

        // Fast path (the Kubernetes list shape): key order, no filters. Count every live key
        // in range, materialise only up to limit + 1.
        let simple = !filtered
            && (sort_order == range_request::SortOrder::None
                || (sort_order == range_request::SortOrder::Ascend
                    && sort_target == range_request::SortTarget::Key));
        if simple {
            let limit = if r.limit > 0 {
                r.limit as usize
            } else {
                usize::MAX
            };
            let mut kvs = Vec::new();
            let mut count = 0i64;
            for (k, v) in self.live_in(&range, rev) {
                count += 1;
                if !r.count_only && kvs.len() < limit {
                    kvs.push(v.to_kv(k, r.keys_only));
                }
            }
            let more = !r.count_only && (count as usize) > kvs.len() && r.limit > 0;
            return Ok(RangeResponse {
                header,
                kvs,
                more,
                count,
            });
        }

        let mut count = 0i64;
        let mut items: Vec<(&Key, &super::Version)> = Vec::new();
        for (k, v) in self.live_in(&range, rev) {
            count += 1;
            if keep(v) {
                items.push((k, v));
            }
        }
        if r.count_only {
            return Ok(RangeResponse {
                header,
                kvs: vec![],
                more: false,
                count,
            });
        }
        use range_request::SortTarget as T;
        let cmp = |a: &(&Key, &super::Version), b: &(&Key, &super::Version)| match sort_target {
            T::Key => a.0.cmp(b.0),
            T::Version => a.1.version.cmp(&b.1.version),
            T::Create => a.1.create_revision.cmp(&b.1.create_revision),
            T::Mod => a.1.mod_revision.cmp(&b.1.mod_revision),
            T::Value => a.1.value.cmp(&b.1.value),
        };
        match sort_order {
            range_request::SortOrder::Ascend => items.sort_by(cmp),
            range_request::SortOrder::Descend => items.sort_by(|a, b| cmp(b, a)),
            range_request::SortOrder::None => {}
        }
        let mut more = false;
        if r.limit > 0 && items.len() > r.limit as usize {
            items.truncate(r.limit as usize);
            more = true;
        }
        Ok(RangeResponse {
            header,
            kvs: items
                .into_iter()
                .map(|(k, v)| v.to_kv(k, r.keys_only))
                .collect(),
            more,
            count,
        })
    }

    /// Up to `limit` live keys of `range` at `rev` in key order, and whether another live
    /// key of the range follows them: one chunk of a streamed range.
    pub fn range_page(
        &self,
        range: &KeyRange,
        rev: i64,
        limit: usize,
        keys_only: bool,
    ) -> (Vec<crate::proto::mvccpb::KeyValue>, bool) {
        let mut live = self.live_in(range, rev);
        let kvs = live
            .by_ref()
            .take(limit)
            .map(|(k, v)| v.to_kv(k, keys_only))
            .collect();
        (kvs, live.next().is_some())
    }

    /// How many keys of `range` are live at `rev`.
    pub fn count_live(&self, range: &KeyRange, rev: i64) -> i64 {
        self.live_in(range, rev).count() as i64
    }
}

/// Whether a Range asks for only some mod/create revisions (filters etcd applies after
/// counting).
pub fn has_revision_filters(r: &RangeRequest) -> bool {
    r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0
}

/// Live keys of `keys` in `range` at `rev`, for deletes and compares.
pub(super) fn live_keys(
    keys: &OrdMap<Key, History>,
    range: &KeyRange,
    rev: i64,
) -> Vec<(Key, super::Version)> {
    range
        .iter(keys)
        .filter_map(|(k, h)| h.live_at(rev).map(|v| (k.clone(), v.clone())))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ends_as_etcds() {
        assert_eq!(prefix_end(b"a/"), Bytes::from_static(b"a0"));
        assert_eq!(prefix_end(b"a\xff"), Bytes::from_static(b"b"));
        assert_eq!(prefix_end(b"\xff\xff"), Bytes::from_static(b"\0"));
        assert!(KeyRange::prefix(b"a/").contains(b"a/x"));
        assert!(!KeyRange::prefix(b"a/").contains(b"a0"));
    }
}
