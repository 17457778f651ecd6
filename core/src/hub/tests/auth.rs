//! Tokens in the hub, on virtual time: admission by URL token or first-message `auth`,
//! caps, the `rooms` claim, room tokens and their expiry, `expiring` and refresh.
//! (Signatures of every algorithm against PyJWT: `core/tests/golden_tokens.rs`.)

use std::sync::Arc;

use jsonwebtoken::{encode, EncodingKey, Header};

use super::*;
use crate::auth::{AuthConfig, KeySet, Verifier};

const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
/// Unix seconds at the hub's Timestamp(0).
const T0: u64 = 1_900_000_000;

fn token(claims: Value) -> String {
    encode(
        &Header::default(),
        &claims,
        &EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

/// A token for `sub`, valid for `secs` from T0, with extra claims merged in.
fn tok(sub: &str, secs: u64, extra: Value) -> String {
    let mut c = json!({"sub": sub, "exp": T0 + secs});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    token(c)
}

fn auth_config(deny_by_default: bool) -> HubConfig {
    let mut keys = KeySet::new();
    keys.add_secret(SECRET).unwrap();
    HubConfig {
        auth: Some(Arc::new(Verifier::new(AuthConfig {
            keys,
            deny_by_default,
            ..AuthConfig::default()
        }))),
        clock_unix_ms: T0 * 1000,
        // These tests run minutes of virtual time without answering pings.
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..HeartbeatConfig::default()
        },
        ..HubConfig::default()
    }
}

impl T {
    /// Connects with a URL token; returns the id and the welcome.
    fn connect_token(&mut self, token: &str, user: Option<&str>) -> (ConnId, Value) {
        let (id, got) = self.connect_with(ConnectRequest {
            user: user.map(str::to_owned),
            token: Some(token.to_owned()),
            ..Default::default()
        });
        (id, got[0].clone())
    }

    fn connect_bare(&mut self) -> ConnId {
        let id = self
            .hub
            .connect(Timestamp(self.now), ConnectRequest::default())
            .unwrap();
        self.drain();
        id
    }

    fn closes_of(&self, id: ConnId) -> Vec<(u16, String)> {
        self.closes
            .iter()
            .filter(|(c, _, _)| *c == id)
            .map(|(_, code, r)| (*code, r.clone()))
            .collect()
    }
}

#[test]
fn a_url_token_names_the_user_and_user_param_is_ignored() {
    let mut t = T::with(auth_config(false));
    let info = json!({"name": "Ada L.", "avatar": "a.png"});
    let (a, w) = t.connect_token(&tok("ada", 3600, json!({"info": info})), Some("mallory"));
    assert_eq!(w["user"], "ada");
    assert_eq!(w["info"], info);
    assert_eq!(t.hub.connection(a).unwrap().user, Some("ada"));
    // info travels with the user in `from` and presence.
    let (b, _) = t.connect_token(&tok("bob", 3600, json!({})), None);
    let ack = t.ask(b, json!({"type":"join","room":"r","presence":true}));
    assert_eq!(ack["type"], "ack");
    t.join(a, "r");
    let p = t.take(b);
    assert_eq!(p[0]["joined"][0]["info"], info, "{p:?}");
    assert_eq!(p[0]["joined"][0]["user"], "ada");
    t.ask(a, json!({"type":"publish","room":"r","event":"e","data":1}));
    let m = t.take(b);
    assert_eq!(m[0]["from"]["info"], info);
    assert_eq!(m[0]["from"]["user"], "ada");
    // a user without info shows none.
    let ack = t.ask(a, json!({"type":"join","room":"r2","presence":true}));
    assert_eq!(ack["type"], "ack");
    t.join(b, "r2");
    let p = t.take(a);
    assert!(p[0]["joined"][0].get("info").is_none(), "{p:?}");
}

#[test]
fn a_refused_url_token_takes_no_slot() {
    let mut t = T::with(auth_config(false));
    for bad in [
        tok("ada", 0, json!({})).replace('.', "x"),
        token(json!({"sub": "ada", "exp": T0 - 10})),
        token(json!({"sub": "ada"})),
        token(json!({"exp": T0 + 10})),
        token(json!({"sub": "", "exp": T0 + 10})),
        token(json!({"sub": "ada", "exp": T0 + 10, "info": "not an object"})),
        token(json!({"sub": "ada", "exp": T0 + 10, "info": {"x": "y".repeat(1100)}})),
        token(json!({"sub": "ada", "exp": T0 + 10, "rooms": ["ok", ""]})),
        token(json!({"sub": "ada", "exp": T0 + 10, "caps": [{"rooms": ["a"], "allow": ["fly"]}]})),
    ] {
        let r = t.hub.connect(
            Timestamp(0),
            ConnectRequest {
                token: Some(bad.clone()),
                ..Default::default()
            },
        );
        assert!(
            matches!(r, Err(ConnectError::Unauthorized(_))),
            "{bad}: {r:?}"
        );
    }
    assert_eq!(t.hub.connections().count(), 0);
    t.drain();
    assert!(t.inbox.is_empty());
}

#[test]
fn without_a_url_token_the_first_message_must_be_auth() {
    let mut t = T::with(auth_config(false));
    // auth first: welcome after it, with the token's user.
    let a = t.connect_bare();
    assert!(t.take(a).is_empty(), "no welcome before auth");
    t.send(
        a,
        json!({"type":"auth","token": tok("ada", 3600, json!({})), "id": 1}),
    );
    let w = t.take(a);
    assert_eq!(w.len(), 1, "{w:?}");
    assert_eq!(w[0]["type"], "welcome");
    assert_eq!(w[0]["user"], "ada");
    assert_eq!(t.join(a, "r")["members"], 1);

    // anything else first: 4001.
    for first in [
        json!({"type":"join","room":"r"}).to_string(),
        json!({"type":"ping"}).to_string(),
        "not json".to_owned(),
        json!({"type":"auth"}).to_string(),
    ] {
        let b = t.connect_bare();
        t.text(b, &first);
        assert_eq!(
            t.closes_of(b),
            vec![(4001, "unauthorized".to_owned())],
            "{first}"
        );
        assert!(t.take(b).is_empty());
    }
    // a bad token in auth: 4001.
    let c = t.connect_bare();
    t.send(
        c,
        json!({"type":"auth","token": token(json!({"sub":"c","exp": T0 - 60}))}),
    );
    assert_eq!(t.closes_of(c), vec![(4001, "unauthorized".to_owned())]);
    assert!(t.events.iter().any(|e| matches!(e,
        Event::TokenRefused { conn, error: crate::auth::AuthError::Expired } if *conn == c)));
    // binary first: 4001.
    let d = t.connect_bare();
    t.hub.handle_binary(Timestamp(t.now), d, 3).unwrap();
    t.drain();
    assert_eq!(t.closes_of(d)[0].0, 4001);
}

#[test]
fn no_auth_within_the_timeout_closes_4001() {
    let mut t = T::with(auth_config(false));
    let a = t.connect_bare();
    t.advance(9_999);
    assert!(t.closes_of(a).is_empty());
    t.advance(1);
    assert_eq!(t.closes_of(a), vec![(4001, "auth timeout".to_owned())]);
}

#[test]
fn caps_allow_exactly_what_a_grant_says() {
    let mut t = T::with(auth_config(false));
    let caps = json!([
        {"rooms": ["game:*"], "allow": ["join"]},
        {"rooms": ["chat"], "allow": ["join", "publish", "presence", "history"]},
        {"channels": ["news"], "allow": ["subscribe"]},
        {"users": ["admin"], "allow": ["publish"]}
    ]);
    let (g, _) = t.connect_token(&tok("gamer", 3600, json!({"caps": caps})), None);
    assert_eq!(t.join(g, "game:1")["room"], "game:1");
    let r = t.ask(g, json!({"type":"publish","room":"game:1","event":"e"}));
    assert_eq!(code(&r), "forbidden");
    for join in [
        json!({"type":"join","room":"lobby"}),
        json!({"type":"join","room":"game:2","presence":true}),
        json!({"type":"join","room":"game:3","since":0}),
    ] {
        assert_eq!(code(&t.ask(g, join.clone())), "forbidden", "{join}");
    }
    t.join(g, "chat");
    let r = t.ask(g, json!({"type":"publish","room":"chat","event":"e"}));
    assert_eq!(r["type"], "ack");
    let r = t.ask(
        g,
        json!({"type":"join","room":"chat","presence":true,"since":0}),
    );
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(
        t.ask(g, json!({"type":"subscribe","channel":"news"}))["type"],
        "ack"
    );
    assert_eq!(
        code(&t.ask(g, json!({"type":"subscribe","channel":"other"}))),
        "forbidden"
    );
    let r = t.ask(g, json!({"type":"publish","channel":"news","event":"e"}));
    assert_eq!(code(&r), "forbidden");
    let r = t.ask(g, json!({"type":"publish","user":"admin","event":"e"}));
    assert_eq!(r["type"], "ack");
    let r = t.ask(g, json!({"type":"publish","user":"bob","event":"e"}));
    assert_eq!(code(&r), "forbidden");
    // not_member comes before forbidden for a room it is not in.
    let r = t.ask(g, json!({"type":"publish","room":"game:9","event":"e"}));
    assert_eq!(code(&r), "not_member");

    // No caps: the open rules; deny-by-default: nothing.
    let (o, _) = t.connect_token(&tok("open", 3600, json!({})), None);
    assert_eq!(t.join(o, "anything")["type"], "ack");
    let mut d = T::with(auth_config(true));
    let (n, _) = d.connect_token(&tok("n", 3600, json!({})), None);
    assert_eq!(
        code(&d.ask(n, json!({"type":"join","room":"r"}))),
        "forbidden"
    );
    assert_eq!(
        code(&d.ask(n, json!({"type":"subscribe","channel":"c"}))),
        "forbidden"
    );
    assert_eq!(
        code(&d.ask(n, json!({"type":"publish","user":"x","event":"e"}))),
        "forbidden"
    );
    let (y, _) = d.connect_token(
        &tok(
            "y",
            3600,
            json!({"caps": [{"rooms": ["r"], "allow": ["join"]}]}),
        ),
        None,
    );
    assert_eq!(d.join(y, "r")["type"], "ack");
}

#[test]
fn the_rooms_claim_joins_at_connect_and_says_joined() {
    let mut t = T::with(auth_config(false));
    let (a, _) = t.connect_token(&tok("ada", 3600, json!({})), None);
    t.join(a, "team");
    t.ask(a, json!({"type":"publish","room":"team","event":"e"}));
    let (id, msgs) = t.connect_with(ConnectRequest {
        token: Some(tok("bob", 3600, json!({"rooms": ["team", "inbox:bob"]}))),
        ..Default::default()
    });
    assert_eq!(msgs[0]["type"], "welcome");
    assert_eq!(
        msgs[1],
        json!({"type":"joined","room":"team","members":2,"epoch":msgs[1]["epoch"],"seq":1})
    );
    assert_eq!(msgs[2]["type"], "joined");
    assert_eq!(msgs[2]["room"], "inbox:bob");
    assert_eq!(msgs[2]["members"], 1);
    t.ask(a, json!({"type":"publish","room":"team","event":"hi"}));
    assert_eq!(t.take(id)[0]["event"], "hi");
}

#[test]
fn expiring_then_refresh_keeps_the_connection_and_no_refresh_closes_after_the_grace() {
    let mut t = T::with(auth_config(false));
    let (a, _) = t.connect_token(&tok("ada", 100, json!({})), None);
    let (b, _) = t.connect_token(&tok("bob", 100, json!({})), None);
    // 30 s before exp: expiring.
    t.advance(69_999);
    assert!(t.take(a).iter().all(|m| m["type"] != "expiring"));
    t.advance(1);
    let m = t.take(a);
    assert_eq!(m, vec![json!({"type":"expiring","in_ms":30_000})]);
    assert_eq!(t.take(b), vec![json!({"type":"expiring","in_ms":30_000})]);
    // a renews with a new token; a token for someone else closes 4001.
    let r = t.ask(
        a,
        json!({"type":"auth","token": tok("ada", 400, json!({})), "id": 7}),
    );
    assert_eq!(r, json!({"type":"ack","id":7}));
    // b says nothing: closed at exp + 10 s grace, not before.
    t.advance(30_000 + 9_999);
    assert!(t.closes_of(b).is_empty());
    t.advance(1);
    assert_eq!(t.closes_of(b), vec![(4001, "token expired".to_owned())]);
    assert!(t.closes_of(a).is_empty());
    // a gets its next expiring 30 s before the new exp.
    t.advance(400_000 - 30_000 - t.now);
    assert_eq!(t.take(a), vec![json!({"type":"expiring","in_ms":30_000})]);
    t.send(
        a,
        json!({"type":"auth","token": tok("eve", 900, json!({}))}),
    );
    assert_eq!(t.closes_of(a), vec![(4001, "unauthorized".to_owned())]);
}

#[test]
fn a_token_shorter_than_the_notice_is_warned_at_half_its_life_not_at_once() {
    // With 30 s of notice, a 12 s token warned on arrival would be refreshed, warned
    // again, refreshed... in a loop at network speed. Half its life instead.
    let mut t = T::with(auth_config(false));
    let (a, _) = t.connect_token(&tok("ada", 12, json!({})), None);
    assert!(t.take(a).iter().all(|m| m["type"] != "expiring"));
    t.advance(5_999);
    assert!(t.take(a).is_empty());
    t.advance(1);
    assert_eq!(t.take(a), vec![json!({"type":"expiring","in_ms":6_000})]);
    // refreshed at 6 s with another 12 s token (exp 18 s): warned at 12 s
    let r = t.ask(
        a,
        json!({"type":"auth","token": tok("ada", 18, json!({})), "id": 1}),
    );
    assert_eq!(r["type"], "ack");
    t.advance(5_999);
    assert!(t.take(a).is_empty());
    t.advance(1);
    assert_eq!(t.take(a), vec![json!({"type":"expiring","in_ms":6_000})]);
    // and that timing survives a snapshot (a Durable Object hibernating)
    let snap = t.hub.snapshot_conn(a).expect("known");
    assert_eq!(snap.auth.as_ref().unwrap().warn_at, Some(12_000));
}

#[test]
fn a_refresh_replaces_the_grants() {
    let mut t = T::with(auth_config(false));
    let caps = |r: &str| json!({"caps": [{"rooms": [r], "allow": ["join"]}]});
    let (a, _) = t.connect_token(&tok("ada", 100, caps("one")), None);
    assert_eq!(t.join(a, "one")["type"], "ack");
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"two"}))),
        "forbidden"
    );
    let r = t.ask(
        a,
        json!({"type":"auth","token": tok("ada", 100, caps("two"))}),
    );
    assert_eq!(r["type"], "ack");
    assert_eq!(t.join(a, "two")["type"], "ack");
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"three"}))),
        "forbidden"
    );
}

