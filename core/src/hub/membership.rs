//! The membership index: rooms, channels, users and presence, and the back-references
//! that make leaving everything cost O(what the connection is in).
//!
//! Rooms and channels are both groups of connection slots in a [`Registry`]; a
//! connection lists the slots of its groups. This module changes the index and keeps
//! both directions in step; it sends nothing. Who is told about a change (presence,
//! events) and what must go out before it (held room messages) is the facade's to
//! sequence.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::conns::{unlist, Conns};
use super::fanout::Burst;
use super::history::RoomLog;
use super::presence::Batch;
use super::registry::{Named, Registry};
use super::types::{ConnId, ConnState};
use crate::hash::{IndexSet, Map, SeededState};
use crate::protocol::Presence;
use crate::time::Timestamp;

/// A room: members in order of joining, its place in the message sequence, its log.
pub(crate) struct Room {
    pub(crate) name: Arc<str>,
    /// Never reused: tells a room timer whether its room is still the same room.
    pub(crate) uid: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) seq: u64,
    /// With a backplane: `epoch` and `seq` are the backplane's (a load answered), not
    /// this node's provisional ones.
    pub(crate) synced: bool,
    pub(crate) members: IndexSet<usize>,
    /// Members that joined with `presence: true`: told of every connection.
    pub(crate) watchers: IndexSet<usize>,
    /// Members that joined with `presence: "users"`: told of each user's first
    /// connection in and last one out.
    pub(crate) user_watchers: IndexSet<usize>,
    /// Channels it is linked to.
    pub(crate) channels: IndexSet<usize>,
    pub(crate) log: RoomLog,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) max_members: Option<usize>,
    /// Created by the server API: kept when empty.
    pub(crate) persistent: bool,
    pub(crate) expiry_at: Option<Timestamp>,
    /// Room messages published but not yet handed to the members (coalescing).
    pub(crate) burst: Burst,
    /// Presence changes waiting for the end of their window (`presence_batch_ms`).
    pub(crate) presence: Option<Box<Batch>>,
}

impl Room {
    pub(crate) fn is_full(&self, default_max: Option<usize>) -> bool {
        match self.max_members.or(default_max) {
            Some(max) => self.members.len() >= max,
            None => false,
        }
    }
}

impl Named for Room {
    fn name(&self) -> &Arc<str> {
        &self.name
    }
}

/// A channel: direct subscribers, plus the members of the rooms linked to it.
pub(crate) struct Channel {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: IndexSet<usize>,
    pub(crate) rooms: IndexSet<usize>,
    /// Created by the server API: kept with no subscriber or link.
    pub(crate) persistent: bool,
}

impl Named for Channel {
    fn name(&self) -> &Arc<str> {
        &self.name
    }
}

/// A room or channel seen as a set of connection slots.
trait Group {
    fn conns(&mut self) -> &mut IndexSet<usize>;
}

impl Group for Room {
    fn conns(&mut self) -> &mut IndexSet<usize> {
        &mut self.members
    }
}

impl Group for Channel {
    fn conns(&mut self) -> &mut IndexSet<usize> {
        &mut self.subscribers
    }
}

/// Puts slot `s` in group `k` and `k` in the connection's list.
fn enlist<G: Group>(groups: &mut Registry<G>, k: usize, list: &mut Vec<usize>, s: usize) {
    if groups[k].conns().insert(s) {
        list.push(k);
    }
}

/// Takes slot `s` out of group `k` and `k` out of the connection's list.
fn delist<G: Group>(groups: &mut Registry<G>, k: usize, list: &mut Vec<usize>, s: usize) {
    groups[k].conns().swap_remove(&s);
    unlist(list, k);
}

pub(crate) struct Membership {
    pub(crate) rooms: Registry<Room>,
    pub(crate) channels: Registry<Channel>,
    /// Open connections per user, in order of connecting.
    pub(crate) users: Map<Arc<str>, Vec<ConnId>>,
    next_room_uid: u64,
    hasher: SeededState,
}

impl Membership {
    pub(crate) fn new(hasher: &SeededState) -> Membership {
        Membership {
            rooms: Registry::new(hasher),
            channels: Registry::new(hasher),
            users: Map::with_hasher(hasher.clone()),
            next_room_uid: 1,
            hasher: hasher.clone(),
        }
    }

