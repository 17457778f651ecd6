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
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            max_peers: 120,
            rooms: 6,
            steps: 250,
            history: false,
        }
    }
}

const INTERVAL: u64 = 1_000;
const MAX_MISSED: u32 = 2;
const CHANNELS: [&str; 3] = ["alerts", "news", "topic"];
const USERS: [&str; 4] = ["ann", "bob", "cy", "dee"];

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
}

fn pick<'a, T>(rng: &mut Rng, items: &'a [T]) -> &'a T {
    &items[rng.below_or_eq(items.len() as u64 - 1) as usize]
}

impl Sim {
    fn new(seed: u64, cfg: &SimConfig) -> Sim {
        let mut rng = Rng::from_u64(seed);
        let mut hub_seed = [0u8; 32];
        rng.fill(&mut hub_seed);
        let max_buffered = 1500;
        let config = HubConfig {
            heartbeat: HeartbeatConfig {
                interval_ms: INTERVAL,
                timeout_ms: INTERVAL,
                max_missed: MAX_MISSED,
                server_pings: true,
            },
            history: HistoryConfig {
                max_messages: if cfg.history { 50 } else { 0 },
                max_age_ms: 20_000,
                // below what 50 messages in every room take: the budget evicts too
                max_total_bytes: 6_000,
            },
            max_buffered_bytes: max_buffered,
            coalesce_room_messages: seed % 2 == 1,
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
                        (1008, "slow consumer") => {
                            assert!(peer.slow, "fast peer closed as slow");
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
            }
        }
        self.hub.check_invariants();
    }

    fn receive(&mut self, p: usize, v: &Value) {
        match v["type"].as_str().expect("typed") {
            "message" => {
                if let Some(room) = v["room"].as_str() {
                    let seq = v["seq"].as_u64().expect("room messages carry seq");
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
            "presence" => self.report.presence += 1,
            "error" => self.report.errors += 1,
            "ack" | "pong" | "welcome" => {}
            other => panic!("unknown message type {other}"),
        }
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
        });
        self.drain();
    }

    fn join(&mut self, p: usize) {
        let room = pick(&mut self.rng, &self.room_names).clone();
        let presence = self.rng.below_or_eq(1) == 0;
        let already = self.peers[p].rooms.contains_key(&room);
        self.text(p, json!({"type":"join","room":room,"presence":presence}));
        if self.peers[p].closed {
            return;
        }
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
            12..=29 => self.join(p),
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
