//! Hub unit tests: protocol behaviour from PROTOCOL.md, one rule at a time, no I/O.

use crate::hash::Map as HashMap;

use std::sync::Arc;

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::*;
use crate::ratelimit::RateLimit;

struct T {
    hub: Hub,
    now: u64,
    inbox: HashMap<ConnId, Vec<Value>>,
    closes: Vec<(ConnId, u16, String)>,
    pings: Vec<ConnId>,
    events: Vec<Event>,
    forwards: Vec<Forward>,
    raw: HashMap<ConnId, Vec<String>>,
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
            }
        }
    }

    fn connect(&mut self, user: Option<&str>) -> ConnId {
        let id = self
            .hub
            .connect(
                Timestamp(self.now),
                ConnectRequest {
                    user: user.map(str::to_owned),
                    ..Default::default()
                },
            )
            .expect("admitted");
        self.drain();
        let w = self.take(id);
        assert_eq!(w.len(), 1);
        assert_eq!(w[0]["type"], "welcome");
        id
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

#[test]
fn welcome_has_conn_user_and_heartbeat() {
    let mut t = T::new();
    let id = t
        .hub
        .connect(
            Timestamp(0),
            ConnectRequest {
                user: Some("ann".into()),
                ..Default::default()
            },
        )
        .unwrap();
    t.drain();
    let w = &t.take(id)[0];
    assert_eq!(w["type"], "welcome");
    assert!(!w["conn"].as_str().unwrap().is_empty());
    assert_eq!(w["user"], "ann");
    assert_eq!(
        w["heartbeat"],
        json!({"interval_ms":25000,"timeout_ms":20000})
    );
    let anon = t.connect(None);
    assert_ne!(anon, id);
    assert!(matches!(t.events[0], Event::Connected { .. }));
}

#[test]
fn anonymous_welcome_has_null_user() {
    let mut t = T::new();
    let id = t
        .hub
        .connect(Timestamp(0), ConnectRequest::default())
        .unwrap();
    t.drain();
    assert_eq!(t.take(id)[0]["user"], Value::Null);
}

#[test]
fn bad_user_and_full_server_refused() {
    let mut t = T::with(HubConfig {
        max_connections: 1,
        ..Default::default()
    });
    assert_eq!(
        t.hub.connect(
            Timestamp(0),
            ConnectRequest {
                user: Some(String::new()),
                ..Default::default()
            }
        ),
        Err(ConnectError::BadUser)
    );
    t.connect(None);
    assert_eq!(
        t.hub.connect(Timestamp(0), ConnectRequest::default()),
        Err(ConnectError::Full)
    );
}

#[test]
fn ids_are_never_reused() {
    let mut t = T::new();
    let a = t.connect(None);
    t.hub
        .handle_disconnect(
            Timestamp(0),
            a,
            DisconnectReason::Closed { code: Some(1000) },
        )
        .unwrap();
    let b = t.connect(None);
    assert_ne!(a, b);
    assert_eq!(a.slot(), b.slot(), "slot reused, id not");
    assert!(t.hub.handle_text(Timestamp(0), a, "{}").is_err());
}

#[test]
fn join_ack_fields_and_presence_only_to_watchers() {
    let mut t = T::new();
    let a = t.connect(Some("a"));
    let b = t.connect(Some("b"));
    let c = t.connect(Some("c"));
    let ack = t.ask(
        a,
        json!({"type":"join","room":"lobby","id":1,"presence":true}),
    );
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["room"], "lobby");
    assert_eq!(ack["members"], 1);
    assert_eq!(ack["seq"], 0);
    assert!(ack["epoch"].is_string());
    assert!(ack.get("recovered").is_none());
    assert_eq!(ack["present"].as_array().unwrap().len(), 1);
    t.join(b, "lobby"); // no presence for b
    let p = t.take(a);
    assert_eq!(
        p,
        vec![
            json!({"type":"presence","room":"lobby","joined":[{"conn": t.hub.connection(b).unwrap().wire_id,"user":"b"}]})
        ]
    );
    let ack = t.ask(c, json!({"type":"join","room":"lobby","presence":true}));
    assert_eq!(ack["members"], 3);
    assert_eq!(ack["present"].as_array().unwrap().len(), 3);
    assert_eq!(t.take(a).len(), 1);
    assert!(t.take(b).is_empty(), "b did not ask for presence");
    // leave → left to a and c
    let ack = t.ask(b, json!({"type":"leave","room":"lobby","id":"x"}));
    assert_eq!(ack, json!({"type":"ack","id":"x","room":"lobby"}));
    assert_eq!(t.take(a)[0]["left"][0]["user"], "b");
    assert_eq!(t.take(c)[0]["left"][0]["user"], "b");
    // disconnect counts as leaving
    t.hub
        .handle_disconnect(Timestamp(0), c, DisconnectReason::Closed { code: None })
        .unwrap();
    t.drain();
    assert_eq!(t.take(a)[0]["left"][0]["user"], "c");
}

#[test]
fn second_join_acks_without_presence_change() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    t.ask(a, json!({"type":"join","room":"r","presence":true}));
    t.join(b, "r");
    t.take(a);
    let ack = t.join(b, "r");
    assert_eq!(ack["members"], 2);
    assert!(t.take(a).is_empty());
    // switching presence on for b
    t.ask(b, json!({"type":"join","room":"r","presence":true}));
    t.hub
        .handle_disconnect(Timestamp(0), a, DisconnectReason::Closed { code: None })
        .unwrap();
    t.drain();
    assert_eq!(t.take(b)[0]["type"], "presence");
}

#[test]
fn room_publish_echo_exclusion_seq_and_ack() {
    let mut t = T::new();
    let a = t.connect(Some("ann"));
    let b = t.connect(None);
    let c = t.connect(None);
    for x in [a, b, c] {
        t.join(x, "r");
    }
    let ack = t.ask(
        a,
        json!({"type":"publish","room":"r","event":"say","data":{"t":"hi"},"id":9}),
    );
    assert_eq!(ack, json!({"type":"ack","id":9,"delivered":2,"seq":1}));
    let got = t.take(b);
    assert_eq!(
        got,
        vec![
            json!({"type":"message","room":"r","seq":1,"event":"say","from":{"conn":t.hub.connection(a).unwrap().wire_id,"user":"ann"},"data":{"t":"hi"}})
        ]
    );
    assert_eq!(t.take(c).len(), 1);
    // echo: sender gets it too, before the ack
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"say","echo":true}),
    );
    let mine = t.take(a);
    assert_eq!(mine[0]["type"], "message");
    assert_eq!(mine[0]["seq"], 2);
    assert_eq!(mine[0]["data"], Value::Null);
    assert_eq!(mine[1]["delivered"], 3);
    assert_eq!(t.take(b)[0]["seq"], 2);
}