    /// Creates a room (the name must be free); its epoch is `instance` and its uid.
    pub(crate) fn create_room(
        &mut self,
        name: &str,
        instance: &str,
        data: Option<Box<RawValue>>,
        max_members: Option<usize>,
        persistent: bool,
    ) -> usize {
        let uid = self.next_room_uid;
        self.next_room_uid += 1;
        let set = || IndexSet::with_hasher(self.hasher.clone());
        self.rooms.insert(Room {
            name: Arc::from(name),
            uid,
            epoch: Arc::from(format!("{instance}-{uid:x}")),
            seq: 0,
            synced: false,
            members: set(),
            watchers: set(),
            user_watchers: set(),
            channels: set(),
            log: RoomLog::new(),
            data,
            max_members,
            persistent,
            expiry_at: None,
            burst: Burst::new(&self.hasher),
            presence: None,
        })
    }

    /// Creates a channel (the name must be free).
    pub(crate) fn create_channel(&mut self, name: &str, persistent: bool) -> usize {
        let set = || IndexSet::with_hasher(self.hasher.clone());
        self.channels.insert(Channel {
            name: Arc::from(name),
            subscribers: set(),
            rooms: set(),
            persistent,
        })
    }

    pub(crate) fn is_member(&self, s: usize, rk: usize) -> bool {
        self.rooms[rk].members.contains(&s)
    }

    pub(crate) fn is_subscriber(&self, s: usize, ck: usize) -> bool {
        self.channels[ck].subscribers.contains(&s)
    }

    /// The presence member `s` of room `rk` receives.
    pub(crate) fn watches(&self, s: usize, rk: usize) -> Presence {
        let room = &self.rooms[rk];
        if room.watchers.contains(&s) {
            Presence::Connections
        } else if room.user_watchers.contains(&s) {
            Presence::Users
        } else {
            Presence::Off
        }
    }

    pub(crate) fn add_member(&mut self, conns: &mut Conns, s: usize, rk: usize) {
        enlist(&mut self.rooms, rk, &mut conns[s].rooms, s);
    }

    pub(crate) fn remove_member(&mut self, conns: &mut Conns, s: usize, rk: usize) {
        delist(&mut self.rooms, rk, &mut conns[s].rooms, s);
        self.rooms[rk].watchers.swap_remove(&s);
        self.rooms[rk].user_watchers.swap_remove(&s);
    }

    /// Sets which presence a member receives (none, per connection, per user).
    pub(crate) fn set_presence(&mut self, s: usize, rk: usize, presence: Presence) {
        let room = &mut self.rooms[rk];
        debug_assert!(room.members.contains(&s), "presence is for members");
        room.watchers.swap_remove(&s);
        room.user_watchers.swap_remove(&s);
        match presence {
            Presence::Off => {}
            Presence::Connections => {
                room.watchers.insert(s);
            }
            Presence::Users => {
                room.user_watchers.insert(s);
            }
        }
    }

    pub(crate) fn add_subscriber(&mut self, conns: &mut Conns, s: usize, ck: usize) {
        enlist(&mut self.channels, ck, &mut conns[s].subs, s);
    }

    pub(crate) fn remove_subscriber(&mut self, conns: &mut Conns, s: usize, ck: usize) {
        delist(&mut self.channels, ck, &mut conns[s].subs, s);
    }

    /// Links a room to a channel (both ways).
    pub(crate) fn link(&mut self, ck: usize, rk: usize) {
        self.channels[ck].rooms.insert(rk);
        self.rooms[rk].channels.insert(ck);
    }

    /// Unlinks a room from a channel (both ways).
    pub(crate) fn unlink(&mut self, ck: usize, rk: usize) {
        self.channels[ck].rooms.swap_remove(&rk);
        self.rooms[rk].channels.swap_remove(&ck);
    }

    pub(crate) fn add_user(&mut self, user: &Arc<str>, id: ConnId) {
        self.users.entry(user.clone()).or_default().push(id);
    }

