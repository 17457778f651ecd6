//! What the hub task has for one socket task: the per-connection queue between them.
//!
//! Fan-out is the hot path of the whole server, and a general-purpose channel costs too
//! much on it: a send per receiver per message (block lookup, atomics, a wake-up each)
//! and then a receive and a queue entry per message on the socket side. The outbox is a
//! mutex around what is pending, shaped for the job:
//!
//! - what arrives while something is already waiting is copied behind it into one
//!   [`FrameBatch`] when small (it then leaves in the same plain write); the first piece
//!   and large ones stay shared (no copy, no allocation: fan-out's common case);
//! - the socket task is woken only when the outbox goes from empty to not empty, so a
//!   burst of publishes costs one wake-up per receiver, not one per message;
//! - the lock is held for an append or a swap, and the two sides are one producer (the
//!   hub task) and one consumer (the socket task);
//! - on a one-thread runtime, while the socket task is idle with nothing queued, the hub
//!   task writes hub bytes to the socket itself ([`OutboxRx::attach`]), once per batch of
//!   commands ([`OutboxTx::write_direct`]), so a burst still leaves in one write: waking
//!   the socket task, scheduling and polling it only to make the same `send` was most of
//!   the server's user-space time per delivery under fan-out. That write is the one
//!   syscall made under the lock (it never blocks: the socket is non-blocking); whatever
//!   the socket does not take stays here, first in line, and the socket task is woken to
//!   finish it.

use std::borrow::Cow;
use std::io::IoSlice;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use roomcast_core::{FrameBatch, Frames, Outgoing};
use tokio::net::tcp::OwnedWriteHalf;

/// Messages up to this size are copied into the receiver's batch; larger ones are shared.
/// Around here one `memcpy` costs what the refcount traffic of a shared frame does.
const COPY_MAX: usize = 2048;

/// A connection's socket, shared so the hub task can write to it while the socket task is
/// idle (see the module docs).
pub(crate) type DirectSocket = Arc<OwnedWriteHalf>;

/// Most pieces handed to one direct write.
const MAX_IOV: usize = 64;

/// A new outbox: the hub task's end and the socket task's end.
pub(crate) fn outbox() -> (OutboxTx, OutboxRx) {
    let shared = Arc::new(Mutex::new(Pending::default()));
    (OutboxTx(shared.clone()), OutboxRx(shared))
}

/// One piece of output, in order: a batch of copied small frames, or one shared frame
/// or room burst.
#[derive(Debug)]
pub(crate) enum Piece {
    Batch(FrameBatch),
    Frame(Outgoing),
    Frames(Frames),
    /// What the socket did not take of a message the hub task wrote to it directly.
    Tail(Bytes),
}

impl Piece {
    fn as_slice(&self) -> &[u8] {
        match self {
            Piece::Batch(b) => b.as_slice(),
            Piece::Frame(f) => f.frame(),
            Piece::Frames(f) => f.bytes(),
            Piece::Tail(b) => b,
        }
    }

    /// What is left of this piece after its first `n` bytes.
    fn rest(self, n: usize) -> Bytes {
        match self {
            Piece::Batch(b) => b.into_bytes().slice(n..),
            Piece::Frame(f) => f.frame().slice(n..),
            Piece::Frames(f) => f.bytes().slice(n..),
            Piece::Tail(b) => b.slice(n..),
        }
    }

    #[cfg(test)]
    pub(crate) fn bytes(&self) -> bytes::Bytes {
        match self {
            Piece::Batch(b) => b.clone().into_bytes(),
            Piece::Frame(f) => f.frame().clone(),
            Piece::Frames(f) => f.bytes().clone(),
            Piece::Tail(b) => b.clone(),
        }
    }
}

