//! One synthetic participant: joins through the real signalling, sends a solid colour and a sine
//! tone of its own, receives the composite and its audio mix, and keeps what it saw and heard.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_video as gst_video;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::ice_transport::ice_candidate::RTCIceCandidateInit;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;

use super::analysis::{self, Rgb};
use super::media::{receive, send_pipeline, Received, Shared};
pub use super::media::{FrameSample, AUDIO_WINDOW};
use crate::config::VideoCodec;
use crate::ids::ParticipantId;
use crate::protocol::{ClientMessage, IceCandidate, Layout, ServerMessage};
use crate::rtc::{self, RtcFactory, SharedTrack};

/// How long to wait for the server's `joined` reply.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);

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
    pub token: Option<crate::auth::Secret>,
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
    pc: Arc<RTCPeerConnection>,
    ws_out: mpsc::Sender<String>,
    composite_ssrc: Arc<AtomicU32>,
    send_pipeline: gst::Pipeline,
    receive_pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    tasks: Vec<JoinHandle<()>>,
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
        let started = Instant::now();
        let ws_url = format!(
            "{}/ws/{room}",
            base_url
                .trim_end_matches('/')
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        let (socket, _) = tokio_tungstenite::connect_async(ws_url.as_str())
            .await
            .with_context(|| format!("connecting to {ws_url}"))?;
        let (mut ws_sink, mut ws_stream) = socket.split();
        let shared = Arc::new(Shared {
            started,
            own_id: Mutex::new(None),
            own_colour: OnceLock::new(),
            received: Mutex::new(Received::default()),
        });
        let mut tasks = Vec::new();

        let (ws_out, mut ws_out_rx) = mpsc::channel::<String>(256);
        tasks.push(tokio::spawn(async move {
            while let Some(text) = ws_out_rx.recv().await {
                if ws_sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = ws_sink.close().await;
        }));

        let pc = rtc.peer_connection().await?;
        let composite_ssrc = Arc::new(AtomicU32::new(0));
        let receive_pipelines = Arc::new(Mutex::new(Vec::new()));
        {
            let shared = shared.clone();
            let pipelines = receive_pipelines.clone();
            let ssrc = composite_ssrc.clone();
            pc.on_track(Box::new(move |track, _, _| {
                let shared = shared.clone();
                let pipelines = pipelines.clone();
                let ssrc = ssrc.clone();
                Box::pin(async move {
                    if track.kind() == RTPCodecType::Video {
                        ssrc.store(track.ssrc(), Ordering::Relaxed);
                    }
                    match receive(track, shared.clone()) {
                        Ok(p) => pipelines.lock().unwrap_or_else(|e| e.into_inner()).push(p),
                        Err(e) => shared.lock().errors.push(format!("receiving: {e:#}")),
                    }
                })
            }));
        }
        {
            let out = ws_out.clone();
            pc.on_ice_candidate(Box::new(move |candidate| {
                let out = out.clone();
                Box::pin(async move {
                    let candidate = match candidate.map(|c| c.to_json()) {
                        Some(Ok(init)) => Some(IceCandidate {
                            candidate: init.candidate,
                            sdp_mid: init.sdp_mid,
                            sdp_m_line_index: init.sdp_mline_index,
                            username_fragment: init.username_fragment,
                        }),
                        Some(Err(_)) => return,
                        None => None,
                    };
                    let _ = out
                        .send(to_text(&ClientMessage::Candidate { candidate }))
                        .await;
                })
            }));
        }

        let (joined_tx, joined_rx) = oneshot::channel::<Result<String, String>>();
        {
            let shared = shared.clone();
            let pc = pc.clone();
            let mut joined_tx = Some(joined_tx);
            let loopback_only = rtc.loopback_only();
            tasks.push(tokio::spawn(async move {
                while let Some(Ok(frame)) = ws_stream.next().await {
                    let Message::Text(text) = frame else { continue };
                    let Ok(message) = serde_json::from_str::<ServerMessage>(text.as_str()) else {
                        shared
                            .lock()
                            .errors
                            .push(format!("unreadable server message: {text}"));
                        continue;
                    };
                    match message {
                        ServerMessage::Joined { participant_id, .. } => {
                            if let Some(tx) = joined_tx.take() {
                                let _ = tx.send(Ok(participant_id));
                            }
                        }
                        ServerMessage::Answer { sdp } => {
                            let result = match RTCSessionDescription::answer(sdp) {
                                Ok(answer) => pc.set_remote_description(answer).await,
                                Err(e) => Err(e),
                            };
                            if let Err(e) = result {
                                shared
                                    .lock()
                                    .errors
                                    .push(format!("applying the answer: {e}"));
                            }
                        }
                        ServerMessage::Candidate { candidate: Some(c) } => {
                            shared.lock().server_candidates.push(c.candidate.clone());
                            if loopback_only && !rtc::is_loopback_candidate(&c.candidate) {
                                continue;
                            }
                            let init = RTCIceCandidateInit {
                                candidate: c.candidate,
                                sdp_mid: c.sdp_mid,
                                sdp_mline_index: c.sdp_m_line_index,
                                username_fragment: c.username_fragment,
                            };
                            if let Err(e) = pc.add_ice_candidate(init).await {
                                shared.lock().errors.push(format!("server candidate: {e}"));
                            }
                        }
                        ServerMessage::Layout(layout) => shared.lock().layout = Some(layout),
                        notice @ (ServerMessage::Recording { .. }
                        | ServerMessage::ParticipantMuted { .. }
                        | ServerMessage::Removed { .. }) => shared.lock().notices.push(notice),
                        ServerMessage::Error { code, message } => {
                            let text = format!("{code:?}: {message}");
                            match joined_tx.take() {
                                Some(tx) => {
                                    let _ = tx.send(Err(text));
                                }
                                None => shared.lock().errors.push(text),
                            }
                        }
                        _ => {}
                    }
                }
            }));
        }

        ws_out
            .send(to_text(&ClientMessage::Join {
                name: spec.name.clone(),
                token: spec.token.clone(),
            }))
            .await
            .context("sending join")?;
        let id = match tokio::time::timeout(JOIN_DEADLINE, joined_rx).await {
            Ok(Ok(Ok(id))) => id,
            Ok(Ok(Err(refusal))) => bail!("the server refused the join: {refusal}"),
            Ok(Err(_)) => bail!("the connection closed before the join was answered"),
            Err(_) => bail!("no answer to join within {JOIN_DEADLINE:?}"),
        };
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
        let counters = Arc::new(crate::media::sink::PacketCounters::default());
        let audio_packets =
            crate::media::sink::packets_from(&by_name("audio_sink")?, counters.clone())?;
        tasks.push(tokio::spawn(audio_track.write_all(audio_packets)));
        if spec.camera {
            let video_track = SharedTrack::video(spec.codec, "camera", &spec.name);
            let video_sender = pc.add_track(video_track.as_local()).await?;
            let video_packets =
                crate::media::sink::packets_from(&by_name("video_sink")?, counters)?;
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

        let offer = pc.create_offer(None).await.context("creating an offer")?;
        pc.set_local_description(offer.clone())
            .await
            .context("applying our offer")?;
        ws_out
            .send(to_text(&ClientMessage::Offer { sdp: offer.sdp }))
            .await
            .context("sending the offer")?;

        Ok(Participant {
            spec,
            colour,
            tone_hz,
            id,
            shared,
            pc,
            ws_out,
            composite_ssrc,
            send_pipeline,
            receive_pipelines,
            tasks,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn started(&self) -> Instant {
        self.shared.started
    }

    pub fn observe(&self) -> Observation {
        let r = self.shared.lock();
        Observation {
            id: self.id.clone(),
            frame_times: r.frame_times.clone(),
            recent: r.recent.iter().cloned().collect(),
            first_self_frame: r.first_self_frame.map(|t| t - self.shared.started),
            audio: r.audio.iter().copied().collect(),
            keyframes: r.keyframes.clone(),
            errors: r.errors.clone(),
            layout: r.layout.clone(),
            server_candidates: r.server_candidates.clone(),
            notices: r.notices.clone(),
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
        self.pc.write_rtcp(&[Box::new(pli)]).await.is_ok()
    }

    /// Sends a raw text frame on the signalling socket (for tests of bad input).
    pub async fn send_raw(&self, text: String) -> bool {
        self.ws_out.send(text).await.is_ok()
    }

    /// Leaves politely: a `leave` message, then everything is closed.
    pub async fn leave(mut self) {
        let _ = self.ws_out.send(to_text(&ClientMessage::Leave {})).await;
        self.shutdown().await;
    }

    async fn shutdown(&mut self) {
        let _ = self.pc.close().await;
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

fn to_text(m: &ClientMessage) -> String {
    serde_json::to_string(m).expect("client messages always serialise")
}
