//! A probe participant: the synthetic participant (participant.rs) sending a solid colour and a
//! sine tone of its own, chosen from its participant number, and keeping what it saw and heard of
//! the composite and its audio mix for the checks.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::Result;
use mcu_server::auth::Secret;
use mcu_server::codec::VideoCodec;
use mcu_server::ids::ParticipantId;
use mcu_server::protocol::{Layout, ServerMessage};
use mcu_server::rtc::RtcFactory;

use super::analysis::{self, Rgb};
use super::media::{live_source, receive, Camera, Controls, Received, Shared};
pub use super::media::{Content, FrameSample};
use crate::heard::{lock, Heard};
use crate::impair::{ImpairedLink, Impairment, LinkFigures};
use crate::participant::{self, Joining, OnTrack};
use crate::sharing::Transport;

/// A probe participant.
pub type Participant = participant::Participant<Sent>;

/// What a probe participant sends, so every other probe participant knows what to look for.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Expected {
    pub name: String,
    pub colour: Rgb,
    /// None when the tone is not known (a participant from outside this probe).
    pub tone_hz: Option<f64>,
    pub camera: bool,
}

/// The probe participants in this process, by participant id. Filled as they join.
pub type Roster = Arc<RwLock<HashMap<String, Expected>>>;

#[derive(Debug, Clone)]
pub struct Spec {
    pub name: String,
    pub codec: VideoCodec,
    /// False for a participant without a camera: it sends audio only, and the others expect its
    /// placeholder tile.
    pub camera: bool,
    /// A join token, for a server that requires one.
    pub token: Option<Secret>,
    /// Take part in chat and file sharing, on this transport.
    pub sharing: Option<Transport>,
    /// What its camera shows.
    pub content: Content,
    /// Its link is bad this way (None: a perfect link).
    pub impairment: Option<Impairment>,
    /// How loud its tone is, 0–1 of full scale (`set_volume` changes it later).
    pub volume: f64,
}

/// What a probe participant sends, and what it has received so far.
pub struct Sent {
    pub spec: Spec,
    /// Chosen from its participant number.
    pub colour: Rgb,
    pub tone_hz: f64,
    shared: Arc<Shared>,
    /// Its own bad link, when it has one.
    link: Option<ImpairedLink>,
    controls: Controls,
}

/// A snapshot of what the participant has received so far.
#[derive(Debug, Clone)]
pub struct Observation {
    pub id: String,
    pub frame_times: Vec<Instant>,
    pub recent: Vec<FrameSample>,
    pub first_self_frame: Option<Duration>,
    pub audio: Vec<f32>,
    pub keyframes: Vec<Instant>,
    /// The codec the composite arrives in.
    pub composite_codec: Option<VideoCodec>,
    /// Each change of the decoded composite's size (its tier): when, width, height.
    pub sizes: Vec<(Instant, u32, u32)>,
    pub errors: Vec<String>,
    pub layout: Option<Layout>,
    /// The ICE candidates the server sent, as SDP candidate lines.
    pub server_candidates: Vec<String>,
    /// Room notices received: recording, mute, removal and video tier messages, in order.
    pub notices: Vec<ServerMessage>,
    /// Each `active_speaker` message: when it arrived, and who.
    pub speakers: Vec<(Instant, String)>,
    /// Where cluster doors sent it before it joined (WebSocket URLs).
    pub redirects: Vec<String>,
    /// What its impaired link did, when it has one.
    pub link: Option<LinkFigures>,
}

