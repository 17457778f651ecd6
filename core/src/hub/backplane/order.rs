//! Delivering a room's log in seq order: a duplicate is dropped, a message that came
//! early is held until the gap before it is loaded, and a log the backplane lost
//! (a new epoch, or entries gone) closes the members 1013 instead of a silent gap.

use std::sync::Arc;

use super::wire::decode_body;
use super::MAX_EARLY;
use crate::hub::history::HistoryEntry;
use crate::hub::messages::{self, Via};
use crate::hub::types::{ConnId, Destination, Event, Origin, Published};
use crate::hub::Hub;
use crate::time::Timestamp;

impl Hub {
    /// One message of a room's log, as the backplane published it.
    pub fn handle_logged(&mut self, now: Timestamp, room: &str, epoch: &str, seq: u64, body: &str) {
        let now = self.clock.advance(now);
        let Some(rk) = self.index.rooms.key(room) else {
            // followed once its first load is answered; else not followed here
            if let Some((name, _)) = self.backplane.loads.get_key_value(room) {
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

    pub(super) fn hold_early(&mut self, room: &Arc<str>, epoch: &str, seq: u64, body: &str) {
        let early = self.backplane.early.entry(room.clone()).or_default();
        early.insert(seq, (Arc::from(epoch), body.into()));
        while early.len() > MAX_EARLY {
            early.pop_first();
        }
    }

    /// Delivers the held messages that are next in order; asks for a load if a gap
    /// remains before the others.
    pub(super) fn drain_early(&mut self, rk: usize, now: Timestamp) {
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
    pub(super) fn apply_logged(&mut self, rk: usize, seq: u64, body: &str, now: Timestamp) {
        let ts_now = self.unix_ms(now);
        let r = &mut self.index.rooms[rk];
        debug_assert_eq!(seq, r.seq + 1);
        r.seq = seq;
        let Some(b) = decode_body(body) else {
            // an unreadable entry still takes its seq: clients see the jump as a gap
            return;
        };
        let msg = messages::message(Via::Room { name: &r.name, seq }, &b.content(ts_now));
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
    pub(super) fn merge_older(&mut self, rk: usize, older: Vec<(u64, Box<str>)>, now: Timestamp) {
        if older.is_empty() || !self.history.enabled() {
            return;
        }
        let ts_now = self.unix_ms(now);
        let r = &mut self.index.rooms[rk];
        let entries = older
            .into_iter()
            .filter_map(|(seq, body)| {
                let b = decode_body(&body)?;
                let msg = messages::message(Via::Room { name: &r.name, seq }, &b.content(ts_now));
                Some(HistoryEntry { seq, at: now, msg })
            })
            .collect();
        self.history.merge(&mut r.log, entries, r.seq, now);
    }

    /// A room's position comes from the backplane: adopt its epoch. Members who were
    /// told another epoch (the backplane lost the log) are closed 1013 so they rejoin
    /// and learn `recovered: false`.
    pub(super) fn adopt_epoch(&mut self, rk: usize, epoch: &Arc<str>, doomed: &mut Vec<ConnId>) {
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
    pub(super) fn lost_messages(&mut self, rk: usize, top: u64, doomed: &mut Vec<ConnId>) {
        let r = &mut self.index.rooms[rk];
        r.seq = top;
        self.history.discard(&r.log);
        r.log.clear();
        if !r.members.is_empty() {
            self.fanout.stats.backplane_resets += 1;
            self.doom_members(rk, doomed);
        }
    }

    pub(super) fn doom_members(&self, rk: usize, doomed: &mut Vec<ConnId>) {
        let members = &self.index.rooms[rk].members;
        doomed.extend(members.iter().map(|&s| self.conns[s].id));
    }
}
