//! Per-connection request rate limiting: a token bucket on the caller's clock.

use crate::time::Timestamp;

/// How many requests a connection may make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateLimit {
    /// Requests allowed in a burst (bucket size).
    pub burst: u32,
    /// Tokens refilled per second.
    pub per_second: u32,
    /// How long a connection may stay over the limit before it is closed with 1008.
    pub grace_ms: u64,
}

impl Default for RateLimit {
    fn default() -> Self {
        RateLimit {
            burst: 500,
            per_second: 200,
            grace_ms: 10_000,
        }
    }
}

/// A token bucket in milli-tokens so refills at any rate stay exact in integer math.
#[derive(Debug, Clone)]
pub(crate) struct TokenBucket {
    millitokens: u64,
    last: Timestamp,
    /// When the connection first hit the limit in its current streak of refusals.
    pub(crate) limited_since: Option<Timestamp>,
}

/// What the bucket decided about one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    Refuse,
    /// Over the limit for longer than the grace period.
    Abuse,
}

impl TokenBucket {
    pub(crate) fn new(limit: &RateLimit, now: Timestamp) -> Self {
        TokenBucket {
            millitokens: u64::from(limit.burst) * 1000,
            last: now,
            limited_since: None,
        }
    }

    pub(crate) fn take(&mut self, limit: &RateLimit, now: Timestamp) -> Verdict {
        let cap = u64::from(limit.burst) * 1000;
        let elapsed = now.0.saturating_sub(self.last.0);
        self.last = now;
        self.millitokens = self
            .millitokens
            .saturating_add(elapsed.saturating_mul(u64::from(limit.per_second)))
            .min(cap);
        if self.millitokens >= 1000 {
            self.millitokens -= 1000;
            // A flood just above the refill rate gets a token now and then; only a bucket
            // that has recovered a tenth of its burst ends the streak of refusals.
            if self.millitokens >= cap / 10 {
                self.limited_since = None;
            }
            return Verdict::Allow;
        }
        let since = *self.limited_since.get_or_insert(now);
        if now.0.saturating_sub(since.0) >= limit.grace_ms {
            Verdict::Abuse
        } else {
            Verdict::Refuse
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn burst_then_refill() {
        let l = RateLimit {
            burst: 3,
            per_second: 2,
            grace_ms: 1000,
        };
        let mut b = TokenBucket::new(&l, Timestamp(0));
        for _ in 0..3 {
            assert_eq!(b.take(&l, Timestamp(0)), Verdict::Allow);
        }
        assert_eq!(b.take(&l, Timestamp(0)), Verdict::Refuse);
        assert_eq!(b.take(&l, Timestamp(499)), Verdict::Refuse);
        assert_eq!(b.take(&l, Timestamp(500)), Verdict::Allow);
        // the bucket is empty again: the streak of refusals goes on
        assert_eq!(b.limited_since, Some(Timestamp(0)));
    }

    #[test]
    fn flood_just_over_the_rate_is_abuse_after_grace() {
        let l = RateLimit {
            burst: 10,
            per_second: 100,
            grace_ms: 1000,
        };
        let mut b = TokenBucket::new(&l, Timestamp(0));
        // 200 requests per second: twice the refill rate, forever.
        let mut first_abuse = None;
        for i in 0..1000u64 {
            let t = Timestamp(i * 5);
            if b.take(&l, t) == Verdict::Abuse {
                first_abuse = Some(t);
                break;
            }
        }
        let t = first_abuse.expect("a sustained flood is reported as abuse");
        assert!(t.0 >= 1000 && t.0 <= 1200, "abuse at {t:?}");
    }

    #[test]
    fn recovering_client_ends_the_streak() {
        let l = RateLimit {
            burst: 10,
            per_second: 100,
            grace_ms: 1000,
        };
        let mut b = TokenBucket::new(&l, Timestamp(0));
        for _ in 0..11 {
            b.take(&l, Timestamp(0));
        }
        assert!(b.limited_since.is_some());
        // quiet for 50 ms: 5 tokens back, then one request
        assert_eq!(b.take(&l, Timestamp(50)), Verdict::Allow);
        assert_eq!(b.limited_since, None);
    }

    #[test]
    fn abuse_reported_when_no_token_for_grace() {
        let l = RateLimit {
            burst: 1,
            per_second: 0,
            grace_ms: 1000,
        };
        let mut b = TokenBucket::new(&l, Timestamp(0));
        assert_eq!(b.take(&l, Timestamp(0)), Verdict::Allow);
        assert_eq!(b.take(&l, Timestamp(10)), Verdict::Refuse);
        assert_eq!(b.take(&l, Timestamp(1009)), Verdict::Refuse);
        assert_eq!(b.take(&l, Timestamp(1010)), Verdict::Abuse);
    }
}
