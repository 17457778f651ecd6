//! Tokens as the hub applies them: admitting a connection on a verified token (in the
//! URL or as its first message), the rights each request is checked against, room
//! tokens, and the deadlines a token brings (`expiring`, the close after the grace, a
//! room token running out). Verification itself is [`crate::auth::Verifier`]'s.

use std::borrow::Cow;
use std::sync::Arc;

use super::connections::Closing;
use super::members::Asker;
use super::messages;
use super::types::{ConnectError, DisconnectReason, Event};
use super::Hub;
use crate::auth::{AuthConfig, AuthError, Caps, Identity, Op, RoomGrant, Scope, Verifier};
use crate::close::code;
use crate::protocol::{ErrorCode, Presence, Rejection, RequestId};
use crate::time::Timestamp;

/// A connection's token state on a hub that checks tokens.
#[derive(Debug)]
pub(crate) struct ConnAuth {
    /// Until the first `auth` is verified: the deadline for it. Such a connection has
    /// had no `welcome` and may send nothing but `auth`.
    pub(crate) pending_until: Option<Timestamp>,
    /// The connection token's `exp`, on the hub's clock.
    pub(crate) expires: Timestamp,
    /// `expiring` already sent for this token.
    pub(crate) warned: bool,
    /// When to send `expiring`: the notice before `exp`, but never more than half the
    /// token's remaining life when it was verified, so a token shorter than the notice
    /// is not warned (and refreshed) again the moment it arrives. `None` (a snapshot
    /// from before this existed): the full notice.
    pub(crate) warn_at: Option<Timestamp>,
    /// The token's grants (`None`: the server's default rights).
    pub(crate) caps: Option<Caps>,
    /// Rooms opened by room tokens, with what each grants until when.
    pub(crate) rooms: Vec<(Box<str>, RoomGrant)>,
    /// The token's `info` (JSON object), also in the connection's `peer_json`; kept for
    /// snapshots.
    pub(crate) info: Option<Box<str>>,
}

impl ConnAuth {
    fn pending(until: Timestamp) -> ConnAuth {
        ConnAuth {
            pending_until: Some(until),
            expires: until,
            warned: false,
            warn_at: None,
            caps: None,
            rooms: Vec::new(),
            info: None,
        }
    }

    fn room(&self, name: &str) -> Option<&RoomGrant> {
        self.rooms
            .iter()
            .find(|(r, _)| **r == *name)
            .map(|(_, g)| g)
    }
}

impl Closing {
    fn unauthorized(text: &'static str) -> Closing {
        Closing {
            code: code::UNAUTHORIZED,
            text: Cow::Borrowed(text),
            reason: DisconnectReason::Unauthorized,
        }
    }
}

/// How a connection arrives: what the hub decided about its token before admitting it.
pub(crate) enum Arrival {
    /// No tokens on this hub: `?user=` as given.
    Open,
    /// A verified URL token.
    Verified(Identity),
    /// Tokens required and none in the URL: wait for `auth`.
    Pending,
}

impl Hub {
    fn verifier(&self) -> Option<&Arc<Verifier>> {
        self.config.auth.as_ref().filter(|v| v.enabled())
    }

    /// `now` as Unix milliseconds: a token's `exp` and `nbf` are read against it, and
    /// it is every message's `ts`.
    pub(crate) fn unix_ms(&self, now: Timestamp) -> u64 {
        self.config.clock_unix_ms.saturating_add(now.0)
    }

    /// A Unix time in milliseconds on the hub's clock.
    fn on_clock(&self, unix_ms: u64) -> Timestamp {
        Timestamp(unix_ms.saturating_sub(self.config.clock_unix_ms))
    }

