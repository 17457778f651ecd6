//! The task that owns the [`Hub`], and [`Roomcast`], the handle everything else uses to
//! reach it.
//!
//! The hub is a plain `&mut self` state machine, so exactly one task owns it and others
//! talk to it through a bounded command channel: no lock is ever held around routing, and
//! the bound turns an overloaded hub into TCP backpressure on the clients instead of
//! unbounded memory. The task drains every ready command (up to a batch) before it
//! re-arms its single timer, and appends each `Output::Send` to the receiver's outbox
//! (`crate::outbox`): a room message is encoded once, whatever the room size, and a burst
//! wakes each receiver once. On a one-thread runtime the task writes the outboxes of idle
//! receivers itself once the batch is done, instead of waking them at all.

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use roomcast_core::connection::TextMessage;
use roomcast_core::handshake::ServerPolicy;
use roomcast_core::hub::{
    ConnId, ConnectError, ConnectRequest, DisconnectReason, Event, Hub, Output, Stats,
};
use tokio::sync::{broadcast, mpsc, oneshot, Notify};
use tracing::{debug, error, info, trace};

use crate::clock::Clock;
use crate::config::{Config, BENCH_ROOM};
use crate::metrics::Metrics;
use crate::outbox::{outbox, Due, OutboxRx, OutboxTx};
use crate::shutdown::ShutdownFlag;
use crate::socket::{self, SocketParams};
use crate::statics::StaticFiles;

/// Commands queued for the hub before a sender waits (backpressure past this).
const COMMAND_QUEUE: usize = 16 * 1024;
/// Most commands handled per wake-up before timers get a look.
const BATCH: usize = 1024;
/// Hub events buffered per [`Roomcast::subscribe_events`] receiver before it lags.
const EVENT_QUEUE: usize = 1024;

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
    Call(Box<dyn FnOnce(&mut Hub) + Send>),
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

/// Why [`Roomcast::call`] returned no result.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError {
    /// The hub task is gone (the runtime is shutting down).
    #[error("the roomcast hub task has stopped")]
    Stopped,
    /// The closure panicked; the hub stays usable (every hub method leaves it consistent).
    #[error("the closure passed to Roomcast::call panicked")]
    Panicked,
}

/// Hashes a [`ConnId`] with one multiply: ids are assigned by the hub, never by a peer,
/// so there is nothing to defend against and SipHash would only cost time per send.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }
    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0 ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

type ConnMap = HashMap<ConnId, OutboxTx, BuildHasherDefault<IdHasher>>;

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

    async fn wait_idle(&self) {
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

/// What every clone of a [`Roomcast`] shares.
pub(crate) struct Shared {
    pub(crate) commands: mpsc::Sender<Command>,
    pub(crate) config: Config,
    pub(crate) policy: ServerPolicy,
    /// What every socket task shares: one copy, not one per connection.
    pub(crate) socket_params: Arc<SocketParams>,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) sockets: Arc<SocketTracker>,
    pub(crate) events: broadcast::Sender<Event>,
    /// Set on shutdown; echo-mode sockets (which have no hub) wait on it.
    pub(crate) shutdown: Arc<ShutdownFlag>,
    pub(crate) statics: Option<StaticFiles>,
}

/// A running roomcast hub and the handle to everything around it.
///
/// Cheap to clone (an `Arc`); every clone talks to the same hub task. Mount
/// [`Roomcast::ws_handler`] on a route of your own router, or serve everything
/// (WebSocket endpoint, static files, `/healthz`, `/metrics`) with
/// [`Roomcast::service`]; run server-side operations with [`Roomcast::call`].
#[derive(Clone)]
pub struct Roomcast {
    pub(crate) shared: Arc<Shared>,
}

impl std::fmt::Debug for Roomcast {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Roomcast")
            .field("ws_path", &self.shared.config.ws_path)
            .field("echo", &self.shared.config.echo)
            .field("sockets", &self.shared.sockets.count())
            .finish()
    }
}

