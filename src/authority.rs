//! Client connections whose HTTP/2 `:authority` is a URL, not an authority.
//!
//! etcdctl 3.4 (and any client on grpc-go's `passthrough` resolver) dials an endpoint given
//! as `http://127.0.0.1:2379` with that whole string as the target, and grpc-go sends the
//! target as `:authority`. grpc-go servers, etcd among them, never parse it, so etcd answers;
//! the h2 crate under hyper parses it, and a request whose `:authority` is not
//! `host[:port]` is reset with PROTOCOL_ERROR before any handler sees it. That broke
//! `endpoint status`, `endpoint hashkv`, `defrag` and `snapshot save` for anyone who copied
//! the endpoint Netsy prints at start-up.
//!
//! h2 offers no hook before that check, so [`AuthorityFix`] sits under it on the read side
//! of the connection: it follows the frames the client sends and walks every header block
//! without decoding it (HPACK is stateful, so every block is walked to know which dynamic
//! table entries hold an `:authority`). A literal `:authority` that h2 would refuse is
//! replaced by its URL's `host:port` (or `localhost` if it has none), never longer than the
//! original: h2's dynamic table then holds the same entries at the same indices as the
//! client's, each no larger, so the client's later references resolve. Every other byte,
//! and every non-HTTP/2 connection (`/metrics` over HTTP/1.1), passes through unchanged;
//! only an `:authority` string is ever Huffman-decoded. Writes are untouched. (Decoding and
//! re-encoding every block instead halved the requests per second.)

use bytes::{Buf, BytesMut};
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
const HEADERS: u8 = 0x1;
const CONTINUATION: u8 = 0x9;
const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;
const PADDED: u8 = 0x8;
const PRIORITY: u8 = 0x20;
/// The frame size h2 accepts unless told otherwise (HTTP/2's default).
const MAX_FRAME: usize = 16_384;
/// A header block larger than this ends the connection (h2 refuses far smaller ones).
const MAX_BLOCK: usize = 1 << 20;

enum Mode {
    /// Deciding between HTTP/2 (the preface) and anything else.
    Preface,
    Http2,
    Passthrough,
}

/// A header block being collected across HEADERS and CONTINUATION frames.
struct Block {
    stream: u32,
    end_stream: bool,
    priority: Option<[u8; 5]>,
    fragment: Vec<u8>,
}

/// The read side of a client connection with URL `:authority` values repaired.
pub struct AuthorityFix<T> {
    inner: T,
    mode: Mode,
    /// Bytes read from `inner`, not yet looked at.
    raw: BytesMut,
    /// Bytes ready for h2.
    out: BytesMut,
    /// Payload bytes of the current non-header frame still to pass through.
    skip: usize,
    block: Option<Block>,
    walker: Walker,
    eof: bool,
}

