//! The load generator's WebSocket client: as little as a client can do.
//!
//! A hand-written upgrade request (the `101` status is checked, nothing else), frames
//! parsed in place from one growable read buffer per connection (4 KiB to start), and
//! frames built into caller buffers. Client frames are masked as RFC 6455 requires.
//! Connections bind one of eight loopback source addresses (127.0.0.1 … 127.0.0.8) with
//! `IP_BIND_ADDRESS_NO_PORT`, so large connection counts and churn never run out of
//! ephemeral ports.

use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::AsRawFd;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

/// How many loopback source addresses connections rotate over.
pub const SOURCE_ADDRS: usize = 8;

/// Text frame opcode.
pub const OP_TEXT: u8 = 1;
/// Close frame opcode.
pub const OP_CLOSE: u8 = 8;
/// Ping frame opcode.
pub const OP_PING: u8 = 9;

/// Smallest free space kept in a read buffer before a read.
const READ_CHUNK: usize = 4096;

/// Opens a TCP connection from source address number `src` and upgrades it on `path`.
/// Returns the stream and the bytes that arrived after the `101` head.
pub async fn connect(addr: SocketAddr, src: usize, path: &str) -> io::Result<(TcpStream, Vec<u8>)> {
    let sock = TcpSocket::new_v4()?;
    set_bind_no_port(&sock);
    sock.set_reuseaddr(true)?;
    let ip = Ipv4Addr::new(127, 0, 0, 1 + (src % SOURCE_ADDRS) as u8);
    sock.bind(SocketAddr::new(ip.into(), 0))?;
    let mut stream = sock.connect(addr).await?;
    stream.set_nodelay(true)?;
    let req = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: cm9vbWNhc3QtYmVuY2gtMQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(req.as_bytes()).await?;
    let mut buf = Vec::with_capacity(512);
    loop {
        if buf.len() > 16 * 1024 {
            return Err(io::Error::other("upgrade response too long"));
        }
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            if !buf.starts_with(b"HTTP/1.1 101") {
                let line = String::from_utf8_lossy(&buf[..buf.len().min(40)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {line}")));
            }
            let rest = buf.split_off(end + 4);
            return Ok((stream, rest));
        }
    }
}

fn set_bind_no_port(sock: &TcpSocket) {
    let one: libc::c_int = 1;
    // SAFETY: a plain setsockopt on a socket we own, with a correctly sized int.
    unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&one as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// Sets a socket's receive buffer (the slow consumer keeps it small).
pub fn set_recv_buffer(stream: &TcpStream, bytes: usize) {
    let v = bytes as libc::c_int;
    // SAFETY: as above.
    unsafe {
        libc::setsockopt(
            stream.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&v as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
}

/// A cheap xorshift for mask keys.
pub struct Rng(u64);

impl Rng {
    /// Seeded; never zero.
    pub fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }
    /// The next 32 bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 16) as u32
    }
}

/// Appends one masked client frame (FIN set) to `out`.
pub fn encode(out: &mut Vec<u8>, opcode: u8, payload: &[u8], mask: u32) {
    out.push(0x80 | opcode);
    let n = payload.len();
    if n < 126 {
        out.push(0x80 | n as u8);
    } else if n <= 0xffff {
        out.push(0x80 | 126);
        out.extend_from_slice(&(n as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(n as u64).to_be_bytes());
    }
    let key = mask.to_be_bytes();
    out.extend_from_slice(&key);
    let start = out.len();
    out.extend_from_slice(payload);
    for (i, b) in out[start..].iter_mut().enumerate() {
        *b ^= key[i & 3];
    }
}

/// A frame found in a read buffer: its opcode and where its payload lies.
#[derive(Debug, Clone, Copy)]
pub struct FrameRef {
    /// The opcode (server frames are never fragmented by any peer here).
    pub opcode: u8,
    /// Payload start in the buffer.
    pub start: usize,
    /// Payload end in the buffer.
    pub end: usize,
}

/// One connection's read side: a buffer of received bytes parsed frame by frame.
pub struct Reader {
    buf: Vec<u8>,
    pos: usize,
    /// Bytes the frame at `pos` needs in all (0 when unknown), so reads grow the buffer
    /// once for a large frame.
    need: usize,
}

impl Reader {
    /// Starts with bytes that arrived with the upgrade response.
    pub fn new(early: Vec<u8>) -> Reader {
        Reader {
            buf: early,
            pos: 0,
            need: 0,
        }
    }

    /// The next complete frame in the buffer, if any.
    pub fn next_frame(&mut self) -> Option<FrameRef> {
        let b = &self.buf[self.pos..];
        if b.len() < 2 {
            return None;
        }
        let opcode = b[0] & 0x0f;
        let masked = b[1] & 0x80 != 0;
        let (len, mut hdr) = match b[1] & 0x7f {
            126 if b.len() >= 4 => (u16::from_be_bytes([b[2], b[3]]) as usize, 4),
            127 if b.len() >= 10 => (
                u64::from_be_bytes(b[2..10].try_into().expect("8 bytes")) as usize,
                10,
            ),
            126 | 127 => return None,
            n => (n as usize, 2),
        };
        if masked {
            hdr += 4;
        }
        if b.len() < hdr + len {
            self.need = hdr + len;
            return None;
        }
        self.need = 0;
        let start = self.pos + hdr;
        self.pos = start + len;
        Some(FrameRef {
            opcode,
            start,
            end: start + len,
        })
    }

    /// A frame's payload.
    pub fn payload(&self, f: FrameRef) -> &[u8] {
        &self.buf[f.start..f.end]
    }

    /// Drops parsed bytes and reads more. `Ok(0)` is end of stream.
    pub async fn fill<R: AsyncRead + Unpin>(&mut self, r: &mut R) -> io::Result<usize> {
        if self.pos > 0 {
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        let want = READ_CHUNK.max(self.need.saturating_sub(self.buf.len()));
        if self.buf.capacity() - self.buf.len() < want {
            self.buf.reserve(want);
        }
        r.read_buf(&mut self.buf).await
    }
}

/// Finds `needle` in `hay` (setup-time searches such as acks; the per-message search
/// is [`json_seq`]).
pub fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    memchr::memmem::find(hay, needle)
}

/// Parses the decimal number right after the room `seq` key in a JSON message. At
/// millions of messages a second this search is the generator's hot spot: a naive scan,
/// or a SIMD searcher built per message, cost more than the server spent delivering it.
pub fn json_seq(msg: &[u8]) -> Option<u64> {
    static KEY: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"seq\":"));
    let at = KEY.find(msg)? + KEY.needle().len();
    let mut v: u64 = 0;
    let mut any = false;
    for &c in &msg[at..] {
        if c.is_ascii_digit() {
            v = v * 10 + u64::from(c - b'0');
            any = true;
        } else {
            break;
        }
    }
    any.then_some(v)
}

/// Parses 16 lowercase hex digits.
pub fn hex16(b: &[u8]) -> Option<u64> {
    if b.len() < 16 {
        return None;
    }
    let mut v = 0u64;
    for &c in &b[..16] {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = (v << 4) | u64::from(d);
    }
    Some(v)
}

/// Builds a benchmark payload of exactly `len` bytes (at least 33): `#`, the sequence
/// number and the send time as 16 hex digits each, then `x` padding.
pub fn stamp(out: &mut Vec<u8>, seq: u64, t_ns: u64, len: usize) {
    use std::io::Write as _;
    let start = out.len();
    let _ = write!(out, "#{seq:016x}{t_ns:016x}");
    while out.len() - start < len {
        out.push(b'x');
    }
}

/// Reads a stamp anywhere in a message: `(seq, send time)`.
pub fn read_stamp(msg: &[u8]) -> Option<(u64, u64)> {
    let at = memchr::memchr(b'#', msg)?;
    let rest = &msg[at + 1..];
    Some((hex16(rest)?, hex16(rest.get(16..)?)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_reader() {
        let mut wire = Vec::new();
        // Server frames are unmasked: build them by hand.
        wire.extend_from_slice(&[0x81, 3]);
        wire.extend_from_slice(b"abc");
        let big = vec![b'y'; 300];
        wire.extend_from_slice(&[0x81, 126, 1, 44]);
        wire.extend_from_slice(&big);
        let mut r = Reader::new(wire);
        let f = r.next_frame().unwrap();
        assert_eq!((f.opcode, r.payload(f)), (OP_TEXT, &b"abc"[..]));
        let f = r.next_frame().unwrap();
        assert_eq!(r.payload(f), &big[..]);
        assert!(r.next_frame().is_none());
    }

    #[test]
    fn masked_frames_unmask() {
        let mut out = Vec::new();
        encode(&mut out, OP_TEXT, b"hello", 0x01020304);
        assert_eq!(out[0], 0x81);
        assert_eq!(out[1], 0x80 | 5);
        let key = &out[2..6];
        let un: Vec<u8> = out[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ key[i & 3])
            .collect();
        assert_eq!(un, b"hello");
    }

    #[test]
    fn stamps_and_json_numbers() {
        let mut p = Vec::new();
        stamp(&mut p, 42, 7, 64);
        assert_eq!(p.len(), 64);
        assert_eq!(read_stamp(&p), Some((42, 7)));
        let msg = br##"{"type":"message","room":"r","seq":17,"data":"#000000000000002a0000000000000007xx"}"##;
        assert_eq!(json_seq(msg), Some(17));
        assert_eq!(read_stamp(msg), Some((42, 7)));
    }
}
