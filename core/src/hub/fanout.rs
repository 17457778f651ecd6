//! Fan-out: the output queue, each connection's output budget, the slow consumers found
//! on the way, the counters, and room messages held for a burst (coalescing).
//!
//! Every byte the hub hands out goes through [`FanOut::deliver`] (or its burst twin):
//! it charges the receiver's budget, counts the message and queues the output. A
//! receiver whose backlog is already over budget is marked *doomed* and closed by the
//! facade once the current fan-out is done ([`FanOut::next_doomed`]), so one slow reader
//! never stalls or reorders the others.
//!
//! Coalescing (`HubConfig::coalesce_room_messages`): room messages wait in the room's
//! [`Burst`] until the batch ends or anything else must reach one of its members first;
//! then each member gets the whole burst as one shared [`Frames`], or the rest of it
//! when it already had a part.

use std::collections::VecDeque;

use super::conns::{Conn, Conns};
use super::membership::Room;
use super::registry::Registry;
use super::types::{ConnId, ConnState, Event, Output, Stats};
use crate::hash::{IndexMap, SeededState};
use crate::outgoing::{Frames, Outgoing};

/// A room holding this many coalesced messages (or a quarter of a connection's output
/// budget) hands them out at once: bounds the latency and the size of one burst whatever
/// the caller's batch size, so a burst alone never makes a fast reader a slow consumer.
pub(crate) const MAX_PENDING_MESSAGES: usize = 64;

/// A room's messages published but not yet handed to its members.
pub(crate) struct Burst {
    /// Oldest first.
    msgs: Vec<Outgoing>,
    /// Their bytes on the wire.
    bytes: usize,
    /// Members already handed the first N messages (they needed something else sent to
    /// them in between, or were excluded from one): conn slot → N.
    caught_up: IndexMap<usize, usize>,
}

impl Burst {
    pub(crate) fn new(hasher: &SeededState) -> Burst {
        Burst {
            msgs: Vec::new(),
            bytes: 0,
            caught_up: IndexMap::with_hasher(hasher.clone()),
        }
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.msgs.is_empty()
    }
}

pub(crate) struct FanOut {
    outputs: VecDeque<Output>,
    /// Connections found over their output budget during a fan-out, closed right after.
    doomed: Vec<ConnId>,
    /// Rooms holding coalesced messages not yet handed out.
    pending_rooms: Vec<usize>,
    /// Channel fan-out number, for delivering once to a connection reached several ways.
    stamp: u64,
    max_buffered: usize,
    pub(crate) stats: Stats,
}

impl FanOut {
    pub(crate) fn new(max_buffered: usize) -> FanOut {
        FanOut {
            outputs: VecDeque::new(),
            doomed: Vec::new(),
            pending_rooms: Vec::new(),
            stamp: 0,
            max_buffered,
            stats: Stats::default(),
        }
    }

    pub(crate) fn push(&mut self, output: Output) {
        self.outputs.push_back(output);
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.outputs.push_back(Output::Event(event));
    }

    pub(crate) fn poll(&mut self) -> Option<Output> {
        self.outputs.pop_front()
    }

    /// A slow consumer to close now that the fan-out that found it is over.
    pub(crate) fn next_doomed(&mut self) -> Option<ConnId> {
        self.doomed.pop()
    }

    pub(crate) fn has_doomed(&self) -> bool {
        !self.doomed.is_empty()
    }

    /// A room still holding a burst, if any.
    pub(crate) fn next_pending_room(&self) -> Option<usize> {
        self.pending_rooms.last().copied()
    }

    /// A fresh number for one channel fan-out.
    pub(crate) fn next_stamp(&mut self) -> u64 {
        self.stamp += 1;
        self.stamp
    }

    /// Queues one message for one connection and charges its budget.
    pub(crate) fn deliver(&mut self, c: &mut Conn, msg: &Outgoing) {
        if self.charge(c, msg.wire_len(), 1) {
            self.outputs.push_back(Output::Send {
                conn: c.id,
                msg: msg.clone(),
            });
        }
    }

    fn deliver_frames(&mut self, c: &mut Conn, frames: &Frames) {
        if self.charge(c, frames.wire_len(), frames.count()) {
            self.outputs.push_back(Output::SendFrames {
                conn: c.id,
                frames: frames.clone(),
            });
        }
    }

    /// Hands one connection some coalesced messages: one output either way.
    fn hand(&mut self, c: &mut Conn, msgs: &[Outgoing]) {
        match msgs {
            [] => {}
            [one] => self.deliver(c, one),
            more => self.deliver_frames(c, &Frames::concat(more)),
        }
    }

    /// Charges `len` bytes of `count` messages to a connection's output budget and the
    /// stats; `false` (nothing to send) when the connection is no longer open.
    ///
    /// Slow is a backlog already over budget when the next message comes: one message
    /// alone (a message near the size limit is a little bigger than it once wrapped)
    /// never makes a reader slow, and flush reports may lag a little. A connection holds
    /// at most the budget plus one message or burst.
    fn charge(&mut self, c: &mut Conn, len: usize, count: usize) -> bool {
        if c.state != ConnState::Open {
            return false;
        }
        let backlog = c.unsent;
        c.unsent += len;
        if backlog > self.max_buffered && !c.doomed {
            c.doomed = true;
            self.doomed.push(c.id);
        }
        self.stats.messages_out += count as u64;
        self.stats.bytes_out += len as u64;
        true
    }

