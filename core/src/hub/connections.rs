//! A connection's life: admission and `welcome`, liveness (heartbeat pings and the
//! silent-peer deadline), closing from either side, and the grace before its slot is
//! freed.

use std::borrow::Cow;
use std::sync::Arc;

use super::auth::Arrival;
use super::conns::{Conn, Hello};
use super::messages;
use super::timers::Timer;
use super::types::{
    ConnId, ConnInfo, ConnState, ConnectError, ConnectRequest, DisconnectReason, Event, HubError,
    Output,
};
use super::Hub;
use crate::close::code;
use crate::protocol;
use crate::ratelimit::TokenBucket;
use crate::time::Timestamp;

/// A close the hub decides: the code and reason sent, and the reason reported.
pub(crate) struct Closing {
    pub(crate) code: u16,
    pub(crate) text: Cow<'static, str>,
    pub(crate) reason: DisconnectReason,
}

impl Closing {
    pub(crate) fn slow_consumer() -> Closing {
        Closing {
            // Not 1008: a phone that fell behind must come back and recover, and the
            // clients treat 1008 as final.
            code: code::TRY_AGAIN_LATER,
            text: Cow::Borrowed("slow consumer"),
            reason: DisconnectReason::SlowConsumer,
        }
    }

    pub(crate) fn too_big() -> Closing {
        Closing {
            code: code::TOO_BIG,
            text: Cow::Borrowed("message too big"),
            reason: DisconnectReason::MessageTooBig,
        }
    }

    pub(crate) fn rate_limited() -> Closing {
        Closing {
            code: code::POLICY,
            text: Cow::Borrowed("rate limit exceeded"),
            reason: DisconnectReason::RateLimited,
        }
    }

    /// The application refused the connection (`connect` hook): 4003, its message.
    pub(crate) fn refused(text: String) -> Closing {
        Closing {
            code: code::FORBIDDEN,
            text: Cow::Owned(text),
            reason: DisconnectReason::Kicked {
                code: code::FORBIDDEN,
            },
        }
    }

    /// A room of this connection lost messages the backplane can no longer give (its
    /// log was lost or trimmed): reconnect and rejoin, to be told `recovered: false`.
    pub(crate) fn resync() -> Closing {
        Closing {
            code: code::TRY_AGAIN_LATER,
            text: Cow::Borrowed("room resync"),
            reason: DisconnectReason::Kicked {
                code: code::TRY_AGAIN_LATER,
            },
        }
    }

    /// The application did not answer the `connect` hook in time: try again later.
    pub(crate) fn unavailable() -> Closing {
        Closing {
            code: code::TRY_AGAIN_LATER,
            text: Cow::Borrowed("unavailable"),
            reason: DisconnectReason::Kicked {
                code: code::TRY_AGAIN_LATER,
            },
        }
    }

    fn kicked(code: u16, text: Cow<'static, str>) -> Closing {
        Closing {
            code,
            text,
            reason: DisconnectReason::Kicked { code },
        }
    }
}

impl Hub {
    /// Admits a connection and queues its `welcome`. Call when the handshake is valid;
    /// on `Err` answer the handshake with 503 or 400 instead of upgrading.
    pub fn connect(&mut self, now: Timestamp, req: ConnectRequest) -> Result<ConnId, ConnectError> {
        let now = self.clock.advance(now);
        let arrival = self.arrival(req.token.as_deref(), now)?;
        // With tokens, `?user=` is never trusted: the user is the token's `sub`.
        let user = match arrival {
            Arrival::Open => req.user,
            Arrival::Verified(_) | Arrival::Pending => None,
        };
        if let Some(u) = &user {
            if !protocol::valid_name(u) {
                return Err(ConnectError::BadUser);
            }
        }
        if self.conns.open_count() >= self.config.max_connections {
            return Err(ConnectError::Full);
        }
        let (id, gen) = self.conns.next_id();
        let wire = format!("{}-{:x}", self.instance, gen);
        let user: Option<Arc<str>> = user.map(Arc::from);
        let bucket = TokenBucket::new(&self.config.rate_limit, now);
        let conn = Conn::new(id, wire, user.clone(), req.metadata, now, bucket);
        self.conns.insert(conn);
        let s = id.slot();
        if self.config.hooks.connect {
            self.conns[s].hello = Some(Box::new(Hello {
                headers: req.headers,
                ..Hello::default()
            }));
        }
        match arrival {
            Arrival::Open if self.conns[s].hello.is_some() => self.ask_connect(s, now),
            Arrival::Open => self.welcome_admitted(s, Vec::new(), None),
            Arrival::Verified(identity) => self.admit_identity(s, identity, now),
            Arrival::Pending => self.await_auth(s, now),
        }
        self.schedule_conn(id);
        Ok(id)
    }