#[test]
fn publish_requires_membership() {
    let mut t = T::new();
    let a = t.connect(None);
    let e = t.ask(
        a,
        json!({"type":"publish","room":"nowhere","event":"e","id":1}),
    );
    assert_eq!(code(&e), "not_member");
    assert_eq!(e["id"], 1);
    let e = t.ask(a, json!({"type":"leave","room":"nowhere"}));
    assert_eq!(code(&e), "not_member");
    assert!(e.get("id").is_none());
    let e = t.ask(a, json!({"type":"publish","channel":"nowhere","event":"e"}));
    assert_eq!(code(&e), "not_member");
}

#[test]
fn channels_subscribers_and_linked_rooms_receive_once() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    let c = t.connect(None);
    t.hub
        .create_channel(Timestamp(t.now), "news", &["r1", "r2"])
        .unwrap();
    t.join(a, "r1");
    t.join(a, "r2");
    t.ask(a, json!({"type":"subscribe","channel":"news"}));
    t.join(b, "r2");
    let ack = t.ask(c, json!({"type":"subscribe","channel":"news","id":2}));
    assert_eq!(ack, json!({"type":"ack","id":2,"channel":"news"}));
    let ack = t.ask(
        b,
        json!({"type":"publish","channel":"news","event":"flash","data":1}),
    );
    assert_eq!(ack["delivered"], 2);
    assert!(ack.get("seq").is_none());
    let got = t.take(a);
    assert_eq!(got.len(), 1, "a is reachable three ways and gets it once");
    assert_eq!(got[0]["channel"], "news");
    assert!(got[0].get("room").is_none());
    assert_eq!(t.take(c).len(), 1);
    // server send reaches all three
    let d = t
        .hub
        .send_to_channel(Timestamp(t.now), "news", "x", None, &[])
        .unwrap();
    assert_eq!(d.delivered, 3);
    // unsubscribe: c no longer receives; repeated unsubscribe still acked
    t.drain();
    for x in [a, b, c] {
        t.take(x);
    }
    t.ask(c, json!({"type":"unsubscribe","channel":"news"}));
    let again = t.ask(c, json!({"type":"unsubscribe","channel":"news"}));
    assert_eq!(again["type"], "ack");
    let e = t.ask(c, json!({"type":"publish","channel":"news","event":"e"}));
    assert_eq!(code(&e), "not_member");
    assert_eq!(
        t.hub
            .send_to_channel(Timestamp(t.now), "news", "x", None, &[])
            .unwrap()
            .delivered,
        2
    );
    // unlink r2: b is no longer reached
    t.hub.unlink_room(Timestamp(t.now), "news", "r2").unwrap();
    assert_eq!(
        t.hub
            .send_to_channel(Timestamp(t.now), "news", "x", None, &[])
            .unwrap()
            .delivered,
        1
    );
}

#[test]
fn client_created_channel_disappears_with_its_last_subscriber() {
    let mut t = T::new();
    let a = t.connect(None);
    t.ask(a, json!({"type":"subscribe","channel":"topic"}));
    let again = t.ask(a, json!({"type":"subscribe","channel":"topic"}));
    assert_eq!(again["type"], "ack");
    assert_eq!(t.hub.stats().channels, 1);
    t.ask(a, json!({"type":"unsubscribe","channel":"topic"}));
    assert_eq!(t.hub.stats().channels, 0);
}

#[test]
fn user_targeting_reaches_every_device() {
    let mut t = T::new();
    let phone = t.connect(Some("zoe"));
    let laptop = t.connect(Some("zoe"));
    let other = t.connect(Some("max"));
    let ack = t.ask(
        other,
        json!({"type":"publish","user":"zoe","event":"dm","data":"hey"}),
    );
    assert_eq!(ack["delivered"], 2);
    assert_eq!(t.take(phone)[0]["user"], "zoe");
    assert_eq!(t.take(laptop).len(), 1);
    // to my own other devices: not to the sender unless echo
    let ack = t.ask(phone, json!({"type":"publish","user":"zoe","event":"sync"}));
    assert_eq!(ack["delivered"], 1);
    assert_eq!(t.take(laptop).len(), 1);
    let ack = t.ask(
        other,
        json!({"type":"publish","user":"nobody","event":"dm"}),
    );
    assert_eq!(ack["delivered"], 0);
    assert_eq!(t.hub.stats().users, 2);
}

#[test]
fn ping_pong_with_and_without_id() {
    let mut t = T::new();
    let a = t.connect(None);
    t.text(a, r#"{"type":"ping"}"#);
    let r = t.hub_raw_last(a);
    assert_eq!(r, r#"{"type":"pong"}"#);
    let p = t.ask(a, json!({"type":"ping","id":"abc"}));
    assert_eq!(p, json!({"type":"pong","id":"abc"}));
    let p = t.ask(a, json!({"id":5,"type":"ping"}));
    assert_eq!(p, json!({"type":"pong","id":5}));
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

#[test]
fn every_error_code_from_the_protocol() {
    let mut t = T::with(HubConfig {
        max_rooms_per_conn: 1,
        max_subscriptions_per_conn: 1,
        max_room_members: Some(1),
        ..Default::default()
    });
    let a = t.connect(None);
    let b = t.connect(None);
    t.text(a, "not json");
    assert_eq!(code(&t.take(a)[0]), "bad_json");
    t.text(a, "[]");
    assert_eq!(code(&t.take(a)[0]), "bad_json");
    assert_eq!(code(&t.ask(a, json!({"type":"fly"}))), "bad_request");
    assert_eq!(code(&t.ask(a, json!({"type":"join"}))), "bad_request");
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":1}))),
        "bad_request"
    );
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":""}))),
        "bad_name"
    );
    t.join(a, "one");
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"two"}))),
        "too_many_rooms"
    );
    assert_eq!(
        code(&t.ask(b, json!({"type":"join","room":"one"}))),
        "room_full"
    );
    t.ask(a, json!({"type":"subscribe","channel":"c1"}));
    assert_eq!(
        code(&t.ask(a, json!({"type":"subscribe","channel":"c2"}))),
        "too_many_subscriptions"
    );
    assert_eq!(
        code(&t.ask(b, json!({"type":"publish","room":"one","event":"e"}))),
        "not_member"
    );
    t.hub.handle_binary(Timestamp(0), a, 3).unwrap();
    t.drain();
    assert_eq!(code(&t.take(a)[0]), "unsupported");
    // no error closed anything
    assert!(t.closes.is_empty());
    assert_eq!(t.hub.stats().connections, 2);
}

