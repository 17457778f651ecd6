//! The types the outside sees: connection ids, outputs, events, errors and the small
//! records the server API hands back. Nothing here holds hub state.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use crate::outgoing::{Frames, Outgoing};
use crate::protocol::ErrorCode;
use crate::time::Timestamp;

/// Identifies a connection for its whole life; never reused within a hub.
///
/// The low 32 bits are a slab slot (so lookups are an index), the high 32 bits a
/// generation drawn from a counter that only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    pub(crate) fn new(slot: usize, gen: u32) -> Self {
        ConnId((u64::from(gen) << 32) | slot as u64)
    }
    pub(crate) fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    pub(crate) fn gen(self) -> u32 {
        (self.0 >> 32) as u32
    }
    /// The id as an integer, for adapters that store it (socket attachments, maps).
    pub fn as_u64(self) -> u64 {
        self.0
    }
    /// Rebuilds an id an adapter stored with [`ConnId::as_u64`].
    pub fn from_u64(v: u64) -> Self {
        ConnId(v)
    }
}

impl std::fmt::Display for ConnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.slot(), self.gen())
    }
}

/// Where a message came from: the hub needs to know so a backplane can carry local
/// publishes to other nodes without echoing remote ones back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    /// A client on this hub.
    Conn(ConnId),
    /// The application, through the server API.
    Server,
    /// Another node, through a backplane.
    Remote {
        /// The other node's id, as the backplane names it.
        node: u64,
    },
}

/// Lifecycle of a connection as the hub sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnState {
    /// Welcome sent; requests are processed.
    Open,
    /// The hub asked the adapter to close it; it no longer receives anything and its slot
    /// is freed when the adapter reports the socket gone (or after a grace period).
    Closing,
}

/// Why a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum DisconnectReason {
    /// The socket closed, with the close code if the peer sent one.
    Closed {
        /// Close code received (or 1005/1006 as the adapter reports).
        code: Option<u16>,
    },
    /// No frame from the peer within the heartbeat window.
    HeartbeatTimeout,
    /// Its unsent output exceeded `max_buffered_bytes`.
    SlowConsumer,
    /// Over the request rate limit for longer than the grace period.
    RateLimited,
    /// A message larger than `max_message_size`.
    MessageTooBig,
    /// The peer broke RFC 6455 (the close code sent: 1002 protocol error, 1007 invalid
    /// UTF-8): detected by the adapter's frame layer, not by the hub.
    ProtocolError {
        /// The close code sent.
        code: u16,
    },
    /// Its token was refused, absent in time, or expired past the grace (close 4001).
    Unauthorized,
    /// The application closed it through [`super::Hub::disconnect`].
    Kicked {
        /// The close code sent.
        code: u16,
    },
}

impl DisconnectReason {
    /// A stable name for logs and metrics (`heartbeat_timeout`, `slow_consumer`, ...).
    pub fn as_str(&self) -> &'static str {
        match self {
            DisconnectReason::Closed { .. } => "closed",
            DisconnectReason::HeartbeatTimeout => "heartbeat_timeout",
            DisconnectReason::SlowConsumer => "slow_consumer",
            DisconnectReason::RateLimited => "rate_limited",
            DisconnectReason::MessageTooBig => "message_too_big",
            DisconnectReason::ProtocolError { .. } => "protocol_error",
            DisconnectReason::Unauthorized => "unauthorized",
            DisconnectReason::Kicked { .. } => "kicked",
        }
    }
}

/// A publish target as owned names, for events and the backplane.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Destination {
    /// A room.
    Room(Arc<str>),
    /// A channel.
    Channel(Arc<str>),
    /// Every connection of a user.
    User(Arc<str>),
    /// One connection (server API only).
    Conn(ConnId),
    /// Every connection (server API only).
    All,
}

