//! Decisions the application makes (hooks), in sans-IO form.
//!
//! When [`HookConfig`] says the application decides an operation (join, subscribe,
//! publish, rpc), the hub first applies every rule it can itself (names, caps,
//! membership, limits), then *parks* the request: it emits [`Output::Decide`] with a
//! [`Ticket`] and waits for [`Hub::handle_decision`]. While a connection has a parked
//! request, its later requests wait behind it, in order (bounded by
//! [`HookConfig::max_queued`]); every other connection is served as usual. The hub's own
//! deadline ([`HookConfig::timeout_ms`]) refuses a request whose answer does not come in
//! time with `unavailable`. The core never awaits and never calls out: natively a Rust
//! trait or an HTTP backend answers, in the Durable Object the same, and in the
//! simulation answers come late, out of order or never.

use std::collections::VecDeque;
use std::sync::Arc;

use serde_json::value::RawValue;

use super::connections::Closing;
use super::messages;
use super::types::{ConnId, ConnState, HubError, Output};
use super::Hub;
use crate::protocol::{self, ErrorCode, Rejection};
use crate::time::Timestamp;

/// Which operations the application decides, and how long it may take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookConfig {
    /// Ask before admitting a connection (after its token, if any): the answer may
    /// refuse it (close 4003), or set its `user`, `info` and initial `rooms`.
    pub connect: bool,
    /// Ask before a `join` (after caps and limits).
    pub join: bool,
    /// Ask before a `subscribe`.
    pub subscribe: bool,
    /// Ask before a `publish`; the answer may replace its `data`.
    pub publish: bool,
    /// Clients may send `rpc`; the answer is the reply. Off: `rpc` is `unsupported`.
    pub rpc: bool,
    /// How long the application may take before the request is refused `unavailable`.
    pub timeout_ms: u64,
    /// Requests one connection may have waiting behind a parked one; past it they are
    /// refused `rate_limited` at once (a client cannot pile up memory while the
    /// application thinks).
    pub max_queued: usize,
}

impl Default for HookConfig {
    fn default() -> Self {
        HookConfig {
            connect: false,
            join: false,
            subscribe: false,
            publish: false,
            rpc: false,
            timeout_ms: 1_000,
            max_queued: 64,
        }
    }
}

impl HookConfig {
    /// True when any operation is decided by the application.
    pub fn any(&self) -> bool {
        self.connect || self.join || self.subscribe || self.publish || self.rpc
    }
}

/// Names one parked request; answers carry it back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Ticket(pub u64);

/// A request the application must decide ([`Output::Decide`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Answer with this.
    pub ticket: Ticket,
    /// The connection asking.
    pub conn: ConnId,
    /// Its id as clients see it.
    pub wire_id: Box<str>,
    /// Its user, if any.
    pub user: Option<Arc<str>>,
    /// Its token's `info` (JSON object), if any.
    pub info: Option<Box<str>>,
    /// What it asks.
    pub question: Question,
}

/// What a parked request asks.
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum Question {
    /// May this connection come in, and as whom? (`user` and `info` in the
    /// [`Decision`] are what it arrived with.)
    Connect {
        /// The upgrade headers the adapter was told to pass on (e.g. `Cookie`).
        headers: Vec<(String, String)>,
    },
    /// May it join this room?
    Join {
        /// The room.
        room: String,
        /// With presence.
        presence: bool,
    },
    /// May it subscribe to this channel?
    Subscribe {
        /// The channel.
        channel: String,
    },
    /// May it publish this (and with which data)?
    Publish {
        /// `room`, `channel` or `user`.
        target_kind: &'static str,
        /// The room, channel or user name.
        target: String,
        /// The event.
        event: String,
        /// Raw JSON data, if any.
        data: Option<Box<RawValue>>,
    },
    /// What does this call answer?
    Rpc {
        /// The method.
        method: String,
        /// Raw JSON argument, if any.
        data: Option<Box<RawValue>>,
    },
}

