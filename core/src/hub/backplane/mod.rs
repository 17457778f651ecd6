//! Rooms shared by several nodes through a backplane (PROTOCOL.md "Several native
//! servers: one Redis"), in sans-IO form. The backplane (Redis, or the simulation's
//! in-memory log) is the room's one authority: it assigns `(epoch, seq)` atomically
//! with the append to the room's log and carries each message to every node. This
//! module holds the rules every node applies, so they are decided once:
//!
//! - a room publish (client or server) is not delivered locally: the hub asks for an
//!   append ([`Output::Append`]) and acks the publisher with the seq the backplane gives
//!   ([`Input::Appended`](super::Input::Appended));
//! - messages come back from the backplane ([`Input::Logged`](super::Input::Logged)) and
//!   are delivered strictly in seq order: a duplicate is dropped; a gap holds what came
//!   early and asks for the missing part of the log ([`Output::Load`]); the answer
//!   ([`Input::Loaded`](super::Input::Loaded)) fills it, so no one is disconnected for a
//!   lost pub/sub message;
//! - a join waits, in order with the connection's later requests, for a load of the
//!   room from the node's own position (so its ack names the room's latest seq even
//!   when the pub/sub copy of a message published elsewhere is still on its way, and a
//!   recovery gets what the node's cache lacks); it is then answered from the merged
//!   log as on one node (`recovered` exactly as PROTOCOL.md "Ordering and recovery"
//!   says);
//! - a room whose epoch changed under its members (the backplane lost its log), or whose
//!   gap the backplane can no longer fill, closes those members 1013: they reconnect,
//!   rejoin with their position and are told `recovered: false`. Never a silent gap.
//!
//! Channels, users and broadcasts carry no sequence: they travel as [`Forward`]s
//! (`Output::Forward`, `Input::Remote`), best effort, as on Socket.IO's or Phoenix's
//! backplanes. The wire helpers here (`encode_body`, [`forward_to_json`], ...) fix
//! the bytes every node writes, so the adapters only move them.
//!
//! Files: `wire.rs` (the bytes on the backplane), `loads.rs` (reading a room's log:
//! joins waiting for it, deadlines), `order.rs` (delivering the log in seq order: held
//! messages, gaps, epochs).

mod loads;
mod order;
mod wire;

pub(crate) use wire::encode_body;
pub use wire::{control_from_json, control_to_json, forward_from_json, forward_to_json, Control};

use std::collections::BTreeMap;
use std::sync::Arc;

use super::decisions::Decided;
use super::messages;
use super::publish::Publish;
use super::types::{ConnId, ConnState, Delivery, Output};
use super::Hub;
use crate::protocol::{self, ErrorCode, RequestId};
use crate::time::Timestamp;

/// Names one append; its answer carries it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AppendTicket(pub u64);

/// A room message to append to the room's log ([`Output::Append`]): the backplane
/// assigns the next `(epoch, seq)` atomically with the append, publishes
/// `(epoch, seq, body)` to every node following the room, and answers
/// [`Hub::handle_appended`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Append {
    /// Answer with this.
    pub ticket: AppendTicket,
    /// The room.
    pub room: Arc<str>,
    /// What every node needs to build the message ([`encode_body`]); opaque to the
    /// backplane.
    pub body: Box<str>,
}

/// A request for part of a room's log ([`Output::Load`]). The backplane follows the
/// room from now on (subscribes first, then reads, so nothing falls between), and
/// answers [`Hub::handle_loaded`] (or [`Hub::handle_load_failed`]). The room is
/// followed until [`Event::RoomRemoved`](crate::hub::Event::RoomRemoved).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Load {
    /// The room.
    pub room: Arc<str>,
    /// The entries with a seq above this, as many as the log still holds; `None`: only
    /// the room's position (epoch and latest seq).
    pub after: Option<u64>,
}

