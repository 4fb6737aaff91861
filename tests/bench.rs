//! `mcu bench` end to end: a short 4-participant run against a server it starts itself. The
//! report must be complete and its figures must come from real media (frames decoded, codes
//! read in every tile, bursts heard, a floor measured). No figure is held to a speed: speed is
//! what the bench reports, on whatever machine runs it.

use std::process::Command;

use serde_json::Value;

fn number(report: &Value, path: &[&str]) -> f64 {
    let mut v = report;
    for key in path {
        v = &v[*key];
    }
    v.as_f64()
        .unwrap_or_else(|| panic!("{} is not a number in {report:#}", path.join(".")))
}

/// Runs `mcu bench` with `args` (plus a JSON report and a plot, in a scratch directory), checks
/// it succeeded, prints its summary, and returns the report and the plot.
fn run_bench(name: &str, args: &[&str]) -> (Value, String) {
    let dir = std::env::temp_dir().join(format!("mcu-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("scratch dir");
    let json = dir.join("bench.json");
    let svg = dir.join("bench.svg");
    let output = Command::new(env!("CARGO_BIN_EXE_mcu"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--svg")
        .arg(&svg)
        .output()
        .expect("running mcu bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    println!("{stdout}");
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(&json).expect("the JSON report"))
            .expect("the report is JSON");
    let plot = std::fs::read_to_string(&svg).expect("the plot");
    let _ = std::fs::remove_dir_all(&dir);
    (report, plot)
}

#[test]
fn a_four_participant_bench_reports_every_figure_from_media_it_decoded() {
    let (report, plot) = run_bench("bench", &["--participants", "4", "--seconds", "10"]);
    assert_eq!(report["participants"], 4);
    assert!(
        report["errors"].as_array().is_some_and(|e| e.is_empty()),
        "{report:#}"
    );
    // CPU and memory of both the server and the floor, as shares of a real machine.
    for path in [
        &["server_cpu_percent_of_machine"][..],
        &["floor_cpu_percent_of_machine"],
        &["cpu_ratio_to_floor"],
        &["server_rss_mb"],
    ] {
        let v = number(&report, path);
        assert!(v > 0.0 && v.is_finite(), "{} = {v}", path.join("."));
    }
    assert!(number(&report, &["server_cpu_percent_of_machine"]) <= 100.0);
    // Latencies from real samples: positive, ordered, and below a second (a frame code or a
    // burst matched to the wrong send would show up as nonsense here).
    for kind in [
        "video_latency_ms",
        "audio_latency_ms",
        "join_to_first_frame_ms",
    ] {
        let p50 = number(&report, &[kind, "p50"]);
        let p95 = number(&report, &[kind, "p95"]);
        assert!(0.0 < p50 && p50 <= p95, "{kind}: {p50} / {p95}");
        assert!(p95 < 5000.0, "{kind} p95 {p95}");
    }
    // Every participant's frames were read many times over in the composite: 4 tiles at up to
    // 30 fps over 10 s; the audio latency saw each of the receiver's 3 peers burst repeatedly.
    assert!(number(&report, &["video_latency_ms", "samples"]) > 100.0);
    assert!(number(&report, &["audio_latency_ms", "samples"]) >= 6.0);
    assert!(number(&report, &["frames_decoded"]) > 100.0);
    assert!(number(&report, &["codes_read"]) > 400.0);
    let fps = number(&report, &["fps_p5"]);
    assert!(fps > 0.0 && fps <= 31.0, "fps p5 {fps}");
    for path in [
        &["dropped_output_frames"][..],
        &["frozen_intervals", "composite"],
        &["frozen_intervals", "tiles"],
    ] {
        assert!(number(&report, path) >= 0.0);
    }
    assert!(plot.starts_with("<svg") && plot.contains("polyline"));
}

#[test]
fn a_ramp_of_rooms_reports_each_rooms_own_figures() {
    let (report, plot) = run_bench(
        "bench-rooms",
        &[
            "--ramp-rooms",
            "--participants",
            "2",
            "--rooms",
            "3",
            "--seconds",
            "3",
            "--no-floor",
        ],
    );
    let ramp = &report["ramp"];
    let steps = ramp["steps"].as_array().expect("ramp steps");
    // Whether a step passed is the machine's business; what each step reports is ours.
    assert!(!steps.is_empty() && steps.len() <= 3, "{ramp:#}");
    for (i, step) in steps.iter().enumerate() {
        assert_eq!(step["rooms"], i + 1, "a room per step: {step:#}");
        assert_eq!(step["participants"], 2 * (i + 1));
        let rooms = step["room_figures"].as_array().expect("room figures");
        assert_eq!(rooms.len(), i + 1);
        for room in rooms {
            assert_eq!(room["participants"], 2, "{room:#}");
            // Each room's own receiver read both codes of its own room, many times.
            assert!(number(room, &["codes_read"]) > 20.0, "{room:#}");
            assert!(
                number(room, &["video_latency_ms", "samples"]) > 10.0,
                "{room:#}"
            );
            let fps = number(room, &["fps_p5"]);
            assert!(fps > 0.0 && fps <= 31.0, "fps p5 {fps}");
        }
    }
    let held = ramp["rooms_held"].as_u64().expect("rooms held") as usize;
    assert!(held <= steps.len());
    assert_eq!(ramp["participants_held"], 2 * held);
    assert_eq!(
        report["room_figures"].as_array().map(Vec::len),
        Some(held),
        "the report's room figures are those of the last step held"
    );
    assert!(
        plot.contains("rooms of 2"),
        "the plot's x axis counts rooms"
    );
}
