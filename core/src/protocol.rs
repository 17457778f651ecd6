//! The roomcast v1 JSON wire protocol: parsing client requests and writing server
//! messages, exactly as `PROTOCOL.md` specifies.
//!
//! Requests are parsed into borrowed fields (`&RawValue`) first and typed second, so the
//! error precedence of the spec (`bad_json` → `bad_request` → `bad_name`) falls out of
//! the order of the passes, and a publish's `data` is copied into the outgoing message
//! as raw JSON without ever being re-serialized.

use std::borrow::Cow;
use std::fmt::Write as _;

use serde::Deserialize;
use serde_json::value::RawValue;

/// Longest room, channel, event or user name, in bytes.
pub const MAX_NAME_LEN: usize = 128;
/// Longest string request id, in bytes.
pub const MAX_ID_LEN: usize = 64;

/// The error codes of the protocol: stable strings clients switch on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorCode {
    /// Not JSON, or not a JSON object.
    BadJson,
    /// Missing or ill-typed field, unknown `type`, two publish targets, bad `id`.
    BadRequest,
    /// A name outside the naming rules.
    BadName,
    /// The sender is not allowed to use that room or channel.
    NotMember,
    /// The room has reached its member limit.
    RoomFull,
    /// This connection has joined as many rooms as it may.
    TooManyRooms,
    /// This connection has as many subscriptions as it may.
    TooManySubscriptions,
    /// The server's policy refuses the request.
    Forbidden,
    /// Over the request rate limit.
    RateLimited,
    /// Not supported here (binary messages; `auth` without keys; `rpc` without a hook).
    Unsupported,
    /// The application did not answer in time (a hook timed out or its backend is down).
    Unavailable,
    /// A code the application chose when it refused (see [`Rejection::application`]).
    Application,
}

impl ErrorCode {
    /// The code as it appears on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::BadJson => "bad_json",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::BadName => "bad_name",
            ErrorCode::NotMember => "not_member",
            ErrorCode::RoomFull => "room_full",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::TooManySubscriptions => "too_many_subscriptions",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Unsupported => "unsupported",
            ErrorCode::Unavailable => "unavailable",
            ErrorCode::Application => "application",
        }
    }
}

/// A request that failed, with a message for humans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// The machine-readable code.
    pub code: ErrorCode,
    /// Why, for a developer reading the socket.
    pub message: Cow<'static, str>,
    /// With [`ErrorCode::Application`]: the application's own code, sent as is.
    pub app_code: Option<Box<str>>,
}

impl Rejection {
    pub(crate) fn new(code: ErrorCode, message: impl Into<Cow<'static, str>>) -> Self {
        Rejection {
            code,
            message: message.into(),
            app_code: None,
        }
    }

    /// A refusal with the application's own `code` (a valid name, passed through to
    /// the client unchanged); a code breaking the name rules becomes `forbidden`, so a
    /// backend cannot put arbitrary bytes on the wire.
    pub fn application(code: &str, message: impl Into<Cow<'static, str>>) -> Self {
        if valid_name(code) {
            Rejection {
                code: ErrorCode::Application,
                message: message.into(),
                app_code: Some(code.into()),
            }
        } else {
            Rejection::new(ErrorCode::Forbidden, message)
        }
    }

    /// The code as it appears on the wire.
    pub fn code_str(&self) -> &str {
        match (&self.app_code, self.code) {
            (Some(c), ErrorCode::Application) => c,
            _ => self.code.as_str(),
        }
    }
}

/// Checks a room, channel, event or user name against the naming rules.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= MAX_NAME_LEN && !name.chars().any(char::is_control)
}

/// The `id` of a request, kept as its raw JSON text so it is echoed byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RequestId(Box<str>);

impl RequestId {
    /// The JSON text of the id (a number, or a quoted string).
    pub fn as_json(&self) -> &str {
        &self.0
    }
}

