//! Identity and rights: signed tokens (JWT) checked against the hub's own clock, the
//! grants they carry, and room tokens.
//!
//! With no key configured nothing here runs and identity is the open default (`?user=`
//! taken at face value). With a key, every connection proves who it is with a token:
//! [`Verifier::connection`] checks the signature (the `jsonwebtoken` crate does that; we
//! never hand-check a signature), then `exp`/`nbf` against the hub's clock, then the
//! claims. [`Caps`] says what a connection may do; [`Verifier::room`] checks the room
//! tokens that open private rooms. PROTOCOL.md ("Identity", "Authorization") is the
//! contract; `docs/security.md` the threat model.

mod caps;
mod demo;
mod keys;
mod settings;
mod verify;

pub use caps::{Caps, CapsError, Grant, Op, Ops, Pattern, Scope};
pub use demo::{demo_token_answer, DemoAnswer, DemoTokenError, DemoTokens};
pub use keys::{KeyError, KeySet, MIN_SECRET_LEN};
pub use settings::{AuthSettings, AuthSettingsError};
pub use verify::{AuthConfig, AuthError, Identity, RoomGrant, Verifier, MAX_INFO_LEN, MAX_LEEWAY};
