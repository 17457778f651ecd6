//! The `roomcast` binary against peers we did not write: tokio-tungstenite, raw sockets
//! and plain HTTP. (The Python scenario suite covers the protocol exhaustively; these
//! cover what the adapter itself is responsible for.)

mod common;

use std::time::Duration;

use common::*;
use futures_util::SinkExt;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn welcome_names_the_user_and_heartbeat() {
    let server = ServerProc::start(&["--ping-interval", "30s", "--pong-timeout", "10s"]);
    let mut req = server
        .ws_url("/ws?user=ada%20lovelace")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "Sec-WebSocket-Protocol",
        HeaderValue::from_static("roomcast.v1"),
    );
    let (mut ws, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "roomcast.v1");
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome");
    assert_eq!(welcome["user"], "ada lovelace");
    assert!(!welcome["conn"].as_str().unwrap().is_empty());
    assert_eq!(
        welcome["heartbeat"],
        json!({"interval_ms": 30000, "timeout_ms": 10000})
    );

    // Without a subprotocol request or a user: accepted, anonymous.
    let (_ws, welcome) = connect_welcomed(&server.ws_url("/ws")).await;
    assert_eq!(welcome["user"], serde_json::Value::Null);
}

#[tokio::test]
async fn join_publish_ack_and_delivery() {
    let server = ServerProc::start(&[]);
    let (mut a, wa) = connect_welcomed(&server.ws_url("/ws?user=a")).await;
    let (mut b, _) = connect_welcomed(&server.ws_url("/ws?user=b")).await;
    send_json(&mut a, json!({"type": "join", "room": "lobby", "id": 1})).await;
    let ack = next_json(&mut a).await;
    assert_eq!(ack["type"], "ack");
    assert_eq!(ack["id"], 1);
    assert_eq!(ack["members"], 1);
    send_json(&mut b, json!({"type": "join", "room": "lobby", "id": "j"})).await;
    assert_eq!(next_json(&mut b).await["members"], 2);

    for i in 1..=3 {
        send_json(
            &mut a,
            json!({"type": "publish", "room": "lobby", "event": "chat", "data": {"n": i}, "id": i}),
        )
        .await;
        let ack = next_json(&mut a).await;
        assert_eq!(
            ack,
            json!({"type": "ack", "id": i, "delivered": 1, "seq": i})
        );
        let msg = next_json(&mut b).await;
        assert_eq!(msg["type"], "message");
        assert_eq!(msg["room"], "lobby");
        assert_eq!(msg["seq"], i);
        assert_eq!(msg["data"], json!({"n": i}));
        assert_eq!(msg["from"], json!({"conn": wa["conn"], "user": "a"}));
    }

    // Binary messages are not part of v1: answered, connection kept.
    b.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    let err = next_json(&mut b).await;
    assert_eq!(err["code"], "unsupported");
    send_json(&mut b, json!({"type": "ping", "id": 9})).await;
    assert_eq!(next_json(&mut b).await, json!({"type": "pong", "id": 9}));
}

fn upgrade_request(
    server: &ServerProc,
    path: &str,
    extra: &str,
    key: &str,
    version: &str,
) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: {version}\r\n{extra}\r\n",
        server.addr
    )
}

const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";

#[tokio::test]
async fn refused_upgrades_get_the_core_status() {
    let server = ServerProc::start(&["--allowed-origin", "https://good.example"]);
    let addr = server.addr;

    let (status, _, body) = http(addr, &upgrade_request(&server, "/ws", "", "short", "13")).await;
    assert_eq!(status, 400);
    assert_eq!(body, b"missing or invalid Sec-WebSocket-Key\n");

    let (status, head, _) = http(addr, &upgrade_request(&server, "/ws", "", KEY, "8")).await;
    assert_eq!(status, 426);
    assert_eq!(header(&head, "sec-websocket-version"), Some("13"));

    let (status, _, _) = http(addr, &upgrade_request(&server, "/nope", "", KEY, "13")).await;
    assert_eq!(status, 404);

    let evil = "Origin: https://evil.example\r\n";
    let (status, _, _) = http(addr, &upgrade_request(&server, "/ws", evil, KEY, "13")).await;
    assert_eq!(status, 403);

    for bad_user in ["/ws?user=", "/ws?user=%ZZ", "/ws?user=%01"] {
        let (status, _, body) =
            http(addr, &upgrade_request(&server, bad_user, "", KEY, "13")).await;
        assert_eq!(status, 400, "{bad_user}");
        assert_eq!(body, b"invalid user\n");
    }

    // The allowed origin, and a client that sends none, are accepted.
    let mut req = server.ws_url("/ws").into_client_request().unwrap();
    req.headers_mut()
        .insert("Origin", HeaderValue::from_static("https://good.example"));
    assert_eq!(connect_status(req).await, 101);
    assert_eq!(connect_status(server.ws_url("/ws")).await, 101);

    // A plain GET of the endpoint is a bad upgrade, not a page.
    let (status, _, _) = get(addr, "/ws").await;
    assert_eq!(status, 400);
}

