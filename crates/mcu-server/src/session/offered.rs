//! Sessions set up by one HTTP request instead of a WebSocket: a WHIP feed (an ingest) or a WHEP
//! player (a watcher); whip.rs speaks the HTTP. The join and the offer arrive together; the
//! answer carries every server candidate, since such clients rarely trickle and never hear
//! about later ones; then the session runs on its own until its resource is deleted, its media
//! stops for `--media-timeout-secs` (or never starts within `--connect-timeout-secs`), its peer
//! connection fails, or the room ends it.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::Instrument;

use super::peer::PeerEvent;
use super::sharing::ChannelInput;
use super::{Outlets, Session, SessionContext, LIVENESS_CHECK};
use crate::admission::ConnectionSlot;
use crate::auth::Secret;
use crate::ids::RoomId;
use crate::log_limit::limited_info;
use crate::protocol::{ErrorCode, IceCandidate, ServerMessage};
use crate::room::{Role, EVENT_QUEUE};
use crate::rtc;

/// How long applying the offer and creating the answer may take.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the answer waits for the server's candidates. Host candidates on one UDP port are
/// gathered in milliseconds; a STUN server's reflexive candidate takes a round trip to it. Past
/// this the answer goes with what was gathered (the host candidates come first).
const GATHER_TIMEOUT: Duration = Duration::from_secs(3);
/// Trickle and stop requests queued for one session: a client sends one aggregated PATCH.
const CONTROL_QUEUE: usize = 8;
/// Bytes of random in a session's id: the id in its URL is what lets a client end or trickle
/// to its session, so it must not be guessable.
const SESSION_ID_BYTES: usize = 16;

/// What the HTTP side asks of a running session.
pub enum Control {
    /// Candidates the client trickled (RFC 8840); ones that do not apply are dropped, as RFC
    /// 9725 asks.
    Candidates(Vec<IceCandidate>),
    /// The client deleted its resource.
    Stop,
}

/// A session set up over HTTP, by its id (the last part of its URL).
#[derive(Default)]
pub struct Resources {
    sessions: Mutex<HashMap<String, Resource>>,
}

/// What the HTTP side knows of one running session.
#[derive(Clone)]
pub struct Resource {
    pub role: Role,
    pub room: RoomId,
    pub control: mpsc::Sender<Control>,
}

impl Resources {
    fn lock(&self) -> MutexGuard<'_, HashMap<String, Resource>> {
        self.sessions.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session at `id`, if it is still running as `role` in `room`.
    pub fn find(&self, id: &str, role: Role, room: &str) -> Option<Resource> {
        self.lock()
            .get(id)
            .filter(|r| r.role == role && r.room.as_str() == room)
            .cloned()
    }

    /// Takes the session at `id` out (as `find` would find it): a DELETE answered 200 leaves
    /// nothing behind for the next request to find, whenever the session itself winds down.
    pub fn take(&self, id: &str, role: Role, room: &str) -> Option<Resource> {
        let mut sessions = self.lock();
        let matches = sessions
            .get(id)
            .is_some_and(|r| r.role == role && r.room.as_str() == room);
        if matches {
            sessions.remove(id)
        } else {
            None
        }
    }

    fn insert(&self, resource: Resource) -> anyhow::Result<String> {
        let mut random = [0u8; SESSION_ID_BYTES];
        getrandom::getrandom(&mut random)
            .map_err(|e| anyhow::anyhow!("no randomness for a session id: {e}"))?;
        let id: String = random.iter().map(|b| format!("{b:02x}")).collect();
        self.lock().insert(id.clone(), resource);
        Ok(id)
    }

    fn remove(&self, id: &str) {
        self.lock().remove(id);
    }
}

/// What a client asked for in its one request.
pub struct Request {
    pub role: Role,
    pub room: String,
    /// Its name in the room (a token's name wins).
    pub name: String,
    pub token: Option<Secret>,
    pub offer: String,
}

/// A session that runs.
pub struct Started {
    /// The resource's id (for its URL).
    pub id: String,
    /// The answer, with every candidate gathered.
    pub answer: String,
}

