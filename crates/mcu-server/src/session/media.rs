//! The media side of a session, which never passes through the session task: one task per
//! incoming track pumping its RTP into the pipeline, PLIs to a sender until (and whenever) its
//! decoder needs a keyframe, and the drain of the RTCP viewers send about our tracks; and the
//! session's step that connects a new incoming track to its branch of the room's pipeline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use tokio::sync::mpsc;

use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtcp::payload_feedbacks::receiver_estimated_maximum_bitrate::ReceiverEstimatedMaximumBitrate;
use webrtc::rtcp::receiver_report::ReceiverReport;
use webrtc::rtcp::transport_feedbacks::transport_layer_nack::TransportLayerNack;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::reorder::Reorder;
use super::viewer;
use super::viewer::Feedback;
use super::{Activity, Session};
use crate::ids::ParticipantId;
use crate::log_limit::limited_info;
use crate::media::{InputHandle, InputSignals};
use crate::metrics::{metrics, Direction, Kind};
use crate::protocol::{ErrorCode, ServerMessage};
use crate::room::TrackKind;
use crate::room::{Feeds, RoomHandle};
use crate::rtc;
use crate::rtc::OutboundTrack;
use std::time::Instant;

/// While a new sender's first keyframe has not been decoded, ask for one this often: the first
/// keyframe is usually sent before DTLS is up and lost.
const FIRST_KEYFRAME_PLI_INTERVAL: Duration = Duration::from_millis(500);
/// Later keyframe requests (after loss) are spaced at least this far apart, so a decoder that asks
/// on every broken frame does not make the sender emit keyframe after keyframe.
const LOSS_PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// The largest picture a camera may send, either way up (a phone held upright sends 1080×1920):
/// 1080p, which no tile needs more than, with H.264's macroblock rounding (1080 → 1088). A
/// decoder allocates whatever the stream declares, up to 16383×16383 (~400 MB a frame in VP8).
pub const MAX_INPUT_LONG_SIDE: u32 = 1920;
pub const MAX_INPUT_SHORT_SIDE: u32 = 1088;

fn input_size_allowed((width, height): (u32, u32)) -> bool {
    width.max(height) <= MAX_INPUT_LONG_SIDE && width.min(height) <= MAX_INPUT_SHORT_SIDE
}

/// Keeps a camera's pictures within `MAX_INPUT_*` before anything is decoded: from a keyframe
/// (or H.264 parameter set) that declares a larger picture, every packet is dropped until one
/// declares an accepted size again.
#[derive(Default)]
struct InputSizeGate {
    refusing: Option<(u32, u32)>,
}

enum GateVerdict {
    Pass,
    Drop,
    /// The first packet dropped for this size: tell the sender why.
    Refuse((u32, u32)),
}

impl InputSizeGate {
    fn check(&mut self, packet: &[u8], codec: crate::codec::VideoCodec) -> GateVerdict {
        if let Some(size) = crate::rtp::declared_size(packet, codec) {
            if input_size_allowed(size) {
                self.refusing = None;
            } else if self.refusing != Some(size) {
                self.refusing = Some(size);
                return GateVerdict::Refuse(size);
            }
        }
        if self.refusing.is_some() {
            GateVerdict::Drop
        } else {
            GateVerdict::Pass
        }
    }
}

/// What a sender may spend on each pixel of its tile, per second: 3 bits is about 0.1 bit per
/// pixel per frame at 30 fps, where VP8 on camera content stops gaining visibly (720p at
/// 2.5 Mbit/s, a 640×360 tile at 690 kbit/s, a 5×5 grid's 256×144 tile at 110 kbit/s).
pub const SENDER_BITS_PER_PIXEL_SECOND: u32 = 3;
/// Never ask a camera for less: below this a small tile's encoder starves on motion.
pub const MIN_SENDER_KBPS: u32 = 100;
/// Nor more than a 720p camera needs: what the web client would send unasked.
pub const MAX_SENDER_KBPS: u32 = 2500;
/// How often the cap is repeated: a sender that missed one (it is RTCP, and may be lost) or
/// joined a new layout hears the current one within this.
const SENDER_CAP_INTERVAL: Duration = Duration::from_secs(1);

