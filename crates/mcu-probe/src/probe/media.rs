//! The probe participant's own media: what it sends (a solid colour and a tone) and how it reads
//! what it receives (tile colours of each composite frame, the last second of audio).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use tokio::sync::mpsc;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::analysis::{self, Rgb, I420};
use crate::heard::{lock, Heard};
use crate::participant::{Sending, Source};
use mcu_server::codec::VideoCodec;
use mcu_server::rtc::{self, OutboundTrack};

/// Decoded frames whose tile colours are kept for the checks (one second at 30 fps).
const RECENT_FRAMES: usize = 30;
/// Received audio kept for the tone analysis: one second at 48 kHz.
pub const AUDIO_WINDOW: usize = 48_000;
/// The probe's camera: small, because the server scales it into a tile anyway, and cheap to encode.
const SEND_WIDTH: u32 = 320;
const SEND_HEIGHT: u32 = 180;
/// Encoded packets queued between the send pipeline and its track; beyond this (a writer stalled
/// for seconds) they are dropped, as late media is worthless.
const SEND_QUEUE: usize = 512;

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
pub(super) struct Received {
    pub(super) frame_times: Vec<Instant>,
    pub(super) recent: VecDeque<FrameSample>,
    pub(super) first_self_frame: Option<Instant>,
    pub(super) audio: VecDeque<f32>,
    pub(super) keyframes: Vec<Instant>,
    /// The codec the composite arrived in, as negotiated for its track.
    pub(super) composite_codec: Option<VideoCodec>,
    /// Each change of the decoded composite's size (a tier), with when it happened.
    pub(super) sizes: Vec<(Instant, u32, u32)>,
}

pub(super) struct Shared {
    pub(super) heard: Heard,
    pub(super) own_id: Mutex<Option<String>>,
    pub(super) own_colour: OnceLock<Rgb>,
    pub(super) received: Mutex<Received>,
}

impl Shared {
    pub(super) fn lock(&self) -> std::sync::MutexGuard<'_, Received> {
        self.received.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// What the probe's camera shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Content {
    /// Its colour, flat: cheap to encode (a flat picture costs ~100 kbit/s at 720p, so it hides
    /// every bandwidth problem).
    #[default]
    Solid,
    /// Like a camera to the encoder: moving detail everywhere but a block of its colour in the
    /// middle, where the checks read it (a tile's centre, a sixteenth of the tile either way).
    CameraLike,
    /// Its colour, flat, at 2560×1440 (5 fps, to spare the machine): larger than the server
    /// decodes, for the test that it is refused before decoding.
    Oversized,
}

/// The size of `Content::Oversized`.
pub const OVERSIZED: (u32, u32) = (2560, 1440);

/// Camera-like video is a still texture (noise drawn at a quarter of the frame's size, scaled
/// up: the room behind someone) under sensor noise that changes every frame at a fifth of full
/// strength. Measured for four such senders (300 kbit/s each) in a 2×2 composite, at each tier:
/// 1280×720 at 2 Mbit/s reached 2.3 Mbit/s, 640×360 at 600 kbit/s 0.70, 320×180 at 200 kbit/s
/// 0.23, each keeping every frame: the encoders work at their rates, as with cameras. Moving noise
/// alone (no still texture) cost so much per pixel that the lower tiers dropped half their frames
/// to keep their rates, which no camera makes them do.
const TEXTURE_DIVISOR: u32 = 4;
const SENSOR_NOISE: f64 = 0.2;

/// The colour block of camera-like content: a third of the frame each way, centred, so the
/// centre of the tile shows the colour at every tile size and every tier.
const BLOCK_WIDTH: u32 = (SEND_WIDTH / 3) & !1;
const BLOCK_HEIGHT: u32 = (SEND_HEIGHT / 3) & !1;