/// Why a session was not set up: the protocol's code (whip.rs turns it into an HTTP status) and
/// words for the client.
#[derive(Debug)]
pub struct Refused {
    pub code: ErrorCode,
    pub message: String,
    /// The room lives on another node of the cluster (placed there as this join asked for it):
    /// whip.rs answers with a redirect to it.
    pub elsewhere: bool,
}

impl Refused {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Refused {
            code,
            message: message.into(),
            elsewhere: false,
        }
    }

    fn from_message(message: ServerMessage) -> Self {
        match message {
            ServerMessage::Error { code, message } => Refused::new(code, message),
            // The words for a client that cannot follow: the node's door was not found again.
            ServerMessage::Redirect { url } => Refused {
                elsewhere: true,
                ..Refused::new(
                    ErrorCode::ClusterUnavailable,
                    format!("the room opens on another node ({url}); try again"),
                )
            },
            other => Refused::new(ErrorCode::Internal, format!("unexpected {other:?}")),
        }
    }
}

/// Sets up a session for `request` and leaves it running; `slot` counts it against its client's
/// address until it ends.
pub async fn start(
    ctx: Arc<SessionContext>,
    request: Request,
    slot: ConnectionSlot,
) -> Result<Started, Refused> {
    let span = tracing::info_span!(
        parent: None,
        "session",
        room = %request.room,
        role = ?request.role,
        participant = tracing::field::Empty
    );
    let client = slot.key();
    let room = RoomId::new(&request.room)
        .map_err(|e| Refused::new(ErrorCode::InvalidRoomName, format!("room name {e}")))?;
    // Before the room is joined (or opened): a bad offer costs no pipeline and shows no tile.
    check_offer(request.role, &request.offer)?;
    let (outbox, outbox_rx) = mpsc::channel::<ServerMessage>(EVENT_QUEUE);
    let (removed_tx, removed_rx) = mpsc::channel::<String>(1);
    let (ws_binary, _) = mpsc::channel(1);
    let (channel_tx, _) = mpsc::channel::<ChannelInput>(1);
    let outlets = Outlets {
        outbox,
        removed_tx,
        route: Arc::default(),
        ws_binary,
        channel_tx,
    };
    let mut session = Session::new(ctx.clone(), room.clone(), request.role, client, outlets);
    let (peer_tx, peer_rx) = mpsc::channel::<PeerEvent>(64);
    let answer = async {
        match session.enter(request.name, request.token, &peer_tx).await {
            Ok(Ok(())) => {}
            Ok(Err(refusal)) => return Err(Refused::from_message(refusal)),
            Err(e) => return Err(Refused::new(ErrorCode::Internal, format!("{e:#}"))),
        }
        session.answer_with_candidates(request.offer).await
    }
    .instrument(span.clone())
    .await;
    let answer = match answer {
        Ok(answer) => answer,
        Err(refused) => {
            session.close().instrument(span).await;
            return Err(refused);
        }
    };
    let (control, control_rx) = mpsc::channel(CONTROL_QUEUE);
    let id = match ctx.resources.insert(Resource {
        role: request.role,
        room,
        control,
    }) {
        Ok(id) => id,
        Err(e) => {
            session.close().instrument(span).await;
            return Err(Refused::new(ErrorCode::Internal, format!("{e:#}")));
        }
    };
    let inputs = Inputs {
        peer: peer_rx,
        control: control_rx,
        removed: removed_rx,
        outbox: outbox_rx,
    };
    tokio::spawn(drive(session, inputs, ctx.resources.clone(), id.clone(), slot).instrument(span));
    Ok(Started { id, answer })
}

/// What a running session listens to.
struct Inputs {
    peer: mpsc::Receiver<PeerEvent>,
    control: mpsc::Receiver<Control>,
    removed: mpsc::Receiver<String>,
    /// What the room tells everyone (joins, layouts…), which no one reads here.
    outbox: mpsc::Receiver<ServerMessage>,
}

