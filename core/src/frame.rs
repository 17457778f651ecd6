//! RFC 6455 frame headers (§5.2): encoding and incremental decoding.
//!
//! Frames are parsed apart from message reassembly: this module only knows the header
//! layout and the rules a header alone can break. Which side must mask, fragmentation
//! order and message size limits need connection state and live in
//! [`crate::connection`]. Payloads are never buffered here, so the connection can stream
//! them straight into the message being assembled.

use bytes::{BufMut, Bytes, BytesMut};
use thiserror::Error;

use crate::close::code;
use crate::mask::apply_mask;

/// The frame kinds of RFC 6455. Reserved opcodes have no variant, so holding an `OpCode`
/// proves the frame kind is one we understand.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OpCode {
    /// Next fragment of the message in progress.
    Continuation,
    /// First (or only) frame of a UTF-8 text message.
    Text,
    /// First (or only) frame of a binary message.
    Binary,
    /// Starts or answers the closing handshake.
    Close,
    /// Liveness probe; must be answered by a pong.
    Ping,
    /// Answer to a ping (or an unsolicited heartbeat).
    Pong,
}

impl OpCode {
    /// Decodes the 4-bit opcode; `None` for the reserved values, which a peer may not
    /// send unless an extension defined them (we negotiate none).
    pub fn from_u8(value: u8) -> Option<OpCode> {
        Some(match value {
            0x0 => OpCode::Continuation,
            0x1 => OpCode::Text,
            0x2 => OpCode::Binary,
            0x8 => OpCode::Close,
            0x9 => OpCode::Ping,
            0xa => OpCode::Pong,
            _ => return None,
        })
    }

    /// The 4-bit wire value, for building headers.
    pub fn as_u8(self) -> u8 {
        match self {
            OpCode::Continuation => 0x0,
            OpCode::Text => 0x1,
            OpCode::Binary => 0x2,
            OpCode::Close => 0x8,
            OpCode::Ping => 0x9,
            OpCode::Pong => 0xa,
        }
    }

    /// Control frames may interleave with fragments but have their own limits (≤125
    /// bytes, never fragmented), so both encoder and decoder need to tell them apart.
    pub fn is_control(self) -> bool {
        matches!(self, OpCode::Close | OpCode::Ping | OpCode::Pong)
    }
}

/// The longest possible header: 2 fixed bytes, 8 length bytes, 4 mask bytes. A header
/// buffer of this size is all a connection needs before it can stream the payload.
pub const MAX_HEADER_LEN: usize = 14;

/// The longest header a server sends (servers never mask), for sizing shared fan-out
/// buffers.
pub const MAX_SERVER_HEADER_LEN: usize = 10;

/// Largest payload a control frame may carry (RFC 6455 §5.5).
pub const MAX_CONTROL_PAYLOAD: usize = 125;

/// Writes a frame header into `dst[..n]` and returns `n`.
///
/// Takes the payload length rather than the payload so the header can be written apart
/// from a payload that is shared (fan-out) or not yet produced; always uses the shortest
/// length encoding, as RFC 6455 requires and our own decoder enforces.
pub fn encode_header(
    dst: &mut [u8; MAX_HEADER_LEN],
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload_len: u64,
) -> usize {
    dst[0] = (u8::from(fin) << 7) | opcode.as_u8();
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let mut n = if payload_len < 126 {
        dst[1] = mask_bit | payload_len as u8;
        2
    } else if payload_len <= u64::from(u16::MAX) {
        dst[1] = mask_bit | 126;
        dst[2..4].copy_from_slice(&(payload_len as u16).to_be_bytes());
        4
    } else {
        dst[1] = mask_bit | 127;
        dst[2..10].copy_from_slice(&payload_len.to_be_bytes());
        10
    };
    if let Some(key) = mask {
        dst[n..n + 4].copy_from_slice(&key);
        n += 4;
    }
    n
}

