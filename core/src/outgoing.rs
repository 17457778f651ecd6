//! Server-to-client messages encoded once and shared by reference.
//!
//! A room message is byte-identical for every receiver (server frames are unmasked), so
//! the hub serializes the JSON once, writes the WebSocket frame header in front of it in
//! the same buffer, and hands every receiver a refcounted clone. Adapters that frame
//! themselves (Durable Object, browser) take [`Outgoing::text`]; the native server writes
//! [`Outgoing::frame`] straight to the socket.

use bytes::Bytes;

use crate::frame::{encode_header, OpCode, MAX_HEADER_LEN, MAX_SERVER_HEADER_LEN};

/// One encoded text message: a complete unmasked WebSocket frame whose payload is JSON.
#[derive(Clone, PartialEq, Eq)]
pub struct Outgoing {
    frame: Bytes,
    header_len: u8,
}

impl Outgoing {
    /// Encodes a message by letting `write` append its JSON text to a buffer that already
    /// has room for the frame header in front, so the payload is never copied.
    pub(crate) fn build(write: impl FnOnce(&mut Vec<u8>)) -> Outgoing {
        let mut buf = Vec::with_capacity(128);
        buf.resize(MAX_SERVER_HEADER_LEN, 0);
        write(&mut buf);
        debug_assert!(std::str::from_utf8(&buf[MAX_SERVER_HEADER_LEN..]).is_ok());
        let payload_len = (buf.len() - MAX_SERVER_HEADER_LEN) as u64;
        let mut header = [0u8; MAX_HEADER_LEN];
        let n = encode_header(&mut header, true, OpCode::Text, None, payload_len);
        let start = MAX_SERVER_HEADER_LEN - n;
        buf[start..MAX_SERVER_HEADER_LEN].copy_from_slice(&header[..n]);
        let frame = Bytes::from(buf).slice(start..);
        Outgoing {
            frame,
            header_len: n as u8,
        }
    }

    /// Frames text the caller already has: JSON from storage (replays), or a raw room
    /// message ([`crate::hub::Hub::send_raw_to_room`]).
    pub fn from_text(text: &str) -> Outgoing {
        Outgoing::build(|b| b.extend_from_slice(text.as_bytes()))
    }

    /// The whole frame (header + payload), ready for a socket: shared, never copied.
    pub fn frame(&self) -> &Bytes {
        &self.frame
    }

    /// The JSON payload, for runtimes that do their own framing.
    pub fn text(&self) -> &str {
        let payload = &self.frame[self.header_len as usize..];
        // Built only from `&str` pieces and serde_json output, so always UTF-8; the
        // check is cheap next to a socket write and keeps this type free of `unsafe`
        // (the crate's one `unsafe` block is `TextMessage::as_str`, justified there).
        std::str::from_utf8(payload).expect("Outgoing payloads are built from UTF-8 text")
    }

    /// The JSON payload as shared bytes.
    pub fn payload(&self) -> Bytes {
        self.frame.slice(self.header_len as usize..)
    }

    /// Bytes this message occupies on the wire (what counts against a receiver's
    /// unsent-bytes budget).
    pub fn wire_len(&self) -> usize {
        self.frame.len()
    }
}

/// Several room messages, back to back in one shared buffer: what the hub hands each
/// member of a room when it coalesces a burst ([`crate::hub::HubConfig::coalesce_room_messages`]).
///
/// A burst of N messages to a room of M members then costs M outputs and M refcount
/// updates instead of N × M, and each member's socket gets the whole burst in one write:
/// the shape of fan-out in uWebSockets, which is what the benchmarks measure us against.
#[derive(Clone, PartialEq, Eq)]
pub struct Frames {
    bytes: Bytes,
    count: u32,
}

impl Frames {
    /// Concatenates complete frames.
    pub(crate) fn concat(msgs: &[Outgoing]) -> Frames {
        let len = msgs.iter().map(Outgoing::wire_len).sum();
        let mut bytes = Vec::with_capacity(len);
        for m in msgs {
            bytes.extend_from_slice(m.frame());
        }
        Frames {
            bytes: Bytes::from(bytes),
            count: msgs.len() as u32,
        }
    }

    /// All the frames, ready for a socket.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// How many messages.
    pub fn count(&self) -> usize {
        self.count as usize
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The messages' JSON texts, in order, for runtimes that frame messages themselves.
    pub fn texts(&self) -> impl Iterator<Item = &str> + '_ {
        let mut rest: &[u8] = &self.bytes;
        std::iter::from_fn(move || {
            // Built from `Outgoing` frames only: every header is complete and valid.
            let (h, n) = crate::frame::decode_header(rest).ok().flatten()?;
            let end = n + h.payload_len as usize;
            let text = std::str::from_utf8(&rest[n..end]).expect("Outgoing payloads are UTF-8");
            rest = &rest[end..];
            Some(text)
        })
    }
}

