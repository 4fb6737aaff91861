//! Loss repair on what the server sends, within a budget. A viewer that loses a packet NACKs it,
//! and the server resends it from a short history of the stream. webrtc-rs's own responder resends
//! every packet it is asked for, as often as it is asked: on a thin link, where the viewer loses a
//! large share of what arrives, the resends pile onto the congestion that caused the loss. Measured
//! with `mcu probe --downlink-kbps 1200` on camera-like video: 3,300 packets a second arrived at
//! that viewer's 1.2 Mbit/s link, 16 times the composite's own rate, and the server was busy
//! enough that another viewer saw nothing for 10 s.
//!
//! This responder resends a packet at most `MAX_RESENDS` times, `MIN_RESEND_SPACING` apart, and
//! spends at most `RESEND_SHARE` of what the stream itself sends. The bookkeeping (`Repair`) is
//! pure, with time passed in; the interceptor around it is webrtc-rs plumbing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use webrtc::interceptor::stream_info::StreamInfo;
use webrtc::interceptor::{
    Attributes, Interceptor, InterceptorBuilder, RTCPReader, RTCPWriter, RTPReader, RTPWriter,
};
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp::packet::Packet;
use webrtc::util::MarshalSize;

/// Retransmissions may take at most this share of what the stream sends: enough to repair a few
/// percent of loss, never enough to add much to a link that is already dropping.
pub const RESEND_SHARE: f64 = 0.25;
/// Packets kept for repair: about 5 s of a 2 Mbit/s stream of 1200-byte packets. A NACK for
/// anything older asks for a frame the viewer gave up on long ago.
pub const HISTORY_PACKETS: usize = 1024;
/// A receiver NACKs a missing packet again every round trip until it comes; on a link that drops
/// it again, resending it more often only feeds the congestion.
pub const MIN_RESEND_SPACING: Duration = Duration::from_millis(100);
pub const MAX_RESENDS: u8 = 2;
/// A packet older than this is past its frame's playout: the probe plays 200 ms behind, a browser
/// a few hundred ms on a jittery link, and a receiver that gave up on a frame asks for a keyframe
/// instead. webrtc-rs's NACK generator keeps asking for a lost packet until it leaves its
/// 512-packet log, long after that: measured on a 1.2 Mbit/s viewer, three in four NACKed packets
/// were such leftovers, and answering them spent the budget the fresh losses needed.
pub const MAX_RESEND_AGE: Duration = Duration::from_millis(600);
/// The budget may be saved up for this long: a burst of loss (a keyframe's packets lost
/// together) is repaired at once, a steady loss only within the share.
const BUDGET_WINDOW: Duration = Duration::from_millis(500);
/// How quickly the measured send rate follows the stream: a time constant of about a second.
const RATE_SMOOTHING: Duration = Duration::from_secs(1);

struct Kept {
    packet: Packet,
    sent_at: Instant,
    resends: u8,
    last_resent: Option<Instant>,
}

/// One stream's history and repair budget.
pub struct Repair {
    kept: Vec<Option<Kept>>,
    /// Bytes per second the stream sends, smoothed.
    rate: f64,
    last_sent: Option<Instant>,
    /// Bytes that may be resent now.
    budget: f64,
    last_budget: Option<Instant>,
    pub counters: RepairCounters,
}

/// What one stream's repair did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct RepairCounters {
    pub nacked: u64,
    pub resent: u64,
    /// Asked for, but no longer (or never) in the history.
    pub unknown: u64,
    /// Asked for after its frame was played (`MAX_RESEND_AGE`).
    pub too_old: u64,
    /// Held back: resent too often or too recently, or over the budget.
    pub held_back: u64,
}

impl Default for Repair {
    fn default() -> Self {
        Self::new()
    }
}

impl Repair {
    pub fn new() -> Self {
        Repair {
            kept: (0..HISTORY_PACKETS).map(|_| None).collect(),
            rate: 0.0,
            last_sent: None,
            budget: 0.0,
            last_budget: None,
            counters: RepairCounters::default(),
        }
    }

    fn slot(&mut self, seq: u16) -> &mut Option<Kept> {
        let index = usize::from(seq) % HISTORY_PACKETS;
        &mut self.kept[index]
    }

    /// The stream sent `packet` at `now`.
    pub fn sent(&mut self, packet: &Packet, now: Instant) {
        let bytes = (packet.header.marshal_size() + packet.payload.len()) as f64;
        if let Some(last) = self.last_sent {
            let dt = now.saturating_duration_since(last).as_secs_f64();
            let decay = (-dt / RATE_SMOOTHING.as_secs_f64()).exp();
            self.rate = self.rate * decay + bytes / RATE_SMOOTHING.as_secs_f64();
        }
        self.last_sent = Some(now);
        *self.slot(packet.header.sequence_number) = Some(Kept {
            packet: packet.clone(),
            sent_at: now,
            resends: 0,
            last_resent: None,
        });
    }

