//! Recording a room: the encoded composite (the very frames the viewers receive, no second video
//! encode) and the full audio mix, muxed into a WebM/Matroska file as it happens.
//!
//! The muxer and the file live in a pipeline of their own, fed through appsink → appsrc. The room
//! pipeline only gains two non-blocking appsinks, so a full or slow disk can fail or starve the
//! recording and never the call: a flow error in the file writer stays in the recorder's pipeline
//! instead of travelling back up the room's tee into the shared encoder.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::{mpsc, oneshot};

use super::{pipelines, PipelineEvent};
use crate::codec::VideoCodec;

/// How much the recorder may hold before the disk takes it; beyond this its appsrcs drop the
/// oldest data. Two seconds covers a disk that stalls briefly without holding much memory
/// (~500 KB of 2 Mbit/s video).
const RECORDER_QUEUE_MAX: Duration = Duration::from_secs(2);
/// The taps hand buffers over at once; these bounds only matter if the handover thread stalls.
const TAP_MAX_BUFFERS: u32 = 64;
/// The full mix is encoded for the file at a music-grade bitrate: it is the conference's record,
/// heard once by many, and costs little next to the video.
const RECORDING_AUDIO_BITRATE_BPS: u32 = 64_000;
/// Finishing writes the index and duration; a muxer that takes longer than this is stuck, and the
/// file (already playable, see recorder-*.txt) is left as it is.
pub const FINISH_TIMEOUT: Duration = Duration::from_secs(5);

/// The width and height an encoded sample's caps give, if they do.
fn frame_size(sample: &gst::Sample) -> Option<(u32, u32)> {
    let s = sample.caps()?.structure(0)?;
    let width = u32::try_from(s.get::<i32>("width").ok()?).ok()?;
    let height = u32::try_from(s.get::<i32>("height").ok()?).ok()?;
    Some((width, height))
}

/// Counts the recorder's traffic, for the room view and the tests.
#[derive(Debug, Default)]
pub struct RecorderCounters {
    pub video_frames: AtomicU64,
    pub audio_buffers: AtomicU64,
    /// Frames the recorder refused because the file had not started on a keyframe yet.
    pub skipped_before_keyframe: AtomicU64,
}

/// One stream tapped off a tee in the room pipeline.
struct Tap {
    tee: gst::Element,
    tee_pad: gst::Pad,
    sink: gst_app::AppSink,
}

/// A running recording.
pub struct Recorder {
    room_pipeline: gst::Pipeline,
    /// Taken by `finish`, which stops it itself once the file is complete.
    pipeline: Option<gst::Pipeline>,
    taps: Vec<Tap>,
    video_src: gst_app::AppSrc,
    audio_src: gst_app::AppSrc,
    eos: Option<oneshot::Receiver<()>>,
    bus_task: Option<tokio::task::JoinHandle<()>>,
    path: PathBuf,
    counters: Arc<RecorderCounters>,
}

