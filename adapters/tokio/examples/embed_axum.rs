//! Mounting roomcast in an existing axum application.
//!
//! Your app keeps its own routes; roomcast adds the WebSocket endpoint and your handlers
//! drive the hub (send to rooms, channels, users or everyone; create rooms; read stats)
//! through `Roomcast::call`, which runs a closure on the hub's own task: no lock.
//!
//! ```text
//! cargo run -p roomcast-tokio --example embed_axum -- 127.0.0.1:3000
//! # a client:      ws://127.0.0.1:3000/ws?user=ada, then {"type":"join","room":"lobby"}
//! # your backend:  curl -X POST 127.0.0.1:3000/rooms/lobby/announce -d '{"text":"hello"}'
//! #                curl 127.0.0.1:3000/stats
//! ```

use std::io;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use roomcast_tokio::{Config, HubError, RoomOptions, Roomcast};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// The application: its own routes plus roomcast's.
pub fn app(rc: Roomcast) -> Router {
    Router::new()
        // The WebSocket endpoint, on a route of our choosing.
        .route_service("/ws", rc.ws_handler())
        // Our backend's own API, using the hub.
        .route("/rooms/{room}/announce", post(announce))
        .route("/broadcast", post(broadcast))
        .route("/stats", get(stats))
        // Everything else (/healthz, /metrics, static files) from roomcast's service.
        .fallback_service(rc.service())
        .with_state(rc)
}

type ApiResult = Result<Json<Value>, (StatusCode, String)>;

fn raw_json(body: String) -> Result<Box<RawValue>, (StatusCode, String)> {
    RawValue::from_string(body)
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("invalid JSON: {e}\n")))
}

fn unavailable(e: roomcast_tokio::CallError) -> (StatusCode, String) {
    (StatusCode::SERVICE_UNAVAILABLE, format!("{e}\n"))
}

/// Sends the request body (any JSON) to a room as an `announcement` event from the server.
async fn announce(State(rc): State<Roomcast>, Path(room): Path<String>, body: String) -> ApiResult {
    let data = raw_json(body)?;
    let delivery = rc
        .call(move |hub, now| hub.send_to_room(now, &room, "announcement", Some(&data), &[]))
        .await
        .map_err(unavailable)?;
    match delivery {
        Ok(d) => Ok(Json(json!({"delivered": d.delivered, "seq": d.seq}))),
        Err(HubError::UnknownRoom) => Err((StatusCode::NOT_FOUND, "no such room\n".into())),
        Err(e) => Err((StatusCode::BAD_REQUEST, format!("{e}\n"))),
    }
}

/// Sends the request body to every connection.
async fn broadcast(State(rc): State<Roomcast>, body: String) -> ApiResult {
    let data = raw_json(body)?;
    let d = rc
        .call(move |hub, now| hub.broadcast(now, "broadcast", Some(&data), &[]))
        .await
        .map_err(unavailable)?
        .map_err(|e| (StatusCode::BAD_REQUEST, format!("{e}\n")))?;
    Ok(Json(json!({"delivered": d.delivered})))
}

/// The hub's counts, plus the rooms that exist.
async fn stats(State(rc): State<Roomcast>) -> ApiResult {
    let (s, rooms) = rc
        .call(|hub, _now| {
            let rooms: Vec<String> = hub.rooms().map(str::to_owned).collect();
            (hub.stats(), rooms)
        })
        .await
        .map_err(unavailable)?;
    Ok(Json(json!({
        "connections": s.connections,
        "rooms": rooms,
        "users": s.users,
        "messages_in": s.messages_in,
        "messages_out": s.messages_out,
    })))
}

/// Serves the app on `listener` until `shutdown` completes, then closes every
/// WebSocket with 1001.
pub async fn serve(
    listener: TcpListener,
    rc: Roomcast,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    // A room that exists before anyone joins it (clients may create others by joining).
    rc.call(|hub, now| hub.create_room(now, "lobby", RoomOptions::default()))
        .await
        .map_err(io::Error::other)?
        .map_err(io::Error::other)?;
    let closer = rc.clone();
    axum::serve(listener, app(rc))
        .with_graceful_shutdown(async move {
            shutdown.await;
            closer.shutdown().await;
        })
        .await
}

#[tokio::main]
async fn main() -> io::Result<()> {
    let addr = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "127.0.0.1:3000".to_owned());
    let listener = TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let rc = Roomcast::new(Config::default());
    serve(listener, rc, async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await
}
