//! The bytes nodes exchange through the backplane: a room message's log body, and the
//! forwards and controls that travel without a seq.

use std::sync::Arc;

use serde_json::value::RawValue;

use crate::hub::messages::Content;
use crate::hub::types::{Destination, Forward};
use crate::protocol;

/// The JSON body of a room message in the log: event, sender, data, the time the
/// publishing node accepted it (every node's `ts` for it) and the connection that does
/// not receive it (a publisher without `echo`), by its wire id.
pub(crate) fn encode_body(c: &Content<'_>, exclude: Option<&str>) -> Box<str> {
    let Content {
        event,
        from,
        data,
        ts,
    } = *c;
    let mut b = Vec::with_capacity(64);
    b.extend_from_slice(b"{\"t\":");
    protocol::write_u64(&mut b, ts);
    b.extend_from_slice(b",\"e\":");
    protocol::write_str(&mut b, event);
    b.extend_from_slice(b",\"f\":");
    b.extend_from_slice(from.unwrap_or(b"null"));
    b.extend_from_slice(b",\"d\":");
    b.extend_from_slice(data.map_or("null", RawValue::get).as_bytes());
    b.extend_from_slice(b",\"x\":");
    match exclude {
        Some(x) => protocol::write_str(&mut b, x),
        None => b.extend_from_slice(b"null"),
    }
    b.push(b'}');
    String::from_utf8(b)
        .expect("JSON built from str and RawValue is UTF-8")
        .into_boxed_str()
}

/// A log body read back.
#[derive(serde::Deserialize)]
pub(super) struct Body<'a> {
    /// Absent in bodies written before `ts` existed: the receiving node stamps those.
    #[serde(default)]
    pub(super) t: Option<u64>,
    #[serde(borrow)]
    pub(super) e: std::borrow::Cow<'a, str>,
    #[serde(borrow)]
    pub(super) f: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) d: Option<&'a RawValue>,
    #[serde(borrow)]
    pub(super) x: Option<std::borrow::Cow<'a, str>>,
}

pub(super) fn decode_body(body: &str) -> Option<Body<'_>> {
    let b: Body<'_> = serde_json::from_str(body).ok()?;
    protocol::valid_name(&b.e).then_some(b)
}

impl<'a> Body<'a> {
    /// What the message carries, stamped `ts_now` if the body has no time.
    pub(super) fn content(&'a self, ts_now: u64) -> Content<'a> {
        Content {
            event: &self.e,
            from: self.f.map(|f| f.get().as_bytes()),
            data: self.d,
            ts: self.t.unwrap_or(ts_now),
        }
    }
}

/// A [`Forward`] as the JSON other nodes read with [`forward_from_json`].
pub fn forward_to_json(f: &Forward) -> String {
    let (kind, name) = match &f.destination {
        Destination::Room(n) => ("room", Some(&**n)),
        Destination::Channel(n) => ("channel", Some(&**n)),
        Destination::User(n) => ("user", Some(&**n)),
        Destination::All | Destination::Conn(_) => ("all", None),
    };
    let data: Option<serde_json::Value> = f
        .data
        .as_deref()
        .and_then(|d| serde_json::from_str(d.get()).ok());
    serde_json::json!({
        "k": kind,
        "n": name,
        "e": f.event,
        "d": data,
        "f": f.from.as_ref().map(|(c, u)| serde_json::json!({"conn": c, "user": u})),
    })
    .to_string()
}

/// Reads what [`forward_to_json`] wrote (`None`: not a forward of this version).
pub fn forward_from_json(text: &str) -> Option<Forward> {
    #[derive(serde::Deserialize)]
    struct From {
        conn: String,
        user: Option<String>,
    }
    #[derive(serde::Deserialize)]
    struct Raw {
        k: String,
        n: Option<String>,
        e: String,
        d: Option<Box<RawValue>>,
        f: Option<From>,
    }
    let r: Raw = serde_json::from_str(text).ok()?;
    let name = |n: Option<String>| n.filter(|n| protocol::valid_name(n)).map(Arc::<str>::from);
    let destination = match r.k.as_str() {
        "room" => Destination::Room(name(r.n)?),
        "channel" => Destination::Channel(name(r.n)?),
        "user" => Destination::User(name(r.n)?),
        "all" => Destination::All,
        _ => return None,
    };
    Some(Forward {
        destination,
        event: r.e,
        data: r.d.filter(|d| d.get() != "null"),
        from: r.f.map(|f| (f.conn, f.user)),
    })
}

/// A command every node carries out on its own connections ([`Output::Control`](crate::hub::Output::Control)): what
/// the server API asks of a user must reach the user's connections on every node.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Control {
    /// Close every connection of `user` with `code` and `reason`.
    DisconnectUser {
        /// The user.
        user: Arc<str>,
        /// Close code (1000 or 4000..=4999).
        code: u16,
        /// Close reason.
        reason: String,
    },
}

