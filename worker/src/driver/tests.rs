//! The driver against in-memory sockets and the product's storage SQL on an in-memory
//! SQLite, with evictions simulated by dropping the driver and restoring from what the
//! platform would have kept.

use std::collections::BTreeMap;

use serde_json::{json, Value};

use super::*;
use roomcast_core::hub::HistorySnapshot;

#[derive(Debug, Default)]
struct Socket {
    sent: Vec<String>,
    attachment: Option<String>,
    closed: Option<(u16, String)>,
}

/// Sockets as workerd keeps them: they outlive the driver.
#[derive(Debug, Default)]
struct FakeSockets {
    map: BTreeMap<ConnId, Socket>,
    /// Sockets the driver forgot (closed by the hub), still listed until the close ends.
    forgotten: Vec<ConnId>,
}

impl Sockets for FakeSockets {
    fn send(&mut self, conn: ConnId, text: &str) -> Result<(), SocketError> {
        match self.map.get_mut(&conn) {
            Some(s) if s.closed.is_none() => {
                s.sent.push(text.to_owned());
                Ok(())
            }
            _ => Err(SocketError("closed".into())),
        }
    }
    fn close(&mut self, conn: ConnId, code: u16, reason: &str) {
        if let Some(s) = self.map.get_mut(&conn) {
            s.closed = Some((code, reason.to_owned()));
        }
    }
    fn attach(&mut self, conn: ConnId, value: &str) -> Result<(), SocketError> {
        // workerd refuses serialized attachments over 2 KiB
        if value.len() > attachment::ATTACHMENT_LIMIT {
            return Err(SocketError("too large".into()));
        }
        self.map.get_mut(&conn).expect("known socket").attachment = Some(value.to_owned());
        Ok(())
    }
    fn forget(&mut self, conn: ConnId) {
        self.forgotten.push(conn);
    }
}

impl FakeSockets {
    fn saved(&self) -> (Vec<ConnId>, Vec<SavedSocket>) {
        self.map
            .iter()
            .map(|(&id, s)| {
                (
                    id,
                    SavedSocket {
                        conn: Some(id),
                        attachment: s.attachment.clone(),
                    },
                )
            })
            .unzip()
    }
    fn take(&mut self, conn: ConnId) -> Vec<Value> {
        std::mem::take(&mut self.map.get_mut(&conn).unwrap().sent)
            .iter()
            .map(|t| serde_json::from_str(t).unwrap())
            .collect()
    }
}

// The statements edge.rs runs on workerd's SQLite (the same file, not a copy).
#[path = "../sql.rs"]
mod sql;

/// The product's storage statements on an in-memory SQLite: what edge.rs's `SqlStore`
/// does on workerd, with rusqlite in place of the `SqlStorage` binding (arguments bound
/// the same way, integers as i64).
struct SqliteStore(rusqlite::Connection);

type Rows<T> = Result<Vec<T>, rusqlite::Error>;

impl Default for SqliteStore {
    fn default() -> Self {
        let db = rusqlite::Connection::open_in_memory().expect("in-memory SQLite");
        for q in sql::SCHEMA {
            db.execute(q, []).expect("schema");
        }
        SqliteStore(db)
    }
}

impl std::fmt::Debug for SqliteStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteStore")
            .field("rooms", &self.rooms())
            .field("history", &self.history())
            .finish()
    }
}

