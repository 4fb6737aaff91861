//! Mix-minus for a whole room in one pass: every speaker's decoded audio is summed once per
//! 20-ms frame, and each listener gets that sum minus their own voice.
//!
//! This replaces a GStreamer audiomixer per listener, each with a pad per other speaker: N(N−1)
//! pads and N mixer threads, every one woken by every speaker's every buffer. In a 16-person
//! room that was a third of the server's CPU, most of it the kernel switching threads (see
//! docs/performance.md). Here the work per frame is one addition per speaker sample and one
//! subtraction per listener sample, on one thread.
//!
//! In a room with more microphones than `max_mixed`, only the voices talking are mixed (see
//! media/loudest.rs): a listener who is not one of them hears exactly the full mix, which the
//! room encodes once for all of them.
//!
//! Pure: it takes samples with their running times and the current running time, and hands out
//! frames. No GStreamer, no clock, no thread (media/audio.rs supplies those).

use std::collections::BTreeMap;
use std::time::Duration;

use super::loudest::{level_db, LoudestVoices};
use crate::ids::ParticipantId;

/// Opus's native rate; every speaker is decoded to it.
pub const SAMPLE_RATE: u64 = 48_000;
/// One Opus frame (20 ms): the listeners' encoders take exactly one frame per buffer.
pub const FRAME_SAMPLES: usize = 960;
pub const FRAME: Duration = Duration::from_millis(20);
/// How far ahead of the frame being mixed a speaker's audio may be stored (1 s). Audio further
/// ahead means its timestamps jumped, and it is dropped rather than wrapping onto older samples.
const RING_SAMPLES: usize = 48_000;
/// Buffers whose timestamps are within this of where the previous one ended continue it sample
/// for sample, so timestamp jitter (and the jitter buffer's clock-skew corrections) never opens
/// gaps or overlaps in a voice. Beyond it, the voice resynchronises to its timestamps. 40 ms is
/// audiomixer's own default.
const ALIGNMENT_THRESHOLD: i64 = 1_920;
/// A mixer that fell this far behind the clock (a starved thread, a suspended VM) skips ahead
/// instead of bursting out seconds of stale audio.
const MAX_BACKLOG: i64 = 24_000;

/// When a frame may be mixed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Poll {
    /// Mix it now.
    Ready,
    /// Not before this running time (ns); earlier if a push completes the frame.
    WaitUntil(u64),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Coverage {
    /// No voice is worth waiting for: frames go at the clock's pace.
    Nobody,
    /// Every live voice has audio up to the frame's end.
    Complete,
    /// Some live voice has not delivered the frame yet.
    Missing,
}

/// How long to wait for speakers, from the room's media settings.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    /// After a frame's end, how long to wait for a speaker whose audio for it has not arrived
    /// (a lost packet the jitter buffer is still waiting for, then concealing).
    pub max_wait: Duration,
    /// A speaker whose audio stopped this long ago (microphone track removed, network gone) is
    /// no longer waited for at all, so one silent peer never delays everyone else's audio.
    pub stall_after: Duration,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MixCounters {
    pub frames: u64,
    /// Frames mixed without some speaker's audio, after waiting `max_wait` for it.
    pub frames_incomplete: u64,
    /// Samples that arrived for frames already mixed (too late to be heard).
    pub late_samples: u64,
    /// Samples dropped because their timestamps lay more than a second ahead.
    pub early_samples: u64,
    /// Frames skipped because the mixer fell too far behind the clock.
    pub skipped_frames: u64,
    /// Voices let into or left out of the mix (a big room mixes only those talking).
    pub mix_changes: u64,
}

struct Voice {
    /// Sample `i` of the room's timeline lives at `ring[i % RING_SAMPLES]`; a slot is zeroed once
    /// mixed, so a slot nobody wrote to is silence.
    ring: Box<[i16]>,
    /// Where this voice's next buffer continues it.
    expected: Option<i64>,
    /// End of the latest sample written; `None` before the first buffer.
    covered_until: Option<i64>,
    muted: bool,
}

impl Voice {
    fn new() -> Self {
        Voice {
            ring: vec![0; RING_SAMPLES].into_boxed_slice(),
            expected: None,
            covered_until: None,
            muted: false,
        }
    }

    fn slot(index: i64) -> usize {
        index.rem_euclid(RING_SAMPLES as i64) as usize
    }

