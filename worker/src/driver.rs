//! The Durable Object's run loop, free of the platform so it is tested on the host.
//!
//! [`Driver`] owns the core [`Hub`] and does only what an adapter must: feed it inputs
//! stamped with the time, drain its outputs into sockets, and keep what has to outlive
//! the object's memory up to date:
//!
//! - each connection's [`ConnSnapshot`] in its socket attachment, rewritten after any
//!   output batch in which the hub reported that connection joined, left, subscribed or
//!   unsubscribed (when it does not fit, it goes to storage and the attachment says so);
//! - each room's epoch and seq, and its history, in storage, written as the hub reports
//!   room messages and deleted once the hub has dropped the room.
//!
//! On wake-up with nothing in memory, [`Driver::restore`] rebuilds the hub from the
//! sockets' attachments and storage with [`Hub::restore`]. No routing or protocol rule
//! lives here; the sockets and storage are reached through [`Sockets`] and [`Store`].

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use roomcast_core::api::{self, ApiRequest, ApiResponse};
use roomcast_core::hub::{
    Answer, ConnId, ConnSnapshot, ConnectError, ConnectRequest, Decision, Destination,
    DisconnectReason, Event, HistoryConfig, HubConfig, HubError, Output, Published, RoomSnapshot,
    Ticket,
};
use roomcast_core::{Hub, Timestamp};
use thiserror::Error;

use crate::attachment::{self, Attachment, AttachmentError};
use crate::hooks::{Caller, Departure};

/// Close code for a socket whose state could not be restored: its client reconnects
/// (and rejoins with recovery) instead of talking to a hub that does not know it.
pub const CLOSE_STATE_LOST: u16 = 1011;

/// A storage operation failed. The run loop goes on (clients still get their messages);
/// the caller logs these.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("storage: {0}")]
pub struct StoreError(pub String);

/// A socket refused an operation: it is gone, or the attachment was too large.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("socket: {0}")]
pub struct SocketError(pub String);

/// The platform's sockets, addressed by connection.
pub trait Sockets {
    /// Sends one text message. `Err` means the socket is gone; the hub is told.
    fn send(&mut self, conn: ConnId, text: &str) -> Result<(), SocketError>;
    /// Starts the close handshake with this code and reason.
    fn close(&mut self, conn: ConnId, code: u16, reason: &str);
    /// Replaces the socket's attachment. `Err` when the platform refuses it (too large).
    fn attach(&mut self, conn: ConnId, value: &str) -> Result<(), SocketError>;
    /// Forgets the socket (after the hub has let go of the connection).
    fn forget(&mut self, conn: ConnId);
}

/// One room message as kept in storage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage<'a> {
    /// The room.
    pub room: &'a str,
    /// The room's epoch.
    pub epoch: &'a str,
    /// The message's seq (the room's latest).
    pub seq: u64,
    /// When it was published (ms, the hub's clock).
    pub at: u64,
    /// The message as delivered.
    pub text: &'a str,
}

/// Durable storage of rooms and spilled connection snapshots.
pub trait Store {
    /// Records a room's epoch and latest seq (creating its row).
    fn save_room(&mut self, room: &str, epoch: &str, seq: u64) -> Result<(), StoreError>;
    /// Records a room message: the room's new seq, and the message in its history unless
    /// `history.max_messages` is 0. Drops history older than `history` allows (count and
    /// age at `msg.at`) and, at seq 1, everything from an earlier epoch.
    fn save_message(
        &mut self,
        msg: &StoredMessage<'_>,
        history: &HistoryConfig,
    ) -> Result<(), StoreError>;
    /// Forgets a room and its history.
    fn delete_room(&mut self, room: &str) -> Result<(), StoreError>;
    /// Every stored room with its history, oldest message first.
    fn load_rooms(&mut self) -> Result<Vec<RoomSnapshot>, StoreError>;
    /// Stores a snapshot too large for its socket's attachment.
    fn save_conn(&mut self, conn: ConnId, snapshot: &str) -> Result<(), StoreError>;
    /// Forgets a stored snapshot.
    fn delete_conn(&mut self, conn: ConnId) -> Result<(), StoreError>;
    /// Every stored snapshot.
    fn load_conns(&mut self) -> Result<Vec<(ConnId, String)>, StoreError>;
    /// Records what the server API made ([`ServerState`] as JSON), replacing the last.
    fn save_server_state(&mut self, json: &str) -> Result<(), StoreError>;
    /// The last recorded server state, if any.
    fn load_server_state(&mut self) -> Result<Option<String>, StoreError>;
}

