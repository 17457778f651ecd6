//! Decisions the application makes (hooks): parking, order behind a parked request,
//! answers (allow, refuse, replaced data, rpc replies), deadlines, late and stray
//! answers, and a connection closing while it waits. Virtual time.

use serde_json::value::RawValue;

use super::*;

fn hooked(hooks: HookConfig) -> T {
    T::with(HubConfig {
        hooks,
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..HeartbeatConfig::default()
        },
        ..HubConfig::default()
    })
}

fn all_hooks() -> HookConfig {
    HookConfig {
        join: true,
        subscribe: true,
        publish: true,
        rpc: true,
        ..HookConfig::default()
    }
}

fn raw(s: &str) -> Box<RawValue> {
    RawValue::from_string(s.to_owned()).unwrap()
}

impl T {
    /// The one decision asked since the last call.
    fn decision(&mut self) -> Decision {
        assert_eq!(self.decisions.len(), 1, "{:?}", self.decisions);
        self.decisions.pop().unwrap()
    }

    fn answer(&mut self, ticket: Ticket, answer: Answer) {
        self.hub
            .handle_decision(Timestamp(self.now), ticket, answer)
            .unwrap();
        self.drain();
        self.hub.check_invariants();
    }
}

#[test]
fn a_join_waits_for_the_application_then_acks() {
    let mut t = hooked(all_hooks());
    let a = t.connect(Some("ann"));
    t.send(a, json!({"type":"join","room":"r","presence":true,"id":1}));
    assert!(t.take(a).is_empty(), "nothing until the answer");
    let d = t.decision();
    assert_eq!(d.conn, a);
    assert_eq!(d.user.as_deref(), Some("ann"));
    assert_eq!(
        d.question,
        Question::Join {
            room: "r".into(),
            presence: true
        }
    );
    assert!(!t.hub.is_member(a, "r"));
    t.answer(d.ticket, Answer::allow());
    let got = t.take(a);
    assert_eq!(got[0]["type"], "ack");
    assert_eq!(got[0]["id"], 1);
    assert!(t.hub.is_member(a, "r"));
    assert_eq!(t.hub.stats().decisions_asked, 1);
}

#[test]
fn a_refusal_carries_the_applications_code_and_a_bad_code_becomes_forbidden() {
    let mut t = hooked(all_hooks());
    let a = t.connect(None);
    t.send(a, json!({"type":"join","room":"vip","id":"j"}));
    let d = t.decision();
    t.answer(d.ticket, Answer::refuse("members_only", "buy a ticket"));
    assert_eq!(
        t.take(a),
        vec![json!({"type":"error","id":"j","code":"members_only","message":"buy a ticket"})]
    );
    t.send(a, json!({"type":"subscribe","channel":"c","id":2}));
    let d = t.decision();
    t.answer(d.ticket, Answer::refuse("bad\ncode", "nope"));
    assert_eq!(code(&t.take(a)[0]), "forbidden");
    assert!(t.hub.channel_subscribers("c").is_empty());
}

#[test]
fn later_requests_wait_in_order_and_others_are_served() {
    let mut t = hooked(HookConfig {
        join: true,
        ..HookConfig::default()
    });
    let a = t.connect(None);
    let b = t.connect(None);
    let r = t.ask(b, json!({"type":"subscribe","channel":"open"}));
    assert_eq!(r["type"], "ack");
    t.send(a, json!({"type":"join","room":"x","id":1}));
    let first = t.decision();
    // behind it: a ping, a second join (asks again, in its turn), a subscribe
    t.send(a, json!({"type":"ping","id":2}));
    t.send(a, json!({"type":"join","room":"y","id":3}));
    t.send(a, json!({"type":"subscribe","channel":"c","id":4}));
    assert!(t.take(a).is_empty());
    assert!(
        t.decisions.is_empty(),
        "one question at a time per connection"
    );
    // someone else goes on meanwhile
    let r = t.ask(
        b,
        json!({"type":"publish","channel":"open","event":"e","id":9}),
    );
    assert_eq!(r["type"], "ack");
    t.answer(first.ticket, Answer::allow());
    let got = t.take(a);
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(
        (got[0]["id"].clone(), got[1]["id"].clone()),
        (json!(1), json!(2))
    );
    assert_eq!(got[1]["type"], "pong");
    // the second join parked in its turn; the subscribe still waits behind it
    let second = t.decision();
    assert_eq!(
        second.question,
        Question::Join {
            room: "y".into(),
            presence: false
        }
    );
    t.answer(second.ticket, Answer::refuse("nope", "not y"));
    let got = t.take(a);
    assert_eq!(got.len(), 2);
    assert_eq!(
        (got[0]["id"].clone(), got[1]["id"].clone()),
        (json!(3), json!(4))
    );
    assert_eq!(got[1]["type"], "ack");
    assert!(t.hub.channel_subscribers("c").contains(&a));
}

