//! Incremental UTF-8 validation for text messages.
//!
//! A text message may arrive as many fragments, and each fragment over many reads, with
//! multi-byte characters split anywhere. RFC 6455 §8.1 lets an endpoint fail a connection
//! as soon as the bytes received so far can no longer be valid UTF-8, and the Autobahn
//! 6.x cases check that we do ("fail fast"): a peer streaming garbage must not make us
//! buffer the rest of a large message before noticing.

use thiserror::Error;

/// The bytes fed so far are not (and can never become) valid UTF-8.
///
/// Exists as its own type so callers map it to close code 1007 without guessing which
/// layer failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[error("invalid UTF-8 in text data")]
pub struct Utf8Error;

/// Validates a UTF-8 stream chunk by chunk, without buffering or copying the chunks.
///
/// Only the unfinished character at the end of a chunk (at most 3 bytes) is carried to
/// the next call, which is why a text message can be validated while it streams in.
#[derive(Debug, Clone, Default)]
pub struct Utf8Validator {
    carry: [u8; 4],
    /// At most 3, so a byte holds it (this sits in every connection).
    carry_len: u8,
}

/// Length of the sequence introduced by a lead byte that `from_utf8` already accepted as
/// the start of a (possibly incomplete) character.
fn sequence_len(lead: u8) -> usize {
    match lead {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        _ => 4,
    }
}

impl Utf8Validator {
    /// A validator at the start of a message, so one can be kept per connection and
    /// reused.
    pub fn new() -> Self {
        Self::default()
    }