fn int(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

fn sql_err(e: rusqlite::Error) -> StoreError {
    StoreError(e.to_string())
}

impl SqliteStore {
    fn run(&self, q: &str, args: impl rusqlite::Params) -> Result<(), StoreError> {
        self.0.execute(q, args).map(drop).map_err(sql_err)
    }

    /// Room → (epoch, seq), as stored.
    fn rooms(&self) -> BTreeMap<String, (String, u64)> {
        let mut st = self.0.prepare(sql::LOAD_ROOMS).unwrap();
        let rows: Rows<(String, String, i64)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect();
        rows.unwrap()
            .into_iter()
            .map(|(n, e, s)| (n, (e, s as u64)))
            .collect()
    }

    /// (room, seq) → (at, text), as stored.
    fn history(&self) -> BTreeMap<(String, u64), (u64, String)> {
        let mut st = self.0.prepare(sql::LOAD_HISTORY).unwrap();
        let rows: Rows<(String, i64, i64, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect();
        rows.unwrap()
            .into_iter()
            .map(|(room, seq, at, text)| ((room, seq as u64), (at as u64, text)))
            .collect()
    }

    /// Stored snapshots.
    fn conns(&self) -> BTreeMap<ConnId, String> {
        let mut st = self.0.prepare(sql::LOAD_CONNS).unwrap();
        let rows: Rows<(String, String)> = st
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect();
        rows.unwrap()
            .into_iter()
            .map(|(id, snap)| (ConnId::from_u64(id.parse().unwrap()), snap))
            .collect()
    }
}

impl Store for SqliteStore {
    fn save_room(&mut self, room: &str, epoch: &str, seq: u64) -> Result<(), StoreError> {
        self.run(sql::SAVE_ROOM, rusqlite::params![room, epoch, int(seq)])
    }
    fn save_message(
        &mut self,
        msg: &StoredMessage<'_>,
        history: &HistoryConfig,
    ) -> Result<(), StoreError> {
        if msg.seq == 1 {
            self.run(sql::CLEAR_HISTORY, [msg.room])?;
        }
        self.save_room(msg.room, msg.epoch, msg.seq)?;
        if history.max_messages > 0 {
            self.run(
                sql::SAVE_MESSAGE,
                rusqlite::params![msg.room, int(msg.seq), int(msg.at), msg.text],
            )?;
        }
        let (seq_bound, at_bound) = sql::prune_bounds(msg.seq, msg.at, history);
        self.run(
            sql::PRUNE_HISTORY,
            rusqlite::params![msg.room, int(seq_bound), int(at_bound)],
        )
    }
    fn delete_room(&mut self, room: &str) -> Result<(), StoreError> {
        self.run(sql::CLEAR_HISTORY, [room])?;
        self.run(sql::DELETE_ROOM, [room])
    }
    fn load_rooms(&mut self) -> Result<Vec<RoomSnapshot>, StoreError> {
        let mut history: BTreeMap<String, Vec<HistorySnapshot>> = BTreeMap::new();
        for ((room, seq), (at, text)) in self.history() {
            history
                .entry(room)
                .or_default()
                .push(HistorySnapshot { seq, at, text });
        }
        Ok(self
            .rooms()
            .into_iter()
            .map(|(name, (epoch, seq))| RoomSnapshot {
                history: history.remove(&name).unwrap_or_default(),
                name,
                epoch,
                seq,
                persistent: false,
                max_members: None,
                data: None,
            })
            .collect())
    }
    fn save_conn(&mut self, conn: ConnId, snapshot: &str) -> Result<(), StoreError> {
        self.run(
            sql::SAVE_CONN,
            rusqlite::params![conn.as_u64().to_string(), snapshot],
        )
    }
    fn delete_conn(&mut self, conn: ConnId) -> Result<(), StoreError> {
        self.run(sql::DELETE_CONN, [conn.as_u64().to_string()])
    }
    fn load_conns(&mut self) -> Result<Vec<(ConnId, String)>, StoreError> {
        Ok(self.conns().into_iter().collect())
    }
    fn save_server_state(&mut self, json: &str) -> Result<(), StoreError> {
        self.run(sql::SAVE_SERVER_STATE, [json])
    }
    fn load_server_state(&mut self) -> Result<Option<String>, StoreError> {
        let mut st = self.0.prepare(sql::LOAD_SERVER_STATE).map_err(sql_err)?;
        let rows: Rows<String> = st.query_map([], |r| r.get(0)).map_err(sql_err)?.collect();
        Ok(rows.map_err(sql_err)?.pop())
    }
}

/// One Durable Object: a driver that can be evicted, over sockets and storage that stay.
struct Object {
    config: HubConfig,
    driver: Option<Driver>,
    sockets: FakeSockets,
    store: SqliteStore,
    now: u64,
    seeds: u8,
    /// The driver collects decisions and departures ([`Driver::with_hooks`]).
    hooked: bool,
}

impl Object {
    fn new(config: HubConfig) -> Object {
        Object {
            config,
            driver: None,
            sockets: FakeSockets::default(),
            store: SqliteStore::default(),
            now: 1_000_000,
            seeds: 0,
            hooked: false,
        }
    }

    fn seed(&mut self) -> [u8; 32] {
        self.seeds += 1;
        [self.seeds; 32]
    }

    /// The driver, restored first if the object was evicted.
    fn live(&mut self) -> &mut Driver {
        if self.driver.is_none() {
            let (_, saved) = self.sockets.saved();
            let seed = self.seed();
            let r = Driver::restore(
                self.config.clone(),
                seed,
                Timestamp(self.now),
                &saved,
                &mut self.store,
            );
            assert!(r.errors.is_empty(), "{:?}", r.errors);
            assert!(r.lost.is_empty(), "{:?}", r.lost);
            r.driver.hub().check_invariants();
            self.driver = Some(if self.hooked {
                r.driver.with_hooks(true)
            } else {
                r.driver
            });
        }
        self.driver.as_mut().unwrap()
    }

    fn flush(&mut self) {
        let d = self.driver.as_mut().unwrap();
        let errors = d.flush(&mut self.sockets, &mut self.store);
        assert!(errors.is_empty(), "{errors:?}");
        d.hub().check_invariants();
    }

    fn connect(&mut self, user: Option<&str>) -> ConnId {
        let now = Timestamp(self.now);
        let id = self
            .live()
            .connect(
                now,
                ConnectRequest {
                    user: user.map(str::to_owned),
                    ..ConnectRequest::default()
                },
            )
            .unwrap();
        self.sockets.map.insert(id, Socket::default());
        self.flush();
        let welcome = self.sockets.take(id);
        assert_eq!(welcome[0]["type"], "welcome");
        id
    }

    fn send(&mut self, conn: ConnId, msg: Value) -> Vec<Value> {
        let now = Timestamp(self.now);
        self.live().text(now, conn, &msg.to_string()).unwrap();
        self.flush();
        self.sockets.take(conn)
    }

    fn evict(&mut self) {
        self.driver = None;
    }

    /// A server API call, as the Durable Object makes it: answer, then flush.
    fn api(&mut self, method: &str, path: &str, body: Value) -> (u16, Value) {
        let now = Timestamp(self.now);
        let body = if body.is_null() {
            String::new()
        } else {
            body.to_string()
        };
        let a = self.live().api(
            now,
            roomcast_core::api::ApiRequest {
                method,
                path,
                query: None,
                body: body.as_bytes(),
            },
        );
        self.flush();
        (a.status, serde_json::from_str(&a.body).unwrap())
    }

    fn advance(&mut self, ms: u64) {
        self.now += ms;
    }
}

fn history_config(n: usize) -> HubConfig {
    HubConfig {
        history: HistoryConfig {
            max_messages: n,
            max_age_ms: 60_000,
            ..HistoryConfig::default()
        },
        heartbeat: roomcast_core::hub::HeartbeatConfig {
            server_pings: false,
            ..Default::default()
        },
        ..HubConfig::default()
    }
}

fn ack(replies: &[Value]) -> &Value {
    replies
        .iter()
        .find(|m| m["type"] == "ack")
        .unwrap_or_else(|| panic!("no ack in {replies:?}"))
}

#[test]
fn rooms_users_and_seq_survive_an_eviction() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(Some("ann"));
    let b = o.connect(Some("bob"));
    let a_wire = o.live().hub().connection(a).unwrap().wire_id.to_owned();
    let joined = o.send(a, json!({"type":"join","room":"r","presence":true}));
    let epoch = ack(&joined)["epoch"].clone();
    o.send(b, json!({"type":"join","room":"r"}));
    o.sockets.take(a); // presence
    o.send(b, json!({"type":"subscribe","channel":"c"}));
    o.send(a, json!({"type":"subscribe","channel":"c"}));
    let r = o.send(a, json!({"type":"publish","room":"r","event":"e","data":1}));
    assert_eq!(ack(&r)["seq"], 1);
    assert_eq!(o.sockets.take(b)[0]["seq"], 1);
    assert_eq!(
        o.store.rooms()["r"],
        (epoch.as_str().unwrap().to_owned(), 1)
    );

    o.evict();
    o.advance(30_000);

    // room publish: same epoch, next seq, same members
    let r = o.send(a, json!({"type":"publish","room":"r","event":"e","data":2}));
    assert_eq!(ack(&r)["seq"], 2);
    let got = o.sockets.take(b);
    assert_eq!(got.len(), 1, "{got:?}");
    assert_eq!(got[0]["seq"], 2);
    assert_eq!(got[0]["from"]["conn"], a_wire.as_str());
    assert_eq!(got[0]["from"]["user"], "ann");
    // channel subscription
    let r = o.send(a, json!({"type":"publish","channel":"c","event":"e"}));
    assert_eq!(ack(&r)["delivered"], 1);
    assert_eq!(o.sockets.take(b)[0]["channel"], "c");
    // users
    let r = o.send(a, json!({"type":"publish","user":"bob","event":"e"}));
    assert_eq!(ack(&r)["delivered"], 1);
    assert_eq!(o.sockets.take(b)[0]["user"], "bob");
    // presence watcher survived
    o.send(b, json!({"type":"leave","room":"r"}));
    let p = o.sockets.take(a);
    assert_eq!(p[0]["type"], "presence", "{p:?}");
    // rejoin with recovery across the eviction
    let r = o.send(b, json!({"type":"join","room":"r","since":0,"epoch":epoch}));
    assert_eq!(r.len(), 3, "{r:?}");
    assert_eq!(r[0]["seq"], 1);
    assert_eq!(r[1]["seq"], 2);
    assert_eq!(ack(&r)["recovered"], true);
    assert_eq!(ack(&r)["epoch"], epoch);
    // a new connection after the restore gets a fresh id
    let c = o.connect(None);
    assert!(c != a && c != b);
}

#[test]
fn epoch_survives_before_the_first_message() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(None);
    let epoch = ack(&o.send(a, json!({"type":"join","room":"quiet"})))["epoch"].clone();
    o.evict();
    let b = o.connect(None);
    let r = o.send(b, json!({"type":"join","room":"quiet"}));
    assert_eq!(ack(&r)["epoch"], epoch);
    assert_eq!(ack(&r)["members"], 2);
}

