//! One room's media graph: a single `gst::Pipeline` that decodes every participant, composites the
//! video into one frame, encodes it once, and mixes each participant's audio minus their own.
//! Only the room actor holds a `RoomPipeline`, so every change to the graph happens on one task.
//! Packets enter through appsrcs (pushed by per-track tasks) and leave through appsinks (drained by
//! writer tasks): the packet path never passes through the actor.

mod audio;
mod bus;
#[cfg(test)]
mod camera_tests;
mod encode_time;
mod events;
mod look;
mod loudest;
mod mixminus;
mod output;
mod pace;
pub mod pipelines;
mod recorder;
mod routes;
mod sink;
mod still;
mod tiers;
mod tiles;
mod video;

use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use crate::codec::VideoCodec;
use crate::config::MediaConfig;
use crate::ids::ParticipantId;
use crate::layout::{Arrangement, Rect};
use crate::speaker::levels::Levels;
pub use events::{PipelineEvent, PipelineStats};
pub use sink::FeedReader;
pub use tiers::TierStats;
use tiers::Tiers;

pub use video::{live_tile_filters, InputSignals};

/// How long an appsrc may hold packets the pipeline has not taken yet. Beyond this the oldest are
/// dropped (leaky downstream): late media is worthless in a call, and memory stays bounded.
pub const INPUT_QUEUE_MAX: std::time::Duration = std::time::Duration::from_millis(500);

pub struct RoomPipeline {
    pipeline: gst::Pipeline,
    /// Hands the composite to the lower tiers.
    composite_tee: gst::Element,
    codec: VideoCodec,
    media: MediaConfig,
    events: mpsc::UnboundedSender<PipelineEvent>,
    bus_task: tokio::task::JoinHandle<()>,
    tiles: tiles::Tiles,
    audio: audio::AudioGraph,
    /// The composite's encodes, for every viewer.
    tiers: Tiers,
    pace: Arc<pace::Pace>,
    stillness: Arc<still::Stillness>,
    lost_playing: Arc<std::sync::atomic::AtomicU64>,
    recorder: Option<recorder::Recorder>,
    /// What the room gives up to the machine's load now (load.rs).
    load_level: crate::load::Level,
    /// Each microphone's loudness, for the speaker decision (speaker/levels.rs).
    levels: Arc<Levels>,
}

/// Composite frames counted since the room opened, for load.rs: made by the compositor, handed
/// to the encoders (neither still nor thinned), and taken by the top encoder from its queue.
#[derive(Debug, Clone, Copy, Default)]
pub struct FrameCounts {
    pub composited: u64,
    pub handed: u64,
    pub encoded: u64,
}

