//! Waits, for a camera's packets, for the one that is missing: a gap in the sequence numbers holds
//! the packets after it until the missing one comes (late, or resent after our NACK) or
//! `REPAIR_WAIT` passes. Packets in order pass at once, so a clean link pays nothing; a lossy or
//! jittery one pays a short delay of that tile instead of a broken frame.
//!
//! Why here and not in an rtpjitterbuffer in the branch: that buffer's latency is part of the
//! compositor's (room.txt sets them together), so raising it for one jittery sender would delay
//! every tile and stall the compositor once. Held here, before the appsrc stamps its arrival, the
//! packets are simply later: only that tile waits. Measured with `mcu probe --uplink-loss 5
//! --jitter-ms 30`: with a 20 ms branch buffer alone, the lossy sender's camera was decoded at
//! 18 fps (every loss and every reorder past 20 ms broke a frame and waited for a keyframe); and
//! behind this wait that buffer threw away the oldest packets of each released burst
//! (drop-on-latency), so the branch now has none (pipelines/video-input-vp8.txt).
//! Pure: time is passed in.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// How long packets after a gap wait for the missing one: a 30 ms jitter, our NACK tick (20 ms,
/// rtc/mod.rs), the sender's round trip and the resend's own jitter.
pub const REPAIR_WAIT: Duration = Duration::from_millis(120);
/// Packets held at most (about a second of a 2.5 Mbit/s camera); past it, they all go on.
const MAX_HELD: usize = 256;
/// A jump in sequence numbers this large is a new stream (a restarted sender), not a gap.
const MAX_GAP: u64 = 1000;

/// Sequence numbers, extended past their 16-bit wrap.
#[derive(Debug, Default)]
struct Unwrap {
    last: Option<u64>,
}

impl Unwrap {
    fn extend(&mut self, seq: u16) -> u64 {
        let extended = match self.last {
            // Started a wrap up, so a packet from just before the first stays above zero.
            None => u64::from(seq) + (1 << 16),
            // The nearest number to the last one seen: at most half the 16-bit space either way.
            Some(last) => {
                let delta = i64::from(seq.wrapping_sub(last as u16) as i16);
                last.saturating_add_signed(delta)
            }
        };
        if self.last.is_none_or(|last| extended > last) {
            self.last = Some(extended);
        }
        extended
    }
}

/// One stream's packets in sequence order.
#[derive(Debug)]
pub struct Reorder<P> {
    unwrap: Unwrap,
    /// The sequence number expected next.
    next: Option<u64>,
    /// Packets after a gap, with when they arrived.
    held: BTreeMap<u64, (P, Instant)>,
}

impl<P> Default for Reorder<P> {
    fn default() -> Self {
        Reorder {
            unwrap: Unwrap::default(),
            next: None,
            held: BTreeMap::new(),
        }
    }
}

impl<P> Reorder<P> {
    /// Takes in packet `seq`, arrived at `now`; returns the packets to pass on, in order.
    pub fn push(&mut self, seq: u16, packet: P, now: Instant) -> Vec<P> {
        let seq = self.unwrap.extend(seq);
        let Some(next) = self.next else {
            self.next = Some(seq + 1);
            return vec![packet];
        };
        if seq < next {
            // Late (after we gave up on it) or a duplicate: the depayloader drops it.
            return vec![packet];
        }
        if seq - next > MAX_GAP {
            let mut out = self.flush();
            out.push(packet);
            self.next = Some(seq + 1);
            return out;
        }
        self.held.insert(seq, (packet, now));
        if self.held.len() > MAX_HELD {
            return self.flush();
        }
        self.release()
    }

    /// When the oldest gap is given up on, if packets are held.
    pub fn deadline(&self) -> Option<Instant> {
        self.held
            .values()
            .map(|(_, at)| *at)
            .min()
            .map(|at| at + REPAIR_WAIT)
    }

    /// Gives up on the gaps whose wait is over at `now`; returns the packets to pass on.
    pub fn expire(&mut self, now: Instant) -> Vec<P> {
        let mut out = Vec::new();
        while self.deadline().is_some_and(|d| d <= now) {
            if let Some(first) = self.held.keys().next().copied() {
                self.next = Some(first);
            }
            out.extend(self.release());
        }
        out
    }

    /// Passes on what follows `next` without a gap.
    fn release(&mut self) -> Vec<P> {
        let mut out = Vec::new();
        while let Some(next) = self.next {
            let Some((packet, _)) = self.held.remove(&next) else {
                break;
            };
            out.push(packet);
            self.next = Some(next + 1);
        }
        out
    }

    /// Passes on everything held, in order, gaps and all.
    fn flush(&mut self) -> Vec<P> {
        let held = std::mem::take(&mut self.held);
        if let Some(last) = held.keys().next_back() {
            self.next = Some(last + 1);
        }
        held.into_values().map(|(p, _)| p).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn packets_in_order_pass_at_once() {
        let t0 = Instant::now();
        let mut r = Reorder::default();
        for (i, seq) in (65_530u16..=65_535).chain(0..5).enumerate() {
            assert_eq!(r.push(seq, seq, at(t0, i as u64)), [seq]);
        }
        assert_eq!(r.deadline(), None);
    }

    #[test]
    fn a_late_packet_fills_its_gap_and_releases_what_waited() {
        let t0 = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(r.push(10, 10, t0), [10]);
        assert_eq!(r.push(12, 12, at(t0, 5)), Vec::<u16>::new());
        assert_eq!(r.push(13, 13, at(t0, 10)), Vec::<u16>::new());
        assert_eq!(r.deadline(), Some(at(t0, 5) + REPAIR_WAIT));
        assert_eq!(r.push(11, 11, at(t0, 30)), [11, 12, 13]);
        assert_eq!(r.deadline(), None);
        assert_eq!(r.push(14, 14, at(t0, 40)), [14]);
    }

    #[test]
    fn a_gap_that_is_never_filled_is_given_up_after_the_wait() {
        let t0 = Instant::now();
        let mut r = Reorder::default();
        assert_eq!(r.push(1, 1, t0), [1]);
        r.push(3, 3, at(t0, 10));
        r.push(4, 4, at(t0, 20));
        r.push(6, 6, at(t0, 30));
        assert!(r.expire(at(t0, 100)).is_empty());
        // 2 never came: 3 and 4 go on; 6 waits for 5 from when it arrived.
        assert_eq!(r.expire(at(t0, 10) + REPAIR_WAIT), [3, 4]);
        assert_eq!(r.deadline(), Some(at(t0, 30) + REPAIR_WAIT));
        assert_eq!(r.expire(at(t0, 30) + REPAIR_WAIT), [6]);
        // 2 arriving now is late: passed on for the branch's buffer to drop.
        assert_eq!(r.push(2, 2, at(t0, 300)), [2]);
        assert_eq!(r.push(7, 7, at(t0, 301)), [7]);
    }

    #[test]
    fn a_restarted_stream_or_a_flood_is_passed_on_not_held() {
        let t0 = Instant::now();
        let mut r = Reorder::default();
        r.push(100, 100u32, t0);
        // A jump of thousands: a new stream.
        assert_eq!(r.push(40_000, 40_000, at(t0, 1)), [40_000]);
        // A gap followed by more packets than may be held: everything goes on.
        let mut out = Vec::new();
        for seq in 40_002..40_002 + MAX_HELD as u32 + 1 {
            out.extend(r.push(seq as u16, seq, at(t0, 2)));
        }
        assert_eq!(out.len(), MAX_HELD + 1);
        assert_eq!(r.deadline(), None);
    }
}
