//! Well-behaved clients on tokio-tungstenite (4 KiB buffers, so thousands of them fit in
//! one test process), speaking docs/protocol.md's JSON.

use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use futures_util::{SinkExt, Stream, StreamExt};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A client connection.
pub type Ws = WebSocketStream<TcpStream>;

/// Why no JSON message was returned.
#[derive(Debug, Clone, PartialEq)]
pub enum WsEnd {
    /// The server sent a close frame: code and reason (None: no code).
    Closed(Option<(u16, String)>),
    /// The deadline passed.
    Timeout,
    /// The connection failed or ended without a close frame.
    Error(String),
}

impl WsEnd {
    /// The close code, if the server sent one.
    pub fn code(&self) -> Option<u16> {
        match self {
            WsEnd::Closed(Some((c, _))) => Some(*c),
            _ => None,
        }
    }
}

fn config() -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0)
        .max_message_size(Some(16 << 20))
}

/// Opens a client on `path` from source address `src`; `Err` on any failure.
pub async fn try_connect_from(src: IpAddr, addr: SocketAddr, path: &str) -> Result<Ws, String> {
    let stream = crate::connect_from(src, addr)
        .await
        .map_err(|e| format!("connect from {src}: {e}"))?;
    let url = format!("ws://{addr}{path}");
    let (ws, _) = tokio_tungstenite::client_async_with_config(url, stream, Some(config()))
        .await
        .map_err(|e| e.to_string())?;
    Ok(ws)
}

/// Opens a client on `path` and reads its `welcome` (panics on failure).
pub async fn connect(addr: SocketAddr, path: &str) -> (Ws, Value) {
    connect_from("127.0.0.1".parse().unwrap(), addr, path).await
}

/// Like [`connect`], from source address `src`.
pub async fn connect_from(src: IpAddr, addr: SocketAddr, path: &str) -> (Ws, Value) {
    let fut = async {
        let mut ws = try_connect_from(src, addr, path)
            .await
            .unwrap_or_else(|e| panic!("connect {path}: {e}"));
        let welcome = next_json(&mut ws, crate::WAIT)
            .await
            .unwrap_or_else(|e| panic!("no welcome: {e:?}"));
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        (ws, welcome)
    };
    tokio::time::timeout(crate::WAIT, fut)
        .await
        .expect("connected within the bound")
}

/// Sends one JSON message.
pub async fn send_json(ws: &mut Ws, v: &Value) {
    ws.send(Message::text(v.to_string()))
        .await
        .unwrap_or_else(|e| panic!("send {v}: {e}"));
}

/// The next JSON message before `deadline` (protocol pings and pongs are skipped;
/// tungstenite answers pings itself). Works on a [`Ws`] or its read half.
pub async fn next_json_until<S>(ws: &mut S, deadline: Instant) -> Result<Value, WsEnd>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        let m = match timeout_at(deadline, ws.next()).await {
            Err(_) => return Err(WsEnd::Timeout),
            Ok(None) => return Err(WsEnd::Error("stream ended".into())),
            Ok(Some(Err(e))) => return Err(WsEnd::Error(e.to_string())),
            Ok(Some(Ok(m))) => m,
        };
        match m {
            Message::Text(t) => {
                return Ok(serde_json::from_str(t.as_str())
                    .unwrap_or_else(|e| panic!("server sent non-JSON text ({e}): {t}")))
            }
            Message::Close(f) => {
                return Err(WsEnd::Closed(
                    f.map(|f| (u16::from(f.code), f.reason.to_string())),
                ))
            }
            Message::Ping(_) | Message::Pong(_) => {}
            other => return Err(WsEnd::Error(format!("unexpected message {other:?}"))),
        }
    }
}

/// The next JSON message within `within`.
pub async fn next_json<S>(ws: &mut S, within: Duration) -> Result<Value, WsEnd>
where
    S: Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    next_json_until(ws, Instant::now() + within).await
}

/// Sends `req` (which must carry an `id`) and returns the reply with that id; any other
/// message before it is handed to `other`.
pub async fn request(ws: &mut Ws, req: Value, mut other: impl FnMut(Value)) -> Value {
    let id = req["id"].clone();
    assert!(!id.is_null(), "request without id: {req}");
    send_json(ws, &req).await;
    let deadline = Instant::now() + crate::WAIT;
    loop {
        let m = next_json_until(ws, deadline)
            .await
            .unwrap_or_else(|e| panic!("no reply to {req}: {e:?}"));
        if m["id"] == id && matches!(m["type"].as_str(), Some("ack" | "error" | "pong")) {
            return m;
        }
        other(m);
    }
}

/// Reads until the server's close frame (skipping everything else) within `within`.
pub async fn closed(ws: &mut Ws, within: Duration) -> WsEnd {
    let deadline = Instant::now() + within;
    loop {
        match next_json_until(ws, deadline).await {
            Ok(_) => continue,
            Err(e) => return e,
        }
    }
}
