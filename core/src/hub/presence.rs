//! Telling a room's watchers who came and went: per connection (`presence: true`) or
//! per user (`presence: "users"`: a user's first connection in, last one out), at once
//! or batched over a short window (`HubConfig::presence_batch_ms`), as Phoenix Presence
//! sends diffs.
//!
//! A batch is one list of changes per room. A change that undoes a pending one for the
//! same entry (joined, then left within the window) cancels it: nobody hears of either.
//! A connection that starts watching while a batch is open already saw the room as it
//! is in its join's `present` list, so it is sent only the later changes, and the
//! changes before it can no longer cancel (it would miss a departure). A message never
//! names one entry twice: a batch that would is split.

use std::collections::BTreeSet;

use super::messages;
use super::timers::Timer;
use super::Hub;
use crate::outgoing::Outgoing;
use crate::protocol::Presence;
use crate::time::Timestamp;

/// Which watchers a change is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Audience {
    /// Every per-connection watcher.
    Connections,
    /// Every per-user watcher.
    Users,
}

#[derive(Debug)]
struct Change {
    audience: Audience,
    joined: bool,
    /// The entry: a connection's wire id, or (per user) the user or an anonymous
    /// connection's wire id.
    key: Box<str>,
    /// Its `{"conn","user","info"}` JSON.
    peer: Box<[u8]>,
}

/// A room's changes waiting for the end of the window.
#[derive(Debug)]
pub(crate) struct Batch {
    changes: Vec<Change>,
    /// Watchers that started during this batch, and how many changes there were then.
    late: Vec<(usize, usize)>,
    /// Changes below this index cannot be cancelled (a late watcher starts after them).
    floor: usize,
    /// When the batch goes out.
    pub(crate) due: Timestamp,
}

impl Batch {
    fn new(due: Timestamp) -> Batch {
        Batch {
            changes: Vec::new(),
            late: Vec::new(),
            floor: 0,
            due,
        }
    }

    /// Records a change, or cancels the pending opposite one.
    fn push(&mut self, change: Change) {
        let open = &self.changes[self.floor..];
        if let Some(i) = open
            .iter()
            .rposition(|c| c.audience == change.audience && c.key == change.key)
        {
            if open[i].joined != change.joined {
                self.changes.remove(self.floor + i);
                return;
            }
        }
        self.changes.push(change);
    }

    /// Watcher `s` starts now: it gets only what follows.
    fn watcher_started(&mut self, s: usize) {
        self.late.retain(|&(w, _)| w != s);
        self.late.push((s, self.changes.len()));
        self.floor = self.changes.len();
    }

    fn watcher_stopped(&mut self, s: usize) {
        self.late.retain(|&(w, _)| w != s);
    }

    /// The first change watcher `s` is to get.
    fn start_of(&self, s: usize) -> usize {
        self.late
            .iter()
            .find(|&&(w, _)| w == s)
            .map_or(0, |&(_, at)| at)
    }

    /// The messages telling `audience` the changes from `start` on: one, unless an
    /// entry changes twice (then it is split there).
    fn messages(&self, room: &str, audience: Audience, start: usize) -> Vec<Outgoing> {
        let mine: Vec<&Change> = self.changes[start.min(self.changes.len())..]
            .iter()
            .filter(|c| c.audience == audience)
            .collect();
        let mut out = Vec::new();
        let mut from = 0;
        while from < mine.len() {
            let mut keys = BTreeSet::new();
            let to = mine[from..]
                .iter()
                .position(|c| !keys.insert(&*c.key))
                .map_or(mine.len(), |n| from + n);
            let part = &mine[from..to];
            let peers = |joined: bool| {
                part.iter()
                    .filter(move |c| c.joined == joined)
                    .map(|c| &*c.peer)
            };
            out.push(messages::presence_diff(room, peers(true), peers(false)));
            from = to;
        }
        out
    }
}