impl Recorder {
    /// Opens `path` and starts recording from the room's `encoded` (video) and `fullmix_out`
    /// (audio) tees. Errors inside the recorder later arrive as `PipelineEvent::RecorderFailed`.
    /// The caller forces a keyframe: the file waits for one before it takes any frame.
    pub fn start(
        room_pipeline: &gst::Pipeline,
        codec: VideoCodec,
        size: (u32, u32),
        path: &Path,
        recording: u64,
        events: mpsc::UnboundedSender<PipelineEvent>,
        debug_dir: Option<PathBuf>,
    ) -> Result<Self> {
        let template = match codec {
            VideoCodec::Vp8 => pipelines::RECORDER_VP8,
            VideoCodec::H264 => pipelines::RECORDER_H264,
        };
        let description = template.fill(&[
            ("queue_max_ns", RECORDER_QUEUE_MAX.as_nanos().to_string()),
            ("audio_bitrate_bps", RECORDING_AUDIO_BITRATE_BPS.to_string()),
        ])?;
        let pipeline = gst::parse::launch(&description)
            .with_context(|| format!("parsing pipelines/{}", template.file))?
            .downcast::<gst::Pipeline>()
            .ok()
            .with_context(|| format!("pipelines/{} did not give a pipeline", template.file))?;
        pipeline.set_property("name", format!("recorder-{}", room_pipeline.name()));
        let element = |name: &str| {
            pipeline
                .by_name(name)
                .with_context(|| format!("pipelines/{} has no element {name}", template.file))
        };
        let appsrc = |name: &str| -> Result<gst_app::AppSrc> {
            element(name)?
                .dynamic_cast::<gst_app::AppSrc>()
                .ok()
                .with_context(|| format!("{name} in pipelines/{} is not an appsrc", template.file))
        };
        let video_src = appsrc("video_src")?;
        let audio_src = appsrc("audio_src")?;
        let file = element("file")?;
        file.set_property("location", path.to_string_lossy().to_string());
        // What reaches the file, in the metrics.
        file.static_pad("sink")
            .context("a filesink has a sink pad")?
            .add_probe(gst::PadProbeType::BUFFER, |_, info| {
                if let Some(buffer) = info.buffer() {
                    crate::metrics::metrics()
                        .recording_bytes
                        .inc_by(buffer.size() as u64);
                }
                gst::PadProbeReturn::Ok
            });

        let (eos_tx, eos_rx) = oneshot::channel();
        let bus_task = watch_bus(&pipeline, recording, events, eos_tx, debug_dir)?;
        if let Err(e) = pipeline.set_state(gst::State::Playing) {
            let _ = pipeline.set_state(gst::State::Null);
            // The state change failure says little; the bus says which file could not be opened.
            bus_task.abort();
            return Err(e).with_context(|| format!("opening {} for recording", path.display()));
        }

        let mut recorder = Recorder {
            room_pipeline: room_pipeline.clone(),
            pipeline: Some(pipeline),
            taps: Vec::new(),
            video_src,
            audio_src,
            eos: Some(eos_rx),
            bus_task: Some(bus_task),
            path: path.to_path_buf(),
            counters: Arc::new(RecorderCounters::default()),
        };
        if let Err(e) = recorder.attach_taps(size) {
            recorder.abort();
            return Err(e);
        }
        Ok(recorder)
    }

    pub fn counters(&self) -> &Arc<RecorderCounters> {
        &self.counters
    }