#[tokio::test]
async fn max_connections_refuses_with_503() {
    let server = ServerProc::start(&["--max-connections", "1"]);
    let (first, _) = connect_welcomed(&server.ws_url("/ws")).await;
    assert_eq!(connect_status(server.ws_url("/ws")).await, 503);
    drop(first);
}

#[tokio::test]
async fn oversized_message_closes_1009() {
    let server = ServerProc::start(&["--max-message-size", "1KiB"]);
    let (mut ws, _) = connect_welcomed(&server.ws_url("/ws")).await;
    ws.send(Message::text("x".repeat(1025))).await.unwrap();
    assert_eq!(expect_close(&mut ws).await, 1009);

    // Exactly at the limit is fine (and answered as bad JSON, not closed).
    let (mut ws, _) = connect_welcomed(&server.ws_url("/ws")).await;
    ws.send(Message::text("x".repeat(1024))).await.unwrap();
    assert_eq!(next_json(&mut ws).await["code"], "bad_json");
}

#[tokio::test]
async fn invalid_utf8_closes_1007() {
    let server = ServerProc::start(&[]);
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    let (op, _) = raw.read_frame().await.expect("welcome");
    assert_eq!(op, TEXT);
    raw.send_frame(TEXT, &[b'{', 0xff, 0xfe, b'}'], true).await;
    assert_eq!(raw.expect_close().await, 1007);
    raw.expect_eof().await;
}

#[tokio::test]
async fn unmasked_client_frame_closes_1002() {
    let server = ServerProc::start(&[]);
    let mut raw = RawWs::connect(server.addr, "/ws").await;
    raw.send_frame(TEXT, br#"{"type":"ping"}"#, false).await;
    assert_eq!(raw.expect_close().await, 1002);
    raw.expect_eof().await;
}

#[tokio::test]
async fn heartbeat_reaps_a_silent_peer_and_keeps_a_live_one() {
    let server = ServerProc::start(&["--ping-interval", "200ms", "--pong-timeout", "200ms"]);
    // tokio-tungstenite answers pings by itself, as long as it is read: keep reading the
    // live peer on its own task while the silent one is reaped.
    let (mut live, _) = connect_welcomed(&server.ws_url("/ws")).await;
    let live_task = tokio::spawn(async move {
        let mut pings = 0;
        // Eight intervals: four times what reaps a silent peer.
        while pings < 8 {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut live))
                .await
                .expect("ping in time")
            {
                Some(Ok(Message::Ping(_))) => pings += 1,
                other => panic!("live peer got {other:?}"),
            }
        }
        send_json(&mut live, json!({"type": "ping", "id": 1})).await;
        assert_eq!(next_json(&mut live).await, json!({"type": "pong", "id": 1}));
    });
    let mut silent = RawWs::connect(server.addr, "/ws").await;
    let mut pings = 0;
    let code = loop {
        match silent.read_frame().await {
            Some((PING, _)) => pings += 1,
            Some((CLOSE, p)) => break u16::from_be_bytes([p[0], p[1]]),
            Some(_) => {}
            None => panic!("dropped without a close frame"),
        }
    };
    assert!(pings >= 1, "pinged before being reaped");
    assert_eq!(code, 1001);
    silent.expect_eof().await;
    live_task.await.expect("the live peer stayed connected");

    let (_, _, body) = get(server.addr, "/metrics").await;
    let metrics = String::from_utf8(body).unwrap();
    assert!(
        metrics.contains("roomcast_heartbeat_timeouts_total 1\n"),
        "{metrics}"
    );
}

#[tokio::test]
async fn sigterm_closes_everyone_with_1001_and_exits_0() {
    let mut server = ServerProc::start(&[]);
    let (mut a, _) = connect_welcomed(&server.ws_url("/ws?user=a")).await;
    let (mut b, _) = connect_welcomed(&server.ws_url("/ws?user=b")).await;
    send_json(&mut a, json!({"type": "join", "room": "r", "id": 1})).await;
    assert_eq!(next_json(&mut a).await["type"], "ack");
    server.terminate();
    assert_eq!(expect_close(&mut a).await, 1001);
    assert_eq!(expect_close(&mut b).await, 1001);
    let status = server.wait_exit(Duration::from_secs(8));
    assert_eq!(status.code(), Some(0), "{status:?}");
}

