//! Joining and leaving as the facade sequences them, whoever asks (a client request, the
//! server API, a disconnect): one rule set for admission, held room messages settled
//! before the change, the index changed, watchers told, the event queued, and rooms and
//! channels removed once nothing keeps them.

use serde_json::value::RawValue;

use super::timers::Timer;
use super::types::{Event, HubError};
use super::Hub;
use crate::protocol::{ErrorCode, Presence, Rejection};
use crate::time::Timestamp;

/// Who asks for a join: only clients are held to `clients_create_rooms`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Asker {
    Client,
    Server,
}

/// Why a join or subscribe is refused, for both kinds of asker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    Forbidden,
    TooManyRooms,
    RoomFull,
    TooManySubscriptions,
    /// The hub holds `max_rooms` rooms already.
    ServerRooms,
}

impl Refusal {
    /// The client's `error`.
    pub(crate) fn rejection(self) -> Rejection {
        match self {
            Refusal::Forbidden => {
                Rejection::new(ErrorCode::Forbidden, "rooms are created by the server")
            }
            Refusal::TooManyRooms => {
                Rejection::new(ErrorCode::TooManyRooms, "too many rooms joined")
            }
            Refusal::RoomFull => Rejection::new(ErrorCode::RoomFull, "room is full"),
            Refusal::TooManySubscriptions => {
                Rejection::new(ErrorCode::TooManySubscriptions, "too many subscriptions")
            }
            Refusal::ServerRooms => Rejection::new(
                ErrorCode::TooManyRooms,
                "the server holds as many rooms as it may",
            ),
        }
    }
}

impl From<Refusal> for HubError {
    fn from(r: Refusal) -> HubError {
        match r {
            Refusal::Forbidden => HubError::Forbidden,
            Refusal::TooManyRooms => HubError::TooManyRooms,
            Refusal::RoomFull => HubError::RoomFull,
            Refusal::TooManySubscriptions => HubError::TooManySubscriptions,
            Refusal::ServerRooms => HubError::TooManyRooms,
        }
    }
}

impl Hub {
    /// Creates a room slot for a name not taken yet.
    pub(crate) fn create_room_slot(
        &mut self,
        name: &str,
        data: Option<Box<RawValue>>,
        max_members: Option<usize>,
        persistent: bool,
    ) -> usize {
        self.index
            .create_room(name, &self.instance, data, max_members, persistent)
    }

    /// Puts slot `s` in room `room` (created if missing) under the one rule set for
    /// joins; returns the room and whether `s` was already in it (then only its presence
    /// flag changes).
    pub(crate) fn join_slot(
        &mut self,
        s: usize,
        room: &str,
        presence: Presence,
        asker: Asker,
    ) -> Result<(usize, bool), Refusal> {
        let existing = self.index.rooms.key(room);
        if let Some(rk) = existing {
            if self.index.is_member(s, rk) {
                self.set_watch(s, rk, presence);
                return Ok((rk, true));
            }
        }
        if existing.is_none() && asker == Asker::Client && !self.config.clients_create_rooms {
            return Err(Refusal::Forbidden);
        }
        if existing.is_none()
            && self
                .config
                .max_rooms
                .is_some_and(|max| self.index.rooms.len() >= max)
        {
            return Err(Refusal::ServerRooms);
        }
        if self.conns[s].rooms.len() >= self.config.max_rooms_per_conn {
            return Err(Refusal::TooManyRooms);
        }
        if let Some(rk) = existing {
            if self.index.rooms[rk].is_full(self.config.max_room_members) {
                return Err(Refusal::RoomFull);
            }
        }
        let rk = match existing {
            Some(rk) => rk,
            None => self.create_room_slot(room, None, None, false),
        };
        self.add_member(s, rk, presence);
        Ok((rk, false))
    }

    fn add_member(&mut self, s: usize, rk: usize, presence: Presence) {
        self.settle_room(rk);
        self.index.add_member(&mut self.conns, s, rk);
        // tell the watchers first, so the joiner's own presence subscription starts after
        self.notify_watchers(s, rk, true);
        self.set_watch(s, rk, presence);
        let r = &self.index.rooms[rk];
        let event = Event::Joined {
            conn: self.conns[s].id,
            room: r.name.clone(),
            epoch: r.epoch.clone(),
            seq: r.seq,
        };
        self.fanout.event(event);
    }