/// The backplane's answer to a [`Load`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Loaded {
    /// The room's epoch (the backplane creates the room, with a new epoch, if it has
    /// none).
    pub epoch: Arc<str>,
    /// The room's latest seq (0: no message yet in this epoch).
    pub top: u64,
    /// The `after` of the [`Load`] this answers.
    pub after: Option<u64>,
    /// `(seq, body)` above `after`, ascending, as far as the log still holds them.
    pub entries: Vec<(u64, Box<str>)>,
}

/// Why the backplane could not do what the hub asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BackplaneError {
    /// It is unreachable or did not answer in time: the request is refused
    /// `unavailable`; the connection stays.
    #[error("the backplane is unavailable")]
    Unavailable,
}

/// Who waits for an append's answer.
struct PendingAppend {
    /// The publisher (`None`: the server API, which was answered already).
    conn: Option<ConnId>,
    req_id: Option<RequestId>,
    /// Local receivers when it was sent (what the ack reports as `delivered`).
    delivered: usize,
}

/// A join waiting for a load of its room.
struct Waiter {
    conn: ConnId,
    ticket: u64,
    /// The history it needs: entries above this (`None`: only the position).
    need: Option<u64>,
}

/// A room's messages held early: seq → (epoch, body).
type Held = BTreeMap<u64, (Arc<str>, Box<str>)>;

/// The backplane state of one hub.
#[derive(Default)]
pub(crate) struct Backplane {
    next_append: u64,
    appends: BTreeMap<u64, PendingAppend>,
    /// Joins waiting per room, and the smallest `after` of the loads in flight.
    waiting: BTreeMap<Arc<str>, Vec<Waiter>>,
    loads: BTreeMap<Arc<str>, LoadsInFlight>,
    /// Messages that came ahead of their turn (a gap, or a load in flight), per room.
    early: BTreeMap<Arc<str>, Held>,
    /// Load deadlines by serial ([`super::timers::Timer::Load`]), and the last serial.
    pub(crate) load_timers: BTreeMap<u64, Arc<str>>,
    next_load_timer: u64,
}

/// The loads of one room in flight.
#[derive(Debug, Clone, Copy)]
struct LoadsInFlight {
    count: u32,
    /// The smallest `after` asked (`None` inside means a position-only load).
    lowest: Option<u64>,
    /// When the latest of them is given up.
    deadline: Timestamp,
}

/// Messages held early per room at most; past it the oldest go (the load that fills
/// the gap brings them again from the log).
const MAX_EARLY: usize = 4096;

impl Hub {
    /// Whether room messages go through a backplane.
    pub(crate) fn sequenced(&self) -> bool {
        self.config.backplane
    }

    /// A room publish on a backplaned hub: ask for the append; the publisher's ack
    /// waits for its answer. Returns what the server API reports at once.
    pub(crate) fn append_room(
        &mut self,
        room: &str,
        p: &Publish<'_>,
        publisher: Option<(ConnId, Option<RequestId>)>,
    ) -> Delivery {
        let exclude_wire = p
            .exclude
            .first()
            .and_then(|&id| self.conns.slot_of(id).ok())
            .map(|s| self.conns[s].wire.to_string());
        let delivered = self.index.rooms.key(room).map_or(0, |rk| {
            let members = &self.index.rooms[rk].members;
            members.len()
                - p.exclude
                    .iter()
                    .filter(|&&id| self.conns.slot_of(id).is_ok_and(|s| members.contains(&s)))
                    .count()
        });
        let ts = self.unix_ms(self.clock.now());
        let body = encode_body(&p.content(ts), exclude_wire.as_deref());
        self.backplane.next_append += 1;
        let ticket = self.backplane.next_append;
        let (conn, req_id) = match publisher {
            Some((c, r)) => (Some(c), r),
            None => (None, None),
        };
        if conn.is_some() {
            self.backplane.appends.insert(
                ticket,
                PendingAppend {
                    conn,
                    req_id,
                    delivered,
                },
            );
        }
        self.fanout.stats.backplane_appends += 1;
        self.fanout.push(Output::Append(Box::new(Append {
            ticket: AppendTicket(ticket),
            room: Arc::from(room),
            body,
        })));
        Delivery {
            delivered,
            seq: None,
        }
    }