#[tokio::test]
async fn healthz_and_metrics() {
    let server = ServerProc::start(&[]);
    let (status, head, body) = get(server.addr, "/healthz").await;
    assert_eq!(status, 200);
    assert_eq!(body, b"ok\n");
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/plain"));

    let (_ws, _) = connect_welcomed(&server.ws_url("/ws?user=m")).await;
    let mut closing = connect(&server.ws_url("/ws")).await;
    closing.close(None).await.unwrap();
    // Wait for the closing handshake to finish on our side.
    while let Some(Ok(_)) = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut closing))
        .await
        .expect("close in time")
    {}
    let (status, head, body) = get(server.addr, "/metrics").await;
    assert_eq!(status, 200);
    assert!(header(&head, "content-type")
        .unwrap()
        .starts_with("text/plain; version=0.0.4"));
    let text = String::from_utf8(body).unwrap();
    for family in [
        "roomcast_connections",
        "roomcast_rooms",
        "roomcast_channels",
        "roomcast_users",
        "roomcast_messages_received_total",
        "roomcast_messages_sent_total",
        "roomcast_received_bytes_total",
        "roomcast_sent_bytes_total",
        "roomcast_closes_total",
        "roomcast_slow_consumer_closes_total",
        "roomcast_rate_limited_total",
        "roomcast_heartbeat_timeouts_total",
    ] {
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} missing:\n{text}"
        );
    }
    assert!(text.contains("roomcast_users 1\n"), "{text}");
    assert!(
        text.contains("roomcast_handshakes_accepted_total 2\n"),
        "{text}"
    );

    let (status, head, _) = http(
        server.addr,
        "POST /metrics HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 405);
    assert_eq!(header(&head, "allow"), Some("GET, HEAD"));
}

#[tokio::test]
async fn static_files_are_served_safely() {
    let root = std::path::Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("www-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&root);
    std::fs::create_dir_all(root.join("js")).unwrap();
    std::fs::write(root.join("index.html"), "<h1>hi</h1>").unwrap();
    std::fs::write(root.join("app.wasm"), b"\0asm\x01\0\0\0").unwrap();
    std::fs::write(root.join("js/app.js"), "export {}").unwrap();
    std::fs::write(root.join(".secret"), "no").unwrap();
    std::fs::write(root.parent().unwrap().join("outside.txt"), "no").unwrap();
    let server = ServerProc::start(&["--www", root.to_str().unwrap()]);
    let addr = server.addr;

    let (status, head, body) = get(addr, "/").await;
    assert_eq!((status, body.as_slice()), (200, &b"<h1>hi</h1>"[..]));
    assert_eq!(
        header(&head, "content-type"),
        Some("text/html; charset=utf-8")
    );
    let etag = header(&head, "etag").unwrap().to_owned();

    let (status, head, body) = get(addr, "/app.wasm").await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-type"), Some("application/wasm"));
    assert_eq!(body, b"\0asm\x01\0\0\0");

    let (status, head, _) = get(addr, "/js/app.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&head, "content-type"),
        Some("text/javascript; charset=utf-8")
    );

    let (status, head, _) = get(addr, "/js").await;
    assert_eq!(status, 301);
    assert_eq!(header(&head, "location"), Some("/js/"));

    for bad in [
        "/../outside.txt",
        "/js/../../outside.txt",
        "/%2e%2e/outside.txt",
        "/.secret",
        "/missing.html",
        "/js/%2e%2e%2f%2e%2e%2foutside.txt",
    ] {
        let (status, _, body) = get(addr, bad).await;
        assert_eq!(status, 404, "{bad}");
        assert_ne!(body, b"no", "{bad}");
    }

    let (status, _, _) = http(
        addr,
        &format!("GET / HTTP/1.1\r\nHost: x\r\nIf-None-Match: {etag}\r\nConnection: close\r\n\r\n"),
    )
    .await;
    assert_eq!(status, 304);

    let (status, head, body) = http(
        addr,
        "HEAD /app.wasm HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(header(&head, "content-length"), Some("8"));
    assert!(body.is_empty());
    let _ = std::fs::remove_dir_all(&root);
}

#[tokio::test]
async fn echo_mode_echoes_on_any_path() {
    let server = ServerProc::start(&["--echo"]);
    let mut ws = connect(&server.ws_url("/any/path?x=1")).await;
    ws.send(Message::text("héllo")).await.unwrap();
    ws.send(Message::binary(vec![0u8, 1, 2, 255]))
        .await
        .unwrap();
    let big = "z".repeat(3 << 20);
    ws.send(Message::text(big.clone())).await.unwrap();
    let mut got = Vec::new();
    while got.len() < 3 {
        match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
            .await
            .expect("echo in time")
        {
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
            Some(Ok(m)) => got.push(m),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(got[0], Message::text("héllo"));
    assert_eq!(got[1], Message::binary(vec![0u8, 1, 2, 255]));
    assert_eq!(got[2], Message::text(big));
    ws.close(None).await.unwrap();

    // Shutdown reaches echo sockets on both runtimes the binary picks from.
    for args in [&["--echo"][..], &["--echo", "--threads", "1"]] {
        let mut term = ServerProc::start(args);
        let mut ws = connect(&term.ws_url("/")).await;
        let mut idle = connect(&term.ws_url("/")).await;
        ws.send(Message::text("before")).await.unwrap();
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut ws))
                .await
                .expect("echo in time")
            {
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                Some(Ok(m)) => break assert_eq!(m, Message::text("before")),
                other => panic!("{other:?}"),
            }
        }
        term.terminate();
        assert_eq!(expect_close(&mut ws).await, 1001, "{args:?}");
        assert_eq!(expect_close(&mut idle).await, 1001, "{args:?}");
        assert_eq!(term.wait_exit(Duration::from_secs(8)).code(), Some(0));
    }
}

#[tokio::test]
async fn one_thread_runs_the_hub_and_sockets_on_the_current_thread_runtime() {
    let mut server = ServerProc::start(&["--threads", "1"]);
    let (mut a, _) = connect_welcomed(&server.ws_url("/ws?user=a")).await;
    let (mut b, _) = connect_welcomed(&server.ws_url("/ws?user=b")).await;
    for (ws, id) in [(&mut a, 1), (&mut b, 2)] {
        send_json(ws, json!({"type": "join", "room": "r", "id": id})).await;
        assert_eq!(next_json(ws).await["type"], "ack");
    }
    for i in 0..100 {
        send_json(
            &mut a,
            json!({"type": "publish", "room": "r", "event": "n", "data": i}),
        )
        .await;
    }
    for i in 0..100 {
        let m = next_json(&mut b).await;
        assert_eq!(
            (m["type"].as_str(), m["data"].as_i64()),
            (Some("message"), Some(i))
        );
    }
    server.terminate();
    assert_eq!(expect_close(&mut b).await, 1001);
    assert_eq!(server.wait_exit(Duration::from_secs(8)).code(), Some(0));
}

#[test]
fn zero_threads_is_a_usage_error() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_roomcast"))
        .args(["--threads", "0", "--bind", "127.0.0.1:0"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run roomcast");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--threads"));
}

