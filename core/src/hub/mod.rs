//! The hub: connections, rooms, channels and users, and the JSON protocol that drives them.
//!
//! Inputs go in ([`Hub::handle`], or the `handle_*` and server-API methods it
//! dispatches to), outputs come out ([`Hub::poll_output`]). The hub never touches a
//! socket: the native server feeds it text from its frame decoder, the Durable Object
//! feeds it what workerd already framed. Every decision about who receives what, when a
//! connection is dead and what a bad request gets is made here, once, for all runtimes.
//!
//! Cost model (what the benchmarks hold us to): a room message is serialized and framed
//! once and handed to each receiver as a refcounted [`Outgoing`]; joining, leaving and
//! disconnecting cost O(rooms of that connection); deadlines sit in a heap, never a scan.
//!
//! ## Layout
//!
//! This file is the facade: the [`Hub`] and its run loop. Each part owns its state and
//! invariants in a file of its own, and the facade sequences them:
//! - `types`, `input`, `config`: what the outside sees;
//! - `conns`: the connection table; `membership` (over `registry`): rooms, channels,
//!   users and presence; `history`: room logs, their byte budget and replay;
//!   `timers`: the deadline heap; `fanout`: outputs, budgets, counters, bursts;
//! - `connections` (admission, closing, heartbeat), `members` (joining and leaving, with
//!   presence notices and room lifetimes), `publish` (routing one message), `dispatch`
//!   (the client protocol), `server_api`, `snapshot` (hibernation), `messages` (the
//!   wire shape of every message the hub writes).

mod auth;
mod backplane;
mod config;
mod connections;
mod conns;
mod decisions;
mod dispatch;
mod fanout;
mod history;
mod input;
mod members;
mod membership;
mod messages;
mod presence;
mod proxy_wire;
mod publish;
mod registry;
mod server_api;
mod snapshot;
mod timers;
mod types;

pub use backplane::{
    control_from_json, control_to_json, forward_from_json, forward_to_json, Append, AppendTicket,
    BackplaneError, Control, Load, Loaded,
};
pub use config::{HeartbeatConfig, HistoryConfig, HubConfig, DEFAULT_HISTORY, PRESENCE_BATCH_MS};
pub use decisions::{Answer, Decision, HookConfig, Question, Ticket};
pub use input::{Handled, Input, Recipient};
pub use proxy_wire::{disconnect_request, hook_answer, hook_request, HookAnswerError, HookCaller};
pub use snapshot::{
    AuthSnapshot, ChannelSnapshot, ConnSnapshot, HistorySnapshot, RoomGrantSnapshot,
    RoomMembership, RoomSnapshot,
};
pub use types::{
    ConnId, ConnInfo, ConnState, ConnectError, ConnectRequest, Delivery, Destination,
    DisconnectReason, Event, Forward, HubError, Origin, Output, Published, RoomOptions, Stats,
};

pub use crate::ratelimit::RateLimit;

use conns::Conns;
use fanout::FanOut;
use history::History;
use membership::Membership;
use timers::{Timer, TimerTable};

use crate::hash::SeededState;
use crate::outgoing::Outgoing;
use crate::time::{Clock, Timestamp};

/// The routing state machine. See the crate docs for the run loop.
pub struct Hub {
    config: HubConfig,
    clock: Clock,
    /// Names this hub instance in connection ids and room epochs.
    instance: String,
    conns: Conns,
    index: Membership,
    history: History,
    timers: TimerTable,
    fanout: FanOut,
    /// The last ticket handed out ([`Output::Decide`]).
    next_ticket: u64,
    /// Parked requests by ticket: whose answer it is.
    tickets: std::collections::BTreeMap<u64, ConnId>,
    /// Appends and loads in flight with a backplane.
    backplane: backplane::Backplane,
}

impl Hub {
    /// Builds an empty hub. `seed` keys the hash maps against flooding and names this hub
    /// instance (room epochs and connection ids differ across restarts); pass bytes from
    /// the platform's CSPRNG.
    pub fn new(config: HubConfig, seed: [u8; 32], now: Timestamp) -> Hub {
        let words: [u64; 4] = std::array::from_fn(|i| {
            u64::from_le_bytes(seed[i * 8..i * 8 + 8].try_into().expect("8-byte chunk"))
        });
        let hasher = SeededState::new(words);
        Hub {
            instance: format!("{:08x}", (words[0] ^ words[3]) as u32),
            clock: Clock::new(now),
            conns: Conns::new(),
            index: Membership::new(&hasher),
            history: History::new(config.history.clone()),
            timers: TimerTable::new(),
            fanout: FanOut::new(config.max_buffered_bytes),
            next_ticket: 0,
            tickets: std::collections::BTreeMap::new(),
            backplane: backplane::Backplane::default(),
            config,
        }
    }

