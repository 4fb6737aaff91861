//! The bench's impaired viewers: participants whose link is bad (impair.rs), measured apart from
//! everyone else, since the targets differ (a viewer on a thin link gets a smaller tier at a lower
//! frame rate; the room's other figures must not move because of it). For each: its composite's
//! size over time (the tier the server gave it), its frame rate and freezes, and how long it took
//! to settle after joining and after its link was lifted.

use std::time::{Duration, Instant};

use serde::Serialize;

use crate::impair::{Impairment, LinkFigures};

/// A gap between decoded frames longer than this is a freeze (as the probe counts them): a
/// person notices the picture stop.
pub const VIEWER_FREEZE: Duration = Duration::from_millis(250);

/// One size the viewer's composite had, from when (seconds from the measurement's start; before
/// it, negative).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct SizeAt {
    pub at_s: f64,
    pub size: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct ImpairedViewer {
    /// Its join order, from 1 (as `--impaired` numbers them).
    pub participant: usize,
    pub room: String,
    pub link: Impairment,
    /// Decoded frames per second over the measurement.
    pub fps: f64,
    /// Gaps over VIEWER_FREEZE between decoded frames in the measurement, and when.
    pub freezes: usize,
    pub freezes_at_s: Vec<f64>,
    /// The composite's size (its tier) each time it changed, since it joined.
    pub sizes: Vec<SizeAt>,
    /// From its join to its last change of tier before the lift (or the end).
    pub settled_after_join_s: Option<f64>,
    /// From the lift to its last change of tier after it; None if it did not move.
    pub settled_after_lift_s: Option<f64>,
    /// What the link did (queue drops, losses).
    pub link_figures: LinkFigures,
}

/// What one impaired viewer decoded: when each frame came and at what size.
pub struct Decoded<'a> {
    pub frames: &'a [(Instant, u32, u32)],
    pub joined: Instant,
}

/// The figures of one impaired viewer over the window `from`–`to`, its link lifted at `lift`.
pub fn figures(
    decoded: &Decoded<'_>,
    from: Instant,
    to: Instant,
    lift: Option<Instant>,
) -> (f64, Vec<f64>, Vec<SizeAt>, Option<f64>, Option<f64>) {
    let seconds_from = |t: Instant| -> f64 {
        if t >= from {
            t.duration_since(from).as_secs_f64()
        } else {
            -from.duration_since(t).as_secs_f64()
        }
    };
    let in_window: Vec<Instant> = decoded
        .frames
        .iter()
        .map(|(t, _, _)| *t)
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let window = to.saturating_duration_since(from).as_secs_f64();
    let fps = if window > 0.0 {
        in_window.len() as f64 / window
    } else {
        0.0
    };
    let freezes = in_window
        .windows(2)
        .filter(|w| w[1].duration_since(w[0]) > VIEWER_FREEZE)
        .map(|w| seconds_from(w[0]))
        .collect();
    let mut changes: Vec<(Instant, u32, u32)> = Vec::new();
    for &(t, w, h) in decoded.frames {
        if changes.last().is_none_or(|&(_, lw, lh)| (lw, lh) != (w, h)) {
            changes.push((t, w, h));
        }
    }
    let sizes = changes
        .iter()
        .map(|&(t, w, h)| SizeAt {
            at_s: (seconds_from(t) * 1000.0).round() / 1000.0,
            size: format!("{w}x{h}"),
        })
        .collect();
    let before_lift = |t: &Instant| lift.is_none_or(|l| *t < l);
    let settled_after_join = changes
        .iter()
        .map(|(t, _, _)| *t)
        .rfind(before_lift)
        .map(|t| t.saturating_duration_since(decoded.joined).as_secs_f64());
    let settled_after_lift = lift.and_then(|l| {
        changes
            .iter()
            .map(|(t, _, _)| *t)
            .rfind(|t| *t >= l)
            .map(|t| t.duration_since(l).as_secs_f64())
    });
    (fps, freezes, sizes, settled_after_join, settled_after_lift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_viewer_that_moved_down_then_up_is_described_by_its_sizes_and_gaps() {
        let joined = Instant::now();
        let from = joined + Duration::from_secs(2);
        let lift = from + Duration::from_secs(4);
        let mut frames = Vec::new();
        // 30 fps for 10 s: full size for the first second, small until 1 s after the lift,
        // with one half-second freeze at 3 s into the window.
        for i in 0..300u64 {
            let t = joined + Duration::from_millis(i * 1000 / 30);
            let s = t.saturating_duration_since(from).as_secs_f64();
            if (3.0..3.5).contains(&s) {
                continue;
            }
            let small = t >= joined + Duration::from_secs(1) && t < lift + Duration::from_secs(1);
            let (w, h) = if small { (320, 180) } else { (1280, 720) };
            frames.push((t, w, h));
        }
        let to = joined + Duration::from_secs(10);
        let (fps, freezes, sizes, after_join, after_lift) = figures(
            &Decoded {
                frames: &frames,
                joined,
            },
            from,
            to,
            Some(lift),
        );
        assert!((26.0..28.5).contains(&fps), "{fps}");
        assert_eq!(freezes.len(), 1);
        assert!((2.9..3.1).contains(&freezes[0]));
        let named: Vec<&str> = sizes.iter().map(|s| s.size.as_str()).collect();
        assert_eq!(named, ["1280x720", "320x180", "1280x720"]);
        assert!((0.95..1.05).contains(&after_join.unwrap_or(0.0)));
        assert!((0.95..1.05).contains(&after_lift.unwrap_or(0.0)));
    }
}
