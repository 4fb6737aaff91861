//! Moving a shared file's bytes to a participant: paced so a file never takes the call's
//! bandwidth, and with back-pressure from the data channel (or the WebSocket, in the fallback).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::sync::{mpsc, Notify};
use webrtc::data_channel::RTCDataChannel;

use crate::protocol::sharing::{encode_chunk, FILE_CHUNK_BYTES};
use crate::room::Download;

/// A download waits while more than this is queued on its data channel, and resumes once the
/// queue is down to `LOW_WATER`: a second or so of a slow link, so the file flows without
/// crowding out the participant's audio and video.
const HIGH_WATER: usize = 1024 * 1024;
pub(super) const LOW_WATER: usize = 256 * 1024;

/// Spaces a transfer's bytes out to `rate` bytes per second on average (after a first burst),
/// so a file never takes the whole of a participant's link from their audio and video.
#[derive(Debug)]
pub struct Pacer {
    bucket: crate::rate::RateLimit,
}

/// What a transfer may send at once before the pace applies: a few frames, so a small file
/// goes at once.
const PACER_BURST: u64 = 256 * 1024;

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Self {
        Pacer {
            bucket: crate::rate::RateLimit::new(PACER_BURST as f64, bytes_per_second.max(1) as f64),
        }
    }

    /// How long to wait after sending `bytes` at `now` before sending more. A token bucket: a
    /// pause earns at most `PACER_BURST` of credit, so an idle minute is not a minute's bytes
    /// at once.
    pub fn delay(&mut self, bytes: usize, now: Instant) -> Duration {
        self.bucket.take(bytes as f64, now)
    }
}

/// Where a download's frames go.
pub(super) enum ChunkSink {
    Channel(Arc<RTCDataChannel>, Arc<Notify>),
    WebSocket(mpsc::Sender<Bytes>),
}

pub(super) async fn send_file(download: &Download, sink: ChunkSink, rate: u64) -> Result<()> {
    let file_id = download.info.file_id;
    let mut file = tokio::fs::File::open(&download.path)
        .await
        .with_context(|| format!("opening {}", download.path.display()))?;
    let mut buffer = vec![0u8; FILE_CHUNK_BYTES];
    let mut pacer = Pacer::new(rate);
    loop {
        let n = file.read(&mut buffer).await.context("reading the file")?;
        if n == 0 {
            return Ok(());
        }
        let wait = pacer.delay(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let frame = Bytes::from(encode_chunk(file_id, &buffer[..n]));
        match &sink {
            ChunkSink::Channel(dc, drained) => {
                while dc.buffered_amount().await > HIGH_WATER {
                    // The low-water callback wakes us; the timeout only guards a missed wake-up.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), drained.notified()).await;
                }
                dc.send(&frame)
                    .await
                    .context("sending on the files channel")?;
            }
            ChunkSink::WebSocket(out) => out
                .send(frame)
                .await
                .map_err(|_| anyhow::anyhow!("the WebSocket closed"))?,
        }
    }
}

pub(super) fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_a_burst_go_then_keeps_to_the_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1_000_000);
        // The first 256 KiB go at once.
        for _ in 0..16 {
            assert_eq!(pacer.delay(16 * 1024, t0), Duration::ZERO);
        }
        // Then 1 MB more is due one second in.
        let mut wait = Duration::ZERO;
        for _ in 0..61 {
            wait = pacer.delay(16_393, t0);
        }
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        // Time that passed counts: a second later, that same byte count is due now.
        assert!(pacer.delay(0, t0 + Duration::from_secs(1)) < Duration::from_millis(10));
    }

    #[test]
    fn a_pause_is_not_credit_for_a_flood_afterwards() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1_000_000);
        assert_eq!(pacer.delay(1024, t0), Duration::ZERO);
        // A minute later 20 MB arrive at once: the burst goes, the rest waits its pace.
        let later = t0 + Duration::from_secs(60);
        let mut wait = Duration::ZERO;
        for _ in 0..(20 * 1024 / 64) {
            wait = pacer.delay(64 * 1024, later);
        }
        assert!(wait > Duration::from_secs(19), "{wait:?}");
    }

    #[test]
    fn hashes_print_as_lower_case_hex() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(b"abc");
        assert_eq!(
            super::hex(&digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