/// The most a camera shown in a tile of `tile_pixels` should send, in bit/s; None before the
/// tile is known.
pub fn sender_cap_bps(tile_pixels: u32) -> Option<u32> {
    (tile_pixels > 0).then(|| {
        tile_pixels
            .saturating_mul(SENDER_BITS_PER_PIXEL_SECOND)
            .clamp(MIN_SENDER_KBPS * 1000, MAX_SENDER_KBPS * 1000)
    })
}

/// Keeps a sender to what its tile shows: a REMB every SENDER_CAP_INTERVAL with the cap for its
/// tile's size. Browsers take a REMB as the most they may send (and lower their resolution to
/// fit); a 25-person room's cameras then send 25 × 110 kbit/s, not 25 × 2.5 Mbit/s.
async fn cap_sender(
    pc: std::sync::Weak<RTCPeerConnection>,
    media_ssrc: u32,
    signals: Arc<InputSignals>,
) {
    let mut tick = tokio::time::interval(SENDER_CAP_INTERVAL);
    loop {
        tick.tick().await;
        let Some(pc) = pc.upgrade() else { return };
        let Some(bitrate) = sender_cap_bps(signals.tile_pixels.load(Ordering::Relaxed)) else {
            continue;
        };
        let remb = ReceiverEstimatedMaximumBitrate {
            sender_ssrc: 0,
            bitrate: bitrate as f32,
            ssrcs: vec![media_ssrc],
        };
        // Before the connection is up this fails; the next tick tries again.
        let _ = pc.write_rtcp(&[Box::new(remb)]).await;
    }
}

/// Packets read from a camera's track waiting for the pump: a few frames' worth.
const CAMERA_READ_QUEUE: usize = 64;

/// Moves a microphone's RTP packets into its pipeline branch until either side ends; the level
/// the client stamps on them (RFC 6464, extension `level_id`) goes to the speaker decision.
async fn pump(
    track: Arc<TrackRemote>,
    input: InputHandle,
    activity: Arc<Activity>,
    level_id: Option<u8>,
) {
    loop {
        let packet = match track.read_rtp().await {
            Ok((packet, _)) => packet,
            Err(_) => break,
        };
        activity.touch();
        if let Some(level) = level_id.and_then(|id| rtc::audio_level(&packet, id)) {
            input.stamped_level(level);
        }
        let Ok(bytes) = packet.marshal() else {
            continue;
        };
        metrics().rtp(Direction::In, Kind::Audio, bytes.len());
        if input.push(bytes).is_err() {
            // The branch was removed (flushing) or failed; either way nobody reads any more.
            break;
        }
    }
}

