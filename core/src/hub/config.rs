//! Hub settings, with the defaults of PROTOCOL.md.

use core::time::Duration;

use std::sync::Arc;

use crate::auth::Verifier;
use crate::ratelimit::RateLimit;

/// Liveness settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeartbeatConfig {
    /// Ping cadence for an idle connection; also advertised to clients in `welcome`.
    pub interval_ms: u64,
    /// How long clients wait for any message after their heartbeat before giving up
    /// (advertised in `welcome`).
    pub timeout_ms: u64,
    /// Intervals without any inbound frame before the hub drops a connection.
    pub max_missed: u32,
    /// Whether the hub sends protocol pings and reaps silent peers. Native servers do;
    /// a Durable Object does not (workerd owns the sockets and pings must not wake it).
    pub server_pings: bool,
}

impl HeartbeatConfig {
    pub(crate) fn interval(&self) -> Duration {
        Duration::from_millis(self.interval_ms.max(1))
    }
    pub(crate) fn dead_after(&self) -> Duration {
        self.interval() * self.max_missed.max(1)
    }
}

impl Default for HeartbeatConfig {
    fn default() -> Self {
        HeartbeatConfig {
            interval_ms: 25_000,
            timeout_ms: 20_000,
            max_missed: 2,
            server_pings: true,
        }
    }
}

/// Messages kept per room by every server runtime unless configured (the native
/// server's `--history`, the Worker's `ROOMCAST_HISTORY`): one default everywhere, so a
/// client recovers after a reconnect whichever runtime it talks to. The core's own
/// [`HistoryConfig::default`] keeps none: embedders and tests opt in.
pub const DEFAULT_HISTORY: usize = 100;

/// The presence window of every server runtime unless configured (the native server's
/// `--presence-batch`, the Worker's `ROOMCAST_PRESENCE_BATCH`): short enough to feel
/// live, long enough that a room reconnecting at once costs each watcher a few
/// messages rather than one per member.
pub const PRESENCE_BATCH_MS: u64 = 50;

/// Per-room message history kept for `join` with `since` (recovery after reconnects).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryConfig {
    /// Messages kept per room; 0 turns history off.
    pub max_messages: usize,
    /// How long a message is kept (and how long an empty room outlives its members).
    pub max_age_ms: u64,
    /// Bytes of history kept across all rooms together. Past it the oldest messages go
    /// first, whichever room holds them: without it one client could make the server
    /// keep `max_messages` × the message size limit in as many rooms as it creates.
    pub max_total_bytes: usize,
}

impl HistoryConfig {
    pub(crate) fn max_age(&self) -> Duration {
        Duration::from_millis(self.max_age_ms)
    }
}

impl Default for HistoryConfig {
    fn default() -> Self {
        HistoryConfig {
            max_messages: 0,
            max_age_ms: 5 * 60 * 1000,
            max_total_bytes: 32 << 20,
        }
    }
}

/// Everything a hub can be told. `Default` gives the PROTOCOL.md defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HubConfig {
    /// Connections admitted at once (more are refused with 503).
    pub max_connections: usize,
    /// Largest message accepted, in bytes (close 1009 past it).
    pub max_message_size: usize,
    /// Unsent output allowed per connection before it is closed as a slow consumer.
    pub max_buffered_bytes: usize,
    /// Rooms one connection may be in.
    pub max_rooms_per_conn: usize,
    /// Rooms the hub holds at once; a join that would create one more is refused
    /// `too_many_rooms`. Without it the only bound is connections × the per-connection
    /// limit: measured at ~950 B a room, a few anonymous clients can pin gigabytes.
    pub max_rooms: Option<usize>,
    /// Channels one connection may subscribe to.
    pub max_subscriptions_per_conn: usize,
    /// Member limit for rooms without their own.
    pub max_room_members: Option<usize>,
    /// Entries in a join ack's `present` list.
    pub max_present_list: usize,
    /// Whether a client's `join` may create a room (else `forbidden`).
    pub clients_create_rooms: bool,
    /// Request rate per connection.
    pub rate_limit: RateLimit,
    /// Liveness.
    pub heartbeat: HeartbeatConfig,
    /// Recovery history.
    pub history: HistoryConfig,
    /// Several nodes share rooms through a backplane (see `hub::backplane`): room
    /// messages are sequenced there ([`super::Output::Append`], [`super::Output::Load`])
    /// and channel, user and broadcast publishes are forwarded
    /// ([`super::Output::Forward`]).
    pub backplane: bool,
    /// How long a join waits for the backplane to load its room before it is refused
    /// `unavailable`.
    pub backplane_timeout_ms: u64,
    /// What the application decides (hooks and rpc); none by default.
    pub hooks: super::HookConfig,
    /// How long a closing connection's slot is kept waiting for the adapter's report.
    pub close_grace_ms: u64,
    /// Hold room messages until [`super::Hub::flush`] (or the next input that needs them
    /// out) and hand each member the whole burst at once as [`super::Output::SendFrames`].
    /// For runtimes that write frames to sockets themselves and call `flush` after each
    /// batch of inputs (the native server). PROTOCOL.md's order holds either way (each
    /// room's messages in seq order; held messages before any reply, error or close to
    /// the same connection); what a burst does not keep is the interleaving of different
    /// rooms' messages within one batch, which the protocol does not promise.
    pub coalesce_room_messages: bool,
    /// Signed tokens: `None` (or no keys) is the open default, where `?user=` is taken
    /// at face value. Shared, because the keys are parsed once for every hub.
    pub auth: Option<Arc<Verifier>>,
    /// The Unix time, in milliseconds, at `Timestamp(0)` on the adapter's clock: how the
    /// hub reads a token's `exp` on its own clock (0 when that clock is Unix time, as in
    /// a Durable Object; natively the wall time when the clock started).
    pub clock_unix_ms: u64,
    /// Presence changes of a room within this window go to its watchers as one
    /// `presence` message (a joined-then-left pair cancels out). 0 sends each change at
    /// once (this default); the server runtimes batch [`PRESENCE_BATCH_MS`].
    pub presence_batch_ms: u64,
}

impl HubConfig {
    pub(crate) fn close_grace(&self) -> Duration {
        Duration::from_millis(self.close_grace_ms)
    }
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            max_connections: 100_000,
            max_message_size: 1 << 20,
            max_buffered_bytes: 1 << 20,
            max_rooms_per_conn: 1000,
            max_rooms: None,
            max_subscriptions_per_conn: 1000,
            max_room_members: None,
            max_present_list: 100,
            clients_create_rooms: true,
            rate_limit: RateLimit::default(),
            heartbeat: HeartbeatConfig::default(),
            history: HistoryConfig::default(),
            backplane: false,
            backplane_timeout_ms: 2_000,
            hooks: super::HookConfig::default(),
            close_grace_ms: 5_000,
            coalesce_room_messages: false,
            auth: None,
            clock_unix_ms: 0,
            presence_batch_ms: 0,
        }
    }
}
