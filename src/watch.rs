//! Watchers read history from the state, not from per-watcher buffers.
//!
//! Every retained revision is in memory, so a watcher is just a key range and the next
//! revision it has to see. After each commit, a watch stream walks the changes between its
//! watchers' positions and the head once and hands each watcher its events. The events of
//! the last few publications are built once, on first use, and shared by every stream
//! (see `mvcc::Tail`); only a watcher that is catching up looks older ones up. Writers never
//! wait for watchers and no event is copied into a queue per watcher; a slow client only
//! delays its own stream. A watcher that falls behind the compacted revision cannot be
//! served and is canceled with `compact_revision` set, exactly like etcd, so the client
//! re-lists.

use crate::mvcc::{KeyRange, State};
use crate::proto::mvccpb::{self, event::EventType};

/// One watcher of a stream.
#[derive(Debug, Clone)]
pub struct Watcher {
    pub id: i64,
    pub range: KeyRange,
    /// The next revision this watcher must see.
    pub next: i64,
    /// The start revision the client asked for (0: none). As in etcd 3.6+, the watcher
    /// gets no progress notification while the head is below it: a progress revision
    /// under the start would tell the client of a revision it did not watch from.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    pub fragment: bool,
}

/// One change a watcher looks at: a key to look up at a revision, or a shared event.
enum Change<'a> {
    Key(&'a crate::mvcc::Key),
    Shared(&'a crate::mvcc::TailEvent),
}

/// What a watcher must be told after looking at a state.
#[derive(Debug, PartialEq)]
pub enum Sync {
    /// Nothing new.
    Idle,
    /// Events, in revision order (possibly empty if the new revisions did not concern it).
    Events(Vec<mvccpb::Event>),
    /// Its next revision was compacted away: cancel with this compact revision.
    Compacted(i64),
}

/// Most revisions one response carries while a watcher catches up (etcd's batch size).
pub const MAX_REVISIONS_PER_BATCH: i64 = 1000;
/// A response stops growing at the first revision boundary past this many bytes of keys
/// and values, so it stays well inside the 4 MiB receive limit common to gRPC clients.
/// One revision's events are never split (unless the watcher asked for fragments).
pub const BATCH_BYTES: usize = 1024 * 1024;

impl Watcher {
    /// Whether a progress notification at `head` may be sent to this watcher (etcd 3.6+).
    pub fn progress_allowed(&self, head: i64) -> bool {
        head >= self.start_revision
    }

    /// Advances the watcher over `state`, returning at most
    /// [`MAX_REVISIONS_PER_BATCH`] revisions and about [`BATCH_BYTES`] of events; call again
    /// until `Idle`.
    pub fn sync(&mut self, state: &State) -> Sync {
        if self.next > state.revision {
            return Sync::Idle;
        }
        if self.next < state.compact_revision {
            return Sync::Compacted(state.compact_revision);
        }
        let to = state
            .revision
            .min(self.next.saturating_add(MAX_REVISIONS_PER_BATCH - 1));
        let mut events = Vec::new();
        let mut bytes = 0usize;
        let mut last = to;
        // Revisions of recent publications have shared events; older ones (a watcher
        // catching up) are looked up one by one. One walk over both, in revision order.
        let next = self.next;
        let shared_from = state.shared_from().filter(|from| *from <= to);
        let lookup_to = shared_from.map_or(to, |from| from - 1);
        let looked_up = (next <= lookup_to)
            .then(|| state.changes(next, lookup_to))
            .into_iter()
            .flatten()
            .flat_map(|(rev, keys)| keys.iter().map(move |key| (rev, Change::Key(key))));
        let shared = shared_from
            .into_iter()
            .flat_map(|_| state.shared().filter(|t| t.to() >= next))
            .flat_map(|tail| tail.events(state))
            .skip_while(|t| t.revision < next)
            .take_while(|t| t.revision <= to)
            .map(|t| (t.revision, Change::Shared(t)));
        let mut current = 0;
        for (rev, change) in looked_up.chain(shared) {
            if rev != current {
                if bytes >= BATCH_BYTES {
                    last = rev - 1;
                    break;
                }
                current = rev;
            }
            match change {
                Change::Key(key) => {
                    if !self.range.contains(key) {
                        continue;
                    }
                    match state.event(key, rev) {
                        Some((event, prev)) if self.wants(&event) => {
                            self.push(&mut events, &mut bytes, event, prev);
                        }
                        _ => {}
                    }
                }
                Change::Shared(t) => {
                    let in_range = t
                        .event
                        .kv
                        .as_ref()
                        .is_some_and(|kv| self.range.contains(&kv.key));
                    if in_range && self.wants(&t.event) {
                        // As in etcd, the previous version of a change at the
                        // compacted revision is gone (etcd reads it at rev - 1, below
                        // the compaction); a tail built before the compaction still
                        // holds it.
                        let prev = if self.prev_kv && t.revision > state.compact_revision {
                            t.prev.clone()
                        } else {
                            None
                        };
                        self.push(&mut events, &mut bytes, t.event.clone(), prev);
                    }
                }
            }
        }
        self.next = last + 1;
        Sync::Events(events)
    }

    /// Whether this watcher's filters let `event` through.
    fn wants(&self, event: &mvccpb::Event) -> bool {
        let is_put = event.r#type == EventType::Put as i32;
        !((is_put && self.no_put) || (!is_put && self.no_delete))
    }

    /// Adds `event`, with `prev` when this watcher asked for it.
    fn push(
        &self,
        events: &mut Vec<mvccpb::Event>,
        bytes: &mut usize,
        mut event: mvccpb::Event,
        prev: Option<mvccpb::KeyValue>,
    ) {
        if self.prev_kv {
            event.prev_kv = prev;
        }
        *bytes += event_bytes(&event);
        events.push(event);
    }
}

fn event_bytes(e: &mvccpb::Event) -> usize {
    let kv = |kv: &Option<mvccpb::KeyValue>| {
        kv.as_ref()
            .map_or(0, |kv| kv.key.len() + kv.value.len() + 32)
    };
    kv(&e.kv) + kv(&e.prev_kv)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::{DeleteRangeRequest, PutRequest};
    use bytes::Bytes;

    fn watcher(start: &str, end: &str, next: i64) -> Watcher {
        Watcher {
            id: 0,
            range: KeyRange::new(Bytes::from(start.to_string()), Bytes::from(end.to_string())),
            next,
            start_revision: next,
            prev_kv: true,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            fragment: false,
        }
    }

    fn put(st: &mut State, k: &str, v: &str) {
        st.put(&PutRequest {
            key: Bytes::from(k.to_string()),
            value: Bytes::from(v.to_string()),
            ..Default::default()
        })
        .unwrap();
    }

    #[test]
    fn replays_history_with_prev_kv_and_filters() {
        let mut st = State::new();
        put(&mut st, "a/1", "x"); // 2
        put(&mut st, "b", "y"); // 3
        put(&mut st, "a/1", "z"); // 4
        st.delete_range(&DeleteRangeRequest {
            key: Bytes::from_static(b"a/1"),
            ..Default::default()
        })
        .unwrap(); // 5
        let mut w = watcher("a/", "a0", 2);
        let Sync::Events(ev) = w.sync(&st) else {
            panic!()
        };
        assert_eq!(ev.len(), 3);
        assert_eq!(ev[1].kv.as_ref().unwrap().mod_revision, 4);
        assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, "x");
        assert_eq!(ev[2].r#type, EventType::Delete as i32);
        assert_eq!(ev[2].prev_kv.as_ref().unwrap().value, "z");
        assert_eq!(w.sync(&st), Sync::Idle);
        let mut no_put = Watcher {
            no_put: true,
            ..watcher("a/", "a0", 2)
        };
        let Sync::Events(ev) = no_put.sync(&st) else {
            panic!()
        };
        assert_eq!(ev.len(), 1);
    }

    /// A change at the compacted revision has no previous version any more, whether its
    /// event is looked up or shared from a tail built before the compaction (etcd answers
    /// such an event without prev_kv: kube-apiserver's watch then reports 410 or an
    /// internal error, and relists).
    #[test]
    fn no_prev_kv_for_a_change_at_the_compacted_revision() {
        let mut st = State::new();
        put(&mut st, "a", "1"); // 2
        let published = st.revision;
        put(&mut st, "a", "2"); // 3
        put(&mut st, "a", "3"); // 4
        st.set_published_after(published);
        // Build the shared tail while revision 3 is still there.
        let mut early = watcher("a", "b", 3);
        let Sync::Events(ev) = early.sync(&st) else {
            panic!()
        };
        assert_eq!(ev[1].prev_kv.as_ref().unwrap().value, "2");
        st.compact(4);
        for mut w in [watcher("a", "b", 4), watcher("a", "", 4)] {
            let Sync::Events(ev) = w.sync(&st) else {
                panic!()
            };
            assert_eq!(ev.len(), 1);
            assert_eq!(ev[0].kv.as_ref().unwrap().mod_revision, 4);
            assert_eq!(ev[0].prev_kv, None);
        }
    }

    #[test]
    fn catch_up_batches_are_bounded_by_bytes_at_revision_boundaries() {
        let mut st = State::new();
        let big = "x".repeat(100 * 1024);
        for i in 0..30 {
            put(&mut st, &format!("k{i}"), &big);
        }
        let mut w = watcher("k", "l", 2);
        let mut sizes = Vec::new();
        loop {
            match w.sync(&st) {
                Sync::Events(ev) => sizes.push(ev.len()),
                Sync::Idle => break,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(sizes.iter().sum::<usize>(), 30);
        assert!(sizes.len() >= 3, "{sizes:?}");
        assert!(sizes.iter().all(|n| *n <= 11), "{sizes:?}");
    }

    /// Events served from published states' shared tails are exactly those looked up one
    /// by one, for every start, filter and range, including batches cut by size.
    #[test]
    fn tail_events_equal_looked_up_events() {
        let mut st = State::new();
        let big = "x".repeat(300 * 1024);
        for i in 0..12 {
            put(&mut st, &format!("a/{}", i % 3), &i.to_string());
        }
        st.delete_range(&DeleteRangeRequest {
            key: Bytes::from_static(b"a/1"),
            ..Default::default()
        })
        .unwrap();
        let published = st.revision;
        for i in 0..6 {
            put(
                &mut st,
                &format!("a/{}", i % 4),
                if i == 2 { &big } else { "y" },
            );
            put(&mut st, "b", &i.to_string());
        }
        st.delete_range(&DeleteRangeRequest {
            key: Bytes::from_static(b"a/"),
            range_end: Bytes::from_static(b"a0"),
            ..Default::default()
        })
        .unwrap();
        // Published in three commits: the watchers below read across all of them.
        let mut with_tail = st.clone();
        with_tail.set_published_after(published);
        assert_eq!(with_tail.shared_from(), Some(published + 1));
        let mut split = st.clone();
        for (previous, head) in [(published, published + 4), (published + 4, published + 7)] {
            split.revision = head;
            split.set_published_after(previous);
        }
        split.revision = st.revision;
        split.set_published_after(published + 7);
        assert_eq!(split.shared().count(), 3);
        assert_eq!(split.shared_from(), Some(published + 1));
        assert!(st.shared_from().is_none());
        let drain = |mut w: Watcher, state: &State| {
            let mut batches = Vec::new();
            loop {
                match w.sync(state) {
                    Sync::Events(ev) => batches.push(ev),
                    Sync::Idle => return batches,
                    other => panic!("{other:?}"),
                }
            }
        };
        for next in [2, published - 2, published, published + 1, published + 3] {
            for (start, end) in [("a/", "a0"), ("b", ""), ("\0", "\u{7f}")] {
                for (prev_kv, no_put, no_delete) in [
                    (true, false, false),
                    (false, true, false),
                    (false, false, true),
                ] {
                    let w = Watcher {
                        prev_kv,
                        no_put,
                        no_delete,
                        ..watcher(start, end, next)
                    };
                    let expected = drain(w.clone(), &st);
                    assert!(!expected.is_empty());
                    assert_eq!(
                        drain(w.clone(), &with_tail),
                        expected,
                        "from {next} {start}..{end}"
                    );
                    assert_eq!(
                        drain(w, &split),
                        expected,
                        "split, from {next} {start}..{end}"
                    );
                }
            }
        }
    }

    #[test]
    fn behind_compaction_is_canceled() {
        let mut st = State::new();
        for i in 0..5 {
            put(&mut st, "k", &i.to_string());
        }
        st.compact(4);
        assert_eq!(watcher("k", "", 3).sync(&st), Sync::Compacted(4));
        let Sync::Events(ev) = watcher("k", "", 4).sync(&st) else {
            panic!()
        };
        assert_eq!(ev.len(), 3);
    }
}
