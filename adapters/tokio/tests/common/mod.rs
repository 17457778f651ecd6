//! Shared helpers for the adapter's integration tests: the real `roomcast` binary as a
//! child process, tokio-tungstenite (a peer we did not write) for WebSocket clients,
//! and a few raw-socket tools for what a well-behaved client cannot send.
//!
//! Every wait is bounded and waits for an event (a line, a frame, an exit), never for
//! time to pass.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// Bound on any single wait in these tests.
pub const WAIT: Duration = Duration::from_secs(10);

pub type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The `roomcast` binary, killed when dropped. Dropping it also fails the test if the
/// server printed a panic message (a task that panics is not fatal to the runtime, so a
/// test could otherwise pass over one).
pub struct ServerProc {
    child: Child,
    pub addr: SocketAddr,
    /// Lines printed after the ready line (there must be none).
    stdout: std_mpsc::Receiver<String>,
    reader: Option<std::thread::JoinHandle<()>>,
    /// Collects stderr; yields the lines that report a panic.
    stderr: Option<std::thread::JoinHandle<Vec<String>>>,
}

impl ServerProc {
    /// Starts `roomcast --bind 127.0.0.1:0 ARGS...` and waits for its ready line.
    pub fn start(args: &[&str]) -> ServerProc {
        let log = std::env::var("ROOMCAST_TEST_LOG").ok();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_roomcast"));
        cmd.args(["--bind", "127.0.0.1:0"])
            .args(args)
            .args(["--log", log.as_deref().unwrap_or("warn")])
            .current_dir(env!("CARGO_TARGET_TMPDIR"))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        for (k, _) in std::env::vars() {
            if k.starts_with("ROOMCAST_") {
                cmd.env_remove(k);
            }
        }
        let mut child = cmd.spawn().expect("spawn roomcast");
        let stderr_pipe = child.stderr.take().expect("piped stderr");
        let echo = log.is_some();
        let stderr = std::thread::spawn(move || {
            let mut panics = Vec::new();
            for line in BufReader::new(stderr_pipe).lines().map_while(Result::ok) {
                if echo {
                    eprintln!("{line}");
                }
                if line.contains("panicked at") {
                    panics.push(line);
                }
            }
            panics
        });
        let stdout = child.stdout.take().expect("piped stdout");
        let (tx, rx) = std_mpsc::channel();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = tx.send(line);
            }
        });
        let line = match rx.recv_timeout(WAIT) {
            Ok(line) => line,
            Err(_) => {
                let _ = child.kill();
                panic!("roomcast printed no ready line within {WAIT:?}");
            }
        };
        let addr = line
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected ready line {line:?}"))
            .parse()
            .expect("ready line has a socket address");
        ServerProc {
            child,
            addr,
            stdout: rx,
            reader: Some(reader),
            stderr: Some(stderr),
        }
    }

    pub fn ws_url(&self, path_and_query: &str) -> String {
        format!("ws://{}{}", self.addr, path_and_query)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends SIGTERM.
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits for the process to exit (bounded).
    pub fn wait_exit(&mut self, bound: Duration) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                return status;
            }
            assert!(
                start.elapsed() < bound,
                "roomcast did not exit within {bound:?}"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ServerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // stdout closes with the process, which ends the reader thread.
        if let Some(reader) = self.reader.take() {
            let _ = reader.join();
        }
        let panics = self
            .stderr
            .take()
            .map(|h| h.join().unwrap_or_default())
            .unwrap_or_default();
        let extra: Vec<String> = self.stdout.try_iter().collect();
        if std::thread::panicking() {
            return;
        }
        assert!(panics.is_empty(), "roomcast panicked: {panics:?}");
        assert!(
            extra.is_empty(),
            "roomcast printed more than the ready line on stdout: {extra:?}"
        );
    }
}

/// Opens a WebSocket with tokio-tungstenite.
pub async fn connect(url: &str) -> Ws {
    let (ws, _) = tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .expect("connect timed out")
        .expect("connect");
    ws
}

/// Opens a WebSocket and consumes its `welcome`.
pub async fn connect_welcomed(url: &str) -> (Ws, Value) {
    let mut ws = connect(url).await;
    let welcome = next_json(&mut ws).await;
    assert_eq!(welcome["type"], "welcome", "{welcome}");
    (ws, welcome)
}

/// The HTTP status of a refused upgrade.
pub async fn connect_status(req: impl IntoClientRequest + Unpin) -> u16 {
    match tokio::time::timeout(WAIT, tokio_tungstenite::connect_async(req))
        .await
        .expect("connect timed out")
    {
        Ok(_) => 101,
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
    }
}

/// The next JSON text message (protocol pings and pongs skipped).
pub async fn next_json(ws: &mut Ws) -> Value {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no message in time")
            .expect("stream ended")
            .expect("websocket error");
        match msg {
            Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON"),
            Message::Ping(_) | Message::Pong(_) => continue,
            other => panic!("expected a text message, got {other:?}"),
        }
    }
}

