//! Server settings: the hub's (limits, heartbeat, history) plus what only a native server
//! has (origins, static files, echo mode, handshake, close and shutdown bounds).

use std::path::PathBuf;
use std::time::Duration;

use roomcast_core::connection::ConnectionConfig;
use roomcast_core::handshake::ServerPolicy;
use roomcast_core::hub::{HeartbeatConfig, HubConfig};

/// The room of the benchmark protocol ([`Config::bench_protocol`]).
pub const BENCH_ROOM: &str = "bench";

/// The subprotocol roomcast offers; clients that ask for nothing are accepted too.
pub const SUBPROTOCOL: &str = "roomcast.v1";

/// Everything a [`crate::Roomcast`] or [`crate::Server`] can be told.
///
/// `Default` gives the PROTOCOL.md defaults, the `/ws` endpoint and no static files.
#[derive(Debug, Clone)]
pub struct Config {
    /// The hub's limits, heartbeat and history. `max_message_size` also bounds each
    /// WebSocket message at the frame layer (close 1009), before it is buffered.
    pub hub: HubConfig,
    /// Browser origins allowed to open WebSockets (`https://app.example`); empty allows
    /// any. Requests without `Origin` (non-browser clients) are always allowed.
    pub allowed_origins: Vec<String>,
    /// Subprotocols offered in the handshake (default `roomcast.v1`).
    pub subprotocols: Vec<String>,
    /// Path of the WebSocket endpoint for [`crate::RoomcastService`] (default `/ws`).
    /// [`crate::WsHandler`] ignores it: it answers on whatever route it is mounted.
    pub ws_path: String,
    /// Directory served for `GET /` and other paths by [`crate::RoomcastService`].
    pub www: Option<PathBuf>,
    /// Conformance mode: every WebSocket, on any path, echoes what it receives through
    /// the core `Connection` without a hub. For the Autobahn test suite only.
    pub echo: bool,
    /// Also serve the benchmark suite's tiny protocol (bench/), so the suite measures this
    /// server and not a stand-in: `GET /echo` is an echo socket, and on `GET /room` the
    /// text `sub` joins the one room [`BENCH_ROOM`] and any other text goes to its
    /// members verbatim ([`roomcast_core::hub::Hub::send_raw_to_room`]), through the same
    /// hub, coalescing, outboxes and budgets as the JSON protocol. Off by default.
    pub bench_protocol: bool,
    /// How long a closing connection may take to deliver its queued output and close
    /// frame before its TCP connection is dropped (the slow-consumer bound of the
    /// protocol: 5 s).
    pub close_timeout: Duration,
    /// How long a graceful shutdown waits for connections to finish closing.
    pub shutdown_timeout: Duration,
    /// How long [`crate::Server`] gives a client to send a whole request head (the
    /// upgrade request, or the next request on an idle keep-alive connection) before
    /// dropping the TCP connection: the time bound on slow handshakes (slowloris).
    pub handshake_timeout: Duration,
    /// Most TCP connections [`crate::Server`] holds that have not (yet) become a
    /// WebSocket: handshakes in progress and plain HTTP connections. Past it, new TCP
    /// connections get an immediate `503` and are closed: the count bound on slow
    /// handshakes, so unfinished heads cannot use up file descriptors or memory.
    pub max_pending_handshakes: usize,
    /// Mint demo tokens at `GET /demo/token?user=NAME` (see
    /// [`roomcast_core::auth::DemoTokens`]): anyone gets a token for any name. For
    /// demos only; off by default (the route then answers 204).
    pub demo_tokens: Option<roomcast_core::auth::DemoTokens>,
    /// The application's hooks ([`Config::with_hooks`]); none by default.
    pub hooks: Option<crate::hooks::SharedHooks>,
    /// Upgrade request headers passed to the `connect` hook (e.g. `Cookie`); none by
    /// default, so a hook sees no credentials it was not meant to.
    pub hook_headers: Vec<String>,
    /// Serve the server HTTP API under `/api/` to callers presenting this key
    /// (`Authorization: Bearer KEY`); off (404) without one.
    pub api_key: Option<ApiKey>,
    /// The Redis backplane shared with other nodes ([`Config::with_redis`]); `None`: one
    /// process, everything in memory.
    pub redis: Option<crate::RedisConfig>,
}

/// The server API's key; its `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey(pub String);

impl std::fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ApiKey(…)")
    }
}