#[test]
fn forbidden_when_clients_may_not_create_rooms() {
    let mut t = T::with(HubConfig {
        clients_create_rooms: false,
        ..Default::default()
    });
    let a = t.connect(None);
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"new"}))),
        "forbidden"
    );
    t.hub
        .create_room(Timestamp(t.now), "new", RoomOptions::default())
        .unwrap();
    t.join(a, "new");
}

#[test]
fn rate_limit_refuses_then_closes_sustained_abuse() {
    let mut t = T::with(HubConfig {
        rate_limit: RateLimit {
            burst: 3,
            per_second: 1,
            grace_ms: 1000,
        },
        ..Default::default()
    });
    let a = t.connect(None);
    for _ in 0..3 {
        assert_eq!(t.ask(a, json!({"type":"ping","id":1}))["type"], "pong");
    }
    // bad_json outranks rate_limited
    t.text(a, "{");
    assert_eq!(code(&t.take(a)[0]), "bad_json");
    assert_eq!(
        code(&t.ask(a, json!({"type":"ping","id":1}))),
        "rate_limited"
    );
    t.now += 999;
    // a token came back at t=1000 ms... but at 999 none yet
    assert_eq!(code(&t.ask(a, json!({"type":"ping"}))), "rate_limited");
    t.now += 1;
    t.send(a, json!({"type":"ping","id":2}));
    // one token refilled; the streak continues since the bucket is nearly empty
    assert_eq!(t.take(a)[0]["type"], "pong");
    t.send(a, json!({"type":"ping","id":3}));
    assert!(t
        .closes
        .iter()
        .any(|(c, code, r)| *c == a && *code == 1008 && r.contains("rate")));
    assert!(t.hub.stats().rate_limited >= 2);
}

#[test]
fn slow_consumer_alone_is_closed() {
    let mut t = T::with(HubConfig {
        max_buffered_bytes: 1000,
        ..Default::default()
    });
    let publisher = t.connect(None);
    let fast = t.connect(None);
    let slow = t.connect(None);
    for x in [publisher, fast, slow] {
        t.join(x, "r");
    }
    let payload = "x".repeat(200);
    let mut slow_bytes = 0;
    for i in 0..10 {
        t.hub
            .handle_text(
                Timestamp(0),
                publisher,
                &json!({"type":"publish","room":"r","event":"e","data":payload}).to_string(),
            )
            .unwrap();
        while let Some(o) = t.hub.poll_output() {
            match o {
                Output::Send { conn, msg } if conn == slow => slow_bytes += msg.wire_len(),
                Output::Send { conn, msg } => {
                    t.hub.handle_flushed(conn, msg.wire_len()).unwrap();
                    t.inbox
                        .entry(conn)
                        .or_default()
                        .push(serde_json::from_str(msg.text()).unwrap());
                }
                Output::Close { conn, code, reason } => t.closes.push((conn, code, reason.into())),
                _ => {}
            }
        }
        let _ = i;
    }
    assert_eq!(t.closes, vec![(slow, 1008, "slow consumer".to_string())]);
    // Closed on the first message after its backlog passed the budget: it holds at
    // most the budget plus one message (each about 300 bytes here).
    assert!(
        slow_bytes > 1000 && slow_bytes < 1000 + 2 * 300,
        "{slow_bytes}"
    );
    assert_eq!(t.take(fast).len(), 10, "the fast reader got everything");
    assert_eq!(t.hub.stats().slow_consumers, 1);
    assert_eq!(t.hub.room_size("r"), Some(2));
}

#[test]
fn heartbeat_pings_idle_and_reaps_silent_peers_exactly_when_due() {
    let mut t = T::with(HubConfig {
        heartbeat: HeartbeatConfig {
            interval_ms: 1000,
            timeout_ms: 800,
            max_missed: 2,
            server_pings: true,
        },
        ..Default::default()
    });
    let a = t.connect(None);
    let b = t.connect(None);
    assert_eq!(t.hub.poll_timeout(), Some(Timestamp(1000)));
    t.advance(1000);
    assert_eq!(t.pings.len(), 2);
    // b answers at 1500
    t.now = 1500;
    t.hub.handle_activity(Timestamp(1500), b).unwrap();
    t.advance(499);
    assert!(t.closes.is_empty());
    t.advance(1); // t = 2000 = a's last_seen (0) + 2 × 1000
    assert_eq!(t.closes, vec![(a, 1001, "heartbeat timeout".into())]);
    assert!(t.events.iter().any(|e| matches!(e, Event::Disconnected { conn, reason: DisconnectReason::HeartbeatTimeout, .. } if *conn == a)));
    // b: last seen 1500; pinged at 2500, dead at 3500
    t.advance(500);
    assert!(t.pings.iter().filter(|&&p| p == b).count() >= 2);
    t.advance(999);
    assert_eq!(t.closes.len(), 1);
    t.advance(1);
    assert_eq!(t.closes.len(), 2);
    assert_eq!(t.hub.stats().heartbeat_timeouts, 2);
    // closing slots are freed after the grace period even if the adapter never reports
    t.advance(10_000);
    assert!(t.hub.is_empty());
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn no_server_pings_means_no_timers() {
    let mut t = T::with(HubConfig {
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..Default::default()
        },
        ..Default::default()
    });
    t.connect(None);
    assert_eq!(t.hub.poll_timeout(), None);
}

#[test]
fn oversized_text_closes_1009() {
    let mut t = T::with(HubConfig {
        max_message_size: 10,
        ..Default::default()
    });
    let a = t.connect(None);
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.closes, vec![(a, 1009, "message too big".into())]);
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

#[test]
fn history_has_one_byte_budget_for_all_rooms_oldest_out_first() {
    let blob = "x".repeat(1000);
    let mut t = T::with(HubConfig {
        history: HistoryConfig {
            max_messages: 100,
            max_age_ms: 60_000,
            max_total_bytes: 8_000,
        },
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..Default::default()
        },
        ..Default::default()
    });
    let a = t.connect(None);
    // Three rooms, three messages each, oldest in "r0": about 9 KB in all.
    for room in ["r0", "r1", "r2"] {
        let ack = t.join(a, room);
        assert_eq!(ack["type"], "ack");
        for _ in 0..3 {
            t.now += 1;
            t.send(
                a,
                json!({"type":"publish","room":room,"event":"e","data":blob}),
            );
            t.take(a);
        }
    }
    let stats = t.hub.stats();
    assert!(stats.history_bytes <= 8_000, "{stats:?}");
    assert!(stats.history_evicted >= 2, "{stats:?}");
    // A join with another epoch is replayed the whole history only if it still reaches
    // back to seq 1.
    let mut replayed = |room: &str| {
        let b = t.connect(None);
        t.send(b, json!({"type":"join","room":room,"since":0,"epoch":"x"}));
        t.take(b).iter().filter(|m| m["type"] == "message").count()
    };
    // The newest room kept everything; the oldest lost its start.
    assert_eq!(replayed("r2"), 3);
    assert_eq!(replayed("r0"), 0, "r0 no longer reaches back to seq 1");
    // A room whose history was evicted entirely and that nobody is in goes away.
    t.ask(a, json!({"type":"leave","room":"r0"}));
    t.hub.check_invariants();
}

