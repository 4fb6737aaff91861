//! The room's interface to the rest of the server: the commands it takes, the handle sessions and
//! the admin API send them through (one typed method per command), and what it answers.

use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot};

use super::recording::StopReply;
use super::sharing::{Download, ShareCommand, Upload};
use super::RoomError;
use crate::codec::VideoCodec;
use crate::config::Tier;
use crate::ids::{ParticipantId, RoomId};
use crate::media::{FeedReader, InputHandle, InputSignals, PipelineStats};
use crate::protocol::layout::LayoutRequest;
use crate::protocol::{Layout, ParticipantInfo, ServerMessage};
use crate::recordings::RecordingInfo;

/// How someone is in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// A browser or a probe: a tile and a voice in the mix, and the composite with everyone
    /// else's audio back.
    Participant,
    /// A WHIP feed (RFC 9725): a tile and a voice in the mix; nothing is sent back to it.
    Ingest,
    /// A WHEP player: the composite and the full mix; no tile, no voice, not in the
    /// participant list, counted against `--max-watchers`.
    Watcher,
}

impl Role {
    /// Whether the room sends it the composite and an audio mix.
    pub fn receives(self) -> bool {
        matches!(self, Role::Participant | Role::Watcher)
    }
}

/// What someone gets on joining.
pub struct Joined {
    pub id: ParticipantId,
    pub participants: Vec<ParticipantInfo>,
    pub video_codec: VideoCodec,
    /// Every tier of the composite, the top one (what `feeds.video_packets` reads) first.
    pub tiers: Vec<Tier>,
    /// What the room sends back (none for an ingest).
    pub feeds: Option<Feeds>,
    /// Whether the room is being recorded as they join.
    pub recording: bool,
}

/// The media a participant or watcher receives.
pub struct Feeds {
    /// The room's one composite encode, as RTP packets of `video_codec`: every viewer reads the
    /// same packets and puts them on a track of its own.
    pub video_packets: FeedReader,
    /// Opus RTP packets: a participant's mix-minus, or a watcher's full mix.
    pub audio_packets: mpsc::Receiver<Bytes>,
}

/// A participant's incoming track, as the room needs to know it.
#[derive(Debug, Clone, Copy)]
pub enum TrackKind {
    Video { codec: VideoCodec, payload_type: u8 },
    Audio { payload_type: u8 },
}

type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

/// What the room actor itself does: membership, media, recording and moderation. Chat and files
/// go to the room's sharing component instead (`ShareCommand`).
pub(super) enum RoomCommand {
    Join {
        name: String,
        role: Role,
        events: mpsc::Sender<ServerMessage>,
        /// Fired with the reason when a moderator removes the participant: the session ends.
        removed: oneshot::Sender<String>,
        reply: Reply<Joined>,
    },
    AddTrack {
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
        reply: Reply<InputHandle>,
    },
    Leave {
        who: ParticipantId,
    },
    /// A viewer of `tier` needs a keyframe of it (it joined, or lost packets).
    RequestKeyframe {
        tier: usize,
    },
    /// A reader of `tier`'s packets, for a viewer moving to it; the tier starts with a keyframe.
    Watch {
        tier: usize,
        reply: Reply<FeedReader>,
    },
    /// How a participant's link is doing, as its session sees it, for the room view.
    Link {
        who: ParticipantId,
        link: LinkView,
    },
    Snapshot {
        reply: Reply<RoomSnapshot>,
    },
    StartRecording {
        reply: Reply<RecordingInfo>,
    },
    /// Answered once the file is complete.
    StopRecording {
        reply: StopReply,
    },
    /// Removes a participant (`NotHere` if they are not in the room).
    Remove {
        who: ParticipantId,
        reason: String,
        reply: Reply<()>,
    },
    /// Server-side mute: the participant's audio leaves every mix.
    Mute {
        who: ParticipantId,
        muted: bool,
        reply: Reply<()>,
    },
    /// Switches the room's layout (the request is checked there: `Layout` says what is wrong).
    SetLayout {
        request: LayoutRequest,
        reply: Reply<Layout>,
    },
    /// The participant muted (or unmuted) their own microphone.
    SelfMute {
        who: ParticipantId,
        muted: bool,
    },
    /// Ends the room: everyone is removed, the recording is finished. With `moved_to` (the room
    /// now lives on that node of the cluster), participants are sent there instead.
    Close {
        reason: String,
        moved_to: Option<String>,
    },
}

