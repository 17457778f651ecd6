//! A hand-written RFC 6455 client on a raw TCP socket: it sends exactly the bytes a test
//! asks for (bad headers, odd fragmentations, junk) and reads frames without judging
//! them, so the server's answers can be checked byte for byte.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::time::{timeout_at, Instant};

/// Continuation frame.
pub const CONT: u8 = 0x0;
/// Text frame.
pub const TEXT: u8 = 0x1;
/// Binary frame.
pub const BINARY: u8 = 0x2;
/// Close frame.
pub const CLOSE: u8 = 0x8;
/// Ping frame.
pub const PING: u8 = 0x9;
/// Pong frame.
pub const PONG: u8 = 0xA;

/// The key of RFC 6455's own example and the accept value it must produce.
const KEY: &str = "dGhlIHNhbXBsZSBub25jZQ==";
const ACCEPT: &str = "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=";

/// Largest frame payload this reader accepts from the server.
const MAX_READ_PAYLOAD: u64 = 64 << 20;

/// One frame from the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// FIN bit.
    pub fin: bool,
    /// Opcode (low 4 bits of the first byte).
    pub opcode: u8,
    /// Unmasked payload.
    pub payload: Vec<u8>,
}

impl Frame {
    /// For a close frame: its code (None if the payload is empty) and reason.
    pub fn close_code(&self) -> Option<(u16, String)> {
        if self.opcode != CLOSE || self.payload.len() < 2 {
            return None;
        }
        let code = u16::from_be_bytes([self.payload[0], self.payload[1]]);
        Some((
            code,
            String::from_utf8_lossy(&self.payload[2..]).into_owned(),
        ))
    }

    /// The payload as JSON (panics if it is not).
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.payload).unwrap_or_else(|e| {
            panic!(
                "not JSON ({e}): {:?}",
                String::from_utf8_lossy(&self.payload)
            )
        })
    }
}

/// Why no frame was read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadEnd {
    /// The server closed the TCP connection (FIN) between frames.
    Eof,
    /// A socket error, e.g. a reset.
    Io(std::io::ErrorKind),
    /// Nothing complete arrived before the deadline.
    Timeout,
    /// The server sent something that is not a valid frame to a client.
    Malformed(String),
}

/// How the server ended a connection, seen from the peer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ending {
    /// A close frame with this code and reason (None: empty close payload).
    Close(Option<(u16, String)>),
    /// The TCP connection ended without a close frame (EOF, reset, or junk: never a
    /// timeout).
    Dropped(ReadEnd),
    /// Neither: the connection was still open, silent, at the deadline.
    StillOpen,
}

impl Ending {
    /// The close code, if a close frame with one arrived.
    pub fn code(&self) -> Option<u16> {
        match self {
            Ending::Close(Some((c, _))) => Some(*c),
            _ => None,
        }
    }
}

/// Encodes one client frame with `mask` (RFC 6455 §5.2), with the shortest length form.
pub fn encode_frame(fin: bool, opcode: u8, payload: &[u8], mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + 14);
    out.push(if fin { 0x80 } else { 0 } | (opcode & 0x0F));
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= 0xFFFF {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&mask);
    out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    out
}

/// A frame header only (masked, 64-bit length form) declaring `len` payload bytes.
pub fn header_declaring(opcode: u8, len: u64) -> Vec<u8> {
    let mut out = vec![0x80 | opcode, 0x80 | 127];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&[1, 2, 3, 4]);
    out
}

/// The upgrade request this client sends.
pub fn upgrade_request(addr: SocketAddr, path: &str, extra_headers: &str) -> String {
    format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: {KEY}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
    )
}

/// A raw WebSocket client connection: a [`RawReader`] and a [`RawWriter`], usable
/// together or split across tasks.
pub struct RawWs {
    /// The reading half.
    pub r: RawReader,
    /// The writing half.
    pub w: RawWriter,
}

/// The reading half of a [`RawWs`]: frames parsed from the socket.
pub struct RawReader {
    half: OwnedReadHalf,
    buf: Vec<u8>,
    start: usize,
}

/// The writing half of a [`RawWs`]: masked frames or raw bytes.
pub struct RawWriter {
    /// The socket's write half (tests may write arbitrary bytes to it).
    pub half: OwnedWriteHalf,
    mask_seed: u32,
}

