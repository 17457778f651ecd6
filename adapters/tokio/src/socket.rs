//! One task per upgraded WebSocket: bytes from the socket into the core `Connection`,
//! messages from it to the hub, and the hub's frames back out in vectored writes.
//!
//! The task owns the connection state machine outright, so reading, answering pings and
//! writing never need a lock. It waits on three things at once (socket readable, hub
//! queue, socket writable) so a peer that stops reading never stops us from reading, and
//! a slow write never delays reacting to the hub. Closing is bounded everywhere: our
//! close frame and what precedes it get `close_timeout` to leave, the peer's answer a
//! little more, and then the TCP connection is dropped regardless.

use std::future::poll_fn;
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use roomcast_core::close::code;
use roomcast_core::connection::{Connection, ConnectionConfig, SendError, State, WsEvent};
use roomcast_core::hub::{ConnId, DisconnectReason, HubConfig};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, timeout_at, Instant};
use tracing::{debug, error, trace};

use crate::commands::{Command, SocketGuard};
use crate::io::{poll_read_into, Abort, OutQueue, SharedWriter};
use crate::metrics::Metrics;
use crate::outbox::{OutboxRx, Piece, Taken, Unreported};
use crate::shutdown::ShutdownWait;
use std::sync::Arc;

/// After our close frame is written, how long we wait for the peer's close frame before
/// dropping the TCP connection ourselves (it may be dead: that is often why we close).
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// After we shut our side down, how long we keep reading (and discarding) so unread
/// input does not turn our FIN into a RST that could destroy the close frame in flight.
const LINGER: Duration = Duration::from_secs(1);

/// What a socket task needs besides its peer.
pub(crate) struct SocketParams {
    pub(crate) conn_config: ConnectionConfig,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) close_timeout: Duration,
    /// Least time between two liveness reports that carry no message.
    pub(crate) activity_every: Duration,
    /// Written hub bytes are reported once at least this many accumulate.
    pub(crate) flush_report_min: usize,
    /// The hub task may write to idle hub sockets itself (`OutboxRx::attach`): on a
    /// one-thread runtime, where handing the write to the socket task only adds a wake-up
    /// and a poll. On more threads the socket tasks' writes spread over them instead.
    pub(crate) direct_writes: bool,
}

/// Liveness reports go to the hub often enough that a peer answering every ping is never
/// reaped, and no more: a peer streaming one huge message does not flood the hub.
pub(crate) fn activity_every(hub: &HubConfig) -> Duration {
    Duration::from_millis(hub.heartbeat.interval_ms / 2)
        .clamp(Duration::from_millis(1), Duration::from_secs(1))
}

/// Flush reports are batched: one per write would double the hub's command load under
/// fan-out (every delivery answered by a report). Holding back less than 1/16 of the
/// budget (at most 16 KiB) only makes the hub see a connection as that much slower than
/// it is, which never closes a consumer that keeps up.
pub(crate) fn flush_report_min(hub: &HubConfig) -> usize {
    (hub.max_buffered_bytes / 16).clamp(1, 16 * 1024)
}

/// Who the socket talks to.
pub(crate) enum Mode {
    /// A hub connection.
    Hub {
        conn: ConnId,
        commands: mpsc::Sender<Command>,
        rx: OutboxRx,
        /// The benchmark protocol's room socket: texts go to the hub as `BenchText`.
        bench: bool,
    },
    /// Conformance echo: messages go straight back; `shutdown` completes on server
    /// shutdown.
    Echo { shutdown: ShutdownWait },
}

