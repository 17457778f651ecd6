//! The standalone server: a TCP accept loop serving [`crate::RoomcastService`] over
//! HTTP/1.1 with upgrades, and the graceful shutdown the binary runs on SIGINT/SIGTERM.

use std::future::Future;
use std::io::{self, Read as _, Write as _};
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

/// Largest request head accepted, request line and headers (cookies included): the
/// core parser's bound, 8 KiB (docs/security.md). A longer head, finished or not, gets
/// 431 from hyper and the connection is closed.
const MAX_HEAD: usize = roomcast_core::handshake::DEFAULT_MAX_HEADER_BYTES;
/// hyper's per-connection read buffer. A head is refused once it passes `MAX_HEAD`
/// whatever this is; it only has to hold one whole request head plus what a client may
/// pipeline behind it (a WebSocket client's first frames after the upgrade request).
const MAX_BUF: usize = 64 * 1024;
/// What a TCP connection accepted past `Config::max_pending_handshakes` gets before it
/// is closed, written once without waiting.
const BUSY_RESPONSE: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: text/plain; charset=utf-8\r\n\
content-length: 14\r\n\
connection: close\r\n\
retry-after: 1\r\n\
\r\n\
server is busy";
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
        let config = rc.config();
        let max_pending = config.max_pending_handshakes;
        let mut builder = http1::Builder::new();
        builder
            .timer(TokioTimer::new())
            .header_read_timeout(config.handshake_timeout)
            .max_header_size(MAX_HEAD)
            .max_buf_size(MAX_BUF)
            .keep_alive(true);
        let metrics = rc.shared.metrics.clone();
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
            // Every connection is pending until it upgrades (or for its whole life if it
            // never does): bounded in number here, in time by the handshake timeout.
            let Some(pending) = metrics.try_pending(max_pending) else {
                refuse_busy(stream, peer);
                continue;
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
                let result = {
                    tokio::pin!(conn);
                    tokio::select! {
                        r = conn.as_mut() => r,
                        () = async { let _ = stop.wait_for(|s| *s).await; } => {
                            conn.as_mut().graceful_shutdown();
                            conn.await
                        }
                    }
                };
                // Upgraded (the socket now belongs to the WebSocket task) or closed: only
                // now is the connection no longer pending.
                drop(pending);
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

/// Answers a connection over the pending-handshake bound with a 503 and closes it, all
/// with non-blocking calls on the accept loop: no task, no buffer, no waiting on the
/// peer. The reply is best effort (a fresh socket's send buffer takes it whole); what the
/// peer already sent is read and discarded first so that the close is a FIN after the
/// reply rather than a reset that could destroy it.
fn refuse_busy(stream: tokio::net::TcpStream, peer: SocketAddr) {
    debug!(%peer, "too many pending handshakes: refused with 503");
    let Ok(mut stream) = stream.into_std() else {
        return;
    };
    let mut scratch = [0u8; 1024];
    for _ in 0..8 {
        match stream.read(&mut scratch) {
            Ok(n) if n > 0 => {}
            _ => break,
        }
    }
    let _ = stream.write(BUSY_RESPONSE);
    let _ = stream.shutdown(std::net::Shutdown::Write);
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
