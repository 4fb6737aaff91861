//! `mcu probe`: synthetic participants that join through the real signalling, each sending its own
//! colour and tone, and check what they receive: every participant's colour at the centre of its
//! tile, every other participant's tone present and their own absent, the frame rate, and how long
//! it took to see themselves.

pub mod analysis;
pub mod exchange;
pub mod link;
mod media;
pub mod participant;
pub mod sharing;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

use crate::config::VideoCodec;
use crate::rtc::RtcFactory;
use analysis::{percentile, tone_share, TONE_ABSENT, TONE_PRESENT};
pub use media::descriptions as pipeline_descriptions;
pub use participant::{Expected, Observation, Participant, Roster, Spec};

/// A tile passes when at least this share of the last second's frames shows the right colour; the
/// rest allows for the frames in flight while the layout changes.
pub const TILE_MATCH_SHARE: f64 = 0.8;
/// Default lowest acceptable received frame rate: two thirds of 30 fps. Below this a person sees
/// stutter; above it, a loaded 2-core test machine is not mistaken for a broken server.
pub const DEFAULT_MIN_FPS: f64 = 20.0;
/// Participants join this far apart, like people arriving, and so the server's CPU is not spent
/// on N simultaneous negotiations.
const JOIN_SPACING: Duration = Duration::from_millis(200);

#[derive(Debug, Clone)]
pub struct ProbeConfig {
    pub url: String,
    pub room: String,
    pub participants: usize,
    pub seconds: f64,
    pub codec: VideoCodec,
    /// False: the participants send audio only.
    pub camera: bool,
    pub min_fps: f64,
    pub json: Option<PathBuf>,
    /// Participants from outside this probe (e.g. a browser) and the colour their tile must show.
    pub expect: Vec<(String, analysis::Rgb)>,
    /// A join token every participant presents (see `mcu token`).
    pub token: Option<crate::auth::Secret>,
    /// Each participant sends chat messages and checks it was shown everyone's, in one order.
    pub chat: bool,
    /// The first participant shares a random file of this many bytes; the others check it.
    pub file: Option<usize>,
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
    let in_window: Vec<Instant> = obs
        .frame_times
        .iter()
        .copied()
        .filter(|t| *t >= from && *t <= to)
        .collect();
    let span = (to - from).as_secs_f64().max(1e-3);
    let fps = in_window.len() as f64 / span;
    let mut max_gap = 0.0f64;
    let mut previous = from;
    for t in in_window.iter().copied().chain(std::iter::once(to)) {
        max_gap = max_gap.max((t - previous).as_secs_f64() * 1000.0);
        previous = t;
    }
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
        first_self_frame_ms: obs.first_self_frame.map(|d| d.as_secs_f64() * 1000.0),
        tiles,
        tones,
        errors: obs.errors.clone(),
    }
}