impl Question {
    /// The hook's name: `join`, `subscribe`, `publish` or `rpc` (the HTTP path too).
    pub fn hook(&self) -> &'static str {
        match self {
            Question::Connect { .. } => "connect",
            Question::Join { .. } => "join",
            Question::Subscribe { .. } => "subscribe",
            Question::Publish { .. } => "publish",
            Question::Rpc { .. } => "rpc",
        }
    }
}

/// The application's answer to a [`Decision`].
#[derive(Debug, Clone)]
pub enum Answer {
    /// Go ahead. For `publish`, `data` replaces the message's data; for `rpc` it is the
    /// reply (`null` when `None`); ignored otherwise.
    Allow {
        /// Replaced data or the reply.
        data: Option<Box<RawValue>>,
    },
    /// Refuse with the application's `code` (a valid name, sent to the client as is;
    /// anything else becomes `forbidden`) and message.
    Refuse {
        /// Error code.
        code: String,
        /// For humans.
        message: String,
    },
    /// The application could not decide (its backend is down, it failed): refused
    /// `unavailable`, as a timeout would be.
    Unavailable,
}

/// Raw JSON compared as text (what was received is what is compared).
fn same_raw(a: &Option<Box<RawValue>>, b: &Option<Box<RawValue>>) -> bool {
    a.as_deref().map(RawValue::get) == b.as_deref().map(RawValue::get)
}

impl PartialEq for Question {
    fn eq(&self, other: &Question) -> bool {
        use Question::*;
        match (self, other) {
            (Connect { headers }, Connect { headers: h2 }) => headers == h2,
            (
                Join { room, presence },
                Join {
                    room: r2,
                    presence: p2,
                },
            ) => room == r2 && presence == p2,
            (Subscribe { channel }, Subscribe { channel: c2 }) => channel == c2,
            (
                Publish {
                    target_kind,
                    target,
                    event,
                    data,
                },
                Publish {
                    target_kind: k2,
                    target: t2,
                    event: e2,
                    data: d2,
                },
            ) => target_kind == k2 && target == t2 && event == e2 && same_raw(data, d2),
            (
                Rpc { method, data },
                Rpc {
                    method: m2,
                    data: d2,
                },
            ) => method == m2 && same_raw(data, d2),
            _ => false,
        }
    }
}

impl Eq for Question {}

impl PartialEq for Answer {
    fn eq(&self, other: &Answer) -> bool {
        match (self, other) {
            (Answer::Allow { data }, Answer::Allow { data: d2 }) => same_raw(data, d2),
            (
                Answer::Refuse { code, message },
                Answer::Refuse {
                    code: c2,
                    message: m2,
                },
            ) => code == c2 && message == m2,
            (Answer::Unavailable, Answer::Unavailable) => true,
            _ => false,
        }
    }
}

impl Eq for Answer {}

impl Answer {
    /// Allow, unchanged.
    pub fn allow() -> Answer {
        Answer::Allow { data: None }
    }

    /// Allow with `data`: a publish's replaced data, or an rpc's reply.
    pub fn with_data(data: Box<RawValue>) -> Answer {
        Answer::Allow { data: Some(data) }
    }

    /// Admits a connection (the `connect` hook) as `user` (`None`: as it came), with
    /// `info` (a JSON object shown to others) and joined to `rooms`.
    pub fn admit(user: Option<&str>, info: Option<&RawValue>, rooms: &[&str]) -> Answer {
        let mut v = serde_json::json!({});
        if let Some(u) = user {
            v["user"] = u.into();
        }
        if let Some(i) = info {
            v["info"] = serde_json::from_str(i.get()).unwrap_or(serde_json::Value::Null);
        }
        if !rooms.is_empty() {
            v["rooms"] = rooms.into();
        }
        Answer::Allow {
            data: RawValue::from_string(v.to_string()).ok(),
        }
    }