    /// Taps the room; the file starts at the first keyframe of `size` (frames of another size, still
    /// on their way while the canvas grows to the full frame, are skipped: the muxer would refuse
    /// a change of size).
    fn attach_taps(&mut self, size: (u32, u32)) -> Result<()> {
        // Audio waits for the first video keyframe too, so the file starts with both.
        let started = Arc::new(AtomicBool::new(false));
        let video = {
            let (src, started, counters) = (
                self.video_src.clone(),
                started.clone(),
                self.counters.clone(),
            );
            move |sample: gst::Sample| {
                let is_keyframe = sample
                    .buffer()
                    .is_some_and(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT));
                if !started.load(Ordering::Acquire) {
                    if !is_keyframe || frame_size(&sample).is_some_and(|s| s != size) {
                        counters
                            .skipped_before_keyframe
                            .fetch_add(1, Ordering::Relaxed);
                        return;
                    }
                    started.store(true, Ordering::Release);
                }
                counters.video_frames.fetch_add(1, Ordering::Relaxed);
                let _ = src.push_sample(&in_running_time(&sample));
            }
        };
        let audio = {
            let (src, counters) = (self.audio_src.clone(), self.counters.clone());
            move |sample: gst::Sample| {
                if started.load(Ordering::Acquire) {
                    counters.audio_buffers.fetch_add(1, Ordering::Relaxed);
                    let _ = src.push_sample(&in_running_time(&sample));
                }
            }
        };
        self.tap("encoded", "recorder-video-tap", video)?;
        self.tap("fullmix_out", "recorder-audio-tap", audio)?;
        Ok(())
    }

    /// Adds an appsink on a new branch of the room's tee `tee_name`, handing every sample to
    /// `forward` on the tee's streaming thread (which must therefore never block: the appsrcs it
    /// pushes into are leaky).
    fn tap(
        &mut self,
        tee_name: &str,
        sink_name: &str,
        forward: impl Fn(gst::Sample) + Send + Sync + 'static,
    ) -> Result<()> {
        // Among the room pipeline's own elements only: each tier's bin has an encoder of the same
        // description, with a tee of the same name inside, and the recording takes the top tier.
        let tee = self
            .room_pipeline
            .children()
            .into_iter()
            .find(|e| e.name() == tee_name)
            .with_context(|| format!("the room pipeline has no tee named {tee_name}"))?;
        // async=false: a sink that prerolls when added to a playing room would send the whole
        // room back to PAUSED until it does (every picture freezes).
        let sink = gst_app::AppSink::builder()
            .name(sink_name)
            .sync(false)
            .async_(false)
            .max_buffers(TAP_MAX_BUFFERS)
            .drop(true)
            .build();
        sink.set_callbacks(
            gst_app::AppSinkCallbacks::builder()
                .new_sample(move |sink| {
                    if let Ok(sample) = sink.pull_sample() {
                        forward(sample);
                    }
                    Ok(gst::FlowSuccess::Ok)
                })
                .build(),
        );
        self.room_pipeline
            .add(&sink)
            .with_context(|| format!("adding {sink_name} to the room"))?;
        let Some(tee_pad) = tee.request_pad_simple("src_%u") else {
            let _ = self.room_pipeline.remove(&sink);
            anyhow::bail!("{tee_name} gave no pad for the recorder");
        };
        let tap = Tap { tee, tee_pad, sink };
        // Started before it is linked: the tee is already pushing, and a buffer that meets a sink
        // not yet running comes back FLUSHING, which would stop the room's full mix (or its
        // encoder) for good. Unlinked, the tee's new pad just reports not-linked meanwhile.
        let linked = tap
            .sink
            .sync_state_with_parent()
            .with_context(|| format!("starting {sink_name}"))
            .and_then(|_| {
                tap.sink
                    .static_pad("sink")
                    .context("an appsink has a sink pad")
            })
            .and_then(|pad| {
                tap.tee_pad
                    .link(&pad)
                    .map(|_| ())
                    .map_err(|e| anyhow::anyhow!("linking {tee_name} to {sink_name}: {e:?}"))
            });
        if let Err(e) = linked {
            self.remove_tap(tap);
            return Err(e);
        }
        self.taps.push(tap);
        Ok(())
    }

    fn remove_tap(&self, tap: Tap) {
        let _ = tap.sink.set_state(gst::State::Null);
        if let Some(peer) = tap.tee_pad.peer() {
            let _ = tap.tee_pad.unlink(&peer);
        }
        tap.tee.release_request_pad(&tap.tee_pad);
        let _ = self.room_pipeline.remove(&tap.sink);
    }

    fn detach_taps(&mut self) {
        for tap in std::mem::take(&mut self.taps) {
            self.remove_tap(tap);
        }
    }

    /// Stops taking media and returns what finishes the file: end of stream through the muxer
    /// (which writes the index and the duration), then the recorder's pipeline stops. The room
    /// pipeline is left untouched from here on, so the future may run on any task.
    pub fn finish(mut self) -> impl std::future::Future<Output = Result<()>> + Send + 'static {
        self.detach_taps();
        let counters = &self.counters;
        tracing::info!(
            file = %self.path.display(),
            video_frames = counters.video_frames.load(Ordering::Relaxed),
            audio_buffers = counters.audio_buffers.load(Ordering::Relaxed),
            skipped_before_keyframe = counters.skipped_before_keyframe.load(Ordering::Relaxed),
            "recorder finishing"
        );
        let _ = self.video_src.end_of_stream();
        let _ = self.audio_src.end_of_stream();
        let eos = self.eos.take();
        // Taken out so that dropping `self` does not stop the muxer before it has finished.
        let pipeline = self.pipeline.take();
        let bus_task = self.bus_task.take();
        let path = self.path.clone();
        async move {
            let finished = match eos {
                Some(eos) => tokio::time::timeout(FINISH_TIMEOUT, eos).await,
                None => Ok(Ok(())),
            };
            if let Some(pipeline) = pipeline {
                let _ = pipeline.set_state(gst::State::Null);
            }
            if let Some(task) = bus_task {
                task.abort();
            }
            match finished {
                Ok(Ok(())) => Ok(()),
                Ok(Err(_)) => anyhow::bail!(
                    "the recorder of {} failed before it finished",
                    path.display()
                ),
                Err(_) => anyhow::bail!(
                    "the recorder of {} did not finish within {FINISH_TIMEOUT:?}; the file plays but has no index",
                    path.display()
                ),
            }
        }
    }

    /// Stops at once, without finishing the file (after the recorder failed).
    pub fn abort(mut self) {
        self.detach_taps();
        // Drop stops the pipeline.
    }
}