/// What the server API made that must outlive an eviction: the rooms it created (data,
/// member limit, the persistent flag; epoch and seq as of the last API call) and the
/// channels with their links. Stored whole after every API call that changes something:
/// it is small (API-made rooms, not client rooms) and one row is never half written.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct ServerState {
    /// Rooms created through the API (history is stored apart, per message).
    pub rooms: Vec<RoomSnapshot>,
    /// Channels and their linked rooms.
    pub channels: Vec<roomcast_core::hub::ChannelSnapshot>,
}

/// A socket found on wake-up, as the platform keeps it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SavedSocket {
    /// From its tag (`None`: the socket has no tag of ours).
    pub conn: Option<ConnId>,
    /// Its attachment, as stored.
    pub attachment: Option<String>,
}

/// Why a socket found on wake-up was not restored.
#[derive(Debug, Error)]
pub enum LostSocket {
    /// It carries no connection tag.
    #[error("socket without a connection tag")]
    Untagged,
    /// Its attachment is missing or unreadable.
    #[error(transparent)]
    Attachment(#[from] AttachmentError),
    /// It says its snapshot was spilled, but storage has none.
    #[error("spilled snapshot missing from storage")]
    SpillMissing,
    /// The spilled snapshot in storage is unreadable.
    #[error("unreadable spilled snapshot: {0}")]
    SpillUnreadable(serde_json::Error),
    /// The snapshot names another connection than the tag.
    #[error("snapshot does not match the socket's tag")]
    Mismatch,
}

/// The outcome of [`Driver::restore`].
#[derive(Debug)]
pub struct Restored {
    /// The rebuilt driver.
    pub driver: Driver,
    /// Sockets (by index into the input) to close with [`CLOSE_STATE_LOST`], and why.
    pub lost: Vec<(usize, LostSocket)>,
    /// Indexes of sockets the hub had already closed: leave them to finish closing.
    pub closing: Vec<usize>,
    /// Storage errors met while restoring (the restore used what it could read).
    pub errors: Vec<StoreError>,
}

/// The hub plus the bookkeeping that keeps attachments and storage in step with it.
pub struct Driver {
    hub: Hub,
    history: HistoryConfig,
    now: Timestamp,
    /// Connections whose membership changed in the current batch.
    dirty: BTreeSet<ConnId>,
    /// Connections whose snapshot is in storage rather than in their attachment.
    spilled: BTreeSet<ConnId>,
    /// Rooms with a row in storage.
    stored_rooms: BTreeSet<Arc<str>>,
    /// An API call changed rooms or channels: the server state is saved at the next flush.
    server_state_dirty: bool,
    /// Whether the application answers decisions ([`Driver::with_hooks`]); without it a
    /// request the hub parks is refused `unavailable` at once.
    hooked: bool,
    /// Whether departures are collected for the application's `disconnected`.
    tell_departures: bool,
    /// Parked requests the application has not been asked yet ([`Driver::take_asks`]).
    asks: Vec<Decision>,
    /// Connections gone since the last [`Driver::take_departures`].
    departures: Vec<Departure>,
}

impl std::fmt::Debug for Driver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Driver")
            .field("hub", &self.hub.stats())
            .field("spilled", &self.spilled)
            .field("stored_rooms", &self.stored_rooms)
            .finish_non_exhaustive()
    }
}

impl Driver {
    /// A fresh hub (first start of this object, or nothing to restore).
    pub fn new(config: HubConfig, seed: [u8; 32], now: Timestamp) -> Driver {
        let history = config.history.clone();
        Driver::around(Hub::new(config, seed, now), history, now)
    }

    fn around(hub: Hub, history: HistoryConfig, now: Timestamp) -> Driver {
        Driver {
            hub,
            history,
            now,
            dirty: BTreeSet::new(),
            spilled: BTreeSet::new(),
            stored_rooms: BTreeSet::new(),
            server_state_dirty: false,
            hooked: false,
            tell_departures: false,
            asks: Vec::new(),
            departures: Vec::new(),
        }
    }

    /// Hands the hub's decisions to the application: [`Driver::flush`] collects them for
    /// [`Driver::take_asks`] (and, with `departures`, the connections that left for
    /// [`Driver::take_departures`]) instead of refusing them `unavailable`.
    pub fn with_hooks(mut self, departures: bool) -> Driver {
        self.hooked = true;
        self.tell_departures = departures;
        self
    }

