//! `mcu probe`: synthetic participants that join through the real signalling, each sending its own
//! colour and tone, and check what they receive: every participant's colour at the centre of its
//! tile, every other participant's tone present and their own absent, the frame rate, and how long
//! it took to see themselves.

pub mod analysis;
mod exchange;
mod media;
mod member;
mod report;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::impair::Impairment;
use analysis::percentile;
use mcu_server::codec::VideoCodec;
use mcu_server::rtc::RtcFactory;
pub use media::descriptions as pipeline_descriptions;
pub use member::{Content, Expected, FrameSample, Observation, Participant, Roster, Spec};
pub use report::{
    evaluate, summary, ParticipantReport, Report, SizeChange, TileCheck, ToneCheck, FREEZE,
};

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
    pub token: Option<mcu_server::auth::Secret>,
    /// Each participant sends chat messages and checks it was shown everyone's, in one order.
    pub chat: bool,
    /// The first participant shares a random file of this many bytes; the others check it.
    pub file: Option<usize>,
    /// Bad links: participants by join order (from 1), and each one's link.
    pub impaired: Vec<(usize, Impairment)>,
    /// Camera-like video instead of a flat colour (see `Content`).
    pub camera_like: bool,
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
        content: Content::Solid,
        impairment: None,
        volume: media::DEFAULT_VOLUME,
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
            rtc: RtcFactory::new(mcu_server::config::RtcOptions {
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
        let p = member::join(&self.url, &self.room, spec, &self.rtc, self.roster.clone()).await?;
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
                    name: p.spec().name.clone(),
                    colour: p.colour(),
                    tone_hz: Some(p.tone_hz()),
                    camera: p.spec().camera,
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
        if config.camera_like {
            spec.content = Content::CameraLike;
        }
        if let Some((_, impairment)) = config.impaired.iter().find(|(n, _)| *n == i + 1) {
            spec.impairment = Some(*impairment);
        }
        let shares = config.chat || config.file.is_some();
        spec.sharing = shares.then_some(crate::sharing::Transport::DataChannel);
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
        let rate =
            mcu_server::config::parse_byte_size(mcu_server::config::DEFAULT_FILE_RATE).unwrap_or(1);
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_urls_are_recognised() {
        assert!(is_loopback_url("http://127.0.0.1:8080"));
        assert!(is_loopback_url("http://localhost:8080/"));
        assert!(is_loopback_url("https://[::1]:8443"));
        assert!(!is_loopback_url("http://203.0.113.7:8080"));
        assert!(!is_loopback_url("https://vm.example.org"));
    }
}
