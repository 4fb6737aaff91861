//! Who the room's active speaker is: the layouts that feature the speaker follow this decision,
//! the grid outlines it, and clients hear of each change (`active_speaker`).
//!
//! Each participant's loudness arrives in ticks (`TICK`, 100 ms): the RFC 6464 level their client
//! stamps on its audio packets where it sends one (browsers do), else the level of their decoded
//! audio (levels.rs). Whether a participant is talking at all is judged against their own noise
//! floor (which drops at once to a quieter tick and climbs back slowly, so a fan or a hum stops
//! counting after a while: the scheme of media/loudest.rs); who is louder is judged on the level
//! itself, smoothed over about half a second. (Comparing heights above each one's floor instead
//! made the decision depend on when each floor was last pulled down: two tones 30 dB apart
//! scored the same.)
//!
//! The decision has hysteresis, as Jitsi's and FreeSWITCH's have (../shared/REFERENCES.md §1.2,
//! §1.3): a challenger must be clearly louder than the speaker (`MARGIN_DB`) for long enough
//! (`CHALLENGE`), and the speaker keeps the floor at least `MIN_HOLD` after taking it, so the
//! decision changes at most about once a second and two people talking at once do not make the
//! picture flap. A muted participant never becomes the speaker. With nobody talking, the last
//! speaker stays (the picture does not jump to someone silent).
//!
//! Pure: levels and `now` in, decisions out.

pub mod levels;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::ids::ParticipantId;

/// How often the room reads the levels and decides: fine enough for a decision within half a
/// second of its conditions being met, coarse enough to cost nothing (one lock per tick).
pub const TICK: Duration = Duration::from_millis(100);
/// A tick must be at least this loud (dB below full scale) to count as speech at all: a
/// microphone muted at its source or a whisper nobody would hear sits below it.
const SPEECH_MIN_DB: f32 = -55.0;
/// How fast a noise floor climbs back after a quiet tick pulled it down: 3 dB a second, as in
/// media/loudest.rs (a steady hum 20 dB above the last silence stops counting within ~7 s; a
/// talker's pauses pull the floor back down long before their speech would).
const FLOOR_RISE_PER_TICK_DB: f32 = 0.3;
/// Where a new voice's floor starts: a quiet room.
const FLOOR_START_DB: f32 = -70.0;
/// The share of a new tick in the smoothed score: 0.3 per 100 ms settles within ~0.3 s to a
/// change of voice, and bridges the gaps between words.
const SMOOTHING: f32 = 0.3;
/// A smoothed score (dB above the floor) from which someone counts as talking: speech sits
/// 15–30 dB above a room's background.
const TALKING_DB: f32 = 8.0;
/// A challenger must be this much louder than the speaker (smoothed): 6 dB is twice the
/// amplitude, clearly louder to a listener, while two people at the same level never qualify.
const MARGIN_DB: f32 = 6.0;
/// And louder for this long without a break: longer than a cough or a laugh.
const CHALLENGE: Duration = Duration::from_millis(600);
/// The speaker keeps the floor at least this long after taking it: at most one change a second,
/// the pace at which a picture switching is still comfortable to watch.
pub const MIN_HOLD: Duration = Duration::from_secs(1);

#[derive(Debug)]
struct Voice {
    floor_db: f32,
    /// Smoothed dB above the floor (0 when not talking): whether this is talk or background.
    score: f32,
    /// Smoothed loudness, as mean-square power relative to full scale: who is louder. Smoothed
    /// as power, not dB, so the gaps between words cost a talker little (a silent tick takes
    /// 1.5 dB off, not 26).
    power: f64,
    muted: bool,
    /// Since when this voice has been clearly louder than the speaker.
    louder_since: Option<Instant>,
}

impl Voice {
    fn new() -> Self {
        Voice {
            floor_db: FLOOR_START_DB,
            score: 0.0,
            power: 0.0,
            muted: false,
            louder_since: None,
        }
    }

    fn hear(&mut self, level_db: Option<f32>) {
        let db = level_db.unwrap_or(levels::SILENCE_DB);
        let above = if self.muted || db < SPEECH_MIN_DB {
            0.0
        } else {
            (db - self.floor_db).max(0.0)
        };
        // Digital silence is no sound at all (no packets yet, a muted client): it says nothing
        // of the room's background, so it leaves the floor where it is.
        if db > levels::SILENCE_DB + 1.0 {
            self.floor_db = if db < self.floor_db {
                db
            } else {
                (self.floor_db + FLOOR_RISE_PER_TICK_DB).min(db)
            };
        }
        self.score += SMOOTHING * (above - self.score);
        let power = 10f64.powf(f64::from(db) / 10.0);
        self.power += f64::from(SMOOTHING) * (power - self.power);
    }

