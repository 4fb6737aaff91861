//! Which tier of the composite a viewer's link carries, decided from what the viewer reports:
//! its receiver reports (the share of packets lost), its NACKs (lost packets, as they happen), and
//! its REMB estimate when its browser sends one. Pure: signals and decisions carry their time.
//!
//! Loss decides, not REMB alone. Measured here (STYLE.md 10b): Chromium's REMB starts at
//! 0.74 Mbit/s and climbs to only 1.15 Mbit/s after 12 s while a loopback link carries 2 Mbit/s
//! cleanly, so a viewer moved by REMB alone would sit on a low tier for half a minute. A link that
//! is too thin for its tier drops packets (a 1.2 Mbit/s link under the 2 Mbit/s top tier loses
//! ~40 %), so: down when loss is high, to the tier that fits what gets through (and under the
//! REMB estimate when there is one). Up only after a quiet spell and a test of the link: the
//! viewer is sent copies of packets it already has until it receives the next tier's rate
//! (`Decision::Test`); if that brings no loss it moves up one tier, else it stays and waits a
//! minute before the next test. A test that fails costs a moment of picture, where moving up
//! blindly onto a link that cannot carry the tier froze a probe viewer's picture for 2.3 s.

use std::time::{Duration, Instant};

/// Loss (0–1) above which the link does not carry the tier: a few percent is repaired by
/// retransmission; a tenth of the packets lost breaks frames faster than keyframes can mend them.
pub const DOWN_LOSS: f64 = 0.10;
/// Loss below which the link counts as quiet, fit to try the next tier up.
pub const QUIET_LOSS: f64 = 0.02;
/// A tier is chosen to use at most this share of what gets through, so its own bursts (a
/// keyframe is several times a delta frame) fit too.
pub const HEADROOM: f64 = 0.85;
/// How long the link must be quiet after a move down before a test of the next tier: with
/// LINK_TEST and UP_PROBE, a viewer whose link narrowed for a moment (a Wi-Fi dip) climbs two
/// tiers back to the top within about 10 s. Also the hold again once a step up held.
pub const UP_HOLD: Duration = Duration::from_secs(5);
/// How long a link test lasts: a receiver report and many rounds of NACKs, half of it climbing
/// (TEST_RAMP) and half at the full rate, where 0.75 s of a 100 ms queue shows an overflow of 13 %.
pub const LINK_TEST: Duration = Duration::from_millis(1500);
/// A link test's extra rate climbs from nothing to its full value over this long. Only the
/// loss of the tier's own packets shows (a lost copy is never missed), so a test that jumps to
/// its full rate on a link that cannot carry it overflows the queue at once and costs a burst of
/// real packets; climbing, the first loss comes while the overflow is still small, and the test
/// ends on that first loss (the viewer's task sends the copies). Measured with
/// `mcu probe --downlink-kbps 1200`: a jump cost 130 packets per test and a freeze each time.
pub const TEST_RAMP: Duration = Duration::from_millis(750);
/// After a step up, the new tier is on probation this long: loss then sends the viewer straight
/// back and doubles the hold before the next try.
pub const UP_PROBE: Duration = Duration::from_secs(2);
/// The hold once a test failed or a step up did not hold: the link is known to be thin, and each
/// failed test costs the viewer a moment of picture (the overflow it provokes loses some of the
/// tier's own packets, and their repair waits behind the full queue). Measured with
/// `mcu probe --downlink-kbps 1200` and 250: every failed test was a freeze of 0.3–0.5 s, and
/// doubling the hold from 5 s put three of them in the first minute; once a minute keeps a thin
/// link to one, and a link that got better is still found within a minute.
pub const FAILED_UP_HOLD: Duration = Duration::from_secs(60);
/// How quickly the loss measure follows the reports: each report counts this much.
const LOSS_WEIGHT: f64 = 0.5;
/// A link test judges NACKs once this many packets went out in it (a quarter second of the
/// lowest tier), so one NACK among the first few packets does not end it.
const MIN_TEST_PACKETS: usize = 10;
/// NACKs are counted over this window to measure loss between receiver reports.
const NACK_WINDOW: Duration = Duration::from_millis(1000);
/// After a move, reports are not counted for this long: the first receiver report after it still
/// covers packets lost on the old tier, and the NACKs in flight ask for them too.
pub const MOVE_SETTLE: Duration = Duration::from_millis(1500);
/// A packet asked for again within this long of the last time is the same loss asked about again
/// (receivers repeat a NACK every round trip until the packet comes, some of them for as long as
/// it is in their log).
pub const NACK_MEMORY: Duration = Duration::from_secs(3);

