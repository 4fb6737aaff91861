//! The canvas: how many pixels the room really composites and encodes. Layouts are drawn on the
//! nominal frame (`--width`×`--height`, 1280×720), and that is what clients are told (the
//! `layout` message); the canvas is that frame scaled down to the smallest step of a short ladder
//! that still shows every camera at its own size. Four people sending 320×180 in a 2×2 grid
//! fill a 640×360 canvas exactly: compositing and encoding 1280×720 for them only upscales, at
//! four times the cost. Measured with `mcu bench --participants 16 --rooms 4` (320×180 senders):
//! 1.55 cores (saturated: fps p5 21, video p95 98 ms) at 1280×720, 1.05 cores (fps p5 30, p95
//! 21 ms) at 640×360. A one-person room whose camera sends 320×180 is encoded at 320×180.
//!
//! Pure arithmetic and a small hysteresis, with time passed in: a leaf like `layout`.

use std::time::{Duration, Instant};

use crate::layout::Rect;

/// The canvas sizes, as fractions of the nominal frame, largest first. Few and standard
/// (1280×720, 960×540, 640×360, 320×180 for the default frame), so a room changes size seldom
/// and every decoder sees a familiar size.
pub const STEPS: [(u32, u32); 4] = [(1, 1), (3, 4), (1, 2), (1, 4)];

/// A camera may be shown this much below its own size before the canvas grows: a 10 % downscale
/// is not visible, and without it an input a few pixels larger than its tile (a 656×368 camera
/// in a 640×360 tile) would double the room's cost.
pub const SLACK: f64 = 0.1;

/// The narrowest a participant's placeholder (a name on a dark tile) may be drawn: its label is
/// set in a 28-point font, and the longest names stay readable from about this width.
pub const PLACEHOLDER_MIN_WIDTH: u32 = 160;

/// How long the room must have needed less before its canvas shrinks. A browser steps its camera's
/// resolution up and down within seconds while its bandwidth estimate settles, and people leave
/// and rejoin; each change of size costs every viewer a keyframe. Growing is immediate: a camera
/// shown smaller than it is loses detail at once.
pub const SHRINK_AFTER: Duration = Duration::from_secs(5);

/// A frame of `width`×`height` scaled by the step's fraction, to even pixels (I420 stores colour
/// at half resolution).
pub fn size(step: usize, width: u32, height: u32) -> (u32, u32) {
    let (num, den) = STEPS[step.min(STEPS.len() - 1)];
    (even(width * num / den), even(height * num / den))
}

/// `rect` of the nominal frame, in the pixels of a canvas at `step`. Edges are scaled (not sizes),
/// so tiles that touch on the nominal frame still touch.
pub fn scale_rect(rect: Rect, step: usize) -> Rect {
    let (num, den) = STEPS[step.min(STEPS.len() - 1)];
    let scale = |v: u32| even(v * num / den);
    let (x, y) = (scale(rect.x), scale(rect.y));
    Rect {
        x,
        y,
        width: scale(rect.x + rect.width).saturating_sub(x).max(2),
        height: scale(rect.y + rect.height).saturating_sub(y).max(2),
    }
}

fn even(v: u32) -> u32 {
    v & !1
}

/// Bits per second grow more slowly than pixels: a quarter of the pixels takes about 30 % of the
/// bits for the same look. Our tier ladder (1280×720 at 2000 kbit/s, 640×360 at 600, 320×180 at
/// 150) and libwebrtc's simulcast ladder (2500, 700, 200 kbit/s for the same sizes) both sit near
/// pixels to the power 0.87 (0.25^0.87 = 0.30).
pub const BITRATE_PIXEL_EXPONENT: f64 = 0.87;

/// The composite's bitrate on a canvas at `step`, given `full_kbps` for the full frame.
pub fn bitrate_kbps(full_kbps: u32, step: usize) -> u32 {
    let (num, den) = STEPS[step.min(STEPS.len() - 1)];
    let pixels = (f64::from(num) / f64::from(den)).powi(2);
    (f64::from(full_kbps) * pixels.powf(BITRATE_PIXEL_EXPONENT)).round() as u32
}

/// What one tile shows, for the canvas choice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TileContent {
    /// A camera whose decoded frames are this size.
    Camera { width: u32, height: u32 },
    /// A name on a dark tile, or a camera whose first frame has not been decoded yet.
    Placeholder,
}

