//! The reconnecting client, as a sans-IO state machine.
//!
//! Realtime apps lose most messages around reconnects, and reconnect storms come from
//! bad client defaults. So the client logic lives here once, tested with no I/O, and the
//! browser package (wasm) and the native client only move text and time in and out:
//! - reconnect with exponential backoff and full jitter from a caller-seeded generator,
//!   reset after a stable connection; no retry after 1008, 1009 or [`Client::close`];
//! - after every reconnect: rejoin every room with `since`/`epoch` (messages are
//!   delivered exactly once: replays are de-duplicated by seq, and a changed epoch is
//!   detected from the ack), resubscribe every channel, then flush publishes queued
//!   while offline (bounded, oldest dropped, with a count);
//! - every request carries an id and an ack deadline;
//! - application heartbeat: `{"type":"ping"}` every interval from the welcome, and a
//!   connection with no message for `timeout_ms` after a ping is declared dead;
//! - tokens ([`ClientConfig::token`]): a fresh one is asked of the application
//!   ([`ClientOutput::FetchToken`]) before every connect and when the server says the
//!   current one is `expiring`; it travels as the first message `auth`, never in the
//!   URL. A 4001 close reconnects with a new token; 4003 (and 1008, 1009) ends the
//!   client: retrying could not change the server's mind;
//! - rooms the server put the connection in (`joined`: a token's `rooms` claim, the
//!   server API, a hook) are tracked like the application's own joins, and `left`
//!   forgets them.
//!
//! Sockets are numbered: every [`ClientOutput::Connect`] names a new socket id and the
//! adapter passes it back with each input, so late events from a socket the machine has
//! already given up on are ignored instead of corrupting the new one.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use serde::Deserialize;
use serde_json::value::RawValue;

use crate::close::code as close;
use crate::protocol::{self, Presence, HEARTBEAT_PING};
use crate::rng::Rng;
use crate::time::{Clock, Timestamp};

/// Client settings; `Default` gives the documented defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClientConfig {
    /// WebSocket URL to connect to (with `?user=` if any).
    pub url: String,
    /// Other URLs of the same service (other nodes sharing one Redis): after a failed
    /// attempt or a lost connection the next attempt goes to the next URL in turn, so a
    /// dead node costs one retry, and recovery (`since`) works on any node.
    pub fallback_urls: Vec<String>,
    /// Upper bound of the first retry delay (full jitter: uniform in 0..=this).
    pub backoff_initial_ms: u64,
    /// Upper bound of any retry delay.
    pub backoff_max_ms: u64,
    /// A connection open this long resets the backoff.
    pub stable_after_ms: u64,
    /// Publishes kept while offline; the oldest are dropped past this.
    pub offline_queue: usize,
    /// How long a request waits for its ack before failing with `timeout`.
    pub ack_timeout_ms: u64,
    /// How long a socket may take to open and send its welcome (and, with
    /// [`ClientConfig::token`], how long the application may take to supply a token).
    pub connect_timeout_ms: u64,
    /// The server wants a signed token: the machine asks the application for one
    /// ([`ClientOutput::FetchToken`]) before every connect and on `expiring`, because a
    /// token is short-lived and only the application knows how to get a new one.
    pub token: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        ClientConfig {
            url: String::new(),
            fallback_urls: Vec::new(),
            backoff_initial_ms: 500,
            backoff_max_ms: 30_000,
            stable_after_ms: 10_000,
            offline_queue: 256,
            ack_timeout_ms: 10_000,
            connect_timeout_ms: 10_000,
            token: false,
        }
    }
}

/// Where the client is in its life.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientState {
    /// Opening a socket (first time or after a retry delay).
    Connecting,
    /// Welcomed by the server.
    Open,
    /// Waiting `delay_ms` before retry number `attempt`.
    Reconnecting {
        /// Retry number, from 1.
        attempt: u32,
        /// Delay before it, in ms.
        delay_ms: u64,
    },
    /// Closed for good: by [`Client::close`], or by the server with 1008, 1009 or 4003.
    Closed {
        /// The close code that ended it, if a server sent one.
        code: Option<u16>,
    },
}

/// A connection as the server shows it: `{conn, user, info}`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct Peer {
    /// Opaque connection id.
    pub conn: String,
    /// User, if any.
    pub user: Option<String>,
    /// The user's public profile from their token's `info` claim, if any.
    #[serde(default)]
    pub info: Option<serde_json::Value>,
}

/// Where a delivered message came through.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Via {
    /// A room, with the message's seq.
    Room {
        /// Room name.
        room: String,
        /// Its seq.
        seq: u64,
    },
    /// A channel.
    Channel(String),
    /// Addressed to a user.
    User(String),
    /// A server broadcast or a message to this connection only.
    Direct,
}

/// A delivered message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// How it arrived.
    pub via: Via,
    /// Event name.
    pub event: String,
    /// Sender, `None` for the server.
    pub from: Option<Peer>,
    /// Raw JSON data.
    pub data: String,
    /// When the server accepted it (ms since the Unix epoch); `None` from a server
    /// that does not say.
    pub ts: Option<u64>,
}

