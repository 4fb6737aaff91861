//! Whether a participant is still there: only RTP and RTCP from its peer connection count.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::config::ServerConfig;

/// Milliseconds since the session started when RTP or RTCP last came from the participant (or
/// when it joined), and whether any has come yet.
pub(super) struct Activity {
    origin: Instant,
    last_ms: AtomicU64,
    heard: AtomicBool,
}

impl Activity {
    pub(super) fn new() -> Arc<Self> {
        Arc::new(Activity {
            origin: Instant::now(),
            last_ms: AtomicU64::new(0),
            heard: AtomicBool::new(false),
        })
    }

    fn mark(&self) {
        self.last_ms
            .store(self.origin.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// The participant joined: it has `--connect-timeout-secs` from now for its first packet.
    pub(super) fn joined(&self) {
        self.mark();
    }

    /// RTP or RTCP arrived from the participant.
    pub(super) fn touch(&self) {
        self.mark();
        self.heard.store(true, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let last = Duration::from_millis(self.last_ms.load(Ordering::Relaxed));
        self.origin.elapsed().saturating_sub(last)
    }

    /// Why the participant should be removed for silence, if it should: nothing for the media
    /// timeout since its last packet, or no first packet within the connect timeout.
    pub(super) fn silence(&self, config: &ServerConfig) -> Option<String> {
        let idle = self.idle();
        if self.heard.load(Ordering::Relaxed) {
            (idle > config.media_timeout)
                .then(|| format!("no media for {:?}", config.media_timeout))
        } else {
            (idle > config.connect_timeout).then(|| {
                format!(
                    "no media within {:?} of joining: the connection never completed",
                    config.connect_timeout
                )
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(media: Duration, connect: Duration) -> ServerConfig {
        ServerConfig {
            media_timeout: media,
            connect_timeout: connect,
            ..ServerConfig::default()
        }
    }

    #[test]
    fn before_its_first_packet_a_participant_has_the_connect_timeout() {
        let activity = Activity::new();
        activity.joined();
        std::thread::sleep(Duration::from_millis(20));
        // Past the media timeout, within the connect timeout: still connecting.
        let patient = config(Duration::from_millis(1), Duration::from_secs(3600));
        assert_eq!(activity.silence(&patient), None);
        let strict = config(Duration::from_secs(3600), Duration::from_millis(1));
        assert!(activity
            .silence(&strict)
            .is_some_and(|why| why.contains("never completed")));
    }

    #[test]
    fn after_its_first_packet_the_media_timeout_counts() {
        let activity = Activity::new();
        activity.joined();
        activity.touch();
        std::thread::sleep(Duration::from_millis(20));
        // Past the media timeout: gone, however long the connect timeout is.
        let strict = config(Duration::from_millis(1), Duration::from_secs(3600));
        assert!(activity
            .silence(&strict)
            .is_some_and(|why| why.starts_with("no media for")));
        // Within the media timeout: there, however short the connect timeout is.
        let patient = config(Duration::from_secs(3600), Duration::from_millis(1));
        assert_eq!(activity.silence(&patient), None);
    }
}