/// As `pump`, for a camera: packets after a gap wait for the missing one (reorder.rs). The track
/// is read on a task of its own, so the wait's timer never cancels a read half done.
async fn pump_camera(
    track: Arc<TrackRemote>,
    codec: crate::codec::VideoCodec,
    input: InputHandle,
    activity: Arc<Activity>,
    outbox: mpsc::Sender<ServerMessage>,
) {
    let mut gate = InputSizeGate::default();
    let (tx, mut rx) = mpsc::channel(CAMERA_READ_QUEUE);
    let reader = tokio::spawn(async move {
        while let Ok((packet, _)) = track.read_rtp().await {
            if tx.send(packet).await.is_err() {
                break;
            }
        }
    });
    let mut reorder = Reorder::default();
    loop {
        let deadline = reorder.deadline();
        let ready = tokio::select! {
            packet = rx.recv() => match packet {
                Some(packet) => {
                    activity.touch();
                    let seq = packet.header.sequence_number;
                    reorder.push(seq, packet, std::time::Instant::now())
                }
                None => break,
            },
            _ = sleep_until(deadline) => reorder.expire(std::time::Instant::now()),
        };
        let mut gone = false;
        for packet in ready {
            let Ok(bytes) = packet.marshal() else {
                continue;
            };
            match gate.check(&bytes, codec) {
                GateVerdict::Pass => {}
                GateVerdict::Drop => continue,
                GateVerdict::Refuse((width, height)) => {
                    limited_info!(width, height, "camera picture too large, dropped");
                    let _ = outbox.try_send(ServerMessage::error(
                        ErrorCode::VideoTooLarge,
                        format!("your camera sends {width}×{height}; the server decodes at most 1920×1080 (either way up): send a smaller picture"),
                    ));
                    continue;
                }
            }
            metrics().rtp(Direction::In, Kind::Video, bytes.len());
            if input.push(bytes).is_err() {
                gone = true;
                break;
            }
        }
        if gone {
            break;
        }
    }
    reader.abort();
}

async fn sleep_until(deadline: Option<std::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(tokio::time::Instant::from_std(at)).await,
        None => std::future::pending().await,
    }
}

/// Sends PLIs to a sender: repeatedly until its first keyframe is decoded, then whenever the
/// decoder asks for one after loss.
async fn request_keyframes(
    pc: std::sync::Weak<RTCPeerConnection>,
    media_ssrc: u32,
    signals: Arc<InputSignals>,
) {
    let send_pli = |pc: &std::sync::Weak<RTCPeerConnection>| {
        let pc = pc.upgrade();
        async move {
            let Some(pc) = pc else { return false };
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            if pc.write_rtcp(&[Box::new(pli)]).await.is_ok() {
                metrics().plis_sent.inc();
            }
            true
        }
    };
    while !signals.first_frame_decoded.load(Ordering::Acquire) {
        if !send_pli(&pc).await {
            return;
        }
        tokio::time::sleep(FIRST_KEYFRAME_PLI_INTERVAL).await;
    }
    loop {
        signals.keyframe_wanted.notified().await;
        let keyframes_before = signals.keyframes_received.load(Ordering::Relaxed);
        if !send_pli(&pc).await {
            return;
        }
        tokio::time::sleep(LOSS_PLI_MIN_INTERVAL).await;
        // The depayloader asks again for every frame it drops while it waits, so a request is
        // usually pending by now; once the keyframe came it is stale, and answering it would
        // cost the sender a second keyframe for one loss (seen: two PLIs per loss, 300 ms apart).
        // A loss after that keyframe is asked about again at the next frame it breaks.
        if signals.keyframes_received.load(Ordering::Relaxed) > keyframes_before {
            let _ = tokio::time::timeout(Duration::ZERO, signals.keyframe_wanted.notified()).await;
        }
    }
}

/// Drains the RTCP a viewer sends about one of our tracks (webrtc-rs needs it drained for NACK
/// handling). Any RTCP proves the participant is alive. For the composite, what the viewer says
/// goes to the task that writes its video (viewer.rs): PLI and FIR, REMB, receiver reports and
/// NACKs. Feedback that does not fit that task's queue is dropped: the next report will do.
pub(super) async fn read_sender_rtcp(
    sender: Arc<RTCRtpSender>,
    viewer: Option<mpsc::Sender<Feedback>>,
    activity: Arc<Activity>,
) {
    let ssrc = sender
        .get_parameters()
        .await
        .encodings
        .first()
        .map(|e| e.ssrc);
    while let Ok((packets, _)) = sender.read_rtcp().await {
        activity.touch();
        let Some(viewer) = &viewer else { continue };
        for packet in &packets {
            for feedback in feedback_of(packet.as_any(), ssrc) {
                count(&feedback);
                let _ = viewer.try_send(feedback);
            }
        }
    }
}