#[test]
fn room_tokens_open_one_room_to_one_user_until_they_expire() {
    let mut t = T::with(auth_config(true));
    let (a, _) = t.connect_token(&tok("ada", 3600, json!({})), None);
    let (w, _) = t.connect_token(
        &tok(
            "watcher",
            3600,
            json!({"caps": [{"rooms": ["*"], "allow": ["join", "presence"]}]}),
        ),
        None,
    );
    let r = t.ask(w, json!({"type":"join","room":"vip","presence":true}));
    assert_eq!(r["type"], "ack");
    let rt = |sub: &str, room: &str, secs: u64| {
        token(json!({"sub": sub, "room": room, "exp": T0 + secs}))
    };
    // deny-by-default: without a room token nothing.
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"vip"}))),
        "forbidden"
    );
    for (bad, why) in [
        (rt("ada", "other", 60), "room"),
        (rt("bob", "vip", 60), "user"),
        (rt("ada", "vip", 0).replace('.', "x"), "garbage"),
        (
            token(json!({"sub":"ada","room":"vip","exp": T0 - 30})),
            "expired",
        ),
        (token(json!({"sub":"ada","exp": T0 + 30})), "no room claim"),
    ] {
        let r = t.ask(a, json!({"type":"join","room":"vip","token": bad}));
        assert_eq!(code(&r), "forbidden", "{why}: {r}");
    }
    // a valid one: join, publish, presence, history by default.
    let r = t.ask(
        a,
        json!({"type":"join","room":"vip","token": rt("ada", "vip", 60),"presence":true}),
    );
    assert_eq!(r["type"], "ack", "{r}");
    assert_eq!(
        t.ask(a, json!({"type":"publish","room":"vip","event":"e"}))["type"],
        "ack"
    );
    t.take(w);
    // allow narrows it.
    let ro = token(json!({"sub":"ada","room":"ro","exp": T0 + 60, "allow": ["join"]}));
    assert_eq!(
        t.ask(a, json!({"type":"join","room":"ro","token": ro}))["type"],
        "ack"
    );
    assert_eq!(
        code(&t.ask(a, json!({"type":"publish","room":"ro","event":"e"}))),
        "forbidden"
    );
    // At exp the connection leaves the room: `left`, presence for others.
    t.advance(59_999);
    assert!(t.take(a).is_empty());
    t.advance(1);
    let mut got = t.take(a);
    got.sort_by_key(|m| m["room"].as_str().unwrap().to_owned());
    assert_eq!(
        got,
        vec![
            json!({"type":"left","room":"ro","reason":"token_expired"}),
            json!({"type":"left","room":"vip","reason":"token_expired"}),
        ]
    );
    assert_eq!(t.take(w)[0]["left"][0]["user"], "ada");
    assert_eq!(
        code(&t.ask(a, json!({"type":"publish","room":"vip","event":"e"}))),
        "not_member"
    );
    assert!(t.closes_of(a).is_empty(), "the connection stays");
}