    fn talking(&self) -> bool {
        !self.muted && self.score >= TALKING_DB
    }

    /// How loud the voice is as a contender: its smoothed level while it talks, silence while
    /// it does not (background noise never outweighs a talker).
    fn contending_db(&self) -> f32 {
        if !self.talking() || self.power <= 0.0 {
            return levels::SILENCE_DB;
        }
        ((10.0 * self.power.log10()) as f32).max(levels::SILENCE_DB)
    }
}

#[derive(Debug, Default)]
pub struct DominantSpeaker {
    voices: BTreeMap<ParticipantId, Voice>,
    speaker: Option<ParticipantId>,
    since: Option<Instant>,
}

impl DominantSpeaker {
    pub fn speaker(&self) -> Option<ParticipantId> {
        self.speaker
    }

    pub fn add(&mut self, who: ParticipantId) {
        self.voices.entry(who).or_insert_with(Voice::new);
    }

    /// Forgets `who`; returns true when they were the speaker (the room has none until someone
    /// talks).
    pub fn remove(&mut self, who: ParticipantId) -> bool {
        self.voices.remove(&who);
        if self.speaker == Some(who) {
            self.speaker = None;
            self.since = None;
            return true;
        }
        false
    }

    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        if let Some(voice) = self.voices.get_mut(&who) {
            voice.muted = muted;
        }
    }

    /// One tick: each participant's level over it (None: nothing heard, silence). Returns the new
    /// speaker when the decision changes.
    pub fn tick(
        &mut self,
        levels: &BTreeMap<ParticipantId, f32>,
        now: Instant,
    ) -> Option<ParticipantId> {
        for (who, voice) in &mut self.voices {
            voice.hear(levels.get(who).copied());
        }
        let held = self.since.is_none_or(|since| now >= since + MIN_HOLD);
        let speaker_db = self
            .speaker
            .and_then(|s| self.voices.get(&s))
            .map_or(levels::SILENCE_DB, Voice::contending_db);
        let current = self.speaker;
        let mut best: Option<(ParticipantId, f32)> = None;
        for (who, voice) in &mut self.voices {
            if Some(*who) == current {
                voice.louder_since = None;
                continue;
            }
            let db = voice.contending_db();
            let louder = voice.talking() && db >= speaker_db + MARGIN_DB;
            if !louder {
                voice.louder_since = None;
                continue;
            }
            let since = *voice.louder_since.get_or_insert(now);
            // With nobody holding the floor, the first clear talker takes it at once.
            let long_enough = current.is_none() || now >= since + CHALLENGE;
            if long_enough && best.is_none_or(|(_, s)| db > s) {
                best = Some((*who, db));
            }
        }
        let (winner, _) = best?;
        if !held && current.is_some() {
            return None;
        }
        self.speaker = Some(winner);
        self.since = Some(now);
        if let Some(v) = self.voices.get_mut(&winner) {
            v.louder_since = None;
        }
        Some(winner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const C: ParticipantId = ParticipantId(3);
    const LOUD: f32 = -14.0;
    const QUIET: f32 = -45.0;

    struct Run {
        detector: DominantSpeaker,
        start: Instant,
        ticks: u32,
        changes: Vec<(Duration, ParticipantId)>,
    }

    impl Run {
        fn new(people: &[ParticipantId]) -> Self {
            let mut detector = DominantSpeaker::default();
            for p in people {
                detector.add(*p);
            }
            Run {
                detector,
                start: Instant::now(),
                ticks: 0,
                changes: Vec::new(),
            }
        }

        /// Runs `seconds` of ticks where `level(who, tick)` gives each one's level.
        fn run(&mut self, seconds: f64, level: impl Fn(ParticipantId, u32) -> Option<f32>) {
            let ticks = (seconds / TICK.as_secs_f64()).round() as u32;
            for _ in 0..ticks {
                self.ticks += 1;
                let now = self.start + TICK * self.ticks;
                let levels = [A, B, C]
                    .into_iter()
                    .filter_map(|p| Some((p, level(p, self.ticks)?)))
                    .collect();
                if let Some(s) = self.detector.tick(&levels, now) {
                    self.changes.push((now - self.start, s));
                }
            }
        }
    }

    #[test]
    fn the_loud_one_becomes_the_speaker_at_once() {
        let mut run = Run::new(&[A, B, C]);
        run.run(2.0, |p, _| Some(if p == B { LOUD } else { QUIET }));
        assert_eq!(run.detector.speaker(), Some(B));
        assert!(
            run.changes[0].0 <= Duration::from_millis(200),
            "{:?}",
            run.changes
        );
        assert_eq!(run.changes.len(), 1);
    }

    #[test]
    fn another_taking_over_needs_to_be_clearly_louder_for_a_while() {
        let mut run = Run::new(&[A, B, C]);
        run.run(3.0, |p, _| Some(if p == A { LOUD } else { QUIET }));
        run.run(3.0, |p, _| Some(if p == C { LOUD } else { QUIET }));
        assert_eq!(run.detector.speaker(), Some(C));
        let (at, who) = run.changes[1];
        assert_eq!(who, C);
        let after_turn = at - Duration::from_secs(3);
        assert!(
            after_turn >= CHALLENGE && after_turn <= Duration::from_millis(1500),
            "took over {after_turn:?} after the turn"
        );
    }

    #[test]
    fn a_quiet_room_then_one_speaks_up() {
        let mut run = Run::new(&[A, B, C]);
        run.run(6.0, |_, _| Some(-43.0));
        run.run(2.0, |p, _| Some(if p == B { LOUD } else { -43.0 }));
        assert_eq!(run.detector.speaker(), Some(B), "{:?}", run.changes);
        // As measured: silence before the first packets, a short quiet start, then loud.
        let mut run = Run::new(&[A, B, C]);
        run.run(0.1, |_, _| Some(-100.0));
        run.run(0.6, |p, _| Some(if p == B { -100.0 } else { -43.0 }));
        run.run(0.5, |_, _| Some(-43.0));
        run.run(3.0, |p, _| Some(if p == B { LOUD } else { -43.0 }));
        assert_eq!(
            run.detector.speaker(),
            Some(B),
            "{:?} {:?}",
            run.changes,
            run.detector
        );
    }

    #[test]
    fn two_equally_loud_never_flap() {
        let mut run = Run::new(&[A, B, C]);
        // Both talk at the same level, each with small random-looking wobbles of ±3 dB.
        run.run(20.0, |p, t| match p {
            A => Some(LOUD + ((t * 7) % 7) as f32 - 3.0),
            B => Some(LOUD + ((t * 5 + 3) % 7) as f32 - 3.0),
            _ => Some(QUIET),
        });
        assert_eq!(run.changes.len(), 1, "{:?}", run.changes);
    }

    #[test]
    fn changes_come_at_most_once_a_second_however_fast_people_alternate() {
        let mut run = Run::new(&[A, B, C]);
        // A and B alternate every 300 ms, each silent while the other speaks.
        run.run(10.0, |p, t| {
            let a_turn = (t / 3) % 2 == 0;
            match p {
                A if a_turn => Some(LOUD),
                B if !a_turn => Some(LOUD),
                _ => None,
            }
        });
        for pair in run.changes.windows(2) {
            assert!(pair[1].0 - pair[0].0 >= MIN_HOLD, "{:?}", run.changes);
        }
    }

    #[test]
    fn a_muted_participant_never_becomes_the_speaker() {
        let mut run = Run::new(&[A, B, C]);
        run.detector.set_muted(A, true);
        run.run(3.0, |p, _| (p == A).then_some(LOUD));
        assert_eq!(run.detector.speaker(), None);
        run.run(1.0, |p, _| (p != C).then_some(LOUD));
        assert_eq!(run.detector.speaker(), Some(B));
    }

    #[test]
    fn a_steady_noise_stops_counting_and_the_last_speaker_stays_through_silence() {
        let mut run = Run::new(&[A, B, C]);
        // B's fan hums 20 dB above silence: new, it sounds like someone talking (it may take
        // the floor), until B's floor has climbed to it.
        let hum = -50.0;
        run.run(20.0, |p, _| (p == B).then_some(hum));
        run.run(2.0, |p, _| match p {
            A => Some(LOUD),
            B => Some(hum),
            _ => None,
        });
        assert_eq!(run.detector.speaker(), Some(A));
        // A falls silent; the fan goes on for a minute.
        run.run(60.0, |p, _| (p == B).then_some(hum));
        assert_eq!(run.detector.speaker(), Some(A), "{:?}", run.changes);
    }

    #[test]
    fn the_speaker_leaving_frees_the_floor() {
        let mut run = Run::new(&[A, B, C]);
        run.run(2.0, |p, _| (p == A).then_some(LOUD));
        assert!(run.detector.remove(A));
        assert_eq!(run.detector.speaker(), None);
        assert!(!run.detector.remove(B));
    }
}
