//! Routing one message, whoever sent it (a client, the server API, another node): encode
//! it once, hand it to every receiver, record room messages in history, announce it to
//! the application and a backplane, then close the slow consumers it found.

use std::sync::Arc;

use serde_json::value::RawValue;

use super::history::HistoryEntry;
use super::messages::{self, Content, Via};
use super::types::{
    ConnId, ConnState, Delivery, Destination, Event, Forward, Origin, Output, Published,
};
use super::Hub;
use crate::outgoing::Outgoing;
use crate::protocol;
use crate::time::Timestamp;

/// One message to route: who sent it and what it carries.
pub(crate) struct Publish<'a> {
    pub(crate) origin: &'a Origin,
    /// The sender's `{"conn","user"}` JSON, `None` for the server.
    pub(crate) from: Option<&'a [u8]>,
    pub(crate) event: &'a str,
    pub(crate) data: Option<&'a RawValue>,
    /// Connections that do not receive it.
    pub(crate) exclude: &'a [ConnId],
}

impl Publish<'_> {
    /// What its `message` carries, stamped with the server's time.
    pub(crate) fn content(&self, ts: u64) -> Content<'_> {
        Content {
            event: self.event,
            from: self.from,
            data: self.data,
            ts,
        }
    }

    /// The same, from the server (`from: null`).
    pub(crate) fn as_server(&self, ts: u64) -> Content<'_> {
        Content {
            from: None,
            ..self.content(ts)
        }
    }
}

impl Hub {
    /// A room message: the next seq, history, every member but the excluded.
    pub(crate) fn publish_room(&mut self, rk: usize, p: &Publish<'_>, now: Timestamp) -> Delivery {
        let ts = self.unix_ms(now);
        let r = &mut self.index.rooms[rk];
        r.seq += 1;
        let seq = r.seq;
        let via = Via::Room { name: &r.name, seq };
        let msg = messages::message(via, &p.content(ts));
        self.keep_in_history(rk, seq, &msg, now);
        let delivered = self.deliver_room(rk, &msg, p.exclude);
        let r = &self.index.rooms[rk];
        let destination = Destination::Room(r.name.clone());
        let epoch = Some(r.epoch.clone());
        self.announce(p, destination, (Some(seq), epoch), delivered, msg);
        // A server send to an empty room whose history the byte budget just emptied
        // leaves nothing to keep it for.
        if self.index.rooms[rk].members.is_empty() {
            self.maybe_remove_room(rk, now);
        }
        self.reap(now);
        Delivery {
            delivered,
            seq: Some(seq),
        }
    }

    /// Keeps room message `seq` in its room's history (if on), within the byte budget:
    /// for local publishes and for messages a backplane delivered alike.
    pub(crate) fn keep_in_history(&mut self, rk: usize, seq: u64, msg: &Outgoing, now: Timestamp) {
        if !self.history.enabled() {
            return;
        }
        let entry = HistoryEntry {
            seq,
            at: now,
            msg: msg.clone(),
        };
        self.history
            .append(&mut self.index.rooms[rk].log, entry, now);
        if self.history.over_budget() {
            self.evict_history(rk, now);
        }
    }

    /// Hands one encoded message to every member of a room but `exclude` (held for the
    /// burst when coalescing); returns how many members it is for.
    pub(crate) fn deliver_room(&mut self, rk: usize, msg: &Outgoing, exclude: &[ConnId]) -> usize {
        if self.index.rooms[rk].presence.is_some() {
            self.flush_presence(rk);
        }
        let room = &mut self.index.rooms[rk];
        let coalesce = self.config.coalesce_room_messages;
        self.fanout
            .room_message(rk, room, &mut self.conns, msg, coalesce, exclude)
    }