#[test]
fn a_fresh_room_token_before_expiry_keeps_the_member() {
    let mut t = T::with(auth_config(true));
    let (a, _) = t.connect_token(&tok("ada", 3600, json!({})), None);
    let rt = |secs: u64| token(json!({"sub": "ada", "room": "vip", "exp": T0 + secs}));
    assert_eq!(
        t.ask(a, json!({"type":"join","room":"vip","token": rt(60)}))["type"],
        "ack"
    );
    t.advance(50_000);
    let r = t.ask(a, json!({"type":"join","room":"vip","token": rt(120)}));
    assert_eq!(r["type"], "ack");
    t.advance(10_000);
    assert!(
        t.take(a).is_empty(),
        "still in vip past the first token's exp"
    );
    assert_eq!(
        t.ask(a, json!({"type":"publish","room":"vip","event":"e"}))["type"],
        "ack"
    );
    t.advance(60_000);
    assert_eq!(
        t.take(a),
        vec![json!({"type":"left","room":"vip","reason":"token_expired"})]
    );
    // A leave forgets the room token: rejoining needs one again.
    assert_eq!(
        t.ask(a, json!({"type":"join","room":"vip","token": rt(600)}))["type"],
        "ack"
    );
    assert_eq!(
        t.ask(a, json!({"type":"leave","room":"vip"}))["type"],
        "ack"
    );
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"vip"}))),
        "forbidden"
    );
}