/// Where a publish goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target<'a> {
    /// Every member of a room.
    Room(Cow<'a, str>),
    /// A channel's subscribers and the members of its linked rooms.
    Channel(Cow<'a, str>),
    /// Every connection of a user.
    User(Cow<'a, str>),
}

/// What presence a `join` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Presence {
    /// None (`presence` absent or `false`): joins at no presence cost.
    #[default]
    Off,
    /// Every connection (`true`): a user with two tabs is two entries.
    Connections,
    /// Every user once (`"users"`): `joined` when a user's first connection joins,
    /// `left` when their last one leaves; anonymous connections count one each.
    Users,
}

impl Presence {
    /// Whether any presence is asked (what the `presence` right guards).
    pub fn is_on(self) -> bool {
        self != Presence::Off
    }
}

impl From<bool> for Presence {
    fn from(on: bool) -> Presence {
        if on {
            Presence::Connections
        } else {
            Presence::Off
        }
    }
}

/// A client request, borrowed from the message text.
#[derive(Debug, Clone)]
pub enum Request<'a> {
    /// Join a room, optionally recovering from `since`/`epoch`.
    Join {
        /// The room.
        room: Cow<'a, str>,
        /// Last seq the client saw.
        since: Option<u64>,
        /// The epoch that seq belongs to.
        epoch: Option<Cow<'a, str>>,
        /// Which presence events to receive.
        presence: Presence,
        /// A room token (private rooms).
        token: Option<Cow<'a, str>>,
    },
    /// Present a token: the first message of a connection that did not bring one in
    /// the URL, or a fresh token before the current one expires.
    Auth {
        /// The JWT.
        token: Cow<'a, str>,
    },
    /// Leave a room.
    Leave {
        /// The room.
        room: Cow<'a, str>,
    },
    /// Subscribe to a channel.
    Subscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Unsubscribe from a channel.
    Unsubscribe {
        /// The channel.
        channel: Cow<'a, str>,
    },
    /// Publish an event.
    Publish {
        /// Room, channel or user.
        target: Target<'a>,
        /// Event name.
        event: Cow<'a, str>,
        /// Raw JSON payload (`None` is delivered as `null`).
        data: Option<&'a RawValue>,
        /// Deliver to the sending connection too.
        echo: bool,
    },
    /// Application-level ping.
    Ping,
    /// A call the application answers (an rpc hook).
    Rpc {
        /// The method name.
        method: Cow<'a, str>,
        /// Raw JSON argument (`None`: absent).
        data: Option<&'a RawValue>,
    },
}

/// A parsed request: the id (when valid) and the request or why it was refused.
#[derive(Debug)]
pub struct Parsed<'a> {
    /// The id to echo, if the request carried a valid one.
    pub id: Option<RequestId>,
    /// The request, or the rejection to send back.
    pub request: Result<Request<'a>, Rejection>,
}

/// Keeps an explicit `null` as a present value, so `"room": null` is a wrong type
/// (`bad_request`) rather than a missing field silently ignored.
fn present<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&'de RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow, rename = "type", default, deserialize_with = "present")]
    kind: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    id: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    room: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    channel: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    user: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    echo: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    since: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    epoch: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    presence: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    token: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    method: Option<&'a RawValue>,
}

fn bad_request(msg: impl Into<Cow<'static, str>>) -> Rejection {
    Rejection::new(ErrorCode::BadRequest, msg)
}

fn string_field<'a>(raw: &'a RawValue, field: &'static str) -> Result<Cow<'a, str>, Rejection> {
    let text = raw.get();
    if !text.starts_with('"') {
        return Err(bad_request(format!("`{field}` must be a string")));
    }
    if let Ok(s) = serde_json::from_str::<&'a str>(text) {
        return Ok(Cow::Borrowed(s));
    }
    serde_json::from_str::<String>(text)
        .map(Cow::Owned)
        .map_err(|_| bad_request(format!("`{field}` must be a string")))
}

fn required<'a>(raw: Option<&'a RawValue>, field: &'static str) -> Result<Cow<'a, str>, Rejection> {
    match raw {
        Some(r) => string_field(r, field),
        None => Err(bad_request(format!("missing field `{field}`"))),
    }
}

fn optional_bool(raw: Option<&RawValue>, field: &'static str) -> Result<bool, Rejection> {
    match raw.map(RawValue::get) {
        None => Ok(false),
        Some("true") => Ok(true),
        Some("false") => Ok(false),
        Some(_) => Err(bad_request(format!("`{field}` must be a boolean"))),
    }
}

fn check_name(name: &str, field: &'static str) -> Result<(), Rejection> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(Rejection::new(
            ErrorCode::BadName,
            format!(
                "`{field}` must be 1 to {MAX_NAME_LEN} bytes of UTF-8 without control characters"
            ),
        ))
    }
}

fn parse_id(raw: &RawValue) -> Option<RequestId> {
    let text = raw.get();
    if text.starts_with('"') {
        let s: String = serde_json::from_str(text).ok()?;
        (s.len() <= MAX_ID_LEN).then(|| RequestId(text.into()))
    } else {
        serde_json::from_str::<serde_json::Number>(text)
            .ok()
            .map(|_| RequestId(text.into()))
    }
}

/// True for the exact heartbeat text a runtime may answer without the hub.
pub fn is_heartbeat_ping(text: &str) -> bool {
    text == HEARTBEAT_PING
}

