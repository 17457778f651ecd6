//! Caller-seeded randomness.
//!
//! The core never draws ambient entropy. Where it needs random bits (client mask keys,
//! reconnect jitter) it uses this generator, seeded by the adapter from its platform's
//! source (`getrandom`, `crypto.getRandomValues`). Tests seed it with a constant and get
//! the same run every time.

use rand_core::{RngCore, SeedableRng};
use rand_xoshiro::Xoshiro256PlusPlus;

/// A small, fast, seedable PRNG. Not for secrets: masking keys only need to be
/// unpredictable to the page script, which a seed from the platform's CSPRNG gives.
#[derive(Clone, Debug)]
pub struct Rng(Xoshiro256PlusPlus);

impl Rng {
    /// Builds the generator from 32 caller-provided random bytes.
    pub fn from_seed(seed: [u8; 32]) -> Self {
        Rng(Xoshiro256PlusPlus::from_seed(seed))
    }

    /// Builds the generator from a `u64`, for tests and simulations.
    pub fn from_u64(seed: u64) -> Self {
        Rng(Xoshiro256PlusPlus::seed_from_u64(seed))
    }

    /// Next 32 random bits.
    pub fn next_u32(&mut self) -> u32 {
        self.0.next_u32()
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0.next_u64()
    }

    /// Fills `dst` with random bytes.
    pub fn fill(&mut self, dst: &mut [u8]) {
        self.0.fill_bytes(dst)
    }

    /// A uniform value in `0..=max` (for full-jitter backoff).
    pub fn below_or_eq(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next_u64();
        }
        // Lemire's multiply-shift: bias is at most 2^-64 per draw, negligible for jitter.
        ((self.next_u64() as u128 * (max as u128 + 1)) >> 64) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_sequence() {
        let mut a = Rng::from_u64(7);
        let mut b = Rng::from_u64(7);
        for _ in 0..16 {
            assert_eq!(a.next_u64(), b.next_u64());
        }
    }

    #[test]
    fn below_or_eq_stays_in_range() {
        let mut r = Rng::from_u64(1);
        for max in [0u64, 1, 2, 10, 500, u64::MAX] {
            for _ in 0..200 {
                assert!(r.below_or_eq(max) <= max);
            }
        }
    }
}