#[test]
fn an_open_hub_says_it_checks_no_tokens() {
    let mut t = T::new();
    let a = t.connect(Some("ada"));
    let r = t.ask(a, json!({"type":"auth","token":"x.y.z"}));
    assert_eq!(code(&r), "unsupported");
    let r = t.ask(a, json!({"type":"join","room":"r","token":"x.y.z"}));
    assert_eq!(code(&r), "unsupported");
    assert_eq!(code(&t.ask(a, json!({"type":"auth"}))), "bad_request");
}

#[test]
fn max_rooms_bounds_the_rooms_a_hub_holds() {
    let mut t = T::with(HubConfig {
        max_rooms: Some(3),
        ..HubConfig::default()
    });
    let a = t.connect(None);
    for r in ["a", "b", "c"] {
        t.join(a, r);
    }
    let r = t.ask(a, json!({"type":"join","room":"d"}));
    assert_eq!(code(&r), "too_many_rooms");
    let b = t.connect(None);
    assert_eq!(
        t.join(b, "a")["members"],
        2,
        "joining a room that exists is fine"
    );
    t.ask(a, json!({"type":"leave","room":"c"}));
    assert_eq!(t.join(a, "d")["type"], "ack", "a freed room makes room");
}

#[test]
fn a_room_token_is_not_a_connection_token() {
    let mut t = T::with(auth_config(false));
    let rt = token(json!({"sub": "ada", "room": "vip", "exp": T0 + 60}));
    let r = t.hub.connect(
        Timestamp(0),
        ConnectRequest {
            token: Some(rt.clone()),
            ..Default::default()
        },
    );
    assert!(
        matches!(
            r,
            Err(ConnectError::Unauthorized(
                crate::auth::AuthError::BadClaim("room")
            ))
        ),
        "{r:?}"
    );
    let a = t.connect_bare();
    t.send(a, json!({"type":"auth","token": rt}));
    assert_eq!(t.closes_of(a), vec![(4001, "unauthorized".to_owned())]);
}