impl Session {
    /// Applies the client's offer and answers once every candidate is gathered (or
    /// `GATHER_TIMEOUT` passed), checking the answer takes or sends what the role needs.
    async fn answer_with_candidates(&mut self, offer: String) -> Result<String, Refused> {
        let Some(pc) = self.member.as_ref().map(|m| m.pc.clone()) else {
            return Err(Refused::new(ErrorCode::Internal, "not in the room"));
        };
        // Taken before the offer is applied: gathering starts with it.
        let mut gathered = pc.gathering_complete_promise().await;
        let answered = tokio::time::timeout(ANSWER_TIMEOUT, rtc::answer(&pc, offer))
            .await
            .unwrap_or_else(|_| Err(anyhow::anyhow!("timed out negotiating")));
        let answer = answered.map_err(|e| Refused::new(ErrorCode::BadSdp, format!("{e:#}")))?;
        if tokio::time::timeout(GATHER_TIMEOUT, gathered.recv())
            .await
            .is_err()
        {
            tracing::warn!("answering before every candidate was gathered");
        }
        let answer = pc.local_description().await.map_or(answer, |d| d.sdp);
        check_answer(self.role, &answer, self.room.as_str())?;
        Ok(answer)
    }
}

/// Refuses an offer that is not SDP, or that cannot do what the role needs: send media (a
/// feed), receive video (a player).
fn check_offer(role: Role, offer: &str) -> Result<(), Refused> {
    rtc::parse_sdp(offer).map_err(|e| Refused::new(ErrorCode::BadSdp, format!("{e:#}")))?;
    let sections = media_sections(offer);
    let sends = sections.iter().any(|(kind, dir)| {
        matches!(*kind, "audio" | "video") && matches!(*dir, "sendonly" | "sendrecv")
    });
    let receives_video = sections
        .iter()
        .any(|(kind, dir)| *kind == "video" && matches!(*dir, "recvonly" | "sendrecv"));
    match role {
        Role::Ingest if !sends => Err(Refused::new(
            ErrorCode::BadSdp,
            "the offer sends no audio or video: a WHIP offer sends (sendonly)",
        )),
        Role::Watcher if !receives_video => Err(Refused::new(
            ErrorCode::BadSdp,
            "the offer receives no video: a WHEP offer receives the room's composite (recvonly)",
        )),
        _ => Ok(()),
    }
}

/// Refuses an answer that would leave the session without media: a feed we cannot receive, or a
/// player that cannot receive the room's composite.
fn check_answer(role: Role, answer: &str, room: &str) -> Result<(), Refused> {
    let sections = media_sections(answer);
    let receives = |kind: &str| {
        sections
            .iter()
            .any(|(k, dir)| *k == kind && matches!(*dir, "recvonly" | "sendrecv"))
    };
    let sends_video = sections
        .iter()
        .any(|(k, dir)| *k == "video" && matches!(*dir, "sendonly" | "sendrecv"));
    match role {
        Role::Ingest if !receives("audio") && !receives("video") => Err(Refused::new(
            ErrorCode::BadSdp,
            "the offer sends nothing this server takes: video in VP8 or H.264, audio in Opus",
        )),
        Role::Watcher if !sends_video => Err(Refused::new(
            ErrorCode::BadSdp,
            format!("the offer cannot receive room {room}'s composite: offer to receive video in the room's codec (VP8 or H.264)"),
        )),
        _ => Ok(()),
    }
}

/// Each media section of an SDP: its kind and its direction (`sendrecv` when unsaid).
fn media_sections(sdp: &str) -> Vec<(&str, &str)> {
    let mut sections: Vec<(&str, &str)> = Vec::new();
    for line in sdp.lines().map(str::trim) {
        if let Some(media) = line.strip_prefix("m=") {
            let kind = media.split(' ').next().unwrap_or_default();
            // A rejected section has port 0.
            let port = media.split(' ').nth(1).unwrap_or_default();
            let direction = if port == "0" { "inactive" } else { "sendrecv" };
            sections.push((kind, direction));
        } else if let Some(last) = sections.last_mut() {
            let line = line.strip_prefix("a=").unwrap_or_default();
            if matches!(line, "sendrecv" | "sendonly" | "recvonly" | "inactive")
                && last.1 != "inactive"
            {
                last.1 = line;
            }
        }
    }
    sections
}

