//! The room's audio: each participant's microphone is decoded once and handed to the room's
//! mix-minus (media/mixminus.rs); a thread of the room's own mixes a 20-ms frame as soon as every
//! live voice has delivered it, and pushes everyone-but-you to the encoder of each listener whose
//! voice is in the mix, the full mix once to the encoder every other listener hears
//! (media/routes.rs), and the full mix to the recorder's tap. Branches come and go at run time.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::{Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use super::mixminus::{Frame, MixCounters, MixMinus, Poll, Timing, FRAME_SAMPLES, SAMPLE_RATE};
use super::routes::{Routes, Source};
use super::sink::{on_each_buffer, on_each_stamped_packet};
use super::{pipelines, INPUT_QUEUE_MAX};
use crate::config::MediaConfig;
use crate::ids::ParticipantId;
use crate::speaker::levels::Levels;

/// A voice whose audio stopped this long ago is no longer waited for (see mixminus::Timing).
/// Well above a lost packet's worst case (the jitter buffer's wait plus one frame), well below
/// anything a listener would notice as a delay.
const STALLED_VOICE: Duration = Duration::from_millis(250);
/// A listener whose mix has been digital silence (nobody else in the room, or everyone else
/// muted) for this many frames gets only one frame in `SILENT_FRAME_EVERY` until someone is
/// heard, as Opus DTX does in a pause: the receiver fills the gaps with silence, and still sees
/// its audio stream alive. The frames before the pause are all encoded so the decoder ends on
/// silence, not on a cut. Measured in a room with one camera-less participant: the listener's
/// Opus encode of silence was 28 % of the room's CPU.
const SILENT_FRAMES_BEFORE_PAUSE: u32 = 10;
/// In a pause, one 20-ms frame in this many is sent: every 400 ms, as Opus DTX sends one.
const SILENT_FRAME_EVERY: u32 = 20;

/// The raw audio every branch speaks: what the mix-minus works in.
fn raw_audio_caps() -> gst::Caps {
    gst::Caps::builder("audio/x-raw")
        .field("format", "S16LE")
        .field("rate", SAMPLE_RATE as i32)
        .field("channels", 1i32)
        .field("layout", "interleaved")
        .build()
}

/// What the room's audio holds and does, for PipelineStats.
pub struct AudioStats {
    pub voices: usize,
    pub listeners: usize,
    pub muted_voices: usize,
    /// Voices in the mix now (all of them unless the room has more than `max_mixed_voices`).
    pub mixed_voices: usize,
    /// Listeners hearing the room's shared encode of the full mix (their voice is not in it).
    pub listeners_on_shared_mix: usize,
    pub counters: MixCounters,
}

/// A listener encoder (pipelines/listener-audio.txt) named `name`.
fn listener_bin(media: &MediaConfig, name: &str) -> Result<gst::Bin> {
    pipelines::LISTENER_AUDIO.bin(
        &[
            ("queue_max_ns", INPUT_QUEUE_MAX.as_nanos().to_string()),
            ("audio_bitrate_bps", media.audio_bitrate_bps.to_string()),
        ],
        name,
    )
}

/// A listener encoder's appsrc (raw audio in) and appsink (RTP out).
fn listener_ends(bin: &gst::Bin) -> Result<(gst_app::AppSrc, gst::Element)> {
    let src = bin
        .by_name("src")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
        .context("pipelines/listener-audio.txt has no appsrc named src")?;
    src.set_caps(Some(&raw_audio_caps()));
    let sink = bin
        .by_name("sink")
        .context("pipelines/listener-audio.txt has no element named sink")?;
    Ok((src, sink))
}

/// Where the mixing thread's frames go, besides the listeners' own encoders.
struct Outputs {
    /// Everyone's audio, for the recorder.
    fullmix: gst_app::AppSrc,
    /// The encoder every listener outside the mix hears.
    shared_mix: gst_app::AppSrc,
    routes: Arc<Routes>,
    /// Each voice's level in every frame, for the speaker decision.
    levels: Arc<Levels>,
}

/// Frames of silence in a row, and whether this one goes to the encoder: a pause is sent as one
/// frame in `SILENT_FRAME_EVERY` (see SILENT_FRAMES_BEFORE_PAUSE).
fn worth_encoding(run: &mut u32, silent: bool) -> bool {
    *run = if silent { run.saturating_add(1) } else { 0 };
    *run <= SILENT_FRAMES_BEFORE_PAUSE || run.is_multiple_of(SILENT_FRAME_EVERY)
}

