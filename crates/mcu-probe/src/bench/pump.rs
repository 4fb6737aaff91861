//! Replays every bench participant's pre-encoded loops in real time, with fresh RTP sequence
//! numbers and timestamps, from one task, and logs when each frame and each burst left. All
//! participants share one audio clock, so each burst falls in its own slot of every mix.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;
use webrtc::rtp::header::Header;
use webrtc::rtp::packet::Packet;

use anyhow::Context;
use mcu_server::codec::VideoCodec;

use super::marks::{self, AUDIO_LOOP_PACKETS, PACKET_SAMPLES};
use super::media::{BenchMedia, VIDEO_FPS};
use crate::participant::{Sending, Source};
use mcu_server::media::InputHandle;
use mcu_server::rtc::{OutboundTrack, PT_OPUS, PT_VP8};

const VIDEO_TICKS_PER_FRAME: u32 = 90_000 / VIDEO_FPS;
/// Bursts remembered per participant: a few loops, plenty for any plausible latency.
const BURSTS_KEPT: usize = 8;

/// When each participant's frames and bursts were sent.
pub struct SendLog {
    sends: Mutex<Vec<Sends>>,
}

#[derive(Default, Clone)]
struct Sends {
    frames: Vec<Option<Instant>>,
    bursts: std::collections::VecDeque<Instant>,
}