/// What viewers say about the composite, in the server's metrics.
fn count(feedback: &Feedback) {
    let m = metrics();
    match feedback {
        Feedback::KeyframeWanted => m.plis_received.inc(),
        Feedback::Nacked(seqs) => m.nacked_packets.inc_by(seqs.len() as u64),
        Feedback::Report { loss, rtt, .. } => {
            m.viewer_loss.observe(*loss);
            if let Some(rtt) = rtt {
                m.viewer_rtt.observe(rtt.as_secs_f64());
            }
        }
        Feedback::Remb(_) => {}
    }
}

/// What one RTCP packet about the composite (whose SSRC is `ssrc`) says.
fn feedback_of(packet: &dyn std::any::Any, ssrc: Option<u32>) -> Vec<Feedback> {
    if packet.downcast_ref::<PictureLossIndication>().is_some()
        || packet.downcast_ref::<FullIntraRequest>().is_some()
    {
        return vec![Feedback::KeyframeWanted];
    }
    if let Some(remb) = packet.downcast_ref::<ReceiverEstimatedMaximumBitrate>() {
        return vec![Feedback::Remb(remb.bitrate)];
    }
    if let Some(nack) = packet.downcast_ref::<TransportLayerNack>() {
        let seqs = nack
            .nacks
            .iter()
            .flat_map(|pair| pair.into_iter())
            .collect();
        return vec![Feedback::Nacked(seqs)];
    }
    if let Some(report) = packet.downcast_ref::<ReceiverReport>() {
        return report
            .reports
            .iter()
            .filter(|r| ssrc.is_none_or(|s| s == r.ssrc))
            .map(|r| Feedback::Report {
                loss: f64::from(r.fraction_lost) / 256.0,
                jitter_ms: f64::from(r.jitter) / 90.0,
                rtt: round_trip(r.last_sender_report, r.delay, SystemTime::now()),
            })
            .collect();
    }
    Vec::new()
}

/// The round trip from a receiver report (RFC 3550, 6.4.1): now, less when our sender report
/// left (`lsr`, the middle 32 bits of its NTP time), less how long the viewer held it (`dlsr`),
/// in 1/65536 s. None before the viewer has seen a sender report.
fn round_trip(lsr: u32, dlsr: u32, now: SystemTime) -> Option<Duration> {
    if lsr == 0 {
        return None;
    }
    // NTP counts from 1900; the Unix epoch is 2,208,988,800 s later.
    let since_1900 = now.duration_since(UNIX_EPOCH).ok()? + Duration::from_secs(2_208_988_800);
    let seconds = since_1900.as_secs() as u32;
    let fraction = ((u64::from(since_1900.subsec_nanos()) << 32) / 1_000_000_000) as u32;
    let middle = (seconds << 16) | (fraction >> 16);
    let units = middle.wrapping_sub(lsr).wrapping_sub(dlsr);
    // More than a minute is a clock that does not match ours, not a round trip.
    (units < 60 << 16).then(|| Duration::from_secs_f64(f64::from(units) / 65536.0))
}

impl Session {
    /// Connects a new incoming track to a branch of the room's pipeline, with its pump and (for
    /// video) its keyframe requests.
    pub(super) async fn on_track(&mut self, track: Arc<TrackRemote>) -> Result<()> {
        let Some(member) = &self.member else {
            return Ok(());
        };
        let codec = track.codec();
        let payload_type = track.payload_type();
        let kind = match track.kind() {
            RTPCodecType::Video => TrackKind::Video {
                codec: rtc::video_codec_of(&codec.capability.mime_type).with_context(|| {
                    format!(
                        "video codec {} is not supported",
                        codec.capability.mime_type
                    )
                })?,
                payload_type,
            },
            RTPCodecType::Audio if rtc::is_opus(&codec.capability.mime_type) => {
                TrackKind::Audio { payload_type }
            }
            other => anyhow::bail!(
                "{other} track with codec {} is not supported",
                codec.capability.mime_type
            ),
        };
        let signals = Arc::new(InputSignals::default());
        let input = member
            .room
            .add_track(member.id, kind, signals.clone())
            .await?;
        let pc = Arc::downgrade(&member.pc);
        if let TrackKind::Video { codec, .. } = kind {
            self.spawn(pump_camera(
                track.clone(),
                codec,
                input,
                self.activity.clone(),
                self.outbox.clone(),
            ));
            self.spawn(request_keyframes(pc.clone(), track.ssrc(), signals.clone()));
            self.spawn(cap_sender(pc, track.ssrc(), signals));
        } else {
            let level_id = rtc::audio_level_id(&track);
            self.spawn(pump(track.clone(), input, self.activity.clone(), level_id));
        }
        Ok(())
    }
}