    /// A NACK asked for `seq` at `now`: the packet to resend, if it may be resent.
    pub fn asked(&mut self, seq: u16, now: Instant) -> Option<Packet> {
        self.counters.nacked += 1;
        // The budget refills at RESEND_SHARE of the send rate, saved up for BUDGET_WINDOW (which
        // is where it starts: nothing was resent before).
        let refill = self.last_budget.map_or(BUDGET_WINDOW.as_secs_f64(), |at| {
            now.saturating_duration_since(at).as_secs_f64()
        });
        let ceiling = self.rate * RESEND_SHARE * BUDGET_WINDOW.as_secs_f64();
        self.budget = (self.budget + refill * self.rate * RESEND_SHARE).min(ceiling);
        self.last_budget = Some(now);
        let budget = self.budget;
        let Some(kept) = self
            .slot(seq)
            .as_mut()
            .filter(|k| k.packet.header.sequence_number == seq)
        else {
            self.counters.unknown += 1;
            return None;
        };
        let size = (kept.packet.header.marshal_size() + kept.packet.payload.len()) as f64;
        let too_soon = kept
            .last_resent
            .is_some_and(|at| now.saturating_duration_since(at) < MIN_RESEND_SPACING);
        let too_old = now.saturating_duration_since(kept.sent_at) > MAX_RESEND_AGE;
        if too_old {
            self.counters.too_old += 1;
            return None;
        }
        if kept.resends >= MAX_RESENDS || too_soon || size > budget {
            tracing::trace!(
                seq,
                resends = kept.resends,
                too_soon,
                over_budget = size > budget,
                "resend held back"
            );
            self.counters.held_back += 1;
            return None;
        }
        kept.resends += 1;
        kept.last_resent = Some(now);
        let packet = kept.packet.clone();
        self.budget -= size;
        self.counters.resent += 1;
        tracing::trace!(seq, "resent");
        Some(packet)
    }
}

/// Builds one `PacedResponder` per peer connection.
#[derive(Default)]
pub struct PacedResponderBuilder;

impl InterceptorBuilder for PacedResponderBuilder {
    fn build(
        &self,
        _id: &str,
    ) -> Result<Arc<dyn Interceptor + Send + Sync>, webrtc::interceptor::Error> {
        Ok(Arc::new(PacedResponder::default()))
    }
}

/// A stream this responder repairs: its history, and where to write resends.
struct Stream {
    repair: Mutex<Repair>,
    next: Arc<dyn RTPWriter + Send + Sync>,
}

impl Stream {
    fn repair(&self) -> std::sync::MutexGuard<'_, Repair> {
        self.repair.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[derive(Default)]
pub struct PacedResponder {
    streams: Arc<Mutex<HashMap<u32, Arc<Stream>>>>,
}

fn lock(
    streams: &Mutex<HashMap<u32, Arc<Stream>>>,
) -> std::sync::MutexGuard<'_, HashMap<u32, Arc<Stream>>> {
    streams.lock().unwrap_or_else(|p| p.into_inner())
}

fn supports_nack(info: &StreamInfo) -> bool {
    info.rtcp_feedback
        .iter()
        .any(|fb| fb.typ == "nack" && fb.parameter.is_empty())
}

struct Writer(Arc<Stream>);

#[async_trait]
impl RTPWriter for Writer {
    async fn write(
        &self,
        packet: &Packet,
        attributes: &Attributes,
    ) -> Result<usize, webrtc::interceptor::Error> {
        self.0.repair().sent(packet, Instant::now());
        self.0.next.write(packet, attributes).await
    }
}

struct Reader {
    parent: Arc<dyn RTCPReader + Send + Sync>,
    streams: Arc<Mutex<HashMap<u32, Arc<Stream>>>>,
}

#[async_trait]
impl RTCPReader for Reader {
    async fn read(
        &self,
        buf: &mut [u8],
        attributes: &Attributes,
    ) -> Result<
        (
            Vec<Box<dyn webrtc::rtcp::packet::Packet + Send + Sync>>,
            Attributes,
        ),
        webrtc::interceptor::Error,
    > {
        let (packets, attributes) = self.parent.read(buf, attributes).await?;
        for p in &packets {
            let Some(nack) = p.as_any().downcast_ref::<TransportLayerNack>() else {
                continue;
            };
            let Some(stream) = lock(&self.streams).get(&nack.media_ssrc).cloned() else {
                continue;
            };
            let now = Instant::now();
            let resends: Vec<Packet> = {
                let mut repair = stream.repair();
                nack.nacks
                    .iter()
                    .flat_map(|pair| pair.into_iter())
                    .filter_map(|seq| repair.asked(seq, now))
                    .collect()
            };
            if resends.is_empty() {
                continue;
            }
            // Written on a task of its own, as webrtc-rs's responder does: the RTCP reader must
            // not wait on the media path.
            tokio::spawn(async move {
                let attributes = Attributes::new();
                for packet in &resends {
                    if stream.next.write(packet, &attributes).await.is_err() {
                        break;
                    }
                }
            });
        }
        Ok((packets, attributes))
    }
}

