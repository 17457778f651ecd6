//! A native WebSocket client for Rust users, built on the core's client role: the
//! handshake from [`ClientHandshake`], frames and masking from a client-role
//! [`Connection`] whose mask keys come from a generator seeded by the OS.
//!
//! ```no_run
//! # async fn demo() -> Result<(), roomcast_tokio::client::ClientError> {
//! use roomcast_tokio::client::{Client, Message};
//!
//! let mut client = Client::connect("ws://127.0.0.1:8080/ws?user=ada").await?;
//! let welcome = client.recv().await?; // {"type":"welcome",...}
//! client.send_text(r#"{"type":"join","room":"lobby","id":1}"#).await?;
//! while let Ok(Message::Text(text)) = client.recv().await {
//!     println!("{}", text.as_str());
//! #   break;
//! }
//! client.close(1000, "bye").await?;
//! # let _ = welcome; Ok(()) }
//! ```
//!
//! A background task owns the socket, so server pings are answered even while the
//! application is not reading; received messages wait in a bounded queue, and when it is
//! full the task stops reading, which pushes back on the server through TCP. For a
//! client that reconnects, rejoins and recovers by itself, see [`crate::reconnecting`].

use std::future::poll_fn;
use std::time::Duration;

use bytes::Bytes;
use roomcast_core::close::code;
use roomcast_core::connection::{
    Connection, ConnectionConfig, Initiator, SendError, State, TextMessage, WsEvent,
};
use roomcast_core::handshake::{ClientHandshake, HandshakeError};
use roomcast_core::rng::Rng;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::time::{timeout, timeout_at, Instant};

use crate::io::{poll_read_into, OutQueue};

/// A received message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    /// A text message (valid UTF-8, checked by the core).
    Text(TextMessage),
    /// A binary message.
    Binary(Bytes),
}

/// How a connection ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CloseInfo {
    /// The close code (the peer's, ours if we failed the connection, 1005 if the close
    /// frame had none, 1006 if the TCP connection ended without a closing handshake).
    pub code: u16,
    /// The close reason, if any.
    pub reason: String,
    /// Whether the closing handshake completed (both close frames exchanged).
    pub clean: bool,
    /// Who closed first, when known.
    pub initiated_by: Option<Initiator>,
}

/// Why a client operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URL is not `ws://host[:port][/path][?query]`.
    #[error("invalid WebSocket URL: {0}")]
    InvalidUrl(&'static str),
    /// Only `ws://` is spoken natively; terminate TLS in front (or use a TLS proxy).
    #[error("unsupported URL scheme {0:?}: only ws:// is supported")]
    UnsupportedScheme(String),
    /// Connecting, reading or writing failed.
    #[error("I/O error: {0}")]
    Io(#[from] std::io::Error),
    /// Connecting and the handshake did not finish within the connect timeout.
    #[error("timed out connecting")]
    Timeout,
    /// The server's answer is not a valid upgrade (`BadStatus(404)` for a refusal, ...).
    #[error("handshake failed: {0}")]
    Handshake(#[from] HandshakeError),
    /// The connection closed; nothing more can be sent or received.
    #[error("connection closed with {}", .0.code)]
    Closed(CloseInfo),
    /// A send the protocol forbids (invalid close code, ...).
    #[error("cannot send: {0}")]
    Send(#[from] SendError),
    /// The OS random source failed, so no safe masking keys can be made.
    #[error("OS random source failed: {0}")]
    Entropy(getrandom::Error),
}

/// Connection options.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// Subprotocols offered, in preference order (default `roomcast.v1`).
    pub protocols: Vec<String>,
    /// Extra request headers (`Origin`, `Cookie`, `Authorization`, ...).
    pub headers: Vec<(String, String)>,
    /// Largest message accepted from the server (default 16 MiB); bigger fails the
    /// connection with 1009.
    pub max_message_size: usize,
    /// Bound on TCP connect plus handshake (default 10 s).
    pub connect_timeout: Duration,
    /// Received messages buffered before the client stops reading (default 1024).
    pub receive_queue: usize,
    /// How long `close` waits for the server's close frame (default 5 s).
    pub close_timeout: Duration,
}

impl Default for ClientOptions {
    fn default() -> Self {
        ClientOptions {
            protocols: vec![crate::config::SUBPROTOCOL.to_owned()],
            headers: Vec::new(),
            max_message_size: 16 << 20,
            connect_timeout: Duration::from_secs(10),
            receive_queue: 1024,
            close_timeout: Duration::from_secs(5),
        }
    }
}

/// What the application asks the socket task.
enum Cmd {
    Text(String),
    Binary(Bytes),
    Close { code: u16, reason: String },
}

enum Inbound {
    Message(Message),
    Closed(CloseInfo),
}

/// A connected WebSocket client. Dropping it drops the connection without a closing
/// handshake; call [`Client::close`] to close politely.
#[derive(Debug)]
pub struct Client {
    commands: mpsc::Sender<Cmd>,
    inbound: mpsc::Receiver<Inbound>,
    protocol: Option<String>,
    closed: Option<CloseInfo>,
    /// Fires when the socket task ends, so `close` can wait for it.
    done: Option<oneshot::Receiver<()>>,
}

impl std::fmt::Debug for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cmd::Text(t) => write!(f, "Text({} bytes)", t.len()),
            Cmd::Binary(b) => write!(f, "Binary({} bytes)", b.len()),
            Cmd::Close { code, .. } => write!(f, "Close({code})"),
        }
    }
}