#[test]
fn no_answer_in_time_is_unavailable_and_a_late_answer_changes_nothing() {
    let mut t = hooked(HookConfig {
        join: true,
        timeout_ms: 500,
        ..HookConfig::default()
    });
    let a = t.connect(None);
    t.send(a, json!({"type":"join","room":"r","id":1}));
    t.send(a, json!({"type":"ping","id":2}));
    let d = t.decision();
    t.advance(499);
    assert!(t.take(a).is_empty());
    t.advance(1);
    let got = t.take(a);
    assert_eq!(code(&got[0]), "unavailable");
    assert_eq!(got[0]["id"], 1);
    assert_eq!(got[1]["type"], "pong", "what waited behind it runs");
    assert_eq!(t.hub.stats().decisions_timed_out, 1);
    t.answer(d.ticket, Answer::allow());
    assert!(t.take(a).is_empty());
    assert!(!t.hub.is_member(a, "r"), "a late allow joins nothing");
    assert_eq!(t.hub.stats().decisions_late, 1);
    // an unknown ticket is ignored too
    t.answer(Ticket(999), Answer::allow());
    // and a stale ticket does not settle a newer parked request
    t.send(a, json!({"type":"join","room":"r2","id":3}));
    let d2 = t.decision();
    t.answer(d.ticket, Answer::allow());
    assert!(t.take(a).is_empty());
    t.answer(d2.ticket, Answer::Unavailable);
    assert_eq!(code(&t.take(a)[0]), "unavailable");
}

#[test]
fn a_publish_may_have_its_data_replaced() {
    let mut t = hooked(HookConfig {
        publish: true,
        ..HookConfig::default()
    });
    let a = t.connect(Some("ann"));
    let b = t.connect(None);
    t.join(a, "r");
    t.join(b, "r");
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"say","data":{"text":"darn"},"id":1}),
    );
    let d = t.decision();
    match &d.question {
        Question::Publish {
            target_kind,
            target,
            event,
            data,
        } => {
            assert_eq!(
                (*target_kind, target.as_str(), event.as_str()),
                ("room", "r", "say")
            );
            assert_eq!(
                data.as_deref().map(RawValue::get),
                Some(r#"{"text":"darn"}"#)
            );
        }
        q => panic!("{q:?}"),
    }
    assert!(t.take(b).is_empty(), "nothing delivered before the answer");
    t.answer(d.ticket, Answer::with_data(raw(r#"{"text":"****"}"#)));
    let m = t.take(b);
    assert_eq!(m[0]["data"], json!({"text":"****"}));
    assert_eq!(t.take(a)[0]["seq"], 1);
    // an allow without data keeps the original
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"say","data":1}),
    );
    let d = t.decision();
    t.answer(d.ticket, Answer::allow());
    assert_eq!(t.take(b)[0]["data"], 1);
}

#[test]
fn membership_and_caps_are_checked_before_the_application_is_asked() {
    let mut t = hooked(all_hooks());
    let a = t.connect(None);
    let r = t.ask(a, json!({"type":"publish","room":"nowhere","event":"e"}));
    assert_eq!(code(&r), "not_member");
    assert!(
        t.decisions.is_empty(),
        "the core refuses what it can itself"
    );
}