/// A [`Control`] as the JSON other nodes read with [`control_from_json`] (it shares the
/// forward channel: `"k"` tells them apart).
pub fn control_to_json(c: &Control) -> String {
    match c {
        Control::DisconnectUser { user, code, reason } => {
            serde_json::json!({"k": "disconnect_user", "n": &**user, "code": code, "reason": reason})
                .to_string()
        }
    }
}

/// Reads what [`control_to_json`] wrote (`None`: not a control of this version).
pub fn control_from_json(text: &str) -> Option<Control> {
    #[derive(serde::Deserialize)]
    struct Raw {
        k: String,
        n: String,
        code: u16,
        reason: String,
    }
    let r: Raw = serde_json::from_str(text).ok()?;
    let ok = r.k == "disconnect_user"
        && protocol::valid_name(&r.n)
        && (r.code == 1000 || (4000..=4999).contains(&r.code));
    ok.then(|| Control::DisconnectUser {
        user: Arc::from(r.n),
        code: r.code,
        reason: r.reason,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_forwards_read_back() {
        let data = RawValue::from_string(r#"{"t":"hi"}"#.into()).unwrap();
        let content = Content {
            event: "say",
            from: Some(br#"{"conn":"c-1","user":"ann"}"#),
            data: Some(&data),
            ts: 1_800_000_000_123,
        };
        let body = encode_body(&content, Some("c-1"));
        let b = decode_body(&body).unwrap();
        assert_eq!(b.t, Some(1_800_000_000_123));
        assert_eq!(b.content(7).ts, 1_800_000_000_123, "the publisher's time");
        assert_eq!(
            (
                &*b.e,
                b.f.unwrap().get(),
                b.d.unwrap().get(),
                b.x.as_deref()
            ),
            (
                "say",
                r#"{"conn":"c-1","user":"ann"}"#,
                r#"{"t":"hi"}"#,
                Some("c-1")
            )
        );
        let content = Content {
            event: "e",
            from: None,
            data: None,
            ts: 5,
        };
        let body = encode_body(&content, None);
        let b = decode_body(&body).unwrap();
        assert!(b.f.is_none() && b.d.is_none() && b.x.is_none());
        let old = decode_body(r#"{"e":"e","f":null,"d":null,"x":null}"#).unwrap();
        assert_eq!(
            old.content(9).ts,
            9,
            "a body without a time is stamped on arrival"
        );
        assert!(
            decode_body(r#"{"e":"","f":null,"d":null,"x":null}"#).is_none(),
            "bad event name"
        );

        let f = Forward {
            destination: Destination::Channel(Arc::from("news")),
            event: "e".into(),
            data: Some(RawValue::from_string("[1,2]".into()).unwrap()),
            from: Some(("c-2".into(), None)),
        };
        let back = forward_from_json(&forward_to_json(&f)).unwrap();
        assert_eq!(back.destination, f.destination);
        assert_eq!(back.data.unwrap().get(), "[1,2]");
        assert_eq!(back.from, f.from);
        assert!(forward_from_json("{}").is_none());
        assert!(forward_from_json(r#"{"k":"room","n":"","e":"e"}"#).is_none());
    }
}