impl RawWs {
    /// Connects to `addr`, upgrades on `path` and checks the 101 (panics otherwise).
    pub async fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawWs::upgrade(stream, addr, path)
            .await
            .unwrap_or_else(|e| panic!("upgrade {path}: {e}"))
    }

    /// Connects, upgrades and reads the `welcome` message (panics otherwise).
    pub async fn welcomed(addr: SocketAddr, path: &str) -> RawWs {
        let mut ws = RawWs::connect(addr, path).await;
        let welcome = ws.r.read_json(crate::WAIT).await.expect("welcome");
        assert_eq!(welcome["type"], "welcome", "{welcome}");
        ws
    }

    /// Upgrades an already connected socket; `Err` with the response head if refused.
    pub async fn upgrade(
        mut stream: TcpStream,
        addr: SocketAddr,
        path: &str,
    ) -> Result<RawWs, String> {
        let req = upgrade_request(addr, path, "");
        stream
            .write_all(req.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let deadline = Instant::now() + crate::WAIT;
        let mut buf = Vec::with_capacity(4096);
        let head_end = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > 16 * 1024 {
                return Err("response head over 16 KiB".into());
            }
            let mut chunk = [0u8; 4096];
            let n = timeout_at(deadline, stream.read(&mut chunk))
                .await
                .map_err(|_| "no response head before the deadline".to_string())?
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err(format!(
                    "EOF before the response head; got {:?}",
                    String::from_utf8_lossy(&buf)
                ));
            }
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
        if !head.starts_with("HTTP/1.1 101") {
            return Err(head);
        }
        let accept_ok = head.lines().any(|l| {
            l.split_once(':').is_some_and(|(k, v)| {
                k.eq_ignore_ascii_case("sec-websocket-accept") && v.trim() == ACCEPT
            })
        });
        if !accept_ok {
            return Err(format!("wrong or missing Sec-WebSocket-Accept: {head}"));
        }
        let (r, w) = stream.into_split();
        Ok(RawWs {
            r: RawReader {
                half: r,
                buf,
                start: head_end,
            },
            w: RawWriter {
                half: w,
                mask_seed: 0x1234_5678,
            },
        })
    }

    /// The socket back in one piece (unread buffered input is discarded).
    pub fn into_stream(self) -> TcpStream {
        self.r
            .half
            .reunite(self.w.half)
            .expect("halves of one socket")
    }

    /// Sends one masked frame.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        self.w.send_frame(fin, opcode, payload).await
    }

    /// Sends a text message as one frame.
    pub async fn send_text(&mut self, text: &str) -> std::io::Result<()> {
        self.w.send_frame(true, TEXT, text.as_bytes()).await
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.w.half.write_all(bytes).await
    }

    /// See [`RawReader::read_frame`].
    pub async fn read_frame(&mut self, within: Duration) -> Result<Frame, ReadEnd> {
        self.r.read_frame(within).await
    }

    /// Reads the next text frame as JSON, skipping pongs and answering pings.
    pub async fn read_json(&mut self, within: Duration) -> Result<serde_json::Value, ReadEnd> {
        let deadline = Instant::now() + within;
        loop {
            let f = self.r.read_frame_until(deadline).await?;
            match f.opcode {
                PING => {
                    let _ = self.w.send_frame(true, PONG, &f.payload).await;
                }
                PONG => {}
                TEXT => return Ok(f.json()),
                other => {
                    return Err(ReadEnd::Malformed(format!(
                        "expected text, got opcode {other}: {f:?}"
                    )))
                }
            }
        }
    }

    /// See [`RawReader::ending`].
    pub async fn ending(&mut self, within: Duration) -> Ending {
        self.r.ending(within).await
    }
}

impl RawWriter {
    fn next_mask(&mut self) -> [u8; 4] {
        self.mask_seed = self
            .mask_seed
            .wrapping_mul(1_664_525)
            .wrapping_add(1_013_904_223);
        self.mask_seed.to_be_bytes()
    }

    /// Sends one masked frame.
    pub async fn send_frame(
        &mut self,
        fin: bool,
        opcode: u8,
        payload: &[u8],
    ) -> std::io::Result<()> {
        let mask = self.next_mask();
        self.half
            .write_all(&encode_frame(fin, opcode, payload, mask))
            .await
    }