impl RoomPipeline {
    /// Builds the room's pipeline and starts it. Viewers read the composite's RTP packets
    /// through `composite`.
    pub fn start(
        name: &str,
        media: &MediaConfig,
        codec: VideoCodec,
        events: mpsc::UnboundedSender<PipelineEvent>,
    ) -> Result<Self> {
        let specs = media.tiers();
        let timestamp_offset = tiers::timestamp_offset();
        let encoder = tiers::encoder_description(
            codec,
            specs[0],
            media.fps,
            timestamp_offset,
            tiers::KEYFRAME_MAX_DIST_SECONDS,
        )?;
        // The room opens on its first canvas (see canvas.rs); media/output.rs resizes it later.
        let (width, height) =
            crate::canvas::size(output::initial_step(media), media.width, media.height);
        let description = pipelines::ROOM.fill(&[
            ("width", width.to_string()),
            ("height", height.to_string()),
            ("fps", media.fps.to_string()),
            ("mixer_latency_ns", ms_to_ns(media.mixer_latency_ms)),
            (
                "video_branch_latency_ns",
                ms_to_ns(media.video_branch_latency_ms()),
            ),
            ("queue_max_ns", INPUT_QUEUE_MAX.as_nanos().to_string()),
            ("encoder", encoder),
        ])?;
        let pipeline = gst::parse::launch(&description)
            .context("parsing pipelines/room.txt")?
            .downcast::<gst::Pipeline>()
            .ok()
            .context("pipelines/room.txt did not give a pipeline")?;
        pipeline.set_property("name", format!("room-{name}"));
        let element = |n: &str| {
            pipeline
                .by_name(n)
                .with_context(|| format!("pipelines/room.txt has no element named {n}"))
        };
        let compositor = element("compositor")?;
        let composite_tee = element("composite")?;
        let fullmix = element("fullmix")?;
        let mut tiers = Tiers::new(
            specs,
            codec,
            media.fps,
            timestamp_offset,
            element("encoder")?,
            &element("video_out")?,
        )?;
        let stillness = still::Stillness::new();
        stillness.gate(
            &element("canvas_caps")?
                .static_pad("src")
                .context("canvas_caps has no src pad")?,
        );
        let tiles = tiles::Tiles::new(&pipeline, media, stillness.clone())?;
        let (width, height, kbps) = tiles.canvas();
        tiers.resize_top(width, height, kbps);

        let lost_playing = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let bus_task = bus::watch(
            &pipeline,
            events.clone(),
            lost_playing.clone(),
            media.debug_dir.clone(),
        )?;
        let pace = Arc::new(pace::Pace::new(media.fps));
        pace::watch(&compositor, pace.clone(), name)?;
        pace::watch_encoder(&element("encoder_queue")?, pace.clone())?;
        // From here on the pipeline may be playing: every early return must stop it first (a
        // pipeline dropped while playing aborts the process). The mixing thread starts once the
        // pipeline's clock runs, since it keeps time by it.
        let levels = Arc::new(Levels::default());
        let audio = start_live(&pipeline)
            .with_context(|| format!("starting the pipeline of room {name}"))
            .and_then(|_| {
                audio::AudioGraph::start(pipeline.clone(), fullmix, media.clone(), levels.clone())
            });
        let audio = match audio {
            Ok(audio) => audio,
            Err(e) => {
                let _ = pipeline.set_state(gst::State::Null);
                bus_task.abort();
                return Err(e);
            }
        };
        let room = RoomPipeline {
            levels,
            audio,
            pipeline,
            composite_tee,
            codec,
            media: media.clone(),
            events,
            bus_task,
            tiles,
            tiers,
            pace,
            stillness,
            lost_playing,
            recorder: None,
            load_level: crate::load::Level::Full,
        };
        Ok(room)
    }

    /// Where the room's microphones' levels gather (decoded here, stamped by their clients).
    pub fn levels(&self) -> Arc<Levels> {
        self.levels.clone()
    }

    /// A reader of `tier`'s RTP packets from now on (0 is the top tier), building or reopening
    /// the tier when nobody was watching it.
    pub fn composite(&mut self, tier: usize) -> Result<FeedReader> {
        let room = self.pipeline.name();
        let room = room.strip_prefix("room-").unwrap_or(&room);
        // A new or reopened tier starts on a keyframe, which needs a frame to be encoded.
        self.stillness.changed(1);
        self.tiers
            .reader(tier, &self.pipeline, &self.composite_tee, room)
    }

    /// How many tiers the composite has (the top one included).
    pub fn tier_count(&self) -> usize {
        self.tiers.count()
    }

    /// Shuts the lower tiers nobody has watched for a while.
    pub fn shut_idle_tiers(&mut self, now: std::time::Instant) {
        self.tiers.shut_idle(now);
    }

    /// Shows a dark tile with the participant's name until their video arrives; the name is also
    /// their camera's label.
    pub fn add_placeholder(&mut self, who: ParticipantId, name: &str) -> Result<()> {
        self.tiles.set_name(who, name);
        let bin = video::placeholder_bin(who, self.media.fps)?;
        self.tiles.add_placeholder(who, bin)
    }

    pub fn remove_placeholder(&mut self, who: ParticipantId) {
        self.tiles.remove_placeholder(who);
    }

    /// Adds a decoding branch for a participant's camera and returns where to push its RTP
    /// packets. A second camera track from the same participant replaces the first.
    pub fn add_video_input(
        &mut self,
        who: ParticipantId,
        codec: VideoCodec,
        payload_type: u8,
        signals: Arc<InputSignals>,
    ) -> Result<InputHandle> {
        self.remove_video_input(who);
        let (bin, appsrc) = video::input_bin(
            who,
            codec,
            payload_type,
            signals.clone(),
            self.events.clone(),
        )?;
        self.tiles.add_camera(who, bin, signals)?;
        Ok(InputHandle {
            appsrc,
            levels: None,
        })
    }

