//! A cap on log lines that remote input can cause. Measured before: 5,000 refused joins wrote
//! 5,000 lines, so a stranger could fill the operator's disk and bury what matters. Each place
//! that logs something a client caused holds a `static` [`LogLimit`]: the first lines of a burst
//! are written, the rest are counted, and the next line written says how many were left out.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Lines one place may write per window: enough to see what happens, not a flood.
pub const LINES_PER_WINDOW: u32 = 10;
pub const WINDOW: Duration = Duration::from_secs(10);

struct Window {
    started: Option<Instant>,
    written: u32,
    left_out: u64,
}

pub struct LogLimit {
    window: Mutex<Window>,
}

impl Default for LogLimit {
    fn default() -> Self {
        Self::new()
    }
}

impl LogLimit {
    pub const fn new() -> Self {
        LogLimit {
            window: Mutex::new(Window {
                started: None,
                written: 0,
                left_out: 0,
            }),
        }
    }

    /// Whether to write a line now: `Some(n)` with the lines left out since the last one
    /// written, `None` to leave this one out.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(Instant::now())
    }

    fn allow_at(&self, now: Instant) -> Option<u64> {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.started
            .is_none_or(|s| now.saturating_duration_since(s) >= WINDOW)
        {
            w.started = Some(now);
            w.written = 0;
        }
        if w.written >= LINES_PER_WINDOW {
            w.left_out += 1;
            return None;
        }
        w.written += 1;
        Some(std::mem::take(&mut w.left_out))
    }
}

/// `tracing::info!` through a `static` limit of its own at this call site; a written line carries
/// `left_out` (the lines not written since the last one).
macro_rules! limited_info {
    ($($arg:tt)+) => {{
        static LIMIT: $crate::log_limit::LogLimit = $crate::log_limit::LogLimit::new();
        if let Some(left_out) = LIMIT.allow() {
            tracing::info!(left_out, $($arg)+);
        }
    }};
}
pub(crate) use limited_info;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_writes_its_first_lines_and_then_says_how_many_it_left_out() {
        let limit = LogLimit::new();
        let t0 = Instant::now();
        let written: Vec<_> = (0..5_000).filter_map(|_| limit.allow_at(t0)).collect();
        assert_eq!(written, vec![0; LINES_PER_WINDOW as usize]);
        // The next window's first line counts the rest.
        assert_eq!(
            limit.allow_at(t0 + WINDOW),
            Some(5_000 - LINES_PER_WINDOW as u64)
        );
        assert_eq!(limit.allow_at(t0 + WINDOW), Some(0));
    }
}
