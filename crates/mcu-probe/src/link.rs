//! The signalling half of a synthetic participant: the WebSocket, the peer connection, trickle
//! ICE both ways, the join handshake, and what the server announces (into `heard`). What the
//! participant sends and how it reads what it receives is `participant.rs`'s and its caller's.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use futures_util::{SinkExt, StreamExt};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;
use webrtc::peer_connection::sdp::session_description::RTCSessionDescription;
use webrtc::peer_connection::RTCPeerConnection;
use webrtc::track::track_remote::TrackRemote;

use crate::heard::{lock, Heard, SharedState};
use mcu_server::protocol::{ClientMessage, ServerMessage};
use mcu_server::rtc::{self, RtcFactory};

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long to wait for the server's `joined` reply.
const JOIN_DEADLINE: Duration = Duration::from_secs(10);
/// A door sends a client to the room's node, which takes it: one redirect is the rule, a second
/// only when nodes raced to place the room; more means something is wrong.
const MAX_REDIRECTS: usize = 3;

/// How the server answered `join`.
enum JoinReply {
    Joined(String),
    Refused(String),
    /// A cluster node sent us to the room's node (a WebSocket URL).
    Redirect(String),
}

/// Called for each track the server sends.
pub type OnTrack = Arc<dyn Fn(Arc<TrackRemote>) + Send + Sync>;

pub struct Link {
    pub id: String,
    /// When the participant started to connect: the origin of its join-time figures.
    pub started: Instant,
    pub pc: Arc<RTCPeerConnection>,
    pub heard: Heard,
    ws_out: mpsc::Sender<Message>,
    tasks: Vec<JoinHandle<()>>,
}

impl Link {
    /// Connects to `room` on the server at `base_url` (http://host:port) and joins as `name`;
    /// what the server announces goes into `heard`. The caller then adds its tracks and calls
    /// `offer`.
    pub async fn join(
        base_url: &str,
        room: &str,
        name: &str,
        token: Option<mcu_server::auth::Secret>,
        rtc: &RtcFactory,
        heard: Heard,
        on_track: OnTrack,
    ) -> Result<Link> {
        let started = Instant::now();
        let mut ws_url = format!(
            "{}/ws/{room}",
            base_url
                .trim_end_matches('/')
                .replacen("http://", "ws://", 1)
                .replacen("https://", "wss://", 1)
        );
        for _ in 0..=MAX_REDIRECTS {
            let attempt = Self::connect(
                &ws_url,
                started,
                name,
                token.clone(),
                rtc,
                heard.clone(),
                on_track.clone(),
            )
            .await?;
            match attempt {
                Ok(link) => return Ok(link),
                Err(redirect) => {
                    lock(&heard).redirects.push(redirect.clone());
                    ws_url = redirect;
                }
            }
        }
        bail!("more than {MAX_REDIRECTS} redirects joining {room}: the cluster sends this room around")
    }