pub async fn send_json(ws: &mut Ws, v: Value) {
    ws.send(Message::text(v.to_string())).await.expect("send");
}

/// Reads until the server's close frame; returns its code.
pub async fn expect_close(ws: &mut Ws) -> u16 {
    loop {
        let msg = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("no close in time");
        match msg {
            Some(Ok(Message::Close(Some(frame)))) => return u16::from(frame.code),
            Some(Ok(Message::Close(None))) => return 1005,
            Some(Ok(_)) => continue,
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Sends a raw HTTP/1.1 request and reads the whole response (the request asks the
/// server to close the connection). Returns `(status, head, body)`.
pub async fn http(addr: SocketAddr, request: &str) -> (u16, String, Vec<u8>) {
    let mut stream = TcpStream::connect(addr).await.expect("connect");
    stream
        .write_all(request.as_bytes())
        .await
        .expect("write request");
    let mut raw = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut raw))
        .await
        .expect("response in time")
        .expect("read response");
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("complete head");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status code");
    (status, head, raw[split + 4..].to_vec())
}

/// `GET path` with `Connection: close`.
pub async fn get(addr: SocketAddr, path: &str) -> (u16, String, Vec<u8>) {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"),
    )
    .await
}

/// The value of a header in a response head (case-insensitive name).
pub fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then_some(v.trim())
    })
}

/// A raw WebSocket: a TCP stream after a valid upgrade, for frames a real client would
/// never send.
pub struct RawWs {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

/// Frame opcodes.
pub const TEXT: u8 = 0x1;
pub const CLOSE: u8 = 0x8;
pub const PING: u8 = 0x9;
pub const PONG: u8 = 0xA;

impl RawWs {
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let mut stream = TcpStream::connect(addr).await.expect("connect");
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(req.as_bytes()).await.expect("write");
        let mut buf = Vec::new();
        let head_end = loop {
            if let Some(p) = buf.windows(4).position(|w: &[u8]| w == b"\r\n\r\n") {
                break p + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, stream.read(&mut chunk))
                .await
                .expect("handshake in time")
                .expect("read");
            assert!(n > 0, "closed during handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        assert_eq!(
            header(&head, "sec-websocket-accept"),
            Some("s3pPLMBiTxaQ9kYGzzhZRbK+xOo=")
        );
        buf.drain(..head_end);
        RawWs { stream, buf }
    }

    /// The TCP stream underneath (for tests that look below the frames).
    #[allow(dead_code)] // not every test binary uses it
    pub fn stream_mut(&mut self) -> &mut TcpStream {
        &mut self.stream
    }

    /// Sends one frame, masked or not, with FIN set.
    pub async fn send_frame(&mut self, opcode: u8, payload: &[u8], masked: bool) {
        let mut f = vec![0x80 | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match payload.len() {
            n if n < 126 => f.push(mask_bit | n as u8),
            n if n <= 0xffff => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        if masked {
            let key = [0x12, 0x34, 0x56, 0x78];
            f.extend_from_slice(&key);
            f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        } else {
            f.extend_from_slice(payload);
        }
        self.stream.write_all(&f).await.expect("write frame");
    }

    /// Reads one server frame: `Some((opcode, payload))`, or `None` at end of stream.
    pub async fn read_frame(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some((frame, used)) = parse_server_frame(&self.buf) {
                self.buf.drain(..used);
                return Some(frame);
            }
            let mut chunk = [0u8; 4096];
            let n = tokio::time::timeout(WAIT, self.stream.read(&mut chunk))
                .await
                .expect("frame in time")
                .unwrap_or(0);
            if n == 0 {
                return None;
            }
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// Reads frames until a close frame; returns its code. Skips pings and data.
    pub async fn expect_close(&mut self) -> u16 {
        loop {
            match self.read_frame().await {
                Some((CLOSE, p)) => return u16::from_be_bytes([p[0], p[1]]),
                Some(_) => continue,
                None => panic!("stream ended without a close frame"),
            }
        }
    }

    /// Whether the server ends the TCP connection (bounded wait).
    pub async fn expect_eof(&mut self) {
        while let Some((op, _)) = self.read_frame().await {
            assert_ne!(op, TEXT, "data after close");
        }
    }
}

fn parse_server_frame(b: &[u8]) -> Option<((u8, Vec<u8>), usize)> {
    if b.len() < 2 {
        return None;
    }
    assert_eq!(b[1] & 0x80, 0, "server frames are never masked");
    let (len, mut at) = match b[1] & 0x7f {
        126 => (u16::from_be_bytes([*b.get(2)?, *b.get(3)?]) as usize, 4),
        127 => (
            u64::from_be_bytes(b.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let payload = b.get(at..at + len)?.to_vec();
    at += len;
    Some(((b[0] & 0x0f, payload), at))
}
