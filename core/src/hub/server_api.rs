//! The server API: what the application does and asks through the hub (rooms with data,
//! channels linking rooms, server-side membership, sends from the server, queries).
//! Mutations take `now` like every input; mistakes are `Err(HubError)`, never a peer's
//! fault.

use serde_json::value::RawValue;

use super::input::Recipient;
use super::members::Asker;
use super::messages;
use super::publish::Publish;
use super::types::{ConnId, ConnState, Delivery, HubError, Origin, RoomOptions};
use super::Hub;
use crate::outgoing::Outgoing;
use crate::protocol;
use crate::time::Timestamp;

fn check_name(name: &str) -> Result<(), HubError> {
    if protocol::valid_name(name) {
        Ok(())
    } else {
        Err(HubError::BadName)
    }
}

impl Hub {
    // -----------------------------------------------------------------------------------
    // Rooms and channels

    /// Creates a room that stays until [`Hub::remove_room`], with application data and an
    /// optional member limit. Creating an existing room updates its data and limit.
    pub fn create_room(
        &mut self,
        now: Timestamp,
        name: &str,
        options: RoomOptions,
    ) -> Result<(), HubError> {
        self.clock.advance(now);
        check_name(name)?;
        match self.index.rooms.key(name) {
            Some(rk) => {
                let r = &mut self.index.rooms[rk];
                r.persistent = true;
                r.data = options.data;
                r.max_members = options.max_members;
            }
            None => {
                self.create_room_slot(name, options.data, options.max_members, true);
            }
        }
        Ok(())
    }

