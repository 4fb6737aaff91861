//! Prometheus metrics (`GET /metrics`, docs/metrics.md), in the text format the `prometheus`
//! crate encodes.
//!
//! Two kinds: what happens (packets, joins, keyframes, encode times, link reports) is counted
//! where it happens, in the process-wide `METRICS`; what is (rooms, participants, each room's
//! composite counters) is read from the rooms' snapshots when Prometheus scrapes. Names follow
//! Prometheus's conventions: the `mcu_` prefix, base units, `_total` on counters. No label
//! carries a participant id; the per-room series carry the room's name, which an operator
//! already chose and which go away with the room.

use std::sync::LazyLock;
use std::time::Duration;

use anyhow::{Context, Result};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge, Opts,
    Registry, TextEncoder,
};

use crate::room::RoomSnapshot;

/// Seconds from a join to the participant's first composite frame: the first keyframe after
/// ICE and DTLS, 0.3–2 s on a LAN, longer across the world or with a slow first keyframe.
const FIRST_FRAME_BUCKETS: &[f64] = &[0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0];
/// Seconds one composite frame spends in its encoder: ~2–8 ms for 720p VP8 realtime on these
/// machines (docs/performance.md); a frame period (33 ms) is where the room falls behind.
const ENCODE_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.004, 0.008, 0.016, 0.033, 0.066, 0.1, 0.25, 1.0,
];
/// A viewer's reported loss, 0–1: 2 % is where the tier choice starts to listen (tiers.rs).
const LOSS_BUCKETS: &[f64] = &[0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0];
/// Round trips to viewers, in seconds: LAN, region, continent, the other side of the world.
const RTT_BUCKETS: &[f64] = &[0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6];

/// Which way media went, as a label.
#[derive(Debug, Clone, Copy)]
pub enum Direction {
    In = 0,
    Out = 1,
}

impl Direction {
    fn label(self) -> &'static str {
        match self {
            Direction::In => "in",
            Direction::Out => "out",
        }
    }
}

/// Audio or video, as a label.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    Audio = 0,
    Video = 1,
}

impl Kind {
    fn label(self) -> &'static str {
        match self {
            Kind::Audio => "audio",
            Kind::Video => "video",
        }
    }
}

/// What the process counts as it goes.
pub struct Metrics {
    registry: Registry,
    pub joins: IntCounter,
    pub leaves: IntCounter,
    pub join_refusals: IntCounter,
    pub first_frame: Histogram,
    /// Per direction (in, out) and kind (audio, video), resolved once: bumped for every packet.
    rtp_packets: [[IntCounter; 2]; 2],
    rtp_bytes: [[IntCounter; 2]; 2],
    pub nacked_packets: IntCounter,
    pub plis_received: IntCounter,
    pub plis_sent: IntCounter,
    pub keyframes_forced: IntCounter,
    pub viewer_loss: Histogram,
    pub viewer_rtt: Histogram,
    encode_time: HistogramVec,
    pub recordings_started: IntCounter,
    pub recordings_failed: IntCounter,
    pub recording_bytes: IntCounter,
    pub cluster_redirects: IntCounter,
    pub cluster_registry_errors: IntCounter,
}

/// The process's metrics. Their names and help texts are constants, so building them fails only
/// on a programming error, which the unit tests below would show.
pub static METRICS: LazyLock<Metrics> =
    LazyLock::new(|| Metrics::new().expect("the metric definitions are valid"));

pub fn metrics() -> &'static Metrics {
    &METRICS
}

fn counter(registry: &Registry, name: &str, help: &str) -> Result<IntCounter> {
    let c = IntCounter::new(name, help)?;
    registry.register(Box::new(c.clone()))?;
    Ok(c)
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: &[f64]) -> Result<Histogram> {
    let h = Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))?;
    registry.register(Box::new(h.clone()))?;
    Ok(h)
}

/// `vec`'s four series, indexed by `Direction as usize` and `Kind as usize`.
fn by_direction_and_kind(vec: &IntCounterVec) -> [[IntCounter; 2]; 2] {
    [Direction::In, Direction::Out]
        .map(|d| [Kind::Audio, Kind::Video].map(|k| vec.with_label_values(&[d.label(), k.label()])))
}