    /// Refuse with an application error `code` (a valid name) and a message.
    pub fn refuse(code: impl Into<String>, message: impl Into<String>) -> Answer {
        Answer::Refuse {
            code: code.into(),
            message: message.into(),
        }
    }
}

/// A connection's parked request and the requests waiting behind it.
#[derive(Debug)]
pub(crate) struct Parked {
    pub(crate) ticket: Ticket,
    pub(crate) deadline: Timestamp,
    /// The parked request's text, read again when the answer comes.
    text: Box<str>,
    /// Waits for the backplane, not the application (no [`Output::Decide`]).
    quiet: bool,
    /// Later requests, in arrival order.
    queue: VecDeque<Box<str>>,
}

/// How a parked request ends.
enum Resolution {
    /// The application's answer (or its deadline).
    Answer(Answer),
    /// Run it again with this (the backplane loaded what it waited for).
    Rerun(Decided),
}

/// What an allowed request carries back into dispatch.
#[derive(Debug, Default)]
pub(crate) struct Decided {
    pub(crate) data: Option<Box<RawValue>>,
    /// A join re-run once the backplane loaded its room.
    pub(crate) loaded: bool,
}

impl Hub {
    /// Whether a request of slot `s` must wait: it has one parked. Then `text` is queued
    /// behind it (or, past the bound, refused at once) and true is returned.
    pub(crate) fn queue_behind_parked(&mut self, s: usize, text: &str) -> bool {
        let max = self.config.hooks.max_queued;
        let Some(p) = self.conns[s].parked.as_deref_mut() else {
            return false;
        };
        if p.queue.len() < max {
            p.queue.push_back(text.into());
        } else {
            let id = self.conns[s].id;
            let req_id = protocol::parse_request(text).id;
            let rej = Rejection::new(
                ErrorCode::RateLimited,
                "too many requests waiting for the application's answer",
            );
            self.refuse(id, req_id.as_ref(), &rej);
        }
        true
    }

    /// Parks slot `s`'s request `text` until `deadline` without asking the application
    /// (the backplane is loading what it needs); returns its ticket.
    pub(crate) fn park_quietly(&mut self, s: usize, text: &str, deadline: Timestamp) -> u64 {
        let ticket = self.park_slot(s, text, deadline, true);
        self.schedule_conn(self.conns[s].id);
        ticket.0
    }

    /// Parks slot `s`'s request under a new ticket (one parked request per connection).
    fn park_slot(&mut self, s: usize, text: &str, deadline: Timestamp, quiet: bool) -> Ticket {
        self.next_ticket += 1;
        let ticket = Ticket(self.next_ticket);
        let c = &mut self.conns[s];
        debug_assert!(c.parked.is_none(), "one parked request per connection");
        c.parked = Some(Box::new(Parked {
            ticket,
            deadline,
            text: text.into(),
            quiet,
            queue: VecDeque::new(),
        }));
        self.tickets.insert(ticket.0, c.id);
        ticket
    }

    /// Resolves the quietly parked request `ticket` of `conn`: re-run with `decided`, or
    /// refused `unavailable` (`None`).
    pub(crate) fn settle_waiter(
        &mut self,
        conn: ConnId,
        ticket: u64,
        decided: Option<Decided>,
        now: Timestamp,
    ) {
        let Ok(s) = self.conns.slot_of(conn) else {
            return;
        };
        if self.conns[s].state != ConnState::Open
            || self.conns[s].parked.as_ref().map(|p| p.ticket.0) != Some(ticket)
        {
            return;
        }
        match decided {
            Some(d) => self.resolve(s, Resolution::Rerun(d), now),
            None => self.resolve(s, Resolution::Answer(Answer::Unavailable), now),
        }
    }

