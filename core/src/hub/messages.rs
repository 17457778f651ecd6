//! Every message the hub writes, built straight into its frame (see
//! [`Outgoing::build`]): one builder per kind, so the wire shape of each lives in one
//! place.

use serde_json::value::RawValue;

use super::config::HeartbeatConfig;
use crate::outgoing::Outgoing;
use crate::protocol::{self, Rejection, RequestId};

/// The target a `message` came through.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Via<'a> {
    Room {
        name: &'a str,
        seq: u64,
    },
    Channel(&'a str),
    User(&'a str),
    /// A broadcast, or a server send to one connection.
    Direct,
}

/// What a `message` carries besides its target.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Content<'a> {
    pub(crate) event: &'a str,
    /// The sender's `{"conn","user"}` JSON, `None` for the server.
    pub(crate) from: Option<&'a [u8]>,
    pub(crate) data: Option<&'a RawValue>,
    /// When the server accepted it, in ms since the Unix epoch (`ts`).
    pub(crate) ts: u64,
}

/// A `message`: target, server time, event, sender (`null` for the server) and data.
pub(crate) fn message(via: Via<'_>, c: &Content<'_>) -> Outgoing {
    let Content {
        event,
        from,
        data,
        ts,
    } = *c;
    Outgoing::build(|b| {
        protocol::write_head(b, "message", None);
        match via {
            Via::Room { name, seq } => {
                b.extend_from_slice(b",\"room\":");
                protocol::write_str(b, name);
                b.extend_from_slice(b",\"seq\":");
                protocol::write_u64(b, seq);
            }
            Via::Channel(name) => {
                b.extend_from_slice(b",\"channel\":");
                protocol::write_str(b, name);
            }
            Via::User(name) => {
                b.extend_from_slice(b",\"user\":");
                protocol::write_str(b, name);
            }
            Via::Direct => {}
        }
        b.extend_from_slice(b",\"ts\":");
        protocol::write_u64(b, ts);
        b.extend_from_slice(b",\"event\":");
        protocol::write_str(b, event);
        b.extend_from_slice(b",\"from\":");
        b.extend_from_slice(from.unwrap_or(b"null"));
        b.extend_from_slice(b",\"data\":");
        match data {
            Some(d) => b.extend_from_slice(d.get().as_bytes()),
            None => b.extend_from_slice(b"null"),
        }
        b.push(b'}');
    })
}

/// The first message on every connection.
pub(crate) fn welcome(
    wire: &str,
    user: Option<&str>,
    info: Option<&str>,
    hb: &HeartbeatConfig,
) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "welcome", None);
        b.extend_from_slice(b",\"conn\":");
        protocol::write_str(b, wire);
        b.extend_from_slice(b",\"user\":");
        protocol::write_opt_str(b, user);
        if let Some(info) = info {
            b.extend_from_slice(b",\"info\":");
            b.extend_from_slice(info.as_bytes());
        }
        b.extend_from_slice(b",\"heartbeat\":{\"interval_ms\":");
        protocol::write_u64(b, hb.interval_ms);
        b.extend_from_slice(b",\"timeout_ms\":");
        protocol::write_u64(b, hb.timeout_ms);
        b.extend_from_slice(b"}}");
    })
}

/// `expiring`: the connection's token runs out in `in_ms`; send a new one by `auth`.
pub(crate) fn expiring(in_ms: u64) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "expiring", None);
        b.extend_from_slice(b",\"in_ms\":");
        protocol::write_u64(b, in_ms);
        b.push(b'}');
    })
}

/// `joined`: the server put this connection in a room.
pub(crate) fn joined(room: &str, members: usize, epoch: &str, seq: u64) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "joined", None);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, room);
        b.extend_from_slice(b",\"members\":");
        protocol::write_u64(b, members as u64);
        b.extend_from_slice(b",\"epoch\":");
        protocol::write_str(b, epoch);
        b.extend_from_slice(b",\"seq\":");
        protocol::write_u64(b, seq);
        b.push(b'}');
    })
}

/// `left`: the server took this connection out of a room, and why.
pub(crate) fn left(room: &str, reason: &str) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "left", None);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, room);
        b.extend_from_slice(b",\"reason\":");
        protocol::write_str(b, reason);
        b.push(b'}');
    })
}

/// A bare `ack` (for `auth`).
pub(crate) fn ack(id: Option<&RequestId>) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.push(b'}');
    })
}

