//! The records the hub keeps per connection, room and channel.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde_json::value::RawValue;

use super::{ConnId, ConnState};
use crate::hash::{IndexMap, IndexSet, SeededState};
use crate::outgoing::Outgoing;
use crate::protocol;
use crate::ratelimit::TokenBucket;
use crate::time::Timestamp;

pub(crate) struct Conn {
    pub(crate) id: ConnId,
    /// The opaque id clients see.
    pub(crate) wire: Box<str>,
    pub(crate) user: Option<Arc<str>>,
    /// `{"conn":…,"user":…}`, encoded once: it appears in every message this connection
    /// sends and in presence lists.
    pub(crate) peer_json: Box<[u8]>,
    /// Sorted by key. A map would cost a whole B-tree node (over 500 bytes) per
    /// connection for the two or three entries adapters set.
    pub(crate) metadata: Vec<(String, String)>,
    pub(crate) connected_at: Timestamp,
    pub(crate) state: ConnState,
    /// Room slot → whether this connection receives the room's presence events.
    pub(crate) rooms: IndexMap<usize, bool>,
    pub(crate) subs: IndexSet<usize>,
    /// Bytes handed to the adapter and not yet reported flushed.
    pub(crate) unsent: usize,
    /// Already queued for a slow-consumer close.
    pub(crate) doomed: bool,
    pub(crate) last_seen: Timestamp,
    pub(crate) last_ping: Timestamp,
    pub(crate) closing_since: Timestamp,
    /// The earliest heap entry pending for this connection.
    pub(crate) timer_at: Option<Timestamp>,
    pub(crate) bucket: TokenBucket,
    /// Channel fan-out dedupe stamp.
    pub(crate) stamp: u64,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        wire: String,
        user: Option<Arc<str>>,
        metadata: BTreeMap<String, String>,
        now: Timestamp,
        bucket: TokenBucket,
        hasher: &SeededState,
    ) -> Conn {
        let mut peer = Vec::with_capacity(48);
        protocol::write_peer(&mut peer, &wire, user.as_deref());
        Conn {
            id,
            wire: wire.into_boxed_str(),
            user,
            peer_json: peer.into_boxed_slice(),
            metadata: {
                let mut md: Vec<(String, String)> = metadata.into_iter().collect();
                md.shrink_to_fit();
                md
            },
            connected_at: now,
            state: ConnState::Open,
            rooms: IndexMap::with_hasher(hasher.clone()),
            subs: IndexSet::with_hasher(hasher.clone()),
            unsent: 0,
            doomed: false,
            last_seen: now,
            last_ping: now,
            closing_since: now,
            timer_at: None,
            bucket,
            stamp: 0,
        }
    }
}

pub(crate) struct HistoryEntry {
    pub(crate) seq: u64,
    pub(crate) at: Timestamp,
    pub(crate) msg: Outgoing,
}

pub(crate) struct Room {
    pub(crate) name: Arc<str>,
    /// Never reused: tells a room timer whether its room is still the same room.
    pub(crate) uid: u64,
    pub(crate) epoch: Arc<str>,
    pub(crate) seq: u64,
    pub(crate) members: IndexSet<usize>,
    /// Members that joined with `presence: true`.
    pub(crate) watchers: IndexSet<usize>,
    pub(crate) channels: IndexSet<usize>,
    pub(crate) history: VecDeque<HistoryEntry>,
    pub(crate) data: Option<Box<RawValue>>,
    pub(crate) max_members: Option<usize>,
    /// Created by the server API: kept when empty.
    pub(crate) persistent: bool,
    pub(crate) expiry_at: Option<Timestamp>,
    /// Messages published but not yet handed to the members (coalescing), oldest first.
    pub(crate) pending: Vec<Outgoing>,
    /// Their bytes on the wire.
    pub(crate) pending_bytes: usize,
    /// Members already handed the first N pending messages (they needed something else
    /// sent to them in between, or were excluded from one): conn slot → N.
    pub(crate) caught_up: IndexMap<usize, usize>,
}

impl Room {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: Arc<str>,
        uid: u64,
        epoch: Arc<str>,
        data: Option<Box<RawValue>>,
        max_members: Option<usize>,
        persistent: bool,
        hasher: &SeededState,
    ) -> Room {
        Room {
            name,
            uid,
            epoch,
            seq: 0,
            members: IndexSet::with_hasher(hasher.clone()),
            watchers: IndexSet::with_hasher(hasher.clone()),
            channels: IndexSet::with_hasher(hasher.clone()),
            history: VecDeque::new(),
            data,
            max_members,
            persistent,
            expiry_at: None,
            pending: Vec::new(),
            pending_bytes: 0,
            caught_up: IndexMap::with_hasher(hasher.clone()),
        }
    }

    pub(crate) fn is_full(&self, default_max: Option<usize>) -> bool {
        match self.max_members.or(default_max) {
            Some(max) => self.members.len() >= max,
            None => false,
        }
    }
}

pub(crate) struct Channel {
    pub(crate) name: Arc<str>,
    pub(crate) subscribers: IndexSet<usize>,
    pub(crate) rooms: IndexSet<usize>,
    pub(crate) persistent: bool,
}

impl Channel {
    pub(crate) fn new(name: Arc<str>, persistent: bool, hasher: &SeededState) -> Channel {
        Channel {
            name,
            subscribers: IndexSet::with_hasher(hasher.clone()),
            rooms: IndexSet::with_hasher(hasher.clone()),
            persistent,
        }
    }
}
