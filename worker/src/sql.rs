//! The SQL of the Durable Object's storage: the statements `edge.rs` runs on workerd's
//! SQLite, kept here so that the host tests (`driver/tests.rs`) run the very same
//! statements against SQLite and see what the product keeps, not a re-implementation.
//!
//! Included with `#[path]` by `edge.rs` (wasm32) and by the driver's tests (host): it
//! needs nothing of either side.

use roomcast_core::hub::HistoryConfig;

/// Created on every start, idempotently:
/// - `rooms(name PK, epoch, seq)`: every room the hub has, from its first join;
/// - `history(room, seq, at, text; PK room+seq)`: kept room messages, trimmed with the
///   hub's count and age limits as messages arrive;
/// - `conns(id PK, snapshot)`: snapshots too big for their socket's attachment;
/// - `meta(key PK, value)`: what the server API made, as one JSON document under
///   `server` (rooms it created with their data, flag and limit; channels and links).
pub(crate) const SCHEMA: &[&str] = &[
    "CREATE TABLE IF NOT EXISTS rooms (name TEXT PRIMARY KEY, epoch TEXT NOT NULL, seq INTEGER NOT NULL)",
    "CREATE TABLE IF NOT EXISTS history (room TEXT NOT NULL, seq INTEGER NOT NULL, at INTEGER NOT NULL, text TEXT NOT NULL, PRIMARY KEY (room, seq)) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS conns (id TEXT PRIMARY KEY, snapshot TEXT NOT NULL) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID",
];

/// (value): the server API's rooms and channels ([`crate::driver::ServerState`] JSON).
pub(crate) const SAVE_SERVER_STATE: &str =
    "INSERT OR REPLACE INTO meta (key, value) VALUES ('server', ?)";
/// The stored server state: value (no row before the API made anything).
pub(crate) const LOAD_SERVER_STATE: &str = "SELECT value FROM meta WHERE key = 'server'";

/// (name, epoch, seq): creates or updates a room's row.
pub(crate) const SAVE_ROOM: &str = "INSERT INTO rooms (name, epoch, seq) VALUES (?, ?, ?) \
     ON CONFLICT(name) DO UPDATE SET epoch = excluded.epoch, seq = excluded.seq";
/// (room): a room's whole history (at seq 1 of a new epoch, and with the room).
pub(crate) const CLEAR_HISTORY: &str = "DELETE FROM history WHERE room = ?";
/// (room, seq, at, text): one kept message.
pub(crate) const SAVE_MESSAGE: &str =
    "INSERT OR REPLACE INTO history (room, seq, at, text) VALUES (?, ?, ?, ?)";
/// (room, seq bound, at bound) from [`prune_bounds`]: drops what the limits no longer keep.
pub(crate) const PRUNE_HISTORY: &str =
    "DELETE FROM history WHERE room = ? AND (seq <= ? OR at <= ?)";
/// (name): a room's row.
pub(crate) const DELETE_ROOM: &str = "DELETE FROM rooms WHERE name = ?";
/// Every room: name, epoch, seq.
pub(crate) const LOAD_ROOMS: &str = "SELECT name, epoch, seq FROM rooms";
/// Every kept message, by room, oldest first: room, seq, at, text.
pub(crate) const LOAD_HISTORY: &str = "SELECT room, seq, at, text FROM history ORDER BY room, seq";
/// (id, snapshot).
pub(crate) const SAVE_CONN: &str = "INSERT OR REPLACE INTO conns (id, snapshot) VALUES (?, ?)";
/// (id).
pub(crate) const DELETE_CONN: &str = "DELETE FROM conns WHERE id = ?";
/// Every stored snapshot: id, snapshot.
pub(crate) const LOAD_CONNS: &str = "SELECT id, snapshot FROM conns";

/// The bounds [`PRUNE_HISTORY`] takes after saving message `seq` stamped `at`: every row
/// with a seq or a time at or below them goes (the newest `max_messages` are kept, and
/// none older than `max_age_ms`).
pub(crate) fn prune_bounds(seq: u64, at: u64, history: &HistoryConfig) -> (u64, u64) {
    (
        seq.saturating_sub(history.max_messages as u64),
        at.saturating_sub(history.max_age_ms),
    )
}
