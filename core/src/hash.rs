//! Hash maps keyed by the caller's seed.
//!
//! Room, channel and user names come from the network, so name-keyed maps must resist
//! hash flooding. std's `RandomState` would draw ambient entropy (forbidden in the core);
//! instead every map uses `ahash` keyed from the seed the adapter passes in.

use core::hash::BuildHasher;

/// The hasher builder used by every map in the core.
#[derive(Clone, Debug)]
pub struct SeededState(ahash::RandomState);

impl SeededState {
    /// Keys the hasher from caller-provided random bytes.
    pub fn new(seed: [u64; 4]) -> Self {
        SeededState(ahash::RandomState::with_seeds(
            seed[0], seed[1], seed[2], seed[3],
        ))
    }
}

impl Default for SeededState {
    /// A fixed key: deterministic, for tests and places that hold no peer-chosen keys.
    fn default() -> Self {
        SeededState::new([
            0x243f_6a88_85a3_08d3,
            0x1319_8a2e_0370_7344,
            0xa409_3822_299f_31d0,
            0x082e_fa98_ec4e_6c89,
        ])
    }
}

impl BuildHasher for SeededState {
    type Hasher = ahash::AHasher;
    fn build_hasher(&self) -> Self::Hasher {
        self.0.build_hasher()
    }
}

/// A `HashMap` with a seeded hasher.
pub type Map<K, V> = std::collections::HashMap<K, V, SeededState>;
/// An insertion-ordered set with O(1) swap-removal, used for room membership.
pub type IndexSet<K> = indexmap::IndexSet<K, SeededState>;
/// An insertion-ordered map with O(1) swap-removal.
pub type IndexMap<K, V> = indexmap::IndexMap<K, V, SeededState>;
