//! A room is an actor: one task that owns the room's pipeline and its list of participants, and
//! changes them only in answer to a `RoomCommand` or a pipeline event. Sessions hold a
//! `RoomHandle` (channel senders); nobody shares the room's state behind a lock.
//!
//! The room owns membership (`members.rs`), the media graph, moderation, and two components: the recording
//! (`recording.rs`, driven from this task because it taps the pipeline) and chat and files
//! (`sharing/`, a task of its own with its own commands, since it never touches the pipeline).

mod error;
mod handle;
pub mod keyframe;
mod members;
mod moderation;
mod recording;
pub mod registry;
mod sharing;
mod stage;
mod watchers;

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::Instrument;

use crate::codec::VideoCodec;
use crate::config::ServerConfig;
use crate::ids::{ParticipantId, RoomId};
use crate::load::{Governor, Second};
use crate::media::{FeedReader, FrameCounts, PipelineEvent, RoomPipeline};
use crate::protocol::layout::LayoutRequest;
use crate::protocol::{ErrorCode, Layout, RecordingState, ServerMessage};
use crate::recordings::{RecordingInfo, RecordingStore};
pub use error::RoomError;
use handle::RoomCommand;
pub use handle::{
    Feeds, Joined, LinkView, ParticipantView, Role, RoomHandle, RoomSnapshot, TrackKind,
};
use keyframe::{Decision, KeyframeThrottle, DEFAULT_MIN_KEYFRAME_INTERVAL};
use members::Participant;
use recording::{Recording, StopReply};
use registry::Registry;
pub use sharing::{Download, Upload};
use sharing::{FileLimits, SharingTask};
use stage::Stage;

/// Commands queued for one room. Sessions wait at most this long for room answers, so a stuck
/// room cannot hang a WebSocket forever.
pub const COMMAND_QUEUE: usize = 256;
/// Events queued for one participant's session. A session that lets this many pile up is stuck
/// (its socket no longer drains), and is dropped from the room rather than slowing it. Room above
/// the largest chat backlog plus two messages per shared file, which a subscriber gets at once.
pub const EVENT_QUEUE: usize = 512;
/// How often the room shuts the lower tiers nobody watches any more, and sizes its canvas to its
/// cameras again.
const TIER_CHECK: Duration = Duration::from_secs(1);
/// A room command that takes longer than this is logged: it is the actor's watchdog.
const SLOW_COMMAND: Duration = Duration::from_millis(200);

struct Room {
    id: RoomId,
    config: Arc<ServerConfig>,
    codec: VideoCodec,
    pipeline: RoomPipeline,
    /// In join order, which is also tile order.
    participants: Vec<Participant>,
    /// WHEP players: they receive the composite and the full mix, and have no tile.
    watchers: Vec<watchers::Watcher>,
    /// The layout, the active speaker, and where they put everyone.
    stage: Stage,
    next_id: u64,
    /// One per tier: a tier's viewers share its keyframes.
    throttles: Vec<KeyframeThrottle>,
    recording: Recording,
    sharing: SharingTask,
    /// Steps the room down when the machine cannot keep up with it, and back up (load.rs).
    governor: Governor,
    /// When the governor last looked, and the frame counts then.
    load_mark: (std::time::Instant, FrameCounts),
}

/// Runs GStreamer work (elements added and removed, state changes: milliseconds each, and
/// much longer on a saturated machine) from the room's task without stalling the other tasks of
/// its tokio worker: the worker hands its queue to another thread first. Measured before: during
/// a 40-room flood, a leave in a quiet room waited 4.4 s.
fn off_async_workers<R>(work: impl FnOnce() -> R) -> R {
    use tokio::runtime::{Handle, RuntimeFlavor};
    match Handle::try_current() {
        Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
            tokio::task::block_in_place(work)
        }
        _ => work(),
    }
}