    /// Parks slot `s`'s request `text` and asks the application `question`.
    pub(crate) fn park(&mut self, s: usize, text: &str, question: Question, now: Timestamp) {
        let deadline = Timestamp(now.0.saturating_add(self.config.hooks.timeout_ms));
        let ticket = self.park_slot(s, text, deadline, false);
        let c = &self.conns[s];
        let decision = Decision {
            ticket,
            conn: c.id,
            wire_id: c.wire.clone(),
            user: c.user.clone(),
            info: c.auth.as_deref().and_then(|a| a.info.clone()),
            question,
        };
        self.fanout.stats.decisions_asked += 1;
        self.fanout.push(Output::Decide(Box::new(decision)));
        self.schedule_conn(self.conns[s].id);
    }

    /// The application's answer to `ticket`. An answer that comes too late (after the
    /// deadline, or after the connection closed) is ignored: the request was already
    /// refused, or there is no one left to tell.
    pub fn handle_decision(
        &mut self,
        now: Timestamp,
        ticket: Ticket,
        answer: Answer,
    ) -> Result<(), HubError> {
        let now = self.clock.advance(now);
        let Some(id) = self.tickets.remove(&ticket.0) else {
            self.fanout.stats.decisions_late += 1;
            return Ok(());
        };
        // Any open connection: one waiting for its `connect` answer is not admitted yet.
        let Ok(s) = self.conns.slot_of(id) else {
            return Ok(());
        };
        if self.conns[s].state != ConnState::Open
            || self.conns[s]
                .parked
                .as_ref()
                .is_none_or(|p| p.ticket != ticket || p.quiet)
        {
            return Ok(());
        }
        self.settle(s, answer, now);
        self.reap(now);
        Ok(())
    }

    /// Resolves slot `s`'s parked request with `answer`, then runs what waited behind it
    /// until the queue is empty or a request parks again.
    fn settle(&mut self, s: usize, answer: Answer, now: Timestamp) {
        self.resolve(s, Resolution::Answer(answer), now);
    }

    fn resolve(&mut self, s: usize, how: Resolution, now: Timestamp) {
        let Some(parked) = self.conns[s].parked.take() else {
            return;
        };
        let Parked {
            ticket,
            text,
            quiet,
            mut queue,
            ..
        } = *parked;
        self.tickets.remove(&ticket.0);
        let id = self.conns[s].id;
        match how {
            Resolution::Rerun(d) => self.handle_request(s, &text, Some(d), now),
            Resolution::Answer(Answer::Unavailable) if quiet => {
                self.forget_waiter(ticket.0);
                let req_id = protocol::parse_request(&text).id;
                let rej = Rejection::new(
                    ErrorCode::Unavailable,
                    "the backplane did not answer in time: try again",
                );
                self.fanout.stats.backplane_refused += 1;
                self.refuse(id, req_id.as_ref(), &rej);
            }
            Resolution::Answer(answer) if self.conns[s].hello.is_some() => {
                if !self.settle_connect(s, answer, now) {
                    return; // refused: closed
                }
            }
            Resolution::Answer(answer) => self.settle_request(s, &text, answer, now),
        }
        while let Some(next) = queue.pop_front() {
            if self.conns[s].state != ConnState::Open || self.conns[s].id != id {
                return;
            }
            if let Some(p) = self.conns[s].parked.as_deref_mut() {
                // parked again: the rest keeps waiting, in order, behind it
                queue.push_front(next);
                queue.append(&mut p.queue);
                p.queue = queue;
                return;
            }
            self.handle_request(s, &next, None, now);
        }
    }

    /// Resolves a parked request (`text`) with `answer`.
    fn settle_request(&mut self, s: usize, text: &str, answer: Answer, now: Timestamp) {
        let id = self.conns[s].id;
        match answer {
            Answer::Allow { data } => {
                let d = Decided {
                    data,
                    loaded: false,
                };
                self.handle_request(s, text, Some(d), now)
            }
            Answer::Refuse { code, message } => {
                let req_id = protocol::parse_request(text).id;
                self.refuse(id, req_id.as_ref(), &Rejection::application(&code, message));
            }
            Answer::Unavailable => {
                let req_id = protocol::parse_request(text).id;
                let rej = Rejection::new(
                    ErrorCode::Unavailable,
                    "the application did not answer in time",
                );
                self.fanout.stats.decisions_timed_out += 1;
                self.refuse(id, req_id.as_ref(), &rej);
            }
        }
    }

