//! Moderation and mutes, as the room actor carries them out: a moderator removing or muting
//! someone (admin API), a participant muting their own microphone. Part of the room actor (an
//! `impl Room` of its own file), not a task: each changes the room's own state and media.

use super::{Room, RoomError};
use crate::ids::ParticipantId;
use crate::protocol::ServerMessage;

impl Room {
    pub(super) fn remove(&mut self, who: ParticipantId, reason: String) -> Result<(), RoomError> {
        let p = self.participant(who)?;
        let _ = p.events.try_send(ServerMessage::Removed {
            reason: reason.clone(),
        });
        if let Some(removed) = p.removed.take() {
            let _ = removed.send(reason);
        }
        tracing::info!(participant = %who, "removed by a moderator");
        self.leave(who);
        Ok(())
    }

    pub(super) fn mute(&mut self, who: ParticipantId, muted: bool) -> Result<(), RoomError> {
        let p = self.participant(who)?;
        p.muted = muted;
        self.pipeline.set_muted(who, muted);
        self.show_muted(who);
        tracing::info!(participant = %who, muted, "server-side mute");
        self.broadcast(ServerMessage::ParticipantMuted {
            participant_id: who.to_string(),
            muted,
            by_self: false,
        });
        Ok(())
    }

    pub(super) fn self_mute(&mut self, who: ParticipantId, muted: bool) {
        let Ok(p) = self.participant(who) else {
            return;
        };
        if p.self_muted == muted {
            return;
        }
        p.self_muted = muted;
        self.show_muted(who);
        self.broadcast(ServerMessage::ParticipantMuted {
            participant_id: who.to_string(),
            muted,
            by_self: true,
        });
    }

    /// The label and the speaker decision follow either mute.
    fn show_muted(&mut self, who: ParticipantId) {
        let Some(p) = self.participants.iter().find(|p| p.id == who) else {
            return;
        };
        let muted = p.muted || p.self_muted;
        self.pipeline.show_muted(who, muted);
        self.stage.set_muted(who, muted);
    }
}
