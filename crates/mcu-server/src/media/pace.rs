//! Watches the composite's pace: counts output frames and notices when the compositor falls behind
//! (a frame comes much later than the frame period), which a viewer sees as a freeze; and counts
//! the frames the top encoder takes from its one-frame queue, which load.rs compares with the
//! frames handed to it. Cheap enough to run always: one clock read per composite frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

/// A gap longer than this many frame periods counts as a stall: one late frame is jitter, three
/// missing frames (100 ms at 30 fps) is a visible hitch.
const STALL_PERIODS: u64 = 3;

pub struct Pace {
    origin: Instant,
    frame_period_us: u64,
    last_us: AtomicU64,
    frames: AtomicU64,
    stalls: AtomicU64,
    longest_gap_us: AtomicU64,
    encoded: AtomicU64,
}

impl Pace {
    pub fn new(fps: u32) -> Self {
        Pace {
            origin: Instant::now(),
            frame_period_us: 1_000_000 / u64::from(fps.max(1)),
            last_us: AtomicU64::new(0),
            frames: AtomicU64::new(0),
            stalls: AtomicU64::new(0),
            longest_gap_us: AtomicU64::new(0),
            encoded: AtomicU64::new(0),
        }
    }

    /// Records one frame; returns the gap to the previous one when it was a stall.
    fn frame(&self) -> Option<u64> {
        let now = self.origin.elapsed().as_micros() as u64;
        let previous = self.last_us.swap(now, Ordering::Relaxed);
        let count = self.frames.fetch_add(1, Ordering::Relaxed);
        if count == 0 {
            return None;
        }
        let gap = now.saturating_sub(previous);
        self.longest_gap_us.fetch_max(gap, Ordering::Relaxed);
        (gap > STALL_PERIODS * self.frame_period_us).then(|| {
            self.stalls.fetch_add(1, Ordering::Relaxed);
            gap
        })
    }

    pub fn frames(&self) -> u64 {
        self.frames.load(Ordering::Relaxed)
    }

    /// Frames the top encoder took to encode.
    pub fn encoded(&self) -> u64 {
        self.encoded.load(Ordering::Relaxed)
    }

    pub fn stalls(&self) -> u64 {
        self.stalls.load(Ordering::Relaxed)
    }

    /// Milliseconds since the last frame, or since the start before the first.
    pub fn idle_ms(&self) -> u64 {
        let now = self.origin.elapsed().as_micros() as u64;
        now.saturating_sub(self.last_us.load(Ordering::Relaxed)) / 1000
    }

    pub fn longest_gap_ms(&self) -> u64 {
        self.longest_gap_us.load(Ordering::Relaxed) / 1000
    }
}

/// Counts every buffer leaving `compositor`.
pub fn watch(compositor: &gst::Element, pace: Arc<Pace>, room: &str) -> Result<()> {
    let pad = compositor
        .static_pad("src")
        .context("the compositor has no src pad")?;
    let room = room.to_string();
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if let Some(gap_us) = pace.frame() {
            tracing::warn!(room = %room, gap_ms = gap_us / 1000, "composite stalled");
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

/// Counts every frame leaving `queue` (the top encoder's input queue) for the encoder.
pub fn watch_encoder(queue: &gst::Element, pace: Arc<Pace>) -> Result<()> {
    let pad = queue
        .static_pad("src")
        .context("the encoder's queue has no src pad")?;
    pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        pace.encoded.fetch_add(1, Ordering::Relaxed);
        gst::PadProbeReturn::Ok
    });
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_regular_pace_has_no_stalls() {
        let p = Pace::new(1_000_000); // 1 µs period: every real gap is a "stall"
        assert_eq!(p.frame(), None, "the first frame has no predecessor");
        std::thread::sleep(std::time::Duration::from_millis(2));
        assert!(p.frame().is_some());
        assert_eq!(p.stalls(), 1);
        assert_eq!(p.frames(), 2);
        assert!(p.longest_gap_ms() >= 2);

        let slow = Pace::new(1); // 1 s period: no gap here is a stall
        slow.frame();
        slow.frame();
        assert_eq!(slow.stalls(), 0);
    }
}