/// Runs a session until it ends, then leaves the room and frees its resource and slot.
async fn drive(
    mut session: Session,
    mut inputs: Inputs,
    resources: Arc<Resources>,
    id: String,
    slot: ConnectionSlot,
) {
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    let why = loop {
        tokio::select! {
            Some(event) = inputs.peer.recv() => {
                if !session.on_peer_event(event).await {
                    break "its peer connection ended".to_string();
                }
            }
            control = inputs.control.recv() => match control {
                Some(Control::Candidates(candidates)) => {
                    for c in candidates {
                        session.add_candidate(c).await;
                    }
                }
                Some(Control::Stop) | None => break "its resource was deleted".to_string(),
            },
            Some(reason) = inputs.removed.recv() => break reason,
            Some(message) = inputs.outbox.recv() => {
                // Errors are what a WebSocket client would be told; here, the log.
                if let ServerMessage::Error { code, message } = message {
                    limited_info!(?code, "{message}");
                }
            }
            _ = liveness.tick() => {
                if let Some(silence) = session.activity.silence(session.ctx.registry.config()) {
                    break silence;
                }
            }
        }
    };
    tracing::info!("session ended: {why}");
    resources.remove(&id);
    session.close().await;
    drop(slot);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn media_sections_read_kind_and_direction() {
        let sdp = "v=0\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=recvonly\r\nm=video 0 UDP/TLS/RTP/SAVPF 96\r\na=recvonly\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n";
        assert_eq!(
            media_sections(sdp),
            vec![
                ("audio", "recvonly"),
                ("video", "inactive"),
                ("video", "sendrecv")
            ]
        );
    }

    #[test]
    fn offers_are_checked_before_anyone_joins() {
        let whip = include_str!("../../../../tests/data/ffmpeg-whip-offer.sdp");
        let whep = include_str!("../../../../tests/data/aiortc-whep-offer.sdp");
        assert!(check_offer(Role::Ingest, whip).is_ok());
        assert!(check_offer(Role::Watcher, whep).is_ok());
        assert!(
            check_offer(Role::Watcher, whip).is_err(),
            "a feed's offer is no player's"
        );
        assert!(
            check_offer(Role::Ingest, whep).is_err(),
            "a player's offer sends nothing"
        );
        assert!(check_offer(Role::Ingest, "v=0\r\nnonsense").is_err());
    }

    #[test]
    fn a_taken_resource_is_gone_and_only_its_own_door_and_room_take_it() {
        let resources = Resources::default();
        let (control, _control_rx) = mpsc::channel(1);
        let room = RoomId::new("standup").expect("a valid room name");
        let id = resources
            .insert(Resource {
                role: Role::Ingest,
                room,
                control,
            })
            .expect("an id");
        assert!(resources.take(&id, Role::Watcher, "standup").is_none());
        assert!(resources.take(&id, Role::Ingest, "other").is_none());
        assert!(resources.take(&id, Role::Ingest, "standup").is_some());
        assert!(resources.find(&id, Role::Ingest, "standup").is_none());
        assert!(resources.take(&id, Role::Ingest, "standup").is_none());
    }

    #[test]
    fn a_player_that_cannot_receive_video_is_refused() {
        let audio_only = "m=audio 9 X 111\r\na=sendonly\r\n";
        assert!(check_answer(Role::Watcher, audio_only, "r").is_err());
        assert!(check_answer(Role::Watcher, "m=video 9 X 96\r\na=sendonly\r\n", "r").is_ok());
        assert!(check_answer(Role::Ingest, audio_only, "r").is_err());
        assert!(check_answer(Role::Ingest, "m=audio 9 X 111\r\na=recvonly\r\n", "r").is_ok());
    }
}