    pub fn remove_video_input(&mut self, who: ParticipantId) {
        self.tiles.remove_camera(who);
    }

    /// Adds a decoding branch for a participant's microphone, mixed into everyone's audio but
    /// their own, and returns where to push its RTP packets.
    pub fn add_audio_input(&mut self, who: ParticipantId, payload_type: u8) -> Result<InputHandle> {
        let appsrc = self.audio.add_input(who, payload_type)?;
        Ok(InputHandle {
            appsrc,
            levels: Some((who, self.levels.clone())),
        })
    }

    /// Creates what `who` hears (everyone else) and returns its Opus RTP packets.
    pub fn add_listener(&mut self, who: ParticipantId) -> Result<mpsc::Receiver<Bytes>> {
        self.audio.add_listener(who)
    }

    /// A watcher hears the room's shared encode of the full mix: no element is added for it.
    pub fn add_watcher(&mut self, who: ParticipantId) -> mpsc::Receiver<Bytes> {
        self.audio.add_watcher(who)
    }

    pub fn remove_watcher(&mut self, who: ParticipantId) {
        self.audio.remove_participant(who);
    }

    /// Server-side mute: `who`'s audio leaves (or rejoins) every mix.
    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        self.audio.set_muted(who, muted);
    }

    /// Shows `who` as muted (or not) on their label; `muted` also covers a participant who muted
    /// their own microphone, which the server still mixes (as silence).
    pub fn show_muted(&mut self, who: ParticipantId, muted: bool) {
        self.tiles.set_muted(who, muted);
    }

    /// Releases everything the participant held in the graph.
    pub fn remove_participant(&mut self, who: ParticipantId) {
        self.remove_placeholder(who);
        self.remove_video_input(who);
        self.audio.remove_participant(who);
        self.tiles.forget(who);
    }

    /// Frames decoded so far from `who`'s camera, if it has one.
    pub fn camera_frames(&self, who: ParticipantId) -> Option<u64> {
        let signals = self.tiles.camera_signals(who)?;
        Some(
            signals
                .frames_decoded
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Moves each participant's tiles (video and placeholder) to their place in `arrangement`,
    /// on the nominal frame (`--width`×`--height`), and chooses the canvas again for them.
    pub fn apply_layout(&mut self, arrangement: &Arrangement) {
        self.tiles.apply_layout(arrangement);
        self.refresh_canvas(std::time::Instant::now());
    }

    /// Sizes the canvas to what the cameras show now (see canvas.rs): grows it at once when a
    /// camera needs more, shrinks it after a while of needing less, and keeps the full frame while
    /// recording. Called on layout changes, first frames and once a second.
    pub fn refresh_canvas(&mut self, now: std::time::Instant) {
        let pinned = self.recorder.is_some();
        if let Some((width, height, kbps)) = self.tiles.refresh_canvas(pinned, now) {
            self.tiers.resize_top(width, height, kbps);
        }
    }

    /// The canvas's size now, in pixels: what the top tier encodes.
    pub fn canvas_size(&self) -> (u32, u32) {
        let (width, height, _) = self.tiles.canvas();
        (width, height)
    }

    /// `rect` of the nominal frame in the canvas's pixels now.
    pub fn canvas_rect(&self, rect: Rect) -> Rect {
        self.tiles.scale(rect)
    }

    /// The frame size each of `who`'s tiles (placeholder, then camera) has negotiated, i.e. what
    /// the compositor is being given now: lets a check see that a layout took effect.
    pub fn tile_sizes(&self, who: ParticipantId) -> Vec<(i32, i32)> {
        self.tiles.sizes(who)
    }

    /// Asks `tier`'s encoder for a keyframe (with its headers, so a new viewer can start).
    pub fn force_keyframe(&self, tier: usize) {
        // The keyframe is the next frame encoded: let it through even if nothing changed.
        self.stillness.changed(1);
        self.tiers.force_keyframe(tier);
    }

    /// Starts recording the composite and the full mix into `path` (see media/recorder.rs), from
    /// a keyframe forced now. `recording` numbers it in later `RecorderFailed` events.
    pub fn start_recording(&mut self, path: &std::path::Path, recording: u64) -> Result<()> {
        anyhow::ensure!(self.recorder.is_none(), "this room is already recording");
        // A muxer refuses a change of size: the recording takes the full frame, and the canvas
        // stays on it while the recording runs. The file starts at the first keyframe that size.
        if let Some((width, height, kbps)) =
            self.tiles.refresh_canvas(true, std::time::Instant::now())
        {
            self.tiers.resize_top(width, height, kbps);
        }
        let recorder = recorder::Recorder::start(
            &self.pipeline,
            self.codec,
            self.canvas_size(),
            path,
            recording,
            self.events.clone(),
            self.media.debug_dir.clone(),
        )?;
        self.recorder = Some(recorder);
        // A file keeps a frame every frame period, still or not.
        self.stillness.set_every_frame(true);
        // The recording takes the top tier.
        self.force_keyframe(0);
        Ok(())
    }

    /// Stops taking media into the recording and returns what completes its file (see
    /// `Recorder::finish`); `None` when nothing was recording.
    pub fn stop_recording(
        &mut self,
    ) -> Option<impl std::future::Future<Output = Result<()>> + Send + 'static> {
        self.stillness.set_every_frame(false);
        self.recorder.take().map(recorder::Recorder::finish)
    }

    /// Drops a failed recorder without finishing its file.
    pub fn abort_recording(&mut self) {
        self.stillness.set_every_frame(false);
        if let Some(recorder) = self.recorder.take() {
            recorder.abort();
        }
    }

    /// Video frames and audio buffers written to the current recording so far.
    pub fn recording_counts(&self) -> Option<(u64, u64)> {
        self.recorder.as_ref().map(|r| {
            let c = r.counters();
            (
                c.video_frames.load(std::sync::atomic::Ordering::Relaxed),
                c.audio_buffers.load(std::sync::atomic::Ordering::Relaxed),
            )
        })
    }

    pub fn frame_counts(&self) -> FrameCounts {
        FrameCounts {
            composited: self.pace.frames(),
            handed: self.stillness.passed(),
            encoded: self.pace.encoded(),
        }
    }

    /// Gives up (or takes back) what `level` says: a third of the composite frames' encodes, then
    /// the canvas's size (from the next canvas decision; not while recording, whose canvas is the
    /// full frame and whose every frame is encoded).
    pub fn apply_load(&mut self, level: crate::load::Level) {
        self.load_level = level;
        let (kept, of) = level.frames_kept();
        self.stillness.set_keep(kept, of);
        self.tiles.set_min_canvas_step(level.min_canvas_step());
    }

    pub fn stats(&self) -> PipelineStats {
        let audio = self.audio.stats();
        let tiers = self.tiers.stats();
        let top = tiers.first().cloned().unwrap_or_default();
        PipelineStats {
            compositor_pads: self.tiles.compositor_pads(),
            mix_voices: audio.voices,
            mix_listeners: audio.listeners,
            mixed_voices: audio.mixed_voices,
            listeners_on_shared_mix: audio.listeners_on_shared_mix,
            pipeline_children: self.pipeline.children().len(),
            elements: self
                .pipeline
                .iterate_recurse()
                .into_iter()
                .flatten()
                .count(),
            video_packets_out: top.packets_out,
            video_packets_dropped: top.packets_dropped,
            tiers,
            composite_frames: self.pace.frames(),
            composite_stalls: self.pace.stalls(),
            longest_composite_gap_ms: self.pace.longest_gap_ms(),
            composite_idle_ms: self.pace.idle_ms(),
            still_frames_skipped: self.stillness.dropped(),
            frames_thinned: self.stillness.thinned(),
            load_level: self.load_level,
            canvas_width: self.canvas_size().0,
            canvas_height: self.canvas_size().1,
            lost_playing: self.lost_playing.load(std::sync::atomic::Ordering::Relaxed),
            muted_voices: audio.muted_voices,
            mix: audio.counters,
        }
    }

    /// The elements and branches (with their state) that have not reached PLAYING; empty when
    /// the whole room pipeline plays.
    pub fn not_playing(&self) -> Vec<String> {
        std::iter::once(self.pipeline.clone().upcast::<gst::Element>())
            .chain(self.pipeline.iterate_recurse().into_iter().flatten())
            .filter(|e| e.current_state() != gst::State::Playing)
            .map(|e| format!("{} ({:?})", e.name(), e.current_state()))
            .collect()
    }
}

