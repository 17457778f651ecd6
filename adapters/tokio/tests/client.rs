//! The native client (`roomcast_tokio::client`) against the real server binary.

mod common;

use common::*;
use roomcast_tokio::client::{Client, ClientError, Message};
use roomcast_tokio::core::handshake::HandshakeError;
use serde_json::{json, Value};

async fn recv_json(c: &mut Client) -> Value {
    match tokio::time::timeout(WAIT, c.recv())
        .await
        .expect("message in time")
    {
        Ok(Message::Text(t)) => serde_json::from_str(t.as_str()).unwrap(),
        other => panic!("expected text, got {other:?}"),
    }
}

#[tokio::test]
async fn client_speaks_the_protocol_and_closes_cleanly() {
    let server = ServerProc::start(&[]);
    let mut a = Client::connect(&server.ws_url("/ws?user=ada"))
        .await
        .unwrap();
    assert_eq!(a.protocol(), Some("roomcast.v1"));
    let welcome = recv_json(&mut a).await;
    assert_eq!(
        (welcome["type"].as_str(), welcome["user"].as_str()),
        (Some("welcome"), Some("ada"))
    );

    let mut b = Client::connect(&server.ws_url("/ws?user=bob"))
        .await
        .unwrap();
    recv_json(&mut b).await;
    for c in [&a, &b] {
        c.send_text(json!({"type": "join", "room": "r", "id": 1}).to_string())
            .await
            .unwrap();
    }
    assert_eq!(recv_json(&mut a).await["type"], "ack");
    assert_eq!(recv_json(&mut b).await["type"], "ack");

    // A message big enough to span many reads and writes, echoed to the sender too.
    let text = "y".repeat(200_000);
    a.send_text(
        json!({"type": "publish", "room": "r", "event": "e", "data": text, "echo": true, "id": 2})
            .to_string(),
    )
    .await
    .unwrap();
    for c in [&mut a, &mut b] {
        let mut got_message = false;
        while !got_message {
            let m = recv_json(c).await;
            if m["type"] == "message" {
                assert_eq!(m["data"].as_str().map(str::len), Some(200_000));
                got_message = true;
            }
        }
    }
    let info = a.close(1000, "bye").await.unwrap();
    assert_eq!(info.code, 1000);
    assert!(info.clean);

    // The server's close reaches the other client as an error carrying the code.
    server.terminate();
    loop {
        match tokio::time::timeout(WAIT, b.recv())
            .await
            .expect("close in time")
        {
            Ok(_) => continue,
            Err(ClientError::Closed(info)) => {
                assert_eq!(info.code, 1001);
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    assert!(matches!(
        b.send_text("x").await,
        Err(ClientError::Closed(_))
    ));
}

#[tokio::test]
async fn client_reports_refusals_and_binary_round_trips() {
    let server = ServerProc::start(&["--max-connections", "1"]);
    match Client::connect(&server.ws_url("/elsewhere")).await {
        Err(ClientError::Handshake(HandshakeError::BadStatus(404))) => {}
        other => panic!("expected a 404 refusal, got {other:?}"),
    }
    let _first = Client::connect(&server.ws_url("/ws")).await.unwrap();
    match Client::connect(&server.ws_url("/ws")).await {
        Err(ClientError::Handshake(HandshakeError::BadStatus(503))) => {}
        other => panic!("expected a 503 refusal, got {other:?}"),
    }

    let echo = ServerProc::start(&["--echo"]);
    let mut c = Client::connect(&echo.ws_url("/")).await.unwrap();
    let payload: Vec<u8> = (0..100_000u32).map(|i| i as u8).collect();
    c.send_binary(payload.clone()).await.unwrap();
    match tokio::time::timeout(WAIT, c.recv()).await.unwrap().unwrap() {
        Message::Binary(b) => assert_eq!(b.as_ref(), payload.as_slice()),
        other => panic!("{other:?}"),
    }
    assert_eq!(c.close(1000, "").await.unwrap().code, 1000);
}
