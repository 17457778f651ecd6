//! The connection table: one record per admitted connection, in a slab keyed by a
//! never-reused [`ConnId`], and the count of those still open.
//!
//! A record keeps what the hub needs on every message from or to that connection (its
//! budget, liveness, rate limit) and the back-references of the membership index (the
//! rooms and channels it is in, as slots). Those lists are plain vectors: most
//! connections are in one or two rooms, and a vector of slots costs 16 bytes there where
//! a hashed set cost ~200; membership tests go to the room's or channel's own hashed set.

use std::collections::BTreeMap;
use std::ops::{Index, IndexMut};
use std::sync::Arc;

use slab::Slab;

use super::auth::ConnAuth;
use super::decisions::Parked;
use super::types::{ConnId, ConnState, HubError};
use crate::hash::Map;
use crate::protocol;
use crate::ratelimit::TokenBucket;
use crate::time::Timestamp;

/// What the hub keeps per connection.
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
    /// Slots of the rooms it is in (whether it watches presence is the room's to know).
    pub(crate) rooms: Vec<usize>,
    /// Slots of the channels it subscribes to.
    pub(crate) subs: Vec<usize>,
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
    /// Token state when the hub checks tokens (boxed: open servers pay one pointer).
    pub(crate) auth: Option<Box<ConnAuth>>,
    /// A request waiting for the application, and those queued behind it.
    pub(crate) parked: Option<Box<Parked>>,
    /// Waiting for the application's `connect` decision (see [`Hello`]): no `welcome`
    /// yet, invisible to everyone.
    pub(crate) hello: Option<Box<Hello>>,
}

/// A connection the application has not admitted yet.
#[derive(Debug, Default)]
pub(crate) struct Hello {
    /// Upgrade headers for the `connect` hook (taken when it is asked).
    pub(crate) headers: Vec<(String, String)>,
    /// Rooms to join once admitted (a token's `rooms` claim).
    pub(crate) rooms: Vec<String>,
    /// The application has been asked (before that, the connection waits for `auth`).
    pub(crate) asked: bool,
}

impl Conn {
    pub(crate) fn new(
        id: ConnId,
        wire: String,
        user: Option<Arc<str>>,
        metadata: BTreeMap<String, String>,
        now: Timestamp,
        bucket: TokenBucket,
    ) -> Conn {
        let mut peer = Vec::with_capacity(48);
        protocol::write_peer(&mut peer, &wire, user.as_deref(), None);
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
            rooms: Vec::new(),
            subs: Vec::new(),
            unsent: 0,
            doomed: false,
            last_seen: now,
            last_ping: now,
            closing_since: now,
            timer_at: None,
            bucket,
            stamp: 0,
            auth: None,
            parked: None,
            hello: None,
        }
    }

    /// Still waiting for its first `auth`: no `welcome` yet, and nothing reaches it.
    pub(crate) fn awaiting_auth(&self) -> bool {
        self.auth
            .as_ref()
            .is_some_and(|a| a.pending_until.is_some())
    }

    /// Welcomed: neither proving who it is nor waiting for the application's `connect`.
    pub(crate) fn admitted(&self) -> bool {
        !self.awaiting_auth() && self.hello.is_none()
    }

    /// Takes the identity a token proved: the user, and `info` shown with it to others.
    pub(crate) fn set_identity(&mut self, user: Arc<str>, info: Option<&str>) {
        let mut peer = Vec::with_capacity(48 + info.map_or(0, str::len));
        protocol::write_peer(&mut peer, &self.wire, Some(&user), info);
        self.peer_json = peer.into_boxed_slice();
        self.user = Some(user);
    }

    /// Sets one metadata entry, keeping the list sorted.
    pub(crate) fn set_metadata(&mut self, key: String, value: String) {
        let md = &mut self.metadata;
        match md.binary_search_by(|(k, _)| k.as_str().cmp(&key)) {
            Ok(i) => md[i].1 = value,
            Err(i) => md.insert(i, (key, value)),
        }
    }
}

/// Removes `slot` from a back-reference list (order does not matter).
pub(crate) fn unlist(list: &mut Vec<usize>, slot: usize) {
    if let Some(i) = list.iter().position(|&x| x == slot) {
        list.swap_remove(i);
    }
    if list.is_empty() {
        // A connection that left its last room holds no allocation for it.
        *list = Vec::new();
    }
}

/// Every connection the hub knows, open or closing.
pub(crate) struct Conns {
    slab: Slab<Conn>,
    open: usize,
    next_gen: u32,
    /// Slot by generation (the number at the end of a wire id): a backplane message
    /// names the publisher it skips by wire id, and finding it must not scan every
    /// connection once per message.
    by_gen: Map<u32, usize>,
}

impl Conns {
    pub(crate) fn new() -> Conns {
        Conns {
            slab: Slab::new(),
            open: 0,
            next_gen: 1,
            by_gen: Map::default(),
        }
    }

