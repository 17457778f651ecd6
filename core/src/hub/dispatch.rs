//! The client protocol: one text message is one request, checked in PROTOCOL.md's order
//! (size, rate, JSON, shape, names, then the request's own rules) and answered with an
//! `ack` or an `error`. Peer mistakes never become `Err`.

use serde_json::value::RawValue;

use super::connections::Closing;
use super::decisions::{Decided, Question};
use super::history::History;
use super::members::Asker;
use super::messages::{self, JoinAck};
use super::publish::Publish;
use super::types::{ConnState, Event, HubError, Origin};
use super::{ConnId, Hub};
use crate::auth::{Op, RoomGrant, Scope};
use crate::protocol::{self, ErrorCode, Parsed, Presence, Rejection, Request, RequestId, Target};
use crate::ratelimit::Verdict;
use crate::time::Timestamp;

/// A join request's recovery position.
struct Position<'a> {
    since: Option<u64>,
    epoch: Option<&'a str>,
}

/// A publish's checked destination.
enum To {
    Room(usize),
    Channel(usize),
    User(String),
}

impl Hub {
    /// Handles one text message from a client: a protocol request. Peer mistakes are
    /// answered with `error` messages, never returned as `Err`.
    pub fn handle_text(&mut self, now: Timestamp, id: ConnId, text: &str) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let Some(s) = self.admit_message(id, text.len(), now)? else {
            return Ok(());
        };
        let verdict = {
            let limit = self.config.rate_limit;
            self.conns[s].bucket.take(&limit, now)
        };
        if verdict == Verdict::Abuse {
            self.fanout.stats.rate_limited += 1;
            self.close_conn(s, Closing::rate_limited(), now);
            return Ok(());
        }
        if self.awaiting_auth(s) {
            // Nothing but `auth` before the welcome.
            match protocol::parse_request(text) {
                Parsed {
                    id: req_id,
                    request: Ok(Request::Auth { token }),
                } => {
                    let res = self.handle_auth(s, req_id.as_ref(), &token, now);
                    debug_assert!(res.is_ok(), "a hub with keys answers auth");
                }
                _ => self.auth_required(s, now),
            }
            self.reap(now);
            return Ok(());
        }
        if protocol::is_heartbeat_ping(text) && verdict == Verdict::Allow {
            self.send(id, &messages::heartbeat_pong());
            return Ok(());
        }
        if verdict == Verdict::Refuse {
            let parsed = protocol::parse_request(text);
            let rej = match parsed.request {
                Err(rej) => rej,
                Ok(_) => {
                    self.fanout.stats.rate_limited += 1;
                    Rejection::new(ErrorCode::RateLimited, "too many requests: slow down")
                }
            };
            self.refuse(id, parsed.id.as_ref(), &rej);
        } else if !self.queue_behind_parked(s, text) {
            self.handle_request(s, text, None, now);
        }
        self.reap(now);
        Ok(())
    }

    /// Runs one request of slot `s` (now, or after the application allowed it: then
    /// `decided` carries what the answer added and no hook is asked again).
    pub(crate) fn handle_request(
        &mut self,
        s: usize,
        text: &str,
        decided: Option<Decided>,
        now: Timestamp,
    ) {
        let id = self.conns[s].id;
        let parsed = protocol::parse_request(text);
        let id_ref = parsed.id.as_ref();
        let result = match parsed.request {
            Err(rej) => Err(rej),
            Ok(req) => self.dispatch(s, id_ref, req, text, decided, now),
        };
        if let Err(rej) = result {
            self.refuse(id, id_ref, &rej);
        }
    }

    /// Handles a binary message: not part of protocol v1, so it is answered `unsupported`.
    pub fn handle_binary(
        &mut self,
        now: Timestamp,
        id: ConnId,
        len: usize,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let Some(s) = self.admit_message(id, len, now)? else {
            return Ok(());
        };
        if self.awaiting_auth(s) {
            self.auth_required(s, now);
            self.reap(now);
            return Ok(());
        }
        let rej = Rejection::new(
            ErrorCode::Unsupported,
            "binary messages are not part of protocol v1",
        );
        self.send(id, &messages::error(None, &rej));
        self.reap(now);
        Ok(())
    }

    /// What every message from a client goes through first: counted, a sign of life,
    /// and closed 1009 past the size limit. `None` when there is nothing more to do
    /// (closing, or just closed).
    fn admit_message(
        &mut self,
        id: ConnId,
        len: usize,
        now: Timestamp,
    ) -> Result<Option<usize>, HubError> {
        let s = self.conns.slot_of(id)?;
        if self.conns[s].state != ConnState::Open {
            return Ok(None); // racing a close we already decided: drop quietly
        }
        self.fanout.stats.messages_in += 1;
        self.fanout.stats.bytes_in += len as u64;
        self.conns[s].last_seen = now;
        if len > self.config.max_message_size {
            self.close_conn(s, Closing::too_big(), now);
            return Ok(None);
        }
        Ok(Some(s))
    }

    /// Answers a refused request with an `error` (and tells the application).
    pub(crate) fn refuse(&mut self, id: ConnId, req_id: Option<&RequestId>, rej: &Rejection) {
        self.send(id, &messages::error(req_id, rej));
        self.fanout.event(Event::Refused {
            conn: id,
            code: rej.code,
        });
    }

    fn dispatch(
        &mut self,
        s: usize,
        id: Option<&RequestId>,
        req: Request<'_>,
        text: &str,
        decided: Option<Decided>,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let conn = self.conns[s].id;
        let hooks = &self.config.hooks;
        let ask = |on: bool| on && decided.is_none();
        let (ask_join, ask_subscribe, ask_publish) =
            (ask(hooks.join), ask(hooks.subscribe), ask(hooks.publish));
        match req {
            Request::Ping => {
                self.send(conn, &messages::pong(id));
                Ok(())
            }
            Request::Join {
                room,
                since,
                epoch,
                presence,
                token,
            } => {
                let pos = Position {
                    since,
                    epoch: epoch.as_deref(),
                };
                let grant = token
                    .map(|t| self.room_token(s, &room, &t, now))
                    .transpose()?;
                self.check_join(s, &room, &pos, presence.is_on(), grant.as_ref())?;
                if ask_join {
                    let question = Question::Join {
                        room: room.into_owned(),
                        presence: presence.is_on(),
                    };
                    self.park(s, text, question, now);
                    return Ok(());
                }
                let loaded = decided.as_ref().is_some_and(|d| d.loaded);
                if self.sequenced() && !loaded {
                    self.wait_for_load(s, text, &room, (pos.since, pos.epoch), now);
                    return Ok(());
                }
                self.client_join(s, id, &room, pos, presence, grant, now)
            }
            Request::Auth { token } => self.handle_auth(s, id, &token, now),
            Request::Leave { room } => {
                let rk = self
                    .index
                    .rooms
                    .key(&room)
                    .filter(|&rk| self.index.is_member(s, rk))
                    .ok_or_else(|| {
                        Rejection::new(ErrorCode::NotMember, "not a member of this room")
                    })?;
                self.remove_member(s, rk, now);
                self.send(conn, &messages::ack_with(id, "room", &room));
                Ok(())
            }
            Request::Subscribe { channel } => {
                if !self.allowed(s, Scope::Channels, &channel, Op::Subscribe, None) {
                    return Err(forbidden("subscribe to this channel"));
                }
                if ask_subscribe {
                    let question = Question::Subscribe {
                        channel: channel.into_owned(),
                    };
                    self.park(s, text, question, now);
                    return Ok(());
                }
                self.subscribe_slot(s, &channel)
                    .map_err(|r| r.rejection())?;
                self.send(conn, &messages::ack_with(id, "channel", &channel));
                Ok(())
            }
            Request::Unsubscribe { channel } => {
                if let Some(ck) = self.index.channels.key(&channel) {
                    if self.index.is_subscriber(s, ck) {
                        self.remove_subscriber(s, ck);
                    }
                }
                self.send(conn, &messages::ack_with(id, "channel", &channel));
                Ok(())
            }
            Request::Publish {
                target,
                event,
                data,
                echo,
            } => {
                let to = self.check_publish(s, &target)?;
                if ask_publish {
                    let (target_kind, name) = match &target {
                        Target::Room(n) => ("room", n),
                        Target::Channel(n) => ("channel", n),
                        Target::User(n) => ("user", n),
                    };
                    let question = Question::Publish {
                        target_kind,
                        target: name.to_string(),
                        event: event.into_owned(),
                        data: data.map(ToOwned::to_owned),
                    };
                    self.park(s, text, question, now);
                    return Ok(());
                }
                let data = match decided.as_ref().and_then(|d| d.data.as_deref()) {
                    Some(replaced) => Some(replaced),
                    None => data,
                };
                self.client_publish(s, id, to, &event, data, echo, now);
                Ok(())
            }
            Request::Rpc { method, data } => {
                if !self.config.hooks.rpc {
                    return Err(Rejection::new(
                        ErrorCode::Unsupported,
                        "this server answers no rpc",
                    ));
                }
                match decided {
                    Some(d) => self.rpc_reply(s, id, d.data.as_deref()),
                    None => {
                        let question = Question::Rpc {
                            method: method.into_owned(),
                            data: data.map(ToOwned::to_owned),
                        };
                        self.park(s, text, question, now);
                    }
                }
                Ok(())
            }
        }
    }

    /// Where slot `s` may publish `target` (membership first, then rights): checked
    /// before the application is asked, and again when it answers.
    fn check_publish(&self, s: usize, target: &Target<'_>) -> Result<To, Rejection> {
        match target {
            Target::Room(room) => {
                let rk = self
                    .index
                    .rooms
                    .key(room)
                    .filter(|&rk| self.index.is_member(s, rk))
                    .ok_or_else(|| {
                        Rejection::new(
                            ErrorCode::NotMember,
                            "join the room before publishing to it",
                        )
                    })?;
                if !self.allowed(s, Scope::Rooms, room, Op::Publish, None) {
                    return Err(forbidden("publish to this room"));
                }
                Ok(To::Room(rk))
            }
            Target::Channel(channel) => {
                let ck = self
                    .index
                    .channels
                    .key(channel)
                    .filter(|&ck| self.index.may_publish_channel(&self.conns, s, ck))
                    .ok_or_else(|| {
                        Rejection::new(
                            ErrorCode::NotMember,
                            "subscribe to the channel (or join a linked room) before publishing to it",
                        )
                    })?;
                if !self.allowed(s, Scope::Channels, channel, Op::Publish, None) {
                    return Err(forbidden("publish to this channel"));
                }
                Ok(To::Channel(ck))
            }
            Target::User(user) => {
                if !self.allowed(s, Scope::Users, user, Op::Publish, None) {
                    return Err(forbidden("message this user"));
                }
                Ok(To::User(user.to_string()))
            }
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn client_publish(
        &mut self,
        s: usize,
        id: Option<&RequestId>,
        to: To,
        event: &str,
        data: Option<&RawValue>,
        echo: bool,
        now: Timestamp,
    ) {
        let conn = self.conns[s].id;
        let origin = Origin::Conn(conn);
        let from = self.conns[s].peer_json.clone();
        let exclude = if echo { None } else { Some(conn) };
        let p = Publish {
            origin: &origin,
            from: Some(&from),
            event,
            data,
            exclude: exclude.as_slice(),
        };
        let delivery = match to {
            To::Room(rk) if self.sequenced() => {
                let room = self.index.rooms[rk].name.clone();
                self.append_room(&room, &p, Some((conn, id.cloned())));
                return; // acked when the backplane answers
            }
            To::Room(rk) => self.publish_room(rk, &p, now),
            To::Channel(ck) => self.publish_channel(ck, &p),
            To::User(user) => self.publish_user(&user, &p),
        };
        let ack = messages::publish_ack(id, delivery.delivered, delivery.seq);
        self.send(conn, &ack);
    }

    /// The rights a join needs (caps or the room token presented), checked before the
    /// application is asked, and again when it answers.
    fn check_join(
        &self,
        s: usize,
        room: &str,
        pos: &Position<'_>,
        presence: bool,
        grant: Option<&RoomGrant>,
    ) -> Result<(), Rejection> {
        let needs = [
            (true, Op::Join, "join this room"),
            (presence, Op::Presence, "watch this room's presence"),
            // An `epoch` alone replays too (a stale one replays from the start).
            (
                pos.since.is_some() || pos.epoch.is_some(),
                Op::History,
                "recover this room's history",
            ),
        ];
        for (asked, op, what) in needs {
            if asked && !self.allowed(s, Scope::Rooms, room, op, grant) {
                return Err(forbidden(what));
            }
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn client_join(
        &mut self,
        s: usize,
        id: Option<&RequestId>,
        room: &str,
        pos: Position<'_>,
        presence: Presence,
        grant: Option<RoomGrant>,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let conn = self.conns[s].id;
        let (rk, already) = self
            .join_slot(s, room, presence, Asker::Client)
            .map_err(|r| r.rejection())?;
        if let Some(g) = grant {
            self.keep_room_grant(s, room, g);
        }
        let mut recovered = None;
        if already {
            // A member asking again with `since` (the server put it in before its
            // rejoin arrived): replay what followed, as a recovery would. Messages it
            // already had live come again with their seq; clients drop them by seq.
            if pos.since.is_some() {
                recovered = Some(self.replay(s, rk, &pos, now));
            }
        } else if pos.since.is_some() || pos.epoch.is_some() {
            recovered = Some(self.replay(s, rk, &pos, now));
        }
        let r = &self.index.rooms[rk];
        let conns = &self.conns;
        // per user: each user once (the first of their connections to have joined)
        let mut users = std::collections::BTreeSet::new();
        let present = presence.is_on().then(|| {
            r.members
                .iter()
                .filter(move |&&m| {
                    presence == Presence::Connections
                        || conns[m]
                            .user
                            .as_ref()
                            .is_none_or(|u| users.insert(u.clone()))
                })
                .take(self.config.max_present_list)
                .map(|&m| &*conns[m].peer_json)
        });
        let ack = JoinAck {
            room: &r.name,
            members: r.members.len(),
            epoch: &r.epoch,
            seq: r.seq,
            recovered,
            present,
        };
        let msg = messages::join_ack(id, ack);
        self.send(conn, &msg);
        Ok(())
    }

    /// Replays history for a (re)join and says whether the client is fully caught up.
    fn replay(&mut self, s: usize, rk: usize, pos: &Position<'_>, now: Timestamp) -> bool {
        let room = &mut self.index.rooms[rk];
        self.history.trim(&mut room.log, now);
        let plan = History::replay(&room.log, &room.epoch, room.seq, pos.since, pos.epoch);
        if let Some(from) = plan.from {
            let conn = self.conns[s].id;
            let msgs: Vec<_> = room
                .log
                .iter()
                .filter(|e| e.seq >= from)
                .map(|e| e.msg.clone())
                .collect();
            for m in &msgs {
                self.send(conn, m);
            }
        }
        plan.recovered
    }
}

/// `forbidden`: the connection's rights do not cover this.
fn forbidden(what: &str) -> Rejection {
    Rejection::new(
        ErrorCode::Forbidden,
        format!("your token does not allow you to {what}"),
    )
}