#[tokio::test]
async fn slow_consumer_is_closed_alone() {
    let server = ServerProc::start(&[]);
    let (mut publisher, _) = connect_welcomed(&server.ws_url("/ws?user=pub")).await;
    send_json(
        &mut publisher,
        json!({"type": "join", "room": "firehose", "id": 0}),
    )
    .await;
    assert_eq!(next_json(&mut publisher).await["type"], "ack");

    // A subscriber that joins and then never reads again.
    let mut stalled = RawWs::connect(server.addr, "/ws").await;
    stalled.read_frame().await.expect("welcome");
    stalled
        .send_frame(TEXT, br#"{"type":"join","room":"firehose","id":1}"#, true)
        .await;
    stalled.read_frame().await.expect("ack");

    // A healthy subscriber, read on its own task: it must get everything, in order.
    let (mut healthy, _) = connect_welcomed(&server.ws_url("/ws?user=ok")).await;
    send_json(
        &mut healthy,
        json!({"type": "join", "room": "firehose", "id": 2}),
    )
    .await;
    assert_eq!(next_json(&mut healthy).await["type"], "ack");
    let (sent_tx, mut sent_rx) = tokio::sync::watch::channel(0u64);
    let reader = tokio::spawn(async move {
        let mut seq = 0;
        loop {
            let target = *sent_rx.borrow_and_update();
            if target != 0 && seq == target {
                return seq;
            }
            tokio::select! {
                m = next_json(&mut healthy) => {
                    assert_eq!(m["type"], "message");
                    seq += 1;
                    assert_eq!(m["seq"], seq, "in order, none missing");
                }
                _ = sent_rx.changed() => {}
            }
        }
    });

    let chunk = "x".repeat(64 * 1024);
    let mut sent = 0u64;
    let mut closed = false;
    // Kernel buffers on loopback absorb a few MiB before the hub's 1 MiB budget counts.
    while sent < 1000 && !closed {
        sent += 1;
        send_json(
            &mut publisher,
            json!({"type": "publish", "room": "firehose", "event": "blob", "data": chunk, "id": sent}),
        )
        .await;
        let ack = next_json(&mut publisher).await;
        assert_eq!(ack["id"], sent, "{ack}");
        if sent % 16 == 0 {
            let (_, _, body) = get(server.addr, "/metrics").await;
            closed =
                String::from_utf8_lossy(&body).contains("roomcast_slow_consumer_closes_total 1\n");
        }
    }
    assert!(closed, "the stalled subscriber was never closed");
    // Publishing goes on, and the healthy subscriber got every message.
    sent_tx.send_replace(sent);
    let got = tokio::time::timeout(WAIT, reader)
        .await
        .expect("reader done")
        .unwrap();
    assert_eq!(got, sent);
    // The stalled peer finally reads: data, then a 1013 close or (if it could not be
    // delivered within the close bound) the end of the stream.
    loop {
        match stalled.read_frame().await {
            Some((CLOSE, p)) => {
                assert_eq!(u16::from_be_bytes([p[0], p[1]]), 1013);
                break;
            }
            Some(_) => continue,
            None => break,
        }
    }
}

#[tokio::test]
async fn room_limits_from_flags() {
    let server = ServerProc::start(&["--max-room-members", "1"]);
    let (mut a, _) = connect_welcomed(&server.ws_url("/ws")).await;
    let (mut b, _) = connect_welcomed(&server.ws_url("/ws")).await;
    send_json(&mut a, json!({"type": "join", "room": "solo", "id": 1})).await;
    assert_eq!(next_json(&mut a).await["type"], "ack");
    send_json(&mut b, json!({"type": "join", "room": "solo", "id": 2})).await;
    assert_eq!(next_json(&mut b).await["code"], "room_full");

    let locked = ServerProc::start(&["--no-room-creation"]);
    let (mut c, _) = connect_welcomed(&locked.ws_url("/ws")).await;
    send_json(&mut c, json!({"type": "join", "room": "new", "id": 3})).await;
    assert_eq!(next_json(&mut c).await["code"], "forbidden");
}

#[tokio::test]
async fn bench_protocol_rooms_deliver_raw_texts_through_the_hub() {
    /// The next text frame that is not the hub's greeting.
    async fn next_text(ws: &mut Ws) -> String {
        loop {
            match tokio::time::timeout(WAIT, futures_util::StreamExt::next(ws))
                .await
                .expect("message in time")
            {
                Some(Ok(Message::Text(t))) if t.starts_with(r#"{"type":"welcome""#) => {}
                Some(Ok(Message::Text(t))) => return t.to_string(),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("{other:?}"),
            }
        }
    }
    let server = ServerProc::start(&["--bench-protocol"]);
    let mut a = connect(&server.ws_url("/room")).await;
    let mut b = connect(&server.ws_url("/room")).await;
    let mut outsider = connect(&server.ws_url("/room")).await;
    for ws in [&mut a, &mut b] {
        ws.send(Message::text("sub")).await.unwrap();
    }
    // `sub` has no answer: publish until the second subscription is seen to be in effect.
    let mut n = 0;
    loop {
        a.send(Message::text(format!("probe {n}"))).await.unwrap();
        let got = next_text(&mut b).await;
        if got.starts_with("probe") {
            break;
        }
        n += 1;
        assert!(n < 100, "the subscription never took effect");
    }
    // The outsider (never subscribed) publishes too: its text reaches both subscribers,
    // the sender itself included, verbatim and in order after the probes.
    for i in 0..50 {
        outsider
            .send(Message::text(format!("#{i} {{not json")))
            .await
            .unwrap();
    }
    for ws in [&mut a, &mut b] {
        let mut texts = Vec::new();
        while texts.len() < 50 {
            let t = next_text(ws).await;
            if !t.starts_with("probe") {
                texts.push(t);
            }
        }
        let want: Vec<String> = (0..50).map(|i| format!("#{i} {{not json")).collect();
        assert_eq!(texts, want);
    }
    // /echo echoes; the JSON protocol at /ws is still served beside it.
    let mut e = connect(&server.ws_url("/echo")).await;
    e.send(Message::text("ping me")).await.unwrap();
    assert_eq!(next_text(&mut e).await, "ping me");
    let (_ws, welcome) = connect_welcomed(&server.ws_url("/ws")).await;
    assert_eq!(welcome["type"], "welcome");

    // Without the flag there is no /room.
    let plain = ServerProc::start(&[]);
    assert_eq!(connect_status(plain.ws_url("/room")).await, 404);
}
