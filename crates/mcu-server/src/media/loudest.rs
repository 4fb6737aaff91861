//! Which voices a room mixes: everyone while the room has few microphones, and in a bigger room
//! at most a handful, the ones talking. Everyone outside that handful hears the same mix, so the
//! room encodes it once for all of them instead of once per listener (media/audio.rs).
//!
//! Why: in a 25-person room, 25 mix-minus Opus encodes were a third of the server's CPU (two such
//! rooms on 2 cores, perf: libopus 18 % of all samples, 13 points of it the listeners' encoders),
//! while a mix of 25 microphones is mostly their background noise added up. Conference servers
//! that route audio keep the few loudest for the same reasons (Jitsi's "last N" audio, LiveKit's
//! top speakers).
//!
//! A voice is *active* in a frame when it stands clearly above its own background (a noise floor
//! that follows each microphone: it drops at once to a quieter frame and climbs back slowly, so a
//! fan or a hum stops counting as talk after a few seconds). An active voice outside the mix takes
//! a free place, or the place of the mixed voice that has been quiet the longest, once that one has
//! been quiet for a pause's length: a talker is never cut off between two words, and a newcomer
//! is let in from its first frame, so its first syllable is heard. A place nobody talking needs
//! goes to the loudest voice still audible (music, or a steady sound the floor has got used to):
//! a free place costs nothing to fill, and leaving it empty would silence what people hear.
//!
//! Pure: levels in, decisions out; frames are counted, not timed.

use std::collections::{BTreeMap, BTreeSet};

use crate::ids::ParticipantId;

/// Frames of the mix (20 ms each), counted from any origin.
pub type FrameIndex = i64;

/// A frame must be this far above its voice's noise floor to count as talk: speech sits 15–30 dB
/// above a room's background, a fan's flutter stays within a few dB of it.
const ACTIVE_ABOVE_FLOOR_DB: f32 = 9.0;
/// And at least this loud in absolute terms (full scale = 0 dB): below it is a muted-at-source
/// microphone or a whisper nobody would hear in a mix anyway.
const ACTIVE_MIN_DB: f32 = -50.0;
/// How fast a noise floor climbs back after a quiet frame pulled it down: 3 dB per second. A
/// steady hum 20 dB above the last silence stops counting as talk within ~4 s; a talker's own
/// pauses (every few seconds) pull the floor back down long before their speech would.
const FLOOR_RISE_PER_FRAME_DB: f32 = 0.06;
/// Where a new voice's floor starts: a quiet room. A voice that starts by talking counts as
/// talking at once.
const FLOOR_START_DB: f32 = -70.0;
/// Digital silence, as a level.
const SILENCE_DB: f32 = -100.0;
/// A mixed voice keeps its place through a pause this long (10 frames, 200 ms): the gaps between a
/// talker's words are shorter, the gap before someone else speaks up is longer.
pub const PAUSE_FRAMES: FrameIndex = 10;

/// The level of a frame of samples, in dB below full scale (0 dB is a full-scale square wave).
pub fn level_db(samples: &[i16]) -> f32 {
    if samples.is_empty() {
        return SILENCE_DB;
    }
    let energy: f64 = samples.iter().map(|s| f64::from(*s).powi(2)).sum::<f64>()
        / samples.len() as f64
        / f64::from(i16::MAX).powi(2);
    if energy <= 0.0 {
        return SILENCE_DB;
    }
    ((10.0 * energy.log10()) as f32).max(SILENCE_DB)
}

struct Voice {
    floor_db: f32,
    /// The latest frame in which this voice was active.
    last_active: Option<FrameIndex>,
}

impl Voice {
    /// Takes in one frame's level; returns whether the voice is active in it.
    fn hear(&mut self, frame: FrameIndex, db: f32) -> bool {
        let active = db >= (self.floor_db + ACTIVE_ABOVE_FLOOR_DB).max(ACTIVE_MIN_DB);
        self.floor_db = if db < self.floor_db {
            db
        } else {
            (self.floor_db + FLOOR_RISE_PER_FRAME_DB).min(db)
        };
        if active {
            self.last_active = Some(frame);
        }
        active
    }

    fn quiet_for(&self, frame: FrameIndex) -> FrameIndex {
        self.last_active.map_or(FrameIndex::MAX, |at| frame - at)
    }
}