    /// Decides what a connecting request's token means, before a slot is taken.
    pub(crate) fn arrival(
        &self,
        token: Option<&str>,
        now: Timestamp,
    ) -> Result<Arrival, ConnectError> {
        let Some(v) = self.verifier() else {
            return Ok(Arrival::Open);
        };
        match token {
            None => Ok(Arrival::Pending),
            Some(t) => v
                .connection(t, self.unix_ms(now))
                .map(Arrival::Verified)
                .map_err(ConnectError::Unauthorized),
        }
    }

    /// Starts the wait for a first-message `auth`.
    pub(crate) fn await_auth(&mut self, s: usize, now: Timestamp) {
        let timeout = self.verifier().map(|v| v.config().auth_timeout);
        let until = now.saturating_add(timeout.unwrap_or_default());
        self.conns[s].auth = Some(Box::new(ConnAuth::pending(until)));
        self.auth_changed(s);
    }

    /// Admits slot `s` as the verified identity: user and `info`, `welcome`, the
    /// `Connected` event, then the `rooms` claim's joins (each told by `joined`).
    pub(crate) fn admit_identity(&mut self, s: usize, identity: Identity, now: Timestamp) {
        let Identity {
            user,
            expires_unix_ms,
            info,
            rooms,
            caps,
        } = identity;
        let expires = self.on_clock(expires_unix_ms);
        let warn_at = Some(self.warn_time(expires));
        let user: Arc<str> = Arc::from(user);
        let id = self.conns[s].id;
        let c = &mut self.conns[s];
        c.set_identity(user.clone(), info.as_deref().map(|r| r.get()));
        c.auth = Some(Box::new(ConnAuth {
            pending_until: None,
            expires,
            warned: false,
            warn_at,
            caps,
            rooms: Vec::new(),
            info: info.as_deref().map(|r| r.get().into()),
        }));
        let _ = (user, info, id);
        if let Some(h) = self.conns[s].hello.as_deref_mut() {
            // The application has its say first; the welcome follows its answer.
            h.rooms = rooms;
            self.ask_connect(s, now);
            return;
        }
        let info = self.conns[s].auth.as_deref().and_then(|a| a.info.clone());
        self.welcome_admitted(s, rooms, info.as_deref());
    }

    /// Welcomes slot `s` as it now is (user, `info`): the users index, `welcome`, the
    /// `Connected` event, then joins of `rooms`, each told by `joined`.
    pub(crate) fn welcome_admitted(&mut self, s: usize, rooms: Vec<String>, info: Option<&str>) {
        let id = self.conns[s].id;
        let user = self.conns[s].user.clone();
        if let Some(u) = &user {
            self.index.add_user(u, id);
        }
        let welcome = messages::welcome(
            &self.conns[s].wire,
            user.as_deref(),
            info,
            &self.config.heartbeat,
        );
        self.send(id, &welcome);
        self.fanout.event(Event::Connected { conn: id, user });
        for room in rooms {
            // The same limits as any server join; a room past them is skipped (the
            // connection is told only of the rooms it is in).
            if !crate::protocol::valid_name(&room) {
                continue;
            }
            if let Ok((rk, _)) = self.join_slot(s, &room, Presence::Off, Asker::Server) {
                let r = &self.index.rooms[rk];
                let msg = messages::joined(&r.name, r.members.len(), &r.epoch, r.seq);
                self.send(id, &msg);
            }
        }
        self.schedule_conn(id);
    }

    /// Whether slot `s` is still waiting for its first `auth`.
    pub(crate) fn awaiting_auth(&self, s: usize) -> bool {
        self.conns[s].awaiting_auth()
    }