/// Waits for hyper to hand over the upgraded socket, then serves it.
pub(crate) async fn serve(
    on_upgrade: OnUpgrade,
    mode: Mode,
    params: Arc<SocketParams>,
    guard: SocketGuard,
) {
    match on_upgrade.await {
        // The connection's long-lived task is exactly the socket loop, spawned fresh: none
        // of this handshake-phase state stays in the memory of every idle connection.
        Ok(upgraded) => match upgraded.downcast::<TokioIo<TcpStream>>() {
            // The common case (our own server, axum with http1) is a plain TCP stream:
            // take it back from hyper for split halves without locks and true vectored
            // writes.
            Ok(parts) => {
                let (r, w) = parts.io.into_inner().into_split();
                match &mode {
                    Mode::Hub { rx, .. } if params.direct_writes => {
                        let w = Arc::new(w);
                        rx.attach(w.clone());
                        let w = SharedWriter(w);
                        tokio::spawn(run_guarded(r, w, parts.read_buf, mode, params, guard));
                    }
                    _ => {
                        tokio::spawn(run_guarded(r, w, parts.read_buf, mode, params, guard));
                    }
                }
            }
            Err(upgraded) => {
                let (r, w) = tokio::io::split(TokioIo::new(upgraded));
                tokio::spawn(run_guarded(r, w, Bytes::new(), mode, params, guard));
            }
        },
        Err(e) => {
            debug!("upgrade failed: {e}");
            if let Mode::Hub { conn, commands, .. } = mode {
                let reason = DisconnectReason::Closed {
                    code: Some(code::ABNORMAL),
                };
                let _ = commands.send(Command::Disconnect { conn, reason }).await;
            }
            drop(guard);
        }
    }
}