/// What the application hears.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientEvent {
    /// The state changed.
    State(ClientState),
    /// The server welcomed a (new) connection.
    Welcome {
        /// Our connection id on the server.
        conn: String,
        /// Our user as the server sees it.
        user: Option<String>,
        /// Our public profile (the token's `info` claim), if any.
        info: Option<serde_json::Value>,
    },
    /// The server put this connection in a room (a token's `rooms` claim, the server
    /// API, a hook): it is now tracked like a room joined by [`Client::join`], rejoined
    /// with recovery after a reconnect.
    Joined {
        /// The room.
        room: String,
        /// The server's raw `joined` message (members, epoch, seq).
        body: String,
    },
    /// The server took this connection out of a room (`server`, `room_removed`,
    /// `token_expired`): it is no longer rejoined.
    Left {
        /// The room.
        room: String,
        /// Why, as the server said.
        reason: String,
    },
    /// A message arrived (exactly once per room seq).
    Message(Message),
    /// Someone joined or left a room we watch.
    Presence {
        /// The room.
        room: String,
        /// Who joined.
        joined: Vec<Peer>,
        /// Who left.
        left: Vec<Peer>,
    },
    /// A request succeeded; `body` is the raw ack JSON.
    Ack {
        /// The id [`Client`] returned for the request.
        id: u64,
        /// The ack as sent by the server.
        body: String,
    },
    /// A request failed (server `error`, or `timeout` when no ack came in time).
    Error {
        /// The request id, if it was one of ours.
        id: Option<u64>,
        /// Protocol error code, or `timeout` / `closed`.
        code: String,
        /// For humans.
        message: String,
    },
    /// After a rejoin: whether everything missed while away was replayed.
    Recovered {
        /// The room.
        room: String,
        /// True when nothing was lost.
        recovered: bool,
    },
    /// The automatic rejoin after a reconnect was acknowledged: `ack` is the server's
    /// raw join ack (members, present list, seq), so the application can refresh what it
    /// shows about the room.
    Rejoined {
        /// The room.
        room: String,
        /// The raw ack JSON.
        ack: String,
    },
    /// Offline publishes were dropped because the queue was full (total so far).
    Dropped {
        /// How many have been dropped since the client started.
        total: u64,
    },
}

/// What the adapter must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientOutput {
    /// Open a WebSocket to `url`; report with this socket id.
    Connect {
        /// Socket id for later inputs.
        socket: u64,
        /// Where to.
        url: String,
    },
    /// Send this text on the socket.
    Send {
        /// Which socket.
        socket: u64,
        /// The text.
        text: String,
    },
    /// Close that socket (the machine has already moved on).
    Close {
        /// Which socket.
        socket: u64,
        /// Close code.
        code: u16,
        /// Reason.
        reason: String,
    },
    /// The application must supply a token: answer with [`Client::handle_token`] and
    /// this ticket (a late answer to an older ticket is ignored).
    FetchToken {
        /// Echo this back.
        ticket: u64,
    },
    /// For the application.
    Event(ClientEvent),
}

/// What to publish to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishTarget {
    /// A room (must be joined).
    Room(String),
    /// A channel.
    Channel(String),
    /// Every connection of a user.
    User(String),
}

/// Caller mistakes (never caused by the server).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    /// The name breaks the naming rules.
    #[error("invalid name")]
    BadName,
    /// `data` is not valid JSON.
    #[error("data is not valid JSON")]
    BadData,
    /// The client was closed.
    #[error("client closed")]
    Closed,
}

#[derive(Debug, Clone)]
struct RoomState {
    presence: Presence,
    epoch: Option<String>,
    last_seq: Option<u64>,
    /// A join is in flight on the current socket: hold this room's messages until its
    /// ack says which epoch they belong to.
    pending_join: Option<u64>,
    held: Vec<(u64, Message)>,
    /// The application's join request ids waiting for an ack (a second `join` before
    /// the first is answered waits for the same ack).
    waiting: Vec<u64>,
}

#[derive(Debug, Clone)]
enum Pending {
    /// Internal rejoin or the user's join.
    Join(String),
    /// A publish, with its room if it went to one.
    Publish(Option<String>),
    Other,
}

#[derive(Debug, Clone)]
struct InFlight {
    kind: Pending,
    deadline: Timestamp,
    /// Surface ack/error to the application.
    visible: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the application's token before opening a socket.
    Token {
        since: Timestamp,
    },
    /// Socket requested, waiting for open + welcome.
    Connecting {
        since: Timestamp,
    },
    Open {
        since: Timestamp,
    },
    Waiting {
        until: Timestamp,
    },
    Closed,
}