/// What the speakers' streaming threads and the mixing thread share.
struct Shared {
    state: Mutex<State>,
    /// Signalled when a push completes the frame being waited for, or to stop.
    wake: Condvar,
}

struct State {
    mix: MixMinus,
    /// Every listener's encoder input, cloned out by the mixing thread once per frame.
    listeners: Arc<[(ParticipantId, gst_app::AppSrc)]>,
    stop: bool,
}

impl Shared {
    /// The state, even if a thread panicked while holding it: the mix is plain data and stays
    /// usable, and a poisoned lock must not take the room's audio down with it.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

pub struct AudioGraph {
    pipeline: gst::Pipeline,
    media: MediaConfig,
    shared: Arc<Shared>,
    mixer: Option<JoinHandle<()>>,
    inputs: BTreeMap<ParticipantId, gst::Bin>,
    listeners: BTreeMap<ParticipantId, gst::Bin>,
    /// Which encoder each listener hears.
    routes: Arc<Routes>,
    /// Speakers muted by the server, kept across their microphone coming and going.
    muted: HashSet<ParticipantId>,
}

/// Packets queued for one listener's track writer: 2.5 s of 20-ms frames.
const LISTENER_PACKET_QUEUE: usize = 128;

impl AudioGraph {
    /// Starts the room's mixing thread; `fullmix` (an appsrc in the room pipeline) gets everyone's
    /// audio. The pipeline must already run on its clock (see `start_live`).
    pub fn start(
        pipeline: gst::Pipeline,
        fullmix: gst::Element,
        media: MediaConfig,
        levels: Arc<Levels>,
    ) -> Result<Self> {
        let fullmix = fullmix
            .dynamic_cast::<gst_app::AppSrc>()
            .ok()
            .context("pipelines/room.txt: fullmix is not an appsrc")?;
        fullmix.set_caps(Some(&raw_audio_caps()));
        let clock = pipeline.clock().context("the room pipeline has no clock")?;
        let base_time = pipeline
            .base_time()
            .context("the room pipeline has no base time")?;
        let timing = Timing {
            // A late packet is worth waiting for as long as its jitter buffer waits for it, and
            // as long as the compositor waits for a late frame.
            max_wait: Duration::from_millis(u64::from(
                media.audio_jitter_ms + media.mixer_latency_ms,
            )),
            stall_after: STALLED_VOICE,
        };
        let routes = Arc::new(Routes::default());
        let shared_mix = {
            let bin = listener_bin(&media, "listener-shared")?;
            let (src, sink) = listener_ends(&bin)?;
            let routes = routes.clone();
            on_each_stamped_packet(&sink, move |at, packet| routes.deliver_shared(at, packet))?;
            pipeline
                .add(&bin)
                .context("adding listener-shared")
                .and_then(|_| {
                    bin.sync_state_with_parent()
                        .context("starting listener-shared")
                })?;
            src
        };
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                mix: MixMinus::new(
                    running_time(&clock, base_time),
                    timing,
                    media.max_mixed_voices,
                ),
                listeners: Arc::from(Vec::new()),
                stop: false,
            }),
            wake: Condvar::new(),
        });
        let mixer = {
            let shared = shared.clone();
            let outputs = Outputs {
                fullmix,
                shared_mix,
                routes: routes.clone(),
                levels,
            };
            std::thread::Builder::new()
                .name(format!("mix-{}", pipeline.name()))
                .spawn(move || mix_until_stopped(&shared, &clock, base_time, &outputs))
                .context("starting the room's mixing thread")?
        };
        Ok(AudioGraph {
            pipeline,
            media,
            shared,
            mixer: Some(mixer),
            inputs: BTreeMap::new(),
            listeners: BTreeMap::new(),
            routes,
            muted: HashSet::new(),
        })
    }

    pub fn add_input(&mut self, who: ParticipantId, payload_type: u8) -> Result<gst_app::AppSrc> {
        self.remove_input(who);
        let bin = pipelines::AUDIO_INPUT.bin(
            &[
                ("queue_max_ns", INPUT_QUEUE_MAX.as_nanos().to_string()),
                ("jitter_ms", self.media.audio_jitter_ms.to_string()),
            ],
            &format!("audio-{who}"),
        )?;
        let appsrc = bin
            .by_name("src")
            .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
            .context("pipelines/audio-input.txt has no appsrc named src")?;
        appsrc.set_caps(Some(
            &gst::Caps::builder("application/x-rtp")
                .field("media", "audio")
                .field("clock-rate", 48_000i32)
                .field("encoding-name", "OPUS")
                .field("payload", i32::from(payload_type))
                .build(),
        ));
        let sink = bin
            .by_name("sink")
            .context("pipelines/audio-input.txt has no element named sink")?;
        on_each_buffer(&sink, into_the_mix(who, self.shared.clone()))?;
        {
            let mut state = self.shared.lock();
            state.mix.add_voice(who);
            state.mix.set_muted(who, self.muted.contains(&who));
        }
        let started = self
            .pipeline
            .add(&bin)
            .with_context(|| format!("adding audio-{who}"))
            .and_then(|_| {
                bin.sync_state_with_parent()
                    .with_context(|| format!("starting audio-{who}"))
            });
        self.inputs.insert(who, bin);
        if let Err(e) = started {
            self.remove_input(who);
            return Err(e);
        }
        Ok(appsrc)
    }

    pub fn add_listener(&mut self, who: ParticipantId) -> Result<mpsc::Receiver<Bytes>> {
        self.remove_listener(who);
        let bin = listener_bin(&self.media, &format!("listener-{who}"))?;
        let (src, sink) = listener_ends(&bin)?;
        let (tx, packets) = mpsc::channel(LISTENER_PACKET_QUEUE);
        let routes = self.routes.clone();
        on_each_stamped_packet(&sink, move |at, packet| routes.deliver_own(who, at, packet))?;
        let started = self
            .pipeline
            .add(&bin)
            .with_context(|| format!("adding listener-{who}"))
            .and_then(|_| {
                bin.sync_state_with_parent()
                    .with_context(|| format!("starting listener-{who}"))
            });
        self.listeners.insert(who, bin);
        if let Err(e) = started {
            self.remove_listener(who);
            return Err(e);
        }
        self.routes.add(who, tx);
        self.update_listeners(|listeners| listeners.push((who, src)));
        Ok(packets)
    }

    /// A listener with no voice in the room (a WHEP watcher): it always hears the shared encode
    /// of the full mix, so it needs a route and no encoder.
    pub fn add_watcher(&mut self, who: ParticipantId) -> mpsc::Receiver<Bytes> {
        let (tx, packets) = mpsc::channel(LISTENER_PACKET_QUEUE);
        self.routes.add(who, tx);
        packets
    }

    pub fn remove_participant(&mut self, who: ParticipantId) {
        self.remove_input(who);
        self.remove_listener(who);
        self.muted.remove(&who);
    }

    /// Takes `who`'s microphone out of every mix (or puts it back), without renegotiating
    /// anything: the room hears silence from them.
    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        if muted {
            self.muted.insert(who);
        } else {
            self.muted.remove(&who);
        }
        self.shared.lock().mix.set_muted(who, muted);
    }

    /// What the mix holds and does now.
    pub fn stats(&self) -> AudioStats {
        let state = self.shared.lock();
        AudioStats {
            voices: state.mix.voices(),
            listeners: state.listeners.len(),
            muted_voices: state.mix.muted_voices(),
            mixed_voices: state.mix.mixed_voices(),
            listeners_on_shared_mix: self.routes.on_shared(),
            counters: state.mix.counters(),
        }
    }

    fn remove_input(&mut self, who: ParticipantId) {
        let Some(bin) = self.inputs.remove(&who) else {
            return;
        };
        // Stopped first: once this returns, its streaming thread no longer pushes to the mix.
        let _ = bin.set_state(gst::State::Null);
        let _ = self.pipeline.remove(&bin);
        self.shared.lock().mix.remove_voice(who);
    }

    fn remove_listener(&mut self, who: ParticipantId) {
        // Out of the mixing thread's list first, so it stops pushing to a branch going away.
        self.update_listeners(|listeners| listeners.retain(|(l, _)| *l != who));
        self.routes.remove(who);
        if let Some(bin) = self.listeners.remove(&who) {
            let _ = bin.set_state(gst::State::Null);
            let _ = self.pipeline.remove(&bin);
        }
    }

    fn update_listeners(&self, change: impl FnOnce(&mut Vec<(ParticipantId, gst_app::AppSrc)>)) {
        let mut state = self.shared.lock();
        let mut listeners = state.listeners.to_vec();
        change(&mut listeners);
        state.listeners = Arc::from(listeners);
    }
}

