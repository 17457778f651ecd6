//! The hub simulation: fake peers, a model of what each should receive, a virtual clock.

use std::collections::{BTreeMap, BTreeSet};

use std::collections::HashMap;
use std::rc::Rc;

use roomcast_core::hub::{
    ConnectRequest, DisconnectReason, Event, HeartbeatConfig, HistoryConfig, HubConfig, Output,
};
use roomcast_core::rng::Rng;
use roomcast_core::{ConnId, Hub, Timestamp};
use serde_json::{json, Value};

/// Knobs for one family of runs.
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Upper bound on peers connected over a run.
    pub max_peers: usize,
    /// Rooms in the pool.
    pub rooms: usize,
    /// Random steps per seed.
    pub steps: usize,
    /// Per-room history on.
    pub history: bool,
    /// Bytes of history kept across rooms (small: the budget evicts too).
    pub history_budget: usize,
    /// Rejoins with `since`/`epoch` among the steps (recovery checked against a model).
    pub recovery: bool,
    /// The hub's budget of unsent bytes per connection (small: slow readers are closed
    /// soon; a rejoin's replay past it closes the rejoiner too).
    pub max_buffered: usize,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            max_peers: 120,
            rooms: 6,
            steps: 250,
            history: false,
            history_budget: 6_000,
            recovery: true,
            max_buffered: 1_500,
        }
    }
}

const INTERVAL: u64 = 1_000;
const MAX_MISSED: u32 = 2;
const CHANNELS: [&str; 3] = ["alerts", "news", "topic"];
const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];
/// History kept per room when on, and for how long.
const HISTORY_MESSAGES: u64 = 50;
const HISTORY_AGE: u64 = 20_000;

#[derive(Debug)]
struct Peer {
    id: ConnId,
    user: Option<String>,
    /// Room → next seq this peer must receive.
    rooms: BTreeMap<String, u64>,
    subs: BTreeSet<String>,
    /// Stops answering pings: the heartbeat must reap it.
    silent: bool,
    /// Never reports flushed bytes: the hub must close it as a slow consumer.
    slow: bool,
    last_activity: u64,
    /// The hub closed it (or it disconnected): nothing may arrive any more.
    closed: bool,
    /// Channel/user message ids received.
    got: BTreeSet<u64>,
    /// Its `conn` from the welcome.
    wire: String,
    /// Rooms it joined with presence (`true` or `"users"`).
    presence: BTreeSet<String>,
    /// Of those, the rooms it watches per user: its view holds users (and anonymous
    /// connections), see [`key`].
    per_user: BTreeSet<String>,
    /// The presence its last join asked for was per user.
    asked_users: bool,
    /// Room → the members it knows of: the join ack's `present` list, then every
    /// `presence` message applied (only where the list was complete, under the cap).
    views: BTreeMap<String, BTreeSet<String>>,
    /// The last ack it received.
    last_ack: Option<Value>,
    /// A room it is rejoining: room messages for it are collected in `replayed`.
    recovering: Option<String>,
    replayed: Vec<u64>,
}

/// What a run exercised, so a test can prove the simulation reached every path.
#[derive(Debug, Default, Clone, Copy)]
pub struct SimReport {
    /// Room messages delivered.
    pub room_deliveries: u64,
    /// Channel and user messages delivered.
    pub targeted_deliveries: u64,
    /// Presence messages delivered.
    pub presence: u64,
    /// Error replies.
    pub errors: u64,
    /// Peers reaped by the heartbeat.
    pub heartbeat_reaps: u64,
    /// Peers closed as slow consumers.
    pub slow_closes: u64,
    /// Coalesced room bursts delivered.
    pub bursts: u64,
    /// Presence entries (joined or left) checked.
    pub presence_entries: u64,
    /// Presence views compared with the model's membership at the end.
    pub presence_views: u64,
    /// Of those, per-user views (`presence: "users"`).
    pub user_views: u64,
    /// Runs whose hub batched presence over a window.
    pub batched_runs: u64,
    /// Presence messages with several entries.
    pub presence_batches: u64,
    /// Rejoins with `since`/`epoch` that were `recovered: true`.
    pub recovered: u64,
    /// Rejoins with `since`/`epoch` that were `recovered: false`.
    pub not_recovered: u64,
    /// Room messages replayed by rejoins.
    pub replayed: u64,
    /// Rejoins that had to recover (same epoch, history holding all) and did.
    pub must_recover: u64,
    /// Rejoins whose messages had surely left the history (count or age) and were not
    /// recovered.
    pub must_not_recover: u64,
}