    /// Copies out the frame starting at `start` and leaves silence in its place.
    fn take_frame(&mut self, start: i64, out: &mut [i16; FRAME_SAMPLES]) {
        let first = Self::slot(start);
        let run = FRAME_SAMPLES.min(RING_SAMPLES - first);
        out[..run].copy_from_slice(&self.ring[first..first + run]);
        self.ring[first..first + run].fill(0);
        let rest = FRAME_SAMPLES - run;
        out[run..].copy_from_slice(&self.ring[..rest]);
        self.ring[..rest].fill(0);
    }

    fn clear_frame(&mut self, start: i64) {
        let mut scratch = [0; FRAME_SAMPLES];
        self.take_frame(start, &mut scratch);
    }
}

/// One mixed frame: the sum of every mixed voice, and each of them, so that any listener's mix
/// is `sum − own`.
pub struct Frame {
    /// Running time of the frame's first sample, in ns.
    pub pts_ns: u64,
    sum: Box<[i32; FRAME_SAMPLES]>,
    voices: BTreeMap<ParticipantId, Box<[i16; FRAME_SAMPLES]>>,
    /// The level (dB below full scale) of every voice not muted by the server, mixed or not:
    /// what the speaker decision hears.
    pub levels: Vec<(ParticipantId, f32)>,
}

impl Frame {
    /// Everyone's audio: for the recording.
    pub fn full(&self, out: &mut [i16]) {
        for (o, s) in out.iter_mut().zip(self.sum.iter()) {
            *o = clamp(*s);
        }
    }

    /// Whether `who`'s voice is in this frame's mix. A listener whose voice is not hears exactly
    /// `full`, the same as every other such listener.
    pub fn is_mixed(&self, who: ParticipantId) -> bool {
        self.voices.contains_key(&who)
    }

    /// Everyone's audio but `listener`'s own. A listener who is not a speaker hears everyone.
    pub fn without(&self, listener: ParticipantId, out: &mut [i16]) {
        match self.voices.get(&listener) {
            Some(own) => {
                for ((o, s), v) in out.iter_mut().zip(self.sum.iter()).zip(own.iter()) {
                    *o = clamp(*s - i32::from(*v));
                }
            }
            None => self.full(out),
        }
    }
}

fn clamp(sample: i32) -> i16 {
    sample.clamp(i32::from(i16::MIN), i32::from(i16::MAX)) as i16
}

fn ns_to_samples(ns: u64) -> i64 {
    (u128::from(ns) * u128::from(SAMPLE_RATE) / 1_000_000_000) as i64
}

fn samples_to_ns(samples: i64) -> u64 {
    (samples.max(0) as u128 * 1_000_000_000 / u128::from(SAMPLE_RATE)) as u64
}

fn duration_to_samples(d: Duration) -> i64 {
    ns_to_samples(d.as_nanos().min(u128::from(u64::MAX)) as u64)
}

pub struct MixMinus {
    /// Timeline index of the next frame to mix (a multiple of FRAME_SAMPLES).
    next_frame: i64,
    voices: BTreeMap<ParticipantId, Voice>,
    max_wait: i64,
    stall_after: i64,
    /// The running time of the latest poll, in samples: what `push` judges stalled voices by.
    last_now: i64,
    /// The frame for which `push` last reported completion, so it is reported once.
    completed: Option<i64>,
    counters: MixCounters,
    loudest: LoudestVoices,
}

impl MixMinus {
    /// A mixer whose first frame is the one under way at running time `now_ns`, mixing at most
    /// `max_mixed` voices at once (see media/loudest.rs).
    pub fn new(now_ns: u64, timing: Timing, max_mixed: usize) -> Self {
        let now = ns_to_samples(now_ns);
        MixMinus {
            next_frame: now - now.rem_euclid(FRAME_SAMPLES as i64),
            voices: BTreeMap::new(),
            max_wait: duration_to_samples(timing.max_wait),
            stall_after: duration_to_samples(timing.stall_after),
            last_now: now,
            completed: None,
            counters: MixCounters::default(),
            loudest: LoudestVoices::new(max_mixed),
        }
    }

    pub fn add_voice(&mut self, who: ParticipantId) {
        let muted = self.voices.get(&who).is_some_and(|v| v.muted);
        let mut voice = Voice::new();
        voice.muted = muted;
        self.voices.insert(who, voice);
    }

