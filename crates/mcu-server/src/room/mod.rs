//! A room is an actor: one task that owns the room's pipeline and its list of participants, and
//! changes them only in answer to a `RoomCommand` or a pipeline event. Sessions hold a
//! `RoomHandle` (a channel sender); nobody shares the room's state behind a lock.

mod handle;
pub mod keyframe;
pub mod recording;
pub mod registry;
mod share_commands;
pub mod sharing;

use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::codec::VideoCodec;
use crate::config::ServerConfig;
use crate::ids::{ParticipantId, RoomId};
use crate::layout;
use crate::media::{InputSignals, PipelineEvent, RoomPipeline};
use crate::protocol::{ErrorCode, Layout, ParticipantInfo, ServerMessage, Tile};
use crate::recordings::RecordingStore;
use crate::rtc::SharedTrack;
pub use handle::{
    JoinError, Joined, ParticipantView, RoomCommand, RoomHandle, RoomSnapshot, TrackKind,
};
use keyframe::{Decision, KeyframeThrottle, DEFAULT_MIN_KEYFRAME_INTERVAL};
use recording::ActiveRecording;
pub use recording::RecordError;
use registry::Registry;
pub use share_commands::{Download, Upload};
use sharing::{ChatLog, FileCatalog};

/// Commands queued for one room. Sessions wait at most this long for room answers, so a stuck
/// room cannot hang a WebSocket forever.
pub const COMMAND_QUEUE: usize = 256;
/// Events queued for one participant's session. A session that lets this many pile up is stuck
/// (its socket no longer drains), and is dropped from the room rather than slowing it. Room above
/// the largest chat backlog plus two messages per shared file, which a subscriber gets at once.
pub const EVENT_QUEUE: usize = 512;
/// How often the room looks for uploads that stopped arriving.
const UPLOAD_CHECK: Duration = Duration::from_secs(5);
/// A room command that takes longer than this is logged: it is the actor's watchdog.
const SLOW_COMMAND: Duration = Duration::from_millis(200);

struct Participant {
    id: ParticipantId,
    name: String,
    events: mpsc::Sender<ServerMessage>,
    removed: Option<oneshot::Sender<String>>,
    muted: bool,
    /// Gets the room's chat and file messages (after `chat_subscribe`).
    subscribed: bool,
}

struct Room {
    id: RoomId,
    config: Arc<ServerConfig>,
    codec: VideoCodec,
    pipeline: RoomPipeline,
    video_track: SharedTrack,
    /// In join order, which is also tile order.
    participants: Vec<Participant>,
    next_id: u64,
    throttle: KeyframeThrottle,
    store: Arc<RecordingStore>,
    recording: Option<ActiveRecording>,
    recordings_started: u64,
    /// Recordings whose files are still being finished.
    finishing: Vec<tokio::task::JoinHandle<()>>,
    chat: ChatLog,
    files: FileCatalog,
    file_store: crate::files::FileStore,
    file_paths: std::collections::HashMap<u32, std::path::PathBuf>,
}

/// Starts a room actor. The room removes itself from `registry` when its last participant leaves.
pub(crate) fn spawn(
    id: RoomId,
    config: Arc<ServerConfig>,
    store: Arc<RecordingStore>,
    registry: Weak<Registry>,
    generation: u64,
) -> Result<RoomHandle> {
    let codec = config.codec_for_room(id.as_str());
    let (pipeline_tx, pipeline_rx) = mpsc::unbounded_channel();
    let (pipeline, composite_packets) =
        RoomPipeline::start(id.as_str(), &config.media, codec, pipeline_tx)?;
    let video_track = SharedTrack::video(codec, "composite", &format!("mcu-{id}"));
    let file_store =
        match crate::files::FileStore::open(&id, config.keep_files.as_deref(), generation) {
            Ok(store) => store,
            Err(e) => {
                drop(pipeline);
                return Err(e);
            }
        };
    let writer = tokio::spawn(video_track.clone().write_all(composite_packets));
    let (tx, rx) = mpsc::channel(COMMAND_QUEUE);
    let auto_record = config.auto_record;
    let mut room = Room {
        id: id.clone(),
        codec,
        pipeline,
        video_track,
        participants: Vec::new(),
        next_id: 1,
        throttle: KeyframeThrottle::new(DEFAULT_MIN_KEYFRAME_INTERVAL),
        store,
        recording: None,
        recordings_started: 0,
        finishing: Vec::new(),
        chat: ChatLog::new(config.chat_history),
        files: FileCatalog::new(config.max_file_size, config.max_room_files_size),
        file_store,
        file_paths: std::collections::HashMap::new(),
        config,
    };
    if auto_record {
        // A room that cannot record still serves its call; the failure is logged and sidecar'd.
        let _ = room.start_recording();
    }
    tokio::spawn(room.run(rx, pipeline_rx, registry, generation, writer));
    Ok(RoomHandle::new(id, tx))
}

