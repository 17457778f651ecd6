//! What the rest of the adapter asks of the hub task, and the small types around it:
//! the command vocabulary, what an admitted connection gets back, and the count of
//! running socket tasks a shutdown waits for.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomcast_core::connection::TextMessage;
use roomcast_core::hub::{
    Answer, ConnId, ConnectError, ConnectRequest, DisconnectReason, Hub, Ticket,
};
use roomcast_core::Timestamp;
use tokio::sync::{oneshot, Notify};

use crate::outbox::OutboxRx;

/// A closure run on the hub task with the hub and the current time.
pub(crate) type HubJob = Box<dyn FnOnce(&mut Hub, Timestamp) + Send>;

/// What a socket task asks of the hub.
pub(crate) enum Command {
    Connect {
        req: ConnectRequest,
        reply: oneshot::Sender<Result<Registered, ConnectRefused>>,
    },
    Text {
        conn: ConnId,
        text: TextMessage,
    },
    /// A message on the benchmark protocol's room socket (`Config::bench_protocol`).
    BenchText {
        conn: ConnId,
        text: TextMessage,
    },
    Binary {
        conn: ConnId,
        len: usize,
    },
    Activity {
        conn: ConnId,
    },
    Flushed {
        conn: ConnId,
        bytes: usize,
    },
    Disconnect {
        conn: ConnId,
        reason: DisconnectReason,
    },
    /// A closure from [`crate::Roomcast::call`], given the hub and the current time.
    Call(HubJob),
    /// The Redis backplane answered or published something.
    Backplane(crate::redis_backplane::BackplaneInput),
    /// The application answered a parked request.
    Decided {
        ticket: Ticket,
        answer: Answer,
    },
    Shutdown {
        done: oneshot::Sender<()>,
    },
}

/// An admitted connection: its id and the queue of what to send it.
pub(crate) struct Registered {
    pub(crate) conn: ConnId,
    pub(crate) rx: OutboxRx,
}

/// Why the hub task did not admit a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ConnectRefused {
    Hub(ConnectError),
    ShuttingDown,
    Stopped,
}

/// Counts running socket tasks so a shutdown can wait for the last one.
#[derive(Debug, Default)]
pub(crate) struct SocketTracker {
    count: AtomicUsize,
    idle: Notify,
}

/// Held by a socket task for its whole life.
pub(crate) struct SocketGuard(Arc<SocketTracker>);

impl SocketTracker {
    pub(crate) fn enter(self: &Arc<Self>) -> SocketGuard {
        self.count.fetch_add(1, Ordering::SeqCst);
        SocketGuard(self.clone())
    }

    pub(crate) fn count(&self) -> usize {
        self.count.load(Ordering::SeqCst)
    }

    pub(crate) async fn wait_idle(&self) {
        loop {
            let notified = self.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for SocketGuard {
    fn drop(&mut self) {
        if self.0.count.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}
