//! What a room gives up when the machine cannot keep up with it, and when it takes it back. Pure:
//! the room feeds it each second's frame counts and applies the level it returns.
//!
//! A second is late when the compositor made fewer than `LATE_SHARE` of its frames, or when the
//! top encoder finished fewer than `ENCODER_LATE_SHARE` of the frames handed to it: its input
//! queue holds one frame and drops the older one (pipelines/room.txt), so an encoder that cannot
//! keep up shows up as frames handed over but never encoded, which a viewer sees as a jerky
//! picture.
//! Measured before this existed (two 25-person rooms on 2 cores, `mcu bench --participants 50
//! --rooms 2`, with every listener's audio mixed for them alone): composites at fps p5 2–13 with
//! up to 23 freezes and 1.5–1.9 s of video latency p95. Since media/loudest.rs the same bench keeps
//! 21–29 fps; the steps below are for what is left (more rooms, bigger canvases, a busy host).
//!
//! The steps: two composite frames of three encoded (20 fps at the default 30, on every tier: a
//! third less encoding, and the picture still moves smoothly; half the frames would leave 15 fps
//! with nothing to spare), then also a canvas of at most half the frame's width and height (a
//! quarter of the pixels to composite and encode; viewers scale it up; a `--canvas fixed` room
//! too). A recording room keeps every frame and the full canvas: the file must be what was seen
//! at full quality, so it gives up nothing (and its room counts on the others stepping down).
//!
//! Two late seconds in a row step down; a level holds for at least `HOLD`, and steps back up
//! after `calm_needed` without a late second (counted from that level's start too). A step up
//! followed by a late second within two `HOLD`s doubles the calm needed next time (up to
//! `MAX_CALM`), so a room on the edge does not flap.

use std::time::{Duration, Instant};

/// A second in which the compositor made less than this share of the frames due is late: two
/// thirds, what the first step keeps, so a compositor that falls behind never ends up with fewer
/// frames than it was managing.
pub const LATE_SHARE: f64 = 2.0 / 3.0;
/// A second in which the top encoder finished less than this share of the frames handed to it is
/// late too: an encoder that drops a fifth of its frames is a machine at its edge. Measured with
/// two 25-person rooms on 2 cores (`mcu bench --participants 50 --rooms 2`, 30 s): the encoders
/// finished 22–24 of 30 frames, under two thirds never, so no room stepped down, and 7 runs of 12
/// fell under 15 fps p5 (4–13, up to 1.6 s of latency p95, hundreds of frozen tiles); the same
/// rooms at `--fps 20` held p5 17–19 in 4 runs of 4, and with this share p5 18–23 in 8 of 8.
/// Against that, 0.8 for the compositor as well stepped five rooms of four 640×360 cameras
/// (managing 20–24 fps) down to 17 for 0.04 core: the compositor's share stays at two thirds.
pub const ENCODER_LATE_SHARE: f64 = 0.8;
/// Late seconds in a row before stepping down: one is a hiccup (a keyframe, a join).
const LATE_TO_STEP_DOWN: u32 = 2;
/// Every level lasts at least this long before the next change: long enough for the canvas to
/// shrink (canvas::SHRINK_AFTER) and the load to show what the step saved.
pub const HOLD: Duration = Duration::from_secs(6);
/// Calm seconds before a step up, at first and at most.
const FIRST_CALM: Duration = Duration::from_secs(10);
const MAX_CALM: Duration = Duration::from_secs(120);
/// Fewer frames than this handed to the encoder in a second say nothing about its pace (a still
/// composite goes out once a second, media/still.rs).
const MIN_FRAMES_TO_JUDGE: u64 = 5;

/// How much a room has given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Level {
    #[default]
    Full,
    /// Two composite frames of three encoded.
    ReducedFrameRate,
    /// And the canvas at most half the frame's width and height.
    SmallCanvas,
}

impl Level {
    fn down(self) -> Self {
        match self {
            Level::Full => Level::ReducedFrameRate,
            _ => Level::SmallCanvas,
        }
    }

    fn up(self) -> Self {
        match self {
            Level::SmallCanvas => Level::ReducedFrameRate,
            _ => Level::Full,
        }
    }

    /// Composite frames encoded: this many of every so many.
    pub fn frames_kept(self) -> (u16, u16) {
        match self {
            Level::Full => (1, 1),
            _ => (2, 3),
        }
    }

    /// The smallest canvas step allowed (an index into canvas::STEPS; larger is smaller).
    pub fn min_canvas_step(self) -> usize {
        match self {
            Level::SmallCanvas => 2,
            _ => 0,
        }
    }
}

/// One second of a room, as the pace watch counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Second {
    /// Composite frames due in the second (its length × the frame rate).
    pub due: u64,
    /// Composite frames the compositor made.
    pub composited: u64,
    /// Frames handed to the top encoder (not dropped as still or thinned).
    pub handed: u64,
    /// Frames the top encoder took from its queue and encoded.
    pub encoded: u64,
}

impl Second {
    pub fn is_late(&self) -> bool {
        let short = |got: u64, of: u64, share: f64| (got as f64) < share * of as f64;
        short(self.composited, self.due, LATE_SHARE)
            || (self.handed >= MIN_FRAMES_TO_JUDGE
                && short(self.encoded, self.handed, ENCODER_LATE_SHARE))
    }
}