impl Roomcast {
    /// Starts the hub task on the current tokio runtime.
    ///
    /// The hub is seeded from the OS random source (hash-flooding resistance, and room
    /// epochs that differ across restarts so clients notice lost history).
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn new(config: Config) -> Roomcast {
        let mut seed = [0u8; 32];
        if let Err(e) = getrandom::fill(&mut seed) {
            // Only costs flooding resistance and epoch uniqueness; the time keeps epochs
            // distinct across restarts.
            error!("OS random source failed ({e}); seeding the hub from the time");
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or_default();
            seed[..16].copy_from_slice(&t.to_le_bytes());
        }
        let clock = Clock::new();
        // This task calls `Hub::flush` after every batch of commands, and the socket
        // tasks write frames themselves: room bursts can be coalesced.
        let hub_config = roomcast_core::hub::HubConfig {
            coalesce_room_messages: true,
            ..config.hub.clone()
        };
        let hub = Hub::new(hub_config, seed, clock.now());
        let (commands, rx) = mpsc::channel(COMMAND_QUEUE);
        let (events, _) = broadcast::channel(EVENT_QUEUE);
        let statics = config.www.as_deref().map(StaticFiles::new);
        let metrics = Arc::new(Metrics::default());
        let socket_params = Arc::new(SocketParams {
            conn_config: config.connection_config(),
            metrics: metrics.clone(),
            close_timeout: config.close_timeout,
            activity_every: socket::activity_every(&config.hub),
            flush_report_min: socket::flush_report_min(&config.hub),
            direct_writes: tokio::runtime::Handle::current().runtime_flavor()
                == tokio::runtime::RuntimeFlavor::CurrentThread,
        });
        let shared = Arc::new(Shared {
            commands,
            policy: config.policy(),
            socket_params,
            config,
            metrics,
            sockets: Arc::new(SocketTracker::default()),
            events: events.clone(),
            shutdown: Arc::default(),
            statics,
        });
        tokio::spawn(run_hub(hub, rx, clock, events, shared.metrics.clone()));
        Roomcast { shared }
    }

    /// The configuration this instance runs with.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// Runs `f` on the hub task with exclusive access to the [`Hub`] and returns its
    /// result: the whole server-side API (`send_to_room`, `send_to_channel`,
    /// `send_to_user`, `broadcast`, `create_room`, `create_channel`, `link_room`, `join`,
    /// `disconnect`, `stats`, ...) from your own handlers, with no lock. Outputs the
    /// closure causes are routed right after it returns. Keep it short: every connection
    /// waits while it runs.
    pub async fn call<R, F>(&self, f: F) -> Result<R, CallError>
    where
        F: FnOnce(&mut Hub) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |hub: &mut Hub| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(hub))) {
                Ok(r) => {
                    let _ = tx.send(Ok(r));
                }
                Err(_) => {
                    error!("a Roomcast::call closure panicked");
                    let _ = tx.send(Err(CallError::Panicked));
                }
            }
        });
        self.shared
            .commands
            .send(Command::Call(job))
            .await
            .map_err(|_| CallError::Stopped)?;
        rx.await.map_err(|_| CallError::Stopped)?
    }

    /// The hub's counts and counters.
    pub async fn stats(&self) -> Result<Stats, CallError> {
        self.call(|hub| hub.stats()).await
    }

    /// The Prometheus text exposition of the hub's stats and the adapter's counters
    /// (what `GET /metrics` serves), for apps that expose metrics on their own route.
    pub async fn metrics_text(&self) -> Result<String, CallError> {
        let stats = self.stats().await?;
        Ok(self
            .shared
            .metrics
            .render(&stats, self.shared.sockets.count()))
    }

    /// Hub events (connections, joins, deliveries, refusals) as they happen. A receiver
    /// that falls more than 1024 events behind loses the oldest (`RecvError::Lagged`);
    /// events cost nothing while nobody subscribes.
    pub fn subscribe_events(&self) -> broadcast::Receiver<Event> {
        self.shared.events.subscribe()
    }

    /// WebSocket tasks currently running (closing ones included).
    pub fn open_sockets(&self) -> usize {
        self.shared.sockets.count()
    }

    /// Whether the hub task is still running (what `/healthz` reports).
    pub fn is_running(&self) -> bool {
        !self.shared.commands.is_closed()
    }

    /// Graceful shutdown: refuses new connections (503), closes every connection with
    /// 1001 after flushing what is queued for it, and waits up to
    /// `Config::shutdown_timeout` for the sockets to finish. Returns `true` if every
    /// socket finished in time. Stop accepting TCP connections before calling it.
    pub async fn shutdown(&self) -> bool {
        self.shared.shutdown.trigger();
        let (done, wait) = oneshot::channel();
        if self
            .shared
            .commands
            .send(Command::Shutdown { done })
            .await
            .is_ok()
        {
            let _ = wait.await;
        }
        tokio::time::timeout(
            self.shared.config.shutdown_timeout,
            self.shared.sockets.wait_idle(),
        )
        .await
        .is_ok()
    }

    /// Admits a connection at the hub (before the 101 is sent, so refusals become HTTP
    /// errors).
    pub(crate) async fn connect(&self, req: ConnectRequest) -> Result<Registered, ConnectRefused> {
        let (reply, rx) = oneshot::channel();
        self.shared
            .commands
            .send(Command::Connect { req, reply })
            .await
            .map_err(|_| ConnectRefused::Stopped)?;
        rx.await.map_err(|_| ConnectRefused::Stopped)?
    }
}

