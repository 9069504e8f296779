//! Write coalescing for a client connection.
//!
//! pgwire flushes after most backend messages (BindComplete, RowDescription,
//! CommandComplete, ReadyForQuery…), which costs one `send` system call each: four per
//! prepared-statement execution. [`CoalescingIo`] keeps written bytes in a buffer and sends
//! them when the server is about to wait for the client (a read), when the buffer passes
//! [`SEND_THRESHOLD`], or at shutdown — so a Bind/Describe/Execute/Sync round trip is answered
//! with one `send`, as Postgres does. Nothing the client waits for stays behind: the server
//! only reads once it has nothing more to say.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Buffered output beyond this is sent without waiting for a read (large results stream).
pub const SEND_THRESHOLD: usize = 64 * 1024;

pub struct CoalescingIo<S> {
    inner: S,
    out: Vec<u8>,
    /// Bytes of `out` already sent.
    sent: usize,
}

impl<S: AsyncWrite + Unpin> CoalescingIo<S> {
    pub fn new(inner: S) -> Self {
        CoalescingIo {
            inner,
            out: Vec::with_capacity(8 * 1024),
            sent: 0,
        }
    }

    /// If the unsent output ends with a ReadyForQuery message, sets its transaction status
    /// byte (`I`, `T` or `E`). Returns whether it did.
    pub fn set_pending_ready_status(&mut self, status: u8) -> bool {
        let pending = &mut self.out[self.sent..];
        match pending.len().checked_sub(6) {
            Some(at) if pending[at..at + 5] == [b'Z', 0, 0, 0, 5] => {
                pending[at + 5] = status;
                true
            }
            _ => false,
        }
    }

    /// Sends everything buffered.
    fn poll_send(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        while self.sent < self.out.len() {
            let n = ready!(Pin::new(&mut self.inner).poll_write(cx, &self.out[self.sent..]))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.sent += n;
        }
        self.out.clear();
        self.sent = 0;
        Pin::new(&mut self.inner).poll_flush(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for CoalescingIo<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.out.is_empty() {
            // about to wait for the client: everything it may be waiting for goes out first.
            // If the socket is full, read anyway (a client blocked sending to us must not
            // deadlock against us blocked sending to it); we are woken when it drains.
            if let Poll::Ready(Err(e)) = this.poll_send(cx) {
                return Poll::Ready(Err(e));
            }
        }
        Pin::new(&mut this.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for CoalescingIo<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() + data.len() > SEND_THRESHOLD {
            ready!(this.poll_send(cx))?;
            if data.len() > SEND_THRESHOLD {
                return Pin::new(&mut this.inner).poll_write(cx, data);
            }
        }
        this.out.extend_from_slice(data);
        Poll::Ready(Ok(data.len()))
    }

    /// Deferred: the bytes go out before the next read, past the threshold, or at shutdown.
    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        ready!(this.poll_send(cx))?;
        Pin::new(&mut this.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn pending_ready_for_query_status_is_rewritten() {
        let (server, _client) = tokio::io::duplex(64);
        let mut io = CoalescingIo::new(server);
        io.out
            .extend_from_slice(b"C\0\0\0\x0dROLLBACK\0Z\0\0\0\x05E");
        assert!(io.set_pending_ready_status(b'T'));
        assert_eq!(io.out.last(), Some(&b'T'));
        io.out.extend_from_slice(b"1\0\0\0\x04");
        assert!(!io.set_pending_ready_status(b'I'));
    }

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    /// Small writes and flushes are held until the server reads, then arrive together.
    #[tokio::test]
    async fn output_is_sent_before_reading() {
        let (server, mut client) = tokio::io::duplex(1 << 20);
        let mut io = CoalescingIo::new(server);
        io.write_all(b"one").await.unwrap();
        io.flush().await.unwrap();
        io.write_all(b"two").await.unwrap();
        io.flush().await.unwrap();
        let mut buf = [0u8; 16];
        // nothing has been sent yet
        assert!(
            tokio::time::timeout(std::time::Duration::from_millis(50), client.read(&mut buf))
                .await
                .is_err()
        );
        client.write_all(b"q").await.unwrap();
        let mut one = [0u8; 1];
        io.read_exact(&mut one).await.unwrap();
        let n = client.read(&mut buf).await.unwrap();
        assert_eq!(&buf[..n], b"onetwo");
        // large output streams without a read; shutdown sends the rest
        let big = vec![7u8; SEND_THRESHOLD * 2 + 10];
        io.write_all(&big).await.unwrap();
        io.write_all(b"tail").await.unwrap();
        io.shutdown().await.unwrap();
        let mut got = Vec::new();
        client.read_to_end(&mut got).await.unwrap();
        assert_eq!(got.len(), big.len() + 4);
        assert!(got.ends_with(b"tail"));
    }
}
