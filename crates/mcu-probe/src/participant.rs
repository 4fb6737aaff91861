//! The synthetic participant, the one `mcu probe`, `mcu bench` and the tests all use: it joins
//! through the real signalling (`link.rs`), sends what its caller's `Source` produces, hands each
//! track the server sends to its caller's `OnTrack`, honours the server's keyframe requests, takes
//! part in chat and files if asked, and leaves (or is dropped) without leaving anything running.
//!
//! What it sends and how it reads what it receives are the caller's: the probe sends a colour and
//! a tone and looks at tile colours (probe/media.rs), the bench replays frame-coded loops and
//! reads the codes back (bench/pump.rs, bench/receiver.rs). The caller keeps what it needs of its
//! own media in `media`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;
use webrtc::rtp_transceiver::rtp_codec::RTPCodecType;
use webrtc::track::track_remote::TrackRemote;

use crate::heard::{lock, Announcements, Heard, SharedState};
use crate::link::{self, Link};
use crate::sharing::{SharingClient, Transport};
use mcu_server::auth::Secret;
use mcu_server::codec::VideoCodec;
use mcu_server::protocol::ClientMessage;
use mcu_server::rtc::{OutboundTrack, RtcFactory};

/// Where and as whom to join.
pub struct Joining<'a> {
    /// The server's base URL (http://host:port).
    pub url: &'a str,
    pub room: &'a str,
    pub name: String,
    /// A join token, for a server that requires one.
    pub token: Option<Secret>,
    pub rtc: &'a RtcFactory,
    /// Where what the server announces goes (the caller's receivers may read the layout there).
    pub heard: Heard,
    /// Take part in chat and file sharing, on this transport.
    pub sharing: Option<Transport>,
}

/// A keyframe is asked for (a PLI) at most this often, as browsers do: a decoder asks on every
/// broken frame, and one keyframe answers them all.
const PLI_SPACING: Duration = Duration::from_millis(300);

/// What happens to each track the server sends: the returned pipeline (decoding it, say) is
/// stopped when the participant leaves. When its depayloader is named `depay`, its requests for a
/// keyframe (after loss) become PLIs to the server, as a browser's decoder's do.
pub type OnTrack = Arc<dyn Fn(Arc<TrackRemote>) -> Result<Option<gst::Pipeline>> + Send + Sync>;

/// What a participant sends.
pub struct Source {
    /// Its camera's codec; None for a participant without a camera (it still receives the
    /// composite).
    pub camera: Option<VideoCodec>,
    /// Starts sending on the participant's tracks: its microphone's, and its camera's when it has
    /// one.
    #[allow(clippy::type_complexity)]
    pub start: Box<dyn FnOnce(OutboundTrack, Option<OutboundTrack>) -> Result<Sending> + Send>,
}

/// A source that is sending.
pub struct Sending {
    /// Starts the video over at a keyframe: the server asked for one, or the connection just came
    /// up (what was sent before went nowhere).
    pub keyframe: Arc<dyn Fn() + Send + Sync>,
    /// Stops sending for good; called once, when the participant leaves or is dropped.
    pub stop: Box<dyn FnOnce() + Send>,
    /// Tasks that write its media, aborted when it leaves.
    pub tasks: Vec<JoinHandle<()>>,
}

pub struct Participant<M> {
    id: String,
    /// When it started to connect: the origin of its join-time figures.
    started: Instant,
    /// None once it has left.
    link: Option<Link>,
    heard: Heard,
    /// The pipelines its `OnTrack` built.
    receiving: Arc<Mutex<Vec<gst::Pipeline>>>,
    stop_sending: Option<Box<dyn FnOnce() + Send>>,
    composite_ssrc: Arc<AtomicU32>,
    tasks: Vec<JoinHandle<()>>,
    sharing: Option<SharingClient>,
    /// What the caller keeps of its own media (what it sends, what it measured).
    pub media: M,
}