#[test]
fn recovery_with_history() {
    let mut t = history_hub();
    let a = t.connect(None);
    let b = t.connect(None);
    let ack = t.join(a, "r");
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    t.join(b, "r");
    for i in 0..2 {
        t.send(a, json!({"type":"publish","room":"r","event":"e","data":i}));
    }
    assert_eq!(t.take(b).len(), 2);
    t.ask(b, json!({"type":"leave","room":"r"}));
    t.send(a, json!({"type":"publish","room":"r","event":"e","data":2}));
    // b missed seq 3 only: replayed before the ack, recovered
    t.send(b, json!({"type":"join","room":"r","since":2,"epoch":epoch}));
    let got = t.take(b);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["seq"], 3);
    assert_eq!(got[1]["recovered"], true);
    assert_eq!(got[1]["seq"], 3);
    t.ask(b, json!({"type":"leave","room":"r"}));
    // history holds 3 messages: seq 2..=4 after one more
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    t.send(b, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    let got = t.take(b);
    assert_eq!(
        got.len(),
        1,
        "history no longer reaches back: nothing replayed"
    );
    assert_eq!(got[0]["recovered"], false);
    t.ask(b, json!({"type":"leave","room":"r"}));
    // since beyond the latest: nothing, false
    t.send(
        b,
        json!({"type":"join","room":"r","since":99,"epoch":epoch}),
    );
    assert_eq!(t.take(b)[0]["recovered"], false);
    t.ask(b, json!({"type":"leave","room":"r"}));
    // up to date: true, nothing replayed
    t.send(b, json!({"type":"join","room":"r","since":4,"epoch":epoch}));
    assert_eq!(t.take(b), vec![t.take_last_ack_like(&epoch, 4, 2)]);
}

impl T {
    fn take_last_ack_like(&self, epoch: &str, seq: u64, members: u64) -> Value {
        json!({"type":"ack","room":"r","members":members,"epoch":epoch,"seq":seq,"recovered":true})
    }
}

#[test]
fn wrong_epoch_replays_from_seq_one_if_kept() {
    let mut t = history_hub();
    let a = t.connect(None);
    t.join(a, "r");
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    let b = t.connect(None);
    t.send(b, json!({"type":"join","room":"r","since":5,"epoch":"old"}));
    let got = t.take(b);
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[1]["recovered"], false);
}

#[test]
fn room_outlives_members_for_history_age_then_goes() {
    let mut t = history_hub();
    let a = t.connect(None);
    let ack = t.join(a, "r");
    let epoch = ack["epoch"].as_str().unwrap().to_owned();
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    t.take(a);
    t.ask(a, json!({"type":"leave","room":"r"}));
    assert_eq!(t.hub.stats().rooms, 1);
    t.advance(30_000);
    let ack = t.join(a, "r");
    assert_eq!(ack["epoch"], epoch.as_str());
    assert_eq!(ack["seq"], 1);
    t.ask(a, json!({"type":"leave","room":"r"}));
    t.advance(60_000);
    assert_eq!(t.hub.stats().rooms, 0);
    let ack = t.join(a, "r");
    assert_ne!(ack["epoch"], epoch.as_str(), "a new room gets a new epoch");
    assert_eq!(ack["seq"], 0);
}

#[test]
fn rooms_without_history_vanish_when_empty() {
    let mut t = T::new();
    let a = t.connect(None);
    t.join(a, "r");
    t.ask(a, json!({"type":"leave","room":"r"}));
    assert_eq!(t.hub.stats().rooms, 0);
    t.hub
        .create_room(
            Timestamp(t.now),
            "kept",
            RoomOptions {
                data: Some(RawValue::from_string("{\"topic\":1}".into()).unwrap()),
                max_members: None,
            },
        )
        .unwrap();
    t.join(a, "kept");
    t.ask(a, json!({"type":"leave","room":"kept"}));
    assert_eq!(t.hub.room_data("kept").unwrap().get(), "{\"topic\":1}");
    t.hub.remove_room(Timestamp(t.now), "kept").unwrap();
    assert!(t.hub.is_empty() || t.hub.stats().rooms == 0);
}

#[test]
fn server_api_sends_and_membership() {
    let mut t = T::new();
    let a = t.connect(Some("u"));
    let b = t.connect(None);
    t.hub.join(Timestamp(t.now), a, "r", false).unwrap();
    t.hub.join(Timestamp(t.now), b, "r", false).unwrap();
    assert!(t.hub.is_member(a, "r"));
    assert_eq!(t.hub.room_members("r").len(), 2);
    let d = t
        .hub
        .send_to_room(Timestamp(t.now), "r", "news", None, &[b])
        .unwrap();
    assert_eq!(
        d,
        Delivery {
            delivered: 1,
            seq: Some(1)
        }
    );
    t.drain();
    let m = t.take(a);
    assert_eq!(m[0]["from"], Value::Null);
    assert!(t.take(b).is_empty());
    assert_eq!(
        t.hub
            .broadcast(Timestamp(t.now), "all", None, &[])
            .unwrap()
            .delivered,
        2
    );
    t.drain();
    let m = t.take(a);
    assert!(
        m[0].get("room").is_none() && m[0].get("channel").is_none() && m[0].get("user").is_none()
    );
    assert_eq!(
        t.hub
            .send_to_user(Timestamp(t.now), "u", "dm", None, &[])
            .unwrap()
            .delivered,
        1
    );
    assert_eq!(
        t.hub
            .send_to_conn(Timestamp(t.now), b, "only", None)
            .unwrap()
            .delivered,
        1
    );
    t.hub.leave_all(Timestamp(t.now), a).unwrap();
    assert!(t.hub.rooms_of(a).is_empty());
    t.hub.disconnect(Timestamp(t.now), b, 4000, "bye").unwrap();
    t.drain();
    assert_eq!(t.closes, vec![(b, 4000, "bye".into())]);
    assert_eq!(t.hub.stats().connections, 1);
    assert!(t
        .hub
        .send_to_room(Timestamp(t.now), "nope", "e", None, &[])
        .is_err());
    assert_eq!(
        t.hub.send_to_room(Timestamp(t.now), "r", "", None, &[]),
        Err(HubError::BadName)
    );
}