impl Session {
    /// Puts the room's composite and an audio mix on tracks of `pc`, and starts the tasks that
    /// write them. Returns where the viewer's feedback goes.
    #[allow(clippy::too_many_arguments)]
    pub(super) async fn send_room(
        &mut self,
        pc: &Arc<RTCPeerConnection>,
        room: &RoomHandle,
        id: ParticipantId,
        codec: crate::codec::VideoCodec,
        tiers: Vec<crate::config::Tier>,
        feeds: Feeds,
        joined_at: Instant,
    ) -> Result<mpsc::Sender<viewer::Feedback>> {
        // Our tracks go in before any remote offer is applied, or webrtc-rs 0.17 puts them on
        // transceivers outside the answer and the browser never receives them. The composite's
        // stream id names the room, the audio's this participant's own mix.
        let video_track = OutboundTrack::video(codec, "composite", &format!("mcu-{}", self.room));
        let video_sender = pc
            .add_track(video_track.as_local())
            .await
            .context("adding the composite track")?;
        let audio_track = OutboundTrack::audio(&format!("mcu-{}-{id}", self.room));
        let audio_sender = pc
            .add_track(audio_track.as_local())
            .await
            .context("adding the audio mix track")?;
        let (feedback, feedback_rx) = mpsc::channel(viewer::FEEDBACK_QUEUE);
        let viewer = viewer::Viewer {
            room: room.clone(),
            who: id,
            codec,
            tiers,
            track: video_track,
            outbox: self.outbox.clone(),
            feedback: feedback_rx,
            joined_at: Some(joined_at),
        };
        self.spawn(viewer.run(feeds.video_packets));
        self.spawn(
            audio_track.write_all_counted(feeds.audio_packets, Some(crate::metrics::Kind::Audio)),
        );
        self.spawn(read_sender_rtcp(
            video_sender,
            Some(feedback.clone()),
            self.activity.clone(),
        ));
        self.spawn(read_sender_rtcp(audio_sender, None, self.activity.clone()));
        Ok(feedback)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pictures_up_to_1080p_either_way_up_are_decoded() {
        for ok in [
            (1920, 1080),
            (1920, 1088),
            (1080, 1920),
            (640, 360),
            (16, 16),
        ] {
            assert!(input_size_allowed(ok), "{ok:?}");
        }
        for refused in [(2560, 1440), (16383, 16383), (1921, 720), (1100, 1100)] {
            assert!(!input_size_allowed(refused), "{refused:?}");
        }
    }

    #[test]
    fn a_camera_is_asked_for_what_its_tile_shows() {
        assert_eq!(sender_cap_bps(0), None);
        // Alone in the frame: a 720p camera's worth.
        assert_eq!(sender_cap_bps(1280 * 720), Some(2_500_000));
        // One of four: a quarter of the frame.
        assert_eq!(sender_cap_bps(640 * 360), Some(691_200));
        // One of 25: small, but never starved.
        assert_eq!(sender_cap_bps(256 * 144), Some(110_592));
        assert_eq!(sender_cap_bps(64 * 36), Some(100_000));
    }
}
