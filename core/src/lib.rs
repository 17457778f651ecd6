//! # roomcast-core
//!
//! The sans-IO heart of roomcast. (Crate docs with the run loop are completed in hub work.)
#![forbid(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod close;
pub mod connection;
pub mod frame;
pub mod handshake;
pub mod hash;
pub mod hub;
pub mod mask;
pub mod outgoing;
pub mod protocol;
pub mod ratelimit;
pub mod rng;
pub mod time;
pub mod utf8;

pub use hub::{ConnId, Hub, HubConfig, Output};
pub use outgoing::Outgoing;
pub use time::Timestamp;