    /// The configuration this hub runs with.
    pub fn config(&self) -> &HubConfig {
        &self.config
    }

    /// Counts and counters.
    pub fn stats(&self) -> Stats {
        Stats {
            connections: self.conns.open_count(),
            rooms: self.index.rooms.len(),
            channels: self.index.channels.len(),
            users: self.index.users.len(),
            history_bytes: self.history.bytes(),
            history_evicted: self.history.evicted(),
            ..self.fanout.stats
        }
    }

    /// Handles one input at `now` (the adapter's clock; the hub never lets it run
    /// backwards). Peer faults are never `Err`: they become `error` replies or closes.
    /// `Err` is a caller mistake (an unknown connection, a bad name in a server call).
    pub fn handle(&mut self, now: Timestamp, input: Input<'_>) -> Result<Handled, HubError> {
        use Handled::{Delivered, Done};
        match input {
            Input::Connect(req) => return Ok(Handled::Connected(self.connect(now, req)?)),
            Input::Text { conn, text } => self.handle_text(now, conn, text)?,
            Input::Binary { conn, len } => self.handle_binary(now, conn, len)?,
            Input::Activity { conn } => self.handle_activity(now, conn)?,
            Input::Flushed { conn, bytes } => {
                self.clock.advance(now);
                self.handle_flushed(conn, bytes)?
            }
            Input::Closed { conn, reason } => self.handle_disconnect(now, conn, reason)?,
            Input::Remote { node, forward } => self.handle_remote(now, node, forward),
            Input::Appended { ticket, result } => self.handle_appended(now, ticket, result),
            Input::Logged {
                room,
                epoch,
                seq,
                body,
            } => self.handle_logged(now, room, epoch, seq, body),
            Input::Loaded { room, loaded } => self.handle_loaded(now, room, loaded),
            Input::LoadFailed { room } => self.handle_load_failed(now, room),
            Input::BackplaneResync => self.handle_backplane_resync(now),
            Input::Control { control } => self.handle_control(now, control),
            Input::Timeout => self.handle_timeout(now),
            Input::EndBatch => {
                self.clock.advance(now);
                self.flush()
            }
            Input::Join {
                conn,
                room,
                presence,
            } => self.join(now, conn, room, presence)?,
            Input::Leave { conn, room } => self.leave(now, conn, room)?,
            Input::LeaveAll { conn } => self.leave_all(now, conn)?,
            Input::Subscribe { conn, channel } => self.subscribe(now, conn, channel)?,
            Input::Unsubscribe { conn, channel } => self.unsubscribe(now, conn, channel)?,
            Input::CreateRoom { room, options } => self.create_room(now, room, options)?,
            Input::RemoveRoom { room } => self.remove_room(now, room)?,
            Input::CreateChannel { channel, rooms } => self.create_channel(now, channel, rooms)?,
            Input::LinkRoom { channel, room } => self.link_room(now, channel, room)?,
            Input::UnlinkRoom { channel, room } => self.unlink_room(now, channel, room)?,
            Input::Send {
                to,
                event,
                data,
                exclude,
            } => return Ok(Delivered(self.send_to(now, to, event, data, exclude)?)),
            Input::SendRaw {
                room,
                text,
                exclude,
            } => return Ok(Delivered(self.send_raw_to_room(now, room, text, exclude)?)),
            Input::Disconnect { conn, code, reason } => self.disconnect(now, conn, code, reason)?,
            Input::SetMetadata { conn, key, value } => {
                self.clock.advance(now);
                self.set_metadata(conn, key, value)?
            }
            Input::Shutdown => self.shutdown(now),
            Input::Decided { ticket, answer } => self.handle_decision(now, ticket, answer)?,
        }
        Ok(Done)
    }

