//! Membership, as the room actor carries it out: a participant (a tile and a voice) joins, adds
//! its tracks, and leaves. Part of the room actor (an `impl Room` of its own file), not a task.

use std::sync::Arc;

use tokio::sync::{mpsc, oneshot};

use super::sharing::Membership;
use super::{Feeds, Joined, LinkView, Role, Room, RoomError, TrackKind};
use crate::ids::ParticipantId;
use crate::media::{InputHandle, InputSignals};
use crate::protocol::{ParticipantInfo, ServerMessage};

pub(super) struct Participant {
    pub(super) id: ParticipantId,
    pub(super) name: String,
    pub(super) events: mpsc::Sender<ServerMessage>,
    pub(super) removed: Option<oneshot::Sender<String>>,
    /// Muted by a moderator: out of every mix.
    pub(super) muted: bool,
    /// Muted by themselves (their client sends silence).
    pub(super) self_muted: bool,
    /// What its session last said of its link.
    pub(super) link: Option<LinkView>,
    /// A WHIP feed: it sends only.
    pub(super) ingest: bool,
}

impl Room {
    /// A new id, never used before in this room.
    pub(super) fn next_participant_id(&mut self) -> ParticipantId {
        let id = ParticipantId(self.next_id);
        self.next_id += 1;
        id
    }

    /// A participant (a tile and a voice) joins; an ingest gets nothing back, so it has no
    /// encoder of its own for a mix-minus.
    pub(super) fn join(
        &mut self,
        name: String,
        role: Role,
        events: mpsc::Sender<ServerMessage>,
        removed: oneshot::Sender<String>,
    ) -> Result<Joined, RoomError> {
        if self.participants.len() >= self.config.max_participants {
            return Err(RoomError::Full(self.config.max_participants));
        }
        let id = self.next_participant_id();
        let audio_packets = if role.receives() {
            Some(
                self.pipeline
                    .add_listener(id)
                    .map_err(|e| RoomError::Media(format!("{e:#}")))?,
            )
        } else {
            None
        };
        let others = self.participant_infos();
        let info = ParticipantInfo {
            id: id.to_string(),
            name: name.clone(),
        };
        self.broadcast(ServerMessage::ParticipantJoined { participant: info });
        let _ = self.sharing.members.send(Membership::Joined {
            who: id,
            name: name.clone(),
            events: events.clone(),
        });
        self.participants.push(Participant {
            id,
            name: name.clone(),
            events,
            removed: Some(removed),
            muted: false,
            self_muted: false,
            link: None,
            ingest: role == Role::Ingest,
        });
        self.stage.join(id);
        if let Err(e) = self.pipeline.add_placeholder(id, &name) {
            // A missing placeholder only costs the dark tile; the call works without it.
            tracing::warn!(participant = %id, "no placeholder: {e:#}");
        }
        self.relayout();
        tracing::info!(participant = %id, ?role, count = self.participants.len(), "joined");
        let feeds = match audio_packets {
            Some(audio_packets) => Some(Feeds {
                video_packets: self
                    .pipeline
                    .composite(0)
                    .map_err(|e| RoomError::Media(format!("{e:#}")))?,
                audio_packets,
            }),
            None => None,
        };
        Ok(Joined {
            id,
            participants: others,
            video_codec: self.codec,
            tiers: self.config.media.tiers(),
            feeds,
            recording: self.recording.is_active(),
        })
    }

    pub(super) fn add_track(
        &mut self,
        who: ParticipantId,
        kind: TrackKind,
        signals: Arc<InputSignals>,
    ) -> Result<InputHandle, RoomError> {
        if !self.participants.iter().any(|p| p.id == who) {
            return Err(RoomError::NotHere(who));
        }
        let added = match kind {
            TrackKind::Video {
                codec,
                payload_type,
            } => self
                .pipeline
                .add_video_input(who, codec, payload_type, signals),
            TrackKind::Audio { payload_type } => self.pipeline.add_audio_input(who, payload_type),
        };
        let input = added.map_err(|e| RoomError::Media(format!("{e:#}")))?;
        tracing::info!(participant = %who, ?kind, "track added");
        Ok(input)
    }

    pub(super) fn leave(&mut self, who: ParticipantId) {
        if self.remove_watcher(who) {
            return;
        }
        let Some(index) = self.participants.iter().position(|p| p.id == who) else {
            return;
        };
        self.participants.remove(index);
        self.pipeline.remove_participant(who);
        self.stage.leave(who);
        let _ = self.sharing.members.send(Membership::Left { who });
        self.broadcast(ServerMessage::ParticipantLeft {
            participant_id: who.to_string(),
        });
        self.relayout();
        tracing::info!(participant = %who, count = self.participants.len(), "left");
    }

    pub(super) fn participant(
        &mut self,
        who: ParticipantId,
    ) -> Result<&mut Participant, RoomError> {
        self.participants
            .iter_mut()
            .find(|p| p.id == who)
            .ok_or(RoomError::NotHere(who))
    }

    pub(super) fn participant_infos(&self) -> Vec<ParticipantInfo> {
        self.participants
            .iter()
            .map(|p| ParticipantInfo {
                id: p.id.to_string(),
                name: p.name.clone(),
            })
            .collect()
    }
}
