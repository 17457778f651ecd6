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
//!   commands ([`Due::write`]), so a burst still leaves in one write: waking the socket
//!   task, scheduling and polling it only to make the same `send` was most of the
//!   server's user-space time per delivery under fan-out. That write is the one syscall
//!   made under the lock (it never blocks: the socket is non-blocking); whatever the
//!   socket does not take stays here, first in line, and the socket task is woken to
//!   finish it. It is a plain `send` on the descriptor, past tokio's readiness
//!   bookkeeping: on a 10k-member room that bookkeeping was a cache miss per member and
//!   3% of the server's time, and a stale "writable" only costs the socket task one
//!   `WouldBlock`.

use std::borrow::Cow;
use std::io::IoSlice;
use std::mem;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
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
    /// The socket, when the hub task may write to it directly, and its descriptor (read
    /// here, under the lock the write takes anyway, instead of through two more pointers).
    direct: Option<(DirectSocket, RawFd)>,
    /// The socket task is idle with nothing of its own queued or being written: the hub
    /// task may write to `direct` now. Only the socket task sets it; anything that gives
    /// the socket task work clears it.
    direct_ok: bool,
    /// Data arrived while `direct_ok`: the hub task has this outbox on its list to write.
    direct_due: bool,
    /// Bytes the hub task wrote and has not reported to the hub yet (the socket task
    /// takes over the count when it reclaims).
    direct_unreported: Unreported,
}

/// Hub bytes written to a socket but not reported to the hub yet. Both writers (the
/// socket task and the hub task's direct writes) report in lumps of at least
/// `socket::flush_report_min`, so the hub's command load does not follow every write.
#[derive(Debug, Default)]
pub(crate) struct Unreported(usize);

impl Unreported {
    /// Counts `bytes` written; returns what to report now (0 while under `min`).
    pub(crate) fn add(&mut self, bytes: usize, min: usize) -> usize {
        self.0 += bytes;
        if self.0 >= min {
            mem::take(&mut self.0)
        } else {
            0
        }
    }

    /// Takes over a count the other writer held back.
    pub(crate) fn absorb(&mut self, other: Unreported) {
        self.0 += other.0;
    }
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
            // Most outboxes only ever hold one piece at a time (a member's burst): room
            // for exactly one, kept across direct writes, costs no allocation per burst.
            self.sealed.reserve_exact(1);
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

/// An outbox the hub task is to write itself once its batch is done ([`OutboxTx::frame`]
/// hands it out once per batch): kept on the task's list without a second lookup by id.
#[derive(Debug)]
pub(crate) struct Due(Arc<Mutex<Pending>>);

/// What one direct write did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Written {
    /// Bytes the socket took (for metrics).
    pub(crate) bytes: usize,
    /// Bytes to report to the hub now (`Hub::handle_flushed`): 0 until at least
    /// `report_min` accumulated.
    pub(crate) report: usize,
}

/// What the socket task takes over from the hub task ([`OutboxRx::reclaim`]).
#[derive(Debug, Default)]
pub(crate) struct Reclaimed {
    /// The rest of a message the hub task left partly written: it leaves before anything
    /// else.
    pub(crate) tail: Option<Bytes>,
    /// Hub bytes the hub task wrote and did not report yet: the socket task reports them.
    pub(crate) unreported: Unreported,
}

impl OutboxTx {
    /// Queues one hub message. `Some`: the socket task is idle and was not woken; the
    /// hub task writes this outbox itself with [`Due::write`] once its batch is done (it
    /// is handed out once per batch).
    pub(crate) fn frame(&self, msg: &Outgoing) -> Option<Due> {
        self.data(
            msg.wire_len(),
            || Piece::Frame(msg.clone()),
            |b| b.push(msg),
        )
    }

