//! What a probe run found, per participant and in all: the checks of tile colours and tones
//! against the roster, and the readable summary `mcu probe` prints.

use std::collections::HashMap;
use std::time::Instant;

use serde::Serialize;

use super::analysis::{self, tone_share, TONE_ABSENT, TONE_PRESENT};
use super::exchange;
use super::member::{Expected, Observation};
use super::TILE_MATCH_SHARE;
use crate::frames::{frame_gaps, seconds_from, FrameGaps};
use crate::impair::LinkFigures;
use mcu_server::codec::VideoCodec;

/// A gap this long without a composite frame is a freeze a person notices (the measure
/// of a thin link's picture: at most one per minute).
pub const FREEZE: std::time::Duration = std::time::Duration::from_millis(250);

/// The decoded composite's size from some moment of the window on.
#[derive(Debug, Clone, Serialize)]
pub struct SizeChange {
    /// Seconds from the start of the window (negative: before it, the size it started with).
    pub at_s: f64,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct TileCheck {
    pub participant: String,
    pub expected: String,
    pub seen: Option<String>,
    pub matching_share: f64,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ToneCheck {
    pub participant: String,
    pub hz: f64,
    pub share: f64,
    pub expect_present: bool,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct ParticipantReport {
    pub id: String,
    pub name: String,
    pub colour: String,
    pub tone_hz: f64,
    pub ok: bool,
    pub frames: usize,
    pub fps: f64,
    pub max_frame_gap_ms: f64,
    /// Gaps longer than FREEZE between composite frames in the window.
    pub freezes: usize,
    /// When each of those gaps began, in seconds from the window's start.
    pub freezes_at_s: Vec<f64>,
    /// The composite's size when the window started, and each change in it.
    pub sizes: Vec<SizeChange>,
    /// What its impaired link did, when it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub link: Option<LinkFigures>,
    pub first_self_frame_ms: Option<f64>,
    pub tiles: Vec<TileCheck>,
    pub tones: Vec<ToneCheck>,
    pub errors: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub ok: bool,
    pub url: String,
    pub room: String,
    pub participants: usize,
    pub seconds: f64,
    pub codec: VideoCodec,
    pub fps_min: f64,
    pub first_self_frame_ms_p50: Option<f64>,
    pub first_self_frame_ms_max: Option<f64>,
    pub per_participant: Vec<ParticipantReport>,
    /// With --chat: what each participant was shown.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub chat: Option<Vec<exchange::ChatCheck>>,
    /// With --file: the transfer and each receiver's check.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<exchange::FileReport>,
}

/// Checks one participant's observation against the roster. `window` is the span over which the
/// frame rate is measured.
pub fn evaluate(
    obs: &Observation,
    own: &Expected,
    roster: &HashMap<String, Expected>,
    window: (Instant, Instant),
    min_fps: f64,
) -> ParticipantReport {
    let mut ok = true;
    let (from, to) = window;
    let FrameGaps {
        fps,
        max_gap,
        freezes_at_s,
    } = frame_gaps(&obs.frame_times, from, to, FREEZE);
    let max_gap = max_gap.as_secs_f64() * 1000.0;
    let freezes = freezes_at_s.len();
    // The size in force at the start, then the changes during the window.
    let started_at = obs
        .sizes
        .iter()
        .rposition(|(at, ..)| *at <= from)
        .unwrap_or(0);
    let sizes = obs
        .sizes
        .iter()
        .skip(started_at)
        .filter(|(at, ..)| *at <= to)
        .map(|(at, width, height)| SizeChange {
            at_s: seconds_from(from, *at),
            width: *width,
            height: *height,
        })
        .collect();
    if fps < min_fps {
        ok = false;
    }

    let mut tiles = Vec::new();
    for (id, expected) in roster {
        // A camera shows its colour at the tile's centre; a participant without one keeps the
        // placeholder, whose grey is checked above the name written across its middle.
        let (wanted, samples): (analysis::Rgb, Vec<analysis::Rgb>) = if expected.camera {
            let s = obs
                .recent
                .iter()
                .filter_map(|f| f.tiles.iter().find(|(p, _)| p == id).map(|(_, c)| *c))
                .collect();
            (expected.colour, s)
        } else {
            let s = obs
                .recent
                .iter()
                .filter_map(|f| f.tops.iter().find(|(p, _)| p == id).map(|(_, c)| *c))
                .collect();
            (analysis::PLACEHOLDER_COLOUR, s)
        };
        let matching = samples
            .iter()
            .filter(|c| analysis::shows(**c, wanted))
            .count();
        let share = if obs.recent.is_empty() {
            0.0
        } else {
            matching as f64 / obs.recent.len() as f64
        };
        let pass = share >= TILE_MATCH_SHARE;
        ok &= pass;
        tiles.push(TileCheck {
            participant: id.clone(),
            expected: wanted.hex(),
            seen: samples.last().map(|c| c.hex()),
            matching_share: share,
            ok: pass,
        });
    }
    tiles.sort_by(|a, b| a.participant.cmp(&b.participant));

    let mut tones = Vec::new();
    for (id, expected) in roster {
        let Some(tone_hz) = expected.tone_hz else {
            continue;
        };
        let share = tone_share(&obs.audio, 48_000.0, tone_hz);
        let expect_present = *id != obs.id;
        let pass = if expect_present {
            share >= TONE_PRESENT
        } else {
            share < TONE_ABSENT
        };
        ok &= pass;
        tones.push(ToneCheck {
            participant: id.clone(),
            hz: tone_hz,
            share,
            expect_present,
            ok: pass,
        });
    }
    tones.sort_by(|a, b| a.participant.cmp(&b.participant));
    ok &= obs.errors.is_empty();

    ParticipantReport {
        id: obs.id.clone(),
        name: own.name.clone(),
        colour: own.colour.hex(),
        tone_hz: own.tone_hz.unwrap_or_default(),
        ok,
        frames: obs.frame_times.len(),
        fps,
        max_frame_gap_ms: max_gap,
        freezes,
        freezes_at_s,
        sizes,
        link: obs.link,
        first_self_frame_ms: obs.first_self_frame.map(|d| d.as_secs_f64() * 1000.0),
        tiles,
        tones,
        errors: obs.errors.clone(),
    }
}

/// The human summary of a report.
pub fn summary(report: &Report) -> String {
    let mut out = String::new();
    let fmt_ms = |v: Option<f64>| v.map_or("never".to_string(), |v| format!("{v:.0} ms"));
    out.push_str(&format!(
        "probe: {} participant(s) in room {} for {:.1} s ({:?}) — {}\n",
        report.participants,
        report.room,
        report.seconds,
        report.codec,
        if report.ok { "OK" } else { "FAILED" }
    ));
    for p in &report.per_participant {
        out.push_str(&format!(
            "  {} {} ({} {:.0} Hz): {:.1} fps, max gap {:.0} ms, saw itself after {} — {}\n",
            p.id,
            p.name,
            p.colour,
            p.tone_hz,
            p.fps,
            p.max_frame_gap_ms,
            fmt_ms(p.first_self_frame_ms),
            if p.ok { "ok" } else { "FAILED" }
        ));
        let sized = p.sizes.len() > 1 || p.sizes.iter().any(|s| s.width != 1280);
        if p.link.is_some() || p.freezes > 0 || sized {
            let sizes: Vec<String> = p
                .sizes
                .iter()
                .map(|s| format!("{}x{} from {:.1} s", s.width, s.height, s.at_s.max(0.0)))
                .collect();
            let at: Vec<String> = p.freezes_at_s.iter().map(|s| format!("{s:.1}")).collect();
            let at = if at.is_empty() {
                String::new()
            } else {
                format!(" (at {} s)", at.join(", "))
            };
            out.push_str(&format!(
                "    {} freeze(s) over {} ms{at}; composite {}\n",
                p.freezes,
                FREEZE.as_millis(),
                sizes.join(", then ")
            ));
        }
        if let Some(link) = &p.link {
            out.push_str(&format!(
                "    its link: {} packets delivered, {} lost, {} dropped by the queue; sent {}, {} lost\n",
                link.down_delivered, link.down_lost, link.down_queue_drops, link.up_sent, link.up_lost
            ));
        }
        for t in p.tiles.iter().filter(|t| !t.ok) {
            out.push_str(&format!(
                "    tile of {}: expected {}, saw {} ({:.0} % of frames matched)\n",
                t.participant,
                t.expected,
                t.seen.as_deref().unwrap_or("nothing"),
                t.matching_share * 100.0
            ));
        }
        for t in p.tones.iter().filter(|t| !t.ok) {
            out.push_str(&format!(
                "    tone of {} ({:.0} Hz): share {:.3}, expected {}\n",
                t.participant,
                t.hz,
                t.share,
                if t.expect_present {
                    "present"
                } else {
                    "absent"
                }
            ));
        }
        for e in &p.errors {
            out.push_str(&format!("    server error: {e}\n"));
        }
    }
    out.push_str(&format!(
        "  fps min {:.1}; first self frame p50 {}, max {}\n",
        report.fps_min,
        fmt_ms(report.first_self_frame_ms_p50),
        fmt_ms(report.first_self_frame_ms_max)
    ));
    if let Some(checks) = &report.chat {
        let ok = checks.iter().filter(|c| c.ok).count();
        out.push_str(&format!(
            "  chat: {ok} of {} participants shown all {} messages in one order\n",
            checks.len(),
            checks.first().map_or(0, |c| c.expected)
        ));
        for c in checks.iter().filter(|c| !c.ok) {
            out.push_str(&format!(
                "    {}: shown {} of {}{}\n",
                c.participant,
                c.received,
                c.expected,
                if c.same_order {
                    ""
                } else {
                    ", in another order"
                }
            ));
        }
    }
    if let Some(f) = &report.file {
        out.push_str(&format!(
            "  file: {} bytes from {} (uploaded in {:.1} s) — {}\n",
            f.bytes,
            f.sender,
            f.upload_seconds,
            if f.ok { "intact everywhere" } else { "FAILED" }
        ));
        if let Some(e) = &f.error {
            out.push_str(&format!("    {e}\n"));
        }
        for r in &f.receivers {
            out.push_str(&format!(
                "    {}: {} bytes in {:.1} s, {}; composite {:.1} fps during the transfer{}\n",
                r.participant,
                r.bytes,
                r.seconds,
                if r.intact {
                    "SHA-256 matches"
                } else {
                    "SHA-256 DIFFERS"
                },
                r.fps_during,
                r.error
                    .as_ref()
                    .map(|e| format!(" ({e})"))
                    .unwrap_or_default()
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::FrameSample;
    use analysis::{colour_for, tone_for};
    use std::time::Duration;

    fn observation(
        id: &str,
        tiles: Vec<(String, analysis::Rgb)>,
        audio: Vec<f32>,
        t0: Instant,
    ) -> Observation {
        let frame_times: Vec<Instant> = (0..30)
            .map(|i| t0 + Duration::from_millis(33 * i))
            .collect();
        Observation {
            id: id.into(),
            recent: frame_times
                .iter()
                .map(|t| FrameSample {
                    at: *t,
                    width: 1280,
                    height: 720,
                    tiles: tiles.clone(),
                    tops: tiles.clone(),
                })
                .collect(),
            frame_times,
            first_self_frame: Some(Duration::from_millis(300)),
            audio,
            keyframes: vec![],
            composite_codec: Some(mcu_server::codec::VideoCodec::Vp8),
            errors: vec![],
            layout: None,
            server_candidates: vec![],
            notices: vec![],
            speakers: vec![],
            redirects: Vec::new(),
            link: None,
            sizes: vec![],
        }
    }

    fn tone(hz: f64) -> Vec<f32> {
        (0..48_000)
            .map(|i| 0.3 * (2.0 * std::f64::consts::PI * hz * i as f64 / 48_000.0).sin() as f32)
            .collect()
    }

    fn own0() -> Expected {
        Expected {
            name: "probe-1".into(),
            colour: colour_for(0),
            tone_hz: Some(tone_for(0)),
            camera: true,
        }
    }

    fn roster() -> HashMap<String, Expected> {
        (0..2)
            .map(|i| {
                (
                    format!("p{}", i + 1),
                    Expected {
                        name: format!("probe-{}", i + 1),
                        colour: colour_for(i),
                        tone_hz: Some(tone_for(i)),
                        camera: true,
                    },
                )
            })
            .collect()
    }

    /// p1's report over the first `seconds` after `t0`, held to 20 fps.
    fn evaluate_p1(obs: &Observation, t0: Instant, seconds: u64) -> ParticipantReport {
        let window = (t0, t0 + Duration::from_secs(seconds));
        evaluate(obs, &own0(), &roster(), window, 20.0)
    }

    #[test]
    fn a_correct_observation_passes() {
        let t0 = Instant::now();
        let tiles = vec![("p1".into(), colour_for(0)), ("p2".into(), colour_for(1))];
        let obs = observation("p1", tiles, tone(tone_for(1)), t0);
        let r = evaluate_p1(&obs, t0, 1);
        assert!(r.ok, "{r:#?}");
        assert!(r.fps > 29.0);
    }

    #[test]
    fn hearing_oneself_fails_the_mix_minus_check() {
        let t0 = Instant::now();
        let tiles = vec![("p1".into(), colour_for(0)), ("p2".into(), colour_for(1))];
        let both: Vec<f32> = tone(tone_for(0))
            .iter()
            .zip(tone(tone_for(1)))
            .map(|(a, b)| a + b)
            .collect();
        let obs = observation("p1", tiles, both, t0);
        let r = evaluate_p1(&obs, t0, 1);
        assert!(!r.ok);
        assert!(r.tones.iter().any(|t| !t.expect_present && !t.ok));
    }

    #[test]
    fn a_swapped_tile_fails_and_a_stall_fails_the_frame_rate() {
        let t0 = Instant::now();
        let tiles = vec![("p1".into(), colour_for(1)), ("p2".into(), colour_for(0))];
        let obs = observation("p1", tiles, tone(tone_for(1)), t0);
        let r = evaluate_p1(&obs, t0, 3);
        assert!(!r.ok);
        assert!(r.tiles.iter().all(|t| !t.ok));
        assert!(r.fps < 20.0 && r.max_frame_gap_ms > 1900.0);
    }
}
