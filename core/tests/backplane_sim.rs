//! Several hubs sharing rooms through a backplane, deterministic: an in-memory backplane
//! plays Redis (one log per room, seq assigned with the append, pub/sub to the nodes
//! that follow the room), with seeded delays, pub/sub links that drop messages and then
//! reconnect (the adapter reports `BackplaneResync`), and loads answered late.
//!
//! Invariants, per seed: every member on every node sees its rooms' messages in seq
//! order, contiguous from its join position to the log's end, each message the one the
//! log holds at that seq; every publisher's ack names the seq its message has in the
//! log; recovery on another node replays exactly what was missed. No one is
//! disconnected: every gap is repaired from the log.

use std::collections::{BTreeMap, BTreeSet};

use roomcast_core::hub::{
    Append, AppendTicket, ConnectRequest, HeartbeatConfig, HistoryConfig, HubConfig, Load, Loaded,
    Output,
};
use roomcast_core::rng::Rng;
use roomcast_core::{ConnId, Hub, Timestamp};
use serde_json::{json, Value};

const NODES: usize = 3;
const ROOMS: [&str; 2] = ["r0", "r1"];
/// Entries the backplane keeps per room (long enough that no gap outlives the log here).
const MAX_LOG: usize = 10_000;

/// What the backplane holds for one room.
#[derive(Default)]
struct RoomLog {
    epoch: String,
    entries: Vec<(u64, String)>,
}

/// Something due at a time.
enum Due {
    /// The backplane runs a node's append (appends of one node reach it in order).
    Append { node: usize, append: Append },
    /// A published log entry reaches a node (per node in order, over one link).
    Logged {
        node: usize,
        room: String,
        epoch: String,
        seq: u64,
        body: String,
    },
    /// The answer to an append reaches its node.
    Appended {
        node: usize,
        ticket: AppendTicket,
        epoch: String,
        seq: u64,
    },
    /// The answer to a load reaches its node.
    Loaded {
        node: usize,
        room: String,
        loaded: Loaded,
    },
    /// A node's link came back after dropping messages.
    Resync { node: usize },
}

/// One client connection, as the test sees it.
struct Peer {
    node: usize,
    id: ConnId,
    /// Per room: the seq its join acked, then every room message seq and data received.
    joined: BTreeMap<String, u64>,
    got: BTreeMap<String, Vec<(u64, Value)>>,
    /// Acked publishes: (room, seq, data).
    acked: Vec<(String, u64, Value)>,
    /// Publishes by request id, waiting for their ack.
    sent: BTreeMap<u64, (String, Value)>,
    closed: bool,
}

struct World {
    rng: Rng,
    now: u64,
    seq: u64,
    hubs: Vec<Hub>,
    peers: Vec<Peer>,
    logs: BTreeMap<String, RoomLog>,
    /// Rooms each node follows (it asked for a load).
    follows: Vec<BTreeSet<String>>,
    due: BTreeMap<(u64, u64), Due>,
    /// The last time something was due on a node's link (keeps it in order).
    link_at: Vec<u64>,
    append_at: Vec<u64>,
    drops: u32,
    resyncs: u32,
    next_req: u64,
    epochs: u32,
}

impl World {
    fn new(seed: u64) -> World {
        let config = HubConfig {
            backplane: true,
            backplane_timeout_ms: 60_000,
            heartbeat: HeartbeatConfig {
                server_pings: false,
                ..HeartbeatConfig::default()
            },
            history: HistoryConfig {
                max_messages: 200,
                max_age_ms: 600_000,
                ..HistoryConfig::default()
            },
            ..HubConfig::default()
        };
        let hubs = (0..NODES)
            .map(|n| {
                let mut s = [0u8; 32];
                s[0] = n as u8;
                s[1..9].copy_from_slice(&seed.to_le_bytes());
                Hub::new(config.clone(), s, Timestamp(0))
            })
            .collect();
        World {
            rng: Rng::from_u64(seed),
            now: 0,
            seq: 0,
            hubs,
            peers: Vec::new(),
            logs: BTreeMap::new(),
            follows: vec![BTreeSet::new(); NODES],
            due: BTreeMap::new(),
            link_at: vec![0; NODES],
            append_at: vec![0; NODES],
            drops: 0,
            resyncs: 0,
            next_req: 0,
            epochs: 0,
        }
    }