    /// A channel message: its subscribers and the members of its linked rooms, each
    /// once.
    pub(crate) fn publish_channel(&mut self, ck: usize, p: &Publish<'_>) -> Delivery {
        self.flush_rooms();
        let name = self.index.channels[ck].name.clone();
        let ts = self.unix_ms(self.clock.now());
        let msg = messages::message(Via::Channel(&name), &p.content(ts));
        // A connection reachable several ways (subscriber, member of two linked rooms)
        // gets the message once: each delivery stamps the connection with this fan-out's
        // number, with no per-message set to allocate.
        let stamp = self.fanout.next_stamp();
        let mut delivered = 0;
        let ch = &self.index.channels[ck];
        let rooms = &self.index.rooms;
        let direct = ch.subscribers.iter();
        let via_rooms = ch.rooms.iter().flat_map(|&rk| rooms[rk].members.iter());
        for &m in direct.chain(via_rooms) {
            let c = &mut self.conns[m];
            if c.stamp == stamp || p.exclude.contains(&c.id) {
                continue;
            }
            c.stamp = stamp;
            delivered += 1;
            self.fanout.deliver(c, &msg);
        }
        self.announce(p, Destination::Channel(name), (None, None), delivered, msg);
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered,
            seq: None,
        }
    }

    /// A direct message: every open connection of the user.
    pub(crate) fn publish_user(&mut self, user: &str, p: &Publish<'_>) -> Delivery {
        let ts = self.unix_ms(self.clock.now());
        let msg = messages::message(Via::User(user), &p.content(ts));
        let targets: Vec<ConnId> = self
            .index
            .users
            .get(user)
            .map(|v| {
                v.iter()
                    .copied()
                    .filter(|c| !p.exclude.contains(c))
                    .collect()
            })
            .unwrap_or_default();
        for &t in &targets {
            self.send(t, &msg);
        }
        let destination = Destination::User(Arc::from(user));
        self.announce(p, destination, (None, None), targets.len(), msg);
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered: targets.len(),
            seq: None,
        }
    }

    /// A server message to one connection.
    pub(crate) fn publish_conn(&mut self, id: ConnId, p: &Publish<'_>) -> Delivery {
        let ts = self.unix_ms(self.clock.now());
        let msg = messages::message(Via::Direct, &p.as_server(ts));
        self.send(id, &msg);
        self.announce(p, Destination::Conn(id), (None, None), 1, msg);
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered: 1,
            seq: None,
        }
    }

    /// A broadcast: every open connection.
    pub(crate) fn broadcast_from(&mut self, p: &Publish<'_>) -> Delivery {
        self.flush_rooms();
        let ts = self.unix_ms(self.clock.now());
        let msg = messages::message(Via::Direct, &p.as_server(ts));
        let mut delivered = 0;
        for (_, c) in self.conns.iter_mut() {
            if c.state != ConnState::Open || p.exclude.contains(&c.id) || !c.admitted() {
                continue;
            }
            delivered += 1;
            self.fanout.deliver(c, &msg);
        }
        self.announce(p, Destination::All, (None, None), delivered, msg);
        let now = self.clock.now();
        self.reap(now);
        Delivery {
            delivered,
            seq: None,
        }
    }

    /// Tells the application (an event) and the backplane (a forward, for local
    /// publishes only) what was published.
    fn announce(
        &mut self,
        p: &Publish<'_>,
        destination: Destination,
        (seq, epoch): (Option<u64>, Option<Arc<str>>),
        delivered: usize,
        message: Outgoing,
    ) {
        if self.config.backplane
            && !matches!(p.origin, Origin::Remote { .. })
            && !matches!(destination, Destination::Conn(_) | Destination::Room(_))
        {
            let from = match p.origin {
                Origin::Conn(id) => {
                    let c = &self.conns[id.slot()];
                    Some((c.wire.to_string(), c.user.as_deref().map(str::to_owned)))
                }
                _ => None,
            };
            self.fanout.push(Output::Forward(Box::new(Forward {
                destination: destination.clone(),
                event: p.event.to_owned(),
                data: p.data.map(|d| d.to_owned()),
                from,
            })));
        }
        self.fanout.event(Event::Message(Box::new(Published {
            origin: p.origin.clone(),
            destination,
            event: Arc::from(p.event),
            seq,
            epoch,
            delivered,
            message,
        })));
    }

    /// Delivers a publish that another node forwarded through the backplane, to this
    /// node's receivers only (it is not forwarded again).
    pub fn handle_remote(&mut self, now: Timestamp, node: u64, fwd: &Forward) {
        let now = self.clock.advance(now);
        if !protocol::valid_name(&fwd.event) {
            return;
        }
        let from_buf = fwd.from.as_ref().map(|(conn, user)| {
            let mut b = Vec::new();
            protocol::write_peer(&mut b, conn, user.as_deref(), None);
            b
        });
        let origin = Origin::Remote { node };
        let p = Publish {
            origin: &origin,
            from: from_buf.as_deref(),
            event: &fwd.event,
            data: fwd.data.as_deref(),
            exclude: &[],
        };
        match &fwd.destination {
            // with a backplane, rooms are sequenced in it, never forwarded
            Destination::Room(_) if self.sequenced() => {}
            Destination::Room(room) => {
                if let Some(rk) = self.index.rooms.key(room) {
                    self.publish_room(rk, &p, now);
                }
            }
            Destination::Channel(ch) => {
                if let Some(ck) = self.index.channels.key(ch) {
                    self.publish_channel(ck, &p);
                }
            }
            Destination::User(u) => {
                self.publish_user(u, &p);
            }
            Destination::All => {
                self.broadcast_from(&p);
            }
            Destination::Conn(_) => {}
        }
    }
}
