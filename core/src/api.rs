//! The server HTTP API (PROTOCOL.md "Server HTTP API"), for backends in any language:
//! publish, rooms, members, channel links, history, disconnects and stats, as JSON over
//! HTTP. Decided here, over a [`Hub`], so the native server (`/api/…`) and the Durable
//! Object (`/hub/{name}/api/…`) give the same answer to the same request; the adapters
//! only check the API key (before anything else: the Worker before it wakes the object)
//! and move bytes.
//!
//! Errors are `{"error":{"code","message"}}` with the protocol's codes: 400 for a bad
//! request, 404 for an unknown room, channel or connection, 405 for a method a path does
//! not take.

use std::borrow::Cow;

use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::{json, Value};

use crate::hub::{ConnId, Hub, HubError, Recipient, RoomOptions};
use crate::protocol::valid_name;
use crate::time::Timestamp;

/// Largest request body the API reads.
pub const MAX_BODY: usize = 1 << 20;

/// One API request: the path below the API prefix (`/publish`, `/rooms/lobby`, …; names
/// percent-encoded), its query and body.
#[derive(Debug, Clone, Copy)]
pub struct ApiRequest<'a> {
    /// `GET`, `POST`, `PUT` or `DELETE`.
    pub method: &'a str,
    /// The path below the prefix, starting with `/`.
    pub path: &'a str,
    /// The query string without `?`.
    pub query: Option<&'a str>,
    /// The body (JSON, or empty).
    pub body: &'a [u8],
}

/// The answer: status and JSON body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiResponse {
    /// HTTP status.
    pub status: u16,
    /// JSON text.
    pub body: String,
}

impl ApiResponse {
    fn ok(v: Value) -> ApiResponse {
        ApiResponse {
            status: 200,
            body: v.to_string(),
        }
    }

    /// An error answer with a protocol code.
    pub fn error(status: u16, code: &str, message: impl Into<Cow<'static, str>>) -> ApiResponse {
        let message: Cow<'static, str> = message.into();
        ApiResponse {
            status,
            body: json!({"error": {"code": code, "message": message}}).to_string(),
        }
    }

    /// 401: no or a wrong API key (the adapters answer this before calling [`handle`]).
    pub fn unauthorized() -> ApiResponse {
        ApiResponse::error(401, "unauthorized", "give Authorization: Bearer API_KEY")
    }
}

fn bad(message: impl Into<Cow<'static, str>>) -> ApiResponse {
    ApiResponse::error(400, "bad_request", message)
}

fn not_found(what: &'static str) -> ApiResponse {
    ApiResponse::error(404, "not_found", what)
}

fn method_not_allowed() -> ApiResponse {
    ApiResponse::error(405, "bad_request", "method not allowed on this path")
}

fn hub_error(e: HubError) -> ApiResponse {
    match e {
        HubError::UnknownRoom => not_found("no such room"),
        HubError::UnknownChannel => not_found("no such channel"),
        HubError::UnknownConnection(_) => not_found("no such connection"),
        HubError::BadName => ApiResponse::error(
            400,
            "bad_name",
            "names are 1 to 128 bytes of UTF-8 without control characters",
        ),
        HubError::NotMember => ApiResponse::error(400, "not_member", "not a member of this room"),
        HubError::RoomFull => ApiResponse::error(400, "room_full", "the room is full"),
        HubError::TooManyRooms => ApiResponse::error(400, "too_many_rooms", "too many rooms"),
        HubError::TooManySubscriptions => {
            ApiResponse::error(400, "too_many_subscriptions", "too many subscriptions")
        }
        HubError::Forbidden => ApiResponse::error(400, "forbidden", "forbidden by the server"),
        HubError::Connect(e) => bad(e.to_string()),
    }
}

