//! Arbitrary sequences of hub inputs, every one fed through `Hub::handle` as an
//! `Input`: what an adapter reports (connects, client requests and garbage, binary
//! messages, activity, flush reports, closed sockets, backplane forwards, deadlines,
//! batch ends) and every server-API mutation (joins, leaves, subscriptions, rooms,
//! channels and links, sends to every kind of recipient, raw sends, kicks, metadata,
//! shutdown), with and without coalesced room messages. Every index invariant is checked
//! after each step, and the hub must be empty at the end.
//!
//! `Op` has one variant per `Input` variant (client requests are `Text`), so a new input
//! shows up here as a missing arm in `input_of`.
#![no_main]
use std::sync::Arc;

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use roomcast_core::hub::{
    ConnectRequest, Destination, DisconnectReason, Forward, HeartbeatConfig, HistoryConfig,
    Recipient, RoomOptions,
};
use roomcast_core::{ConnId, Hub, HubConfig, Input, Output, Timestamp};

/// A client request, sent as JSON text.
#[derive(Arbitrary, Debug)]
enum Request {
    Join(u8, bool, Option<u8>),
    Leave(u8),
    Publish(u8, bool),
    PublishChannel(u8),
    PublishUser(u8),
    Subscribe(u8),
    Unsubscribe(u8),
    Ping,
}

/// One `Input`, with connections, rooms, channels and users as small indexes.
#[derive(Arbitrary, Debug)]
enum Op {
    Connect(Option<u8>),
    Text(u8, Request),
    /// `Input::Text` with whatever the peer sent.
    Garbage(u8, String),
    Binary(u8, u16),
    Activity(u8),
    Flushed(u8, u16),
    Closed(u8),
    Remote(u8, u8),
    /// Time passes, then `Input::Timeout`.
    Timeout(u16),
    EndBatch,
    Join(u8, u8, bool),
    Leave(u8, u8),
    LeaveAll(u8),
    Subscribe(u8, u8),
    Unsubscribe(u8, u8),
    CreateRoom(u8, Option<u8>),
    RemoveRoom(u8),
    CreateChannel(u8, u8),
    LinkRoom(u8, u8),
    UnlinkRoom(u8, u8),
    Send(u8, u8, bool),
    SendRaw(u8, bool),
    Disconnect(u8, u16),
    SetMetadata(u8, u8),
    Shutdown,
}

fn room(i: u8) -> String {
    format!("r{}", i % 5)
}
fn channel(i: u8) -> String {
    format!("c{}", i % 3)
}
fn user(i: u8) -> String {
    format!("u{}", i % 4)
}

fn request_json(req: &Request) -> String {
    use serde_json::json;
    let v = match req {
        Request::Join(r, p, since) => {
            // presence off, per connection, or per user (odd rooms)
            let presence = match (p, r % 2) {
                (false, _) => json!(false),
                (true, 0) => json!(true),
                (true, _) => json!("users"),
            };
            let mut v = json!({"type":"join","room":room(*r),"presence":presence});
            if let Some(s) = since {
                v["since"] = (*s).into();
                v["epoch"] = "x".into();
            }
            v
        }
        Request::Leave(r) => json!({"type":"leave","room":room(*r)}),
        Request::Publish(r, echo) => {
            json!({"type":"publish","room":room(*r),"event":"e","echo":echo,"data":[1,2,3]})
        }
        Request::PublishChannel(c) => json!({"type":"publish","channel":channel(*c),"event":"e"}),
        Request::PublishUser(u) => json!({"type":"publish","user":user(*u),"event":"e"}),
        Request::Subscribe(c) => json!({"type":"subscribe","channel":channel(*c)}),
        Request::Unsubscribe(c) => json!({"type":"unsubscribe","channel":channel(*c)}),
        Request::Ping => json!({"type":"ping","id":1}),
    };
    v.to_string()
}

