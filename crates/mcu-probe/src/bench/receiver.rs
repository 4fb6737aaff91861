//! What a bench receiver measures: it decodes the composite and reads the frame code in every
//! tile (whose frame, which one, and so how long since it was sent), and finds the tone bursts
//! in its audio mix (whose, and how long since they were sent). Arrival times are taken as the
//! packets come off the network, before decoding, so the receiver's own decode is not counted
//! against the server.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::marks::{self, Area, OnsetDetector};
use super::pump::SendLog;
use crate::heard::{self, Heard};
use crate::probe::analysis::tone_for;

/// A tile whose code has not changed for this long is frozen (a person would notice a picture
/// stuck for a fifth of a second); normal beats between 30-fps senders and a 30-fps composite
/// repeat a frame for 67 ms at most.
pub const TILE_FREEZE: Duration = Duration::from_millis(200);
/// A gap this long between composite frames is a visible freeze of the whole picture.
pub const COMPOSITE_FREEZE: Duration = Duration::from_millis(100);
/// Arrival times are kept this long for decoded frames to find theirs.
const ARRIVALS_KEPT: Duration = Duration::from_secs(5);
/// A latency outside this range matched the wrong send (a sender's restart): dropped.
const PLAUSIBLE_LATENCY: Duration = Duration::from_secs(2);

/// Everything one receiver saw, each with the instant it happened.
#[derive(Debug, Default)]
pub struct Observed {
    /// Composite frames as they arrived: instant and RTP timestamp (extended).
    pub frames: Vec<(Instant, u64)>,
    pub video_latency_ms: Vec<(Instant, f64)>,
    pub audio_latency_ms: Vec<(Instant, f64)>,
    /// When each bench participant's code was first read in the composite.
    pub first_seen: HashMap<usize, Instant>,
    /// Tiles whose code stood still for longer than TILE_FREEZE: when it moved again, how long.
    pub tile_freezes: Vec<(Instant, f64)>,
    pub frames_decoded: u64,
    /// Each decoded frame: when it came out of the decoder, and its size (its tier).
    pub decoded: Vec<(Instant, u32, u32)>,
    pub codes_read: u64,
    pub errors: Vec<String>,
}

pub type Shared = Arc<Mutex<Observed>>;

pub fn lock(o: &Shared) -> std::sync::MutexGuard<'_, Observed> {
    o.lock().unwrap_or_else(|p| p.into_inner())
}

/// What the receiver needs to know to interpret what it gets.
#[derive(Clone)]
pub struct ReceiverContext {
    pub heard: Heard,
    pub log: Arc<SendLog>,
    pub observed: Shared,
    pub send_width: usize,
    pub send_height: usize,
    /// Per bench participant: the sender's codec delay before its burst's onset (media.rs).
    pub onset_offsets: Arc<Vec<f64>>,
    pub epoch: Instant,
}

/// Extends 32-bit RTP timestamps into a monotonic count.
#[derive(Default)]
struct Unwrap {
    last: Option<u32>,
    high: u64,
}

impl Unwrap {
    fn extend(&mut self, ts: u32) -> u64 {
        if let Some(last) = self.last {
            if ts < last && last - ts > u32::MAX / 2 {
                self.high += 1 << 32;
            }
        }
        self.last = Some(ts);
        self.high + u64::from(ts)
    }
}

/// Arrival instants by buffer timestamp (nanoseconds from the first packet).
type Arrivals = Arc<Mutex<BTreeMap<u64, Instant>>>;

fn arrival_at(arrivals: &Arrivals, pts: u64) -> Option<(u64, Instant)> {
    arrivals
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .range(..=pts)
        .next_back()
        .map(|(k, v)| (*k, *v))
}

