//! The bench's impaired viewers: participants whose link is bad (impair.rs), measured apart from
//! everyone else, since the targets differ (a viewer on a thin link gets a smaller tier at a lower
//! frame rate; the room's other figures must not move because of it). For each: its composite's
//! size over time (the tier the server gave it), its frame rate and freezes, and how long it took
//! to settle after joining and after its link was lifted.

use std::time::Instant;

use serde::Serialize;

use crate::frames::seconds_from;
use crate::impair::{Impairment, LinkFigures};
use crate::probe::SizeChange;

/// One impaired viewer, measured apart from its room.
#[derive(Debug, Clone, Serialize)]
pub struct ImpairedViewer {
    /// Its join order, from 1 (as `--impaired` numbers them).
    pub participant: usize,
    pub room: String,
    pub link: Impairment,
    /// Decoded frames per second over the measurement.
    pub fps: f64,
    /// Waits over the probe's FREEZE between decoded frames in the measurement, and when.
    pub freezes: usize,
    pub freezes_at_s: Vec<f64>,
    #[serde(flatten)]
    pub moves: Moves,
    /// What the link did (queue drops, losses).
    pub link_figures: LinkFigures,
}

/// How an impaired viewer's composite changed size (its tier), and how long it took to settle.
#[derive(Debug, Clone, Serialize)]
pub struct Moves {
    /// The composite's size each time it changed, since the viewer joined (seconds from the
    /// measurement's start: negative before it).
    pub sizes: Vec<SizeChange>,
    /// From its join to its last change of tier before the lift (or the end).
    pub settled_after_join_s: Option<f64>,
    /// From the lift to its last change of tier after it; None if it did not move.
    pub settled_after_lift_s: Option<f64>,
}

/// The moves of a viewer that joined at `joined` and decoded `frames` (when, width, height),
/// seen from a measurement starting at `from`, its link lifted at `lift`.
pub fn moves(
    frames: &[(Instant, u32, u32)],
    joined: Instant,
    from: Instant,
    lift: Option<Instant>,
) -> Moves {
    let mut changes: Vec<(Instant, u32, u32)> = Vec::new();
    for &(t, w, h) in frames {
        if changes.last().is_none_or(|&(_, lw, lh)| (lw, lh) != (w, h)) {
            changes.push((t, w, h));
        }
    }
    let before_lift = |t: &Instant| lift.is_none_or(|l| *t < l);
    Moves {
        sizes: changes
            .iter()
            .map(|&(t, width, height)| SizeChange {
                at_s: (seconds_from(from, t) * 1000.0).round() / 1000.0,
                width,
                height,
            })
            .collect(),
        settled_after_join_s: changes
            .iter()
            .map(|(t, _, _)| *t)
            .rfind(before_lift)
            .map(|t| t.saturating_duration_since(joined).as_secs_f64()),
        settled_after_lift_s: lift.and_then(|l| {
            changes
                .iter()
                .map(|(t, _, _)| *t)
                .rfind(|t| *t >= l)
                .map(|t| t.duration_since(l).as_secs_f64())
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_viewer_that_moved_down_then_up_is_described_by_its_sizes_and_settling_times() {
        let joined = Instant::now();
        let from = joined + Duration::from_secs(2);
        let lift = from + Duration::from_secs(4);
        // 30 fps for 10 s: full size for the first second, small until 1 s after the lift.
        let frames: Vec<(Instant, u32, u32)> = (0..300u64)
            .map(|i| {
                let t = joined + Duration::from_millis(i * 1000 / 30);
                let small =
                    t >= joined + Duration::from_secs(1) && t < lift + Duration::from_secs(1);
                if small {
                    (t, 320, 180)
                } else {
                    (t, 1280, 720)
                }
            })
            .collect();
        let m = moves(&frames, joined, from, Some(lift));
        let widths: Vec<u32> = m.sizes.iter().map(|s| s.width).collect();
        assert_eq!(widths, [1280, 320, 1280]);
        assert!((-2.01..-1.99).contains(&m.sizes[0].at_s), "{:?}", m.sizes);
        assert!((0.95..1.05).contains(&m.settled_after_join_s.unwrap_or(0.0)));
        assert!((0.95..1.05).contains(&m.settled_after_lift_s.unwrap_or(0.0)));
        // Never lifted: it settled once, and nothing is said of a lift.
        let m = moves(&frames[..100], joined, from, None);
        assert!((0.95..1.05).contains(&m.settled_after_join_s.unwrap_or(0.0)));
        assert_eq!(m.settled_after_lift_s, None);
    }
}