#[test]
fn history_in_storage_follows_the_hub_limits() {
    let mut o = Object::new(history_config(3));
    let a = o.connect(None);
    o.send(a, json!({"type":"join","room":"r"}));
    for i in 0..5 {
        o.send(a, json!({"type":"publish","room":"r","event":"e","data":i}));
        o.advance(1);
    }
    let kept: Vec<u64> = o.store.history().keys().map(|(_, s)| *s).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert_eq!(o.store.rooms()["r"].1, 5);
    o.evict();
    let b = o.connect(None);
    let epoch = o.store.rooms()["r"].0.clone();
    let r = o.send(b, json!({"type":"join","room":"r","since":2,"epoch":epoch}));
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(ack(&r)["recovered"], true);
    let r = o.send(b, json!({"type":"join","room":"r2","since":1,"epoch":"x"}));
    assert_eq!(ack(&r)["recovered"], false);
}

/// The storage SQL itself (sql.rs, as edge.rs runs it): publishing past the count limit
/// and then past the age limit (a message exactly at the age bound goes), the rows kept
/// are exactly the hub's history, and after an eviction recovery works from them alone.
#[test]
fn stored_history_is_trimmed_by_count_and_age_and_recovers_after_an_eviction() {
    let mut config = history_config(4);
    config.history.max_age_ms = 10_000;
    let mut o = Object::new(config);
    let a = o.connect(None);
    let b = o.connect(None);
    let epoch = ack(&o.send(a, json!({"type":"join","room":"r"})))["epoch"].clone();
    o.send(b, json!({"type":"join","room":"r"}));
    let t0 = o.now;
    let rows = |o: &Object| -> Vec<(u64, u64)> {
        o.store
            .history()
            .iter()
            .map(|((room, seq), (at, _))| {
                assert_eq!(room, "r");
                (*seq, *at - t0)
            })
            .collect()
    };
    // Six messages a second apart: the count limit keeps the last four.
    for i in 1..=6 {
        let r = o.send(a, json!({"type":"publish","room":"r","event":"e","data":i}));
        assert_eq!(ack(&r)["seq"], i);
        o.advance(1_000);
    }
    assert_eq!(rows(&o), [(3, 2_000), (4, 3_000), (5, 4_000), (6, 5_000)]);
    // The seventh 10 s after the fourth: the age limit drops 3 and 4 (4 is exactly at it).
    o.now = t0 + 3_000 + 10_000;
    let r = o.send(a, json!({"type":"publish","room":"r","event":"e","data":7}));
    assert_eq!(ack(&r)["seq"], 7);
    assert_eq!(rows(&o), [(5, 4_000), (6, 5_000), (7, 13_000)]);
    assert_eq!(
        o.store.rooms()["r"],
        (epoch.as_str().unwrap().to_owned(), 7)
    );
    o.sockets.take(b);

    // Evicted: the hub comes back from those rows only.
    o.evict();
    let c = o.connect(None);
    let r = o.send(c, json!({"type":"join","room":"r","since":4,"epoch":epoch}));
    let seqs: Vec<&Value> = r
        .iter()
        .filter(|m| m["type"] == "message")
        .map(|m| &m["seq"])
        .collect();
    assert_eq!(seqs, [5, 6, 7], "{r:?}");
    assert_eq!(ack(&r)["recovered"], true, "{r:?}");
    assert_eq!(ack(&r)["seq"], 7);
    // Message 4 is gone: recovering from 3 cannot be complete, and replays nothing.
    let d = o.connect(None);
    let r = o.send(d, json!({"type":"join","room":"r","since":3,"epoch":epoch}));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(ack(&r)["recovered"], false);
    // Without the epoch, nothing either: the history no longer reaches back to seq 1.
    let e = o.connect(None);
    let r = o.send(e, json!({"type":"join","room":"r","since":0}));
    assert_eq!(r.len(), 1, "{r:?}");
    assert_eq!(ack(&r)["recovered"], false);
    // The next message continues the epoch, and storage keeps trimming.
    o.advance(500);
    let r = o.send(c, json!({"type":"publish","room":"r","event":"e","data":8}));
    assert_eq!(ack(&r)["seq"], 8);
    assert_eq!(rows(&o), [(5, 4_000), (6, 5_000), (7, 13_000), (8, 13_500)]);
}

