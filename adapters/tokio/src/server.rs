//! The standalone server: a TCP accept loop serving [`crate::RoomcastService`] over
//! HTTP/1.1 with upgrades, and the graceful shutdown the binary runs on SIGINT/SIGTERM.

use std::future::Future;
use std::io::{self, Read as _, Write as _};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, ToSocketAddrs};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::config::Config;
use crate::handle::Roomcast;
use crate::http::PeerAddr;
use crate::metrics::Metrics;

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
        let trim = Arc::new(HeapTrim::default());
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
            trim.handshake_started();
            let (trim, metrics) = (trim.clone(), metrics.clone());
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
                if pending.finish() == 0 {
                    trim.burst_over(&metrics);
                }
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

/// Hands the memory a burst of handshakes freed back to the OS.
///
/// Until it upgrades, every HTTP connection holds hyper's read and write buffers (8 KiB
/// and more each). After a burst of connections (a reconnect storm after a deploy; the
/// benchmark opens 128 at a time) glibc keeps those freed buffers resident, wedged
/// between the small allocations of the connections that stayed, so the RSS stays about
/// 12 KiB per concurrent handshake higher for good: 1.5 MB, or 1.5 KB per connection of
/// a 1k-connection server. Once at least `TRIM_AFTER` handshakes have come and gone and
/// none started for `TRIM_QUIET`, and no sooner than `TRIM_EVERY` after the last time,
/// `malloc_trim` returns whole free pages (off the async threads: it walks the heap).
#[derive(Debug, Default)]
struct HeapTrim {
    /// Handshakes started since the last trim.
    since_last: AtomicUsize,
    /// A trim is scheduled (at most one at a time).
    scheduled: AtomicBool,
    last: Mutex<Option<Instant>>,
}

/// Handshakes that make a burst worth trimming after.
const TRIM_AFTER: usize = 64;
/// How long no handshake may start before a burst counts as over.
const TRIM_QUIET: Duration = Duration::from_millis(100);
/// Least time between two trims, so a steady stream of connections does not walk the
/// heap over and over.
const TRIM_EVERY: Duration = Duration::from_secs(1);

impl HeapTrim {
    fn handshake_started(&self) {
        self.since_last.fetch_add(1, Ordering::Relaxed);
    }

    /// No handshake is pending any more: trim now, or once `TRIM_EVERY` has passed
    /// since the last trim if no new burst has started by then (its end trims).
    fn burst_over(self: &Arc<Self>, metrics: &Arc<Metrics>) {
        if self.since_last.load(Ordering::Relaxed) < TRIM_AFTER
            || self.scheduled.swap(true, Ordering::AcqRel)
        {
            return;
        }
        let (this, metrics) = (self.clone(), metrics.clone());
        tokio::spawn(async move {
            let last = *this.last.lock().unwrap_or_else(|e| e.into_inner());
            if let Some(t) = last {
                tokio::time::sleep_until(t + TRIM_EVERY).await;
            }
            // The burst is over once no handshake started for a while: a storm that
            // only paused would leave most of its garbage behind a trim made now.
            loop {
                let seen = this.since_last.load(Ordering::Relaxed);
                tokio::time::sleep(TRIM_QUIET).await;
                if metrics.pending_count() > 0 {
                    // Still going: the end of this burst schedules the trim again.
                    this.scheduled.store(false, Ordering::Release);
                    return;
                }
                if this.since_last.load(Ordering::Relaxed) == seen {
                    break;
                }
            }
            this.scheduled.store(false, Ordering::Release);
            this.since_last.store(0, Ordering::Relaxed);
            *this.last.lock().unwrap_or_else(|e| e.into_inner()) = Some(Instant::now());
            trim_heap();
        });
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn trim_heap() {
    // Off the async threads: it walks the whole heap.
    tokio::task::spawn_blocking(|| {
        // SAFETY: malloc_trim only releases free memory of glibc's own arenas; it has no
        // preconditions and is thread-safe.
        let released = unsafe { libc::malloc_trim(0) };
        debug!(released, "heap trimmed after a burst of handshakes");
    });
}

/// Other allocators give freed memory back on their own.
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn trim_heap() {}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn last(trim: &HeapTrim) -> Option<Instant> {
        *trim.last.lock().unwrap()
    }

    fn start(trim: &HeapTrim, n: usize) {
        for _ in 0..n {
            trim.handshake_started();
        }
    }

    /// Long enough for a scheduled trim's quiet period (paused time jumps there).
    async fn quiet() {
        tokio::time::sleep(TRIM_QUIET * 3).await;
    }

    #[tokio::test(start_paused = true)]
    async fn trims_after_a_quiet_burst_at_most_once_a_second() {
        let metrics = Arc::new(Metrics::default());
        let trim = Arc::new(HeapTrim::default());
        // A trickle is not a burst.
        start(&trim, TRIM_AFTER - 1);
        trim.burst_over(&metrics);
        quiet().await;
        assert_eq!(last(&trim), None);

        start(&trim, 1);
        trim.burst_over(&metrics);
        trim.burst_over(&metrics); // already scheduled: no second task
        quiet().await;
        let first = last(&trim).expect("trimmed after the burst");
        assert_eq!(trim.since_last.load(Ordering::Relaxed), 0);

        // The next burst ends at once: its trim waits out the second.
        start(&trim, TRIM_AFTER);
        trim.burst_over(&metrics);
        quiet().await;
        assert_eq!(last(&trim), Some(first));
        tokio::time::sleep(TRIM_EVERY).await;
        let second = last(&trim).expect("trimmed once the second passed");
        assert!(second >= first + TRIM_EVERY);

        // A burst that only paused: pending again when the quiet period ends, so the
        // trim is left to its real end.
        tokio::time::sleep(TRIM_EVERY).await;
        start(&trim, TRIM_AFTER);
        trim.burst_over(&metrics);
        let busy = metrics.try_pending(10).unwrap();
        quiet().await;
        assert_eq!(last(&trim), Some(second));
        assert_eq!(busy.finish(), 0);
        trim.burst_over(&metrics);
        quiet().await;
        assert!(last(&trim).unwrap() > second);
    }
}