impl std::fmt::Debug for Inbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Inbound::Message(m) => write!(f, "{m:?}"),
            Inbound::Closed(c) => write!(f, "Closed({c:?})"),
        }
    }
}

/// The parts of a `ws://` URL.
#[derive(Debug, PartialEq, Eq)]
struct Target {
    /// Host to connect to (brackets removed for IPv6).
    host: String,
    port: u16,
    /// `Host` header value (as written in the URL).
    authority: String,
    /// Path and query, starting with `/`.
    path: String,
}

fn parse_url(url: &str) -> Result<Target, ClientError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or(ClientError::InvalidUrl("missing scheme (ws://)"))?;
    if !scheme.eq_ignore_ascii_case("ws") {
        return Err(ClientError::UnsupportedScheme(scheme.to_owned()));
    }
    let rest = rest.split('#').next().unwrap_or_default();
    let split = rest.find(['/', '?']).unwrap_or(rest.len());
    let (authority, path) = rest.split_at(split);
    if authority.is_empty() {
        return Err(ClientError::InvalidUrl("missing host"));
    }
    if authority.contains('@') {
        return Err(ClientError::InvalidUrl(
            "credentials in the URL are not supported; send a header instead",
        ));
    }
    let (host, port) = if let Some(v6) = authority.strip_prefix('[') {
        let (host, after) = v6
            .split_once(']')
            .ok_or(ClientError::InvalidUrl("unclosed [ in host"))?;
        let port = match after {
            "" => None,
            p => Some(
                p.strip_prefix(':')
                    .ok_or(ClientError::InvalidUrl("junk after ]"))?,
            ),
        };
        (host, port)
    } else {
        match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        }
    };
    if host.is_empty() {
        return Err(ClientError::InvalidUrl("missing host"));
    }
    let port = match port {
        None => 80,
        Some(p) => p.parse().map_err(|_| ClientError::InvalidUrl("bad port"))?,
    };
    let path = match path {
        "" => "/".to_owned(),
        p if p.starts_with('?') => format!("/{p}"),
        p => p.to_owned(),
    };
    Ok(Target {
        host: host.to_owned(),
        port,
        authority: authority.to_owned(),
        path,
    })
}

impl Client {
    /// Connects to `ws://host[:port][/path][?query]` with default options.
    pub async fn connect(url: &str) -> Result<Client, ClientError> {
        Client::connect_with(url, ClientOptions::default()).await
    }

