//! Hub tests: output budgets, slow consumers, bursts and exclusions.

use serde_json::json;

use super::*;

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
    assert_eq!(t.closes, vec![(slow, 1013, "slow consumer".to_string())]);
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
    // About 150 bytes each (with `"ts":0`): under the burst bound (a quarter of the budget), so a
    // message is held until a flush.
    let publish =
        json!({"type":"publish","room":"r","event":"e","data":"x".repeat(53)}).to_string();
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
        closed |= matches!(o, Output::Close { conn, code: 1013, .. } if conn == s);
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
        json!({"type":"publish","room":"r","event":"e","data":"x".repeat(53)}).to_string();
    publish_unread(&mut t, p, &publish, 7);
    // One more held, then the server API joins someone: the room is flushed first and
    // `s`, which reported nothing, is found over budget.
    t.hub.handle_text(Timestamp(0), p, &publish).unwrap();
    t.hub.join(Timestamp(t.now), late, "r", false).unwrap();
    t.hub.flush();
    let mut closed = false;
    while let Some(o) = t.hub.poll_output() {
        closed |= matches!(o, Output::Close { conn, code: 1013, .. } if conn == s);
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