/// Whether `header` (the `Authorization` value) carries `key`, compared in constant
/// time so the comparison leaks nothing about the key.
pub fn authorized(header: Option<&str>, key: &str) -> bool {
    let Some(given) = header.and_then(|h| h.strip_prefix("Bearer ")) else {
        return false;
    };
    let (a, b) = (given.trim().as_bytes(), key.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Answers one API request against `hub` at `now`.
pub fn handle(hub: &mut Hub, now: Timestamp, req: ApiRequest<'_>) -> ApiResponse {
    let segments: Vec<Result<String, ()>> = req
        .path
        .trim_start_matches('/')
        .split('/')
        .map(percent_decode)
        .collect();
    let Ok(segments) = segments.into_iter().collect::<Result<Vec<String>, ()>>() else {
        return bad("a path segment is not valid percent-encoded UTF-8");
    };
    let parts: Vec<&str> = segments.iter().map(String::as_str).collect();
    match (req.method, parts.as_slice()) {
        ("POST", ["publish"]) => publish(hub, now, req.body),
        ("GET", ["stats"]) => stats(hub),
        ("GET", ["rooms"]) => rooms(hub),
        ("GET", ["rooms", name]) => room(hub, name),
        ("PUT", ["rooms", room]) => put_room(hub, now, room, req.body),
        ("DELETE", ["rooms", room]) => done(
            hub.remove_room(now, room)
                .map(|()| json!({"removed": room})),
        ),
        ("POST", ["rooms", room, "members"]) => add_members(hub, now, room, req.body),
        ("DELETE", ["rooms", room, "members", conn]) => match hub.find_connection(conn) {
            Some(id) => done(hub.leave(now, id, room).map(|()| json!({"removed": 1}))),
            None => not_found("no such connection"),
        },
        ("GET", ["rooms", room, "history"]) => history(hub, now, room, req.query),
        ("PUT", ["channels", channel, "rooms", room]) => {
            let r = hub.create_channel(now, channel, &[room]);
            done(r.map(|()| json!({"linked": {"channel": channel, "room": room}})))
        }
        ("DELETE", ["channels", channel, "rooms", room]) => {
            let r = hub.unlink_room(now, channel, room);
            done(r.map(|()| json!({"unlinked": {"channel": channel, "room": room}})))
        }
        ("POST", ["connections", conn, "disconnect"]) => match hub.find_connection(conn) {
            Some(id) => disconnect(hub, now, &[id], req.body),
            None => not_found("no such connection"),
        },
        ("POST", ["users", user, "disconnect"]) => {
            if !valid_name(user) {
                return hub_error(HubError::BadName);
            }
            let (code, reason) = match disconnect_body(req.body) {
                Ok(c) => c,
                Err(r) => return r,
            };
            // every node's connections of the user (with a backplane); the count is here
            let n = hub.disconnect_user(now, user, code, &reason);
            ApiResponse::ok(json!({ "disconnected": n }))
        }
        (
            _,
            ["publish"]
            | ["stats"]
            | ["rooms"]
            | ["rooms", _]
            | ["rooms", _, "members"]
            | ["rooms", _, "members", _]
            | ["rooms", _, "history"]
            | ["channels", _, "rooms", _]
            | ["connections", _, "disconnect"]
            | ["users", _, "disconnect"],
        ) => method_not_allowed(),
        _ => not_found("no such API path"),
    }
}

fn done(r: Result<Value, HubError>) -> ApiResponse {
    match r {
        Ok(v) => ApiResponse::ok(v),
        Err(e) => hub_error(e),
    }
}

/// Parses a JSON body (an empty body is `{}`).
fn body<'a, T: Deserialize<'a> + Default>(bytes: &'a [u8]) -> Result<T, ApiResponse> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(T::default());
    }
    if bytes.len() > MAX_BODY {
        return Err(bad("body too large"));
    }
    serde_json::from_slice(bytes).map_err(|e| bad(format!("body: {e}")))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct PublishBody<'a> {
    #[serde(borrow, default)]
    room: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    channel: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    user: Option<Cow<'a, str>>,
    #[serde(default)]
    all: bool,
    #[serde(borrow, default)]
    event: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    data: Option<&'a RawValue>,
    #[serde(default)]
    exclude: Vec<String>,
}

fn publish(hub: &mut Hub, now: Timestamp, bytes: &[u8]) -> ApiResponse {
    let b: PublishBody<'_> = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let to = match (&b.room, &b.channel, &b.user, b.all) {
        (Some(r), None, None, false) => Recipient::Room(r),
        (None, Some(c), None, false) => Recipient::Channel(c),
        (None, None, Some(u), false) => Recipient::User(u),
        (None, None, None, true) => Recipient::All,
        _ => return bad("give exactly one of room, channel, user or \"all\": true"),
    };
    let Some(event) = b.event.as_deref() else {
        return bad("missing field `event`");
    };
    let exclude: Vec<ConnId> = b
        .exclude
        .iter()
        .filter_map(|w| hub.find_connection(w))
        .collect();
    match hub.send_to(now, to, event, b.data, &exclude) {
        Ok(d) => {
            let mut v = json!({"delivered": d.delivered});
            if let Some(seq) = d.seq {
                v["seq"] = seq.into();
            }
            ApiResponse::ok(v)
        }
        Err(e) => hub_error(e),
    }
}

fn stats(hub: &Hub) -> ApiResponse {
    let s = hub.stats();
    ApiResponse::ok(json!({
        "connections": s.connections,
        "rooms": s.rooms,
        "channels": s.channels,
        "users": s.users,
        "messages_in": s.messages_in,
        "messages_out": s.messages_out,
        "bytes_in": s.bytes_in,
        "bytes_out": s.bytes_out,
        "rate_limited": s.rate_limited,
        "slow_consumers": s.slow_consumers,
        "heartbeat_timeouts": s.heartbeat_timeouts,
        "history_bytes": s.history_bytes,
        "history_evicted": s.history_evicted,
        "decisions_asked": s.decisions_asked,
        "decisions_timed_out": s.decisions_timed_out,
    }))
}

