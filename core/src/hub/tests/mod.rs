//! Hub unit tests: protocol behaviour from PROTOCOL.md, one rule at a time, no I/O.
//! The harness is here; the tests are split by the part of the hub they exercise.

use super::*;
use crate::hash::Map as HashMap;
use serde_json::{json, Value};

mod auth;
mod backplane;
mod connections;
mod decisions;
mod dispatch;
mod fanout;
mod history;
mod membership;
mod presence;
mod server_api;
mod snapshot;

struct T {
    hub: Hub,
    now: u64,
    inbox: HashMap<ConnId, Vec<Value>>,
    closes: Vec<(ConnId, u16, String)>,
    pings: Vec<ConnId>,
    events: Vec<Event>,
    forwards: Vec<Forward>,
    raw: HashMap<ConnId, Vec<String>>,
    decisions: Vec<Decision>,
    appends: Vec<Append>,
    loads: Vec<Load>,
    controls: Vec<Control>,
}

impl T {
    fn new() -> T {
        T::with(HubConfig::default())
    }

    fn with(config: HubConfig) -> T {
        T {
            hub: Hub::new(config, [7; 32], Timestamp(0)),
            now: 0,
            inbox: HashMap::default(),
            closes: Vec::new(),
            pings: Vec::new(),
            events: Vec::new(),
            forwards: Vec::new(),
            raw: HashMap::default(),
            decisions: Vec::new(),
            appends: Vec::new(),
            loads: Vec::new(),
            controls: Vec::new(),
        }
    }

    fn drain(&mut self) {
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::Send { conn, msg } => {
                    let v: Value = serde_json::from_str(msg.text()).expect("server sends JSON");
                    self.hub.handle_flushed(conn, msg.wire_len()).ok();
                    self.inbox.entry(conn).or_default().push(v);
                    self.raw
                        .entry(conn)
                        .or_default()
                        .push(msg.text().to_owned());
                }
                Output::SendFrames { conn, frames } => {
                    self.hub.handle_flushed(conn, frames.wire_len()).ok();
                    for text in frames.texts() {
                        let v: Value = serde_json::from_str(text).expect("server sends JSON");
                        self.inbox.entry(conn).or_default().push(v);
                        self.raw.entry(conn).or_default().push(text.to_owned());
                    }
                }
                Output::Close { conn, code, reason } => {
                    self.closes.push((conn, code, reason.into_owned()))
                }
                Output::Ping { conn } => self.pings.push(conn),
                Output::Event(e) => self.events.push(e),
                Output::Forward(f) => self.forwards.push(*f),
                Output::Decide(d) => self.decisions.push(*d),
                Output::Append(a) => self.appends.push(*a),
                Output::Load(l) => self.loads.push(*l),
                Output::Control(c) => self.controls.push(*c),
            }
        }
    }

    fn connect(&mut self, user: Option<&str>) -> ConnId {
        let (id, w) = self.connect_with(ConnectRequest {
            user: user.map(str::to_owned),
            ..Default::default()
        });
        assert_eq!(w.len(), 1);
        id
    }

    /// Admits `req` (it must be) and returns what the connection got first, which
    /// starts with its `welcome`.
    fn connect_with(&mut self, req: ConnectRequest) -> (ConnId, Vec<Value>) {
        let id = self
            .hub
            .connect(Timestamp(self.now), req)
            .expect("admitted");
        self.drain();
        let got = self.take(id);
        assert_eq!(got[0]["type"], "welcome", "{got:?}");
        (id, got)
    }

    fn send(&mut self, id: ConnId, v: Value) {
        self.text(id, &v.to_string());
    }

    fn text(&mut self, id: ConnId, t: &str) {
        self.hub.handle_text(Timestamp(self.now), id, t).unwrap();
        self.drain();
        self.hub.check_invariants();
    }

    fn take(&mut self, id: ConnId) -> Vec<Value> {
        self.inbox.remove(&id).unwrap_or_default()
    }

    /// Sends a request and returns the single reply.
    fn ask(&mut self, id: ConnId, v: Value) -> Value {
        self.send(id, v);
        let mut r = self.take(id);
        assert_eq!(r.len(), 1, "expected one reply, got {r:?}");
        r.pop().unwrap()
    }

    fn join(&mut self, id: ConnId, room: &str) -> Value {
        let a = self.ask(id, json!({"type":"join","room":room}));
        assert_eq!(a["type"], "ack", "{a}");
        a
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
        self.hub.handle_timeout(Timestamp(self.now));
        self.drain();
        self.hub.check_invariants();
    }
}

fn code(v: &Value) -> &str {
    assert_eq!(v["type"], "error", "{v}");
    v["code"].as_str().unwrap()
}

impl T {
    /// The raw text of the last message to `id` (checks exact bytes).
    fn hub_raw_last(&mut self, id: ConnId) -> String {
        self.take(id);
        self.raw
            .remove(&id)
            .unwrap_or_default()
            .pop()
            .expect("a message")
    }
}

fn history_hub() -> T {
    T::with(HubConfig {
        history: HistoryConfig {
            max_messages: 3,
            max_age_ms: 60_000,
            ..Default::default()
        },
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..Default::default()
        },
        ..Default::default()
    })
}

impl T {
    fn take_last_ack_like(&self, epoch: &str, seq: u64, members: u64) -> Value {
        json!({"type":"ack","room":"r","members":members,"epoch":epoch,"seq":seq,"recovered":true})
    }
}

/// Publishes `n` times, flushing each as a batch end, and drops every output unread (so
/// no one reports flushed bytes): the members' backlogs grow. Nobody may be closed yet.
fn publish_unread(t: &mut T, p: ConnId, publish: &str, n: usize) {
    for _ in 0..n {
        t.hub.handle_text(Timestamp(0), p, publish).unwrap();
        t.hub.flush();
        while let Some(o) = t.hub.poll_output() {
            assert!(!matches!(o, Output::Close { .. }), "{o:?}");
        }
    }
}
