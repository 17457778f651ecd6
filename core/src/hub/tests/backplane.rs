//! Rooms sequenced by a backplane: appends acked with the backplane's seq, delivery in
//! seq order with duplicates dropped and gaps filled from the log, joins that wait for
//! a load, recovery served from a loaded log, epoch changes and lost logs closing
//! members 1013, and the backplane's deadline. Virtual time; the backplane is played by
//! the test.

use super::*;

fn backplaned() -> T {
    T::with(HubConfig {
        backplane: true,
        backplane_timeout_ms: 1_000,
        heartbeat: HeartbeatConfig {
            server_pings: false,
            ..HeartbeatConfig::default()
        },
        history: HistoryConfig {
            max_messages: 100,
            ..HistoryConfig::default()
        },
        ..HubConfig::default()
    })
}

fn body(event: &str, n: u64) -> Box<str> {
    let data = RawValue::from_string(n.to_string()).unwrap();
    let content = crate::hub::messages::Content {
        event,
        from: None,
        data: Some(&data),
        ts: 1_700_000_000_000 + n,
    };
    crate::hub::backplane::encode_body(&content, None)
}

use serde_json::value::RawValue;
use std::sync::Arc;

impl T {
    fn load(&mut self) -> Load {
        assert_eq!(self.loads.len(), 1, "{:?}", self.loads);
        self.loads.pop().unwrap()
    }

    fn loaded(
        &mut self,
        room: &str,
        epoch: &str,
        top: u64,
        after: Option<u64>,
        entries: &[(u64, Box<str>)],
    ) {
        let loaded = Loaded {
            epoch: Arc::from(epoch),
            top,
            after,
            entries: entries.to_vec(),
        };
        self.hub.handle_loaded(Timestamp(self.now), room, loaded);
        self.drain();
        self.hub.check_invariants();
    }

    fn logged(&mut self, room: &str, epoch: &str, seq: u64, body: &str) {
        self.hub
            .handle_logged(Timestamp(self.now), room, epoch, seq, body);
        self.drain();
        self.hub.check_invariants();
    }

    /// Joins `room` on a backplaned hub: the join waits for a load, answered with
    /// `(epoch, top)` and no entries.
    fn join_loaded(&mut self, id: ConnId, room: &str, epoch: &str, top: u64) -> Value {
        self.send(id, json!({"type":"join","room":room,"id":"j"}));
        assert!(self.take(id).is_empty(), "waits for the load");
        let l = self.load();
        assert_eq!(&*l.room, room);
        self.loaded(room, epoch, top, l.after, &[]);
        let mut r = self.take(id);
        assert_eq!(r.len(), 1, "{r:?}");
        r.pop().unwrap()
    }

    fn seqs(&mut self, id: ConnId) -> Vec<u64> {
        self.take(id)
            .iter()
            .filter(|m| m["type"] == "message")
            .map(|m| m["seq"].as_u64().unwrap())
            .collect()
    }
}

#[test]
fn a_join_takes_the_room_position_from_the_backplane() {
    let mut t = backplaned();
    let a = t.connect(Some("ann"));
    let ack = t.join_loaded(a, "r", "E1", 7);
    assert_eq!(
        (ack["epoch"].as_str(), ack["seq"].as_u64()),
        (Some("E1"), Some(7))
    );
    // the room is followed now: a second join checks from the node's own position, and
    // learns of a message whose pub/sub copy has not arrived yet
    let b = t.connect(Some("bob"));
    t.send(b, json!({"type":"join","room":"r","id":"j"}));
    let l = t.load();
    assert_eq!(l.after, Some(7));
    t.loaded("r", "E1", 8, Some(7), &[(8, body("m", 8))]);
    let got = t.take(b);
    let ack = got.last().unwrap();
    assert_eq!(
        (ack["seq"].as_u64(), ack["members"].as_u64()),
        (Some(8), Some(2))
    );
    assert_eq!(t.seqs(a), vec![8], "the member already in gets it once");
}

