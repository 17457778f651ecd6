//! Small serializable snapshots, so a hibernated Durable Object (whose memory is gone
//! while its sockets stay open) can rebuild the hub from its sockets' attachments and
//! its storage.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::auth::ConnAuth;
use super::conns::{Conn, Conns};
use super::history::HistoryEntry;
use super::types::ConnState;
use super::{ConnId, Hub, HubConfig};
use crate::auth::{Caps, Ops, RoomGrant};
use crate::outgoing::Outgoing;
use crate::protocol::Presence;
use crate::ratelimit::TokenBucket;
use crate::time::Timestamp;

/// A room a connection is in, as remembered in its snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomMembership {
    /// Room name.
    #[serde(rename = "r")]
    pub room: String,
    /// Receives presence events.
    #[serde(rename = "p", default, skip_serializing_if = "std::ops::Not::not")]
    pub presence: bool,
    /// ... per user (`presence: "users"`) rather than per connection.
    #[serde(rename = "u", default, skip_serializing_if = "std::ops::Not::not")]
    pub users: bool,
    /// The room's seq when the snapshot was taken (the last this connection was sent).
    #[serde(rename = "s", default)]
    pub seq: u64,
}

/// What a connection needs to be rebuilt: small (keep rooms and subscriptions bounded
/// so it fits a 2 KiB socket attachment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnSnapshot {
    /// [`ConnId::as_u64`].
    #[serde(rename = "i")]
    pub id: u64,
    /// The wire id clients know it by.
    #[serde(rename = "w")]
    pub wire: String,
    /// Its user.
    #[serde(rename = "u", default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// When it was admitted.
    #[serde(rename = "t")]
    pub connected_at: u64,
    /// Rooms it is in.
    #[serde(rename = "rs", default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<RoomMembership>,
    /// Channels it subscribes to.
    #[serde(rename = "cs", default, skip_serializing_if = "Vec::is_empty")]
    pub channels: Vec<String>,
    /// Its token state, on a hub that checks tokens.
    #[serde(rename = "a", default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<Box<AuthSnapshot>>,
}

/// A connection's token state: what it may do and until when. The token itself is
/// never kept, only what the hub read from it when it was verified.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuthSnapshot {
    /// Still waiting for its first `auth`, until then (hub clock, ms).
    #[serde(rename = "p", default, skip_serializing_if = "Option::is_none")]
    pub pending_until: Option<u64>,
    /// The token's `exp` on the hub clock (ms).
    #[serde(rename = "e")]
    pub expires: u64,
    /// `expiring` already sent.
    #[serde(rename = "n", default, skip_serializing_if = "std::ops::Not::not")]
    pub warned: bool,
    /// When `expiring` is due (hub clock, ms); absent: the full notice before `expires`.
    #[serde(rename = "w", default, skip_serializing_if = "Option::is_none")]
    pub warn_at: Option<u64>,
    /// The `caps` claim (JSON), when the token had one.
    #[serde(rename = "c", default, skip_serializing_if = "Option::is_none")]
    pub caps: Option<String>,
    /// The `info` claim (JSON object), when the token had one.
    #[serde(rename = "i", default, skip_serializing_if = "Option::is_none")]
    pub info: Option<String>,
    /// Rooms opened by room tokens.
    #[serde(rename = "g", default, skip_serializing_if = "Vec::is_empty")]
    pub room_grants: Vec<RoomGrantSnapshot>,
}

/// One room token's grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomGrantSnapshot {
    /// The room.
    #[serde(rename = "r")]
    pub room: String,
    /// Its `exp`, Unix ms.
    #[serde(rename = "e")]
    pub expires_unix_ms: u64,
    /// What it allows ([`crate::auth::Ops::bits`]).
    #[serde(rename = "o")]
    pub ops: u8,
}

impl ConnSnapshot {
    /// Compact JSON for a socket attachment.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("snapshots are plain data")
    }
    /// Parses [`ConnSnapshot::to_json`] output.
    pub fn from_json(s: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(s)
    }
}

/// One kept history message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistorySnapshot {
    /// Its seq.
    pub seq: u64,
    /// When it was published.
    pub at: u64,
    /// The message JSON as it was delivered.
    pub text: String,
}