fuzz_target!(|input: (bool, Vec<Op>)| {
    let (coalesce, ops) = input;
    let config = HubConfig {
        coalesce_room_messages: coalesce,
        // presence batched over a window in the same runs
        presence_batch_ms: if coalesce { 50 } else { 0 },
        max_buffered_bytes: 2048,
        max_rooms_per_conn: 4,
        max_subscriptions_per_conn: 2,
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
    let placeholder = ConnId::from_u64(u64::MAX);
    for op in ops.into_iter().take(400) {
        let t = Timestamp(now);
        // Owned pieces the borrowed `Input` points into.
        let (a, b);
        let text;
        let forward;
        let rooms_list: [&str; 1];
        let exclude: Vec<ConnId>;
        let c = |i: u8| pick(&conns, i).unwrap_or(placeholder);
        let input: Input<'_> = match &op {
            Op::Connect(u) => Input::Connect(ConnectRequest {
                user: u.map(user),
                ..Default::default()
            }),
            Op::Text(i, req) => {
                text = request_json(req);
                Input::Text { conn: c(*i), text: &text }
            }
            Op::Garbage(i, s) => Input::Text { conn: c(*i), text: s },
            Op::Binary(i, len) => Input::Binary { conn: c(*i), len: usize::from(*len) },
            Op::Activity(i) => Input::Activity { conn: c(*i) },
            Op::Flushed(i, n) => Input::Flushed { conn: c(*i), bytes: usize::from(*n) },
            Op::Closed(i) => Input::Closed {
                conn: c(*i),
                reason: DisconnectReason::Closed { code: None },
            },
            Op::Remote(kind, i) => {
                let destination = match kind % 4 {
                    0 => Destination::Room(Arc::from(room(*i))),
                    1 => Destination::Channel(Arc::from(channel(*i))),
                    2 => Destination::User(Arc::from(user(*i))),
                    _ => Destination::All,
                };
                forward = Forward {
                    destination,
                    event: "remote".into(),
                    data: None,
                    from: Some(("other-1".into(), Some(user(*i)))),
                };
                Input::Remote { node: 7, forward: &forward }
            }
            Op::Timeout(d) => {
                now += u64::from(*d);
                Input::Timeout
            }
            Op::EndBatch => Input::EndBatch,
            Op::Join(i, r, p) => {
                a = room(*r);
                Input::Join { conn: c(*i), room: &a, presence: *p }
            }
            Op::Leave(i, r) => {
                a = room(*r);
                Input::Leave { conn: c(*i), room: &a }
            }
            Op::LeaveAll(i) => Input::LeaveAll { conn: c(*i) },
            Op::Subscribe(i, ch) => {
                a = channel(*ch);
                Input::Subscribe { conn: c(*i), channel: &a }
            }
            Op::Unsubscribe(i, ch) => {
                a = channel(*ch);
                Input::Unsubscribe { conn: c(*i), channel: &a }
            }
            Op::CreateRoom(r, max) => {
                a = room(*r);
                let options = RoomOptions {
                    data: None,
                    max_members: max.map(|m| usize::from(m % 8)),
                };
                Input::CreateRoom { room: &a, options }
            }
            Op::RemoveRoom(r) => {
                a = room(*r);
                Input::RemoveRoom { room: &a }
            }
            Op::CreateChannel(ch, r) => {
                a = channel(*ch);
                b = room(*r);
                rooms_list = [b.as_str()];
                Input::CreateChannel { channel: &a, rooms: &rooms_list }
            }
            Op::LinkRoom(ch, r) => {
                a = channel(*ch);
                b = room(*r);
                Input::LinkRoom { channel: &a, room: &b }
            }
            Op::UnlinkRoom(ch, r) => {
                a = channel(*ch);
                b = room(*r);
                Input::UnlinkRoom { channel: &a, room: &b }
            }
            Op::Send(kind, i, ex) => {
                a = match kind % 3 {
                    0 => room(*i),
                    1 => channel(*i),
                    _ => user(*i),
                };
                let to = match kind % 5 {
                    0 => Recipient::Room(&a),
                    1 => Recipient::Channel(&a),
                    2 => Recipient::User(&a),
                    3 => Recipient::Conn(c(*i)),
                    _ => Recipient::All,
                };
                exclude = if *ex { vec![c(*i), c(*i)] } else { Vec::new() };
                Input::Send { to, event: "s", data: None, exclude: &exclude }
            }
            Op::SendRaw(r, ex) => {
                a = room(*r);
                exclude = if *ex { vec![c(*r)] } else { Vec::new() };
                Input::SendRaw { room: &a, text: "raw", exclude: &exclude }
            }
            Op::Disconnect(i, code) => Input::Disconnect { conn: c(*i), code: 4000 + code % 1000, reason: "bye" },
            Op::SetMetadata(i, v) => Input::SetMetadata {
                conn: c(*i),
                key: "k".into(),
                value: v.to_string(),
            },
            Op::Shutdown => Input::Shutdown,
        };
        let closed = match &input {
            Input::Closed { conn, .. } => Some(*conn),
            _ => None,
        };
        // `Err` is a caller mistake (an unknown id or name): it must change nothing.
        match hub.handle(Timestamp(now.max(t.0)), input) {
            Ok(roomcast_core::hub::Handled::Connected(id)) => conns.push(id),
            Ok(_) | Err(_) => {}
        }
        if let Some(gone) = closed {
            conns.retain(|x| *x != gone);
        }
        while let Some(out) = hub.poll_output() {
            if let Output::Close { conn, .. } = out {
                let _ = hub.handle(
                    Timestamp(now),
                    Input::Closed { conn, reason: DisconnectReason::Closed { code: None } },
                );
                conns.retain(|x| *x != conn);
            }
        }
        hub.check_invariants();
    }
    for c in conns {
        let _ = hub.handle(
            Timestamp(now),
            Input::Closed { conn: c, reason: DisconnectReason::Closed { code: None } },
        );
    }
    while hub.poll_output().is_some() {}
    now += 1_000_000;
    let _ = hub.handle(Timestamp(now), Input::Timeout);
    while hub.poll_output().is_some() {}
    hub.check_invariants();
    assert_eq!(hub.stats().connections, 0);
    assert_eq!(hub.stats().users, 0);
});
