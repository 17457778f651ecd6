//! The hub: connections, rooms, channels and users, and the JSON protocol that drives them.
//!
//! Messages go in ([`Hub::handle_text`]), routing comes out ([`Hub::poll_output`]). The hub
//! never touches a socket: the native server feeds it text from its frame decoder, the
//! Durable Object feeds it what workerd already framed. Every decision about who receives
//! what, when a connection is dead and what a bad request gets is made here, once, for all
//! runtimes.
//!
//! Cost model (what the benchmarks hold us to): a room message is serialized and framed
//! once and handed to each receiver as a refcounted [`Outgoing`]; joining, leaving and
//! disconnecting cost O(rooms of that connection); deadlines sit in a heap, never a scan.

mod config;
mod snapshot;
mod state;

use std::borrow::Cow;
use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;
use slab::Slab;

pub use config::{HeartbeatConfig, HistoryConfig, HubConfig};
pub use snapshot::{ChannelSnapshot, ConnSnapshot, HistorySnapshot, RoomMembership, RoomSnapshot};
use state::{Channel, Conn, HistoryEntry, Room};

use crate::close::code;
use crate::hash::{Map, SeededState};
use crate::outgoing::{Frames, Outgoing};
use crate::protocol::{self, ErrorCode, Rejection, Request, RequestId, Target};
use crate::ratelimit::{TokenBucket, Verdict};
use crate::time::{Clock, Timestamp};

/// Identifies a connection for its whole life; never reused within a hub.
///
/// The low 32 bits are a slab slot (so lookups are an index), the high 32 bits a
/// generation drawn from a counter that only grows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ConnId(u64);

impl ConnId {
    fn new(slot: usize, gen: u32) -> Self {
        ConnId((u64::from(gen) << 32) | slot as u64)
    }
    fn slot(self) -> usize {
        (self.0 & 0xffff_ffff) as usize
    }
    fn gen(self) -> u32 {
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
    /// The application closed it through [`Hub::disconnect`].
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

/// What the adapter must do next. Drain with [`Hub::poll_output`] after every input.
#[derive(Debug, Clone)]
pub enum Output {
    /// Send this message to this connection (write `msg.frame()` or `msg.text()`), then
    /// report the written bytes with [`Hub::handle_flushed`].
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
    /// within a bound), then report [`Hub::handle_disconnect`].
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
    /// [`HubConfig::coalesce_room_messages`].
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
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConnectError {
    /// `max_connections` reached: answer the handshake with 503.
    #[error("server full")]
    Full,
    /// The user name breaks the naming rules: answer the handshake with 400.
    #[error("invalid user name")]
    BadUser,
}

/// Caller mistakes with the server API (never caused by a peer).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
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
    /// Application data about the room (raw JSON), readable with [`Hub::room_data`].
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
    /// The user, from `?user=` or a verified token.
    pub user: Option<String>,
    /// Application metadata (e.g. remote address, user agent).
    pub metadata: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Timer {
    Conn(ConnId),
    Room { slot: usize, uid: u64 },
}

/// The timer heap is never swept below this size (sweeping a small heap gains nothing).
const MIN_TIMER_SWEEP: usize = 1024;

/// A room holding this many coalesced messages (or a quarter of a connection's output
/// budget) hands them out at once: bounds the latency and the size of one burst whatever
/// the caller's batch size, so a burst alone never makes a fast reader a slow consumer.
const MAX_PENDING_MESSAGES: usize = 64;

/// The routing state machine. See the crate docs for the run loop.
pub struct Hub {
    config: HubConfig,
    clock: Clock,
    instance: String,
    next_gen: u32,
    next_room_uid: u64,
    conns: Slab<Conn>,
    open_conns: usize,
    rooms: Slab<Room>,
    room_names: Map<Arc<str>, usize>,
    channels: Slab<Channel>,
    channel_names: Map<Arc<str>, usize>,
    users: Map<Arc<str>, Vec<ConnId>>,
    timers: BinaryHeap<Reverse<(Timestamp, Timer)>>,
    /// Heap size at which stale timers are swept out ([`Hub::push_timer`]).
    timers_sweep_at: usize,
    outputs: VecDeque<Output>,
    /// Connections found over their output budget during a fan-out, closed right after.
    doomed: Vec<ConnId>,
    /// Rooms holding coalesced messages not yet handed out.
    pending_rooms: Vec<usize>,
    /// Bytes of history held across all rooms.
    history_bytes: usize,
    stamp: u64,
    stats: Stats,
    hasher: SeededState,
}

impl Hub {
    /// Builds an empty hub. `seed` keys the hash maps against flooding and names this hub
    /// instance (room epochs and connection ids differ across restarts); pass bytes from
    /// the platform's CSPRNG.
    pub fn new(config: HubConfig, seed: [u8; 32], now: Timestamp) -> Hub {
        let words: [u64; 4] = std::array::from_fn(|i| {
            u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8-byte chunk"))
        });
        let hasher = SeededState::new(words);
        let instance = format!("{:08x}", (words[0] ^ words[3]) as u32);
        Hub {
            config,
            clock: Clock::new(now),
            instance,
            next_gen: 1,
            next_room_uid: 1,
            conns: Slab::new(),
            open_conns: 0,
            rooms: Slab::new(),
            room_names: Map::with_hasher(hasher.clone()),
            channels: Slab::new(),
            channel_names: Map::with_hasher(hasher.clone()),
            users: Map::with_hasher(hasher.clone()),
            timers: BinaryHeap::new(),
            timers_sweep_at: MIN_TIMER_SWEEP,
            outputs: VecDeque::new(),
            doomed: Vec::new(),
            pending_rooms: Vec::new(),
            history_bytes: 0,
            stamp: 0,
            stats: Stats::default(),
            hasher,
        }
    }

    /// The configuration this hub runs with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counts and counters.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.open_conns,
            rooms: self.rooms.len(),
            channels: self.channels.len(),
            users: self.users.len(),
            history_bytes: self.history_bytes,
            ..self.stats
        }
    }

    /// The next output, or `None` when there is nothing left to do for now.
    pub fn poll_output(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// The next deadline: call [`Hub::handle_timeout`] then. `None` when nothing is
    /// scheduled. Level state: read it after draining outputs, every time.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    // -----------------------------------------------------------------------------------
    // Connections

    /// Admits a connection and queues its `welcome`. Call when the handshake is valid;
    /// on `Err` answer the handshake with 503 or 400 instead of upgrading.
    pub fn connect(&mut self, now: Timestamp, req: ConnectRequest) -> Result<ConnId, ConnectError> {
        let now = self.clock.advance(now);
        if let Some(u) = &req.user {
            if !protocol::valid_name(u) {
                return Err(ConnectError::BadUser);
            }
        }
        if self.open_conns >= self.config.max_connections {
            return Err(ConnectError::Full);
        }
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        let entry = self.conns.vacant_entry();
        let id = ConnId::new(entry.key(), gen);
        let wire = format!("{}-{:x}", self.instance, gen);
        let user: Option<Arc<str>> = req.user.map(Arc::from);
        let conn = Conn::new(
            id,
            wire,
            user.clone(),
            req.metadata,
            now,
            TokenBucket::new(&self.config.rate_limit, now),
            &self.hasher,
        );
        entry.insert(conn);
        self.open_conns += 1;
        if let Some(u) = &user {
            self.users.entry(u.clone()).or_default().push(id);
        }
        let c = &self.conns[id.slot()];
        let hb = &self.config.heartbeat;
        let welcome = Outgoing::build(|b| {
            protocol::write_head(b, "welcome", None);
            b.extend_from_slice(b",\"conn\":");
            protocol::write_str(b, &c.wire);
            b.extend_from_slice(b",\"user\":");
            protocol::write_opt_str(b, c.user.as_deref());
            b.extend_from_slice(b",\"heartbeat\":{\"interval_ms\":");
            protocol::write_u64(b, hb.interval_ms);
            b.extend_from_slice(b",\"timeout_ms\":");
            protocol::write_u64(b, hb.timeout_ms);
            b.extend_from_slice(b"}}");
        });
        self.send(id, &welcome);
        self.outputs
            .push_back(Output::Event(Event::Connected { conn: id, user }));
        self.schedule_conn(id);
        Ok(id)
    }

    fn slot_of(&self, id: ConnId) -> Result<usize, HubError> {
        match self.conns.get(id.slot()) {
            Some(c) if c.id == id => Ok(id.slot()),
            _ => Err(HubError::UnknownConnection(id)),
        }
    }

    fn open_slot(&self, id: ConnId) -> Result<usize, HubError> {
        let s = self.slot_of(id)?;
        if self.conns[s].state == ConnState::Open {
            Ok(s)
        } else {
            Err(HubError::UnknownConnection(id))
        }
    }

    /// A view of a connection, open or closing.
    pub fn connection(&self, id: ConnId) -> Option<ConnInfo<'_>> {
        let c = self.conns.get(id.slot()).filter(|c| c.id == id)?;
        Some(ConnInfo {
            id,
            wire_id: &c.wire,
            user: c.user.as_deref(),
            metadata: &c.metadata,
            connected_at: c.connected_at,
            state: c.state,
            unsent_bytes: c.unsent,
        })
    }

    /// Ids of every open connection (for shutdown and admin tools).
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns
            .iter()
            .filter(|(_, c)| c.state == ConnState::Open)
            .map(|(_, c)| c.id)
    }