impl<M> Participant<M> {
    /// Joins, then asks `choose` (given the participant id the server assigned) what to send and
    /// what to keep, and starts sending.
    pub async fn join(
        how: Joining<'_>,
        on_track: OnTrack,
        choose: impl FnOnce(&str) -> Result<(Source, M)>,
    ) -> Result<Self> {
        let heard = how.heard;
        let receiving: Arc<Mutex<Vec<gst::Pipeline>>> = Arc::default();
        let composite_ssrc = Arc::new(AtomicU32::new(0));
        let keyframe_wanted = Arc::new(Notify::new());
        let each_track: link::OnTrack = {
            let (heard, receiving, ssrc) =
                (heard.clone(), receiving.clone(), composite_ssrc.clone());
            let wanted = keyframe_wanted.clone();
            Arc::new(move |track: Arc<TrackRemote>| {
                let video = track.kind() == RTPCodecType::Video;
                if video {
                    ssrc.store(track.ssrc(), Ordering::Relaxed);
                }
                match on_track(track) {
                    Ok(Some(pipeline)) => {
                        if video {
                            forward_keyframe_requests(&pipeline, wanted.clone());
                        }
                        lock(&receiving).push(pipeline)
                    }
                    Ok(None) => {}
                    Err(e) => lock(&heard).errors.push(format!("receiving: {e:#}")),
                }
            })
        };
        let link = Link::join(
            how.url,
            how.room,
            &how.name,
            how.token,
            how.rtc,
            heard.clone(),
            each_track,
        )
        .await
        .with_context(|| format!("{} joining {}", how.name, how.room))?;
        let (source, media) = choose(&link.id)?;
        let mut tasks = vec![tokio::spawn(send_plis(
            Arc::downgrade(&link.pc),
            composite_ssrc.clone(),
            keyframe_wanted,
        ))];

        // Our tracks go in before the offer is made, so the offer carries them.
        let audio = OutboundTrack::audio(&how.name);
        link.pc.add_track(audio.as_local()).await?;
        let video = match source.camera {
            Some(codec) => {
                let video = OutboundTrack::video(codec, "camera", &how.name);
                let sender = link.pc.add_track(video.as_local()).await?;
                Some((video, sender))
            }
            None => {
                // Still receive the composite: a receive-only video transceiver.
                link.pc
                    .add_transceiver_from_kind(RTPCodecType::Video, None)
                    .await
                    .context("adding a receive-only video transceiver")?;
                None
            }
        };
        let (video_track, video_sender) = video.unzip();
        let sending = (source.start)(audio, video_track)?;
        tasks.extend(sending.tasks);
        if let Some(sender) = video_sender {
            // Honour the server's PLI/FIR: it needs our keyframe to start decoding us.
            let keyframe = sending.keyframe.clone();
            tasks.push(tokio::spawn(async move {
                while let Ok((packets, _)) = sender.read_rtcp().await {
                    let wants = packets.iter().any(|p| {
                        p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                            || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                    });
                    if wants {
                        keyframe();
                    }
                }
            }));
        }
        // Like a browser, start the video with a keyframe once the connection is up.
        let keyframe = sending.keyframe.clone();
        link.pc
            .on_peer_connection_state_change(Box::new(move |state| {
                if state == RTCPeerConnectionState::Connected {
                    keyframe();
                }
                Box::pin(async {})
            }));
        let mut participant = Participant {
            id: link.id.clone(),
            started: link.started,
            link: None,
            heard,
            receiving,
            stop_sending: Some(sending.stop),
            composite_ssrc,
            tasks,
            sharing: None,
            media,
        };
        // From here on, dropping `participant` stops what it started.
        if let Some(transport) = how.sharing {
            let state = lock(&participant.heard).sharing.clone();
            participant.sharing = Some(SharingClient::create(&link.pc, transport, state).await?);
        }
        link.offer().await?;
        participant.link = Some(link);
        Ok(participant)
    }

    /// The participant id the server gave it (`p3`).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// When it started to connect.
    pub fn started(&self) -> Instant {
        self.started
    }