    /// The next output, or `None` when there is nothing left to do for now.
    #[must_use = "every output is something the adapter must do"]
    pub fn poll_output(&mut self) -> Option<Output> {
        self.fanout.poll()
    }

    /// The next deadline: call [`Hub::handle_timeout`] then. `None` when nothing is
    /// scheduled. Level state: read it after draining outputs, every time.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        self.timers.next()
    }

    /// Runs everything due at `now`: heartbeat pings and expiries, closing grace periods,
    /// history expiry of empty rooms, batched presence.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        let now = self.clock.advance(now);
        while let Some((fired, timer)) = self.timers.pop_due(now) {
            match timer {
                Timer::Conn(id) => self.conn_timer(id, fired, now),
                Timer::Room { slot, uid } => self.room_timer(slot, uid, now),
                Timer::Load { serial } => self.load_timer(serial, now),
                Timer::Presence { slot, uid } => self.presence_timer(slot, uid, now),
            }
        }
    }

    /// Hands out every coalesced room message now. Call after each batch of inputs when
    /// [`HubConfig::coalesce_room_messages`] is on (a no-op otherwise): until then room
    /// messages wait, so a burst reaches each member as one [`Output::SendFrames`].
    pub fn flush(&mut self) {
        self.flush_rooms();
        // Also closes what the flushes inside membership changes found over budget (the
        // server API's join and leave do not reap themselves).
        if self.fanout.has_doomed() {
            let now = self.clock.now();
            self.reap(now);
        }
    }

    /// Hands out every room's held messages without closing anyone yet: connections
    /// found over budget are closed by the caller's `reap`, after it is done with the
    /// rooms and channels it looked up (a close can remove them).
    fn flush_rooms(&mut self) {
        while let Some(rk) = self.fanout.next_pending_room() {
            self.settle_room(rk);
        }
    }

    /// The rule before any change to a room's membership (and before it goes): its held
    /// messages reach exactly the members they were published to.
    fn settle_room(&mut self, rk: usize) {
        let room = &mut self.index.rooms[rk];
        self.fanout.flush_room(rk, room, &mut self.conns);
    }

    /// Queues a message for one connection and charges its output budget, after the held
    /// room messages it has not had yet. A connection over budget is closed by `reap`
    /// after the current fan-out, so one slow reader never stalls or reorders the others.
    fn send(&mut self, id: ConnId, msg: &Outgoing) {
        let s = id.slot();
        if self.fanout.holding() {
            self.fanout
                .catch_up(s, &mut self.conns, &mut self.index.rooms);
        }
        self.fanout.deliver(&mut self.conns[s], msg);
    }

    /// Closes the slow consumers the last fan-out found.
    fn reap(&mut self, now: Timestamp) {
        while let Some(id) = self.fanout.next_doomed() {
            if let Ok(s) = self.conns.open_slot(id) {
                self.close_conn(s, connections::Closing::slow_consumer(), now);
            }
        }
    }

    /// Schedules a timer; the heap sweeps entries that are no longer wanted.
    fn push_timer(&mut self, at: Timestamp, timer: Timer) {
        let (conns, rooms) = (&self.conns, &self.index.rooms);
        let loads = &self.backplane.load_timers;
        self.timers.push(at, timer, |t, timer| match timer {
            Timer::Conn(id) => conns.get(id).is_some_and(|c| c.timer_at == Some(t)),
            // Room timers are few; a stale one only re-checks its room when it fires.
            Timer::Room { slot, uid } => rooms.get(slot).is_some_and(|r| r.uid == uid),
            Timer::Load { serial } => loads.contains_key(&serial),
            Timer::Presence { slot, uid } => rooms
                .get(slot)
                .is_some_and(|r| r.uid == uid && r.presence.as_ref().is_some_and(|b| b.due == t)),
        });
    }

    /// Checks every cross-index invariant; panics with a description on the first broken
    /// one. For tests, simulations and fuzzing.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        self.conns.check();
        self.index.check(&self.conns);
        self.history.check(&self.index.rooms);
        self.fanout.check(&self.index.rooms);
        self.check_backplane();
    }

    /// True when the hub holds nothing: no connections, rooms, channels or users.
    #[doc(hidden)]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
            && self.index.rooms.is_empty()
            && self.index.channels.is_empty()
            && self.index.users.is_empty()
    }
}

#[cfg(test)]
mod tests;