/// Length of the header [`encode_header`] writes, so a buffer can be sized to the byte
/// before encoding into it.
pub fn header_len(payload_len: u64, masked: bool) -> usize {
    let len = match payload_len {
        0..=125 => 2,
        126..=0xffff => 4,
        _ => 10,
    };
    len + if masked { 4 } else { 0 }
}

/// Encodes a whole frame into one buffer, masking a copy of the payload when `mask` is
/// given (client role).
///
/// One contiguous `Bytes` is what fan-out wants: the hub encodes a broadcast once and
/// every receiver's queue holds a refcounted clone.
pub fn encode_frame(fin: bool, opcode: OpCode, mask: Option<[u8; 4]>, payload: &[u8]) -> Bytes {
    // Sized exactly: broadcast frames are kept (history, queues) as allocated.
    let header = header_len(payload.len() as u64, mask.is_some());
    let mut out = BytesMut::with_capacity(header + payload.len());
    encode_frame_into(&mut out, fin, opcode, mask, payload);
    out.freeze()
}

/// Appends one whole frame to `dst`, so a sender that keeps a buffer can encode frame
/// after frame into the same memory (`BytesMut` reuses it once the frames split off
/// earlier are dropped) instead of allocating one per frame.
pub fn encode_frame_into(
    dst: &mut BytesMut,
    fin: bool,
    opcode: OpCode,
    mask: Option<[u8; 4]>,
    payload: &[u8],
) {
    let mut header = [0u8; MAX_HEADER_LEN];
    let n = encode_header(&mut header, fin, opcode, mask, payload.len() as u64);
    dst.reserve(n + payload.len());
    dst.put_slice(&header[..n]);
    let start = dst.len();
    dst.put_slice(payload);
    if let Some(key) = mask {
        apply_mask(&mut dst[start..], key, 0);
    }
}

/// A decoded frame header: everything needed to stream the payload that follows.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FrameHeader {
    /// Last frame of its message.
    pub fin: bool,
    /// The three RSV bits (always 0 here: no extension is negotiated, so non-zero is
    /// rejected while decoding; kept for diagnostics and future extensions).
    pub rsv: u8,
    /// Frame kind.
    pub opcode: OpCode,
    /// The masking key, present on every client-to-server frame.
    pub mask: Option<[u8; 4]>,
    /// Payload length in bytes (at most 2^63 - 1).
    pub payload_len: u64,
}

/// A header that no valid peer can send. Every variant fails the connection; the code
/// comes from [`FrameError::close_code`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum FrameError {
    /// Opcode 0x3-0x7 or 0xB-0xF.
    #[error("reserved opcode {0:#x}")]
    ReservedOpcode(u8),
    /// RSV1-3 set without a negotiated extension.
    #[error("reserved bits set ({0:#05b})")]
    ReservedBits(u8),
    /// A 16- or 64-bit length that would have fit a shorter encoding.
    #[error("non-minimal payload length encoding")]
    NonMinimalLength,
    /// A 64-bit length with the most significant bit set.
    #[error("payload length has its top bit set")]
    LengthTopBit,
    /// A control frame without FIN.
    #[error("fragmented control frame")]
    FragmentedControl,
    /// A control frame with more than 125 payload bytes.
    #[error("control frame payload of {0} bytes")]
    ControlTooLong(u64),
}

impl FrameError {
    /// The close code to fail with; every header violation is a protocol error.
    pub fn close_code(&self) -> u16 {
        code::PROTOCOL_ERROR
    }

    /// A static description for [`crate::connection::WsEvent::Failed`] and close
    /// reasons, which must not allocate or carry peer data.
    pub fn reason(&self) -> &'static str {
        match self {
            FrameError::ReservedOpcode(_) => "reserved opcode",
            FrameError::ReservedBits(_) => "reserved bits set",
            FrameError::NonMinimalLength => "non-minimal length",
            FrameError::LengthTopBit => "length top bit set",
            FrameError::FragmentedControl => "fragmented control frame",
            FrameError::ControlTooLong(_) => "control frame too long",
        }
    }
}