    /// The requests to ask the application about, oldest first. Each answer goes back
    /// through [`Driver::decided`], in any order, late or never (the hub's deadline
    /// refuses what is not answered in time).
    pub fn take_asks(&mut self) -> Vec<Decision> {
        std::mem::take(&mut self.asks)
    }

    /// The connections that left since the last call (with hooks that want to know).
    pub fn take_departures(&mut self) -> Vec<Departure> {
        std::mem::take(&mut self.departures)
    }

    /// The application's answer to a parked request; flush afterwards. An answer that
    /// comes after the hub's deadline (or after its connection left) is dropped and
    /// counted late by the hub.
    pub fn decided(&mut self, now: Timestamp, ticket: Ticket, answer: Answer) {
        self.now = now;
        let _ = self.hub.handle_decision(now, ticket, answer);
    }

    /// Answers a server HTTP API call (the key was checked by the caller); anything but a
    /// read marks the server state for saving at the next flush.
    pub fn api(&mut self, now: Timestamp, req: ApiRequest<'_>) -> ApiResponse {
        self.now = now;
        let answer = api::handle(&mut self.hub, now, req);
        if req.method != "GET" {
            self.server_state_dirty = true;
        }
        answer
    }

    /// What the API made, as it stands.
    fn server_state(&self) -> ServerState {
        let mut names: Vec<&str> = self.hub.rooms().collect();
        names.sort_unstable();
        let rooms = names
            .into_iter()
            .filter_map(|n| self.hub.snapshot_room(n))
            .filter(|r| r.persistent)
            .map(|r| RoomSnapshot {
                history: Vec::new(),
                ..r
            })
            .collect();
        ServerState {
            rooms,
            channels: self.hub.snapshot_channels(),
        }
    }

    /// Rebuilds the hub after an eviction from the sockets still open and from storage.
    ///
    /// Rooms come from storage (epoch, seq, history within its age and count), their
    /// members from the sockets' snapshots. Stored rooms that nobody is in and whose
    /// history has expired are deleted; so are spilled snapshots no socket refers to.
    pub fn restore(
        config: HubConfig,
        seed: [u8; 32],
        now: Timestamp,
        sockets: &[SavedSocket],
        store: &mut impl Store,
    ) -> Restored {
        let history = config.history.clone();
        let mut errors = Vec::new();
        let mut spilled_rows: BTreeMap<ConnId, String> = match store.load_conns() {
            Ok(rows) => rows.into_iter().collect(),
            Err(e) => {
                errors.push(e);
                BTreeMap::new()
            }
        };
        let mut conns: Vec<ConnSnapshot> = Vec::new();
        let mut spilled = BTreeSet::new();
        let mut lost = Vec::new();
        let mut closing = Vec::new();
        for (i, s) in sockets.iter().enumerate() {
            let Some(conn) = s.conn else {
                lost.push((i, LostSocket::Untagged));
                continue;
            };
            let snap = match Attachment::decode(s.attachment.as_deref()) {
                Err(e) => Err(LostSocket::from(e)),
                Ok(Attachment::Closed) => {
                    closing.push(i);
                    continue;
                }
                Ok(Attachment::Inline(snap)) => Ok(snap),
                Ok(Attachment::Spilled) => match spilled_rows.remove(&conn) {
                    None => Err(LostSocket::SpillMissing),
                    Some(json) => match ConnSnapshot::from_json(&json) {
                        Ok(snap) => {
                            spilled.insert(conn);
                            Ok(snap)
                        }
                        Err(e) => Err(LostSocket::SpillUnreadable(e)),
                    },
                },
            };
            match snap {
                Ok(snap) if snap.id == conn.as_u64() => conns.push(snap),
                Ok(_) => lost.push((i, LostSocket::Mismatch)),
                Err(e) => lost.push((i, e)),
            }
        }
        for conn in spilled_rows.into_keys() {
            if let Err(e) = store.delete_conn(conn) {
                errors.push(e);
            }
        }
        // Expired history and rooms are the core's business: `Hub::restore` trims them and
        // reports each dropped room as `RoomRemoved`, which the next flush deletes.
        let mut rooms = store.load_rooms().unwrap_or_else(|e| {
            errors.push(e);
            Vec::new()
        });
        let server: ServerState = match store.load_server_state() {
            Ok(Some(json)) => serde_json::from_str(&json).unwrap_or_else(|e| {
                errors.push(StoreError(format!("unreadable server state: {e}")));
                ServerState::default()
            }),
            Ok(None) => ServerState::default(),
            Err(e) => {
                errors.push(e);
                ServerState::default()
            }
        };
        // The API's rooms: their data, limit and flag onto the stored rows (which have
        // the latest epoch, seq and history), or as they were if they have no row.
        for made in server.rooms {
            match rooms.iter_mut().find(|r| r.name == made.name) {
                Some(r) => {
                    r.persistent = made.persistent;
                    r.max_members = made.max_members;
                    r.data = made.data;
                }
                None => rooms.push(made),
            }
        }
        let stored_rooms = rooms.iter().map(|r| Arc::from(r.name.as_str())).collect();
        let hub = Hub::restore(config, seed, now, rooms, server.channels, conns);
        let mut driver = Driver::around(hub, history, now);
        driver.spilled = spilled;
        driver.stored_rooms = stored_rooms;
        Restored {
            driver,
            lost,
            closing,
            errors,
        }
    }

