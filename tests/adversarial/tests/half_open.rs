//! Half-open TCP: peers that complete the handshake and then vanish without a FIN. On
//! loopback the kernel still acknowledges their segments, so the server sees exactly
//! what it would see from a dead peer behind a live path: silence. The heartbeat
//! (`--ping-interval 200ms`: dropped after 2 silent intervals) must reap every one in
//! the configured time, even when the server still has output for them, and leave live
//! peers alone.

use std::time::{Duration, Instant};

use roomcast_adversarial::raw::{Ending, RawWs, ReadEnd, PING, TEXT};
use roomcast_adversarial::{ws, Server, WAIT};
use serde_json::json;

const INTERVAL: Duration = Duration::from_millis(200);
/// Silent intervals before a drop (2 with a 200 ms pong timeout).
const MISSED: u32 = 2;
/// Silent peers, half of them members of a room that keeps receiving messages.
const SILENT: usize = 60;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn heartbeat_reaps_vanished_peers_in_the_configured_time() {
    let server = Server::start(&["--ping-interval", "200ms", "--pong-timeout", "200ms"]);
    let base_fds = server.open_fds();

    // Live peers: a tungstenite client (answers pings while it reads) and a publisher.
    let (mut live, welcome) = ws::connect(server.addr, "/ws").await;
    assert_eq!(welcome["heartbeat"]["interval_ms"], 200, "{welcome}");
    let ack = ws::request(
        &mut live,
        json!({"type": "join", "room": "r", "id": 1}),
        |_| {},
    )
    .await;
    assert_eq!(ack["type"], "ack");
    let (mut publisher, _) = ws::connect(server.addr, "/ws").await;
    let ack = ws::request(
        &mut publisher,
        json!({"type": "join", "room": "r", "id": 2}),
        |_| {},
    )
    .await;
    assert_eq!(ack["type"], "ack");

    // Silent peers: their last frame is the join (or nothing after the handshake);
    // afterwards they neither read nor write.
    let mut silent = Vec::new();
    let mut last_sent = Instant::now();
    for i in 0..SILENT {
        let mut p = RawWs::welcomed(server.addr, "/ws").await;
        if i % 2 == 0 {
            let join = json!({"type": "join", "room": "r", "id": i});
            p.send_frame(true, TEXT, join.to_string().as_bytes())
                .await
                .unwrap();
            assert_eq!(p.read_json(WAIT).await.unwrap()["type"], "ack");
        }
        last_sent = Instant::now();
        silent.push(p);
    }
    let all_silent_since = last_sent;

    // The room stays busy while they are reaped, so the server always has something to
    // write to the silent members (which their kernel buffers accept).
    let (done_tx, mut done_rx) = tokio::sync::watch::channel(false);
    let pub_task = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_millis(20));
        let mut n = 0u64;
        while !*done_rx.borrow_and_update() && n < 1000 {
            tick.tick().await;
            n += 1;
            let req = json!({"type": "publish", "room": "r", "event": "e", "data": n, "id": n});
            let ack = ws::request(&mut publisher, req, |_| {}).await;
            assert_eq!(ack["type"], "ack", "{ack}");
        }
        (publisher, n)
    });
    // The live member reads all along (and so answers pings).
    let live_task = tokio::spawn(async move {
        let mut got = 0u64;
        loop {
            match ws::next_json(&mut live, WAIT).await {
                Ok(m) if m["type"] == "message" => {
                    got += 1;
                    assert_eq!(m["seq"], got, "live member: in order");
                    if m["data"] == "last" {
                        return (live, got);
                    }
                }
                Ok(m) => panic!("live member: {m}"),
                Err(e) => panic!("live member dropped: {e:?}"),
            }
        }
    });

    let reaped = server
        .wait_metric(
            "roomcast_heartbeat_timeouts_total",
            Duration::from_secs(10),
            |v| v >= SILENT as f64,
        )
        .await;
    let took = all_silent_since.elapsed();
    let reaped = reaped.unwrap_or_else(|v| panic!("only {v} of {SILENT} silent peers reaped"));
    done_tx.send_replace(true);
    let (mut publisher, published) = pub_task.await.unwrap();
    let last = json!({"type": "publish", "room": "r", "event": "e", "data": "last", "id": "last"});
    let ack = ws::request(&mut publisher, last, |_| {}).await;
    assert_eq!(
        ack["delivered"], 1,
        "only the live member is left in the room: {ack}"
    );
    let (_live, got) = live_task.await.unwrap();
    assert_eq!(got, published + 1, "the live member got every message");

    // What the silent peers find when they look again: the server's pings, then a close
    // (1001 "heartbeat timeout") or a dropped connection.
    let mut pings = 0;
    let mut endings = std::collections::BTreeMap::<String, usize>::new();
    for mut p in silent {
        let deadline = tokio::time::Instant::now() + WAIT;
        let end = loop {
            match p.r.read_frame_until(deadline).await {
                Ok(f) if f.opcode == PING => pings += 1,
                Ok(f) if f.opcode == roomcast_adversarial::raw::CLOSE => {
                    break Ending::Close(f.close_code())
                }
                Ok(_) => {}
                Err(ReadEnd::Timeout) => break Ending::StillOpen,
                Err(e) => break Ending::Dropped(e),
            }
        };
        assert_ne!(end, Ending::StillOpen, "a reaped peer is still connected");
        *endings.entry(format!("{end:?}")).or_default() += 1;
        if let Some(code) = end.code() {
            assert_eq!(code, 1001, "{end:?}");
        }
    }
    let connections = server
        .wait_metric("roomcast_connections", WAIT, |v| v <= 2.0)
        .await
        .expect("reaped connections released");
    let sockets = server
        .wait_metric("roomcast_sockets", WAIT, |v| v <= 2.0)
        .await
        .expect("reaped sockets released");
    let end_fds = server.open_fds();
    let bound = INTERVAL * (MISSED + 1) + Duration::from_millis(1500);
    println!(
        "half-open: {reaped} of {SILENT} silent peers reaped {took:?} after their last frame \
         (interval {INTERVAL:?}, dropped after {MISSED} silent intervals; bound {bound:?}); \
         {pings} pings seen by them; endings {endings:?}; live member got all {got} messages; \
         connections left {connections}, sockets {sockets}, server fds {base_fds} -> {end_fds}"
    );
    // The server counts time in whole milliseconds (the core's `Timestamp`) and stamps a
    // frame when it reads it, a moment after we measured sending it: allow that much.
    let earliest = INTERVAL * MISSED - Duration::from_millis(5);
    assert!(took >= earliest, "reaped too early: {took:?}");
    assert!(took < bound, "reaped after {took:?}, bound {bound:?}");
    assert_eq!(connections, 2.0, "live member and publisher remain");
    assert!(end_fds <= base_fds + 2 + 2, "fds {base_fds} -> {end_fds}");
    server.assert_no_panic();
}
