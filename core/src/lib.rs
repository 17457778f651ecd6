//! # roomcast-core
//!
//! The sans-IO heart of roomcast: every decision about WebSocket framing, who receives a
//! message, when a connection is dead and what a bad request gets is made here, once,
//! and shared by the native server (tokio), the Cloudflare Durable Object and the
//! browser client. Nothing in this crate touches a socket, reads a clock, spawns a
//! thread or draws ambient randomness: bytes, messages and the current time go in;
//! bytes to send, closes, events and the next deadline come out. That is what lets the
//! same code run on wasm32, survive Durable Object hibernation, and be tested by a
//! deterministic simulation instead of sleeps.
//!
//! Three machines:
//! - [`connection::Connection`]: RFC 6455 frames in both roles (bytes ↔ messages), with
//!   the handshake in [`handshake`]. Used natively; workerd and browsers frame for us.
//! - [`Hub`]: rooms, channels, users, the JSON protocol, heartbeats and limits
//!   (messages ↔ routing). Used by every server runtime.
//! - [`client::Client`]: the reconnecting client (backoff, rejoin with recovery, offline
//!   queue, heartbeat), used by the browser package and the native client.
//!
//! ## Every input, in one place
//!
//! Each machine takes inputs through `handle*` methods and is drained with `poll_*`.
//! After any input: drain `poll_output`/`poll_event`/`poll_transmit` until `None`, then
//! read `poll_timeout()` and arm one timer for it. Nothing happens between inputs.
//!
//! - [`Hub`], all through [`Hub::handle`]`(now, `[`Input`]`)` (the `handle_*` methods
//!   are the same inputs one by one):
//!   - the socket's life: `Connect`, `Text`, `Binary`, `Activity` (any frame proves the
//!     peer alive), `Flushed` (bytes reached the socket: the slow-consumer budget),
//!     `Closed`;
//!   - time and batching: `Timeout` (the deadline of `poll_timeout` passed), `EndBatch`
//!     (held room messages go out; only with `coalesce_room_messages`);
//!   - the application: `Decided` (an answer to [`Output::Decide`], with hooks), and the
//!     server API's mutations (`Join`, `Leave`, `LeaveAll`, `Subscribe`, `Unsubscribe`,
//!     `CreateRoom`, `RemoveRoom`, `CreateChannel`, `LinkRoom`, `UnlinkRoom`, `Send`,
//!     `SendRaw`, `Disconnect`, `SetMetadata`, `Shutdown`);
//!   - a backplane (several nodes): `Remote`, `Appended`, `Logged`, `Loaded`,
//!     `LoadFailed`, `BackplaneResync`, `Control`.
//!
//!   Outputs come from [`Hub::poll_output`] ([`Output`]); reads that change nothing
//!   (stats, members, history) are plain `&self` methods.
//! - [`connection::Connection`]: `handle_read(bytes)` and the `send_*` / `close`
//!   calls; out come [`connection::WsEvent`]s (`poll_event`) and whole frames to write
//!   (`poll_transmit`). It has no timers: the hub owns heartbeats.
//! - [`client::Client`]: `handle_open`, `handle_message`, `handle_close`,
//!   `handle_token`, `handle_timeout` and the requests (`join`, `leave`, `publish`,
//!   ...); out come [`client::ClientOutput`]s (`poll_output`) and `poll_timeout`.
//!
//! ## The byte path, natively
//!
//! Natively the bytes of a socket go through a [`connection::Connection`] before the hub
//! sees a message, and the hub's outputs go back through it:
//!
//! ```
//! use roomcast_core::connection::{Connection, ConnectionConfig, WsEvent};
//! use roomcast_core::hub::ConnectRequest;
//! use roomcast_core::rng::Rng;
//! use roomcast_core::{Hub, HubConfig, Output, Timestamp};
//!
//! let mut hub = Hub::new(HubConfig::default(), [7; 32], Timestamp(0));
//! let mut server_side = Connection::server(ConnectionConfig::default());
//! let id = hub.connect(Timestamp(0), ConnectRequest::default()).unwrap();
//!
//! // What a browser would put on the wire (a masked client frame).
//! let mut browser = Connection::client(ConnectionConfig::default(), Rng::from_u64(1));
//! browser.send_text(r#"{"type":"ping","id":"1"}"#).unwrap();
//! let wire = browser.poll_transmit().unwrap();
//!
//! // socket read → frames → messages → hub
//! server_side.handle_read(&wire);
//! while let Some(ev) = server_side.poll_event() {
//!     match ev {
//!         WsEvent::Text(t) => { hub.handle_text(Timestamp(1), id, t.as_str()).unwrap(); }
//!         _ => { hub.handle_activity(Timestamp(1), id).unwrap(); }
//!     }
//! }
//! // hub → frames → socket write (a room message's frame is shared by every member)
//! while let Some(out) = hub.poll_output() {
//!     if let Output::Send { conn, msg } = out {
//!         assert_eq!(conn, id);
//!         server_side.send_outgoing(&msg).unwrap();
//!         hub.handle_flushed(conn, msg.wire_len()).unwrap();
//!     }
//! }
//! while let Some(bytes) = server_side.poll_transmit() {
//!     browser.handle_read(&bytes);
//! }
//! let mut got = Vec::new();
//! while let Some(WsEvent::Text(t)) = browser.poll_event() {
//!     got.push(t.as_str().to_owned());
//! }
//! assert!(got[0].contains(r#""type":"welcome""#));
//! assert!(got[1].contains(r#""type":"pong""#));
//! ```
//!
//! ## The run loop
//!
//! Feed an input, drain every output, then arm one timer for `poll_timeout()`:
//!
//! ```
//! use roomcast_core::hub::{ConnectRequest, DisconnectReason};
//! use roomcast_core::{Hub, HubConfig, Output, Timestamp};
//!
//! let mut hub = Hub::new(HubConfig::default(), [42; 32], Timestamp(0));
//! let alice = hub.connect(Timestamp(0), ConnectRequest::default()).unwrap();
//! let bob = hub.connect(Timestamp(0), ConnectRequest::default()).unwrap();
//!
//! // 1. handle an input (here: text messages the adapter decoded)
//! hub.handle_text(Timestamp(5), alice, r#"{"type":"join","room":"lobby"}"#).unwrap();
//! hub.handle_text(Timestamp(6), bob, r#"{"type":"join","room":"lobby"}"#).unwrap();
//! hub.handle_text(Timestamp(7), alice,
//!     r#"{"type":"publish","room":"lobby","event":"say","data":"hi"}"#).unwrap();
//!
//! // 2. drain outputs until None
//! let mut to_bob = Vec::new();
//! while let Some(out) = hub.poll_output() {
//!     match out {
//!         Output::Send { conn, msg } => {
//!             // native: write msg.frame() to the socket; elsewhere send msg.text()
//!             if conn == bob { to_bob.push(msg.text().to_owned()); }
//!             hub.handle_flushed(conn, msg.wire_len()).unwrap();
//!         }
//!         Output::SendFrames { conn, frames } => {
//!             // only with `coalesce_room_messages` (then call `hub.flush()` after each
//!             // batch of inputs): several room messages, one write of frames.bytes()
//!             hub.handle_flushed(conn, frames.wire_len()).unwrap();
//!         }
//!         Output::Ping { .. } => { /* send a WebSocket ping */ }
//!         Output::Close { conn, .. } => {
//!             // send the close frame, drop the socket, then report it:
//!             hub.handle_disconnect(Timestamp(7), conn, DisconnectReason::Closed { code: None }).unwrap();
//!         }
//!         Output::Decide(d) => {
//!             // only with hooks on: ask the application, then (later) answer
//!             hub.handle_decision(Timestamp(7), d.ticket, roomcast_core::hub::Answer::allow()).unwrap();
//!         }
//!         // only with a backplane (several nodes): carry these to it
//!         Output::Append(_) | Output::Load(_) | Output::Forward(_) | Output::Control(_) => {}
//!         Output::Event(_) => {}
//!     }
//! }
//! assert!(to_bob.last().unwrap().contains(r#""data":"hi""#));
//!
//! // 3. arm one timer for the next deadline; call handle_timeout when it fires
//! if let Some(deadline) = hub.poll_timeout() {
//!     hub.handle_timeout(deadline);
//! }
//! ```
//!
//! The order matters only in one way: outputs reflect every input handled so far, and
//! `poll_timeout()` is level state, valid after the outputs are drained. Handling an
//! input never blocks and never fails because of what a peer sent: peer faults become
//! `error` replies or [`Output::Close`]; `Err` means the caller passed an unknown id.
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod api;
pub mod auth;
pub mod client;
pub mod close;
pub mod connection;
mod frame;
pub mod handshake;
mod hash;
pub mod hub;
mod mask;
pub mod outgoing;
pub mod protocol;
mod ratelimit;
pub mod rng;
pub mod time;
mod utf8;
pub mod values;

pub use hub::{ConnId, Hub, HubConfig, Input, Output};
pub use outgoing::{FrameBatch, Frames, Outgoing};
pub use time::Timestamp;

/// Implementation details the fuzz targets drive directly (frame headers, masking,
/// UTF-8 validation). Not part of the API: enabled by the `fuzzing` feature only.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::frame::{decode_header, encode_header, MAX_HEADER_LEN};
    pub use crate::mask::apply_mask;
    pub use crate::utf8::Utf8Validator;
}