    pub fn remove_voice(&mut self, who: ParticipantId) {
        self.voices.remove(&who);
    }

    /// Server-side mute: the voice stays (its audio is still consumed) but adds nothing.
    /// Returns false when `who` has no voice here.
    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) -> bool {
        match self.voices.get_mut(&who) {
            Some(v) => {
                v.muted = muted;
                true
            }
            None => false,
        }
    }

    pub fn voices(&self) -> usize {
        self.voices.len()
    }

    pub fn muted_voices(&self) -> usize {
        self.voices.values().filter(|v| v.muted).count()
    }

    /// Voices in the latest frame's mix.
    pub fn mixed_voices(&self) -> usize {
        self.loudest.mixed()
    }

    pub fn counters(&self) -> MixCounters {
        MixCounters {
            mix_changes: self.loudest.changes(),
            ..self.counters
        }
    }

    /// Stores a decoded buffer of `who`'s voice whose first sample plays at running time
    /// `pts_ns`. Returns true when this completed the frame being waited for (wake the mixer).
    pub fn push(&mut self, who: ParticipantId, pts_ns: u64, samples: &[i16]) -> bool {
        let next_frame = self.next_frame;
        let Some(voice) = self.voices.get_mut(&who) else {
            return false;
        };
        let stamped = ns_to_samples(pts_ns);
        let start = match voice.expected {
            Some(expected) if (stamped - expected).abs() <= ALIGNMENT_THRESHOLD => expected,
            // A voice (re)starts on a frame boundary: its packets then fill whole frames, and a
            // frame is complete the moment each voice's packet for it is in, instead of waiting
            // for the next packet of whichever voice started mid-frame (~10 ms less delay on
            // average, for at most one frame of delay on this voice).
            _ => {
                stamped
                    + (FRAME_SAMPLES as i64 - stamped.rem_euclid(FRAME_SAMPLES as i64))
                        % FRAME_SAMPLES as i64
            }
        };
        let end = start + samples.len() as i64;
        for (offset, sample) in samples.iter().enumerate() {
            let index = start + offset as i64;
            if index < next_frame {
                self.counters.late_samples += 1;
            } else if index >= next_frame + RING_SAMPLES as i64 {
                self.counters.early_samples += 1;
            } else {
                voice.ring[Voice::slot(index)] = *sample;
            }
        }
        voice.expected = Some(end);
        voice.covered_until = Some(voice.covered_until.map_or(end, |c| c.max(end)));
        let frame = self.next_frame;
        if self.completed != Some(frame) && self.coverage(self.last_now) == Coverage::Complete {
            self.completed = Some(frame);
            return true;
        }
        false
    }

    /// Where the voices worth waiting for stand against the end of the next frame.
    fn coverage(&self, now: i64) -> Coverage {
        let end = self.next_frame + FRAME_SAMPLES as i64;
        let mut live = false;
        for voice in self.voices.values().filter(|v| !v.muted) {
            match voice.covered_until {
                // Not heard from yet, or gone quiet: nothing to wait for.
                None => {}
                Some(c) if c + self.stall_after < now => {}
                Some(c) if c < end => return Coverage::Missing,
                Some(_) => live = true,
            }
        }
        if live {
            Coverage::Complete
        } else {
            Coverage::Nobody
        }
    }

    /// Decides whether the next frame can be mixed at running time `now_ns`: as soon as every
    /// live voice has delivered it (even before the frame's end: its audio is all there, and
    /// holding it back would only add delay), after `max_wait` past its end if one has not, and
    /// at its end when nobody is speaking.
    pub fn poll(&mut self, now_ns: u64) -> Poll {
        let now = ns_to_samples(now_ns);
        self.last_now = now;
        let start = self.next_frame;
        let end = start + FRAME_SAMPLES as i64;
        if now - end > MAX_BACKLOG {
            self.skip_to(now - self.max_wait);
            return self.poll(now_ns);
        }
        let due = match self.coverage(now) {
            // Never ahead of the clock by more than the frame under way, whatever the
            // timestamps say: a voice that joins now must not find its audio already late.
            Coverage::Complete => start,
            Coverage::Missing => end + self.max_wait,
            Coverage::Nobody => end,
        };
        if now >= due {
            Poll::Ready
        } else {
            Poll::WaitUntil(samples_to_ns(due))
        }
    }

    /// Drops frames up to the one containing `index`, leaving their slots silent.
    fn skip_to(&mut self, index: i64) {
        let target = index - index.rem_euclid(FRAME_SAMPLES as i64);
        while self.next_frame < target {
            for voice in self.voices.values_mut() {
                voice.clear_frame(self.next_frame);
            }
            self.next_frame += FRAME_SAMPLES as i64;
            self.counters.skipped_frames += 1;
        }
    }

    /// Mixes the next frame (call when `poll` says `Ready`) and moves on to the one after.
    pub fn mix(&mut self) -> Frame {
        let start = self.next_frame;
        let complete = self.coverage(self.last_now) != Coverage::Missing;
        let mut voices = BTreeMap::new();
        for (who, voice) in self.voices.iter_mut() {
            let mut samples = Box::new([0i16; FRAME_SAMPLES]);
            voice.take_frame(start, &mut samples);
            if !voice.muted {
                voices.insert(*who, samples);
            }
        }
        // Who is mixed is decided on this very frame, so a voice let in is heard from the first
        // frame that made it count as talk.
        let levels: Vec<(ParticipantId, f32)> = voices
            .iter()
            .map(|(who, samples)| (*who, level_db(&samples[..])))
            .collect();
        self.loudest.update(start / FRAME_SAMPLES as i64, &levels);
        let heard = levels;
        voices.retain(|who, _| self.loudest.is_mixed(*who));
        let mut sum = Box::new([0i32; FRAME_SAMPLES]);
        for samples in voices.values() {
            for (s, v) in sum.iter_mut().zip(samples.iter()) {
                *s += i32::from(*v);
            }
        }
        self.next_frame += FRAME_SAMPLES as i64;
        self.counters.frames += 1;
        if !complete {
            self.counters.frames_incomplete += 1;
        }
        Frame {
            pts_ns: samples_to_ns(start),
            sum,
            voices,
            levels: heard,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMING: Timing = Timing {
        max_wait: Duration::from_millis(50),
        stall_after: Duration::from_millis(200),
    };
    const MS: u64 = 1_000_000;
    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const C: ParticipantId = ParticipantId(3);

    fn constant(value: i16) -> Vec<i16> {
        vec![value; FRAME_SAMPLES]
    }

    fn mixed(frame: &Frame, listener: Option<ParticipantId>) -> Vec<i16> {
        let mut out = vec![0; FRAME_SAMPLES];
        match listener {
            Some(l) => frame.without(l, &mut out),
            None => frame.full(&mut out),
        }
        out
    }

    /// A mixer at 1 s of running time with these voices, all of them mixed.
    fn mixer(voices: &[ParticipantId]) -> MixMinus {
        let mut m = MixMinus::new(1_000 * MS, TIMING, 4);
        for v in voices {
            m.add_voice(*v);
        }
        m
    }

    #[test]
    fn each_listener_hears_everyone_but_themselves_and_the_full_mix_has_all() {
        let mut m = mixer(&[A, B, C]);
        for (who, value) in [(A, 100), (B, 20), (C, 3)] {
            m.push(who, 1_000 * MS, &constant(value));
        }
        assert_eq!(m.poll(1_020 * MS), Poll::Ready);
        let frame = m.mix();
        assert_eq!(frame.pts_ns, 1_000 * MS);
        assert_eq!(mixed(&frame, Some(A)), constant(23));
        assert_eq!(mixed(&frame, Some(B)), constant(103));
        assert_eq!(mixed(&frame, Some(C)), constant(120));
        assert_eq!(mixed(&frame, None), constant(123));
        // A listener without a microphone hears everyone.
        assert_eq!(mixed(&frame, Some(ParticipantId(9))), constant(123));
    }

    #[test]
    fn ones_own_voice_cancels_exactly_even_when_the_sum_would_clip() {
        let mut m = mixer(&[A, B]);
        m.push(A, 1_000 * MS, &constant(30_000));
        m.push(B, 1_000 * MS, &constant(20_000));
        m.poll(1_020 * MS);
        let frame = m.mix();
        // The full mix clips; each listener's own loud voice still leaves exactly the other.
        assert_eq!(mixed(&frame, None), constant(i16::MAX));
        assert_eq!(mixed(&frame, Some(A)), constant(20_000));
        assert_eq!(mixed(&frame, Some(B)), constant(30_000));
    }

    #[test]
    fn a_voice_starts_on_a_frame_boundary_and_a_whole_frame_goes_out_before_its_end() {
        let mut m = mixer(&[A, B]);
        m.push(A, 1_000 * MS, &constant(1));
        // B's first buffer is stamped 4 ms into the frame: it starts with the next frame.
        m.push(B, 1_004 * MS, &constant(2));
        assert_eq!(
            m.poll(1_005 * MS),
            Poll::Ready,
            "15 ms before the frame ends"
        );
        assert_eq!(mixed(&m.mix(), None), constant(1));
        // The next frame waits for A's next buffer, then goes at once.
        assert_eq!(m.poll(1_006 * MS), Poll::WaitUntil(1_090 * MS));
        assert!(m.push(A, 1_020 * MS, &constant(1)));
        assert_eq!(m.poll(1_021 * MS), Poll::Ready);
        assert_eq!(mixed(&m.mix(), None), constant(3));
    }

    #[test]
    fn a_frame_waits_for_every_live_voice_but_no_longer_than_max_wait() {
        let mut m = mixer(&[A, B]);
        m.push(A, 1_000 * MS, &constant(1));
        m.push(B, 980 * MS, &constant(1)); // B has spoken before, so it is waited for.
                                           // B's audio for the frame is missing: wait, up to max_wait past the frame's end.
        assert_eq!(m.poll(1_010 * MS), Poll::WaitUntil(1_070 * MS));
        assert_eq!(m.poll(1_020 * MS), Poll::WaitUntil(1_070 * MS));
        assert_eq!(m.poll(1_069 * MS), Poll::WaitUntil(1_070 * MS));
        assert_eq!(m.poll(1_070 * MS), Poll::Ready);
        let frame = m.mix();
        assert_eq!(mixed(&frame, Some(B)), constant(1), "A is heard without B");
        assert_eq!(m.counters().frames_incomplete, 1);
    }

    #[test]
    fn the_push_that_completes_a_frame_says_so_once() {
        let mut m = mixer(&[A, B]);
        // Both have spoken (audio up to the frame's start), neither has sent the frame itself.
        m.push(A, 980 * MS, &constant(1));
        m.push(B, 980 * MS, &constant(1));
        assert_eq!(m.poll(1_020 * MS), Poll::WaitUntil(1_070 * MS));
        assert!(!m.push(A, 1_000 * MS, &constant(1)), "B is still missing");
        assert!(
            m.push(B, 1_000 * MS, &constant(1)),
            "now the frame is whole"
        );
        assert!(!m.push(B, 1_020 * MS, &constant(1)), "already said");
        assert_eq!(m.poll(1_020 * MS), Poll::Ready);
    }

    #[test]
    fn a_voice_that_went_quiet_long_ago_or_never_spoke_is_not_waited_for() {
        let mut m = mixer(&[A, B, C]);
        m.push(A, 1_000 * MS, &constant(5));
        // B spoke last at 0.5 s (its track stopped); C has not sent anything yet.
        m.voices.get_mut(&B).unwrap().covered_until = Some(ns_to_samples(500 * MS));
        assert_eq!(m.poll(1_020 * MS), Poll::Ready);
        assert_eq!(mixed(&m.mix(), None), constant(5));
    }

    #[test]
    fn jittery_timestamps_continue_a_voice_and_a_jump_resynchronises_it() {
        let mut m = mixer(&[A]);
        // Two half-frames, the second stamped 3 ms late: still one unbroken voice.
        m.push(A, 1_000 * MS, &vec![7; FRAME_SAMPLES / 2]);
        m.push(A, 1_013 * MS, &vec![7; FRAME_SAMPLES / 2]);
        m.poll(1_020 * MS);
        assert_eq!(mixed(&m.mix(), None), constant(7), "no gap, no overlap");
        // 100 ms later than expected: a real jump, so the voice lands where its stamps say.
        m.push(A, 1_120 * MS, &constant(9));
        for _ in 0..5 {
            m.poll(1_200 * MS);
            assert_eq!(mixed(&m.mix(), None), constant(0), "silence in the gap");
        }
        m.poll(1_200 * MS);
        assert_eq!(mixed(&m.mix(), None), constant(9));
    }

    #[test]
    fn audio_for_a_frame_already_mixed_is_dropped_and_counted() {
        let mut m = mixer(&[A]);
        m.poll(1_100 * MS);
        m.mix();
        m.push(A, 990 * MS, &constant(4));
        assert_eq!(m.counters().late_samples, FRAME_SAMPLES as u64);
        m.poll(1_100 * MS);
        assert_eq!(
            mixed(&m.mix(), None),
            constant(0),
            "the late audio is not heard"
        );
    }

    #[test]
    fn a_muted_voice_is_silent_to_everyone_and_not_waited_for() {
        let mut m = mixer(&[A, B]);
        m.push(A, 1_000 * MS, &constant(10));
        m.push(B, 980 * MS, &constant(10));
        assert!(m.set_muted(B, true));
        assert_eq!(m.muted_voices(), 1);
        assert_eq!(
            m.poll(1_020 * MS),
            Poll::Ready,
            "B's missing audio does not hold A up"
        );
        let frame = m.mix();
        assert_eq!(mixed(&frame, None), constant(10));
        assert_eq!(mixed(&frame, Some(A)), constant(0));
        assert!(!m.set_muted(C, true), "C has no voice here");
    }

    #[test]
    fn slots_are_silent_once_mixed_so_a_ring_lap_never_replays_old_audio() {
        let mut m = mixer(&[A]);
        m.push(A, 1_000 * MS, &constant(3));
        m.poll(1_020 * MS);
        assert_eq!(mixed(&m.mix(), None), constant(3));
        // Over the next ring length (1 s) the same slots come round again: silent unless written.
        for k in 0..(RING_SAMPLES / FRAME_SAMPLES) as u64 {
            assert_eq!(m.poll((1_090 + 20 * k) * MS), Poll::Ready);
            assert_eq!(mixed(&m.mix(), None), constant(0));
        }
    }

    #[test]
    fn a_mixer_far_behind_the_clock_skips_ahead_instead_of_bursting() {
        let mut m = mixer(&[A]);
        m.push(A, 1_000 * MS, &constant(3));
        // Two seconds pass without a poll (a suspended machine).
        assert_eq!(m.poll(3_000 * MS), Poll::Ready);
        let frame = m.mix();
        assert!(
            frame.pts_ns >= 2_900 * MS,
            "resumes near now, at {}",
            frame.pts_ns
        );
        assert_eq!(
            mixed(&frame, None),
            constant(0),
            "the stale audio was dropped"
        );
        assert!(m.counters().skipped_frames > 90);
    }

    #[test]
    fn a_room_over_the_limit_mixes_only_its_talkers_and_the_rest_hear_one_mix() {
        let voices: Vec<ParticipantId> = (1..=5).map(ParticipantId).collect();
        let mut m = MixMinus::new(1_000 * MS, TIMING, 2);
        for v in &voices {
            m.add_voice(*v);
        }
        // Two talk (a quarter of full scale), three breathe into their microphones.
        for v in &voices {
            let value = if v.0 <= 2 { 8_000 } else { 3 };
            m.push(*v, 1_000 * MS, &constant(value));
        }
        assert_eq!(m.poll(1_020 * MS), Poll::Ready);
        let frame = m.mix();
        assert!(frame.is_mixed(A) && frame.is_mixed(B) && !frame.is_mixed(C));
        assert_eq!(m.mixed_voices(), 2);
        assert_eq!(mixed(&frame, None), constant(16_000), "no breathing in it");
        assert_eq!(mixed(&frame, Some(A)), constant(8_000));
        for quiet in &voices[2..] {
            assert_eq!(mixed(&frame, Some(*quiet)), mixed(&frame, None));
        }
    }

    #[test]
    fn frames_follow_each_other_without_gaps() {
        let mut m = mixer(&[]);
        for k in 0..10u64 {
            // With nobody speaking, frames come at the clock's pace: each once its time is up.
            assert_eq!(
                m.poll((1_019 + 20 * k) * MS),
                Poll::WaitUntil((1_020 + 20 * k) * MS)
            );
            assert_eq!(m.poll((1_020 + 20 * k) * MS), Poll::Ready);
            assert_eq!(m.mix().pts_ns, (1_000 + 20 * k) * MS);
        }
    }
}