#[test]
fn a_publish_is_appended_acked_with_the_backplanes_seq_and_delivered_from_the_log() {
    let mut t = backplaned();
    let a = t.connect(Some("ann"));
    let b = t.connect(Some("bob"));
    t.join_loaded(a, "r", "E", 0);
    t.join_loaded(b, "r", "E", 0);
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"say","data":{"t":1},"id":5}),
    );
    assert!(
        t.take(a).is_empty() && t.take(b).is_empty(),
        "not delivered locally"
    );
    let ap = t.appends.pop().unwrap();
    assert_eq!(&*ap.room, "r");
    t.hub
        .handle_appended(Timestamp(t.now), ap.ticket, Ok((Arc::from("E"), 1)));
    t.drain();
    let ack = t.take(a);
    assert_eq!(
        ack,
        vec![json!({"type":"ack","id":5,"delivered":1,"seq":1})]
    );
    // the log's copy is what members get; the publisher (no echo) is excluded by wire id
    t.logged("r", "E", 1, &ap.body);
    assert!(t.take(a).is_empty());
    let got = t.take(b);
    assert_eq!(got[0]["seq"], 1);
    assert_eq!(got[0]["data"], json!({"t":1}));
    assert_eq!(got[0]["from"]["user"], "ann");
    // echo: the publisher gets it too
    t.send(
        a,
        json!({"type":"publish","room":"r","event":"say","echo":true}),
    );
    let ap = t.appends.pop().unwrap();
    t.logged("r", "E", 2, &ap.body);
    assert_eq!(t.seqs(a), vec![2]);
    assert_eq!(t.seqs(b), vec![2]);
    // the backplane refused: unavailable, the connection stays
    t.send(a, json!({"type":"publish","room":"r","event":"say","id":6}));
    let ap = t.appends.pop().unwrap();
    t.hub.handle_appended(
        Timestamp(t.now),
        ap.ticket,
        Err(BackplaneError::Unavailable),
    );
    t.drain();
    let r = t.take(a);
    assert_eq!((r[0]["id"].as_u64(), code(&r[0])), (Some(6), "unavailable"));
    assert!(t.closes.is_empty());
}

#[test]
fn duplicates_are_dropped_and_a_gap_is_filled_from_the_log_in_order() {
    let mut t = backplaned();
    let b = t.connect(Some("bob"));
    t.join_loaded(b, "r", "E", 0);
    t.logged("r", "E", 1, &body("m", 1));
    t.logged("r", "E", 1, &body("m", 1));
    assert_eq!(t.seqs(b), vec![1], "a duplicate is dropped");
    // 2 and 3 lost: 4 is held and the missing part is asked for
    t.logged("r", "E", 4, &body("m", 4));
    assert!(t.seqs(b).is_empty(), "4 waits for 2 and 3");
    let l = t.load();
    assert_eq!(l.after, Some(1));
    // 5 comes while the load is in flight: held too
    t.logged("r", "E", 5, &body("m", 5));
    t.loaded(
        "r",
        "E",
        4,
        Some(1),
        &[(2, body("m", 2)), (3, body("m", 3)), (4, body("m", 4))],
    );
    assert_eq!(t.seqs(b), vec![2, 3, 4, 5]);
    assert!(t.closes.is_empty(), "repaired without a disconnect");
    assert_eq!(t.hub.stats().backplane_gaps, 1);
    assert_eq!(t.hub.stats().backplane_duplicates, 1);
}

#[test]
fn a_gap_the_log_no_longer_holds_closes_the_members_1013() {
    let mut t = backplaned();
    let b = t.connect(Some("bob"));
    t.join_loaded(b, "r", "E", 0);
    t.logged("r", "E", 1, &body("m", 1));
    t.logged("r", "E", 9, &body("m", 9));
    let l = t.load();
    // trimmed: the log starts at 5
    t.loaded(
        "r",
        "E",
        9,
        l.after,
        &[(5, body("m", 5)), (9, body("m", 9))],
    );
    assert_eq!(t.closes.len(), 1);
    assert_eq!((t.closes[0].0, t.closes[0].1), (b, 1013));
}

