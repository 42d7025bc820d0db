//! Coalesced writes on client connections.
//!
//! h2 writes to the socket each time a connection's task runs, and under many concurrent
//! unary calls that task runs about once per frame of each stream: a response left as two
//! writes (its headers, then its data and trailers once the stream had been given send
//! capacity), and every write is a TCP segment that the client wakes up for and the kernel
//! delivers. A linearizable get cost 1.86 `writev` calls, and a third of the server's CPU
//! went into them.
//!
//! [`CoalescedWrites`] holds what the connection writes and, the first time it is asked
//! to flush, lets every other ready task run before it writes: the responses finished in
//! the meantime leave in the same write. The delay is one pass of the runtime's run queue;
//! nothing waits on a timer, so an idle connection's response goes out at once.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Bytes held before a write is forced even without a flush.
const WRITE_AT: usize = 64 * 1024;
/// A buffer that grew past this (a large response) is not kept between writes.
const KEEP_CAPACITY: usize = 256 * 1024;

/// An I/O stream whose writes are collected until a flush, which is deferred by one yield.
pub struct CoalescedWrites<T> {
    inner: T,
    buf: Vec<u8>,
    /// Bytes at the front of `buf` already written to `inner`.
    written: usize,
    /// Whether the pending flush has already yielded once.
    yielded: bool,
}

impl<T> CoalescedWrites<T> {
    pub fn new(inner: T) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            written: 0,
            yielded: false,
        }
    }
}

impl<T: AsyncWrite + Unpin> CoalescedWrites<T> {
    /// Writes everything held to `inner`.
    fn poll_write_held(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.written < self.buf.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.buf[self.written..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.written += n;
        }
        self.written = 0;
        if self.buf.capacity() > KEEP_CAPACITY {
            self.buf = Vec::new();
        } else {
            self.buf.clear();
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for CoalescedWrites<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for CoalescedWrites<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_write_vectored(cx, &[io::IoSlice::new(data)])
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        if self.buf.len() >= WRITE_AT {
            ready!(self.poll_write_held(cx))?;
        }
        let mut n = 0;
        for b in bufs {
            self.buf.extend_from_slice(b);
            n += b.len();
        }
        Poll::Ready(Ok(n))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        if self.written < self.buf.len() {
            if !self.yielded {
                // Woken at once, but queued behind every task already ready to run.
                self.yielded = true;
                cx.waker().wake_by_ref();
                return Poll::Pending;
            }
            ready!(self.poll_write_held(cx))?;
        }
        self.yielded = false;
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        ready!(self.poll_write_held(cx))?;
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn writes_leave_together_on_flush_and_not_before() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut w = CoalescedWrites::new(client);
        w.write_all(b"headers ").await.unwrap();
        w.write_all(b"data ").await.unwrap();
        // Nothing reaches the peer until a flush.
        let mut probe = [0u8; 64];
        let early = tokio::time::timeout(
            std::time::Duration::from_millis(50),
            server.read(&mut probe),
        )
        .await;
        assert!(early.is_err(), "bytes left before the flush");
        w.flush().await.unwrap();
        let mut got = vec![0u8; 13];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"headers data ");
    }

    #[tokio::test]
    async fn a_flush_yields_once_then_writes() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut w = CoalescedWrites::new(client);
        w.write_all(b"x").await.unwrap();
        let waker = futures::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_pending());
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
        let mut got = [0u8; 1];
        server.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"x");
        // Nothing held: a flush passes straight through.
        assert!(Pin::new(&mut w).poll_flush(&mut cx).is_ready());
    }

    #[tokio::test]
    async fn a_large_backlog_is_written_without_a_flush() {
        let (client, mut server) = tokio::io::duplex(1 << 20);
        let mut w = CoalescedWrites::new(client);
        let chunk = vec![7u8; 4096];
        for _ in 0..(WRITE_AT / chunk.len() + 1) {
            w.write_all(&chunk).await.unwrap();
        }
        let mut got = vec![0u8; WRITE_AT];
        server.read_exact(&mut got).await.unwrap();
        assert!(got.iter().all(|b| *b == 7));
    }
}