    /// The backplane's answer to an [`Append`]: the publisher gets its ack with the
    /// room's seq, or `unavailable`. An answer for a connection gone since finds no one.
    pub fn handle_appended(
        &mut self,
        now: Timestamp,
        ticket: AppendTicket,
        result: Result<(Arc<str>, u64), BackplaneError>,
    ) {
        let now = self.clock.advance(now);
        let Some(pending) = self.backplane.appends.remove(&ticket.0) else {
            return;
        };
        let Some(conn) = pending.conn else {
            return;
        };
        let Ok(s) = self.conns.open_slot(conn) else {
            return;
        };
        if self.conns[s].state != ConnState::Open {
            return;
        }
        match result {
            Ok((_, seq)) => {
                let ack =
                    messages::publish_ack(pending.req_id.as_ref(), pending.delivered, Some(seq));
                self.send(conn, &ack);
            }
            Err(_) => {
                self.fanout.stats.backplane_refused += 1;
                let rej = protocol::Rejection::new(
                    ErrorCode::Unavailable,
                    "the backplane is unavailable: try again",
                );
                self.refuse(conn, pending.req_id.as_ref(), &rej);
            }
        }
        self.reap(now);
    }

    /// Closes `user`'s connections here and, with a backplane, on every other node
    /// ([`Output::Control`]). Returns how many were closed here.
    pub fn disconnect_user(
        &mut self,
        now: Timestamp,
        user: &str,
        code: u16,
        reason: &str,
    ) -> usize {
        let ids = self.user_connections(user).to_vec();
        let n = ids
            .into_iter()
            .filter(|&id| self.disconnect(now, id, code, reason).is_ok())
            .count();
        if self.sequenced() {
            self.fanout
                .push(Output::Control(Box::new(Control::DisconnectUser {
                    user: Arc::from(user),
                    code,
                    reason: reason.to_owned(),
                })));
        }
        n
    }

    /// A [`Control`] another node sent: carried out on this node's connections only.
    pub fn handle_control(&mut self, now: Timestamp, control: &Control) {
        match control {
            Control::DisconnectUser { user, code, reason } => {
                let ids = self.user_connections(user).to_vec();
                for id in ids {
                    let _ = self.disconnect(now, id, *code, reason);
                }
            }
        }
    }

    /// Forgets what a closing connection waits for.
    pub(crate) fn forget_backplane_waits(&mut self, conn: ConnId) {
        for ws in self.backplane.waiting.values_mut() {
            ws.retain(|w| w.conn != conn);
        }
        self.backplane.waiting.retain(|_, ws| !ws.is_empty());
        self.backplane.appends.retain(|_, p| p.conn != Some(conn));
    }

    /// The deadline refused a parked join: it no longer waits for its room.
    pub(crate) fn forget_waiter(&mut self, ticket: u64) {
        for ws in self.backplane.waiting.values_mut() {
            ws.retain(|w| w.ticket != ticket);
        }
        self.backplane.waiting.retain(|_, ws| !ws.is_empty());
    }

    /// Checks the backplane state against the index (tests and fuzzing).
    pub(crate) fn check_backplane(&self) {
        for (room, early) in &self.backplane.early {
            assert!(early.len() <= MAX_EARLY, "{room}: too many held");
        }
        for ws in self.backplane.waiting.values() {
            assert!(!ws.is_empty());
        }
    }
}

impl Decided {
    /// A join re-run after its room was loaded.
    pub(crate) fn loaded() -> Decided {
        Decided {
            data: None,
            loaded: true,
        }
    }
}
