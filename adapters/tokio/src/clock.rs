//! The adapter's clock: the core counts time in milliseconds on a clock we choose, so we
//! use tokio's monotonic `Instant` since startup (it also follows tokio's paused test
//! clock, which keeps time-driven behaviour testable).

use std::time::Duration;

use roomcast_core::Timestamp;
use tokio::time::Instant;

/// Converts between tokio instants and core timestamps.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
}

impl Clock {
    pub(crate) fn new() -> Self {
        Clock {
            origin: Instant::now(),
        }
    }

    /// Now, as the core sees it.
    pub(crate) fn now(&self) -> Timestamp {
        self.timestamp(Instant::now())
    }

    /// An instant as a core timestamp (rounded down, so a deadline is never reported
    /// as reached before it is).
    pub(crate) fn timestamp(&self, at: Instant) -> Timestamp {
        let ms = at.saturating_duration_since(self.origin).as_millis();
        Timestamp(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// The instant of a core deadline. Sleeping until it guarantees `now() >= t` on wake.
    pub(crate) fn instant(&self, t: Timestamp) -> Instant {
        // Cap far-future deadlines (a huge configured interval) at ~30 years so the
        // addition cannot overflow.
        let ms = t.as_millis().min(1 << 40);
        self.origin + Duration::from_millis(ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn round_trips_and_rounds_down() {
        let c = Clock::new();
        assert_eq!(c.now(), Timestamp(0));
        tokio::time::advance(Duration::from_micros(1500)).await;
        assert_eq!(c.now(), Timestamp(1));
        let t = Timestamp(250);
        assert_eq!(c.timestamp(c.instant(t)), t);
        assert!(c.instant(Timestamp(u64::MAX)) > Instant::now());
    }
}