/// Decodes one track from the server and measures it. Returns the pipeline, which must be set
/// to NULL when the participant leaves.
pub fn receive(track: Arc<TrackRemote>, ctx: ReceiverContext) -> Result<gst::Pipeline> {
    let is_video = track.kind() == RTPCodecType::Video;
    let pt = track.payload_type();
    let (clock_rate, chain) = match track.kind() {
        RTPCodecType::Video => {
            if !track
                .codec()
                .capability
                .mime_type
                .eq_ignore_ascii_case("video/VP8")
            {
                bail!("the bench reads VP8 composites only");
            }
            (
                90_000u64,
                format!(
                    "application/x-rtp,media=video,clock-rate=90000,encoding-name=VP8,payload={pt} \
                     ! rtpvp8depay name=depay wait-for-keyframe=true ! vp8dec threads=1 \
                     ! video/x-raw,format=I420"
                ),
            )
        }
        RTPCodecType::Audio => (
            48_000,
            format!(
                "application/x-rtp,media=audio,clock-rate=48000,encoding-name=OPUS,payload={pt} \
                 ! rtpopusdepay ! opusdec ! audioconvert \
                 ! audio/x-raw,format=F32LE,rate=48000,channels=1,layout=interleaved"
            ),
        ),
        other => bail!("unexpected {other} track"),
    };
    // Timestamps come from the RTP header (every packet of a frame shares one), so a decoded
    // frame leads back to when its packets arrived.
    let description = format!(
        "appsrc name=src format=time is-live=true do-timestamp=false ! {chain} \
         ! appsink name=sink sync=false max-buffers=0 drop=false"
    );
    let pipeline = gst::parse::launch(&description)
        .context("building a bench receive pipeline")?
        .downcast::<gst::Pipeline>()
        .ok()
        .context("not a pipeline")?;
    let appsrc = pipeline
        .by_name("src")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
        .context("no appsrc")?;
    let appsink = pipeline
        .by_name("sink")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSink>().ok())
        .context("no appsink")?;
    let arrivals: Arrivals = Arc::default();
    let mut on_sample: Box<dyn FnMut(&gst::Sample) + Send> = if is_video {
        let ctx = ctx.clone();
        let arrivals = arrivals.clone();
        let mut tiles = TileTracker::default();
        Box::new(move |sample| on_composite(sample, &ctx, &arrivals, &mut tiles))
    } else {
        let ctx = ctx.clone();
        let arrivals = arrivals.clone();
        let mut detector = OnsetDetector::default();
        Box::new(move |sample| on_mix(sample, &ctx, &arrivals, &mut detector))
    };
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |sink| {
                let sample = sink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                on_sample(&sample);
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .context("starting a bench receive pipeline")?;
    let observed = ctx.observed.clone();
    tokio::spawn(async move {
        let mut unwrap = Unwrap::default();
        let mut first: Option<u64> = None;
        let mut last_ts = None;
        while let Ok((packet, _)) = track.read_rtp().await {
            let now = Instant::now();
            let ts = unwrap.extend(packet.header.timestamp);
            let origin = *first.get_or_insert(ts);
            let pts = ts.saturating_sub(origin) * 1_000_000_000 / clock_rate;
            if last_ts != Some(ts) {
                last_ts = Some(ts);
                let mut a = arrivals.lock().unwrap_or_else(|p| p.into_inner());
                a.insert(pts, now);
                while a
                    .first_key_value()
                    .is_some_and(|(_, t)| now.duration_since(*t) > ARRIVALS_KEPT)
                {
                    a.pop_first();
                }
                drop(a);
                if is_video {
                    lock(&observed).frames.push((now, ts));
                }
            }
            let Ok(bytes) = packet.marshal() else {
                continue;
            };
            let mut buffer = gst::Buffer::from_slice(bytes);
            if let Some(b) = buffer.get_mut() {
                b.set_pts(gst::ClockTime::from_nseconds(pts));
            }
            if appsrc.push_buffer(buffer).is_err() {
                break;
            }
        }
    });
    Ok(pipeline)
}

/// Per bench participant, the code its tile showed last and since when.
#[derive(Default)]
struct TileTracker {
    last: HashMap<usize, (u16, Instant)>,
}