impl Drop for AudioGraph {
    fn drop(&mut self) {
        self.shared.lock().stop = true;
        self.shared.wake.notify_all();
        if let Some(mixer) = self.mixer.take() {
            // It wakes at once and returns: at most one frame's work stands in the way.
            let _ = mixer.join();
        }
    }
}

/// Hands each decoded buffer of `who`'s voice to the mix, on the branch's streaming thread.
/// Never blocks for longer than the mix takes to store 20 ms of samples.
fn into_the_mix(
    who: ParticipantId,
    shared: Arc<Shared>,
) -> impl Fn(Option<u64>, &[u8]) -> Result<(), gst::FlowError> + Send + Sync + 'static {
    move |running_time, data| {
        let Some(pts) = running_time else {
            return Ok(());
        };
        let samples: Vec<i16> = data
            .chunks_exact(2)
            .map(|b| i16::from_le_bytes([b[0], b[1]]))
            .collect();
        let completed = shared.lock().mix.push(who, pts, &samples);
        if completed {
            shared.wake.notify_one();
        }
        Ok(())
    }
}

fn running_time(clock: &gst::Clock, base_time: gst::ClockTime) -> u64 {
    clock
        .time()
        .checked_sub(base_time)
        .map_or(0, gst::ClockTime::nseconds)
}