impl SimReport {
    /// Adds another run's counts.
    pub fn add(&mut self, o: &SimReport) {
        self.room_deliveries += o.room_deliveries;
        self.targeted_deliveries += o.targeted_deliveries;
        self.presence += o.presence;
        self.errors += o.errors;
        self.heartbeat_reaps += o.heartbeat_reaps;
        self.slow_closes += o.slow_closes;
        self.bursts += o.bursts;
        self.presence_entries += o.presence_entries;
        self.presence_views += o.presence_views;
        self.user_views += o.user_views;
        self.batched_runs += o.batched_runs;
        self.presence_batches += o.presence_batches;
        self.recovered += o.recovered;
        self.not_recovered += o.not_recovered;
        self.replayed += o.replayed;
        self.must_recover += o.must_recover;
        self.must_not_recover += o.must_not_recover;
    }
}

struct Sim {
    report: SimReport,
    hub: Hub,
    rng: Rng,
    now: u64,
    peers: Vec<Peer>,
    by_id: HashMap<ConnId, usize>,
    room_names: Vec<String>,
    /// Server channel "news" links these rooms.
    linked: BTreeSet<String>,
    /// Messages published to channels/users, by unique data id → expected receivers.
    expected: HashMap<u64, BTreeSet<usize>>,
    next_msg: u64,
    room_seq: HashMap<String, u64>,
    max_buffered: usize,
    /// Room messages coalesced (odd seeds).
    coalesce: bool,
    /// A peer's `conn` → the peer.
    by_wire: HashMap<String, usize>,
    history: bool,
    recovery: bool,
    /// The hub's presence window (0: changes go out at once).
    presence_batch_ms: u64,
}

/// What a presence view holds for a connection: its conn, or per user its user
/// (anonymous connections stand for themselves).
fn key(wire: &str, user: Option<&str>, per_user: bool) -> String {
    match (per_user, user) {
        (true, Some(u)) => format!("user:{u}"),
        _ => wire.to_owned(),
    }
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below_or_eq(items.len() as u64 - 1) as usize]
}

