//! `mcu bench`: synthetic participants replay pre-encoded media (frame codes in the video, tone
//! bursts in the audio) into a server, receivers decode the composite and measure latency, frame
//! rate, freezes and join time, and the server's CPU and memory are read from /proc. The same
//! media through the bare room pipeline (floor.rs) gives the CPU the media work alone costs.

mod crowd;
mod figures;
pub mod floor;
mod links;
mod marks;
mod media;
mod member;
mod plot;
use mcu_server::proc_stat;
mod pump;
mod receiver;
mod report;
mod server;
mod watch;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::impair::Impairment;
use crowd::{Crowd, Placement};
use figures::{Quantiles, WindowFigures};
pub use links::{ImpairedViewer, Moves};
use media::BenchMedia;
pub use media::DEFAULT_SEND_SIZE;
use proc_stat::machine_cores;
pub use report::{summary, BenchReport, RampReport, RampStep, RoomFigures};
use watch::{percent_of_machine, Progress, ServerWatch};

/// Participants join at most this often (5 per second), like people arriving, so the server is
/// measured holding a room rather than absorbing a stampede of negotiations.
pub const JOIN_SPACING: Duration = Duration::from_millis(200);
/// After the last join, time for every newcomer's keyframe and tile before measuring.
pub const SETTLE: Duration = Duration::from_secs(2);
/// The ramp's criteria: a step fails when any is broken.
pub const RAMP_MIN_FPS_P5: f64 = 29.0;
pub const RAMP_MAX_LATENCY_P95_MS: f64 = 150.0;
pub const RAMP_MAX_CPU_PERCENT: f64 = 90.0;
/// The composite's frame rate (the server's default, which a self-started server uses).
const COMPOSITE_FPS: u32 = mcu_server::config::DEFAULT_FPS;
/// The server holds at most this many in one room.
const ROOM_CAPACITY: usize = mcu_server::layout::MAX_TILES;

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The server to measure; None starts one (this binary's `serve`) on loopback.
    pub url: Option<String>,
    /// The measured server's process, for its CPU and memory (found by itself when self-started).
    pub server_pid: Option<u32>,
    pub participants: usize,
    pub rooms: usize,
    /// Participants per room that decode and measure what they receive.
    pub receivers: usize,
    pub seconds: f64,
    pub ramp: bool,
    /// With `ramp`: add whole rooms of `participants` (up to `rooms` of them) instead of one
    /// participant at a time.
    pub ramp_rooms: bool,
    /// Measurement time of each ramp step.
    pub step_seconds: f64,
    pub send_width: usize,
    pub send_height: usize,
    pub floor: bool,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
    /// Bad links, by participant index (join order, from 0). Impaired participants always
    /// decode, and are reported apart from the room's figures.
    pub impaired: HashMap<usize, Impairment>,
    /// Seconds into the measurement at which the bad links are lifted (to see the viewers
    /// move back up); None keeps them bad throughout.
    pub lift_after: Option<f64>,
}

