//! The JavaScript-facing shapes, kept free of wasm-bindgen so they compile and are tested
//! natively.
//!
//! JavaScript objects cross the boundary as JSON text (`JSON.stringify` one way,
//! `JSON.parse` the other). That keeps one serde path for options, publish arguments and
//! event payloads, and lets a message's `data` travel as the raw JSON the server sent,
//! parsed once by the browser instead of being decoded into Rust values and rebuilt.

use roomcast_core::client::{ClientConfig, ClientEvent, ClientState, Peer, PublishTarget, Via};
use roomcast_core::protocol::Presence;
use serde::Deserialize;
use serde_json::value::RawValue;

/// The second argument of `new RoomcastClient(url, options)`, in the camelCase a web
/// developer expects. Unknown keys are refused so a typo does not silently fall back to a
/// default.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Options {
    /// Identity sent as `?user=NAME` (the server's open identity mode).
    pub user: Option<String>,
    /// A fixed signed token (a function-valued `token` never reaches this: the binding
    /// reads it from the object, and `JSON.stringify` leaves functions out).
    pub token: Option<String>,
    /// See [`ClientConfig::backoff_initial_ms`].
    pub backoff_initial_ms: Option<u64>,
    /// See [`ClientConfig::backoff_max_ms`].
    pub backoff_max_ms: Option<u64>,
    /// See [`ClientConfig::stable_after_ms`].
    pub stable_after_ms: Option<u64>,
    /// See [`ClientConfig::offline_queue`].
    pub offline_queue: Option<usize>,
    /// See [`ClientConfig::ack_timeout_ms`].
    pub ack_timeout_ms: Option<u64>,
    /// See [`ClientConfig::connect_timeout_ms`].
    pub connect_timeout_ms: Option<u64>,
    /// See [`ClientConfig::fallback_urls`] (resolved like the main URL by the binding).
    #[serde(default)]
    pub fallback_urls: Vec<String>,
}

impl Options {
    /// Parses `JSON.stringify(options)`; `None` (options omitted) means all defaults.
    pub fn parse(json: Option<&str>) -> Result<Options, String> {
        match json {
            None => Ok(Options::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| format!("bad options: {e}")),
        }
    }

    /// The core's config for `url` (already carrying `?user=`): unset fields keep the
    /// core's defaults, so the defaults are defined in one place. `token` says whether
    /// a token (string or function) was given.
    pub fn into_config(self, url: String, token: bool) -> ClientConfig {
        let d = ClientConfig::default();
        ClientConfig {
            url,
            fallback_urls: self.fallback_urls,
            token,
            backoff_initial_ms: self.backoff_initial_ms.unwrap_or(d.backoff_initial_ms),
            backoff_max_ms: self.backoff_max_ms.unwrap_or(d.backoff_max_ms),
            stable_after_ms: self.stable_after_ms.unwrap_or(d.stable_after_ms),
            offline_queue: self.offline_queue.unwrap_or(d.offline_queue),
            ack_timeout_ms: self.ack_timeout_ms.unwrap_or(d.ack_timeout_ms),
            connect_timeout_ms: self.connect_timeout_ms.unwrap_or(d.connect_timeout_ms),
        }
    }
}

/// The second argument of `join(room, options)`.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JoinOptions {
    /// Ask for this room's presence events (and the `present` list in the ack): `true`
    /// or `"connections"` per connection, `"users"` per user.
    #[serde(default)]
    pub presence: Option<PresenceOption>,
}

/// `presence` as a page may write it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum PresenceOption {
    /// `true` / `false`.
    On(bool),
    /// `"connections"` / `"users"`.
    Kind(PresenceKind),
}

/// The named kinds of presence.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PresenceKind {
    /// Every connection.
    Connections,
    /// Every user once.
    Users,
}

