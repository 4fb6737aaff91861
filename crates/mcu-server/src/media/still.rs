//! A composite that shows nothing new is not encoded. Cameras change the picture with every frame
//! they send; placeholders (a name on a dark tile) and the background never do. When no camera
//! sent a frame and nothing moved, the composite frame is dropped before the encoders (every
//! tier), and the viewers keep the last picture; one frame a second still goes out, so a viewer
//! that joins or lost a packet is repaired soon. Measured with one camera-less participant (a room
//! whose people all have their cameras off): the VP8 encode was 15 % of the room's CPU and each
//! encoded frame a packet to send.
//!
//! Not while recording: the file keeps a frame every frame period, as players expect.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

/// A still composite is still encoded this often: a keyframe asked for reaches the viewer within
/// this long at worst (a keyframe request also lets the next frame through at once), and a
/// viewer's decoder never goes long without a frame.
pub const STILL_FRAME_EVERY: Duration = Duration::from_secs(1);
/// Frames let through after a camera's frame: the camera's frame may be drawn into the composite
/// after the one being sent when it arrived, so the next one passes too.
const AFTER_CAMERA_FRAME: u32 = 2;
/// Frames let through after tiles moved, appeared or went, or the canvas changed size: a new
/// branch's first frame takes a few frame periods to reach the compositor (half a second at 30 fps).
pub const AFTER_CHANGE: u32 = 15;

/// `Stillness::keep` when every frame is encoded: 1 of 1.
const KEEP_ALL: u32 = 1 << 16 | 1;

pub struct Stillness {
    origin: Instant,
    /// Composite frames to let through whatever happens.
    to_pass: AtomicU32,
    /// When the last frame went through, in µs since `origin`.
    last_passed_us: AtomicU64,
    /// Every frame goes through (a recording runs).
    every_frame: AtomicBool,
    dropped: AtomicU64,
    /// Composite frames encoded, as `kept << 16 | of`: `kept` of every `of` (1 of 1: all). The
    /// room thins them when the machine cannot keep up (load.rs). Not while recording.
    keep: AtomicU32,
    sequence: AtomicU64,
    thinned: AtomicU64,
    /// Composite frames handed to the encoders.
    passed: AtomicU64,
}

impl Stillness {
    pub fn new() -> Arc<Self> {
        Arc::new(Stillness {
            origin: Instant::now(),
            to_pass: AtomicU32::new(AFTER_CHANGE),
            last_passed_us: AtomicU64::new(0),
            every_frame: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            keep: AtomicU32::new(KEEP_ALL),
            sequence: AtomicU64::new(0),
            thinned: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        })
    }

    /// The picture changes: let at least the next `frames` composite frames through.
    pub fn changed(&self, frames: u32) {
        self.to_pass.fetch_max(frames, Ordering::Relaxed);
    }

    pub fn set_every_frame(&self, every: bool) {
        self.every_frame.store(every, Ordering::Relaxed);
    }

    /// Encode `kept` of every `of` composite frames (1 of 1: every one).
    pub fn set_keep(&self, kept: u16, of: u16) {
        let of = of.max(1);
        let kept = kept.clamp(1, of);
        self.keep
            .store(u32::from(kept) << 16 | u32::from(of), Ordering::Relaxed);
    }

    /// Composite frames not encoded to spare the CPU.
    pub fn thinned(&self) -> u64 {
        self.thinned.load(Ordering::Relaxed)
    }

    /// Composite frames handed to the encoders.
    pub fn passed(&self) -> u64 {
        self.passed.load(Ordering::Relaxed)
    }