impl<T> AuthorityFix<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            mode: Mode::Preface,
            raw: BytesMut::new(),
            out: BytesMut::new(),
            skip: 0,
            block: None,
            walker: Walker::default(),
            eof: false,
        }
    }

    /// Moves what can be decided from `raw` to `out`.
    fn process(&mut self) -> io::Result<()> {
        loop {
            match self.mode {
                Mode::Passthrough => {
                    let all = self.raw.split();
                    self.out.unsplit(all);
                    return Ok(());
                }
                Mode::Preface => {
                    let n = self.raw.len().min(PREFACE.len());
                    if self.raw[..n] != PREFACE[..n] {
                        self.mode = Mode::Passthrough;
                        continue;
                    }
                    if n < PREFACE.len() {
                        return Ok(());
                    }
                    let preface = self.raw.split_to(n);
                    self.out.unsplit(preface);
                    self.mode = Mode::Http2;
                }
                Mode::Http2 => {
                    if self.skip > 0 {
                        let n = self.skip.min(self.raw.len());
                        if n == 0 {
                            return Ok(());
                        }
                        // `unsplit` takes the bytes without a copy when `out` is empty.
                        let payload = self.raw.split_to(n);
                        self.out.unsplit(payload);
                        self.skip -= n;
                        continue;
                    }
                    if self.raw.len() < 9 {
                        return Ok(());
                    }
                    let len =
                        u32::from_be_bytes([0, self.raw[0], self.raw[1], self.raw[2]]) as usize;
                    let kind = self.raw[3];
                    if kind != HEADERS && kind != CONTINUATION {
                        if self.block.is_some() {
                            return Err(invalid("a frame inside a header block"));
                        }
                        let header = self.raw.split_to(9);
                        self.out.unsplit(header);
                        self.skip = len;
                        continue;
                    }
                    if len > MAX_BLOCK {
                        return Err(invalid("header frame too large"));
                    }
                    if self.raw.len() < 9 + len {
                        self.raw.reserve(9 + len - self.raw.len());
                        return Ok(());
                    }
                    let mut frame = self.raw.split_to(9 + len);
                    let flags = frame[4];
                    let stream =
                        u32::from_be_bytes([frame[5], frame[6], frame[7], frame[8]]) & 0x7fff_ffff;
                    frame.advance(9);
                    self.header_frame(kind, flags, stream, &frame)?;
                }
            }
        }
    }

    fn header_frame(&mut self, kind: u8, flags: u8, stream: u32, payload: &[u8]) -> io::Result<()> {
        let fragment = if kind == HEADERS {
            if self.block.is_some() {
                return Err(invalid("HEADERS inside a header block"));
            }
            let mut p = payload;
            if flags & PADDED != 0 {
                let (&pad, rest) = p
                    .split_first()
                    .ok_or_else(|| invalid("empty padded HEADERS"))?;
                p = rest
                    .get(
                        ..rest
                            .len()
                            .checked_sub(pad as usize)
                            .ok_or_else(|| invalid("padding too long"))?,
                    )
                    .unwrap_or_default();
            }
            let mut priority = None;
            if flags & PRIORITY != 0 {
                let (head, rest) = p
                    .split_at_checked(5)
                    .ok_or_else(|| invalid("short priority"))?;
                priority = Some(<[u8; 5]>::try_from(head).expect("five bytes"));
                p = rest;
            }
            self.block = Some(Block {
                stream,
                end_stream: flags & END_STREAM != 0,
                priority,
                fragment: Vec::new(),
            });
            p
        } else {
            match &self.block {
                Some(b) if b.stream == stream => payload,
                _ => return Err(invalid("CONTINUATION without its HEADERS")),
            }
        };
        let block = self.block.as_mut().expect("set above");
        if block.fragment.len() + fragment.len() > MAX_BLOCK {
            return Err(invalid("header block too large"));
        }
        block.fragment.extend_from_slice(fragment);
        if flags & END_HEADERS != 0 {
            let block = self.block.take().expect("set above");
            self.emit(block)?;
        }
        Ok(())
    }

    /// Queues a complete block, repaired, for h2.
    fn emit(&mut self, block: Block) -> io::Result<()> {
        let mut encoded = Vec::with_capacity(block.fragment.len());
        self.walker
            .walk(&block.fragment, &mut encoded)
            .map_err(|e| invalid(&format!("header block: {e}")))?;
        let mut rest = &encoded[..];
        let mut first = true;
        loop {
            let room = MAX_FRAME
                - if first && block.priority.is_some() {
                    5
                } else {
                    0
                };
            let (chunk, after) = rest.split_at(rest.len().min(room));
            rest = after;
            let mut flags = if rest.is_empty() { END_HEADERS } else { 0 };
            let kind = if first {
                if block.end_stream {
                    flags |= END_STREAM;
                }
                if block.priority.is_some() {
                    flags |= PRIORITY;
                }
                HEADERS
            } else {
                CONTINUATION
            };
            let priority = match (first, &block.priority) {
                (true, Some(p)) => &p[..],
                _ => &[][..],
            };
            let len = (priority.len() + chunk.len()) as u32;
            self.out.extend_from_slice(&len.to_be_bytes()[1..]);
            self.out.extend_from_slice(&[kind, flags]);
            self.out.extend_from_slice(&block.stream.to_be_bytes());
            self.out.extend_from_slice(priority);
            self.out.extend_from_slice(chunk);
            first = false;
            if rest.is_empty() {
                return Ok(());
            }
        }
    }
}