    /// A view of a connection, open or closing.
    pub fn connection(&self, id: ConnId) -> Option<ConnInfo<'_>> {
        let c = self.conns.get(id)?;
        Some(ConnInfo {
            id,
            wire_id: &c.wire,
            user: c.user.as_deref(),
            metadata: &c.metadata,
            connected_at: c.connected_at,
            state: c.state,
            unsent_bytes: c.unsent,
        })
    }

    /// Ids of every open connection (for shutdown and admin tools).
    pub fn connections(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.conns.open_ids()
    }

    /// Sets an application metadata entry on a connection.
    pub fn set_metadata(&mut self, id: ConnId, key: String, value: String) -> Result<(), HubError> {
        let s = self.conns.slot_of(id)?;
        self.conns[s].set_metadata(key, value);
        Ok(())
    }

    /// Reports that the peer showed a sign of life (any frame: pong, ping, data).
    pub fn handle_activity(&mut self, now: Timestamp, id: ConnId) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.conns.slot_of(id)?;
        self.conns[s].last_seen = now;
        Ok(())
    }

    /// Reports bytes of this connection's output that reached the socket, which frees
    /// that much of its `max_buffered_bytes` budget.
    pub fn handle_flushed(&mut self, id: ConnId, bytes: usize) -> Result<(), HubError> {
        let s = self.conns.slot_of(id)?;
        let c = &mut self.conns[s];
        c.unsent = c.unsent.saturating_sub(bytes);
        Ok(())
    }

    /// Reports that the socket is gone. Frees the connection; if the hub had not closed
    /// it itself, it leaves every room (presence `left`) and a `Disconnected` event fires.
    pub fn handle_disconnect(
        &mut self,
        now: Timestamp,
        id: ConnId,
        reason: DisconnectReason,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let s = self.conns.slot_of(id)?;
        if self.conns[s].state == ConnState::Open {
            // Its socket is gone: what the rooms still hold for it goes nowhere.
            self.fanout.skip_pending(s, &mut self.index.rooms);
            self.detach(s, reason, now);
        }
        self.conns.free(s);
        Ok(())
    }

    /// Closes a connection from the server side with this code and reason.
    pub fn disconnect(
        &mut self,
        now: Timestamp,
        id: ConnId,
        code: u16,
        reason: &str,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        // Any open connection, one still proving who it is included.
        let s = self.conns.slot_of(id)?;
        if self.conns[s].state != ConnState::Open {
            return Err(HubError::UnknownConnection(id));
        }
        let text = Cow::Owned(messages::truncate_reason(reason).to_owned());
        self.close_conn(s, Closing::kicked(code, text), now);
        Ok(())
    }

    /// Closes every open connection with 1001, for a graceful shutdown.
    pub fn shutdown(&mut self, now: Timestamp) {
        let now = self.clock.advance(now);
        let ids: Vec<ConnId> = self.connections().collect();
        for id in ids {
            let text = Cow::Borrowed("server shutting down");
            self.close_conn(id.slot(), Closing::kicked(code::GOING_AWAY, text), now);
        }
    }

    /// Closes an open connection: what it is owed goes out first, then the close; it
    /// leaves every index at once and its slot waits for the adapter's report.
    pub(crate) fn close_conn(&mut self, s: usize, closing: Closing, now: Timestamp) {
        if self.conns[s].state != ConnState::Open {
            return;
        }
        let id = self.conns[s].id;
        if self.fanout.holding() {
            self.fanout
                .catch_up(s, &mut self.conns, &mut self.index.rooms);
        }
        self.fanout.push(Output::Close {
            conn: id,
            code: closing.code,
            reason: closing.text,
        });
        self.detach(s, closing.reason, now);
        self.conns[s].closing_since = now;
        self.schedule_conn(id);
    }

    /// Removes a connection from every index and marks it closing.
    fn detach(&mut self, s: usize, reason: DisconnectReason, now: Timestamp) {
        let id = self.conns[s].id;
        let was_pending = !self.conns[s].admitted();
        self.drop_parked(s);
        self.forget_backplane_waits(id);
        for rk in self.conns[s].rooms.clone() {
            self.remove_member(s, rk, now);
        }
        for ck in self.conns[s].subs.clone() {
            self.remove_subscriber(s, ck);
        }
        self.conns.mark_closing(s);
        let user = self.conns[s].user.clone();
        if let (Some(u), false) = (&user, was_pending) {
            self.index.remove_user(u, id);
        }
        match reason {
            DisconnectReason::HeartbeatTimeout => self.fanout.stats.heartbeat_timeouts += 1,
            DisconnectReason::SlowConsumer => self.fanout.stats.slow_consumers += 1,
            _ => {}
        }
        if was_pending {
            return; // it never got a `Connected`
        }
        self.fanout.event(Event::Disconnected {
            conn: id,
            wire_id: self.conns[s].wire.clone(),
            user,
            reason,
        });
    }

    // -----------------------------------------------------------------------------------
    // Liveness

    fn conn_deadline(&self, s: usize) -> Option<Timestamp> {
        let c = &self.conns[s];
        match c.state {
            ConnState::Closing => Some(c.closing_since.saturating_add(self.config.close_grace())),
            ConnState::Open => {
                let hb = &self.config.heartbeat;
                let heartbeat = hb.server_pings.then(|| {
                    let dead = c.last_seen.saturating_add(hb.dead_after());
                    let ping = c.last_seen.max(c.last_ping).saturating_add(hb.interval());
                    dead.min(ping)
                });
                [heartbeat, self.auth_deadline(s), self.decision_deadline(s)]
                    .into_iter()
                    .flatten()
                    .min()
            }
        }
    }

    /// Makes sure a timer fires by the connection's next deadline.
    pub(crate) fn schedule_conn(&mut self, id: ConnId) {
        let s = id.slot();
        let Some(deadline) = self.conn_deadline(s) else {
            return;
        };
        let c = &mut self.conns[s];
        if c.timer_at.is_none_or(|t| deadline < t) {
            c.timer_at = Some(deadline);
            self.push_timer(deadline, Timer::Conn(id));
        }
    }

    /// A connection's timer fired: ping it, reap it, or free its closing slot.
    pub(crate) fn conn_timer(&mut self, id: ConnId, fired: Timestamp, now: Timestamp) {
        let s = id.slot();
        match self.conns.get(id) {
            Some(c) if c.timer_at == Some(fired) => {}
            _ => return,
        }
        self.conns[s].timer_at = None;
        let state = self.conns[s].state;
        match state {
            ConnState::Closing => {
                let grace_over = self.conns[s]
                    .closing_since
                    .saturating_add(self.config.close_grace());
                if now >= grace_over {
                    // The adapter never reported the socket gone: free the slot anyway.
                    self.conns.free(s);
                    return;
                }
            }
            ConnState::Open if self.auth_timer(s, now) => return,
            ConnState::Open if self.decision_deadline(s).is_some_and(|d| now >= d) => {
                self.decision_timer(s, now);
                self.reap(now);
                if self.conns.open_slot(id).is_err() {
                    return;
                }
            }
            ConnState::Open if self.config.heartbeat.server_pings => {
                let hb = &self.config.heartbeat;
                let c = &self.conns[s];
                if now >= c.last_seen.saturating_add(hb.dead_after()) {
                    let closing = Closing {
                        code: code::GOING_AWAY,
                        text: Cow::Borrowed("heartbeat timeout"),
                        reason: DisconnectReason::HeartbeatTimeout,
                    };
                    self.close_conn(s, closing, now);
                    return;
                }
                if now >= c.last_seen.max(c.last_ping).saturating_add(hb.interval()) {
                    self.conns[s].last_ping = now;
                    self.fanout.push(Output::Ping { conn: id });
                }
            }
            ConnState::Open => {}
        }
        self.schedule_conn(id);
    }
}