impl RoomCommand {
    /// For the actor's watchdog log.
    pub(super) fn name(&self) -> &'static str {
        match self {
            RoomCommand::Join { .. } => "join",
            RoomCommand::AddTrack { .. } => "add_track",
            RoomCommand::Leave { .. } => "leave",
            RoomCommand::RequestKeyframe { .. } => "request_keyframe",
            RoomCommand::Watch { .. } => "watch",
            RoomCommand::Link { .. } => "link",
            RoomCommand::Snapshot { .. } => "snapshot",
            RoomCommand::StartRecording { .. } => "start_recording",
            RoomCommand::StopRecording { .. } => "stop_recording",
            RoomCommand::Remove { .. } => "remove",
            RoomCommand::Mute { .. } => "mute",
            RoomCommand::SetLayout { .. } => "set_layout",
            RoomCommand::SelfMute { .. } => "self_mute",
            RoomCommand::Close { .. } => "close",
        }
    }

    /// Whether carrying it out adds, removes or restarts GStreamer elements (so it runs off the
    /// async workers); the rest only read or set a property.
    pub(super) fn changes_the_graph(&self) -> bool {
        matches!(
            self,
            RoomCommand::Join { .. }
                | RoomCommand::AddTrack { .. }
                | RoomCommand::Leave { .. }
                | RoomCommand::Watch { .. }
                | RoomCommand::StartRecording { .. }
                | RoomCommand::StopRecording { .. }
                | RoomCommand::Remove { .. }
        )
    }

    /// Answers a command the room can no longer carry out (it is closing).
    pub(super) fn refuse(self) {
        match self {
            RoomCommand::Join { reply, .. } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::AddTrack { reply, .. } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::Snapshot { reply } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::Watch { reply, .. } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::StartRecording { reply } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::StopRecording { reply } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::Remove { reply, .. } | RoomCommand::Mute { reply, .. } => {
                drop(reply.send(Err(RoomError::Closed)))
            }
            RoomCommand::SetLayout { reply, .. } => drop(reply.send(Err(RoomError::Closed))),
            RoomCommand::Leave { .. }
            | RoomCommand::RequestKeyframe { .. }
            | RoomCommand::Link { .. }
            | RoomCommand::SelfMute { .. }
            | RoomCommand::Close { .. } => {}
        }
    }
}

/// Sends `command` with a reply channel and waits for the answer; a room that closed before it
/// answered is `Closed`.
async fn request<C, T>(
    to: &mpsc::Sender<C>,
    command: impl FnOnce(Reply<T>) -> C,
) -> Result<T, RoomError> {
    let (reply, answer) = oneshot::channel();
    to.send(command(reply))
        .await
        .map_err(|_| RoomError::Closed)?;
    answer.await.map_err(|_| RoomError::Closed)?
}

/// The room as the admin view and the tests see it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct RoomSnapshot {
    pub room: String,
    pub codec: VideoCodec,
    pub participants: Vec<ParticipantView>,
    /// WHEP players watching the room (not participants: no tile, no voice).
    pub watchers: usize,
    pub layout: Layout,
    /// The active speaker, once someone has spoken.
    pub active_speaker: Option<String>,
    /// The recording being written now, if any.
    pub recording: Option<RecordingInfo>,
    pub pipeline: PipelineStats,
}

