//! One RFC 6455 connection after the handshake: bytes in, messages out, and back.
//!
//! # Driving it
//!
//! The adapter owns the socket and calls, in a loop:
//!
//! 1. [`Connection::handle_read`] with whatever bytes the socket produced (any split: a
//!    frame may arrive over many reads, or many frames in one read);
//! 2. [`Connection::poll_event`] until `None`, handing messages to the hub;
//! 3. [`Connection::poll_transmit`] until `None`, writing each buffer in order (reads
//!    queue automatic pongs and close replies, so this follows every read too);
//! 4. once [`Connection::is_closed`], after flushing, it drops the TCP connection.
//!
//! The `send_*` methods and [`Connection::close`] only queue bytes for step 3.
//!
//! # Peer faults
//!
//! Nothing a peer sends is an `Err` or a panic. A violation queues a close frame with the
//! right code (1002 protocol, 1007 bad UTF-8, 1009 too big), emits [`WsEvent::Failed`] and
//! moves to [`State::Closed`] at once (RFC 6455 §7.1.7, "fail the connection"). `Err`
//! ([`SendError`]) is only for caller bugs, such as sending after close.
//!
//! # Memory
//!
//! At most one frame header (14 bytes) is buffered; payload bytes are unmasked,
//! UTF-8-checked and appended to the message being assembled as they arrive. The message
//! size limit is checked against the whole message, at each frame header, before any of
//! that frame's payload is buffered, so a peer cannot make us hold more than
//! `max_message_size` by fragmenting or by announcing a huge frame.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};
use thiserror::Error;

use crate::close::{self, code, CloseParseError};
use crate::frame::{self, FrameHeader, OpCode, MAX_CONTROL_PAYLOAD, MAX_HEADER_LEN};
use crate::mask::apply_mask;
use crate::rng::Rng;
use crate::utf8::{Utf8Error, Utf8Validator};

/// Which end of the connection we are: it decides the masking direction, which is both
/// a rule we must follow when sending and one we enforce on the peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// We accepted the connection: we send unmasked frames and require masked ones.
    Server,
    /// We opened the connection: we mask every frame and require unmasked ones.
    Client,
}

/// Limits of one connection, set by the server operator (see PROTOCOL.md "Limits").
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectionConfig {
    /// Largest message accepted, across all its fragments; a bigger one fails the
    /// connection with 1009 before it is buffered. Default 1 MiB.
    pub max_message_size: usize,
    /// How many automatic pongs may wait unsent; beyond it only the newest pings are
    /// answered (RFC 6455 §5.5.3 allows answering just the latest), so a peer flooding
    /// pings at a reader that does not flush cannot grow our queue. Default 16; 0 is
    /// treated as 1.
    pub max_queued_control: usize,
}

impl Default for ConnectionConfig {
    /// The protocol defaults: 1 MiB messages, 16 pending pongs.
    fn default() -> Self {
        ConnectionConfig {
            max_message_size: 1 << 20,
            max_queued_control: 16,
        }
    }
}

/// Where the closing handshake stands; the adapter uses it to time out a peer that never
/// answers our close.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum State {
    /// Messages flow both ways.
    Open,
    /// We sent a close frame and wait for the peer's; received messages are still
    /// delivered, nothing more can be sent.
    Closing,
    /// The handshake finished or the connection failed: nothing more is read or sent
    /// (queued bytes, such as our close frame, may still need flushing).
    Closed,
}

/// Who started the closing handshake, so the hub can tell a client leaving from a
/// server-side kick being acknowledged.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Initiator {
    /// The peer sent the first close frame; we answered it.
    Peer,
    /// We sent the first close frame; the peer answered it.
    Local,
}

/// A complete text message, guaranteed to be valid UTF-8.
///
/// Wraps `Bytes` rather than `String` so the reassembled buffer is handed over without a
/// copy, and the guarantee lets consumers borrow it as `&str` without validating again.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Default)]
pub struct TextMessage(Bytes);

impl TextMessage {
    /// The message as text.
    pub fn as_str(&self) -> &str {
        // SAFETY: every constructor (the connection after `Utf8Validator` accepted the
        // whole message, `From<String>`, `From<&str>`, `TryFrom<Bytes>`) guarantees the
        // bytes are UTF-8, and `Bytes` is immutable, so they stay so.
        unsafe { core::str::from_utf8_unchecked(&self.0) }
    }

    /// The raw UTF-8 bytes, for parsers that take bytes (`serde_json::from_slice`).
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The underlying buffer, to forward without copying.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// Whether the message is empty (a valid WebSocket text message).
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<String> for TextMessage {
    /// For tests and runtimes that receive messages already framed (browser, worker).
    fn from(s: String) -> Self {
        TextMessage(Bytes::from(s))
    }
}

impl From<&str> for TextMessage {
    /// Copies the text, for tests and runtimes that receive framed messages.
    fn from(s: &str) -> Self {
        TextMessage(Bytes::copy_from_slice(s.as_bytes()))
    }
}

impl TryFrom<Bytes> for TextMessage {
    type Error = Utf8Error;

    /// Validates bytes from elsewhere, keeping the `as_str` guarantee.
    fn try_from(b: Bytes) -> Result<Self, Utf8Error> {
        core::str::from_utf8(&b).map_err(|_| Utf8Error)?;
        Ok(TextMessage(b))
    }
}

impl AsRef<str> for TextMessage {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

/// What happened on the connection, in order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WsEvent {
    /// A complete text message.
    Text(TextMessage),
    /// A complete binary message.
    Binary(Bytes),
    /// The peer pinged; the pong is already queued. Reported because any frame proves
    /// the peer alive (heartbeat).
    Ping(Bytes),
    /// The peer answered a ping (or sent an unsolicited pong).
    Pong(Bytes),
    /// The closing handshake completed; our reply (if the peer started it) is queued.
    Closed {
        /// The peer's close code; `None` if its close frame had no payload.
        code: Option<u16>,
        /// The peer's close reason (may be empty).
        reason: String,
        /// Who sent the first close frame.
        initiated_by: Initiator,
    },
    /// The peer violated the protocol; a close frame with `code` is queued and the
    /// connection is closed.
    Failed {
        /// The close code sent (1002, 1007 or 1009).
        code: u16,
        /// What went wrong, for logs.
        reason: &'static str,
    },
}

/// A caller bug when sending: the call had no effect.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum SendError {
    /// A close frame was already sent (or the connection failed): RFC 6455 forbids
    /// sending anything after it.
    #[error("connection is closing or closed")]
    Closed,
    /// A hub message sent from a client: pre-encoded frames are unmasked, which only a
    /// server may send.
    #[error("pre-encoded frames can only be sent by a server")]
    NotServer,
    /// A ping payload over 125 bytes.
    #[error("control payload of {0} bytes exceeds 125")]
    ControlTooLong(usize),
    /// `close` with a code that may not be sent (1005, 1006, 1015, unassigned ranges).
    #[error("close code {0} may not be sent")]
    InvalidCloseCode(u16),
}