    /// Asks the application whether slot `s` may come in.
    pub(crate) fn ask_connect(&mut self, s: usize, now: Timestamp) {
        let Some(h) = self.conns[s].hello.as_deref_mut() else {
            return;
        };
        h.asked = true;
        let headers = std::mem::take(&mut h.headers);
        self.park(s, "", Question::Connect { headers }, now);
    }

    /// Resolves slot `s`'s `connect`: admitted (as the answer says) and welcomed, or
    /// closed (4003 refused, 1013 no answer). True when admitted.
    fn settle_connect(&mut self, s: usize, answer: Answer, now: Timestamp) -> bool {
        // Closed while still not admitted: it never was (no Disconnected).
        let data = match answer {
            Answer::Allow { data } => data,
            Answer::Refuse { message, .. } => {
                let reason = messages::truncate_reason(&message).to_owned();
                self.close_conn(s, Closing::refused(reason), now);
                return false;
            }
            Answer::Unavailable => {
                self.fanout.stats.decisions_timed_out += 1;
                self.close_conn(s, Closing::unavailable(), now);
                return false;
            }
        };
        let hello = self.conns[s].hello.take().expect("checked by the caller");
        #[derive(serde::Deserialize, Default)]
        struct Admit<'a> {
            #[serde(default)]
            user: Option<String>,
            #[serde(borrow, default)]
            info: Option<&'a RawValue>,
            #[serde(default)]
            rooms: Vec<String>,
        }
        let admit: Admit<'_> = data
            .as_deref()
            .and_then(|d| serde_json::from_str(d.get()).ok())
            .unwrap_or_default();
        let info = admit
            .info
            .filter(|i| i.get().starts_with('{') && i.get().len() <= crate::auth::MAX_INFO_LEN);
        let kept_info = self.conns[s].auth.as_deref().and_then(|a| a.info.clone());
        let info: Option<Box<str>> = info.map(|i| i.get().into()).or(kept_info);
        let user = admit
            .user
            .filter(|u| protocol::valid_name(u))
            .map(Arc::<str>::from)
            .or_else(|| self.conns[s].user.clone());
        if let Some(u) = user {
            self.conns[s].set_identity(u, info.as_deref());
        }
        if let Some(a) = self.conns[s].auth.as_deref_mut() {
            a.info = info.clone();
        }
        let mut rooms = hello.rooms;
        rooms.extend(admit.rooms);
        self.welcome_admitted(s, rooms, info.as_deref());
        true
    }

    /// When slot `s`'s parked request runs out of time.
    pub(crate) fn decision_deadline(&self, s: usize) -> Option<Timestamp> {
        self.conns[s].parked.as_ref().map(|p| p.deadline)
    }

    /// Refuses slot `s`'s parked request `unavailable` if its deadline has passed.
    pub(crate) fn decision_timer(&mut self, s: usize, now: Timestamp) {
        if self.decision_deadline(s).is_some_and(|d| now >= d) {
            self.settle(s, Answer::Unavailable, now);
        }
    }

    /// Forgets slot `s`'s parked request (it is closing): a late answer finds nothing.
    pub(crate) fn drop_parked(&mut self, s: usize) {
        if let Some(p) = self.conns[s].parked.take() {
            self.tickets.remove(&p.ticket.0);
            if p.quiet {
                self.forget_waiter(p.ticket.0);
            }
        }
    }

    /// The `ack` of an answered `rpc`.
    pub(crate) fn rpc_reply(
        &mut self,
        s: usize,
        req_id: Option<&protocol::RequestId>,
        data: Option<&RawValue>,
    ) {
        let id = self.conns[s].id;
        self.send(id, &messages::rpc_ack(req_id, data));
    }
}
