//! The standalone server: a TCP accept loop serving [`crate::RoomcastService`] over
//! HTTP/1.1 with upgrades, and the graceful shutdown the binary runs on SIGINT/SIGTERM.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::http::PeerAddr;
use crate::hub_task::Roomcast;

/// How long a client may take to send a request head (slowloris bound).
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// Largest request head buffered (cookies included).
const MAX_HEAD: usize = 64 * 1024;
/// Pause after an accept error such as running out of file descriptors, so the loop
/// does not spin while the condition lasts.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(50);

/// Why the server could not start or run.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Binding the listening socket failed (address in use, permission, bad address).
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// What we tried to bind.
        addr: String,
        /// The OS error.
        source: io::Error,
    },
    /// The listener has no local address (should not happen for TCP).
    #[error("cannot read the listening address: {0}")]
    LocalAddr(io::Error),
}

/// A bound roomcast server: [`Server::bind`], print [`Server::local_addr`], then
/// [`Server::run_until`] a shutdown signal.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    local_addr: SocketAddr,
    rc: Roomcast,
}

impl Server {
    /// Binds `addr` (port 0 picks a free port: read it back with
    /// [`Server::local_addr`]) and starts the hub.
    pub async fn bind(
        addr: impl ToSocketAddrs + std::fmt::Display,
        config: Config,
    ) -> Result<Server, ServerError> {
        let listener = TcpListener::bind(&addr)
            .await
            .map_err(|source| ServerError::Bind {
                addr: addr.to_string(),
                source,
            })?;
        Server::from_listener(listener, config)
    }

    /// Serves on a listener you bound yourself.
    pub fn from_listener(listener: TcpListener, config: Config) -> Result<Server, ServerError> {
        let local_addr = listener.local_addr().map_err(ServerError::LocalAddr)?;
        Ok(Server {
            listener,
            local_addr,
            rc: Roomcast::new(config),
        })
    }

    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The hub handle, for server-side operations while the server runs.
    pub fn roomcast(&self) -> &Roomcast {
        &self.rc
    }

    /// Serves until `signal` completes, then shuts down gracefully: stops accepting,
    /// closes every WebSocket with 1001 after flushing it, finishes in-flight HTTP
    /// requests, and returns within about `Config::shutdown_timeout`.
    pub async fn run_until(self, signal: impl Future<Output = ()>) {
        let Server { listener, rc, .. } = self;
        let (stop_http, http_stopped) = watch::channel(false);
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            .max_buf_size(MAX_HEAD)
            .keep_alive(true);
        tokio::pin!(signal);
        loop {
            let (stream, peer) = tokio::select! {
                biased;
                () = &mut signal => break,
                accepted = listener.accept() => match accepted {
                    Ok(a) => a,
                    Err(e) => {
                        warn!("accept failed: {e}");
                        tokio::time::sleep(ACCEPT_BACKOFF).await;
                        continue;
                    }
                },
            };
            // Small frames (acks, pongs) must not wait for Nagle.
            let _ = stream.set_nodelay(true);
            let service = PeerService {
                inner: rc.service(),
                peer,
            };
            let conn = builder
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            let mut stop = http_stopped.clone();
            tokio::spawn(async move {
                tokio::pin!(conn);
                let result = tokio::select! {
                    r = conn.as_mut() => r,
                    () = async { let _ = stop.wait_for(|s| *s).await; } => {
                        conn.as_mut().graceful_shutdown();
                        conn.await
                    }
                };
                if let Err(e) = result {
                    debug!(%peer, "http connection ended: {e}");
                }
            });
        }
        drop(listener);
        info!("stopped accepting connections");
        stop_http.send_replace(true);
        let clean = rc.shutdown().await;
        if clean {
            info!("every connection closed; bye");
        } else {
            warn!(
                remaining = rc.open_sockets(),
                "shutdown bound reached with connections still closing; dropping them"
            );
        }
    }
}

/// Adds the peer address to each request so the hub can record it.
#[derive(Clone)]
struct PeerService {
    inner: crate::http::RoomcastService,
    peer: SocketAddr,
}

impl hyper::service::Service<http::Request<hyper::body::Incoming>> for PeerService {
    type Response = <crate::http::RoomcastService as hyper::service::Service<
        http::Request<hyper::body::Incoming>,
    >>::Response;
    type Error = std::convert::Infallible;
    type Future = crate::http::ResponseFuture;

    fn call(&self, mut req: http::Request<hyper::body::Incoming>) -> Self::Future {
        req.extensions_mut().insert(PeerAddr(self.peer));
        self.inner.call(req)
    }
}
