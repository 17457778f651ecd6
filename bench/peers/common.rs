//! What every Rust peer shares: `--bind ADDR`, the ready line, and exiting on a signal.
//!
//! Every Rust peer runs a single-threaded tokio runtime: the suite pins each server to
//! one core, where one thread is the best any of them can do.

use std::future::Future;

/// The value of `--bind` (default `127.0.0.1:0`).
pub fn bind_arg() -> String {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--bind")
        .and_then(|i| args.get(i + 1).cloned())
        .unwrap_or_else(|| "127.0.0.1:0".to_owned())
}

/// Builds a current-thread runtime, binds, prints `listening on http://ADDR`, and runs
/// `serve` on a `LocalSet` until SIGTERM or SIGINT.
pub fn run<F, Fut>(serve: F)
where
    F: FnOnce(tokio::net::TcpListener) -> Fut,
    Fut: Future<Output = ()> + 'static,
{
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::bind(bind_arg())
            .await
            .expect("bind");
        println!(
            "listening on http://{}",
            listener.local_addr().expect("addr")
        );
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            () = serve(listener) => {}
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    });
}
