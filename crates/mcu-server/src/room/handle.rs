//! The room's interface to the rest of the server: the commands it takes, the handle sessions and
//! the admin API send them through, and what it answers (a join, a snapshot).

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::recording::{RecordError, StopReply};
use super::share_commands::{Download, OfferReply, Upload};
use crate::codec::VideoCodec;
use crate::ids::{ParticipantId, RoomId};
use crate::media::{InputSignals, PipelineStats};
use crate::protocol::{ErrorCode, Layout, ParticipantInfo, ServerMessage};
use crate::recordings::RecordingInfo;
use crate::rtc::SharedTrack;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JoinError {
    #[error("the room is full ({0} participants)")]
    Full(usize),
    /// The room was closing when the join arrived; the caller retries with a fresh room.
    #[error("the room is closing")]
    Closing,
    #[error("{0}")]
    Media(String),
}

impl JoinError {
    pub fn to_message(&self) -> ServerMessage {
        let code = match self {
            JoinError::Full(_) => ErrorCode::RoomFull,
            JoinError::Closing | JoinError::Media(_) => ErrorCode::Internal,
        };
        ServerMessage::error(code, self.to_string())
    }
}

/// What a participant gets on joining.
pub struct Joined {
    pub id: ParticipantId,
    pub participants: Vec<ParticipantInfo>,
    /// The room's one composite stream, shared by every participant's peer connection.
    pub video_track: SharedTrack,
    pub video_codec: VideoCodec,
    /// This participant's mix-minus audio, as Opus RTP packets.
    pub audio_packets: mpsc::Receiver<Bytes>,
    /// Whether the room is being recorded as they join.
    pub recording: bool,
}

/// A participant's incoming track, as the room needs to know it.
#[derive(Debug, Clone, Copy)]
pub enum TrackKind {
    Video { codec: VideoCodec, payload_type: u8 },
    Audio { payload_type: u8 },
}

pub enum RoomCommand {
    Join {
        name: String,
        events: mpsc::Sender<ServerMessage>,
        /// Fired with the reason when a moderator removes the participant: the session ends.
        removed: oneshot::Sender<String>,
        reply: oneshot::Sender<Result<Joined, JoinError>>,
    },
    AddTrack {
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
        reply: oneshot::Sender<Result<crate::media::InputHandle, String>>,
    },
    Leave {
        who: ParticipantId,
    },
    RequestKeyframe,
    Snapshot {
        reply: oneshot::Sender<RoomSnapshot>,
    },
    StartRecording {
        reply: oneshot::Sender<Result<RecordingInfo, RecordError>>,
    },
    /// Answered once the file is complete.
    StopRecording {
        reply: StopReply,
    },
    /// Removes a participant; answers whether they were here.
    Remove {
        who: ParticipantId,
        reason: String,
        reply: oneshot::Sender<bool>,
    },
    /// Server-side mute: the participant's audio leaves every mix. Answers whether they were here.
    Mute {
        who: ParticipantId,
        muted: bool,
        reply: oneshot::Sender<bool>,
    },
    /// Ends the room: everyone is removed, the recording is finished.
    Close {
        reason: String,
    },
    /// Deliver chat and files to this participant from now on, the backlog first.
    ChatSubscribe {
        who: ParticipantId,
    },
    Chat {
        who: ParticipantId,
        text: String,
    },
    /// Admit a file (or say why not) and open the file its bytes go to.
    OfferFile {
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
        reply: OfferReply,
    },
    FileProgress {
        file_id: u32,
        received: u64,
    },
    FileDone {
        file_id: u32,
        sha256: String,
    },
    FileFailed {
        file_id: u32,
        reason: String,
    },
    /// A shared file that is ready, for a download.
    LookupFile {
        file_id: u32,
        reply: oneshot::Sender<Option<Download>>,
    },
}

/// The room as the admin view and the tests see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomSnapshot {
    pub room: String,
    pub codec: VideoCodec,
    pub participants: Vec<ParticipantView>,
    pub layout: Layout,
    /// The recording being written now, if any.
    pub recording: Option<RecordingInfo>,
    pub pipeline: PipelineStats,
}

/// A participant as the admin view shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantView {
    pub id: String,
    pub name: String,
    /// Muted by a moderator (their audio is out of every mix).
    pub muted: bool,
}

