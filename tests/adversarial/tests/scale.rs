//! Many connections chatting in many rooms: every message is delivered exactly once to
//! every other member of its room, in seq order, and each receiver's view of a room
//! agrees with the seqs the publishers were acknowledged.
//!
//! The default run uses 2,000 connections in 100 rooms. The 10,000-connection version
//! is `#[ignore]`d (it needs a release build to stay under two minutes on two cores):
//!
//! ```sh
//! cargo test -p roomcast-adversarial --release --test scale -- --ignored --nocapture
//! ```

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use roomcast_adversarial::{ws, Server, SOURCE_ADDRS};
use serde_json::json;
use tokio::sync::{mpsc, watch, Semaphore};

/// What one connection saw.
struct ConnReport {
    conn: usize,
    room: usize,
    /// (seq, sender, k) of every room message received, in arrival order.
    received: Vec<(u64, u32, u32)>,
    /// The seq of each of its own publishes, by k.
    own: Vec<u64>,
}

async fn chat(conns: usize, rooms: usize, per_conn: u32, bound: Duration) {
    let started = Instant::now();
    let server = Server::start(&[]);
    let addr = server.addr;
    let members = |room: usize| (0..conns).filter(|c| c % rooms == room).count();
    let (go_tx, go_rx) = watch::channel(false);
    let (ready_tx, mut ready_rx) = mpsc::channel::<()>(conns);
    let gate = Arc::new(Semaphore::new(256));
    let mut tasks = Vec::with_capacity(conns);
    for conn in 0..conns {
        let room = conn % rooms;
        let expected = (members(room) - 1) as u64 * u64::from(per_conn);
        let src = IpAddr::V4(SOURCE_ADDRS[conn % SOURCE_ADDRS.len()]);
        let gate = Arc::clone(&gate);
        let ready = ready_tx.clone();
        let mut go = go_rx.clone();
        tasks.push(tokio::spawn(async move {
            let permit = gate.acquire_owned().await.unwrap();
            let (mut c, _) = ws::connect_from(src, addr, "/ws").await;
            let ack = ws::request(
                &mut c,
                json!({"type": "join", "room": format!("room-{room}"), "id": "join"}),
                |m| panic!("conn {conn}: message before any publish: {m}"),
            )
            .await;
            assert_eq!(ack["type"], "ack", "conn {conn}: {ack}");
            drop(permit);
            ready.send(()).await.unwrap();
            go.wait_for(|g| *g).await.unwrap();

            for k in 0..per_conn {
                let req = json!({"type": "publish", "room": format!("room-{room}"),
                                 "event": "chat", "data": {"c": conn, "k": k}, "id": k});
                ws::send_json(&mut c, &req).await;
            }
            let mut own = vec![0u64; per_conn as usize];
            let mut acks = 0;
            let mut received = Vec::with_capacity(expected as usize);
            let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
            while acks < per_conn || (received.len() as u64) < expected {
                let m = ws::next_json_until(&mut c, deadline)
                    .await
                    .unwrap_or_else(|e| {
                        panic!(
                            "conn {conn}: {e:?} with {acks} acks and {} of {expected} messages",
                            received.len()
                        )
                    });
                match m["type"].as_str() {
                    Some("ack") => {
                        let k = m["id"].as_u64().expect("numeric id") as usize;
                        own[k] = m["seq"].as_u64().expect("publish ack has seq");
                        acks += 1;
                    }
                    Some("message") => {
                        let d = &m["data"];
                        received.push((
                            m["seq"].as_u64().expect("seq"),
                            d["c"].as_u64().expect("c") as u32,
                            d["k"].as_u64().expect("k") as u32,
                        ));
                    }
                    _ => panic!("conn {conn}: unexpected {m}"),
                }
            }
            // Nothing more may arrive: the server answers in order, so anything before
            // this pong would be a duplicate or a stray.
            let pong = ws::request(&mut c, json!({"type": "ping", "id": "end"}), |m| {
                panic!("conn {conn}: extra message {m}")
            })
            .await;
            assert_eq!(pong["type"], "pong");
            (
                ConnReport {
                    conn,
                    room,
                    received,
                    own,
                },
                c,
            )
        }));
    }
    drop(ready_tx);
    for _ in 0..conns {
        tokio::time::timeout(Duration::from_secs(60), ready_rx.recv())
            .await
            .expect("every connection joined within 60 s")
            .expect("a connection task failed");
    }
    let connected = started.elapsed();
    let rss_connected = server.rss_kib();
    let fds = server.open_fds();
    let t = Instant::now();
    go_tx.send_replace(true);
    let mut reports = Vec::with_capacity(conns);
    let mut sockets = Vec::with_capacity(conns);
    for task in tasks {
        let (r, c) = task.await.expect("connection task");
        reports.push(r);
        sockets.push(c);
    }
    let chatted = t.elapsed();

    // Per room: seq -> (sender, k), from the publishers' acks; exactly 1..=total.
    let mut by_room: Vec<HashMap<u64, (u32, u32)>> = vec![HashMap::new(); rooms];
    for r in &reports {
        for (k, seq) in r.own.iter().enumerate() {
            let prev = by_room[r.room].insert(*seq, (r.conn as u32, k as u32));
            assert!(prev.is_none(), "room {}: seq {seq} acked twice", r.room);
        }
    }
    let mut deliveries = 0u64;
    for r in &reports {
        let total = (members(r.room) as u64) * u64::from(per_conn);
        let table = &by_room[r.room];
        assert_eq!(table.len() as u64, total, "room {}", r.room);
        assert!(
            (1..=total).all(|s| table.contains_key(&s)),
            "room {}: seq gap",
            r.room
        );
        // Everything but its own messages, each once, in seq order, matching the acks.
        let mut prev = 0;
        for &(seq, c, k) in &r.received {
            assert!(seq > prev, "conn {}: seq {seq} after {prev}", r.conn);
            prev = seq;
            assert_eq!(table.get(&seq), Some(&(c, k)), "conn {}: seq {seq}", r.conn);
            assert_ne!(c as usize, r.conn, "conn {}: own message delivered", r.conn);
        }
        assert_eq!(
            r.received.len() as u64,
            total - u64::from(per_conn),
            "conn {}",
            r.conn
        );
        deliveries += r.received.len() as u64;
    }
    let rss_end = server.rss_kib();
    drop(sockets);
    let elapsed = started.elapsed();
    println!(
        "{conns} connections in {rooms} rooms, {per_conn} messages each: connected and joined \
         in {connected:?} (server fds {fds}, RSS {rss_connected} KiB); {deliveries} deliveries \
         in {chatted:?} ({:.0}/s), all exactly once and in seq order; server RSS after {rss_end} \
         KiB; total {elapsed:?}",
        deliveries as f64 / chatted.as_secs_f64()
    );
    // Reported, not asserted: the run's duration is a speed figure (the benchmarks own
    // those). Every wait above is bounded, so a stuck run still fails.
    if elapsed > bound {
        println!("note: took {elapsed:?}, over the expected {bound:?}");
    }
    server.assert_no_panic();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_2k_connections_in_100_rooms_exactly_once_in_order() {
    chat(2_000, 100, 5, Duration::from_secs(120)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "10k connections: run with --release (see the module docs)"]
async fn chat_10k_connections_in_100_rooms_exactly_once_in_order() {
    chat(10_000, 100, 2, Duration::from_secs(120)).await;
}
