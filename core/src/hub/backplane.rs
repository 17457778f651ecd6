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
//! backplanes. The wire helpers here ([`encode_body`], [`forward_to_json`], ...) fix
//! the bytes every node writes, so the adapters only move them.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::connections::Closing;
use super::decisions::Decided;
use super::history::HistoryEntry;
use super::messages::{self, Via};
use super::publish::Publish;
use super::timers::Timer;
use super::types::{
    ConnId, ConnState, Delivery, Destination, Event, Forward, Origin, Output, Published,
};
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
/// followed until [`Event::RoomRemoved`].
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

/// The JSON body of a room message in the log: event, sender, data and the connection
/// that does not receive it (a publisher without `echo`), by its wire id.
pub fn encode_body(
    event: &str,
    from: Option<&[u8]>,
    data: Option<&RawValue>,
    exclude: Option<&str>,
) -> Box<str> {
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(b"{\"e\":");
    protocol::write_str(&mut b, event);
    b.extend_from_slice(b",\"f\":");
    b.extend_from_slice(from.unwrap_or(b"null"));
    b.extend_from_slice(b",\"d\":");
    b.extend_from_slice(data.map_or("null", RawValue::get).as_bytes());
    b.extend_from_slice(b",\"x\":");
    match exclude {
        Some(x) => protocol::write_str(&mut b, x),
        None => b.extend_from_slice(b"null"),
    }
    b.push(b'}');
    String::from_utf8(b)
        .expect("JSON built from str and RawValue is UTF-8")
        .into_boxed_str()
}

/// A log body read back.
#[derive(serde::Deserialize)]
struct Body<'a> {
    #[serde(borrow)]
    e: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    f: Option<&'a RawValue>,
    #[serde(borrow)]
    d: Option<&'a RawValue>,
    #[serde(borrow)]
    x: Option<std::borrow::Cow<'a, str>>,
}

fn decode_body(body: &str) -> Option<Body<'_>> {
    let b: Body<'_> = serde_json::from_str(body).ok()?;
    protocol::valid_name(&b.e).then_some(b)
}

/// A [`Forward`] as the JSON other nodes read with [`forward_from_json`].
pub fn forward_to_json(f: &Forward) -> String {
    let (kind, name) = match &f.destination {
        Destination::Room(n) => ("room", Some(&**n)),
        Destination::Channel(n) => ("channel", Some(&**n)),
        Destination::User(n) => ("user", Some(&**n)),
        Destination::All | Destination::Conn(_) => ("all", None),
    };
    let data: Option<serde_json::Value> = f
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str(d.get()).ok());
    serde_json::json!({
        "k": kind,
        "n": name,
        "e": f.event,
        "d": data,
        "f": f.from.as_ref().map(|(c, u)| serde_json::json!({"conn": c, "user": u})),
    })
    .to_string()
}

/// Reads what [`forward_to_json`] wrote (`None`: not a forward of this version).
pub fn forward_from_json(text: &str) -> Option<Forward> {
    #[derive(serde::Deserialize)]
    struct From {
        conn: String,
        user: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        k: String,
        n: Option<String>,
        e: String,
        d: Option<Box<RawValue>>,
        f: Option<From>,
    }
    let r: Raw = serde_json::from_str(text).ok()?;
    let name = |n: Option<String>| n.filter(|n| protocol::valid_name(n)).map(Arc::<str>::from);
    let destination = match r.k.as_str() {
        "room" => Destination::Room(name(r.n)?),
        "channel" => Destination::Channel(name(r.n)?),
        "user" => Destination::User(name(r.n)?),
        "all" => Destination::All,
        _ => return None,
    };
    Some(Forward {
        destination,
        event: r.e,
        data: r.d.filter(|d| d.get() != "null"),
        from: r.f.map(|f| (f.conn, f.user)),
    })
}