impl Default for Config {
    fn default() -> Self {
        let mut hub = HubConfig::default();
        // the server keeps history by default, as the Worker does
        hub.history.max_messages = roomcast_core::hub::DEFAULT_HISTORY;
        hub.presence_batch_ms = roomcast_core::hub::PRESENCE_BATCH_MS;
        Config {
            hub,
            allowed_origins: Vec::new(),
            subprotocols: vec![SUBPROTOCOL.to_owned()],
            ws_path: "/ws".to_owned(),
            www: None,
            echo: false,
            bench_protocol: false,
            close_timeout: Duration::from_secs(5),
            shutdown_timeout: Duration::from_secs(5),
            handshake_timeout: Duration::from_secs(10),
            max_pending_handshakes: 1024,
            demo_tokens: None,
            hooks: None,
            api_key: None,
            redis: None,
            hook_headers: Vec::new(),
        }
    }
}

impl Config {
    /// Shares rooms with every node on the same Redis (`--redis`): room seqs, history
    /// and recovery live in Redis; channels, users and broadcasts reach every node.
    /// Recovery needs a node's cache of the log, so history is on (100 messages) even
    /// where it was turned off.
    pub fn with_redis(mut self, redis: crate::RedisConfig) -> Config {
        self.hub.backplane = true;
        if self.hub.history.max_messages == 0 {
            self.hub.history.max_messages = 100;
        }
        self.redis = Some(redis);
        self
    }

    /// Lets `hooks` decide the operations its [`Hooks::decides`](crate::Hooks::decides)
    /// names (join, subscribe, publish, rpc), with its timeout, and hear of disconnects.
    pub fn with_hooks(mut self, hooks: impl crate::Hooks) -> Config {
        self.hub.hooks = hooks.decides();
        self.hooks = Some(crate::hooks::SharedHooks(std::sync::Arc::new(hooks)));
        self
    }

    pub(crate) fn policy(&self) -> ServerPolicy {
        ServerPolicy {
            allowed_origins: self.allowed_origins.clone(),
            subprotocols: self.subprotocols.clone(),
        }
    }

    pub(crate) fn connection_config(&self) -> ConnectionConfig {
        ConnectionConfig {
            max_message_size: self.hub.max_message_size,
            ..ConnectionConfig::default()
        }
    }
}

/// Builds the hub heartbeat from the two durations operators think in.
///
/// The hub pings a connection after `ping_interval` of silence and drops it after
/// `max_missed` whole intervals without any inbound frame. A pong to the ping sent at the
/// end of the first silent interval is owed within `pong_timeout`, so the drop must not
/// happen before `ping_interval + pong_timeout`: `max_missed` is the smallest number of
/// intervals covering that (at least 2). With the defaults (25 s, 20 s) that is the
/// protocol's `max_missed = 2`. `pong_timeout` is also what clients are told (`timeout_ms`
/// in `welcome`) to wait for any message after their own heartbeat.
pub fn heartbeat_for(ping_interval: Duration, pong_timeout: Duration) -> HeartbeatConfig {
    let interval_ms = duration_ms(ping_interval).max(1);
    let timeout_ms = duration_ms(pong_timeout);
    let extra = timeout_ms.div_ceil(interval_ms);
    let max_missed = u32::try_from(extra.saturating_add(1))
        .unwrap_or(u32::MAX)
        .max(2);
    HeartbeatConfig {
        interval_ms,
        timeout_ms,
        max_missed,
        server_pings: true,
    }
}

fn duration_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_map_to_protocol_heartbeat() {
        let hb = heartbeat_for(Duration::from_secs(25), Duration::from_secs(20));
        assert_eq!(hb, HeartbeatConfig::default());
    }

    #[test]
    fn max_missed_covers_interval_plus_pong_timeout() {
        let hb = heartbeat_for(Duration::from_millis(200), Duration::from_millis(200));
        assert_eq!(hb.max_missed, 2);
        let hb = heartbeat_for(Duration::from_millis(200), Duration::from_millis(450));
        assert_eq!(hb.max_missed, 4);
        assert!(u64::from(hb.max_missed) * hb.interval_ms >= 200 + 450);
        let hb = heartbeat_for(Duration::ZERO, Duration::ZERO);
        assert_eq!((hb.interval_ms, hb.max_missed), (1, 2));
        let hb = heartbeat_for(Duration::from_millis(1), Duration::MAX);
        assert_eq!(hb.max_missed, u32::MAX);
    }
}