/// A participant as the admin view shows them.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ParticipantView {
    pub id: String,
    pub name: String,
    /// A WHIP feed (it sends only) rather than a browser or probe.
    pub ingest: bool,
    /// Muted by a moderator (their audio is out of every mix).
    pub muted: bool,
    /// Frames of their camera decoded so far (None without a camera track): a camera whose
    /// count stops while they are in the room shows a frozen tile.
    pub camera_frames: Option<u64>,
    /// How their link to the server is doing (once their session has measured it).
    pub link: Option<LinkView>,
}

/// A viewer's link, as its session measures it from what the viewer reports.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize)]
pub struct LinkView {
    /// The tier of the composite it receives (0 is the top), and that tier's size.
    pub tier: usize,
    pub width: u32,
    pub height: u32,
    /// What the viewer's browser estimates its link carries (REMB), when it says.
    pub estimate_kbps: Option<u32>,
    /// The share of packets it lost lately, 0–1 (from its receiver reports).
    pub loss: f64,
    /// Round trip to it, from its receiver reports.
    pub rtt_ms: Option<u32>,
    /// Interarrival jitter of the composite at the viewer, from its receiver reports.
    pub jitter_ms: Option<f64>,
}

#[derive(Clone)]
pub struct RoomHandle {
    id: RoomId,
    commands: mpsc::Sender<RoomCommand>,
    sharing: mpsc::Sender<ShareCommand>,
}

impl RoomHandle {
    pub(super) fn new(
        id: RoomId,
        commands: mpsc::Sender<RoomCommand>,
        sharing: mpsc::Sender<ShareCommand>,
    ) -> Self {
        RoomHandle {
            id,
            commands,
            sharing,
        }
    }

    pub fn id(&self) -> &RoomId {
        &self.id
    }

    /// Sends the room a command that is answered, and waits for the answer.
    async fn ask<T>(&self, command: impl FnOnce(Reply<T>) -> RoomCommand) -> Result<T, RoomError> {
        request(&self.commands, command).await
    }

    /// The same, for the room's chat and files.
    async fn ask_sharing<T>(
        &self,
        command: impl FnOnce(Reply<T>) -> ShareCommand,
    ) -> Result<T, RoomError> {
        request(&self.sharing, command).await
    }

    /// Fire and forget: a closed room has nothing left to do with it.
    async fn tell_sharing(&self, command: ShareCommand) {
        let _ = self.sharing.send(command).await;
    }

    pub async fn join(
        &self,
        name: String,
        role: Role,
        events: mpsc::Sender<ServerMessage>,
        removed: oneshot::Sender<String>,
    ) -> Result<Joined, RoomError> {
        self.ask(|reply| RoomCommand::Join {
            name,
            role,
            events,
            removed,
            reply,
        })
        .await
    }

    pub async fn add_track(
        &self,
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
    ) -> Result<InputHandle, RoomError> {
        self.ask(|reply| RoomCommand::AddTrack {
            who,
            kind,
            signals,
            reply,
        })
        .await
    }

    /// Fire and forget: a room that is already gone has nothing left to release.
    pub async fn leave(&self, who: ParticipantId) {
        let _ = self.commands.send(RoomCommand::Leave { who }).await;
    }

    /// Never waits: a keyframe request is dropped if the room is swamped with commands, and the
    /// viewer will ask again.
    pub fn request_keyframe(&self, tier: usize) {
        let _ = self
            .commands
            .try_send(RoomCommand::RequestKeyframe { tier });
    }

    /// A reader of `tier`'s packets, which starts with a keyframe.
    pub async fn watch(&self, tier: usize) -> Result<FeedReader, RoomError> {
        self.ask(|reply| RoomCommand::Watch { tier, reply }).await
    }

    /// Never waits: the next report will do if the room is swamped.
    pub fn report_link(&self, who: ParticipantId, link: LinkView) {
        let _ = self.commands.try_send(RoomCommand::Link { who, link });
    }

