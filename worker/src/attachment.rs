//! What each hibernatable socket carries so the hub can be rebuilt after an eviction.
//!
//! Two things survive with a socket while the object's memory is gone: its tags (fixed at
//! accept time) and its attachment (rewritable, at most [`ATTACHMENT_LIMIT`] bytes once
//! serialized). The tag holds the [`ConnId`], so a message can be routed without parsing
//! the attachment; the attachment holds the connection's [`ConnSnapshot`] as JSON, or
//! says where it went when it was too big (a connection in many long-named rooms), or
//! that the hub already closed the socket and it must not come back.

use roomcast_core::hub::{ConnId, ConnSnapshot};
use thiserror::Error;

/// workerd's bound on a serialized attachment.
pub const ATTACHMENT_LIMIT: usize = 2048;

/// Room kept below [`ATTACHMENT_LIMIT`] for the structured-clone header and version bytes.
const CLONE_OVERHEAD: usize = 16;

/// Attachment of a connection whose snapshot lives in storage (see [`crate::driver`]).
pub const SPILLED: &str = "spilled";

/// Attachment of a socket the hub closed: a wake-up between the close and the socket's
/// end must not resurrect the connection.
pub const CLOSED: &str = "closed";

const TAG_PREFIX: &str = "conn:";

/// The socket tag naming a connection.
pub fn tag(conn: ConnId) -> String {
    format!("{TAG_PREFIX}{}", conn.as_u64())
}

/// The connection a tag names, if it is one of ours.
pub fn parse_tag(tag: &str) -> Option<ConnId> {
    tag.strip_prefix(TAG_PREFIX)?
        .parse()
        .ok()
        .map(ConnId::from_u64)
}

/// A decoded attachment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attachment {
    /// The connection's state, inline.
    Inline(ConnSnapshot),
    /// The state is in storage, keyed by the connection id.
    Spilled,
    /// The hub closed this socket.
    Closed,
}

/// An attachment that cannot be used; the socket is closed so its client reconnects
/// rather than living on with a hub that does not know it.
#[derive(Debug, Error)]
pub enum AttachmentError {
    /// No attachment at all (accepted but never written: the object died in between).
    #[error("socket has no attachment")]
    Missing,
    /// Not a snapshot we wrote.
    #[error("unreadable attachment: {0}")]
    Unreadable(#[from] serde_json::Error),
}

impl Attachment {
    /// Decodes an attachment as stored (`None`: the socket has none).
    pub fn decode(value: Option<&str>) -> Result<Attachment, AttachmentError> {
        match value {
            None => Err(AttachmentError::Missing),
            Some(SPILLED) => Ok(Attachment::Spilled),
            Some(CLOSED) => Ok(Attachment::Closed),
            Some(json) => Ok(Attachment::Inline(ConnSnapshot::from_json(json)?)),
        }
    }
}

/// Whether `text` stored as an attachment stays within [`ATTACHMENT_LIMIT`].
///
/// V8 serializes a string as one byte per character when every character is Latin-1 and
/// as two bytes per UTF-16 unit otherwise; this is that size plus a margin for the
/// header. Conservative: a `false` only means the snapshot goes to storage instead.
pub fn fits(text: &str) -> bool {
    let latin1 = text.chars().all(|c| (c as u32) <= 0xff);
    let size = if latin1 {
        text.chars().count()
    } else {
        text.encode_utf16().count() * 2
    };
    size + CLONE_OVERHEAD <= ATTACHMENT_LIMIT
}

#[cfg(test)]
mod tests {
    use super::*;
    use roomcast_core::hub::RoomMembership;

    #[test]
    fn tags_round_trip_every_id() {
        for v in [0, 1, u64::from(u32::MAX), u64::MAX, (7u64 << 32) | 3] {
            let id = ConnId::from_u64(v);
            assert_eq!(parse_tag(&tag(id)), Some(id));
        }
        assert_eq!(parse_tag("other:1"), None);
        assert_eq!(parse_tag("conn:x"), None);
        assert_eq!(parse_tag("conn:"), None);
    }

    #[test]
    fn decode() {
        let snap = ConnSnapshot {
            id: u64::MAX,
            wire: "abc-1".into(),
            user: Some("ann".into()),
            connected_at: 5,
            rooms: vec![RoomMembership {
                room: "r".into(),
                presence: true,
                users: true,
                seq: 3,
            }],
            channels: vec!["c".into()],
            auth: None,
        };
        assert_eq!(
            Attachment::decode(Some(&snap.to_json())).unwrap(),
            Attachment::Inline(snap)
        );
        assert_eq!(
            Attachment::decode(Some(SPILLED)).unwrap(),
            Attachment::Spilled
        );
        assert_eq!(
            Attachment::decode(Some(CLOSED)).unwrap(),
            Attachment::Closed
        );
        assert!(matches!(
            Attachment::decode(None),
            Err(AttachmentError::Missing)
        ));
        assert!(matches!(
            Attachment::decode(Some("{")),
            Err(AttachmentError::Unreadable(_))
        ));
    }

    #[test]
    fn fits_counts_bytes_as_v8_stores_them() {
        let limit = ATTACHMENT_LIMIT - CLONE_OVERHEAD;
        assert!(fits(&"a".repeat(limit)));
        assert!(!fits(&"a".repeat(limit + 1)));
        // Latin-1 beyond ASCII: two UTF-8 bytes, one stored byte
        assert!(fits(&"é".repeat(limit)));
        // anything else: two bytes per UTF-16 unit
        assert!(fits(&"€".repeat(limit / 2)));
        assert!(!fits(&format!("{}€", "a".repeat(limit / 2))));
        assert!(!fits(&"😀".repeat(limit / 4 + 1)));
    }
}