/// The hub task's state besides the hub itself.
struct HubTask {
    hub: Hub,
    clock: Clock,
    conns: ConnMap,
    events: broadcast::Sender<Event>,
    /// Outboxes this task writes itself at the end of the batch (`OutboxTx::frames`).
    direct_due: Vec<(ConnId, Due)>,
    /// Counts the bytes this task writes to sockets itself.
    metrics: Arc<Metrics>,
    /// Directly written bytes are reported to the hub in lumps of this much, as the
    /// socket tasks report theirs (`socket::flush_report_min`).
    flush_report_min: usize,
    shutting_down: bool,
}

async fn run_hub(
    hub: Hub,
    mut commands: mpsc::Receiver<Command>,
    clock: Clock,
    events: broadcast::Sender<Event>,
    metrics: Arc<Metrics>,
) {
    let mut task = HubTask {
        flush_report_min: socket::flush_report_min(hub.config()),
        hub,
        clock,
        conns: ConnMap::default(),
        events,
        direct_due: Vec::new(),
        metrics,
        shutting_down: false,
    };
    let mut batch = Vec::with_capacity(BATCH);
    // One timer for the whole hub, re-armed only when the hub's next deadline changes.
    let sleep = tokio::time::sleep_until(clock.instant(roomcast_core::Timestamp(0)));
    tokio::pin!(sleep);
    let mut armed = None;
    loop {
        let next = task.hub.poll_timeout();
        if next != armed {
            if let Some(t) = next {
                sleep.as_mut().reset(clock.instant(t));
            }
            armed = next;
        }
        tokio::select! {
            n = commands.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    break;
                }
                for cmd in batch.drain(..) {
                    task.handle(cmd);
                    task.route();
                }
                // The batch is over: room messages held for it go out as one burst per
                // member.
                task.hub.flush();
                task.route();
                task.write_direct();
            }
            () = &mut sleep, if armed.is_some() => {
                // Fired: whatever the next deadline is, the timer must be re-armed.
                armed = None;
                let now = clock.now();
                task.hub.handle_timeout(now);
                task.route();
                task.write_direct();
            }
        }
    }
    debug!("hub task stopped: every handle and socket is gone");
}

impl HubTask {
    fn handle(&mut self, cmd: Command) {
        let now = self.clock.now();
        let hub = &mut self.hub;
        // `Err` from the hub here only means the connection is already gone (closed by
        // the hub and freed after its grace period): nothing to do.
        match cmd {
            Command::Text { conn, text } => {
                let _ = hub.handle_text(now, conn, text.as_str());
            }
            Command::BenchText { conn, text } => {
                // The tiny protocol: `sub` joins the one room, anything else goes to its
                // members as it is. Liveness is counted as for a JSON request.
                let _ = hub.handle_activity(now, conn);
                let _ = match text.as_str() {
                    "sub" => hub.join(conn, BENCH_ROOM, false),
                    // Nobody subscribed yet: the room does not exist, nothing to deliver.
                    t => hub.send_raw_to_room(BENCH_ROOM, t, &[]).map(drop),
                };
            }
            Command::Flushed { conn, bytes } => {
                let _ = hub.handle_flushed(conn, bytes);
            }
            Command::Activity { conn } => {
                let _ = hub.handle_activity(now, conn);
            }
            Command::Binary { conn, len } => {
                let _ = hub.handle_binary(now, conn, len);
            }
            Command::Disconnect { conn, reason } => {
                trace!(%conn, reason = reason.as_str(), "socket gone");
                let _ = hub.handle_disconnect(now, conn, reason);
                self.conns.remove(&conn);
            }
            Command::Connect { req, reply } => {
                if self.shutting_down {
                    let _ = reply.send(Err(ConnectRefused::ShuttingDown));
                    return;
                }
                match hub.connect(now, req) {
                    Ok(conn) => {
                        let (tx, rx) = outbox();
                        self.conns.insert(conn, tx);
                        if reply.send(Ok(Registered { conn, rx })).is_err() {
                            // The HTTP request went away before the answer: undo.
                            self.conns.remove(&conn);
                            let _ = hub.handle_disconnect(
                                now,
                                conn,
                                DisconnectReason::Closed { code: Some(1006) },
                            );
                        }
                    }
                    Err(e) => {
                        let _ = reply.send(Err(ConnectRefused::Hub(e)));
                    }
                }
            }
            Command::Call(f) => {
                // Brings the hub's clock up to date (and runs anything already due), so
                // server-side sends are stamped with the current time.
                hub.handle_timeout(now);
                f(hub);
            }
            Command::Shutdown { done } => {
                if !self.shutting_down {
                    info!(
                        connections = hub.stats().connections,
                        "shutting down: closing every connection with 1001"
                    );
                }
                self.shutting_down = true;
                hub.shutdown();
                let _ = done.send(());
            }
        }
    }