    /// Takes slot `s` out of room `rk`; the room goes if nothing keeps it.
    pub(crate) fn remove_member(&mut self, s: usize, rk: usize, now: Timestamp) {
        // Out of the room however it happened (leave, kick, expiry): its room token is
        // spent, so a kicked client cannot come back on it.
        self.drop_room_grant(s, rk);
        self.settle_room(rk);
        self.forget_watch(s, rk);
        self.index.remove_member(&mut self.conns, s, rk);
        self.notify_watchers(s, rk, false);
        let event = Event::Left {
            conn: self.conns[s].id,
            room: self.index.rooms[rk].name.clone(),
        };
        self.fanout.event(event);
        self.maybe_remove_room(rk, now);
    }

    /// Subscribes slot `s` to `channel` (created if missing) under the one rule set for
    /// subscribes; subscribing again changes nothing.
    pub(crate) fn subscribe_slot(&mut self, s: usize, channel: &str) -> Result<(), Refusal> {
        let existing = self.index.channels.key(channel);
        if existing.is_some_and(|ck| self.index.is_subscriber(s, ck)) {
            return Ok(());
        }
        if self.conns[s].subs.len() >= self.config.max_subscriptions_per_conn {
            return Err(Refusal::TooManySubscriptions);
        }
        let ck = match existing {
            Some(ck) => ck,
            None => self.index.create_channel(channel, false),
        };
        self.index.add_subscriber(&mut self.conns, s, ck);
        let event = Event::Subscribed {
            conn: self.conns[s].id,
            channel: self.index.channels[ck].name.clone(),
        };
        self.fanout.event(event);
        Ok(())
    }

    /// Unsubscribes slot `s` from channel `ck`; the channel goes if nothing keeps it.
    pub(crate) fn remove_subscriber(&mut self, s: usize, ck: usize) {
        self.index.remove_subscriber(&mut self.conns, s, ck);
        let event = Event::Unsubscribed {
            conn: self.conns[s].id,
            channel: self.index.channels[ck].name.clone(),
        };
        self.fanout.event(event);
        self.index.remove_channel_if_unused(ck);
    }

    /// Removes a room nothing keeps once its history has aged out (scheduling a timer
    /// for then if it has not yet).
    pub(crate) fn maybe_remove_room(&mut self, rk: usize, now: Timestamp) {
        if !self.index.room_unused(rk) {
            return;
        }
        let r = &self.index.rooms[rk];
        if let Some(expires) = self.history.expires_at(&r.log) {
            if expires > now {
                if r.expiry_at.is_none() {
                    let uid = r.uid;
                    self.index.rooms[rk].expiry_at = Some(expires);
                    self.push_timer(expires, Timer::Room { slot: rk, uid });
                }
                return;
            }
        }
        self.drop_room(rk);
    }

    /// Removes a room now (its held messages go out first).
    pub(crate) fn drop_room(&mut self, rk: usize) {
        self.settle_room(rk);
        let r = self.index.rooms.remove(rk);
        self.history.discard(&r.log);
        self.fanout.event(Event::RoomRemoved { room: r.name });
    }

    /// An empty room's expiry timer fired.
    pub(crate) fn room_timer(&mut self, slot: usize, uid: u64, now: Timestamp) {
        match self.index.rooms.get(slot) {
            Some(r) if r.uid == uid => {}
            _ => return,
        }
        let room = &mut self.index.rooms[slot];
        room.expiry_at = None;
        self.history.trim(&mut room.log, now);
        self.maybe_remove_room(slot, now);
    }

    /// The history of all rooms back under its byte budget; rooms other than `keep`
    /// that it leaves empty and unused are removed.
    pub(crate) fn evict_history(&mut self, keep: usize, now: Timestamp) {
        for rk in self.history.evict(&mut self.index.rooms) {
            if rk != keep {
                self.maybe_remove_room(rk, now);
            }
        }
    }
}
