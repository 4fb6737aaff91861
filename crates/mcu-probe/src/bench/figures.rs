//! Turning what the receivers observed over a window of time into the report's figures. Pure.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::receiver::{Observed, COMPOSITE_FREEZE};
use crate::probe::analysis::percentile;

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Quantiles {
    pub p50: Option<f64>,
    pub p95: Option<f64>,
    pub samples: usize,
}

impl Quantiles {
    pub fn of(values: &[f64]) -> Self {
        Quantiles {
            p50: percentile(values, 50.0),
            p95: percentile(values, 95.0),
            samples: values.len(),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, Serialize, PartialEq)]
pub struct Frozen {
    /// Gaps between composite frames longer than receiver::COMPOSITE_FREEZE.
    pub composite: usize,
    /// Tiles whose picture stood still longer than receiver::TILE_FREEZE.
    pub tiles: usize,
}

/// What the receivers saw between two instants.
#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct WindowFigures {
    pub video_latency_ms: Quantiles,
    pub audio_latency_ms: Quantiles,
    /// The 5th percentile and the median of frames received per whole second, over every
    /// receiver's seconds.
    pub fps_p5: Option<f64>,
    pub fps_median: Option<f64>,
    /// Composite frames missing from the received sequence (by RTP timestamp).
    pub dropped_output_frames: u64,
    pub frozen_intervals: Frozen,
    pub frames_decoded: u64,
    pub codes_read: u64,
}

fn within(t: Instant, from: Instant, to: Instant) -> bool {
    t >= from && t < to
}

/// Frames the sequence of RTP timestamps skipped, at `fps` with the 90 kHz video clock.
pub fn missing_frames(timestamps: &[u64], fps: u32) -> u64 {
    let step = 90_000.0 / f64::from(fps.max(1));
    timestamps
        .windows(2)
        .map(|w| {
            let delta = w[1].saturating_sub(w[0]) as f64;
            ((delta / step).round() as u64).saturating_sub(1)
        })
        .sum()
}

/// Frames per whole second of the window.
pub fn per_second_counts(arrivals: &[Instant], from: Instant, to: Instant) -> Vec<f64> {
    let seconds = to.saturating_duration_since(from).as_secs();
    (0..seconds)
        .map(|k| {
            let start = from + Duration::from_secs(k);
            let end = start + Duration::from_secs(1);
            arrivals.iter().filter(|t| within(**t, start, end)).count() as f64
        })
        .collect()
}

pub fn summarise(observed: &[&Observed], from: Instant, to: Instant, fps: u32) -> WindowFigures {
    let mut video = Vec::new();
    let mut audio = Vec::new();
    let mut seconds = Vec::new();
    let mut figures = WindowFigures::default();
    for o in observed {
        video.extend(
            o.video_latency_ms
                .iter()
                .filter(|(t, _)| within(*t, from, to))
                .map(|(_, v)| *v),
        );
        audio.extend(
            o.audio_latency_ms
                .iter()
                .filter(|(t, _)| within(*t, from, to))
                .map(|(_, v)| *v),
        );
        let frames: Vec<&(Instant, u64)> = o
            .frames
            .iter()
            .filter(|(t, _)| within(*t, from, to))
            .collect();
        let arrivals: Vec<Instant> = frames.iter().map(|(t, _)| *t).collect();
        let timestamps: Vec<u64> = frames.iter().map(|(_, ts)| *ts).collect();
        seconds.extend(per_second_counts(&arrivals, from, to));
        figures.dropped_output_frames += missing_frames(&timestamps, fps);
        figures.frozen_intervals.composite += arrivals
            .windows(2)
            .filter(|w| w[1].duration_since(w[0]) > COMPOSITE_FREEZE)
            .count();
        figures.frozen_intervals.tiles += o
            .tile_freezes
            .iter()
            .filter(|(t, _)| within(*t, from, to))
            .count();
        figures.frames_decoded += o.frames_decoded;
        figures.codes_read += o.codes_read;
    }
    figures.video_latency_ms = Quantiles::of(&video);
    figures.audio_latency_ms = Quantiles::of(&audio);
    figures.fps_p5 = percentile(&seconds, 5.0);
    figures.fps_median = percentile(&seconds, 50.0);
    figures
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_skipped_composite_frame_is_counted_and_a_steady_stream_is_not() {
        let steady: Vec<u64> = (0..30).map(|i| i * 3000).collect();
        assert_eq!(missing_frames(&steady, 30), 0);
        let skipping = vec![0, 3000, 9000, 12_000, 24_000];
        assert_eq!(missing_frames(&skipping, 30), 1 + 3);
    }

    #[test]
    fn a_window_gives_latency_quantiles_frame_rates_and_freezes() {
        let t0 = Instant::now();
        let ms = |n: u64| t0 + Duration::from_millis(n);
        let mut o = Observed::default();
        // Two seconds at 30 fps, with a 200-ms hole (six frames missing) in the second.
        for i in 0..60u64 {
            if (36..42).contains(&i) {
                continue;
            }
            o.frames.push((ms(i * 1000 / 30), i * 3000));
        }
        o.video_latency_ms = (1..=100).map(|v| (ms(500), v as f64)).collect();
        o.video_latency_ms.push((ms(5000), 1e6)); // outside the window
        o.audio_latency_ms = vec![(ms(100), 30.0)];
        o.tile_freezes = vec![(ms(1400), 250.0)];
        let f = summarise(&[&o], t0, ms(2000), 30);
        assert_eq!(f.video_latency_ms.p50, Some(51.0));
        assert_eq!(f.video_latency_ms.p95, Some(95.0));
        assert_eq!(f.video_latency_ms.samples, 100);
        assert_eq!(f.audio_latency_ms.p50, Some(30.0));
        assert_eq!(f.dropped_output_frames, 6);
        assert_eq!(f.fps_p5, Some(24.0));
        assert_eq!(
            f.frozen_intervals,
            Frozen {
                composite: 1,
                tiles: 1
            }
        );
    }
}
