//! The server HTTP API over a hub: every route, its errors, and what connections see.

use serde_json::{json, Value};

use super::*;
use crate::hub::ConnectRequest;
use crate::hub::{HistoryConfig, HubConfig, Output};

struct A {
    hub: Hub,
}

impl A {
    fn new() -> A {
        A {
            hub: Hub::new(
                HubConfig {
                    history: HistoryConfig {
                        max_messages: 10,
                        max_age_ms: 60_000,
                        ..HistoryConfig::default()
                    },
                    ..HubConfig::default()
                },
                [1; 32],
                Timestamp(0),
            ),
        }
    }

    fn call(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let (path, query) = match path.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path, None),
        };
        let r = handle(
            &mut self.hub,
            Timestamp(0),
            ApiRequest {
                method,
                path,
                query,
                body: body.as_bytes(),
            },
        );
        (r.status, serde_json::from_str(&r.body).expect("JSON"))
    }

    /// Connects `user`; returns its id and wire id.
    fn connect(&mut self, user: &str) -> (ConnId, String) {
        let id = self
            .hub
            .connect(
                Timestamp(0),
                ConnectRequest {
                    user: Some(user.into()),
                    ..Default::default()
                },
            )
            .unwrap();
        let wire = self.hub.connection(id).unwrap().wire_id.to_owned();
        (id, wire)
    }

    /// Every text sent to `id` so far, parsed.
    fn inbox(&mut self, id: ConnId) -> Vec<Value> {
        let mut got = Vec::new();
        let mut keep = Vec::new();
        while let Some(o) = self.hub.poll_output() {
            match o {
                Output::Send { conn, msg } if conn == id => {
                    got.push(serde_json::from_str(msg.text()).unwrap())
                }
                Output::SendFrames { conn, frames } if conn == id => {
                    for t in frames.texts() {
                        got.push(serde_json::from_str(t).unwrap());
                    }
                }
                other => keep.push(other),
            }
        }
        drop(keep);
        got
    }
}

#[test]
fn rooms_are_created_listed_read_and_removed() {
    let mut a = A::new();
    let (s, v) = a.call(
        "PUT",
        "/rooms/game%3A1",
        json!({"data": {"map": "dust"}, "max_members": 2}),
    );
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["room"], "game:1");
    assert_eq!(v["data"], json!({"map": "dust"}));
    assert_eq!(v["connections"], json!([]));
    let (s, v) = a.call("GET", "/rooms", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(v["rooms"][0]["room"], "game:1");
    assert_eq!(v["rooms"][0]["members"], 0);
    let (s, _) = a.call("GET", "/rooms/nope", Value::Null);
    assert_eq!(s, 404);
    let (s, v) = a.call("PUT", "/rooms/x", json!({"max_members": 0}));
    assert_eq!((s, v["error"]["code"].clone()), (400, json!("bad_request")));
    let (s, v) = a.call("PUT", "/rooms/x", json!({"bogus": 1}));
    assert_eq!(s, 400, "{v}");
    let (s, _) = a.call("DELETE", "/rooms/game%3A1", Value::Null);
    assert_eq!(s, 200);
    let (s, _) = a.call("DELETE", "/rooms/game%3A1", Value::Null);
    assert_eq!(s, 404);
}

#[test]
fn members_joined_and_taken_out_by_the_server_are_told() {
    let mut a = A::new();
    let (ann, ann_w) = a.connect("ann");
    let (bob, _) = a.connect("bob");
    let (bob2, _) = a.connect("bob");
    a.inbox(ann);
    let (s, v) = a.call("POST", "/rooms/r/members", json!({"conn": ann_w}));
    assert_eq!((s, v), (200, json!({"joined": 1})));
    let got = a.inbox(ann);
    assert_eq!(got[0]["type"], "joined");
    assert_eq!(got[0]["room"], "r");
    let (s, v) = a.call("POST", "/rooms/r/members", json!({"user": "bob"}));
    assert_eq!((s, v), (200, json!({"joined": 2})));
    assert!(a.hub.is_member(bob, "r") && a.hub.is_member(bob2, "r"));
    let (_, v) = a.call("GET", "/rooms/r", Value::Null);
    assert_eq!(v["members"], 3);
    assert_eq!(v["connections"].as_array().unwrap().len(), 3);
    assert!(v["connections"][0]["conn"].is_string());
    let (s, _) = a.call("DELETE", &format!("/rooms/r/members/{ann_w}"), Value::Null);
    assert_eq!(s, 200);
    assert!(a
        .inbox(ann)
        .iter()
        .any(|m| m["type"] == "left" && m["reason"] == "server"));
    let (s, _) = a.call("POST", "/rooms/r/members", json!({"conn": "nobody"}));
    assert_eq!(s, 404);
    let (s, _) = a.call("POST", "/rooms/r/members", json!({}));
    assert_eq!(s, 400);
}