    /// One attempt at joining over the WebSocket at `ws_url`: the link, or where the server sent
    /// us instead (`Err(url)`, a `redirect` before `joined`).
    async fn connect(
        ws_url: &str,
        started: Instant,
        name: &str,
        token: Option<mcu_server::auth::Secret>,
        rtc: &RtcFactory,
        heard: Heard,
        on_track: OnTrack,
    ) -> Result<std::result::Result<Link, String>> {
        let (socket, _) = tokio_tungstenite::connect_async(ws_url)
            .await
            .with_context(|| format!("connecting to {ws_url}"))?;
        let (mut ws_sink, ws_stream) = socket.split();
        let mut tasks = Vec::new();

        let (ws_out, mut ws_out_rx) = mpsc::channel::<Message>(256);
        tasks.push(tokio::spawn(async move {
            while let Some(message) = ws_out_rx.recv().await {
                if ws_sink.send(message).await.is_err() {
                    break;
                }
            }
            let _ = ws_sink.close().await;
        }));

        let pc = rtc.peer_connection().await?;
        pc.on_track(Box::new(move |track, receiver, _| {
            on_track(track);
            // Read the server's RTCP like a browser does: its sender reports then pass through
            // the report interceptor, so our receiver reports carry the fields the server
            // measures the round trip from. Ends when the connection closes.
            tokio::spawn(async move { while receiver.read_rtcp().await.is_ok() {} });
            Box::pin(async {})
        }));
        {
            let out = ws_out.clone();
            pc.on_ice_candidate(Box::new(move |candidate| {
                let out = out.clone();
                Box::pin(async move {
                    let Some(candidate) = rtc::gathered_candidate(candidate.as_ref()) else {
                        return;
                    };
                    let _ = out
                        .send(Message::text(to_text(&ClientMessage::Candidate {
                            candidate,
                        })))
                        .await;
                })
            }));
        }

        let (joined_tx, joined_rx) = oneshot::channel();
        let reader = Reader {
            sharing: lock(&heard).sharing.clone(),
            heard: heard.clone(),
            pc: pc.clone(),
            joined: Some(joined_tx),
            loopback_only: rtc.loopback_only(),
        };
        tasks.push(tokio::spawn(reader.run(ws_stream)));

        ws_out
            .send(Message::text(to_text(&ClientMessage::Join {
                name: name.to_string(),
                token,
            })))
            .await
            .context("sending join")?;
        let id = match tokio::time::timeout(JOIN_DEADLINE, joined_rx).await {
            Ok(Ok(JoinReply::Joined(id))) => id,
            Ok(Ok(JoinReply::Refused(refusal))) => bail!("the server refused the join: {refusal}"),
            Ok(Ok(JoinReply::Redirect(url))) => {
                for task in &tasks {
                    task.abort();
                }
                let _ = pc.close().await;
                return Ok(Err(url));
            }
            Ok(Err(_)) => bail!("the connection closed before the join was answered"),
            Err(_) => bail!("no answer to join within {JOIN_DEADLINE:?}"),
        };
        Ok(Ok(Link {
            id,
            started,
            pc,
            heard,
            ws_out,
            tasks,
        }))
    }

    /// Offers the tracks added so far.
    pub async fn offer(&self) -> Result<()> {
        let offer = self
            .pc
            .create_offer(None)
            .await
            .context("creating an offer")?;
        self.pc
            .set_local_description(offer.clone())
            .await
            .context("applying our offer")?;
        self.ws_out
            .send(Message::text(to_text(&ClientMessage::Offer {
                sdp: offer.sdp,
            })))
            .await
            .context("sending the offer")
    }

    /// Sends a raw text frame on the signalling socket (for tests of bad input).
    pub async fn send_raw(&self, text: String) -> bool {
        self.ws_out.send(Message::text(text)).await.is_ok()
    }

    /// Sends a binary frame on the signalling socket (file bytes, in the fallback).
    pub async fn send_binary(&self, frame: bytes::Bytes) -> bool {
        self.ws_out.send(Message::binary(frame)).await.is_ok()
    }

    /// Leaves politely: a `leave` message, then the connection is closed.
    pub async fn leave(mut self) {
        let _ = self
            .ws_out
            .send(Message::text(to_text(&ClientMessage::Leave {})))
            .await;
        self.close().await;
    }

    pub async fn close(&mut self) {
        let _ = self.pc.close().await;
        for t in self.tasks.drain(..) {
            t.abort();
            let _ = t.await;
        }
    }
}

