//! The media side of a session, which never passes through the session task: one task per
//! incoming track pumping its RTP into the pipeline, PLIs to a sender until (and whenever) its
//! decoder needs a keyframe, and the drain of the RTCP viewers send about our tracks; and the
//! session's step that connects a new incoming track to its branch of the room's pipeline.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::rtp_transceiver::rtp_sender::RTCRtpSender;
use webrtc::track::track_remote::TrackRemote;
use webrtc::util::Marshal;

use super::{Activity, Session};
use crate::media::{InputHandle, InputSignals};
use crate::room::{RoomHandle, TrackKind};
use crate::rtc;

/// While a new sender's first keyframe has not been decoded, ask for one this often: the first
/// keyframe is usually sent before DTLS is up and lost.
const FIRST_KEYFRAME_PLI_INTERVAL: Duration = Duration::from_millis(500);
/// Later keyframe requests (after loss) are spaced at least this far apart, so a decoder that asks
/// on every broken frame does not make the sender emit keyframe after keyframe.
const LOSS_PLI_MIN_INTERVAL: Duration = Duration::from_millis(300);

/// Moves one incoming track's RTP packets into its pipeline branch until either side ends.
async fn pump(track: Arc<TrackRemote>, input: InputHandle, activity: Arc<Activity>) {
    loop {
        let packet = match track.read_rtp().await {
            Ok((packet, _)) => packet,
            Err(_) => break,
        };
        activity.touch();
        let Ok(bytes) = packet.marshal() else {
            continue;
        };
        if input.push(bytes).is_err() {
            // The branch was removed (flushing) or failed; either way nobody reads any more.
            break;
        }
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
            let _ = pc.write_rtcp(&[Box::new(pli)]).await;
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
        if !send_pli(&pc).await {
            return;
        }
        tokio::time::sleep(LOSS_PLI_MIN_INTERVAL).await;
    }
}

/// Drains the RTCP a viewer sends about one of our tracks (webrtc-rs needs it drained for NACK
/// handling). Any RTCP proves the participant is alive; PLI/FIR on the composite asks the room for
/// a keyframe.
pub(super) async fn read_sender_rtcp(
    sender: Arc<RTCRtpSender>,
    room: Option<RoomHandle>,
    activity: Arc<Activity>,
) {
    while let Ok((packets, _)) = sender.read_rtcp().await {
        activity.touch();
        let Some(room) = &room else { continue };
        let wants_keyframe = packets.iter().any(|p| {
            let any = p.as_any();
            any.downcast_ref::<PictureLossIndication>().is_some()
                || any.downcast_ref::<FullIntraRequest>().is_some()
        });
        if wants_keyframe {
            room.request_keyframe();
        }
    }
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
        self.spawn(pump(track.clone(), input, self.activity.clone()));
        if let TrackKind::Video { .. } = kind {
            self.spawn(request_keyframes(pc, track.ssrc(), signals));
        }
        Ok(())
    }
}