/// The probe's camera chain for `codec`, from raw frames to RTP in an appsink.
fn camera_description(codec: VideoCodec, argb: u32, content: Content) -> String {
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
    let raw =
        |w: u32, h: u32| format!("video/x-raw,format=I420,width={w},height={h},framerate=30/1");
    let picture = match content {
        Content::Solid => format!(
            "videotestsrc is-live=true pattern=solid-color foreground-color={argb} \
               ! {}",
            raw(SEND_WIDTH, SEND_HEIGHT)
        ),
        Content::Oversized => format!(
            "videotestsrc is-live=true pattern=solid-color foreground-color={argb} \
               ! video/x-raw,format=I420,width={},height={},framerate=5/1",
            OVERSIZED.0, OVERSIZED.1
        ),
        Content::CameraLike => format!(
            "videotestsrc pattern=snow num-buffers=1 ! {} ! videoscale ! {} \
               ! imagefreeze is-live=true ! camera.sink_0 \
             videotestsrc is-live=true pattern=snow ! {} ! camera.sink_1 \
             videotestsrc is-live=true pattern=solid-color foreground-color={argb} \
               ! {} ! camera.sink_2 \
             compositor name=camera sink_1::alpha={SENSOR_NOISE} sink_2::xpos={} sink_2::ypos={} \
               ! {}",
            raw(SEND_WIDTH / TEXTURE_DIVISOR, SEND_HEIGHT / TEXTURE_DIVISOR),
            raw(SEND_WIDTH, SEND_HEIGHT),
            raw(SEND_WIDTH, SEND_HEIGHT),
            raw(BLOCK_WIDTH, BLOCK_HEIGHT),
            ((SEND_WIDTH - BLOCK_WIDTH) / 2) & !1,
            ((SEND_HEIGHT - BLOCK_HEIGHT) / 2) & !1,
            raw(SEND_WIDTH, SEND_HEIGHT)
        ),
    };
    // The camera's size can change while it runs (`Participant::resize_camera`), as a browser's
    // does when its CPU or its link cannot keep up; at its own size videoscale passes frames through.
    let (width, height) = match content {
        Content::Oversized => OVERSIZED,
        Content::Solid | Content::CameraLike => (SEND_WIDTH, SEND_HEIGHT),
    };
    format!(
        "{picture} ! videoscale ! capsfilter name=camera_size caps=video/x-raw,width={width},height={height} \
         ! {encoder} ! appsink name=video_sink sync=false "
    )
}

/// How loud the probe's tone is by default: 0.3 of full scale, -13.5 dB RMS, a talker close to
/// their microphone.
pub const DEFAULT_VOLUME: f64 = 0.3;

/// Elements of the probe's send pipeline that change while it runs, once it is sending: its
/// microphone (the tone's volume) and its camera's size.
#[derive(Default)]
pub struct LiveElements {
    pub microphone: Option<gst::Element>,
    pub camera_size: Option<gst::Element>,
}

pub type Controls = Arc<Mutex<LiveElements>>;

/// The probe's microphone: a sine tone, Opus RTP into an appsink.
fn microphone_description(tone_hz: f64, volume: f64) -> String {
    format!(
        "audiotestsrc name=mic is-live=true wave=sine freq={tone_hz} volume={volume} samplesperbuffer=960 \
           ! audio/x-raw,format=S16LE,rate=48000,channels=1 \
           ! opusenc bitrate=32000 frame-size=20 ! rtpopuspay pt=111 mtu=1200 \
           ! appsink name=audio_sink sync=false"
    )
}

/// The kinds of track the probe decodes.
#[derive(Debug, Clone, Copy)]
enum Incoming {
    Video(VideoCodec),
    Audio,
}

/// How long the probe's jitter buffer waits for a missing packet before it gives up on it (and
/// its decoder asks for a keyframe). Browsers wait about this long on a lossy link (their
/// buffer grows with the NACK round trips they see); 50 ms measured every repairable loss on an
/// impaired link as a freeze, because the repair needs a NACK tick plus a round trip plus the
/// policer's queue (up to 100 ms).
const RECEIVE_LATENCY_MS: u32 = 200;

/// Decodes one incoming RTP track (payload type `pt`) into raw frames or samples in an appsink.
fn receive_description(incoming: Incoming, pt: i32) -> String {
    let (caps, chain) = match incoming {
        Incoming::Video(VideoCodec::Vp8) => (
            format!(
                "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload={pt}"
            ),
            "rtpvp8depay name=depay wait-for-keyframe=true ! vp8dec threads=1",
        ),
        Incoming::Video(VideoCodec::H264) => (
            format!(
                "application/x-rtp,media=video,clock-rate=90000,encoding-name=H264,payload={pt}"
            ),
            "rtph264depay name=depay ! avdec_h264 max-threads=1",
        ),
        Incoming::Audio => (
            format!(
                "application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload={pt}"
            ),
            "rtpopusdepay ! opusdec",
        ),
    };
    let tail = match incoming {
        Incoming::Video(_) => {
            "videoconvert ! video/x-raw,format=I420 ! appsink name=sink sync=false max-buffers=2 drop=true"
        }
        Incoming::Audio => {
            "audioconvert ! audioresample ! audio/x-raw,format=F32LE,rate=48000,channels=1 \
             ! appsink name=sink sync=false max-buffers=50 drop=true"
        }
    };
    format!(
        "appsrc name=src format=time is-live=true do-timestamp=true caps=\"{caps}\" \
         ! rtpjitterbuffer latency={RECEIVE_LATENCY_MS} ! {chain} ! {tail}"
    )
}

/// Every pipeline description the probe may build, named, for `mcu doctor`.
pub fn descriptions() -> Vec<(String, String)> {
    let mut all = Vec::new();
    for codec in [VideoCodec::Vp8, VideoCodec::H264] {
        let name = codec.mime_type().trim_start_matches("video/");
        for content in [Content::Solid, Content::CameraLike] {
            all.push((
                format!("probe camera ({name}, {content:?})"),
                camera_description(codec, 0, content),
            ));
        }
        all.push((
            format!("probe receiver ({name})"),
            receive_description(Incoming::Video(codec), 96),
        ));
    }
    all.push((
        "probe microphone".into(),
        microphone_description(440.0, DEFAULT_VOLUME),
    ));
    all.push((
        "probe receiver (Opus)".into(),
        receive_description(Incoming::Audio, 111),
    ));
    all
}