    /// Queues a coalesced room burst; `Some` as for [`OutboxTx::frame`].
    pub(crate) fn frames(&self, frames: &Frames) -> Option<Due> {
        self.data(
            frames.wire_len(),
            || Piece::Frames(frames.clone()),
            |b| b.push_frames(frames),
        )
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
    ) -> Option<Due> {
        let waker = {
            let mut p = lock(&self.0);
            if p.socket_gone || p.close.is_some() {
                return None;
            }
            p.push_data(len, shared, copy);
            if p.direct_ok {
                // Left for the hub task's write at the end of its batch.
                let listed = mem::replace(&mut p.direct_due, true);
                return (!listed).then(|| Due(self.0.clone()));
            }
            p.waker.take()
        };
        if let Some(w) = waker {
            w.wake();
        }
        None
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

impl Due {
    /// Writes what is queued straight to the socket, if the socket task is still idle.
    /// What the socket did not take stays first in line, and the socket task is woken to
    /// finish it. Written bytes are reported to the hub in lumps of at least
    /// `report_min`, like the socket task's (`Written::report`).
    pub(crate) fn write(self, report_min: usize) -> Written {
        let (written, waker) = {
            let mut p = lock(&self.0);
            p.direct_due = false;
            if !p.direct_ok || p.socket_gone || p.is_data_empty() {
                return Written::default();
            }
            let Some((_, fd)) = p.direct else {
                return Written::default();
            };
            if !p.open.is_empty() {
                let batch = mem::take(&mut p.open);
                p.sealed.push(Piece::Batch(batch));
            }
            // SAFETY: `p.direct` holds the write half, so the descriptor stays open while
            // the lock is held; and nothing else writes to it meanwhile: `direct_ok` says
            // the socket task is idle, and it takes the turn back only under this lock
            // (`OutboxRx::reclaim`).
            let fd = unsafe { BorrowedFd::borrow_raw(fd) };
            let socket = socket2::SockRef::from(&fd);
            let result = if let [one] = &p.sealed[..] {
                socket.send(one.as_slice())
            } else {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let n = p.sealed.len().min(MAX_IOV);
                for (slot, piece) in slices.iter_mut().zip(&p.sealed) {
                    *slot = IoSlice::new(piece.as_slice());
                }
                socket.send_vectored(&slices[..n])
            };
            // Full or failing (the socket task finds out on its own write): nothing went.
            let bytes = result.unwrap_or(0);
            let mut left = bytes;
            let whole = p
                .sealed
                .iter()
                .take_while(|piece| {
                    let len = piece.as_slice().len();
                    let taken = left >= len;
                    if taken {
                        left -= len;
                    }
                    taken
                })
                .count();
            // Drained in place: the list keeps its room for the next batch.
            p.sealed.drain(..whole);
            let report = p.direct_unreported.add(bytes, report_min);
            let written = Written { bytes, report };
            if p.sealed.is_empty() {
                // All of it: the socket task sleeps on.
                return written;
            }
            if left > 0 {
                let first = mem::replace(&mut p.sealed[0], Piece::Tail(Bytes::new()));
                p.sealed[0] = Piece::Tail(first.rest(left));
            }
            p.direct_ok = false;
            (written, p.waker.take())
        };
        if let Some(w) = waker {
            w.wake();
        }
        written
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
        let fd = (*socket).as_ref().as_raw_fd();
        lock(&self.0).direct = Some((socket, fd));
    }

    /// Takes the socket back from the hub task before the socket task writes anything of
    /// its own, with what the hub task leaves to it.
    pub(crate) fn reclaim(&self) -> Reclaimed {
        let mut p = lock(&self.0);
        p.direct_ok = false;
        let unreported = mem::take(&mut p.direct_unreported);
        let tail = match p.sealed.first() {
            Some(Piece::Tail(_)) => match p.sealed.remove(0) {
                Piece::Tail(b) => Some(b),
                _ => unreachable!("matched above"),
            },
            _ => None,
        };
        Reclaimed { tail, unreported }
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
        assert!(tx.frame(&a).is_none(), "not the hub end's turn");
        assert_eq!(wakes.0.load(Ordering::SeqCst), 1);
        let t = take_now(&mut rx);
        assert_eq!(concat(&t), a.frame().to_vec());

        // Idle: listed once for the batch, then written in one go, nobody woken. Bytes
        // are reported once enough accumulated.
        let report_min = a.wire_len() + b.wire_len() + 1;
        assert!(rx.poll_take(&mut cx, true).is_pending());
        let due = tx.frame(&b).expect("due for a direct write");
        assert!(tx.frame(&a).is_none(), "already listed for this batch");
        let mut want = b.frame().to_vec();
        want.extend_from_slice(a.frame());
        let first = Written {
            bytes: want.len(),
            report: 0,
        };
        assert_eq!(due.write(report_min), first);
        assert_eq!(
            wakes.0.load(Ordering::SeqCst),
            1,
            "no wake for direct writes"
        );
        assert_eq!(read_exactly(&mut peer, want.len()).await, want);
        // The next batch is listed again.
        let due = tx.frame(&a).expect("listed again");
        let second = Written {
            bytes: a.wire_len(),
            report: want.len() + a.wire_len(),
        };
        assert_eq!(due.write(report_min), second);
        assert_eq!(
            read_exactly(&mut peer, a.wire_len()).await,
            a.frame().to_vec()
        );

        // Reclaimed by the socket task: what is pending waits for it, not for the hub
        // end, and the bytes written but not reported yet are the socket task's to report.
        let due = tx.frame(&b).expect("listed");
        assert_eq!(due.write(usize::MAX).report, 0);
        let due = tx.frame(&a).expect("listed");
        let back = rx.reclaim();
        assert_eq!(back.tail, None);
        assert_eq!(back.unreported.0, b.wire_len());
        assert_eq!(due.write(1), Written::default());
        assert_eq!(concat(&take_now(&mut rx)), a.frame().to_vec());
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
            let n = tx.frame(m).expect("idle").write(1).bytes;
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
        assert!(tx.frame(&small).is_none());
        let rest = rx.reclaim().tail;
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