#[test]
fn a_new_epoch_under_the_members_closes_them_and_a_rejoin_is_not_recovered() {
    let mut t = backplaned();
    let b = t.connect(Some("bob"));
    t.join_loaded(b, "r", "E1", 0);
    t.logged("r", "E1", 1, &body("m", 1));
    t.take(b);
    // the backplane lost the room (flushed): its next message has a new epoch
    t.logged("r", "E2", 1, &body("m", 1));
    let l = t.load();
    t.loaded("r", "E2", 1, l.after, &[(1, body("m", 1))]);
    assert_eq!(
        t.closes.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
        vec![(b, 1013)]
    );
    // a client rejoining with its old position learns it did not recover
    let c = t.connect(Some("cy"));
    t.send(
        c,
        json!({"type":"join","room":"r","since":1,"epoch":"E1","id":1}),
    );
    let l = t.load();
    t.loaded("r", "E2", 1, l.after, &[(1, body("m", 1))]);
    let got = t.take(c);
    let ack = got
        .iter()
        .find(|m| m["type"] == "ack")
        .expect("acked after the load");
    assert_eq!(ack["recovered"], false);
    assert_eq!(ack["epoch"], "E2");
}

#[test]
fn recovery_on_another_node_is_served_from_the_loaded_log() {
    let mut t = backplaned();
    let c = t.connect(Some("cy"));
    t.send(
        c,
        json!({"type":"join","room":"r","since":2,"epoch":"E","id":1}),
    );
    assert!(t.take(c).is_empty());
    let l = t.load();
    assert_eq!(l.after, Some(0), "an unknown room: the whole log");
    let entries: Vec<_> = (1..=5).map(|n| (n, body("m", n))).collect();
    // a live message overtakes the load: held, then delivered after the replay
    t.logged("r", "E", 6, &body("m", 6));
    t.loaded("r", "E", 5, Some(0), &entries);
    let got = t.take(c);
    let kinds: Vec<_> = got
        .iter()
        .map(|m| (m["type"].as_str().unwrap().to_owned(), m["seq"].as_u64()))
        .collect();
    assert_eq!(
        kinds,
        vec![
            ("message".into(), Some(3)),
            ("message".into(), Some(4)),
            ("message".into(), Some(5)),
            ("message".into(), Some(6)),
            ("ack".into(), Some(6)),
        ]
    );
    assert_eq!(got[4]["recovered"], true);
    // a recovery the cache covers asks only for what is newer than the node has
    let d = t.connect(Some("dee"));
    t.send(
        d,
        json!({"type":"join","room":"r","since":4,"epoch":"E","id":2}),
    );
    let l = t.load();
    assert_eq!(
        l.after,
        Some(4),
        "from the lower of since and the node's own seq"
    );
    t.loaded(
        "r",
        "E",
        6,
        Some(4),
        &[(5, body("m", 5)), (6, body("m", 6))],
    );
    assert_eq!(t.seqs(d), vec![5, 6]);
}

#[test]
fn a_join_that_waits_keeps_the_connections_order_and_times_out_unavailable() {
    let mut t = backplaned();
    let a = t.connect(Some("ann"));
    t.send(a, json!({"type":"join","room":"r","id":1}));
    t.send(a, json!({"type":"publish","room":"r","event":"e","id":2}));
    assert!(t.take(a).is_empty(), "the publish waits behind the join");
    t.load();
    t.advance(1_000);
    let got = t.take(a);
    assert_eq!(
        (got[0]["id"].as_u64(), code(&got[0])),
        (Some(1), "unavailable")
    );
    assert_eq!(
        (got[1]["id"].as_u64(), code(&got[1])),
        (Some(2), "not_member")
    );
    // a late answer finds no one waiting; the room is followed for the next join
    t.loaded("r", "E", 0, None, &[]);
    let ack = t.join_loaded(a, "r", "E", 0);
    assert_eq!(ack["type"], "ack");
    // the backplane fails a load: refused at once
    let b = t.connect(Some("bob"));
    t.send(b, json!({"type":"join","room":"s","id":3}));
    t.load();
    t.hub.handle_load_failed(Timestamp(t.now), "s");
    t.drain();
    assert_eq!(code(&t.take(b)[0]), "unavailable");
    t.hub.check_invariants();
}