impl SendLog {
    pub fn new(participants: usize, frames: usize) -> Self {
        SendLog {
            sends: Mutex::new(vec![
                Sends {
                    frames: vec![None; frames],
                    bursts: Default::default(),
                };
                participants
            ]),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Sends>> {
        self.sends.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn record_frame(&self, who: usize, frame: usize, at: Instant) {
        if let Some(slot) = self
            .lock()
            .get_mut(who)
            .and_then(|s| s.frames.get_mut(frame))
        {
            *slot = Some(at);
        }
    }

    fn record_burst(&self, who: usize, at: Instant) {
        if let Some(s) = self.lock().get_mut(who) {
            s.bursts.push_back(at);
            while s.bursts.len() > BURSTS_KEPT {
                s.bursts.pop_front();
            }
        }
    }

    /// When frame `frame` of `who`'s loop was last sent.
    pub fn video_sent(&self, who: usize, frame: usize) -> Option<Instant> {
        self.lock().get(who)?.frames.get(frame).copied().flatten()
    }

    /// The last burst `who` sent before `at`.
    pub fn burst_before(&self, who: usize, at: Instant) -> Option<Instant> {
        self.lock()
            .get(who)?
            .bursts
            .iter()
            .rev()
            .find(|t| **t <= at)
            .copied()
    }
}

/// Where a stream's packets go: a WebRTC track to the server, or straight into a branch of a
/// room pipeline (the floor, see floor.rs).
pub enum Output {
    Track(OutboundTrack),
    Input(InputHandle),
}

impl Output {
    async fn write(&self, packet: &Packet) {
        match self {
            // A write fails only while the connection is not up yet, or is gone.
            Output::Track(track) => {
                let _ = track.write_rtp(packet).await;
            }
            Output::Input(input) => {
                if let Ok(bytes) = webrtc::util::Marshal::marshal(packet) {
                    let _ = input.push(bytes);
                }
            }
        }
    }
}

/// One participant's outgoing streams, as the pump sees them.
pub struct Stream {
    pub index: usize,
    pub video: Output,
    pub audio: Output,
    /// Set when the server asked for a keyframe: the loop restarts at its keyframe.
    pub restart: Arc<AtomicBool>,
    /// Cleared when the participant leaves.
    pub alive: Arc<AtomicBool>,
    next_frame: usize,
    video_seq: u16,
    video_ts: u32,
    audio_seq: u16,
    audio_ts: u32,
}

impl Stream {
    pub fn new(index: usize, video: Output, audio: Output) -> Self {
        Stream {
            index,
            video,
            audio,
            restart: Arc::default(),
            alive: Arc::new(AtomicBool::new(true)),
            next_frame: 0,
            video_seq: 0,
            video_ts: 0,
            audio_seq: 0,
            audio_ts: 0,
        }
    }
}

fn packet(pt: u8, seq: u16, ts: u32, marker: bool, payload: Bytes) -> Packet {
    Packet {
        header: Header {
            version: 2,
            marker,
            payload_type: pt,
            sequence_number: seq,
            timestamp: ts,
            ..Default::default()
        },
        payload,
    }
}

/// Feeds the streams added through the returned sender until it is dropped.
pub fn spawn(
    media: Arc<BenchMedia>,
    log: Arc<SendLog>,
) -> (mpsc::UnboundedSender<Stream>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::unbounded_channel::<Stream>();
    let task = tokio::spawn(async move {
        let mut streams: Vec<Stream> = Vec::new();
        let epoch = tokio::time::Instant::now();
        let video_period = Duration::from_nanos(1_000_000_000 / u64::from(VIDEO_FPS));
        let audio_period = Duration::from_millis(20);
        let (mut video_tick, mut audio_tick) = (0u32, 0u32);
        loop {
            loop {
                match rx.try_recv() {
                    Ok(s) => streams.push(s),
                    Err(mpsc::error::TryRecvError::Empty) => break,
                    Err(mpsc::error::TryRecvError::Disconnected) => return,
                }
            }
            streams.retain(|s| s.alive.load(Ordering::Relaxed));
            let next_video = epoch + video_period * video_tick;
            let next_audio = epoch + audio_period * audio_tick;
            tokio::time::sleep_until(next_video.min(next_audio)).await;
            if next_video <= next_audio {
                video_tick += 1;
                for s in &mut streams {
                    send_frame(s, &media, &log).await;
                }
            } else {
                let slot = audio_tick as usize % AUDIO_LOOP_PACKETS;
                audio_tick += 1;
                for s in &mut streams {
                    send_audio(s, slot, &media, &log).await;
                }
            }
        }
    });
    (tx, task)
}

async fn send_frame(s: &mut Stream, media: &BenchMedia, log: &SendLog) {
    let Some(loops) = media.participants.get(s.index) else {
        return;
    };
    if s.restart.swap(false, Ordering::Relaxed) {
        s.next_frame = 0;
    }
    let number = s.next_frame;
    s.next_frame = (s.next_frame + 1) % loops.video.len().max(1);
    let Some(frame) = loops.video.get(number) else {
        return;
    };
    log.record_frame(s.index, number, Instant::now());
    for (i, payload) in frame.iter().enumerate() {
        let p = packet(
            PT_VP8,
            s.video_seq,
            s.video_ts,
            i + 1 == frame.len(),
            payload.clone(),
        );
        s.video_seq = s.video_seq.wrapping_add(1);
        s.video.write(&p).await;
    }
    s.video_ts = s.video_ts.wrapping_add(VIDEO_TICKS_PER_FRAME);
}

async fn send_audio(s: &mut Stream, slot: usize, media: &BenchMedia, log: &SendLog) {
    let Some(payload) = media
        .participants
        .get(s.index)
        .and_then(|l| l.audio.get(slot))
    else {
        return;
    };
    if slot == marks::burst_slot(s.index) {
        log.record_burst(s.index, Instant::now());
    }
    let p = packet(PT_OPUS, s.audio_seq, s.audio_ts, false, payload.clone());
    s.audio_seq = s.audio_seq.wrapping_add(1);
    s.audio_ts = s.audio_ts.wrapping_add(PACKET_SAMPLES as u32);
    s.audio.write(&p).await;
}

/// A participant's source that replays loop `index` through the pump: its tracks join the
/// pump's streams, a keyframe request restarts the loop at its keyframe, and leaving takes the
/// stream out.
pub fn replay_source(index: usize, pump: mpsc::UnboundedSender<Stream>) -> Source {
    Source {
        camera: Some(VideoCodec::Vp8),
        start: Box::new(move |audio, video| {
            let video = video.context("the bench's participants send video")?;
            let stream = Stream::new(index, Output::Track(video), Output::Track(audio));
            let (restart, alive) = (stream.restart.clone(), stream.alive.clone());
            pump.send(stream).ok().context("the pump has stopped")?;
            Ok(Sending {
                keyframe: Arc::new(move || restart.store(true, Ordering::Relaxed)),
                stop: Box::new(move || alive.store(false, Ordering::Relaxed)),
                tasks: Vec::new(),
            })
        }),
    }
}
