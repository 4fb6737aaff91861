//! `GET /metrics`: Prometheus's own checker (`promtool check metrics`, Debian's `prometheus`
//! package, installed by `make test-deps`) passes on it, and its figures move as two
//! participants join, talk and leave.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{crowd_of, settle, Server, SETTLE};

const ADMIN_TOKEN: &str = "metrics-admin-token-0123456789";

async fn scrape(server: &Server, headers: &[(&str, &str)]) -> String {
    let reply = server.request("GET", "/metrics", headers).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    let content_type = reply
        .headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    assert!(
        content_type.starts_with("text/plain; version=0.0.4"),
        "{content_type}"
    );
    String::from_utf8(reply.body).expect("the metrics are text")
}

/// Runs `promtool check metrics` on `text`: it parses the exposition format and lints the
/// names (units, `_total` on counters, help texts).
fn promtool_passes(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool runs (Debian's prometheus package; `make test-deps` installs it)");
    child
        .stdin
        .take()
        .expect("promtool's stdin")
        .write_all(text.as_bytes())
        .expect("writing the metrics to promtool");
    let out = child.wait_with_output().expect("promtool finishes");
    assert!(
        out.status.success() && out.stdout.is_empty() && out.stderr.is_empty(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The value of the sample `series` (a name with its labels, as written) in `text`.
fn value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|line| {
            let rest = line.strip_prefix(series)?;
            rest.strip_prefix(' ')?.trim().parse().ok()
        })
        .unwrap_or_else(|| panic!("{series} is not in the metrics:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_pass_promtool_and_follow_two_participants_in_and_out() {
    common::init();
    let server = Server::start("metrics", &[]);
    let before = scrape(&server, &[]).await;
    promtool_passes(&before);
    assert_eq!(value(&before, "mcu_rooms"), 0.0);

    let mut crowd = crowd_of(&server, "metered", 2).await;
    settle(&crowd, "both participants in the composite").await;
    // Viewers send receiver reports every second or so: wait for the first.
    let deadline = Instant::now() + SETTLE;
    let during = loop {
        let text = scrape(&server, &[]).await;
        if value(&text, "mcu_viewer_loss_ratio_count") > 0.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "no receiver report counted:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    promtool_passes(&during);
    let moved = |series: &str| value(&during, series) - value(&before, series);
    assert_eq!(moved("mcu_joins_total"), 2.0);
    assert_eq!(value(&during, "mcu_rooms"), 1.0);
    assert_eq!(value(&during, "mcu_participants"), 2.0);
    assert_eq!(value(&during, "mcu_rooms_unresponsive"), 0.0);
    for series in [
        r#"mcu_rtp_packets_total{direction="in",kind="video"}"#,
        r#"mcu_rtp_packets_total{direction="in",kind="audio"}"#,
        r#"mcu_rtp_packets_total{direction="out",kind="video"}"#,
        r#"mcu_rtp_packets_total{direction="out",kind="audio"}"#,
        r#"mcu_rtp_bytes_total{direction="out",kind="video"}"#,
        r#"mcu_composite_frames_total{room="metered"}"#,
        r#"mcu_encode_frame_seconds_count{tier="0"}"#,
        "mcu_rtcp_plis_sent_total",
        "mcu_keyframes_forced_total",
        // The process collector counts CPU in whole seconds, which a short call may not reach.
        "process_resident_memory_bytes",
        "process_start_time_seconds",
    ] {
        assert!(
            value(&during, series) > 0.0,
            "{series} did not move:\n{during}"
        );
    }
    // Both saw their first composite frame, each within a second or so of joining.
    assert_eq!(moved("mcu_join_first_frame_seconds_count"), 2.0);
    // Each probe's receiver reports reach the server every second or so.
    assert!(
        value(&during, "mcu_viewer_loss_ratio_count") > 0.0,
        "{during}"
    );
    // Everything the Grafana dashboard draws is there while a room runs.
    let names = dashboard_metrics();
    assert!(names.len() > 10, "{names:?}");
    for name in names {
        assert!(
            during
                .lines()
                .any(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} "))),
            "the dashboard draws {name}, which /metrics does not have:\n{during}"
        );
    }

    crowd.leave_all().await;
    let deadline = Instant::now() + SETTLE;
    let after = loop {
        let text = scrape(&server, &[]).await;
        if value(&text, "mcu_rooms") == 0.0 {
            break text;
        }
        assert!(
            Instant::now() < deadline,
            "the room is still in the metrics:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    promtool_passes(&after);
    assert_eq!(
        value(&after, "mcu_leaves_total") - value(&before, "mcu_leaves_total"),
        2.0
    );
    assert_eq!(value(&after, "mcu_participants"), 0.0);
    assert!(
        !after.contains(r#"room="metered""#),
        "the room's series went with it"
    );
}

/// Every metric the Grafana dashboard (docs/monitoring/grafana-dashboard.json) draws.
fn dashboard_metrics() -> Vec<String> {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/docs/monitoring/grafana-dashboard.json"
    );
    let text = std::fs::read_to_string(path).expect("reading the dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut names: Vec<String> = dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .flat_map(|expr| {
            expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .filter(|w| w.starts_with("mcu_") || w.starts_with("process_"))
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect();
    names.sort();
    names.dedup();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_an_admin_token_the_metrics_need_it() {
    common::init();
    let server = Server::start("metrics-token", &["--admin-token", ADMIN_TOKEN]);
    let refused = server.request("GET", "/metrics", &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(refused.error_code(), "unauthorized");
    let bearer = format!("Bearer {ADMIN_TOKEN}");
    let text = scrape(&server, &[("authorization", &bearer)]).await;
    assert!(text.contains("# TYPE mcu_rooms gauge"), "{text}");
}