    /// Hands one encoded room message to every member but `exclude`, or holds it in the
    /// room's burst when coalescing; returns how many members it is for.
    pub(crate) fn room_message(
        &mut self,
        rk: usize,
        room: &mut Room,
        conns: &mut Conns,
        msg: &Outgoing,
        coalesce: bool,
        exclude: &[ConnId],
    ) -> usize {
        if !coalesce {
            let mut delivered = 0;
            for &m in room.members.iter() {
                let c = &mut conns[m];
                if exclude.contains(&c.id) {
                    continue;
                }
                delivered += 1;
                self.deliver(c, msg);
            }
            return delivered;
        }
        // Held until the burst ends; a member excluded from this message is handed
        // everything before it now and skips it.
        let mut excluded = 0;
        for (i, &x) in exclude.iter().enumerate() {
            if exclude[..i].contains(&x) {
                continue; // listed twice: excluded (and counted) once
            }
            if let Ok(xs) = conns.open_slot(x) {
                if room.members.contains(&xs) {
                    self.catch_up_room(&mut conns[xs], room);
                    let skip = room.burst.msgs.len() + 1;
                    room.burst.caught_up.insert(xs, skip);
                    excluded += 1;
                }
            }
        }
        let delivered = room.members.len() - excluded;
        if !room.members.is_empty() {
            if room.burst.msgs.is_empty() {
                self.pending_rooms.push(rk);
            }
            room.burst.msgs.push(msg.clone());
            room.burst.bytes += msg.wire_len();
            if room.burst.msgs.len() >= MAX_PENDING_MESSAGES
                || room.burst.bytes >= self.max_buffered / 4
            {
                self.flush_room(rk, room, conns);
            }
        }
        delivered
    }

    /// Hands one room's held messages to its members: the whole burst shared, or the rest
    /// of it to members already handed a part. Runs before the room's membership changes,
    /// so exactly the members at publish time receive them.
    pub(crate) fn flush_room(&mut self, rk: usize, room: &mut Room, conns: &mut Conns) {
        if room.burst.msgs.is_empty() {
            return;
        }
        if let Some(i) = self.pending_rooms.iter().position(|&r| r == rk) {
            self.pending_rooms.swap_remove(i);
        }
        let burst = &mut room.burst;
        let msgs = std::mem::take(&mut burst.msgs);
        burst.bytes = 0;
        let whole = (msgs.len() > 1).then(|| Frames::concat(&msgs));
        for &m in room.members.iter() {
            let from = match burst.caught_up.is_empty() {
                true => 0,
                false => burst.caught_up.get(&m).copied().unwrap_or(0),
            };
            let c = &mut conns[m];
            match (&whole, from) {
                (Some(frames), 0) => self.deliver_frames(c, frames),
                _ => self.hand(c, msgs.get(from..).unwrap_or_default()),
            }
        }
        burst.caught_up.clear();
        // Keep the allocation for the next burst.
        burst.msgs = msgs;
        burst.msgs.clear();
    }

    /// Before anything else goes to connection `s`: hands it the held room messages
    /// published before, so it sees everything in the order the hub decided it.
    pub(crate) fn catch_up(&mut self, s: usize, conns: &mut Conns, rooms: &mut Registry<Room>) {
        for i in 0..self.pending_rooms.len() {
            let room = &mut rooms[self.pending_rooms[i]];
            if room.members.contains(&s) {
                self.catch_up_room(&mut conns[s], room);
            }
        }
    }

    fn catch_up_room(&mut self, c: &mut Conn, room: &mut Room) {
        let s = c.id.slot();
        let len = room.burst.msgs.len();
        let from = room.burst.caught_up.get(&s).copied().unwrap_or(0);
        if from < len {
            self.hand(c, &room.burst.msgs[from..]);
        }
        if len > 0 {
            room.burst.caught_up.insert(s, len.max(from));
        }
    }

    /// Marks connection `s` as having had every held message, without sending any (its
    /// socket is gone).
    pub(crate) fn skip_pending(&mut self, s: usize, rooms: &mut Registry<Room>) {
        for &rk in &self.pending_rooms {
            let room = &mut rooms[rk];
            if room.members.contains(&s) {
                room.burst.caught_up.insert(s, room.burst.msgs.len());
            }
        }
    }

    /// Whether any room holds a burst.
    pub(crate) fn holding(&self) -> bool {
        !self.pending_rooms.is_empty()
    }

    /// The pending-room list matches the rooms' bursts.
    pub(crate) fn check(&self, rooms: &Registry<Room>) {
        for &rk in &self.pending_rooms {
            let r = rooms.get(rk).expect("a pending room is live");
            assert!(!r.burst.is_empty(), "a pending room holds messages");
        }
        for (rk, r) in rooms.iter() {
            assert_eq!(
                r.burst.is_empty(),
                !self.pending_rooms.contains(&rk),
                "pending room index"
            );
            assert!(
                r.burst.msgs.len() < MAX_PENDING_MESSAGES,
                "a burst is handed out at its bound"
            );
            for (&m, &n) in r.burst.caught_up.iter() {
                assert!(r.members.contains(&m), "caught-up entry for a non-member");
                assert!(n <= r.burst.msgs.len(), "caught up past the burst");
            }
        }
    }
}