/// What to send instead of an `:authority` h2 would refuse (`None`: it is fine as it is):
/// the URL's `host:port`, else `localhost`; never longer than `value` (see the module doc).
fn repaired_authority(value: &[u8]) -> Option<Vec<u8>> {
    if value.is_empty() || http::uri::Authority::try_from(value).is_ok() {
        return None;
    }
    let from_url = http::Uri::try_from(value)
        .ok()
        .and_then(|u| u.authority().map(|a| a.as_str().as_bytes().to_vec()))
        .filter(|a| !a.is_empty());
    let fixed = from_url.unwrap_or_else(|| b"localhost".to_vec());
    Some(if fixed.len() <= value.len() {
        fixed
    } else {
        b"x".to_vec()
    })
}

/// Walks HPACK header blocks (RFC 7541 §6), copying them and replacing the `:authority`
/// literals h2 would refuse.
struct Walker {
    /// For each entry of the client's dynamic table, newest first: is it an `:authority`?
    /// Index 62 is the newest; evictions never change the index of a live entry, so only
    /// as many as can be live (each entry takes at least 32 bytes) are kept.
    recent: std::collections::VecDeque<bool>,
    /// The most entries the table can hold at its current maximum size.
    cap: usize,
    huffman: Option<loona_hpack::huffman::HuffmanDecoder>,
}

impl Default for Walker {
    fn default() -> Self {
        Self {
            recent: Default::default(),
            // SETTINGS_HEADER_TABLE_SIZE's default, 4096 bytes.
            cap: 4096 / 32,
            huffman: None,
        }
    }
}

/// The static table's `:authority` (RFC 7541 Appendix A).
const STATIC_AUTHORITY: usize = 1;
const STATIC_ENTRIES: usize = 61;
/// `:authority` Huffman-coded (RFC 7541 Appendix B), padded with the EOS code's ones.
const HUFFMAN_AUTHORITY: &[u8] = &[0xb8, 0x3b, 0x53, 0x39, 0xec, 0x32, 0x7d, 0x7f];

impl Walker {
    fn walk(&mut self, b: &[u8], out: &mut Vec<u8>) -> Result<(), &'static str> {
        let mut i = 0;
        while i < b.len() {
            let start = i;
            let first = b[i];
            if first & 0x80 != 0 {
                // Indexed field: refers to an entry h2 holds too.
                i = read_int(b, i, 7)?.1;
                out.extend_from_slice(&b[start..i]);
                continue;
            }
            if first & 0xe0 == 0x20 {
                let (max, next) = read_int(b, i, 5)?;
                i = next;
                self.cap = max / 32;
                self.recent.truncate(self.cap);
                out.extend_from_slice(&b[start..i]);
                continue;
            }
            // Literals: with incremental indexing (01), never indexed (0001), without (0000).
            let (indexing, prefix, pattern) = match first & 0xf0 {
                0x40..=0x7f => (true, 6, 0x40),
                0x10 => (false, 4, 0x10),
                _ => (false, 4, 0x00),
            };
            let (index, next) = read_int(b, i, prefix)?;
            i = next;
            let authority = match index {
                0 => {
                    let ((huffman, name), next) = read_string(b, i)?;
                    i = next;
                    // Huffman coding is canonical: one byte string per name.
                    name == if huffman {
                        HUFFMAN_AUTHORITY
                    } else {
                        b":authority"
                    }
                }
                STATIC_AUTHORITY => true,
                n if n <= STATIC_ENTRIES => false,
                n => self
                    .recent
                    .get(n - STATIC_ENTRIES - 1)
                    .copied()
                    .unwrap_or(false),
            };
            let (value, next) = read_string(b, i)?;
            i = next;
            if indexing && self.cap > 0 {
                self.recent.push_front(authority);
                self.recent.truncate(self.cap);
            }
            if authority {
                if let Some(fixed) = repaired_authority(&self.decoded(value)?) {
                    integer(out, STATIC_AUTHORITY, prefix, pattern);
                    integer(out, fixed.len(), 7, 0);
                    out.extend_from_slice(&fixed);
                    continue;
                }
            }
            out.extend_from_slice(&b[start..i]);
        }
        Ok(())
    }

    /// A string literal's octets: `(huffman, bytes)` as read by [`read_string`].
    fn decoded(&mut self, (huffman, bytes): (bool, &[u8])) -> Result<Vec<u8>, &'static str> {
        if !huffman {
            return Ok(bytes.to_vec());
        }
        self.huffman
            .get_or_insert_with(loona_hpack::huffman::HuffmanDecoder::new)
            .decode(bytes)
            .map_err(|_| "bad Huffman code")
    }
}