    /// Connects with explicit options.
    pub async fn connect_with(url: &str, options: ClientOptions) -> Result<Client, ClientError> {
        let target = parse_url(url)?;
        let mut seed = [0u8; 32];
        getrandom::fill(&mut seed).map_err(ClientError::Entropy)?;
        let mut key = [0u8; 16];
        getrandom::fill(&mut key).map_err(ClientError::Entropy)?;
        let handshake = async {
            let mut stream = TcpStream::connect((target.host.as_str(), target.port)).await?;
            let _ = stream.set_nodelay(true);
            let protocols: Vec<&str> = options.protocols.iter().map(String::as_str).collect();
            let headers: Vec<(&str, &str)> = options
                .headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let mut hs =
                ClientHandshake::new(&target.authority, &target.path, key, &protocols, &headers);
            stream.write_all(&hs.request_bytes()).await?;
            let mut buf = vec![0u8; 4096];
            loop {
                let n = stream.read(&mut buf).await?;
                if n == 0 {
                    return Err(ClientError::Io(std::io::ErrorKind::UnexpectedEof.into()));
                }
                if let Some((response, used)) = hs.feed(&buf[..n])? {
                    let early = Bytes::copy_from_slice(&buf[used..n]);
                    return Ok::<_, ClientError>((stream, response.protocol, early));
                }
            }
        };
        let (stream, protocol, early) = timeout(options.connect_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout)??;
        let conn = Connection::client(
            ConnectionConfig {
                max_message_size: options.max_message_size,
                ..ConnectionConfig::default()
            },
            Rng::from_seed(seed),
        );
        let (commands, cmd_rx) = mpsc::channel(64);
        let (inbound_tx, inbound) = mpsc::channel(options.receive_queue.max(1));
        let (done_tx, done) = oneshot::channel();
        tokio::spawn(async move {
            run(
                stream,
                conn,
                early,
                cmd_rx,
                inbound_tx,
                options.close_timeout,
            )
            .await;
            let _ = done_tx.send(());
        });
        Ok(Client {
            commands,
            inbound,
            protocol,
            closed: None,
            done: Some(done),
        })
    }

    /// The subprotocol the server selected, if any.
    pub fn protocol(&self) -> Option<&str> {
        self.protocol.as_deref()
    }

    fn closed_error(&self) -> ClientError {
        ClientError::Closed(self.closed.clone().unwrap_or(CloseInfo {
            code: code::ABNORMAL,
            reason: String::new(),
            clean: false,
            initiated_by: None,
        }))
    }

    async fn command(&self, cmd: Cmd) -> Result<(), ClientError> {
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        self.commands
            .send(cmd)
            .await
            .map_err(|_| self.closed_error())
    }

    /// Queues a text message (waits only if 64 sends are already queued).
    pub async fn send_text(&self, text: impl Into<String>) -> Result<(), ClientError> {
        self.command(Cmd::Text(text.into())).await
    }

    /// Queues a binary message.
    pub async fn send_binary(&self, data: impl Into<Bytes>) -> Result<(), ClientError> {
        self.command(Cmd::Binary(data.into())).await
    }

    /// The next message; `Err(ClientError::Closed)` once the connection has ended (with
    /// how it ended), and on every call after that.
    pub async fn recv(&mut self) -> Result<Message, ClientError> {
        if self.closed.is_some() {
            return Err(self.closed_error());
        }
        match self.inbound.recv().await {
            Some(Inbound::Message(m)) => Ok(m),
            Some(Inbound::Closed(info)) => {
                self.closed = Some(info);
                Err(self.closed_error())
            }
            None => {
                self.closed = Some(CloseInfo {
                    code: code::ABNORMAL,
                    reason: String::new(),
                    clean: false,
                    initiated_by: None,
                });
                Err(self.closed_error())
            }
        }
    }

