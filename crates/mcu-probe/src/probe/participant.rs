//! One synthetic participant: joins through the real signalling, sends a solid colour and a sine
//! tone of its own, receives the composite and its audio mix, and keeps what it saw and heard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_video as gst_video;
use tokio::task::JoinHandle;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

use super::analysis::{self, Rgb};
use super::link::{self, Heard, Link};
use super::media::{receive, send_pipeline, Received, Shared};
pub use super::media::{FrameSample, AUDIO_WINDOW};
use super::sharing::{self, SharingClient};
use mcu_server::codec::VideoCodec;
use mcu_server::ids::ParticipantId;
use mcu_server::protocol::{Layout, ServerMessage};
use mcu_server::rtc::{RtcFactory, SharedTrack};

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
    pub token: Option<mcu_server::auth::Secret>,
    /// Take part in chat and file sharing, on this transport.
    pub sharing: Option<sharing::Transport>,
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
    pub errors: Vec<String>,
    pub layout: Option<Layout>,
    /// The ICE candidates the server sent, as SDP candidate lines.
    pub server_candidates: Vec<String>,
    /// Room notices received: recording, mute and removal messages, in order.
    pub notices: Vec<ServerMessage>,
}

pub struct Participant {
    pub spec: Spec,
    /// What this participant sends, chosen from its participant number.
    pub colour: Rgb,
    pub tone_hz: f64,
    id: String,
    shared: Arc<Shared>,
    /// None once the participant has left.
    link: Option<Link>,
    started: Instant,
    composite_ssrc: Arc<AtomicU32>,
    send_pipeline: gst::Pipeline,
    receive_pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    tasks: Vec<JoinHandle<()>>,
    sharing: Option<SharingClient>,
}

impl Participant {
    /// Joins `room` on the server at `base_url` (http://host:port) and starts sending.
    pub async fn join(
        base_url: &str,
        room: &str,
        spec: Spec,
        rtc: &RtcFactory,
        roster: Roster,
    ) -> Result<Participant> {
        let heard: Heard = Arc::default();
        let shared = Arc::new(Shared {
            heard: heard.clone(),
            own_id: Mutex::new(None),
            own_colour: OnceLock::new(),
            received: Mutex::new(Received::default()),
        });
        let composite_ssrc = Arc::new(AtomicU32::new(0));
        let receive_pipelines = Arc::new(Mutex::new(Vec::new()));
        let on_track: link::OnTrack = {
            let shared = shared.clone();
            let pipelines = receive_pipelines.clone();
            let ssrc = composite_ssrc.clone();
            Arc::new(move |track| {
                if track.kind() == RTPCodecType::Video {
                    ssrc.store(track.ssrc(), Ordering::Relaxed);
                }
                match receive(track, shared.clone()) {
                    Ok(p) => pipelines.lock().unwrap_or_else(|e| e.into_inner()).push(p),
                    Err(e) => link::lock(&shared.heard)
                        .errors
                        .push(format!("receiving: {e:#}")),
                }
            })
        };
        let link = Link::join(
            base_url,
            room,
            &spec.name,
            spec.token.clone(),
            rtc,
            heard,
            on_track,
        )
        .await?;
        let id = link.id.clone();
        let pc = link.pc.clone();
        let mut tasks = Vec::new();
        *shared.own_id.lock().unwrap_or_else(|p| p.into_inner()) = Some(id.clone());
        // Colour and tone follow the server's participant number, so probes in different
        // processes joining the same room still send distinct colours and tones.
        let index = id
            .parse::<ParticipantId>()
            .map(|p| p.0.saturating_sub(1) as usize)
            .unwrap_or(0);
        let (colour, tone_hz) = (analysis::colour_for(index), analysis::tone_for(index));
        let _ = shared.own_colour.set(colour);
        roster.write().unwrap_or_else(|p| p.into_inner()).insert(
            id.clone(),
            Expected {
                name: spec.name.clone(),
                colour,
                tone_hz: Some(tone_hz),
                camera: spec.camera,
            },
        );

        let audio_track = SharedTrack::audio(&spec.name);
        pc.add_track(audio_track.as_local()).await?;
        let send_pipeline = send_pipeline(spec.camera.then_some((spec.codec, colour)), tone_hz)?;
        let by_name = |n: &str| {
            send_pipeline
                .by_name(n)
                .with_context(|| format!("probe send pipeline has no {n}"))
        };
        let counters = Arc::new(mcu_server::media::sink::PacketCounters::default());
        let audio_packets =
            mcu_server::media::sink::packets_from(&by_name("audio_sink")?, counters.clone())?;
        tasks.push(tokio::spawn(audio_track.write_all(audio_packets)));
        if spec.camera {
            let video_track = SharedTrack::video(spec.codec, "camera", &spec.name);
            let video_sender = pc.add_track(video_track.as_local()).await?;
            let video_packets =
                mcu_server::media::sink::packets_from(&by_name("video_sink")?, counters)?;
            tasks.push(tokio::spawn(video_track.write_all(video_packets)));
            // Honour the server's PLI/FIR: it needs our keyframe to start decoding us.
            let encoder = by_name("encoder")?;
            tasks.push(tokio::spawn(async move {
                while let Ok((packets, _)) = video_sender.read_rtcp().await {
                    let wants = packets.iter().any(|p| {
                        p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                            || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                    });
                    if wants {
                        if let Some(pad) = encoder.static_pad("src") {
                            pad.send_event(
                                gst_video::UpstreamForceKeyUnitEvent::builder()
                                    .all_headers(true)
                                    .build(),
                            );
                        }
                    }
                }
            }));
        } else {
            // Still receive the composite: a receive-only video transceiver.
            pc.add_transceiver_from_kind(RTPCodecType::Video, None)
                .await
                .context("adding a receive-only video transceiver")?;
        }
        send_pipeline
            .set_state(gst::State::Playing)
            .context("starting the probe's send pipeline")?;
        let sharing = match spec.sharing {
            Some(transport) => {
                let state = link::lock(&link.heard).sharing.clone();
                Some(SharingClient::create(&pc, transport, state).await?)
            }
            None => None,
        };

        link.offer().await?;

        Ok(Participant {
            spec,
            colour,
            tone_hz,
            id,
            shared,
            started: link.started,
            link: Some(link),
            composite_ssrc,
            send_pipeline,
            receive_pipelines,
            tasks,
            sharing,
        })
    }