pub async fn run(config: &BenchConfig) -> Result<BenchReport> {
    anyhow::ensure!(config.participants >= 1, "at least one participant");
    anyhow::ensure!(config.rooms >= 1, "at least one room");
    anyhow::ensure!(config.receivers >= 1, "at least one receiver per room");
    anyhow::ensure!(
        config.impaired.is_empty() || !config.ramp,
        "impaired links are for a fixed run, not --ramp"
    );
    if let Some(i) = config.impaired.keys().find(|i| **i >= config.participants) {
        anyhow::bail!(
            "participant {} is impaired, but only {} join",
            i + 1,
            config.participants
        );
    }
    anyhow::ensure!(
        !config.ramp_rooms || config.ramp,
        "--ramp-rooms is a kind of --ramp"
    );
    let most = match (config.ramp, config.ramp_rooms) {
        (true, true) => config.participants * config.rooms,
        (true, false) => ROOM_CAPACITY * config.rooms,
        (false, _) => config.participants,
    };
    let per_room = if config.ramp_rooms {
        config.participants
    } else {
        most.div_ceil(config.rooms)
    };
    anyhow::ensure!(
        per_room <= ROOM_CAPACITY,
        "at most {ROOM_CAPACITY} participants per room (the largest grid); use --rooms"
    );
    let placement = if config.ramp_rooms {
        Placement::Fill {
            per_room: config.participants,
        }
    } else {
        Placement::RoundRobin {
            rooms: config.rooms,
        }
    };
    let progress = Progress::new();
    progress.show(0, 1, &format!("encoding media for {most} participants"));
    let (width, height) = (config.send_width, config.send_height);
    let media = tokio::task::spawn_blocking(move || BenchMedia::encode(most, width, height))
        .await
        .context("the encoder task failed")??;
    let media = Arc::new(media);
    progress.show(1, 1, &format!("encoded media for {most} participants"));
    progress.done();
    let media_file = std::env::temp_dir().join(format!("mcu-bench-{}.media", std::process::id()));
    media.save(&media_file)?;

    let own_server = match &config.url {
        Some(_) => None,
        None => Some(server::OwnServer::start().await?),
    };
    let url = match (&config.url, &own_server) {
        (Some(url), _) => url.clone(),
        (None, Some(s)) => s.url.clone(),
        (None, None) => unreachable!("a server was started when no URL was given"),
    };
    let mut watch = ServerWatch::new(config.server_pid.or(own_server.as_ref().map(|s| s.pid)));
    watch.sample();
    let idle_rss = watch.rss();

    let mut crowd = Crowd::new(
        &url,
        media.clone(),
        placement,
        config.receivers,
        config.impaired.clone(),
    )?;
    let result = if config.ramp {
        ramp(config, &mut crowd, &mut watch, &progress).await
    } else {
        fixed(config, &mut crowd, &mut watch, &progress).await
    };
    let errors = crowd.errors();
    crowd.leave_all().await;
    drop(own_server);
    let Outcome {
        participants,
        seconds,
        figures,
        join,
        ramp: ramp_report,
        impaired,
        room_figures,
        errors: mut errors_more,
    } = result?;
    let server_cores = watch.cores();
    let bench_cores = watch.own_cores();
    let server_rss = watch.rss();
    let rss_slope = watch.rss_slope_per_minute();

    // For a ramp of rooms, the rooms held (as `participants` is the participants held).
    let measured_rooms = match &ramp_report {
        Some(r) if r.by_rooms => r.rooms_held,
        _ => config.rooms,
    };
    let floor = if config.floor && participants > 0 {
        progress.show(0, 1, &format!("floor: {participants} participants"));
        let floor = floor::measure(&media_file, participants, measured_rooms, seconds).await;
        progress.show(1, 1, "floor: done");
        progress.done();
        match floor {
            Ok(f) => Some(f),
            Err(e) => {
                errors_more.push(format!("floor: {e:#}"));
                None
            }
        }
    } else {
        None
    };
    let _ = std::fs::remove_file(&media_file);

    let (server_cores, bench_percent, server_rss) = match &ramp_report {
        Some(r) => {
            let held = r.steps.iter().take_while(|s| s.passed).last();
            (
                held.and_then(|s| s.server_cpu_percent_of_machine)
                    .map(|p| p * machine_cores() as f64 / 100.0),
                held.and_then(|s| s.bench_cpu_percent_of_machine),
                held.and_then(|s| s.server_rss_mb),
            )
        }
        None => (
            server_cores,
            bench_cores.map(percent_of_machine),
            server_rss,
        ),
    };
    let floor_cores = floor.as_ref().map(|f| f.cpu_cores);
    let report = BenchReport {
        participants,
        rooms: measured_rooms,
        receivers_per_room: config.receivers,
        seconds,
        machine_cores: machine_cores(),
        send_size: format!("{}x{}", media.width, media.height),
        server_cpu_cores: server_cores,
        server_cpu_percent_of_machine: server_cores.map(percent_of_machine),
        floor_cpu_cores: floor_cores,
        floor_cpu_percent_of_machine: floor_cores.map(percent_of_machine),
        cpu_ratio_to_floor: match (server_cores, floor_cores) {
            (Some(s), Some(f)) if f > 0.0 => Some(s / f),
            _ => None,
        },
        bench_cpu_percent_of_machine: bench_percent,
        server_rss_mb: server_rss,
        server_rss_idle_mb: idle_rss,
        server_rss_mb_per_participant: match (server_rss, idle_rss) {
            (Some(r), Some(i)) if participants > 0 => Some((r - i) / participants as f64),
            _ => None,
        },
        server_rss_growth_mb_per_minute: if config.ramp { None } else { rss_slope },
        join_to_first_frame_ms: join.0,
        join_to_first_frame_ms_each: join.1,
        figures,
        room_figures,
        ramp: ramp_report,
        impaired,
        errors: errors.into_iter().chain(errors_more).collect(),
    };
    if let Some(path) = &config.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    if let Some(path) = &config.svg {
        std::fs::write(path, plot::svg(&report))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(report)
}

/// What a fixed run or a ramp found.
struct Outcome {
    /// Participants measured (for a ramp: held).
    participants: usize,
    /// Seconds of the measured window.
    seconds: f64,
    figures: WindowFigures,
    /// Join → first frame: quantiles, and each participant's in join order.
    join: (Quantiles, Vec<f64>),
    ramp: Option<RampReport>,
    impaired: Vec<ImpairedViewer>,
    /// Each room's figures (for a ramp: at the last step held).
    room_figures: Vec<RoomFigures>,
    errors: Vec<String>,
}

async fn fixed(
    config: &BenchConfig,
    crowd: &mut Crowd,
    watch: &mut ServerWatch,
    progress: &Progress,
) -> Result<Outcome> {
    for i in 0..config.participants {
        progress.show(
            i,
            config.participants,
            &format!("joining {}/{}", i + 1, config.participants),
        );
        crowd.add().await?;
        tokio::time::sleep(JOIN_SPACING).await;
    }
    progress.show(config.participants, config.participants, "joined");
    progress.done();
    tokio::time::sleep(SETTLE).await;
    let window = watch.window(config.seconds, progress, "bench");
    let lift = async {
        match config.lift_after {
            Some(after) => {
                tokio::time::sleep(Duration::from_secs_f64(after)).await;
                Some(crowd.lift_links())
            }
            None => std::future::pending().await,
        }
    };
    tokio::pin!(window);
    tokio::pin!(lift);
    let mut lifted = None;
    let (from, to) = loop {
        tokio::select! {
            span = &mut window => break span,
            at = &mut lift, if lifted.is_none() => lifted = Some(at),
        }
    };
    progress.done();
    let figures = crowd.figures(from, to);
    let room_figures = crowd.room_figures(from, to);
    let impaired = crowd.impaired_viewers(from, to, lifted.flatten());
    let (join, each, never) = crowd.join_times(0..config.participants);
    Ok(Outcome {
        participants: config.participants,
        seconds: config.seconds,
        figures,
        join: (join, each),
        ramp: None,
        impaired,
        room_figures,
        errors: never,
    })
}

async fn ramp(
    config: &BenchConfig,
    crowd: &mut Crowd,
    watch: &mut ServerWatch,
    progress: &Progress,
) -> Result<Outcome> {
    let (most, step) = if config.ramp_rooms {
        (
            config.participants * config.rooms,
            config.participants.max(1),
        )
    } else {
        (ROOM_CAPACITY * config.rooms, config.participants.max(1))
    };
    let mut steps: Vec<RampStep> = Vec::new();
    let mut stopped_because = Vec::new();
    let mut errors = Vec::new();
    while crowd.members.len() < most {
        let before = crowd.members.len();
        let target = (before + step).min(most);
        for _ in before..target {
            crowd.add().await?;
            tokio::time::sleep(JOIN_SPACING).await;
        }
        tokio::time::sleep(SETTLE).await;
        let label = if config.ramp_rooms {
            format!("ramp: {} rooms of {step}", target / step)
        } else {
            format!("ramp: {target} participants")
        };
        let (from, to) = watch.window(config.step_seconds, progress, &label).await;
        let figures = crowd.figures(from, to);
        let rooms_now = crowd.room_figures(from, to);
        let (_, _, never) = crowd.join_times(before..target);
        errors.extend(never);
        let cpu = watch.cores().map(percent_of_machine);
        let mut broken = Vec::new();
        if figures.fps_p5.is_none_or(|f| f < RAMP_MIN_FPS_P5) {
            broken.push(format!("fps p5 {:?} < {RAMP_MIN_FPS_P5}", figures.fps_p5));
        }
        if figures
            .video_latency_ms
            .p95
            .is_none_or(|l| l > RAMP_MAX_LATENCY_P95_MS)
        {
            broken.push(format!(
                "video latency p95 {:?} ms > {RAMP_MAX_LATENCY_P95_MS}",
                figures.video_latency_ms.p95
            ));
        }
        if cpu.is_some_and(|c| c > RAMP_MAX_CPU_PERCENT) {
            broken.push(format!("server CPU {cpu:?} % > {RAMP_MAX_CPU_PERCENT}"));
        }
        let passed = broken.is_empty();
        steps.push(RampStep {
            participants: target,
            rooms: rooms_now.len(),
            room_figures: rooms_now,
            server_cpu_percent_of_machine: cpu,
            bench_cpu_percent_of_machine: watch.own_cores().map(percent_of_machine),
            server_rss_mb: watch.rss(),
            figures,
            passed,
            broken: broken.clone(),
        });
        if !passed {
            stopped_because = broken;
            break;
        }
    }
    progress.done();
    if stopped_because.is_empty() {
        stopped_because.push(if config.ramp_rooms {
            format!("reached --rooms {}", config.rooms)
        } else {
            format!("reached the server's limit of {ROOM_CAPACITY} per room")
        });
    }
    let last_held = steps.iter().take_while(|s| s.passed).last();
    let held = last_held.map_or(0, |s| s.participants);
    let rooms_held = last_held.map_or(0, |s| s.rooms);
    let room_figures = last_held
        .map(|s| s.room_figures.clone())
        .unwrap_or_default();
    let figures = steps
        .iter()
        .take_while(|s| s.passed)
        .last()
        .map(|s| s.figures.clone())
        .unwrap_or_default();
    let (join, each, _) = crowd.join_times(0..crowd.members.len());
    Ok(Outcome {
        participants: held,
        seconds: config.step_seconds,
        figures,
        join: (join, each),
        ramp: Some(RampReport {
            participants_held: held,
            rooms_held,
            by_rooms: config.ramp_rooms,
            stopped_because,
            steps,
        }),
        impaired: Vec::new(),
        room_figures,
        errors,
    })
}