/// The smallest canvas (the largest step index) on which every tile keeps its detail: each camera
/// drawn at no less than its own size (less `SLACK`), or as large as its nominal tile when the
/// camera is larger, and each placeholder at least `PLACEHOLDER_MIN_WIDTH` wide.
pub fn needed_step(tiles: &[(Rect, TileContent)]) -> usize {
    // The fraction of the nominal frame the canvas must be.
    let needed = tiles
        .iter()
        .map(|(tile, content)| match *content {
            TileContent::Camera { width, height } if width > 0 && height > 0 => {
                // Letterboxed into the tile: the picture is scaled by `fit` on the nominal frame.
                let fit = (f64::from(tile.width) / f64::from(width))
                    .min(f64::from(tile.height) / f64::from(height));
                ((1.0 - SLACK) / fit).min(1.0)
            }
            TileContent::Camera { .. } | TileContent::Placeholder => {
                (f64::from(PLACEHOLDER_MIN_WIDTH) / f64::from(tile.width.max(1))).min(1.0)
            }
        })
        .fold(0.0f64, f64::max);
    STEPS
        .iter()
        .rposition(|&(num, den)| f64::from(num) / f64::from(den) >= needed)
        .unwrap_or(0)
}

/// The room's canvas over time: up at once, down only after `SHRINK_AFTER` of needing less, and
/// the full frame while pinned (a recording's muxer refuses a change of size).
#[derive(Debug, Clone)]
pub struct CanvasChoice {
    step: usize,
    /// Since when the room has needed a smaller canvas, and the largest it needed meanwhile.
    smaller_since: Option<(Instant, usize)>,
}

impl Default for CanvasChoice {
    /// A room opens on the smallest canvas; its first camera grows it.
    fn default() -> Self {
        CanvasChoice {
            step: STEPS.len() - 1,
            smaller_since: None,
        }
    }
}

impl CanvasChoice {
    /// A room whose canvas never changes from `step`.
    pub fn fixed(step: usize) -> Self {
        CanvasChoice {
            step,
            smaller_since: None,
        }
    }

    pub fn step(&self) -> usize {
        self.step
    }

    /// Given the step the tiles need now (`needed_step`) and whether the canvas is pinned to the
    /// full frame, returns the new step when the canvas should change.
    pub fn decide(&mut self, needed: usize, pinned: bool, now: Instant) -> Option<usize> {
        let needed = if pinned { 0 } else { needed };
        if needed <= self.step {
            self.smaller_since = None;
            return (needed < self.step).then(|| self.change_to(needed));
        }
        // Smaller would do; wait, remembering the largest canvas needed while waiting.
        let (since, largest) = match self.smaller_since {
            Some((since, largest)) => (since, largest.min(needed)),
            None => (now, needed),
        };
        self.smaller_since = Some((since, largest));
        (now.duration_since(since) >= SHRINK_AFTER).then(|| self.change_to(largest))
    }