/// Gives the memory a closed room freed back to the system. glibc keeps freed memory in its
/// per-thread arenas: measured before, RSS stayed at 1.55 GB after three 40-room floods had
/// ended, and `malloc_trim(0)` brought it to 147 MB. It walks the heap (a few ms), once per room.
fn return_freed_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only releases free pages; it takes no pointers and is thread-safe.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Starts a room actor. The room removes itself from `registry` when its last participant leaves.
pub(crate) fn spawn(
    id: RoomId,
    config: Arc<ServerConfig>,
    store: Arc<RecordingStore>,
    registry: Weak<Registry>,
    generation: u64,
) -> Result<RoomHandle> {
    // A root span: the room outlives the session whose join created it.
    let span = tracing::info_span!(parent: None, "room", room = %id);
    let codec = config.codec_for_room(id.as_str());
    let file_store = crate::files::FileStore::open(&id, config.keep_files.as_deref(), generation)?;
    let (pipeline_tx, pipeline_rx) = mpsc::unbounded_channel();
    let pipeline = match RoomPipeline::start(id.as_str(), &config.media, codec, pipeline_tx) {
        Ok(pipeline) => pipeline,
        Err(e) => {
            file_store.close();
            return Err(e);
        }
    };
    let tier_count = pipeline.tier_count();
    let stage = Stage::new(
        config.layout.clone(),
        config.layouts.clone(),
        pipeline.levels(),
        config.media.width,
        config.media.height,
    );
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let limits = FileLimits {
        max_file: config.max_file_size,
        max_room: config.max_room_files_size,
    };
    let (sharing_tx, sharing) =
        span.in_scope(|| sharing::spawn(config.chat_history, limits, file_store, tx.downgrade()));
    let room = Room {
        id: id.clone(),
        codec,
        pipeline,
        participants: Vec::new(),
        watchers: Vec::new(),
        stage,
        next_id: 1,
        throttles: (0..tier_count)
            .map(|_| KeyframeThrottle::new(DEFAULT_MIN_KEYFRAME_INTERVAL))
            .collect(),
        recording: Recording::new(store),
        sharing,
        governor: Governor::default(),
        load_mark: (std::time::Instant::now(), FrameCounts::default()),
        config,
    };
    tokio::spawn(
        room.run(rx, pipeline_rx, registry, generation)
            .instrument(span),
    );
    Ok(RoomHandle::new(id, tx, sharing_tx))
}