/// Decodes a frame header from the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, and the header with its length in
/// bytes once complete. Checks what the first two bytes can prove as soon as they are
/// there, so a violating peer is failed on the read that carried it.
pub fn decode_header(buf: &[u8]) -> Result<Option<(FrameHeader, usize)>, FrameError> {
    let (b0, b1) = match buf {
        [b0, b1, ..] => (*b0, *b1),
        _ => return Ok(None),
    };
    let fin = b0 & 0x80 != 0;
    let rsv = (b0 >> 4) & 0x7;
    let raw_opcode = b0 & 0x0f;
    let opcode = OpCode::from_u8(raw_opcode).ok_or(FrameError::ReservedOpcode(raw_opcode))?;
    if rsv != 0 {
        return Err(FrameError::ReservedBits(rsv));
    }
    let masked = b1 & 0x80 != 0;
    let len7 = b1 & 0x7f;
    if opcode.is_control() {
        if !fin {
            return Err(FrameError::FragmentedControl);
        }
        if usize::from(len7) > MAX_CONTROL_PAYLOAD {
            return Err(FrameError::ControlTooLong(u64::from(len7)));
        }
    }

    let (payload_len, mut n) = match len7 {
        126 => {
            let Some(ext) = buf.get(2..4) else {
                return Ok(None);
            };
            let len = u64::from(u16::from_be_bytes([ext[0], ext[1]]));
            if len < 126 {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 4)
        }
        127 => {
            let Some(ext) = buf.get(2..10) else {
                return Ok(None);
            };
            let mut be = [0u8; 8];
            be.copy_from_slice(ext);
            let len = u64::from_be_bytes(be);
            if len >> 63 != 0 {
                return Err(FrameError::LengthTopBit);
            }
            if len <= u64::from(u16::MAX) {
                return Err(FrameError::NonMinimalLength);
            }
            (len, 10)
        }
        short => (u64::from(short), 2),
    };

    let mask = if masked {
        let Some(key) = buf.get(n..n + 4) else {
            return Ok(None);
        };
        n += 4;
        Some([key[0], key[1], key[2], key[3]])
    } else {
        None
    };

    Ok(Some((
        FrameHeader {
            fin,
            rsv,
            opcode,
            mask,
            payload_len,
        },
        n,
    )))
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_len_matches_the_encoded_header() {
        for len in [0u64, 1, 125, 126, 127, 0xffff, 0x1_0000, u64::MAX >> 1] {
            for mask in [None, Some([1, 2, 3, 4])] {
                let mut dst = [0; MAX_HEADER_LEN];
                let n = encode_header(&mut dst, true, OpCode::Binary, mask, len);
                assert_eq!(header_len(len, mask.is_some()), n, "{len} {mask:?}");
            }
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn decode_all(buf: &[u8]) -> (FrameHeader, usize) {
        decode_header(buf).unwrap().unwrap()
    }

    #[test]
    fn opcode_table() {
        for v in 0u8..16 {
            match OpCode::from_u8(v) {
                Some(op) => assert_eq!(op.as_u8(), v),
                None => assert!(matches!(v, 3..=7 | 0xb..=0xf)),
            }
        }
        assert!(OpCode::Ping.is_control() && !OpCode::Continuation.is_control());
    }

    #[test]
    fn rfc_examples() {
        // §5.7: unmasked "Hello".
        let f = encode_frame(true, OpCode::Text, None, b"Hello");
        assert_eq!(&f[..], b"\x81\x05Hello");
        // masked "Hello".
        let f = encode_frame(true, OpCode::Text, Some([0x37, 0xfa, 0x21, 0x3d]), b"Hello");
        assert_eq!(&f[..], b"\x81\x85\x37\xfa\x21\x3d\x7f\x9f\x4d\x51\x58");
        // fragmented "Hel" + "lo".
        assert_eq!(
            &encode_frame(false, OpCode::Text, None, b"Hel")[..],
            b"\x01\x03Hel"
        );
        assert_eq!(
            &encode_frame(true, OpCode::Continuation, None, b"lo")[..],
            b"\x80\x02lo"
        );
        // unmasked ping.
        assert_eq!(
            &encode_frame(true, OpCode::Ping, None, b"Hello")[..],
            b"\x89\x05Hello"
        );
    }

    #[test]
    fn length_boundaries() {
        let mut h = [0u8; MAX_HEADER_LEN];
        for (len, n) in [
            (0u64, 2),
            (125, 2),
            (126, 4),
            (65535, 4),
            (65536, 10),
            (1 << 62, 10),
        ] {
            assert_eq!(encode_header(&mut h, true, OpCode::Binary, None, len), n);
            assert_eq!(
                decode_all(&h[..n]),
                (
                    FrameHeader {
                        fin: true,
                        rsv: 0,
                        opcode: OpCode::Binary,
                        mask: None,
                        payload_len: len
                    },
                    n
                )
            );
            let k = Some([1, 2, 3, 4]);
            assert_eq!(encode_header(&mut h, false, OpCode::Text, k, len), n + 4);
            assert_eq!(decode_all(&h[..n + 4]).0.mask, k);
        }
        assert_eq!(decode_all(b"\x82\x7e\x00\x7e").0.payload_len, 126);
        assert_eq!(
            decode_all(b"\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00")
                .0
                .payload_len,
            65536
        );
    }

    #[test]
    fn incomplete_headers_need_more() {
        let full = b"\x82\xff\x00\x00\x00\x00\x00\x01\x00\x00\x01\x02\x03\x04";
        for cut in 0..full.len() {
            assert_eq!(decode_header(&full[..cut]), Ok(None), "cut {cut}");
        }
        assert_eq!(decode_all(full).1, 14);
    }

    #[test]
    fn rejects_bad_headers() {
        let cases: &[(&[u8], FrameError)] = &[
            (b"\x83\x00", FrameError::ReservedOpcode(3)),
            (b"\x87\x00", FrameError::ReservedOpcode(7)),
            (b"\x8b\x00", FrameError::ReservedOpcode(0xb)),
            (b"\x8f\x00", FrameError::ReservedOpcode(0xf)),
            (b"\xc1\x00", FrameError::ReservedBits(4)),
            (b"\xa1\x00", FrameError::ReservedBits(2)),
            (b"\x91\x00", FrameError::ReservedBits(1)),
            (b"\xf1\x00", FrameError::ReservedBits(7)),
            (b"\x82\x7e\x00\x7d", FrameError::NonMinimalLength),
            (b"\x82\x7e\x00\x00", FrameError::NonMinimalLength),
            (
                b"\x82\x7f\x00\x00\x00\x00\x00\x00\xff\xff",
                FrameError::NonMinimalLength,
            ),
            (
                b"\x82\x7f\x00\x00\x00\x00\x00\x00\x00\x05",
                FrameError::NonMinimalLength,
            ),
            (
                b"\x82\x7f\x80\x00\x00\x00\x00\x00\x00\x00",
                FrameError::LengthTopBit,
            ),
            (
                b"\x82\x7f\xff\xff\xff\xff\xff\xff\xff\xff",
                FrameError::LengthTopBit,
            ),
            (b"\x09\x00", FrameError::FragmentedControl),
            (b"\x08\x00", FrameError::FragmentedControl),
            (b"\x0a\x00", FrameError::FragmentedControl),
            (b"\x89\x7e", FrameError::ControlTooLong(126)),
            (b"\x88\x7f", FrameError::ControlTooLong(127)),
        ];
        for (bytes, err) in cases {
            assert_eq!(decode_header(bytes), Err(*err), "{bytes:x?}");
            assert_eq!(err.close_code(), 1002);
            assert!(!err.reason().is_empty());
        }
        // A control frame of exactly 125 is fine.
        assert_eq!(decode_all(b"\x89\x7d").0.payload_len, 125);
    }

    #[test]
    fn errors_detected_from_first_two_bytes() {
        // Fail fast: no need to wait for extended length or mask bytes.
        assert_eq!(
            decode_header(b"\x0a\xfe"),
            Err(FrameError::FragmentedControl)
        );
        assert_eq!(
            decode_header(b"\x8a\xfe"),
            Err(FrameError::ControlTooLong(126))
        );
    }

    fn arb_opcode() -> impl Strategy<Value = OpCode> {
        prop::sample::select(vec![
            OpCode::Continuation,
            OpCode::Text,
            OpCode::Binary,
            OpCode::Close,
            OpCode::Ping,
            OpCode::Pong,
        ])
    }

    /// (fin, opcode, mask, unmasked payload)
    type TestFrame = (bool, OpCode, Option<[u8; 4]>, Vec<u8>);

    /// Payloads around every length-encoding boundary, filled cheaply from a seed
    /// (generating 64 KiB byte by byte would make the test crawl).
    fn arb_payload() -> impl Strategy<Value = Vec<u8>> {
        let len = prop_oneof![0usize..130, 65_530usize..65_540, 65_536usize..70_000];
        (len, any::<u8>()).prop_map(|(len, seed)| {
            (0..len)
                .map(|i| (i as u8).wrapping_mul(seed | 1).wrapping_add(seed))
                .collect()
        })
    }

    proptest! {
        #[test]
        fn frames_roundtrip_across_splits(
            frames in proptest::collection::vec(
                (any::<bool>(), arb_opcode(), any::<Option<[u8; 4]>>(), arb_payload()),
                1..4),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..8),
        ) {
            // Control frames must be FIN and ≤125 bytes: shape the generated ones to fit.
            let frames: Vec<TestFrame> = frames
                .into_iter()
                .map(|(fin, op, mask, mut payload)| {
                    if op.is_control() {
                        payload.truncate(MAX_CONTROL_PAYLOAD);
                        (true, op, mask, payload)
                    } else {
                        (fin, op, mask, payload)
                    }
                })
                .collect();
            let mut stream = Vec::new();
            for (fin, op, mask, payload) in &frames {
                stream.extend_from_slice(&encode_frame(*fin, *op, *mask, payload));
            }

            // Deliver the stream in pieces, as a socket would; decode headers from a
            // growing window and skip payload bytes as they arrive.
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            points.push(stream.len());
            points.sort_unstable();
            let mut received = 0;
            let mut pos = 0;
            let mut decoded = Vec::new();
            for &p in &points {
                received = received.max(p);
                loop {
                    match decode_header(&stream[pos..received]).unwrap() {
                        None => break,
                        Some((h, n)) => {
                            let end = pos + n + h.payload_len as usize;
                            if end > stream.len() { prop_assert!(false, "length past stream"); }
                            if end > received { break; }
                            let mut payload = stream[pos + n..end].to_vec();
                            if let Some(k) = h.mask { apply_mask(&mut payload, k, 0); }
                            decoded.push((h.fin, h.opcode, h.mask, payload));
                            pos = end;
                        }
                    }
                }
            }
            prop_assert_eq!(pos, stream.len());
            prop_assert_eq!(decoded, frames);
        }

        #[test]
        fn header_roundtrip(fin in any::<bool>(), op in arb_opcode(),
                            mask in any::<Option<[u8; 4]>>(), len in 0u64..(1 << 63)) {
            let mut h = [0u8; MAX_HEADER_LEN];
            let n = encode_header(&mut h, fin, op, mask, len);
            prop_assert!(mask.is_some() || n <= MAX_SERVER_HEADER_LEN);
            // Control-frame rules are the decoder's business; check data opcodes fully.
            if !op.is_control() {
                let (d, m) = decode_header(&h[..n]).unwrap().unwrap();
                prop_assert_eq!(m, n);
                prop_assert_eq!(d, FrameHeader { fin, rsv: 0, opcode: op, mask, payload_len: len });
            }
        }

        #[test]
        fn decoder_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..20)) {
            if let Ok(Some((h, n))) = decode_header(&bytes) {
                prop_assert!(n <= bytes.len() && n <= MAX_HEADER_LEN);
                prop_assert!(h.payload_len >> 63 == 0);
            }
        }
    }
}
