//! RFC 6455 payload masking (§5.3).
//!
//! Every client-to-server payload is XORed with a 4-byte key, so the server unmasks every
//! byte it receives and the client masks every byte it sends: this is the hottest loop of
//! the wire layer. It runs eight bytes at a time, and it takes the position of the first
//! byte within the frame payload so a payload can be unmasked piece by piece as it
//! arrives from the socket, without waiting for (or buffering) the whole frame.

/// XORs `buf` with the masking `key`, where `buf[0]` sits at position `offset` of the
/// frame payload.
///
/// Why the offset: a payload reaches us in arbitrary pieces; unmasking each piece as it
/// arrives (instead of buffering the frame first) is what lets the connection validate
/// UTF-8 and enforce limits while the frame is still in flight. Masking is its own
/// inverse, so the same call masks outgoing payloads.
pub fn apply_mask(buf: &mut [u8], key: [u8; 4], offset: usize) {
    // The key as seen from buf[0]: rotate so that index 0 lines up with payload[offset].
    let shift = offset % 4;
    let rotated = [
        key[shift],
        key[(shift + 1) % 4],
        key[(shift + 2) % 4],
        key[(shift + 3) % 4],
    ];
    let wide = u64::from_ne_bytes([
        rotated[0], rotated[1], rotated[2], rotated[3], rotated[0], rotated[1], rotated[2],
        rotated[3],
    ]);

    let mut words = buf.chunks_exact_mut(8);
    for word in &mut words {
        let bytes: [u8; 8] = (&*word)
            .try_into()
            .expect("chunks_exact_mut(8) yields 8-byte chunks");
        word.copy_from_slice(&(u64::from_ne_bytes(bytes) ^ wide).to_ne_bytes());
    }
    // The tail starts at a multiple of 8 (hence of 4), so the rotation is unchanged.
    for (i, byte) in words.into_remainder().iter_mut().enumerate() {
        *byte ^= rotated[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn naive(buf: &mut [u8], key: [u8; 4], offset: usize) {
        for (i, b) in buf.iter_mut().enumerate() {
            *b ^= key[(offset + i) % 4];
        }
    }

    #[test]
    fn matches_naive_for_all_lengths_alignments_offsets() {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let source: Vec<u8> = (0..80u8)
            .map(|i| i.wrapping_mul(31).wrapping_add(7))
            .collect();
        for len in 0..=64 {
            for align in 0..8 {
                for offset in 0..4 {
                    let mut fast = source.clone();
                    let mut slow = source.clone();
                    apply_mask(&mut fast[align..align + len], key, offset);
                    naive(&mut slow[align..align + len], key, offset);
                    assert_eq!(fast, slow, "len {len} align {align} offset {offset}");
                }
            }
        }
    }

    #[test]
    fn rfc_example_hello() {
        // RFC 6455 §5.7: a masked "Hello".
        let mut payload = [0x7f, 0x9f, 0x4d, 0x51, 0x58];
        apply_mask(&mut payload, [0x37, 0xfa, 0x21, 0x3d], 0);
        assert_eq!(&payload, b"Hello");
    }

    #[test]
    fn large_offsets_wrap() {
        let key = [1, 2, 3, 4];
        let mut a = [0u8; 5];
        let mut b = [0u8; 5];
        apply_mask(&mut a, key, 4001);
        naive(&mut b, key, 1);
        assert_eq!(a, b);
    }

    proptest! {
        #[test]
        fn incremental_equals_whole(
            data in proptest::collection::vec(any::<u8>(), 0..300),
            key in any::<[u8; 4]>(),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..6),
        ) {
            let mut whole = data.clone();
            apply_mask(&mut whole, key, 0);

            let mut points: Vec<usize> = cuts.iter().map(|c| c.index(data.len() + 1)).collect();
            points.push(0);
            points.push(data.len());
            points.sort_unstable();
            let mut pieces = data.clone();
            for w in points.windows(2) {
                apply_mask(&mut pieces[w[0]..w[1]], key, w[0]);
            }
            prop_assert_eq!(&pieces, &whole);

            let mut naive_out = data.clone();
            naive(&mut naive_out, key, 0);
            prop_assert_eq!(&naive_out, &whole);
            // Involution: masking twice restores the input.
            apply_mask(&mut whole, key, 0);
            prop_assert_eq!(whole, data);
        }
    }
}