impl Drop for RoomPipeline {
    fn drop(&mut self) {
        // The recorder's taps live in the room pipeline: out first.
        self.abort_recording();
        // Dropping a pipeline that is not in NULL aborts the process (g_mutex_clear on a held lock).
        let _ = self.pipeline.set_state(gst::State::Null);
        self.bus_task.abort();
    }
}

/// Starts a live pipeline with its clock and base time in place before anything runs.
///
/// Left to itself, a pipeline going to PLAYING hands every element the clock first and its base
/// time later, one element after another. A live aggregator (the compositor, a mixer) that gets
/// the clock in between waits for "base time 0 plus its running time", a moment long past, and
/// so produces seconds of output at once; when its real base time arrives it is that far ahead
/// and falls silent for as long. Seen on a loaded 2-core machine: the full mix ran 20 s ahead at
/// start-up and the room's recording got no audio.
pub fn start_live(pipeline: &gst::Pipeline) -> Result<gst::StateChangeSuccess> {
    let clock = gst::SystemClock::obtain();
    pipeline.use_clock(Some(&clock));
    // No start time: the pipeline keeps the base time set here instead of choosing its own.
    pipeline.set_start_time(gst::ClockTime::NONE);
    let base_time = clock.time();
    pipeline.set_base_time(base_time);
    for element in pipeline.iterate_recurse().into_iter().flatten() {
        element.set_base_time(base_time);
    }
    Ok(pipeline.set_state(gst::State::Playing)?)
}