    fn sharing(&self) -> Result<(&SharingClient, &Link)> {
        match (&self.sharing, &self.link) {
            (Some(s), Some(l)) => Ok((s, l)),
            (None, _) => anyhow::bail!("{} was not set up to share", self.id),
            (_, None) => anyhow::bail!("{} has left", self.id),
        }
    }

    /// Subscribes to the room's chat and files (waiting for the data channels to open first,
    /// unless it uses the WebSocket).
    pub async fn subscribe_chat(&self) -> Result<()> {
        let (s, link) = self.sharing()?;
        s.subscribe(link).await
    }

    pub async fn send_chat(&self, text: &str) -> Result<()> {
        let (s, link) = self.sharing()?;
        s.send(
            link,
            &mcu_server::protocol::ClientMessage::Chat {
                text: text.to_string(),
            },
        )
        .await
    }

    /// Shares `bytes` as a file named `name`; returns its id once all bytes are sent.
    pub async fn share_file(&self, name: &str, bytes: &[u8]) -> Result<u32> {
        let (s, link) = self.sharing()?;
        s.share(link, name, bytes).await
    }

    pub async fn download(&self, file_id: u32, deadline: Instant) -> Result<Vec<u8>> {
        let (s, link) = self.sharing()?;
        s.download(link, file_id, deadline).await
    }

    /// What the server said about chat and files so far.
    pub fn sharing_state(&self) -> Option<sharing::SharedState> {
        self.sharing.as_ref().map(|s| s.state.clone())
    }

    /// Sends a raw text message on the chat data channel (for tests of bad input).
    pub async fn send_raw_on_chat_channel(&self, text: &str) -> Result<()> {
        let (s, _) = self.sharing()?;
        s.send_raw(text).await
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn observe(&self) -> Observation {
        let heard = link::lock(&self.shared.heard);
        let r = self.shared.lock();
        Observation {
            id: self.id.clone(),
            frame_times: r.frame_times.clone(),
            recent: r.recent.iter().cloned().collect(),
            first_self_frame: r.first_self_frame.map(|t| t - self.started),
            audio: r.audio.iter().copied().collect(),
            keyframes: r.keyframes.clone(),
            errors: heard.errors.clone(),
            layout: heard.layout.clone(),
            server_candidates: heard.server_candidates.clone(),
            notices: heard.notices.clone(),
        }
    }

    /// Sends a PLI for the composite, as a browser does after loss. False if no composite yet.
    pub async fn send_pli(&self) -> bool {
        let ssrc = self.composite_ssrc.load(Ordering::Relaxed);
        if ssrc == 0 {
            return false;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        match &self.link {
            Some(link) => link.pc.write_rtcp(&[Box::new(pli)]).await.is_ok(),
            None => false,
        }
    }

    /// Sends a raw text frame on the signalling socket (for tests of bad input).
    pub async fn send_raw(&self, text: String) -> bool {
        match &self.link {
            Some(link) => link.send_raw(text).await,
            None => false,
        }
    }

    /// Leaves politely: a `leave` message, then everything is closed.
    pub async fn leave(mut self) {
        if let Some(link) = self.link.take() {
            link.leave().await;
        }
        let _ = self.send_pipeline.set_state(gst::State::Null);
        for p in self
            .receive_pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = p.set_state(gst::State::Null);
        }
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Participant {
    fn drop(&mut self) {
        // Pipelines must reach NULL before they are dropped.
        let _ = self.send_pipeline.set_state(gst::State::Null);
        for p in self
            .receive_pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = p.set_state(gst::State::Null);
        }
        for t in &self.tasks {
            t.abort();
        }
    }
}