impl Drop for Link {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The answer to `join`: the participant id, or the server's refusal.
type JoinAnswer = oneshot::Sender<JoinReply>;

/// Reads what the server sends: the answer and candidates go to the peer connection, the rest
/// into `heard` (and chat and files into its sharing state).
struct Reader {
    heard: Heard,
    sharing: SharedState,
    pc: Arc<RTCPeerConnection>,
    /// Taken by the answer to `join`.
    joined: Option<JoinAnswer>,
    /// Only loopback candidates are tried (see RtcOptions::loopback_only).
    loopback_only: bool,
}

impl Reader {
    async fn run(mut self, mut ws_stream: futures_util::stream::SplitStream<Socket>) {
        while let Some(Ok(frame)) = ws_stream.next().await {
            let text = match frame {
                Message::Text(text) => text,
                Message::Binary(frame) => {
                    lock(&self.sharing).record_chunk(&frame);
                    continue;
                }
                _ => continue,
            };
            match serde_json::from_str::<ServerMessage>(text.as_str()) {
                Ok(message) if message.is_sharing() => {
                    lock(&self.sharing).record(&message);
                }
                Ok(message) => self.on_message(message).await,
                Err(_) => lock(&self.heard)
                    .errors
                    .push(format!("unreadable server message: {text}")),
            }
        }
    }

    async fn on_message(&mut self, message: ServerMessage) {
        match message {
            ServerMessage::Joined { participant_id, .. } => {
                if let Some(tx) = self.joined.take() {
                    let _ = tx.send(JoinReply::Joined(participant_id));
                }
            }
            // Before `joined`: join there instead. After it: the room moved (its node lost the
            // lease); the socket closes next, and the caller decides whether to come back.
            ServerMessage::Redirect { url } => match self.joined.take() {
                Some(tx) => {
                    let _ = tx.send(JoinReply::Redirect(url));
                }
                None => lock(&self.heard)
                    .notices
                    .push(ServerMessage::Redirect { url }),
            },
            ServerMessage::Answer { sdp } => {
                let result = match RTCSessionDescription::answer(sdp) {
                    Ok(answer) => self.pc.set_remote_description(answer).await,
                    Err(e) => Err(e),
                };
                if let Err(e) = result {
                    lock(&self.heard)
                        .errors
                        .push(format!("applying the answer: {e}"));
                }
            }
            ServerMessage::Candidate { candidate: Some(c) } => {
                lock(&self.heard)
                    .server_candidates
                    .push(c.candidate.clone());
                if self.loopback_only && !rtc::is_loopback_candidate(&c.candidate) {
                    return;
                }
                let init = rtc::candidate_from_protocol(c);
                if let Err(e) = self.pc.add_ice_candidate(init).await {
                    lock(&self.heard)
                        .errors
                        .push(format!("server candidate: {e}"));
                }
            }
            ServerMessage::Layout(layout) => lock(&self.heard).layout = Some(layout),
            ServerMessage::ActiveSpeaker { participant_id } => lock(&self.heard)
                .speakers
                .push((std::time::Instant::now(), participant_id)),
            notice @ (ServerMessage::Recording { .. }
            | ServerMessage::ParticipantMuted { .. }
            | ServerMessage::Removed { .. }
            | ServerMessage::VideoTier { .. }) => lock(&self.heard).notices.push(notice),
            ServerMessage::Error { code, message } => {
                let text = format!("{code:?}: {message}");
                match self.joined.take() {
                    Some(tx) => {
                        let _ = tx.send(JoinReply::Refused(text));
                    }
                    // Refusals of chat and file requests are expected answers (a file too
                    // large, a flood held back): the sharing checks read them, they are not the
                    // server failing.
                    None if is_sharing_refusal(code) => {
                        lock(&self.sharing).errors.push((code, message));
                    }
                    None => lock(&self.heard).errors.push(text),
                }
            }
            _ => {}
        }
    }
}

/// Errors that answer a chat or file request rather than report a fault.
fn is_sharing_refusal(code: mcu_server::protocol::ErrorCode) -> bool {
    use mcu_server::protocol::ErrorCode as E;
    matches!(code, E::RateLimited | E::FileTooLarge | E::UnknownFile)
}

fn to_text(m: &ClientMessage) -> String {
    serde_json::to_string(m).expect("client messages always serialise")
}