    /// An `auth` request: the first one admits a waiting connection; a later one renews
    /// the token (same `sub`), which moves the expiry and replaces the grants. Any fault
    /// closes 4001.
    pub(crate) fn handle_auth(
        &mut self,
        s: usize,
        req_id: Option<&RequestId>,
        token: &str,
        now: Timestamp,
    ) -> Result<(), Rejection> {
        let Some(v) = self.verifier().cloned() else {
            return Err(Rejection::new(
                ErrorCode::Unsupported,
                "this server checks no tokens",
            ));
        };
        let identity = match v.connection(token, self.unix_ms(now)) {
            Ok(i) => i,
            Err(e) => {
                self.refuse_token(s, &e, now);
                return Ok(());
            }
        };
        if self.awaiting_auth(s) {
            self.admit_identity(s, identity, now);
            return Ok(());
        }
        if self.conns[s].user.as_deref() != Some(identity.user.as_str()) {
            self.refuse_token(s, &AuthError::OtherUser, now);
            return Ok(());
        }
        let id = self.conns[s].id;
        let expires = self.on_clock(identity.expires_unix_ms);
        let warn_at = Some(self.warn_time(expires));
        if let Some(a) = self.conns[s].auth.as_deref_mut() {
            a.expires = expires;
            a.warned = false;
            a.warn_at = warn_at;
            a.caps = identity.caps;
        }
        self.auth_changed(s);
        self.send(id, &messages::ack(req_id));
        self.schedule_conn(id);
        Ok(())
    }

    /// Closes a connection whose token was refused.
    fn refuse_token(&mut self, s: usize, err: &AuthError, now: Timestamp) {
        self.fanout.event(Event::TokenRefused {
            conn: self.conns[s].id,
            error: err.clone(),
        });
        self.close_conn(s, Closing::unauthorized("unauthorized"), now);
    }

    /// A waiting connection sent something other than `auth`: closed 4001.
    pub(crate) fn auth_required(&mut self, s: usize, now: Timestamp) {
        self.refuse_token(s, &AuthError::Missing, now);
    }

    /// Whether slot `s` may do `op` on `name`, by its room token for that room (or
    /// `extra`, one being presented), its caps, or the server's default.
    pub(crate) fn allowed(
        &self,
        s: usize,
        scope: Scope,
        name: &str,
        op: Op,
        extra: Option<&RoomGrant>,
    ) -> bool {
        let Some(a) = self.conns[s].auth.as_deref() else {
            return true; // no tokens on this hub: the open rules
        };
        if scope == Scope::Rooms {
            let by_token = extra.or_else(|| a.room(name));
            if by_token.is_some_and(|g| g.ops.contains(op)) {
                return true;
            }
        }
        match &a.caps {
            Some(caps) => caps.allows(scope, name, op),
            None => !self.verifier().is_some_and(|v| v.config().deny_by_default),
        }
    }

    /// Checks a room token presented with a `join`.
    pub(crate) fn room_token(
        &self,
        s: usize,
        room: &str,
        token: &str,
        now: Timestamp,
    ) -> Result<RoomGrant, Rejection> {
        let Some(v) = self.verifier() else {
            return Err(Rejection::new(
                ErrorCode::Unsupported,
                "this server checks no tokens",
            ));
        };
        v.room(
            token,
            self.conns[s].user.as_deref(),
            room,
            self.unix_ms(now),
        )
        .map_err(|e| Rejection::new(ErrorCode::Forbidden, format!("room token refused: {e}")))
    }

    /// Keeps the room token a successful join presented (replacing an older one).
    pub(crate) fn keep_room_grant(&mut self, s: usize, room: &str, grant: RoomGrant) {
        let id = self.conns[s].id;
        if let Some(a) = self.conns[s].auth.as_deref_mut() {
            match a.rooms.iter_mut().find(|(r, _)| **r == *room) {
                Some(entry) => entry.1 = grant,
                None => a.rooms.push((room.into(), grant)),
            }
        }
        self.auth_changed(s);
        self.schedule_conn(id);
    }

    /// Forgets the room token of a room the connection left.
    pub(crate) fn drop_room_grant(&mut self, s: usize, rk: usize) {
        let Some(a) = self.conns[s].auth.as_deref_mut() else {
            return; // no tokens on this hub: nothing to look up
        };
        if !a.rooms.is_empty() {
            let room = &self.index.rooms[rk].name;
            let before = a.rooms.len();
            a.rooms.retain(|(r, _)| **r != **room);
            if a.rooms.len() != before {
                self.auth_changed(s);
            }
        }
    }

