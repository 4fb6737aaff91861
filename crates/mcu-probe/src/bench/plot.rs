//! The ramp's plot, as a small hand-written SVG: server CPU (% of the machine) and video latency
//! (p50, p95) against participants, with the ramp's limits drawn as dashed lines.

use std::fmt::Write;

use super::{BenchReport, RAMP_MAX_CPU_PERCENT, RAMP_MAX_LATENCY_P95_MS};

const WIDTH: f64 = 640.0;
const PANEL_HEIGHT: f64 = 220.0;
const MARGIN_LEFT: f64 = 60.0;
const MARGIN_RIGHT: f64 = 20.0;
const MARGIN_TOP: f64 = 30.0;
const MARGIN_BOTTOM: f64 = 40.0;

struct Series<'a> {
    label: &'a str,
    colour: &'a str,
    points: Vec<(f64, f64)>,
}

/// A panel's title and the name of its x axis.
struct Titles<'a> {
    title: &'a str,
    x_label: &'a str,
}

fn panel(
    out: &mut String,
    top: f64,
    titles: Titles<'_>,
    x_max: f64,
    y_max: f64,
    limit: f64,
    series: &[Series],
) {
    let Titles { title, x_label } = titles;
    let plot_w = WIDTH - MARGIN_LEFT - MARGIN_RIGHT;
    let plot_h = PANEL_HEIGHT - MARGIN_TOP - MARGIN_BOTTOM;
    let x = |v: f64| MARGIN_LEFT + plot_w * v / x_max.max(1.0);
    let y = |v: f64| top + MARGIN_TOP + plot_h * (1.0 - v / y_max.max(1.0));
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="14" font-weight="bold">{title}</text>"#,
        MARGIN_LEFT,
        top + 18.0
    );
    let _ = writeln!(
        out,
        r##"<rect x="{MARGIN_LEFT}" y="{}" width="{plot_w}" height="{plot_h}" fill="none" stroke="#888"/>"##,
        top + MARGIN_TOP
    );
    for i in 0..=4 {
        let v = y_max * f64::from(i) / 4.0;
        let _ = writeln!(
            out,
            r##"<text x="{}" y="{}" font-size="11" text-anchor="end">{v:.0}</text><line x1="{MARGIN_LEFT}" x2="{}" y1="{}" y2="{}" stroke="#eee"/>"##,
            MARGIN_LEFT - 6.0,
            y(v) + 4.0,
            WIDTH - MARGIN_RIGHT,
            y(v),
            y(v)
        );
    }
    let step = (x_max / 10.0).ceil().max(1.0);
    let mut t = 0.0;
    while t <= x_max {
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{t:.0}</text>"#,
            x(t),
            top + PANEL_HEIGHT - MARGIN_BOTTOM + 16.0
        );
        t += step;
    }
    let _ = writeln!(
        out,
        r#"<text x="{}" y="{}" font-size="11" text-anchor="middle">{x_label}</text>"#,
        MARGIN_LEFT + plot_w / 2.0,
        top + PANEL_HEIGHT - 6.0
    );
    let _ = writeln!(
        out,
        r##"<line x1="{MARGIN_LEFT}" x2="{}" y1="{}" y2="{}" stroke="#c00" stroke-dasharray="5,4"/>"##,
        WIDTH - MARGIN_RIGHT,
        y(limit),
        y(limit)
    );
    for (i, s) in series.iter().enumerate() {
        let path: Vec<String> = s
            .points
            .iter()
            .map(|(px, py)| format!("{:.1},{:.1}", x(*px), y(py.min(y_max))))
            .collect();
        let _ = writeln!(
            out,
            r#"<polyline points="{}" fill="none" stroke="{}" stroke-width="2"/>"#,
            path.join(" "),
            s.colour
        );
        for (px, py) in &s.points {
            let _ = writeln!(
                out,
                r#"<circle cx="{:.1}" cy="{:.1}" r="3" fill="{}"/>"#,
                x(*px),
                y(py.min(y_max)),
                s.colour
            );
        }
        let _ = writeln!(
            out,
            r#"<text x="{}" y="{}" font-size="11" fill="{}">{}</text>"#,
            WIDTH - MARGIN_RIGHT - 120.0,
            top + MARGIN_TOP + 14.0 + 14.0 * i as f64,
            s.colour,
            s.label
        );
    }
}

/// One point of the plot: participants, CPU %, latency p50, latency p95.
type Point = (f64, Option<f64>, Option<f64>, Option<f64>);

/// The plot of a report: the ramp's steps, or the single run as one point.
pub fn svg(report: &BenchReport) -> String {
    let by_rooms = report.ramp.as_ref().is_some_and(|r| r.by_rooms);
    let x_label = if by_rooms {
        let per_room = report
            .ramp
            .as_ref()
            .and_then(|r| r.steps.first())
            .map_or(0, |s| s.participants / s.rooms.max(1));
        format!("rooms of {per_room}")
    } else {
        "participants".to_string()
    };
    let steps: Vec<Point> = match &report.ramp {
        Some(ramp) => ramp
            .steps
            .iter()
            .map(|s| {
                (
                    if by_rooms {
                        s.rooms as f64
                    } else {
                        s.participants as f64
                    },
                    s.server_cpu_percent_of_machine,
                    s.figures.video_latency_ms.p50,
                    s.figures.video_latency_ms.p95,
                )
            })
            .collect(),
        None => vec![(
            report.participants as f64,
            report.server_cpu_percent_of_machine,
            report.figures.video_latency_ms.p50,
            report.figures.video_latency_ms.p95,
        )],
    };
    let points = |pick: fn(&Point) -> Option<f64>| {
        steps
            .iter()
            .filter_map(|s| pick(s).map(|v| (s.0, v)))
            .collect::<Vec<_>>()
    };
    let x_max = steps.iter().map(|s| s.0).fold(1.0, f64::max);
    let mut out = String::new();
    let _ = writeln!(
        out,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{}" font-family="sans-serif">"#,
        2.0 * PANEL_HEIGHT
    );
    let _ = writeln!(out, r#"<rect width="100%" height="100%" fill="white"/>"#);
    panel(
        &mut out,
        0.0,
        Titles {
            title: &format!("Server CPU, % of {} cores", report.machine_cores),
            x_label: &x_label,
        },
        x_max,
        100.0,
        RAMP_MAX_CPU_PERCENT,
        &[Series {
            label: "server CPU",
            colour: "#1f6fd0",
            points: points(|s| s.1),
        }],
    );
    let latency_max = points(|s| s.3)
        .iter()
        .map(|p| p.1)
        .fold(RAMP_MAX_LATENCY_P95_MS * 1.2, f64::max)
        .min(1000.0);
    panel(
        &mut out,
        PANEL_HEIGHT,
        Titles {
            title: "Server-added video latency, ms",
            x_label: &x_label,
        },
        x_max,
        latency_max,
        RAMP_MAX_LATENCY_P95_MS,
        &[
            Series {
                label: "p50",
                colour: "#2a9d3a",
                points: points(|s| s.2),
            },
            Series {
                label: "p95",
                colour: "#d0581f",
                points: points(|s| s.3),
            },
        ],
    );
    out.push_str("</svg>\n");
    out
}