    /// Rebuilds the table from restored records (ids keep their slots).
    pub(crate) fn restore(entries: Vec<(usize, Conn)>) -> Conns {
        let max_gen = entries.iter().map(|(_, c)| c.id.gen()).max().unwrap_or(0);
        let slab: Slab<Conn> = entries.into_iter().collect();
        let by_gen = slab.iter().map(|(s, c)| (c.id.gen(), s)).collect();
        Conns {
            open: slab.len(),
            slab,
            next_gen: max_gen.wrapping_add(1).max(1),
            by_gen,
        }
    }

    /// The id the next admitted connection gets, and its generation (for its wire id).
    pub(crate) fn next_id(&mut self) -> (ConnId, u32) {
        let gen = self.next_gen;
        self.next_gen = self.next_gen.wrapping_add(1).max(1);
        (ConnId::new(self.slab.vacant_key(), gen), gen)
    }

    /// Stores a record made for the id [`Conns::next_id`] gave.
    pub(crate) fn insert(&mut self, conn: Conn) {
        let gen = conn.id.gen();
        let s = self.slab.insert(conn);
        debug_assert_eq!(s, self.slab[s].id.slot());
        self.by_gen.insert(gen, s);
        self.open += 1;
    }

    /// Marks a connection closing: it stays in the table until freed.
    pub(crate) fn mark_closing(&mut self, s: usize) {
        debug_assert_eq!(self.slab[s].state, ConnState::Open);
        self.slab[s].state = ConnState::Closing;
        self.open -= 1;
    }

    pub(crate) fn free(&mut self, s: usize) {
        debug_assert_eq!(self.slab[s].state, ConnState::Closing);
        let gone = self.slab.remove(s);
        if self.by_gen.get(&gone.id.gen()) == Some(&s) {
            self.by_gen.remove(&gone.id.gen());
        }
    }

    /// The slot of a known connection (open or closing).
    pub(crate) fn slot_of(&self, id: ConnId) -> Result<usize, HubError> {
        match self.slab.get(id.slot()) {
            Some(c) if c.id == id => Ok(id.slot()),
            _ => Err(HubError::UnknownConnection(id)),
        }
    }

    /// The slot of an open connection.
    pub(crate) fn open_slot(&self, id: ConnId) -> Result<usize, HubError> {
        let s = self.slot_of(id)?;
        // A connection still proving who it is is not there yet for the server API.
        if self.slab[s].state == ConnState::Open && self.slab[s].admitted() {
            Ok(s)
        } else {
            Err(HubError::UnknownConnection(id))
        }
    }

    /// The slot of the connection with this wire id (open or closing), without a scan.
    pub(crate) fn by_wire(&self, wire: &str) -> Option<usize> {
        let (_, gen) = wire.rsplit_once('-')?;
        let gen = u32::from_str_radix(gen, 16).ok()?;
        let s = *self.by_gen.get(&gen)?;
        (&*self.slab[s].wire == wire).then_some(s)
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&Conn> {
        self.slab.get(id.slot()).filter(|c| c.id == id)
    }

    pub(crate) fn get_slot(&self, s: usize) -> Option<&Conn> {
        self.slab.get(s)
    }

    pub(crate) fn open_count(&self) -> usize {
        self.open
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.slab.is_empty()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (usize, &Conn)> + '_ {
        self.slab.iter()
    }

    pub(crate) fn iter_mut(&mut self) -> impl Iterator<Item = (usize, &mut Conn)> + '_ {
        self.slab.iter_mut()
    }

    /// Ids of every open connection.
    pub(crate) fn open_ids(&self) -> impl Iterator<Item = ConnId> + '_ {
        self.slab
            .iter()
            .filter(|(_, c)| c.state == ConnState::Open)
            .map(|(_, c)| c.id)
    }

    /// Checks the table's own invariants (slots match ids, the open count).
    pub(crate) fn check(&self) {
        let mut open = 0;
        for (s, c) in self.slab.iter() {
            assert_eq!(c.id.slot(), s, "conn id slot mismatch");
            assert_eq!(self.by_wire(&c.wire), Some(s), "wire id index");
            if c.state == ConnState::Open {
                open += 1;
            } else {
                assert!(
                    c.rooms.is_empty() && c.subs.is_empty(),
                    "closing conn still indexed"
                );
            }
        }
        assert_eq!(open, self.open, "open connection count");
        assert_eq!(self.by_gen.len(), self.slab.len(), "wire id index size");
    }
}

impl Index<usize> for Conns {
    type Output = Conn;
    fn index(&self, s: usize) -> &Conn {
        &self.slab[s]
    }
}

impl IndexMut<usize> for Conns {
    fn index_mut(&mut self, s: usize) -> &mut Conn {
        &mut self.slab[s]
    }
}