    /// Checks the next chunk of the stream.
    ///
    /// Errors as soon as a byte makes the stream invalid, even when that byte ends the
    /// chunk (for example a surrogate lead `ED A0`), so a violation is reported on the read
    /// that carried it. An incomplete character at the end is remembered, not an error.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Utf8Error> {
        if self.carry_len > 0 {
            // Finish the pending character by splicing in only the bytes it still needs.
            let carried = usize::from(self.carry_len);
            let needed = sequence_len(self.carry[0]) - carried;
            let take = needed.min(bytes.len());
            let mut joined = self.carry;
            joined[carried..carried + take].copy_from_slice(&bytes[..take]);
            let joined = &joined[..carried + take];
            match core::str::from_utf8(joined) {
                Ok(_) => {
                    self.carry_len = 0;
                    bytes = &bytes[take..];
                }
                Err(e) if e.error_len().is_some() => return Err(Utf8Error),
                Err(_) => {
                    // Still incomplete: the chunk was shorter than the rest of the character.
                    self.carry[..joined.len()].copy_from_slice(joined);
                    self.carry_len = joined.len() as u8;
                    return Ok(());
                }
            }
        }
        // The SIMD check answers the common case (a valid chunk) several times faster
        // than `core::str::from_utf8` on this path's sizes; only a chunk it rejects (invalid,
        // or ending mid-character) is looked at again to tell the two apart.
        if simdutf8::basic::from_utf8(bytes).is_ok() {
            return Ok(());
        }
        match core::str::from_utf8(bytes) {
            Ok(_) => Ok(()),
            Err(e) if e.error_len().is_some() => Err(Utf8Error),
            Err(e) => {
                let tail = &bytes[e.valid_up_to()..];
                self.carry[..tail.len()].copy_from_slice(tail);
                self.carry_len = tail.len() as u8;
                Ok(())
            }
        }
    }

    /// Ends the message: errors if it stopped in the middle of a character.
    ///
    /// Resets the validator either way, ready for the next message.
    pub fn finish(&mut self) -> Result<(), Utf8Error> {
        let incomplete = self.carry_len > 0;
        self.reset();
        if incomplete {
            Err(Utf8Error)
        } else {
            Ok(())
        }
    }

    /// Forgets any partial character, for when a message is abandoned.
    pub fn reset(&mut self) {
        self.carry_len = 0;
    }

    /// Whether the stream so far ends on a character boundary.
    #[cfg(test)]
    pub fn is_complete(&self) -> bool {
        self.carry_len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn whole(bytes: &[u8]) -> Result<(), Utf8Error> {
        let mut v = Utf8Validator::new();
        v.feed(bytes)?;
        v.finish()
    }

    /// Feeds one byte at a time and returns the index of the byte that failed (or the
    /// length if `finish` failed), `None` if valid.
    fn failing_index(bytes: &[u8]) -> Option<usize> {
        let mut v = Utf8Validator::new();
        for (i, b) in bytes.iter().enumerate() {
            if v.feed(core::slice::from_ref(b)).is_err() {
                return Some(i);
            }
        }
        v.finish().err().map(|_| bytes.len())
    }

    const VALID: &[&[u8]] = &[
        b"",
        b"hello",
        &[0x24],
        &[0xc2, 0xa2],
        &[0xe2, 0x82, 0xac],
        &[0xf0, 0x90, 0x8d, 0x88],
        &[0xed, 0x9f, 0xbf],       // U+D7FF, just below surrogates
        &[0xee, 0x80, 0x80],       // U+E000, just above surrogates
        &[0xf4, 0x8f, 0xbf, 0xbf], // U+10FFFF
        &[0xef, 0xbf, 0xbf],       // U+FFFF (a noncharacter, still valid)
        "κόσμε€𝄞 mixed ascii".as_bytes(),
    ];

    #[test]
    fn valid_inputs_pass_whole_and_bytewise() {
        for v in VALID {
            assert_eq!(whole(v), Ok(()), "{v:x?}");
            assert_eq!(failing_index(v), None, "{v:x?}");
        }
    }

    #[test]
    fn valid_inputs_pass_split_at_every_position() {
        for v in VALID {
            for cut in 0..=v.len() {
                let mut val = Utf8Validator::new();
                val.feed(&v[..cut]).unwrap();
                val.feed(&v[cut..]).unwrap();
                val.finish().unwrap();
            }
            for a in 0..=v.len() {
                for b in a..=v.len() {
                    let mut val = Utf8Validator::new();
                    val.feed(&v[..a]).unwrap();
                    val.feed(&v[a..b]).unwrap();
                    val.feed(&v[b..]).unwrap();
                    val.finish().unwrap();
                }
            }
        }
    }

    #[test]
    fn fails_on_first_invalid_byte() {
        // (input, index of the byte at which the stream becomes invalid)
        let cases: &[(&[u8], usize)] = &[
            (&[0x80], 0), // lone continuation
            (&[0xbf], 0),
            (&[0xc0, 0x80], 0),             // overlong NUL, C0 is never valid
            (&[0xc1, 0xbf], 0),             // overlong
            (&[0xe0, 0x80, 0x80], 1),       // overlong 3-byte
            (&[0xe0, 0x9f, 0xbf], 1),       // overlong 3-byte
            (&[0xf0, 0x80, 0x80, 0x80], 1), // overlong 4-byte
            (&[0xf0, 0x8f, 0xbf, 0xbf], 1), // overlong 4-byte
            (&[0xed, 0xa0, 0x80], 1),       // U+D800 surrogate
            (&[0xed, 0xbf, 0xbf], 1),       // U+DFFF surrogate
            (&[0xed, 0xa0, 0x80, 0xed, 0xb0, 0x80], 1), // surrogate pair
            (&[0xf4, 0x90, 0x80, 0x80], 1), // U+110000
            (&[0xf5, 0x80, 0x80, 0x80], 0), // lead > F4
            (&[0xff], 0),
            (&[0xfe], 0),
            (&[0xc2, 0x41], 1), // missing continuation
            (&[0xe2, 0x82, 0x41], 2),
            (&[0xf0, 0x90, 0x8d, 0x41], 3),
            (
                b"valid so far \xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xed\xa0\x80",
                25,
            ),
        ];
        for &(input, at) in cases {
            assert_eq!(failing_index(input), Some(at), "{input:x?}");
            assert!(whole(input).is_err());
            // Feeding up to and including the bad byte in one chunk fails right there.
            let mut v = Utf8Validator::new();
            assert!(v.feed(&input[..=at]).is_err(), "{input:x?}");
            // And every split before it behaves the same.
            for cut in 0..=at {
                let mut v = Utf8Validator::new();
                v.feed(&input[..cut]).unwrap();
                assert!(v.feed(&input[cut..=at]).is_err(), "{input:x?} cut {cut}");
            }
        }
    }

    #[test]
    fn incomplete_at_end_fails_only_at_finish() {
        for input in [&[0xc2][..], &[0xe2, 0x82], &[0xf0, 0x90, 0x8d], b"ab\xf0"] {
            let mut v = Utf8Validator::new();
            v.feed(input).unwrap();
            assert!(!v.is_complete());
            assert_eq!(v.finish(), Err(Utf8Error));
            // finish resets: the validator is reusable.
            v.feed(b"ok").unwrap();
            v.finish().unwrap();
        }
    }

    #[test]
    fn carried_prefix_then_bad_continuation() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xf0, 0x90]).unwrap();
        assert!(v.feed(&[0x41]).is_err());
        let mut v = Utf8Validator::new();
        v.feed(&[0xe0]).unwrap();
        assert!(
            v.feed(&[0x80]).is_err(),
            "overlong detected across the split"
        );
    }

    #[test]
    fn reset_drops_partial() {
        let mut v = Utf8Validator::new();
        v.feed(&[0xe2, 0x82]).unwrap();
        v.reset();
        v.feed(b"x").unwrap();
        v.finish().unwrap();
    }

    proptest! {
        #[test]
        fn agrees_with_std(
            data in proptest::collection::vec(any::<u8>(), 0..400),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..5),
        ) {
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut v = Utf8Validator::new();
            let mut ok = true;
            for w in points.windows(2) {
                if v.feed(&data[w[0]..w[1]]).is_err() {
                    ok = false;
                    break;
                }
            }
            if ok {
                ok = v.finish().is_ok();
            }
            prop_assert_eq!(ok, core::str::from_utf8(&data).is_ok());
        }

        /// Long inputs take the SIMD path (simdutf8 uses it from 64 bytes on): valid text
        /// of up to a few hundred bytes with one invalid sequence put at a random character
        /// boundary, fed whole and in random chunks, must fail; without it, pass. The text
        /// ends in ASCII, so a fast path that trusted such chunks would be caught.
        #[test]
        fn long_input_with_one_invalid_sequence_fails(
            s in "[a-z0-9 ]{0,8}\\PC{20,120}",
            at in any::<prop::sample::Index>(),
            bad in prop::sample::select(vec![
                &b"\xff"[..], b"\xfe", b"\x80", b"\xbf", b"\xc0\xaf", b"\xc1\xbf",
                b"\xe0\x80\xaf", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xf5\x80\x80\x80",
                b"\xc2\x41", b"\xe2\x82\x41",
            ]),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..4),
        ) {
            let mut text = s.into_bytes();
            text.extend_from_slice(b" and some ASCII at the end.");
            prop_assume!(text.len() >= 64);
            // A character boundary: the invalid bytes must be what breaks the text.
            let mut i = at.index(text.len() + 1);
            while i < text.len() && (text[i] & 0xC0) == 0x80 {
                i += 1;
            }
            let mut data = text[..i].to_vec();
            data.extend_from_slice(bad);
            data.extend_from_slice(&text[i..]);
            prop_assert!(core::str::from_utf8(&data).is_err());

            let mut v = Utf8Validator::new();
            prop_assert!(v.feed(&data).and_then(|()| v.finish()).is_err(), "whole");
            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut v = Utf8Validator::new();
            let chunked = points
                .windows(2)
                .try_for_each(|w| v.feed(&data[w[0]..w[1]]))
                .and_then(|()| v.finish());
            prop_assert!(chunked.is_err(), "in chunks at {:?}", points);
            // The same text without the bad bytes is fine either way.
            let mut v = Utf8Validator::new();
            prop_assert!(v.feed(&text).and_then(|()| v.finish()).is_ok());
        }

        #[test]
        fn valid_strings_split_anywhere(s in "\\PC{0,40}", cut in any::<prop::sample::Index>()) {
            let b = s.as_bytes();
            let c = cut.index(b.len() + 1);
            let mut v = Utf8Validator::new();
            prop_assert!(v.feed(&b[..c]).is_ok());
            prop_assert!(v.feed(&b[c..]).is_ok());
            prop_assert!(v.finish().is_ok());
        }
    }
}