    /// Composite frames not encoded because nothing had changed.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Whether the composite frame leaving now is encoded.
    fn pass(&self) -> bool {
        let every_frame = self.every_frame.load(Ordering::Relaxed);
        let keep = self.keep.load(Ordering::Relaxed);
        let (kept, of) = (u64::from(keep >> 16), u64::from(keep & 0xffff));
        // Thinned frames are skipped before anything else, so they never use up a frame that a
        // change (or a keyframe request) asked to let through: the next frame encoded carries it.
        if !every_frame && kept < of && self.sequence.fetch_add(1, Ordering::Relaxed) % of >= kept {
            self.thinned.fetch_add(1, Ordering::Relaxed);
            return false;
        }
        let now = self.origin.elapsed().as_micros() as u64;
        let fresh = self
            .to_pass
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
        let due = now.saturating_sub(self.last_passed_us.load(Ordering::Relaxed))
            >= STILL_FRAME_EVERY.as_micros() as u64;
        if fresh || due || every_frame {
            self.last_passed_us.store(now, Ordering::Relaxed);
            self.passed.fetch_add(1, Ordering::Relaxed);
            true
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
            false
        }
    }

    /// Drops the composite frames that `pad` (the composite, before the encoders) carries when
    /// nothing changed.
    pub fn gate(self: &Arc<Self>, pad: &gst::Pad) {
        let stillness = self.clone();
        pad.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            if stillness.pass() {
                gst::PadProbeReturn::Ok
            } else {
                gst::PadProbeReturn::Drop
            }
        });
    }

    /// Every frame a camera branch hands the compositor (through `src`) changes the picture.
    pub fn watch_camera(self: &Arc<Self>, bin: &gst::Bin) -> Result<()> {
        let src = bin
            .static_pad("src")
            .with_context(|| format!("{} has no src pad", bin.name()))?;
        let stillness = self.clone();
        src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            stillness.changed(AFTER_CAMERA_FRAME);
            gst::PadProbeReturn::Ok
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_still_picture_passes_once_a_second_and_a_change_passes_at_once() {
        let still = Stillness::new();
        // The opening frames pass.
        assert!((0..AFTER_CHANGE).all(|_| still.pass()));
        assert!(!still.pass(), "nothing changed");
        still.changed(AFTER_CAMERA_FRAME);
        assert!(still.pass() && still.pass() && !still.pass());
        still.set_every_frame(true);
        assert!(still.pass());
        assert_eq!(still.dropped(), 2);
        // A second later, a still frame goes out.
        still.set_every_frame(false);
        assert!(!still.pass());
        let long_ago = Stillness {
            origin: Instant::now() - STILL_FRAME_EVERY,
            to_pass: AtomicU32::new(0),
            last_passed_us: AtomicU64::new(0),
            every_frame: AtomicBool::new(false),
            dropped: AtomicU64::new(0),
            keep: AtomicU32::new(KEEP_ALL),
            sequence: AtomicU64::new(0),
            thinned: AtomicU64::new(0),
            passed: AtomicU64::new(0),
        };
        assert!(long_ago.pass(), "a frame is due after a second");
        assert!(!long_ago.pass(), "and the next is not");
    }

    #[test]
    fn thinning_passes_the_frames_kept_and_a_change_goes_with_the_next() {
        let still = Stillness::new();
        still.set_keep(2, 3);
        still.changed(1000);
        let passed = (0..30).filter(|_| still.pass()).count();
        assert_eq!(passed, 20);
        assert_eq!((still.thinned(), still.passed()), (10, 20));
        // Nothing moves; a keyframe request (one frame to let through) arrives before a thinned
        // frame: the frame after it carries the request.
        let still = Stillness::new();
        still.set_keep(1, 2);
        while still.to_pass.load(Ordering::Relaxed) > 0 {
            still.pass();
        }
        if still.sequence.load(Ordering::Relaxed).is_multiple_of(2) {
            still.pass(); // line up on a thinned frame next
        }
        still.changed(1);
        assert!(!still.pass(), "thinned");
        assert!(still.pass(), "the change went to the next frame");
        // While recording, every frame.
        still.set_every_frame(true);
        assert!((0..10).all(|_| still.pass()));
    }
}