/// The reconnecting client machine. See the module docs.
pub struct Client {
    config: ClientConfig,
    clock: Clock,
    rng: Rng,
    socket: u64,
    phase: Phase,
    attempt: u32,
    /// Which URL the next connect uses: 0 is `url`, then `fallback_urls`.
    url_index: usize,
    state: ClientState,
    rooms: BTreeMap<String, RoomState>,
    channels: BTreeSet<String>,
    /// Publishes made while offline.
    queue: VecDeque<(u64, Pending, String)>,
    dropped: u64,
    in_flight: BTreeMap<u64, InFlight>,
    next_id: u64,
    heartbeat_interval: u64,
    heartbeat_timeout: u64,
    last_ping: Timestamp,
    /// A ping was sent and nothing has arrived since.
    awaiting_since_ping: bool,
    outputs: VecDeque<ClientOutput>,
    /// The last [`ClientOutput::FetchToken`] ticket; answers to older ones are stale.
    token_ticket: u64,
    /// What the awaited token is for, if one is awaited.
    token_use: Option<TokenUse>,
    /// The token to send as `auth` once the current socket opens.
    connect_token: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TokenUse {
    Connect,
    Refresh,
}

#[derive(Deserialize)]
struct ServerMsg<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    #[serde(default)]
    id: Option<serde_json::Value>,
    #[serde(default)]
    conn: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    info: Option<serde_json::Value>,
    #[serde(default)]
    reason: Option<String>,
    #[serde(default)]
    room: Option<String>,
    #[serde(default)]
    channel: Option<String>,
    #[serde(default)]
    seq: Option<u64>,
    #[serde(default)]
    ts: Option<u64>,
    #[serde(default)]
    epoch: Option<String>,
    #[serde(default)]
    recovered: Option<bool>,
    #[serde(default)]
    event: Option<String>,
    #[serde(default)]
    from: Option<Peer>,
    #[serde(default, borrow)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    joined: Vec<Peer>,
    #[serde(default)]
    left: Vec<Peer>,
    #[serde(default)]
    heartbeat: Option<Heartbeat>,
}

#[derive(Deserialize)]
struct Heartbeat {
    interval_ms: u64,
    timeout_ms: u64,
}

impl Client {
    /// Starts a client: it immediately asks the adapter to connect. `seed` feeds the
    /// backoff jitter; pass bytes from the platform's CSPRNG so clients don't retry in
    /// lockstep.
    pub fn new(config: ClientConfig, seed: [u8; 32], now: Timestamp) -> Client {
        let mut c = Client {
            config,
            clock: Clock::new(now),
            rng: Rng::from_seed(seed),
            socket: 0,
            phase: Phase::Closed,
            attempt: 0,
            url_index: 0,
            state: ClientState::Connecting,
            rooms: BTreeMap::new(),
            channels: BTreeSet::new(),
            queue: VecDeque::new(),
            dropped: 0,
            in_flight: BTreeMap::new(),
            next_id: 1,
            heartbeat_interval: 25_000,
            heartbeat_timeout: 20_000,
            last_ping: now,
            awaiting_since_ping: false,
            outputs: VecDeque::new(),
            token_ticket: 0,
            token_use: None,
            connect_token: None,
        };
        c.open_socket(now);
        c.set_state(ClientState::Connecting);
        c
    }

    /// The current state.
    pub fn state(&self) -> &ClientState {
        &self.state
    }

    /// Rooms this client is (or will be, once connected) in.
    pub fn rooms(&self) -> impl Iterator<Item = &str> {
        self.rooms.keys().map(String::as_str)
    }

    /// Channels this client subscribes to.
    pub fn channels(&self) -> impl Iterator<Item = &str> {
        self.channels.iter().map(String::as_str)
    }

    /// The last seq seen in a room.
    pub fn last_seq(&self, room: &str) -> Option<u64> {
        self.rooms.get(room).and_then(|r| r.last_seq)
    }

    /// Next output, `None` when there is nothing to do.
    pub fn poll_output(&mut self) -> Option<ClientOutput> {
        self.outputs.pop_front()
    }