impl JoinOptions {
    /// The presence asked for.
    pub fn presence(&self) -> Presence {
        match self.presence {
            None | Some(PresenceOption::On(false)) => Presence::Off,
            Some(PresenceOption::On(true) | PresenceOption::Kind(PresenceKind::Connections)) => {
                Presence::Connections
            }
            Some(PresenceOption::Kind(PresenceKind::Users)) => Presence::Users,
        }
    }

    /// Parses `JSON.stringify(options)`; `None` means no options.
    pub fn parse(json: Option<&str>) -> Result<JoinOptions, String> {
        match json {
            None => Ok(JoinOptions::default()),
            Some(text) => serde_json::from_str(text).map_err(|e| format!("bad join options: {e}")),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPublish {
    room: Option<String>,
    channel: Option<String>,
    user: Option<String>,
    event: String,
    #[serde(default)]
    data: Option<Box<RawValue>>,
    #[serde(default)]
    echo: Option<bool>,
}

/// `publish({ room | channel | user, event, data, echo })`, checked before it reaches the
/// machine so a wrong call fails with a clear message instead of a server round trip.
#[derive(Debug, PartialEq, Eq)]
pub struct Publish {
    /// Where to.
    pub target: PublishTarget,
    /// Event name.
    pub event: String,
    /// Raw JSON text of `data` (`None`: absent or `null`, which the server delivers as
    /// `null` either way).
    pub data: Option<String>,
    /// Also deliver to the sending connection.
    pub echo: bool,
}

impl Publish {
    /// Parses `JSON.stringify(args)`.
    pub fn parse(json: &str) -> Result<Publish, String> {
        let raw: RawPublish =
            serde_json::from_str(json).map_err(|e| format!("bad publish arguments: {e}"))?;
        let target = match (raw.room, raw.channel, raw.user) {
            (Some(r), None, None) => PublishTarget::Room(r),
            (None, Some(c), None) => PublishTarget::Channel(c),
            (None, None, Some(u)) => PublishTarget::User(u),
            _ => return Err("publish needs exactly one of room, channel or user".into()),
        };
        Ok(Publish {
            target,
            event: raw.event,
            data: raw.data.map(|d| d.get().to_owned()),
            echo: raw.echo.unwrap_or(false),
        })
    }
}

/// Which `on(...)` event names exist. Checked in `on`/`off` so a misspelt name throws
/// instead of registering a handler that never runs.
pub const EVENT_NAMES: [&str; 10] = [
    "message",
    "presence",
    "state",
    "error",
    "recovered",
    "rejoined",
    "welcome",
    "dropped",
    "joined",
    "left",
];

fn push_str(out: &mut String, s: &str) {
    out.push_str(&serde_json::to_string(s).expect("strings always serialize"));
}

fn push_user_info(out: &mut String, user: Option<&str>, info: Option<&serde_json::Value>) {
    out.push_str(",\"user\":");
    match user {
        Some(u) => push_str(out, u),
        None => out.push_str("null"),
    }
    if let Some(i) = info {
        out.push_str(",\"info\":");
        out.push_str(&i.to_string());
    }
}

fn push_peer(out: &mut String, p: &Peer) {
    out.push_str("{\"conn\":");
    push_str(out, &p.conn);
    push_user_info(out, p.user.as_deref(), p.info.as_ref());
    out.push('}');
}

fn push_peers(out: &mut String, peers: &[Peer]) {
    out.push('[');
    for (i, p) in peers.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_peer(out, p);
    }
    out.push(']');
}

/// The `state` payload (and the `state` getter): a `state` string plus what a UI needs
/// to show it, notably `retryAt` (wall-clock ms, `Date.now()` scale) for a countdown.
pub fn state_json(state: &ClientState, retry_at: Option<u64>) -> String {
    match state {
        ClientState::Connecting => r#"{"state":"connecting"}"#.to_owned(),
        ClientState::Open => r#"{"state":"open"}"#.to_owned(),
        ClientState::Reconnecting { attempt, delay_ms } => format!(
            r#"{{"state":"reconnecting","attempt":{attempt},"delayMs":{delay_ms},"retryAt":{}}}"#,
            retry_at.map_or_else(|| "null".to_owned(), |t| t.to_string())
        ),
        ClientState::Closed { code } => format!(
            r#"{{"state":"closed","code":{}}}"#,
            code.map_or_else(|| "null".to_owned(), |c| c.to_string())
        ),
    }
}

/// The handler name and JSON payload of a machine event. `wall_now` (ms, `Date.now()`)
/// dates a reconnect so the page can count down to it. Acks and errors are returned too;
/// the binding routes those to the request's promise when it has one.
pub fn event_payload(e: &ClientEvent, wall_now: u64) -> (&'static str, String) {
    let mut out = String::new();
    let name = match e {
        ClientEvent::State(s) => {
            let at = match s {
                ClientState::Reconnecting { delay_ms, .. } => {
                    Some(wall_now.saturating_add(*delay_ms))
                }
                _ => None,
            };
            out = state_json(s, at);
            "state"
        }
        ClientEvent::Welcome { conn, user, info } => {
            out.push_str("{\"conn\":");
            push_str(&mut out, conn);
            push_user_info(&mut out, user.as_deref(), info.as_ref());
            out.push('}');
            "welcome"
        }
        ClientEvent::Joined { body, .. } => {
            // the server's `joined` object (room, members, epoch, seq), as is
            out.push_str(body);
            "joined"
        }
        ClientEvent::Left { room, reason } => {
            out.push_str("{\"room\":");
            push_str(&mut out, room);
            out.push_str(",\"reason\":");
            push_str(&mut out, reason);
            out.push('}');
            "left"
        }
        ClientEvent::Message(m) => {
            out.push('{');
            match &m.via {
                Via::Room { room, seq } => {
                    out.push_str("\"room\":");
                    push_str(&mut out, room);
                    out.push_str(&format!(",\"seq\":{seq},"));
                }
                Via::Channel(c) => {
                    out.push_str("\"channel\":");
                    push_str(&mut out, c);
                    out.push(',');
                }
                Via::User(u) => {
                    out.push_str("\"user\":");
                    push_str(&mut out, u);
                    out.push(',');
                }
                Via::Direct => {}
            }
            if let Some(ts) = m.ts {
                out.push_str(&format!("\"ts\":{ts},"));
            }
            out.push_str("\"event\":");
            push_str(&mut out, &m.event);
            out.push_str(",\"data\":");
            out.push_str(&m.data); // raw JSON from the server, validated by the machine
            out.push_str(",\"from\":");
            match &m.from {
                Some(p) => push_peer(&mut out, p),
                None => out.push_str("null"),
            }
            out.push('}');
            "message"
        }
        ClientEvent::Presence { room, joined, left } => {
            out.push_str("{\"room\":");
            push_str(&mut out, room);
            out.push_str(",\"joined\":");
            push_peers(&mut out, joined);
            out.push_str(",\"left\":");
            push_peers(&mut out, left);
            out.push('}');
            "presence"
        }
        ClientEvent::Ack { body, .. } => {
            out.push_str(body);
            "ack"
        }
        ClientEvent::Error { id, code, message } => {
            out.push_str("{\"id\":");
            out.push_str(&id.map_or_else(|| "null".to_owned(), |i| i.to_string()));
            out.push_str(",\"code\":");
            push_str(&mut out, code);
            out.push_str(",\"message\":");
            push_str(&mut out, message);
            out.push('}');
            "error"
        }
        ClientEvent::Recovered { room, recovered } => {
            out.push_str("{\"room\":");
            push_str(&mut out, room);
            out.push_str(&format!(",\"recovered\":{recovered}}}"));
            "recovered"
        }
        ClientEvent::Dropped { total } => {
            out = format!("{{\"total\":{total}}}");
            "dropped"
        }
        ClientEvent::Rejoined { room, ack } => {
            // `ack` is the server's JSON object, embedded as is
            out.push_str("{\"room\":");
            push_str(&mut out, room);
            out.push_str(",\"ack\":");
            out.push_str(ack);
            out.push('}');
            "rejoined"
        }
    };
    (name, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::client::Message;
    use serde_json::{json, Value};

    fn parsed(e: &ClientEvent) -> (&'static str, Value) {
        let (n, s) = event_payload(e, 1_000);
        (n, serde_json::from_str(&s).expect("payloads are JSON"))
    }

    #[test]
    fn options_map_onto_the_core_config_and_keep_its_defaults() {
        let o = Options::parse(Some(
            r#"{"user":"ann","backoffMaxMs":5000,"offlineQueue":3}"#,
        ))
        .unwrap();
        assert_eq!(o.user.as_deref(), Some("ann"));
        let c = o.into_config("ws://h/ws?user=ann".into(), false);
        let d = ClientConfig::default();
        assert_eq!(c.backoff_max_ms, 5000);
        assert_eq!(c.offline_queue, 3);
        assert_eq!(c.backoff_initial_ms, d.backoff_initial_ms);
        assert_eq!(c.ack_timeout_ms, d.ack_timeout_ms);
        assert_eq!(c.url, "ws://h/ws?user=ann");
        assert!(Options::parse(None).unwrap().user.is_none());
    }

    #[test]
    fn misspelt_or_ill_typed_options_are_refused() {
        assert!(Options::parse(Some(r#"{"backofMaxMs":1}"#)).is_err());
        assert!(Options::parse(Some(r#"{"ackTimeoutMs":-1}"#)).is_err());
        assert!(Options::parse(Some(r#"{"ackTimeoutMs":1.5}"#)).is_err());
        assert!(JoinOptions::parse(Some(r#"{"presense":true}"#)).is_err());
        for (text, want) in [
            ("{}", Presence::Off),
            (r#"{"presence":false}"#, Presence::Off),
            (r#"{"presence":true}"#, Presence::Connections),
            (r#"{"presence":"connections"}"#, Presence::Connections),
            (r#"{"presence":"users"}"#, Presence::Users),
        ] {
            assert_eq!(
                JoinOptions::parse(Some(text)).unwrap().presence(),
                want,
                "{text}"
            );
        }
        assert!(JoinOptions::parse(Some(r#"{"presence":"Users"}"#)).is_err());
        assert!(JoinOptions::parse(Some(r#"{"presence":1}"#)).is_err());
    }

    #[test]
    fn publish_takes_exactly_one_target_and_keeps_data_raw() {
        let p = Publish::parse(r#"{"room":"r","event":"say","data":{"b":[1,2.5]},"echo":true}"#)
            .unwrap();
        assert_eq!(p.target, PublishTarget::Room("r".into()));
        assert_eq!(p.data.as_deref(), Some(r#"{"b":[1,2.5]}"#));
        assert!(p.echo);
        let p = Publish::parse(r#"{"user":"u","event":"e"}"#).unwrap();
        assert_eq!(p.target, PublishTarget::User("u".into()));
        assert_eq!(p.data, None);
        assert!(!p.echo);
        assert!(Publish::parse(r#"{"room":"r","channel":"c","event":"e"}"#).is_err());
        assert!(Publish::parse(r#"{"event":"e"}"#).is_err());
        assert!(Publish::parse(r#"{"room":"r"}"#).is_err());
        assert!(Publish::parse(r#"{"room":"r","event":"e","dat":1}"#).is_err());
    }

    #[test]
    fn messages_become_plain_objects_with_their_target() {
        let m = ClientEvent::Message(Message {
            via: Via::Room {
                room: "lobby".into(),
                seq: 7,
            },
            event: "say".into(),
            from: Some(Peer {
                conn: "c1".into(),
                user: None,
                info: None,
            }),
            data: r#"{"text":"hi \"you\""}"#.into(),
            ts: Some(1_800_000_000_000),
        });
        assert_eq!(
            parsed(&m),
            (
                "message",
                json!({"room":"lobby","seq":7,"ts":1_800_000_000_000_u64,"event":"say","data":{"text":"hi \"you\""},
                       "from":{"conn":"c1","user":null}})
            )
        );
        let m = ClientEvent::Message(Message {
            via: Via::Direct,
            event: "e".into(),
            from: None,
            data: "null".into(),
            ts: None,
        });
        assert_eq!(parsed(&m).1, json!({"event":"e","data":null,"from":null}));
    }

    #[test]
    fn states_carry_what_a_countdown_needs() {
        let s = ClientEvent::State(ClientState::Reconnecting {
            attempt: 2,
            delay_ms: 750,
        });
        assert_eq!(
            parsed(&s).1,
            json!({"state":"reconnecting","attempt":2,"delayMs":750,"retryAt":1750})
        );
        assert_eq!(
            parsed(&ClientEvent::State(ClientState::Closed {
                code: Some(1008)
            }))
            .1,
            json!({"state":"closed","code":1008})
        );
        assert_eq!(
            parsed(&ClientEvent::State(ClientState::Open)).1,
            json!({"state":"open"})
        );
    }

    #[test]
    fn the_other_events_are_json_too() {
        let p = ClientEvent::Presence {
            room: "r".into(),
            joined: vec![Peer {
                conn: "a".into(),
                user: Some("ann".into()),
                info: Some(json!({"name": "Ann"})),
            }],
            left: vec![],
        };
        assert_eq!(
            parsed(&p).1,
            json!({"room":"r","joined":[{"conn":"a","user":"ann","info":{"name":"Ann"}}],"left":[]})
        );
        let e = ClientEvent::Error {
            id: Some(3),
            code: "not_member".into(),
            message: "no".into(),
        };
        assert_eq!(
            parsed(&e),
            ("error", json!({"id":3,"code":"not_member","message":"no"}))
        );
        assert_eq!(
            parsed(&ClientEvent::Recovered {
                room: "r".into(),
                recovered: false
            })
            .1,
            json!({"room":"r","recovered":false})
        );
        assert_eq!(
            parsed(&ClientEvent::Dropped { total: 4 }),
            ("dropped", json!({"total":4}))
        );
        assert_eq!(
            parsed(&ClientEvent::Rejoined {
                room: "r".into(),
                ack: r#"{"type":"ack","members":2}"#.into()
            }),
            (
                "rejoined",
                json!({"room":"r","ack":{"type":"ack","members":2}})
            )
        );
        assert_eq!(
            parsed(&ClientEvent::Welcome {
                conn: "c".into(),
                user: None,
                info: None,
            })
            .1,
            json!({"conn":"c","user":null})
        );
        assert_eq!(
            parsed(&ClientEvent::Welcome {
                conn: "c".into(),
                user: Some("ann".into()),
                info: Some(json!({"n": 1})),
            })
            .1,
            json!({"conn":"c","user":"ann","info":{"n":1}})
        );
        assert_eq!(
            parsed(&ClientEvent::Joined {
                room: "r".into(),
                body: r#"{"type":"joined","room":"r","members":1,"epoch":"e","seq":0}"#.into(),
            }),
            (
                "joined",
                json!({"type":"joined","room":"r","members":1,"epoch":"e","seq":0})
            )
        );
        assert_eq!(
            parsed(&ClientEvent::Left {
                room: "r".into(),
                reason: "token_expired".into(),
            }),
            ("left", json!({"room":"r","reason":"token_expired"}))
        );
        for (name, _) in [parsed(&p), parsed(&e)] {
            assert!(EVENT_NAMES.contains(&name));
        }
    }
}
