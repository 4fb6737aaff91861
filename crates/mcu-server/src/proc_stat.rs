//! A process's CPU time and resident memory, from /proc (Linux): the bench measures servers with it, and
//! a cluster node publishes its own load.

use std::time::Instant;

use anyhow::{Context, Result};

/// /proc reports CPU time in clock ticks of USER_HZ, which is 100 on every Linux architecture
/// (the kernel fixes it for userspace whatever its internal HZ).
const TICKS_PER_SECOND: f64 = 100.0;

#[derive(Debug, Clone, Copy)]
pub struct ProcessSample {
    pub at: Instant,
    pub cpu_seconds: f64,
    pub rss_mb: f64,
}

/// Reads utime + stime (in seconds) from the text of /proc/PID/stat.
pub fn cpu_seconds(stat: &str) -> Option<f64> {
    // The command name is in parentheses and may hold spaces: count fields after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of the line; the first after ')' is field 3.
    let utime: f64 = fields.get(11)?.parse().ok()?;
    let stime: f64 = fields.get(12)?.parse().ok()?;
    Some((utime + stime) / TICKS_PER_SECOND)
}

/// Reads VmRSS (in MB) from the text of /proc/PID/status.
pub fn rss_mb(status: &str) -> Option<f64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kb: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb / 1024.0)
}

impl ProcessSample {
    pub fn of(pid: u32) -> Result<Self> {
        Self::read(&pid.to_string())
    }

    pub fn of_self() -> Result<Self> {
        Self::read("self")
    }

    fn read(pid: &str) -> Result<Self> {
        let at = Instant::now();
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("reading /proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .with_context(|| format!("reading /proc/{pid}/status"))?;
        Ok(ProcessSample {
            at,
            cpu_seconds: cpu_seconds(&stat).context("unreadable /proc stat line")?,
            rss_mb: rss_mb(&status).context("no VmRSS in /proc status")?,
        })
    }

    /// Cores used on average between `earlier` and this sample.
    pub fn cores_since(&self, earlier: &ProcessSample) -> f64 {
        let wall = self.at.duration_since(earlier.at).as_secs_f64();
        if wall <= 0.0 {
            return 0.0;
        }
        (self.cpu_seconds - earlier.cpu_seconds) / wall
    }
}

/// Cores this machine has (what "% of the machine" is a share of).
pub fn machine_cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_and_memory_are_read_from_proc_text() {
        let stat = "4242 (mcu serve (x)) S 1 4242 4242 0 -1 4194560 5000 0 0 0 250 50 0 0 20 0 \
                    30 0 100 1000000 2000 18446744073709551615";
        assert_eq!(cpu_seconds(stat), Some(3.0));
        let status = "Name:\tmcu\nVmPeak:\t  999 kB\nVmRSS:\t  102400 kB\n";
        assert_eq!(rss_mb(status), Some(100.0));
        assert!(ProcessSample::of_self().is_ok());
    }
}
