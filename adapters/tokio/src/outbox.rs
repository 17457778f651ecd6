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
//! - the lock is held for an append or a swap, never across I/O, and the two sides are
//!   one producer (the hub task) and one consumer (the socket task).

use std::borrow::Cow;
use std::mem;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use roomcast_core::{FrameBatch, Frames, Outgoing};

/// Messages up to this size are copied into the receiver's batch; larger ones are shared.
/// Around here one `memcpy` costs what the refcount traffic of a shared frame does.
const COPY_MAX: usize = 2048;

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
}

impl Piece {
    #[cfg(test)]
    pub(crate) fn bytes(&self) -> bytes::Bytes {
        match self {
            Piece::Batch(b) => b.clone().into_bytes(),
            Piece::Frame(f) => f.frame().clone(),
            Piece::Frames(f) => f.bytes().clone(),
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
    /// Queues one hub message.
    pub(crate) fn frame(&self, msg: &Outgoing) {
        self.update(|p| {
            p.push_data(
                msg.wire_len(),
                || Piece::Frame(msg.clone()),
                |b| b.push(msg),
            )
        });
    }

    /// Queues a coalesced room burst.
    pub(crate) fn frames(&self, frames: &Frames) {
        self.update(|p| {
            p.push_data(
                frames.wire_len(),
                || Piece::Frames(frames.clone()),
                |b| b.push_frames(frames),
            )
        });
    }

    /// Asks for a protocol ping.
    pub(crate) fn ping(&self) {
        self.update(|p| p.ping = true);
    }

    /// Asks for a close after what is queued; ends this end.
    pub(crate) fn close(self, code: u16, reason: Cow<'static, str>) {
        self.update(|p| p.close = Some((code, reason)));
    }

    fn update(&self, f: impl FnOnce(&mut Pending)) {
        let waker = {
            let mut p = lock(&self.0);
            if p.socket_gone || p.close.is_some() {
                return;
            }
            f(&mut p);
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
    /// Takes everything pending, or registers to be woken when something arrives.
    pub(crate) fn poll_take(&mut self, cx: &mut Context<'_>) -> Poll<Taken> {
        let mut p = lock(&self.0);
        if p.is_empty() {
            match &p.waker {
                Some(w) if w.will_wake(cx.waker()) => {}
                _ => p.waker = Some(cx.waker().clone()),
            }
            return Poll::Pending;
        }
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

    /// Waits for and takes everything pending.
    pub(crate) async fn take(&mut self) -> Taken {
        std::future::poll_fn(|cx| self.poll_take(cx)).await
    }
}

impl Drop for OutboxRx {
    fn drop(&mut self) {
        let mut p = lock(&self.0);
        p.socket_gone = true;
        p.sealed = Vec::new();
        p.open = FrameBatch::default();
        p.waker = None;
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
        assert!(rx.poll_take(&mut cx).is_pending());
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
        let Poll::Ready(t) = rx.poll_take(&mut cx) else {
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
        assert!(rx.poll_take(&mut cx).is_pending());
        tx.frame(&small[3]);
        tx.close(1001, "bye".into());
        assert_eq!(wakes.0.load(Ordering::SeqCst), 2);
        let Poll::Ready(t) = rx.poll_take(&mut cx) else {
            panic!("pending")
        };
        assert_eq!(concat(&t), small[3].frame().to_vec());
        assert_eq!(t.close, Some((1001, "bye".into())));
        assert!(t.is_final());
        assert!(
            rx.poll_take(&mut cx).is_pending(),
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

    fn take_now(rx: &mut OutboxRx) -> Taken {
        let waker = Waker::noop();
        match rx.poll_take(&mut Context::from_waker(waker)) {
            Poll::Ready(t) => t,
            Poll::Pending => panic!("pending"),
        }
    }
}
