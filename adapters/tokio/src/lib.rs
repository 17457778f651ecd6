//! # roomcast-tokio
//!
//! The native roomcast runtime: the sans-IO [`roomcast_core`] driven by tokio sockets and a
//! hyper HTTP server. Everything that decides something (routing, limits, heartbeat, close
//! codes, handshake answers) lives in the core; this crate only moves bytes, messages and
//! time in and out, so the native server behaves exactly like every other runtime.
//!
//! Three ways to use it:
//!
//! - the `roomcast` binary (`roomcast --help`): a ready server with static files,
//!   `/healthz` and `/metrics`;
//! - [`Server`]: the same server from Rust (`Server::bind(addr, config)` then
//!   [`Server::run_until`]);
//! - [`Roomcast`]: mount the WebSocket endpoint in your own axum or hyper application with
//!   [`Roomcast::ws_handler`] and drive the hub from your own handlers with
//!   [`Roomcast::call`] (send to rooms, channels, users, everyone; create rooms; stats).
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use roomcast_tokio::{Config, Roomcast};
//!
//! let rc = Roomcast::new(Config::default());
//! // axum: Router::new().route_service("/ws", rc.ws_handler())
//! let delivered = rc
//!     .call(|hub, now| hub.broadcast(now, "news", None, &[]).map(|d| d.delivered))
//!     .await??;
//! # let _ = delivered; Ok(()) }
//! ```
//!
//! And [`client`] is a native WebSocket client built on the core's client role.
//!
//! ## Run loop
//!
//! One task owns the [`Hub`] (no lock around it): socket tasks send it commands over a
//! bounded channel, it drains every ready command, calls [`Hub::flush`] so the room
//! messages of that batch reach each member as one burst, re-arms a single timer set from
//! [`Hub::poll_timeout`], and appends each output to the receiver's outbox, waking its
//! socket task only when the outbox was empty. The hub bounds what is unsent in bytes
//! itself (slow consumers are closed with 1013), fed by the flush reports socket tasks send
//! after their writes. Each socket task owns its core
//! [`roomcast_core::connection::Connection`] and writes everything pending in one write:
//! a room message is encoded once whatever the room size, and a burst of them is one
//! shared buffer for every member.
#![warn(missing_docs)]

pub mod client;
mod clock;
mod commands;
mod config;
mod handle;
pub mod hooks;
mod http;
mod hub_task;
mod io;
mod metrics;
mod outbox;
pub mod proxy;
pub mod reconnecting;
mod redis_backplane;
mod responses;
mod server;
mod shutdown;
mod socket;
mod statics;

pub use config::{heartbeat_for, ApiKey, Config, BENCH_ROOM};
pub use handle::{CallError, Roomcast};
pub use hooks::{Caller, HookFuture, Hooks, PublishRequest};
pub use http::{PeerAddr, RoomcastService, WsHandler};
pub use proxy::{ProxyHook, ProxyHooks};
pub use redis_backplane::RedisConfig;
pub use server::{Server, ServerError};

/// The core crate, re-exported so embedders use the exact version this adapter speaks.
pub use roomcast_core as core;
pub use roomcast_core::hub::{
    Answer, ConnId, ConnectRequest, Delivery, DisconnectReason, Event, HookConfig, Hub, HubConfig,
    HubError, RoomOptions, Stats,
};
/// What presence a join asks for (`ReconnectingClient::join` takes a `bool` or this).
pub use roomcast_core::protocol::Presence;