    pub async fn snapshot(&self) -> Result<RoomSnapshot, RoomError> {
        self.ask(|reply| RoomCommand::Snapshot { reply }).await
    }

    pub async fn start_recording(&self) -> Result<RecordingInfo, RoomError> {
        self.ask(|reply| RoomCommand::StartRecording { reply })
            .await
    }

    /// Returns once the file is complete.
    pub async fn stop_recording(&self) -> Result<RecordingInfo, RoomError> {
        self.ask(|reply| RoomCommand::StopRecording { reply }).await
    }

    /// Removes a participant; `NotHere` if they are not in the room.
    pub async fn remove(&self, who: ParticipantId, reason: &str) -> Result<(), RoomError> {
        let reason = reason.to_string();
        self.ask(|reply| RoomCommand::Remove { who, reason, reply })
            .await
    }

    /// Mutes (or unmutes) a participant server-side; `NotHere` if they are not in the room.
    pub async fn mute(&self, who: ParticipantId, muted: bool) -> Result<(), RoomError> {
        self.ask(|reply| RoomCommand::Mute { who, muted, reply })
            .await
    }

    /// Switches the room's layout; answers the layout now drawn, or why the request was refused.
    pub async fn set_layout(&self, request: LayoutRequest) -> Result<Layout, RoomError> {
        self.ask(|reply| RoomCommand::SetLayout { request, reply })
            .await
    }

    /// Never waits: a label a moment late is harmless, a stuck session is not.
    pub fn self_mute(&self, who: ParticipantId, muted: bool) {
        let _ = self.commands.try_send(RoomCommand::SelfMute { who, muted });
    }

    /// Asks the room to close; `closed` waits until it has.
    pub async fn close(&self, reason: &str) {
        let reason = reason.to_string();
        let _ = self
            .commands
            .send(RoomCommand::Close {
                reason,
                moved_to: None,
            })
            .await;
    }

    /// Ends the room because it now lives on another node: participants get a `redirect` to
    /// `url` (the room's WebSocket there) rather than `removed`, and their clients follow it.
    pub async fn close_moved(&self, reason: &str, url: String) {
        let _ = self
            .commands
            .send(RoomCommand::Close {
                reason: reason.to_string(),
                moved_to: Some(url),
            })
            .await;
    }

    /// Resolves when the room's actor has finished (its recording included).
    pub async fn closed(&self) {
        self.commands.closed().await
    }

    /// From now on the room's chat and files go to `who`, the backlog first.
    pub async fn subscribe_chat(&self, who: ParticipantId) {
        self.tell_sharing(ShareCommand::Subscribe { who }).await
    }

    /// A chat message whose text and rate the session already checked.
    pub async fn chat(&self, who: ParticipantId, text: String) {
        self.tell_sharing(ShareCommand::Chat { who, text }).await
    }

    /// Admits a file (or says why not) and opens the file its bytes go to.
    pub async fn offer_file(
        &self,
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
    ) -> Result<Upload, RoomError> {
        self.ask_sharing(|reply| ShareCommand::Offer {
            who,
            name,
            size,
            mime,
            reply,
        })
        .await
    }

    pub async fn file_progress(&self, file_id: u32, received: u64) {
        self.tell_sharing(ShareCommand::Progress { file_id, received })
            .await
    }

    pub async fn file_done(&self, file_id: u32, sha256: String) {
        self.tell_sharing(ShareCommand::Done { file_id, sha256 })
            .await
    }

    pub async fn file_failed(&self, file_id: u32, reason: String) {
        self.tell_sharing(ShareCommand::Failed { file_id, reason })
            .await
    }

    /// A shared file that is ready, for a download (`UnknownFile` otherwise).
    pub async fn lookup_file(&self, file_id: u32) -> Result<Download, RoomError> {
        self.ask_sharing(|reply| ShareCommand::Lookup { file_id, reply })
            .await
    }
}
