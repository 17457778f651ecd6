//! Reading a room's log from the backplane: the joins that wait for it, one load in
//! flight covering many, and the deadline that keeps a silent backplane from wedging a
//! room.

use std::sync::Arc;

use super::{Load, Loaded, LoadsInFlight, Waiter};
use crate::hub::connections::Closing;
use crate::hub::decisions::Decided;
use crate::hub::timers::Timer;
use crate::hub::types::Output;
use crate::hub::Hub;
use crate::time::Timestamp;

impl Hub {
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
    pub(super) fn request_load(&mut self, room: &Arc<str>, after: Option<u64>) {
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

    /// One load of `room` answered: returns the room's name, `None` if none was asked.
    pub(super) fn finish_load(&mut self, room: &str) -> Option<Arc<str>> {
        let name = self.backplane.loads.get_key_value(room)?.0.clone();
        let l = self.backplane.loads.get_mut(room).expect("looked up above");
        l.count -= 1;
        if l.count == 0 {
            self.backplane.loads.remove(&name);
        }
        Some(name)
    }

    /// Lets the joins of `room` that this load served go on.
    pub(super) fn resume_waiters(&mut self, room: &Arc<str>, after: Option<u64>, now: Timestamp) {
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
}
