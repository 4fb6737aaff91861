//! Decodes a recording file with GStreamer, the way a player would, so tests can look at what was
//! recorded: the picture at any time, the sound, the timestamps.

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gstreamer as gst;
use gstreamer::prelude::*;
use gstreamer_app as gst_app;

use mcu_probe::probe::analysis::Rgb;

/// Keep the picture of one frame in this many, enough to look at any second of the recording.
const KEEP_EVERY: usize = 15;

pub struct VideoFrame {
    pub pts: Duration,
    pub width: usize,
    pub height: usize,
    /// Packed RGB, for the frames kept (see KEEP_EVERY); empty for the others.
    pub rgb: Vec<u8>,
}

impl VideoFrame {
    /// The average colour of a square of `2 * half` pixels around (cx, cy).
    pub fn average(&self, cx: usize, cy: usize, half: usize) -> Rgb {
        let (mut r, mut g, mut b, mut n) = (0u64, 0u64, 0u64, 0u64);
        for y in cy.saturating_sub(half)..(cy + half).min(self.height) {
            for x in cx.saturating_sub(half)..(cx + half).min(self.width) {
                let i = (y * self.width + x) * 3;
                r += u64::from(self.rgb[i]);
                g += u64::from(self.rgb[i + 1]);
                b += u64::from(self.rgb[i + 2]);
                n += 1;
            }
        }
        let n = n.max(1);
        Rgb((r / n) as u8, (g / n) as u8, (b / n) as u8)
    }
}

#[derive(Default)]
pub struct Decoded {
    pub video: Vec<VideoFrame>,
    /// Mono 48 kHz samples, and the timestamp of the first.
    pub audio: Vec<f32>,
    pub audio_start: Option<Duration>,
    pub error: Option<String>,
}

impl Decoded {
    /// From the first frame's start to the last frame's end.
    pub fn video_duration(&self, fps: f64) -> Duration {
        match (self.video.first(), self.video.last()) {
            (Some(a), Some(b)) => b.pts - a.pts + Duration::from_secs_f64(1.0 / fps),
            _ => Duration::ZERO,
        }
    }

    /// The longest time between two consecutive frames.
    pub fn longest_gap(&self) -> Duration {
        self.video
            .windows(2)
            .map(|w| w[1].pts - w[0].pts)
            .max()
            .unwrap_or_default()
    }

    /// The kept frame closest to `at`.
    pub fn frame_near(&self, at: Duration) -> Option<&VideoFrame> {
        self.video
            .iter()
            .filter(|f| !f.rgb.is_empty())
            .min_by_key(|f| (f.pts.as_millis() as i128 - at.as_millis() as i128).abs())
    }

    /// One second of audio starting `at` after the audio's first sample.
    pub fn audio_second(&self, at: Duration) -> &[f32] {
        let start = ((at.as_secs_f64() * 48_000.0) as usize).min(self.audio.len());
        let end = (start + 48_000).min(self.audio.len());
        &self.audio[start..end]
    }
}

/// Decodes every frame and sample of the WebM/Matroska file at `path`. A file cut short (the
/// server was killed) decodes up to where it ends; a decoding error is reported in `error`.
pub fn decode(path: &Path) -> Decoded {
    let description = format!(
        "filesrc location=\"{}\" ! matroskademux name=demux \
         demux.video_0 ! queue ! decodebin ! videoconvert ! video/x-raw,format=RGB ! appsink name=video sync=false \
         demux.audio_0 ! queue ! decodebin ! audioconvert ! audioresample \
           ! audio/x-raw,format=F32LE,rate=48000,channels=1,layout=interleaved ! appsink name=audio sync=false",
        path.display()
    );
    let pipeline = gst::parse::launch(&description)
        .expect("the decoding pipeline parses")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let decoded = Arc::new(Mutex::new(Decoded::default()));
    let sink = |name: &str| {
        pipeline
            .by_name(name)
            .and_then(|e| e.dynamic_cast::<gst_app::AppSink>().ok())
            .expect("the decoding pipeline has its appsinks")
    };
    let store = decoded.clone();
    sink("video").set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let (Some(buffer), Some(caps)) = (sample.buffer(), sample.caps()) else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let structure = caps.structure(0).expect("video caps have a structure");
                let width = structure.get::<i32>("width").unwrap_or(0) as usize;
                let height = structure.get::<i32>("height").unwrap_or(0) as usize;
                let pts = Duration::from_nanos(buffer.pts().map(|t| t.nseconds()).unwrap_or(0));
                let mut d = store.lock().unwrap();
                let keep = d.video.len() % KEEP_EVERY == 0;
                let rgb = if keep {
                    let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                    // RGB rows are padded to 4 bytes; 1280 and every tested width are multiples.
                    map.as_slice()[..width * height * 3].to_vec()
                } else {
                    Vec::new()
                };
                d.video.push(VideoFrame {
                    pts,
                    width,
                    height,
                    rgb,
                });
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    let store = decoded.clone();
    sink("audio").set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |s| {
                let sample = s.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                let mut d = store.lock().unwrap();
                if d.audio_start.is_none() {
                    d.audio_start = buffer.pts().map(|t| Duration::from_nanos(t.nseconds()));
                }
                d.audio.extend(
                    map.as_slice()
                        .chunks_exact(4)
                        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                );
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    pipeline
        .set_state(gst::State::Playing)
        .expect("the recording starts decoding");
    let bus = pipeline.bus().expect("a pipeline has a bus");
    let error = match bus.timed_pop_filtered(
        gst::ClockTime::from_seconds(120),
        &[gst::MessageType::Eos, gst::MessageType::Error],
    ) {
        Some(message) => match message.view() {
            gst::MessageView::Error(e) => Some(format!("{} ({:?})", e.error(), e.debug())),
            _ => None,
        },
        None => Some("decoding did not finish within 120 s".to_string()),
    };
    pipeline
        .set_state(gst::State::Null)
        .expect("the decoder stops");
    let mut d = std::mem::take(&mut *decoded.lock().unwrap());
    d.error = error;
    d
}