/// What the socket task takes out in one go.
#[derive(Debug, Default)]
pub(crate) struct Taken {
    /// Hub messages, in order.
    pub(crate) pieces: Vec<Piece>,
    /// Send a protocol ping (after the pieces).
    pub(crate) ping: bool,
    /// Close with this code and reason, after everything else. Nothing follows.
    pub(crate) close: Option<(u16, Cow<'static, str>)>,
    /// The hub task dropped its end without a close: it is gone.
    pub(crate) hub_gone: bool,
}

impl Taken {
    /// Whether nothing more will ever come.
    pub(crate) fn is_final(&self) -> bool {
        self.close.is_some() || self.hub_gone
    }
}

#[derive(Debug, Default)]
struct Pending {
    /// Shared frames and sealed batches, before `open`.
    sealed: Vec<Piece>,
    /// Small frames after `sealed`, still being appended to.
    open: FrameBatch,
    ping: bool,
    close: Option<(u16, Cow<'static, str>)>,
    hub_gone: bool,
    /// The socket task is gone: nothing is kept any more.
    socket_gone: bool,
    /// The socket task waiting for something to arrive.
    waker: Option<Waker>,
    /// The socket, when the hub task may write to it directly.
    direct: Option<DirectSocket>,
    /// The socket task is idle with nothing of its own queued or being written: the hub
    /// task may write to `direct` now. Only the socket task sets it; anything that gives
    /// the socket task work clears it.
    direct_ok: bool,
    /// Data arrived while `direct_ok`: the hub task has this outbox on its list to write.
    direct_due: bool,
}

impl Pending {
    /// Appends hub bytes: shared when nothing waits before them (no copy, no
    /// allocation: fan-out's common case) or when large; copied behind what waits when
    /// small, so it all leaves in one plain write.
    fn push_data(
        &mut self,
        len: usize,
        shared: impl FnOnce() -> Piece,
        copy: impl FnOnce(&mut FrameBatch),
    ) {
        if self.is_data_empty() {
            self.sealed.push(shared());
        } else if len <= COPY_MAX {
            copy(&mut self.open);
        } else {
            if !self.open.is_empty() {
                let batch = mem::take(&mut self.open);
                self.sealed.push(Piece::Batch(batch));
            }
            self.sealed.push(shared());
        }
    }

    fn is_data_empty(&self) -> bool {
        self.sealed.is_empty() && self.open.is_empty()
    }

    fn is_empty(&self) -> bool {
        self.sealed.is_empty()
            && self.open.is_empty()
            && !self.ping
            && self.close.is_none()
            && !self.hub_gone
    }
}

fn lock(m: &Mutex<Pending>) -> MutexGuard<'_, Pending> {
    // Nothing panics while holding it (appends and swaps); if something ever did, the
    // queue itself is still consistent.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The hub task's end.
#[derive(Debug)]
pub(crate) struct OutboxTx(Arc<Mutex<Pending>>);

impl OutboxTx {
    /// Queues one hub message. `true`: the socket task is idle and was not woken; the
    /// hub task writes this outbox itself with [`OutboxTx::write_direct`] once its batch is
    /// done (it is only told once per batch).
    pub(crate) fn frame(&self, msg: &Outgoing) -> bool {
        self.data(
            msg.wire_len(),
            || Piece::Frame(msg.clone()),
            |b| b.push(msg),
        )
    }

    /// Queues a coalesced room burst; `true` as for [`OutboxTx::frame`].
    pub(crate) fn frames(&self, frames: &Frames) -> bool {
        self.data(
            frames.wire_len(),
            || Piece::Frames(frames.clone()),
            |b| b.push_frames(frames),
        )
    }