impl Room {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<RoomCommand>,
        mut pipeline_events: mpsc::UnboundedReceiver<PipelineEvent>,
        registry: Weak<Registry>,
        generation: u64,
    ) {
        tracing::info!(codec = ?self.codec, "room opened");
        if self.config.auto_record {
            // A room that cannot record still serves its call; the failure is logged and
            // written to the recording's sidecar.
            let _ = self.start_recording();
        }
        let mut close_reason = None;
        let mut moved_to: Option<String> = None;
        let mut tier_check = tokio::time::interval(TIER_CHECK);
        let mut speaker_tick = tokio::time::interval(crate::speaker::TICK);
        speaker_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
        loop {
            let keyframe_due = self.throttles.iter().filter_map(|t| t.pending_at()).min();
            tokio::select! {
                _ = tier_check.tick() => {
                    let now = std::time::Instant::now();
                    off_async_workers(|| {
                        self.pipeline.shut_idle_tiers(now);
                        self.watch_load(now);
                        // Cameras change size on their own (a browser adapting to its link).
                        self.pipeline.refresh_canvas(now);
                    });
                }
                _ = speaker_tick.tick() => self.decide_speaker(),
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let started = Instant::now();
                    let what = command.name();
                    if let RoomCommand::Close { reason, moved_to: to } = command {
                        close_reason = Some(reason);
                        moved_to = to;
                        break;
                    }
                    if command.changes_the_graph() {
                        off_async_workers(|| self.handle(command));
                    } else {
                        self.handle(command);
                    }
                    if started.elapsed() > SLOW_COMMAND {
                        tracing::warn!(command = what, elapsed_ms = started.elapsed().as_millis() as u64, "slow room command");
                    }
                    if self.is_empty() {
                        break;
                    }
                }
                Some(event) = pipeline_events.recv() => {
                    if !off_async_workers(|| self.on_pipeline_event(event)) {
                        break;
                    }
                    if self.is_empty() {
                        break;
                    }
                }
                _ = sleep_until_opt(keyframe_due) => {
                    let now = std::time::Instant::now();
                    for (tier, throttle) in self.throttles.iter_mut().enumerate() {
                        if throttle.poll(now) {
                            self.pipeline.force_keyframe(tier);
                        }
                    }
                }
            }
        }
        // Leave the registry first, so new joiners get a fresh room; then refuse whatever was
        // already queued for this one.
        if let Some(registry) = registry.upgrade() {
            registry.forget(&self.id, generation);
        }
        // The recording ends with the room; its file is complete before the room says it closed.
        self.recording.finish_all(&mut self.pipeline).await;
        commands.close();
        while let Some(command) = commands.recv().await {
            command.refuse();
        }
        let reason = close_reason.unwrap_or_else(|| "the room was closed".to_string());
        for p in self.participants.drain(..) {
            let farewell = match &moved_to {
                Some(url) => ServerMessage::Redirect { url: url.clone() },
                None => ServerMessage::Removed {
                    reason: reason.clone(),
                },
            };
            let _ = p.events.try_send(farewell);
            if let Some(removed) = p.removed {
                let _ = removed.send(reason.clone());
            }
        }
        self.dismiss_watchers(&reason);
        // Chat and files end with the room (its temporary files are removed).
        let SharingTask { members, task } = self.sharing;
        drop(members);
        let _ = task.await;
        // Dropping the pipeline sets it to NULL and drops its appsinks, which ends every
        // viewer's feed of the composite.
        off_async_workers(|| {
            drop(self.pipeline);
            return_freed_memory();
        });
        tracing::info!("room closed");
    }

    fn handle(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join {
                name,
                role,
                events,
                removed,
                reply,
            } => {
                let joined = match role {
                    Role::Watcher => self.add_watcher(removed),
                    Role::Participant | Role::Ingest => self.join(name, role, events, removed),
                };
                let _ = reply.send(joined);
            }
            RoomCommand::AddTrack {
                who,
                kind,
                signals,
                reply,
            } => {
                let _ = reply.send(self.add_track(who, kind, signals));
            }
            RoomCommand::Leave { who } => self.leave(who),
            RoomCommand::RequestKeyframe { tier } => self.request_keyframe(tier),
            RoomCommand::Watch { tier, reply } => {
                let _ = reply.send(self.watch(tier));
            }
            RoomCommand::Link { who, link } => {
                if let Ok(p) = self.participant(who) {
                    p.link = Some(link);
                }
            }
            RoomCommand::Snapshot { reply } => {
                let _ = reply.send(Ok(self.snapshot()));
            }
            RoomCommand::StartRecording { reply } => {
                let _ = reply.send(self.start_recording());
            }
            RoomCommand::StopRecording { reply } => self.stop_recording(reply),
            RoomCommand::Remove { who, reason, reply } => {
                let _ = reply.send(self.remove(who, reason));
            }
            RoomCommand::Mute { who, muted, reply } => {
                let _ = reply.send(self.mute(who, muted));
            }
            RoomCommand::SelfMute { who, muted } => self.self_mute(who, muted),
            RoomCommand::SetLayout { request, reply } => {
                let _ = reply.send(self.set_layout(&request));
            }
            // Handled by the run loop, which ends the room.
            RoomCommand::Close { .. } => {}
        }
    }

    /// Nobody is in the room any more, to take part or to watch: it closes.
    fn is_empty(&self) -> bool {
        self.participants.is_empty() && self.watchers.is_empty()
    }

    fn set_layout(&mut self, request: &LayoutRequest) -> Result<Layout, RoomError> {
        self.stage.set_layout(request)?;
        tracing::info!(layout = %self.stage.message().layout, "layout switched");
        self.relayout();
        Ok(self.stage.message())
    }

    /// Asks the stage whether the active speaker changed; tells everyone, and redraws when that
    /// moves tiles.
    fn decide_speaker(&mut self) {
        let Some(change) = self.stage.tick(std::time::Instant::now()) else {
            return;
        };
        tracing::debug!(speaker = %change.speaker, "active speaker");
        self.broadcast(ServerMessage::ActiveSpeaker {
            participant_id: change.speaker.to_string(),
        });
        if change.arrangement.is_some() {
            off_async_workers(|| self.relayout());
        }
    }

    fn request_keyframe(&mut self, tier: usize) {
        let Some(throttle) = self.throttles.get_mut(tier) else {
            return;
        };
        match throttle.request(std::time::Instant::now()) {
            Decision::ForceNow => self.pipeline.force_keyframe(tier),
            Decision::Deferred(_) => {}
        }
    }

    /// A reader of `tier` for a viewer moving to it, from a keyframe (the tier starts with one
    /// when it was not running; otherwise one is asked for, within the tier's throttle).
    fn watch(&mut self, tier: usize) -> Result<FeedReader, RoomError> {
        let reader = self
            .pipeline
            .composite(tier)
            .map_err(|e| RoomError::Media(format!("{e:#}")))?;
        self.request_keyframe(tier);
        Ok(reader)
    }

    fn start_recording(&mut self) -> Result<RecordingInfo, RoomError> {
        let info = self
            .recording
            .start(&self.id, self.codec, &mut self.pipeline)?;
        self.broadcast(ServerMessage::Recording {
            state: RecordingState::Started,
            message: None,
        });
        Ok(info)
    }

    fn stop_recording(&mut self, reply: StopReply) {
        if self.recording.stop(&mut self.pipeline, Some(reply)) {
            self.broadcast(ServerMessage::Recording {
                state: RecordingState::Stopped,
                message: None,
            });
        }
    }

    /// Returns false when the room cannot go on.
    fn on_pipeline_event(&mut self, event: PipelineEvent) -> bool {
        match event {
            PipelineEvent::FirstFrame(who) => {
                self.pipeline.remove_placeholder(who);
                // Its size is known now: the canvas may have to grow for it.
                self.pipeline.refresh_canvas(std::time::Instant::now());
                true
            }
            PipelineEvent::BranchFailed { participant, error } => {
                if let Some(p) = self.participants.iter().find(|p| p.id == participant) {
                    tracing::warn!(%participant, "media branch failed, removing the participant: {error}");
                    let _ = p.events.try_send(ServerMessage::error(
                        ErrorCode::Internal,
                        "your media could not be processed; please rejoin",
                    ));
                    self.leave(participant);
                }
                true
            }
            PipelineEvent::RecorderFailed { recording, error } => {
                if self.recording.failed(recording, &error, &mut self.pipeline) {
                    self.broadcast(ServerMessage::Recording {
                        state: RecordingState::Failed,
                        message: Some(error),
                    });
                }
                true
            }
            PipelineEvent::Failed(error) => {
                tracing::error!("pipeline failed, closing the room: {error}");
                false
            }
        }
    }

    fn relayout(&mut self) {
        self.pipeline.apply_layout(self.stage.arrangement());
        let message = ServerMessage::Layout(self.stage.message());
        self.broadcast(message);
    }

    /// Sends to every participant; one whose queue is full is stuck and gets removed.
    fn broadcast(&mut self, message: ServerMessage) {
        let stuck: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|p| match p.events.try_send(message.clone()) {
                Ok(()) => false,
                Err(mpsc::error::TrySendError::Full(_)) => true,
                // The session already ended; its Leave is on the way.
                Err(mpsc::error::TrySendError::Closed(_)) => false,
            })
            .map(|p| p.id)
            .collect();
        for who in stuck {
            tracing::warn!(participant = %who, "event queue full, removing");
            self.leave(who);
        }
    }

    /// Feeds the governor the frames counted since its last look, and applies a new level.
    fn watch_load(&mut self, now: std::time::Instant) {
        let counts = self.pipeline.frame_counts();
        let (since, before) = std::mem::replace(&mut self.load_mark, (now, counts));
        let elapsed = now.saturating_duration_since(since).as_secs_f64();
        let due = (elapsed * f64::from(self.config.media.fps)).round() as u64;
        // Before its first frame the room is starting, not late.
        if before.composited == 0 || due == 0 {
            return;
        }
        let second = Second {
            due,
            composited: counts.composited.saturating_sub(before.composited),
            handed: counts.handed.saturating_sub(before.handed),
            encoded: counts.encoded.saturating_sub(before.encoded),
        };
        let from = self.governor.level();
        if let Some(level) = self.governor.second(second, now) {
            tracing::warn!(
                ?from,
                to = ?level,
                ?second,
                "the room's load level changed: it gives up frames or canvas size when the machine falls behind, and takes them back once it keeps up"
            );
            self.pipeline.apply_load(level);
        }
    }

    fn snapshot(&self) -> RoomSnapshot {
        RoomSnapshot {
            room: self.id.to_string(),
            codec: self.codec,
            participants: self
                .participants
                .iter()
                .map(|p| ParticipantView {
                    id: p.id.to_string(),
                    name: p.name.clone(),
                    ingest: p.ingest,
                    muted: p.muted,
                    camera_frames: self.pipeline.camera_frames(p.id),
                    link: p.link.clone(),
                })
                .collect(),
            watchers: self.watchers.len(),
            layout: self.stage.message(),
            active_speaker: self.stage.speaker().map(|s| s.to_string()),
            recording: self.recording.view(),
            pipeline: self.pipeline.stats(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
