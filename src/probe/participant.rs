//! One synthetic participant: joins through the real signalling, sends a solid colour and a sine
//! tone of its own, receives the composite and its audio mix, and keeps what it saw and heard.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
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
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::analysis::{self, Rgb, I420};
use crate::config::VideoCodec;
use crate::ids::ParticipantId;
use crate::protocol::{ClientMessage, IceCandidate, Layout, ServerMessage};
use crate::rtc::{self, RtcFactory, SharedTrack};

/// How long to wait for the server's `joined` reply.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// Decoded frames whose tile colours are kept for the checks (one second at 30 fps).
const RECENT_FRAMES: usize = 30;
/// Received audio kept for the tone analysis: one second at 48 kHz.
pub const AUDIO_WINDOW: usize = 48_000;
/// The probe's camera: small, because the server scales it into a tile anyway, and cheap to encode.
const SEND_WIDTH: u32 = 320;
const SEND_HEIGHT: u32 = 180;

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
}

/// The colours found at the centre of each tile of one decoded composite frame.
#[derive(Debug, Clone)]
pub struct FrameSample {
    pub at: Instant,
    pub width: u32,
    pub height: u32,
    pub tiles: Vec<(String, Rgb)>,
    /// The colour an eighth of the way down each tile: the participant's colour when its video
    /// fills the tile, black when it is letterboxed, the placeholder's grey before any video.
    pub tops: Vec<(String, Rgb)>,
}

#[derive(Default)]
struct Received {
    frame_times: Vec<Instant>,
    recent: VecDeque<FrameSample>,
    first_self_frame: Option<Instant>,
    audio: VecDeque<f32>,
    keyframes: Vec<Instant>,
    errors: Vec<String>,
    layout: Option<Layout>,
    server_candidates: Vec<String>,
}

struct Shared {
    started: Instant,
    own_id: Mutex<Option<String>>,
    own_colour: OnceLock<Rgb>,
    received: Mutex<Received>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
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

/// The probe's microphone (a sine tone) and, given a codec and colour, its camera (a solid colour).
fn send_pipeline(camera: Option<(VideoCodec, Rgb)>, tone_hz: f64) -> Result<gst::Pipeline> {
    let video = match camera {
        None => String::new(),
        Some((codec, colour)) => {
            let encoder = match codec {
                VideoCodec::Vp8 => {
                    "vp8enc name=encoder deadline=1 cpu-used=16 threads=1 \
                     target-bitrate=300000 keyframe-max-dist=150 lag-in-frames=0 \
                     ! rtpvp8pay pt=96 mtu=1200 picture-id-mode=15-bit"
                }
                VideoCodec::H264 => {
                    "x264enc name=encoder tune=zerolatency speed-preset=ultrafast \
                     threads=1 bitrate=300 key-int-max=150 \
                     ! video/x-h264,profile=constrained-baseline \
                     ! rtph264pay pt=102 mtu=1200 config-interval=-1 aggregate-mode=zero-latency"
                }
            };
            format!(
                "videotestsrc is-live=true pattern=solid-color foreground-color={argb} \
                   ! video/x-raw,format=I420,width={SEND_WIDTH},height={SEND_HEIGHT},framerate=30/1 \
                   ! {encoder} ! appsink name=video_sink sync=false ",
                argb = colour.argb()
            )
        }
    };
    let description = format!(
        "{video}audiotestsrc is-live=true wave=sine freq={tone_hz} volume=0.3 samplesperbuffer=960 \
           ! audio/x-raw,format=S16LE,rate=48000,channels=1 \
           ! opusenc bitrate=32000 frame-size=20 ! rtpopuspay pt=111 mtu=1200 \
           ! appsink name=audio_sink sync=false"
    );
    gst::parse::launch(&description)
        .context("building the probe's send pipeline")?
        .downcast::<gst::Pipeline>()
        .ok()
        .context("the probe's send pipeline is not a pipeline")
}

/// Builds a pipeline that decodes one incoming track and records what it shows or sounds like.
fn receive(track: Arc<TrackRemote>, shared: Arc<Shared>) -> Result<gst::Pipeline> {
    let codec = track.codec();
    let mime = codec.capability.mime_type.clone();
    let pt = i32::from(track.payload_type());
    let (caps, chain, h264) = match track.kind() {
        RTPCodecType::Video => match rtc::video_codec_of(&mime) {
            Some(VideoCodec::Vp8) => (
                format!("application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload={pt}"),
                "rtpvp8depay wait-for-keyframe=true ! vp8dec threads=1",
                false,
            ),
            Some(VideoCodec::H264) => (
                format!("application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload={pt}"),
                "rtph264depay ! h264parse ! avdec_h264 max-threads=1",
                true,
            ),
            None => bail!("unexpected video codec {mime}"),
        },
        RTPCodecType::Audio => (
            format!("application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload={pt}"),
            "rtpopusdepay ! opusdec",
            false,
        ),
        other => bail!("unexpected {other} track"),
    };
    let is_video = track.kind() == RTPCodecType::Video;
    let tail = if is_video {
        "videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false max-buffers=2 drop=true"
    } else {
        "audioconvert ! audioresample ! audio/x-raw,format=F32LE,rate=48000,channels=1 \
         ! appsink name=sink sync=false max-buffers=50 drop=true"
    };
    let description = format!(
        "appsrc name=src format=time is-live=true do-timestamp=true caps=\"{caps}\" \
         ! rtpjitterbuffer latency=50 ! {chain} ! {tail}"
    );
    let pipeline = gst::parse::launch(&description)
        .context("building a receive pipeline")?
        .downcast::<gst::Pipeline>()
        .ok()
        .context("the receive pipeline is not a pipeline")?;
    let appsrc = pipeline
        .by_name("src")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
        .context("receive pipeline has no appsrc")?;
    let appsink = pipeline
        .by_name("sink")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSink>().ok())
        .context("receive pipeline has no appsink")?;
    let callback_shared = shared.clone();
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if is_video {
                    on_video_frame(&sample, &callback_shared);
                } else {
                    on_audio(&sample, &callback_shared);
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .context("starting a receive pipeline")?;
    tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            if is_video && analysis::starts_keyframe(&packet.payload, h264) {
                shared.lock().keyframes.push(Instant::now());
            }
            let Ok(bytes) = packet.marshal() else {
                continue;
            };
            if appsrc.push_buffer(gst::Buffer::from_slice(bytes)).is_err() {
                break;
            }
        }
    });
    Ok(pipeline)
}

