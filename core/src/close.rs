//! Close codes and close frame payloads (RFC 6455 §5.5.1, §7.4).
//!
//! A close frame is the only place where the peer tells us *why* a connection ends, and
//! a malformed one is itself a protocol violation. Keeping the code table and payload
//! rules here lets the connection, the hub (which picks codes like 1008 for slow
//! consumers) and the adapters agree on one definition.

use thiserror::Error;

/// Named close codes, so call sites say what they mean instead of a magic number.
pub mod code {
    /// The purpose of the connection was fulfilled.
    pub const NORMAL: u16 = 1000;
    /// The endpoint is going away (server shutdown, page navigation).
    pub const GOING_AWAY: u16 = 1001;
    /// The peer broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// The peer sent a kind of data we do not accept.
    pub const UNSUPPORTED: u16 = 1003;
    /// No status code was present; reported locally, never sent.
    pub const NO_STATUS: u16 = 1005;
    /// The connection dropped without a close frame; reported locally, never sent.
    pub const ABNORMAL: u16 = 1006;
    /// A text message (or close reason) was not valid UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// The peer violated a policy (rate limit abuse).
    pub const POLICY: u16 = 1008;
    /// A message exceeded the size limit.
    pub const TOO_BIG: u16 = 1009;
    /// The client required an extension the server did not negotiate.
    pub const MANDATORY_EXT: u16 = 1010;
    /// The server hit an unexpected condition.
    pub const INTERNAL: u16 = 1011;
    /// Try again later: a slow consumer, an overloaded server. Clients reconnect with
    /// backoff (and recover), unlike after 1008.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The TLS handshake failed; reported locally, never sent.
    pub const TLS: u16 = 1015;
    /// roomcast: a token refused, missing in time, or expired (get a fresh token, then
    /// reconnect).
    pub const UNAUTHORIZED: u16 = 4001;
    /// roomcast: forbidden: kicked by the server or the application, or its rights
    /// revoked (do not reconnect on your own).
    pub const FORBIDDEN: u16 = 4003;
}

/// Whether `code` may appear in a close frame on the wire.
///
/// Receiving any other code is a protocol violation (1002), and sending one is a caller
/// bug: 1005/1006/1015 exist only to report conditions locally, and the unassigned
/// ranges are reserved for future RFCs. 1012-1014 are registered with IANA (service
/// restart, try again later, bad gateway) and are accepted, as browsers do.
pub fn is_valid_on_wire(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

/// Why a received close payload is malformed. Each maps to the close code the
/// connection fails with, via [`CloseParseError::close_code`].
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CloseParseError {
    /// A 1-byte payload: too short to hold a code, but not empty.
    #[error("close payload of 1 byte")]
    TooShort,
    /// A code that is not allowed on the wire.
    #[error("invalid close code {0}")]
    InvalidCode(u16),
    /// The reason is not UTF-8.
    #[error("close reason is not valid UTF-8")]
    InvalidUtf8,
}

impl CloseParseError {
    /// The close code to fail the connection with: a bad code is a protocol error
    /// (1002), a bad reason is bad data (1007), as Autobahn case 7.5.1 expects.
    pub fn close_code(&self) -> u16 {
        match self {
            CloseParseError::TooShort | CloseParseError::InvalidCode(_) => code::PROTOCOL_ERROR,
            CloseParseError::InvalidUtf8 => code::INVALID_PAYLOAD,
        }
    }
}

/// Splits a received close payload into its code (absent if the payload is empty) and
/// reason, rejecting what RFC 6455 forbids so the connection can fail with the right code.
pub fn parse_close_payload(payload: &[u8]) -> Result<(Option<u16>, String), CloseParseError> {
    match payload {
        [] => Ok((None, String::new())),
        [_] => Err(CloseParseError::TooShort),
        [hi, lo, reason @ ..] => {
            let code = u16::from_be_bytes([*hi, *lo]);
            if !is_valid_on_wire(code) {
                return Err(CloseParseError::InvalidCode(code));
            }
            let reason = core::str::from_utf8(reason).map_err(|_| CloseParseError::InvalidUtf8)?;
            Ok((Some(code), reason.to_owned()))
        }
    }
}

/// Builds a close payload, truncating `reason` at a character boundary so the payload
/// fits the 125-byte control frame limit: a long diagnostic must never make our own
/// close frame a protocol violation.
pub fn encode_close_payload(code: u16, reason: &str) -> Vec<u8> {
    const MAX_REASON: usize = 125 - 2;
    let mut end = reason.len().min(MAX_REASON);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    let mut out = Vec::with_capacity(2 + end);
    out.extend_from_slice(&code.to_be_bytes());
    out.extend_from_slice(&reason.as_bytes()[..end]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_validity_table() {
        for c in [
            1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014,
        ] {
            assert!(is_valid_on_wire(c), "{c}");
        }
        for c in [3000, 3999, 4000, 4999] {
            assert!(is_valid_on_wire(c), "{c}");
        }
        for c in [
            0, 1, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535,
        ] {
            assert!(!is_valid_on_wire(c), "{c}");
        }
    }

    #[test]
    fn parse_empty_and_codes() {
        assert_eq!(parse_close_payload(b""), Ok((None, String::new())));
        assert_eq!(
            parse_close_payload(&[0x03, 0xe8]),
            Ok((Some(1000), String::new()))
        );
        assert_eq!(
            parse_close_payload(b"\x0f\xa0bye"),
            Ok((Some(4000), "bye".to_owned()))
        );
    }

    #[test]
    fn parse_errors_map_to_codes() {
        let e = parse_close_payload(&[0x03]).unwrap_err();
        assert_eq!(
            (e.clone(), e.close_code()),
            (CloseParseError::TooShort, 1002)
        );
        for c in [999u16, 1004, 1005, 1006, 1015, 1016, 2000, 5000] {
            let e = parse_close_payload(&c.to_be_bytes()).unwrap_err();
            assert_eq!(e, CloseParseError::InvalidCode(c));
            assert_eq!(e.close_code(), 1002);
        }
        let e = parse_close_payload(
            b"\x03\xe8\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
        )
        .unwrap_err();
        assert_eq!(
            (e.clone(), e.close_code()),
            (CloseParseError::InvalidUtf8, 1007)
        );
    }

    #[test]
    fn encode_roundtrip_and_truncation() {
        assert_eq!(encode_close_payload(1000, ""), vec![0x03, 0xe8]);
        let p = encode_close_payload(1001, "bye");
        assert_eq!(parse_close_payload(&p), Ok((Some(1001), "bye".to_owned())));

        let long = "x".repeat(300);
        let p = encode_close_payload(1008, &long);
        assert_eq!(p.len(), 125);
        // The reason budget is 123 bytes; 'é' would occupy bytes 122..124, so it is cut.
        let tricky = format!("{}é€", "a".repeat(122));
        let p = encode_close_payload(1000, &tricky);
        assert!(p.len() <= 125);
        let (_, reason) = parse_close_payload(&p).unwrap();
        assert_eq!(reason, "a".repeat(122));
    }
}