    /// The next deadline (retry, heartbeat, ack timeout, connect timeout), or `None`.
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let mut next: Option<Timestamp> = None;
        let mut consider = |t: Timestamp| {
            next = Some(next.map_or(t, |n: Timestamp| n.min(t)));
        };
        match self.phase {
            Phase::Token { since } | Phase::Connecting { since } => consider(Timestamp(
                since.0.saturating_add(self.config.connect_timeout_ms),
            )),
            Phase::Open { .. } => {
                if self.awaiting_since_ping {
                    consider(Timestamp(
                        self.last_ping.0.saturating_add(self.heartbeat_timeout),
                    ));
                } else {
                    consider(Timestamp(
                        self.last_ping.0.saturating_add(self.heartbeat_interval),
                    ));
                }
            }
            Phase::Waiting { until } => consider(until),
            Phase::Closed => {}
        }
        for f in self.in_flight.values() {
            consider(f.deadline);
        }
        next
    }

    fn id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    fn set_state(&mut self, s: ClientState) {
        if self.state != s || matches!(s, ClientState::Reconnecting { .. }) {
            self.state = s.clone();
            self.outputs
                .push_back(ClientOutput::Event(ClientEvent::State(s)));
        }
    }

    fn is_open(&self) -> bool {
        matches!(self.phase, Phase::Open { .. })
    }

    fn send(&mut self, text: String) {
        self.outputs.push_back(ClientOutput::Send {
            socket: self.socket,
            text,
        });
    }

    fn request(&mut self, id: u64, kind: Pending, visible: bool, text: String) {
        let now = self.clock.now();
        self.in_flight.insert(
            id,
            InFlight {
                kind,
                deadline: Timestamp(now.0.saturating_add(self.config.ack_timeout_ms)),
                visible,
            },
        );
        self.send(text);
    }

    /// Opens a new socket, first asking for a token when the server wants one.
    fn open_socket(&mut self, now: Timestamp) {
        if self.config.token {
            self.phase = Phase::Token { since: now };
            self.fetch_token(TokenUse::Connect);
        } else {
            self.connect(now, None);
        }
    }

    fn connect(&mut self, now: Timestamp, token: Option<String>) {
        self.socket += 1;
        self.connect_token = token;
        self.phase = Phase::Connecting { since: now };
        let url = match self.url_index {
            0 => &self.config.url,
            i => &self.config.fallback_urls[i - 1],
        };
        self.outputs.push_back(ClientOutput::Connect {
            socket: self.socket,
            url: url.clone(),
        });
    }

    fn fetch_token(&mut self, purpose: TokenUse) {
        self.token_ticket += 1;
        self.token_use = Some(purpose);
        self.outputs.push_back(ClientOutput::FetchToken {
            ticket: self.token_ticket,
        });
    }

    // -----------------------------------------------------------------------------------
    // Application API

    /// Joins a room (now, or as soon as connected) and keeps it joined across reconnects,
    /// with presence off (`false`), per connection (`true`) or per user
    /// ([`Presence::Users`]). Returns the request id its ack or error will carry.
    pub fn join(&mut self, room: &str, presence: impl Into<Presence>) -> Result<u64, ClientError> {
        let presence = presence.into();
        self.check_open_or_pending()?;
        if !protocol::valid_name(room) {
            return Err(ClientError::BadName);
        }
        let id = self.id();
        let entry = self.rooms.entry(room.to_owned()).or_insert(RoomState {
            presence,
            epoch: None,
            last_seq: None,
            pending_join: None,
            held: Vec::new(),
            waiting: Vec::new(),
        });
        entry.presence = presence;
        entry.waiting.push(id);
        let in_flight = entry.pending_join.is_some();
        if self.is_open() && !in_flight {
            self.send_join(room, id, true);
        }
        Ok(id)
    }

    /// Leaves a room (it will not be rejoined).
    pub fn leave(&mut self, room: &str) -> Result<u64, ClientError> {
        self.check_open_or_pending()?;
        if !protocol::valid_name(room) {
            return Err(ClientError::BadName);
        }
        let id = self.id();
        let removed = self.rooms.remove(room);
        let was = removed.is_some();
        if let Some(r) = removed {
            for w in r.waiting {
                // its ack (if the join was sent) is no longer awaited
                self.in_flight.remove(&w);
                self.event(ClientEvent::Error {
                    id: Some(w),
                    code: "cancelled".into(),
                    message: "left the room before the join completed".into(),
                });
            }
        }
        let send = self.is_open() && was;
        self.request_or_ack(id, send, "leave", "room", room);
        Ok(id)
    }

    /// Subscribes to a channel and keeps the subscription across reconnects.
    pub fn subscribe(&mut self, channel: &str) -> Result<u64, ClientError> {
        self.check_open_or_pending()?;
        if !protocol::valid_name(channel) {
            return Err(ClientError::BadName);
        }
        let id = self.id();
        self.channels.insert(channel.to_owned());
        let send = self.is_open();
        self.request_or_ack(id, send, "subscribe", "channel", channel);
        Ok(id)
    }

    /// Unsubscribes from a channel.
    pub fn unsubscribe(&mut self, channel: &str) -> Result<u64, ClientError> {
        self.check_open_or_pending()?;
        let id = self.id();
        let was = self.channels.remove(channel);
        let send = self.is_open() && was;
        self.request_or_ack(id, send, "unsubscribe", "channel", channel);
        Ok(id)
    }

    /// Publishes an event. `data` is raw JSON text (`None` sends none). While offline it
    /// is queued (bounded, oldest dropped) and sent after the rejoin.
    pub fn publish(
        &mut self,
        target: PublishTarget,
        event: &str,
        data: Option<&str>,
        echo: bool,
    ) -> Result<u64, ClientError> {
        self.check_open_or_pending()?;
        let name = match &target {
            PublishTarget::Room(n) | PublishTarget::Channel(n) | PublishTarget::User(n) => n,
        };
        if !protocol::valid_name(name) || !protocol::valid_name(event) {
            return Err(ClientError::BadName);
        }
        let data = checked_data(data)?;
        let id = self.id();
        let mut text = String::with_capacity(64);
        text.push_str("{\"type\":\"publish\",\"id\":");
        text.push_str(&id.to_string());
        let (field, value) = match &target {
            PublishTarget::Room(n) => ("room", n),
            PublishTarget::Channel(n) => ("channel", n),
            PublishTarget::User(n) => ("user", n),
        };
        text.push_str(&format!(",\"{field}\":"));
        text.push_str(&serde_json::to_string(value).expect("strings serialize"));
        text.push_str(",\"event\":");
        text.push_str(&serde_json::to_string(event).expect("strings serialize"));
        push_data(&mut text, data.as_deref());
        if echo {
            text.push_str(",\"echo\":true");
        }
        text.push('}');
        let kind = Pending::Publish(match target {
            PublishTarget::Room(r) => Some(r),
            _ => None,
        });
        self.request_or_queue(id, kind, text);
        Ok(id)
    }

    /// Sends request `id` now, or keeps it (bounded, oldest dropped) for after the
    /// next rejoin.
    fn request_or_queue(&mut self, id: u64, kind: Pending, text: String) {
        if self.is_open() {
            self.request(id, kind, true, text);
        } else {
            if self.queue.len() >= self.config.offline_queue.max(1) {
                if let Some((old, _, _)) = self.queue.pop_front() {
                    self.dropped += 1;
                    self.event(ClientEvent::Error {
                        id: Some(old),
                        code: "dropped".into(),
                        message: "offline queue full: oldest request dropped".into(),
                    });
                    self.event(ClientEvent::Dropped {
                        total: self.dropped,
                    });
                }
            }
            self.queue.push_back((id, kind, text));
        }
    }

    /// Calls `method` on the server's application (an rpc hook) with raw JSON `data`.
    /// The ack's `data` is the answer; an application refusal is an error with its own
    /// code. Queued while offline like a publish (the same bound); if the connection
    /// drops after it was sent, it fails with `disconnected` rather than risk running
    /// twice.
    pub fn rpc(&mut self, method: &str, data: Option<&str>) -> Result<u64, ClientError> {
        self.check_open_or_pending()?;
        if !protocol::valid_name(method) {
            return Err(ClientError::BadName);
        }
        let data = checked_data(data)?;
        let id = self.id();
        let mut text = String::with_capacity(64);
        text.push_str("{\"type\":\"rpc\",\"id\":");
        text.push_str(&id.to_string());
        text.push_str(",\"method\":");
        text.push_str(&serde_json::to_string(method).expect("strings serialize"));
        push_data(&mut text, data.as_deref());
        text.push('}');
        self.request_or_queue(id, Pending::Other, text);
        Ok(id)
    }

    /// Closes for good: no retry. Pending requests fail with `closed`.
    pub fn close(&mut self) {
        if self.phase == Phase::Closed && matches!(self.state, ClientState::Closed { .. }) {
            return;
        }
        self.token_use = None;
        self.connect_token = None;
        if matches!(self.phase, Phase::Open { .. } | Phase::Connecting { .. }) {
            self.outputs.push_back(ClientOutput::Close {
                socket: self.socket,
                code: 1000,
                reason: "client closed".into(),
            });
        }
        self.phase = Phase::Closed;
        self.fail_all("closed", "client closed");
        let queued: Vec<u64> = self.queue.drain(..).map(|(id, _, _)| id).collect();
        for id in queued {
            self.event(ClientEvent::Error {
                id: Some(id),
                code: "closed".into(),
                message: "client closed before the publish was sent".into(),
            });
        }
        self.set_state(ClientState::Closed { code: None });
    }

    fn check_open_or_pending(&self) -> Result<(), ClientError> {
        if matches!(self.state, ClientState::Closed { .. }) {
            Err(ClientError::Closed)
        } else {
            Ok(())
        }
    }

    /// Sends a one-name request (`{"type":kind, field:name, "id":id}`) when `send`, or
    /// acknowledges it locally: offline, the (re)join and resubscribe after connecting
    /// restore the wanted state; with nothing to undo, there is nothing to ask.
    fn request_or_ack(&mut self, id: u64, send: bool, kind: &str, field: &str, name: &str) {
        if send {
            let mut v = serde_json::json!({"type": kind, "id": id});
            v[field] = name.into();
            self.request(id, Pending::Other, true, v.to_string());
        } else {
            let mut v = serde_json::json!({"type": "ack", "id": id});
            v[field] = name.into();
            self.ack_locally(id, v);
        }
    }

    fn ack_locally(&mut self, id: u64, body: serde_json::Value) {
        self.event(ClientEvent::Ack {
            id,
            body: body.to_string(),
        });
    }

    fn event(&mut self, e: ClientEvent) {
        self.outputs.push_back(ClientOutput::Event(e));
    }

    fn send_join(&mut self, room: &str, id: u64, visible: bool) {
        let r = self.rooms.get_mut(room).expect("joining a known room");
        r.pending_join = Some(id);
        r.held.clear();
        let mut v = serde_json::json!({"type":"join","room":room,"id":id});
        match r.presence {
            Presence::Off => {}
            Presence::Connections => v["presence"] = true.into(),
            Presence::Users => v["presence"] = "users".into(),
        }
        if let (Some(seq), Some(epoch)) = (r.last_seq, &r.epoch) {
            v["since"] = seq.into();
            v["epoch"] = epoch.clone().into();
        }
        self.request(id, Pending::Join(room.to_owned()), visible, v.to_string());
    }

    // -----------------------------------------------------------------------------------
    // Inputs

    /// The socket opened (the server's welcome follows; with a token, after the
    /// `auth` sent here as the first message).
    pub fn handle_open(&mut self, now: Timestamp, socket: u64) {
        self.clock.advance(now);
        if socket != self.socket || !matches!(self.phase, Phase::Connecting { .. }) {
            return;
        }
        if let Some(token) = self.connect_token.take() {
            // no id: the answer is the welcome, or a close 4001
            self.send(serde_json::json!({"type": "auth", "token": token}).to_string());
        }
    }

    /// The application's answer to [`ClientOutput::FetchToken`]: a token, or why it has
    /// none (a failed fetch counts as a failed connection attempt, with backoff; a
    /// failed refresh is reported, and the server's 4001 then brings a reconnect).
    pub fn handle_token(&mut self, now: Timestamp, ticket: u64, token: Result<String, String>) {
        let now = self.clock.advance(now);
        if ticket != self.token_ticket {
            return;
        }
        let Some(purpose) = self.token_use.take() else {
            return;
        };
        match (purpose, token) {
            (TokenUse::Connect, Ok(t)) if matches!(self.phase, Phase::Token { .. }) => {
                self.connect(now, Some(t));
            }
            (TokenUse::Connect, Err(e)) if matches!(self.phase, Phase::Token { .. }) => {
                self.event(ClientEvent::Error {
                    id: None,
                    code: "token_unavailable".into(),
                    message: e,
                });
                self.schedule_retry(now);
            }
            (TokenUse::Refresh, Ok(t)) if self.is_open() => {
                let id = self.id();
                let text = serde_json::json!({"type": "auth", "token": t, "id": id}).to_string();
                self.request(id, Pending::Other, false, text);
            }
            (TokenUse::Refresh, Err(e)) if self.is_open() => {
                self.event(ClientEvent::Error {
                    id: None,
                    code: "token_unavailable".into(),
                    message: e,
                });
            }
            _ => {} // the phase moved on meanwhile
        }
    }

    /// A text message arrived on a socket.
    pub fn handle_message(&mut self, now: Timestamp, socket: u64, text: &str) {
        let now = self.clock.advance(now);
        if socket != self.socket || matches!(self.phase, Phase::Closed | Phase::Waiting { .. }) {
            return;
        }
        self.awaiting_since_ping = false;
        let Ok(msg) = serde_json::from_str::<ServerMsg<'_>>(text) else {
            return; // not ours to judge: a newer server may send more
        };
        match msg.kind {
            "welcome" => self.on_welcome(now, msg),
            "message" => self.on_message(msg),
            "presence" => {
                if let Some(room) = msg.room {
                    self.event(ClientEvent::Presence {
                        room,
                        joined: msg.joined,
                        left: msg.left,
                    });
                }
            }
            "ack" => self.on_ack(msg, text),
            "expiring" if self.config.token && self.token_use.is_none() => {
                self.fetch_token(TokenUse::Refresh);
            }
            "joined" => self.on_joined(msg, text),
            "left" => {
                if let Some(room) = msg.room {
                    if let Some(r) = self.rooms.remove(&room) {
                        for w in r.waiting {
                            self.in_flight.remove(&w);
                            self.event(ClientEvent::Error {
                                id: Some(w),
                                code: "cancelled".into(),
                                message: "the server took the connection out of the room".into(),
                            });
                        }
                    }
                    self.event(ClientEvent::Left {
                        room,
                        reason: msg.reason.unwrap_or_default(),
                    });
                }
            }
            "error" => {
                let id = msg.id.as_ref().and_then(|v| v.as_u64());
                let visible = match id.and_then(|i| self.in_flight.remove(&i)) {
                    Some(f) => {
                        if let Pending::Join(room) = &f.kind {
                            // a refused join: stop trying to hold this room
                            if self.rooms.get(room).is_some_and(|r| r.pending_join == id) {
                                let r = self.rooms.remove(room).expect("checked");
                                for w in r.waiting.into_iter().filter(|&w| Some(w) != id) {
                                    self.event(ClientEvent::Error {
                                        id: Some(w),
                                        code: msg.code.clone().unwrap_or_default(),
                                        message: msg.message.clone().unwrap_or_default(),
                                    });
                                }
                            }
                        }
                        f.visible
                    }
                    None => true,
                };
                if visible {
                    self.event(ClientEvent::Error {
                        id,
                        code: msg.code.unwrap_or_default(),
                        message: msg.message.unwrap_or_default(),
                    });
                }
            }
            _ => {}
        }
    }

    fn on_welcome(&mut self, now: Timestamp, msg: ServerMsg<'_>) {
        if let Some(hb) = msg.heartbeat {
            self.heartbeat_interval = hb.interval_ms.max(1);
            self.heartbeat_timeout = hb.timeout_ms.max(1);
        }
        self.phase = Phase::Open { since: now };
        self.last_ping = now;
        self.awaiting_since_ping = false;
        self.set_state(ClientState::Open);
        self.event(ClientEvent::Welcome {
            conn: msg.conn.unwrap_or_default(),
            user: msg.user,
            info: msg.info,
        });
        // rejoin, resubscribe, then flush: the server handles them in this order
        let rooms: Vec<(String, Option<u64>)> = self
            .rooms
            .iter()
            .map(|(k, r)| (k.clone(), r.waiting.first().copied()))
            .collect();
        for (room, user_req) in rooms {
            match user_req {
                Some(id) => self.send_join(&room, id, true),
                None => {
                    let id = self.id();
                    self.send_join(&room, id, false);
                }
            }
        }
        let channels: Vec<String> = self.channels.iter().cloned().collect();
        for ch in channels {
            let id = self.id();
            let text = serde_json::json!({"type":"subscribe","channel":ch,"id":id}).to_string();
            self.request(id, Pending::Other, false, text);
        }
        while let Some((id, kind, text)) = self.queue.pop_front() {
            self.request(id, kind, true, text);
        }
    }

    /// A server-initiated join: a room new to us is tracked from the epoch and seq the
    /// server gives. A room we already track keeps its position: after a reconnect the
    /// server's join (a token's `rooms`) comes before our rejoin, whose `since` must
    /// still say what we last saw so the gap is replayed.
    fn on_joined(&mut self, msg: ServerMsg<'_>, text: &str) {
        let Some(room) = msg.room else { return };
        self.rooms.entry(room.clone()).or_insert(RoomState {
            presence: Presence::Off,
            epoch: msg.epoch,
            last_seq: msg.seq,
            pending_join: None,
            held: Vec::new(),
            waiting: Vec::new(),
        });
        self.event(ClientEvent::Joined {
            room,
            body: text.to_owned(),
        });
    }

    fn on_message(&mut self, msg: ServerMsg<'_>) {
        let via = match (&msg.room, &msg.channel, &msg.user) {
            (Some(room), _, _) => Via::Room {
                room: room.clone(),
                seq: msg.seq.unwrap_or(0),
            },
            (None, Some(ch), _) => Via::Channel(ch.clone()),
            (None, None, Some(u)) => Via::User(u.clone()),
            _ => Via::Direct,
        };
        let m = Message {
            via: via.clone(),
            event: msg.event.unwrap_or_default(),
            from: msg.from,
            data: msg
                .data
                .map_or_else(|| "null".to_owned(), |d| d.get().to_owned()),
            ts: msg.ts,
        };
        if let Via::Room { room, seq } = via {
            let Some(r) = self.rooms.get_mut(&room) else {
                return; // left meanwhile
            };
            if r.pending_join.is_some() {
                r.held.push((seq, m));
                return;
            }
            if r.last_seq.is_some_and(|last| seq <= last) {
                return; // replay overlap: already delivered
            }
            r.last_seq = Some(seq);
        }
        self.event(ClientEvent::Message(m));
    }

    fn on_ack(&mut self, msg: ServerMsg<'_>, text: &str) {
        let Some(id) = msg.id.as_ref().and_then(|v| v.as_u64()) else {
            return;
        };
        let Some(f) = self.in_flight.remove(&id) else {
            return;
        };
        if let Pending::Join(room) = &f.kind {
            if let Some(r) = self.rooms.get_mut(room) {
                if r.pending_join == Some(id) {
                    r.pending_join = None;
                    let others: Vec<u64> = r.waiting.drain(..).filter(|&w| w != id).collect();
                    let epoch = msg.epoch.clone();
                    let same_epoch = epoch.is_some() && epoch == r.epoch;
                    if !same_epoch {
                        // a new epoch: seqs start over, everything held is new
                        r.last_seq = None;
                    }
                    r.epoch = epoch;
                    let mut held = std::mem::take(&mut r.held);
                    // A replay can follow live messages (a room the server had already
                    // put us in): deliver in seq order, each once.
                    held.sort_by_key(|(seq, _)| *seq);
                    let mut deliver = Vec::new();
                    for (seq, m) in held {
                        if r.last_seq.is_some_and(|last| seq <= last) {
                            continue;
                        }
                        r.last_seq = Some(seq);
                        deliver.push(m);
                    }
                    // members that saw nothing yet start from the room's seq
                    if r.last_seq.is_none() {
                        r.last_seq = msg.seq;
                    } else if let Some(s) = msg.seq {
                        r.last_seq = Some(r.last_seq.expect("set").max(s));
                    }
                    let recovered = msg.recovered;
                    for m in deliver {
                        self.event(ClientEvent::Message(m));
                    }
                    if let Some(rec) = recovered {
                        self.event(ClientEvent::Recovered {
                            room: room.clone(),
                            recovered: rec,
                        });
                    }
                    for w in others {
                        self.event(ClientEvent::Ack {
                            id: w,
                            body: text.to_owned(),
                        });
                    }
                    if !f.visible {
                        self.event(ClientEvent::Rejoined {
                            room: room.clone(),
                            ack: text.to_owned(),
                        });
                    }
                }
            }
        }
        if let (Pending::Publish(Some(room)), Some(seq)) = (&f.kind, msg.seq) {
            // Everything in this room before our own message reached us before this ack
            // (one connection, in order), and we are excluded from our own message: so
            // the room position moves past it, and a rejoin will not replay it to us.
            if let Some(r) = self.rooms.get_mut(room) {
                if r.pending_join.is_none() {
                    r.last_seq = Some(r.last_seq.map_or(seq, |l| l.max(seq)));
                }
            }
        }
        if f.visible {
            self.event(ClientEvent::Ack {
                id,
                body: text.to_owned(),
            });
        }
    }

    /// The socket closed (or failed to open: report 1006).
    pub fn handle_close(&mut self, now: Timestamp, socket: u64, code: Option<u16>) {
        let now = self.clock.advance(now);
        if socket != self.socket {
            return;
        }
        match self.phase {
            Phase::Closed | Phase::Waiting { .. } | Phase::Token { .. } => {}
            Phase::Connecting { .. } | Phase::Open { .. } => {
                if let Phase::Open { since } = self.phase {
                    if now.0.saturating_sub(since.0) >= self.config.stable_after_ms {
                        self.attempt = 0;
                    }
                }
                self.token_use = None;
                self.connect_token = None;
                if matches!(code, Some(1008) | Some(1009) | Some(close::FORBIDDEN)) {
                    self.phase = Phase::Closed;
                    self.fail_all("closed", "the server closed the connection");
                    self.set_state(ClientState::Closed { code });
                } else {
                    self.schedule_retry(now);
                }
            }
        }
    }

    /// Settles every request still owed an answer (in flight, or a join not sent yet).
    fn fail_all(&mut self, code: &str, message: &str) {
        let mut ids: BTreeSet<u64> = std::mem::take(&mut self.in_flight)
            .into_iter()
            .filter(|(_, f)| f.visible)
            .map(|(id, _)| id)
            .collect();
        for r in self.rooms.values_mut() {
            ids.extend(r.waiting.drain(..));
        }
        for id in ids {
            self.event(ClientEvent::Error {
                id: Some(id),
                code: code.into(),
                message: message.into(),
            });
        }
    }

    fn schedule_retry(&mut self, now: Timestamp) {
        // Requests in flight on the dead socket: joins and subscriptions are redone by
        // the rejoin; a publish may or may not have reached the server, so it fails
        // (the application decides whether to resend) rather than risk a duplicate.
        let all: Vec<(u64, InFlight)> = std::mem::take(&mut self.in_flight).into_iter().collect();
        for (id, f) in all {
            match f.kind {
                Pending::Join(room) => {
                    if let Some(r) = self.rooms.get_mut(&room) {
                        r.pending_join = None;
                        // a user's join stays in `waiting`: the rejoin carries its id
                        let _ = id;
                        // held messages belonged to the dead socket's join: drop them,
                        // the rejoin replays them
                        r.held.clear();
                    }
                }
                Pending::Other | Pending::Publish(_) if f.visible => {
                    self.event(ClientEvent::Error {
                        id: Some(id),
                        code: "disconnected".into(),
                        message: "connection lost before the ack".into(),
                    })
                }
                Pending::Other | Pending::Publish(_) => {}
            }
        }
        self.attempt = self.attempt.saturating_add(1);
        // the next attempt goes to the next URL, in turn
        self.url_index = (self.url_index + 1) % (1 + self.config.fallback_urls.len());
        let exp = self.attempt.saturating_sub(1).min(20);
        let cap = self
            .config
            .backoff_initial_ms
            .saturating_mul(1u64 << exp)
            .min(self.config.backoff_max_ms);
        let delay = self.rng.below_or_eq(cap);
        self.phase = Phase::Waiting {
            until: Timestamp(now.0.saturating_add(delay)),
        };
        self.set_state(ClientState::Reconnecting {
            attempt: self.attempt,
            delay_ms: delay,
        });
    }

    /// Runs what is due: retries, heartbeats, dead-connection detection, ack timeouts.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.advance(now);
        let expired: Vec<u64> = self
            .in_flight
            .iter()
            .filter(|(_, f)| f.deadline <= now)
            .map(|(&id, _)| id)
            .collect();
        for id in expired {
            let f = self.in_flight.remove(&id).expect("listed above");
            if let Pending::Join(room) = &f.kind {
                if let Some(r) = self.rooms.get_mut(room) {
                    if r.pending_join == Some(id) {
                        r.pending_join = None;
                        let others: Vec<u64> = r.waiting.drain(..).filter(|&w| w != id).collect();
                        for w in others {
                            self.outputs
                                .push_back(ClientOutput::Event(ClientEvent::Error {
                                    id: Some(w),
                                    code: "timeout".into(),
                                    message: "no answer from the server in time".into(),
                                }));
                        }
                        let r = self.rooms.get_mut(room).expect("still here");
                        let held = std::mem::take(&mut r.held);
                        for (seq, m) in held {
                            if r.last_seq.is_some_and(|l| seq <= l) {
                                continue;
                            }
                            r.last_seq = Some(seq);
                            self.outputs
                                .push_back(ClientOutput::Event(ClientEvent::Message(m)));
                        }
                    }
                }
            }
            if f.visible {
                self.event(ClientEvent::Error {
                    id: Some(id),
                    code: "timeout".into(),
                    message: "no answer from the server in time".into(),
                });
            }
        }
        match self.phase {
            Phase::Token { since } => {
                if now.0.saturating_sub(since.0) >= self.config.connect_timeout_ms {
                    self.token_use = None;
                    self.event(ClientEvent::Error {
                        id: None,
                        code: "token_unavailable".into(),
                        message: "no token from the application in time".into(),
                    });
                    self.schedule_retry(now);
                }
            }
            Phase::Connecting { since } => {
                if now.0.saturating_sub(since.0) >= self.config.connect_timeout_ms {
                    self.outputs.push_back(ClientOutput::Close {
                        socket: self.socket,
                        code: 4000,
                        reason: "connect timeout".into(),
                    });
                    self.schedule_retry(now);
                }
            }
            Phase::Open { .. } => {
                if self.awaiting_since_ping {
                    if now.0.saturating_sub(self.last_ping.0) >= self.heartbeat_timeout {
                        self.outputs.push_back(ClientOutput::Close {
                            socket: self.socket,
                            code: 4000,
                            reason: "heartbeat timeout".into(),
                        });
                        self.schedule_retry(now);
                    }
                } else if now.0.saturating_sub(self.last_ping.0) >= self.heartbeat_interval {
                    self.last_ping = now;
                    self.awaiting_since_ping = true;
                    self.send(HEARTBEAT_PING.to_owned());
                }
            }
            Phase::Waiting { until } => {
                if now >= until {
                    self.open_socket(now);
                    self.set_state(ClientState::Connecting);
                }
            }
            Phase::Closed => {}
        }
    }
}

/// `data` as raw JSON, or [`ClientError::BadData`] if it is not JSON.
fn checked_data(data: Option<&str>) -> Result<Option<Box<RawValue>>, ClientError> {
    data.map(|d| RawValue::from_string(d.to_owned()).map_err(|_| ClientError::BadData))
        .transpose()
}

/// Appends `,"data":DATA` to a request's text when there is data.
fn push_data(text: &mut String, data: Option<&RawValue>) {
    if let Some(d) = data {
        text.push_str(",\"data\":");
        text.push_str(d.get());
    }
}

#[cfg(test)]
mod tests;