#[test]
fn shutdown_closes_everyone_1001() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    t.hub.shutdown(Timestamp(t.now));
    t.drain();
    let mut codes: Vec<_> = t.closes.iter().map(|(c, code, _)| (*c, *code)).collect();
    codes.sort();
    let mut want = vec![(a, 1001), (b, 1001)];
    want.sort();
    assert_eq!(codes, want);
}

#[test]
fn snapshot_restore_keeps_rooms_users_and_seq() {
    let mut t = history_hub();
    let a = t.connect(Some("ann"));
    let b = t.connect(None);
    t.ask(a, json!({"type":"join","room":"r","presence":true}));
    t.join(b, "r");
    t.ask(b, json!({"type":"subscribe","channel":"c"}));
    t.hub
        .create_channel(Timestamp(t.now), "linked", &["r"])
        .unwrap();
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    let snaps: Vec<ConnSnapshot> = [a, b]
        .iter()
        .map(|&x| t.hub.snapshot_conn(x).unwrap())
        .collect();
    for s in &snaps {
        let j = s.to_json();
        assert!(j.len() < 2048);
        assert_eq!(&ConnSnapshot::from_json(&j).unwrap(), s);
    }
    let rooms = vec![t.hub.snapshot_room("r").unwrap()];
    let channels = t.hub.snapshot_channels();
    let mut r = T::with(t.hub.config().clone());
    r.hub = Hub::restore(
        t.hub.config().clone(),
        [9; 32],
        Timestamp(100),
        rooms,
        channels,
        snaps,
    );
    r.hub.check_invariants();
    assert_eq!(r.hub.stats().connections, 2);
    assert!(r.hub.is_member(a, "r"));
    assert_eq!(r.hub.user_connections("ann"), &[a]);
    r.now = 100;
    let ack = r.ask(a, json!({"type":"publish","room":"r","event":"e"}));
    assert_eq!(ack["seq"], 2, "seq continues");
    assert_eq!(r.take(b)[0]["seq"], 2);
    assert_eq!(
        r.hub
            .send_to_channel(Timestamp(r.now), "linked", "x", None, &[])
            .unwrap()
            .delivered,
        2
    );
    // new connections get fresh ids
    let c = r.connect(None);
    assert!(c != a && c != b);
    // history survived: a rejoin from seq 0 of the same epoch recovers
    let epoch = r.hub.room_position("r").unwrap().0.to_owned();
    r.send(c, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    let got = r.take(c);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2]["recovered"], true);
}

#[test]
fn backplane_forwards_local_publishes_only() {
    let cfg = HubConfig {
        backplane: true,
        ..Default::default()
    };
    let mut n1 = T::with(cfg.clone());
    let mut n2 = T::with(cfg);
    let a = n1.connect(None);
    let b = n2.connect(None);
    n1.join(a, "r");
    n2.join(b, "r");
    n1.send(
        a,
        json!({"type":"publish","room":"r","event":"e","data":[1]}),
    );
    assert_eq!(n1.forwards.len(), 1);
    let f = n1.forwards[0].clone();
    n2.hub.handle_remote(Timestamp(0), 1, &f);
    n2.drain();
    let got = n2.take(b);
    assert_eq!(got[0]["data"], json!([1]));
    assert_eq!(
        got[0]["from"]["conn"],
        n1.hub.connection(a).unwrap().wire_id
    );
    assert!(
        n2.forwards.is_empty(),
        "remote deliveries are not forwarded again"
    );
}

#[test]
fn memory_returns_to_empty() {
    let mut t = T::new();
    let ids: Vec<ConnId> = (0..20)
        .map(|i| t.connect(Some(&format!("u{}", i % 3))))
        .collect();
    for (i, &id) in ids.iter().enumerate() {
        t.join(id, &format!("room{}", i % 4));
        t.send(
            id,
            json!({"type":"subscribe","channel":format!("ch{}", i % 5)}),
        );
    }
    for id in ids {
        t.hub
            .handle_disconnect(
                Timestamp(0),
                id,
                DisconnectReason::Closed { code: Some(1000) },
            )
            .unwrap();
        t.drain();
        t.hub.check_invariants();
    }
    assert!(t.hub.is_empty());
}