/// A NACKed packet counts as lost only when it is still asked for this long after the first
/// NACK. A receiver NACKs a gap as soon as the next packet arrives, so a packet that is merely
/// late (reordered by Wi-Fi retries or jitter) is NACKed once and then arrives; one our resend
/// mended quickly is not asked for again either. Measured with `mcu probe --jitter-ms 30` (no
/// loss at all): counting every NACK as a loss moved that viewer down two tiers; asked again
/// after 40 ms, a packet is missing on a link whose queue delays the repair, which is the link
/// a smaller tier helps.
pub const REORDER_GRACE: Duration = Duration::from_millis(40);

/// Which NACKed sequence numbers are losses: asked for again after REORDER_GRACE, each counted
/// once however often it is asked for.
#[derive(Debug, Default)]
pub struct NackLosses {
    asked: std::collections::HashMap<u16, Asked>,
}

#[derive(Debug)]
struct Asked {
    first: Instant,
    last: Instant,
    counted: bool,
}

impl NackLosses {
    /// How many of `seqs` became losses at `now`.
    pub fn count(&mut self, seqs: &[u16], now: Instant) -> usize {
        // Forgotten only once nobody asks any more: webrtc-rs's generator asks for a packet
        // it never got until 512 newer ones arrived (17 s on the bottom tier), and forgetting
        // it while it is still asked for counted it again every NACK_MEMORY (measured: a
        // viewer stuck on the bottom tier, its link never quiet enough for a test).
        self.asked
            .retain(|_, a| now.saturating_duration_since(a.last) < NACK_MEMORY);
        let mut lost = 0;
        for seq in seqs {
            let asked = self.asked.entry(*seq).or_insert(Asked {
                first: now,
                last: now,
                counted: false,
            });
            asked.last = now;
            if !asked.counted && now.saturating_duration_since(asked.first) >= REORDER_GRACE {
                asked.counted = true;
                lost += 1;
            }
        }
        lost
    }
}

/// What the viewer's task should do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Move to this tier.
    Move(usize),
    /// Test the link: send copies of packets until the viewer receives this many kbit/s.
    Test { kbps: u32 },
    /// Stop testing (the link did not carry it).
    EndTest,
}

/// What a viewer said about the composite.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Signal {
    /// A receiver report's fraction lost (0–1) since its previous report.
    Loss(f64),
    /// Its browser's estimate of what its link carries, in kbit/s.
    Remb(u32),
    /// It asked for this many packets again.
    Nacked(usize),
    /// We sent it this many packets of the composite.
    Sent(usize),
}

#[derive(Debug, Clone)]
pub struct TierChoice {
    /// Each tier's bitrate in kbit/s, the top one first.
    tiers_kbps: Vec<u32>,
    current: usize,
    /// Smoothed loss, 0–1: what triggers a move.
    loss: f64,
    /// The latest loss measured, 0–1: what says where to move (the smoothed one lags behind a
    /// link that just narrowed).
    recent_loss: f64,
    /// Packets sent and NACKed in the current window.
    window_start: Option<Instant>,
    window_sent: usize,
    window_nacked: usize,
    remb_kbps: Option<u32>,
    /// When the link was last lossy (or the tier last changed).
    last_trouble: Option<Instant>,
    /// The last step up, while it is on probation.
    probing_since: Option<Instant>,
    /// A link test under way: when it began, and what was sent and NACKed since.
    testing_since: Option<Instant>,
    test_sent: usize,
    test_nacked: usize,
    /// When the viewer last moved: reports are not counted for MOVE_SETTLE after it.
    moved_at: Option<Instant>,
    up_hold: Duration,
}

impl TierChoice {
    /// A viewer starting on the top tier of tiers with these bitrates.
    pub fn new(tiers_kbps: Vec<u32>) -> Self {
        TierChoice {
            tiers_kbps,
            current: 0,
            loss: 0.0,
            recent_loss: 0.0,
            window_start: None,
            window_sent: 0,
            window_nacked: 0,
            remb_kbps: None,
            last_trouble: None,
            probing_since: None,
            testing_since: None,
            test_sent: 0,
            test_nacked: 0,
            moved_at: None,
            up_hold: UP_HOLD,
        }
    }

