//! The revision index: which keys each retained revision changed, in change order. Watch
//! replay and compaction walk it by revision; nothing else does.
//!
//! Revisions are only ever appended at the head and dropped from the tail, so this is a
//! persistent vector rather than an ordered map: appending needs no tree walk, and its
//! leaves are packed full, where a B-tree filled in key order leaves every leaf half empty
//! (the index was about 100 bytes per revision as a map, about 50 as a vector). Lookups by
//! revision are binary searches.

use super::{ChangedKeys, Key};
use imbl::Vector;

#[derive(Debug, Clone, Default)]
pub(super) struct RevisionIndex(Vector<(i64, ChangedKeys)>);

impl RevisionIndex {
    /// Records that `key` changed at `rev`, which must be at or above the last revision
    /// recorded (revisions only grow); returns its place among the changes of `rev`.
    pub fn push(&mut self, rev: i64, key: Key) -> usize {
        match self.0.back_mut() {
            Some((last, keys)) if *last == rev => {
                keys.push(key);
                keys.iter().len() - 1
            }
            last => {
                debug_assert!(last.is_none_or(|(r, _)| *r < rev), "revisions only grow");
                self.0.push_back((rev, ChangedKeys::One(key)));
                0
            }
        }
    }

    /// The position of the first revision at or above `rev`.
    fn position(&self, rev: i64) -> usize {
        match self.0.binary_search_by_key(&rev, |(r, _)| *r) {
            Ok(i) | Err(i) => i,
        }
    }

    /// Revisions with changes in `from..=to`, oldest first, and the keys changed at each.
    pub fn range(&self, from: i64, to: i64) -> impl Iterator<Item = (i64, &ChangedKeys)> {
        let start = self.position(from);
        self.0
            .focus()
            .narrow(start..)
            .into_iter()
            .take_while(move |(r, _)| *r <= to)
            .map(|(r, keys)| (*r, keys))
    }

    pub fn iter(&self) -> impl Iterator<Item = (i64, &ChangedKeys)> {
        self.0.iter().map(|(r, keys)| (*r, keys))
    }

    /// The oldest revision recorded.
    pub fn first_revision(&self) -> Option<i64> {
        self.0.front().map(|(r, _)| *r)
    }

    /// Drops every revision below `rev`.
    pub fn drop_below(&mut self, rev: i64) {
        let start = self.position(rev);
        self.0 = self.0.split_off(start);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn index(revs: &[(i64, &str)]) -> RevisionIndex {
        let mut index = RevisionIndex::default();
        for (rev, key) in revs {
            index.push(*rev, Key::new(key.as_bytes()));
        }
        index
    }

    fn listed<'a>(it: impl Iterator<Item = (i64, &'a ChangedKeys)>) -> Vec<(i64, Vec<String>)> {
        it.map(|(r, ks)| {
            let keys = ks.iter().map(|k| String::from_utf8_lossy(k).into_owned());
            (r, keys.collect())
        })
        .collect()
    }

    #[test]
    fn ranges_follow_revisions_and_change_order() {
        let i = index(&[(2, "a"), (3, "b"), (3, "c"), (5, "d"), (9, "e")]);
        let all = vec![
            (2, vec!["a".to_string()]),
            (3, vec!["b".into(), "c".into()]),
            (5, vec!["d".into()]),
            (9, vec!["e".into()]),
        ];
        assert_eq!(listed(i.iter()), all);
        // Every window, bounds inside, between and outside the recorded revisions.
        for from in 0..12 {
            for to in 0..12 {
                let want: Vec<_> = all
                    .iter()
                    .filter(|(r, _)| (from..=to).contains(r))
                    .cloned()
                    .collect();
                assert_eq!(listed(i.range(from, to)), want, "{from}..={to}");
            }
        }
        assert_eq!(i.first_revision(), Some(2));
    }

    #[test]
    fn dropping_below_a_revision_keeps_it_and_later_ones() {
        for (rev, left) in [(0, 4), (2, 4), (3, 3), (4, 2), (5, 2), (9, 1), (10, 0)] {
            let mut i = index(&[(2, "a"), (3, "b"), (5, "d"), (9, "e")]);
            i.drop_below(rev);
            assert_eq!(i.iter().count(), left, "drop below {rev}");
            assert!(i.iter().all(|(r, _)| r >= rev));
        }
    }

    #[test]
    fn a_large_index_appends_and_searches() {
        let mut i = RevisionIndex::default();
        for rev in (1..20_000).map(|r| r * 2) {
            i.push(rev, Key::new(b"k"));
        }
        let got: Vec<i64> = i.range(10_001, 10_011).map(|(r, _)| r).collect();
        assert_eq!(got, vec![10_002, 10_004, 10_006, 10_008, 10_010]);
        i.drop_below(30_000);
        assert_eq!(i.iter().next().map(|(r, _)| r), Some(30_000));
    }
}