#[test]
fn rpc_is_answered_by_the_application_or_unsupported() {
    let mut t = hooked(all_hooks());
    let a = t.connect(None);
    t.send(
        a,
        json!({"type":"rpc","method":"time.now","data":{"tz":"UTC"},"id":5}),
    );
    let d = t.decision();
    assert_eq!(
        d.question,
        Question::Rpc {
            method: "time.now".into(),
            data: Some(raw(r#"{"tz":"UTC"}"#))
        }
    );
    t.answer(d.ticket, Answer::with_data(raw("1900000000")));
    assert_eq!(
        t.take(a),
        vec![json!({"type":"ack","id":5,"data":1900000000})]
    );
    t.send(a, json!({"type":"rpc","method":"m","id":6}));
    let d = t.decision();
    t.answer(d.ticket, Answer::allow());
    assert_eq!(t.take(a), vec![json!({"type":"ack","id":6,"data":null})]);

    let mut plain = T::new();
    let b = plain.connect(None);
    let r = plain.ask(b, json!({"type":"rpc","method":"m","id":1}));
    assert_eq!(code(&r), "unsupported");
    let r = plain.ask(b, json!({"type":"rpc","method":"","id":1}));
    assert_eq!(code(&r), "bad_name");
}

#[test]
fn a_connection_closing_while_it_waits_leaves_nothing_behind() {
    let mut t = hooked(all_hooks());
    let a = t.connect(None);
    t.send(a, json!({"type":"join","room":"r"}));
    let d = t.decision();
    t.hub
        .handle_disconnect(
            Timestamp(0),
            a,
            DisconnectReason::Closed { code: Some(1000) },
        )
        .unwrap();
    t.answer(d.ticket, Answer::allow());
    assert!(t.hub.is_empty(), "no room made by a late allow");
    assert_eq!(t.hub.stats().decisions_late, 1, "its ticket went with it");
}

#[test]
fn what_waits_behind_stops_when_the_connection_closes() {
    // The queue behind a parked request closes the connection (a message over the
    // size limit is refused at once, so use a rate-limit-free close: an `auth` with a
    // bad token on a hub with keys); nothing after it is answered.
    use crate::auth::{AuthConfig, KeySet, Verifier};
    let mut keys = KeySet::new();
    keys.add_secret(b"0123456789abcdef0123456789abcdef")
        .unwrap();
    let mut t = T::with(HubConfig {
        hooks: HookConfig {
            rpc: true,
            ..HookConfig::default()
        },
        auth: Some(std::sync::Arc::new(Verifier::new(AuthConfig {
            keys,
            ..AuthConfig::default()
        }))),
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..HeartbeatConfig::default()
        },
        ..HubConfig::default()
    });
    let tok = jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &json!({"sub": "ada", "exp": 4_000_000_000u64}),
        &jsonwebtoken::EncodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap(),
    )
    .unwrap();
    let (a, _) = t.connect_with(ConnectRequest {
        token: Some(tok),
        ..Default::default()
    });
    t.send(a, json!({"type":"rpc","method":"m","id":1}));
    t.send(a, json!({"type":"auth","token":"not.a.token","id":2}));
    t.send(a, json!({"type":"ping","id":3}));
    let d = t.decision();
    t.answer(d.ticket, Answer::allow());
    let got = t.take(a);
    assert_eq!(
        got.len(),
        1,
        "the rpc's ack, then the close; no pong: {got:?}"
    );
    assert_eq!(t.closes, vec![(a, 4001, "unauthorized".to_owned())]);
}

#[test]
fn the_queue_behind_a_parked_request_is_bounded() {
    let mut t = hooked(HookConfig {
        rpc: true,
        max_queued: 2,
        ..HookConfig::default()
    });
    let a = t.connect(None);
    t.send(a, json!({"type":"rpc","method":"slow","id":0}));
    for i in 1..=3 {
        t.send(a, json!({"type":"ping","id":i}));
    }
    let got = t.take(a);
    assert_eq!(got.len(), 1, "the third one is refused at once: {got:?}");
    assert_eq!(
        (code(&got[0]), got[0]["id"].clone()),
        ("rate_limited", json!(3))
    );
    let d = t.decision();
    t.answer(d.ticket, Answer::allow());
    let ids: Vec<Value> = t.take(a).iter().map(|m| m["id"].clone()).collect();
    assert_eq!(ids, vec![json!(0), json!(1), json!(2)]);
}

