//! Graceful shutdown under load: publishers and subscribers busy, a few members that
//! stopped reading and a few handshakes in progress, then SIGTERM. Every reading client
//! gets close 1001, the process exits 0 within its shutdown bound, and nothing panics.

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use roomcast_adversarial::raw::{Ending, RawWs, TEXT};
use roomcast_adversarial::ws;
use roomcast_adversarial::{Server, WAIT};
use serde_json::json;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio_tungstenite::tungstenite::Message;

const ROOMS: usize = 10;
const PUBLISHERS: usize = 20;
const SUBSCRIBERS: usize = 300;
const STALLED: usize = 5;
/// Messages every subscriber receives before the signal (about 1 s of traffic).
const WARM: u64 = 100;
/// The server's shutdown bound (5 s) plus the runtime's 0.5 s and slack for a loaded
/// machine.
const EXIT_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_closes_everyone_1001_and_exits_0() {
    let mut server = Server::start(&[]);
    let addr = server.addr;
    let room = |i: usize| format!("room-{}", i % ROOMS);

    // Subscribers: read until the server closes them; report the ending.
    let (first_tx, mut first_rx) = mpsc::channel::<()>(SUBSCRIBERS);
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let (mut c, _) = ws::connect(addr, "/ws").await;
        let ack = ws::request(
            &mut c,
            json!({"type": "join", "room": room(i), "id": 0}),
            |_| {},
        )
        .await;
        assert_eq!(ack["type"], "ack");
        let first = first_tx.clone();
        subscribers.push(tokio::spawn(async move {
            let mut got = 0u64;
            loop {
                match ws::next_json(&mut c, Duration::from_secs(30)).await {
                    Ok(_) => {
                        got += 1;
                        if got == WARM {
                            let _ = first.send(()).await;
                        }
                    }
                    Err(e) => return (got, e),
                }
            }
        }));
    }
    drop(first_tx);

    // Members that stopped reading, and handshakes in progress.
    let mut stalled = Vec::new();
    for i in 0..STALLED {
        let mut p = RawWs::welcomed(addr, "/ws").await;
        let join = json!({"type": "join", "room": room(i), "id": 0}).to_string();
        p.send_frame(true, TEXT, join.as_bytes()).await.unwrap();
        stalled.push(p);
    }
    let mut pending = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n")
            .await
            .unwrap();
        pending.push(s);
    }

    // Publishers: 50 messages/s each until closed.
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut publishers = Vec::new();
    for i in 0..PUBLISHERS {
        let (c, _) = ws::connect(addr, "/ws").await;
        let (mut tx, mut rx) = c.split();
        let join = json!({"type": "join", "room": room(i), "id": 0}).to_string();
        tx.send(Message::text(join)).await.unwrap();
        let r = room(i);
        let stop = stop_rx.clone();
        publishers.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_millis(20));
            let (mut sent, mut send_failed) = (0u64, false);
            loop {
                tokio::select! {
                    _ = tick.tick(), if !send_failed && !*stop.borrow() => {
                        sent += 1;
                        let m = json!({"type": "publish", "room": r, "event": "tick",
                                       "data": {"n": sent, "pad": "x".repeat(1000)}, "id": sent});
                        send_failed = tx.send(Message::text(m.to_string())).await.is_err();
                    }
                    m = ws::next_json(&mut rx, Duration::from_secs(30)) => {
                        if let Err(e) = m {
                            return (sent, e);
                        }
                    }
                }
            }
        }));
    }

    // Traffic has been flowing for a while once every subscriber has WARM messages.
    for _ in 0..SUBSCRIBERS {
        tokio::time::timeout(WAIT, first_rx.recv())
            .await
            .expect("every subscriber receives traffic")
            .expect("subscriber alive");
    }
    let rss = server.rss_kib();
    let t = Instant::now();
    server.terminate();
    let status = server.wait_exit(EXIT_BOUND);
    let exit_after = t.elapsed();
    let status = status.unwrap_or_else(|| panic!("still running {EXIT_BOUND:?} after SIGTERM"));
    stop_tx.send_replace(true);

    let mut delivered = 0;
    let mut not_1001 = Vec::new();
    for s in subscribers {
        let (got, end) = s.await.unwrap();
        delivered += got;
        if end.code() != Some(1001) {
            not_1001.push(format!("subscriber: {end:?}"));
        }
    }
    let mut published = 0;
    for p in publishers {
        let (sent, end) = p.await.unwrap();
        published += sent;
        if end.code() != Some(1001) {
            not_1001.push(format!("publisher: {end:?}"));
        }
    }
    // The stalled members find their backlog and then a 1001 (or, if it could not be
    // delivered within the shutdown bound, a dropped connection).
    let mut stalled_endings = Vec::new();
    for mut p in stalled {
        let end = p.ending(WAIT).await;
        if let Some(code) = end.code() {
            assert_eq!(code, 1001, "{end:?}");
        }
        stalled_endings.push(match end {
            Ending::Close(_) => "close 1001",
            Ending::Dropped(_) => "dropped",
            Ending::StillOpen => {
                panic!("a stalled member was still connected {WAIT:?} after the exit")
            }
        });
    }
    println!(
        "shutdown under load: {} clients ({SUBSCRIBERS} subscribers, {PUBLISHERS} publishers at \
         50/s, {STALLED} stalled, 5 mid-handshake), server RSS {rss} KiB; exit {status} \
         {exit_after:?} after SIGTERM; {published} published, {delivered} delivered; \
         stalled: {stalled_endings:?}; not 1001: {}",
        SUBSCRIBERS + PUBLISHERS + STALLED,
        not_1001.len()
    );
    assert!(
        not_1001.is_empty(),
        "{:?}",
        &not_1001[..not_1001.len().min(5)]
    );
    assert_eq!(status.code(), Some(0), "exit status {status}");
    server.assert_no_panic();
}