/// Something the application may want to know; drained with the other outputs.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Event {
    /// A connection was admitted and welcomed.
    Connected {
        /// The connection.
        conn: ConnId,
        /// Its user, if any.
        user: Option<Arc<str>>,
    },
    /// A connection ended (once per connection).
    Disconnected {
        /// The connection.
        conn: ConnId,
        /// Its id as clients saw it (`conn` in `welcome`, `from` and hook calls).
        wire_id: Box<str>,
        /// Its user, if any.
        user: Option<Arc<str>>,
        /// Why.
        reason: DisconnectReason,
    },
    /// A connection joined a room.
    Joined {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: Arc<str>,
        /// The room's epoch (what storage must keep for recovery to survive a restart).
        epoch: Arc<str>,
        /// The room's latest seq at the join.
        seq: u64,
    },
    /// A connection left a room (explicitly, by the server, or by disconnecting).
    Left {
        /// The connection.
        conn: ConnId,
        /// The room.
        room: Arc<str>,
    },
    /// A room no longer exists (emptied and its history expired, or removed by the
    /// server): storage kept for it (a Durable Object's rows) can go.
    RoomRemoved {
        /// The room.
        room: Arc<str>,
    },
    /// A connection subscribed to a channel.
    Subscribed {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: Arc<str>,
    },
    /// A connection unsubscribed from a channel.
    Unsubscribed {
        /// The connection.
        conn: ConnId,
        /// The channel.
        channel: Arc<str>,
    },
    /// A message was delivered (boxed: one per publish, and it keeps every `Output`
    /// small, which matters because fan-out produces one `Output` per receiver).
    Message(Box<Published>),
    /// A request was refused (for metrics and logs).
    Refused {
        /// The connection.
        conn: ConnId,
        /// The error code sent back.
        code: ErrorCode,
    },
    /// A connection's token state changed: admitted to wait for `auth`, token renewed,
    /// `expiring` sent, a room token kept or spent. For adapters that persist
    /// [`super::Hub::snapshot_conn`] (a Durable Object's socket attachments).
    AuthChanged {
        /// The connection.
        conn: ConnId,
    },
    /// A token was refused (the connection is closed 4001). For logs and metrics: the
    /// reason is never sent to the client, and the token itself is never kept.
    TokenRefused {
        /// The connection.
        conn: ConnId,
        /// Why.
        error: crate::auth::AuthError,
    },
}

/// What a publish did, for the application's logs, metrics or persistence (a Durable
/// Object stores room history from these).
#[derive(Debug, Clone)]
pub struct Published {
    /// Who sent it.
    pub origin: Origin,
    /// Where it went.
    pub destination: Destination,
    /// The event name.
    pub event: Arc<str>,
    /// The room seq, for room messages.
    pub seq: Option<u64>,
    /// The room's epoch, for room messages (with `seq`, the message's place in the room).
    pub epoch: Option<Arc<str>>,
    /// How many connections received it.
    pub delivered: usize,
    /// The message as sent (shared, not a copy).
    pub message: Outgoing,
}

/// A publish to hand to a backplane so other nodes deliver it too.
#[derive(Debug, Clone)]
pub struct Forward {
    /// Where it goes (`Conn` is never forwarded).
    pub destination: Destination,
    /// Event name.
    pub event: String,
    /// Raw JSON data (`None` is `null`).
    pub data: Option<Box<RawValue>>,
    /// The sender as `(conn, user)`, or `None` for the server.
    pub from: Option<(String, Option<String>)>,
}

/// What the adapter must do next. Drain with [`super::Hub::poll_output`] after every input.
#[derive(Debug, Clone)]
#[must_use = "every output is something the adapter must do"]
pub enum Output {
    /// Send this message to this connection (write `msg.frame()` or `msg.text()`), then
    /// report the written bytes with [`super::Hub::handle_flushed`].
    Send {
        /// Receiver.
        conn: ConnId,
        /// Encoded message, shared with every other receiver.
        msg: Outgoing,
    },
    /// Send a WebSocket protocol ping (native runtimes only).
    Ping {
        /// The connection to probe.
        conn: ConnId,
    },
    /// Close this connection with this code and reason (flush what is queued first,
    /// within a bound), then report [`super::Hub::handle_disconnect`].
    Close {
        /// The connection.
        conn: ConnId,
        /// WebSocket close code.
        code: u16,
        /// Close reason (≤ 123 bytes).
        reason: Cow<'static, str>,
    },
    /// Send these room messages to this connection, in order (write `frames.bytes()`, or
    /// each of `frames.texts()`), then report the written bytes. Only with
    /// [`super::HubConfig::coalesce_room_messages`].
    SendFrames {
        /// Receiver.
        conn: ConnId,
        /// The burst, shared with every other member.
        frames: Frames,
    },
    /// An event for the application.
    Event(Event),
    /// Carry this publish to the other nodes (only with `HubConfig::backplane`).
    Forward(Box<Forward>),
    /// Append a room message to the room's log in the backplane (only with
    /// `HubConfig::backplane`); answer [`super::Hub::handle_appended`].
    Append(Box<super::Append>),
    /// Follow a room and read part of its log (only with `HubConfig::backplane`); answer
    /// [`super::Hub::handle_loaded`] or [`super::Hub::handle_load_failed`].
    Load(Box<super::Load>),
    /// Carry this command to every other node (only with `HubConfig::backplane`); they
    /// run it with [`super::Hub::handle_control`].
    Control(Box<super::Control>),
    /// Ask the application (only with [`super::HookConfig`] hooks on); answer with
    /// [`super::Hub::handle_decision`], by the deadline or the request is refused.
    Decide(Box<super::Decision>),
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// `max_connections` reached: answer the handshake with 503.
    #[error("server full")]
    Full,
    /// The user name breaks the naming rules: answer the handshake with 400.
    #[error("invalid user name")]
    BadUser,
    /// The token in the URL was refused: answer the handshake with 401.
    #[error("unauthorized: {0}")]
    Unauthorized(crate::auth::AuthError),
}

