//! `mcu bench`: synthetic participants replay pre-encoded media (frame codes in the video, tone
//! bursts in the audio) into a server, receivers decode the composite and measure latency, frame
//! rate, freezes and join time, and the server's CPU and memory are read from /proc. The same
//! media through the bare room pipeline (floor.rs) gives the CPU the media work alone costs.

mod figures;
pub mod floor;
mod marks;
mod media;
mod participant;
mod plot;
pub mod proc_stat;
mod pump;
mod receiver;
mod server;

use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde::Serialize;

pub use figures::{Frozen, Quantiles, WindowFigures};
use media::BenchMedia;
pub use media::{DEFAULT_SEND_HEIGHT, DEFAULT_SEND_WIDTH};
use participant::{BenchParticipant, Joining};
use proc_stat::{machine_cores, ProcessSample};
use receiver::ReceiverContext;

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
    /// Measurement time of each ramp step.
    pub step_seconds: f64,
    pub send_width: usize,
    pub send_height: usize,
    pub floor: bool,
    pub json: Option<PathBuf>,
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub participants: usize,
    pub server_cpu_percent_of_machine: Option<f64>,
    pub bench_cpu_percent_of_machine: Option<f64>,
    pub server_rss_mb: Option<f64>,
    #[serde(flatten)]
    pub figures: WindowFigures,
    pub passed: bool,
    pub broken: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampReport {
    pub participants_held: usize,
    pub stopped_because: Vec<String>,
    pub steps: Vec<RampStep>,
}

#[derive(Debug, Clone, Serialize)]
pub struct BenchReport {
    pub participants: usize,
    pub rooms: usize,
    pub receivers_per_room: usize,
    pub seconds: f64,
    pub machine_cores: usize,
    pub send_size: String,
    pub server_cpu_cores: Option<f64>,
    pub server_cpu_percent_of_machine: Option<f64>,
    pub floor_cpu_cores: Option<f64>,
    pub floor_cpu_percent_of_machine: Option<f64>,
    pub cpu_ratio_to_floor: Option<f64>,
    /// The bench's own CPU (senders, receivers' decoding) over the window, for a bench that
    /// shares the machine with the server.
    pub bench_cpu_percent_of_machine: Option<f64>,
    pub server_rss_mb: Option<f64>,
    pub server_rss_idle_mb: Option<f64>,
    pub server_rss_mb_per_participant: Option<f64>,
    /// Least-squares slope of the server's RSS over the window: flat is ~0.
    pub server_rss_growth_mb_per_minute: Option<f64>,
    pub join_to_first_frame_ms: Quantiles,
    /// Each participant's, in the order they joined.
    pub join_to_first_frame_ms_each: Vec<f64>,
    #[serde(flatten)]
    pub figures: WindowFigures,
    pub ramp: Option<RampReport>,
    pub errors: Vec<String>,
}

/// A one-line progress display on a terminal, plain lines otherwise.
struct Progress {
    terminal: bool,
}

impl Progress {
    fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    fn show(&self, done: usize, total: usize, what: &str) {
        let width = 30;
        let filled = (done * width)
            .checked_div(total)
            .unwrap_or(width)
            .min(width);
        let bar = format!("[{}{}]", "#".repeat(filled), ".".repeat(width - filled));
        if self.terminal {
            eprint!("\r\x1b[2K{bar} {what}");
            let _ = std::io::stderr().flush();
        } else if done == total || done == 0 {
            eprintln!("{bar} {what}");
        }
    }

    fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

fn room_name(room: usize) -> String {
    format!("bench-{}", room + 1)
}

/// The participants and what they share.
struct Crowd {
    url: String,
    rtc: mcu_server::rtc::RtcFactory,
    pump: tokio::sync::mpsc::UnboundedSender<pump::Stream>,
    pump_task: tokio::task::JoinHandle<()>,
    template: ReceiverContext,
    rooms: usize,
    receivers: usize,
    members: Vec<BenchParticipant>,
}

impl Crowd {
    fn new(url: &str, media: Arc<BenchMedia>, rooms: usize, receivers: usize) -> Result<Self> {
        let log = Arc::new(pump::SendLog::new(
            media.participants.len(),
            media::VIDEO_LOOP_FRAMES,
        ));
        let (pump, pump_task) = pump::spawn(media.clone(), log.clone());
        Ok(Crowd {
            url: url.to_string(),
            rtc: mcu_server::rtc::RtcFactory::new(mcu_server::config::RtcOptions {
                loopback_only: crate::probe::is_loopback_url(url),
                ..Default::default()
            })?,
            pump,
            pump_task,
            template: ReceiverContext {
                heard: Default::default(),
                log,
                observed: Default::default(),
                send_width: media.width,
                send_height: media.height,
                onset_offsets: Arc::new(
                    media
                        .participants
                        .iter()
                        .map(|p| p.audio_onset_offset)
                        .collect(),
                ),
                epoch: Instant::now(),
            },
            rooms,
            receivers,
            members: Vec::new(),
        })
    }

    /// Adds the next participant, in the room whose turn it is.
    async fn add(&mut self) -> Result<()> {
        let index = self.members.len();
        let room = index % self.rooms;
        let is_receiver = index / self.rooms < self.receivers;
        let joining = Joining {
            url: &self.url,
            rtc: &self.rtc,
            pump: &self.pump,
            receiver: is_receiver.then(|| self.template.clone()),
        };
        let p = BenchParticipant::join(index, &room_name(room), joining).await?;
        self.members.push(p);
        Ok(())
    }

    fn observed(&self) -> Vec<receiver::Shared> {
        self.members
            .iter()
            .filter_map(|p| p.observed.clone())
            .collect()
    }

    fn figures(&self, from: Instant, to: Instant) -> WindowFigures {
        let shared = self.observed();
        let guards: Vec<_> = shared.iter().map(receiver::lock).collect();
        let refs: Vec<&receiver::Observed> = guards.iter().map(|g| &**g).collect();
        figures::summarise(&refs, from, to, COMPOSITE_FPS)
    }

    /// Join → first composite frame showing the newcomer, at a receiver of its room, for the
    /// participants numbered in `which`.
    fn join_times(&self, which: std::ops::Range<usize>) -> (Quantiles, Vec<f64>, Vec<String>) {
        let mut times = Vec::new();
        let mut never = Vec::new();
        for p in self.members.get(which).unwrap_or_default() {
            let seen = self
                .members
                .iter()
                .filter(|r| r.room == p.room)
                .filter_map(|r| r.observed.as_ref())
                .filter_map(|o| receiver::lock(o).first_seen.get(&p.index).copied())
                .min();
            match seen {
                Some(t) => {
                    times.push(t.saturating_duration_since(p.started).as_secs_f64() * 1000.0)
                }
                None => never.push(format!(
                    "bench-{} never appeared in the composite",
                    p.index + 1
                )),
            }
        }
        (Quantiles::of(&times), times, never)
    }

    fn errors(&self) -> Vec<String> {
        self.observed()
            .iter()
            .flat_map(|o| receiver::lock(o).errors.clone())
            .collect()
    }

    async fn leave_all(&mut self) {
        for p in self.members.drain(..) {
            p.leave().await;
        }
        self.pump_task.abort();
    }
}

/// Samples the server's process once a second while a window runs.
struct ServerWatch {
    pid: Option<u32>,
    samples: Vec<ProcessSample>,
    /// The bench's own process over the same window: on one machine, the two share the cores.
    own: Vec<ProcessSample>,
}

impl ServerWatch {
    fn sample(&mut self) {
        if let Ok(s) = ProcessSample::of_self() {
            self.own.push(s);
        }
        if let Some(pid) = self.pid {
            if let Ok(s) = ProcessSample::of(pid) {
                self.samples.push(s);
            }
        }
    }

    /// Waits `seconds` (the measurement itself), sampling, and returns the first and last
    /// samples of the window.
    async fn window(
        &mut self,
        seconds: f64,
        progress: &Progress,
        label: &str,
    ) -> (Instant, Instant) {
        self.samples.clear();
        self.own.clear();
        let from = Instant::now();
        self.sample();
        let end = from + Duration::from_secs_f64(seconds);
        let total = seconds.ceil() as usize;
        let mut tick = 0;
        while Instant::now() < end {
            progress.show(tick, total, &format!("{label}: measuring {tick}/{total} s"));
            let next = (Instant::now() + Duration::from_secs(1)).min(end);
            tokio::time::sleep_until(next.into()).await;
            self.sample();
            tick += 1;
        }
        progress.show(total, total, &format!("{label}: measured {total} s"));
        (from, Instant::now())
    }

