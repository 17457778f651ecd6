//! Socket plumbing shared by server connections and the client: reads that borrow a
//! per-thread scratch buffer, and an output queue written with vectored I/O.
//!
//! The two are where the adapter's memory and syscall costs are decided. A connection
//! keeps no read buffer of its own (the core `Connection` copies payload bytes into the
//! message being assembled as they arrive), so an idle connection costs no read memory;
//! and everything queued for a socket leaves in one `writev` of shared frames, which is
//! what makes fan-out cheap on loopback (one syscall per subscriber per wake-up, not per
//! message).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use roomcast_core::connection::Connection;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

use crate::outbox::DirectSocket;

/// Largest read per wake-up: big enough to take a burst of small messages in one
/// syscall, and the most a connection may parse before other branches get a turn.
const SCRATCH_LEN: usize = 64 * 1024;

/// Most buffers handed to one `writev` (Linux allows 1024; beyond a few dozen frames the
/// syscall cost is already amortized).
const MAX_IOV: usize = 64;

thread_local! {
    static SCRATCH: RefCell<Box<[u8]>> = RefCell::new(vec![0; SCRATCH_LEN].into_boxed_slice());
}

/// Polls one read from `reader` into the thread's scratch buffer and hands the bytes to
/// `sink` within the same poll, so no bytes outlive it. `Ok(0)` is end of stream.
pub(crate) fn poll_read_into<R: AsyncRead + Unpin>(
    reader: &mut R,
    cx: &mut Context<'_>,
    sink: impl FnOnce(&[u8]),
) -> Poll<io::Result<usize>> {
    SCRATCH.with(|scratch| {
        let mut scratch = scratch.borrow_mut();
        let mut buf = ReadBuf::new(&mut scratch[..]);
        ready!(Pin::new(reader).poll_read(cx, &mut buf))?;
        let filled = buf.filled();
        if !filled.is_empty() {
            sink(filled);
        }
        Poll::Ready(Ok(filled.len()))
    })
}

/// The socket task's writer when the hub task may also write to the socket
/// (`OutboxRx::attach`): the same non-blocking writes as the write half itself, through
/// the handle both share. The two never write at once: the outbox hands the turn over.
pub(crate) struct SharedWriter(pub(crate) DirectSocket);

impl SharedWriter {
    fn stream(&self) -> &TcpStream {
        (*self.0).as_ref()
    }

    fn poll_with(
        &self,
        cx: &mut Context<'_>,
        mut write: impl FnMut(&TcpStream) -> io::Result<usize>,
    ) -> Poll<io::Result<usize>> {
        let stream = self.stream();
        loop {
            ready!(stream.poll_write_ready(cx))?;
            // A `WouldBlock` clears the readiness, so the next poll waits for the edge.
            match write(stream) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                r => return Poll::Ready(r),
            }
        }
    }
}