mod membership_props {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    #[derive(Debug, Clone)]
    enum Op {
        Connect(u8),
        Disconnect(u8),
        Join(u8, u8, bool),
        Leave(u8, u8),
        LeaveAll(u8),
        Subscribe(u8, u8),
        Unsubscribe(u8, u8),
        Link(u8, u8),
        Unlink(u8, u8),
        Kick(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (0u8..4).prop_map(Op::Connect),
            (0u8..16).prop_map(Op::Disconnect),
            (0u8..16, 0u8..5, any::<bool>()).prop_map(|(c, r, p)| Op::Join(c, r, p)),
            (0u8..16, 0u8..5).prop_map(|(c, r)| Op::Leave(c, r)),
            (0u8..16).prop_map(Op::LeaveAll),
            (0u8..16, 0u8..3).prop_map(|(c, ch)| Op::Subscribe(c, ch)),
            (0u8..16, 0u8..3).prop_map(|(c, ch)| Op::Unsubscribe(c, ch)),
            (0u8..3, 0u8..5).prop_map(|(ch, r)| Op::Link(ch, r)),
            (0u8..3, 0u8..5).prop_map(|(ch, r)| Op::Unlink(ch, r)),
            (0u8..16).prop_map(Op::Kick),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]
        /// Random server-side operations keep every index consistent with a plain model
        /// of who is where, and the hub empties when everyone leaves.
        #[test]
        fn indexes_match_a_model(ops in proptest::collection::vec(op(), 1..120)) {
            let mut t = T::new();
            let mut conns: Vec<ConnId> = Vec::new();
            let mut rooms: BTreeMap<String, BTreeSet<ConnId>> = BTreeMap::new();
            let pick = |conns: &Vec<ConnId>, i: u8| -> Option<ConnId> {
                if conns.is_empty() { None } else { Some(conns[i as usize % conns.len()]) }
            };
            for op in ops {
                match op {
                    Op::Connect(u) => conns.push(t.connect(Some(&format!("u{u}")))),
                    Op::Disconnect(i) => if let Some(c) = pick(&conns, i) {
                        t.hub.handle_disconnect(Timestamp(0), c, DisconnectReason::Closed { code: None }).unwrap();
                        conns.retain(|x| *x != c);
                        for m in rooms.values_mut() { m.remove(&c); }
                    },
                    Op::Kick(i) => if let Some(c) = pick(&conns, i) {
                        t.hub.disconnect(Timestamp(t.now), c, 4000, "kick").unwrap();
                        t.hub.handle_disconnect(Timestamp(0), c, DisconnectReason::Kicked { code: 4000 }).unwrap();
                        conns.retain(|x| *x != c);
                        for m in rooms.values_mut() { m.remove(&c); }
                    },
                    Op::Join(i, r, p) => if let Some(c) = pick(&conns, i) {
                        t.hub.join(Timestamp(t.now), c, &format!("r{r}"), p).unwrap();
                        rooms.entry(format!("r{r}")).or_default().insert(c);
                    },
                    Op::Leave(i, r) => if let Some(c) = pick(&conns, i) {
                        let was = rooms.get_mut(&format!("r{r}")).is_some_and(|m| m.remove(&c));
                        prop_assert_eq!(t.hub.leave(Timestamp(t.now), c, &format!("r{r}")).is_ok(), was);
                    },
                    Op::LeaveAll(i) => if let Some(c) = pick(&conns, i) {
                        t.hub.leave_all(Timestamp(t.now), c).unwrap();
                        for m in rooms.values_mut() { m.remove(&c); }
                    },
                    Op::Subscribe(i, ch) => if let Some(c) = pick(&conns, i) {
                        t.hub.subscribe(Timestamp(t.now), c, &format!("c{ch}")).unwrap();
                    },
                    Op::Unsubscribe(i, ch) => if let Some(c) = pick(&conns, i) {
                        let _ = t.hub.unsubscribe(Timestamp(t.now), c, &format!("c{ch}"));
                    },
                    Op::Link(ch, r) => {
                        t.hub.create_channel(Timestamp(t.now), &format!("c{ch}"), &[&format!("r{r}")]).unwrap();
                    }
                    Op::Unlink(ch, r) => {
                        let _ = t.hub.unlink_room(Timestamp(t.now), &format!("c{ch}"), &format!("r{r}"));
                    }
                }
                t.drain();
                t.hub.check_invariants();
                for (room, members) in &rooms {
                    let mut got = t.hub.room_members(room);
                    got.sort();
                    let want: Vec<ConnId> = members.iter().copied().collect();
                    prop_assert_eq!(got, want, "room {}", room);
                }
            }
            for c in conns {
                t.hub.handle_disconnect(Timestamp(0), c, DisconnectReason::Closed { code: None }).unwrap();
                t.drain();
            }
            t.hub.check_invariants();
            prop_assert_eq!(t.hub.stats().connections, 0);
            prop_assert_eq!(t.hub.stats().users, 0);
        }
    }
}

#[test]
fn output_stays_small() {
    // one Output per receiver per message: keep the enum small so fan-out moves little
    assert!(
        std::mem::size_of::<Output>() <= 64,
        "{}",
        std::mem::size_of::<Output>()
    );
}

#[test]
fn restore_expires_old_history_and_reports_removed_rooms() {
    let mut t = history_hub();
    let a = t.connect(None);
    t.join(a, "gone");
    t.join(a, "kept");
    t.send(a, json!({"type":"publish","room":"gone","event":"e"}));
    t.take(a);
    let rooms = vec![
        t.hub.snapshot_room("gone").unwrap(),
        t.hub.snapshot_room("kept").unwrap(),
    ];
    // restored 2 minutes later with nobody connected: "gone" has history older than
    // the 60 s age, "kept" has none
    let mut hub = Hub::restore(
        t.hub.config().clone(),
        [1; 32],
        Timestamp(120_000),
        rooms,
        vec![],
        vec![],
    );
    hub.check_invariants();
    assert_eq!(hub.stats().rooms, 0);
    let mut removed: Vec<String> = std::iter::from_fn(|| hub.poll_output())
        .filter_map(|o| match o {
            Output::Event(Event::RoomRemoved { room }) => Some(room.to_string()),
            _ => None,
        })
        .collect();
    removed.sort();
    assert_eq!(removed, vec!["gone", "kept"]);
    // and leaving a room removes it with an event too
    t.ask(a, json!({"type":"leave","room":"kept"}));
    assert!(t
        .events
        .iter()
        .any(|e| matches!(e, Event::RoomRemoved { room } if &**room == "kept")));
}

#[test]
fn restore_keeps_history_within_its_byte_budget() {
    let config = HubConfig {
        history: HistoryConfig {
            max_messages: 100,
            max_age_ms: 60_000,
            max_total_bytes: 1_000,
        },
        ..Default::default()
    };
    let text = |seq: u64| {
        format!(
            r#"{{"type":"message","room":"r","seq":{seq},"event":"e","data":"{}"}}"#,
            "x".repeat(200)
        )
    };
    let room = RoomSnapshot {
        name: "r".into(),
        epoch: "e1".into(),
        seq: 10,
        persistent: true,
        max_members: None,
        data: None,
        history: (1..=10)
            .map(|seq| HistorySnapshot {
                seq,
                at: seq,
                text: text(seq),
            })
            .collect(),
    };
    let hub = Hub::restore(config, [1; 32], Timestamp(100), vec![room], vec![], vec![]);
    hub.check_invariants();
    let stats = hub.stats();
    assert!(stats.history_bytes <= 1_000, "{stats:?}");
    assert!(stats.history_evicted >= 6, "{stats:?}");
    // The newest messages are the ones kept.
    let snap = hub.snapshot_room("r").unwrap();
    assert_eq!(snap.history.last().map(|h| h.seq), Some(10));
}

#[test]
fn one_message_bigger_than_the_output_budget_does_not_make_a_reader_slow() {
    // The budget equals the message size limit: wrapped for delivery (room, seq, from)
    // a message near the limit is a little bigger than the budget.
    let mut t = T::with(HubConfig {
        max_buffered_bytes: 1000,
        max_message_size: 1000,
        ..Default::default()
    });
    let a = t.connect(None);
    let b = t.connect(None);
    t.join(a, "r");
    t.join(b, "r");
    let data = "x".repeat(930);
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"e","data":data}),
    );
    assert!(t.closes.is_empty(), "{:?}", t.closes);
    let got = t.take(b);
    assert_eq!(got.len(), 1);
    assert!(
        got[0].to_string().len() > 1000,
        "the delivery is over the budget"
    );
}