/// A room's durable state: what must outlive a Durable Object's memory for seq and
/// recovery to continue.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomSnapshot {
    /// Name.
    pub name: String,
    /// Its epoch.
    pub epoch: String,
    /// Latest seq.
    pub seq: u64,
    /// Created by the server API.
    #[serde(default)]
    pub persistent: bool,
    /// Member limit.
    #[serde(default)]
    pub max_members: Option<usize>,
    /// Application data.
    #[serde(default)]
    pub data: Option<Box<RawValue>>,
    /// Kept messages, oldest first.
    #[serde(default)]
    pub history: Vec<HistorySnapshot>,
}

/// A channel created by the server API, with its linked rooms.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChannelSnapshot {
    /// Name.
    pub name: String,
    /// Linked rooms.
    pub rooms: Vec<String>,
}

impl Hub {
    /// Snapshot of one connection (open ones only, those still waiting for `auth`
    /// included).
    pub fn snapshot_conn(&self, id: ConnId) -> Option<ConnSnapshot> {
        let s = self.conns.slot_of(id).ok()?;
        let c = &self.conns[s];
        if c.state != ConnState::Open {
            return None;
        }
        Some(ConnSnapshot {
            id: id.as_u64(),
            wire: c.wire.to_string(),
            user: c.user.as_deref().map(str::to_owned),
            connected_at: c.connected_at.0,
            rooms: c
                .rooms
                .iter()
                .map(|&rk| RoomMembership {
                    room: self.index.rooms[rk].name.to_string(),
                    presence: self.index.watches(s, rk).is_on(),
                    users: self.index.watches(s, rk) == Presence::Users,
                    seq: self.index.rooms[rk].seq,
                })
                .collect(),
            channels: c
                .subs
                .iter()
                .map(|&ck| self.index.channels[ck].name.to_string())
                .collect(),
            auth: c.auth.as_deref().map(|a| {
                Box::new(AuthSnapshot {
                    pending_until: a.pending_until.map(|t| t.0),
                    expires: a.expires.0,
                    warned: a.warned,
                    warn_at: a.warn_at.map(|t| t.0),
                    caps: a.caps.as_ref().map(|c| c.claim().to_owned()),
                    info: a.info.as_deref().map(str::to_owned),
                    room_grants: a
                        .rooms
                        .iter()
                        .map(|(room, g)| RoomGrantSnapshot {
                            room: room.to_string(),
                            expires_unix_ms: g.expires_unix_ms,
                            ops: g.ops.bits(),
                        })
                        .collect(),
                })
            }),
        })
    }

    /// Snapshot of a room's durable state.
    pub fn snapshot_room(&self, name: &str) -> Option<RoomSnapshot> {
        let r = self.index.rooms.by_name(name)?;
        Some(RoomSnapshot {
            name: r.name.to_string(),
            epoch: r.epoch.to_string(),
            seq: r.seq,
            persistent: r.persistent,
            max_members: r.max_members,
            data: r.data.clone(),
            history: r
                .log
                .iter()
                .map(|e| HistorySnapshot {
                    seq: e.seq,
                    at: e.at.0,
                    text: e.msg.text().to_owned(),
                })
                .collect(),
        })
    }

    /// Snapshots of the channels the server created (client-created ones are rebuilt
    /// from connection snapshots).
    pub fn snapshot_channels(&self) -> Vec<ChannelSnapshot> {
        self.index
            .channels
            .iter()
            .filter(|(_, c)| c.persistent)
            .map(|(_, c)| ChannelSnapshot {
                name: c.name.to_string(),
                rooms: c
                    .rooms
                    .iter()
                    .map(|&rk| self.index.rooms[rk].name.to_string())
                    .collect(),
            })
            .collect()
    }