impl Sim {
    fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let mut rng = Rng::from_u64(seed);
        let mut hub_seed = [0u8; 32];
        rng.fill(&mut hub_seed);
        let max_buffered = cfg.max_buffered;
        // a third of the seeds batch presence (the servers' default window)
        let presence_batch_ms = if seed % 3 == 2 {
            roomcast_core::hub::PRESENCE_BATCH_MS
        } else {
            0
        };
        let config = HubConfig {
            heartbeat: HeartbeatConfig {
                interval_ms: INTERVAL,
                timeout_ms: INTERVAL,
                max_missed: MAX_MISSED,
                server_pings: true,
            },
            history: HistoryConfig {
                max_messages: if cfg.history {
                    HISTORY_MESSAGES as usize
                } else {
                    0
                },
                max_age_ms: HISTORY_AGE,
                max_total_bytes: cfg.history_budget,
            },
            max_buffered_bytes: max_buffered,
            coalesce_room_messages: seed % 2 == 1,
            presence_batch_ms,
            ..HubConfig::default()
        };
        let mut hub = Hub::new(config, hub_seed, Timestamp(0));
        let room_names: Vec<String> = (0..cfg.rooms).map(|i| format!("room-{i}")).collect();
        let linked: BTreeSet<String> = room_names.iter().take(2).cloned().collect();
        let refs: Vec<&str> = linked.iter().map(String::as_str).collect();
        hub.create_channel(Timestamp(0), "news", &refs)
            .expect("valid names");
        Sim {
            report: SimReport::default(),
            hub,
            rng,
            now: 0,
            peers: Vec::new(),
            by_id: HashMap::default(),
            room_names,
            linked,
            expected: HashMap::default(),
            next_msg: 1,
            room_seq: HashMap::default(),
            max_buffered,
            coalesce: seed % 2 == 1,
            by_wire: HashMap::default(),
            history: cfg.history,
            recovery: cfg.recovery,
            presence_batch_ms,
        }
    }

    fn live(&self) -> Vec<usize> {
        (0..self.peers.len())
            .filter(|&i| !self.peers[i].closed)
            .collect()
    }

    fn random_live(&mut self) -> Option<usize> {
        let live = self.live();
        if live.is_empty() {
            None
        } else {
            Some(*pick(&mut self.rng, &live))
        }
    }

    fn text(&mut self, p: usize, v: Value) {
        let id = self.peers[p].id;
        self.peers[p].last_activity = self.now;
        self.hub
            .handle_text(Timestamp(self.now), id, &v.to_string())
            .expect("live peer");
        self.drain();
    }

    /// Drains outputs, checking each delivery against the model.
    fn drain(&mut self) {
        // Like the native server after a batch of inputs, but only sometimes, so bursts
        // also span steps and meet joins, leaves, closes and direct replies.
        if self.coalesce && self.rng.below_or_eq(2) == 0 {
            self.hub.flush();
        }
        let mut parsed: HashMap<*const u8, Rc<Value>> = HashMap::default();
        while let Some(out) = self.hub.poll_output() {
            match out {
                Output::Send { conn, msg } => {
                    let p = self.by_id[&conn];
                    assert!(
                        !self.peers[p].closed,
                        "message to a closed peer: {}",
                        msg.text()
                    );
                    if !self.peers[p].slow {
                        self.hub.handle_flushed(conn, msg.wire_len()).expect("open");
                    }
                    let v = parsed
                        .entry(msg.frame().as_ptr())
                        .or_insert_with(|| Rc::new(serde_json::from_str(msg.text()).expect("JSON")))
                        .clone();
                    self.receive(p, &v);
                }
                Output::SendFrames { conn, frames } => {
                    assert!(self.coalesce, "bursts only when coalescing");
                    let p = self.by_id[&conn];
                    assert!(!self.peers[p].closed, "burst to a closed peer: {frames:?}");
                    assert!(frames.count() > 1, "a burst of one is a plain send");
                    self.report.bursts += 1;
                    if !self.peers[p].slow {
                        self.hub
                            .handle_flushed(conn, frames.wire_len())
                            .expect("open");
                    }
                    for text in frames.texts() {
                        let v = serde_json::from_str(text).expect("JSON");
                        self.receive(p, &v);
                    }
                }
                Output::Ping { conn } => {
                    let p = self.by_id[&conn];
                    if !self.peers[p].silent {
                        self.peers[p].last_activity = self.now;
                        self.hub
                            .handle_activity(Timestamp(self.now), conn)
                            .expect("open");
                    }
                }
                Output::Close { conn, code, reason } => {
                    let p = self.by_id[&conn];
                    let peer = &mut self.peers[p];
                    assert!(!peer.closed);
                    match (code, reason.as_ref()) {
                        (1013, "slow consumer") => {
                            // A rejoin's replay is queued at once: past the (tiny) budget
                            // it closes even a fast reader.
                            assert!(
                                peer.slow || peer.recovering.is_some(),
                                "fast peer closed as slow"
                            );
                            self.report.slow_closes += 1;
                        }
                        (1001, "heartbeat timeout") => {
                            assert!(peer.silent, "live peer reaped");
                            let due = peer.last_activity + INTERVAL * u64::from(MAX_MISSED);
                            assert_eq!(self.now, due, "heartbeat expiry not exactly when due");
                            self.report.heartbeat_reaps += 1;
                        }
                        other => panic!("unexpected close {other:?}"),
                    }
                    peer.closed = true;
                    peer.rooms.clear();
                    peer.subs.clear();
                    peer.presence.clear();
                    peer.views.clear();
                    // the adapter reports the socket gone right away
                    self.hub
                        .handle_disconnect(
                            Timestamp(self.now),
                            conn,
                            DisconnectReason::Closed { code: None },
                        )
                        .expect("closing conn still known");
                }
                Output::Event(Event::Disconnected { conn, .. }) => {
                    assert!(self.by_id.contains_key(&conn));
                }
                Output::Event(_) | Output::Forward(_) => {}
                Output::Decide(d) => panic!("this simulation turns no hook on: {d:?}"),
                Output::Append(_) | Output::Load(_) | Output::Control(_) => {
                    panic!("this simulation has no backplane")
                }
            }
        }
        self.hub.check_invariants();
    }

    fn receive(&mut self, p: usize, v: &Value) {
        match v["type"].as_str().expect("typed") {
            "message" => {
                if let Some(room) = v["room"].as_str() {
                    let seq = v["seq"].as_u64().expect("room messages carry seq");
                    let peer = &mut self.peers[p];
                    if peer.recovering.as_deref() == Some(room) && !peer.rooms.contains_key(room) {
                        // replayed before the rejoin's ack
                        peer.replayed.push(seq);
                        self.report.replayed += 1;
                        return;
                    }
                    let next = self.peers[p].rooms.get_mut(room).unwrap_or_else(|| {
                        panic!("peer {p} got a message for {room} it is not in")
                    });
                    assert_eq!(seq, *next, "peer {p} room {room}: gap or duplicate");
                    *next += 1;
                    self.report.room_deliveries += 1;
                } else {
                    let id = v["data"]["m"].as_u64().expect("sim data carries an id");
                    assert!(
                        self.peers[p].got.insert(id),
                        "peer {p} got message {id} twice"
                    );
                    let exp = self.expected.get(&id).expect("known message");
                    assert!(
                        exp.contains(&p),
                        "peer {p} should not get message {id}: {v}"
                    );
                    self.report.targeted_deliveries += 1;
                }
            }
            "presence" => self.presence(p, v),
            "error" => self.report.errors += 1,
            "welcome" => {
                let wire = v["conn"].as_str().expect("welcome has conn").to_owned();
                assert!(
                    self.by_wire.insert(wire.clone(), p).is_none(),
                    "conn {wire} handed out twice"
                );
                self.peers[p].wire = wire;
            }
            "ack" => {
                // A join's ack sets the presence state at once: presence messages may
                // follow it in the same batch (say, a peer closed on the way).
                if let (Some(room), true) = (v["room"].as_str(), v.get("epoch").is_some()) {
                    let cap = self.hub.config().max_present_list as u64;
                    let peer = &mut self.peers[p];
                    match v.get("present").and_then(Value::as_array) {
                        Some(list) => {
                            peer.presence.insert(room.to_owned());
                            let per_user = peer.asked_users;
                            if per_user {
                                peer.per_user.insert(room.to_owned());
                            } else {
                                peer.per_user.remove(room);
                            }
                            if v["members"].as_u64().expect("members") <= cap {
                                let view = list
                                    .iter()
                                    .map(|e| {
                                        let wire = e["conn"].as_str().expect("conn");
                                        key(wire, e["user"].as_str(), per_user)
                                    })
                                    .collect();
                                peer.views.insert(room.to_owned(), view);
                            } else {
                                peer.views.remove(room);
                            }
                        }
                        None => {
                            peer.presence.remove(room);
                            peer.per_user.remove(room);
                            peer.views.remove(room);
                        }
                    }
                }
                self.peers[p].last_ack = Some(v.clone());
            }
            "pong" => {}
            other => panic!("unknown message type {other}"),
        }
    }

    /// A `presence` message to peer `p`: only for a room it joined with presence, about
    /// other connections that exist, with their users, none both joined and left; applied
    /// to the peer's view of the room, which it must continue: nobody joins who is
    /// already in the view (per user: a user's second connection is no news) and nobody
    /// leaves who is not.
    fn presence(&mut self, p: usize, v: &Value) {
        self.report.presence += 1;
        let room = v["room"].as_str().expect("presence has room").to_owned();
        assert!(
            self.peers[p].presence.contains(&room),
            "peer {p} got presence for {room} without joining it with presence: {v}; \
             its rooms {:?}, presence in {:?}, last ack {:?}, conn {}",
            self.peers[p].rooms,
            self.peers[p].presence,
            self.peers[p].last_ack,
            self.peers[p].wire
        );
        let per_user = self.peers[p].per_user.contains(&room);
        let mut seen = BTreeSet::new();
        for (list, joined) in [("joined", true), ("left", false)] {
            let Some(entries) = v.get(list) else { continue };
            let entries = entries.as_array().expect("presence lists are arrays");
            for e in entries {
                let wire = e["conn"].as_str().expect("entry has conn").to_owned();
                let &who = self
                    .by_wire
                    .get(&wire)
                    .unwrap_or_else(|| panic!("presence names unknown conn {wire}: {v}"));
                assert_ne!(who, p, "peer {p} told about itself: {v}");
                assert_eq!(
                    e["user"].as_str(),
                    self.peers[who].user.as_deref(),
                    "presence entry's user: {v}"
                );
                let k = key(&wire, e["user"].as_str(), per_user);
                assert!(seen.insert(k.clone()), "{k} listed twice: {v}");
                self.report.presence_entries += 1;
                if let Some(view) = self.peers[p].views.get_mut(&room) {
                    if joined {
                        assert!(
                            view.insert(k.clone()),
                            "peer {p} told {k} joined again: {v}"
                        );
                    } else {
                        assert!(view.remove(&k), "peer {p} told {k} left, never there: {v}");
                    }
                }
            }
        }
        assert!(!seen.is_empty(), "empty presence message: {v}");
        self.report.presence_batches += u64::from(seen.len() > 1);
    }

    /// The live peers in `room`, by `conn`, as the model has them.
    fn members(&self, room: &str) -> BTreeSet<String> {
        self.member_keys(room, false)
    }

    /// The same, as a presence view of that kind holds them.
    fn member_keys(&self, room: &str, per_user: bool) -> BTreeSet<String> {
        self.peers
            .iter()
            .filter(|q| !q.closed && q.rooms.contains_key(room))
            .map(|q| key(&q.wire, q.user.as_deref(), per_user))
            .collect()
    }

    /// Checks a join's ack (`members`, `present`) against the membership before the
    /// join (`before`, without the joiner) and after it (peers closed on the way, e.g. as
    /// slow consumers, may or may not be counted), and sets the joiner's presence view.
    /// `presence`: `None` (off), `Some(per_user)`.
    fn check_join_ack(
        &mut self,
        p: usize,
        room: &str,
        presence: Option<bool>,
        before: &BTreeSet<String>,
    ) {
        let ack = self.peers[p].last_ack.take().expect("join acked");
        assert_eq!(ack["room"], room, "{ack}");
        let me = self.peers[p].wire.clone();
        let mut after = self.members(room);
        after.remove(&me);
        let mut with_me = before.clone();
        with_me.insert(me.clone());
        let members = ack["members"].as_u64().expect("members") as usize;
        assert!(
            members > after.len() && members <= before.len() + 1,
            "peer {p} join ack of {room}: {members} members, model {}..={}: {ack}",
            after.len() + 1,
            before.len() + 1
        );
        let Some(per_user) = presence else {
            assert!(ack.get("present").is_none(), "{ack}");
            return;
        };
        let present: Vec<String> = ack["present"]
            .as_array()
            .expect("present list with presence: true")
            .iter()
            .map(|e| {
                let wire = e["conn"].as_str().expect("conn").to_owned();
                let who = self.by_wire[&wire];
                assert_eq!(e["user"].as_str(), self.peers[who].user.as_deref(), "{ack}");
                wire
            })
            .collect();
        let set: BTreeSet<String> = present.iter().cloned().collect();
        assert_eq!(set.len(), present.len(), "duplicates in present: {ack}");
        assert!(set.is_subset(&with_me), "present lists non-members: {ack}");
        let cap = self.hub.config().max_present_list;
        if per_user {
            // each user once; the rest as for connections, by user
            let key_of = |w: &String| key(w, self.peers[self.by_wire[w]].user.as_deref(), true);
            let keys: BTreeSet<String> = present.iter().map(key_of).collect();
            assert_eq!(keys.len(), present.len(), "a user listed twice: {ack}");
            if members <= cap {
                assert!(keys.contains(&key_of(&me)), "the joiner's user: {ack}");
                let after: BTreeSet<String> = after.iter().map(key_of).collect();
                let with_me: BTreeSet<String> = with_me.iter().map(key_of).collect();
                assert!(after.is_subset(&keys), "present misses users: {ack}");
                assert!(keys.is_subset(&with_me), "present lists non-members: {ack}");
            }
            return;
        }
        assert_eq!(
            set.len(),
            members.min(cap),
            "present is capped at {cap}: {ack}"
        );
        if members <= cap {
            assert!(
                set.contains(&me),
                "the joiner is in its own present list: {ack}"
            );
            after.insert(me);
            assert!(after.is_subset(&set), "present misses members: {ack}");
        }
    }

    /// Leaves a room and rejoins it with `since`/`epoch` (the same epoch, another one, or
    /// none; a `since` past the end), while the room moves on (server messages, maybe past
    /// the history's count) and time passes (maybe past its age). Checks the replay and
    /// `recovered` against the protocol, and against the history limits where they decide.
    fn rejoin(&mut self, p: usize) {
        let rooms: Vec<String> = self.peers[p].rooms.keys().cloned().collect();
        if rooms.is_empty() {
            return;
        }
        let room = pick(&mut self.rng, &rooms).clone();
        // Nothing held back for a burst: the peer has the room up to its seq.
        self.hub.flush();
        self.drain();
        if self.peers[p].closed {
            return;
        }
        let (epoch, seq) = {
            let (e, s) = self.hub.room_position(&room).expect("member's room exists");
            (e.to_owned(), s)
        };
        let since = self.peers[p].rooms[&room] - 1;
        assert_eq!(since, seq, "peer {p} caught up in {room} before leaving");
        let peer = &mut self.peers[p];
        peer.presence.remove(&room);
        peer.views.remove(&room);
        self.text(p, json!({"type":"leave","room":room}));
        self.peers[p].rooms.remove(&room);
        if self.peers[p].closed {
            return;
        }
        // The room moves on without the peer.
        // Around the count limit: all kept at 50, the first one gone at 51 or 52.
        let sent = match self.rng.below_or_eq(9) {
            0 => HISTORY_MESSAGES + 1 + self.rng.below_or_eq(1),
            1 => HISTORY_MESSAGES,
            n => n % 5,
        };
        let mut published = 0;
        for _ in 0..sent {
            if self
                .hub
                .send_to_room(Timestamp(self.now), &room, "away", None, &[])
                .is_err()
            {
                break; // the room is gone (history off, last member left)
            }
            published += 1;
            self.drain();
        }
        let aged = if !self.peers[p].silent && self.rng.below_or_eq(3) == 0 {
            let by = self.rng.below_or_eq(HISTORY_AGE + 5_000);
            self.advance(by);
            by
        } else {
            0
        };
        if self.peers[p].closed {
            return;
        }
        let now_pos = self
            .hub
            .room_position(&room)
            .map(|(e, s)| (e.to_owned(), s));
        let variant = self.rng.below_or_eq(3);
        let (req, same_epoch) = match variant {
            0 => (
                json!({"type":"join","room":room,"since":since,"epoch":epoch}),
                true,
            ),
            1 => (
                json!({"type":"join","room":room,"since":since,"epoch":"other"}),
                false,
            ),
            2 => (json!({"type":"join","room":room,"since":since}), false),
            _ => (
                json!({"type":"join","room":room,"since":since + 1000,"epoch":epoch}),
                true,
            ),
        };
        let before = self.members(&room);
        self.peers[p].recovering = Some(room.clone());
        self.peers[p].replayed.clear();
        self.peers[p].last_ack = None;
        self.text(p, req);
        self.peers[p].recovering = None;
        if self.peers[p].closed {
            return;
        }
        let ack = self.peers[p].last_ack.clone().expect("rejoin acked");
        let replayed = std::mem::take(&mut self.peers[p].replayed);
        let recovered = ack["recovered"]
            .as_bool()
            .unwrap_or_else(|| panic!("a join with since/epoch says recovered: {ack}"));
        let latest = ack["seq"].as_u64().expect("seq");
        let ack_epoch = ack["epoch"].as_str().expect("epoch").to_owned();
        match &now_pos {
            Some((e, s)) => assert_eq!((&ack_epoch, latest), (e, *s), "{ack}"),
            None => assert_eq!(latest, 0, "a room made anew starts at 0: {ack}"),
        }
        let same = same_epoch && ack_epoch == epoch;
        if recovered {
            self.report.recovered += 1;
            assert!(
                same && variant == 0,
                "recovered only in the same epoch: {ack}"
            );
            let want: Vec<u64> = (since + 1..=latest).collect();
            assert_eq!(
                replayed, want,
                "peer {p} recovering {room} from {since}: {ack}"
            );
        } else {
            self.report.not_recovered += 1;
            if same {
                assert!(
                    replayed.is_empty(),
                    "replay without recovery: {replayed:?} {ack}"
                );
            } else {
                // another epoch: the whole history if it reaches back to seq 1, or nothing
                let whole: Vec<u64> = (1..=latest).collect();
                assert!(
                    replayed.is_empty() || replayed == whole,
                    "other epoch replays all or nothing: {replayed:?} {ack}"
                );
            }
        }
        if variant == 0 && same && self.history {
            let missed = latest - since;
            if published == sent
                && aged == 0
                && missed <= HISTORY_MESSAGES
                && self.hub.config().history.max_total_bytes > 100_000
            {
                // up to the count, just now, with bytes to spare: all kept
                assert!(
                    recovered,
                    "peer {p} missed {missed} in {room} and was not recovered: {ack}"
                );
                self.report.must_recover += 1;
            }
            if missed > HISTORY_MESSAGES || (published > 0 && aged > HISTORY_AGE + 1_000) {
                // past the count, or the missed ones are older than the age
                assert!(
                    !recovered,
                    "peer {p} recovered past the history limits: {ack}"
                );
                self.report.must_not_recover += 1;
            }
        }
        if variant == 3 {
            assert!(
                !recovered && replayed.is_empty(),
                "since past the end: {ack}"
            );
        }
        if !self.history {
            assert!(replayed.is_empty(), "replay without history: {ack}");
        }
        self.check_join_ack(p, &room, None, &before);
        self.peers[p].rooms.insert(room, latest + 1);
    }

    fn connect(&mut self) {
        let user = if self.rng.below_or_eq(3) == 0 {
            None
        } else {
            Some(pick(&mut self.rng, &USERS).to_string())
        };
        let slow = self.rng.below_or_eq(40) == 0;
        let id = self
            .hub
            .connect(
                Timestamp(self.now),
                ConnectRequest {
                    user: user.clone(),
                    ..Default::default()
                },
            )
            .expect("admitted");
        self.by_id.insert(id, self.peers.len());
        self.peers.push(Peer {
            id,
            user,
            rooms: BTreeMap::new(),
            subs: BTreeSet::new(),
            silent: false,
            slow,
            last_activity: self.now,
            closed: false,
            got: BTreeSet::new(),
            wire: String::new(),
            presence: BTreeSet::new(),
            per_user: BTreeSet::new(),
            asked_users: false,
            views: BTreeMap::new(),
            last_ack: None,
            recovering: None,
            replayed: Vec::new(),
        });
        self.drain();
        let p = self.peers.len() - 1;
        assert!(!self.peers[p].wire.is_empty(), "welcome first");
    }

    fn join(&mut self, p: usize) {
        let room = pick(&mut self.rng, &self.room_names).clone();
        // off, per connection or per user
        let (presence, asked) = match self.rng.below_or_eq(2) {
            0 => (None, json!(false)),
            1 => (Some(false), json!(true)),
            _ => (Some(true), json!("users")),
        };
        self.peers[p].asked_users = presence == Some(true);
        let already = self.peers[p].rooms.contains_key(&room);
        let mut before = self.members(&room);
        before.remove(&self.peers[p].wire.clone());
        self.peers[p].last_ack = None;
        self.text(p, json!({"type":"join","room":room,"presence":asked}));
        if self.peers[p].closed {
            return;
        }
        if self.peers[p].last_ack.is_none() {
            return; // refused (e.g. too many rooms)
        }
        self.check_join_ack(p, &room, presence, &before);
        if !already {
            let seq = self.hub.room_position(&room).expect("joined room exists").1;
            self.peers[p].rooms.insert(room, seq + 1);
        }
    }

    fn leave(&mut self, p: usize) {
        let Some(room) = self.peers[p].rooms.keys().next().cloned() else {
            return;
        };
        // Messages held for a burst may still arrive while the leave is handled.
        let peer = &mut self.peers[p];
        peer.presence.remove(&room);
        peer.views.remove(&room);
        self.text(p, json!({"type":"leave","room":room}));
        self.peers[p].rooms.remove(&room);
    }

    fn publish_room(&mut self, p: usize) {
        let mine: Vec<String> = self.peers[p].rooms.keys().cloned().collect();
        let room = if !mine.is_empty() && self.rng.below_or_eq(4) > 0 {
            pick(&mut self.rng, &mine).clone()
        } else {
            pick(&mut self.rng, &self.room_names).clone()
        };
        let echo = self.rng.below_or_eq(3) == 0;
        let member = self.peers[p].rooms.contains_key(&room);
        let before = self.hub.room_position(&room).map(|x| x.1);
        self.text(
            p,
            json!({"type":"publish","room":room,"event":"e","echo":echo,"data":{"r":1}}),
        );
        let after = self.hub.room_position(&room).map(|x| x.1);
        if member && !self.peers[p].closed {
            let seq = after.expect("room exists");
            assert_eq!(Some(seq - 1), before, "one publish, one seq");
            self.room_seq.insert(room.clone(), seq);
            if !echo {
                // the sender is excluded: it will never see this seq
                let next = self.peers[p].rooms.get_mut(&room).expect("member");
                assert_eq!(*next, seq, "sender had everything before its own message");
                *next += 1;
            }
        } else if !member {
            assert_eq!(before, after, "non-member publish changed the room");
        }
    }

    fn channel_receivers(&self, channel: &str) -> BTreeSet<usize> {
        let mut set = BTreeSet::new();
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.closed {
                continue;
            }
            let linked = channel == "news" && peer.rooms.keys().any(|r| self.linked.contains(r));
            if peer.subs.contains(channel) || linked {
                set.insert(i);
            }
        }
        set
    }

    fn publish_channel(&mut self, p: usize) {
        let channel = pick(&mut self.rng, &CHANNELS).to_string();
        let echo = self.rng.below_or_eq(3) == 0;
        let mut receivers = self.channel_receivers(&channel);
        let allowed = receivers.contains(&p);
        if !echo {
            receivers.remove(&p);
        }
        let m = self.next_msg;
        self.next_msg += 1;
        self.expected.insert(
            m,
            if allowed {
                receivers.clone()
            } else {
                BTreeSet::new()
            },
        );
        self.text(
            p,
            json!({"type":"publish","channel":channel,"event":"e","echo":echo,"data":{"m":m}}),
        );
        if allowed {
            for r in receivers {
                let peer = &self.peers[r];
                assert!(
                    peer.closed || peer.got.contains(&m),
                    "peer {r} missed channel message {m}"
                );
            }
        }
    }

    fn publish_user(&mut self, p: usize) {
        let user = pick(&mut self.rng, &USERS).to_string();
        let echo = self.rng.below_or_eq(1) == 0;
        let receivers: BTreeSet<usize> = (0..self.peers.len())
            .filter(|&i| !self.peers[i].closed && self.peers[i].user.as_deref() == Some(&user))
            .filter(|&i| echo || i != p)
            .collect();
        let m = self.next_msg;
        self.next_msg += 1;
        self.expected.insert(m, receivers.clone());
        self.text(
            p,
            json!({"type":"publish","user":user,"event":"dm","echo":echo,"data":{"m":m}}),
        );
        for r in receivers {
            let peer = &self.peers[r];
            assert!(
                peer.closed || peer.got.contains(&m),
                "peer {r} missed user message {m}"
            );
        }
    }

    fn subscribe(&mut self, p: usize) {
        let channel = pick(&mut self.rng, &CHANNELS).to_string();
        if self.rng.below_or_eq(2) == 0 {
            self.peers[p].subs.remove(&channel);
            self.text(p, json!({"type":"unsubscribe","channel":channel}));
        } else {
            self.peers[p].subs.insert(channel.clone());
            self.text(p, json!({"type":"subscribe","channel":channel}));
        }
    }

    fn disconnect(&mut self, p: usize) {
        let id = self.peers[p].id;
        let peer = &mut self.peers[p];
        peer.closed = true;
        peer.rooms.clear();
        peer.subs.clear();
        peer.presence.clear();
        peer.views.clear();
        self.hub
            .handle_disconnect(
                Timestamp(self.now),
                id,
                DisconnectReason::Closed { code: Some(1000) },
            )
            .expect("known");
        self.drain();
    }

    fn garbage(&mut self, p: usize) {
        let samples = [
            "",
            "{",
            "[]",
            "{\"type\":\"join\"}",
            "{\"type\":\"publish\",\"room\":\"\",\"event\":\"e\"}",
            "\u{0}",
        ];
        let s = pick(&mut self.rng, &samples).to_string();
        let id = self.peers[p].id;
        self.peers[p].last_activity = self.now;
        self.hub
            .handle_text(Timestamp(self.now), id, &s)
            .expect("live");
        self.drain();
    }

    /// Moves the clock forward, stopping at every hub deadline on the way.
    fn advance(&mut self, by: u64) {
        let target = self.now + by;
        loop {
            let next = self
                .hub
                .poll_timeout()
                .map(|t| t.0)
                .filter(|&t| t <= target);
            match next {
                Some(t) => {
                    self.now = self.now.max(t);
                    self.hub.handle_timeout(Timestamp(self.now));
                    self.drain();
                }
                None => break,
            }
        }
        self.now = target;
        self.hub.handle_timeout(Timestamp(self.now));
        self.drain();
    }

    fn step(&mut self, cfg: &SimConfig) {
        let roll = self.rng.below_or_eq(99);
        if self.live().is_empty() || (roll < 12 && self.peers.len() < cfg.max_peers) {
            if self.peers.len() < cfg.max_peers {
                self.connect();
            }
            return;
        }
        let Some(p) = self.random_live() else { return };
        match roll {
            0..=11 => self.join(p),
            12..=23 => self.join(p),
            24..=29 if self.recovery => self.rejoin(p),
            24..=29 => self.join(p),
            30..=37 => self.leave(p),
            38..=59 => self.publish_room(p),
            60..=67 => self.publish_channel(p),
            68..=73 => self.publish_user(p),
            74..=80 => self.subscribe(p),
            81..=83 => self.disconnect(p),
            84..=85 => self.peers[p].silent = true,
            86..=88 => self.garbage(p),
            _ => {
                let by = self.rng.below_or_eq(INTERVAL * 2);
                self.advance(by);
            }
        }
    }

    fn finish(&mut self) {
        self.hub.flush();
        self.drain();
        // every member still in a room has received everything up to the room's seq
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.closed {
                continue;
            }
            for (room, next) in &peer.rooms {
                let seq = self
                    .hub
                    .room_position(room)
                    .expect("member's room exists")
                    .1;
                assert_eq!(*next, seq + 1, "peer {i} in {room} is missing messages");
            }
        }
        // every presence view matches the room's membership, once the window is over
        if self.presence_batch_ms > 0 {
            self.report.batched_runs += 1;
            // (a peer the heartbeat reaps meanwhile opens another window)
            loop {
                let closed = |s: &Sim| s.peers.iter().filter(|q| q.closed).count();
                let before = (self.report.presence, closed(self));
                self.advance(self.presence_batch_ms);
                if (self.report.presence, closed(self)) == before {
                    break;
                }
            }
        }
        let mut views = 0;
        for (i, peer) in self.peers.iter().enumerate() {
            if peer.closed {
                continue;
            }
            for (room, view) in &peer.views {
                let per_user = peer.per_user.contains(room);
                assert_eq!(
                    *view,
                    self.member_keys(room, per_user),
                    "peer {i}'s presence view of {room} (per user: {per_user})"
                );
                views += 1;
                self.report.user_views += u64::from(per_user);
            }
        }
        self.report.presence_views += views;
        for p in self.live() {
            // Disconnecting one may get another closed as slow on the way (its room's
            // held burst is flushed): it is gone already.
            if !self.peers[p].closed {
                self.disconnect(p);
            }
        }
        // history keeps empty rooms for its age; then everything must be gone
        self.advance(60_000);
        self.hub
            .remove_room(Timestamp(self.now), "nonexistent")
            .ok();
        // the server-created channel (and the rooms it links) stay by design
        let _ = self
            .hub
            .unlink_room(Timestamp(self.now), "news", &self.room_names[0].clone());
        let _ = self
            .hub
            .unlink_room(Timestamp(self.now), "news", &self.room_names[1].clone());
        for r in self.linked.clone() {
            let _ = self.hub.remove_room(Timestamp(self.now), &r);
        }
        self.advance(60_000);
        let stats = self.hub.stats();
        assert_eq!(stats.connections, 0);
        assert_eq!(stats.users, 0);
        assert_eq!(
            stats.rooms,
            0,
            "rooms left: {:?}",
            self.hub.rooms().collect::<Vec<_>>()
        );
        assert_eq!(stats.channels, 1, "only the server channel remains");
        assert_eq!(self.hub.poll_timeout(), None, "no timers once empty");
    }
}

/// Runs one seed to completion, panicking on the first broken invariant.
pub fn run_seed(seed: u64, cfg: &SimConfig) -> SimReport {
    let mut sim = Sim::new(seed, cfg);
    for _ in 0..cfg.steps {
        sim.step(cfg);
    }
    sim.finish();
    let _ = sim.max_buffered;
    let _ = &sim.room_seq;
    sim.report
}