#[test]
fn publish_reaches_rooms_channels_users_and_everyone() {
    let mut a = A::new();
    let (ann, ann_w) = a.connect("ann");
    let (bob, _) = a.connect("bob");
    a.call("POST", "/rooms/r/members", json!({"user": "ann"}));
    a.call("POST", "/rooms/r/members", json!({"user": "bob"}));
    let (s, v) = a.call(
        "POST",
        "/publish",
        json!({"room": "r", "event": "news", "data": {"n": 1}, "exclude": [ann_w]}),
    );
    assert_eq!((s, v), (200, json!({"delivered": 1, "seq": 1})));
    let m: Vec<Value> = a
        .inbox(bob)
        .into_iter()
        .filter(|m| m["type"] == "message")
        .collect();
    assert_eq!(m[0]["data"], json!({"n": 1}));
    assert_eq!(m[0]["from"], Value::Null);
    assert!(a.inbox(ann).iter().all(|m| m["type"] != "message"));
    let (_, v) = a.call("POST", "/publish", json!({"user": "ann", "event": "dm"}));
    assert_eq!(v, json!({"delivered": 1}));
    let (_, v) = a.call("POST", "/publish", json!({"all": true, "event": "hello"}));
    assert_eq!(v, json!({"delivered": 2}));
    a.call("PUT", "/channels/c/rooms/r", Value::Null);
    let (_, v) = a.call("POST", "/publish", json!({"channel": "c", "event": "e"}));
    assert_eq!(v, json!({"delivered": 2}));
    let (s, _) = a.call("DELETE", "/channels/c/rooms/r", Value::Null);
    assert_eq!(s, 200);
    let (_, v) = a.call("POST", "/publish", json!({"channel": "c", "event": "e"}));
    assert_eq!(
        v,
        json!({"delivered": 0}),
        "unlinked: the room's members no longer get it"
    );
    let (s, _) = a.call("DELETE", "/channels/nope/rooms/r", Value::Null);
    assert_eq!(s, 404);
    for bad in [
        json!({"event": "e"}),
        json!({"room": "r", "user": "ann", "event": "e"}),
        json!({"room": "r"}),
        json!({"room": "r", "event": ""}),
    ] {
        let (s, v) = a.call("POST", "/publish", bad.clone());
        assert_eq!(s, 400, "{bad} -> {v}");
    }
    let (s, _) = a.call("POST", "/publish", json!({"room": "nope", "event": "e"}));
    assert_eq!(s, 404);
}

#[test]
fn history_stats_and_disconnects() {
    let mut a = A::new();
    let (ann, ann_w) = a.connect("ann");
    a.connect("bob");
    a.connect("bob");
    a.call("POST", "/rooms/r/members", json!({"user": "ann"}));
    for n in 0..3 {
        a.call(
            "POST",
            "/publish",
            json!({"room": "r", "event": "e", "data": n}),
        );
    }
    let (s, v) = a.call("GET", "/rooms/r/history?since=1", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(v["seq"], 3);
    let seqs: Vec<Value> = v["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["seq"].clone())
        .collect();
    assert_eq!(seqs, vec![json!(2), json!(3)]);
    let (s, _) = a.call("GET", "/rooms/r/history?since=x", Value::Null);
    assert_eq!(s, 400);
    let (_, v) = a.call("GET", "/stats", Value::Null);
    assert_eq!(
        (v["connections"].clone(), v["rooms"].clone()),
        (json!(3), json!(1))
    );
    let (_, v) = a.call(
        "POST",
        "/users/bob/disconnect",
        json!({"code": 4003, "reason": "banned"}),
    );
    assert_eq!(v, json!({"disconnected": 2}));
    let (s, _) = a.call("POST", "/users/bob/disconnect", json!({"code": 1011}));
    assert_eq!(s, 400);
    let (_, v) = a.call(
        "POST",
        &format!("/connections/{ann_w}/disconnect"),
        Value::Null,
    );
    assert_eq!(v, json!({"disconnected": 1}));
    let closes: Vec<(u16, String)> = std::iter::from_fn(|| a.hub.poll_output())
        .filter_map(|o| match o {
            Output::Close { conn, code, reason } if conn == ann => {
                Some((code, reason.into_owned()))
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        closes,
        vec![(4003, "disconnected by the server".to_owned())]
    );
}

#[test]
fn unknown_paths_methods_and_encodings() {
    let mut a = A::new();
    assert_eq!(a.call("GET", "/nope", Value::Null).0, 404);
    assert_eq!(a.call("DELETE", "/publish", Value::Null).0, 405);
    assert_eq!(a.call("POST", "/rooms", Value::Null).0, 405);
    assert_eq!(a.call("GET", "/rooms/%zz", Value::Null).0, 400);
    assert_eq!(a.call("POST", "/publish", json!([1])).0, 400);
}

#[test]
fn the_key_is_compared_whole() {
    assert!(authorized(Some("Bearer s3cret"), "s3cret"));
    assert!(!authorized(Some("Bearer s3cre"), "s3cret"));
    assert!(!authorized(Some("bearer s3cret"), "s3cret"));
    assert!(!authorized(Some("s3cret"), "s3cret"));
    assert!(!authorized(None, "s3cret"));
}