    /// Writes the outboxes of idle sockets that received something in this batch (one
    /// write each, whatever the batch held), and accounts for the bytes as the socket task
    /// does for its own writes.
    fn write_direct(&mut self) {
        let mut due = std::mem::take(&mut self.direct_due);
        let mut bytes = 0;
        for (conn, outbox) in due.drain(..) {
            // A connection closed since is no longer idle: its write does nothing.
            let written = outbox.write(self.flush_report_min);
            bytes += written.bytes;
            if written.report > 0 {
                let _ = self.hub.handle_flushed(conn, written.report);
            }
        }
        if bytes > 0 {
            self.metrics.written(bytes);
        }
        self.direct_due = due;
    }

    /// Drains the hub's outputs to the socket queues.
    fn route(&mut self) {
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    if let Some(due) = self.conns.get(&conn).and_then(|tx| tx.frame(&msg)) {
                        self.direct_due.push((conn, due));
                    }
                }
                Output::SendFrames { conn, frames } => {
                    if let Some(due) = self.conns.get(&conn).and_then(|tx| tx.frames(&frames)) {
                        self.direct_due.push((conn, due));
                    }
                }
                Output::Ping { conn } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        tx.ping();
                    }
                }
                Output::Close { conn, code, reason } => {
                    // Nothing follows a close: the outbox ignores anything after it.
                    if let Some(tx) = self.conns.remove(&conn) {
                        tx.close(code, reason);
                    }
                }
                Output::Event(event) => {
                    if let Event::Disconnected { conn, reason, .. } = &event {
                        debug!(%conn, reason = reason.as_str(), "disconnected");
                    }
                    if self.events.receiver_count() > 0 {
                        let _ = self.events.send(event);
                    }
                }
                Output::Forward(_) => {
                    // Only produced with `HubConfig::backplane`, which needs a backplane
                    // this adapter does not have yet.
                    trace!("dropping a backplane forward: no backplane configured");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::hub::RoomOptions;

    #[tokio::test]
    async fn call_runs_on_the_hub_and_survives_a_panic() {
        let rc = Roomcast::new(Config::default());
        rc.call(|hub| hub.create_room("lobby", RoomOptions::default()))
            .await
            .unwrap()
            .unwrap();
        let panicked = rc.call(|_hub| -> () { panic!("boom") }).await;
        assert_eq!(panicked, Err(CallError::Panicked));
        let rooms = rc
            .call(|hub| hub.rooms().map(str::to_owned).collect::<Vec<_>>())
            .await
            .unwrap();
        assert_eq!(rooms, ["lobby"]);
        assert!(rc.is_running());
        assert!(rc
            .metrics_text()
            .await
            .unwrap()
            .contains("roomcast_rooms 1\n"));
    }

    #[tokio::test(start_paused = true)]
    async fn admission_events_and_shutdown() {
        let mut config = Config::default();
        config.hub.max_connections = 1;
        let rc = Roomcast::new(config);
        let mut events = rc.subscribe_events();
        let req = ConnectRequest {
            user: Some("ada".into()),
            ..ConnectRequest::default()
        };
        let mut reg = rc.connect(req.clone()).await.unwrap();
        let welcome = reg.rx.take(false).await;
        assert_eq!(welcome.pieces.len(), 1, "welcome");
        assert!(matches!(
            events.recv().await,
            Ok(Event::Connected { user: Some(u), .. }) if &*u == "ada"
        ));
        assert_eq!(
            rc.connect(req).await.err(),
            Some(ConnectRefused::Hub(ConnectError::Full))
        );
        // Shutdown closes the connection with 1001 and refuses newcomers; with no socket
        // task running, it returns at once.
        assert!(rc.shutdown().await);
        let last = reg.rx.take(false).await;
        assert!(matches!(last.close, Some((1001, _))));
        assert!(last.is_final(), "nothing follows a close");
        assert_eq!(
            rc.connect(ConnectRequest::default()).await.err(),
            Some(ConnectRefused::ShuttingDown)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_timer_drives_heartbeat_pings_and_reaping() {
        let mut config = Config::default();
        config.hub.heartbeat = crate::config::heartbeat_for(
            std::time::Duration::from_millis(200),
            std::time::Duration::from_millis(200),
        );
        let rc = Roomcast::new(config);
        let mut reg = rc.connect(ConnectRequest::default()).await.unwrap();
        assert_eq!(reg.rx.take(false).await.pieces.len(), 1, "welcome");
        // With the clock paused, tokio jumps straight to the hub's deadlines.
        assert!(reg.rx.take(false).await.ping);
        assert!(matches!(reg.rx.take(false).await.close, Some((1001, _))));
        assert_eq!(rc.stats().await.unwrap().heartbeat_timeouts, 1);
    }
}
