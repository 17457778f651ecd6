//! roomcast on its real JSON protocol, for the benchmark suite: the `roomcast` binary's
//! server (`roomcast_tokio::Server`, same multi-thread runtime, `/ws`) with two limits
//! moved out of the benchmark's way, because the binary has no flag for them:
//!
//! - the per-connection request rate limit (default 200/s, bursts of 500): a publisher
//!   that saturates the server, or a chat client sending 1600 messages a round, is far
//!   above it;
//! - the unsent-output budget per connection (default 1 MiB): raised to 16 MiB, Bun's
//!   default backpressure limit, so a chat round (every client receives C × 1600 frames
//!   at once) is not cut by slow-consumer closes the other peers do not have.
//!
//! Everything else is the default configuration. Prints `listening on http://ADDR`.

#[path = "common.rs"]
#[allow(dead_code)]
mod common;

use roomcast_core::ratelimit::RateLimit;

/// The allocator the `roomcast` binary uses.
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;
use roomcast_tokio::{Config, Server};

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async {
        let mut config = Config::default();
        config.hub.rate_limit = RateLimit {
            burst: u32::MAX / 1000,
            per_second: u32::MAX / 1000,
            grace_ms: u64::MAX / 4,
        };
        config.hub.max_buffered_bytes = 16 << 20;
        let server = Server::bind(common::bind_arg(), config)
            .await
            .expect("bind");
        println!("listening on http://{}", server.local_addr());
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        server
            .run_until(async move {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            })
            .await;
    });
}