/// Live test sources (the placeholder's videotestsrc, a listener's silence) stamp their buffers
/// from zero when they start, so one started an hour into a room would first race through an
/// hour of frames the compositor drops as late. Start their timestamps at the pipeline's current
/// running time instead (`timestamp-offset` applies before the source syncs to the clock; a pad
/// offset would apply after, and put the buffers in the future).
pub(crate) fn align_test_sources(pipeline: &gst::Pipeline, bin: &gst::Bin) {
    let (Some(clock), Some(base)) = (pipeline.clock(), pipeline.base_time()) else {
        return;
    };
    let Some(now) = clock.time().checked_sub(base) else {
        return;
    };
    let offset = i64::try_from(now.nseconds()).unwrap_or(i64::MAX);
    for element in bin.iterate_recurse().into_iter().flatten() {
        let is_test_source = element
            .factory()
            .is_some_and(|f| matches!(f.name().as_str(), "videotestsrc" | "audiotestsrc"));
        if is_test_source {
            element.set_property("timestamp-offset", offset);
        }
    }
}

pub(crate) fn ms_to_ns(ms: u32) -> String {
    (u64::from(ms) * 1_000_000).to_string()
}

/// Where a session pushes one incoming track's RTP packets. Cheap to clone; pushing after the
/// branch was removed fails with `Flushing`, which tells the pump to stop.
#[derive(Clone)]
pub struct InputHandle {
    appsrc: gst_app::AppSrc,
    /// A microphone's: where the levels its client stamps on packets go (speaker/levels.rs).
    levels: Option<(ParticipantId, Arc<Levels>)>,
}

impl InputHandle {
    pub fn push(&self, packet: Bytes) -> Result<(), gst::FlowError> {
        video::push_rtp(&self.appsrc, packet)
    }

    /// An RFC 6464 level (0–127, -dBov) the client stamped on a packet of this microphone.
    pub fn stamped_level(&self, level: u8) {
        if let Some((who, levels)) = &self.levels {
            levels.stamped(*who, level);
        }
    }
}