/// An integer with an `n`-bit prefix at `b[i]`: its value and the index after it.
fn read_int(b: &[u8], mut i: usize, n: u8) -> Result<(usize, usize), &'static str> {
    let max = (1usize << n) - 1;
    let mut v = (b[i] as usize) & max;
    i += 1;
    if v < max {
        return Ok((v, i));
    }
    let mut shift = 0;
    loop {
        let byte = *b.get(i).ok_or("truncated integer")?;
        i += 1;
        if shift > 28 {
            return Err("integer too large");
        }
        v += ((byte & 0x7f) as usize) << shift;
        shift += 7;
        if byte & 0x80 == 0 {
            return Ok((v, i));
        }
    }
}

/// A string literal at `b[i]`: whether it is Huffman-coded, its bytes, the index after it.
fn read_string(b: &[u8], i: usize) -> Result<((bool, &[u8]), usize), &'static str> {
    let huffman = *b.get(i).ok_or("truncated string")? & 0x80 != 0;
    let (len, start) = read_int(b, i, 7)?;
    let end = start
        .checked_add(len)
        .filter(|&e| e <= b.len())
        .ok_or("truncated string")?;
    Ok(((huffman, &b[start..end]), end))
}

/// An HPACK integer with an `n`-bit prefix (RFC 7541 §5.1); `high` holds the bits above it.
fn integer(out: &mut Vec<u8>, mut v: usize, n: u8, high: u8) {
    let max = (1usize << n) - 1;
    if v < max {
        out.push(high | v as u8);
        return;
    }
    out.push(high | max as u8);
    v -= max;
    while v >= 128 {
        out.push((v % 128) as u8 | 0x80);
        v /= 128;
    }
    out.push(v as u8);
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("HTTP/2 from the client: {what}"),
    )
}