#[test]
fn empty_room_expires_by_alarm_and_leaves_storage() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(None);
    o.send(a, json!({"type":"join","room":"r"}));
    o.send(a, json!({"type":"publish","room":"r","event":"e"}));
    o.send(a, json!({"type":"leave","room":"r"}));
    // seq and history outlive the members for the history age
    assert!(o.store.rooms().contains_key("r"));
    let deadline = o.live().deadline().expect("expiry scheduled");
    assert_eq!(deadline.as_millis(), o.now + 60_000);
    o.now = deadline.as_millis();
    let now = Timestamp(o.now);
    o.live().timeout(now);
    o.flush();
    assert!(o.store.rooms().is_empty(), "{:?}", o.store.rooms());
    assert!(o.store.history().is_empty());
    assert_eq!(o.live().deadline(), None);
}

#[test]
fn room_without_history_leaves_storage_with_its_last_member() {
    let mut o = Object::new(history_config(0));
    let a = o.connect(None);
    o.send(a, json!({"type":"join","room":"r"}));
    o.send(a, json!({"type":"publish","room":"r","event":"e"}));
    assert_eq!(o.store.rooms()["r"].1, 1);
    assert!(o.store.history().is_empty());
    o.send(a, json!({"type":"leave","room":"r"}));
    assert!(o.store.rooms().is_empty());
}

#[test]
fn restore_drops_expired_rooms_and_keeps_recent_ones() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(None);
    for room in ["old", "new"] {
        o.send(a, json!({"type":"join","room":room}));
        o.send(a, json!({"type":"publish","room":room,"event":"e"}));
        o.send(a, json!({"type":"leave","room":room}));
        o.advance(40_000);
    }
    o.evict();
    // "old" is 80 s old (> 60 s), "new" 40 s
    let b = o.connect(None);
    assert_eq!(o.store.rooms().keys().collect::<Vec<_>>(), vec!["new"]);
    let r = o.send(b, json!({"type":"join","room":"new"}));
    assert_eq!(ack(&r)["seq"], 1);
    let r = o.send(b, json!({"type":"join","room":"old"}));
    assert_eq!(ack(&r)["seq"], 0);
}