/// Found by the `hub_ops` fuzz target: a server send to an empty room kept for its
/// history, with a message larger than what the history byte budget keeps, left the
/// room with neither members nor history.
#[test]
fn a_room_whose_history_the_budget_emptied_does_not_linger() {
    let mut t = T::with(HubConfig {
        history: HistoryConfig {
            max_messages: 5,
            max_age_ms: 60_000,
            max_total_bytes: 300,
        },
        ..Default::default()
    });
    let a = t.connect(None);
    t.join(a, "r");
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    t.take(a);
    t.ask(a, json!({"type":"leave","room":"r"}));
    assert_eq!(t.hub.stats().rooms, 1, "kept for its history");
    let big = serde_json::value::to_raw_value(&"x".repeat(400)).unwrap();
    t.hub
        .send_to_room(Timestamp(t.now), "r", "big", Some(&big), &[])
        .unwrap();
    t.drain();
    t.hub.check_invariants();
    assert_eq!(t.hub.stats().rooms, 0, "nothing left to keep it for");
    assert_eq!(t.hub.stats().history_bytes, 0);
}

/// Found by the `hub_ops` fuzz target: a channel send flushes held room messages first;
/// a member found over budget there was closed at once, which removed the channel it
/// alone subscribed to while the send was still using it.
#[test]
fn a_channel_send_survives_closing_its_only_subscriber_as_slow() {
    let mut t = T::with(HubConfig {
        coalesce_room_messages: true,
        max_buffered_bytes: 1000,
        ..Default::default()
    });
    let p = t.connect(None);
    let s = t.connect(None);
    t.join(p, "r");
    t.join(s, "r");
    let ack = t.ask(s, json!({"type":"subscribe","channel":"c"}));
    assert_eq!(ack["type"], "ack", "{ack}");
    t.take(p);
    // About 150 bytes each: under the burst bound (a quarter of the budget), so a
    // message is held until a flush.
    let publish =
        json!({"type":"publish","room":"r","event":"e","data":"x".repeat(60)}).to_string();
    // `s` stops reporting what it has read: seven messages take its backlog just over
    // the budget without closing it...
    publish_unread(&mut t, p, &publish, 7);
    assert!(t.hub.connection(s).unwrap().unsent_bytes > 1000);
    // ...and the next one, held for a burst, finds it slow when the channel send
    // flushes it.
    t.hub.handle_text(Timestamp(0), p, &publish).unwrap();
    let delivery = t
        .hub
        .send_to_channel(Timestamp(t.now), "c", "news", None, &[])
        .unwrap();
    assert_eq!(delivery.delivered, 1);
    let mut closed = false;
    while let Some(o) = t.hub.poll_output() {
        closed |= matches!(o, Output::Close { conn, code: 1008, .. } if conn == s);
    }
    assert!(closed, "the slow member is closed");
    assert_eq!(t.hub.stats().channels, 0, "its channel went with it");
    t.hub.check_invariants();
}

/// From review: a server-side join flushes the room's held burst, which can find a member
/// over budget; `flush` must close it even when nothing else is held.
#[test]
fn flush_closes_members_found_slow_by_a_membership_change() {
    let mut t = T::with(HubConfig {
        coalesce_room_messages: true,
        max_buffered_bytes: 1000,
        ..Default::default()
    });
    let p = t.connect(None);
    let s = t.connect(None);
    let late = t.connect(None);
    t.join(p, "r");
    t.join(s, "r");
    t.take(p);
    let publish =
        json!({"type":"publish","room":"r","event":"e","data":"x".repeat(60)}).to_string();
    publish_unread(&mut t, p, &publish, 7);
    // One more held, then the server API joins someone: the room is flushed first and
    // `s`, which reported nothing, is found over budget.
    t.hub.handle_text(Timestamp(0), p, &publish).unwrap();
    t.hub.join(Timestamp(t.now), late, "r", false).unwrap();
    t.hub.flush();
    let mut closed = false;
    while let Some(o) = t.hub.poll_output() {
        closed |= matches!(o, Output::Close { conn, code: 1008, .. } if conn == s);
    }
    assert!(
        closed,
        "the slow member is closed by the flush that ends the batch"
    );
    t.hub.check_invariants();
}

