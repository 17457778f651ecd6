//! The driver against in-memory sockets and storage, with evictions simulated by
//! dropping the driver and restoring from what the platform would have kept.

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

/// Storage with the semantics the SQLite store implements.
#[derive(Debug, Default)]
struct MemStore {
    rooms: BTreeMap<String, (String, u64)>,
    history: BTreeMap<(String, u64), (u64, String)>,
    conns: BTreeMap<ConnId, String>,
}

impl Store for MemStore {
    fn save_room(&mut self, room: &str, epoch: &str, seq: u64) -> Result<(), StoreError> {
        self.rooms.insert(room.to_owned(), (epoch.to_owned(), seq));
        Ok(())
    }
    fn save_message(
        &mut self,
        msg: &StoredMessage<'_>,
        history: &HistoryConfig,
    ) -> Result<(), StoreError> {
        if msg.seq == 1 {
            self.history.retain(|(r, _), _| r != msg.room);
        }
        self.rooms
            .insert(msg.room.to_owned(), (msg.epoch.to_owned(), msg.seq));
        if history.max_messages > 0 {
            self.history.insert(
                (msg.room.to_owned(), msg.seq),
                (msg.at, msg.text.to_owned()),
            );
        }
        let min_seq = msg.seq.saturating_sub(history.max_messages as u64);
        self.history.retain(|(r, s), (at, _)| {
            r != msg.room || (*s > min_seq && at.saturating_add(history.max_age_ms) > msg.at)
        });
        Ok(())
    }
    fn delete_room(&mut self, room: &str) -> Result<(), StoreError> {
        self.rooms.remove(room);
        self.history.retain(|(r, _), _| r != room);
        Ok(())
    }
    fn load_rooms(&mut self) -> Result<Vec<RoomSnapshot>, StoreError> {
        Ok(self
            .rooms
            .iter()
            .map(|(name, (epoch, seq))| RoomSnapshot {
                name: name.clone(),
                epoch: epoch.clone(),
                seq: *seq,
                persistent: false,
                max_members: None,
                data: None,
                history: self
                    .history
                    .iter()
                    .filter(|((r, _), _)| r == name)
                    .map(|((_, s), (at, text))| HistorySnapshot {
                        seq: *s,
                        at: *at,
                        text: text.clone(),
                    })
                    .collect(),
            })
            .collect())
    }
    fn save_conn(&mut self, conn: ConnId, snapshot: &str) -> Result<(), StoreError> {
        self.conns.insert(conn, snapshot.to_owned());
        Ok(())
    }
    fn delete_conn(&mut self, conn: ConnId) -> Result<(), StoreError> {
        self.conns.remove(&conn);
        Ok(())
    }
    fn load_conns(&mut self) -> Result<Vec<(ConnId, String)>, StoreError> {
        Ok(self.conns.iter().map(|(k, v)| (*k, v.clone())).collect())
    }
}

/// One Durable Object: a driver that can be evicted, over sockets and storage that stay.
struct Object {
    config: HubConfig,
    driver: Option<Driver>,
    sockets: FakeSockets,
    store: MemStore,
    now: u64,
    seeds: u8,
}

impl Object {
    fn new(config: HubConfig) -> Object {
        Object {
            config,
            driver: None,
            sockets: FakeSockets::default(),
            store: MemStore::default(),
            now: 1_000_000,
            seeds: 0,
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
            self.driver = Some(r.driver);
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
    assert_eq!(o.store.rooms["r"], (epoch.as_str().unwrap().to_owned(), 1));

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
    let kept: Vec<u64> = o.store.history.keys().map(|(_, s)| *s).collect();
    assert_eq!(kept, vec![3, 4, 5]);
    assert_eq!(o.store.rooms["r"].1, 5);
    o.evict();
    let b = o.connect(None);
    let epoch = o.store.rooms["r"].0.clone();
    let r = o.send(b, json!({"type":"join","room":"r","since":2,"epoch":epoch}));
    assert_eq!(r.len(), 4, "{r:?}");
    assert_eq!(ack(&r)["recovered"], true);
    let r = o.send(b, json!({"type":"join","room":"r2","since":1,"epoch":"x"}));
    assert_eq!(ack(&r)["recovered"], false);
}

#[test]
fn empty_room_expires_by_alarm_and_leaves_storage() {
    let mut o = Object::new(history_config(10));
    let a = o.connect(None);
    o.send(a, json!({"type":"join","room":"r"}));
    o.send(a, json!({"type":"publish","room":"r","event":"e"}));
    o.send(a, json!({"type":"leave","room":"r"}));
    // seq and history outlive the members for the history age
    assert!(o.store.rooms.contains_key("r"));
    let deadline = o.live().deadline().expect("expiry scheduled");
    assert_eq!(deadline.as_millis(), o.now + 60_000);
    o.now = deadline.as_millis();
    let now = Timestamp(o.now);
    o.live().timeout(now);
    o.flush();
    assert!(o.store.rooms.is_empty(), "{:?}", o.store.rooms);
    assert!(o.store.history.is_empty());
    assert_eq!(o.live().deadline(), None);
}

#[test]
fn room_without_history_leaves_storage_with_its_last_member() {
    let mut o = Object::new(history_config(0));
    let a = o.connect(None);
    o.send(a, json!({"type":"join","room":"r"}));
    o.send(a, json!({"type":"publish","room":"r","event":"e"}));
    assert_eq!(o.store.rooms["r"].1, 1);
    assert!(o.store.history.is_empty());
    o.send(a, json!({"type":"leave","room":"r"}));
    assert!(o.store.rooms.is_empty());
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
    assert_eq!(o.store.rooms.keys().collect::<Vec<_>>(), vec!["new"]);
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
    assert!(o.store.conns.contains_key(&a));
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
    assert!(o.store.conns.is_empty());
    // and a disconnect of a spilled connection deletes its row
    for r in &rooms[..25] {
        o.send(a, json!({"type":"join","room":r}));
    }
    assert!(o.store.conns.contains_key(&a));
    let now = Timestamp(o.now);
    o.live().closed(now, a, 1000).unwrap();
    o.flush();
    assert!(o.store.conns.is_empty());
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
    let mut store = MemStore::default();
    let good = ConnSnapshot {
        id: 5,
        wire: "w-5".into(),
        user: None,
        connected_at: 0,
        rooms: vec![],
        channels: vec![],
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
    store.conns.insert(ConnId::from_u64(99), "{}".into());
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
    assert!(store.conns.is_empty());
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
