//! # roomcast-worker
//!
//! roomcast on Cloudflare: the Worker routes `/hub/{name}/ws` to the Durable Object
//! named `name` (one hub per name, placed near its first user) and leaves every other
//! path to the static assets of `www/`. The Durable Object runs the same core
//! [`roomcast_core::Hub`] as the native server; workerd does the WebSocket framing, so
//! messages go straight into the hub, and the WebSocket Hibernation API lets an idle hub
//! leave memory while its clients stay connected.
//!
//! Layout, so that everything but the thin platform glue is tested on the host:
//! - [`route`]: which requests are hub sockets, and the hub's name;
//! - [`settings`]: the deployment's hub configuration from Worker variables;
//! - [`attachment`]: what each hibernatable socket carries (tag, snapshot);
//! - [`hooks`]: the application's decisions (the [`hooks::EdgeHooks`] trait);
//! - [`driver`]: the run loop: inputs in, outputs to sockets, state to attachments and
//!   storage, and the rebuild after an eviction;
//! - `edge` (wasm32 only): the `fetch` entry point, the Durable Object, and the
//!   [`driver::Sockets`] / [`driver::Store`] implementations over workerd's sockets and
//!   SQLite storage;
//! - `proxy` and `app` (wasm32 only): the hooks of `ROOMCAST_PROXY_URL` over `fetch`, and
//!   the one function to edit to compile the application's own hooks in.
#![warn(missing_docs)]

pub mod attachment;
pub mod driver;
pub mod hooks;
pub mod route;
pub mod settings;

#[cfg(target_arch = "wasm32")]
mod app;
#[cfg(target_arch = "wasm32")]
mod edge;
#[cfg(target_arch = "wasm32")]
mod proxy;