impl Hub {
    /// Tells the room's watchers that slot `s` (just added to room `rk`, or just taken
    /// out) joined or left: every per-connection watcher, and the per-user ones when
    /// `s` is its user's first connection in or last one out.
    pub(crate) fn notify_watchers(&mut self, s: usize, rk: usize, joined: bool) {
        let room = &self.index.rooms[rk];
        if room.watchers.is_empty() && room.user_watchers.is_empty() {
            return;
        }
        let users = !room.user_watchers.is_empty() && self.alone_of_its_user(s, rk);
        let c = &self.conns[s];
        if self.config.presence_batch_ms == 0 {
            let kind = if joined { "joined" } else { "left" };
            let msg = messages::presence(&room.name, kind, &c.peer_json);
            let mut watchers: Vec<usize> = room.watchers.iter().copied().collect();
            if users {
                watchers.extend(room.user_watchers.iter().copied());
            }
            for w in watchers {
                let wid = self.conns[w].id;
                self.send(wid, &msg);
            }
            return;
        }
        let conn_change = (!room.watchers.is_empty()).then(|| Change {
            audience: Audience::Connections,
            joined,
            key: c.wire.clone(),
            peer: c.peer_json.clone(),
        });
        let user_change = users.then(|| Change {
            audience: Audience::Users,
            joined,
            key: c.user.as_deref().map_or_else(|| c.wire.clone(), Box::from),
            peer: c.peer_json.clone(),
        });
        let now = self.clock.now();
        let due = Timestamp(now.0.saturating_add(self.config.presence_batch_ms));
        let room = &mut self.index.rooms[rk];
        let fresh = room.presence.is_none();
        let batch = room
            .presence
            .get_or_insert_with(|| Box::new(Batch::new(due)));
        for change in [conn_change, user_change].into_iter().flatten() {
            batch.push(change);
        }
        if fresh {
            let uid = room.uid;
            self.push_timer(due, Timer::Presence { slot: rk, uid });
        }
    }

    /// Slot `s` now watches room `rk`'s presence as `presence` says (it is a member).
    pub(crate) fn set_watch(&mut self, s: usize, rk: usize, presence: Presence) {
        let before = self.index.watches(s, rk);
        self.index.set_presence(s, rk, presence);
        if let Some(batch) = self.index.rooms[rk].presence.as_mut() {
            if presence.is_on() {
                // its join's `present` list shows the room as it is now
                batch.watcher_started(s);
            } else if before.is_on() {
                batch.watcher_stopped(s);
            }
        }
    }

    /// Slot `s` no longer watches room `rk` (it left).
    pub(crate) fn forget_watch(&mut self, s: usize, rk: usize) {
        if let Some(batch) = self.index.rooms[rk].presence.as_mut() {
            batch.watcher_stopped(s);
        }
    }

    /// Sends room `rk`'s pending presence changes now: at the end of the window, and
    /// before a room message (so a newcomer's `joined` comes before what it says).
    pub(crate) fn flush_presence(&mut self, rk: usize) {
        let room = &mut self.index.rooms[rk];
        let Some(batch) = room.presence.take() else {
            return;
        };
        let room = &self.index.rooms[rk];
        let watchers = room.watchers.iter().map(|&w| (w, Audience::Connections));
        let user_watchers = room.user_watchers.iter().map(|&w| (w, Audience::Users));
        let mut built: Vec<((Audience, usize), Vec<Outgoing>)> = Vec::new();
        let mut sends = Vec::new();
        for (w, audience) in watchers.chain(user_watchers) {
            let key = (audience, batch.start_of(w));
            let i = match built.iter().position(|(k, _)| *k == key) {
                Some(i) => i,
                None => {
                    built.push((key, batch.messages(&room.name, audience, key.1)));
                    built.len() - 1
                }
            };
            sends.push((self.conns[w].id, i));
        }
        for (id, i) in sends {
            for msg in &built[i].1 {
                self.send(id, msg);
            }
        }
    }

    /// The presence window of a room ended.
    pub(crate) fn presence_timer(&mut self, slot: usize, uid: u64, now: Timestamp) {
        let due = match self.index.rooms.get(slot) {
            Some(r) if r.uid == uid => r.presence.as_ref().map(|b| b.due),
            _ => return,
        };
        if due.is_some_and(|d| d <= now) {
            self.flush_presence(slot);
            self.reap(now);
        }
    }

    /// Whether no other connection of `s`'s user is in room `rk` (an anonymous
    /// connection is its own user). O(the user's connections), with no per-room count
    /// to keep: rooms nobody watches per user pay nothing.
    fn alone_of_its_user(&self, s: usize, rk: usize) -> bool {
        let Some(user) = self.conns[s].user.as_deref() else {
            return true;
        };
        let me = self.conns[s].id;
        !self.user_connections(user).iter().any(|&c| {
            c != me
                && self
                    .conns
                    .slot_of(c)
                    .is_ok_and(|cs| self.index.is_member(cs, rk))
        })
    }
}