    /// The hub, for queries.
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// Admits a connection (its `welcome` goes out with the next [`Driver::flush`]).
    /// The caller accepts the socket under [`attachment::tag`] of the returned id before
    /// flushing, so the welcome and the first attachment have somewhere to go.
    pub fn connect(&mut self, now: Timestamp, req: ConnectRequest) -> Result<ConnId, ConnectError> {
        self.now = now;
        self.hub.connect(now, req)
    }

    /// A text message from a client.
    pub fn text(&mut self, now: Timestamp, conn: ConnId, text: &str) -> Result<(), HubError> {
        self.now = now;
        self.hub.handle_text(now, conn, text)
    }

    /// A binary message from a client (only its length matters to protocol v1).
    pub fn binary(&mut self, now: Timestamp, conn: ConnId, len: usize) -> Result<(), HubError> {
        self.now = now;
        self.hub.handle_binary(now, conn, len)
    }

    /// The socket ended (close frame with this code, or an error).
    pub fn closed(&mut self, now: Timestamp, conn: ConnId, code: u16) -> Result<(), HubError> {
        self.now = now;
        self.hub
            .handle_disconnect(now, conn, DisconnectReason::Closed { code: Some(code) })
    }

    /// The alarm fired: run the hub's deadlines (room expiry, closing grace periods).
    pub fn timeout(&mut self, now: Timestamp) {
        self.now = now;
        self.hub.handle_timeout(now);
    }