#[test]
fn a_resync_checks_every_followed_room_and_repairs_what_was_lost() {
    let mut t = backplaned();
    let b = t.connect(Some("bob"));
    t.join_loaded(b, "r", "E", 0);
    // the pub/sub link dropped the last two messages: nothing shows until a resync
    t.hub.handle_backplane_resync(Timestamp(t.now));
    t.drain();
    let l = t.load();
    assert_eq!((&*l.room, l.after), ("r", Some(0)));
    t.loaded(
        "r",
        "E",
        2,
        Some(0),
        &[(1, body("m", 1)), (2, body("m", 2))],
    );
    assert_eq!(t.seqs(b), vec![1, 2]);
}

#[test]
fn server_sends_to_a_room_go_through_the_log_and_forwards_skip_rooms() {
    let mut t = backplaned();
    let d = t
        .hub
        .send_to(Timestamp(0), Recipient::Room("r"), "e", None, &[])
        .unwrap();
    assert_eq!(d.seq, None);
    t.drain();
    assert_eq!(t.appends.len(), 1);
    assert!(t.forwards.is_empty(), "rooms are never forwarded");
    // a channel publish is forwarded (best effort)
    let a = t.connect(Some("ann"));
    t.ask(a, json!({"type":"subscribe","channel":"c"}));
    t.send(a, json!({"type":"publish","channel":"c","event":"e"}));
    assert_eq!(t.forwards.len(), 1);
    let json = forward_to_json(&t.forwards[0]);
    let back = forward_from_json(&json).unwrap();
    assert_eq!(back.destination, Destination::Channel(Arc::from("c")));
}

#[test]
fn disconnecting_a_user_reaches_every_node() {
    let mut n1 = backplaned();
    let mut n2 = backplaned();
    let a = n1.connect(Some("ann"));
    let b = n2.connect(Some("ann"));
    let other = n2.connect(Some("bob"));
    assert_eq!(
        n1.hub.disconnect_user(Timestamp(0), "ann", 4003, "banned"),
        1
    );
    n1.drain();
    assert_eq!(
        n1.closes.iter().map(|c| (c.0, c.1)).collect::<Vec<_>>(),
        vec![(a, 4003)]
    );
    let c = n1.controls.pop().expect("carried to the other nodes");
    let json = control_to_json(&c);
    let back = control_from_json(&json).unwrap();
    assert_eq!(back, c);
    n2.hub.handle_control(Timestamp(0), &back);
    n2.drain();
    assert_eq!(
        n2.closes
            .iter()
            .map(|c| (c.0, c.1, c.2.as_str()))
            .collect::<Vec<_>>(),
        vec![(b, 4003, "banned")]
    );
    assert!(n2.closes.iter().all(|c| c.0 != other));
    assert!(n2.controls.is_empty(), "a remote control is not sent on");
    assert!(
        control_from_json(r#"{"k":"disconnect_user","n":"x","code":1006,"reason":""}"#).is_none(),
        "not a code a server sends"
    );
    // without a backplane nothing is carried
    let mut t = T::new();
    t.connect(Some("ann"));
    assert_eq!(t.hub.disconnect_user(Timestamp(0), "ann", 4003, "x"), 1);
    t.drain();
    assert!(t.controls.is_empty());
}

#[test]
fn a_load_that_never_comes_is_given_up_and_asked_again() {
    let mut t = backplaned();
    let b = t.connect(Some("bob"));
    t.join_loaded(b, "r", "E", 0);
    t.logged("r", "E", 1, &body("m", 1));
    t.logged("r", "E", 3, &body("m", 3));
    assert_eq!(t.load().after, Some(1), "the gap asks for the log");
    // the backplane never answers; while the load is pending, a later message is held
    t.logged("r", "E", 4, &body("m", 4));
    assert!(t.loads.is_empty(), "one load at a time");
    t.advance(1_000);
    assert_eq!(t.hub.stats().backplane_load_timeouts, 1);
    // given up: the next message asks again, and that answer repairs the gap
    t.logged("r", "E", 5, &body("m", 5));
    let l = t.load();
    assert_eq!(l.after, Some(1));
    let entries: Vec<_> = (2..=5).map(|n| (n, body("m", n))).collect();
    t.loaded("r", "E", 5, Some(1), &entries);
    assert_eq!(t.seqs(b), vec![1, 2, 3, 4, 5]);
    assert!(t.closes.is_empty());
}