    /// Rebuilds a hub after its memory was lost: rooms first (epochs, seqs, history),
    /// then server channels, then every connection at its old id. Invalid or duplicate
    /// entries are skipped (they come from storage, not from peers, but a restore must
    /// not panic). No welcome or presence messages are sent: the clients never left.
    pub fn restore(
        config: HubConfig,
        seed: [u8; 32],
        now: Timestamp,
        rooms: Vec<RoomSnapshot>,
        channels: Vec<ChannelSnapshot>,
        conns: Vec<ConnSnapshot>,
    ) -> Hub {
        let mut hub = Hub::new(config, seed, now);
        for r in rooms {
            if !crate::protocol::valid_name(&r.name) || hub.index.rooms.contains_name(&r.name) {
                continue;
            }
            let rk = hub.create_room_slot(&r.name, r.data, r.max_members, r.persistent);
            let room = &mut hub.index.rooms[rk];
            room.epoch = Arc::from(r.epoch);
            room.seq = r.seq;
            for h in r.history {
                let entry = HistoryEntry {
                    seq: h.seq,
                    at: Timestamp(h.at),
                    msg: Outgoing::from_text(&h.text),
                };
                hub.history.restore(&mut room.log, entry, r.seq);
            }
        }
        for ch in channels {
            let refs: Vec<&str> = ch.rooms.iter().map(String::as_str).collect();
            let _ = hub.create_channel(now, &ch.name, &refs);
        }
        let mut entries: Vec<(usize, Conn)> = Vec::new();
        for snap in &conns {
            let id = ConnId::from_u64(snap.id);
            if entries.iter().any(|(s, _)| *s == id.slot()) {
                continue;
            }
            let user = snap
                .user
                .as_deref()
                .filter(|u| crate::protocol::valid_name(u))
                .map(Arc::from);
            let mut conn = Conn::new(
                id,
                snap.wire.clone(),
                user,
                BTreeMap::new(),
                Timestamp(snap.connected_at),
                TokenBucket::new(&hub.config.rate_limit, now),
            );
            if let Some(a) = &snap.auth {
                restore_auth(&mut conn, a);
            }
            entries.push((id.slot(), conn));
        }
        hub.conns = Conns::restore(entries);
        let ids: Vec<ConnId> = hub.conns.iter().map(|(_, c)| c.id).collect();
        for id in &ids {
            let s = id.slot();
            let c = &mut hub.conns[s];
            c.last_seen = now;
            c.last_ping = now;
            if let Some(u) = c.user.clone() {
                hub.index.add_user(&u, *id);
            }
            let snap = conns
                .iter()
                .find(|x| x.id == id.as_u64())
                .expect("every restored conn came from a snapshot");
            for m in &snap.rooms {
                if !crate::protocol::valid_name(&m.room) {
                    continue;
                }
                let rk = match hub.index.rooms.key(&m.room) {
                    Some(rk) => rk,
                    None => hub.create_room_slot(&m.room, None, None, false),
                };
                hub.index.add_member(&mut hub.conns, s, rk);
                let presence = match (m.presence, m.users) {
                    (false, _) => Presence::Off,
                    (true, false) => Presence::Connections,
                    (true, true) => Presence::Users,
                };
                hub.index.set_presence(s, rk, presence);
            }
            for ch in &snap.channels {
                if !crate::protocol::valid_name(ch) {
                    continue;
                }
                let ck = match hub.index.channels.key(ch) {
                    Some(ck) => ck,
                    None => hub.index.create_channel(ch, false),
                };
                hub.index.add_subscriber(&mut hub.conns, s, ck);
            }
            hub.schedule_conn(*id);
        }
        // Restored rooms obey the same rules as live ones: history past its age goes, and
        // an empty room either waits for its history to expire or goes now.
        for rk in hub.index.rooms.keys() {
            let room = &mut hub.index.rooms[rk];
            hub.history.trim(&mut room.log, now);
            hub.maybe_remove_room(rk, now);
        }
        // And their history together stays within its byte budget (storage may hold
        // more: it trims by count and age only).
        if hub.history.over_budget() {
            hub.evict_history(usize::MAX, now);
        }
        hub
    }
}

/// Rebuilds a connection's token state. Storage is ours, but a claim that no longer
/// parses must fail closed: unreadable caps become no rights.
fn restore_auth(conn: &mut Conn, a: &AuthSnapshot) {
    let info = a
        .info
        .as_deref()
        .filter(|i| serde_json::from_str::<&RawValue>(i).is_ok());
    if let (Some(user), Some(info)) = (conn.user.clone(), info) {
        conn.set_identity(user, Some(info));
    }
    let caps = a.caps.as_deref().map(|c| {
        serde_json::from_str::<&RawValue>(c)
            .ok()
            .and_then(|raw| Caps::parse(raw).ok())
            .unwrap_or_default()
    });
    conn.auth = Some(Box::new(ConnAuth {
        pending_until: a.pending_until.map(Timestamp),
        expires: Timestamp(a.expires),
        warned: a.warned,
        warn_at: a.warn_at.map(Timestamp),
        caps,
        rooms: a
            .room_grants
            .iter()
            .map(|g| {
                let grant = RoomGrant {
                    expires_unix_ms: g.expires_unix_ms,
                    ops: Ops::from_bits(g.ops),
                };
                (Box::from(g.room.as_str()), grant)
            })
            .collect(),
        info: info.map(Box::from),
    }));
}