#[test]
fn server_side_membership_is_told_to_the_connection() {
    let mut t = T::new();
    let a = t.connect(None);
    t.hub.join(Timestamp(0), a, "news", false).unwrap();
    t.drain();
    let j = t.take(a);
    assert_eq!(j.len(), 1);
    assert_eq!(j[0]["type"], "joined");
    assert_eq!(
        (
            j[0]["room"].clone(),
            j[0]["members"].clone(),
            j[0]["seq"].clone()
        ),
        (json!("news"), json!(1), json!(0))
    );
    assert!(j[0]["epoch"].is_string());
    // again: already a member, nothing said
    t.hub.join(Timestamp(0), a, "news", false).unwrap();
    t.drain();
    assert!(t.take(a).is_empty());
    t.hub.leave(Timestamp(0), a, "news").unwrap();
    t.drain();
    assert_eq!(
        t.take(a),
        vec![json!({"type":"left","room":"news","reason":"server"})]
    );
    t.hub.join(Timestamp(0), a, "one", false).unwrap();
    t.hub.join(Timestamp(0), a, "two", false).unwrap();
    t.hub.leave_all(Timestamp(0), a).unwrap();
    t.drain();
    let left: Vec<Value> = t
        .take(a)
        .into_iter()
        .filter(|m| m["type"] == "left")
        .collect();
    assert_eq!(left.len(), 2);
    t.hub
        .create_room(Timestamp(0), "stage", RoomOptions::default())
        .unwrap();
    t.join(a, "stage");
    t.hub.remove_room(Timestamp(0), "stage").unwrap();
    t.drain();
    assert_eq!(
        t.take(a),
        vec![json!({"type":"left","room":"stage","reason":"room_removed"})]
    );
}

fn connect_hooked(timeout_ms: u64) -> T {
    hooked(HookConfig {
        connect: true,
        timeout_ms,
        ..HookConfig::default()
    })
}

impl T {
    /// Admits a connection into a hub with a connect hook: nothing comes before the
    /// answer (returns the id and the decision).
    fn arrive(&mut self, user: Option<&str>, headers: Vec<(String, String)>) -> (ConnId, Decision) {
        let id = self
            .hub
            .connect(
                Timestamp(self.now),
                ConnectRequest {
                    user: user.map(str::to_owned),
                    headers,
                    ..Default::default()
                },
            )
            .expect("admitted to wait");
        self.drain();
        assert!(
            self.take(id).is_empty(),
            "no welcome before the application answers"
        );
        (id, self.decision())
    }
}