impl Metrics {
    fn new() -> Result<Self> {
        let registry = Registry::new();
        let r = &registry;
        let rtp_packets = IntCounterVec::new(
            Opts::new(
                "mcu_rtp_packets_total",
                "RTP packets received from participants (in) and sent to them (out)",
            ),
            &["direction", "kind"],
        )?;
        registry.register(Box::new(rtp_packets.clone()))?;
        let rtp_bytes = IntCounterVec::new(
            Opts::new(
                "mcu_rtp_bytes_total",
                "Bytes of RTP packets (headers and payload) received (in) and sent (out)",
            ),
            &["direction", "kind"],
        )?;
        registry.register(Box::new(rtp_bytes.clone()))?;
        let encode_time = HistogramVec::new(
            HistogramOpts::new(
                "mcu_encode_frame_seconds",
                "Time one composite frame spends in its encoder, by tier (0 is the full-size encode)",
            )
            .buckets(ENCODE_BUCKETS.to_vec()),
            &["tier"],
        )?;
        registry.register(Box::new(encode_time.clone()))?;
        // CPU seconds, resident and virtual memory, open files, start time: from /proc.
        registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        ))?;
        Ok(Metrics {
            joins: counter(r, "mcu_joins_total", "Participants who joined a room")?,
            leaves: counter(
                r,
                "mcu_leaves_total",
                "Participants who left a room (or were removed from it)",
            )?,
            join_refusals: counter(
                r,
                "mcu_join_refusals_total",
                "Joins refused: a full room or server, a bad token, a limit",
            )?,
            first_frame: histogram(
                r,
                "mcu_join_first_frame_seconds",
                "From a participant's join to the first composite frame sent to them",
                FIRST_FRAME_BUCKETS,
            )?,
            nacked_packets: counter(
                r,
                "mcu_rtcp_nacked_packets_total",
                "Composite packets viewers asked to have resent (NACK)",
            )?,
            plis_received: counter(
                r,
                "mcu_rtcp_plis_received_total",
                "Keyframe requests (PLI or FIR) from viewers",
            )?,
            plis_sent: counter(
                r,
                "mcu_rtcp_plis_sent_total",
                "Keyframe requests (PLI) sent to participants' cameras",
            )?,
            keyframes_forced: counter(
                r,
                "mcu_keyframes_forced_total",
                "Keyframes the composite's encoders were asked for",
            )?,
            viewer_loss: histogram(
                r,
                "mcu_viewer_loss_ratio",
                "Share of composite packets lost, as each viewer's receiver reports say (0-1)",
                LOSS_BUCKETS,
            )?,
            viewer_rtt: histogram(
                r,
                "mcu_viewer_rtt_seconds",
                "Round trip to viewers, from their receiver reports",
                RTT_BUCKETS,
            )?,
            recordings_started: counter(r, "mcu_recordings_started_total", "Recordings started")?,
            recordings_failed: counter(
                r,
                "mcu_recordings_failed_total",
                "Recordings that failed (a full disk, an unwritable file)",
            )?,
            recording_bytes: counter(
                r,
                "mcu_recording_bytes_total",
                "Bytes written to recording files",
            )?,
            cluster_redirects: counter(
                r,
                "mcu_cluster_redirects_total",
                "Clients this node sent to the room's node (WebSocket redirects and HTTP 307s)",
            )?,
            cluster_registry_errors: counter(
                r,
                "mcu_cluster_registry_errors_total",
                "Calls to the cluster's Redis that failed or took longer than 2 s",
            )?,
            rtp_packets: by_direction_and_kind(&rtp_packets),
            rtp_bytes: by_direction_and_kind(&rtp_bytes),
            encode_time,
            registry,
        })
    }

    /// One RTP packet of `bytes` bytes that came in from a participant or went out to one.
    pub fn rtp(&self, direction: Direction, kind: Kind, bytes: usize) {
        let (d, k) = (direction as usize, kind as usize);
        self.rtp_packets[d][k].inc();
        self.rtp_bytes[d][k].inc_by(bytes as u64);
    }

    /// One frame through tier `tier`'s encoder.
    pub fn encoded(&self, tier: usize, took: Duration) {
        self.encode_time
            .with_label_values(&[tier.to_string().as_str()])
            .observe(took.as_secs_f64());
    }
}

/// A cluster node's own state, as its gauges show it (a node without `--redis-url` has none).
#[derive(Debug, Clone, Copy)]
pub struct ClusterNode {
    pub registry_reachable: bool,
    pub draining: bool,
}

