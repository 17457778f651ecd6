//! Hub tests: snapshots and restore after hibernation.

use serde_json::json;

use super::*;

#[test]
fn snapshot_restore_keeps_rooms_users_and_seq() {
    let mut t = history_hub();
    let a = t.connect(Some("ann"));
    let b = t.connect(None);
    t.ask(a, json!({"type":"join","room":"r","presence":true}));
    t.join(b, "r");
    t.ask(b, json!({"type":"subscribe","channel":"c"}));
    let u = t.connect(Some("uma"));
    t.ask(u, json!({"type":"join","room":"r","presence":"users"}));
    t.hub
        .create_channel(Timestamp(t.now), "linked", &["r"])
        .unwrap();
    t.send(a, json!({"type":"publish","room":"r","event":"e"}));
    let snaps: Vec<ConnSnapshot> = [a, b, u]
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
    assert_eq!(r.hub.stats().connections, 3);
    let rk = r.hub.index.rooms.key("r").unwrap();
    let modes = [a, b, u].map(|x| r.hub.index.watches(x.slot(), rk));
    use crate::protocol::Presence;
    assert_eq!(
        modes,
        [Presence::Connections, Presence::Off, Presence::Users]
    );
    assert!(r.hub.is_member(a, "r"));
    assert_eq!(r.hub.user_connections("ann"), &[a]);
    r.now = 100;
    let ack = r.ask(a, json!({"type":"publish","room":"r","event":"e"}));
    assert_eq!(ack["seq"], 2, "seq continues");
    assert_eq!(r.take(b)[0]["seq"], 2);
    r.take(u);
    assert_eq!(
        r.hub
            .send_to_channel(Timestamp(r.now), "linked", "x", None, &[])
            .unwrap()
            .delivered,
        3
    );
    // new connections get fresh ids
    let c = r.connect(None);
    assert!(c != a && c != b && c != u);
    // history survived: a rejoin from seq 0 of the same epoch recovers
    let epoch = r.hub.room_position("r").unwrap().0.to_owned();
    r.send(c, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    let got = r.take(c);
    assert_eq!(got.len(), 3);
    assert_eq!(got[2]["recovered"], true);
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
