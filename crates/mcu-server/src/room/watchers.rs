//! Watchers: WHEP players of the room (whep.rs). A watcher receives what participants receive —
//! the composite from the same shared encodes and tiers, and the room's full mix from its one
//! shared Opus encode — but has no tile and no voice, is not in the participant list, and costs
//! the room packetization, not an encode. Part of the room actor (an `impl Room` of its own
//! file).

use tokio::sync::oneshot;

use super::{Feeds, Joined, Room, RoomError};
use crate::ids::ParticipantId;

pub(super) struct Watcher {
    id: ParticipantId,
    /// Fired with the reason when the room closes: the watcher's session ends.
    removed: Option<oneshot::Sender<String>>,
}

impl Room {
    pub(super) fn add_watcher(
        &mut self,
        removed: oneshot::Sender<String>,
    ) -> Result<Joined, RoomError> {
        let limit = self.config.max_watchers;
        if self.watchers.len() >= limit {
            return Err(RoomError::WatchersFull(limit));
        }
        let id = self.next_participant_id();
        let video_packets = self
            .pipeline
            .composite(0)
            .map_err(|e| RoomError::Media(format!("{e:#}")))?;
        let audio_packets = self.pipeline.add_watcher(id);
        self.watchers.push(Watcher {
            id,
            removed: Some(removed),
        });
        tracing::info!(watcher = %id, count = self.watchers.len(), "watching");
        Ok(Joined {
            id,
            participants: self.participant_infos(),
            video_codec: self.codec,
            tiers: self.config.media.tiers(),
            feeds: Some(Feeds {
                video_packets,
                audio_packets,
            }),
            recording: self.recording.is_active(),
        })
    }

    /// Whether `who` was a watcher (now gone).
    pub(super) fn remove_watcher(&mut self, who: ParticipantId) -> bool {
        let Some(index) = self.watchers.iter().position(|w| w.id == who) else {
            return false;
        };
        self.watchers.remove(index);
        self.pipeline.remove_watcher(who);
        tracing::info!(watcher = %who, count = self.watchers.len(), "stopped watching");
        true
    }

    /// The room is closing: every watcher's session is told why.
    pub(super) fn dismiss_watchers(&mut self, reason: &str) {
        for mut w in self.watchers.drain(..) {
            if let Some(removed) = w.removed.take() {
                let _ = removed.send(reason.to_string());
            }
        }
    }
}