    /// Sets an application metadata entry on a connection.
    pub fn set_metadata(&mut self, id: ConnId, key: String, value: String) -> Result<(), HubError> {
        let s = self.slot_of(id)?;
        let md = &mut self.conns[s].metadata;
        match md.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => md[i].1 = value,
            Err(i) => md.insert(i, (key, value)),
        }
        Ok(())
    }

    /// Reports that the peer showed a sign of life (any frame: pong, ping, data).
    pub fn handle_activity(&mut self, now: Timestamp, id: ConnId) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.slot_of(id)?;
        self.conns[s].last_seen = now;
        Ok(())
    }

    /// Reports bytes of this connection's output that reached the socket, which frees
    /// that much of its `max_buffered_bytes` budget.
    pub fn handle_flushed(&mut self, id: ConnId, bytes: usize) -> Result<(), HubError> {
        let s = self.slot_of(id)?;
        let c = &mut self.conns[s];
        c.unsent = c.unsent.saturating_sub(bytes);
        Ok(())
    }

    /// Reports that the socket is gone. Frees the connection; if the hub had not closed
    /// it itself, it leaves every room (presence `left`) and a `Disconnected` event fires.
    pub fn handle_disconnect(
        &mut self,
        now: Timestamp,
        id: ConnId,
        reason: DisconnectReason,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.slot_of(id)?;
        if self.conns[s].state == ConnState::Open {
            // Its socket is gone: what the rooms still hold for it goes nowhere.
            self.skip_pending(s);
            self.detach(s, reason, now);
        }
        self.free(s);
        Ok(())
    }

    /// Closes a connection from the server side with this code and reason.
    pub fn disconnect(&mut self, id: ConnId, code: u16, reason: &str) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        let now = self.clock.now();
        let reason: String = truncate_reason(reason).to_owned();
        self.close_conn(
            s,
            code,
            Cow::Owned(reason),
            DisconnectReason::Kicked { code },
            now,
        );
        Ok(())
    }

    /// Closes every open connection with 1001, for a graceful shutdown.
    pub fn shutdown(&mut self) {
        let ids: Vec<ConnId> = self.connections().collect();
        for id in ids {
            let s = id.slot();
            let now = self.clock.now();
            self.close_conn(
                s,
                code::GOING_AWAY,
                Cow::Borrowed("server shutting down"),
                DisconnectReason::Kicked {
                    code: code::GOING_AWAY,
                },
                now,
            );
        }
    }

    fn close_conn(
        &mut self,
        s: usize,
        close_code: u16,
        reason_text: Cow<'static, str>,
        reason: DisconnectReason,
        now: Timestamp,
    ) {
        if self.conns[s].state != ConnState::Open {
            return;
        }
        self.catch_up(s);
        let id = self.conns[s].id;
        self.outputs.push_back(Output::Close {
            conn: id,
            code: close_code,
            reason: reason_text,
        });
        self.detach(s, reason, now);
        self.conns[s].closing_since = now;
        self.schedule_conn(id);
    }

    /// Removes a connection from every index and marks it closing.
    fn detach(&mut self, s: usize, reason: DisconnectReason, now: Timestamp) {
        let id = self.conns[s].id;
        let rooms: Vec<usize> = self.conns[s].rooms.keys().copied().collect();
        for rk in rooms {
            self.remove_member(s, rk, now);
        }
        let subs: Vec<usize> = self.conns[s].subs.iter().copied().collect();
        for ck in subs {
            self.remove_subscriber(s, ck);
        }
        let c = &mut self.conns[s];
        c.state = ConnState::Closing;
        self.open_conns -= 1;
        let user = c.user.clone();
        if let Some(u) = &user {
            if let Some(list) = self.users.get_mut(u) {
                list.retain(|x| *x != id);
                if list.is_empty() {
                    self.users.remove(u);
                }
            }
        }
        match reason {
            DisconnectReason::HeartbeatTimeout => self.stats.heartbeat_timeouts += 1,
            DisconnectReason::SlowConsumer => self.stats.slow_consumers += 1,
            _ => {}
        }
        self.outputs.push_back(Output::Event(Event::Disconnected {
            conn: id,
            user,
            reason,
        }));
    }

    fn free(&mut self, s: usize) {
        debug_assert_eq!(self.conns[s].state, ConnState::Closing);
        self.conns.remove(s);
    }

    // -----------------------------------------------------------------------------------
    // Timers

    fn conn_deadline(&self, s: usize) -> Option<Timestamp> {
        let c = &self.conns[s];
        match c.state {
            ConnState::Closing => Some(c.closing_since.saturating_add(self.config.close_grace())),
            ConnState::Open => {
                let hb = &self.config.heartbeat;
                if !hb.server_pings {
                    return None;
                }
                let dead = c.last_seen.saturating_add(hb.dead_after());
                let ping = c.last_seen.max(c.last_ping).saturating_add(hb.interval());
                Some(dead.min(ping))
            }
        }
    }

    fn schedule_conn(&mut self, id: ConnId) {
        let s = id.slot();
        let Some(deadline) = self.conn_deadline(s) else {
            return;
        };
        let c = &mut self.conns[s];
        if c.timer_at.is_none_or(|t| deadline < t) {
            c.timer_at = Some(deadline);
            self.push_timer(deadline, Timer::Conn(id));
        }
    }

    /// Timers are deleted lazily: a freed connection's entry stays in the heap until its
    /// deadline, tens of seconds for a heartbeat. Under connection churn (a reconnect
    /// storm, 20k handshakes a second in the benchmark) that is hundreds of thousands of
    /// dead entries and megabytes that never come back. So once the heap has doubled
    /// since the last sweep, the dead entries are dropped: the heap stays within twice
    /// its live entries (plus a floor), at O(1) amortized cost per push.
    fn push_timer(&mut self, at: Timestamp, timer: Timer) {
        self.timers.push(Reverse((at, timer)));
        if self.timers.len() < self.timers_sweep_at {
            return;
        }
        let (conns, rooms) = (&self.conns, &self.rooms);
        self.timers.retain(|&Reverse((t, timer))| match timer {
            Timer::Conn(id) => conns
                .get(id.slot())
                .is_some_and(|c| c.id == id && c.timer_at == Some(t)),
            // Room timers are few; a stale one only re-checks its room when it fires.
            Timer::Room { slot, uid } => rooms.get(slot).is_some_and(|r| r.uid == uid),
        });
        let live = self.timers.len();
        self.timers_sweep_at = (2 * live).max(MIN_TIMER_SWEEP);
        if self.timers.capacity() > 2 * self.timers_sweep_at {
            self.timers.shrink_to(self.timers_sweep_at);
        }
    }

    /// Runs everything due at `now`: heartbeat pings and expiries, closing grace periods,
    /// history expiry of empty rooms.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.advance(now);
        while let Some(Reverse((t, timer))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            match timer {
                Timer::Conn(id) => self.conn_timer(id, t, now),
                Timer::Room { slot, uid } => self.room_timer(slot, uid, now),
            }
        }
    }

    fn conn_timer(&mut self, id: ConnId, fired: Timestamp, now: Timestamp) {
        let s = id.slot();
        match self.conns.get(s) {
            Some(c) if c.id == id && c.timer_at == Some(fired) => {}
            _ => return,
        }
        self.conns[s].timer_at = None;
        match self.conns[s].state {
            ConnState::Closing => {
                if now
                    >= self.conns[s]
                        .closing_since
                        .saturating_add(self.config.close_grace())
                {
                    // The adapter never reported the socket gone: free the slot anyway.
                    self.free(s);
                    return;
                }
            }
            ConnState::Open if self.config.heartbeat.server_pings => {
                let hb = self.config.heartbeat.clone();
                let c = &self.conns[s];
                if now >= c.last_seen.saturating_add(hb.dead_after()) {
                    self.close_conn(
                        s,
                        code::GOING_AWAY,
                        Cow::Borrowed("heartbeat timeout"),
                        DisconnectReason::HeartbeatTimeout,
                        now,
                    );
                    return;
                }
                if now >= c.last_seen.max(c.last_ping).saturating_add(hb.interval()) {
                    self.conns[s].last_ping = now;
                    self.outputs.push_back(Output::Ping { conn: id });
                }
            }
            ConnState::Open => {}
        }
        self.schedule_conn(id);
    }

    fn room_timer(&mut self, slot: usize, uid: u64, now: Timestamp) {
        match self.rooms.get(slot) {
            Some(r) if r.uid == uid => {}
            _ => return,
        }
        self.rooms[slot].expiry_at = None;
        self.trim_history(slot, now);
        self.maybe_remove_room(slot, now);
    }

    // -----------------------------------------------------------------------------------
    // Client messages

    /// Handles one text message from a client: a protocol request. Peer mistakes are
    /// answered with `error` messages, never returned as `Err`.
    pub fn handle_text(&mut self, now: Timestamp, id: ConnId, text: &str) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.slot_of(id)?;
        if self.conns[s].state != ConnState::Open {
            return Ok(()); // racing a close we already decided: drop quietly
        }
        self.stats.messages_in += 1;
        self.stats.bytes_in += text.len() as u64;
        self.conns[s].last_seen = now;
        if text.len() > self.config.max_message_size {
            self.close_conn(
                s,
                code::TOO_BIG,
                Cow::Borrowed("message too big"),
                DisconnectReason::MessageTooBig,
                now,
            );
            return Ok(());
        }
        let verdict = {
            let limit = self.config.rate_limit;
            self.conns[s].bucket.take(&limit, now)
        };
        if verdict == Verdict::Abuse {
            self.stats.rate_limited += 1;
            self.close_conn(
                s,
                code::POLICY,
                Cow::Borrowed("rate limit exceeded"),
                DisconnectReason::RateLimited,
                now,
            );
            return Ok(());
        }
        if protocol::is_heartbeat_ping(text) && verdict == Verdict::Allow {
            self.send(id, &pong_heartbeat());
            return Ok(());
        }
        let parsed = protocol::parse_request(text);
        let id_ref = parsed.id.as_ref();
        let result = match parsed.request {
            Err(rej) => Err(rej),
            Ok(_) if verdict == Verdict::Refuse => {
                self.stats.rate_limited += 1;
                Err(Rejection::new(
                    ErrorCode::RateLimited,
                    "too many requests: slow down",
                ))
            }
            Ok(req) => self.dispatch(s, id_ref, req, now),
        };
        if let Err(rej) = result {
            let msg = Outgoing::build(|b| protocol::write_error(b, id_ref, &rej));
            self.send(id, &msg);
            self.outputs.push_back(Output::Event(Event::Refused {
                conn: id,
                code: rej.code,
            }));
        }
        self.reap(now);
        Ok(())
    }

    /// Handles a binary message: not part of protocol v1, so it is answered `unsupported`.
    pub fn handle_binary(
        &mut self,
        now: Timestamp,
        id: ConnId,
        len: usize,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.slot_of(id)?;
        if self.conns[s].state != ConnState::Open {
            return Ok(());
        }
        self.conns[s].last_seen = now;
        self.stats.messages_in += 1;
        self.stats.bytes_in += len as u64;
        if len > self.config.max_message_size {
            self.close_conn(
                s,
                code::TOO_BIG,
                Cow::Borrowed("message too big"),
                DisconnectReason::MessageTooBig,
                now,
            );
            return Ok(());
        }
        let rej = Rejection::new(
            ErrorCode::Unsupported,
            "binary messages are not part of protocol v1",
        );
        let msg = Outgoing::build(|b| protocol::write_error(b, None, &rej));
        self.send(id, &msg);
        self.reap(now);
        Ok(())
    }

    fn dispatch(
        &mut self,
        s: usize,
        id: Option<&RequestId>,
        req: Request<'_>,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let conn = self.conns[s].id;
        match req {
            Request::Ping => {
                let msg = Outgoing::build(|b| {
                    protocol::write_head(b, "pong", id);
                    b.push(b'}');
                });
                self.send(conn, &msg);
                Ok(())
            }
            Request::Join {
                room,
                since,
                epoch,
                presence,
            } => self.client_join(s, id, &room, since, epoch.as_deref(), presence, now),
            Request::Leave { room } => {
                let rk = self
                    .room_names
                    .get(room.as_ref())
                    .copied()
                    .filter(|rk| self.conns[s].rooms.contains_key(rk))
                    .ok_or_else(|| {
                        Rejection::new(ErrorCode::NotMember, "not a member of this room")
                    })?;
                self.remove_member(s, rk, now);
                let msg = Outgoing::build(|b| {
                    protocol::write_head(b, "ack", id);
                    b.extend_from_slice(b",\"room\":");
                    protocol::write_str(b, &room);
                    b.push(b'}');
                });
                self.send(conn, &msg);
                Ok(())
            }
            Request::Subscribe { channel } => {
                self.subscribe_slot(s, &channel)?;
                self.send(conn, &ack_with(id, "channel", &channel));
                Ok(())
            }
            Request::Unsubscribe { channel } => {
                if let Some(&ck) = self.channel_names.get(channel.as_ref()) {
                    if self.conns[s].subs.contains(&ck) {
                        self.remove_subscriber(s, ck);
                    }
                }
                self.send(conn, &ack_with(id, "channel", &channel));
                Ok(())
            }
            Request::Publish {
                target,
                event,
                data,
                echo,
            } => {
                let origin = Origin::Conn(conn);
                let from = self.conns[s].peer_json.clone();
                let from = Some(&*from);
                let exclude = if echo { None } else { Some(conn) };
                let delivery = match &target {
                    Target::Room(room) => {
                        let rk = self
                            .room_names
                            .get(room.as_ref())
                            .copied()
                            .filter(|rk| self.conns[s].rooms.contains_key(rk))
                            .ok_or_else(|| {
                                Rejection::new(
                                    ErrorCode::NotMember,
                                    "join the room before publishing to it",
                                )
                            })?;
                        self.publish_room(from, rk, &origin, &event, data, exclude.as_slice(), now)
                    }
                    Target::Channel(channel) => {
                        let ck = self
                            .channel_names
                            .get(channel.as_ref())
                            .copied()
                            .filter(|&ck| self.may_publish_channel(s, ck))
                            .ok_or_else(|| {
                                Rejection::new(
                                    ErrorCode::NotMember,
                                    "subscribe to the channel (or join a linked room) before publishing to it",
                                )
                            })?;
                        self.publish_channel(from, ck, &origin, &event, data, exclude.as_slice())
                    }
                    Target::User(user) => {
                        self.publish_user(from, user, &origin, &event, data, exclude.as_slice())
                    }
                };
                let msg = Outgoing::build(|b| {
                    protocol::write_head(b, "ack", id);
                    b.extend_from_slice(b",\"delivered\":");
                    protocol::write_u64(b, delivery.delivered as u64);
                    if let Some(seq) = delivery.seq {
                        b.extend_from_slice(b",\"seq\":");
                        protocol::write_u64(b, seq);
                    }
                    b.push(b'}');
                });
                self.send(conn, &msg);
                Ok(())
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn client_join(
        &mut self,
        s: usize,
        id: Option<&RequestId>,
        room: &str,
        since: Option<u64>,
        epoch: Option<&str>,
        presence: bool,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let conn = self.conns[s].id;
        let existing = self.room_names.get(room).copied();
        let already = existing.is_some_and(|rk| self.conns[s].rooms.contains_key(&rk));
        if !already {
            if existing.is_none() && !self.config.clients_create_rooms {
                return Err(Rejection::new(
                    ErrorCode::Forbidden,
                    "rooms are created by the server",
                ));
            }
            if self.conns[s].rooms.len() >= self.config.max_rooms_per_conn {
                return Err(Rejection::new(
                    ErrorCode::TooManyRooms,
                    "too many rooms joined",
                ));
            }
            if let Some(rk) = existing {
                if self.rooms[rk].is_full(self.config.max_room_members) {
                    return Err(Rejection::new(ErrorCode::RoomFull, "room is full"));
                }
            }
        }
        let rk = match existing {
            Some(rk) => rk,
            None => self.create_room_slot(room, None, None, false),
        };
        let mut recovered = None;
        if already {
            self.set_presence(s, rk, presence);
            if since.is_some() {
                let r = &self.rooms[rk];
                recovered = Some(epoch == Some(&*r.epoch) && since == Some(r.seq));
            }
        } else {
            self.add_member(s, rk, presence);
            if since.is_some() || epoch.is_some() {
                recovered = Some(self.replay(s, rk, since, epoch, now));
            }
        }
        let r = &self.rooms[rk];
        let cap = self.config.max_present_list;
        let conns = &self.conns;
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "ack", id);
            b.extend_from_slice(b",\"room\":");
            protocol::write_str(b, &r.name);
            b.extend_from_slice(b",\"members\":");
            protocol::write_u64(b, r.members.len() as u64);
            b.extend_from_slice(b",\"epoch\":");
            protocol::write_str(b, &r.epoch);
            b.extend_from_slice(b",\"seq\":");
            protocol::write_u64(b, r.seq);
            if let Some(rec) = recovered {
                b.extend_from_slice(if rec {
                    b",\"recovered\":true"
                } else {
                    b",\"recovered\":false"
                });
            }
            if presence {
                b.extend_from_slice(b",\"present\":[");
                for (i, &m) in r.members.iter().take(cap).enumerate() {
                    if i > 0 {
                        b.push(b',');
                    }
                    b.extend_from_slice(&conns[m].peer_json);
                }
                b.push(b']');
            }
            b.push(b'}');
        });
        self.send(conn, &msg);
        Ok(())
    }

    /// Replays history for a (re)join and says whether the client is fully caught up.
    fn replay(
        &mut self,
        s: usize,
        rk: usize,
        since: Option<u64>,
        epoch: Option<&str>,
        now: Timestamp,
    ) -> bool {
        self.trim_history(rk, now);
        let conn = self.conns[s].id;
        let r = &self.rooms[rk];
        let same_epoch = epoch == Some(&*r.epoch);
        let oldest = r.history.front().map(|e| e.seq);
        let (from, recovered) = if same_epoch {
            let since = since.unwrap_or(0);
            if since > r.seq {
                return false;
            }
            if since == r.seq {
                return true;
            }
            match oldest {
                Some(o) if o <= since + 1 => (since + 1, true),
                _ => return false,
            }
        } else {
            match oldest {
                Some(1) => (1, false),
                _ => return false,
            }
        };
        let msgs: Vec<Outgoing> = r
            .history
            .iter()
            .filter(|e| e.seq >= from)
            .map(|e| e.msg.clone())
            .collect();
        for m in &msgs {
            self.send(conn, m);
        }
        recovered
    }

    fn may_publish_channel(&self, s: usize, ck: usize) -> bool {
        let c = &self.conns[s];
        let ch = &self.channels[ck];
        if c.subs.contains(&ck) {
            return true;
        }
        if c.rooms.len() <= ch.rooms.len() {
            c.rooms.keys().any(|rk| ch.rooms.contains(rk))
        } else {
            ch.rooms.iter().any(|rk| c.rooms.contains_key(rk))
        }
    }

    // -----------------------------------------------------------------------------------
    // Membership indexes

    fn create_room_slot(
        &mut self,
        name: &str,
        data: Option<Box<RawValue>>,
        max_members: Option<usize>,
        persistent: bool,
    ) -> usize {
        let uid = self.next_room_uid;
        self.next_room_uid += 1;
        let name: Arc<str> = Arc::from(name);
        let epoch: Arc<str> = Arc::from(format!("{}-{:x}", self.instance, uid));
        let rk = self.rooms.insert(Room::new(
            name.clone(),
            uid,
            epoch,
            data,
            max_members,
            persistent,
            &self.hasher,
        ));
        self.room_names.insert(name, rk);
        rk
    }

    fn add_member(&mut self, s: usize, rk: usize, presence: bool) {
        self.flush_room(rk);
        let id = self.conns[s].id;
        self.rooms[rk].members.insert(s);
        self.conns[s].rooms.insert(rk, false);
        // tell the watchers first, so the joiner's own presence subscription starts after
        if !self.rooms[rk].watchers.is_empty() {
            let peer = self.conns[s].peer_json.clone();
            let room = &self.rooms[rk];
            let msg = presence_msg(&room.name, "joined", &peer);
            let watchers: Vec<usize> = room.watchers.iter().copied().collect();
            for w in watchers {
                let wid = self.conns[w].id;
                self.send(wid, &msg);
            }
        }
        self.set_presence(s, rk, presence);
        let room = self.rooms[rk].name.clone();
        self.outputs
            .push_back(Output::Event(Event::Joined { conn: id, room }));
    }

    fn set_presence(&mut self, s: usize, rk: usize, presence: bool) {
        let flag = self.conns[s]
            .rooms
            .get_mut(&rk)
            .expect("member of the room");
        *flag = presence;
        if presence {
            self.rooms[rk].watchers.insert(s);
        } else {
            self.rooms[rk].watchers.swap_remove(&s);
        }
    }

    fn remove_member(&mut self, s: usize, rk: usize, now: Timestamp) {
        self.flush_room(rk);
        let id = self.conns[s].id;
        self.conns[s].rooms.swap_remove(&rk);
        let room = &mut self.rooms[rk];
        room.members.swap_remove(&s);
        room.watchers.swap_remove(&s);
        if !room.watchers.is_empty() {
            let msg = presence_msg(&room.name, "left", &self.conns[s].peer_json);
            let watchers: Vec<usize> = room.watchers.iter().copied().collect();
            for w in watchers {
                let wid = self.conns[w].id;
                self.send(wid, &msg);
            }
        }
        let name = self.rooms[rk].name.clone();
        self.outputs.push_back(Output::Event(Event::Left {
            conn: id,
            room: name,
        }));
        self.maybe_remove_room(rk, now);
    }

    pub(crate) fn maybe_remove_room(&mut self, rk: usize, now: Timestamp) {
        let hist = &self.config.history;
        let r = &self.rooms[rk];
        if !r.members.is_empty() || r.persistent || !r.channels.is_empty() {
            return;
        }
        if let Some(last) = r.history.back() {
            let expires = last.at.saturating_add(hist.max_age());
            if expires > now {
                if r.expiry_at.is_none() {
                    let uid = r.uid;
                    self.rooms[rk].expiry_at = Some(expires);
                    self.push_timer(expires, Timer::Room { slot: rk, uid });
                }
                return;
            }
        }
        self.drop_room(rk);
    }

    fn drop_room(&mut self, rk: usize) {
        self.flush_room(rk);
        let r = self.rooms.remove(rk);
        self.history_bytes -= r.history.iter().map(|h| h.msg.wire_len()).sum::<usize>();
        self.room_names.remove(&r.name);
        self.outputs
            .push_back(Output::Event(Event::RoomRemoved { room: r.name }));
    }

    pub(crate) fn trim_history(&mut self, rk: usize, now: Timestamp) {
        let hist = &self.config.history;
        let r = &mut self.rooms[rk];
        while let Some(front) = r.history.front() {
            if r.history.len() > hist.max_messages || front.at.saturating_add(hist.max_age()) <= now
            {
                self.history_bytes -= front.msg.wire_len();
                r.history.pop_front();
            } else {
                break;
            }
        }
    }

    /// Brings the history of all rooms together back under its byte budget (to 7/8 of
    /// it, so eviction runs once per eighth of the budget, not on every publish): the
    /// oldest messages go first, whichever room holds them. `keep` is the room being
    /// published to; rooms other than it that end up empty and unused are removed.
    pub(crate) fn evict_history(&mut self, keep: usize, now: Timestamp) {
        let target = self.config.history.max_total_bytes / 8 * 7;
        // Oldest first across rooms: a heap of each room's oldest entry.
        let mut heap: BinaryHeap<Reverse<(Timestamp, u64, usize)>> = self
            .rooms
            .iter()
            .filter_map(|(rk, r)| r.history.front().map(|h| Reverse((h.at, h.seq, rk))))
            .collect();
        let mut emptied = Vec::new();
        while self.history_bytes > target {
            let Some(Reverse((_, _, rk))) = heap.pop() else {
                break;
            };
            let r = &mut self.rooms[rk];
            let Some(front) = r.history.pop_front() else {
                continue;
            };
            self.history_bytes -= front.msg.wire_len();
            self.stats.history_evicted += 1;
            match r.history.front() {
                Some(h) => heap.push(Reverse((h.at, h.seq, rk))),
                None => emptied.push(rk),
            }
        }
        for rk in emptied {
            if rk != keep {
                self.maybe_remove_room(rk, now);
            }
        }
    }

    fn subscribe_slot(&mut self, s: usize, channel: &str) -> Result<(), Rejection> {
        let existing = self.channel_names.get(channel).copied();
        if let Some(ck) = existing {
            if self.conns[s].subs.contains(&ck) {
                return Ok(());
            }
        }
        if self.conns[s].subs.len() >= self.config.max_subscriptions_per_conn {
            return Err(Rejection::new(
                ErrorCode::TooManySubscriptions,
                "too many subscriptions",
            ));
        }
        let ck = match existing {
            Some(ck) => ck,
            None => self.create_channel_slot(channel, false),
        };
        self.channels[ck].subscribers.insert(s);
        self.conns[s].subs.insert(ck);
        let id = self.conns[s].id;
        let name = self.channels[ck].name.clone();
        self.outputs.push_back(Output::Event(Event::Subscribed {
            conn: id,
            channel: name,
        }));
        Ok(())
    }

    fn create_channel_slot(&mut self, name: &str, persistent: bool) -> usize {
        let name: Arc<str> = Arc::from(name);
        let ck = self
            .channels
            .insert(Channel::new(name.clone(), persistent, &self.hasher));
        self.channel_names.insert(name, ck);
        ck
    }

    fn remove_subscriber(&mut self, s: usize, ck: usize) {
        let id = self.conns[s].id;
        self.conns[s].subs.swap_remove(&ck);
        self.channels[ck].subscribers.swap_remove(&s);
        let name = self.channels[ck].name.clone();
        self.outputs.push_back(Output::Event(Event::Unsubscribed {
            conn: id,
            channel: name,
        }));
        self.maybe_remove_channel(ck);
    }

    fn maybe_remove_channel(&mut self, ck: usize) {
        let ch = &self.channels[ck];
        if ch.subscribers.is_empty() && ch.rooms.is_empty() && !ch.persistent {
            let ch = self.channels.remove(ck);
            self.channel_names.remove(&ch.name);
        }
    }

    // -----------------------------------------------------------------------------------
    // Delivery

    /// Queues a message for one connection and charges its output budget. A connection
    /// over budget is marked and closed after the current fan-out (see `reap`), so one
    /// slow reader never stalls or reorders the others.
    fn send(&mut self, id: ConnId, msg: &Outgoing) {
        self.catch_up(id.slot());
        let Hub {
            conns,
            outputs,
            doomed,
            stats,
            config,
            ..
        } = self;
        deliver(
            &mut conns[id.slot()],
            msg,
            outputs,
            doomed,
            stats,
            config.max_buffered_bytes,
        );
    }

    fn reap(&mut self, now: Timestamp) {
        while let Some(id) = self.doomed.pop() {
            if let Ok(s) = self.open_slot(id) {
                self.close_conn(
                    s,
                    code::POLICY,
                    Cow::Borrowed("slow consumer"),
                    DisconnectReason::SlowConsumer,
                    now,
                );
            }
        }
    }

    /// Hands out every coalesced room message now. Call after each batch of inputs when
    /// [`HubConfig::coalesce_room_messages`] is on (a no-op otherwise): until then room
    /// messages wait, so a burst reaches each member as one [`Output::SendFrames`].
    pub fn flush(&mut self) {
        self.flush_rooms();
        // Also closes what the flushes inside membership changes found over budget (the
        // server API's join and leave do not reap themselves).
        if !self.doomed.is_empty() {
            let now = self.clock.now();
            self.reap(now);
        }
    }

    /// Hands out every room's held messages without closing anyone yet: connections
    /// found over budget are closed by the caller's `reap`, after it is done with the
    /// rooms and channels it looked up (a close can remove them).
    fn flush_rooms(&mut self) {
        while let Some(&rk) = self.pending_rooms.last() {
            self.flush_room(rk);
        }
    }

    /// Hands one room's coalesced messages to its members: the whole burst shared, or
    /// the rest of it to members already handed a part. Must run before the room's
    /// membership changes, so exactly the members at publish time receive them.
    fn flush_room(&mut self, rk: usize) {
        let Hub {
            rooms,
            conns,
            outputs,
            doomed,
            stats,
            config,
            pending_rooms,
            ..
        } = self;
        let room = &mut rooms[rk];
        if room.pending.is_empty() {
            return;
        }
        if let Some(i) = pending_rooms.iter().position(|&r| r == rk) {
            pending_rooms.swap_remove(i);
        }
        let msgs = std::mem::take(&mut room.pending);
        room.pending_bytes = 0;
        let whole = (msgs.len() > 1).then(|| Frames::concat(&msgs));
        for &m in room.members.iter() {
            let from = match room.caught_up.is_empty() {
                true => 0,
                false => room.caught_up.get(&m).copied().unwrap_or(0),
            };
            let c = &mut conns[m];
            match (&whole, from) {
                (Some(frames), 0) => {
                    deliver_frames(c, frames, outputs, doomed, stats, config.max_buffered_bytes)
                }
                _ => hand(
                    c,
                    msgs.get(from..).unwrap_or_default(),
                    outputs,
                    doomed,
                    stats,
                    config,
                ),
            }
        }
        room.caught_up.clear();
        // Keep the allocation for the next burst.
        room.pending = msgs;
        room.pending.clear();
    }

    /// Before anything else goes to connection `s`: hands it the coalesced room messages
    /// published before, so it sees everything in the order the hub decided it.
    fn catch_up(&mut self, s: usize) {
        if self.pending_rooms.is_empty() {
            return;
        }
        for i in 0..self.pending_rooms.len() {
            let rk = self.pending_rooms[i];
            if self.conns[s].rooms.contains_key(&rk) {
                self.catch_up_room(s, rk);
            }
        }
    }

    /// Marks connection `s` as having had every coalesced message, without sending any.
    fn skip_pending(&mut self, s: usize) {
        for i in 0..self.pending_rooms.len() {
            let rk = self.pending_rooms[i];
            if self.conns[s].rooms.contains_key(&rk) {
                let room = &mut self.rooms[rk];
                room.caught_up.insert(s, room.pending.len());
            }
        }
    }

    fn catch_up_room(&mut self, s: usize, rk: usize) {
        let Hub {
            rooms,
            conns,
            outputs,
            doomed,
            stats,
            config,
            ..
        } = self;
        let room = &mut rooms[rk];
        let len = room.pending.len();
        let from = room.caught_up.get(&s).copied().unwrap_or(0);
        if from < len {
            hand(
                &mut conns[s],
                &room.pending[from..],
                outputs,
                doomed,
                stats,
                config,
            );
        }
        if len > 0 {
            room.caught_up.insert(s, len.max(from));
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn publish_room(
        &mut self,
        from: Option<&[u8]>,
        rk: usize,
        origin: &Origin,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
        now: Timestamp,
    ) -> Delivery {
        let r = &mut self.rooms[rk];
        r.seq += 1;
        let seq = r.seq;
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "message", None);
            b.extend_from_slice(b",\"room\":");
            protocol::write_str(b, &r.name);
            b.extend_from_slice(b",\"seq\":");
            protocol::write_u64(b, seq);
            write_body(b, event, from, data);
        });
        if self.config.history.max_messages > 0 {
            self.history_bytes += msg.wire_len();
            r.history.push_back(HistoryEntry {
                seq,
                at: now,
                msg: msg.clone(),
            });
            self.trim_history(rk, now);
            if self.history_bytes > self.config.history.max_total_bytes {
                self.evict_history(rk, now);
            }
        }
        let delivered = self.deliver_room(rk, &msg, exclude);
        let room = self.rooms[rk].name.clone();
        self.announce(
            origin,
            Destination::Room(room),
            event,
            data,
            Some(seq),
            delivered,
            msg,
        );
        // A server send to an empty room whose history the byte budget just emptied
        // leaves nothing to keep it for.
        if self.rooms[rk].members.is_empty() {
            self.maybe_remove_room(rk, now);
        }
        self.reap(now);
        Delivery {
            delivered,
            seq: Some(seq),
        }
    }

    /// Hands one encoded message to every member of a room but `exclude` (held for the
    /// burst when coalescing); returns how many members it is for.
    fn deliver_room(&mut self, rk: usize, msg: &Outgoing, exclude: &[ConnId]) -> usize {
        let mut delivered = 0;
        if self.config.coalesce_room_messages {
            // Held until the burst ends; a member excluded from this message is handed
            // everything before it now and skips it.
            for (i, &x) in exclude.iter().enumerate() {
                if exclude[..i].contains(&x) {
                    continue; // listed twice: excluded (and counted) once
                }
                if let Ok(xs) = self.open_slot(x) {
                    if self.rooms[rk].members.contains(&xs) {
                        self.catch_up_room(xs, rk);
                        let skip = self.rooms[rk].pending.len() + 1;
                        self.rooms[rk].caught_up.insert(xs, skip);
                        delivered -= 1;
                    }
                }
            }
            let room = &mut self.rooms[rk];
            delivered += room.members.len() as isize;
            if !room.members.is_empty() {
                if room.pending.is_empty() {
                    self.pending_rooms.push(rk);
                }
                room.pending.push(msg.clone());
                room.pending_bytes += msg.wire_len();
                if room.pending.len() >= MAX_PENDING_MESSAGES
                    || room.pending_bytes >= self.config.max_buffered_bytes / 4
                {
                    self.flush_room(rk);
                }
            }
        } else {
            let Hub {
                rooms,
                conns,
                outputs,
                doomed,
                stats,
                config,
                ..
            } = self;
            for &m in rooms[rk].members.iter() {
                let c = &mut conns[m];
                if exclude.contains(&c.id) {
                    continue;
                }
                delivered += 1;
                deliver(c, msg, outputs, doomed, stats, config.max_buffered_bytes);
            }
        }
        delivered.max(0) as usize
    }

    fn publish_channel(
        &mut self,
        from: Option<&[u8]>,
        ck: usize,
        origin: &Origin,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Delivery {
        self.flush_rooms();
        let ch = &self.channels[ck];
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "message", None);
            b.extend_from_slice(b",\"channel\":");
            protocol::write_str(b, &ch.name);
            write_body(b, event, from, data);
        });
        // A connection reachable several ways (subscriber, member of two linked rooms)
        // gets the message once: each delivery stamps the connection with this fan-out's
        // number, with no per-message set to allocate.
        self.stamp += 1;
        let stamp = self.stamp;
        let mut delivered = 0;
        let Hub {
            rooms,
            conns,
            outputs,
            doomed,
            stats,
            config,
            channels,
            ..
        } = self;
        let ch = &channels[ck];
        let direct = ch.subscribers.iter();
        let via_rooms = ch.rooms.iter().flat_map(|&rk| rooms[rk].members.iter());
        for &m in direct.chain(via_rooms) {
            let c = &mut conns[m];
            if c.stamp == stamp || exclude.contains(&c.id) {
                continue;
            }
            c.stamp = stamp;
            delivered += 1;
            deliver(c, &msg, outputs, doomed, stats, config.max_buffered_bytes);
        }
        let name = self.channels[ck].name.clone();
        self.announce(
            origin,
            Destination::Channel(name),
            event,
            data,
            None,
            delivered,
            msg,
        );
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered,
            seq: None,
        }
    }

    fn publish_user(
        &mut self,
        from: Option<&[u8]>,
        user: &str,
        origin: &Origin,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Delivery {
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "message", None);
            b.extend_from_slice(b",\"user\":");
            protocol::write_str(b, user);
            write_body(b, event, from, data);
        });
        let targets: Vec<ConnId> = self
            .users
            .get(user)
            .map(|v| v.iter().copied().filter(|c| !exclude.contains(c)).collect())
            .unwrap_or_default();
        for &t in &targets {
            self.send(t, &msg);
        }
        self.announce(
            origin,
            Destination::User(Arc::from(user)),
            event,
            data,
            None,
            targets.len(),
            msg,
        );
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered: targets.len(),
            seq: None,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn announce(
        &mut self,
        origin: &Origin,
        destination: Destination,
        event: &str,
        data: Option<&RawValue>,
        seq: Option<u64>,
        delivered: usize,
        message: Outgoing,
    ) {
        if self.config.backplane && !matches!(origin, Origin::Remote { .. }) {
            if let Destination::Room(_)
            | Destination::Channel(_)
            | Destination::User(_)
            | Destination::All = destination
            {
                let from = match origin {
                    Origin::Conn(id) => {
                        let c = &self.conns[id.slot()];
                        Some((c.wire.to_string(), c.user.as_deref().map(str::to_owned)))
                    }
                    _ => None,
                };
                self.outputs.push_back(Output::Forward(Box::new(Forward {
                    destination: destination.clone(),
                    event: event.to_owned(),
                    data: data.map(|d| d.to_owned()),
                    from,
                })));
            }
        }
        self.outputs
            .push_back(Output::Event(Event::Message(Box::new(Published {
                origin: origin.clone(),
                destination,
                event: Arc::from(event),
                seq,
                delivered,
                message,
            }))));
    }

    // -----------------------------------------------------------------------------------
    // Server API

    /// Creates a room that stays until [`Hub::remove_room`], with application data and an
    /// optional member limit. Creating an existing room updates its data and limit.
    pub fn create_room(&mut self, name: &str, options: RoomOptions) -> Result<(), HubError> {
        if !protocol::valid_name(name) {
            return Err(HubError::BadName);
        }
        match self.room_names.get(name).copied() {
            Some(rk) => {
                let r = &mut self.rooms[rk];
                r.persistent = true;
                r.data = options.data;
                r.max_members = options.max_members;
            }
            None => {
                self.create_room_slot(name, options.data, options.max_members, true);
            }
        }
        Ok(())
    }

    /// Removes a room: every member leaves it (presence `left` to watchers), its
    /// history goes, and channels stop linking it.
    pub fn remove_room(&mut self, name: &str) -> Result<(), HubError> {
        let rk = *self.room_names.get(name).ok_or(HubError::UnknownRoom)?;
        let now = self.clock.now();
        self.flush_room(rk);
        self.rooms[rk].persistent = true; // keep the slot stable while members leave
        let members: Vec<usize> = self.rooms[rk].members.iter().copied().collect();
        for m in members {
            self.remove_member(m, rk, now);
        }
        let links: Vec<usize> = self.rooms[rk].channels.iter().copied().collect();
        for ck in links {
            self.channels[ck].rooms.swap_remove(&rk);
            self.maybe_remove_channel(ck);
        }
        self.drop_room(rk);
        Ok(())
    }

    /// Names of every room.
    pub fn rooms(&self) -> impl Iterator<Item = &str> + '_ {
        self.rooms.iter().map(|(_, r)| &*r.name)
    }

    /// Members of a room, `None` if it does not exist.
    pub fn room_size(&self, room: &str) -> Option<usize> {
        self.room_names
            .get(room)
            .map(|&rk| self.rooms[rk].members.len())
    }

    /// The connections in a room.
    pub fn room_members(&self, room: &str) -> Vec<ConnId> {
        self.room_names
            .get(room)
            .map(|&rk| {
                self.rooms[rk]
                    .members
                    .iter()
                    .map(|&m| self.conns[m].id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The application data set with [`Hub::create_room`].
    pub fn room_data(&self, room: &str) -> Option<&RawValue> {
        let &rk = self.room_names.get(room)?;
        self.rooms[rk].data.as_deref()
    }

    /// The room's `(epoch, seq)`: what a client would resume from.
    pub fn room_position(&self, room: &str) -> Option<(&str, u64)> {
        let &rk = self.room_names.get(room)?;
        Some((&self.rooms[rk].epoch, self.rooms[rk].seq))
    }

    /// Whether a connection is in a room.
    pub fn is_member(&self, id: ConnId, room: &str) -> bool {
        match (self.slot_of(id), self.room_names.get(room)) {
            (Ok(s), Some(rk)) => self.conns[s].rooms.contains_key(rk),
            _ => false,
        }
    }

    /// The rooms a connection is in.
    pub fn rooms_of(&self, id: ConnId) -> Vec<&str> {
        match self.slot_of(id) {
            Ok(s) => self.conns[s]
                .rooms
                .keys()
                .map(|&rk| &*self.rooms[rk].name)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Puts a connection in a room from the server side (no ack is sent; watchers see a
    /// presence `joined`). Ignores the client limits except the room's member limit.
    pub fn join(&mut self, id: ConnId, room: &str, presence: bool) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        if !protocol::valid_name(room) {
            return Err(HubError::BadName);
        }
        let rk = match self.room_names.get(room).copied() {
            Some(rk) => rk,
            None => self.create_room_slot(room, None, None, false),
        };
        if self.conns[s].rooms.contains_key(&rk) {
            self.set_presence(s, rk, presence);
            return Ok(());
        }
        if self.rooms[rk].is_full(self.config.max_room_members) {
            return Err(HubError::RoomFull);
        }
        self.add_member(s, rk, presence);
        Ok(())
    }

    /// Takes a connection out of a room from the server side.
    pub fn leave(&mut self, id: ConnId, room: &str) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        let rk = *self.room_names.get(room).ok_or(HubError::UnknownRoom)?;
        if !self.conns[s].rooms.contains_key(&rk) {
            return Err(HubError::NotMember);
        }
        let now = self.clock.now();
        self.remove_member(s, rk, now);
        Ok(())
    }

    /// Takes a connection out of every room, in O(its rooms).
    pub fn leave_all(&mut self, id: ConnId) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        let now = self.clock.now();
        let rooms: Vec<usize> = self.conns[s].rooms.keys().copied().collect();
        for rk in rooms {
            self.remove_member(s, rk, now);
        }
        Ok(())
    }

    /// Creates a channel linking these rooms (creating missing rooms as persistent); an
    /// existing channel gains the links.
    pub fn create_channel(&mut self, name: &str, rooms: &[&str]) -> Result<(), HubError> {
        if !protocol::valid_name(name) || !rooms.iter().all(|r| protocol::valid_name(r)) {
            return Err(HubError::BadName);
        }
        let ck = match self.channel_names.get(name).copied() {
            Some(ck) => ck,
            None => self.create_channel_slot(name, true),
        };
        self.channels[ck].persistent = true;
        for r in rooms {
            self.link_room(name, r)?;
        }
        Ok(())
    }

    /// Links a room to a channel: its members receive the channel's messages.
    pub fn link_room(&mut self, channel: &str, room: &str) -> Result<(), HubError> {
        if !protocol::valid_name(room) {
            return Err(HubError::BadName);
        }
        let ck = *self
            .channel_names
            .get(channel)
            .ok_or(HubError::UnknownChannel)?;
        let rk = match self.room_names.get(room).copied() {
            Some(rk) => rk,
            None => self.create_room_slot(room, None, None, true),
        };
        self.channels[ck].rooms.insert(rk);
        self.rooms[rk].channels.insert(ck);
        Ok(())
    }

    /// Unlinks a room from a channel.
    pub fn unlink_room(&mut self, channel: &str, room: &str) -> Result<(), HubError> {
        let ck = *self
            .channel_names
            .get(channel)
            .ok_or(HubError::UnknownChannel)?;
        let rk = *self.room_names.get(room).ok_or(HubError::UnknownRoom)?;
        self.channels[ck].rooms.swap_remove(&rk);
        self.rooms[rk].channels.swap_remove(&ck);
        let now = self.clock.now();
        self.maybe_remove_room(rk, now);
        Ok(())
    }

    /// Names of every channel.
    pub fn channels(&self) -> impl Iterator<Item = &str> + '_ {
        self.channels.iter().map(|(_, c)| &*c.name)
    }

    /// Direct subscribers of a channel (not counting members of linked rooms).
    pub fn channel_subscribers(&self, channel: &str) -> Vec<ConnId> {
        self.channel_names
            .get(channel)
            .map(|&ck| {
                self.channels[ck]
                    .subscribers
                    .iter()
                    .map(|&s| self.conns[s].id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Subscribes a connection from the server side.
    pub fn subscribe(&mut self, id: ConnId, channel: &str) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        if !protocol::valid_name(channel) {
            return Err(HubError::BadName);
        }
        self.subscribe_slot(s, channel)
            .map_err(|_| HubError::NotMember)
    }

    /// Unsubscribes a connection from the server side.
    pub fn unsubscribe(&mut self, id: ConnId, channel: &str) -> Result<(), HubError> {
        let s = self.open_slot(id)?;
        let ck = *self
            .channel_names
            .get(channel)
            .ok_or(HubError::UnknownChannel)?;
        if self.conns[s].subs.contains(&ck) {
            self.remove_subscriber(s, ck);
        }
        Ok(())
    }

    /// Connections of a user.
    pub fn user_connections(&self, user: &str) -> &[ConnId] {
        self.users.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// Sends an event to a room from the server (`from: null`), except `exclude`.
    pub fn send_to_room(
        &mut self,
        room: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        check_event(event)?;
        let rk = *self.room_names.get(room).ok_or(HubError::UnknownRoom)?;
        let now = self.clock.now();
        Ok(self.publish_room(None, rk, &Origin::Server, event, data, exclude, now))
    }

    /// Sends `text` to every member of a room but `exclude` exactly as given: one text
    /// frame whose payload is `text`, with no `message` envelope, no `seq` and no
    /// history entry.
    ///
    /// For rooms whose members speak a format of their own over roomcast's membership,
    /// ordering and flow control (the benchmark protocol of `roomcast --bench-protocol`,
    /// a game relaying its own state encoding): a JSON-protocol client in such a room
    /// gets text it cannot parse. The message keeps its place among the room's other
    /// messages, goes through the same coalescing and unsent-bytes budget, and is neither
    /// announced as an event nor forwarded to a backplane.
    pub fn send_raw_to_room(
        &mut self,
        room: &str,
        text: &str,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        let rk = *self.room_names.get(room).ok_or(HubError::UnknownRoom)?;
        let msg = Outgoing::from_text(text);
        let delivered = self.deliver_room(rk, &msg, exclude);
        let now = self.clock.now();
        self.reap(now);
        Ok(Delivery {
            delivered,
            seq: None,
        })
    }

    /// Sends an event to a channel from the server, except `exclude`.
    pub fn send_to_channel(
        &mut self,
        channel: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        check_event(event)?;
        let ck = *self
            .channel_names
            .get(channel)
            .ok_or(HubError::UnknownChannel)?;
        Ok(self.publish_channel(None, ck, &Origin::Server, event, data, exclude))
    }

    /// Sends an event to every connection of a user, except `exclude`.
    pub fn send_to_user(
        &mut self,
        user: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        check_event(event)?;
        if !protocol::valid_name(user) {
            return Err(HubError::BadName);
        }
        Ok(self.publish_user(None, user, &Origin::Server, event, data, exclude))
    }

    /// Sends an event to one connection.
    pub fn send_to_conn(
        &mut self,
        id: ConnId,
        event: &str,
        data: Option<&RawValue>,
    ) -> Result<Delivery, HubError> {
        check_event(event)?;
        self.open_slot(id)?;
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "message", None);
            write_body(b, event, None, data);
        });
        self.send(id, &msg);
        self.announce(
            &Origin::Server,
            Destination::Conn(id),
            event,
            data,
            None,
            1,
            msg,
        );
        let now = self.clock.now();
        self.reap(now);
        Ok(Delivery {
            delivered: 1,
            seq: None,
        })
    }

    /// Sends an event to every open connection except `exclude`.
    pub fn broadcast(
        &mut self,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        check_event(event)?;
        Ok(self.broadcast_from(&Origin::Server, event, data, exclude))
    }

    fn broadcast_from(
        &mut self,
        origin: &Origin,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Delivery {
        self.flush_rooms();
        let msg = Outgoing::build(|b| {
            protocol::write_head(b, "message", None);
            write_body(b, event, None, data);
        });
        let mut delivered = 0;
        let Hub {
            conns,
            outputs,
            doomed,
            stats,
            config,
            ..
        } = self;
        for (_, c) in conns.iter_mut() {
            if c.state != ConnState::Open || exclude.contains(&c.id) {
                continue;
            }
            delivered += 1;
            deliver(c, &msg, outputs, doomed, stats, config.max_buffered_bytes);
        }
        self.announce(origin, Destination::All, event, data, None, delivered, msg);
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered,
            seq: None,
        }
    }

    /// Delivers a publish that another node forwarded through the backplane, to this
    /// node's receivers only (it is not forwarded again).
    pub fn handle_remote(&mut self, now: Timestamp, node: u64, fwd: &Forward) {
        let now = self.clock.advance(now);
        let origin = Origin::Remote { node };
        let event = fwd.event.as_str();
        if !protocol::valid_name(event) {
            return;
        }
        let data = fwd.data.as_deref();
        let from_buf = fwd.from.as_ref().map(|(conn, user)| {
            let mut b = Vec::new();
            protocol::write_peer(&mut b, conn, user.as_deref());
            b
        });
        let from = from_buf.as_deref();
        match &fwd.destination {
            Destination::Room(room) => {
                if let Some(&rk) = self.room_names.get(&**room) {
                    self.publish_room(from, rk, &origin, event, data, &[], now);
                }
            }
            Destination::Channel(ch) => {
                if let Some(&ck) = self.channel_names.get(&**ch) {
                    self.publish_channel(from, ck, &origin, event, data, &[]);
                }
            }
            Destination::User(u) => {
                self.publish_user(from, u, &origin, event, data, &[]);
            }
            Destination::All => {
                self.broadcast_from(&origin, event, data, &[]);
            }
            Destination::Conn(_) => {}
        }
    }
}

fn check_event(event: &str) -> Result<(), HubError> {
    if protocol::valid_name(event) {
        Ok(())
    } else {
        Err(HubError::BadName)
    }
}

/// The shared tail of every `message`: event, sender and data.
fn write_body(b: &mut Vec<u8>, event: &str, from: Option<&[u8]>, data: Option<&RawValue>) {
    b.extend_from_slice(b",\"event\":");
    protocol::write_str(b, event);
    b.extend_from_slice(b",\"from\":");
    match from {
        Some(f) => b.extend_from_slice(f),
        None => b.extend_from_slice(b"null"),
    }
    b.extend_from_slice(b",\"data\":");
    match data {
        Some(d) => b.extend_from_slice(d.get().as_bytes()),
        None => b.extend_from_slice(b"null"),
    }
    b.push(b'}');
}

fn deliver(
    c: &mut Conn,
    msg: &Outgoing,
    outputs: &mut VecDeque<Output>,
    doomed: &mut Vec<ConnId>,
    stats: &mut Stats,
    max_buffered: usize,
) {
    if charge(c, msg.wire_len(), 1, doomed, stats, max_buffered) {
        outputs.push_back(Output::Send {
            conn: c.id,
            msg: msg.clone(),
        });
    }
}

fn deliver_frames(
    c: &mut Conn,
    frames: &Frames,
    outputs: &mut VecDeque<Output>,
    doomed: &mut Vec<ConnId>,
    stats: &mut Stats,
    max_buffered: usize,
) {
    let (len, count) = (frames.wire_len(), frames.count());
    if charge(c, len, count, doomed, stats, max_buffered) {
        outputs.push_back(Output::SendFrames {
            conn: c.id,
            frames: frames.clone(),
        });
    }
}

/// Charges `len` bytes of `count` messages to a connection's output budget and the
/// stats; `false` (nothing to send) when the connection is no longer open.
///
/// Slow is a backlog already over budget when the next message comes: one message alone
/// (a message near the size limit is a little bigger than it once wrapped) never makes a
/// reader slow, and flush reports may lag a little. A connection holds at most the
/// budget plus one message or burst. Over budget, it is marked and closed after the
/// current fan-out (see `Hub::reap`).
fn charge(
    c: &mut Conn,
    len: usize,
    count: usize,
    doomed: &mut Vec<ConnId>,
    stats: &mut Stats,
    max_buffered: usize,
) -> bool {
    if c.state != ConnState::Open {
        return false;
    }
    let backlog = c.unsent;
    c.unsent += len;
    if backlog > max_buffered && !c.doomed {
        c.doomed = true;
        doomed.push(c.id);
    }
    stats.messages_out += count as u64;
    stats.bytes_out += len as u64;
    true
}

/// Hands one connection some coalesced messages: one output either way.
fn hand(
    c: &mut Conn,
    msgs: &[Outgoing],
    outputs: &mut VecDeque<Output>,
    doomed: &mut Vec<ConnId>,
    stats: &mut Stats,
    config: &HubConfig,
) {
    match msgs {
        [] => {}
        [one] => deliver(c, one, outputs, doomed, stats, config.max_buffered_bytes),
        more => deliver_frames(
            c,
            &Frames::concat(more),
            outputs,
            doomed,
            stats,
            config.max_buffered_bytes,
        ),
    }
}

fn presence_msg(room: &str, kind: &str, peer: &[u8]) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "presence", None);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, room);
        b.extend_from_slice(b",\"");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\":[");
        b.extend_from_slice(peer);
        b.extend_from_slice(b"]}");
    })
}

fn ack_with(id: Option<&RequestId>, field: &str, value: &str) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.extend_from_slice(b",\"");
        b.extend_from_slice(field.as_bytes());
        b.extend_from_slice(b"\":");
        protocol::write_str(b, value);
        b.push(b'}');
    })
}

fn pong_heartbeat() -> Outgoing {
    Outgoing::from_text(protocol::HEARTBEAT_PONG)
}

fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

#[cfg(test)]
mod tests;