    pub(crate) fn remove_user(&mut self, user: &Arc<str>, id: ConnId) {
        if let Some(list) = self.users.get_mut(user) {
            list.retain(|x| *x != id);
            if list.is_empty() {
                self.users.remove(user);
            }
        }
    }

    /// Whether nothing keeps the room but its history (no member, link or server claim).
    pub(crate) fn room_unused(&self, rk: usize) -> bool {
        let r = &self.rooms[rk];
        r.members.is_empty() && !r.persistent && r.channels.is_empty()
    }

    /// Removes a channel nothing keeps (no subscriber, link or server claim).
    pub(crate) fn remove_channel_if_unused(&mut self, ck: usize) {
        let ch = &self.channels[ck];
        if ch.subscribers.is_empty() && ch.rooms.is_empty() && !ch.persistent {
            self.channels.remove(ck);
        }
    }

    /// Whether slot `s` may publish to channel `ck`: a subscriber, or a member of a
    /// linked room (whichever side is smaller is scanned).
    pub(crate) fn may_publish_channel(&self, conns: &Conns, s: usize, ck: usize) -> bool {
        let ch = &self.channels[ck];
        if ch.subscribers.contains(&s) {
            return true;
        }
        let mine = &conns[s].rooms;
        if mine.len() <= ch.rooms.len() {
            mine.iter().any(|rk| ch.rooms.contains(rk))
        } else {
            ch.rooms
                .iter()
                .any(|&rk| self.rooms[rk].members.contains(&s))
        }
    }

    /// Checks every cross-reference; panics with a description on the first broken one.
    pub(crate) fn check(&self, conns: &Conns) {
        self.rooms.check("room");
        self.channels.check("channel");
        for (s, c) in conns.iter() {
            for &rk in &c.rooms {
                let r = self.rooms.get(rk).expect("conn points at a live room");
                assert!(r.members.contains(&s), "room lacks member back-reference");
            }
            assert_eq!(
                c.rooms.len(),
                c.rooms.iter().collect::<IndexSet<_>>().len(),
                "a room listed twice"
            );
            for &ck in &c.subs {
                let ch = self
                    .channels
                    .get(ck)
                    .expect("conn points at a live channel");
                assert!(ch.subscribers.contains(&s), "channel lacks subscriber");
            }
            // (one the application has not admitted yet is not there yet)
            if let (ConnState::Open, Some(u), true) = (c.state, &c.user, c.admitted()) {
                assert!(self.users[u].contains(&c.id), "user index lacks conn");
            }
        }
        for (rk, r) in self.rooms.iter() {
            for &m in r.members.iter() {
                let c = conns.get_slot(m).expect("member is a live conn");
                assert!(c.rooms.contains(&rk), "member lacks room back-reference");
            }
            for &w in r.watchers.iter() {
                assert!(r.members.contains(&w), "watcher is not a member");
                assert!(!r.user_watchers.contains(&w), "watcher of both kinds");
            }
            for &w in r.user_watchers.iter() {
                assert!(r.members.contains(&w), "user watcher is not a member");
            }
            for &ck in r.channels.iter() {
                assert!(
                    self.channels[ck].rooms.contains(&rk),
                    "channel link one-sided"
                );
            }
            if self.room_unused(rk) {
                assert!(
                    !r.log.is_empty() && r.expiry_at.is_some(),
                    "empty room {} kept without history to expire",
                    r.name
                );
            }
        }
        for (ck, ch) in self.channels.iter() {
            for &s in ch.subscribers.iter() {
                assert!(
                    conns[s].subs.contains(&ck),
                    "subscriber lacks back-reference"
                );
            }
            for &rk in ch.rooms.iter() {
                assert!(self.rooms[rk].channels.contains(&ck), "room link one-sided");
            }
            assert!(
                ch.persistent || !ch.subscribers.is_empty() || !ch.rooms.is_empty(),
                "orphan channel kept"
            );
        }
        for (u, list) in self.users.iter() {
            assert!(!list.is_empty(), "empty user entry {u}");
            for id in list {
                let c = conns.get(*id).expect("user entry is a live conn");
                assert_eq!(c.state, ConnState::Open);
                assert_eq!(c.user.as_ref(), Some(u));
            }
        }
    }
}