impl Room {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<RoomCommand>,
        mut pipeline_events: mpsc::UnboundedReceiver<PipelineEvent>,
        registry: Weak<Registry>,
        generation: u64,
        writer: tokio::task::JoinHandle<()>,
    ) {
        tracing::info!(room = %self.id, codec = ?self.codec, "room opened");
        let mut close_reason = None;
        let mut upload_check = tokio::time::interval(UPLOAD_CHECK);
        loop {
            let keyframe_due = self.throttle.pending_at();
            tokio::select! {
                _ = upload_check.tick() => self.fail_abandoned_uploads(None),
                command = commands.recv() => {
                    let Some(command) = command else { break };
                    let started = Instant::now();
                    let what = command_name(&command);
                    if let RoomCommand::Close { reason } = command {
                        close_reason = Some(reason);
                        break;
                    }
                    self.handle(command);
                    if started.elapsed() > SLOW_COMMAND {
                        tracing::warn!(room = %self.id, command = what, elapsed_ms = started.elapsed().as_millis() as u64, "slow room command");
                    }
                    if self.participants.is_empty() {
                        break;
                    }
                }
                Some(event) = pipeline_events.recv() => {
                    if !self.on_pipeline_event(event) {
                        break;
                    }
                    if self.participants.is_empty() {
                        break;
                    }
                }
                _ = sleep_until_opt(keyframe_due) => {
                    if self.throttle.poll(std::time::Instant::now()) {
                        self.pipeline.force_keyframe();
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
        self.finish_recordings().await;
        commands.close();
        while let Some(command) = commands.recv().await {
            match command {
                RoomCommand::Join { reply, .. } => {
                    let _ = reply.send(Err(JoinError::Closing));
                }
                RoomCommand::AddTrack { reply, .. } => {
                    let _ = reply.send(Err("the room has closed".into()));
                }
                RoomCommand::StartRecording { reply } => {
                    let _ = reply.send(Err(RecordError::RoomClosed));
                }
                RoomCommand::StopRecording { reply } => {
                    let _ = reply.send(Err(RecordError::RoomClosed));
                }
                _ => {}
            }
        }
        let reason = close_reason.unwrap_or_else(|| "the room was closed".to_string());
        for p in self.participants.drain(..) {
            let _ = p.events.try_send(ServerMessage::Removed {
                reason: reason.clone(),
            });
            if let Some(removed) = p.removed {
                let _ = removed.send(reason.clone());
            }
        }
        // Temporary shared files go with the room (kept ones stay in --keep-files).
        self.file_store.close();
        // Dropping the pipeline sets it to NULL and drops its appsinks, which ends the writer.
        drop(self.pipeline);
        let _ = writer.await;
        tracing::info!(room = %self.id, "room closed");
    }

    fn handle(&mut self, command: RoomCommand) {
        match command {
            RoomCommand::Join {
                name,
                events,
                removed,
                reply,
            } => {
                let result = self.join(name, events, removed);
                let _ = reply.send(result);
            }
            RoomCommand::AddTrack {
                who,
                kind,
                signals,
                reply,
            } => {
                let result = self.add_track(who, kind, signals);
                let _ = reply.send(result.map_err(|e| format!("{e:#}")));
            }
            RoomCommand::Leave { who } => self.leave(who),
            RoomCommand::RequestKeyframe => self.request_keyframe(),
            RoomCommand::Snapshot { reply } => {
                let _ = reply.send(self.snapshot());
            }
            RoomCommand::StartRecording { reply } => {
                let _ = reply.send(self.start_recording());
            }
            RoomCommand::StopRecording { reply } => self.stop_recording(Some(reply)),
            RoomCommand::Remove { who, reason, reply } => {
                let _ = reply.send(self.remove(who, reason));
            }
            RoomCommand::Mute { who, muted, reply } => {
                let _ = reply.send(self.mute(who, muted));
            }
            // Handled by the run loop, which ends the room.
            RoomCommand::Close { .. } => {}
            RoomCommand::ChatSubscribe { who } => self.subscribe_chat(who),
            RoomCommand::Chat { who, text } => self.chat(who, text),
            RoomCommand::OfferFile {
                who,
                name,
                size,
                mime,
                reply,
            } => {
                let _ = reply.send(self.offer_file(who, name, size, mime));
            }
            RoomCommand::FileProgress { file_id, received } => {
                self.file_progress(file_id, received)
            }
            RoomCommand::FileDone { file_id, sha256 } => self.file_done(file_id, sha256),
            RoomCommand::FileFailed { file_id, reason } => self.file_failed(file_id, reason),
            RoomCommand::LookupFile { file_id, reply } => {
                let _ = reply.send(self.lookup_file(file_id));
            }
        }
    }

    fn remove(&mut self, who: ParticipantId, reason: String) -> bool {
        let Some(p) = self.participants.iter_mut().find(|p| p.id == who) else {
            return false;
        };
        let _ = p.events.try_send(ServerMessage::Removed {
            reason: reason.clone(),
        });
        if let Some(removed) = p.removed.take() {
            let _ = removed.send(reason);
        }
        tracing::info!(room = %self.id, participant = %who, "removed by a moderator");
        self.leave(who);
        true
    }

    fn mute(&mut self, who: ParticipantId, muted: bool) -> bool {
        let Some(p) = self.participants.iter_mut().find(|p| p.id == who) else {
            return false;
        };
        p.muted = muted;
        self.pipeline.set_muted(who, muted);
        tracing::info!(room = %self.id, participant = %who, muted, "server-side mute");
        self.broadcast(ServerMessage::ParticipantMuted {
            participant_id: who.to_string(),
            muted,
        });
        true
    }

    fn join(
        &mut self,
        name: String,
        events: mpsc::Sender<ServerMessage>,
        removed: oneshot::Sender<String>,
    ) -> Result<Joined, JoinError> {
        if self.participants.len() >= self.config.max_participants {
            return Err(JoinError::Full(self.config.max_participants));
        }
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        let audio_packets = self
            .pipeline
            .add_listener(id)
            .map_err(|e| JoinError::Media(format!("{e:#}")))?;
        let others = self.participant_infos();
        let info = ParticipantInfo {
            id: id.to_string(),
            name: name.clone(),
        };
        self.broadcast(ServerMessage::ParticipantJoined { participant: info });
        self.participants.push(Participant {
            id,
            name: name.clone(),
            events,
            removed: Some(removed),
            muted: false,
            subscribed: false,
        });
        let tiles = self.tiles();
        let tile = tiles
            .iter()
            .find(|(p, _)| *p == id)
            .map(|(_, r)| *r)
            .expect("the participant was just pushed, so it has a tile");
        if let Err(e) = self.pipeline.add_placeholder(id, &name, tile) {
            // A missing placeholder only costs the dark tile; the call works without it.
            tracing::warn!(room = %self.id, participant = %id, "no placeholder: {e:#}");
        }
        self.relayout();
        tracing::info!(room = %self.id, participant = %id, count = self.participants.len(), "joined");
        Ok(Joined {
            id,
            participants: others,
            video_track: self.video_track.clone(),
            video_codec: self.codec,
            audio_packets,
            recording: self.recording.is_some(),
        })
    }

    fn add_track(
        &mut self,
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
    ) -> Result<crate::media::InputHandle> {
        let tile = self
            .tiles()
            .into_iter()
            .find(|(p, _)| *p == who)
            .map(|(_, r)| r)
            .ok_or_else(|| anyhow::anyhow!("{who} is not in room {}", self.id))?;
        let appsrc = match kind {
            TrackKind::Video {
                codec,
                payload_type,
            } => self
                .pipeline
                .add_video_input(who, codec, payload_type, tile, signals)?,
            TrackKind::Audio { payload_type } => {
                self.pipeline.add_audio_input(who, payload_type)?
            }
        };
        tracing::info!(room = %self.id, participant = %who, ?kind, "track added");
        Ok(crate::media::InputHandle::new(appsrc))
    }

    fn leave(&mut self, who: ParticipantId) {
        let Some(index) = self.participants.iter().position(|p| p.id == who) else {
            return;
        };
        self.participants.remove(index);
        self.pipeline.remove_participant(who);
        self.fail_abandoned_uploads(Some(who));
        self.broadcast(ServerMessage::ParticipantLeft {
            participant_id: who.to_string(),
        });
        self.relayout();
        tracing::info!(room = %self.id, participant = %who, count = self.participants.len(), "left");
    }

    fn request_keyframe(&mut self) {
        match self.throttle.request(std::time::Instant::now()) {
            Decision::ForceNow => self.pipeline.force_keyframe(),
            Decision::Deferred(_) => {}
        }
    }

    /// Returns false when the room cannot go on.
    fn on_pipeline_event(&mut self, event: PipelineEvent) -> bool {
        match event {
            PipelineEvent::FirstFrame(who) => {
                self.pipeline.remove_placeholder(who);
                true
            }
            PipelineEvent::BranchFailed { participant, error } => {
                if self.participants.iter().any(|p| p.id == participant) {
                    tracing::warn!(room = %self.id, %participant, "media branch failed, removing the participant: {error}");
                    if let Some(p) = self.participants.iter().find(|p| p.id == participant) {
                        let _ = p.events.try_send(ServerMessage::error(
                            ErrorCode::Internal,
                            "your media could not be processed; please rejoin",
                        ));
                    }
                    self.leave(participant);
                }
                true
            }
            PipelineEvent::RecorderFailed { recording, error } => {
                self.on_recorder_failed(recording, error);
                true
            }
            PipelineEvent::Failed(error) => {
                tracing::error!(room = %self.id, "pipeline failed, closing the room: {error}");
                false
            }
        }
    }

    fn tiles(&self) -> Vec<(ParticipantId, layout::Rect)> {
        let m = &self.config.media;
        self.participants
            .iter()
            .map(|p| p.id)
            .zip(layout::grid(self.participants.len(), m.width, m.height))
            .collect()
    }

    fn layout_message(&self, tiles: &[(ParticipantId, layout::Rect)]) -> Layout {
        Layout {
            width: self.config.media.width,
            height: self.config.media.height,
            tiles: tiles
                .iter()
                .map(|(p, r)| Tile {
                    participant_id: p.to_string(),
                    x: r.x,
                    y: r.y,
                    width: r.width,
                    height: r.height,
                })
                .collect(),
        }
    }

    fn relayout(&mut self) {
        let tiles = self.tiles();
        self.pipeline.apply_layout(&tiles);
        let message = ServerMessage::Layout(self.layout_message(&tiles));
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
            tracing::warn!(room = %self.id, participant = %who, "event queue full, removing");
            self.leave(who);
        }
    }

    fn participant_infos(&self) -> Vec<ParticipantInfo> {
        self.participants
            .iter()
            .map(|p| ParticipantInfo {
                id: p.id.to_string(),
                name: p.name.clone(),
            })
            .collect()
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
                    muted: p.muted,
                })
                .collect(),
            layout: self.layout_message(&self.tiles()),
            recording: self.recording_view(),
            pipeline: self.pipeline.stats(),
        }
    }
}

fn command_name(c: &RoomCommand) -> &'static str {
    match c {
        RoomCommand::Join { .. } => "join",
        RoomCommand::AddTrack { .. } => "add_track",
        RoomCommand::Leave { .. } => "leave",
        RoomCommand::RequestKeyframe => "request_keyframe",
        RoomCommand::Snapshot { .. } => "snapshot",
        RoomCommand::StartRecording { .. } => "start_recording",
        RoomCommand::StopRecording { .. } => "stop_recording",
        RoomCommand::Remove { .. } => "remove",
        RoomCommand::Mute { .. } => "mute",
        RoomCommand::Close { .. } => "close",
        RoomCommand::ChatSubscribe { .. } => "chat_subscribe",
        RoomCommand::Chat { .. } => "chat",
        RoomCommand::OfferFile { .. } => "offer_file",
        RoomCommand::FileProgress { .. } => "file_progress",
        RoomCommand::FileDone { .. } => "file_done",
        RoomCommand::FileFailed { .. } => "file_failed",
        RoomCommand::LookupFile { .. } => "lookup_file",
    }
}

async fn sleep_until_opt(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}
