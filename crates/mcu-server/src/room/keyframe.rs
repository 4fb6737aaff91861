//! Keyframe-request throttling. Every viewer that joins or loses a packet asks for a keyframe, and
//! in a 16-person room they ask together; a 720p keyframe is several times the size of a delta
//! frame, so honouring each request would flood every viewer's link. The throttle turns any burst
//! of requests into at most one keyframe per interval, and never drops a request: one that arrives
//! too soon is served at the end of the interval.

use std::time::{Duration, Instant};

/// Minimum spacing of forced keyframes on the shared encoder. 500 ms keeps a newcomer's wait for a
/// picture under a second (one interval plus transit) while a burst of 16 joiners costs one or two
/// keyframes, not sixteen.
pub const DEFAULT_MIN_KEYFRAME_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Force a keyframe now.
    ForceNow,
    /// A keyframe will be forced at this instant (call [`KeyframeThrottle::poll`] then).
    Deferred(Instant),
}

#[derive(Debug)]
pub struct KeyframeThrottle {
    min_interval: Duration,
    last_forced: Option<Instant>,
    pending_at: Option<Instant>,
}

impl KeyframeThrottle {
    pub fn new(min_interval: Duration) -> Self {
        KeyframeThrottle {
            min_interval,
            last_forced: None,
            pending_at: None,
        }
    }

    pub fn request(&mut self, now: Instant) -> Decision {
        if let Some(at) = self.pending_at {
            return Decision::Deferred(at);
        }
        match self.last_forced {
            Some(last) if now < last + self.min_interval => {
                let at = last + self.min_interval;
                self.pending_at = Some(at);
                Decision::Deferred(at)
            }
            _ => {
                self.last_forced = Some(now);
                Decision::ForceNow
            }
        }
    }

    /// When a deferred keyframe is due, if any.
    pub fn pending_at(&self) -> Option<Instant> {
        self.pending_at
    }

    /// True when a deferred request is due now; the caller then forces the keyframe.
    pub fn poll(&mut self, now: Instant) -> bool {
        match self.pending_at {
            Some(at) if now >= at => {
                self.pending_at = None;
                self.last_forced = Some(now);
                true
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const I: Duration = Duration::from_millis(500);

    #[test]
    fn the_first_request_is_served_at_once() {
        let mut t = KeyframeThrottle::new(I);
        assert_eq!(t.request(Instant::now()), Decision::ForceNow);
    }

    #[test]
    fn a_burst_of_requests_costs_one_keyframe_now_and_one_later() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::new(I);
        let mut forced = 0;
        let mut deferred_to = None;
        for i in 0..16 {
            match t.request(t0 + Duration::from_millis(i)) {
                Decision::ForceNow => forced += 1,
                Decision::Deferred(at) => deferred_to = Some(at),
            }
        }
        assert_eq!(forced, 1);
        assert_eq!(deferred_to, Some(t0 + I));
        assert!(!t.poll(t0 + I - Duration::from_millis(1)));
        assert!(t.poll(t0 + I));
        // Served: nothing more is pending.
        assert!(!t.poll(t0 + I * 3));
        assert_eq!(t.pending_at(), None);
    }

    #[test]
    fn requests_spaced_wider_than_the_interval_are_each_served() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::new(I);
        for i in 0..5 {
            assert_eq!(t.request(t0 + I * i), Decision::ForceNow);
        }
    }

    #[test]
    fn a_deferred_keyframe_restarts_the_interval() {
        let t0 = Instant::now();
        let mut t = KeyframeThrottle::new(I);
        t.request(t0);
        t.request(t0 + Duration::from_millis(100));
        assert!(t.poll(t0 + I));
        assert_eq!(
            t.request(t0 + I + Duration::from_millis(10)),
            Decision::Deferred(t0 + I * 2)
        );
    }
}