/// The sample with its timestamps turned into the room's running time, the one clock both of
/// the recording's streams share. Taken as they are, they would not agree: x264enc stamps its
/// frames 1000 hours ahead (room for negative decode times) and says so only in its segment,
/// which the recorder's appsrcs do not pass on; the file's video then started 1000 hours after
/// its audio, and no player could interleave the two.
fn in_running_time(sample: &gst::Sample) -> gst::Sample {
    let (Some(buffer), Some(segment)) = (
        sample.buffer(),
        sample
            .segment()
            .and_then(|s| s.downcast_ref::<gst::ClockTime>()),
    ) else {
        return sample.clone();
    };
    // A shallow copy: the new buffer shares the frame's memory.
    let mut retimed = buffer.copy();
    {
        let retimed = retimed.make_mut();
        retimed.set_pts(buffer.pts().and_then(|t| segment.to_running_time(t)));
        retimed.set_dts(buffer.dts().and_then(|t| segment.to_running_time(t)));
    }
    let caps = sample.caps_owned();
    let mut builder = gst::Sample::builder().buffer(&retimed);
    if let Some(caps) = &caps {
        builder = builder.caps(caps);
    }
    builder.build()
}

impl Drop for Recorder {
    fn drop(&mut self) {
        self.detach_taps();
        // A pipeline dropped while not in NULL aborts the process.
        if let Some(pipeline) = self.pipeline.take() {
            let _ = pipeline.set_state(gst::State::Null);
        }
        if let Some(task) = self.bus_task.take() {
            task.abort();
        }
    }
}

/// Errors become `RecorderFailed` for the room; end of stream (the file finished) fires `eos`.
fn watch_bus(
    pipeline: &gst::Pipeline,
    recording: u64,
    events: mpsc::UnboundedSender<PipelineEvent>,
    eos: oneshot::Sender<()>,
    debug_dir: Option<PathBuf>,
) -> Result<tokio::task::JoinHandle<()>> {
    let bus = pipeline.bus().context("a pipeline always has a bus")?;
    let weak = pipeline.downgrade();
    let mut graphs = super::bus::GraphWriter::new(debug_dir);
    let mut eos = Some(eos);
    Ok(tokio::spawn(async move {
        let mut messages = bus.stream();
        while let Some(message) = messages.next().await {
            match message.view() {
                gst::MessageView::Error(err) => {
                    if let Some(pipeline) = weak.upgrade() {
                        graphs.write(&pipeline).await;
                    }
                    let text = format!(
                        "{}: {}",
                        err.src().map(|s| s.name().to_string()).unwrap_or_default(),
                        err.error()
                    );
                    tracing::debug!("recorder error details: {:?}", err.debug());
                    let _ = events.send(PipelineEvent::RecorderFailed {
                        recording,
                        error: text,
                    });
                    break;
                }
                gst::MessageView::Eos(_) => {
                    if let Some(eos) = eos.take() {
                        let _ = eos.send(());
                    }
                }
                _ => {}
            }
        }
    }))
}