/// A protocol violation: the close code and a static reason.
type Violation = (u16, &'static str);

/// How much of a frame's announced length we reserve up front. Reserving the whole
/// frame avoids regrowing the buffer, but a peer could announce 1 MiB and send one byte;
/// beyond this the buffer grows as bytes actually arrive.
const MAX_UPFRONT_RESERVE: u64 = 64 * 1024;

/// Queue slots an idle connection keeps (see [`Connection::shrink_idle`]).
const IDLE_QUEUE_SLOTS: usize = 8;

/// Idle points in a row with traffic before a connection counts as hot and keeps its
/// receive and send buffers between messages. One message and its reply (a join, an
/// RPC) make one such point, so a connection that did one exchange and went quiet keeps
/// nothing; an echo or a steady sender is hot from its third message on.
const HOT_AFTER: u8 = 2;

/// Largest message or frame whose buffer a hot connection keeps for the next one:
/// bigger ones are allocated for themselves and freed with them.
const MAX_REUSED_BUFFER: usize = 64 * 1024;

#[derive(Clone, Copy, Debug)]
enum ReadState {
    /// Accumulating a header in `header_buf`.
    Header,
    /// Streaming the payload of `header`; `offset` bytes of it are already processed.
    Payload {
        header: FrameHeader,
        remaining: u64,
        offset: usize,
    },
}

/// Events waiting for [`Connection::poll_event`]. A read almost always completes at most
/// one message, which the adapter takes at once: that one waits in `head`, inside the
/// connection, so receiving a message allocates no queue slot (an allocation and a free
/// per message on the echo and request paths otherwise, since an idle connection's slots
/// are freed). Only a read that completes several events spills into `rest`.
#[derive(Debug, Default)]
struct EventQueue {
    head: Option<WsEvent>,
    /// Events after `head`, oldest first; empty whenever `head` is.
    rest: VecDeque<WsEvent>,
}

impl EventQueue {
    fn push_back(&mut self, event: WsEvent) {
        if self.head.is_none() {
            self.head = Some(event);
        } else {
            self.rest.push_back(event);
        }
    }

    fn pop_front(&mut self) -> Option<WsEvent> {
        let next = self.head.take()?;
        self.head = self.rest.pop_front();
        Some(next)
    }

    /// Frees the spill slots once empty: a connection that once got a burst keeps none.
    fn shrink(&mut self) {
        if self.rest.is_empty() && self.rest.capacity() > 0 {
            self.rest = VecDeque::new();
        }
    }
}

/// Lets an empty kept buffer take `want` bytes only if that needs no allocation and the
/// memory is not far bigger than what goes in: a message or frame split off a buffer holds
/// the whole allocation for as long as it lives, so a small message the application keeps
/// must not pin the buffer of an earlier large one. Otherwise the buffer is let go (its
/// memory lives on with whatever still holds it) and the next `reserve` allocates to size.
fn reuse_or_drop(buf: &mut BytesMut, want: usize) {
    const SLACK_FLOOR: usize = 1024;
    // Even a buffer with no room left may hold a large allocation that `reserve` would
    // reclaim whole, so the check runs whatever `capacity()` says.
    if !(buf.try_reclaim(want) && buf.capacity() <= want.saturating_mul(4).max(SLACK_FLOOR)) {
        *buf = BytesMut::new();
    }
}

/// A sans-IO WebSocket connection (after the opening handshake), for either role.
#[derive(Debug)]
pub struct Connection {
    role: Role,
    config: ConnectionConfig,
    /// Masking keys, drawn only in the client role: a server connection (thousands per
    /// process) carries a pointer's worth instead of the generator's state.
    rng: Option<Box<Rng>>,
    state: State,
    /// Set once our close frame is queued: nothing may follow it.
    close_sent: bool,

    header_buf: [u8; MAX_HEADER_LEN],
    /// Bytes of `header_buf` filled (at most `MAX_HEADER_LEN`, so a byte holds it).
    header_len: u8,
    read: ReadState,
    /// Kind of the data message being assembled (set by its first frame until FIN).
    message: Option<OpCode>,
    message_buf: BytesMut,
    /// Where `send_text`/`send_binary` encode while the connection is hot (see
    /// [`Connection::shrink_idle`]); boxed so that every other connection pays a pointer.
    tx_buf: Option<Box<BytesMut>>,
    /// A message was received or sent since the last `shrink_idle`.
    traffic: bool,
    /// Consecutive `shrink_idle` calls that each followed traffic (saturating).
    hot: u8,
    utf8: Utf8Validator,
    /// Payload of the control frame being read (at most 125 bytes).
    control_buf: Vec<u8>,

    events: EventQueue,
    /// Automatic pongs, sent before `transmit`: control frames may go between any of our
    /// frames, and none is queued once our close is, so none follows it.
    pongs: VecDeque<Bytes>,
    transmit: VecDeque<Bytes>,
}

impl Connection {
    /// A connection for `role`; `rng` supplies client masking keys (a server never
    /// draws from it), seeded by the caller since the core has no entropy of its own.
    pub fn new(role: Role, config: ConnectionConfig, rng: Rng) -> Self {
        Connection {
            role,
            config,
            rng: (role == Role::Client).then(|| Box::new(rng)),
            state: State::Open,
            close_sent: false,
            header_buf: [0; MAX_HEADER_LEN],
            header_len: 0,
            read: ReadState::Header,
            message: None,
            message_buf: BytesMut::new(),
            tx_buf: None,
            traffic: false,
            hot: 0,
            utf8: Utf8Validator::new(),
            control_buf: Vec::new(),
            events: EventQueue::default(),
            pongs: VecDeque::new(),
            transmit: VecDeque::new(),
        }
    }

    /// A server connection; servers never mask, so no randomness is needed.
    pub fn server(config: ConnectionConfig) -> Self {
        Connection::new(Role::Server, config, Rng::from_u64(0))
    }

    /// A client connection; `rng` must be seeded from real entropy in production, since
    /// predictable mask keys defeat the cache-poisoning protection masking exists for.
    pub fn client(config: ConnectionConfig, rng: Rng) -> Self {
        Connection::new(Role::Client, config, rng)
    }

    /// Our role, for adapters that handle both.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Where the closing handshake stands.
    pub fn state(&self) -> State {
        self.state
    }

    /// True once nothing more will be read or sent: flush [`Connection::poll_transmit`],
    /// then drop the transport.
    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    /// Feeds bytes received from the peer, in order. Any split is fine. Ignored once
    /// closed, since the peer may legitimately keep sending after a failure.
    pub fn handle_read(&mut self, mut data: &[u8]) {
        while !data.is_empty() && self.state != State::Closed {
            let step = match self.read {
                ReadState::Header => self.read_header(&mut data),
                ReadState::Payload { .. } => self.read_payload(&mut data),
            };
            if let Err((code, reason)) = step {
                self.fail(code, reason);
            }
        }
    }

    /// The next event produced by [`Connection::handle_read`].
    pub fn poll_event(&mut self) -> Option<WsEvent> {
        self.events.pop_front()
    }

    /// The next buffer to write to the transport, in order. Each is a whole frame, so an
    /// adapter may stop between buffers without corrupting the stream.
    pub fn poll_transmit(&mut self) -> Option<Bytes> {
        let next = self
            .pongs
            .pop_front()
            .or_else(|| self.transmit.pop_front())?;
        Some(next)
    }

    /// Queues a text message as one frame.
    pub fn send_text(&mut self, text: &str) -> Result<(), SendError> {
        self.send_data(OpCode::Text, text.as_bytes())
    }

    /// Queues a binary message as one frame.
    pub fn send_binary(&mut self, data: &[u8]) -> Result<(), SendError> {
        self.send_data(OpCode::Binary, data)
    }

    /// Queues a ping (heartbeat); the peer's pong comes back as [`WsEvent::Pong`].
    pub fn send_ping(&mut self, payload: &[u8]) -> Result<(), SendError> {
        self.ensure_open()?;
        if payload.len() > MAX_CONTROL_PAYLOAD {
            return Err(SendError::ControlTooLong(payload.len()));
        }
        self.send_data(OpCode::Ping, payload)
    }

    /// Queues a message the hub encoded ([`crate::Outgoing`]): the fan-out hot path. Its
    /// frame is valid by construction (one unmasked text frame built by the core), so
    /// nothing is re-checked per receiver.
    pub fn send_outgoing(&mut self, msg: &crate::Outgoing) -> Result<(), SendError> {
        if self.role != Role::Server {
            return Err(SendError::NotServer);
        }
        self.ensure_open()?;
        self.push_transmit(msg.frame().clone());
        Ok(())
    }

    /// Queues a room burst the hub coalesced ([`crate::Frames`]), shared with every other
    /// member. Valid by construction, like [`Connection::send_outgoing`].
    pub fn send_frames(&mut self, frames: &crate::Frames) -> Result<(), SendError> {
        if self.role != Role::Server {
            return Err(SendError::NotServer);
        }
        self.ensure_open()?;
        self.push_transmit(frames.bytes().clone());
        Ok(())
    }

    /// Queues several hub messages coalesced into one buffer ([`crate::FrameBatch`]): the
    /// fan-out hot path when a receiver has a backlog, one queue entry and one write for
    /// all of them. Valid by construction, like [`Connection::send_outgoing`].
    pub fn send_batch(&mut self, batch: crate::FrameBatch) -> Result<(), SendError> {
        if self.role != Role::Server {
            return Err(SendError::NotServer);
        }
        self.ensure_open()?;
        if !batch.is_empty() {
            self.push_transmit(batch.into_bytes());
        }
        Ok(())
    }

    /// Starts the closing handshake: queues our close frame and moves to
    /// [`State::Closing`]; the peer's answer completes it as [`WsEvent::Closed`] with
    /// [`Initiator::Local`]. The reason is cut to fit a control frame.
    pub fn close(&mut self, code: u16, reason: &str) -> Result<(), SendError> {
        self.ensure_open()?;
        if !close::is_valid_on_wire(code) {
            return Err(SendError::InvalidCloseCode(code));
        }
        self.queue_close(&close::encode_close_payload(code, reason));
        self.state = State::Closing;
        Ok(())
    }

    fn ensure_open(&self) -> Result<(), SendError> {
        if self.close_sent || self.state == State::Closed {
            Err(SendError::Closed)
        } else {
            Ok(())
        }
    }

    fn send_data(&mut self, opcode: OpCode, payload: &[u8]) -> Result<(), SendError> {
        self.ensure_open()?;
        // A heartbeat is not traffic: it is what tells a quiet connection from a busy one.
        let data = !opcode.is_control();
        self.traffic |= data;
        let frame = if data && self.is_hot() && payload.len() <= MAX_REUSED_BUFFER {
            // Into the kept buffer: once the previous frame was written and dropped, the
            // same memory takes this one (no allocation per message).
            let mask = self.next_mask();
            let buf = self.tx_buf.get_or_insert_with(Box::default);
            let len = frame::header_len(payload.len() as u64, mask.is_some()) + payload.len();
            reuse_or_drop(buf, len);
            frame::encode_frame_into(buf, true, opcode, mask, payload);
            buf.split().freeze()
        } else {
            self.encode(opcode, payload)
        };
        self.push_transmit(frame);
        Ok(())
    }

    /// A fresh masking key in the client role; none for a server.
    fn next_mask(&mut self) -> Option<[u8; 4]> {
        let rng = self.rng.as_mut()?;
        let mut key = [0u8; 4];
        rng.fill(&mut key);
        Some(key)
    }

    /// Encodes one whole frame, masked with a fresh key in the client role.
    fn encode(&mut self, opcode: OpCode, payload: &[u8]) -> Bytes {
        let mask = self.next_mask();
        frame::encode_frame(true, opcode, mask, payload)
    }

    /// Whether the connection has had traffic at each of its last [`HOT_AFTER`] idle
    /// points: then it keeps its message buffers between messages.
    fn is_hot(&self) -> bool {
        self.hot >= HOT_AFTER
    }

    fn push_transmit(&mut self, frame: Bytes) {
        self.transmit.push_back(frame);
    }

    fn queue_close(&mut self, payload: &[u8]) {
        let frame = self.encode(OpCode::Close, payload);
        self.push_transmit(frame);
        self.close_sent = true;
    }

    fn queue_pong(&mut self, payload: &[u8]) {
        if self.close_sent {
            return;
        }
        let frame = self.encode(OpCode::Pong, payload);
        while self.pongs.len() >= self.config.max_queued_control.max(1) {
            self.pongs.pop_front();
        }
        self.pongs.push_back(frame);
    }

    /// Fails the connection (RFC 6455 §7.1.7): close frame, event, closed.
    fn fail(&mut self, code: u16, reason: &'static str) {
        if self.state == State::Closed {
            return;
        }
        if !self.close_sent {
            self.queue_close(&close::encode_close_payload(code, reason));
        }
        self.state = State::Closed;
        self.release_read_buffers();
        self.events.push_back(WsEvent::Failed { code, reason });
    }

    /// Gives back the memory of queues that are empty now. An adapter calls it when a
    /// connection goes idle (everything written): a burst's queue capacity would
    /// otherwise stay allocated for the life of the connection. The received events'
    /// spill slots are freed whole (one message per read needs none); the outgoing
    /// queues keep the few slots every connection uses (freeing them would cost an
    /// allocation per burst on the fan-out path).
    ///
    /// It is also where a busy connection is told from an idle one without a clock: a
    /// connection that had traffic before each of its last `HOT_AFTER` calls keeps its
    /// message buffers, so receiving and sending reuse the same memory (no allocation per
    /// message); the first call after a quiet spell (a heartbeat ping written, say) frees
    /// them.
    pub fn shrink_idle(&mut self) {
        fn shrink<T>(q: &mut VecDeque<T>, keep: usize) {
            if q.is_empty() && q.capacity() > keep {
                *q = VecDeque::new();
            }
        }
        self.hot = if self.traffic {
            self.hot.saturating_add(1)
        } else {
            0
        };
        self.traffic = false;
        if !self.is_hot() {
            // A message still being assembled keeps its bytes, of course.
            if self.message_buf.is_empty() {
                self.message_buf = BytesMut::new();
            }
            self.tx_buf = None;
        }
        self.events.shrink();
        shrink(&mut self.pongs, IDLE_QUEUE_SLOTS);
        shrink(&mut self.transmit, IDLE_QUEUE_SLOTS);
    }

    fn release_read_buffers(&mut self) {
        self.message = None;
        self.message_buf = BytesMut::new();
        self.tx_buf = None;
        self.control_buf = Vec::new();
        self.utf8.reset();
        self.read = ReadState::Header;
        self.header_len = 0;
    }

    fn read_header(&mut self, data: &mut &[u8]) -> Result<(), Violation> {
        let old = usize::from(self.header_len);
        let take = (MAX_HEADER_LEN - old).min(data.len());
        self.header_buf[old..old + take].copy_from_slice(&data[..take]);
        let available = old + take;
        match frame::decode_header(&self.header_buf[..available]) {
            Err(e) => Err((e.close_code(), e.reason())),
            Ok(None) => {
                // An incomplete header is shorter than MAX_HEADER_LEN, so all was taken.
                self.header_len = available as u8;
                *data = &data[take..];
                Ok(())
            }
            Ok(Some((header, n))) => {
                self.header_len = 0;
                *data = &data[n - old..];
                self.start_frame(header)
            }
        }
    }

    /// Checks what needs connection state (masking direction, fragmentation order,
    /// message size) and prepares to stream the payload.
    fn start_frame(&mut self, header: FrameHeader) -> Result<(), Violation> {
        match (self.role, header.mask) {
            (Role::Server, None) => return Err((code::PROTOCOL_ERROR, "unmasked client frame")),
            (Role::Client, Some(_)) => return Err((code::PROTOCOL_ERROR, "masked server frame")),
            _ => {}
        }
        match header.opcode {
            OpCode::Close | OpCode::Ping | OpCode::Pong => self.control_buf.clear(),
            OpCode::Continuation if self.message.is_none() => {
                return Err((code::PROTOCOL_ERROR, "continuation without a message"))
            }
            OpCode::Text | OpCode::Binary if self.message.is_some() => {
                return Err((code::PROTOCOL_ERROR, "new message inside a fragmented one"))
            }
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                let so_far = self.message_buf.len() as u64;
                let limit = self.config.max_message_size as u64;
                if header.payload_len > limit.saturating_sub(so_far) {
                    return Err((code::TOO_BIG, "message too big"));
                }
                // Bounded by the check above, so this cannot truncate.
                let want = header.payload_len.min(MAX_UPFRONT_RESERVE) as usize;
                if header.opcode != OpCode::Continuation {
                    self.message = Some(header.opcode);
                    self.utf8.reset();
                    // A new message starts on an empty buffer: the kept one if it fits.
                    debug_assert!(self.message_buf.is_empty());
                    reuse_or_drop(&mut self.message_buf, want);
                }
                self.message_buf.reserve(want);
            }
        }
        self.read = ReadState::Payload {
            header,
            remaining: header.payload_len,
            offset: 0,
        };
        if header.payload_len == 0 {
            self.finish_frame(header)?;
        }
        Ok(())
    }

    fn read_payload(&mut self, data: &mut &[u8]) -> Result<(), Violation> {
        let ReadState::Payload {
            header,
            remaining,
            offset,
        } = self.read
        else {
            unreachable!("read_payload is only called in the payload state");
        };
        let take = remaining.min(data.len() as u64) as usize;
        let (chunk, rest) = data.split_at(take);
        *data = rest;

        if header.opcode.is_control() {
            let start = self.control_buf.len();
            self.control_buf.extend_from_slice(chunk);
            if let Some(key) = header.mask {
                apply_mask(&mut self.control_buf[start..], key, offset);
            }
        } else {
            let start = self.message_buf.len();
            self.message_buf.extend_from_slice(chunk);
            let fresh = &mut self.message_buf[start..];
            if let Some(key) = header.mask {
                apply_mask(fresh, key, offset);
            }
            if self.message == Some(OpCode::Text) && self.utf8.feed(fresh).is_err() {
                return Err((code::INVALID_PAYLOAD, "invalid UTF-8 in text message"));
            }
        }

        let remaining = remaining - take as u64;
        self.read = ReadState::Payload {
            header,
            remaining,
            offset: offset + take,
        };
        if remaining == 0 {
            self.finish_frame(header)?;
        }
        Ok(())
    }

    fn finish_frame(&mut self, header: FrameHeader) -> Result<(), Violation> {
        self.read = ReadState::Header;
        match header.opcode {
            OpCode::Ping => {
                let payload = Bytes::copy_from_slice(&self.control_buf);
                self.queue_pong(&payload);
                self.events.push_back(WsEvent::Ping(payload));
            }
            OpCode::Pong => {
                let payload = Bytes::copy_from_slice(&self.control_buf);
                self.events.push_back(WsEvent::Pong(payload));
            }
            OpCode::Close => self.receive_close()?,
            OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                if header.fin {
                    let kind = self
                        .message
                        .take()
                        .expect("a data frame belongs to a message");
                    self.traffic = true;
                    // A hot connection splits the message off its buffer, which keeps
                    // the memory: once the application drops the message, the next
                    // one is read into the same bytes (`reserve` reclaims them).
                    let payload = if self.is_hot() && self.message_buf.len() <= MAX_REUSED_BUFFER {
                        self.message_buf.split().freeze()
                    } else {
                        core::mem::take(&mut self.message_buf).freeze()
                    };
                    let event = if kind == OpCode::Text {
                        if self.utf8.finish().is_err() {
                            return Err((code::INVALID_PAYLOAD, "truncated UTF-8 in text message"));
                        }
                        WsEvent::Text(TextMessage(payload))
                    } else {
                        WsEvent::Binary(payload)
                    };
                    self.events.push_back(event);
                }
            }
        }
        Ok(())
    }

    fn receive_close(&mut self) -> Result<(), Violation> {
        let (code, reason) = close::parse_close_payload(&self.control_buf).map_err(|e| {
            let reason = match e {
                CloseParseError::TooShort => "close payload of 1 byte",
                CloseParseError::InvalidCode(_) => "invalid close code",
                CloseParseError::InvalidUtf8 => "invalid UTF-8 in close reason",
            };
            (e.close_code(), reason)
        })?;
        let initiated_by = if self.close_sent {
            Initiator::Local
        } else {
            // Echo the peer's code (RFC 6455 §5.5.1), or send an empty close if it had none.
            let reply = code
                .map(|c| close::encode_close_payload(c, ""))
                .unwrap_or_default();
            self.queue_close(&reply);
            Initiator::Peer
        };
        self.state = State::Closed;
        self.release_read_buffers();
        self.events.push_back(WsEvent::Closed {
            code,
            reason,
            initiated_by,
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_idle_connection_keeps_no_event_slots_and_few_transmit_slots() {
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(3));
        let mut server = Connection::server(ConnectionConfig::default());
        client.send_text(r#"{"type":"join","room":"r"}"#).unwrap();
        while let Some(b) = client.poll_transmit() {
            server.handle_read(&b);
        }
        assert!(matches!(server.poll_event(), Some(WsEvent::Text(_))));
        assert!(server.events.head.is_none() && server.events.rest.is_empty());
        let msg = crate::Outgoing::from_text(r#"{"type":"ack"}"#);
        server.send_outgoing(&msg).unwrap();
        while server.poll_transmit().is_some() {}
        server.shrink_idle();
        assert_eq!(
            server.events.rest.capacity(),
            0,
            "a single request needs no event slot on the heap"
        );
        assert!(
            server.transmit.capacity() > 0,
            "the fan-out path's slots stay"
        );
        assert!(server.transmit.capacity() <= IDLE_QUEUE_SLOTS);
    }

    /// One echo exchange as an adapter runs it: read, take the event, answer, write,
    /// go idle. Returns the received payload and the frame sent.
    fn echo_once(server: &mut Connection, client: &mut Connection, text: &str) -> (Bytes, Bytes) {
        client.send_text(text).unwrap();
        while let Some(b) = client.poll_transmit() {
            server.handle_read(&b);
        }
        let Some(WsEvent::Text(got)) = server.poll_event() else {
            panic!("expected a text message");
        };
        server.send_text(got.as_str()).unwrap();
        let sent = server.poll_transmit().expect("the echo");
        assert!(server.poll_transmit().is_none());
        client.handle_read(&sent);
        assert_eq!(client.poll_event(), Some(WsEvent::Text(got.clone())));
        client.shrink_idle();
        server.shrink_idle();
        (got.0, sent)
    }

    #[test]
    fn a_hot_connection_reuses_its_buffers_and_frees_them_when_quiet() {
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(5));
        let mut server = Connection::server(ConnectionConfig::default());
        // One exchange and quiet: nothing kept (the idle-memory case).
        let (got, sent) = echo_once(&mut server, &mut client, "join");
        drop((got, sent));
        assert_eq!(server.message_buf.capacity(), 0);
        assert!(server.tx_buf.is_none());
        // Busy: from the third message on, the same memory takes every message and frame.
        let mut seen = Vec::new();
        for i in 0..6 {
            let (got, sent) = echo_once(&mut server, &mut client, &format!("message {i}"));
            seen.push((got.as_ptr(), sent.as_ptr()));
        }
        assert!(server.is_hot());
        assert_eq!(
            seen[3], seen[4],
            "received into and sent from the kept buffers"
        );
        assert_eq!(seen[4], seen[5]);
        // A message the application still holds is never overwritten by the next one.
        let (held, held_frame) = echo_once(&mut server, &mut client, "held");
        let (next, next_frame) = echo_once(&mut server, &mut client, "next one");
        assert_eq!(&held[..], b"held");
        assert_eq!(&next[..], b"next one");
        assert_ne!(held.as_ptr(), next.as_ptr());
        assert_eq!(
            &held_frame[2..],
            b"held",
            "a 2-byte header, then the payload"
        );
        assert_ne!(held_frame.as_ptr(), next_frame.as_ptr());
        // Quiet again (a heartbeat written, nothing received): the buffers go.
        server.send_ping(b"").unwrap();
        while server.poll_transmit().is_some() {}
        server.shrink_idle();
        assert!(!server.is_hot());
        assert_eq!(server.message_buf.capacity(), 0);
        assert!(server.tx_buf.is_none());
    }

    /// A server and its client after enough echoes for the server to be hot.
    fn hot_pair(seed: u64) -> (Connection, Connection) {
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(seed));
        let mut server = Connection::server(ConnectionConfig::default());
        for _ in 0..3 {
            echo_once(&mut server, &mut client, "warm");
        }
        assert!(server.is_hot());
        (server, client)
    }

    #[test]
    fn a_hot_connection_keeps_no_buffer_for_a_large_message() {
        let (mut server, mut client) = hot_pair(6);
        let big = "x".repeat(MAX_REUSED_BUFFER + 1);
        let (got, sent) = echo_once(&mut server, &mut client, &big);
        assert_eq!(got.len(), big.len());
        assert_eq!(sent.len(), big.len() + 10);
        assert!(server.message_buf.capacity() < MAX_REUSED_BUFFER);
        assert!(server
            .tx_buf
            .as_ref()
            .is_none_or(|b| b.capacity() < MAX_REUSED_BUFFER));
    }

    #[test]
    fn a_small_message_does_not_pin_a_large_kept_buffer() {
        let (mut server, mut client) = hot_pair(8);
        let big = "y".repeat(32 * 1024);
        let (got, sent) = echo_once(&mut server, &mut client, &big);
        drop((got, sent));
        // Both kept buffers are 32 KiB now; a short message must not be split off them.
        let (small, small_frame) = echo_once(&mut server, &mut client, "tiny");
        assert_eq!(&small[..], b"tiny");
        assert!(
            server.message_buf.capacity() < 4096,
            "the large buffer was let go"
        );
        assert!(server.tx_buf.as_ref().unwrap().capacity() < 4096);
        drop((small, small_frame));
        // And the short messages that follow reuse their own small buffers.
        let (a, _) = echo_once(&mut server, &mut client, "tiny");
        let p = a.as_ptr();
        drop(a);
        let (b, _) = echo_once(&mut server, &mut client, "tinz");
        // The same small allocation (at its start again, or in its unused rest).
        let offset = (b.as_ptr() as usize).abs_diff(p as usize);
        assert!(offset < 16, "{offset}");
    }

    #[test]
    fn events_from_one_read_come_out_in_order() {
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(7));
        let mut server = Connection::server(ConnectionConfig::default());
        let mut wire = Vec::new();
        for t in ["a", "b", "c"] {
            client.send_text(t).unwrap();
        }
        client.send_ping(b"p").unwrap();
        while let Some(b) = client.poll_transmit() {
            wire.extend_from_slice(&b);
        }
        server.handle_read(&wire);
        assert_eq!(
            server.poll_event(),
            Some(WsEvent::Text(TextMessage::from("a")))
        );
        // Mid-queue, a new read's events go behind the ones still waiting.
        client.send_text("d").unwrap();
        server.handle_read(&client.poll_transmit().unwrap());
        assert_eq!(
            server.poll_event(),
            Some(WsEvent::Text(TextMessage::from("b")))
        );
        assert_eq!(
            server.poll_event(),
            Some(WsEvent::Text(TextMessage::from("c")))
        );
        assert_eq!(
            server.poll_event(),
            Some(WsEvent::Ping(Bytes::from_static(b"p")))
        );
        assert_eq!(
            server.poll_event(),
            Some(WsEvent::Text(TextMessage::from("d")))
        );
        assert_eq!(server.poll_event(), None);
        server.shrink_idle();
        assert_eq!(server.events.rest.capacity(), 0);
    }

    #[test]
    fn hub_messages_go_out_as_is_and_not_after_close() {
        let msg = crate::Outgoing::from_text(r#"{"type":"pong"}"#);
        let mut server = Connection::server(ConnectionConfig::default());
        server.send_outgoing(&msg).unwrap();
        let out = server.poll_transmit().unwrap();
        assert_eq!(&out, msg.frame());
        assert_eq!(
            out.as_ptr(),
            msg.frame().as_ptr(),
            "fan-out shares the buffer"
        );
        server.close(1000, "").unwrap();
        assert_eq!(server.send_outgoing(&msg), Err(SendError::Closed));
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(1));
        assert_eq!(client.send_outgoing(&msg), Err(SendError::NotServer));
    }

    #[test]
    fn batches_go_out_as_one_buffer_and_not_after_close() {
        let a = crate::Outgoing::from_text(r#"{"type":"pong"}"#);
        let b = crate::Outgoing::from_text(r#"{"type":"pong","id":"2"}"#);
        let mut batch = crate::FrameBatch::default();
        batch.push(&a);
        batch.push(&b);
        let mut server = Connection::server(ConnectionConfig::default());
        server.send_batch(crate::FrameBatch::default()).unwrap();
        assert_eq!(
            server.poll_transmit(),
            None,
            "an empty batch queues nothing"
        );
        server.send_batch(batch.clone()).unwrap();
        let out = server.poll_transmit().unwrap();
        assert_eq!(&out[..a.wire_len()], &a.frame()[..]);
        assert_eq!(&out[a.wire_len()..], &b.frame()[..]);
        // The client side of a connection parses them as two messages.
        let mut client = Connection::client(ConnectionConfig::default(), Rng::from_u64(1));
        client.handle_read(&out);
        assert!(matches!(client.poll_event(), Some(WsEvent::Text(t)) if t.as_str() == a.text()));
        assert!(matches!(client.poll_event(), Some(WsEvent::Text(t)) if t.as_str() == b.text()));
        server.close(1000, "").unwrap();
        assert_eq!(server.send_batch(batch.clone()), Err(SendError::Closed));
        assert_eq!(client.send_batch(batch), Err(SendError::NotServer));
    }

    use super::*;
    use crate::frame::{decode_header, encode_frame};
    use crate::rng::Rng;
    use proptest::prelude::*;

    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    const BOTH: [Role; 2] = [Role::Server, Role::Client];

    fn conn(role: Role) -> Connection {
        conn_with(role, ConnectionConfig::default())
    }

    fn conn_with(role: Role, config: ConnectionConfig) -> Connection {
        Connection::new(role, config, Rng::from_u64(42))
    }

    /// A frame as the peer of `receiver` must send it (masked toward a server).
    fn peer(receiver: Role, fin: bool, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mask = (receiver == Role::Server).then_some(KEY);
        encode_frame(fin, op, mask, payload).to_vec()
    }

    /// The same frame with the masking direction wrong.
    fn wrong_mask(receiver: Role, op: OpCode, payload: &[u8]) -> Vec<u8> {
        let mask = (receiver == Role::Client).then_some(KEY);
        encode_frame(true, op, mask, payload).to_vec()
    }

    /// Header bytes as the peer would send them, followed by a raw (already masked if
    /// needed) tail: for handcrafted length encodings.
    fn raw_header(receiver: Role, b0: u8, len_bytes: &[u8]) -> Vec<u8> {
        let mut v = vec![b0];
        let mask_bit = if receiver == Role::Server { 0x80 } else { 0 };
        v.push(len_bytes[0] | mask_bit);
        v.extend_from_slice(&len_bytes[1..]);
        if receiver == Role::Server {
            v.extend_from_slice(&KEY);
        }
        v
    }

    fn events(c: &mut Connection) -> Vec<WsEvent> {
        core::iter::from_fn(|| c.poll_event()).collect()
    }

    /// Decodes everything `c` queued, checking its masking direction.
    fn sent(c: &mut Connection) -> Vec<(OpCode, Vec<u8>)> {
        let mut out = Vec::new();
        while let Some(b) = c.poll_transmit() {
            let (h, n) = decode_header(&b).unwrap().unwrap();
            assert_eq!(
                h.mask.is_some(),
                c.role() == Role::Client,
                "masking direction"
            );
            assert_eq!(
                n as u64 + h.payload_len,
                b.len() as u64,
                "one frame per buffer"
            );
            assert!(h.fin);
            let mut p = b[n..].to_vec();
            if let Some(k) = h.mask {
                apply_mask(&mut p, k, 0);
            }
            out.push((h.opcode, p));
        }
        out
    }

    fn close_frame(code: u16) -> (OpCode, Vec<u8>) {
        (OpCode::Close, code.to_be_bytes().to_vec())
    }

    fn text(s: &str) -> WsEvent {
        WsEvent::Text(TextMessage::from(s))
    }

    /// Asserts `c` failed with `code`, queued a close frame with that code, and stays dead.
    fn assert_failed(c: &mut Connection, code: u16) {
        let ev = events(c);
        assert!(
            matches!(ev.last(), Some(WsEvent::Failed { code: got, .. }) if *got == code),
            "expected Failed {code}, got {ev:?}"
        );
        let frames = sent(c);
        let (op, payload) = frames.last().expect("a close frame is queued");
        assert_eq!(*op, OpCode::Close);
        assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), code);
        assert!(c.is_closed());
        assert_eq!(c.state(), State::Closed);
        c.handle_read(&peer(c.role(), true, OpCode::Text, b"ignored"));
        assert!(events(c).is_empty());
        assert!(c.poll_transmit().is_none());
        assert_eq!(c.send_text("x"), Err(SendError::Closed));
    }

    #[test]
    fn single_frames_all_length_encodings() {
        for role in BOTH {
            for len in [0usize, 1, 125, 126, 127, 65535, 65536, 70000] {
                let payload: Vec<u8> = (0..len).map(|i| i as u8).collect();
                let mut c = conn(role);
                c.handle_read(&peer(role, true, OpCode::Binary, &payload));
                assert_eq!(
                    events(&mut c),
                    [WsEvent::Binary(payload.into())],
                    "{role:?} {len}"
                );
                assert_eq!(c.state(), State::Open);
            }
        }
    }

    #[test]
    fn rfc_example_bytes() {
        let mut s = conn(Role::Server);
        s.handle_read(b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        assert_eq!(events(&mut s), [text("Hello")]);
        let mut c = conn(Role::Client);
        c.handle_read(b"\x01\x03Hel\x80\x02lo\x89\x05Hello");
        assert_eq!(
            events(&mut c),
            [text("Hello"), WsEvent::Ping(Bytes::from_static(b"Hello"))]
        );
        let pong = c.poll_transmit().unwrap();
        let (h, n) = decode_header(&pong).unwrap().unwrap();
        let mut p = pong[n..].to_vec();
        apply_mask(&mut p, h.mask.expect("client pongs are masked"), 0);
        assert_eq!((h.opcode, &p[..]), (OpCode::Pong, &b"Hello"[..]));
    }

    #[test]
    fn byte_at_a_time() {
        for role in BOTH {
            let mut input = peer(role, false, OpCode::Text, "κό".as_bytes());
            input.extend(peer(role, true, OpCode::Ping, b"p"));
            input.extend(peer(role, true, OpCode::Continuation, "σμε".as_bytes()));
            input.extend(peer(role, true, OpCode::Binary, &[0u8; 300]));
            let mut c = conn(role);
            for b in &input {
                c.handle_read(core::slice::from_ref(b));
            }
            assert_eq!(
                events(&mut c),
                [
                    WsEvent::Ping(Bytes::from_static(b"p")),
                    text("κόσμε"),
                    WsEvent::Binary(vec![0u8; 300].into())
                ]
            );
            assert_eq!(sent(&mut c), [(OpCode::Pong, b"p".to_vec())]);
        }
    }

    #[test]
    fn masking_direction_enforced() {
        for role in BOTH {
            for op in [OpCode::Text, OpCode::Ping, OpCode::Close] {
                let mut c = conn(role);
                c.handle_read(&wrong_mask(role, op, b""));
                assert_failed(&mut c, 1002);
            }
        }
    }

    #[test]
    fn non_minimal_and_top_bit_lengths_rejected() {
        for role in BOTH {
            for len_bytes in [
                &b"\x7e\x00\x7d"[..],
                &b"\x7e\x00\x00"[..],
                &b"\x7f\x00\x00\x00\x00\x00\x00\xff\xff"[..],
                &b"\x7f\x80\x00\x00\x00\x00\x00\x00\x00"[..],
            ] {
                let mut c = conn(role);
                c.handle_read(&raw_header(role, 0x82, len_bytes));
                assert_failed(&mut c, 1002);
            }
            // Minimal encodings just above each boundary are accepted.
            let mut c = conn(role);
            c.handle_read(&raw_header(role, 0x82, b"\x7e\x00\x7e"));
            c.handle_read(&[0u8; 126]);
            assert!(matches!(&events(&mut c)[..], [WsEvent::Binary(b)] if b.len() == 126));
        }
    }

    #[test]
    fn control_frame_rules() {
        for role in BOTH {
            // Over 125 bytes.
            let mut c = conn(role);
            c.handle_read(&raw_header(role, 0x89, b"\x7e\x00\x7e"));
            assert_failed(&mut c, 1002);
            // Fragmented.
            for op in [0x09u8, 0x0a, 0x08] {
                let mut c = conn(role);
                c.handle_read(&raw_header(role, op, b"\x00"));
                assert_failed(&mut c, 1002);
            }
            // 125 bytes is fine.
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Ping, &[7u8; 125]));
            assert_eq!(events(&mut c), [WsEvent::Ping(vec![7u8; 125].into())]);
            assert_eq!(sent(&mut c), [(OpCode::Pong, vec![7u8; 125])]);
        }
    }

    #[test]
    fn control_frames_between_fragments() {
        for role in BOTH {
            let mut c = conn(role);
            let mut input = peer(role, false, OpCode::Binary, b"ab");
            input.extend(peer(role, true, OpCode::Pong, b"x"));
            input.extend(peer(role, false, OpCode::Continuation, b"cd"));
            input.extend(peer(role, true, OpCode::Ping, b"y"));
            input.extend(peer(role, true, OpCode::Continuation, b"ef"));
            c.handle_read(&input);
            assert_eq!(
                events(&mut c),
                [
                    WsEvent::Pong(Bytes::from_static(b"x")),
                    WsEvent::Ping(Bytes::from_static(b"y")),
                    WsEvent::Binary(Bytes::from_static(b"abcdef")),
                ]
            );
            // A close between fragments ends the connection cleanly, dropping the partial.
            let mut c = conn(role);
            let mut input = peer(role, false, OpCode::Text, b"ab");
            input.extend(peer(role, true, OpCode::Close, &1000u16.to_be_bytes()));
            c.handle_read(&input);
            assert_eq!(
                events(&mut c),
                [WsEvent::Closed {
                    code: Some(1000),
                    reason: String::new(),
                    initiated_by: Initiator::Peer
                }]
            );
        }
    }

    #[test]
    fn reserved_bits_and_opcodes() {
        for role in BOTH {
            for b0 in [
                0xc1u8, 0xa1, 0x91, 0x83, 0x84, 0x85, 0x86, 0x87, 0x8b, 0x8c, 0x8d, 0x8e, 0x8f,
            ] {
                let mut c = conn(role);
                c.handle_read(&raw_header(role, b0, b"\x00"));
                assert_failed(&mut c, 1002);
            }
        }
    }

    #[test]
    fn fragmentation_order() {
        for role in BOTH {
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Continuation, b"x"));
            assert_failed(&mut c, 1002);

            let mut c = conn(role);
            c.handle_read(&peer(role, false, OpCode::Continuation, b"x"));
            assert_failed(&mut c, 1002);

            for op in [OpCode::Text, OpCode::Binary] {
                let mut c = conn(role);
                let mut input = peer(role, false, OpCode::Text, b"a");
                input.extend(peer(role, true, op, b"b"));
                c.handle_read(&input);
                assert_failed(&mut c, 1002);
            }
            // Empty fragments are legal, including an empty final one.
            let mut c = conn(role);
            let mut input = peer(role, false, OpCode::Text, b"");
            input.extend(peer(role, false, OpCode::Continuation, b"a"));
            input.extend(peer(role, true, OpCode::Continuation, b""));
            input.extend(peer(role, true, OpCode::Text, b""));
            c.handle_read(&input);
            assert_eq!(events(&mut c), [text("a"), text("")]);
        }
    }

    #[test]
    fn message_size_checked_at_header_time() {
        let config = ConnectionConfig {
            max_message_size: 10,
            ..Default::default()
        };
        for role in BOTH {
            // Exactly the limit passes.
            let mut c = conn_with(role, config.clone());
            c.handle_read(&peer(role, true, OpCode::Binary, &[1; 10]));
            assert_eq!(events(&mut c).len(), 1);
            // One frame over: fails from the header alone, no payload needed.
            let mut c = conn_with(role, config.clone());
            let frame = peer(role, true, OpCode::Binary, &[1; 11]);
            let header_len = frame.len() - 11;
            c.handle_read(&frame[..header_len]);
            assert_failed(&mut c, 1009);
            // A huge announced length fails without allocating.
            let mut c = conn_with(role, config.clone());
            c.handle_read(&raw_header(
                role,
                0x82,
                b"\x7f\x7f\xff\xff\xff\xff\xff\xff\xff",
            ));
            assert_failed(&mut c, 1009);
            // Cumulative across fragments: 6 + 5 > 10, detected at the second header.
            let mut c = conn_with(role, config.clone());
            c.handle_read(&peer(role, false, OpCode::Text, b"abcdef"));
            let second = peer(role, true, OpCode::Continuation, b"ghijk");
            c.handle_read(&second[..second.len() - 5]);
            assert_failed(&mut c, 1009);
            // Control frames do not count toward the message.
            let mut c = conn_with(role, config.clone());
            let mut input = peer(role, false, OpCode::Text, b"abcde");
            input.extend(peer(role, true, OpCode::Ping, &[0; 50]));
            input.extend(peer(role, true, OpCode::Continuation, b"fghij"));
            c.handle_read(&input);
            assert_eq!(events(&mut c)[1], text("abcdefghij"));
        }
    }

    #[test]
    fn invalid_utf8_fails_on_first_bad_byte_mid_frame() {
        for role in BOTH {
            // "κόσμε" then a surrogate, inside a frame that has not finished arriving.
            let mut payload = "κόσμε".as_bytes().to_vec();
            payload.extend_from_slice(b"\xed\xa0\x80edited");
            let frame = peer(role, true, OpCode::Text, &payload);
            let header_len = frame.len() - payload.len();
            let bad_at = header_len + "κόσμε".len() + 1; // the A0 after ED
            let mut c = conn(role);
            c.handle_read(&frame[..bad_at]);
            assert!(events(&mut c).is_empty(), "{role:?}: valid prefix so far");
            c.handle_read(&frame[bad_at..bad_at + 1]);
            assert_failed(&mut c, 1007);
        }
    }

    #[test]
    fn utf8_across_fragments() {
        for role in BOTH {
            // A valid 4-byte character split across three fragments.
            let mut c = conn(role);
            let mut input = peer(role, false, OpCode::Text, b"\xf0");
            input.extend(peer(role, false, OpCode::Continuation, b"\x9d\x84"));
            input.extend(peer(role, true, OpCode::Continuation, b"\x9e!"));
            c.handle_read(&input);
            assert_eq!(events(&mut c), [text("𝄞!")]);
            // Invalid continuation in a later fragment fails at that fragment.
            let mut c = conn(role);
            c.handle_read(&peer(role, false, OpCode::Text, b"ok\xf4"));
            assert!(events(&mut c).is_empty());
            c.handle_read(&peer(role, false, OpCode::Continuation, b"\x90"));
            assert_failed(&mut c, 1007);
            // A message ending mid-character fails at FIN.
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Text, b"ok\xe2\x82"));
            assert_failed(&mut c, 1007);
            // Binary messages are not validated.
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Binary, b"\xff\xfe"));
            assert_eq!(
                events(&mut c),
                [WsEvent::Binary(Bytes::from_static(b"\xff\xfe"))]
            );
        }
    }

    #[test]
    fn peer_initiated_close_is_echoed() {
        for role in BOTH {
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Close, b"\x03\xe9going"));
            assert_eq!(
                events(&mut c),
                [WsEvent::Closed {
                    code: Some(1001),
                    reason: "going".into(),
                    initiated_by: Initiator::Peer
                }]
            );
            assert_eq!(sent(&mut c), [close_frame(1001)]);
            assert!(c.is_closed());
            assert_eq!(c.close(1000, ""), Err(SendError::Closed));
            assert_eq!(c.send_binary(b"x"), Err(SendError::Closed));
            assert_eq!(c.send_ping(b"x"), Err(SendError::Closed));

            // No status code: reply with an empty close.
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Close, b""));
            assert_eq!(
                events(&mut c),
                [WsEvent::Closed {
                    code: None,
                    reason: String::new(),
                    initiated_by: Initiator::Peer
                }]
            );
            assert_eq!(sent(&mut c), [(OpCode::Close, vec![])]);
        }
    }

    #[test]
    fn locally_initiated_close() {
        for role in BOTH {
            let mut c = conn(role);
            c.close(1000, "bye").unwrap();
            assert_eq!(c.state(), State::Closing);
            assert!(!c.is_closed());
            assert_eq!(sent(&mut c), [(OpCode::Close, b"\x03\xe8bye".to_vec())]);
            assert_eq!(c.send_text("late"), Err(SendError::Closed));
            assert_eq!(c.close(1000, ""), Err(SendError::Closed));
            // Data still arriving is delivered; pings are no longer answered.
            let mut input = peer(role, true, OpCode::Text, b"in flight");
            input.extend(peer(role, true, OpCode::Ping, b"p"));
            input.extend(peer(role, true, OpCode::Close, b"\x03\xe8"));
            input.extend(peer(role, true, OpCode::Text, b"after close"));
            c.handle_read(&input);
            assert_eq!(
                events(&mut c),
                [
                    text("in flight"),
                    WsEvent::Ping(Bytes::from_static(b"p")),
                    WsEvent::Closed {
                        code: Some(1000),
                        reason: String::new(),
                        initiated_by: Initiator::Local
                    },
                ]
            );
            assert!(
                sent(&mut c).is_empty(),
                "no second close, no pong after close"
            );
            assert!(c.is_closed());
        }
    }

    #[test]
    fn close_rejects_unsendable_codes() {
        let mut c = conn(Role::Server);
        for code in [0u16, 999, 1005, 1006, 1015, 2000, 5000] {
            assert_eq!(c.close(code, ""), Err(SendError::InvalidCloseCode(code)));
        }
        assert_eq!(c.state(), State::Open);
        // Long reasons are truncated to fit a control frame.
        c.close(4000, &"é".repeat(100)).unwrap();
        let frames = sent(&mut c);
        assert!(frames[0].1.len() <= 125);
    }

    #[test]
    fn bad_close_payloads() {
        for role in BOTH {
            let mut c = conn(role);
            c.handle_read(&peer(role, true, OpCode::Close, b"\x03"));
            assert_failed(&mut c, 1002);
            for code in [0u16, 999, 1004, 1005, 1006, 1015, 1016, 2999, 5000, 65535] {
                let mut c = conn(role);
                c.handle_read(&peer(role, true, OpCode::Close, &code.to_be_bytes()));
                assert_failed(&mut c, 1002);
            }
            let mut c = conn(role);
            c.handle_read(&peer(
                role,
                true,
                OpCode::Close,
                b"\x03\xe8\xce\xba\xed\xa0\x80",
            ));
            assert_failed(&mut c, 1007);
            // Valid application and registered codes are accepted and echoed.
            for code in [1000u16, 1003, 1007, 1011, 1012, 1014, 3000, 4999] {
                let mut c = conn(role);
                c.handle_read(&peer(role, true, OpCode::Close, &code.to_be_bytes()));
                assert!(
                    matches!(events(&mut c)[..], [WsEvent::Closed { code: Some(got), .. }] if got == code)
                );
                assert_eq!(sent(&mut c), [close_frame(code)]);
            }
        }
    }

    #[test]
    fn violation_while_closing_sends_no_second_close() {
        for role in BOTH {
            let mut c = conn(role);
            c.close(1000, "").unwrap();
            sent(&mut c);
            c.handle_read(&wrong_mask(role, OpCode::Text, b"x"));
            assert!(matches!(
                events(&mut c)[..],
                [WsEvent::Failed { code: 1002, .. }]
            ));
            assert!(sent(&mut c).is_empty());
            assert!(c.is_closed());
        }
    }

    #[test]
    fn auto_pongs_are_bounded_and_keep_the_latest() {
        let config = ConnectionConfig {
            max_queued_control: 4,
            ..Default::default()
        };
        for role in BOTH {
            let mut c = conn_with(role, config.clone());
            c.send_text("queued first").unwrap();
            let mut input = Vec::new();
            for i in 0u8..20 {
                input.extend(peer(role, true, OpCode::Ping, &[i]));
            }
            c.handle_read(&input);
            assert_eq!(events(&mut c).len(), 20);
            let frames = sent(&mut c);
            let pongs: Vec<_> = frames
                .iter()
                .filter(|(op, _)| *op == OpCode::Pong)
                .collect();
            assert_eq!(pongs.len(), 4);
            assert_eq!(pongs.last().unwrap().1, [19]);
            assert_eq!(frames.len(), 5);
            // Once drained, new pings are answered again.
            c.handle_read(&peer(role, true, OpCode::Ping, b"again"));
            events(&mut c);
            assert_eq!(sent(&mut c), [(OpCode::Pong, b"again".to_vec())]);
        }
    }

    #[test]
    fn pong_before_close_reply() {
        for role in BOTH {
            let mut c = conn(role);
            let mut input = peer(role, true, OpCode::Ping, b"1");
            input.extend(peer(role, true, OpCode::Close, b""));
            c.handle_read(&input);
            assert_eq!(
                sent(&mut c),
                [(OpCode::Pong, b"1".to_vec()), (OpCode::Close, vec![])]
            );
        }
    }

    #[test]
    fn send_paths_queue_frames_in_order() {
        for role in BOTH {
            let mut c = conn(role);
            c.send_text("héllo").unwrap();
            c.send_binary(&[1, 2, 3]).unwrap();
            c.send_ping(b"hb").unwrap();
            assert_eq!(c.send_ping(&[0; 126]), Err(SendError::ControlTooLong(126)));
            assert_eq!(
                sent(&mut c),
                [
                    (OpCode::Text, "héllo".as_bytes().to_vec()),
                    (OpCode::Binary, vec![1, 2, 3]),
                    (OpCode::Ping, b"hb".to_vec())
                ]
            );
            assert!(c.poll_transmit().is_none());
        }
    }

    #[test]
    fn client_uses_fresh_mask_keys() {
        let mut c = conn(Role::Client);
        c.send_text("a").unwrap();
        c.send_text("a").unwrap();
        let k1 = decode_header(&c.poll_transmit().unwrap())
            .unwrap()
            .unwrap()
            .0
            .mask;
        let k2 = decode_header(&c.poll_transmit().unwrap())
            .unwrap()
            .unwrap()
            .0
            .mask;
        assert!(k1.is_some() && k1 != k2);
    }

    #[test]
    fn single_frame_message_is_not_copied_again() {
        let mut c = conn(Role::Client);
        c.handle_read(&peer(Role::Client, true, OpCode::Binary, &[9; 1000]));
        let Some(WsEvent::Binary(b)) = c.poll_event() else {
            panic!()
        };
        // The event owns the reassembly buffer itself (frozen, not copied into a new one).
        assert_eq!(b.len(), 1000);
        assert!(c.message_buf.capacity() == 0);
    }

    #[test]
    fn text_message_conversions() {
        let t = TextMessage::try_from(Bytes::from_static("ok é".as_bytes())).unwrap();
        assert_eq!(t.as_str(), "ok é");
        assert_eq!(t.len(), 5);
        assert!(!t.is_empty());
        assert_eq!(
            TextMessage::try_from(Bytes::from_static(b"\xff")),
            Err(Utf8Error)
        );
        assert_eq!(
            TextMessage::from(String::from("x")).into_bytes(),
            Bytes::from_static(b"x")
        );
    }

    // ---- property tests ----

    #[derive(Clone, Debug)]
    enum Msg {
        Text(String),
        Binary(Vec<u8>),
        Ping(Vec<u8>),
    }

    fn arb_msg() -> impl Strategy<Value = Msg> {
        prop_oneof![
            "\\PC{0,300}".prop_map(Msg::Text),
            proptest::collection::vec(any::<u8>(), 0..400).prop_map(Msg::Binary),
            proptest::collection::vec(any::<u8>(), 0..=125).prop_map(Msg::Ping),
        ]
    }

    fn expected(msg: &Msg) -> WsEvent {
        match msg {
            Msg::Text(s) => text(s),
            Msg::Binary(b) => WsEvent::Binary(b.clone().into()),
            Msg::Ping(p) => WsEvent::Ping(p.clone().into()),
        }
    }

    fn cut_points(len: usize, cuts: &[prop::sample::Index]) -> Vec<usize> {
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        points.push(0);
        points.push(len);
        points.sort_unstable();
        points
    }

    fn feed_split(c: &mut Connection, stream: &[u8], cuts: &[prop::sample::Index]) {
        for w in cut_points(stream.len(), cuts).windows(2) {
            c.handle_read(&stream[w[0]..w[1]]);
        }
    }

    proptest! {
        #[test]
        fn send_then_receive_roundtrip(
            client_sends in any::<bool>(),
            msgs in proptest::collection::vec(arb_msg(), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
            seed in any::<u64>(),
        ) {
            let (from_role, to_role) = if client_sends {
                (Role::Client, Role::Server)
            } else {
                (Role::Server, Role::Client)
            };
            let mut from = Connection::new(from_role, ConnectionConfig::default(), Rng::from_u64(seed));
            let mut to = conn(to_role);
            for m in &msgs {
                match m {
                    Msg::Text(s) => from.send_text(s).unwrap(),
                    Msg::Binary(b) => from.send_binary(b).unwrap(),
                    Msg::Ping(p) => from.send_ping(p).unwrap(),
                }
            }
            from.close(1000, "done").unwrap();
            let stream: Vec<u8> = core::iter::from_fn(|| from.poll_transmit()).flatten().collect();
            feed_split(&mut to, &stream, &cuts);

            let mut want: Vec<WsEvent> = msgs.iter().map(expected).collect();
            want.push(WsEvent::Closed { code: Some(1000), reason: "done".into(), initiated_by: Initiator::Peer });
            prop_assert_eq!(events(&mut to), want);

            // The receiver's pongs and close reply complete the handshake on the sender.
            let reply: Vec<u8> = core::iter::from_fn(|| to.poll_transmit()).flatten().collect();
            from.handle_read(&reply);
            let back = events(&mut from);
            let pongs = back.iter().filter(|e| matches!(e, WsEvent::Pong(_))).count();
            let pings = msgs.iter().filter(|m| matches!(m, Msg::Ping(_))).count();
            prop_assert_eq!(pongs, pings);
            prop_assert_eq!(
                back.last(),
                Some(&WsEvent::Closed { code: Some(1000), reason: String::new(), initiated_by: Initiator::Local })
            );
        }

        #[test]
        fn fragmented_messages_reassemble(
            to_server in any::<bool>(),
            msgs in proptest::collection::vec(
                (arb_msg(), proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
                 proptest::collection::vec(any::<bool>(), 0..4)),
                0..6),
            key in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        ) {
            let role = if to_server { Role::Server } else { Role::Client };
            let mask = to_server.then_some(key);
            let mut stream = Vec::new();
            let mut want = Vec::new();
            for (msg, frag_cuts, pings_between) in &msgs {
                let (op, payload) = match msg {
                    Msg::Text(s) => (OpCode::Text, s.as_bytes().to_vec()),
                    Msg::Binary(b) => (OpCode::Binary, b.clone()),
                    Msg::Ping(p) => {
                        stream.extend_from_slice(&encode_frame(true, OpCode::Ping, mask, p));
                        want.push(expected(msg));
                        continue;
                    }
                };
                // Fragments split anywhere, even inside a UTF-8 character, with pings
                // interleaved between them.
                let points = cut_points(payload.len(), frag_cuts);
                let n = points.len() - 1;
                for (i, w) in points.windows(2).enumerate() {
                    let op = if i == 0 { op } else { OpCode::Continuation };
                    stream.extend_from_slice(&encode_frame(i + 1 == n, op, mask, &payload[w[0]..w[1]]));
                    if i + 1 < n && pings_between.get(i).copied().unwrap_or(false) {
                        stream.extend_from_slice(&encode_frame(true, OpCode::Ping, mask, &[i as u8]));
                        want.push(WsEvent::Ping(vec![i as u8].into()));
                    }
                }
                want.push(expected(msg));
            }
            let mut c = conn(role);
            feed_split(&mut c, &stream, &cuts);
            prop_assert_eq!(events(&mut c), want);
            prop_assert_eq!(c.state(), State::Open);
        }

        #[test]
        fn arbitrary_input_never_panics(
            server in any::<bool>(),
            bytes in proptest::collection::vec(any::<u8>(), 0..200),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let role = if server { Role::Server } else { Role::Client };
            let mut c = conn_with(role, ConnectionConfig { max_message_size: 64, max_queued_control: 2 });
            feed_split(&mut c, &bytes, &cuts);
            let evs = events(&mut c);
            if c.is_closed() {
                // Whatever ended it, a close frame was queued exactly once.
                let closes = sent(&mut c).iter().filter(|(op, _)| *op == OpCode::Close).count();
                prop_assert_eq!(closes, 1);
                let terminal = matches!(evs.last(), Some(WsEvent::Failed { .. } | WsEvent::Closed { .. }));
                prop_assert!(terminal, "last event {:?}", evs.last());
            }
        }
    }
}