#[test]
fn large_snapshots_spill_to_storage_and_come_back() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(Some("ann"));
    let b = o.connect(None);
    let rooms: Vec<String> = (0..30)
        .map(|i| format!("{i:03}-{}", "x".repeat(100)))
        .collect();
    for r in &rooms {
        o.send(a, json!({"type":"join","room":r}));
    }
    assert_eq!(
        o.sockets.map[&a].attachment.as_deref(),
        Some(attachment::SPILLED)
    );
    assert!(o.store.conns().contains_key(&a));
    o.send(b, json!({"type":"join","room":rooms[29]}));
    o.evict();
    let r = o.send(b, json!({"type":"publish","room":rooms[29],"event":"e"}));
    assert_eq!(ack(&r)["delivered"], 1);
    assert_eq!(o.sockets.take(a).len(), 1);
    assert_eq!(o.live().hub().rooms_of(a).len(), 30);
    // shrinking back under the limit moves the snapshot back to the attachment
    for r in &rooms[..25] {
        o.send(a, json!({"type":"leave","room":r}));
    }
    assert!(o.sockets.map[&a]
        .attachment
        .as_deref()
        .unwrap()
        .starts_with('{'));
    assert!(o.store.conns().is_empty());
    // and a disconnect of a spilled connection deletes its row
    for r in &rooms[..25] {
        o.send(a, json!({"type":"join","room":r}));
    }
    assert!(o.store.conns().contains_key(&a));
    let now = Timestamp(o.now);
    o.live().closed(now, a, 1000).unwrap();
    o.flush();
    assert!(o.store.conns().is_empty());
}

#[test]
fn hub_closed_sockets_are_not_restored() {
    let mut o = Object::new(HubConfig {
        max_message_size: 10,
        ..history_config(10)
    });
    let a = o.connect(None);
    let b = o.connect(None);
    let now = Timestamp(o.now);
    o.live()
        .text(now, a, r#"{"type":"ping","id":"long"}"#)
        .unwrap();
    o.flush();
    assert_eq!(o.sockets.map[&a].closed.as_ref().unwrap().0, 1009);
    assert_eq!(
        o.sockets.map[&a].attachment.as_deref(),
        Some(attachment::CLOSED)
    );
    assert_eq!(o.sockets.forgotten, vec![a]);
    o.evict();
    let (ids, saved) = o.sockets.saved();
    let r = Driver::restore(o.config.clone(), [9; 32], now, &saved, &mut o.store);
    assert_eq!(
        r.closing.iter().map(|&i| ids[i]).collect::<Vec<_>>(),
        vec![a]
    );
    assert!(r.lost.is_empty());
    assert_eq!(r.driver.hub().connections().collect::<Vec<_>>(), vec![b]);
}

#[test]
fn unusable_sockets_are_reported_lost() {
    let mut store = SqliteStore::default();
    let good = ConnSnapshot {
        id: 5,
        wire: "w-5".into(),
        user: None,
        connected_at: 0,
        rooms: vec![],
        channels: vec![],
        auth: None,
    };
    let saved = vec![
        SavedSocket {
            conn: None,
            attachment: Some(good.to_json()),
        },
        SavedSocket {
            conn: Some(ConnId::from_u64(6)),
            attachment: None,
        },
        SavedSocket {
            conn: Some(ConnId::from_u64(7)),
            attachment: Some(attachment::SPILLED.into()),
        },
        SavedSocket {
            conn: Some(ConnId::from_u64(8)),
            attachment: Some(good.to_json()),
        },
        SavedSocket {
            conn: Some(ConnId::from_u64(5)),
            attachment: Some(good.to_json()),
        },
    ];
    store.save_conn(ConnId::from_u64(99), "{}").unwrap();
    let r = Driver::restore(history_config(1), [1; 32], Timestamp(0), &saved, &mut store);
    let lost: Vec<(usize, String)> = r.lost.iter().map(|(i, e)| (*i, format!("{e:?}"))).collect();
    assert_eq!(lost.len(), 4, "{lost:?}");
    assert!(matches!(r.lost[0].1, LostSocket::Untagged));
    assert!(matches!(
        r.lost[1].1,
        LostSocket::Attachment(AttachmentError::Missing)
    ));
    assert!(matches!(r.lost[2].1, LostSocket::SpillMissing));
    assert!(matches!(r.lost[3].1, LostSocket::Mismatch));
    assert_eq!(
        r.driver.hub().connections().collect::<Vec<_>>(),
        vec![ConnId::from_u64(5)]
    );
    // the orphan row is gone
    assert!(store.conns().is_empty());
}

#[test]
fn a_send_to_a_dead_socket_disconnects_it() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(None);
    let b = o.connect(None);
    o.send(a, json!({"type":"join","room":"r","presence":true}));
    o.send(b, json!({"type":"join","room":"r"}));
    o.sockets.take(a);
    o.sockets.map.get_mut(&b).unwrap().closed = Some((1006, String::new()));
    let r = o.send(a, json!({"type":"publish","room":"r","event":"e"}));
    assert_eq!(ack(&r)["delivered"], 1);
    // b is gone: a sees it leave, in the same batch
    assert!(
        r.iter()
            .any(|m| m["type"] == "presence" && m["left"].is_array()),
        "{r:?}"
    );
    assert_eq!(o.live().hub().room_size("r"), Some(1));
}

// --- tokens across an eviction ----------------------------------------------------------

const SECRET: &[u8] = b"worker-tests-secret-worker-tests";

fn auth_config() -> HubConfig {
    let settings = roomcast_core::auth::AuthSettings {
        secret: Some(String::from_utf8(SECRET.to_vec()).unwrap()),
        deny_by_default: true,
        ..Default::default()
    };
    HubConfig {
        auth: settings.verifier().unwrap().map(std::sync::Arc::new),
        ..history_config(10)
    }
}