fn on_video_frame(sample: &gst::Sample, shared: &Shared) {
    let now = Instant::now();
    let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
        return;
    };
    let Ok(info) = gst_video::VideoInfo::from_caps(caps) else {
        return;
    };
    let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info) else {
        return;
    };
    let plane = |i: u32| frame.plane_data(i).ok();
    let (Some(y), Some(u), Some(v)) = (plane(0), plane(1), plane(2)) else {
        return;
    };
    let strides = info.stride();
    let image = I420 {
        width: info.width() as usize,
        height: info.height() as usize,
        y,
        y_stride: strides[0] as usize,
        u,
        u_stride: strides[1] as usize,
        v,
        v_stride: strides[2] as usize,
    };
    let own_id = shared
        .own_id
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let mut r = shared.lock();
    let Some(layout) = r.layout.clone() else {
        r.frame_times.push(now);
        return;
    };
    let sx = image.width as f64 / f64::from(layout.width.max(1));
    let sy = image.height as f64 / f64::from(layout.height.max(1));
    let sample = |fraction_down: f64| -> Vec<(String, Rgb)> {
        layout
            .tiles
            .iter()
            .filter_map(|t| {
                let cx = ((f64::from(t.x) + f64::from(t.width) / 2.0) * sx) as usize;
                let cy = ((f64::from(t.y) + f64::from(t.height) * fraction_down) * sy) as usize;
                let half = ((f64::from(t.width.min(t.height)) * sx) as usize / 16).clamp(1, 8);
                image
                    .average(cx, cy, half)
                    .map(|c| (t.participant_id.clone(), c))
            })
            .collect()
    };
    let tiles = sample(0.5);
    let tops = sample(0.125);
    if r.first_self_frame.is_none() {
        if let Some(own) = own_id {
            let shows_self = tiles.iter().any(|(p, c)| {
                *p == own
                    && shared
                        .own_colour
                        .get()
                        .is_some_and(|own_colour| analysis::shows(*c, *own_colour))
            });
            if shows_self {
                r.first_self_frame = Some(now);
            }
        }
    }
    r.frame_times.push(now);
    r.recent.push_back(FrameSample {
        at: now,
        width: info.width(),
        height: info.height(),
        tiles,
        tops,
    });
    while r.recent.len() > RECENT_FRAMES {
        r.recent.pop_front();
    }
}

fn on_audio(sample: &gst::Sample, shared: &Shared) {
    let Some(buffer) = sample.buffer() else {
        return;
    };
    let Ok(map) = buffer.map_readable() else {
        return;
    };
    let mut r = shared.lock();
    for chunk in map.as_slice().chunks_exact(4) {
        r.audio
            .push_back(f32::from_le_bytes([chunk[0], chunk[1], chunk[2], chunk[3]]));
    }
    while r.audio.len() > AUDIO_WINDOW {
        r.audio.pop_front();
    }
}
