//! etcd 3.7's `KV.RangeStream`: a range answered as a stream of chunks, so a list of many
//! objects (kube-apiserver 1.37 lists through it) never has to be one message.
//!
//! The chunks follow etcd's: the first holds 10 keys, each next one twice as many while a
//! chunk encodes to less than half of `--max-request-bytes` and half as many when it is
//! over twice that; only the last chunk carries the header, `more` and `count` (every
//! matching key, also those past the request's limit). etcd pins the revision of the first
//! chunk and reads every next one at it; here every chunk is read from the one published
//! state the stream started on, which is the same thing and cannot be compacted away
//! under the stream.

use crate::mvcc::{KeyRange, State};
use crate::proto::etcdserverpb::{
    RangeRequest, RangeResponse, RangeStreamResponse, ResponseHeader,
};
use bytes::{BufMut, Bytes, BytesMut};
use prost::Message;
use std::sync::Arc;

/// etcd's first chunk size.
const FIRST_CHUNK_KEYS: usize = 10;

/// The chunks of one RangeStream, made one at a time as the client takes them.
pub struct Chunks {
    state: Arc<State>,
    next: Bytes,
    end: Bytes,
    rev: i64,
    keys_only: bool,
    count_only: bool,
    /// Keys still to send under the request's limit.
    left: usize,
    chunk: usize,
    sent: i64,
    target_bytes: usize,
    header: Option<ResponseHeader>,
    done: bool,
}

impl Chunks {
    /// The stream of `r` over `state` read at `rev` (resolved and checked by the caller),
    /// ending with `header`. Count-only requests are one chunk.
    pub fn new(
        state: Arc<State>,
        r: &RangeRequest,
        rev: i64,
        header: Option<ResponseHeader>,
        max_request_bytes: usize,
    ) -> Self {
        let left = if r.limit > 0 {
            r.limit as usize
        } else {
            usize::MAX
        };
        Self {
            state,
            next: r.key.clone(),
            end: r.range_end.clone(),
            rev,
            keys_only: r.keys_only,
            count_only: r.count_only,
            left,
            chunk: FIRST_CHUNK_KEYS.min(left),
            sent: 0,
            target_bytes: max_request_bytes,
            header,
            done: false,
        }
    }

    fn last(
        &mut self,
        kvs: Vec<crate::proto::mvccpb::KeyValue>,
        more: bool,
    ) -> RangeStreamResponse {
        self.done = true;
        let mut count = self.sent;
        if more {
            count += self.state.count_live(&self.range(), self.rev);
        }
        RangeStreamResponse {
            range_response: Some(RangeResponse {
                header: self.header.take(),
                kvs,
                more,
                count,
            }),
        }
    }

    fn range(&self) -> KeyRange {
        KeyRange::new(self.next.clone(), self.end.clone())
    }
}

impl Iterator for Chunks {
    type Item = RangeStreamResponse;

    fn next(&mut self) -> Option<RangeStreamResponse> {
        if self.done {
            return None;
        }
        if self.count_only {
            // One chunk: the header and the count (etcd answers more = false).
            self.done = true;
            return Some(RangeStreamResponse {
                range_response: Some(RangeResponse {
                    header: self.header.take(),
                    count: self.state.count_live(&self.range(), self.rev),
                    ..Default::default()
                }),
            });
        }
        let (kvs, more) = self.state.range_page(
            &self.range(),
            self.rev,
            self.chunk.min(self.left),
            self.keys_only,
        );
        self.sent += kvs.len() as i64;
        self.left -= kvs.len();
        if let Some(last) = kvs.last() {
            // The next chunk starts right after the last key sent.
            let mut next = BytesMut::with_capacity(last.key.len() + 1);
            next.put_slice(&last.key);
            next.put_u8(0);
            self.next = next.freeze();
        }
        if !more || self.left == 0 {
            return Some(self.last(kvs, more));
        }
        let size = RangeResponse {
            kvs,
            ..Default::default()
        };
        let bytes = size.encoded_len();
        if bytes < self.target_bytes / 2 {
            self.chunk = self.chunk.saturating_mul(2);
        } else if bytes > self.target_bytes.saturating_mul(2) {
            self.chunk = (self.chunk / 2).max(1);
        }
        Some(RangeStreamResponse {
            range_response: Some(size),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::etcdserverpb::PutRequest;

    fn state(n: usize, value: usize) -> Arc<State> {
        let mut st = State::new();
        for i in 0..n {
            st.put(&PutRequest {
                key: Bytes::from(format!("k/{i:05}")),
                value: Bytes::from(vec![b'v'; value]),
                ..Default::default()
            })
            .unwrap();
        }
        Arc::new(st)
    }

    fn request(limit: i64) -> RangeRequest {
        RangeRequest {
            key: Bytes::from_static(b"k/"),
            range_end: Bytes::from_static(b"k0"),
            limit,
            ..Default::default()
        }
    }

    fn run(st: &Arc<State>, r: &RangeRequest, max_bytes: usize) -> Vec<RangeResponse> {
        let header = Some(ResponseHeader {
            revision: st.revision,
            ..Default::default()
        });
        Chunks::new(st.clone(), r, st.revision, header, max_bytes)
            .map(|c| c.range_response.unwrap())
            .collect()
    }

    /// Merged, the chunks are the Range response; they grow from 10 keys, and only the last
    /// has a header, more and count.
    #[test]
    fn chunks_merge_into_the_range_response() {
        let st = state(1000, 10);
        for limit in [0, 1, 10, 11, 999, 1000, 5000] {
            let r = request(limit);
            let chunks = run(&st, &r, 1 << 20);
            let want = st.range(&r, None).unwrap();
            let kvs: Vec<_> = chunks.iter().flat_map(|c| c.kvs.clone()).collect();
            assert_eq!(kvs, want.kvs, "limit {limit}");
            let last = chunks.last().unwrap();
            assert_eq!(
                (last.more, last.count),
                (want.more, want.count),
                "limit {limit}"
            );
            assert_eq!(last.header.as_ref().unwrap().revision, st.revision);
            for c in &chunks[..chunks.len() - 1] {
                assert!(c.header.is_none() && !c.more && c.count == 0);
            }
            if limit == 0 {
                let sizes: Vec<_> = chunks.iter().map(|c| c.kvs.len()).collect();
                assert_eq!(sizes[..4], [10, 20, 40, 80], "{sizes:?}");
            }
        }
    }

    /// Large values shrink the chunks towards the byte target; count-only is one chunk.
    #[test]
    fn chunks_shrink_for_large_values_and_count_only_is_one_chunk() {
        let st = state(200, 64 * 1024);
        let chunks = run(&st, &request(0), 128 * 1024);
        let sizes: Vec<_> = chunks.iter().map(|c| c.kvs.len()).collect();
        assert_eq!(sizes.iter().sum::<usize>(), 200);
        assert_eq!(sizes[..3], [10, 5, 2], "{sizes:?}");
        let r = RangeRequest {
            count_only: true,
            ..request(0)
        };
        let chunks = run(&st, &r, 1 << 20);
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].count, chunks[0].kvs.len()), (200, 0));
        let empty = RangeRequest {
            key: Bytes::from_static(b"x"),
            ..request(0)
        };
        let chunks = run(&st, &empty, 1 << 20);
        assert_eq!(chunks.len(), 1);
        assert_eq!((chunks[0].count, chunks[0].more), (0, false));
    }
}