async fn run_guarded<R, W>(
    reader: R,
    writer: W,
    early: Bytes,
    mode: Mode,
    params: Arc<SocketParams>,
    guard: SocketGuard,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Abort,
{
    run(reader, writer, early, mode, params).await;
    drop(guard);
}

/// How the socket loop ended.
enum Ending {
    /// The closing handshake completed or the connection failed: flush and close.
    Finished,
    /// The peer's TCP connection ended (or failed) without a closing handshake.
    Vanished,
    /// Our close was not answered (or could not be written) in time.
    TimedOut,
}

/// A command waiting for room in the hub's queue.
type HubWait = std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>;

struct Socket {
    conn: Connection,
    out: OutQueue,
    hub: Option<(ConnId, mpsc::Sender<Command>)>,
    /// The benchmark protocol's room socket (`Config::bench_protocol`).
    bench: bool,
    params: Arc<SocketParams>,
    /// Close code we sent first, and the one the peer sent, for metrics and the hub.
    our_code: Option<u16>,
    peer_code: Option<Option<u16>>,
    failed: Option<u16>,
    /// Once we started closing: the bound for the whole closing handshake.
    close_deadline: Option<Instant>,
    /// Once our close frame is written: the bound for the peer's reply.
    reply_deadline: Option<Instant>,
    last_activity: Instant,
    /// Hub bytes written but not yet reported.
    unreported: Unreported,
}

impl Socket {
    /// Queues a command for the hub. `Some` only when the hub's queue is full: then the
    /// caller awaits the returned wait (TCP backpressure on this peer). Boxed, because it
    /// is rare and its state would otherwise sit in every idle connection's task.
    fn send_hub(&self, cmd: Command) -> Option<HubWait> {
        let (_, commands) = self.hub.as_ref()?;
        // A closed channel means the hub is gone; the queue ending will close us.
        match commands.try_send(cmd) {
            Err(mpsc::error::TrySendError::Full(cmd)) => {
                let commands = commands.clone();
                Some(Box::pin(async move {
                    let _ = commands.send(cmd).await;
                }))
            }
            _ => None,
        }
    }

    /// Hands what the last read produced to the hub (or echoes it).
    async fn handle_events(&mut self, read_bytes: bool) {
        let mut messages = false;
        while let Some(event) = self.conn.poll_event() {
            match event {
                WsEvent::Text(text) => {
                    messages = true;
                    match &self.hub {
                        Some((conn, _)) => {
                            let conn = *conn;
                            let cmd = if self.bench {
                                Command::BenchText { conn, text }
                            } else {
                                Command::Text { conn, text }
                            };
                            if let Some(wait) = self.send_hub(cmd) {
                                wait.await;
                            }
                        }
                        None => {
                            let _ = self.conn.send_text(text.as_str());
                        }
                    }
                }
                WsEvent::Binary(data) => {
                    messages = true;
                    match &self.hub {
                        Some((conn, _)) => {
                            let conn = *conn;
                            let len = data.len();
                            if let Some(wait) = self.send_hub(Command::Binary { conn, len }) {
                                wait.await;
                            }
                        }
                        None => {
                            let _ = self.conn.send_binary(&data);
                        }
                    }
                }
                WsEvent::Ping(_) | WsEvent::Pong(_) => {}
                WsEvent::Closed { code, reason, .. } => {
                    trace!(?code, reason, "closing handshake complete");
                    self.peer_code = Some(code);
                }
                WsEvent::Failed { code, reason } => {
                    debug!(code, reason, "peer violated the protocol");
                    self.failed = Some(code);
                }
            }
        }
        // Liveness is the hub's business: echo connections never read the clock here.
        if self.hub.is_none() || !(messages || read_bytes) {
            self.out.pull(&mut self.conn, false);
            return;
        }
        let now = Instant::now();
        if messages {
            self.last_activity = now;
        } else if now.duration_since(self.last_activity) >= self.params.activity_every {
            self.last_activity = now;
            if let Some((conn, _)) = &self.hub {
                let conn = *conn;
                if let Some(wait) = self.send_hub(Command::Activity { conn }) {
                    wait.await;
                }
            }
        }
        self.out.pull(&mut self.conn, false);
    }

    /// Starts our side of the closing handshake.
    fn start_close(&mut self, code: u16, reason: &str) {
        if self.conn.close(code, reason).is_ok() {
            self.our_code = Some(code);
        }
        self.out.pull(&mut self.conn, false);
        if self.close_deadline.is_none() {
            self.close_deadline = Some(Instant::now() + self.params.close_timeout);
        }
    }

    /// Applies what the hub queued since the last look. Returns `false` once nothing more
    /// will come.
    fn apply(&mut self, taken: Taken) -> bool {
        // The connection's own queue is drained first, so what comes out after each
        // piece is exactly that piece: tagged as hub bytes.
        self.out.pull(&mut self.conn, false);
        let more = !taken.is_final();
        for piece in taken.pieces {
            let sent = match piece {
                Piece::Batch(batch) => self.conn.send_batch(batch),
                Piece::Frame(msg) => self.conn.send_outgoing(&msg),
                Piece::Frames(frames) => self.conn.send_frames(&frames),
                // Mid-frame already on the wire: straight behind it, nothing between.
                Piece::Tail(rest) => {
                    self.out.push(rest, true);
                    continue;
                }
            };
            match sent {
                Ok(()) => self.out.pull(&mut self.conn, true),
                // Closing: the hub no longer counts this connection's bytes.
                Err(SendError::Closed) => break,
                Err(e) => error!("hub frame refused by the connection: {e}"),
            }
        }
        if taken.ping {
            let _ = self.conn.send_ping(&[]);
            self.out.pull(&mut self.conn, false);
        }
        if let Some((code, reason)) = &taken.close {
            self.start_close(*code, reason);
        } else if taken.hub_gone {
            self.start_close(code::GOING_AWAY, "server shutting down");
        }
        more
    }

    /// Accounts for `n` bytes the socket took.
    async fn wrote(&mut self, n: usize) {
        self.params.metrics.written(n);
        let hub_bytes = self.out.advance(n);
        if self.out.is_empty() {
            // All written: an idle connection keeps no queue memory.
            self.out.shrink_idle();
            self.conn.shrink_idle();
        }
        self.report_flushed(hub_bytes).await;
    }

    /// Counts written hub bytes and reports them once enough accumulated.
    async fn report_flushed(&mut self, bytes: usize) {
        let bytes = self.unreported.add(bytes, self.params.flush_report_min);
        if bytes > 0 {
            if let Some((conn, _)) = &self.hub {
                let conn = *conn;
                if let Some(wait) = self.send_hub(Command::Flushed { conn, bytes }) {
                    wait.await;
                }
            }
        }
    }

    /// The close code the connection ended with, for metrics.
    fn final_code(&self, ending: &Ending) -> u16 {
        if let Some(c) = self.failed.or(self.our_code) {
            return c;
        }
        match (ending, self.peer_code) {
            (_, Some(Some(c))) => c,
            (_, Some(None)) => code::NO_STATUS,
            _ => code::ABNORMAL,
        }
    }

    /// Why the connection ended, for the hub (which ignores it when it closed the
    /// connection itself).
    fn disconnect_reason(&self) -> DisconnectReason {
        match (self.failed, self.peer_code) {
            (Some(code::TOO_BIG), _) => DisconnectReason::MessageTooBig,
            (Some(c), _) => DisconnectReason::ProtocolError { code: c },
            (None, Some(c)) => DisconnectReason::Closed { code: c },
            (None, None) => DisconnectReason::Closed {
                code: Some(code::ABNORMAL),
            },
        }
    }
}

async fn run<R, W>(
    mut reader: R,
    mut writer: W,
    early: Bytes,
    mode: Mode,
    params: Arc<SocketParams>,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Abort,
{
    let (hub, mut rx, mut shutdown, bench) = match mode {
        Mode::Hub {
            conn,
            commands,
            rx,
            bench,
        } => (Some((conn, commands)), Some(rx), None, bench),
        Mode::Echo { shutdown } => (None, None, Some(Box::new(shutdown)), false),
    };
    let metrics = params.metrics.clone();
    let mut s = Socket {
        conn: Connection::server(params.conn_config.clone()),
        out: OutQueue::default(),
        hub,
        bench,
        params,
        our_code: None,
        peer_code: None,
        failed: None,
        close_deadline: None,
        reply_deadline: None,
        last_activity: Instant::now(),
        unreported: Unreported::default(),
    };
    let mut read_bytes = !early.is_empty();
    if read_bytes {
        metrics.read(early.len());
        s.conn.handle_read(&early);
    }
    // Even empty, this may be a view of hyper's whole read buffer: let it go now rather
    // than hold it for the life of the connection.
    drop(early);
    let ending = loop {
        // The socket task writes from here on: the hub task's turn ends, and the rest of
        // a message it left half-written goes out before anything of ours.
        if let Some(back) = rx.as_ref().map(OutboxRx::reclaim) {
            if let Some(rest) = back.tail {
                s.out.push(rest, true);
            }
            s.unreported.absorb(back.unreported);
            // What the hub task wrote and held back joins this task's tally; report it
            // once it is a lump, even if this task never writes itself (a reader whose
            // replies all went out directly would otherwise look ever more behind).
            s.report_flushed(0).await;
        }
        s.handle_events(read_bytes).await;
        read_bytes = false;
        // What the last step queued (an echo, a pong, the hub's frames) is written now,
        // in this turn, instead of on another pass through every branch below: one
        // select pass fewer per message. Only a socket that is full waits for the
        // writable branch.
        if !s.out.is_empty() {
            let out = &s.out;
            match poll_fn(|cx| Poll::Ready(out.poll_write(&mut writer, cx))).await {
                Poll::Ready(Ok(n)) => s.wrote(n).await,
                Poll::Ready(Err(e)) => {
                    trace!("write failed: {e}");
                    break Ending::Vanished;
                }
                Poll::Pending => {}
            }
        }
        if s.conn.is_closed() {
            break Ending::Finished;
        }
        // The clock is read only while closing: an open connection has no deadline here.
        if s.conn.state() == State::Closing && s.out.is_empty() && s.reply_deadline.is_none() {
            let now = Instant::now();
            let bound = s.close_deadline.unwrap_or(now + s.params.close_timeout);
            s.reply_deadline = Some((now + CLOSE_REPLY_WAIT).min(bound));
        }
        let wake = match (s.close_deadline, s.reply_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        if wake.is_some_and(|w| w <= Instant::now()) {
            break Ending::TimedOut;
        }
        let idle = s.out.is_empty() && s.conn.state() == State::Open;
        let conn = &mut s.conn;
        let out = &s.out;
        tokio::select! {
            r = poll_fn(|cx| poll_read_into(&mut reader, cx, |b| conn.handle_read(b))) => match r {
                Ok(0) => break Ending::Vanished,
                Ok(n) => {
                    metrics.read(n);
                    read_bytes = true;
                }
                Err(e) => {
                    trace!("read failed: {e}");
                    break Ending::Vanished;
                }
            },
            r = poll_fn(|cx| out.poll_write(&mut writer, cx)), if !out.is_empty() => match r {
                Ok(n) => s.wrote(n).await,
                Err(e) => {
                    trace!("write failed: {e}");
                    break Ending::Vanished;
                }
            },
            taken = take_opt(&mut rx, idle), if rx.is_some() => {
                if !s.apply(taken) {
                    rx = None;
                }
            }
            _ = shutdown_changed(&mut shutdown), if shutdown.is_some() => {
                shutdown = None;
                s.start_close(code::GOING_AWAY, "server shutting down");
            }
            // Lazy: the timer is only created while closing, not on every wake-up.
            () = sleep_opt(wake) => {
                break Ending::TimedOut;
            }
        }
    };
    // Nothing more is taken from the hub (its close, if any, was taken): dropping our end
    // also ends any direct writes before the closing phase writes.
    drop(rx);
    // The closing phase runs once per connection: boxed, its state does not make every
    // idle connection's task bigger.
    Box::pin(finish(s, reader, writer, ending)).await;
}

/// Delivers our close frame (and what precedes it), closes our side and drains whatever
/// the peer still sends, all bounded; then reports the end to metrics and the hub.
async fn finish<R, W>(mut s: Socket, mut reader: R, mut writer: W, ending: Ending)
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Abort,
{
    if matches!(ending, Ending::Finished) {
        let deadline = s
            .close_deadline
            .unwrap_or_else(|| Instant::now() + s.params.close_timeout);
        if let Ok(Ok(hub_bytes)) = timeout_at(deadline, s.out.write_all(&mut writer)).await {
            s.report_flushed(hub_bytes).await;
            let _ = timeout(LINGER, async {
                let _ = writer.shutdown().await;
                linger(&mut reader).await;
            })
            .await;
        }
    }
    if !s.out.is_empty() {
        // What we meant to send (our close frame at least) never left: the peer is not
        // reading, and the kernel holds its backlog. Reset rather than linger with it.
        writer.abort();
    }
    drop(writer);
    drop(reader);
    let code = s.final_code(&ending);
    s.params.metrics.closed(code);
    if let Some((conn, _)) = &s.hub {
        let conn = *conn;
        let reason = s.disconnect_reason();
        trace!(%conn, code, "socket closed");
        if let Some(wait) = s.send_hub(Command::Disconnect { conn, reason }) {
            wait.await;
        }
    }
}

/// Reads and discards until the peer closes (bounded by the caller).
async fn linger<R: AsyncRead + Unpin>(reader: &mut R) {
    loop {
        match poll_fn(|cx| poll_read_into(reader, cx, |_| {})).await {
            Ok(0) | Err(_) => return,
            Ok(_) => {}
        }
    }
}

/// Sleeps until `at`, or forever without a deadline.
pub(crate) async fn sleep_opt(at: Option<Instant>) {
    match at {
        // Boxed: only closing connections have a deadline; idle ones carry no timer.
        Some(at) => Box::pin(sleep_until(at)).await,
        None => std::future::pending().await,
    }
}

async fn take_opt(rx: &mut Option<OutboxRx>, idle: bool) -> Taken {
    match rx {
        Some(rx) => rx.take(idle).await,
        None => std::future::pending().await,
    }
}

/// Echo mode's wait for the server's shutdown: made once per connection (polling it
/// is one atomic load), boxed so hub connections carry only a null pointer for it.
async fn shutdown_changed(shutdown: &mut Option<Box<ShutdownWait>>) {
    match shutdown {
        Some(wait) => (&mut **wait).await,
        None => std::future::pending().await,
    }
}
#[cfg(test)]
mod tests {
    use super::*;

    /// Every idle connection holds one socket loop: its size is most of the server's
    /// memory per connection (docs/benchmarks.md), so growth should be a decision.
    #[test]
    fn the_socket_loop_stays_small() {
        let (r, w) = tokio::io::duplex(1);
        let (tx, rx) = crate::outbox::outbox();
        drop(tx);
        let (commands, _keep) = mpsc::channel(1);
        let mode = Mode::Hub {
            conn: ConnId::from_u64(1),
            commands,
            rx,
            bench: false,
        };
        let params = Arc::new(SocketParams {
            conn_config: ConnectionConfig::default(),
            metrics: Arc::new(Metrics::default()),
            close_timeout: Duration::from_secs(1),
            activity_every: Duration::from_secs(1),
            flush_report_min: 1,
            direct_writes: false,
        });
        let f = run(r, w, Bytes::new(), mode, params);
        let size = std::mem::size_of_val(&f);
        assert!(
            size <= 1280,
            "the socket loop's future grew to {size} bytes"
        );
    }
}