    /// When a token verified now and expiring at `expires` gets its `expiring`: the
    /// configured notice before, or half its remaining life if that is shorter.
    fn warn_time(&self, expires: Timestamp) -> Timestamp {
        let notice = self.config.auth.as_ref().map_or(0, |v| {
            u64::try_from(v.config().expiring_notice.as_millis()).unwrap_or(u64::MAX)
        });
        let left = expires.0.saturating_sub(self.clock.now().0);
        Timestamp(expires.0.saturating_sub(notice.min(left / 2)))
    }

    /// Tells the adapter that slot `s`'s token state changed (a Durable Object saves it
    /// with the connection, to rebuild the same rights after hibernating).
    fn auth_changed(&mut self, s: usize) {
        self.fanout.event(Event::AuthChanged {
            conn: self.conns[s].id,
        });
    }

    /// The next moment a token of slot `s` needs the hub.
    pub(crate) fn auth_deadline(&self, s: usize) -> Option<Timestamp> {
        let a = self.conns[s].auth.as_deref()?;
        if let Some(until) = a.pending_until {
            return Some(until);
        }
        let v = self.verifier()?;
        let cfg = v.config();
        let own = if a.warned {
            a.expires.saturating_add(cfg.grace)
        } else {
            warn_at(a, cfg)
        };
        let rooms = a
            .rooms
            .iter()
            .map(|(_, g)| self.on_clock(g.expires_unix_ms));
        Some(rooms.fold(own, Timestamp::min))
    }

    /// Runs the token deadlines of slot `s` due at `now`; true if it closed.
    pub(crate) fn auth_timer(&mut self, s: usize, now: Timestamp) -> bool {
        let Some(a) = self.conns[s].auth.as_deref_mut() else {
            return false;
        };
        if let Some(until) = a.pending_until {
            if now >= until {
                self.close_conn(s, Closing::unauthorized("auth timeout"), now);
                return true;
            }
            return false;
        }
        let Some(cfg) = self.config.auth.as_ref().map(|v| v.config()) else {
            return false;
        };
        let id = self.conns[s].id;
        let now_unix = self.unix_ms(now);
        let a = self.conns[s].auth.as_deref_mut().expect("checked above");
        if now >= a.expires.saturating_add(cfg.grace) {
            self.close_conn(s, Closing::unauthorized("token expired"), now);
            return true;
        }
        let mut warn = None;
        if !a.warned && now >= warn_at(a, cfg) {
            a.warned = true;
            warn = Some(a.expires.0.saturating_sub(now.0));
        }
        let expired: Vec<Box<str>> = a
            .rooms
            .iter()
            .filter(|(_, g)| g.expires_unix_ms <= now_unix)
            .map(|(r, _)| r.clone())
            .collect();
        a.rooms.retain(|(_, g)| g.expires_unix_ms > now_unix);
        if warn.is_some() || !expired.is_empty() {
            self.auth_changed(s);
        }
        if let Some(in_ms) = warn {
            self.send(id, &messages::expiring(in_ms));
        }
        for room in expired {
            if let Some(rk) = self.index.rooms.key(&room) {
                if self.index.is_member(s, rk) {
                    self.remove_member(s, rk, now);
                    self.send(id, &messages::left(&room, "token_expired"));
                }
            }
        }
        false
    }
}

/// When `a`'s `expiring` is due.
fn warn_at(a: &ConnAuth, cfg: &AuthConfig) -> Timestamp {
    a.warn_at.unwrap_or_else(|| {
        let notice = u64::try_from(cfg.expiring_notice.as_millis()).unwrap_or(u64::MAX);
        Timestamp(a.expires.0.saturating_sub(notice))
    })
}