#[test]
fn an_epoch_alone_needs_the_history_right_too() {
    let mut t = T::with(auth_config(false));
    let caps = json!({"caps": [{"rooms": ["r"], "allow": ["join"]}]});
    let (a, _) = t.connect_token(&tok("ada", 3600, caps), None);
    let r = t.ask(a, json!({"type":"join","room":"r","epoch":"made-up"}));
    assert_eq!(code(&r), "forbidden");
    assert_eq!(t.join(a, "r")["type"], "ack");
}

#[test]
fn a_server_kick_spends_the_room_token() {
    let mut t = T::with(auth_config(true));
    let (a, _) = t.connect_token(&tok("ada", 3600, json!({})), None);
    let rt = token(json!({"sub": "ada", "room": "vip", "exp": T0 + 60}));
    assert_eq!(
        t.ask(a, json!({"type":"join","room":"vip","token": rt}))["type"],
        "ack"
    );
    t.hub.leave(Timestamp(t.now), a, "vip").unwrap();
    t.drain();
    t.take(a);
    assert_eq!(
        code(&t.ask(a, json!({"type":"join","room":"vip"}))),
        "forbidden"
    );
    // and no stale expiry later
    t.advance(120_000);
    assert!(t.take(a).is_empty());
}

#[test]
fn a_connection_waiting_for_auth_gets_nothing_and_is_not_there_for_the_server_api() {
    let mut t = T::with(auth_config(false));
    let (a, _) = t.connect_token(&tok("ada", 3600, json!({})), None);
    let p = t.connect_bare();
    t.hub.broadcast(Timestamp(0), "news", None, &[]).unwrap();
    t.drain();
    assert_eq!(t.take(a).len(), 1);
    assert!(t.take(p).is_empty());
    assert!(t.hub.join(Timestamp(0), p, "r", false).is_err());
    assert!(t.hub.subscribe(Timestamp(0), p, "c").is_err());
    // It may still be kicked; a refused or timed-out waiter never had `Connected`, so it
    // gets no `Disconnected` either.
    t.hub.disconnect(Timestamp(0), p, 4003, "go").unwrap();
    t.drain();
    assert_eq!(t.closes_of(p)[0].0, 4003);
    assert!(!t
        .events
        .iter()
        .any(|e| matches!(e, Event::Disconnected { conn, .. } if *conn == p)));
    assert!(!t
        .events
        .iter()
        .any(|e| matches!(e, Event::Connected { conn, .. } if *conn == p)));
}
