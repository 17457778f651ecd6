//! Hub tests: joins, leaves, presence, channels and the one rule set for them.

use serde_json::json;
use serde_json::value::RawValue;

use super::*;

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
    let told: Vec<Value> = t.take(a);
    assert_eq!(told.len(), 1, "told of r1 only: {told:?}");
    assert_eq!(
        (told[0]["type"].clone(), told[0]["room"].clone()),
        (json!("joined"), json!("r1"))
    );
    // The client sees the same rule with its own codes.
    let e = t.ask(a, json!({"type":"subscribe","channel":"c3"}));
    assert_eq!(code(&e), "too_many_subscriptions");
    let e = t.ask(a, json!({"type":"join","room":"r3"}));
    assert_eq!(code(&e), "too_many_rooms");
    t.hub.check_invariants();
}

#[test]
fn user_presence_reports_a_users_first_connection_in_and_last_out() {
    let mut t = T::new();
    let w = t.connect(Some("watcher"));
    let v = t.connect(Some("viewer"));
    let a1 = t.connect(Some("ann"));
    let a2 = t.connect(Some("ann"));
    let x = t.connect(None);
    let wires: HashMap<ConnId, String> = [a1, a2, x]
        .iter()
        .map(|&id| (id, t.hub.connection(id).unwrap().wire_id.to_string()))
        .collect();
    let wire = |id: ConnId| wires[&id].clone();
    let ack = t.ask(w, json!({"type":"join","room":"r","presence":"users"}));
    assert_eq!(ack["present"].as_array().unwrap().len(), 1, "itself");
    t.ask(v, json!({"type":"join","room":"r","presence":true}));
    t.take(w);
    let joined = |m: &Value| m["joined"][0]["conn"].as_str().map(str::to_owned);
    let left = |m: &Value| m["left"][0]["conn"].as_str().map(str::to_owned);

    t.join(a1, "r");
    let got = t.take(w);
    assert_eq!(got.len(), 1);
    assert_eq!(
        joined(&got[0]),
        Some(wire(a1)),
        "ann's first tab: ann joined"
    );
    assert_eq!(got[0]["joined"][0]["user"], "ann");
    t.join(a2, "r");
    assert!(t.take(w).is_empty(), "ann's second tab is not news");
    assert_eq!(
        t.take(v).len(),
        2,
        "the per-connection watcher saw both tabs"
    );

    // the present list names each user once, anonymous connections each
    t.join(x, "r");
    assert_eq!(
        joined(&t.take(w)[0]),
        Some(wire(x)),
        "an anonymous connection is its own user"
    );
    let late = t.connect(Some("late"));
    let ack = t.ask(late, json!({"type":"join","room":"r","presence":"users"}));
    let users: Vec<&str> = ack["present"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["user"].as_str().unwrap_or("-"))
        .collect();
    assert_eq!(users, ["watcher", "viewer", "ann", "-", "late"]);
    t.take(w);
    t.take(v);

    // closing one of ann's tabs is not a departure; the last one is
    t.ask(a1, json!({"type":"leave","room":"r"}));
    assert!(t.take(w).is_empty(), "a false left for a user still there");
    assert_eq!(t.take(v).len(), 1);
    t.hub
        .handle_disconnect(
            Timestamp(t.now),
            a2,
            DisconnectReason::Closed { code: None },
        )
        .unwrap();
    t.drain();
    let got = t.take(w);
    assert_eq!(got.len(), 1);
    assert_eq!(left(&got[0]), Some(wire(a2)));
    assert_eq!(got[0]["left"][0]["user"], "ann");
    t.hub.check_invariants();
}

#[test]
fn presence_mode_switches_on_a_second_join() {
    let mut t = T::new();
    let w = t.connect(Some("w"));
    let a1 = t.connect(Some("ann"));
    let a2 = t.connect(Some("ann"));
    t.ask(w, json!({"type":"join","room":"r","presence":true}));
    t.join(a1, "r");
    t.take(w);
    // per user now: ann's second tab is not reported
    t.ask(w, json!({"type":"join","room":"r","presence":"users"}));
    t.join(a2, "r");
    assert!(t.take(w).is_empty());
    // and off
    t.ask(w, json!({"type":"join","room":"r","presence":false}));
    t.ask(a1, json!({"type":"leave","room":"r"}));
    t.ask(a2, json!({"type":"leave","room":"r"}));
    assert!(t.take(w).is_empty());
    t.hub.check_invariants();
}