impl AsyncWrite for SharedWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write(buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll_with(cx, |s| s.try_write_vectored(bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    /// Sends our FIN now (the write half would only do it when the last handle drops).
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(socket2::SockRef::from(self.stream()).shutdown(std::net::Shutdown::Write))
    }
}

/// Frames waiting for the socket, in order, each tagged with whether it came from the
/// hub (whose bytes must be reported back with `Hub::handle_flushed`) or from the
/// connection itself (pongs, pings, close frames).
#[derive(Debug, Default)]
pub(crate) struct OutQueue {
    frames: VecDeque<(Bytes, bool)>,
    /// Bytes of the front frame already written.
    offset: usize,
}

impl OutQueue {
    pub(crate) fn is_empty(&self) -> bool {
        self.frames.is_empty()
    }

    pub(crate) fn push(&mut self, frame: Bytes, from_hub: bool) {
        if !frame.is_empty() {
            self.frames.push_back((frame, from_hub));
        }
    }

    /// Moves everything `conn` has queued to the back of this queue.
    pub(crate) fn pull(&mut self, conn: &mut Connection, from_hub: bool) {
        while let Some(frame) = conn.poll_transmit() {
            self.push(frame, from_hub);
        }
    }

    /// Starts one vectored write of as many queued frames as fit in one call.
    pub(crate) fn poll_write<W: AsyncWrite + Unpin>(
        &self,
        writer: &mut W,
        cx: &mut Context<'_>,
    ) -> Poll<io::Result<usize>> {
        let Some((front, _)) = self.frames.front() else {
            return Poll::Ready(Ok(0));
        };
        let front = &front[self.offset..];
        let writer = Pin::new(writer);
        // One buffer (an echo, a lone reply) goes out with a plain `send`: `writev` of a
        // single iovec costs the same TCP work plus the VFS layer's vector bookkeeping,
        // and the iovec array is not even built.
        let written = if self.frames.len() == 1 || !writer.is_write_vectored() {
            ready!(writer.poll_write(cx, front))?
        } else {
            let mut slices = [IoSlice::new(&[]); MAX_IOV];
            slices[0] = IoSlice::new(front);
            let mut n = 1;
            for (frame, _) in self.frames.iter().skip(1).take(MAX_IOV - 1) {
                slices[n] = IoSlice::new(frame);
                n += 1;
            }
            ready!(writer.poll_write_vectored(cx, &slices[..n]))?
        };
        if written == 0 {
            return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
        }
        Poll::Ready(Ok(written))
    }

    /// Gives back the queue's memory once everything is written (see
    /// `Connection::shrink_idle`): idle connections hold no buffers.
    pub(crate) fn shrink_idle(&mut self) {
        // The few slots every connection uses are kept: freeing them would cost an
        // allocation per burst on the fan-out path.
        if self.frames.is_empty() && self.frames.capacity() > 8 {
            self.frames = VecDeque::new();
        }
    }

    /// Drops `n` written bytes from the front; returns how many of them were hub bytes.
    pub(crate) fn advance(&mut self, mut n: usize) -> usize {
        let mut hub_bytes = 0;
        while n > 0 {
            let Some((frame, from_hub)) = self.frames.front() else {
                debug_assert!(false, "advanced past the queue");
                break;
            };
            let left = frame.len() - self.offset;
            let take = left.min(n);
            if *from_hub {
                hub_bytes += take;
            }
            n -= take;
            if take == left {
                self.frames.pop_front();
                self.offset = 0;
            } else {
                self.offset += take;
            }
        }
        hub_bytes
    }

    /// Writes everything queued; returns the hub bytes written.
    pub(crate) async fn write_all<W: AsyncWrite + Unpin>(
        &mut self,
        writer: &mut W,
    ) -> io::Result<usize> {
        let mut hub_bytes = 0;
        while !self.is_empty() {
            let n = std::future::poll_fn(|cx| self.poll_write(writer, cx)).await?;
            hub_bytes += self.advance(n);
        }
        Ok(hub_bytes)
    }
}

/// A socket's write side that can be cut off with a reset. A connection whose close could
/// not be delivered within its bound (a slow consumer's kernel buffers full) is aborted:
/// SO_LINGER 0, then dropped, sends RST and frees what the kernel still held for it at
/// once, instead of leaving megabytes in FIN-WAIT-1 for minutes.
pub(crate) trait Abort {
    /// Makes the coming close a reset (a no-op where there is no TCP socket).
    fn abort(&self);
}

fn zero_linger(stream: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(stream).set_linger(Some(std::time::Duration::ZERO)) {
        tracing::trace!("SO_LINGER 0 failed: {e}");
    }
}

impl Abort for tokio::net::tcp::OwnedWriteHalf {
    fn abort(&self) {
        zero_linger(self.as_ref());
    }
}

impl Abort for SharedWriter {
    fn abort(&self) {
        zero_linger(self.stream());
    }
}

/// Upgrades served by another framework's connection type: nothing to reset here.
impl<T> Abort for tokio::io::WriteHalf<T> {
    fn abort(&self) {}
}

impl Abort for tokio::io::DuplexStream {
    fn abort(&self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn writes_in_order_and_counts_hub_bytes() {
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"abc"), true);
        q.push(Bytes::from_static(b"de"), false);
        q.push(Bytes::new(), true);
        q.push(Bytes::from_static(b"fgh"), true);
        assert_eq!(q.advance(2), 2);
        assert_eq!(q.advance(2), 1);
        let mut sink: Vec<u8> = Vec::new();
        assert_eq!(q.write_all(&mut sink).await.unwrap(), 3);
        assert_eq!(sink, b"efgh");
        assert!(q.is_empty());
    }

    #[tokio::test]
    async fn partial_writes_resume_mid_frame() {
        let (mut a, mut b) = tokio::io::duplex(4);
        let mut q = OutQueue::default();
        q.push(Bytes::from_static(b"0123456789"), true);
        let writer = async {
            let n = q.write_all(&mut a).await.unwrap();
            drop(a);
            n
        };
        let reader = async {
            let mut got = Vec::new();
            tokio::io::AsyncReadExt::read_to_end(&mut b, &mut got)
                .await
                .unwrap();
            got
        };
        let (n, got) = tokio::join!(writer, reader);
        assert_eq!(n, 10);
        assert_eq!(got, b"0123456789");
    }
}
