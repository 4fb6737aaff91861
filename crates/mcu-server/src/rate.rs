//! A token bucket, for anything a client may do only so often (chat messages, file offers). Pure:
//! time is passed in. A leaf: it imports nothing from the rest of the server.

use std::time::{Duration, Instant};

/// A token bucket: `burst` messages at once, refilled at `per_second`.
#[derive(Debug, Clone)]
pub struct RateLimit {
    tokens: f64,
    burst: f64,
    per_second: f64,
    last: Option<Instant>,
}

impl RateLimit {
    pub fn new(burst: f64, per_second: f64) -> Self {
        RateLimit {
            tokens: burst,
            burst,
            per_second,
            last: None,
        }
    }

    fn refill(&mut self, now: Instant) {
        if let Some(last) = self.last {
            let refill = now.saturating_duration_since(last).as_secs_f64() * self.per_second;
            self.tokens = (self.tokens + refill).min(self.burst);
        }
        self.last = Some(now);
    }

    /// Whether one more message may go now; counts it if so.
    pub fn allow(&mut self, now: Instant) -> bool {
        self.refill(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

impl RateLimit {
    /// Takes `cost` tokens at `now` whatever the bucket holds, going into debt, and says how long
    /// to wait until the debt is paid: for a stream of bytes that must keep to a pace (pass the
    /// byte count) rather than be refused. Idle time fills the bucket only up to `burst`.
    pub fn take(&mut self, cost: f64, now: Instant) -> Duration {
        self.refill(now);
        self.tokens -= cost;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.per_second)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn the_rate_limit_allows_a_burst_then_the_rate() {
        let t0 = Instant::now();
        let mut limit = RateLimit::new(3.0, 2.0);
        assert!((0..3).all(|_| limit.allow(t0)));
        assert!(!limit.allow(t0), "the burst is spent");
        assert!(!limit.allow(t0 + Duration::from_millis(400)));
        assert!(limit.allow(t0 + Duration::from_millis(600)), "one refilled");
        // A long pause refills the burst, no more.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| limit.allow(later)));
        assert!(!limit.allow(later));
    }
}