    fn at(&mut self, t: u64, d: Due) {
        self.seq += 1;
        self.due.insert((t, self.seq), d);
    }

    fn delay(&mut self, max: u64) -> u64 {
        self.rng.below_or_eq(max)
    }

    /// Drains a node's outputs into the backplane and the peers.
    fn drain(&mut self, node: usize) {
        while let Some(o) = self.hubs[node].poll_output() {
            match o {
                Output::Send { conn, msg } => {
                    let _ = self.hubs[node].handle_flushed(conn, msg.wire_len());
                    let v: Value = serde_json::from_str(msg.text()).unwrap();
                    self.receive(node, conn, v);
                }
                Output::SendFrames { conn, frames } => {
                    let _ = self.hubs[node].handle_flushed(conn, frames.wire_len());
                    for t in frames.texts() {
                        let v: Value = serde_json::from_str(t).unwrap();
                        self.receive(node, conn, v);
                    }
                }
                Output::Close { conn, code, reason } => {
                    panic!("node {node} closed {conn:?} {code} {reason}: no one should be")
                }
                Output::Append(a) => {
                    let t = self.append_at[node].max(self.now) + self.delay(5);
                    self.append_at[node] = t;
                    self.at(t, Due::Append { node, append: *a });
                }
                Output::Load(l) => self.load(node, *l),
                _ => {}
            }
        }
        self.hubs[node].check_invariants();
    }

    fn receive(&mut self, node: usize, conn: ConnId, v: Value) {
        let p = self
            .peers
            .iter_mut()
            .find(|p| p.node == node && p.id == conn && !p.closed)
            .expect("a message for a known peer");
        match v["type"].as_str().unwrap() {
            "message" => {
                let room = v["room"].as_str().unwrap().to_owned();
                p.got
                    .entry(room)
                    .or_default()
                    .push((v["seq"].as_u64().unwrap(), v["data"].clone()));
            }
            "ack" if v.get("room").is_some() && v.get("members").is_some() => {
                let room = v["room"].as_str().unwrap().to_owned();
                // a recovery's position was set when it was sent
                p.joined.entry(room).or_insert(v["seq"].as_u64().unwrap());
            }
            "ack" if v.get("seq").is_some() => {
                let id = v["id"].as_u64().unwrap();
                let (room, data) = p.sent.remove(&id).expect("an ack for a sent publish");
                p.acked.push((room, v["seq"].as_u64().unwrap(), data));
            }
            "ack" => {}
            "error" => panic!("node {node}: {v}"),
            _ => {}
        }
    }

    /// A node follows `room` and reads its log: answered after a delay, with what the
    /// log holds then (so messages published meanwhile may come both ways).
    fn load(&mut self, node: usize, l: Load) {
        let room = l.room.to_string();
        self.follows[node].insert(room.clone());
        let log = self.log(&room);
        let top = log.entries.last().map_or(0, |e| e.0);
        let entries = match l.after {
            None => Vec::new(),
            Some(a) => log
                .entries
                .iter()
                .filter(|(s, _)| *s > a)
                .map(|(s, b)| (*s, b.clone().into_boxed_str()))
                .collect(),
        };
        let loaded = Loaded {
            epoch: log.epoch.as_str().into(),
            top,
            after: l.after,
            entries,
        };
        let t = self.now + self.delay(20);
        self.at(t, Due::Loaded { node, room, loaded });
    }

    fn log(&mut self, room: &str) -> &mut RoomLog {
        if !self.logs.contains_key(room) {
            self.epochs += 1;
            let epoch = format!("e{}", self.epochs);
            self.logs.insert(
                room.to_owned(),
                RoomLog {
                    epoch,
                    entries: Vec::new(),
                },
            );
        }
        self.logs.get_mut(room).unwrap()
    }