/// Caller mistakes with the server API (never caused by a peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HubError {
    /// No open connection with that id.
    #[error("unknown connection {0}")]
    UnknownConnection(ConnId),
    /// No room with that name.
    #[error("unknown room")]
    UnknownRoom,
    /// No channel with that name.
    #[error("unknown channel")]
    UnknownChannel,
    /// The name breaks the naming rules.
    #[error("invalid name")]
    BadName,
    /// The connection is not a member of the room.
    #[error("not a member")]
    NotMember,
    /// The room is full.
    #[error("room full")]
    RoomFull,
    /// The connection is already in as many rooms as it may be (`max_rooms_per_conn`).
    #[error("too many rooms")]
    TooManyRooms,
    /// The connection already subscribes to as many channels as it may
    /// (`max_subscriptions_per_conn`).
    #[error("too many subscriptions")]
    TooManySubscriptions,
    /// The hub may not create this room (`clients_create_rooms` is off).
    #[error("room creation forbidden")]
    Forbidden,
    /// A connection was not admitted ([`Input::Connect`](super::Input::Connect)).
    #[error(transparent)]
    Connect(#[from] ConnectError),
}

/// What the server API reports after a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// How many connections it was handed to.
    pub delivered: usize,
    /// The room seq, for room messages.
    pub seq: Option<u64>,
}

/// Options for a room created through the server API.
#[derive(Debug, Clone, Default)]
pub struct RoomOptions {
    /// Application data about the room (raw JSON), readable with [`super::Hub::room_data`].
    pub data: Option<Box<RawValue>>,
    /// Refuse joins past this many members (`room_full`).
    pub max_members: Option<usize>,
}

/// A snapshot of counts and counters, for `/metrics` and dashboards.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Open connections.
    pub connections: usize,
    /// Rooms that exist (including empty rooms kept for history).
    pub rooms: usize,
    /// Channels that exist.
    pub channels: usize,
    /// Distinct users with at least one open connection.
    pub users: usize,
    /// Text messages received from clients.
    pub messages_in: u64,
    /// Bytes of text received from clients.
    pub bytes_in: u64,
    /// Messages handed out for sending.
    pub messages_out: u64,
    /// Bytes handed out for sending (frame bytes).
    pub bytes_out: u64,
    /// Requests refused with `rate_limited`.
    pub rate_limited: u64,
    /// Connections closed as slow consumers.
    pub slow_consumers: u64,
    /// Connections reaped by the heartbeat.
    pub heartbeat_timeouts: u64,
    /// History messages dropped to keep all rooms' history under its byte budget.
    pub history_evicted: u64,
    /// Bytes of history held across all rooms.
    pub history_bytes: usize,
    /// Requests parked for the application ([`Output::Decide`]).
    pub decisions_asked: u64,
    /// Of those, refused `unavailable` because no answer came in time.
    pub decisions_timed_out: u64,
    /// Answers that came after their request was settled (timed out or closed).
    pub decisions_late: u64,
    /// Room messages handed to the backplane.
    pub backplane_appends: u64,
    /// Room publishes refused `unavailable` because the backplane was.
    pub backplane_refused: u64,
    /// Loads of a room's log answered (joins, gaps, resyncs).
    pub backplane_loads: u64,
    /// Messages the backplane delivered twice, dropped.
    pub backplane_duplicates: u64,
    /// Gaps seen in a room's sequence (each repaired from the log).
    pub backplane_gaps: u64,
    /// Rooms whose members were closed 1013 because the log lost what they missed.
    pub backplane_resets: u64,
    /// Loads of a room's log given up because the backplane did not answer in time.
    pub backplane_load_timeouts: u64,
}

/// Read-only view of a connection for the application.
#[derive(Debug)]
pub struct ConnInfo<'a> {
    /// Its id.
    pub id: ConnId,
    /// The opaque id clients see in `conn` fields.
    pub wire_id: &'a str,
    /// Its user.
    pub user: Option<&'a str>,
    /// Application metadata, sorted by key.
    pub metadata: &'a [(String, String)],
    /// When it was admitted.
    pub connected_at: Timestamp,
    /// Its state.
    pub state: ConnState,
    /// Bytes handed out but not yet reported flushed.
    pub unsent_bytes: usize,
}

/// What a connection brings when it is admitted.
#[derive(Debug, Clone, Default)]
pub struct ConnectRequest {
    /// The user from `?user=` (ignored, never trusted, when tokens are configured).
    pub user: Option<String>,
    /// The token from `?token=`, checked before the connection is admitted (a refusal
    /// is [`ConnectError::Unauthorized`]). Without one, a server with keys waits for the
    /// first message to be `auth`.
    pub token: Option<String>,
    /// Application metadata (e.g. remote address, user agent).
    pub metadata: BTreeMap<String, String>,
    /// Upgrade request headers handed to the application's `connect` hook (the
    /// adapter passes only those it was told to, e.g. `Cookie`).
    pub headers: Vec<(String, String)>,
}