/// An HS256 token with these claims (`exp` in seconds from the test clock's start).
fn token(claims: Value) -> String {
    jsonwebtoken::encode(
        &jsonwebtoken::Header::default(),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(SECRET).unwrap(),
    )
    .unwrap()
}

impl Object {
    /// Connects with `req`; returns what the socket got first (nothing while it waits
    /// for `auth`).
    fn connect_with(&mut self, req: ConnectRequest) -> (ConnId, Vec<Value>) {
        let now = Timestamp(self.now);
        let id = self.live().connect(now, req).unwrap();
        self.sockets.map.insert(id, Socket::default());
        self.flush();
        (id, self.sockets.take(id))
    }

    /// Runs the hub's timers due by now, as the alarm does.
    fn alarm(&mut self) {
        let now = Timestamp(self.now);
        self.live().timeout(now);
        self.flush();
    }
}

#[test]
fn token_rights_room_tokens_and_waiting_connections_survive_an_eviction() {
    let mut o = Object::new(auth_config());
    let t0 = o.now / 1000; // the worker's clock is Unix time
    let info = json!({"name": "Ada"});
    let caps = json!([{"rooms": ["game:*"], "allow": ["join", "presence"]}]);
    let (a, got) = o.connect_with(ConnectRequest {
        token: Some(token(
            json!({"sub": "ada", "exp": t0 + 600, "info": info, "caps": caps}),
        )),
        ..ConnectRequest::default()
    });
    assert_eq!(got[0]["user"], "ada");
    assert_eq!(got[0]["info"], info);
    assert_eq!(
        ack(&o.send(a, json!({"type":"join","room":"game:1"})))["room"],
        "game:1"
    );
    let vip = token(json!({"sub": "ada", "room": "vip", "exp": t0 + 60}));
    assert_eq!(
        ack(&o.send(a, json!({"type":"join","room":"vip","token": vip})))["room"],
        "vip"
    );
    // A connection that has not sent `auth` yet.
    let (p, got) = o.connect_with(ConnectRequest::default());
    assert!(got.is_empty(), "no welcome before auth: {got:?}");

    o.evict();

    // The caps came back: deny-by-default still refuses what no grant allows.
    let r = o.send(a, json!({"type":"join","room":"lobby","id":1}));
    assert_eq!(r[0]["code"], "forbidden", "{r:?}");
    assert_eq!(
        ack(&o.send(a, json!({"type":"join","room":"game:2"})))["room"],
        "game:2"
    );
    // The room token came back: publishing in vip is allowed.
    assert_eq!(
        ack(&o.send(a, json!({"type":"publish","room":"vip","event":"e"})))["delivered"],
        0
    );
    // info came back with the user: others see it.
    let (b, _) = o.connect_with(ConnectRequest {
        token: Some(token(json!({"sub": "bob", "exp": t0 + 600, "caps": caps}))),
        ..ConnectRequest::default()
    });
    let r = o.send(b, json!({"type":"join","room":"game:1","presence":true}));
    let present = ack(&r)["present"].as_array().unwrap().clone();
    let ada = present
        .iter()
        .find(|e| e["user"] == "ada")
        .expect("ada present");
    assert_eq!(ada["info"], info);
    // The waiting connection still waits, and only `auth` lets it in.
    let r = o.send(
        p,
        json!({"type":"auth","token": token(json!({"sub": "pat", "exp": t0 + 600}))}),
    );
    assert_eq!(r[0]["type"], "welcome", "{r:?}");
    assert_eq!(r[0]["user"], "pat");

    // Evicted again, the room token still runs out on time: `left`, token_expired.
    o.evict();
    o.now = (t0 + 60) * 1000;
    o.alarm();
    let got = o.sockets.take(a);
    assert!(
        got.contains(&json!({"type":"left","room":"vip","reason":"token_expired"})),
        "{got:?}"
    );
    // And the connection token's `expiring` 30 s before its exp.
    o.evict();
    o.now = (t0 + 570) * 1000;
    o.alarm();
    let got = o.sockets.take(a);
    assert!(
        got.contains(&json!({"type":"expiring","in_ms":30_000})),
        "{got:?}"
    );
}

#[test]
fn a_waiting_connection_evicted_past_its_deadline_is_closed_4001() {
    let mut o = Object::new(auth_config());
    let (p, _) = o.connect_with(ConnectRequest::default());
    o.evict();
    o.now += 10_000;
    o.alarm();
    let closed = o.sockets.map[&p].closed.clone();
    assert_eq!(closed, Some((4001, "auth timeout".to_owned())));
}

