//! Where a deployment's application code plugs in (wasm32 only).
//!
//! [`hooks`] decides which [`EdgeHooks`] every hub of this Worker asks. By default that
//! is the HTTP backend of `ROOMCAST_PROXY_URL`, if set. To answer in Rust inside the
//! Worker instead (no network hop: a join refused or a publish rewritten within the
//! Durable Object), implement [`EdgeHooks`] and return it here; its `decides()` turns the
//! hub's hooks on. The host tests in `driver/tests.rs` drive such an implementation.

use std::rc::Rc;

use crate::hooks::EdgeHooks;
use crate::proxy::FetchHooks;
use crate::settings::Settings;

/// The application's hooks for this deployment, built once per Durable Object instance.
pub fn hooks(settings: &Settings) -> Option<Rc<dyn EdgeHooks>> {
    let proxy = settings.proxy.clone()?;
    Some(Rc::new(FetchHooks::new(proxy)))
}