/// Joins `room` on the server at `url` as `spec` says; its colour and tone go into `roster`.
/// `rtc` builds its peer connection, unless its link is impaired: then it gets one of its own, on
/// a socket behind that link.
pub async fn join(
    url: &str,
    room: &str,
    spec: Spec,
    rtc: &RtcFactory,
    roster: Roster,
) -> Result<Participant> {
    let link = match spec.impairment.filter(|i| !i.is_perfect()) {
        Some(impairment) => Some(ImpairedLink::open(rtc, impairment).await?),
        None => None,
    };
    let own_rtc = link.as_ref().map(|l| l.rtc.clone());
    let rtc = own_rtc.as_deref().unwrap_or(rtc);
    let heard: Heard = Arc::default();
    let shared = Arc::new(Shared {
        heard: heard.clone(),
        own_id: Mutex::new(None),
        own_colour: OnceLock::new(),
        received: Mutex::new(Received::default()),
    });
    let on_track: OnTrack = {
        let shared = shared.clone();
        Arc::new(move |track| receive(track, shared.clone()).map(Some))
    };
    let joining = Joining {
        url,
        room,
        name: spec.name.clone(),
        token: spec.token.clone(),
        rtc,
        heard,
        sharing: spec.sharing,
    };
    Participant::join(joining, on_track, |id| {
        *lock(&shared.own_id) = Some(id.to_string());
        // Colour and tone follow the server's participant number, so probes in different
        // processes joining the same room still send distinct colours and tones.
        let index = id
            .parse::<ParticipantId>()
            .map(|p| p.0.saturating_sub(1) as usize)
            .unwrap_or(0);
        let (colour, tone_hz) = (analysis::colour_for(index), analysis::tone_for(index));
        let _ = shared.own_colour.set(colour);
        roster.write().unwrap_or_else(|p| p.into_inner()).insert(
            id.to_string(),
            Expected {
                name: spec.name.clone(),
                colour,
                tone_hz: Some(tone_hz),
                camera: spec.camera,
            },
        );
        let camera = spec.camera.then_some(Camera {
            codec: spec.codec,
            colour,
            content: spec.content,
        });
        let controls = Controls::default();
        let source = live_source(camera, tone_hz, spec.volume, controls.clone());
        let sent = Sent {
            spec,
            colour,
            tone_hz,
            shared: shared.clone(),
            link,
            controls,
        };
        Ok((source, sent))
    })
    .await
}

impl Participant {
    pub fn spec(&self) -> &Spec {
        &self.media.spec
    }

    pub fn colour(&self) -> Rgb {
        self.media.colour
    }

    pub fn tone_hz(&self) -> f64 {
        self.media.tone_hz
    }

    /// Makes its tone louder or quieter (0–1 of full scale), from the next audio buffer.
    pub fn set_volume(&self, volume: f64) {
        if let Some(mic) = lock(&self.media.controls).microphone.as_ref() {
            gstreamer::prelude::ObjectExt::set_property(mic, "volume", volume);
        }
    }

    /// Sends its camera at another size from the next frame (the encoder starts again with a
    /// keyframe), as a browser does when its CPU or its link falls behind; false without a camera.
    pub fn resize_camera(&self, width: u32, height: u32) -> bool {
        let controls = lock(&self.media.controls);
        let Some(filter) = controls.camera_size.as_ref() else {
            return false;
        };
        let caps = gstreamer::Caps::builder("video/x-raw")
            .field("width", width as i32)
            .field("height", height as i32)
            .build();
        gstreamer::prelude::ObjectExt::set_property(filter, "caps", &caps);
        true
    }

    /// Changes its link while it runs (lifts a limit, say); false when it joined on a perfect
    /// link, which has nothing to change.
    pub fn set_link(&self, impairment: Impairment) -> bool {
        let Some(link) = &self.media.link else {
            return false;
        };
        link.set(impairment);
        true
    }

    pub fn observe(&self) -> Observation {
        let heard = self.heard();
        let r = self.media.shared.lock();
        Observation {
            id: self.id().to_string(),
            frame_times: r.frame_times.clone(),
            recent: r.recent.iter().cloned().collect(),
            first_self_frame: r.first_self_frame.map(|t| t - self.started()),
            audio: r.audio.iter().copied().collect(),
            keyframes: r.keyframes.clone(),
            composite_codec: r.composite_codec,
            sizes: r.sizes.clone(),
            errors: heard.errors.clone(),
            layout: heard.layout.clone(),
            server_candidates: heard.server_candidates.clone(),
            notices: heard.notices.clone(),
            speakers: heard.speakers.clone(),
            redirects: heard.redirects.clone(),
            link: self.media.link.as_ref().map(|l| l.counters.figures()),
        }
    }
}
