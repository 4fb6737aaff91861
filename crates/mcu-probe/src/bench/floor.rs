//! The media floor: the server's own room pipeline (the same pipelines/ descriptions: decode,
//! scale, composite, encode once, a mix-minus and an Opus encode per listener) fed the very same
//! pre-encoded packets at the same pace, with no WebRTC, no signalling and no room actor. Its
//! CPU is what the media work costs; the server's CPU over it is what everything else costs.
//! It runs in a process of its own (`mcu bench-floor`) so its CPU is measured alone.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use super::media::BenchMedia;
use super::pump::{self, Output, SendLog, Stream};
use mcu_server::codec::VideoCodec;
use mcu_server::config::MediaConfig;
use mcu_server::ids::ParticipantId;
use mcu_server::layout;
use mcu_server::media::{FeedReader, InputSignals, RoomPipeline};
use mcu_server::proc_stat::ProcessSample;
use mcu_server::rtc::{PT_OPUS, PT_VP8};

/// Time for every branch to start decoding before the CPU is counted.
pub const SETTLE: Duration = Duration::from_secs(2);

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct FloorReport {
    pub participants: usize,
    pub seconds: f64,
    pub cpu_cores: f64,
    pub rss_mb: f64,
    pub composite_frames: u64,
}

/// Runs the floor for `participants` of the loops in `media_file`, spread over `rooms` as the
/// bench spreads them, and reports its CPU.
pub async fn run(
    media_file: &Path,
    participants: usize,
    rooms: usize,
    seconds: f64,
) -> Result<FloorReport> {
    let media = Arc::new(BenchMedia::load(media_file)?);
    anyhow::ensure!(
        participants <= media.participants.len(),
        "the media file holds {} participants",
        media.participants.len()
    );
    let config = MediaConfig::default();
    let (events, mut events_rx) = mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(event) = events_rx.recv().await {
            tracing::debug!(?event, "floor pipeline event");
        }
    });
    let drain = |mut rx: mpsc::Receiver<bytes::Bytes>| {
        tokio::spawn(async move { while rx.recv().await.is_some() {} })
    };
    // A viewer's writer reads every composite packet; the floor's reads and drops them.
    let drain_composite = |mut reader: FeedReader| {
        tokio::spawn(async move { while reader.next().await.is_some() {} })
    };
    let log = Arc::new(SendLog::new(participants, super::media::VIDEO_LOOP_FRAMES));
    let (pump, pump_task) = pump::spawn(media.clone(), log);
    let mut drains = Vec::new();
    let mut pipelines = Vec::new();
    for room_index in 0..rooms.max(1) {
        let mut room = RoomPipeline::start(
            &format!("floor-{room_index}"),
            &config,
            VideoCodec::Vp8,
            events.clone(),
        )?;
        drains.push(drain_composite(room.composite(0)?));
        // The bench puts participant i in room i % rooms.
        let members: Vec<usize> = (room_index..participants).step_by(rooms.max(1)).collect();
        let people: Vec<ParticipantId> = members
            .iter()
            .map(|&index| ParticipantId(index as u64 + 1))
            .collect();
        // The layout the bench's server draws (a grid, pictures letterboxed: see server.rs),
        // placed before the inputs arrive, as a room places everyone on joining.
        let grid = layout::LayoutSpec {
            fit: mcu_server::protocol::layout::Fit::Letterbox,
            ..layout::LayoutSpec::default()
        };
        let arrangement = layout::arrange(&grid, &people, None, config.width, config.height);
        room.apply_layout(&arrangement);
        for (&index, &who) in members.iter().zip(&people) {
            let signals = Arc::new(InputSignals::default());
            let video = room
                .add_video_input(who, VideoCodec::Vp8, PT_VP8, signals)
                .context("adding a floor video input")?;
            let audio = room
                .add_audio_input(who, PT_OPUS)
                .context("adding a floor audio input")?;
            drains.push(drain(room.add_listener(who)?));
            pump.send(Stream::new(
                index,
                Output::Input(video),
                Output::Input(audio),
            ))
            .ok()
            .context("the pump stopped")?;
        }
        pipelines.push(room);
    }
    tokio::time::sleep(SETTLE).await;
    // Every camera is decoding now: size each canvas to them, as the server's rooms do on their
    // first frames, and let the new size settle before counting.
    for room in &mut pipelines {
        room.refresh_canvas(std::time::Instant::now());
    }
    tokio::time::sleep(SETTLE).await;
    let frames = |pipelines: &[RoomPipeline]| -> u64 {
        pipelines.iter().map(|p| p.stats().composite_frames).sum()
    };
    let frames_before = frames(&pipelines);
    let before = ProcessSample::of_self()?;
    // The measurement: the floor works while we wait.
    tokio::time::sleep(Duration::from_secs_f64(seconds)).await;
    let after = ProcessSample::of_self()?;
    let frames_after = frames(&pipelines);
    drop(pump);
    pump_task.abort();
    for d in drains {
        d.abort();
    }
    drop(pipelines);
    Ok(FloorReport {
        participants,
        seconds,
        cpu_cores: after.cores_since(&before),
        rss_mb: after.rss_mb,
        composite_frames: frames_after - frames_before,
    })
}

/// Runs the floor in a child process of this binary and returns its report.
pub async fn measure(
    media_file: &Path,
    participants: usize,
    rooms: usize,
    seconds: f64,
) -> Result<FloorReport> {
    let exe = std::env::current_exe().context("finding this program")?;
    let output = tokio::process::Command::new(exe)
        .arg("bench-floor")
        .arg("--media")
        .arg(media_file)
        .arg("--participants")
        .arg(participants.to_string())
        .arg("--rooms")
        .arg(rooms.to_string())
        .arg("--seconds")
        .arg(seconds.to_string())
        .kill_on_drop(true)
        .output()
        .await
        .context("running the floor")?;
    anyhow::ensure!(
        output.status.success(),
        "the floor failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).context("reading the floor's report")
}