    /// Writes what is queued straight to the socket, if the socket task is still idle.
    /// Returns the bytes the socket took: the caller reports them to the hub
    /// (`Hub::handle_flushed`) and to metrics, as the socket task does for its writes.
    /// What the socket did not take stays first in line, and the socket task is woken to
    /// finish it.
    pub(crate) fn write_direct(&self) -> usize {
        let (written, waker) = {
            let mut p = lock(&self.0);
            p.direct_due = false;
            if !p.direct_ok || p.socket_gone || p.is_data_empty() {
                return 0;
            }
            let mut pieces = mem::take(&mut p.sealed);
            if !p.open.is_empty() {
                pieces.push(Piece::Batch(mem::take(&mut p.open)));
            }
            let Some(socket) = &p.direct else {
                p.sealed = pieces;
                return 0;
            };
            let stream = (**socket).as_ref();
            let result = if let [one] = &pieces[..] {
                stream.try_write(one.as_slice())
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let n = pieces.len().min(MAX_IOV);
                for (slot, piece) in slices.iter_mut().zip(&pieces) {
                    *slot = IoSlice::new(piece.as_slice());
                }
                stream.try_write_vectored(&slices[..n])
            };
            // Full or failing (the socket task finds out on its own write): nothing went.
            let mut left = result.unwrap_or(0);
            let written = left;
            let mut rest = Vec::new();
            for piece in pieces {
                let len = piece.as_slice().len();
                if left >= len {
                    left -= len;
                } else if left > 0 {
                    rest.push(Piece::Tail(piece.rest(left)));
                    left = 0;
                } else {
                    rest.push(piece);
                }
            }
            if rest.is_empty() {
                // All of it: the socket task sleeps on.
                return written;
            }
            p.sealed = rest;
            p.direct_ok = false;
            (written, p.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        written
    }

    /// Asks for a protocol ping.
    pub(crate) fn ping(&self) {
        self.update(|p| p.ping = true);
    }

    /// Asks for a close after what is queued; ends this end.
    pub(crate) fn close(self, code: u16, reason: Cow<'static, str>) {
        self.update(|p| p.close = Some((code, reason)));
    }

    fn data(
        &self,
        len: usize,
        shared: impl FnOnce() -> Piece,
        copy: impl FnOnce(&mut FrameBatch),
    ) -> bool {
        let waker = {
            let mut p = lock(&self.0);
            if p.socket_gone || p.close.is_some() {
                return false;
            }
            p.push_data(len, shared, copy);
            if p.direct_ok {
                // Left for the hub task's write at the end of its batch.
                return !mem::replace(&mut p.direct_due, true);
            }
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        false
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        let waker = {
            let mut p = lock(&self.0);
            if p.socket_gone || p.close.is_some() {
                return;
            }
            f(&mut p);
            p.direct_ok = false;
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
    }
}

impl Drop for OutboxTx {
    fn drop(&mut self) {
        self.update(|p| p.hub_gone = true);
    }
}

/// The socket task's end.
#[derive(Debug)]
pub(crate) struct OutboxRx(Arc<Mutex<Pending>>);

impl OutboxRx {
    /// Lets the hub task write to `socket` itself whenever this end is idle
    /// ([`OutboxRx::poll_take`] with `idle`).
    pub(crate) fn attach(&self, socket: DirectSocket) {
        lock(&self.0).direct = Some(socket);
    }

    /// Takes the socket back from the hub task before the socket task writes anything of
    /// its own. Returns the rest of a message the hub task left partly written: it must
    /// leave before anything else.
    pub(crate) fn reclaim(&self) -> Option<Bytes> {
        let mut p = lock(&self.0);
        p.direct_ok = false;
        match p.sealed.first() {
            Some(Piece::Tail(_)) => match p.sealed.remove(0) {
                Piece::Tail(b) => Some(b),
                _ => unreachable!("matched above"),
            },
            _ => None,
        }
    }

    /// Takes everything pending, or registers to be woken when something arrives. `idle`:
    /// the socket task has nothing of its own to write and its connection is open, so
    /// while nothing is pending the hub task may write to the attached socket directly.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>, idle: bool) -> Poll<Taken> {
        let mut p = lock(&self.0);
        if p.is_empty() {
            match &p.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => p.waker = Some(cx.waker().clone()),
            }
            p.direct_ok = idle && p.direct.is_some();
            return Poll::Pending;
        }
        p.direct_ok = false;
        let mut pieces = mem::take(&mut p.sealed);
        if !p.open.is_empty() {
            pieces.push(Piece::Batch(mem::take(&mut p.open)));
        }
        Poll::Ready(Taken {
            pieces,
            ping: mem::take(&mut p.ping),
            close: p.close.take(),
            hub_gone: mem::take(&mut p.hub_gone),
        })
    }

    /// Waits for and takes everything pending (`idle` as for [`OutboxRx::poll_take`]).
    pub(crate) async fn take(&mut self, idle: bool) -> Taken {
        std::future::poll_fn(|cx| self.poll_take(cx, idle)).await
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut p = lock(&self.0);
        p.socket_gone = true;
        p.sealed = Vec::new();
        p.open = FrameBatch::default();
        p.waker = None;
        p.direct = None;
        p.direct_ok = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;

    struct CountWakes(AtomicUsize);
    impl Wake for CountWakes {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn concat(t: &Taken) -> Vec<u8> {
        t.pieces.iter().flat_map(|p| p.bytes().to_vec()).collect()
    }

    #[test]
    fn a_burst_is_one_wake_and_keeps_its_order() {
        let (tx, mut rx) = outbox();
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        assert!(rx.poll_take(&mut cx, false).is_pending());
        let small: Vec<Outgoing> = (0..5)
            .map(|i| Outgoing::from_text(&format!("{{\"n\":{i}}}")))
            .collect();
        let big = Outgoing::from_text(&"b".repeat(COPY_MAX + 1));
        tx.frame(&small[0]);
        tx.frame(&small[1]);
        tx.frame(&big);
        tx.frame(&small[2]);
        tx.ping();
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken once for the burst"
        );
        let Poll::Ready(t) = rx.poll_take(&mut cx, false) else {
            panic!("pending")
        };
        // The first message shared (nothing to coalesce with), the second copied behind
        // it, the large one shared, the last copied again.
        assert_eq!(t.pieces.len(), 4, "frame, batch, shared frame, batch");
        assert!(matches!(&t.pieces[0], Piece::Frame(f) if f == &small[0]));
        assert!(matches!(&t.pieces[2], Piece::Frame(f) if f == &big));
        let mut want = Vec::new();
        for m in [&small[0], &small[1], &big, &small[2]] {
            want.extend_from_slice(m.frame());
        }
        assert_eq!(concat(&t), want);
        assert!(t.ping && !t.is_final());
        // Drained: pending again, and the next message wakes again.
        assert!(rx.poll_take(&mut cx, false).is_pending());
        tx.frame(&small[3]);
        tx.close(1001, "bye".into());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        let Poll::Ready(t) = rx.poll_take(&mut cx, false) else {
            panic!("pending")
        };
        assert_eq!(concat(&t), small[3].frame().to_vec());
        assert_eq!(t.close, Some((1001, "bye".into())));
        assert!(t.is_final());
        assert!(
            rx.poll_take(&mut cx, false).is_pending(),
            "nothing follows a close"
        );
    }

    #[test]
    fn a_dropped_hub_end_is_reported_and_a_dropped_socket_end_keeps_nothing() {
        let (tx, mut rx) = outbox();
        tx.frame(&Outgoing::from_text("{}"));
        drop(tx);
        let t = take_now(&mut rx);
        assert_eq!(t.pieces.len(), 1);
        assert!(t.hub_gone && t.is_final());

        let (tx, rx) = outbox();
        drop(rx);
        tx.frame(&Outgoing::from_text("{}"));
        tx.ping();
        assert!(lock(&tx.0).is_empty());
    }

    /// A connected pair on loopback: our write half (for the outbox) and the peer.
    async fn tcp_pair() -> (DirectSocket, tokio::net::TcpStream) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (ours, theirs) = tokio::join!(tokio::net::TcpStream::connect(addr), async {
            listener.accept().await.unwrap().0
        });
        let (_, w) = ours.unwrap().into_split();
        (Arc::new(w), theirs)
    }

    /// An outbox attached to one end of a loopback pair, and a waker that counts.
    struct Attached {
        tx: OutboxTx,
        rx: OutboxRx,
        peer: tokio::net::TcpStream,
        wakes: Arc<CountWakes>,
    }

    async fn attached() -> Attached {
        let (socket, peer) = tcp_pair().await;
        let (tx, rx) = outbox();
        rx.attach(socket);
        let wakes = Arc::new(CountWakes(AtomicUsize::new(0)));
        Attached {
            tx,
            rx,
            peer,
            wakes,
        }
    }

    async fn read_exactly(peer: &mut tokio::net::TcpStream, n: usize) -> Vec<u8> {
        use tokio::io::AsyncReadExt;
        let mut got = vec![0; n];
        tokio::time::timeout(
            std::time::Duration::from_secs(10),
            peer.read_exact(&mut got),
        )
        .await
        .expect("bytes arrive")
        .unwrap();
        got
    }

    #[tokio::test]
    async fn an_idle_socket_is_written_by_the_hub_end_once_per_batch_without_a_wake() {
        let Attached {
            tx,
            mut rx,
            mut peer,
            wakes,
        } = attached().await;
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        let a = Outgoing::from_text("{\"a\":1}");
        let b = Outgoing::from_text("{\"b\":2}");

        // Not idle (the socket task has its own bytes in flight): queued and woken.
        assert!(rx.poll_take(&mut cx, false).is_pending());
        assert!(!tx.frame(&a));
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        assert_eq!(tx.write_direct(), 0, "not the hub end's turn");
        let t = take_now(&mut rx);
        assert_eq!(concat(&t), a.frame().to_vec());

        // Idle: listed once for the batch, then written in one go, nobody woken.
        assert!(rx.poll_take(&mut cx, true).is_pending());
        assert!(tx.frame(&b), "due for a direct write");
        assert!(!tx.frame(&a), "already listed for this batch");
        let mut want = b.frame().to_vec();
        want.extend_from_slice(a.frame());
        assert_eq!(tx.write_direct(), want.len());
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "no wake for direct writes"
        );
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
        // The next batch is listed again.
        assert!(tx.frame(&a));
        assert_eq!(tx.write_direct(), a.wire_len());
        assert_eq!(
            read_exactly(&mut peer, a.wire_len()).await,
            a.frame().to_vec()
        );

        // Reclaimed by the socket task: what is pending waits for it, not for the hub end.
        assert!(tx.frame(&b));
        assert_eq!(rx.reclaim(), None);
        assert_eq!(tx.write_direct(), 0);
        assert_eq!(concat(&take_now(&mut rx)), b.frame().to_vec());
    }

    #[tokio::test]
    async fn a_full_socket_leaves_the_rest_first_in_line_and_wakes_the_socket_task() {
        let Attached {
            tx,
            mut rx,
            mut peer,
            wakes,
        } = attached().await;
        let waker = Waker::from(wakes.clone());
        let mut cx = Context::from_waker(&waker);
        // The peer does not read: big messages fill both socket buffers.
        let big: Vec<Outgoing> = (0..64u8)
            .map(|i| Outgoing::from_text(&char::from(b'a' + i % 26).to_string().repeat(256 * 1024)))
            .collect();
        assert!(rx.poll_take(&mut cx, true).is_pending());
        let mut direct = 0;
        let mut sent = 0;
        for m in &big {
            sent += 1;
            assert!(tx.frame(m));
            let n = tx.write_direct();
            direct += n;
            if n < m.wire_len() {
                break;
            }
        }
        assert!(sent < big.len(), "the socket never filled");
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "woken to finish the write"
        );
        // Later messages queue behind the rest, never on the wire before it.
        let small = Outgoing::from_text("{}");
        assert!(!tx.frame(&small));
        let rest = rx.reclaim();
        let t = take_now(&mut rx);
        let mut after: Vec<u8> = rest.as_deref().unwrap_or_default().to_vec();
        after.extend(concat(&t));
        let mut want: Vec<u8> = big[..sent]
            .iter()
            .flat_map(|m| m.frame().to_vec())
            .collect();
        want.extend_from_slice(small.frame());
        assert_eq!(direct + after.len(), want.len());
        assert_eq!(read_exactly(&mut peer, direct).await, want[..direct]);
        assert_eq!(&want[direct..], &after[..]);
    }

    fn take_now(rx: &mut OutboxRx) -> Taken {
        let waker = Waker::noop();
        match rx.poll_take(&mut Context::from_waker(waker), false) {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("pending"),
        }
    }
}
