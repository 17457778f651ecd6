//! The HTTP hook wire format (PROTOCOL.md "Application hooks and RPC"): what roomcast
//! POSTs to `URL/{hook}` and how the backend's answer reads. Decided here so every
//! runtime that calls a backend (natively now, the Worker's `fetch` later) sends the same
//! bodies and understands the same answers; the adapters only move the bytes.

use serde_json::value::RawValue;
use serde_json::{json, Value};

use super::decisions::{Answer, Question};

/// Who is asking, as a hook body names them.
#[derive(Debug, Clone, Copy)]
pub struct HookCaller<'a> {
    /// The connection id clients see.
    pub wire_id: &'a str,
    /// Its user, if any.
    pub user: Option<&'a str>,
    /// Its `info` (a JSON object's text), if any.
    pub info: Option<&'a str>,
}

/// A backend answer that cannot be read (the request is then `unavailable`).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HookAnswerError {
    /// Not 200.
    #[error("the backend answered {0}")]
    Status(u16),
    /// Not a JSON object of the documented shape.
    #[error("the backend's answer is not a JSON object of the hook shape: {0}")]
    Shape(String),
}

fn raw_json(data: Option<&RawValue>) -> Value {
    data.and_then(|d| serde_json::from_str(d.get()).ok())
        .unwrap_or(Value::Null)
}

fn caller_fields(c: &HookCaller<'_>) -> Value {
    let info = c
        .info
        .and_then(|i| serde_json::from_str::<Value>(i).ok())
        .unwrap_or(Value::Null);
    json!({"conn": c.wire_id, "user": c.user, "info": info})
}

/// The JSON body of the call that asks `question` (the hook's path is
/// [`Question::hook`]).
pub fn hook_request(caller: &HookCaller<'_>, question: &Question) -> Value {
    let mut body = caller_fields(caller);
    match question {
        Question::Connect { headers } => {
            let headers: serde_json::Map<String, Value> = headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), Value::String(v.clone())))
                .collect();
            body["headers"] = Value::Object(headers);
        }
        Question::Join { room, presence } => {
            body["room"] = room.as_str().into();
            body["presence"] = (*presence).into();
        }
        Question::Subscribe { channel } => body["channel"] = channel.as_str().into(),
        Question::Publish {
            target_kind,
            target,
            event,
            data,
        } => {
            body[*target_kind] = target.as_str().into();
            body["event"] = event.as_str().into();
            body["data"] = raw_json(data.as_deref());
        }
        Question::Rpc { method, data } => {
            body["method"] = method.as_str().into();
            body["data"] = raw_json(data.as_deref());
        }
    }
    body
}

/// The body of the after-the-fact `URL/disconnect` call.
pub fn disconnect_request(caller: &HookCaller<'_>, reason: &str) -> Value {
    let mut body = caller_fields(caller);
    body["reason"] = reason.into();
    body
}

/// Reads the backend's answer to a `hook` call: 200 with `{}` (allow),
/// `{"error":{"code","message"}}` (refuse), optionally `"data"`; for `connect`, `"user"`,
/// `"info"` and `"rooms"` instead of `"data"`.
pub fn hook_answer(hook: &str, status: u16, body: &[u8]) -> Result<Answer, HookAnswerError> {
    #[derive(serde::Deserialize)]
    struct Raw {
        #[serde(default)]
        error: Option<RawError>,
        #[serde(default)]
        data: Option<Box<RawValue>>,
        #[serde(default)]
        user: Option<String>,
        #[serde(default)]
        info: Option<Box<RawValue>>,
        #[serde(default)]
        rooms: Vec<String>,
    }
    #[derive(serde::Deserialize)]
    struct RawError {
        code: String,
        #[serde(default)]
        message: String,
    }
    if status != 200 {
        return Err(HookAnswerError::Status(status));
    }
    if body.trim_ascii_start().first() != Some(&b'{') {
        return Err(HookAnswerError::Shape("not an object".into()));
    }
    let raw: Raw =
        serde_json::from_slice(body).map_err(|e| HookAnswerError::Shape(e.to_string()))?;
    Ok(match (raw.error, hook == "connect") {
        (Some(e), _) => Answer::Refuse {
            code: e.code,
            message: e.message,
        },
        (None, true) => {
            let rooms: Vec<&str> = raw.rooms.iter().map(String::as_str).collect();
            Answer::admit(raw.user.as_deref(), raw.info.as_deref(), &rooms)
        }
        (None, false) => Answer::Allow { data: raw.data },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_read_as_the_protocol_says() {
        assert_eq!(hook_answer("join", 200, b"{}").unwrap(), Answer::allow());
        assert_eq!(
            hook_answer("publish", 200, br#"{"data":{"text":"***"}}"#).unwrap(),
            Answer::with_data(RawValue::from_string(r#"{"text":"***"}"#.into()).unwrap())
        );
        assert_eq!(
            hook_answer("rpc", 200, br#"{"error":{"code":"banned","message":"no"}}"#).unwrap(),
            Answer::refuse("banned", "no")
        );
        assert!(hook_answer("rpc", 200, b"[]").is_err());
        assert!(hook_answer("rpc", 200, b"nope").is_err());
        assert_eq!(
            hook_answer("rpc", 500, b"{}"),
            Err(HookAnswerError::Status(500))
        );
        let info = RawValue::from_string(r#"{"n":1}"#.into()).unwrap();
        assert_eq!(
            hook_answer(
                "connect",
                200,
                br#"{"user":"eve","info":{"n":1},"rooms":["a"]}"#
            )
            .unwrap(),
            Answer::admit(Some("eve"), Some(&info), &["a"])
        );
    }

    #[test]
    fn bodies_carry_the_caller_and_the_request() {
        let c = HookCaller {
            wire_id: "w-1",
            user: Some("ann"),
            info: Some(r#"{"plan":"pro"}"#),
        };
        let q = Question::Publish {
            target_kind: "channel",
            target: "news".into(),
            event: "say".into(),
            data: Some(RawValue::from_string("[1]".into()).unwrap()),
        };
        assert_eq!(
            hook_request(&c, &q),
            json!({"conn":"w-1","user":"ann","info":{"plan":"pro"},"channel":"news","event":"say","data":[1]})
        );
        let q = Question::Connect {
            headers: vec![("Cookie".into(), "s=1".into())],
        };
        assert_eq!(hook_request(&c, &q)["headers"], json!({"cookie":"s=1"}));
        assert_eq!(disconnect_request(&c, "closed")["reason"], "closed");
    }
}
