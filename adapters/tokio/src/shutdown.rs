//! The server-wide "shutting down" flag that echo-mode sockets (which have no hub to
//! tell them) wait on.
//!
//! A socket task polls its wait on every wake-up, once per message under load, so the
//! poll must cost an atomic load and nothing more: tokio's `Notify` and `watch` take a
//! mutex on every poll of a pending wait. Here the lock is taken only when a wait is
//! registered or its waker changes, and once by the shutdown itself.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::task::{Context, Poll, Waker};

use slab::Slab;

/// Set once by [`ShutdownFlag::trigger`]; every [`ShutdownWait`] then completes.
#[derive(Debug, Default)]
pub(crate) struct ShutdownFlag {
    down: AtomicBool,
    waiters: Mutex<Slab<Waker>>,
}

impl ShutdownFlag {
    /// Flips the flag and wakes every registered wait.
    pub(crate) fn trigger(&self) {
        self.down.store(true, Ordering::Release);
        let waiters = std::mem::take(&mut *self.lock());
        for (_, waker) in waiters {
            waker.wake();
        }
    }

    /// A wait that completes once the flag is set (at once if it already is).
    pub(crate) fn wait(self: &Arc<Self>) -> ShutdownWait {
        ShutdownWait {
            flag: self.clone(),
            slot: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Slab<Waker>> {
        // A waker that panicked while being stored leaves nothing half-done in a slab.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// Completes once the server shuts down.
#[derive(Debug)]
pub(crate) struct ShutdownWait {
    flag: Arc<ShutdownFlag>,
    /// The registered waker: its slab key and a copy to compare against without a lock.
    slot: Option<(usize, Waker)>,
}

impl Future for ShutdownWait {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.flag.down.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if matches!(&self.slot, Some((_, w)) if w.will_wake(cx.waker())) {
            return Poll::Pending;
        }
        let this = &mut *self;
        let mut waiters = this.flag.lock();
        // Checked again under the lock: `trigger` sets the flag before taking it, so a
        // wait registered after the wake-up round sees the flag here.
        if this.flag.down.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        let waker = cx.waker().clone();
        match &mut this.slot {
            // `trigger` may have emptied the slab: the key is only ours if still present.
            Some((key, w)) if waiters.contains(*key) => {
                waiters[*key] = waker.clone();
                *w = waker;
            }
            slot => *slot = Some((waiters.insert(waker.clone()), waker)),
        }
        Poll::Pending
    }
}

impl Drop for ShutdownWait {
    fn drop(&mut self) {
        if let Some((key, _)) = self.slot.take() {
            if !self.flag.down.load(Ordering::Acquire) {
                let mut waiters = self.flag.lock();
                if waiters.contains(key) {
                    waiters.remove(key);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn a_pending_wait_completes_on_trigger_and_later_waits_at_once() {
        let flag = Arc::new(ShutdownFlag::default());
        let mut waits: Vec<_> = (0..3).map(|_| tokio::spawn(flag.wait())).collect();
        // Dropped waits give their slot back.
        drop(flag.wait());
        tokio::task::yield_now().await;
        assert!(!waits[0].is_finished());
        flag.trigger();
        for w in waits.drain(..) {
            tokio::time::timeout(Duration::from_secs(5), w)
                .await
                .expect("woken")
                .unwrap();
        }
        assert!(flag.lock().is_empty());
        tokio::time::timeout(Duration::from_secs(5), flag.wait())
            .await
            .expect("already down");
    }

    #[tokio::test]
    async fn dropping_a_registered_wait_frees_its_slot() {
        let flag = Arc::new(ShutdownFlag::default());
        let mut w = flag.wait();
        let waker = futures_util::task::noop_waker();
        let mut cx = Context::from_waker(&waker);
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        assert!(Pin::new(&mut w).poll(&mut cx).is_pending());
        assert_eq!(flag.lock().len(), 1);
        drop(w);
        assert!(flag.lock().is_empty());
    }
}