/// The mixing thread: waits for each frame to be due and complete, mixes it, and pushes it out
/// (outside the lock, so speakers never wait on the encoders).
fn mix_until_stopped(
    shared: &Shared,
    clock: &gst::Clock,
    base_time: gst::ClockTime,
    outputs: &Outputs,
) {
    // Per listener with an encoder of their own, and for the shared one: frames of silence in a
    // row so far.
    let mut silent_for: std::collections::HashMap<ParticipantId, u32> = Default::default();
    let mut shared_silent_for = 0u32;
    loop {
        let (frame, listeners) = {
            let mut state = shared.lock();
            loop {
                if state.stop {
                    return;
                }
                let now = running_time(clock, base_time);
                match state.mix.poll(now) {
                    Poll::Ready => break,
                    Poll::WaitUntil(at) => {
                        let timeout = Duration::from_nanos(at.saturating_sub(now));
                        state = shared
                            .wake
                            .wait_timeout(state, timeout)
                            .map_or_else(|e| e.into_inner().0, |(s, _)| s);
                    }
                }
            }
            (state.mix.mix(), state.listeners.clone())
        };
        outputs.levels.decoded(&frame.levels);
        // Who hears which encoder is settled before any encoder sees this frame.
        outputs
            .routes
            .follow(super::routes::frame_at(frame.pts_ns), |who| {
                if frame.is_mixed(who) {
                    Source::Own
                } else {
                    Source::Shared
                }
            });
        let mut full_silent = false;
        let full = frame_buffer(&frame, |out| {
            frame.full(out);
            full_silent = out.iter().all(|s| *s == 0);
        });
        // A push fails only while a branch is shutting down (flushing); the next frame goes on.
        let _ = outputs.fullmix.push_buffer(full.clone());
        // Listeners outside the mix, and watchers (a route with no encoder of their own).
        let anyone_on_shared = outputs.routes.on_shared() > 0;
        if anyone_on_shared && worth_encoding(&mut shared_silent_for, full_silent) {
            let _ = outputs.shared_mix.push_buffer(full);
        }
        silent_for.retain(|who, _| listeners.iter().any(|(w, _)| w == who));
        for (who, src) in listeners.iter().filter(|(who, _)| frame.is_mixed(*who)) {
            let mut silent = false;
            let buffer = frame_buffer(&frame, |out| {
                frame.without(*who, out);
                silent = out.iter().all(|s| *s == 0);
            });
            if worth_encoding(silent_for.entry(*who).or_default(), silent) {
                let _ = src.push_buffer(buffer);
            }
        }
    }
}

/// A buffer of one frame of S16LE samples, written by `fill`, stamped with the frame's time.
fn frame_buffer(frame: &Frame, fill: impl FnOnce(&mut [i16])) -> gst::Buffer {
    let mut samples = [0i16; FRAME_SAMPLES];
    fill(&mut samples);
    let bytes: Vec<u8> = samples.iter().flat_map(|s| s.to_le_bytes()).collect();
    let mut buffer = gst::Buffer::from_mut_slice(bytes);
    if let Some(b) = buffer.get_mut() {
        b.set_pts(gst::ClockTime::from_nseconds(frame.pts_ns));
        b.set_duration(gst::ClockTime::from_nseconds(
            super::mixminus::FRAME.as_nanos() as u64,
        ));
    }
    buffer
}
