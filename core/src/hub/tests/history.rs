//! Hub tests: room history, its byte budget, recovery and room lifetimes.

use serde_json::json;

use super::*;

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

#[test]
fn a_member_joining_again_with_since_gets_what_followed() {
    // The server put b in the room (a token's `rooms` claim) before b's own rejoin with
    // `since` arrived: the rejoin still replays from `since`, and acks as a recovery.
    let mut t = history_hub();
    let a = t.connect(None);
    let b = t.connect(None);
    let epoch = t.join(a, "r")["epoch"].as_str().unwrap().to_owned();
    for i in 0..3 {
        t.send(a, json!({"type":"publish","room":"r","event":"e","data":i}));
    }
    t.join(b, "r");
    t.send(b, json!({"type":"join","room":"r","since":1,"epoch":epoch}));
    let got = t.take(b);
    let seqs: Vec<_> = got.iter().filter_map(|m| m["seq"].as_u64()).collect();
    assert_eq!(
        seqs,
        vec![2, 3, 3],
        "2 and 3 replayed, then the ack at seq 3"
    );
    assert_eq!(got[2]["type"], "ack");
    assert_eq!(got[2]["recovered"], true);
    // a `since` history no longer covers: recovered false, never silent
    t.send(b, json!({"type":"join","room":"r","since":9,"epoch":epoch}));
    assert_eq!(t.take(b)[0]["recovered"], false);
    // no `since`: a plain idempotent join, nothing replayed, no `recovered`
    let got = t.ask(b, json!({"type":"join","room":"r"}));
    assert!(got.get("recovered").is_none(), "{got}");
    assert_eq!(t.hub.stats().rooms, 1);
    t.hub.check_invariants();
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
