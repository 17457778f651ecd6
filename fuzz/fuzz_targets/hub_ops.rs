//! Arbitrary sequences of hub inputs (connects, joins, leaves, publishes, subscriptions,
//! server sends, flush reports, disconnects, time jumps, batch ends, with and without
//! coalesced room messages), with every index invariant
//! checked after each step and an empty hub at the end.
#![no_main]
use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roomcast_core::hub::{ConnectRequest, DisconnectReason, HeartbeatConfig, HistoryConfig};
use roomcast_core::{ConnId, Hub, HubConfig, Output, Timestamp};

#[derive(Arbitrary, Debug)]
enum Op {
    Connect(Option<u8>),
    Join(u8, u8, bool, Option<u8>),
    Leave(u8, u8),
    Publish(u8, u8, bool),
    PublishChannel(u8, u8),
    PublishUser(u8, u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    Link(u8, u8),
    ServerSend(u8),
    Flush(u8, u16),
    Disconnect(u8),
    Kick(u8),
    Garbage(u8, String),
    Time(u16),
    /// The end of an input batch: coalesced room messages go out.
    EndBatch,
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (coalesce, ops) = input;
    let config = HubConfig {
        coalesce_room_messages: coalesce,
        max_buffered_bytes: 2048,
        max_rooms_per_conn: 4,
        max_room_members: Some(6),
        heartbeat: HeartbeatConfig {
            interval_ms: 1000,
            ..Default::default()
        },
        history: HistoryConfig {
            max_messages: 5,
            max_age_ms: 3000,
            // small enough that the byte budget evicts across rooms too
            max_total_bytes: 1200,
        },
        ..Default::default()
    };
    let mut hub = Hub::new(config, [2; 32], Timestamp(0));
    let mut now = 0u64;
    let mut conns: Vec<ConnId> = Vec::new();
    let pick = |conns: &Vec<ConnId>, i: u8| conns.get(usize::from(i) % conns.len().max(1)).copied();
    for op in ops.into_iter().take(400) {
        let t = Timestamp(now);
        match op {
            Op::Connect(u) => {
                if let Ok(id) = hub.connect(t, ConnectRequest { user: u.map(|u| format!("u{}", u % 4)), ..Default::default() }) {
                    conns.push(id);
                }
            }
            Op::Join(c, r, p, since) => if let Some(c) = pick(&conns, c) {
                let mut v = serde_json::json!({"type":"join","room":format!("r{}", r % 5),"presence":p});
                if let Some(s) = since { v["since"] = s.into(); v["epoch"] = "x".into(); }
                let _ = hub.handle_text(t, c, &v.to_string());
            },
            Op::Leave(c, r) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"leave","room":format!("r{}", r % 5)}).to_string());
            },
            Op::Publish(c, r, echo) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"publish","room":format!("r{}", r % 5),"event":"e","echo":echo,"data":[1,2,3]}).to_string());
            },
            Op::PublishChannel(c, ch) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"publish","channel":format!("c{}", ch % 3),"event":"e"}).to_string());
            },
            Op::PublishUser(c, u) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"publish","user":format!("u{}", u % 4),"event":"e"}).to_string());
            },
            Op::Subscribe(c, ch) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"subscribe","channel":format!("c{}", ch % 3)}).to_string());
            },
            Op::Unsubscribe(c, ch) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &serde_json::json!({"type":"unsubscribe","channel":format!("c{}", ch % 3)}).to_string());
            },
            Op::Link(ch, r) => {
                let _ = hub.create_channel(&format!("c{}", ch % 3), &[&format!("r{}", r % 5)]);
            }
            Op::ServerSend(r) => {
                let _ = hub.send_to_room(&format!("r{}", r % 5), "s", None, &[]);
                let _ = hub.broadcast("b", None, &[]);
            }
            Op::Flush(c, n) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_flushed(c, usize::from(n));
            },
            Op::Disconnect(c) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_disconnect(t, c, DisconnectReason::Closed { code: None });
                conns.retain(|x| *x != c);
            },
            Op::Kick(c) => if let Some(c) = pick(&conns, c) {
                let _ = hub.disconnect(c, 4000, "bye");
            },
            Op::Garbage(c, s) => if let Some(c) = pick(&conns, c) {
                let _ = hub.handle_text(t, c, &s);
            },
            Op::Time(d) => {
                now += u64::from(d);
                hub.handle_timeout(Timestamp(now));
            }
            Op::EndBatch => hub.flush(),
        }
        while let Some(out) = hub.poll_output() {
            if let Output::Close { conn, .. } = out {
                let _ = hub.handle_disconnect(Timestamp(now), conn, DisconnectReason::Closed { code: None });
                conns.retain(|x| *x != conn);
            }
        }
        hub.check_invariants();
    }
    for c in conns {
        let _ = hub.handle_disconnect(Timestamp(now), c, DisconnectReason::Closed { code: None });
    }
    while hub.poll_output().is_some() {}
    now += 1_000_000;
    hub.handle_timeout(Timestamp(now));
    while hub.poll_output().is_some() {}
    hub.check_invariants();
    assert_eq!(hub.stats().connections, 0);
    assert_eq!(hub.stats().users, 0);
});