/// From review: a connection listed twice in `exclude` is excluded, and counted, once.
#[test]
fn an_exclusion_listed_twice_counts_once() {
    for coalesce in [false, true] {
        let mut t = T::with(HubConfig {
            coalesce_room_messages: coalesce,
            ..Default::default()
        });
        let a = t.connect(None);
        let b = t.connect(None);
        let c = t.connect(None);
        for x in [a, b, c] {
            t.join(x, "r");
        }
        let d = t
            .hub
            .send_to_room(Timestamp(t.now), "r", "e", None, &[a, a])
            .unwrap();
        assert_eq!(d.delivered, 2, "coalesce: {coalesce}");
        t.hub.flush();
        t.drain();
        assert!(t.take(a).is_empty());
        assert_eq!(t.take(b).len(), 1);
        assert_eq!(t.take(c).len(), 1);
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

#[test]
fn raw_room_sends_are_verbatim_in_order_and_skip_the_excluded() {
    for coalesce in [false, true] {
        let mut t = T::with(HubConfig {
            coalesce_room_messages: coalesce,
            ..HubConfig::default()
        });
        let a = t.connect(None);
        let b = t.connect(None);
        t.join(a, "r");
        t.join(b, "r");
        t.raw.clear();
        t.hub
            .send_to_room(Timestamp(t.now), "r", "first", None, &[])
            .unwrap();
        let d = t
            .hub
            .send_raw_to_room(Timestamp(t.now), "r", "[1,\"raw\"]", &[a])
            .unwrap();
        assert_eq!((d.delivered, d.seq), (1, None), "coalesce {coalesce}");
        t.hub
            .send_raw_to_room(Timestamp(t.now), "r", "[2]", &[])
            .unwrap();
        t.hub.flush();
        t.drain();
        let rb = t.raw.remove(&b).unwrap();
        assert!(rb[0].contains("\"event\":\"first\""), "{rb:?}");
        assert_eq!(rb[1..], ["[1,\"raw\"]", "[2]"], "coalesce {coalesce}");
        let ra = t.raw.remove(&a).unwrap();
        assert_eq!(ra.len(), 2, "{ra:?}");
        assert_eq!(ra[1], "[2]");
        // Raw sends take no seq: the next enveloped message follows the first.
        t.inbox.clear();
        t.hub
            .send_to_room(Timestamp(t.now), "r", "second", None, &[])
            .unwrap();
        t.hub.flush();
        t.drain();
        assert_eq!(t.take(b)[0]["seq"], 2);
        assert_eq!(
            t.hub
                .send_raw_to_room(Timestamp(t.now), "nope", "x", &[])
                .unwrap_err(),
            HubError::UnknownRoom
        );
        t.hub.check_invariants();
    }
}

#[test]
fn churned_connections_leave_no_timers_behind() {
    let mut t = T::new();
    let keep: Vec<_> = (0..10).map(|_| t.connect(None)).collect();
    for _ in 0..20_000 {
        let c = t.connect(None);
        t.hub
            .handle_disconnect(
                Timestamp(t.now),
                c,
                DisconnectReason::Closed { code: Some(1000) },
            )
            .unwrap();
        t.drain();
    }
    // Each churned connection scheduled a heartbeat 25 s out; none may stay queued.
    assert!(t.hub.timers.len() <= 1024, "{}", t.hub.timers.len());
    assert!(t.hub.timers.capacity() <= 4 * 1024);
    t.hub.check_invariants();
    // The survivors' timers were kept: they are still pinged on time.
    t.advance(t.hub.config().heartbeat.interval_ms);
    for k in keep {
        assert!(t.pings.contains(&k), "{k} not pinged");
    }
}

#[test]
fn server_side_joins_and_subscribes_follow_the_client_limits() {
    let mut t = T::with(HubConfig {
        max_rooms_per_conn: 1,
        max_subscriptions_per_conn: 1,
        ..HubConfig::default()
    });
    let a = t.connect(None);
    let now = Timestamp(t.now);
    t.hub.subscribe(now, a, "c1").unwrap();
    // Past the limit: the limit's own error, not `NotMember` (the old answer).
    assert_eq!(
        t.hub.subscribe(now, a, "c2"),
        Err(HubError::TooManySubscriptions)
    );
    // Subscribing again changes nothing and is not refused.
    t.hub.subscribe(now, a, "c1").unwrap();
    t.hub.join(now, a, "r1", false).unwrap();
    assert_eq!(t.hub.join(now, a, "r2", false), Err(HubError::TooManyRooms));
    t.drain();
    assert!(!t.hub.is_member(a, "r2"));
    // The client sees the same rule with its own codes.
    let e = t.ask(a, json!({"type":"subscribe","channel":"c3"}));
    assert_eq!(code(&e), "too_many_subscriptions");
    let e = t.ask(a, json!({"type":"join","room":"r3"}));
    assert_eq!(code(&e), "too_many_rooms");
    t.hub.check_invariants();
}

#[test]
fn events_carry_the_room_position() {
    let mut t = T::new();
    let a = t.connect(None);
    let b = t.connect(None);
    t.join(a, "r");
    t.ask(a, json!({"type":"publish","room":"r","event":"e"}));
    t.join(b, "r");
    let (epoch, seq) = t
        .hub
        .room_position("r")
        .map(|(e, s)| (e.to_owned(), s))
        .unwrap();
    assert_eq!(seq, 1);
    let joins: Vec<(Arc<str>, u64)> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Joined { epoch, seq, .. } => Some((epoch.clone(), *seq)),
            _ => None,
        })
        .collect();
    assert_eq!(joins.len(), 2);
    assert!(joins.iter().all(|(e, _)| **e == *epoch));
    assert_eq!(joins[0].1, 0, "a joined before the first message");
    assert_eq!(joins[1].1, 1, "b joined after it");
    let published: Vec<&Published> = t
        .events
        .iter()
        .filter_map(|e| match e {
            Event::Message(p) => Some(&**p),
            _ => None,
        })
        .collect();
    assert_eq!(published.len(), 1);
    assert_eq!(published[0].seq, Some(1));
    assert_eq!(published[0].epoch.as_deref(), Some(epoch.as_str()));
}

#[test]
fn one_input_vocabulary_drives_the_hub() {
    let mut hub = Hub::new(HubConfig::default(), [3; 32], Timestamp(0));
    let Handled::Connected(a) = hub
        .handle(Timestamp(1), Input::Connect(ConnectRequest::default()))
        .unwrap()
    else {
        panic!("a connect answers with the id");
    };
    hub.handle(
        Timestamp(2),
        Input::Join {
            conn: a,
            room: "r",
            presence: false,
        },
    )
    .unwrap();
    let text = r#"{"type":"publish","room":"r","event":"e","echo":true}"#;
    hub.handle(Timestamp(3), Input::Text { conn: a, text })
        .unwrap();
    let sent = hub
        .handle(
            Timestamp(4),
            Input::Send {
                to: Recipient::Room("r"),
                event: "s",
                data: None,
                exclude: &[],
            },
        )
        .unwrap();
    assert_eq!(
        sent,
        Handled::Delivered(Delivery {
            delivered: 1,
            seq: Some(2)
        })
    );
    // A server send is stamped with the time it was given: history ages from it.
    let mut got = Vec::new();
    while let Some(o) = hub.poll_output() {
        if let Output::Send { msg, .. } = o {
            got.push(msg.text().to_owned());
        }
    }
    assert!(got.iter().any(|m| m.contains(r#""seq":2"#)), "{got:?}");
    assert_eq!(
        hub.handle(
            Timestamp(5),
            Input::Leave {
                conn: a,
                room: "nope"
            }
        ),
        Err(HubError::UnknownRoom)
    );
    assert_eq!(
        hub.handle(
            Timestamp(5),
            Input::Connect(ConnectRequest {
                user: Some(String::new()),
                ..Default::default()
            })
        ),
        Err(HubError::Connect(ConnectError::BadUser))
    );
    hub.handle(
        Timestamp(6),
        Input::Closed {
            conn: a,
            reason: DisconnectReason::Closed { code: None },
        },
    )
    .unwrap();
    hub.handle(Timestamp(400_000), Input::Timeout).unwrap();
    while hub.poll_output().is_some() {}
    hub.check_invariants();
    assert!(hub.is_empty());
}

#[test]
fn the_clock_never_runs_backwards_through_server_calls() {
    // History ages from the time each input carries; a server call stamped earlier than
    // the last input is clamped to it.
    let mut t = history_hub();
    let a = t.connect(None);
    t.join(a, "r");
    t.advance(10_000);
    t.hub
        .send_to_room(Timestamp(0), "r", "late", None, &[])
        .unwrap();
    t.drain();
    // Still kept just before its age limit counted from the clamped time (60 s from
    // t=10 s; counted from t=0 it would be gone).
    t.advance(60_000 - 1);
    let b = t.connect(None);
    let (epoch, _) = t
        .hub
        .room_position("r")
        .map(|(e, s)| (e.to_owned(), s))
        .unwrap();
    t.send(b, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    let got = t.take(b);
    assert_eq!(got[0]["event"], "late", "{got:?}");
}