    /// The backplane runs one append: the next seq, the log, pub/sub to followers.
    fn run_append(&mut self, node: usize, a: Append) {
        let room = a.room.to_string();
        let log = self.log(&room);
        let seq = log.entries.last().map_or(0, |e| e.0) + 1;
        log.entries.push((seq, a.body.to_string()));
        if log.entries.len() > MAX_LOG {
            log.entries.remove(0);
        }
        let epoch = log.epoch.clone();
        let t = self.now + self.delay(3);
        self.at(
            t,
            Due::Appended {
                node,
                ticket: a.ticket,
                epoch: epoch.clone(),
                seq,
            },
        );
        for n in 0..NODES {
            if !self.follows[n].contains(&room) {
                continue;
            }
            // a link that drops this message, then comes back and says so
            if self.rng.below_or_eq(99) < 4 {
                self.drops += 1;
                if self.rng.below_or_eq(1) == 0 {
                    let t = self.now + 30 + self.delay(30);
                    self.at(t, Due::Resync { node: n });
                }
                continue;
            }
            let t = self.link_at[n].max(self.now) + self.delay(10);
            self.link_at[n] = t;
            self.at(
                t,
                Due::Logged {
                    node: n,
                    room: room.clone(),
                    epoch: epoch.clone(),
                    seq,
                    body: a.body.to_string(),
                },
            );
        }
    }

    fn step_due(&mut self, d: Due) {
        let now = Timestamp(self.now);
        let node = match d {
            Due::Append { node, append } => {
                self.run_append(node, append);
                return;
            }
            Due::Logged {
                node,
                room,
                epoch,
                seq,
                body,
            } => {
                self.hubs[node].handle_logged(now, &room, &epoch, seq, &body);
                node
            }
            Due::Appended {
                node,
                ticket,
                epoch,
                seq,
            } => {
                self.hubs[node].handle_appended(now, ticket, Ok((epoch.as_str().into(), seq)));
                node
            }
            Due::Loaded { node, room, loaded } => {
                self.hubs[node].handle_loaded(now, &room, loaded);
                node
            }
            Due::Resync { node } => {
                self.resyncs += 1;
                self.hubs[node].handle_backplane_resync(now);
                node
            }
        };
        self.drain(node);
    }

    fn connect(&mut self, node: usize) -> usize {
        let id = self.hubs[node]
            .connect(Timestamp(self.now), ConnectRequest::default())
            .unwrap();
        self.peers.push(Peer {
            node,
            id,
            joined: BTreeMap::new(),
            got: BTreeMap::new(),
            acked: Vec::new(),
            sent: BTreeMap::new(),
            closed: false,
        });
        self.drain(node);
        self.peers.len() - 1
    }

    fn send(&mut self, p: usize, v: Value) {
        let (node, id) = (self.peers[p].node, self.peers[p].id);
        self.hubs[node]
            .handle_text(Timestamp(self.now), id, &v.to_string())
            .unwrap();
        self.drain(node);
    }

    fn publish(&mut self, p: usize, room: &str) {
        self.next_req += 1;
        let data = json!({"n": self.next_req});
        self.peers[p]
            .sent
            .insert(self.next_req, (room.to_owned(), data.clone()));
        let msg = json!({"type":"publish","room":room,"event":"m","data":data,"echo":true,"id":self.next_req});
        self.send(p, msg);
    }

    /// Runs everything due up to `until`.
    fn run_until(&mut self, until: u64) {
        while let Some((&(t, k), _)) = self.due.first_key_value() {
            if t > until {
                break;
            }
            let d = self.due.remove(&(t, k)).unwrap();
            self.now = self.now.max(t);
            self.step_due(d);
        }
        self.now = self.now.max(until);
        for n in 0..NODES {
            self.hubs[n].handle_timeout(Timestamp(self.now));
            self.drain(n);
        }
    }
}

fn body_data(body: &str) -> Value {
    let v: Value = serde_json::from_str(body).unwrap();
    v["d"].clone()
}