/// A `presence` change with one entry: `kind` is `joined` or `left`.
pub(crate) fn presence(room: &str, kind: &str, peer: &[u8]) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "presence", None);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, room);
        b.extend_from_slice(b",\"");
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(b"\":[");
        b.extend_from_slice(peer);
        b.extend_from_slice(b"]}");
    })
}

/// A batch of `presence` changes: `joined` and `left` lists (an empty one is left out).
pub(crate) fn presence_diff<'a>(
    room: &str,
    joined: impl Iterator<Item = &'a [u8]>,
    left: impl Iterator<Item = &'a [u8]>,
) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "presence", None);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, room);
        for (kind, peers) in [
            ("joined", joined.collect::<Vec<_>>()),
            ("left", left.collect()),
        ] {
            if peers.is_empty() {
                continue;
            }
            b.extend_from_slice(b",\"");
            b.extend_from_slice(kind.as_bytes());
            b.extend_from_slice(b"\":[");
            for (i, p) in peers.iter().enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(p);
            }
            b.push(b']');
        }
        b.push(b'}');
    })
}

/// An `ack` with one string field (`room`, `channel`).
pub(crate) fn ack_with(id: Option<&RequestId>, field: &str, value: &str) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.extend_from_slice(b",\"");
        b.extend_from_slice(field.as_bytes());
        b.extend_from_slice(b"\":");
        protocol::write_str(b, value);
        b.push(b'}');
    })
}

/// A publish's `ack`: how many it reached, and the room seq.
pub(crate) fn publish_ack(id: Option<&RequestId>, delivered: usize, seq: Option<u64>) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.extend_from_slice(b",\"delivered\":");
        protocol::write_u64(b, delivered as u64);
        if let Some(seq) = seq {
            b.extend_from_slice(b",\"seq\":");
            protocol::write_u64(b, seq);
        }
        b.push(b'}');
    })
}

/// What a join's `ack` says about the room.
pub(crate) struct JoinAck<'a, P> {
    pub(crate) room: &'a str,
    pub(crate) members: usize,
    pub(crate) epoch: &'a str,
    pub(crate) seq: u64,
    pub(crate) recovered: Option<bool>,
    /// The `present` list's entries (already capped), when presence was asked for.
    pub(crate) present: Option<P>,
}

/// A join's `ack`.
pub(crate) fn join_ack<'a, P>(id: Option<&RequestId>, ack: JoinAck<'a, P>) -> Outgoing
where
    P: Iterator<Item = &'a [u8]>,
{
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.extend_from_slice(b",\"room\":");
        protocol::write_str(b, ack.room);
        b.extend_from_slice(b",\"members\":");
        protocol::write_u64(b, ack.members as u64);
        b.extend_from_slice(b",\"epoch\":");
        protocol::write_str(b, ack.epoch);
        b.extend_from_slice(b",\"seq\":");
        protocol::write_u64(b, ack.seq);
        match ack.recovered {
            Some(true) => b.extend_from_slice(b",\"recovered\":true"),
            Some(false) => b.extend_from_slice(b",\"recovered\":false"),
            None => {}
        }
        if let Some(present) = ack.present {
            b.extend_from_slice(b",\"present\":[");
            for (i, peer) in present.enumerate() {
                if i > 0 {
                    b.push(b',');
                }
                b.extend_from_slice(peer);
            }
            b.push(b']');
        }
        b.push(b'}');
    })
}

/// A `pong` answering a `ping` that had an id (or none: an ordinary request).
pub(crate) fn pong(id: Option<&RequestId>) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "pong", id);
        b.push(b'}');
    })
}

/// The exact heartbeat answer, `{"type":"pong"}`.
pub(crate) fn heartbeat_pong() -> Outgoing {
    Outgoing::from_text(protocol::HEARTBEAT_PONG)
}

/// An `error` for a refused request.
pub(crate) fn error(id: Option<&RequestId>, rej: &Rejection) -> Outgoing {
    Outgoing::build(|b| protocol::write_error(b, id, rej))
}

/// A close reason cut to the 123 bytes a close frame has room for, on a char boundary.
pub(crate) fn truncate_reason(reason: &str) -> &str {
    let mut end = reason.len().min(123);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// The `ack` of an `rpc`: `{"type":"ack","id":…,"data":…}` (`null` without data).
pub(crate) fn rpc_ack(id: Option<&RequestId>, data: Option<&RawValue>) -> Outgoing {
    Outgoing::build(|b| {
        protocol::write_head(b, "ack", id);
        b.extend_from_slice(b",\"data\":");
        b.extend_from_slice(data.map_or("null", RawValue::get).as_bytes());
        b.push(b'}');
    })
}