#[async_trait]
impl Interceptor for PacedResponder {
    async fn bind_rtcp_reader(
        &self,
        reader: Arc<dyn RTCPReader + Send + Sync>,
    ) -> Arc<dyn RTCPReader + Send + Sync> {
        Arc::new(Reader {
            parent: reader,
            streams: self.streams.clone(),
        })
    }

    async fn bind_rtcp_writer(
        &self,
        writer: Arc<dyn RTCPWriter + Send + Sync>,
    ) -> Arc<dyn RTCPWriter + Send + Sync> {
        writer
    }

    async fn bind_local_stream(
        &self,
        info: &StreamInfo,
        writer: Arc<dyn RTPWriter + Send + Sync>,
    ) -> Arc<dyn RTPWriter + Send + Sync> {
        if !supports_nack(info) {
            return writer;
        }
        let stream = Arc::new(Stream {
            repair: Mutex::new(Repair::new()),
            next: writer,
        });
        lock(&self.streams).insert(info.ssrc, stream.clone());
        Arc::new(Writer(stream))
    }

    async fn unbind_local_stream(&self, info: &StreamInfo) {
        lock(&self.streams).remove(&info.ssrc);
    }

    async fn bind_remote_stream(
        &self,
        _info: &StreamInfo,
        reader: Arc<dyn RTPReader + Send + Sync>,
    ) -> Arc<dyn RTPReader + Send + Sync> {
        reader
    }

    async fn unbind_remote_stream(&self, _info: &StreamInfo) {}

    async fn close(&self) -> Result<(), webrtc::interceptor::Error> {
        lock(&self.streams).clear();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn packet(seq: u16) -> Packet {
        Packet {
            header: webrtc::rtp::header::Header {
                sequence_number: seq,
                ..Default::default()
            },
            payload: Bytes::from(vec![0u8; 1188]),
        }
    }

    /// A stream of 200 packets a second (1200 bytes each: 240 kB/s) for `seconds`.
    fn sending(repair: &mut Repair, from: u16, t0: Instant, seconds: u64) -> Instant {
        let n = 200 * seconds as u16;
        for i in 0..n {
            repair.sent(
                &packet(from.wrapping_add(i)),
                t0 + Duration::from_millis(5 * u64::from(i)),
            );
        }
        t0 + Duration::from_secs(seconds)
    }

    #[test]
    fn a_lost_packet_is_resent_at_most_twice_and_not_within_a_round_trip() {
        let t0 = Instant::now();
        let mut repair = Repair::new();
        let now = sending(&mut repair, 0, t0, 3);
        assert!(repair.asked(590, now).is_some());
        assert!(repair.asked(590, now + Duration::from_millis(50)).is_none());
        assert!(repair
            .asked(590, now + Duration::from_millis(150))
            .is_some());
        assert!(repair
            .asked(590, now + Duration::from_millis(300))
            .is_none());
        assert_eq!(repair.counters.resent, 2);
        assert_eq!(repair.counters.held_back, 2);
    }

    #[test]
    fn resends_keep_to_a_share_of_the_stream() {
        let t0 = Instant::now();
        let mut repair = Repair::new();
        let now = sending(&mut repair, 0, t0, 4);
        // A viewer that lost everything asks for all of the last 100 packets at once: only the
        // budget's worth is resent (25 % of 240 kB/s saved up for 0.5 s: ~25 packets).
        let resent = (700..800)
            .filter(|s| repair.asked(*s, now).is_some())
            .count();
        assert!((20..=30).contains(&resent), "{resent} resent");
        // A second later the budget has refilled by a quarter of a second's stream, no more.
        let later = sending(&mut repair, 800, now, 1);
        let more = (900..1000)
            .filter(|s| repair.asked(*s, later).is_some())
            .count();
        assert!((20..=30).contains(&more), "{more} resent");
    }

    #[test]
    fn a_packet_past_its_playout_is_not_resent() {
        let t0 = Instant::now();
        let mut repair = Repair::new();
        let now = sending(&mut repair, 0, t0, 3);
        // Packet 400 left 1 s ago: its frame was played or skipped long since.
        assert!(repair.asked(400, now).is_none());
        assert_eq!(repair.counters.too_old, 1);
        assert!(repair.asked(599, now).is_some());
    }

    #[test]
    fn packets_older_than_the_history_are_unknown() {
        let t0 = Instant::now();
        let mut repair = Repair::new();
        let now = sending(&mut repair, 65_000, t0, 10);
        // 2000 packets were sent (wrapping past 65535); only the last 1024 are kept.
        assert!(repair.asked(65_000, now).is_none());
        assert_eq!(repair.counters.unknown, 1);
        assert!(repair.asked(65_000u16.wrapping_add(1999), now).is_some());
    }
}