pub struct LoudestVoices {
    max: usize,
    voices: BTreeMap<ParticipantId, Voice>,
    mixed: BTreeSet<ParticipantId>,
    /// Voices let in or left out so far (each is a switch of encoder for that listener).
    changes: u64,
}

impl LoudestVoices {
    /// At most `max` voices mixed at once (0 is taken as 1).
    pub fn new(max: usize) -> Self {
        LoudestVoices {
            max: max.max(1),
            voices: BTreeMap::new(),
            mixed: BTreeSet::new(),
            changes: 0,
        }
    }

    pub fn is_mixed(&self, who: ParticipantId) -> bool {
        self.mixed.contains(&who)
    }

    pub fn mixed(&self) -> usize {
        self.mixed.len()
    }

    pub fn changes(&self) -> u64 {
        self.changes
    }

    /// Takes in one frame: the level of every voice that may be mixed (unmuted, present), and
    /// decides who is mixed in it. A voice not listed is forgotten.
    pub fn update(&mut self, frame: FrameIndex, levels: &[(ParticipantId, f32)]) {
        self.voices
            .retain(|who, _| levels.iter().any(|(w, _)| w == who));
        let before = self.mixed.len();
        self.mixed
            .retain(|who| levels.iter().any(|(w, _)| w == who));
        self.changes += (before - self.mixed.len()) as u64;

        let mut challengers: Vec<(f32, ParticipantId)> = Vec::new();
        for (who, db) in levels {
            let voice = self.voices.entry(*who).or_insert(Voice {
                floor_db: FLOOR_START_DB,
                last_active: None,
            });
            if voice.hear(frame, *db) && !self.mixed.contains(who) {
                challengers.push((*db, *who));
            }
        }

        if levels.len() <= self.max {
            // Few enough microphones: everyone is mixed, as in any small call.
            for (who, _) in levels {
                if self.mixed.insert(*who) {
                    self.changes += 1;
                }
            }
            return;
        }
        challengers.sort_by(|a, b| b.0.total_cmp(&a.0));
        for (_, challenger) in challengers {
            if self.mixed.len() >= self.max {
                let quietest = self
                    .mixed
                    .iter()
                    // Every mixed voice has a tracker (both are kept to `levels` above); one
                    // without would count as quiet for ever.
                    .map(|who| {
                        let quiet = self
                            .voices
                            .get(who)
                            .map_or(FrameIndex::MAX, |v| v.quiet_for(frame));
                        (quiet, *who)
                    })
                    .max();
                match quietest {
                    Some((quiet, who)) if quiet >= PAUSE_FRAMES => {
                        self.mixed.remove(&who);
                        self.changes += 1;
                    }
                    // Every mixed voice is talking: the challenger waits for a pause.
                    _ => break,
                }
            }
            self.mixed.insert(challenger);
            self.changes += 1;
        }
        if self.mixed.len() < self.max {
            let mut audible: Vec<(f32, ParticipantId)> = levels
                .iter()
                .filter(|(who, db)| *db >= ACTIVE_MIN_DB && !self.mixed.contains(who))
                .map(|(who, db)| (*db, *who))
                .collect();
            audible.sort_by(|a, b| b.0.total_cmp(&a.0));
            for (_, who) in audible.into_iter().take(self.max - self.mixed.len()) {
                self.mixed.insert(who);
                self.changes += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TALK: f32 = -20.0;
    const QUIET: f32 = -75.0;

    fn p(n: u32) -> ParticipantId {
        ParticipantId(n.into())
    }

    /// Levels for voices 1..=n: those in `talking` at TALK, the rest QUIET.
    fn levels(n: u32, talking: &[u32]) -> Vec<(ParticipantId, f32)> {
        (1..=n)
            .map(|i| (p(i), if talking.contains(&i) { TALK } else { QUIET }))
            .collect()
    }

    fn mixed(l: &LoudestVoices, n: u32) -> Vec<u32> {
        (1..=n).filter(|i| l.is_mixed(p(*i))).collect()
    }

    #[test]
    fn levels_are_measured_against_full_scale() {
        assert_eq!(level_db(&[0; 960]), SILENCE_DB);
        assert!((level_db(&[i16::MAX; 960])).abs() < 0.01);
        let half: Vec<i16> = vec![i16::MAX / 2; 960];
        assert!((level_db(&half) + 6.02).abs() < 0.05);
    }

    #[test]
    fn a_small_room_mixes_everyone_even_in_silence() {
        let mut l = LoudestVoices::new(4);
        l.update(0, &levels(4, &[]));
        assert_eq!(mixed(&l, 4), vec![1, 2, 3, 4]);
    }

    #[test]
    fn a_big_room_lets_talkers_in_from_their_first_frame_up_to_the_limit() {
        let mut l = LoudestVoices::new(2);
        l.update(0, &levels(6, &[]));
        assert_eq!(mixed(&l, 6), Vec::<u32>::new(), "nobody talks");
        l.update(1, &levels(6, &[5]));
        assert_eq!(mixed(&l, 6), vec![5]);
        l.update(2, &levels(6, &[5, 3]));
        assert_eq!(mixed(&l, 6), vec![3, 5]);
        // A third talker while both others talk waits.
        l.update(3, &levels(6, &[5, 3, 1]));
        assert_eq!(mixed(&l, 6), vec![3, 5]);
    }

    #[test]
    fn a_talker_keeps_its_place_through_a_pause_and_yields_it_after() {
        let mut l = LoudestVoices::new(2);
        l.update(0, &levels(5, &[1, 2]));
        // 1 pauses; 3 speaks up during the pause: it waits until the pause is a pause.
        for frame in 1..PAUSE_FRAMES {
            l.update(frame, &levels(5, &[2, 3]));
            assert_eq!(mixed(&l, 5), vec![1, 2], "frame {frame}");
        }
        l.update(PAUSE_FRAMES, &levels(5, &[2, 3]));
        assert_eq!(mixed(&l, 5), vec![2, 3]);
        assert_eq!(l.mixed(), 2);
    }

    #[test]
    fn the_voice_quiet_longest_is_the_one_that_yields() {
        let mut l = LoudestVoices::new(2);
        l.update(0, &levels(5, &[1, 2]));
        l.update(5, &levels(5, &[2]));
        l.update(30, &levels(5, &[4]));
        assert_eq!(mixed(&l, 5), vec![2, 4], "1 was quiet since 0, 2 since 5");
    }

    #[test]
    fn a_steady_hum_stops_counting_as_talk() {
        let mut l = LoudestVoices::new(1);
        let hum = -40.0;
        let mut frame = 0;
        // Voice 1 hums for 10 s; voice 2 is quiet.
        for _ in 0..500 {
            l.update(frame, &[(p(1), hum), (p(2), QUIET)]);
            frame += 1;
        }
        // 2 talks after the pause length: the hum is no talk, so 2 takes the place.
        l.update(frame, &[(p(1), hum), (p(2), TALK)]);
        assert_eq!(mixed(&l, 2), vec![2]);
    }

    #[test]
    fn a_free_place_goes_to_the_loudest_voice_still_audible() {
        let mut l = LoudestVoices::new(2);
        l.update(0, &levels(4, &[1, 2]));
        // 1 leaves the levels (muted). Nobody else talks, but 4 plays music the floor has got
        // used to, louder than 3's: 4 gets the place.
        l.update(1, &[(p(2), TALK), (p(3), -45.0), (p(4), -30.0)]);
        assert_eq!(l.mixed(), 2);
        assert!(l.is_mixed(p(2)) && l.is_mixed(p(4)));
        // Nothing audible left to fill a place with: it stays free.
        l.update(2, &[(p(2), TALK), (p(3), QUIET), (p(5), QUIET)]);
        assert_eq!(l.mixed(), 1);
    }

    #[test]
    fn a_voice_left_out_of_the_levels_leaves_the_mix() {
        let mut l = LoudestVoices::new(2);
        l.update(0, &levels(3, &[1, 2]));
        assert_eq!(mixed(&l, 3), vec![1, 2]);
        // 1 is muted (the caller leaves it out); 3 talks: 3 takes the free place at once.
        l.update(1, &[(p(2), TALK), (p(3), TALK)]);
        assert_eq!(mixed(&l, 3), vec![2, 3]);
        // Three voices again, 1 quiet: it does not come back while the room is over the limit.
        l.update(2, &levels(3, &[2, 3]));
        assert_eq!(mixed(&l, 3), vec![2, 3]);
        assert!(l.changes() >= 4);
    }
}