/// True when `url`'s host is this machine's loopback (127.0.0.0/8, ::1 or localhost).
pub fn is_loopback_url(url: &str) -> bool {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let authority = rest.split('/').next().unwrap_or("");
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

pub fn spec_for(index: usize, codec: VideoCodec) -> Spec {
    Spec {
        name: format!("probe-{}", index + 1),
        codec,
        camera: true,
        token: None,
        sharing: None,
    }
}

/// A set of probe participants in one room, sharing one roster.
pub struct Crowd {
    pub url: String,
    pub room: String,
    pub rtc: RtcFactory,
    pub roster: Roster,
    pub members: Vec<Participant>,
    next_index: usize,
}

impl Crowd {
    pub fn new(url: &str, room: &str) -> Result<Self> {
        Ok(Crowd {
            url: url.to_string(),
            room: room.to_string(),
            rtc: RtcFactory::new(crate::config::RtcOptions {
                loopback_only: is_loopback_url(url),
                ..Default::default()
            })?,
            roster: Arc::new(RwLock::new(HashMap::new())),
            members: Vec::new(),
            next_index: 0,
        })
    }

    /// Adds one participant; its colour and tone follow its participant number.
    pub async fn join(&mut self, codec: VideoCodec) -> Result<&Participant> {
        let spec = spec_for(self.next_index, codec);
        self.join_with(spec).await
    }

    /// Adds one participant that sends only audio.
    pub async fn join_without_camera(&mut self) -> Result<&Participant> {
        let mut spec = spec_for(self.next_index, VideoCodec::Vp8);
        spec.camera = false;
        self.join_with(spec).await
    }

    pub async fn join_with(&mut self, spec: Spec) -> Result<&Participant> {
        self.next_index += 1;
        let p =
            Participant::join(&self.url, &self.room, spec, &self.rtc, self.roster.clone()).await?;
        self.members.push(p);
        Ok(self.members.last().expect("just pushed"))
    }

    /// Removes the participant at `index` politely and forgets its colour and tone.
    pub async fn leave(&mut self, index: usize) {
        if index < self.members.len() {
            let p = self.members.remove(index);
            self.roster
                .write()
                .unwrap_or_else(|e| e.into_inner())
                .remove(p.id());
            p.leave().await;
        }
    }

    pub fn roster(&self) -> HashMap<String, Expected> {
        self.roster
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Checks every member over `window`.
    pub fn evaluate(&self, window: (Instant, Instant), min_fps: f64) -> Vec<ParticipantReport> {
        let roster = self.roster();
        self.members
            .iter()
            .map(|p| {
                let own = Expected {
                    name: p.spec.name.clone(),
                    colour: p.colour,
                    tone_hz: Some(p.tone_hz),
                    camera: p.spec.camera,
                };
                evaluate(&p.observe(), &own, &roster, window, min_fps)
            })
            .collect()
    }

    pub async fn leave_all(&mut self) {
        for p in self.members.drain(..) {
            p.leave().await;
        }
    }
}

pub async fn run(config: &ProbeConfig) -> Result<Report> {
    let mut crowd = Crowd::new(&config.url, &config.room)?;
    for (id, colour) in &config.expect {
        crowd
            .roster
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                id.clone(),
                Expected {
                    name: id.clone(),
                    colour: *colour,
                    tone_hz: None,
                    camera: true,
                },
            );
    }
    for i in 0..config.participants {
        if i > 0 {
            tokio::time::sleep(JOIN_SPACING).await;
        }
        let mut spec = spec_for(i, config.codec);
        spec.camera = config.camera;
        spec.token = config.token.clone();
        let shares = config.chat || config.file.is_some();
        spec.sharing = shares.then_some(sharing::Transport::DataChannel);
        let member = crowd
            .join_with(spec)
            .await
            .with_context(|| format!("participant {} joining", i + 1))?;
        if shares {
            member
                .subscribe_chat()
                .await
                .with_context(|| format!("participant {} subscribing to chat", i + 1))?;
        }
    }
    let from = Instant::now();
    // The measurement period: media flows while we wait (and while the participants talk and
    // share, with --chat and --file); nothing is asserted on the clock.
    let measuring = tokio::time::sleep(Duration::from_secs_f64(config.seconds));
    let exchanging = async {
        let chat = match config.chat {
            true => Some(exchange::chat(&crowd.members).await),
            false => None,
        };
        let rate = crate::config::parse_byte_size(crate::config::DEFAULT_FILE_RATE).unwrap_or(1);
        let file = match config.file {
            Some(bytes) => Some(exchange::file(&crowd.members, bytes, rate).await),
            None => None,
        };
        (chat, file)
    };
    let (_, (chat, file)) = tokio::join!(measuring, exchanging);
    let to = Instant::now();
    let per_participant = crowd.evaluate((from, to), config.min_fps);
    crowd.leave_all().await;

    let firsts: Vec<f64> = per_participant
        .iter()
        .filter_map(|p| p.first_self_frame_ms)
        .collect();
    let shared_ok = chat
        .as_ref()
        .is_none_or(|checks| checks.iter().all(|c| c.ok))
        && file.as_ref().is_none_or(|f| f.ok);
    let report = Report {
        ok: !per_participant.is_empty() && per_participant.iter().all(|p| p.ok) && shared_ok,
        url: config.url.clone(),
        room: config.room.clone(),
        participants: config.participants,
        seconds: config.seconds,
        codec: config.codec,
        fps_min: per_participant
            .iter()
            .map(|p| p.fps)
            .fold(f64::INFINITY, f64::min)
            .min(1e9),
        first_self_frame_ms_p50: percentile(&firsts, 50.0),
        first_self_frame_ms_max: firsts.iter().copied().reduce(f64::max),
        per_participant,
        chat,
        file,
    };
    if let Some(path) = &config.json {
        let text = serde_json::to_string_pretty(&report)?;
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
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
    use analysis::{colour_for, tone_for};
    use participant::FrameSample;

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
            errors: vec![],
            layout: None,
            server_candidates: vec![],
            notices: vec![],
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

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://localhost:8080/"));
        assert!(is_loopback_url("https://[::1]:8443"));
        assert!(!is_loopback_url("http://203.0.113.7:8080"));
        assert!(!is_loopback_url("https://vm.example.org"));
    }

    #[test]
    fn a_correct_observation_passes() {
        let t0 = Instant::now();
        let tiles = vec![("p1".into(), colour_for(0)), ("p2".into(), colour_for(1))];
        let obs = observation("p1", tiles, tone(tone_for(1)), t0);
        let r = evaluate(
            &obs,
            &own0(),
            &roster(),
            (t0, t0 + Duration::from_secs(1)),
            20.0,
        );
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
        let r = evaluate(
            &obs,
            &own0(),
            &roster(),
            (t0, t0 + Duration::from_secs(1)),
            20.0,
        );
        assert!(!r.ok);
        assert!(r.tones.iter().any(|t| !t.expect_present && !t.ok));
    }

    #[test]
    fn a_swapped_tile_fails_and_a_stall_fails_the_frame_rate() {
        let t0 = Instant::now();
        let tiles = vec![("p1".into(), colour_for(1)), ("p2".into(), colour_for(0))];
        let obs = observation("p1", tiles, tone(tone_for(1)), t0);
        let r = evaluate(
            &obs,
            &own0(),
            &roster(),
            (t0, t0 + Duration::from_secs(3)),
            20.0,
        );
        assert!(!r.ok);
        assert!(r.tiles.iter().all(|t| !t.ok));
        assert!(r.fps < 20.0 && r.max_frame_gap_ms > 1900.0);
    }
}