impl<T: AsyncRead + Unpin> AsyncRead for AuthorityFix<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if !this.out.is_empty() {
                let n = this.out.len().min(buf.remaining());
                buf.put_slice(&this.out[..n]);
                this.out.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.eof {
                // What is left in `raw` is an incomplete frame: h2 sees the end of stream.
                return Poll::Ready(Ok(()));
            }
            if this.raw.capacity() - this.raw.len() < 8192 {
                this.raw.reserve(16_384);
            }
            let spare = this.raw.spare_capacity_mut();
            let mut read = ReadBuf::uninit(spare);
            match Pin::new(&mut this.inner).poll_read(cx, &mut read) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let n = read.filled().len();
                    if n == 0 {
                        this.eof = true;
                        continue;
                    }
                    // SAFETY: `poll_read` initialised the first `n` spare bytes.
                    unsafe { this.raw.set_len(this.raw.len() + n) };
                    if let Err(e) = this.process() {
                        return Poll::Ready(Err(e));
                    }
                }
            }
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
        let mut f = (payload.len() as u32).to_be_bytes()[1..].to_vec();
        f.extend_from_slice(&[kind, flags]);
        f.extend_from_slice(&stream.to_be_bytes());
        f.extend_from_slice(payload);
        f
    }

    /// Feeds `input` in pieces of `step` bytes and returns what h2 would read.
    async fn through(input: &[u8], step: usize) -> Vec<u8> {
        let (mut client, server) = tokio::io::duplex(1 << 20);
        let input = input.to_vec();
        let feeder = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            for piece in input.chunks(step) {
                client.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        let reading = fix.read_to_end(&mut out);
        let (read, fed) = tokio::join!(reading, feeder);
        read.unwrap();
        fed.unwrap();
        out
    }

    /// Splits h2 input after the preface into (kind, flags, stream, payload).
    fn frames(mut b: &[u8]) -> Vec<(u8, u8, u32, Vec<u8>)> {
        let mut v = Vec::new();
        while !b.is_empty() {
            let len = u32::from_be_bytes([0, b[0], b[1], b[2]]) as usize;
            let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]);
            v.push((b[3], b[4], stream, b[9..9 + len].to_vec()));
            b = &b[9 + len..];
        }
        v
    }

    fn headers_of(
        decoder: &mut loona_hpack::Decoder<'static>,
        block: &[u8],
    ) -> Vec<(String, String)> {
        decoder
            .decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    #[tokio::test]
    async fn a_url_authority_becomes_host_port_and_everything_else_passes() {
        let mut enc = loona_hpack::Encoder::new();
        let request = |authority: &'static str| {
            vec![
                (&b":method"[..], &b"POST"[..]),
                (b":scheme", b"http"),
                (b":path", b"/etcdserverpb.Maintenance/Status"),
                (b":authority", authority.as_bytes()),
                (b"content-type", b"application/grpc"),
            ]
        };
        let mut input = PREFACE.to_vec();
        input.extend(frame(0x4, 0, 0, &[0, 3, 0, 0, 0, 100])); // SETTINGS
                                                               // Indexed into the client's dynamic table, then referenced by the second request.
        let first = enc.encode(request("http://127.0.0.1:2379"));
        let second = enc.encode(request("http://127.0.0.1:2379"));
        let third = enc.encode(request("127.0.0.1:2379"));
        input.extend(frame(HEADERS, END_HEADERS, 1, &first));
        input.extend(frame(0x0, END_STREAM, 1, &[0, 0, 0, 0, 0]));
        // A block split over a CONTINUATION, with padding and a priority.
        let mut padded = vec![3, 0, 0, 0, 0, 16];
        padded.extend_from_slice(&second[..4]);
        padded.extend_from_slice(&[0, 0, 0]);
        input.extend(frame(HEADERS, PADDED | PRIORITY, 3, &padded));
        input.extend(frame(CONTINUATION, END_HEADERS, 3, &second[4..]));
        input.extend(frame(HEADERS, END_HEADERS | END_STREAM, 5, &third));
        for step in [1, 7, 4096] {
            let out = through(&input, step).await;
            assert_eq!(&out[..PREFACE.len()], PREFACE);
            let got = frames(&out[PREFACE.len()..]);
            assert_eq!(got.len(), 5, "{got:?}");
            assert_eq!(got[0], (0x4, 0, 0, vec![0, 3, 0, 0, 0, 100]));
            let mut dec = loona_hpack::Decoder::new();
            let want = |a: &str| {
                vec![
                    (":method".to_string(), "POST".to_string()),
                    (":scheme".into(), "http".into()),
                    (":path".into(), "/etcdserverpb.Maintenance/Status".into()),
                    (":authority".into(), a.to_string()),
                    ("content-type".into(), "application/grpc".into()),
                ]
            };
            assert_eq!(got[1].0, HEADERS);
            assert_eq!(got[1].1, END_HEADERS);
            assert_eq!(headers_of(&mut dec, &got[1].3), want("127.0.0.1:2379"));
            assert_eq!(got[2], (0x0, END_STREAM, 1, vec![0, 0, 0, 0, 0]));
            assert_eq!(got[3].0, HEADERS);
            assert_eq!(got[3].1, END_HEADERS | PRIORITY);
            assert_eq!(&got[3].3[..5], &[0, 0, 0, 0, 16]);
            assert_eq!(headers_of(&mut dec, &got[3].3[5..]), want("127.0.0.1:2379"));
            assert_eq!(got[4].1, END_HEADERS | END_STREAM);
            assert_eq!(headers_of(&mut dec, &got[4].3), want("127.0.0.1:2379"));
        }
    }

    #[tokio::test]
    async fn http1_passes_byte_for_byte() {
        let input = b"GET /metrics HTTP/1.1\r\nHost: http://x\r\n\r\n".to_vec();
        assert_eq!(through(&input, 3).await, input);
    }

    #[tokio::test]
    async fn a_large_block_is_split_into_continuations() {
        let mut enc = loona_hpack::Encoder::new();
        let big = vec![b'x'; 40_000];
        let block = enc.encode(vec![
            (&b":authority"[..], &b"unix:///tmp/s"[..]),
            (b"x-big", &big[..]),
        ]);
        let mut input = PREFACE.to_vec();
        input.extend(frame(HEADERS, END_HEADERS, 1, &block));
        let got = frames(&through(&input, 1000).await[PREFACE.len()..]);
        assert_eq!(got.len(), 3);
        assert!(got.iter().all(|f| f.3.len() <= MAX_FRAME));
        assert_eq!(
            (got[0].0, got[1].0, got[2].0),
            (HEADERS, CONTINUATION, CONTINUATION)
        );
        assert_eq!(got[2].1, END_HEADERS);
        let all: Vec<u8> = got.iter().flat_map(|f| f.3.clone()).collect();
        let mut dec = loona_hpack::Decoder::new();
        let h = headers_of(&mut dec, &all);
        // `unix:///tmp/s` has no host.
        assert_eq!(h[0], (":authority".to_string(), "localhost".to_string()));
        assert_eq!(h[1].0, "x-big");
    }

    #[test]
    fn huffman_authority() {
        let decoded = loona_hpack::huffman::HuffmanDecoder::new()
            .decode(HUFFMAN_AUTHORITY)
            .unwrap();
        assert_eq!(decoded, b":authority");
        // A literal new name, Huffman-coded, with a URL value.
        let mut block = vec![0x00, 0x80 | HUFFMAN_AUTHORITY.len() as u8];
        block.extend_from_slice(HUFFMAN_AUTHORITY);
        block.push(9);
        block.extend_from_slice(b"http://h:");
        let mut out = Vec::new();
        Walker::default().walk(&block, &mut out).unwrap();
        let h = loona_hpack::Decoder::new().decode(&out).unwrap();
        assert_eq!(h, vec![(b":authority".to_vec(), b"h:".to_vec())]);
    }

    #[test]
    fn dynamic_table_references_stay_aligned() {
        let lit = |out: &mut Vec<u8>, s: &[u8]| {
            out.push(s.len() as u8);
            out.extend_from_slice(s);
        };
        // Inserted: `x-a: 1`, then `:authority: http://h:1` (name from the static table).
        let mut first = vec![0x40];
        lit(&mut first, b"x-a");
        lit(&mut first, b"1");
        first.push(0x41);
        lit(&mut first, b"http://h:1");
        // Referenced: 62 is the newest (the authority), 63 the one before; then a literal
        // without indexing whose name is entry 62's.
        let mut second = vec![0x80 | 62, 0x80 | 63, 0x0f, 62 - 15];
        lit(&mut second, b"https://g:2/");
        let mut walker = Walker::default();
        let mut dec = loona_hpack::Decoder::new();
        let mut out = Vec::new();
        walker.walk(&first, &mut out).unwrap();
        let h1 = dec.decode(&out).unwrap();
        out.clear();
        walker.walk(&second, &mut out).unwrap();
        let h2 = dec.decode(&out).unwrap();
        let pair = |n: &str, v: &str| (n.as_bytes().to_vec(), v.as_bytes().to_vec());
        assert_eq!(h1, vec![pair("x-a", "1"), pair(":authority", "h:1")]);
        assert_eq!(
            h2,
            vec![
                pair(":authority", "h:1"),
                pair("x-a", "1"),
                pair(":authority", "g:2")
            ]
        );
    }

    #[test]
    fn authorities() {
        let r = |v: &str| repaired_authority(v.as_bytes()).map(|b| String::from_utf8(b).unwrap());
        assert_eq!(r("127.0.0.1:2379"), None);
        assert_eq!(
            r("http://127.0.0.1:2379").as_deref(),
            Some("127.0.0.1:2379")
        );
        assert_eq!(
            r("https://a.example:2379/").as_deref(),
            Some("a.example:2379")
        );
        assert_eq!(r("unix:///tmp/s").as_deref(), Some("localhost"));
        assert_eq!(r("a b").as_deref(), Some("x"));
    }
}