    /// Removes a room: every member leaves it (presence `left` to watchers), its
    /// history goes, and channels stop linking it.
    pub fn remove_room(&mut self, now: Timestamp, name: &str) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let rk = self.index.rooms.key(name).ok_or(HubError::UnknownRoom)?;
        self.settle_room(rk);
        self.index.rooms[rk].persistent = true; // keep the slot stable while members leave
        let members: Vec<usize> = self.index.rooms[rk].members.iter().copied().collect();
        let left = messages::left(name, "room_removed");
        for m in members {
            self.remove_member(m, rk, now);
            let id = self.conns[m].id;
            self.send(id, &left);
        }
        let links: Vec<usize> = self.index.rooms[rk].channels.iter().copied().collect();
        for ck in links {
            self.index.unlink(ck, rk);
            self.index.remove_channel_if_unused(ck);
        }
        self.drop_room(rk);
        Ok(())
    }

    /// Creates a channel linking these rooms (creating missing rooms as persistent); an
    /// existing channel gains the links.
    pub fn create_channel(
        &mut self,
        now: Timestamp,
        name: &str,
        rooms: &[&str],
    ) -> Result<(), HubError> {
        self.clock.advance(now);
        check_name(name)?;
        rooms.iter().try_for_each(|r| check_name(r))?;
        let ck = match self.index.channels.key(name) {
            Some(ck) => ck,
            None => self.index.create_channel(name, true),
        };
        self.index.channels[ck].persistent = true;
        for r in rooms {
            self.link_room(now, name, r)?;
        }
        Ok(())
    }

    /// Links a room to a channel: its members receive the channel's messages.
    pub fn link_room(&mut self, now: Timestamp, channel: &str, room: &str) -> Result<(), HubError> {
        self.clock.advance(now);
        check_name(room)?;
        let ck = self
            .index
            .channels
            .key(channel)
            .ok_or(HubError::UnknownChannel)?;
        let rk = match self.index.rooms.key(room) {
            Some(rk) => rk,
            None => self.create_room_slot(room, None, None, true),
        };
        self.index.link(ck, rk);
        Ok(())
    }

    /// Unlinks a room from a channel.
    pub fn unlink_room(
        &mut self,
        now: Timestamp,
        channel: &str,
        room: &str,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let ck = self
            .index
            .channels
            .key(channel)
            .ok_or(HubError::UnknownChannel)?;
        let rk = self.index.rooms.key(room).ok_or(HubError::UnknownRoom)?;
        self.index.unlink(ck, rk);
        self.maybe_remove_room(rk, now);
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Membership from the server side

    /// Puts a connection in a room from the server side, under the same rules as a
    /// client's join except that the server may create rooms. The connection is told
    /// (`joined`, with the room's epoch and seq, so its client tracks the room like its
    /// own join); watchers see a presence `joined`. Already a member: nothing changes.
    pub fn join(
        &mut self,
        now: Timestamp,
        id: ConnId,
        room: &str,
        presence: bool,
    ) -> Result<(), HubError> {
        self.server_join(now, id, room, presence, true)
    }

    /// As [`Hub::join`], without telling the connection: for sockets that speak another
    /// protocol than roomcast's JSON (the benchmark's raw room), where a `joined` message
    /// would be noise in their stream.
    pub fn join_untold(
        &mut self,
        now: Timestamp,
        id: ConnId,
        room: &str,
        presence: bool,
    ) -> Result<(), HubError> {
        self.server_join(now, id, room, presence, false)
    }

    fn server_join(
        &mut self,
        now: Timestamp,
        id: ConnId,
        room: &str,
        presence: bool,
        tell: bool,
    ) -> Result<(), HubError> {
        self.clock.advance(now);
        let s = self.conns.open_slot(id)?;
        check_name(room)?;
        let (rk, already) = self.join_slot(s, room, presence.into(), Asker::Server)?;
        if !already && tell {
            let r = &self.index.rooms[rk];
            let msg = messages::joined(&r.name, r.members.len(), &r.epoch, r.seq);
            self.send(id, &msg);
        }
        Ok(())
    }

    /// Takes a connection out of a room from the server side; it is told (`left`,
    /// reason `server`), so its client stops rejoining the room.
    pub fn leave(&mut self, now: Timestamp, id: ConnId, room: &str) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.conns.open_slot(id)?;
        let rk = self.index.rooms.key(room).ok_or(HubError::UnknownRoom)?;
        if !self.index.is_member(s, rk) {
            return Err(HubError::NotMember);
        }
        self.remove_member(s, rk, now);
        self.send(id, &messages::left(room, "server"));
        Ok(())
    }

    /// Takes a connection out of every room, in O(its rooms); each is told as by
    /// [`Hub::leave`].
    pub fn leave_all(&mut self, now: Timestamp, id: ConnId) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.conns.open_slot(id)?;
        for rk in self.conns[s].rooms.clone() {
            let left = messages::left(&self.index.rooms[rk].name, "server");
            self.remove_member(s, rk, now);
            self.send(id, &left);
        }
        Ok(())
    }

    /// Subscribes a connection from the server side, under the same rules as a client.
    pub fn subscribe(&mut self, now: Timestamp, id: ConnId, channel: &str) -> Result<(), HubError> {
        self.clock.advance(now);
        let s = self.conns.open_slot(id)?;
        check_name(channel)?;
        self.subscribe_slot(s, channel)?;
        Ok(())
    }

    /// Unsubscribes a connection from the server side.
    pub fn unsubscribe(
        &mut self,
        now: Timestamp,
        id: ConnId,
        channel: &str,
    ) -> Result<(), HubError> {
        self.clock.advance(now);
        let s = self.conns.open_slot(id)?;
        let ck = self
            .index
            .channels
            .key(channel)
            .ok_or(HubError::UnknownChannel)?;
        if self.index.is_subscriber(s, ck) {
            self.remove_subscriber(s, ck);
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------
    // Sends from the server

    /// Sends an event from the server (`from: null`) to a room, channel, user, one
    /// connection or everyone, except `exclude`.
    pub fn send_to(
        &mut self,
        now: Timestamp,
        to: Recipient<'_>,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        let now = self.clock.advance(now);
        check_name(event)?;
        let p = Publish {
            origin: &Origin::Server,
            from: None,
            event,
            data,
            exclude,
        };
        Ok(match to {
            Recipient::Room(room) if self.sequenced() => {
                check_name(room)?;
                self.append_room(room, &p, None)
            }
            Recipient::Room(room) => {
                let rk = self.index.rooms.key(room).ok_or(HubError::UnknownRoom)?;
                self.publish_room(rk, &p, now)
            }
            Recipient::Channel(channel) => {
                let ck = self
                    .index
                    .channels
                    .key(channel)
                    .ok_or(HubError::UnknownChannel)?;
                self.publish_channel(ck, &p)
            }
            Recipient::User(user) => {
                check_name(user)?;
                self.publish_user(user, &p)
            }
            Recipient::Conn(id) => {
                self.conns.open_slot(id)?;
                self.publish_conn(id, &p)
            }
            Recipient::All => self.broadcast_from(&p),
        })
    }

    /// Sends an event to a room from the server (`from: null`), except `exclude`.
    pub fn send_to_room(
        &mut self,
        now: Timestamp,
        room: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        self.send_to(now, Recipient::Room(room), event, data, exclude)
    }

    /// Sends an event to a channel from the server, except `exclude`.
    pub fn send_to_channel(
        &mut self,
        now: Timestamp,
        channel: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        self.send_to(now, Recipient::Channel(channel), event, data, exclude)
    }

    /// Sends an event to every connection of a user, except `exclude`.
    pub fn send_to_user(
        &mut self,
        now: Timestamp,
        user: &str,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        self.send_to(now, Recipient::User(user), event, data, exclude)
    }

    /// Sends an event to one connection.
    pub fn send_to_conn(
        &mut self,
        now: Timestamp,
        id: ConnId,
        event: &str,
        data: Option<&RawValue>,
    ) -> Result<Delivery, HubError> {
        self.send_to(now, Recipient::Conn(id), event, data, &[])
    }

    /// Sends an event to every open connection except `exclude`.
    pub fn broadcast(
        &mut self,
        now: Timestamp,
        event: &str,
        data: Option<&RawValue>,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        self.send_to(now, Recipient::All, event, data, exclude)
    }

    /// Sends `text` to every member of a room but `exclude` exactly as given: one text
    /// frame whose payload is `text`, with no `message` envelope, no `seq` and no
    /// history entry.
    ///
    /// For rooms whose members speak a format of their own over roomcast's membership,
    /// ordering and flow control (the benchmark protocol of `roomcast --bench-protocol`,
    /// a game relaying its own state encoding): a JSON-protocol client in such a room
    /// gets text it cannot parse. The message keeps its place among the room's other
    /// messages, goes through the same coalescing and unsent-bytes budget, and is neither
    /// announced as an event nor forwarded to a backplane.
    pub fn send_raw_to_room(
        &mut self,
        now: Timestamp,
        room: &str,
        text: &str,
        exclude: &[ConnId],
    ) -> Result<Delivery, HubError> {
        let now = self.clock.advance(now);
        let rk = self.index.rooms.key(room).ok_or(HubError::UnknownRoom)?;
        let msg = Outgoing::from_text(text);
        let delivered = self.deliver_room(rk, &msg, exclude);
        self.reap(now);
        Ok(Delivery {
            delivered,
            seq: None,
        })
    }

    // -----------------------------------------------------------------------------------
    // Queries

    /// Names of every room.
    pub fn rooms(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.rooms.iter().map(|(_, r)| &*r.name)
    }

    /// Members of a room, `None` if it does not exist.
    pub fn room_size(&self, room: &str) -> Option<usize> {
        self.index.rooms.by_name(room).map(|r| r.members.len())
    }

    /// The connections in a room.
    pub fn room_members(&self, room: &str) -> Vec<ConnId> {
        self.index
            .rooms
            .by_name(room)
            .map(|r| r.members.iter().map(|&m| self.conns[m].id).collect())
            .unwrap_or_default()
    }

    /// The application data set with [`Hub::create_room`].
    pub fn room_data(&self, room: &str) -> Option<&RawValue> {
        self.index.rooms.by_name(room)?.data.as_deref()
    }

    /// The room's `(epoch, seq)`: what a client would resume from.
    pub fn room_position(&self, room: &str) -> Option<(&str, u64)> {
        let r = self.index.rooms.by_name(room)?;
        Some((&r.epoch, r.seq))
    }

    /// Whether a connection is in a room.
    pub fn is_member(&self, id: ConnId, room: &str) -> bool {
        match (self.conns.slot_of(id), self.index.rooms.key(room)) {
            (Ok(s), Some(rk)) => self.index.is_member(s, rk),
            _ => false,
        }
    }

    /// The rooms a connection is in.
    pub fn rooms_of(&self, id: ConnId) -> Vec<&str> {
        match self.conns.slot_of(id) {
            Ok(s) => self.conns[s]
                .rooms
                .iter()
                .map(|&rk| &*self.index.rooms[rk].name)
                .collect(),
            Err(_) => Vec::new(),
        }
    }

    /// Names of every channel.
    pub fn channels(&self) -> impl Iterator<Item = &str> + '_ {
        self.index.channels.iter().map(|(_, c)| &*c.name)
    }

    /// Direct subscribers of a channel (not counting members of linked rooms).
    pub fn channel_subscribers(&self, channel: &str) -> Vec<ConnId> {
        self.index
            .channels
            .by_name(channel)
            .map(|ch| ch.subscribers.iter().map(|&s| self.conns[s].id).collect())
            .unwrap_or_default()
    }

    /// Connections of a user.
    pub fn user_connections(&self, user: &str) -> &[ConnId] {
        self.index.users.get(user).map(Vec::as_slice).unwrap_or(&[])
    }

    /// The open connection clients know as `wire_id` (`conn` in `welcome`, `from` and
    /// presence). One hash lookup: a backplane message names the publisher it skips
    /// this way.
    pub fn find_connection(&self, wire_id: &str) -> Option<ConnId> {
        let c = &self.conns[self.conns.by_wire(wire_id)?];
        (c.state == ConnState::Open).then_some(c.id)
    }

    /// A room's members as others see them: `{"conn","user","info"}` JSON objects.
    pub fn room_peers(&self, room: &str) -> Vec<&str> {
        self.index
            .rooms
            .by_name(room)
            .map(|r| {
                r.members
                    .iter()
                    .map(|&m| std::str::from_utf8(&self.conns[m].peer_json).expect("JSON is UTF-8"))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The kept messages of a room with a seq above `since`, as delivered (JSON texts),
    /// with the room's epoch and latest seq; `None` for an unknown room.
    pub fn room_history(
        &mut self,
        now: Timestamp,
        room: &str,
        since: u64,
    ) -> Option<(String, u64, Vec<String>)> {
        let now = self.clock.advance(now);
        let rk = self.index.rooms.key(room)?;
        self.settle_room(rk);
        let r = &mut self.index.rooms[rk];
        self.history.trim(&mut r.log, now);
        let msgs = r
            .log
            .iter()
            .filter(|e| e.seq > since)
            .map(|e| e.msg.text().to_owned())
            .collect();
        Some((r.epoch.to_string(), r.seq, msgs))
    }
}