    fn change_to(&mut self, step: usize) -> usize {
        self.step = step;
        self.smaller_since = None;
        step
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::grid;

    const W: u32 = 1280;
    const H: u32 = 720;

    fn cameras(n: usize, width: u32, height: u32) -> Vec<(Rect, TileContent)> {
        grid(n, W, H)
            .into_iter()
            .map(|t| (t, TileContent::Camera { width, height }))
            .collect()
    }

    fn step_size(step: usize) -> (u32, u32) {
        size(step, W, H)
    }

    #[test]
    fn the_ladder_is_the_familiar_sizes() {
        let sizes: Vec<_> = (0..STEPS.len()).map(step_size).collect();
        assert_eq!(sizes, [(1280, 720), (960, 540), (640, 360), (320, 180)]);
    }

    #[test]
    fn four_small_cameras_fill_a_quarter_canvas_exactly() {
        assert_eq!(step_size(needed_step(&cameras(4, 320, 180))), (640, 360));
        assert_eq!(step_size(needed_step(&cameras(2, 320, 180))), (640, 360));
    }

    #[test]
    fn one_small_camera_alone_is_encoded_at_its_own_size() {
        assert_eq!(step_size(needed_step(&cameras(1, 320, 180))), (320, 180));
    }

    #[test]
    fn cameras_as_large_as_their_tiles_keep_the_full_frame() {
        assert_eq!(needed_step(&cameras(2, 640, 360)), 0);
        assert_eq!(needed_step(&cameras(16, 320, 180)), 0);
        assert_eq!(needed_step(&cameras(1, 1920, 1080)), 0);
        // Nine 320×180 cameras in 426×240 tiles: 960×540 shows them at their own size.
        assert_eq!(step_size(needed_step(&cameras(9, 320, 180))), (960, 540));
    }

    #[test]
    fn a_camera_a_little_larger_than_its_tile_does_not_double_the_canvas() {
        assert_eq!(step_size(needed_step(&cameras(4, 336, 188))), (640, 360));
    }

    #[test]
    fn the_largest_need_wins() {
        let mut tiles = cameras(4, 320, 180);
        tiles[3].1 = TileContent::Camera {
            width: 640,
            height: 360,
        };
        assert_eq!(needed_step(&tiles), 0);
    }

    #[test]
    fn placeholders_stay_readable() {
        let names = |n| -> Vec<(Rect, TileContent)> {
            grid(n, W, H)
                .into_iter()
                .map(|t| (t, TileContent::Placeholder))
                .collect()
        };
        assert_eq!(step_size(needed_step(&names(1))), (320, 180));
        assert_eq!(step_size(needed_step(&names(4))), (320, 180));
        // 4×4 tiles are 320 wide on the nominal frame: 160 on a half canvas.
        assert_eq!(step_size(needed_step(&names(16))), (640, 360));
        assert_eq!(needed_step(&[]), STEPS.len() - 1);
    }

    #[test]
    fn scaled_tiles_stay_even_and_keep_touching() {
        for step in 0..STEPS.len() {
            let (cw, ch) = step_size(step);
            for n in 1..=crate::layout::MAX_TILES {
                let tiles: Vec<Rect> = grid(n, W, H)
                    .into_iter()
                    .map(|t| scale_rect(t, step))
                    .collect();
                for t in &tiles {
                    assert!(t.x + t.width <= cw && t.y + t.height <= ch, "{t:?}");
                    for v in [t.x, t.y, t.width, t.height] {
                        assert_eq!(v % 2, 0, "{n} tiles at step {step}: {t:?}");
                    }
                }
                // Neighbours in a row share an edge.
                for pair in tiles.windows(2) {
                    if pair[0].y == pair[1].y {
                        assert_eq!(pair[0].x + pair[0].width, pair[1].x, "{pair:?}");
                    }
                }
            }
        }
    }

    fn at(t0: Instant, seconds: f64) -> Instant {
        t0 + Duration::from_secs_f64(seconds)
    }

    #[test]
    fn bitrates_follow_the_tier_ladder() {
        let rates: Vec<u32> = (0..STEPS.len()).map(|s| bitrate_kbps(2000, s)).collect();
        assert_eq!(rates[0], 2000);
        assert!((1150..1300).contains(&rates[1]), "{rates:?}");
        assert!((550..650).contains(&rates[2]), "{rates:?}");
        assert!((140..190).contains(&rates[3]), "{rates:?}");
    }

    #[test]
    fn grows_at_once() {
        let t0 = Instant::now();
        let mut choice = CanvasChoice::default();
        assert_eq!(choice.decide(2, false, t0), Some(2));
        assert_eq!(choice.decide(0, false, at(t0, 0.1)), Some(0));
        assert_eq!(choice.decide(0, false, at(t0, 0.2)), None);
    }

    #[test]
    fn shrinks_only_after_needing_less_for_the_whole_wait() {
        let t0 = Instant::now();
        let mut choice = CanvasChoice::fixed(0);
        assert_eq!(choice.decide(3, false, t0), None);
        assert_eq!(choice.decide(3, false, at(t0, 4.9)), None);
        assert_eq!(choice.decide(3, false, at(t0, 5.0)), Some(3));
        // A need for the full frame in between restarts the wait.
        let mut choice = CanvasChoice::fixed(0);
        choice.decide(3, false, t0);
        choice.decide(0, false, at(t0, 3.0));
        assert_eq!(choice.decide(3, false, at(t0, 7.0)), None);
        assert_eq!(choice.decide(3, false, at(t0, 12.0)), Some(3));
    }

    #[test]
    fn shrinks_to_the_largest_canvas_needed_while_waiting() {
        let t0 = Instant::now();
        let mut choice = CanvasChoice::fixed(0);
        choice.decide(3, false, t0);
        choice.decide(2, false, at(t0, 2.0));
        assert_eq!(choice.decide(3, false, at(t0, 5.0)), Some(2));
    }

    #[test]
    fn a_pinned_canvas_is_the_full_frame_at_once_and_stays() {
        let t0 = Instant::now();
        let mut choice = CanvasChoice::default();
        assert_eq!(choice.decide(3, true, t0), Some(0));
        assert_eq!(choice.decide(3, true, at(t0, 60.0)), None);
        // Unpinned, it shrinks after the usual wait.
        assert_eq!(choice.decide(3, false, at(t0, 61.0)), None);
        assert_eq!(choice.decide(3, false, at(t0, 66.0)), Some(3));
    }
}