impl std::fmt::Debug for Frames {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.texts()).finish()
    }
}

/// Several hub messages for one receiver, copied back to back into one buffer.
///
/// Small messages fan out faster copied than shared: appending 80 bytes is cheaper than
/// the two atomic refcount updates a shared frame costs, and one contiguous buffer leaves
/// in one plain `write` instead of a `writev` of dozens of tiny slices. Built only from
/// [`Outgoing`] frames, so it is valid by construction and the connection re-checks
/// nothing ([`crate::connection::Connection::send_batch`]).
#[derive(Default, Clone, PartialEq, Eq)]
pub struct FrameBatch {
    bytes: Vec<u8>,
}

impl FrameBatch {
    /// The first allocation: enough for a few dozen chat-sized messages, so a burst
    /// reallocates rarely, while a connection that receives nothing allocates nothing.
    const FIRST_CAPACITY: usize = 1024;

    /// Appends one message's frame.
    pub fn push(&mut self, msg: &Outgoing) {
        if self.bytes.capacity() == 0 {
            self.bytes.reserve(msg.wire_len().max(Self::FIRST_CAPACITY));
        }
        self.bytes.extend_from_slice(msg.frame());
    }

    /// Appends a coalesced burst.
    pub fn push_frames(&mut self, frames: &Frames) {
        if self.bytes.capacity() == 0 {
            self.bytes
                .reserve(frames.wire_len().max(Self::FIRST_CAPACITY));
        }
        self.bytes.extend_from_slice(frames.bytes());
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// Bytes on the wire.
    pub fn wire_len(&self) -> usize {
        self.bytes.len()
    }

    /// The frames as they go on the wire, for a write that borrows them.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes
    }

    /// The frames, ready for a socket.
    pub fn into_bytes(self) -> Bytes {
        Bytes::from(self.bytes)
    }
}

impl std::fmt::Debug for FrameBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameBatch")
            .field("wire_len", &self.bytes.len())
            .finish()
    }
}

impl std::fmt::Debug for Outgoing {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("Outgoing").field(&self.text()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frame_is_header_plus_payload() {
        let m = Outgoing::from_text(r#"{"type":"pong"}"#);
        assert_eq!(m.frame()[0], 0x81);
        assert_eq!(m.frame()[1] as usize, m.text().len());
        assert_eq!(&m.frame()[2..], m.text().as_bytes());
        assert_eq!(m.wire_len(), 2 + 15);
    }

    #[test]
    fn medium_and_large_lengths() {
        let big = "x".repeat(300);
        let m = Outgoing::from_text(&big);
        assert_eq!(&m.frame()[..4], &[0x81, 126, 1, 44]);
        assert_eq!(m.payload().len(), 300);
        let huge = "y".repeat(70_000);
        let m = Outgoing::from_text(&huge);
        assert_eq!(m.frame()[1], 127);
        assert_eq!(m.wire_len(), 70_000 + 10);
    }

    #[test]
    fn a_batch_is_its_frames_back_to_back() {
        let a = Outgoing::from_text("{}");
        let b = Outgoing::from_text(&"z".repeat(200));
        let mut batch = FrameBatch::default();
        assert!(batch.is_empty());
        batch.push(&a);
        batch.push(&b);
        assert_eq!(batch.wire_len(), a.wire_len() + b.wire_len());
        let bytes = batch.into_bytes();
        assert_eq!(&bytes[..a.wire_len()], &a.frame()[..]);
        assert_eq!(&bytes[a.wire_len()..], &b.frame()[..]);
    }

    #[test]
    fn frames_keep_every_message_in_order() {
        let msgs: Vec<Outgoing> = ["{}", &"m".repeat(200), &"l".repeat(70_000), "[1]"]
            .iter()
            .map(|t| Outgoing::from_text(t))
            .collect();
        let frames = Frames::concat(&msgs);
        assert_eq!(frames.count(), 4);
        assert_eq!(
            frames.wire_len(),
            msgs.iter().map(Outgoing::wire_len).sum::<usize>()
        );
        let texts: Vec<&str> = frames.texts().collect();
        let want: Vec<&str> = msgs.iter().map(Outgoing::text).collect();
        assert_eq!(texts, want);
        let mut batch = FrameBatch::default();
        batch.push(&msgs[0]);
        batch.push_frames(&frames);
        assert_eq!(batch.wire_len(), msgs[0].wire_len() + frames.wire_len());
    }

    #[test]
    fn clones_share_the_buffer() {
        let m = Outgoing::from_text("{}");
        let c = m.clone();
        assert_eq!(m.frame().as_ptr(), c.frame().as_ptr());
    }
}