    /// Drains the hub's outputs into the sockets and storage. Returns the storage errors
    /// met on the way; afterwards [`Driver::deadline`] is the time for the alarm.
    pub fn flush(&mut self, sockets: &mut impl Sockets, store: &mut impl Store) -> Vec<StoreError> {
        let mut errors = Vec::new();
        let now = self.now;
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, msg } => match sockets.send(conn, msg.text()) {
                    // workerd buffers without telling us how much: count it as written.
                    Ok(()) => {
                        let _ = self.hub.handle_flushed(conn, msg.wire_len());
                    }
                    Err(_) => {
                        let _ = self.hub.handle_disconnect(
                            now,
                            conn,
                            DisconnectReason::Closed { code: Some(1006) },
                        );
                    }
                },
                // Only with `coalesce_room_messages`, which this driver leaves off (every
                // message is its own `send` here anyway); handled for completeness.
                Output::SendFrames { conn, frames } => {
                    let sent = frames.texts().try_for_each(|t| sockets.send(conn, t));
                    match sent {
                        Ok(()) => {
                            let _ = self.hub.handle_flushed(conn, frames.wire_len());
                        }
                        Err(_) => {
                            let _ = self.hub.handle_disconnect(
                                now,
                                conn,
                                DisconnectReason::Closed { code: Some(1006) },
                            );
                        }
                    }
                }
                Output::Close { conn, code, reason } => {
                    let _ = sockets.attach(conn, attachment::CLOSED);
                    sockets.close(conn, code, &reason);
                    sockets.forget(conn);
                    self.dirty.remove(&conn);
                    let _ = self.hub.handle_disconnect(
                        now,
                        conn,
                        DisconnectReason::Closed { code: Some(code) },
                    );
                }
                // Never produced with `server_pings: false`; workerd answers protocol pings.
                Output::Ping { .. } | Output::Forward(_) => {}
                // Only with `HubConfig::backplane`, which a Durable Object never turns on
                // (it is its hub's one home); refused rather than left waiting.
                Output::Append(a) => {
                    let err = Err(roomcast_core::hub::BackplaneError::Unavailable);
                    self.hub.handle_appended(now, a.ticket, err);
                }
                Output::Load(l) => self.hub.handle_load_failed(now, &l.room),
                Output::Control(_) => {}
                Output::Decide(d) if self.hooked => self.asks.push(*d),
                // No application to ask (its hub config turns no hook on, so this does
                // not happen): refuse rather than leave the request hanging.
                Output::Decide(d) => {
                    let _ = self.hub.handle_decision(now, d.ticket, Answer::Unavailable);
                }
                Output::Event(ev) => self.on_event(ev, &mut errors, store),
            }
        }
        for conn in std::mem::take(&mut self.dirty) {
            self.save_conn(conn, sockets, store, &mut errors);
        }
        if std::mem::take(&mut self.server_state_dirty) {
            let state = self.server_state();
            for r in &state.rooms {
                // an empty API room keeps its epoch too
                if !self.stored_rooms.contains(r.name.as_str()) {
                    match store.save_room(&r.name, &r.epoch, r.seq) {
                        Ok(()) => {
                            self.stored_rooms.insert(Arc::from(r.name.as_str()));
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            let json = serde_json::to_string(&state).expect("the state serializes");
            if let Err(e) = store.save_server_state(&json) {
                errors.push(e);
            }
        }
        errors
    }

    /// When the hub next needs [`Driver::timeout`] (absolute, ms on the hub's clock).
    pub fn deadline(&self) -> Option<Timestamp> {
        self.hub.poll_timeout()
    }

    fn on_event(&mut self, ev: Event, errors: &mut Vec<StoreError>, store: &mut impl Store) {
        match ev {
            Event::Connected { conn, .. }
            | Event::AuthChanged { conn }
            | Event::Subscribed { conn, .. }
            | Event::Unsubscribed { conn, .. } => {
                self.dirty.insert(conn);
            }
            Event::Joined {
                conn,
                room,
                epoch,
                seq,
            } => {
                self.dirty.insert(conn);
                // A room's epoch must survive even before its first message, or members
                // would see a new epoch after a wake-up and recover wrongly.
                if !self.stored_rooms.contains(&room) {
                    match store.save_room(&room, &epoch, seq) {
                        Ok(()) => {
                            self.stored_rooms.insert(room);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            }
            Event::Left { conn, .. } => {
                self.dirty.insert(conn);
            }
            Event::RoomRemoved { room } if self.stored_rooms.remove(&room) => {
                if let Err(e) = store.delete_room(&room) {
                    errors.push(e);
                }
            }
            Event::Disconnected {
                conn,
                wire_id,
                user,
                reason,
            } => {
                if self.tell_departures {
                    self.departures.push(Departure {
                        caller: Caller {
                            conn: wire_id.into(),
                            user: user.as_deref().map(str::to_owned),
                            info: None,
                        },
                        reason: reason.as_str(),
                    });
                }
                self.dirty.remove(&conn);
                if self.spilled.remove(&conn) {
                    if let Err(e) = store.delete_conn(conn) {
                        errors.push(e);
                    }
                }
            }
            Event::Message(published) => {
                let Published {
                    destination: Destination::Room(room),
                    seq: Some(seq),
                    epoch: Some(epoch),
                    message,
                    ..
                } = *published
                else {
                    return;
                };
                let msg = StoredMessage {
                    room: &room,
                    epoch: &epoch,
                    seq,
                    at: self.now.as_millis(),
                    text: message.text(),
                };
                match store.save_message(&msg, &self.history) {
                    Ok(()) => {
                        self.stored_rooms.insert(room);
                    }
                    Err(e) => errors.push(e),
                }
            }
            // Refusals and whatever a later core reports need nothing stored.
            _ => {}
        }
    }

    fn save_conn(
        &mut self,
        conn: ConnId,
        sockets: &mut impl Sockets,
        store: &mut impl Store,
        errors: &mut Vec<StoreError>,
    ) {
        let Some(snap) = self.hub.snapshot_conn(conn) else {
            return; // gone since
        };
        let json = snap.to_json();
        if attachment::fits(&json) && sockets.attach(conn, &json).is_ok() {
            if self.spilled.remove(&conn) {
                if let Err(e) = store.delete_conn(conn) {
                    errors.push(e);
                }
            }
            return;
        }
        match store.save_conn(conn, &json) {
            Ok(()) => {
                self.spilled.insert(conn);
                let _ = sockets.attach(conn, attachment::SPILLED);
            }
            Err(e) => errors.push(e),
        }
    }
}

#[cfg(test)]
mod tests;
