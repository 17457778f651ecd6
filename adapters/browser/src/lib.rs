//! # roomcast-browser
//!
//! roomcast's reconnecting client for the browser, published to npm as `roomcast`.
//!
//! Everything that decides something (backoff with jitter, rejoining rooms with
//! `since`/`epoch`, de-duplicating replays, the offline queue, heartbeats, ack timeouts)
//! is the core's [`roomcast_core::client::Client`] machine, tested there with no I/O.
//! This crate only connects it to the browser, so browser users get exactly the
//! behaviour the simulation tests prove:
//! - `ClientOutput::Connect/Send/Close` become `WebSocket` calls; socket open, text
//!   message and close events go back in with the socket's id;
//! - one `setTimeout`, cleared and re-armed from `poll_timeout()` after every input;
//! - `performance.now()` is the clock and `crypto.getRandomValues` seeds the jitter;
//! - request ids become Promises, machine events become `on(...)` handlers.
//!
//! The JS API is [`RoomcastClient`] (wasm32 only). The JSON shapes it exchanges with
//! JavaScript live in [`glue`], which is portable so native builds test them.
#![warn(missing_docs)]

pub mod glue;

#[cfg(target_arch = "wasm32")]
mod web;

#[cfg(target_arch = "wasm32")]
pub use web::{RoomcastClient, RoomcastJoinOptions, RoomcastOptions};