    /// Closes politely: sends a close frame, waits (bounded) for the server's, and
    /// returns how the connection ended. Messages still unread are discarded.
    pub async fn close(mut self, code: u16, reason: &str) -> Result<CloseInfo, ClientError> {
        if !roomcast_core::close::is_valid_on_wire(code) {
            return Err(ClientError::Send(SendError::InvalidCloseCode(code)));
        }
        let _ = self
            .commands
            .send(Cmd::Close {
                code,
                reason: reason.to_owned(),
            })
            .await;
        loop {
            match self.recv().await {
                Ok(_) => continue,
                Err(ClientError::Closed(info)) => {
                    if let Some(done) = self.done.take() {
                        let _ = done.await;
                    }
                    return Ok(info);
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The socket task: the client's mirror of the server socket loop.
async fn run(
    stream: TcpStream,
    mut conn: Connection,
    early: Bytes,
    mut commands: mpsc::Receiver<Cmd>,
    inbound: mpsc::Sender<Inbound>,
    close_timeout: Duration,
) {
    let (mut reader, mut writer) = stream.into_split();
    let mut out = OutQueue::default();
    let mut close_deadline: Option<Instant> = None;
    let mut commands_open = true;
    let mut outcome: Option<CloseInfo> = None;
    let mut our_close: Option<(u16, String)> = None;
    if !early.is_empty() {
        conn.handle_read(&early);
    }
    loop {
        while let Some(event) = conn.poll_event() {
            let msg = match event {
                WsEvent::Text(t) => Message::Text(t),
                WsEvent::Binary(b) => Message::Binary(b),
                WsEvent::Ping(_) | WsEvent::Pong(_) => continue,
                WsEvent::Closed {
                    code: peer_code,
                    reason,
                    initiated_by,
                } => {
                    outcome = Some(CloseInfo {
                        code: peer_code.unwrap_or(code::NO_STATUS),
                        reason,
                        clean: true,
                        initiated_by: Some(initiated_by),
                    });
                    continue;
                }
                WsEvent::Failed { code, reason } => {
                    outcome = Some(CloseInfo {
                        code,
                        reason: reason.to_owned(),
                        clean: false,
                        initiated_by: Some(Initiator::Local),
                    });
                    continue;
                }
            };
            if inbound.send(Inbound::Message(msg)).await.is_err() {
                // The application dropped the client: stop quietly.
                return;
            }
        }
        out.pull(&mut conn, false);
        if conn.is_closed() {
            break;
        }
        let now = Instant::now();
        if close_deadline.is_some_and(|d| d <= now) {
            break;
        }
        tokio::select! {
            r = poll_fn(|cx| poll_read_into(&mut reader, cx, |b| conn.handle_read(b))) => match r {
                Ok(0) | Err(_) => break,
                Ok(_) => {}
            },
            r = poll_fn(|cx| out.poll_write(&mut writer, cx)), if !out.is_empty() => match r {
                Ok(n) => {
                    out.advance(n);
                }
                Err(_) => break,
            },
            cmd = commands.recv(), if commands_open => match cmd {
                Some(Cmd::Text(t)) => {
                    let _ = conn.send_text(&t);
                }
                Some(Cmd::Binary(b)) => {
                    let _ = conn.send_binary(&b);
                }
                Some(Cmd::Close { code, reason }) => {
                    if conn.state() == State::Open && conn.close(code, &reason).is_ok() {
                        our_close = Some((code, reason));
                    }
                    close_deadline = Some(Instant::now() + close_timeout);
                }
                None => {
                    // Every handle is gone: close politely on the application's behalf.
                    commands_open = false;
                    if conn.close(code::NORMAL, "").is_ok() {
                        our_close = Some((code::NORMAL, String::new()));
                    }
                    close_deadline = Some(Instant::now() + close_timeout);
                }
            },
            () = crate::socket::sleep_opt(close_deadline) => break,
        }
    }
    if conn.is_closed() {
        // Send our close (or its echo), then wait for the server to close the TCP
        // connection first, as RFC 6455 asks of clients.
        let deadline = close_deadline.unwrap_or_else(|| Instant::now() + close_timeout);
        if timeout_at(deadline, out.write_all(&mut writer))
            .await
            .is_ok()
        {
            let _ = timeout_at(deadline, async {
                loop {
                    match poll_fn(|cx| poll_read_into(&mut reader, cx, |_| {})).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                }
            })
            .await;
        }
        let _ = writer.shutdown().await;
    }
    let info = outcome.unwrap_or_else(|| match our_close {
        Some((code, reason)) => CloseInfo {
            code,
            reason,
            clean: false,
            initiated_by: Some(Initiator::Local),
        },
        None => CloseInfo {
            code: code::ABNORMAL,
            reason: String::new(),
            clean: false,
            initiated_by: None,
        },
    });
    let _ = inbound.send(Inbound::Closed(info)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls() {
        let t = parse_url("ws://127.0.0.1:8080/ws?user=ada").unwrap();
        assert_eq!(
            t,
            Target {
                host: "127.0.0.1".into(),
                port: 8080,
                authority: "127.0.0.1:8080".into(),
                path: "/ws?user=ada".into()
            }
        );
        let t = parse_url("WS://[::1]:9/").unwrap();
        assert_eq!(
            (t.host.as_str(), t.port, t.authority.as_str()),
            ("::1", 9, "[::1]:9")
        );
        let t = parse_url("ws://example.com?x=1#frag").unwrap();
        assert_eq!((t.port, t.path.as_str()), (80, "/?x=1"));
        assert!(matches!(
            parse_url("wss://x/"),
            Err(ClientError::UnsupportedScheme(_))
        ));
        assert!(matches!(parse_url("x"), Err(ClientError::InvalidUrl(_))));
        assert!(matches!(
            parse_url("ws:///ws"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("ws://u:p@h/"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("ws://h:99999/"),
            Err(ClientError::InvalidUrl(_))
        ));
        assert!(matches!(
            parse_url("ws://[::1/"),
            Err(ClientError::InvalidUrl(_))
        ));
    }
}
