//! The chunks a node applied last, in log order, so that a follower that (re)connects
//! after a failover, a restart or a slow moment is sent what it missed from the memory of
//! whoever leads, instead of reading it from the bucket one GET at a time.
//!
//! Reading the bucket cannot be parallel: chunk keys are spread over partitions and the
//! next chunk's key is known only once the previous one is decoded, so a follower reads at
//! one chunk per S3 round trip, which is the rate a busy leader commits at; a follower that
//! starts behind would never catch up. Every node keeps the window (a follower pushes what
//! it applies), so a follower that just took over has it too. The bounds keep it small: a
//! follower further behind reads the bucket, or reloads, as before.

use super::layout::Position;
use super::Committed;
use std::collections::VecDeque;

/// At most this many chunks, and at most [`MAX_BYTES`] of them.
const MAX_CHUNKS: usize = 4096;
const MAX_BYTES: usize = 64 * 1024 * 1024;

#[derive(Default)]
pub struct Recent {
    chunks: VecDeque<Committed>,
    bytes: usize,
}

impl Recent {
    /// Appends the chunk just applied. A chunk not after the last one kept means the state
    /// was replaced (a reload): what is kept no longer leads to it, so it is dropped.
    pub fn push(&mut self, chunk: Committed) {
        if self
            .chunks
            .back()
            .is_some_and(|last| chunk.position <= last.position)
        {
            self.clear();
        }
        self.bytes += chunk.data.len();
        self.chunks.push_back(chunk);
        while self.chunks.len() > MAX_CHUNKS || self.bytes > MAX_BYTES {
            match self.chunks.pop_front() {
                Some(c) => self.bytes -= c.data.len(),
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.chunks.clear();
        self.bytes = 0;
    }

    /// Every chunk kept from log position `next` on, or None when the window starts after
    /// `next` (the caller must read the bucket).
    pub fn from(&self, next: Position) -> Option<Vec<Committed>> {
        let first = self.chunks.front()?;
        if first.position > next {
            return None;
        }
        let start = self.chunks.partition_point(|c| c.position < next);
        Some(self.chunks.range(start..).cloned().collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn chunk(revision: i64, size: usize) -> Committed {
        Committed {
            position: Position::new(revision, 0),
            data: Bytes::from(vec![0u8; size]),
        }
    }

    fn revisions(chunks: Option<Vec<Committed>>) -> Option<Vec<i64>> {
        chunks.map(|c| c.iter().map(|c| c.position.revision).collect())
    }

    #[test]
    fn serves_from_a_position_it_covers_and_refuses_one_before_it() {
        let mut r = Recent::default();
        assert_eq!(revisions(r.from(Position::new(1, 0))), None);
        for rev in [2, 5, 9] {
            r.push(chunk(rev, 10));
        }
        assert_eq!(revisions(r.from(Position::new(2, 0))), Some(vec![2, 5, 9]));
        assert_eq!(revisions(r.from(Position::new(5, 0))), Some(vec![5, 9]));
        assert_eq!(revisions(r.from(Position::new(10, 0))), Some(vec![]));
        assert_eq!(revisions(r.from(Position::new(1, 0))), None);
    }

    #[test]
    fn keeps_within_its_bounds() {
        let mut r = Recent::default();
        for rev in 1..=(MAX_CHUNKS as i64 + 10) {
            r.push(chunk(rev, 1));
        }
        assert_eq!(r.chunks.len(), MAX_CHUNKS);
        assert_eq!(r.chunks.front().unwrap().position.revision, 11);
        r.push(chunk(MAX_CHUNKS as i64 + 11, MAX_BYTES));
        assert_eq!(
            r.chunks.len(),
            1,
            "a chunk of the whole byte budget evicts the rest"
        );
        assert_eq!(r.bytes, MAX_BYTES);
    }

    #[test]
    fn a_chunk_that_does_not_follow_drops_the_window() {
        let mut r = Recent::default();
        r.push(chunk(5, 1));
        r.push(chunk(6, 1));
        r.push(chunk(3, 1));
        assert_eq!(revisions(r.from(Position::new(3, 0))), Some(vec![3]));
        assert_eq!(revisions(r.from(Position::new(2, 0))), None);
    }
}