    #[cfg(test)]
    pub fn current(&self) -> usize {
        self.current
    }

    /// Smoothed loss, 0–1.
    pub fn loss(&self) -> f64 {
        self.loss
    }

    pub fn observe(&mut self, signal: Signal, now: Instant) {
        let settling = self
            .moved_at
            .is_some_and(|at| now.saturating_duration_since(at) < MOVE_SETTLE);
        if settling && matches!(signal, Signal::Loss(_) | Signal::Nacked(_)) {
            return;
        }
        match signal {
            Signal::Loss(fraction) => self.add_loss(fraction.clamp(0.0, 1.0), now),
            Signal::Remb(kbps) => self.remb_kbps = Some(kbps),
            Signal::Nacked(n) => {
                self.window_nacked += n;
                self.test_nacked += n;
            }
            Signal::Sent(n) => {
                self.window_sent += n;
                self.test_sent += n;
                let start = *self.window_start.get_or_insert(now);
                if now.saturating_duration_since(start) >= NACK_WINDOW {
                    // NACKs say a packet is missing as soon as the next one arrives, which
                    // catches a narrowing link before the next receiver report does.
                    if self.window_sent > 0 {
                        let fraction = self.window_nacked as f64 / self.window_sent as f64;
                        if fraction > self.loss {
                            self.add_loss(fraction.min(1.0), now);
                        }
                    }
                    self.window_start = Some(now);
                    self.window_sent = 0;
                    self.window_nacked = 0;
                }
            }
        }
    }

    fn add_loss(&mut self, fraction: f64, now: Instant) {
        self.loss = self.loss * (1.0 - LOSS_WEIGHT) + fraction * LOSS_WEIGHT;
        self.recent_loss = fraction;
        if fraction > QUIET_LOSS {
            self.last_trouble = Some(now);
        }
    }

    /// What to do now, if anything.
    pub fn decide(&mut self, now: Instant) -> Option<Decision> {
        let lowest = self.tiers_kbps.len().saturating_sub(1);
        if let Some(since) = self.testing_since {
            // NACKs answer within a round trip: a test that brings loss ends at its first signs,
            // before it does the viewer's picture much harm.
            let nacked = self.test_sent >= MIN_TEST_PACKETS
                && self.test_nacked as f64 > QUIET_LOSS * self.test_sent as f64;
            if nacked || self.loss > QUIET_LOSS || self.recent_loss > QUIET_LOSS {
                // The link did not carry the next tier: stay, and test again later. The loss was
                // the test's, not the tier's: it is forgotten, and so are the reports that still
                // cover the test (as after a move).
                self.testing_since = None;
                self.up_hold = FAILED_UP_HOLD;
                self.last_trouble = Some(now);
                self.loss = 0.0;
                self.recent_loss = 0.0;
                self.window_start = None;
                self.window_sent = 0;
                self.window_nacked = 0;
                self.moved_at = Some(now);
                return Some(Decision::EndTest);
            }
            if now.saturating_duration_since(since) < LINK_TEST {
                return None;
            }
            self.testing_since = None;
            self.probing_since = Some(now);
            return Some(Decision::Move(self.change_to(self.current - 1, now)));
        }
        if self.loss > DOWN_LOSS && self.current < lowest {
            // What gets through, and under the browser's own estimate when it gives one.
            let loss = self.loss.max(self.recent_loss);
            let carried = f64::from(self.tiers_kbps[self.current]) * (1.0 - loss);
            let fits = self
                .remb_kbps
                .map_or(carried, |remb| carried.min(f64::from(remb)))
                * HEADROOM;
            let target = (self.current + 1..=lowest)
                .find(|t| f64::from(self.tiers_kbps[*t]) <= fits)
                .unwrap_or(lowest);
            if self.probing_since.take().is_some() {
                // The step up did not hold: wait longer before the next.
                self.up_hold = FAILED_UP_HOLD;
            }
            return Some(Decision::Move(self.change_to(target, now)));
        }
        let mut step_held = false;
        if let Some(since) = self.probing_since {
            if now.saturating_duration_since(since) < UP_PROBE {
                return None;
            }
            // The step held: the next one may follow at once.
            self.probing_since = None;
            self.up_hold = UP_HOLD;
            step_held = true;
        }
        let quiet_for = self
            .last_trouble
            .map_or(Duration::MAX, |at| now.saturating_duration_since(at));
        let quiet = self.loss < QUIET_LOSS && (step_held || quiet_for >= self.up_hold);
        if self.current > 0 && quiet {
            self.testing_since = Some(now);
            self.test_sent = 0;
            self.test_nacked = 0;
            // The next tier must fit with its headroom, as a move down chooses.
            let kbps = f64::from(self.tiers_kbps[self.current - 1]) / HEADROOM;
            return Some(Decision::Test {
                kbps: kbps.round() as u32,
            });
        }
        None
    }

