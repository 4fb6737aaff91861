//! The session's side of its peer connection: the offer/answer and candidates from signalling,
//! and what webrtc-rs callbacks report (local candidates, state, tracks, data channels), brought
//! back onto the session task as `PeerEvent`s.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use webrtc::data_channel::RTCDataChannel;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::track::track_remote::TrackRemote;

use super::sharing::{self, ChannelInput};
use super::Session;
use crate::log_limit::limited_info;
use crate::protocol::{ErrorCode, IceCandidate, ServerMessage};
use crate::rtc;

/// How long a session waits for its peer connection to be set up before giving up on an answer.
const SDP_TIMEOUT: Duration = Duration::from_secs(10);
/// Data channels one peer connection may open: `chat` and `files`, each reopened once (the web
/// client reopens a channel that failed). Each channel is a buffer and handlers in webrtc-rs's
/// SCTP association, so a client opening thousands would grow our memory without limit.
pub(super) const MAX_DATA_CHANNELS: usize = 4;

/// Things that happen in webrtc-rs callbacks, brought back onto the session task.
pub(super) enum PeerEvent {
    LocalCandidate(Option<IceCandidate>),
    State(RTCPeerConnectionState),
    Track(Arc<TrackRemote>),
    /// A data channel other than `chat` and `files`.
    UnknownChannel(Arc<RTCDataChannel>),
    /// A data channel past `MAX_DATA_CHANNELS`.
    TooManyChannels(Arc<RTCDataChannel>),
}

impl Session {
    pub(super) async fn apply_offer(&mut self, sdp: String) {
        let Some(member) = &self.member else { return };
        let pc = member.pc.clone();
        let result = tokio::time::timeout(SDP_TIMEOUT, rtc::answer(&pc, sdp))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out negotiating")));
        let applied = match result {
            Ok(answer) => {
                self.reply(ServerMessage::Answer { sdp: answer }).await;
                Ok(())
            }
            Err(e) => Err(e),
        };
        self.remote_description_done(applied).await;
    }

    /// After the client's offer: the candidates that waited for it go in, or the participant is
    /// told why it was refused.
    async fn remote_description_done(&mut self, applied: anyhow::Result<()>) {
        match applied {
            Ok(()) => {
                for c in self.signalling.remote_description_applied() {
                    self.add_candidate(c).await;
                }
            }
            Err(e) => {
                self.reply(ServerMessage::error(ErrorCode::BadSdp, format!("{e:#}")))
                    .await
            }
        }
    }

    pub(super) async fn add_candidate(&mut self, c: IceCandidate) {
        let Some(member) = &self.member else { return };
        let init = rtc::candidate_from_protocol(c);
        if let Err(e) = member.pc.add_ice_candidate(init).await {
            self.reply(ServerMessage::error(
                ErrorCode::BadCandidate,
                format!("candidate refused: {e}"),
            ))
            .await;
        }
    }

    /// Returns false when the session should end.
    pub(super) async fn on_peer_event(&mut self, event: PeerEvent) -> bool {
        match event {
            PeerEvent::LocalCandidate(candidate) => {
                self.reply(ServerMessage::Candidate { candidate }).await;
                true
            }
            PeerEvent::State(state) => {
                tracing::debug!(?state, "peer connection state");
                match state {
                    RTCPeerConnectionState::Connected => {
                        // A new viewer needs a keyframe (of its tier) to start decoding.
                        if let Some(viewer) = self.member.as_ref().and_then(|m| m.viewer.as_ref()) {
                            let _ = viewer.try_send(super::viewer::Feedback::KeyframeWanted);
                        }
                        true
                    }
                    RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed => {
                        tracing::info!(?state, "peer connection ended");
                        false
                    }
                    _ => true,
                }
            }
            PeerEvent::UnknownChannel(dc) => {
                self.reply(ServerMessage::error(
                    ErrorCode::BadMessage,
                    format!(
                        "unknown data channel {:?} (expected chat or files)",
                        dc.label()
                    ),
                ))
                .await;
                let _ = dc.close().await;
                true
            }
            PeerEvent::TooManyChannels(dc) => {
                limited_info!(label = dc.label(), "data channel past the cap, closed");
                self.reply(ServerMessage::error(
                    ErrorCode::BadMessage,
                    format!(
                        "more than {MAX_DATA_CHANNELS} data channels on one connection; {:?} was closed",
                        dc.label()
                    ),
                ))
                .await;
                let _ = dc.close().await;
                true
            }
            PeerEvent::Track(track) => {
                if let Err(e) = self.on_track(track).await {
                    limited_info!("incoming track refused: {e:#}");
                    self.reply(ServerMessage::error(ErrorCode::BadSdp, format!("{e:#}")))
                        .await;
                }
                true
            }
        }
    }
}

pub(super) fn install_callbacks(
    pc: &Arc<RTCPeerConnection>,
    events: mpsc::Sender<PeerEvent>,
    channels: mpsc::Sender<ChannelInput>,
    pacer: sharing::UploadPacer,
) {
    let tx = events.clone();
    pc.on_ice_candidate(Box::new(move |candidate| {
        let tx = tx.clone();
        Box::pin(async move {
            if let Some(candidate) = rtc::gathered_candidate(candidate.as_ref()) {
                let _ = tx.send(PeerEvent::LocalCandidate(candidate)).await;
            }
        })
    }));
    let tx = events.clone();
    pc.on_peer_connection_state_change(Box::new(move |state| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(PeerEvent::State(state)).await;
        })
    }));
    let tx = events.clone();
    pc.on_track(Box::new(move |track, _, _| {
        let tx = tx.clone();
        Box::pin(async move {
            let _ = tx.send(PeerEvent::Track(track)).await;
        })
    }));
    // The handlers go on before this callback returns: webrtc-rs starts reading the channel
    // right after it, and drops whatever arrives before a message handler is set.
    // One pace for every `files` channel of this connection (and the WebSocket), so a second
    // channel does not double the upload rate.
    let opened = AtomicUsize::new(0);
    pc.on_data_channel(Box::new(move |dc| {
        let tx = events.clone();
        let too_many = opened.fetch_add(1, Ordering::Relaxed) >= MAX_DATA_CHANNELS;
        let known = matches!(dc.label(), sharing::CHAT_CHANNEL | sharing::FILES_CHANNEL);
        if known && !too_many {
            sharing::watch_channel(&dc, channels.clone(), pacer.clone());
        }
        Box::pin(async move {
            let event = if too_many {
                PeerEvent::TooManyChannels(dc)
            } else if !known {
                PeerEvent::UnknownChannel(dc)
            } else {
                return;
            };
            let _ = tx.send(event).await;
        })
    }));
}