#[test]
fn the_application_admits_a_connection_as_whom_it_says() {
    let mut t = connect_hooked(1_000);
    let cookie = vec![("cookie".to_owned(), "session=eve".to_owned())];
    let (a, d) = t.arrive(Some("anon"), cookie.clone());
    assert_eq!(d.question, Question::Connect { headers: cookie });
    assert_eq!(d.user.as_deref(), Some("anon"));
    // invisible while it waits: no server join, no broadcast, no user
    assert!(t.hub.join(Timestamp(0), a, "x", false).is_err());
    assert_eq!(
        t.hub
            .broadcast(Timestamp(0), "e", None, &[])
            .unwrap()
            .delivered,
        0
    );
    assert!(t.hub.user_connections("anon").is_empty());
    // a request sent early waits for the admission
    t.send(a, json!({"type":"join","room":"mine","id":1}));
    assert!(t.take(a).is_empty());
    let info = raw(r#"{"plan":"pro"}"#);
    t.answer(d.ticket, Answer::admit(Some("eve"), Some(&info), &["news"]));
    let got = t.take(a);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["user"], "eve");
    assert_eq!(got[0]["info"], json!({"plan":"pro"}));
    assert_eq!(
        (got[1]["type"].clone(), got[1]["room"].clone()),
        (json!("joined"), json!("news"))
    );
    assert_eq!(
        (got[2]["type"].clone(), got[2]["id"].clone()),
        (json!("ack"), json!(1))
    );
    assert_eq!(t.hub.user_connections("eve"), &[a]);
    assert!(t.hub.user_connections("anon").is_empty());
    assert!(t
        .events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == a)));
    // an `info` that is not a JSON object is not shown
    let (c, d) = t.arrive(None, Vec::new());
    t.answer(
        d.ticket,
        Answer::admit(Some("cy"), Some(&raw("[1,2]")), &[]),
    );
    let w = t.take(c);
    assert!(w[0].get("info").is_none(), "{w:?}");
    // others see the application's identity
    let (b, d) = t.arrive(None, Vec::new());
    t.answer(d.ticket, Answer::admit(None, None, &["news"]));
    t.take(b);
    let r = t.ask(
        a,
        json!({"type":"publish","room":"news","event":"hi","id":2}),
    );
    assert_eq!(r["type"], "ack");
    let m = t.take(b);
    assert_eq!(m[0]["from"]["user"], "eve");
    assert_eq!(m[0]["from"]["info"], json!({"plan":"pro"}));
}

#[test]
fn a_refused_or_unanswered_connection_is_closed_and_never_was() {
    let mut t = connect_hooked(300);
    let (a, d) = t.arrive(None, Vec::new());
    t.answer(d.ticket, Answer::refuse("banned", "you were banned"));
    assert_eq!(t.closes, vec![(a, 4003, "you were banned".to_owned())]);
    let (b, _) = t.arrive(None, Vec::new());
    t.advance(300);
    assert_eq!(t.closes[1], (b, 1013, "unavailable".to_owned()));
    assert_eq!(t.hub.stats().decisions_timed_out, 1);
    for id in [a, b] {
        t.hub
            .handle_disconnect(
                Timestamp(t.now),
                id,
                DisconnectReason::Closed { code: None },
            )
            .unwrap();
    }
    t.drain();
    assert!(
        !t.events
            .iter()
            .any(|e| matches!(e, Event::Connected { .. } | Event::Disconnected { .. })),
        "no Disconnected without Connected: {:?}",
        t.events
    );
    assert!(t.hub.is_empty());
}

#[test]
fn with_tokens_the_application_is_asked_after_the_token() {
    use crate::auth::{AuthConfig, KeySet, Verifier};
    use jsonwebtoken::{encode, EncodingKey, Header};
    const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
    let mut keys = KeySet::new();
    keys.add_secret(SECRET).unwrap();
    let mut t = T::with(HubConfig {
        hooks: HookConfig {
            connect: true,
            ..HookConfig::default()
        },
        auth: Some(std::sync::Arc::new(Verifier::new(AuthConfig {
            keys,
            ..AuthConfig::default()
        }))),
        clock_unix_ms: 1_900_000_000_000,
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..HeartbeatConfig::default()
        },
        ..HubConfig::default()
    });
    let token = encode(
        &Header::default(),
        &json!({"sub": "ada", "exp": 1_900_000_600u64, "rooms": ["team"]}),
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap();
    let a = t
        .hub
        .connect(Timestamp(0), ConnectRequest::default())
        .unwrap();
    t.drain();
    assert!(t.decisions.is_empty(), "nothing asked before the token");
    t.send(a, json!({"type":"auth","token": token}));
    assert!(t.take(a).is_empty());
    let d = t.decision();
    assert_eq!(d.user.as_deref(), Some("ada"));
    t.answer(d.ticket, Answer::allow());
    let got = t.take(a);
    assert_eq!(
        (got[0]["type"].clone(), got[0]["user"].clone()),
        (json!("welcome"), json!("ada"))
    );
    assert_eq!(
        got[1]["room"], "team",
        "the token's rooms claim, once admitted"
    );
}