    /// The rate a link test is bringing the viewer to, while one runs.
    #[cfg(test)]
    pub fn testing(&self) -> Option<u32> {
        self.testing_since.map(|_| {
            (f64::from(self.tiers_kbps[self.current.saturating_sub(1)]) / HEADROOM).round() as u32
        })
    }

    fn change_to(&mut self, tier: usize, now: Instant) -> usize {
        self.current = tier;
        // The new tier starts with a clean measure: its own loss, its own quiet spell.
        self.loss = 0.0;
        self.recent_loss = 0.0;
        self.window_start = None;
        self.window_sent = 0;
        self.window_nacked = 0;
        self.last_trouble = Some(now);
        self.moved_at = Some(now);
        tier
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ladder() -> TierChoice {
        TierChoice::new(vec![2000, 600, 200])
    }

    fn at(t0: Instant, ms: u64) -> Instant {
        t0 + Duration::from_millis(ms)
    }

    #[test]
    fn a_clean_link_stays_on_the_top_tier_whatever_remb_says_while_it_ramps() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Remb(740), t0);
        for s in 0..30 {
            c.observe(Signal::Loss(0.0), at(t0, s * 1000));
            assert_eq!(c.decide(at(t0, s * 1000)), None);
        }
        assert_eq!(c.current(), 0);
    }

    #[test]
    fn a_link_that_narrows_moves_down_within_two_reports_to_the_tier_that_fits() {
        let t0 = Instant::now();
        // A 1.2 Mbit/s link under the 2 Mbit/s tier: ~40 % lost.
        let mut c = ladder();
        c.observe(Signal::Loss(0.4), at(t0, 1000));
        assert_eq!(
            c.decide(at(t0, 1000)),
            Some(Decision::Move(1)),
            "1.2 Mbit/s carries 600, not 2000"
        );
        // A 250 kbit/s link: ~88 % lost, and the 200 kbit/s tier is all that fits.
        let mut c = ladder();
        c.observe(Signal::Loss(0.88), at(t0, 1000));
        assert_eq!(c.decide(at(t0, 1000)), Some(Decision::Move(2)));
        // A little loss is repaired, not run from.
        let mut c = ladder();
        for s in 1..10 {
            c.observe(Signal::Loss(0.03), at(t0, s * 1000));
            assert_eq!(c.decide(at(t0, s * 1000)), None);
        }
    }

    #[test]
    fn nacks_catch_a_narrowing_before_the_next_receiver_report() {
        let t0 = Instant::now();
        let mut c = ladder();
        // A 250 kbit/s link: nine packets in ten are asked for again.
        for ms in (0..=1000).step_by(50) {
            c.observe(Signal::Sent(10), at(t0, ms));
            c.observe(Signal::Nacked(9), at(t0, ms));
        }
        assert_eq!(c.decide(at(t0, 1000)), Some(Decision::Move(2)));
    }

    /// Runs `c` from `from_ms` to `to_ms` in 250-ms ticks with a clean receiver report every
    /// second, and returns what it decided, when.
    fn run_quiet(
        c: &mut TierChoice,
        t0: Instant,
        from_ms: u64,
        to_ms: u64,
    ) -> Vec<(u64, Decision)> {
        let mut decisions = Vec::new();
        for ms in (from_ms..=to_ms).step_by(250) {
            if ms % 1000 == 0 {
                c.observe(Signal::Loss(0.0), at(t0, ms));
            }
            if let Some(d) = c.decide(at(t0, ms)) {
                decisions.push((ms, d));
            }
        }
        decisions
    }

    #[test]
    fn a_link_that_widens_is_tested_then_climbed_one_tier_at_a_time_within_ten_seconds() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Loss(0.9), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(2)));
        assert_eq!(
            run_quiet(&mut c, t0, 250, 12_000),
            [
                (5000, Decision::Test { kbps: 706 }),
                (6500, Decision::Move(1)),
                (8500, Decision::Test { kbps: 2353 }),
                (10_000, Decision::Move(0)),
            ]
        );
        assert_eq!(c.testing(), None);
    }

    #[test]
    fn a_test_that_finds_loss_keeps_the_tier_and_waits_a_minute() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Loss(0.5), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(1)));
        assert_eq!(
            run_quiet(&mut c, t0, 250, 5000),
            [(5000, Decision::Test { kbps: 2353 })]
        );
        assert_eq!(c.testing(), Some(2353));
        c.observe(Signal::Loss(0.3), at(t0, 5500));
        assert_eq!(c.decide(at(t0, 5500)), Some(Decision::EndTest));
        assert_eq!(c.testing(), None);
        // The next test waits a minute, not 5 s: no flapping, and one failed test a minute.
        assert_eq!(
            run_quiet(&mut c, t0, 5750, 66_000),
            [(65_500, Decision::Test { kbps: 2353 })]
        );
    }

    #[test]
    fn a_test_ends_at_the_first_nacks() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Loss(0.5), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(1)));
        run_quiet(&mut c, t0, 250, 5000);
        assert_eq!(c.testing(), Some(2353));
        c.observe(Signal::Sent(15), at(t0, 5100));
        assert_eq!(c.decide(at(t0, 5100)), None, "nothing lost yet");
        c.observe(Signal::Nacked(3), at(t0, 5200));
        c.observe(Signal::Sent(15), at(t0, 5250));
        assert_eq!(c.decide(at(t0, 5250)), Some(Decision::EndTest));
    }

    #[test]
    fn a_step_up_that_brings_loss_goes_straight_back() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Loss(0.5), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(1)));
        let climbed = run_quiet(&mut c, t0, 250, 6500);
        assert_eq!(climbed.last(), Some(&(6500, Decision::Move(0))));
        // (The report a second after the move still counts the old tier, and is not counted.)
        c.observe(Signal::Loss(0.4), at(t0, 8500));
        assert_eq!(
            c.decide(at(t0, 8500)),
            Some(Decision::Move(1)),
            "it did not hold"
        );
        // The next test waits a minute.
        let next = run_quiet(&mut c, t0, 8750, 69_000);
        assert_eq!(next.first(), Some(&(68_500, Decision::Test { kbps: 2353 })));
    }

    #[test]
    fn the_first_report_after_a_move_does_not_count() {
        let t0 = Instant::now();
        let mut c = ladder();
        c.observe(Signal::Loss(0.5), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(1)));
        // It still counts the loss on the old tier: not a reason to go further down.
        c.observe(Signal::Loss(0.37), at(t0, 1000));
        assert_eq!(c.decide(at(t0, 1000)), None);
        // A later one does.
        c.observe(Signal::Loss(0.37), at(t0, 2000));
        assert_eq!(c.decide(at(t0, 2000)), Some(Decision::Move(2)));
    }

    #[test]
    fn a_packet_still_asked_for_after_the_grace_is_one_loss() {
        let t0 = Instant::now();
        let mut fresh = NackLosses::default();
        // First asked: maybe only late.
        assert_eq!(fresh.count(&[1, 2, 3], t0), 0);
        // 2 and 3 arrived; 1 is still asked for, within the grace, then after it; 4 is new.
        assert_eq!(fresh.count(&[1, 4], at(t0, 20)), 0);
        assert_eq!(fresh.count(&[1, 4], at(t0, 45)), 1);
        assert_eq!(fresh.count(&[1, 4], at(t0, 70)), 1);
        // Asked again and again, for longer than NACK_MEMORY, it stays one loss.
        for ms in (100..8000).step_by(100) {
            assert_eq!(fresh.count(&[1, 4], at(t0, ms)), 0);
        }
        // Asked again long after nobody asked, the same number is a new packet (sequence
        // numbers wrap).
        assert_eq!(fresh.count(&[1], at(t0, 20_000)), 0);
        assert_eq!(fresh.count(&[1], at(t0, 20_050)), 1);
    }

    #[test]
    fn remb_lowers_the_target_when_the_link_is_losing() {
        let t0 = Instant::now();
        let mut c = ladder();
        // 15 % lost alone would fit the 600 tier, but the browser says 300 kbit/s.
        c.observe(Signal::Remb(300), t0);
        c.observe(Signal::Loss(0.3), t0);
        assert_eq!(c.decide(t0), Some(Decision::Move(2)));
    }
}
