//! What the bench watches while it measures: the server's process (and its own) sampled once a
//! second from /proc, and a progress line for the person waiting.

use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use mcu_server::proc_stat::{machine_cores, ProcessSample};

/// A one-line progress display on a terminal, plain lines otherwise.
pub(super) struct Progress {
    terminal: bool,
}

impl Progress {
    pub fn new() -> Self {
        Progress {
            terminal: std::io::stderr().is_terminal(),
        }
    }

    pub fn show(&self, done: usize, total: usize, what: &str) {
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

    pub fn done(&self) {
        if self.terminal {
            eprintln!();
        }
    }
}

/// Samples the server's process once a second while a window runs.
pub(super) struct ServerWatch {
    pid: Option<u32>,
    samples: Vec<ProcessSample>,
    /// The bench's own process over the same window: on one machine, the two share the cores.
    own: Vec<ProcessSample>,
}

impl ServerWatch {
    /// Watches process `pid` (when known) and this process.
    pub fn new(pid: Option<u32>) -> Self {
        ServerWatch {
            pid,
            samples: Vec::new(),
            own: Vec::new(),
        }
    }

    pub fn sample(&mut self) {
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
    pub async fn window(
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

    pub fn cores(&self) -> Option<f64> {
        Some(self.samples.last()?.cores_since(self.samples.first()?))
    }

    pub fn own_cores(&self) -> Option<f64> {
        Some(self.own.last()?.cores_since(self.own.first()?))
    }

    pub fn rss(&self) -> Option<f64> {
        Some(self.samples.last()?.rss_mb)
    }

    /// The trend of the server's memory, once the window is long enough for one: over a short
    /// run the slope is the allocator warming up, not a leak (a 20-s window read 20 MB/min where
    /// 30 minutes of the same room read 0.26).
    pub fn rss_slope_per_minute(&self) -> Option<f64> {
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

pub(super) fn percent_of_machine(cores: f64) -> f64 {
    100.0 * cores / machine_cores() as f64
}