#[derive(Clone)]
pub struct RoomHandle {
    id: RoomId,
    commands: mpsc::Sender<RoomCommand>,
}

impl RoomHandle {
    pub(super) fn new(id: RoomId, commands: mpsc::Sender<RoomCommand>) -> Self {
        RoomHandle { id, commands }
    }

    pub fn id(&self) -> &RoomId {
        &self.id
    }

    pub async fn join(
        &self,
        name: String,
        events: mpsc::Sender<ServerMessage>,
        removed: oneshot::Sender<String>,
    ) -> Result<Joined, JoinError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(RoomCommand::Join {
                name,
                events,
                removed,
                reply,
            })
            .await
            .map_err(|_| JoinError::Closing)?;
        answer.await.map_err(|_| JoinError::Closing)?
    }

    pub async fn add_track(
        &self,
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
    ) -> Result<crate::media::InputHandle, String> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(RoomCommand::AddTrack {
                who,
                kind,
                signals,
                reply,
            })
            .await
            .map_err(|_| "the room has closed".to_string())?;
        answer
            .await
            .map_err(|_| "the room has closed".to_string())?
    }

    /// Fire and forget: a room that is already gone has nothing left to release.
    pub async fn leave(&self, who: ParticipantId) {
        let _ = self.commands.send(RoomCommand::Leave { who }).await;
    }

    /// Never waits: a keyframe request is dropped if the room is swamped with commands, and the
    /// viewer will ask again.
    pub fn request_keyframe(&self) {
        let _ = self.commands.try_send(RoomCommand::RequestKeyframe);
    }

    pub async fn snapshot(&self) -> Option<RoomSnapshot> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(RoomCommand::Snapshot { reply })
            .await
            .ok()?;
        answer.await.ok()
    }

    pub async fn start_recording(&self) -> Result<RecordingInfo, RecordError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(RoomCommand::StartRecording { reply })
            .await
            .map_err(|_| RecordError::RoomClosed)?;
        answer.await.map_err(|_| RecordError::RoomClosed)?
    }

    /// Returns once the file is complete.
    pub async fn stop_recording(&self) -> Result<RecordingInfo, RecordError> {
        let (reply, answer) = oneshot::channel();
        self.commands
            .send(RoomCommand::StopRecording { reply })
            .await
            .map_err(|_| RecordError::RoomClosed)?;
        answer.await.map_err(|_| RecordError::RoomClosed)?
    }

    /// Removes a participant; false if they are not in the room.
    pub async fn remove(&self, who: ParticipantId, reason: &str) -> bool {
        let (reply, answer) = oneshot::channel();
        let command = RoomCommand::Remove {
            who,
            reason: reason.to_string(),
            reply,
        };
        self.commands.send(command).await.is_ok() && answer.await.unwrap_or(false)
    }

    /// Mutes (or unmutes) a participant server-side; false if they are not in the room.
    pub async fn mute(&self, who: ParticipantId, muted: bool) -> bool {
        let (reply, answer) = oneshot::channel();
        let command = RoomCommand::Mute { who, muted, reply };
        self.commands.send(command).await.is_ok() && answer.await.unwrap_or(false)
    }

    /// Asks the room to close; `closed` waits until it has.
    pub async fn close(&self, reason: &str) {
        let _ = self
            .commands
            .send(RoomCommand::Close {
                reason: reason.to_string(),
            })
            .await;
    }

    /// Resolves when the room's actor has finished (its recording included).
    pub async fn closed(&self) {
        self.commands.closed().await
    }

    /// Fire and forget, like `leave`: a closed room has no chat to give.
    pub async fn send(&self, command: RoomCommand) {
        let _ = self.commands.send(command).await;
    }

    pub async fn offer_file(
        &self,
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
    ) -> Result<Upload, ServerMessage> {
        let closed = || ServerMessage::error(ErrorCode::Internal, "the room has closed");
        let (reply, answer) = oneshot::channel();
        let command = RoomCommand::OfferFile {
            who,
            name,
            size,
            mime,
            reply,
        };
        self.commands.send(command).await.map_err(|_| closed())?;
        answer.await.map_err(|_| closed())?
    }

    pub async fn lookup_file(&self, file_id: u32) -> Option<Download> {
        let (reply, answer) = oneshot::channel();
        let command = RoomCommand::LookupFile { file_id, reply };
        self.commands.send(command).await.ok()?;
        answer.await.ok()?
    }
}