/// A command every node carries out on its own connections ([`Output::Control`]): what
/// the server API asks of a user must reach the user's connections on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Close every connection of `user` with `code` and `reason`.
    DisconnectUser {
        /// The user.
        user: Arc<str>,
        /// Close code (1000 or 4000..=4999).
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// A [`Control`] as the JSON other nodes read with [`control_from_json`] (it shares the
/// forward channel: `"k"` tells them apart).
pub fn control_to_json(c: &Control) -> String {
    match c {
        Control::DisconnectUser { user, code, reason } => {
            serde_json::json!({"k": "disconnect_user", "n": &**user, "code": code, "reason": reason})
                .to_string()
        }
    }
}

/// Reads what [`control_to_json`] wrote (`None`: not a control of this version).
pub fn control_from_json(text: &str) -> Option<Control> {
    #[derive(serde::Deserialize)]
    struct Raw {
        k: String,
        n: String,
        code: u16,
        reason: String,
    }
    let r: Raw = serde_json::from_str(text).ok()?;
    let ok = r.k == "disconnect_user"
        && protocol::valid_name(&r.n)
        && (r.code == 1000 || (4000..=4999).contains(&r.code));
    ok.then(|| Control::DisconnectUser {
        user: Arc::from(r.n),
        code: r.code,
        reason: r.reason,
    })
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
        let body = encode_body(p.event, p.from, p.data, exclude_wire.as_deref());
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

    /// Parks slot `s`'s join (`text`) until its room is loaded (or the backplane's
    /// deadline refuses it `unavailable`).
    pub(crate) fn wait_for_load(
        &mut self,
        s: usize,
        text: &str,
        room: &str,
        (since, epoch): (Option<u64>, Option<&str>),
        now: Timestamp,
    ) {
        let deadline = Timestamp(now.0.saturating_add(self.config.backplane_timeout_ms));
        let ticket = self.park_quietly(s, text, deadline);
        let conn = self.conns[s].id;
        let name: Arc<str> = self
            .index
            .rooms
            .key(room)
            .map_or_else(|| Arc::from(room), |rk| self.index.rooms[rk].name.clone());
        // A recovery in an epoch this node does not know (or another one) may need the
        // whole log: ask for all of it (bounded by the backplane's history length).
        let known = self
            .index
            .rooms
            .key(&name)
            .map(|rk| &self.index.rooms[rk])
            .filter(|r| r.synced && epoch == Some(&*r.epoch));
        let need = match (since, epoch) {
            (None, None) => None,
            (Some(n), Some(_)) if known.is_some() => Some(n),
            _ => Some(0),
        };
        self.backplane
            .waiting
            .entry(name.clone())
            .or_default()
            .push(Waiter { conn, ticket, need });
        self.request_load(&name, need);
    }

    /// Asks for a load of `room` unless one in flight already covers `after`. A room
    /// followed here always asks from no later than its own position, so what the
    /// answer brings continues what its members have.
    fn request_load(&mut self, room: &Arc<str>, after: Option<u64>) {
        let own = self
            .index
            .rooms
            .key(room)
            .map(|rk| &self.index.rooms[rk])
            .filter(|r| r.synced)
            .map(|r| r.seq);
        let after = match (after, own) {
            (Some(a), Some(o)) => Some(a.min(o)),
            (None, Some(o)) => Some(o),
            (a, None) => a,
        };
        if let Some(l) = self.backplane.loads.get_mut(room) {
            let covered = match after {
                None => true,
                Some(a) => l.lowest.is_some_and(|low| low <= a),
            };
            if covered {
                return;
            }
            l.count += 1;
            l.lowest = Some(after.expect("checked").min(l.lowest.unwrap_or(u64::MAX)));
        } else {
            self.backplane.loads.insert(
                room.clone(),
                LoadsInFlight {
                    count: 1,
                    lowest: after,
                    deadline: Timestamp(0),
                },
            );
        }
        // A backplane that never answers must not wedge the room: past this deadline the
        // loads of the room are given up (see `load_timer`).
        let deadline = Timestamp(
            self.clock
                .now()
                .0
                .saturating_add(self.config.backplane_timeout_ms),
        );
        if let Some(l) = self.backplane.loads.get_mut(room) {
            l.deadline = deadline;
        }
        self.backplane.next_load_timer += 1;
        let serial = self.backplane.next_load_timer;
        self.backplane.load_timers.insert(serial, room.clone());
        self.push_timer(deadline, Timer::Load { serial });
        self.fanout.push(Output::Load(Box::new(Load {
            room: room.clone(),
            after,
        })));
    }

    /// The backplane's answer to a [`Load`] of `room`: adopt its position, merge its
    /// entries into the cache, deliver what this node's members had not had yet (in
    /// order), then let the joins waiting for it go on.
    pub fn handle_loaded(&mut self, now: Timestamp, room: &str, loaded: Loaded) {
        let now = self.clock.advance(now);
        let Some(name) = self.finish_load(room) else {
            return;
        };
        let rk = match self.index.rooms.key(&name) {
            Some(rk) => rk,
            None if self.backplane.waiting.contains_key(&name) => {
                self.create_room_slot(&name, None, None, false)
            }
            None => {
                self.backplane.early.remove(&name);
                return; // nobody here needs the room any more
            }
        };
        self.fanout.stats.backplane_loads += 1;
        // Members told something the log cannot continue are closed at the end (closing
        // them now could drop the room under this loop).
        let mut doomed = Vec::new();
        self.adopt_epoch(rk, &loaded.epoch, &mut doomed);
        // history that came before what this node has, then what its members missed
        let (older, newer): (Vec<_>, Vec<_>) = loaded
            .entries
            .into_iter()
            .partition(|(seq, _)| *seq <= self.index.rooms[rk].seq);
        self.merge_older(rk, older, now);
        for (seq, body) in newer {
            if seq > self.index.rooms[rk].seq + 1 {
                // the log no longer holds what comes before it
                self.lost_messages(rk, seq - 1, &mut doomed);
            }
            self.apply_logged(rk, seq, &body, now);
        }
        if self.index.rooms[rk].seq < loaded.top {
            // nor the end
            self.lost_messages(rk, loaded.top, &mut doomed);
        }
        self.drain_early(rk, now);
        for id in doomed {
            if let Ok(s) = self.conns.open_slot(id) {
                self.close_conn(s, Closing::resync(), now);
            }
        }
        self.resume_waiters(&name, loaded.after, now);
        self.reap(now);
    }

    /// The backplane could not load `room`: the joins waiting for it are refused
    /// `unavailable` (a gap load is asked again with the next message or resync).
    pub fn handle_load_failed(&mut self, now: Timestamp, room: &str) {
        let now = self.clock.advance(now);
        let Some(name) = self.finish_load(room) else {
            return;
        };
        if self.backplane.loads.contains_key(&name) {
            return; // another load of it is still coming
        }
        for w in self.backplane.waiting.remove(&name).unwrap_or_default() {
            self.settle_waiter(w.conn, w.ticket, None, now);
        }
        self.reap(now);
    }

    /// The backplane reconnected (messages may have been lost meanwhile): every room
    /// followed here checks its position against the log and repairs what it missed.
    pub fn handle_backplane_resync(&mut self, now: Timestamp) {
        let now = self.clock.advance(now);
        let rooms: Vec<(Arc<str>, u64)> = self
            .index
            .rooms
            .iter()
            .filter(|(_, r)| r.synced)
            .map(|(_, r)| (r.name.clone(), r.seq))
            .collect();
        for (name, seq) in rooms {
            self.request_load(&name, Some(seq));
        }
        self.reap(now);
    }

    /// One message of a room's log, as the backplane published it.
    pub fn handle_logged(&mut self, now: Timestamp, room: &str, epoch: &str, seq: u64, body: &str) {
        let now = self.clock.advance(now);
        let Some(rk) = self.index.rooms.key(room) else {
            // followed once its first load is answered; else not followed here
            if let Some((name, _)) = self.backplane.loads.iter().find(|(n, _)| &***n == room) {
                let name = name.clone();
                self.hold_early(&name, epoch, seq, body);
            }
            return;
        };
        let r = &self.index.rooms[rk];
        let (name, synced, same_epoch, at) = (r.name.clone(), r.synced, epoch == &*r.epoch, r.seq);
        if !synced || self.backplane.loads.contains_key(&name) {
            self.hold_early(&name, epoch, seq, body);
            return;
        }
        if !same_epoch {
            // the room's sequence started over: the load says from where
            self.hold_early(&name, epoch, seq, body);
            self.request_load(&name, Some(at));
            return;
        }
        if seq <= at {
            self.fanout.stats.backplane_duplicates += 1;
            return;
        }
        if seq == at + 1 {
            self.apply_logged(rk, seq, body, now);
            self.drain_early(rk, now);
        } else {
            self.fanout.stats.backplane_gaps += 1;
            self.hold_early(&name, epoch, seq, body);
            self.request_load(&name, Some(at));
        }
        self.reap(now);
    }

    fn hold_early(&mut self, room: &Arc<str>, epoch: &str, seq: u64, body: &str) {
        let early = self.backplane.early.entry(room.clone()).or_default();
        early.insert(seq, (Arc::from(epoch), body.into()));
        while early.len() > MAX_EARLY {
            early.pop_first();
        }
    }

    /// Delivers the held messages that are next in order; asks for a load if a gap
    /// remains before the others.
    fn drain_early(&mut self, rk: usize, now: Timestamp) {
        let name = self.index.rooms[rk].name.clone();
        loop {
            let Some(early) = self.backplane.early.get_mut(&name) else {
                return;
            };
            let r = &self.index.rooms[rk];
            let Some((&seq, (epoch, _))) = early.first_key_value() else {
                self.backplane.early.remove(&name);
                return;
            };
            if epoch != &r.epoch || seq > r.seq + 1 {
                let at = r.seq;
                self.request_load(&name, Some(at));
                return;
            }
            let (_, (_, body)) = early.pop_first().expect("looked at above");
            if seq == r.seq + 1 {
                self.apply_logged(rk, seq, &body, now);
            }
        }
    }

    /// Delivers one message of the log to this node's members and keeps it in history.
    fn apply_logged(&mut self, rk: usize, seq: u64, body: &str, now: Timestamp) {
        let r = &mut self.index.rooms[rk];
        debug_assert_eq!(seq, r.seq + 1);
        r.seq = seq;
        let Some(b) = decode_body(body) else {
            // an unreadable entry still takes its seq: clients see the jump as a gap
            return;
        };
        let msg = messages::message(
            Via::Room { name: &r.name, seq },
            &b.e,
            b.f.map(|f| f.get().as_bytes()),
            b.d,
        );
        self.keep_in_history(rk, seq, &msg, now);
        let exclude: Vec<ConnId> =
            b.x.as_deref()
                .and_then(|x| self.find_connection(x))
                .into_iter()
                .collect();
        let delivered = self.deliver_room(rk, &msg, &exclude);
        let r = &self.index.rooms[rk];
        self.fanout.event(Event::Message(Box::new(Published {
            origin: Origin::Remote { node: 0 },
            destination: Destination::Room(r.name.clone()),
            event: Arc::from(&*b.e),
            seq: Some(seq),
            epoch: Some(r.epoch.clone()),
            delivered,
            message: msg,
        })));
    }

    /// Entries at or below the room's seq: history this node did not keep (it started
    /// following the room later), merged under what it has.
    fn merge_older(&mut self, rk: usize, older: Vec<(u64, Box<str>)>, now: Timestamp) {
        if older.is_empty() || !self.history.enabled() {
            return;
        }
        let r = &mut self.index.rooms[rk];
        let entries = older
            .into_iter()
            .filter_map(|(seq, body)| {
                let b = decode_body(&body)?;
                let msg = messages::message(
                    Via::Room { name: &r.name, seq },
                    &b.e,
                    b.f.map(|f| f.get().as_bytes()),
                    b.d,
                );
                Some(HistoryEntry { seq, at: now, msg })
            })
            .collect();
        self.history.merge(&mut r.log, entries, r.seq, now);
    }

    /// A room's position comes from the backplane: adopt its epoch. Members who were
    /// told another epoch (the backplane lost the log) are closed 1013 so they rejoin
    /// and learn `recovered: false`.
    fn adopt_epoch(&mut self, rk: usize, epoch: &Arc<str>, doomed: &mut Vec<ConnId>) {
        let r = &mut self.index.rooms[rk];
        if r.synced && r.epoch == *epoch {
            return;
        }
        let had_members = r.synced && !r.members.is_empty();
        r.epoch = epoch.clone();
        r.seq = 0;
        r.synced = true;
        self.history.discard(&r.log);
        r.log.clear();
        if had_members {
            self.fanout.stats.backplane_resets += 1;
            self.doom_members(rk, doomed);
        }
    }

    /// The backplane cannot give this node's members the messages up to `top`: they
    /// are closed 1013 (their clients rejoin and are told `recovered: false`), and the
    /// room goes on from `top`.
    fn lost_messages(&mut self, rk: usize, top: u64, doomed: &mut Vec<ConnId>) {
        let r = &mut self.index.rooms[rk];
        r.seq = top;
        self.history.discard(&r.log);
        r.log.clear();
        if !r.members.is_empty() {
            self.fanout.stats.backplane_resets += 1;
            self.doom_members(rk, doomed);
        }
    }

    fn doom_members(&self, rk: usize, doomed: &mut Vec<ConnId>) {
        let members = &self.index.rooms[rk].members;
        doomed.extend(members.iter().map(|&s| self.conns[s].id));
    }

    /// One load of `room` answered: returns the room's name, `None` if none was asked.
    fn finish_load(&mut self, room: &str) -> Option<Arc<str>> {
        let (name, l) = self
            .backplane
            .loads
            .iter_mut()
            .find(|(n, _)| &***n == room)?;
        let name = name.clone();
        l.count -= 1;
        if l.count == 0 {
            self.backplane.loads.remove(&name);
        }
        Some(name)
    }

    /// Lets the joins of `room` that this load served go on.
    fn resume_waiters(&mut self, room: &Arc<str>, after: Option<u64>, now: Timestamp) {
        let Some(waiters) = self.backplane.waiting.remove(room) else {
            return;
        };
        let in_flight = self.backplane.loads.contains_key(room);
        let (ready, rest): (Vec<_>, Vec<_>) = waiters.into_iter().partition(|w| {
            !in_flight
                || match (after, w.need) {
                    (None, None) => true,
                    (None, Some(_)) => false,
                    (Some(a), need) => need.is_none_or(|n| n >= a),
                }
        });
        if !rest.is_empty() {
            self.backplane.waiting.insert(room.clone(), rest);
        }
        for w in ready {
            self.settle_waiter(w.conn, w.ticket, Some(Decided::loaded()), now);
        }
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

    /// A load deadline fired: if the room's loads are still unanswered past it, they
    /// are given up (their joins refused `unavailable`; held messages ask again with the
    /// next message or check). A late answer then finds nothing and is dropped.
    pub(crate) fn load_timer(&mut self, serial: u64, now: Timestamp) {
        let Some(room) = self.backplane.load_timers.remove(&serial) else {
            return;
        };
        let expired = self
            .backplane
            .loads
            .get(&room)
            .is_some_and(|l| l.deadline <= now);
        if !expired {
            return;
        }
        self.backplane.loads.remove(&room);
        self.fanout.stats.backplane_load_timeouts += 1;
        for w in self.backplane.waiting.remove(&room).unwrap_or_default() {
            self.settle_waiter(w.conn, w.ticket, None, now);
        }
        self.reap(now);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_forwards_read_back() {
        let data = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        let body = encode_body(
            "say",
            Some(br#"{"conn":"c-1","user":"ann"}"#),
            Some(&data),
            Some("c-1"),
        );
        let b = decode_body(&body).unwrap();
        assert_eq!(
            (
                &*b.e,
                b.f.unwrap().get(),
                b.d.unwrap().get(),
                b.x.as_deref()
            ),
            (
                "say",
                r#"{"conn":"c-1","user":"ann"}"#,
                r#"{"t":"hi"}"#,
                Some("c-1")
            )
        );
        let body = encode_body("e", None, None, None);
        let b = decode_body(&body).unwrap();
        assert!(b.f.is_none() && b.d.is_none() && b.x.is_none());
        assert!(
            decode_body(r#"{"e":"","f":null,"d":null,"x":null}"#).is_none(),
            "bad event name"
        );

        let f = Forward {
            destination: Destination::Channel(Arc::from("news")),
            event: "e".into(),
            data: Some(RawValue::from_string("[1,2]".into()).unwrap()),
            from: Some(("c-2".into(), None)),
        };
        let back = forward_from_json(&forward_to_json(&f)).unwrap();
        assert_eq!(back.destination, f.destination);
        assert_eq!(back.data.unwrap().get(), "[1,2]");
        assert_eq!(back.from, f.from);
        assert!(forward_from_json("{}").is_none());
        assert!(forward_from_json(r#"{"k":"room","n":"","e":"e"}"#).is_none());
    }
}