    /// What the server told it so far.
    pub fn heard(&self) -> std::sync::MutexGuard<'_, Announcements> {
        lock(&self.heard)
    }

    /// Sends a PLI for the composite, as a browser does after loss. False if no composite yet.
    pub async fn send_pli(&self) -> bool {
        let ssrc = self.composite_ssrc.load(Ordering::Relaxed);
        if ssrc == 0 {
            return false;
        }
        let pli = PictureLossIndication {
            sender_ssrc: 0,
            media_ssrc: ssrc,
        };
        match &self.link {
            Some(link) => link.pc.write_rtcp(&[Box::new(pli)]).await.is_ok(),
            None => false,
        }
    }

    /// Sends a raw text frame on the signalling socket (for tests of bad input).
    pub async fn send_raw(&self, text: String) -> bool {
        match &self.link {
            Some(link) => link.send_raw(text).await,
            None => false,
        }
    }

    fn sharing(&self) -> Result<(&SharingClient, &Link)> {
        match (&self.sharing, &self.link) {
            (Some(s), Some(l)) => Ok((s, l)),
            (None, _) => anyhow::bail!("{} was not set up to share", self.id),
            (_, None) => anyhow::bail!("{} has left", self.id),
        }
    }

    /// Subscribes to the room's chat and files (waiting for the data channels to open first,
    /// unless it uses the WebSocket).
    pub async fn subscribe_chat(&self) -> Result<()> {
        let (s, link) = self.sharing()?;
        s.subscribe(link).await
    }

    pub async fn send_chat(&self, text: &str) -> Result<()> {
        let (s, link) = self.sharing()?;
        let chat = ClientMessage::Chat {
            text: text.to_string(),
        };
        s.send(link, &chat).await
    }

    /// Shares `bytes` as a file named `name`; returns its id once all bytes are sent.
    pub async fn share_file(&self, name: &str, bytes: &[u8]) -> Result<u32> {
        let (s, link) = self.sharing()?;
        s.share(link, name, bytes).await
    }

    pub async fn download(&self, file_id: u32, deadline: Instant) -> Result<Vec<u8>> {
        let (s, link) = self.sharing()?;
        s.download(link, file_id, deadline).await
    }

    /// What the server said about chat and files so far.
    pub fn sharing_state(&self) -> Option<SharedState> {
        self.sharing.as_ref().map(|s| s.state.clone())
    }

    /// Sends a raw text message on the chat data channel (for tests of bad input).
    pub async fn send_raw_on_chat_channel(&self, text: &str) -> Result<()> {
        let (s, _) = self.sharing()?;
        s.send_raw(text).await
    }

    /// Leaves politely: a `leave` message, then everything is closed.
    pub async fn leave(mut self) {
        if let Some(link) = self.link.take() {
            link.leave().await;
        }
        self.stop();
        for task in self.tasks.drain(..) {
            let _ = task.await;
        }
    }

    /// Stops sending and receiving (pipelines must reach NULL before they are dropped).
    fn stop(&mut self) {
        if let Some(stop) = self.stop_sending.take() {
            stop();
        }
        for pipeline in lock(&self.receiving).drain(..) {
            let _ = pipeline.set_state(gst::State::Null);
        }
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Turns the depayloader's requests for a keyframe into `wanted`.
fn forward_keyframe_requests(pipeline: &gst::Pipeline, wanted: Arc<Notify>) {
    let Some(sink) = pipeline.by_name("depay").and_then(|d| d.static_pad("sink")) else {
        return;
    };
    sink.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        let is_request = info
            .event()
            .and_then(|e| e.structure())
            .is_some_and(|s| s.name() == "GstForceKeyUnit");
        if is_request {
            wanted.notify_one();
        }
        gst::PadProbeReturn::Ok
    });
}

/// Sends a PLI for the composite whenever `wanted`, at most every PLI_SPACING.
async fn send_plis(pc: Weak<RTCPeerConnection>, ssrc: Arc<AtomicU32>, wanted: Arc<Notify>) {
    loop {
        wanted.notified().await;
        let Some(pc) = pc.upgrade() else { return };
        let media_ssrc = ssrc.load(Ordering::Relaxed);
        if media_ssrc != 0 {
            let pli = PictureLossIndication {
                sender_ssrc: 0,
                media_ssrc,
            };
            let _ = pc.write_rtcp(&[Box::new(pli)]).await;
        }
        drop(pc);
        tokio::time::sleep(PLI_SPACING).await;
    }
}

impl<M> Drop for Participant<M> {
    fn drop(&mut self) {
        self.stop();
    }
}