    /// Sends raw bytes.
    pub async fn send_raw(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.half.write_all(bytes).await
    }
}

impl RawReader {
    /// Reads the next frame, waiting until `deadline`.
    pub async fn read_frame_until(&mut self, deadline: Instant) -> Result<Frame, ReadEnd> {
        loop {
            match self.parse() {
                Ok(Some(frame)) => return Ok(frame),
                Ok(None) => {}
                Err(e) => return Err(ReadEnd::Malformed(e)),
            }
            if self.start > 0 && self.start == self.buf.len() {
                self.buf.clear();
                self.start = 0;
            } else if self.start > 1 << 20 {
                self.buf.drain(..self.start);
                self.start = 0;
            }
            let old = self.buf.len();
            self.buf.resize(old + 64 * 1024, 0);
            let r = timeout_at(deadline, self.half.read(&mut self.buf[old..])).await;
            match r {
                Err(_) => {
                    self.buf.truncate(old);
                    return Err(ReadEnd::Timeout);
                }
                Ok(Ok(0)) => {
                    self.buf.truncate(old);
                    return Err(ReadEnd::Eof);
                }
                Ok(Ok(n)) => self.buf.truncate(old + n),
                Ok(Err(e)) => {
                    self.buf.truncate(old);
                    return Err(ReadEnd::Io(e.kind()));
                }
            }
        }
    }

    /// Reads the next frame, waiting at most `within`.
    pub async fn read_frame(&mut self, within: Duration) -> Result<Frame, ReadEnd> {
        self.read_frame_until(Instant::now() + within).await
    }

    /// Reads the next text frame as JSON, skipping control frames (pings are not
    /// answered: use [`RawWs::read_json`] for that).
    pub async fn read_json(&mut self, within: Duration) -> Result<serde_json::Value, ReadEnd> {
        let deadline = Instant::now() + within;
        loop {
            let f = self.read_frame_until(deadline).await?;
            match f.opcode {
                PING | PONG => {}
                TEXT => return Ok(f.json()),
                other => {
                    return Err(ReadEnd::Malformed(format!(
                        "expected text, got opcode {other}: {f:?}"
                    )))
                }
            }
        }
    }

    /// Reads (and discards) frames until the server's close frame or the end of the
    /// connection, waiting at most `within` in all; [`Ending::StillOpen`] if neither
    /// came by then.
    pub async fn ending(&mut self, within: Duration) -> Ending {
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame_until(deadline).await {
                Ok(f) if f.opcode == CLOSE => return Ending::Close(f.close_code()),
                Ok(_) => continue,
                Err(ReadEnd::Timeout) => return Ending::StillOpen,
                Err(e) => return Ending::Dropped(e),
            }
        }
    }

    /// Waits (bounded) for the server to end the TCP connection, discarding frames;
    /// true if it did (EOF or reset), false if it was still open at the deadline.
    pub async fn tcp_closed(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            match self.read_frame_until(deadline).await {
                Ok(_) => continue,
                Err(ReadEnd::Timeout) => return false,
                Err(_) => return true,
            }
        }
    }

    fn parse(&mut self) -> Result<Option<Frame>, String> {
        let b = &self.buf[self.start..];
        if b.len() < 2 {
            return Ok(None);
        }
        if b[1] & 0x80 != 0 {
            return Err("the server masked a frame".into());
        }
        let (len, mut at) = match b[1] & 0x7F {
            126 if b.len() < 4 => return Ok(None),
            126 => (u64::from(u16::from_be_bytes([b[2], b[3]])), 4),
            127 if b.len() < 10 => return Ok(None),
            127 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&b[2..10]);
                (u64::from_be_bytes(l), 10)
            }
            n => (u64::from(n), 2),
        };
        if len > MAX_READ_PAYLOAD {
            return Err(format!("server frame of {len} bytes"));
        }
        let len = len as usize;
        if b.len() < at + len {
            return Ok(None);
        }
        let frame = Frame {
            fin: b[0] & 0x80 != 0,
            opcode: b[0] & 0x0F,
            payload: b[at..at + len].to_vec(),
        };
        at += len;
        self.start += at;
        Ok(Some(frame))
    }
}