/// Everything, as Prometheus reads it: the process's own metrics and, from `rooms`, what is
/// now (`unanswered` rooms did not answer in time). Returns the body and its content type.
pub fn render(
    rooms: &[RoomSnapshot],
    unanswered: usize,
    cluster: Option<ClusterNode>,
) -> Result<(Vec<u8>, String)> {
    let now = Registry::new();
    let gauge = |name: &str, help: &str, value: usize| -> Result<()> {
        let g = IntGauge::new(name, help)?;
        g.set(i64::try_from(value).unwrap_or(i64::MAX));
        now.register(Box::new(g))?;
        Ok(())
    };
    gauge("mcu_rooms", "Rooms open", rooms.len())?;
    if let Some(node) = cluster {
        gauge(
            "mcu_cluster_registry_up",
            "1 when this node's last record reached the cluster's Redis; 0 while it does not (new rooms are refused, open rooms go on)",
            usize::from(node.registry_reachable),
        )?;
        gauge(
            "mcu_cluster_draining",
            "1 when this node takes no new room (SIGTERM or POST /api/v1/node/drain) and waits for its rooms to end",
            usize::from(node.draining),
        )?;
    }
    gauge(
        "mcu_rooms_unresponsive",
        "Rooms whose actor did not answer this scrape in time (stuck): left out of the figures below",
        unanswered,
    )?;
    gauge(
        "mcu_participants",
        "Participants in rooms",
        rooms.iter().map(|r| r.participants.len()).sum(),
    )?;
    gauge(
        "mcu_watchers",
        "WHEP players watching rooms (not participants: no tile, no voice)",
        rooms.iter().map(|r| r.watchers).sum(),
    )?;
    gauge(
        "mcu_recordings_running",
        "Rooms being recorded now",
        rooms.iter().filter(|r| r.recording.is_some()).count(),
    )?;
    // Counters the rooms keep themselves, read afresh at each scrape (a room's series starts
    // with the room and ends with it).
    let per_room = |name: &str, help: &str, labels: &[&str]| -> Result<IntCounterVec> {
        let c = IntCounterVec::new(Opts::new(name, help), labels)?;
        now.register(Box::new(c.clone()))?;
        Ok(c)
    };
    let frames = per_room(
        "mcu_composite_frames_total",
        "Composite frames the room's compositor produced (their rate is the room's frame rate)",
        &["room"],
    )?;
    let late = per_room(
        "mcu_composite_late_frames_total",
        "Times the room's compositor fell behind its frame period (media/pace.rs)",
        &["room"],
    )?;
    let unencoded = per_room(
        "mcu_composite_unencoded_frames_total",
        "Composite frames not encoded: nothing had changed (unchanged), or to spare the machine (load)",
        &["room", "reason"],
    )?;
    let dropped = per_room(
        "mcu_viewer_packets_dropped_total",
        "Composite packets viewers missed because their connection could not take them in time",
        &["room"],
    )?;
    for r in rooms {
        let p = &r.pipeline;
        let room = r.room.as_str();
        frames.with_label_values(&[room]).inc_by(p.composite_frames);
        late.with_label_values(&[room]).inc_by(p.composite_stalls);
        unencoded
            .with_label_values(&[room, "unchanged"])
            .inc_by(p.still_frames_skipped);
        unencoded
            .with_label_values(&[room, "load"])
            .inc_by(p.frames_thinned);
        dropped
            .with_label_values(&[room])
            .inc_by(p.video_packets_dropped);
    }
    let mut families = metrics().registry.gather();
    families.extend(now.gather());
    families.sort_by(|a, b| a.name().cmp(b.name()));
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    encoder
        .encode(&families, &mut body)
        .context("encoding the metrics")?;
    Ok((body, encoder.format_type().to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_metric_is_defined_and_rendered_with_its_type() {
        metrics().joins.inc();
        metrics().rtp(Direction::In, Kind::Video, 1200);
        metrics().encoded(0, Duration::from_millis(4));
        let (body, content_type) = render(&[], 0, None).expect("rendering");
        let text = String::from_utf8(body).expect("text");
        assert!(
            content_type.starts_with("text/plain; version=0.0.4"),
            "{content_type}"
        );
        for line in [
            "# TYPE mcu_joins_total counter",
            "# TYPE mcu_rooms gauge",
            "# TYPE mcu_join_first_frame_seconds histogram",
            "mcu_rtp_packets_total{direction=\"in\",kind=\"video\"}",
            "mcu_encode_frame_seconds_bucket{tier=\"0\",le=\"0.004\"}",
            "# TYPE process_cpu_seconds_total counter",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        assert!(
            !text.contains("mcu_cluster_registry_up"),
            "a node without a cluster has no cluster gauges"
        );
    }

    #[test]
    fn a_cluster_node_shows_whether_it_reaches_redis_and_whether_it_drains() {
        let node = ClusterNode {
            registry_reachable: false,
            draining: true,
        };
        let (body, _) = render(&[], 0, Some(node)).expect("rendering");
        let text = String::from_utf8(body).expect("text");
        assert!(text.contains("\nmcu_cluster_registry_up 0\n"), "{text}");
        assert!(text.contains("\nmcu_cluster_draining 1\n"), "{text}");
    }
}