/// What a probe participant's camera sends, if it has one.
#[derive(Debug, Clone, Copy)]
pub(super) struct Camera {
    pub codec: VideoCodec,
    pub colour: Rgb,
    pub content: Content,
}

/// The probe's microphone (a sine tone) and, given one, its camera, encoded live by GStreamer.
pub(super) fn live_source(
    camera: Option<Camera>,
    tone_hz: f64,
    volume: f64,
    controls: Controls,
) -> Source {
    Source {
        camera: camera.map(|c| c.codec),
        start: Box::new(move |audio, video| {
            start_live(camera, (tone_hz, volume, controls), audio, video)
        }),
    }
}

fn start_live(
    camera: Option<Camera>,
    (tone_hz, volume, controls): (f64, f64, Controls),
    audio: OutboundTrack,
    video: Option<OutboundTrack>,
) -> Result<Sending> {
    let camera_part = camera
        .map(|c| camera_description(c.codec, c.colour.argb(), c.content))
        .unwrap_or_default();
    let description = format!("{camera_part}{}", microphone_description(tone_hz, volume));
    let pipeline = gst::parse::launch(&description)
        .context("building the probe's send pipeline")?
        .downcast::<gst::Pipeline>()
        .ok()
        .context("the probe's send pipeline is not a pipeline")?;
    let element = |name: &str| {
        pipeline
            .by_name(name)
            .with_context(|| format!("the probe's send pipeline has no {name}"))
    };
    let mut tasks = vec![tokio::spawn(
        audio.write_all(packets_of(&element("audio_sink")?)?),
    )];
    lock(&controls).microphone = Some(element("mic")?);
    let mut encoder = None;
    if let Some(video) = video {
        lock(&controls).camera_size = Some(element("camera_size")?);
        tasks.push(tokio::spawn(
            video.write_all(packets_of(&element("video_sink")?)?),
        ));
        encoder = Some(element("encoder")?);
    }
    let pipeline = StopOnDrop(pipeline);
    pipeline
        .0
        .set_state(gst::State::Playing)
        .context("starting the probe's send pipeline")?;
    Ok(Sending {
        keyframe: Arc::new(move || {
            let pad = encoder.as_ref().and_then(|e| e.static_pad("src"));
            if let Some(pad) = pad {
                pad.send_event(
                    gst_video::UpstreamForceKeyUnitEvent::builder()
                        .all_headers(true)
                        .build(),
                );
            }
        }),
        stop: Box::new(move || drop(pipeline)),
        tasks,
    })
}

/// A pipeline that is stopped when it goes out of scope, on every path: one dropped while
/// playing aborts the process.
struct StopOnDrop(gst::Pipeline);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = self.0.set_state(gst::State::Null);
    }
}

/// The RTP packets `sink` (an appsink) receives, handed over without ever blocking its
/// streaming thread.
fn packets_of(sink: &gst::Element) -> Result<mpsc::Receiver<Bytes>> {
    let appsink = sink
        .clone()
        .dynamic_cast::<gst_app::AppSink>()
        .ok()
        .with_context(|| format!("{} is not an appsink", sink.name()))?;
    let (tx, rx) = mpsc::channel(SEND_QUEUE);
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                if let Some(map) = sample.buffer().and_then(|b| b.map_readable().ok()) {
                    let _ = tx.try_send(Bytes::copy_from_slice(map.as_slice()));
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(rx)
}

/// Builds a pipeline that decodes one incoming track and records what it shows or sounds like.
pub(super) fn receive(track: Arc<TrackRemote>, shared: Arc<Shared>) -> Result<gst::Pipeline> {
    let codec = track.codec();
    let mime = codec.capability.mime_type.clone();
    let pt = i32::from(track.payload_type());
    let incoming = match track.kind() {
        RTPCodecType::Video => match rtc::video_codec_of(&mime) {
            Some(codec) => Incoming::Video(codec),
            None => bail!("unexpected video codec {mime}"),
        },
        RTPCodecType::Audio => Incoming::Audio,
        other => bail!("unexpected {other} track"),
    };
    let is_video = track.kind() == RTPCodecType::Video;
    let h264 = matches!(incoming, Incoming::Video(VideoCodec::H264));
    if let Incoming::Video(codec) = incoming {
        shared.lock().composite_codec = Some(codec);
    }
    let description = receive_description(incoming, pt);
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
    let layout = lock(&shared.heard).layout.clone();
    let mut r = shared.lock();
    let Some(layout) = layout else {
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
    let size = (info.width(), info.height());
    if r.sizes.last().map(|(_, w, h)| (*w, *h)) != Some(size) {
        r.sizes.push((now, size.0, size.1));
    }
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
