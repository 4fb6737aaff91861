//! The room's picture: which layout is on, who the active speaker is, and where that puts
//! everyone. A component of the room actor (it owns no task): the room tells it of joins, leaves,
//! mutes and layout requests, and asks it every `speaker::TICK` whether the speaker changed; it
//! answers with what to draw and what to tell clients. The maths is in layout/ and speaker/.

use std::sync::Arc;
use std::time::Instant;

use crate::ids::ParticipantId;
use crate::layout::{self, Arrangement, LayoutError, LayoutSpec, NamedLayouts};
use crate::protocol::layout::LayoutRequest;
use crate::protocol::{Layout, Tile};
use crate::speaker::levels::Levels;
use crate::speaker::DominantSpeaker;

pub(super) struct Stage {
    spec: LayoutSpec,
    named: NamedLayouts,
    speaker: DominantSpeaker,
    /// Where the room's microphones' levels gather (filled by sessions and the mixing thread).
    levels: Arc<Levels>,
    /// In joining order.
    people: Vec<ParticipantId>,
    arrangement: Arrangement,
    width: u32,
    height: u32,
}

/// What a tick decided.
pub(super) struct SpeakerChange {
    pub speaker: ParticipantId,
    /// The new arrangement, when the change moves tiles (a layout that features the speaker, or
    /// the outline).
    pub arrangement: Option<Arrangement>,
}

impl Stage {
    pub fn new(
        spec: LayoutSpec,
        named: NamedLayouts,
        levels: Arc<Levels>,
        width: u32,
        height: u32,
    ) -> Self {
        Stage {
            spec,
            named,
            speaker: DominantSpeaker::default(),
            levels,
            people: Vec::new(),
            arrangement: Arrangement::default(),
            width,
            height,
        }
    }

    pub fn arrangement(&self) -> &Arrangement {
        &self.arrangement
    }

    pub fn speaker(&self) -> Option<ParticipantId> {
        self.speaker.speaker()
    }

    /// Adds `who` last in joining order; returns the new arrangement.
    pub fn join(&mut self, who: ParticipantId) -> &Arrangement {
        self.people.push(who);
        self.speaker.add(who);
        self.rearrange()
    }

    /// Removes `who`: a pin or picture-in-picture on them falls back to the speaker.
    pub fn leave(&mut self, who: ParticipantId) -> &Arrangement {
        self.people.retain(|p| *p != who);
        self.speaker.remove(who);
        self.spec = self.spec.without(who);
        self.rearrange()
    }

    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        self.speaker.set_muted(who, muted);
    }

    /// Checks `request` and puts it on; refuses a layout naming someone not in the room.
    pub fn set_layout(&mut self, request: &LayoutRequest) -> Result<&Arrangement, LayoutError> {
        let spec = self.named.resolve(request)?;
        if let Some(absent) = spec
            .named_participants()
            .into_iter()
            .find(|p| !self.people.contains(p))
        {
            return Err(LayoutError::NotHere(absent));
        }
        self.spec = spec;
        Ok(self.rearrange())
    }

    /// Reads the levels gathered since the last tick and decides; None while the speaker stays.
    pub fn tick(&mut self, now: Instant) -> Option<SpeakerChange> {
        let levels = self.levels.take();
        let speaker = self.speaker.tick(&levels, now)?;
        let before = self.arrangement.clone();
        let after = self.rearrange();
        let arrangement = (*after != before).then(|| after.clone());
        Some(SpeakerChange {
            speaker,
            arrangement,
        })
    }

    fn rearrange(&mut self) -> &Arrangement {
        self.arrangement = layout::arrange(
            &self.spec,
            &self.people,
            self.speaker.speaker(),
            self.width,
            self.height,
        );
        &self.arrangement
    }

    /// The `layout` message for what is drawn now.
    pub fn message(&self) -> Layout {
        Layout {
            layout: self.spec.name().to_string(),
            width: self.width,
            height: self.height,
            tiles: self
                .arrangement
                .tiles
                .iter()
                .map(|t| Tile {
                    participant_id: t.who.to_string(),
                    x: t.rect.x,
                    y: t.rect.y,
                    width: t.rect.width,
                    height: t.rect.height,
                    z: t.z,
                })
                .collect(),
        }
    }
}