    fn cores(&self) -> Option<f64> {
        Some(self.samples.last()?.cores_since(self.samples.first()?))
    }

    fn own_cores(&self) -> Option<f64> {
        Some(self.own.last()?.cores_since(self.own.first()?))
    }

    fn rss(&self) -> Option<f64> {
        Some(self.samples.last()?.rss_mb)
    }

    /// The trend of the server's memory, once the window is long enough for one: over a short
    /// run the slope is the allocator warming up, not a leak (a 20-s window read 20 MB/min where
    /// 30 minutes of the same room read 0.26).
    fn rss_slope_per_minute(&self) -> Option<f64> {
        let first = self.samples.first()?.at;
        if self.samples.last()?.at.duration_since(first) < MIN_GROWTH_WINDOW {
            return None;
        }
        let points: Vec<(f64, f64)> = self
            .samples
            .iter()
            .map(|s| (s.at.duration_since(first).as_secs_f64() / 60.0, s.rss_mb))
            .collect();
        let n = points.len() as f64;
        if n < 3.0 {
            return None;
        }
        let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
        let my = points.iter().map(|p| p.1).sum::<f64>() / n;
        let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
        let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
        (sxx > 0.0).then(|| sxy / sxx)
    }
}

/// The shortest window over which the bench reports the server's memory growth.
const MIN_GROWTH_WINDOW: Duration = Duration::from_secs(5 * 60);

fn percent_of_machine(cores: f64) -> f64 {
    100.0 * cores / machine_cores() as f64
}

pub async fn run(config: &BenchConfig) -> Result<BenchReport> {
    anyhow::ensure!(config.participants >= 1, "at least one participant");
    anyhow::ensure!(config.rooms >= 1, "at least one room");
    anyhow::ensure!(config.receivers >= 1, "at least one receiver per room");
    let most = if config.ramp {
        ROOM_CAPACITY * config.rooms
    } else {
        config.participants
    };
    anyhow::ensure!(
        most.div_ceil(config.rooms) <= ROOM_CAPACITY,
        "at most {ROOM_CAPACITY} participants per room (the largest grid); use --rooms"
    );
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
    let mut watch = ServerWatch {
        pid: config.server_pid.or(own_server.as_ref().map(|s| s.pid)),
        samples: Vec::new(),
        own: Vec::new(),
    };
    watch.sample();
    let idle_rss = watch.rss();

    let mut crowd = Crowd::new(&url, media.clone(), config.rooms, config.receivers)?;
    let result = if config.ramp {
        ramp(config, &mut crowd, &mut watch, &progress).await
    } else {
        fixed(config, &mut crowd, &mut watch, &progress).await
    };
    let errors = crowd.errors();
    crowd.leave_all().await;
    drop(own_server);
    let (participants, seconds, figures, join, ramp_report, mut errors_more) = result?;
    let server_cores = watch.cores();
    let bench_cores = watch.own_cores();
    let server_rss = watch.rss();
    let rss_slope = watch.rss_slope_per_minute();

    let floor = if config.floor && participants > 0 {
        progress.show(0, 1, &format!("floor: {participants} participants"));
        let floor = floor::measure(&media_file, participants, config.rooms, seconds).await;
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
        rooms: config.rooms,
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
        ramp: ramp_report,
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

/// What a fixed run or a ramp found: participants, seconds measured, the figures, join times
/// (quantiles and each), the ramp's steps, errors.
type Outcome = (
    usize,
    f64,
    WindowFigures,
    (Quantiles, Vec<f64>),
    Option<RampReport>,
    Vec<String>,
);

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
    let (from, to) = watch.window(config.seconds, progress, "bench").await;
    progress.done();
    let figures = crowd.figures(from, to);
    let (join, each, never) = crowd.join_times(0..config.participants);
    Ok((
        config.participants,
        config.seconds,
        figures,
        (join, each),
        None,
        never,
    ))
}

async fn ramp(
    config: &BenchConfig,
    crowd: &mut Crowd,
    watch: &mut ServerWatch,
    progress: &Progress,
) -> Result<Outcome> {
    let most = ROOM_CAPACITY * config.rooms;
    let step = config.participants.max(1);
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
        let label = format!("ramp: {target} participants");
        let (from, to) = watch.window(config.step_seconds, progress, &label).await;
        let figures = crowd.figures(from, to);
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
        stopped_because.push(format!(
            "reached the server's limit of {ROOM_CAPACITY} per room"
        ));
    }
    let held = steps
        .iter()
        .take_while(|s| s.passed)
        .last()
        .map_or(0, |s| s.participants);
    let figures = steps
        .iter()
        .take_while(|s| s.passed)
        .last()
        .map(|s| s.figures.clone())
        .unwrap_or_default();
    let (join, each, _) = crowd.join_times(0..crowd.members.len());
    Ok((
        held,
        config.step_seconds,
        figures,
        (join, each),
        Some(RampReport {
            participants_held: held,
            stopped_because,
            steps,
        }),
        errors,
    ))
}

/// The human summary of a report.
pub fn summary(r: &BenchReport) -> String {
    let ms = |q: &Quantiles| match (q.p50, q.p95) {
        (Some(a), Some(b)) => format!("p50 {a:.0} ms, p95 {b:.0} ms ({} samples)", q.samples),
        _ => "no samples".to_string(),
    };
    let opt = |v: Option<f64>, unit: &str| v.map_or("n/a".to_string(), |v| format!("{v:.2}{unit}"));
    let mut out = format!(
        "bench: {} participant(s) in {} room(s), {} s, sending {} ({} cores)\n",
        r.participants, r.rooms, r.seconds, r.send_size, r.machine_cores
    );
    out.push_str(&format!(
        "  server CPU   {} cores = {} of the machine; RSS {} (idle {}, {} per participant, growth {})\n",
        opt(r.server_cpu_cores, ""),
        opt(r.server_cpu_percent_of_machine, " %"),
        opt(r.server_rss_mb, " MB"),
        opt(r.server_rss_idle_mb, " MB"),
        opt(r.server_rss_mb_per_participant, " MB"),
        r.server_rss_growth_mb_per_minute
            .map_or("n/a under 5 min".to_string(), |g| format!("{g:.2} MB/min")),
    ));
    out.push_str(&format!(
        "  floor CPU    {} cores = {}; server/floor {}; the bench itself {}\n",
        opt(r.floor_cpu_cores, ""),
        opt(r.floor_cpu_percent_of_machine, " %"),
        opt(r.cpu_ratio_to_floor, "×"),
        opt(r.bench_cpu_percent_of_machine, " %"),
    ));
    out.push_str(&format!(
        "  video latency {}\n",
        ms(&r.figures.video_latency_ms)
    ));
    out.push_str(&format!(
        "  audio latency {}\n",
        ms(&r.figures.audio_latency_ms)
    ));
    out.push_str(&format!(
        "  frames        fps p5 {}, median {}; {} output frames dropped; frozen: {} composite, {} tile\n",
        opt(r.figures.fps_p5, ""),
        opt(r.figures.fps_median, ""),
        r.figures.dropped_output_frames,
        r.figures.frozen_intervals.composite,
        r.figures.frozen_intervals.tiles,
    ));
    out.push_str(&format!(
        "  join → first frame {}\n",
        ms(&r.join_to_first_frame_ms)
    ));
    if let Some(ramp) = &r.ramp {
        out.push_str(&format!(
            "  ramp: {} participants held; stopped: {}\n",
            ramp.participants_held,
            ramp.stopped_because.join("; ")
        ));
        for s in &ramp.steps {
            out.push_str(&format!(
                "    {:>2}: CPU {} (bench {}), fps p5 {}, video p95 {}, audio p95 {} — {}\n",
                s.participants,
                opt(s.server_cpu_percent_of_machine, " %"),
                opt(s.bench_cpu_percent_of_machine, " %"),
                opt(s.figures.fps_p5, ""),
                opt(s.figures.video_latency_ms.p95, " ms"),
                opt(s.figures.audio_latency_ms.p95, " ms"),
                if s.passed { "ok" } else { "broken" }
            ));
        }
    }
    for e in &r.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}