/// The client heartbeat, byte for byte.
pub const HEARTBEAT_PING: &str = r#"{"type":"ping"}"#;
/// The answer to [`HEARTBEAT_PING`], byte for byte.
pub const HEARTBEAT_PONG: &str = r#"{"type":"pong"}"#;

/// Parses one client message. Never panics; every peer mistake becomes a [`Rejection`].
pub fn parse_request(text: &str) -> Parsed<'_> {
    let raw: RawRequest<'_> = match serde_json::from_str(text) {
        Ok(r) => r,
        Err(e) => {
            let object = text.trim_start().starts_with('{');
            let code = if object && e.classify() == serde_json::error::Category::Data {
                // Valid JSON object whose shape serde refused: a duplicated field.
                bad_request(format!("malformed request: {e}"))
            } else {
                Rejection::new(ErrorCode::BadJson, "message is not a JSON object")
            };
            return Parsed {
                id: None,
                request: Err(code),
            };
        }
    };
    let id = match raw.id {
        None => None,
        Some(r) => match parse_id(r) {
            Some(id) => Some(id),
            None => {
                return Parsed {
                    id: None,
                    request: Err(bad_request(format!(
                        "`id` must be a number or a string of at most {MAX_ID_LEN} bytes"
                    ))),
                }
            }
        },
    };
    let request = typed(&raw);
    Parsed { id, request }
}