#[derive(Debug)]
pub struct Governor {
    level: Level,
    late_in_a_row: u32,
    last_late: Option<Instant>,
    changed_at: Option<Instant>,
    /// When the last step up happened, while it is on probation.
    stepped_up_at: Option<Instant>,
    calm_needed: Duration,
}

impl Default for Governor {
    fn default() -> Self {
        Governor {
            level: Level::Full,
            late_in_a_row: 0,
            last_late: None,
            changed_at: None,
            stepped_up_at: None,
            calm_needed: FIRST_CALM,
        }
    }
}

impl Governor {
    pub fn level(&self) -> Level {
        self.level
    }

    /// Takes in one second of the room; returns the new level when it changes.
    pub fn second(&mut self, second: Second, now: Instant) -> Option<Level> {
        let late = second.is_late();
        let held = self
            .changed_at
            .is_none_or(|t| now.saturating_duration_since(t) >= HOLD);
        if late {
            self.late_in_a_row += 1;
            self.last_late = Some(now);
            // A step up that did not hold: wait longer before the next one.
            if let Some(up) = self.stepped_up_at.take() {
                if now.saturating_duration_since(up) < HOLD * 2 {
                    self.calm_needed = (self.calm_needed * 2).min(MAX_CALM);
                }
            }
        } else {
            self.late_in_a_row = 0;
        }
        let next = if self.late_in_a_row >= LATE_TO_STEP_DOWN && held {
            self.level.down()
        } else if !late
            && held
            && self.level != Level::Full
            // Calm since the last late second and since the last change, each step up anew.
            && self
                .last_late
                .max(self.changed_at)
                .is_none_or(|t| now.saturating_duration_since(t) >= self.calm_needed)
        {
            self.level.up()
        } else {
            self.level
        };
        if next == self.level {
            return None;
        }
        if next < self.level {
            self.stepped_up_at = Some(now);
        } else {
            self.late_in_a_row = 0;
        }
        self.level = next;
        self.changed_at = Some(now);
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A second in which the compositor kept up and the encoder finished `encoded` of 30.
    fn encoding(encoded: u64) -> Second {
        Second {
            due: 30,
            composited: 30,
            handed: 30,
            encoded,
        }
    }

    /// A second in which the compositor made `composited` of 30 and each was encoded.
    fn compositing(composited: u64) -> Second {
        Second {
            due: 30,
            composited,
            handed: composited,
            encoded: composited,
        }
    }

    fn run(
        g: &mut Governor,
        t0: Instant,
        from: u64,
        seconds: u64,
        second: Second,
    ) -> Vec<(u64, Level)> {
        (from..from + seconds)
            .filter_map(|s| {
                g.second(second, t0 + Duration::from_secs(s))
                    .map(|l| (s, l))
            })
            .collect()
    }

    #[test]
    fn late_means_frames_missing_from_the_compositor_or_the_encoder() {
        assert!(!encoding(25).is_late(), "a frame in six dropped: a hiccup");
        assert!(
            encoding(23).is_late(),
            "the encoder dropped more than a fifth"
        );
        assert!(encoding(15).is_late(), "the encoder dropped half");
        assert!(!compositing(21).is_late(), "more than a step down keeps");
        assert!(compositing(15).is_late(), "the compositor made half");
        let still = Second {
            due: 30,
            composited: 30,
            handed: 1,
            encoded: 0,
        };
        assert!(!still.is_late(), "a still composite says nothing");
    }

    #[test]
    fn a_room_that_keeps_up_stays_full() {
        let mut g = Governor::default();
        assert!(run(&mut g, Instant::now(), 0, 600, encoding(29)).is_empty());
        assert_eq!(g.level(), Level::Full);
    }

    #[test]
    fn two_late_seconds_step_down_and_each_level_holds_before_the_next() {
        let mut g = Governor::default();
        let t0 = Instant::now();
        // One late second is a hiccup.
        assert!(run(&mut g, t0, 0, 1, encoding(15)).is_empty());
        assert!(run(&mut g, t0, 1, 1, encoding(30)).is_empty());
        // Late from second 2 on: down at 3, and again only after HOLD.
        let changes = run(&mut g, t0, 2, 20, encoding(15));
        assert_eq!(
            changes,
            vec![(3, Level::ReducedFrameRate), (9, Level::SmallCanvas)]
        );
        assert_eq!(Level::SmallCanvas.frames_kept(), (2, 3));
        assert_eq!(Level::SmallCanvas.min_canvas_step(), 2);
    }

    #[test]
    fn a_calm_room_comes_back_and_a_step_up_that_fails_waits_longer_next_time() {
        let mut g = Governor::default();
        let t0 = Instant::now();
        run(&mut g, t0, 0, 12, encoding(10));
        assert_eq!(g.level(), Level::SmallCanvas);
        // Load gone: back up one level after 10 calm seconds, the next one 10 s later.
        let up = run(&mut g, t0, 12, 20, encoding(30));
        assert_eq!(up, vec![(21, Level::ReducedFrameRate), (31, Level::Full)]);
        // Full again is too much: late at once, down again once the level has held, and the
        // next step up needs 20 calm seconds.
        let down = run(&mut g, t0, 32, 8, encoding(15));
        assert_eq!(down, vec![(37, Level::ReducedFrameRate)]);
        let calm = run(&mut g, t0, 40, 40, encoding(30));
        assert_eq!(calm.first(), Some(&(59, Level::Full)));
    }
}
