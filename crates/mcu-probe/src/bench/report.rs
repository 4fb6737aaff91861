//! What `mcu bench` reports: the JSON report's types and the human summary.

use serde::Serialize;

use super::figures::{Quantiles, WindowFigures};
use super::links::ImpairedViewer;

/// One room's figures, from its own receivers.
#[derive(Debug, Clone, Serialize)]
pub struct RoomFigures {
    pub room: String,
    pub participants: usize,
    #[serde(flatten)]
    pub figures: WindowFigures,
}

#[derive(Debug, Clone, Serialize)]
pub struct RampStep {
    pub participants: usize,
    /// Rooms open at this step, and each one's figures.
    pub rooms: usize,
    pub room_figures: Vec<RoomFigures>,
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
    /// Rooms open at the last step that passed.
    pub rooms_held: usize,
    /// Whether each step added a room (`--ramp-rooms`) rather than participants.
    pub by_rooms: bool,
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
    /// Each room's own figures (for a ramp: at the last step held).
    pub room_figures: Vec<RoomFigures>,
    pub ramp: Option<RampReport>,
    /// Viewers on bad links, measured apart from the figures above (which are everyone else's).
    pub impaired: Vec<ImpairedViewer>,
    pub errors: Vec<String>,
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
    if r.room_figures.len() > 1 {
        for room in &r.room_figures {
            out.push_str(&format!(
                "  {} ({} people): fps p5 {}, video p50 / p95 {} / {}, frozen {} composite, {} tile\n",
                room.room,
                room.participants,
                opt(room.figures.fps_p5, ""),
                opt(room.figures.video_latency_ms.p50, " ms"),
                opt(room.figures.video_latency_ms.p95, " ms"),
                room.figures.frozen_intervals.composite,
                room.figures.frozen_intervals.tiles,
            ));
        }
    }
    if let Some(ramp) = &r.ramp {
        out.push_str(&format!(
            "  ramp: {} participants in {} room(s) held; stopped: {}\n",
            ramp.participants_held,
            ramp.rooms_held,
            ramp.stopped_because.join("; ")
        ));
        for s in &ramp.steps {
            out.push_str(&format!(
                "    {:>2} in {} room(s): CPU {} (bench {}), fps p5 {}, video p95 {}, audio p95 {} — {}\n",
                s.participants,
                s.rooms,
                opt(s.server_cpu_percent_of_machine, " %"),
                opt(s.bench_cpu_percent_of_machine, " %"),
                opt(s.figures.fps_p5, ""),
                opt(s.figures.video_latency_ms.p95, " ms"),
                opt(s.figures.audio_latency_ms.p95, " ms"),
                if s.passed { "ok" } else { "broken" }
            ));
        }
    }
    for v in &r.impaired {
        let sizes: Vec<String> = v
            .moves
            .sizes
            .iter()
            .map(|s| format!("{}x{} at {:.1} s", s.width, s.height, s.at_s))
            .collect();
        out.push_str(&format!(
            "  impaired bench-{} ({}): {:.1} fps, {} freeze(s){}; sizes {}; settled {} after joining, {} after the lift; {} dropped by its queue, {} lost\n",
            v.participant,
            describe_link(&v.link),
            v.fps,
            v.freezes,
            if v.freezes_at_s.is_empty() {
                String::new()
            } else {
                let at: Vec<String> = v.freezes_at_s.iter().map(|t| format!("{t:.1}")).collect();
                format!(" (at {} s)", at.join(", "))
            },
            sizes.join(", "),
            opt(v.moves.settled_after_join_s, " s"),
            opt(v.moves.settled_after_lift_s, " s"),
            v.link_figures.down_queue_drops,
            v.link_figures.down_lost,
        ));
    }
    for e in &r.errors {
        out.push_str(&format!("  error: {e}\n"));
    }
    out
}

/// A bad link in a few words: "1200 kbit/s, 5 % down loss".
fn describe_link(link: &crate::impair::Impairment) -> String {
    let mut parts = Vec::new();
    if let Some(kbps) = link.downlink_kbps {
        parts.push(format!("{kbps} kbit/s"));
    }
    if link.downlink_loss > 0.0 {
        parts.push(format!("{:.0} % down loss", link.downlink_loss * 100.0));
    }
    if link.uplink_loss > 0.0 {
        parts.push(format!("{:.0} % up loss", link.uplink_loss * 100.0));
    }
    if link.jitter_ms > 0 {
        parts.push(format!("{} ms jitter", link.jitter_ms));
    }
    parts.join(", ")
}
