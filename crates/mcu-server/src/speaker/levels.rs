//! Each participant's loudness since the room last looked, gathered from two places: the RFC 6464
//! level a client stamps on its audio packets (read by its session as the packets arrive), and
//! the level of its decoded audio (measured by the room's mixing thread on every 20-ms frame).
//! The room takes both once per tick (`speaker::TICK`); a stamped level wins, since it is the
//! client's own measurement before encoding, and the decoded one covers clients that stamp none
//! (WHIP encoders, GStreamer and FFmpeg senders, our own probe).
//!
//! One small lock, held only to add a number: the writers are a streaming thread per microphone
//! and the mixing thread, 50 times a second each.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;

use crate::ids::ParticipantId;

/// Digital silence, as a level.
pub const SILENCE_DB: f32 = -100.0;

#[derive(Debug, Default, Clone, Copy)]
struct Sum {
    /// Mean-square energy relative to full scale, summed.
    energy: f64,
    count: u32,
}

impl Sum {
    fn add(&mut self, db: f32) {
        self.energy += 10f64.powf(f64::from(db.max(SILENCE_DB)) / 10.0);
        self.count += 1;
    }

    fn level_db(&self) -> Option<f32> {
        if self.count == 0 {
            return None;
        }
        let mean = self.energy / f64::from(self.count);
        Some(if mean > 0.0 {
            ((10.0 * mean.log10()) as f32).max(SILENCE_DB)
        } else {
            SILENCE_DB
        })
    }
}

#[derive(Debug, Default)]
struct Gathered {
    stamped: Sum,
    decoded: Sum,
}

#[derive(Debug, Default)]
pub struct Levels {
    gathered: Mutex<HashMap<ParticipantId, Gathered>>,
}

impl Levels {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ParticipantId, Gathered>> {
        // Plain numbers: a panic elsewhere cannot leave them half-written.
        self.gathered.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An RFC 6464 level from `who`'s packet: 0–127, in -dBov (0 is the loudest, 127 silence).
    pub fn stamped(&self, who: ParticipantId, level: u8) {
        let db = -f32::from(level.min(127));
        self.lock().entry(who).or_default().stamped.add(db);
    }

    /// One mixed frame's decoded levels (dB below full scale), one per voice heard in it.
    pub fn decoded(&self, frame: &[(ParticipantId, f32)]) {
        let mut gathered = self.lock();
        for (who, db) in frame {
            gathered.entry(*who).or_default().decoded.add(*db);
        }
    }

    /// Each participant's level since the last call, and starts over.
    pub fn take(&self) -> BTreeMap<ParticipantId, f32> {
        let mut gathered = self.lock();
        let levels = gathered
            .iter()
            .filter_map(|(who, g)| Some((*who, g.stamped.level_db().or(g.decoded.level_db())?)))
            .collect();
        gathered.clear();
        levels
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);

    #[test]
    fn a_stamped_level_wins_over_the_decoded_one() {
        let levels = Levels::default();
        levels.decoded(&[(A, -60.0), (B, -20.0)]);
        levels.stamped(A, 30);
        let taken = levels.take();
        assert_eq!(taken.get(&A).copied(), Some(-30.0));
        assert_eq!(taken.get(&B).copied(), Some(-20.0));
        assert!(levels.take().is_empty(), "a take starts over");
    }

    #[test]
    fn levels_are_averaged_as_energy() {
        let levels = Levels::default();
        // One frame at -20 dB and one in silence average to half the energy: 3 dB less.
        levels.decoded(&[(A, -20.0)]);
        levels.decoded(&[(A, SILENCE_DB)]);
        let db = levels.take()[&A];
        assert!((db + 23.0).abs() < 0.1, "{db}");
    }
}