fn room_summary(hub: &Hub, name: &str) -> Option<Value> {
    let (epoch, seq) = hub.room_position(name)?;
    Some(json!({
        "room": name,
        "members": hub.room_size(name).unwrap_or(0),
        "epoch": epoch,
        "seq": seq,
    }))
}

fn rooms(hub: &Hub) -> ApiResponse {
    let mut names: Vec<&str> = hub.rooms().collect();
    names.sort_unstable();
    let list: Vec<Value> = names
        .into_iter()
        .filter_map(|n| room_summary(hub, n))
        .collect();
    ApiResponse::ok(json!({ "rooms": list }))
}

fn room(hub: &Hub, name: &str) -> ApiResponse {
    let Some(mut v) = room_summary(hub, name) else {
        return not_found("no such room");
    };
    v["data"] = hub
        .room_data(name)
        .and_then(|d| serde_json::from_str(d.get()).ok())
        .unwrap_or(Value::Null);
    let conns: Vec<Value> = hub
        .room_peers(name)
        .into_iter()
        .filter_map(|p| serde_json::from_str(p).ok())
        .collect();
    v["connections"] = conns.into();
    ApiResponse::ok(v)
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RoomBody {
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    max_members: Option<usize>,
}

fn put_room(hub: &mut Hub, now: Timestamp, name: &str, bytes: &[u8]) -> ApiResponse {
    let b: RoomBody = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    if b.max_members == Some(0) {
        return bad("max_members must be at least 1");
    }
    let options = RoomOptions {
        data: b.data.filter(|d| d.get() != "null"),
        max_members: b.max_members,
    };
    match hub.create_room(now, name, options) {
        Ok(()) => room(hub, name),
        Err(e) => hub_error(e),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MembersBody {
    #[serde(default)]
    conn: Option<String>,
    #[serde(default)]
    user: Option<String>,
    #[serde(default)]
    presence: bool,
}

fn add_members(hub: &mut Hub, now: Timestamp, room: &str, bytes: &[u8]) -> ApiResponse {
    let b: MembersBody = match body(bytes) {
        Ok(b) => b,
        Err(r) => return r,
    };
    let ids: Vec<ConnId> = match (&b.conn, &b.user) {
        (Some(c), None) => match hub.find_connection(c) {
            Some(id) => vec![id],
            None => return not_found("no such connection"),
        },
        (None, Some(u)) if valid_name(u) => hub.user_connections(u).to_vec(),
        (None, Some(_)) => return hub_error(HubError::BadName),
        _ => return bad("give exactly one of conn or user"),
    };
    let mut joined = 0;
    for id in ids {
        match hub.join(now, id, room, b.presence) {
            Ok(()) => joined += 1,
            Err(e) => return hub_error(e),
        }
    }
    ApiResponse::ok(json!({ "joined": joined }))
}

fn history(hub: &mut Hub, now: Timestamp, room: &str, query: Option<&str>) -> ApiResponse {
    let since = match query.and_then(|q| crate::handshake::query_value(q, "since")) {
        None => 0,
        Some(Ok(s)) => match s.parse::<u64>() {
            Ok(n) => n,
            Err(_) => return bad("since must be a non-negative integer"),
        },
        Some(Err(_)) => return bad("since must be a non-negative integer"),
    };
    let Some((epoch, seq, msgs)) = hub.room_history(now, room, since) else {
        return not_found("no such room");
    };
    let messages: Vec<Value> = msgs
        .iter()
        .filter_map(|m| serde_json::from_str(m).ok())
        .collect();
    ApiResponse::ok(json!({"epoch": epoch, "seq": seq, "messages": messages}))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct DisconnectBody {
    #[serde(default)]
    code: Option<u16>,
    #[serde(default)]
    reason: Option<String>,
}

/// The close code (default 4003) and reason of a disconnect call, checked.
fn disconnect_body(bytes: &[u8]) -> Result<(u16, String), ApiResponse> {
    let b: DisconnectBody = body(bytes)?;
    let code = b.code.unwrap_or(crate::close::code::FORBIDDEN);
    if !(code == 1000 || (4000..=4999).contains(&code)) {
        return Err(bad("code must be 1000 or in 4000..=4999"));
    }
    let reason = b
        .reason
        .unwrap_or_else(|| "disconnected by the server".into());
    Ok((code, reason))
}

fn disconnect(hub: &mut Hub, now: Timestamp, ids: &[ConnId], bytes: &[u8]) -> ApiResponse {
    let (code, reason) = match disconnect_body(bytes) {
        Ok(c) => c,
        Err(r) => return r,
    };
    let mut n = 0;
    for &id in ids {
        if hub.disconnect(now, id, code, &reason).is_ok() {
            n += 1;
        }
    }
    ApiResponse::ok(json!({ "disconnected": n }))
}

/// RFC 3986 percent-decoding of one path segment.
fn percent_decode(s: &str) -> Result<String, ()> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or(())?;
            let hex = std::str::from_utf8(hex).map_err(|_| ())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| ())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| ())
}

#[cfg(test)]
mod tests;
