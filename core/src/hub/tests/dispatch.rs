//! Hub tests: the client protocol: publishes, targets, errors, rate limits, sizes.

use serde_json::{json, Value};

use super::*;
use crate::ratelimit::RateLimit;

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
            json!({"type":"message","room":"r","seq":1,"ts":t.now,"event":"say","from":{"conn":t.hub.connection(a).unwrap().wire_id,"user":"ann"},"data":{"t":"hi"}})
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
fn oversized_text_closes_1009() {
    let mut t = T::with(HubConfig {
        max_message_size: 10,
        ..Default::default()
    });
    let a = t.connect(None);
    t.text(a, r#"{"type":"ping"}"#);
    assert_eq!(t.closes, vec![(a, 1009, "message too big".into())]);
}

#[test]
fn every_message_carries_the_servers_unix_time() {
    // the adapter's clock started at this Unix time (natively: when the server started)
    const START: u64 = 1_800_000_000_000;
    let mut t = T::with(HubConfig {
        clock_unix_ms: START,
        history: HistoryConfig {
            max_messages: 10,
            ..HistoryConfig::default()
        },
        ..HubConfig::default()
    });
    let a = t.connect(Some("ann"));
    let b = t.connect(Some("bob"));
    t.join(a, "r");
    t.join(b, "r");
    for x in [a, b] {
        t.send(x, json!({"type":"subscribe","channel":"c"}));
        t.take(x);
    }
    t.advance(1_234);
    t.send(a, json!({"type":"publish","room":"r","event":"say"}));
    t.advance(1);
    t.send(a, json!({"type":"publish","channel":"c","event":"say"}));
    t.advance(1);
    t.send(a, json!({"type":"publish","user":"bob","event":"say"}));
    t.advance(1);
    let now = Timestamp(t.now);
    t.hub.broadcast(now, "all", None, &[a]).unwrap();
    t.hub.send_to_conn(now, b, "one", None).unwrap();
    t.drain();
    let ts: Vec<u64> = t
        .take(b)
        .iter()
        .map(|m| m["ts"].as_u64().expect("a ts on every message"))
        .collect();
    let at = START + 1_234;
    assert_eq!(ts, [at, at + 1, at + 2, at + 3, at + 3]);
    // a replay gives each message its own time, not the replay's
    t.advance(5_000);
    let c = t.connect(None);
    let epoch = t.hub.room_position("r").unwrap().0.to_owned();
    t.send(c, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    let got = t.take(c);
    let replayed: Vec<&Value> = got.iter().filter(|m| m["type"] == "message").collect();
    assert_eq!(replayed.len(), 1, "{got:?}");
    assert_eq!(replayed[0]["ts"], at);
}