#[test]
fn what_the_api_made_outlives_an_eviction() {
    // Rooms the API created (data, limit, the persistent flag) and channel links were
    // lost to hibernation before: restore passed no channels and no room options.
    let mut o = Object::new(history_config(10));
    let (s, _) = o.api(
        "PUT",
        "/rooms/stage",
        json!({"data": {"topic": "x"}, "max_members": 2}),
    );
    assert_eq!(s, 200);
    let (s, _) = o.api("PUT", "/rooms/empty", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(
        o.api("PUT", "/channels/news/rooms/stage", Value::Null).0,
        200
    );
    let a = o.connect(Some("ann"));
    assert_eq!(
        ack(&o.send(a, json!({"type":"join","room":"stage","id":1})))["type"],
        "ack"
    );
    let epoch_empty = o.live().hub().room_position("empty").unwrap().0.to_owned();
    o.evict();
    o.advance(120_000); // past the history age: an ordinary empty room would be gone
    let (s, room) = o.api("GET", "/rooms/stage", Value::Null);
    assert_eq!(s, 200);
    assert_eq!(room["data"], json!({"topic": "x"}));
    assert_eq!(room["members"], 1);
    let (s, empty) = o.api("GET", "/rooms/empty", Value::Null);
    assert_eq!(s, 200, "an empty API room stays");
    assert_eq!(empty["epoch"], epoch_empty, "with its epoch");
    // the link holds: a channel publish reaches the room's member
    let (_, d) = o.api("POST", "/publish", json!({"channel": "news", "event": "e"}));
    assert_eq!(d, json!({"delivered": 1}));
    // and the limit: a third member is refused
    let b = o.connect(Some("bob"));
    assert_eq!(
        ack(&o.send(b, json!({"type":"join","room":"stage","id":2})))["type"],
        "ack"
    );
    let c = o.connect(Some("cy"));
    let r = o.send(c, json!({"type":"join","room":"stage","id":3}));
    assert_eq!(r[0]["code"], "room_full");
    // removing it is remembered too
    assert_eq!(o.api("DELETE", "/rooms/empty", Value::Null).0, 200);
    o.evict();
    assert_eq!(o.api("GET", "/rooms/empty", Value::Null).0, 404);
    assert_eq!(o.api("GET", "/rooms/stage", Value::Null).0, 200);
}

// --- the application's hooks, as Rust compiled into the Worker ---------------------

use crate::hooks::{EdgeHooks, HookFuture};
use roomcast_core::hub::{HookConfig, Question};
use serde_json::value::RawValue;

/// Rules an application could compile into its Worker: `vip-*` rooms for `boss` only,
/// "darn" masked in published text, an `add` rpc, `hang` never answered, a `session=`
/// cookie naming the user at connect.
struct RoomRules;

impl EdgeHooks for RoomRules {
    fn decides(&self) -> HookConfig {
        HookConfig {
            connect: true,
            join: true,
            publish: true,
            rpc: true,
            timeout_ms: 500,
            ..HookConfig::default()
        }
    }

    fn decide(&self, caller: Caller, question: Question) -> HookFuture<Answer> {
        let answer = match question {
            Question::Connect { headers } => {
                let session = headers
                    .iter()
                    .find(|(k, _)| k.eq_ignore_ascii_case("cookie"))
                    .and_then(|(_, v)| v.strip_prefix("session="));
                match session {
                    Some("banned") => Answer::refuse("banned", "go away"),
                    Some(name) => {
                        let info = RawValue::from_string(r#"{"via":"cookie"}"#.into()).unwrap();
                        Answer::admit(Some(name), Some(&info), &["lobby"])
                    }
                    None => Answer::allow(),
                }
            }
            Question::Join { room, .. }
                if room.starts_with("vip-") && caller.user.as_deref() != Some("boss") =>
            {
                Answer::refuse("members_only", "vip rooms are for the boss")
            }
            Question::Publish { data: Some(d), .. } if d.get().contains("darn") => {
                let masked = d.get().replace("darn", "****");
                Answer::with_data(RawValue::from_string(masked).unwrap())
            }
            Question::Rpc { method, data } if method == "add" => {
                let v: Value = serde_json::from_str(data.unwrap().get()).unwrap();
                let sum = v["a"].as_i64().unwrap() + v["b"].as_i64().unwrap();
                Answer::with_data(RawValue::from_string(sum.to_string()).unwrap())
            }
            Question::Rpc { method, .. } if method == "hang" => {
                return Box::pin(std::future::pending());
            }
            Question::Rpc { method, .. } => Answer::refuse("no_such_method", &method),
            _ => Answer::allow(),
        };
        Box::pin(std::future::ready(answer))
    }

    fn disconnected(&self, _: Caller, _: &'static str) -> Option<HookFuture<()>> {
        None
    }
}

impl Object {
    /// Connects as `user` through the connect hook; returns once welcomed.
    fn admit(&mut self, user: &str, hooks: &dyn EdgeHooks) -> ConnId {
        let (id, first) = self.connect_with(ConnectRequest {
            user: Some(user.to_owned()),
            ..ConnectRequest::default()
        });
        assert!(first.is_empty(), "no welcome before the hook answers");
        self.settle(hooks);
        assert_eq!(self.sockets.take(id)[0]["type"], "welcome");
        id
    }

    fn hooked(hooks: &dyn EdgeHooks) -> Object {
        let mut config = history_config(10);
        config.hooks = hooks.decides();
        let mut o = Object::new(config);
        o.hooked = true;
        o
    }

    /// What the Durable Object does after a flush: ask the hooks, hand back each answer
    /// that is ready (a pending one is a hook that hangs), flush, until nothing is asked.
    fn settle(&mut self, hooks: &dyn EdgeHooks) {
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        loop {
            let asks = self.live().take_asks();
            if asks.is_empty() {
                return;
            }
            for d in asks {
                let mut fut = hooks.decide(Caller::of(&d), d.question);
                if let std::task::Poll::Ready(a) = fut.as_mut().poll(&mut cx) {
                    let now = Timestamp(self.now);
                    self.live().decided(now, d.ticket, a);
                }
            }
            self.flush();
        }
    }
}

fn error_code(replies: &[Value]) -> &str {
    replies
        .iter()
        .find(|m| m["type"] == "error")
        .unwrap_or_else(|| panic!("no error in {replies:?}"))["code"]
        .as_str()
        .unwrap()
}

#[test]
fn rust_hooks_compiled_into_the_worker_decide_joins_publishes_rpc_and_connects() {
    let hooks = RoomRules;
    let mut o = Object::hooked(&hooks);
    let guest = o.admit("guest", &hooks);
    let boss = o.admit("boss", &hooks);

    assert!(
        o.send(guest, json!({"type":"join","room":"vip-1","id":1}))
            .is_empty(),
        "parked"
    );
    o.settle(&hooks);
    assert_eq!(error_code(&o.sockets.take(guest)), "members_only");
    o.send(boss, json!({"type":"join","room":"vip-1","id":1}));
    o.settle(&hooks);
    assert_eq!(ack(&o.sockets.take(boss))["members"], 1);
    o.send(guest, json!({"type":"join","room":"open","id":2}));
    o.send(boss, json!({"type":"join","room":"open","id":2}));
    o.settle(&hooks);
    o.sockets.take(guest);
    o.sockets.take(boss);

    o.send(
        guest,
        json!({"type":"publish","room":"open","event":"say","data":{"text":"darn it"},"id":3}),
    );
    o.settle(&hooks);
    let got = o.sockets.take(boss);
    let m = got
        .iter()
        .find(|m| m["type"] == "message")
        .expect("delivered");
    assert_eq!(m["data"], json!({"text": "**** it"}));
    assert_eq!(o.store.history().len(), 1, "stored as rewritten");
    assert!(o.store.history().values().all(|(_, t)| t.contains("****")));

    o.send(
        guest,
        json!({"type":"rpc","method":"add","data":{"a":2,"b":3},"id":4}),
    );
    o.settle(&hooks);
    let got = o.sockets.take(guest);
    assert_eq!(ack(&got)["data"], 5);

    // a hook that hangs: what follows waits behind it; the alarm refuses it `unavailable`
    o.send(guest, json!({"type":"rpc","method":"hang","id":5}));
    o.send(
        guest,
        json!({"type":"rpc","method":"add","data":{"a":1,"b":1},"id":6}),
    );
    o.settle(&hooks);
    assert!(
        o.sockets.take(guest).is_empty(),
        "nothing before the deadline"
    );
    let deadline = o
        .live()
        .deadline()
        .expect("the hub's deadline is the alarm");
    assert!(deadline.as_millis() <= o.now + 500);
    o.now = deadline.as_millis();
    o.alarm();
    o.settle(&hooks);
    let got = o.sockets.take(guest);
    assert_eq!(
        (got[0]["id"].clone(), got[0]["code"].clone()),
        (json!(5), json!("unavailable"))
    );
    assert_eq!(
        (got[1]["id"].clone(), got[1]["data"].clone()),
        (json!(6), json!(2))
    );

    // connect: invisible until admitted, then the user and rooms the hook gave
    let (carol, first) = o.connect_with(ConnectRequest {
        headers: vec![("Cookie".into(), "session=carol".into())],
        ..ConnectRequest::default()
    });
    assert!(first.is_empty(), "no welcome before the hook answers");
    o.settle(&hooks);
    let got = o.sockets.take(carol);
    assert_eq!(got[0]["type"], "welcome");
    assert_eq!(got[0]["user"], "carol");
    assert!(got
        .iter()
        .any(|m| m["type"] == "joined" && m["room"] == "lobby"));
    let (banned, _) = o.connect_with(ConnectRequest {
        headers: vec![("Cookie".into(), "session=banned".into())],
        ..ConnectRequest::default()
    });
    o.settle(&hooks);
    assert_eq!(
        o.sockets.map[&banned].closed.as_ref().map(|c| c.0),
        Some(4003)
    );
}

#[test]
fn departures_are_collected_only_for_hooks_and_name_the_user() {
    let hooks = RoomRules;
    let mut o = Object::hooked(&hooks);
    let a = o.admit("ann", &hooks);
    let now = Timestamp(o.now);
    o.live().closed(now, a, 1000).unwrap();
    o.flush();
    let gone = o.live().take_departures();
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].caller.user.as_deref(), Some("ann"));
    assert_eq!(gone[0].reason, "closed");
    assert!(o.live().take_departures().is_empty());

    let mut plain = Object::new(history_config(10));
    let b = plain.connect(Some("bob"));
    let now = Timestamp(plain.now);
    plain.live().closed(now, b, 1000).unwrap();
    plain.flush();
    assert!(plain.live().take_departures().is_empty());
}

#[test]
fn without_hooks_a_parked_request_is_refused_at_once() {
    // a hub configured to ask, but a driver without hooks: never left hanging
    let mut config = history_config(10);
    config.hooks = RoomRules.decides();
    let mut o = Object::new(config);
    let now = Timestamp(o.now);
    let id = o.live().connect(now, ConnectRequest::default()).unwrap();
    o.sockets.map.insert(id, Socket::default());
    o.flush();
    let got = o.sockets.take(id);
    assert!(o.live().take_asks().is_empty());
    assert_eq!(
        o.sockets.map[&id].closed.as_ref().map(|c| c.0),
        Some(1013),
        "{got:?}"
    );
}
