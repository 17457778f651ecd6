//! Runs the embedding example (`examples/embed_axum.rs`) as a real server on port 0 and
//! drives it the way its users would: a WebSocket client joins a room, the backend's own
//! HTTP route sends to that room through the hub, the client receives it.

mod common;

#[path = "../examples/embed_axum.rs"]
#[allow(dead_code)]
mod example;

use common::*;
use roomcast_tokio::{Config, Roomcast};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::sync::oneshot;

async fn post(addr: std::net::SocketAddr, path: &str, body: &str) -> (u16, Value) {
    let (status, _, body) = http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        ),
    )
    .await;
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

#[tokio::test]
async fn example_routes_drive_the_hub() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let rc = Roomcast::new(Config::default());
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(example::serve(listener, rc.clone(), async {
        let _ = stopped.await;
    }));

    let (mut ws, welcome) = connect_welcomed(&format!("ws://{addr}/ws?user=ada")).await;
    assert_eq!(welcome["user"], "ada");
    send_json(&mut ws, json!({"type": "join", "room": "lobby", "id": 1})).await;
    let ack = next_json(&mut ws).await;
    assert_eq!(
        (ack["type"].as_str(), ack["members"].as_u64()),
        (Some("ack"), Some(1))
    );

    let (status, body) = post(addr, "/rooms/lobby/announce", r#"{"text":"hello"}"#).await;
    assert_eq!(status, 200);
    assert_eq!(body, json!({"delivered": 1, "seq": 1}));
    let mut msg = next_json(&mut ws).await;
    let ts = msg
        .as_object_mut()
        .and_then(|m| m.remove("ts"))
        .and_then(|t| t.as_u64());
    assert!(
        ts.is_some_and(|t| t > 1_700_000_000_000),
        "server time: {ts:?}"
    );
    assert_eq!(
        msg,
        json!({"type": "message", "event": "announcement", "data": {"text": "hello"},
               "from": null, "room": "lobby", "seq": 1})
    );

    let (status, body) = post(addr, "/broadcast", r#"[1,2]"#).await;
    assert_eq!((status, body), (200, json!({"delivered": 1})));
    let msg = next_json(&mut ws).await;
    assert_eq!(
        (msg["event"].as_str(), &msg["data"]),
        (Some("broadcast"), &json!([1, 2]))
    );

    let (status, _) = post(addr, "/rooms/nowhere/announce", "1").await;
    assert_eq!(status, 404);
    let (status, _) = post(addr, "/rooms/lobby/announce", "{not json").await;
    assert_eq!(status, 400);

    let (status, _, body) = get(addr, "/stats").await;
    assert_eq!(status, 200);
    let stats: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(stats["connections"], 1);
    assert_eq!(stats["rooms"], json!(["lobby"]));

    // roomcast's own routes through the fallback service.
    let (status, _, body) = get(addr, "/healthz").await;
    assert_eq!((status, body.as_slice()), (200, &b"ok\n"[..]));

    // The app's shutdown closes the WebSocket with 1001.
    let _ = stop.send(());
    assert_eq!(expect_close(&mut ws).await, 1001);
    tokio::time::timeout(WAIT, server)
        .await
        .expect("server stopped in time")
        .unwrap()
        .unwrap();
}