fn run(seed: u64) -> (u32, u32, usize) {
    let mut w = World::new(seed);
    // members on every node, some joining later with recovery on another node
    for n in 0..NODES {
        for _ in 0..2 {
            let p = w.connect(n);
            for room in ROOMS {
                w.send(p, json!({"type":"join","room":room,"id":0}));
            }
        }
    }
    w.run_until(100);
    let mut moved = 0;
    for step in 0..400 {
        let p = w.rng.below_or_eq(w.peers.len() as u64 - 1) as usize;
        if w.peers[p].closed {
            continue;
        }
        let room = ROOMS[w.rng.below_or_eq(1) as usize];
        w.publish(p, room);
        // now and then a member "reconnects" to another node and recovers from its
        // last seq there
        if step % 50 == 49 {
            let q = w.rng.below_or_eq(w.peers.len() as u64 - 1) as usize;
            if !w.peers[q].closed && w.peers[q].got.contains_key("r0") {
                let node = (w.peers[q].node + 1) % NODES;
                let last = w.peers[q].got["r0"].last().map(|m| m.0).unwrap();
                let epoch = w.logs["r0"].epoch.clone();
                let (old_node, old_id) = (w.peers[q].node, w.peers[q].id);
                w.hubs[old_node]
                    .handle_disconnect(
                        Timestamp(w.now),
                        old_id,
                        roomcast_core::hub::DisconnectReason::Closed { code: Some(1000) },
                    )
                    .unwrap();
                w.drain(old_node);
                w.peers[q].closed = true;
                let r = w.connect(node);
                w.peers[r].joined.insert("r0".into(), last);
                w.send(
                    r,
                    json!({"type":"join","room":"r0","since":last,"epoch":epoch,"id":0}),
                );
                w.send(r, json!({"type":"join","room":"r1","id":0}));
                moved += 1;
            }
        }
        let until = w.now + w.delay(8);
        w.run_until(until);
    }
    // quiesce: deliver everything, then every link checks its position once more (what
    // a periodic check or the next message would find)
    w.run_until(w.now + 1_000);
    for n in 0..NODES {
        w.hubs[n].handle_backplane_resync(Timestamp(w.now));
        w.drain(n);
    }
    w.run_until(w.now + 1_000);

    for (i, p) in w.peers.iter().enumerate() {
        // a peer that left with publishes in flight is answered by no one
        assert!(
            p.closed || p.sent.is_empty(),
            "seed {seed}: peer {i} has unacked publishes"
        );
        for (room, seq, data) in &p.acked {
            let log = &w.logs[room];
            let entry = log.entries.iter().find(|e| e.0 == *seq).unwrap();
            assert_eq!(
                &body_data(&entry.1),
                data,
                "seed {seed}: ack names another message"
            );
        }
        for room in ROOMS {
            let Some(&from) = p.joined.get(room) else {
                continue;
            };
            let got = p.got.get(room).map(Vec::as_slice).unwrap_or_default();
            let seqs: Vec<u64> = got.iter().map(|m| m.0).collect();
            let log = &w.logs[room];
            let top = if p.closed {
                seqs.last().copied().unwrap_or(from)
            } else {
                log.entries.last().map_or(0, |e| e.0)
            };
            let want: Vec<u64> = (from + 1..=top).collect();
            assert_eq!(
                seqs, want,
                "seed {seed}: peer {i} (node {}) in {room}",
                p.node
            );
            for (seq, data) in got {
                let entry = log.entries.iter().find(|e| e.0 == *seq).unwrap();
                assert_eq!(&body_data(&entry.1), data, "seed {seed}: {room} seq {seq}");
            }
        }
    }
    (w.drops, w.resyncs, moved)
}

#[test]
fn nodes_sharing_a_backplane_agree_on_every_rooms_sequence() {
    let (mut drops, mut resyncs, mut moved) = (0, 0, 0);
    for seed in 0..30 {
        let (d, r, m) = run(seed);
        drops += d;
        resyncs += r;
        moved += m;
    }
    // the faults did happen
    assert!(
        drops > 100 && resyncs > 50 && moved > 100,
        "{drops} {resyncs} {moved}"
    );
}
