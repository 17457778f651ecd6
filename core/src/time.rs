//! Caller-supplied time.
//!
//! The core never reads a clock: every input that may move time carries a [`Timestamp`],
//! milliseconds on whatever monotonic clock the adapter uses (tokio's `Instant` since
//! start, `Date.now()` in a Durable Object, `performance.now()` in a browser). Keeping
//! time as a plain integer is what lets a hibernated Durable Object restore its hub and
//! lets tests jump a virtual clock to the next deadline instead of sleeping.

use core::time::Duration;

/// A point in time, in milliseconds on the adapter's clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp(pub u64);

impl Timestamp {
    /// The zero point, handy for tests and virtual clocks.
    pub const ZERO: Timestamp = Timestamp(0);

    /// Builds a timestamp from milliseconds on the adapter's clock.
    pub const fn from_millis(ms: u64) -> Self {
        Timestamp(ms)
    }

    /// Milliseconds on the adapter's clock.
    pub const fn as_millis(self) -> u64 {
        self.0
    }

    /// `self + d`, saturating rather than wrapping so a huge configured interval can
    /// never schedule a deadline in the past.
    pub fn saturating_add(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp(self.0.saturating_add(ms))
    }

    /// Time elapsed from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: Timestamp) -> Duration {
        Duration::from_millis(self.0.saturating_sub(earlier.0))
    }
}

impl core::ops::Add<Duration> for Timestamp {
    type Output = Timestamp;
    fn add(self, d: Duration) -> Timestamp {
        self.saturating_add(d)
    }
}

/// Keeps time monotonic inside a state machine even if the adapter's clock steps back
/// (a wall clock adjusted by NTP in a Durable Object, say).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Clock {
    now: Timestamp,
}

impl Clock {
    pub(crate) fn new(start: Timestamp) -> Self {
        Clock { now: start }
    }

    /// Advances to `t` unless `t` is in the past; returns the clamped current time.
    pub(crate) fn advance(&mut self, t: Timestamp) -> Timestamp {
        if t > self.now {
            self.now = t;
        }
        self.now
    }

    pub(crate) fn now(&self) -> Timestamp {
        self.now
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clock_never_runs_backwards() {
        let mut c = Clock::new(Timestamp(100));
        assert_eq!(c.advance(Timestamp(50)), Timestamp(100));
        assert_eq!(c.advance(Timestamp(150)), Timestamp(150));
        assert_eq!(c.now(), Timestamp(150));
    }

    #[test]
    fn saturating_arithmetic() {
        assert_eq!(
            Timestamp(u64::MAX - 1) + Duration::from_secs(10),
            Timestamp(u64::MAX)
        );
        assert_eq!(Timestamp(5).saturating_since(Timestamp(10)), Duration::ZERO);
    }
}
