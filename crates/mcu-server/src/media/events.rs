//! What the room pipeline tells the outside: its events for the room actor, and the counts the
//! admin view and the tests read.

use crate::ids::ParticipantId;

use super::mixminus;
use super::tiers::TierStats;

/// What the pipeline tells the room actor.
#[derive(Debug)]
pub enum PipelineEvent {
    /// The participant's first video frame was decoded: its placeholder can go.
    FirstFrame(ParticipantId),
    /// Something in one participant's branch failed (e.g. undecodable media). Only that participant
    /// is affected.
    BranchFailed {
        participant: ParticipantId,
        error: String,
    },
    /// The recorder numbered `recording` failed (e.g. the disk is full); the call goes on.
    RecorderFailed { recording: u64, error: String },
    /// The shared part of the graph failed: the room cannot go on.
    Failed(String),
}

/// Counts that show what the graph holds, for the admin view and for tests that check that a
/// departed participant's resources were released.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct PipelineStats {
    /// Compositor sink pads, the background included.
    pub compositor_pads: usize,
    /// Microphones in the room's mix-minus.
    pub mix_voices: usize,
    /// Participants the mix-minus feeds.
    pub mix_listeners: usize,
    /// Voices in the mix now: all of them, unless the room has more than `max_mixed_voices`
    /// microphones (then those talking). Each has an Opus encoder of its own.
    pub mixed_voices: usize,
    /// Listeners whose voice is not in the mix: they hear the room's one shared encode of it.
    pub listeners_on_shared_mix: usize,
    /// Child elements/bins directly in the pipeline.
    pub pipeline_children: usize,
    /// Every element in the pipeline, inside bins too.
    pub elements: usize,
    /// Top-tier packets the encoder produced while someone watched, and packets its viewers
    /// missed because their writers fell behind.
    pub video_packets_out: u64,
    pub video_packets_dropped: u64,
    /// Every tier of the composite, the top one first.
    pub tiers: Vec<TierStats>,
    /// Composite frames produced, and how often the compositor fell behind (see media/pace.rs).
    pub composite_frames: u64,
    pub composite_stalls: u64,
    pub longest_composite_gap_ms: u64,
    /// Time since the compositor last produced a frame (since the room opened, before the first):
    /// more than a few frame periods means the room's pipeline has stopped.
    pub composite_idle_ms: u64,
    /// Composite frames not encoded because nothing in them had changed (media/still.rs).
    pub still_frames_skipped: u64,
    /// Composite frames not encoded to spare the machine (load.rs).
    pub frames_thinned: u64,
    /// What the room gives up now because the machine cannot keep up with it (load.rs).
    pub load_level: crate::load::Level,
    /// The canvas the room composites on now (canvas.rs), in pixels.
    pub canvas_width: u32,
    pub canvas_height: u32,
    /// Times the whole pipeline fell back from PLAYING (every picture freezes); should stay 0.
    pub lost_playing: u64,
    /// Voices muted by the server.
    pub muted_voices: usize,
    /// What the mix-minus did: frames, and audio that came too late to be heard.
    pub mix: mixminus::MixCounters,
}