fn typed<'a>(raw: &RawRequest<'a>) -> Result<Request<'a>, Rejection> {
    let kind = required(raw.kind, "type")?;
    match kind.as_ref() {
        "join" => {
            let room = required(raw.room, "room")?;
            let since = match raw.since {
                None => None,
                Some(r) => Some(
                    serde_json::from_str::<u64>(r.get())
                        .map_err(|_| bad_request("`since` must be a non-negative integer"))?,
                ),
            };
            let epoch = raw.epoch.map(|r| string_field(r, "epoch")).transpose()?;
            let presence = match raw.presence.map(RawValue::get) {
                Some(r#""users""#) => Presence::Users,
                Some(r#""connections""#) => Presence::Connections,
                None | Some("false") => Presence::Off,
                Some("true") => Presence::Connections,
                Some(_) => {
                    return Err(bad_request(
                        "`presence` must be a boolean, \"connections\" or \"users\"",
                    ))
                }
            };
            let token = raw.token.map(|r| string_field(r, "token")).transpose()?;
            check_name(&room, "room")?;
            Ok(Request::Join {
                room,
                since,
                epoch,
                presence,
                token,
            })
        }
        "auth" => Ok(Request::Auth {
            token: required(raw.token, "token")?,
        }),
        "leave" => {
            let room = required(raw.room, "room")?;
            check_name(&room, "room")?;
            Ok(Request::Leave { room })
        }
        "subscribe" | "unsubscribe" => {
            let channel = required(raw.channel, "channel")?;
            check_name(&channel, "channel")?;
            Ok(if kind == "subscribe" {
                Request::Subscribe { channel }
            } else {
                Request::Unsubscribe { channel }
            })
        }
        "publish" => {
            let targets = [raw.room, raw.channel, raw.user]
                .iter()
                .filter(|t| t.is_some())
                .count();
            if targets != 1 {
                return Err(bad_request(
                    "publish needs exactly one of `room`, `channel` or `user`",
                ));
            }
            let (target, field) = if let Some(r) = raw.room {
                (Target::Room(string_field(r, "room")?), "room")
            } else if let Some(c) = raw.channel {
                (Target::Channel(string_field(c, "channel")?), "channel")
            } else {
                let u = raw.user.expect("exactly one target is present");
                (Target::User(string_field(u, "user")?), "user")
            };
            let event = required(raw.event, "event")?;
            let echo = optional_bool(raw.echo, "echo")?;
            let name = match &target {
                Target::Room(n) | Target::Channel(n) | Target::User(n) => n,
            };
            check_name(name, field)?;
            check_name(&event, "event")?;
            Ok(Request::Publish {
                target,
                event,
                data: raw.data,
                echo,
            })
        }
        "ping" => Ok(Request::Ping),
        "rpc" => {
            let method = required(raw.method, "method")?;
            check_name(&method, "method")?;
            Ok(Request::Rpc {
                method,
                data: raw.data,
            })
        }
        other => {
            let shown: String = other.chars().take(32).collect();
            Err(bad_request(format!("unknown request type `{shown}`")))
        }
    }
}

// ---------------------------------------------------------------------------------------
// Writing server messages. Each writer appends one JSON object to a buffer.

/// Appends `s` as a JSON string literal.
pub(crate) fn write_str(out: &mut Vec<u8>, s: &str) {
    serde_json::to_writer(&mut *out, s).expect("writing a str to a Vec cannot fail");
}

pub(crate) fn write_opt_str(out: &mut Vec<u8>, s: Option<&str>) {
    match s {
        Some(s) => write_str(out, s),
        None => out.extend_from_slice(b"null"),
    }
}

pub(crate) fn write_u64(out: &mut Vec<u8>, n: u64) {
    let mut s = String::new();
    write!(s, "{n}").expect("formatting into a String cannot fail");
    out.extend_from_slice(s.as_bytes());
}

/// `{"conn":"…","user":…}` (plus `"info":{…}` from a token): how a connection is shown
/// to others.
pub(crate) fn write_peer(out: &mut Vec<u8>, conn: &str, user: Option<&str>, info: Option<&str>) {
    out.extend_from_slice(b"{\"conn\":");
    write_str(out, conn);
    out.extend_from_slice(b",\"user\":");
    write_opt_str(out, user);
    if let Some(info) = info {
        out.extend_from_slice(b",\"info\":");
        out.extend_from_slice(info.as_bytes());
    }
    out.push(b'}');
}

/// Starts `{"type":"<kind>"` followed by `,"id":…` when there is one.
pub(crate) fn write_head(out: &mut Vec<u8>, kind: &str, id: Option<&RequestId>) {
    out.extend_from_slice(b"{\"type\":\"");
    out.extend_from_slice(kind.as_bytes());
    out.push(b'"');
    if let Some(id) = id {
        out.extend_from_slice(b",\"id\":");
        out.extend_from_slice(id.as_json().as_bytes());
    }
}

/// A complete `error` message.
pub(crate) fn write_error(out: &mut Vec<u8>, id: Option<&RequestId>, rej: &Rejection) {
    write_head(out, "error", id);
    out.extend_from_slice(b",\"code\":");
    write_str(out, rej.code_str());
    out.extend_from_slice(b",\"message\":");
    write_str(out, &rej.message);
    out.push(b'}');
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code(text: &str) -> Option<ErrorCode> {
        parse_request(text).request.err().map(|r| r.code)
    }

    #[test]
    fn bad_json_for_non_objects() {
        for t in ["", "nope", "[1,2]", "\"join\"", "42", "{\"type\":", "null"] {
            assert_eq!(code(t), Some(ErrorCode::BadJson), "{t:?}");
        }
    }

    #[test]
    fn bad_request_cases() {
        for t in [
            r#"{}"#,
            r#"{"type":5}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","room":7}"#,
            r#"{"type":"join","room":"a","since":-1}"#,
            r#"{"type":"join","room":"a","since":"3"}"#,
            r#"{"type":"join","room":"a","presence":"yes"}"#,
            r#"{"type":"join","room":"a","epoch":3}"#,
            r#"{"type":"publish","room":"a","channel":"b","event":"e"}"#,
            r#"{"type":"publish","event":"e"}"#,
            r#"{"type":"publish","room":"a"}"#,
            r#"{"type":"publish","room":"a","event":"e","echo":1}"#,
            r#"{"type":"subscribe","channel":["x"]}"#,
            r#"{"type":"ping","id":{"a":1}}"#,
            r#"{"type":"ping","id":true}"#,
            r#"{"type":"join","room":"a","room":"b"}"#,
        ] {
            assert_eq!(code(t), Some(ErrorCode::BadRequest), "{t}");
        }
    }

    #[test]
    fn presence_is_off_per_connection_or_per_user() {
        for (v, want) in [
            ("", Presence::Off),
            (r#","presence":false"#, Presence::Off),
            (r#","presence":true"#, Presence::Connections),
            (r#","presence":"connections""#, Presence::Connections),
            (r#","presence":"users""#, Presence::Users),
        ] {
            let t = format!(r#"{{"type":"join","room":"a"{v}}}"#);
            match parse_request(&t).request {
                Ok(Request::Join { presence, .. }) => assert_eq!(presence, want, "{t}"),
                other => panic!("{t}: {other:?}"),
            }
        }
        for v in [r#""Users""#, "1", "[]", r#""""#] {
            let t = format!(r#"{{"type":"join","room":"a","presence":{v}}}"#);
            assert_eq!(code(&t), Some(ErrorCode::BadRequest), "{t}");
        }
    }

    #[test]
    fn explicit_null_is_a_wrong_type_not_an_absent_field() {
        for t in [
            r#"{"type":null}"#,
            r#"{"type":"ping","id":null}"#,
            r#"{"type":"join","room":null}"#,
            r#"{"type":"join","room":"a","presence":null}"#,
            r#"{"type":"join","room":"a","since":null}"#,
            r#"{"type":"join","room":"a","epoch":null}"#,
            r#"{"type":"publish","room":"a","event":"e","echo":null}"#,
            r#"{"type":"publish","room":"a","user":null,"event":"e"}"#,
            r#"{"type":"publish","room":"a","event":null}"#,
        ] {
            let p = parse_request(t);
            assert!(p.id.is_none(), "{t}");
            assert_eq!(p.request.unwrap_err().code, ErrorCode::BadRequest, "{t}");
        }
        // data: null is the same as no data
        let p = parse_request(r#"{"type":"publish","room":"a","event":"e","data":null}"#);
        assert!(p.request.is_ok());
    }

    #[test]
    fn bad_id_is_not_echoed_and_long_ids_refused() {
        let p = parse_request(r#"{"type":"ping","id":[1]}"#);
        assert!(p.id.is_none());
        let long = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(65));
        let p = parse_request(&long);
        assert!(p.id.is_none());
        assert_eq!(p.request.unwrap_err().code, ErrorCode::BadRequest);
        let ok = format!(r#"{{"type":"ping","id":"{}"}}"#, "x".repeat(64));
        assert!(parse_request(&ok).id.is_some());
    }

    #[test]
    fn ids_echo_verbatim() {
        let p = parse_request(r#"{"type":"ping","id":1.50}"#);
        assert_eq!(p.id.unwrap().as_json(), "1.50");
        let p = parse_request(r#"{"id":"a\"b","type":"ping"}"#);
        assert_eq!(p.id.unwrap().as_json(), r#""a\"b""#);
    }

    #[test]
    fn bad_name_after_bad_request() {
        assert_eq!(
            code(r#"{"type":"join","room":""}"#),
            Some(ErrorCode::BadName)
        );
        let long = format!(r#"{{"type":"join","room":"{}"}}"#, "r".repeat(129));
        assert_eq!(code(&long), Some(ErrorCode::BadName));
        assert_eq!(
            code(r#"{"type":"join","room":"a\nb"}"#),
            Some(ErrorCode::BadName)
        );
        // a type error in one field wins over a bad name in another
        assert_eq!(
            code(r#"{"type":"publish","room":"","event":"e","echo":"x"}"#),
            Some(ErrorCode::BadRequest)
        );
        assert_eq!(
            code(r#"{"type":"publish","room":"ok","event":""}"#),
            Some(ErrorCode::BadName)
        );
    }

    #[test]
    fn names_count_bytes_not_chars() {
        let max = "é".repeat(64); // 128 bytes
        assert!(valid_name(&max));
        assert!(!valid_name(&format!("{max}a")));
        assert!(!valid_name("\u{7f}"));
    }

    #[test]
    fn publish_keeps_raw_data_and_ignores_unknown_fields() {
        let p = parse_request(
            r#"{"type":"publish","room":"r","event":"e","data":{"a": [1, 2]},"extra":true}"#,
        );
        match p.request.unwrap() {
            Request::Publish {
                target: Target::Room(r),
                event,
                data,
                echo,
            } => {
                assert_eq!(r, "r");
                assert_eq!(event, "e");
                assert_eq!(data.unwrap().get(), r#"{"a": [1, 2]}"#);
                assert!(!echo);
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn escaped_names_are_decoded() {
        match parse_request(r#"{"type":"join","room":"caf\u00e9"}"#)
            .request
            .unwrap()
        {
            Request::Join { room, .. } => assert_eq!(room, "café"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_are_json() {
        let mut out = Vec::new();
        let id = parse_request(r#"{"type":"ping","id":7}"#).id;
        write_error(
            &mut out,
            id.as_ref(),
            &Rejection::new(ErrorCode::NotMember, "say \"hi\""),
        );
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v["type"], "error");
        assert_eq!(v["id"], 7);
        assert_eq!(v["code"], "not_member");
        assert_eq!(v["message"], "say \"hi\"");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in ".*") {
            let _ = parse_request(&s);
        }

        #[test]
        fn join_names_roundtrip(name in "[^\\x00-\\x1f\\x7f]{1,40}") {
            let msg = serde_json::json!({"type":"join","room":name}).to_string();
            match parse_request(&msg).request {
                Ok(Request::Join { room, .. }) => proptest::prop_assert_eq!(room, name),
                Err(r) => proptest::prop_assert_eq!(r.code, ErrorCode::BadName),
                Ok(other) => proptest::prop_assert!(false, "{:?}", other),
            }
        }
    }
}
