//! Small serializable snapshots, so a hibernated Durable Object (whose memory is gone
//! while its sockets stay open) can rebuild the hub from its sockets' attachments and
//! its storage.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use slab::Slab;

use super::state::{Conn, HistoryEntry};
use super::{ConnId, ConnState, Hub, HubConfig};
use crate::outgoing::Outgoing;
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
    /// Snapshot of one connection (open ones only).
    pub fn snapshot_conn(&self, id: ConnId) -> Option<ConnSnapshot> {
        let s = self.open_slot(id).ok()?;
        let c = &self.conns[s];
        Some(ConnSnapshot {
            id: id.as_u64(),
            wire: c.wire.to_string(),
            user: c.user.as_deref().map(str::to_owned),
            connected_at: c.connected_at.0,
            rooms: c
                .rooms
                .iter()
                .map(|(&rk, &presence)| RoomMembership {
                    room: self.rooms[rk].name.to_string(),
                    presence,
                    seq: self.rooms[rk].seq,
                })
                .collect(),
            channels: c
                .subs
                .iter()
                .map(|&ck| self.channels[ck].name.to_string())
                .collect(),
        })
    }

    /// Snapshot of a room's durable state.
    pub fn snapshot_room(&self, name: &str) -> Option<RoomSnapshot> {
        let &rk = self.room_names.get(name)?;
        let r = &self.rooms[rk];
        Some(RoomSnapshot {
            name: r.name.to_string(),
            epoch: r.epoch.to_string(),
            seq: r.seq,
            persistent: r.persistent,
            max_members: r.max_members,
            data: r.data.clone(),
            history: r
                .history
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
        self.channels
            .iter()
            .filter(|(_, c)| c.persistent)
            .map(|(_, c)| ChannelSnapshot {
                name: c.name.to_string(),
                rooms: c
                    .rooms
                    .iter()
                    .map(|&rk| self.rooms[rk].name.to_string())
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
            if !crate::protocol::valid_name(&r.name) || hub.room_names.contains_key(r.name.as_str())
            {
                continue;
            }
            let rk = hub.create_room_slot(&r.name, r.data, r.max_members, r.persistent);
            let room = &mut hub.rooms[rk];
            room.epoch = Arc::from(r.epoch);
            room.seq = r.seq;
            for h in r.history {
                if h.seq <= r.seq && room.history.back().is_none_or(|b| b.seq < h.seq) {
                    let msg = Outgoing::from_text(&h.text);
                    hub.history_bytes += msg.wire_len();
                    room.history.push_back(HistoryEntry {
                        seq: h.seq,
                        at: Timestamp(h.at),
                        msg,
                    });
                }
            }
        }
        for ch in channels {
            let refs: Vec<&str> = ch.rooms.iter().map(String::as_str).collect();
            let _ = hub.create_channel(&ch.name, &refs);
        }
        let mut entries: Vec<(usize, Conn)> = Vec::new();
        let mut max_gen = 0u32;
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
            max_gen = max_gen.max(id.gen());
            let conn = Conn::new(
                id,
                snap.wire.clone(),
                user,
                BTreeMap::new(),
                Timestamp(snap.connected_at),
                TokenBucket::new(&hub.config.rate_limit, now),
                &hub.hasher,
            );
            entries.push((id.slot(), conn));
        }
        hub.conns = entries.into_iter().collect::<Slab<Conn>>();
        hub.next_gen = max_gen.wrapping_add(1).max(hub.next_gen);
        hub.open_conns = hub.conns.len();
        let ids: Vec<ConnId> = hub.conns.iter().map(|(_, c)| c.id).collect();
        for id in &ids {
            let s = id.slot();
            let mut c = &mut hub.conns[s];
            c.last_seen = now;
            c.last_ping = now;
            if let Some(u) = c.user.clone() {
                hub.users.entry(u).or_default().push(*id);
            }
            let snap = conns
                .iter()
                .find(|x| x.id == id.as_u64())
                .expect("every restored conn came from a snapshot");
            for m in &snap.rooms {
                if !crate::protocol::valid_name(&m.room) {
                    continue;
                }
                let rk = match hub.room_names.get(m.room.as_str()).copied() {
                    Some(rk) => rk,
                    None => hub.create_room_slot(&m.room, None, None, false),
                };
                hub.rooms[rk].members.insert(s);
                if m.presence {
                    hub.rooms[rk].watchers.insert(s);
                }
                c = &mut hub.conns[s];
                c.rooms.insert(rk, m.presence);
            }
            for ch in &snap.channels {
                if !crate::protocol::valid_name(ch) {
                    continue;
                }
                let ck = match hub.channel_names.get(ch.as_str()).copied() {
                    Some(ck) => ck,
                    None => hub.create_channel_slot(ch, false),
                };
                hub.channels[ck].subscribers.insert(s);
                hub.conns[s].subs.insert(ck);
            }
            hub.schedule_conn(*id);
        }
        // Restored rooms obey the same rules as live ones: history past its age goes, and
        // an empty room either waits for its history to expire or goes now.
        let rooms: Vec<usize> = hub.rooms.iter().map(|(rk, _)| rk).collect();
        for rk in rooms {
            hub.trim_history(rk, now);
            hub.maybe_remove_room(rk, now);
        }
        // And their history together stays within its byte budget (storage may hold
        // more: it trims by count and age only).
        if hub.history_bytes > hub.config.history.max_total_bytes {
            hub.evict_history(usize::MAX, now);
        }
        hub
    }

    /// Checks every cross-index invariant; panics with a description on the first broken
    /// one. For tests, simulations and fuzzing.
    #[doc(hidden)]
    pub fn check_invariants(&self) {
        let mut open = 0;
        for (s, c) in self.conns.iter() {
            assert_eq!(c.id.slot(), s, "conn id slot mismatch");
            if c.state == ConnState::Open {
                open += 1;
            } else {
                assert!(
                    c.rooms.is_empty() && c.subs.is_empty(),
                    "closing conn still indexed"
                );
            }
            for (&rk, &presence) in c.rooms.iter() {
                let r = self.rooms.get(rk).expect("conn points at a live room");
                assert!(r.members.contains(&s), "room lacks member back-reference");
                assert_eq!(r.watchers.contains(&s), presence, "presence flag mismatch");
            }
            for &ck in c.subs.iter() {
                let ch = self
                    .channels
                    .get(ck)
                    .expect("conn points at a live channel");
                assert!(ch.subscribers.contains(&s), "channel lacks subscriber");
            }
            if let (ConnState::Open, Some(u)) = (c.state, &c.user) {
                assert!(self.users[u].contains(&c.id), "user index lacks conn");
            }
        }
        assert_eq!(open, self.open_conns, "open connection count");
        let history: usize = self
            .rooms
            .iter()
            .flat_map(|(_, r)| r.history.iter().map(|h| h.msg.wire_len()))
            .sum();
        assert_eq!(history, self.history_bytes, "history byte count");
        for &rk in &self.pending_rooms {
            let r = self.rooms.get(rk).expect("a pending room is live");
            assert!(!r.pending.is_empty(), "a pending room holds messages");
        }
        for (rk, r) in self.rooms.iter() {
            assert_eq!(
                r.pending.is_empty(),
                !self.pending_rooms.contains(&rk),
                "pending room index"
            );
            assert!(
                r.pending.len() < super::MAX_PENDING_MESSAGES,
                "a burst is handed out at its bound"
            );
            for (&m, &n) in r.caught_up.iter() {
                assert!(r.members.contains(&m), "caught-up entry for a non-member");
                assert!(n <= r.pending.len(), "caught up past the burst");
            }
            assert_eq!(self.room_names.get(&r.name), Some(&rk), "room name index");
            for &m in r.members.iter() {
                let c = self.conns.get(m).expect("member is a live conn");
                assert!(
                    c.rooms.contains_key(&rk),
                    "member lacks room back-reference"
                );
            }
            for &w in r.watchers.iter() {
                assert!(r.members.contains(&w), "watcher is not a member");
            }
            for &ck in r.channels.iter() {
                assert!(
                    self.channels[ck].rooms.contains(&rk),
                    "channel link one-sided"
                );
            }
            let removable = r.members.is_empty() && !r.persistent && r.channels.is_empty();
            if removable {
                assert!(
                    !r.history.is_empty() && r.expiry_at.is_some(),
                    "empty room {} kept without history to expire",
                    r.name
                );
            }
        }
        assert_eq!(self.room_names.len(), self.rooms.len());
        for (ck, ch) in self.channels.iter() {
            assert_eq!(
                self.channel_names.get(&ch.name),
                Some(&ck),
                "channel name index"
            );
            for &s in ch.subscribers.iter() {
                assert!(
                    self.conns[s].subs.contains(&ck),
                    "subscriber lacks back-reference"
                );
            }
            for &rk in ch.rooms.iter() {
                assert!(self.rooms[rk].channels.contains(&ck), "room link one-sided");
            }
            assert!(
                ch.persistent || !ch.subscribers.is_empty() || !ch.rooms.is_empty(),
                "orphan channel kept"
            );
        }
        assert_eq!(self.channel_names.len(), self.channels.len());
        for (u, list) in self.users.iter() {
            assert!(!list.is_empty(), "empty user entry {u}");
            for id in list {
                let c = &self.conns[id.slot()];
                assert_eq!(c.id, *id);
                assert_eq!(c.state, ConnState::Open);
                assert_eq!(c.user.as_ref(), Some(u));
            }
        }
    }

    /// True when the hub holds nothing: no connections, rooms, channels or users.
    #[doc(hidden)]
    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
            && self.rooms.is_empty()
            && self.channels.is_empty()
            && self.users.is_empty()
    }
}
