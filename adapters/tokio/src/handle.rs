//! [`Roomcast`], the handle to a running hub, and what every clone of it shares.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use roomcast_core::handshake::ServerPolicy;
use roomcast_core::hub::{ConnectRequest, Event, Hub, Stats};
use roomcast_core::Timestamp;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::error;

use crate::clock::Clock;
use crate::commands::{Command, ConnectRefused, Registered, SocketTracker};
use crate::config::Config;
use crate::hub_task::{run_hub, COMMAND_QUEUE, EVENT_QUEUE};
use crate::metrics::Metrics;
use crate::redis_backplane;
use crate::shutdown::ShutdownFlag;
use crate::socket::{self, SocketParams};
use crate::statics::StaticFiles;

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
        // Tokens' `exp` is read on the hub's clock: anchor it to the wall time now.
        let clock_unix_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let hub_config = roomcast_core::hub::HubConfig {
            coalesce_room_messages: true,
            clock_unix_ms,
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
        let hooks = shared
            .config
            .hooks
            .clone()
            .map(|h| (h.0, shared.commands.downgrade()));
        let backplane = shared.config.redis.as_ref().and_then(|r| {
            redis_backplane::start(r, &shared.config.hub, shared.commands.downgrade())
                .map_err(|e| error!("--redis {}: {e}; running without a backplane", r.url))
                .ok()
        });
        tokio::spawn(run_hub(
            hub,
            rx,
            clock,
            events,
            shared.metrics.clone(),
            (hooks, backplane),
        ));
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
        F: FnOnce(&mut Hub, Timestamp) -> R + Send + 'static,
        R: Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job = Box::new(move |hub: &mut Hub, now: Timestamp| {
            match std::panic::catch_unwind(AssertUnwindSafe(|| f(hub, now))) {
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
        self.call(|hub, _| hub.stats()).await
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
