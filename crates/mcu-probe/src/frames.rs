//! The rhythm of received frames over a window, as a person would notice it: the frame rate, the
//! longest wait for a frame, and the freezes (waits over a threshold). Used by the probe's report,
//! the bench's impaired viewers and the tests. Pure.

use std::time::{Duration, Instant};

#[derive(Debug, Clone, PartialEq)]
pub struct FrameGaps {
    /// Frames per second over the window.
    pub fps: f64,
    /// The longest wait for a frame, the window's edges included (a window with no frame at all
    /// is one long gap).
    pub max_gap: Duration,
    /// When each wait longer than the threshold began, in seconds from the window's start.
    pub freezes_at_s: Vec<f64>,
}

/// The gaps between `times` (in order) within `from`–`to`; a wait over `freeze` is a freeze.
pub fn frame_gaps(times: &[Instant], from: Instant, to: Instant, freeze: Duration) -> FrameGaps {
    let in_window: Vec<Instant> = times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let span = to.saturating_duration_since(from).as_secs_f64().max(1e-3);
    let mut max_gap = Duration::ZERO;
    let mut freezes_at_s = Vec::new();
    let mut previous = from;
    for t in in_window.iter().copied().chain(std::iter::once(to)) {
        let gap = t.saturating_duration_since(previous);
        max_gap = max_gap.max(gap);
        if gap > freeze {
            freezes_at_s.push(previous.saturating_duration_since(from).as_secs_f64());
        }
        previous = t;
    }
    FrameGaps {
        fps: in_window.len() as f64 / span,
        max_gap,
        freezes_at_s,
    }
}

/// Seconds from `from` to `at`, negative when `at` came before.
pub fn seconds_from(from: Instant, at: Instant) -> f64 {
    if at >= from {
        at.duration_since(from).as_secs_f64()
    } else {
        -from.duration_since(at).as_secs_f64()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_steady_stream_with_one_pause_has_its_rate_and_one_freeze() {
        let from = Instant::now();
        let to = from + Duration::from_secs(2);
        // 30 fps for 2 s, but nothing from 1.0 to 1.4 s.
        let times: Vec<Instant> = (0..60u64)
            .map(|i| from + Duration::from_millis(i * 1000 / 30))
            .filter(|t| {
                let s = t.duration_since(from).as_secs_f64();
                !(1.0..1.4).contains(&s)
            })
            .collect();
        let gaps = frame_gaps(&times, from, to, Duration::from_millis(250));
        assert!((23.0..25.0).contains(&gaps.fps), "{}", gaps.fps);
        assert_eq!(gaps.freezes_at_s.len(), 1);
        assert!((0.95..1.0).contains(&gaps.freezes_at_s[0]));
        assert!(gaps.max_gap >= Duration::from_millis(400));
        // No frame at all: the whole window is one freeze.
        let none = frame_gaps(&[], from, to, Duration::from_millis(250));
        assert_eq!((none.fps, none.freezes_at_s), (0.0, vec![0.0]));
        assert_eq!(seconds_from(to, from), -2.0);
    }
}