fn on_composite(
    sample: &gst::Sample,
    ctx: &ReceiverContext,
    arrivals: &Arrivals,
    tiles: &mut TileTracker,
) {
    let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
        return;
    };
    let Some(pts) = buffer.pts() else { return };
    let Some((_, arrived)) = arrival_at(arrivals, pts.nseconds()) else {
        return;
    };
    let Ok(info) = gst_video::VideoInfo::from_caps(caps) else {
        return;
    };
    let Ok(frame) = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info) else {
        return;
    };
    let Ok(luma) = frame.plane_data(0) else {
        return;
    };
    let stride = info.stride()[0] as usize;
    let layout = heard::lock(&ctx.heard).layout.clone();
    let mut observed = lock(&ctx.observed);
    observed.frames_decoded += 1;
    observed
        .decoded
        .push((Instant::now(), info.width(), info.height()));
    let Some(layout) = layout else { return };
    let sx = info.width() as f64 / f64::from(layout.width.max(1));
    let sy = info.height() as f64 / f64::from(layout.height.max(1));
    for tile in &layout.tiles {
        let cell = Area {
            x: (f64::from(tile.x) * sx) as usize,
            y: (f64::from(tile.y) * sy) as usize,
            width: (f64::from(tile.width) * sx) as usize,
            height: (f64::from(tile.height) * sy) as usize,
        };
        let area = marks::content_of(cell, ctx.send_width, ctx.send_height);
        let Some(code) = marks::read(luma, stride, area) else {
            continue;
        };
        observed.codes_read += 1;
        let who = usize::from(code.participant);
        observed.first_seen.entry(who).or_insert(arrived);
        match tiles.last.get(&who) {
            Some((frame, _)) if *frame == code.frame => continue,
            Some((_, since)) => {
                let still = arrived.saturating_duration_since(*since);
                if still > TILE_FREEZE {
                    observed
                        .tile_freezes
                        .push((arrived, still.as_secs_f64() * 1000.0));
                }
            }
            None => {}
        }
        tiles.last.insert(who, (code.frame, arrived));
        if let Some(sent) = ctx.log.video_sent(who, usize::from(code.frame)) {
            if let Some(latency) = arrived.checked_duration_since(sent) {
                if latency < PLAUSIBLE_LATENCY {
                    observed
                        .video_latency_ms
                        .push((arrived, latency.as_secs_f64() * 1000.0));
                }
            }
        }
    }
}

fn on_mix(
    sample: &gst::Sample,
    ctx: &ReceiverContext,
    arrivals: &Arrivals,
    detector: &mut OnsetDetector,
) {
    let Some(buffer) = sample.buffer() else {
        return;
    };
    let Some(pts) = buffer.pts() else { return };
    let Some((packet_pts, arrived)) = arrival_at(arrivals, pts.nseconds()) else {
        return;
    };
    let Ok(map) = buffer.map_readable() else {
        return;
    };
    let samples: Vec<f32> = map
        .as_slice()
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let start = arrived.duration_since(ctx.epoch).as_secs_f64()
        + (pts.nseconds() - packet_pts) as f64 / 1e9;
    let tones: Vec<f64> = (0..ctx.onset_offsets.len()).map(tone_for).collect();
    for onset in detector.push(start, &samples, &tones) {
        let Some(who) = tones.iter().position(|&t| t == onset.tone_hz) else {
            continue;
        };
        let heard_at = ctx.epoch + Duration::from_secs_f64(onset.at.max(0.0));
        let offset = ctx.onset_offsets.get(who).copied().unwrap_or_default();
        let Some(sent) = ctx.log.burst_before(who, heard_at) else {
            continue;
        };
        let latency = heard_at.duration_since(sent).as_secs_f64() - offset;
        if latency > 0.0 && latency < PLAUSIBLE_LATENCY.as_secs_f64() {
            lock(&ctx.observed)
                .audio_latency_ms
                .push((heard_at, latency * 1000.0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rtp_timestamps_unwrap_across_the_32_bit_boundary() {
        let mut u = Unwrap::default();
        assert_eq!(u.extend(u32::MAX - 1499), u64::from(u32::MAX - 1499));
        assert_eq!(u.extend(1500), (1u64 << 32) + 1500);
        // A slightly older packet (reordered) does not wrap again.
        assert_eq!(u.extend(1000), (1u64 << 32) + 1000);
    }
}
