//! A session: one participant's (or WHIP feed's, or WHEP player's) signalling, peer connection
//! and membership of its room, driven by its door's task (`socket.rs` for the WebSocket,
//! `offered.rs` for WHIP and WHEP). It drives the peer connection and talks to the room actor. Media never passes through this task: incoming tracks are pumped
//! straight into their pipeline branch by tasks of their own, and the packets the room hands out
//! (the composite everyone shares, this participant's audio mix) are written to this peer
//! connection's tracks by tasks of their own too. Chat and files travel on the participant's data
//! channels (see `sharing`), or on the WebSocket when those cannot open.

mod activity;
mod channels;
mod media;
pub mod offered;
mod peer;
mod reorder;
mod sharing;
mod socket;
mod splice;
mod tiering;
mod transfer;
mod viewer;
mod writer;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;
use webrtc::peer_connection::RTCPeerConnection;

use crate::admission::ClientKey;
use crate::auth::{Grants, Secret};
use crate::ids::{ParticipantId, RoomId};
use crate::log_limit::limited_info;
use crate::protocol::layout::LayoutRequest;
use crate::protocol::{
    parse_client_message, validate_display_name, ErrorCode, RecordAction, ServerMessage,
};
use crate::rate::RateLimit;
use crate::room::registry::Registry;
use crate::room::{Role, RoomError, RoomHandle};
use crate::rtc::RtcFactory;
use crate::signalling::{Action, Signalling};
use activity::Activity;
use peer::{install_callbacks, PeerEvent};
use sharing::{ChannelInput, Route, Sharing, Transport};
pub use socket::{refuse, serve};

/// How often the session checks for a vanished participant.
const LIVENESS_CHECK: Duration = Duration::from_millis(500);
/// Close code for a participant a moderator removed (4000–4999 are the application's own):
/// the web client does not reconnect after it.
pub const CLOSE_REMOVED: u16 = 4001;

/// Shared state needed to serve a WebSocket.
pub struct SessionContext {
    pub registry: Arc<Registry>,
    pub rtc: Arc<RtcFactory>,
    /// Sessions set up over HTTP (WHIP, WHEP), by the id in their URL.
    pub resources: Arc<offered::Resources>,
}

/// Data-channel events queued for the session; the channels' readers wait beyond this, which
/// slows an uploader down instead of buffering its file in memory.
const CHANNEL_INPUT_QUEUE: usize = 32;

struct Membership {
    room: RoomHandle,
    id: ParticipantId,
    pc: Arc<RTCPeerConnection>,
    /// Granted by the join token (or by an open server): may start and stop the recording, may
    /// switch the layout.
    grants: Grants,
    /// Tells the task that writes this viewer's composite what the viewer reported (none for
    /// an ingest, which receives nothing).
    viewer: Option<mpsc::Sender<viewer::Feedback>>,
    /// Layout switches and self-mutes: each redraws or relabels the picture everyone sees.
    room_changes: RateLimit,
}

/// A participant may change what the whole room sees (a layout, their mute mark) this many times
/// at once, and once a second after that: enough to click through the layout menu, while a client
/// that floods `set_layout` cannot make everyone's picture flicker or keep the room busy.
const ROOM_CHANGE_BURST: f64 = 4.0;
const ROOM_CHANGE_PER_SECOND: f64 = 1.0;

struct Session {
    ctx: Arc<SessionContext>,
    room: RoomId,
    outbox: mpsc::Sender<ServerMessage>,
    signalling: Signalling,
    member: Option<Membership>,
    activity: Arc<Activity>,
    tasks: Vec<JoinHandle<()>>,
    /// The room's notice that this participant was removed is forwarded here.
    removed_tx: mpsc::Sender<String>,
    /// Where the writer sends chat and file messages (the subscribed data channel, if any).
    route: Route,
    /// File bytes for the WebSocket, in the fallback.
    ws_binary: mpsc::Sender<Bytes>,
    channel_tx: mpsc::Sender<ChannelInput>,
    /// Chat and files, once joined.
    sharing: Option<Sharing>,
    /// The pace of the file bytes this client uploads, on any transport.
    upload_pacer: sharing::UploadPacer,
    /// The client's address, as the per-address limits count it.
    client: ClientKey,
    /// A participant on a WebSocket; an ingest or a watcher over HTTP (whip.rs).
    role: Role,
}

/// Where a session's output goes, as its transport set it up: the WebSocket's writer, or
/// channels nobody reads for a WHIP/WHEP session (whip.rs has no socket to write to).
struct Outlets {
    outbox: mpsc::Sender<ServerMessage>,
    removed_tx: mpsc::Sender<String>,
    route: Route,
    ws_binary: mpsc::Sender<Bytes>,
    channel_tx: mpsc::Sender<ChannelInput>,
}

impl Session {
    /// A session of `client` about to join `room` as `role`.
    fn new(
        ctx: Arc<SessionContext>,
        room: RoomId,
        role: Role,
        client: ClientKey,
        outlets: Outlets,
    ) -> Self {
        let file_rate = ctx.registry.config().file_rate;
        Session {
            ctx,
            room,
            outbox: outlets.outbox,
            signalling: Signalling::new(),
            member: None,
            activity: Activity::new(),
            tasks: Vec::new(),
            removed_tx: outlets.removed_tx,
            route: outlets.route,
            ws_binary: outlets.ws_binary,
            channel_tx: outlets.channel_tx,
            sharing: None,
            upload_pacer: sharing::upload_pacer(file_rate),
            client,
            role,
        }
    }

    async fn reply(&self, message: ServerMessage) {
        let _ = self.outbox.send(message).await;
    }

    /// Handles one text frame. `Ok(false)` ends the session normally.
    async fn on_text(&mut self, text: &str, peer_tx: &mpsc::Sender<PeerEvent>) -> Result<bool> {
        let message = match parse_client_message(text) {
            Ok(m) => m,
            Err(reply) => {
                self.reply(reply).await;
                return Ok(true);
            }
        };
        let action = match self.signalling.on_message(message) {
            Ok(a) => a,
            Err(reply) => {
                self.reply(reply).await;
                return Ok(true);
            }
        };
        match action {
            Action::Join { name, token } => {
                if !self.join(name, token, peer_tx).await? {
                    return Ok(false);
                }
            }
            Action::ApplyOffer { sdp } => self.apply_offer(sdp).await,
            Action::AddCandidate(c) => self.add_candidate(c).await,
            Action::EndOfCandidates | Action::Buffered | Action::Ignored => {}
            Action::Leave => return Ok(false),
            Action::Record(action) => self.record(action).await,
            Action::SetLayout(request) => self.set_layout(request).await,
            Action::SelfMute(muted) => {
                if self.room_change_allowed().await {
                    if let Some(member) = &self.member {
                        member.room.self_mute(member.id, muted);
                    }
                }
            }
            Action::Share(share) => self.share(share, Transport::WebSocket).await,
            Action::Reply(m) => self.reply(m).await,
        }
        Ok(true)
    }

    /// With a JWT secret configured, the token decides: the name it carries, and whether its
    /// holder may record or switch the layout. Without one, rooms are open and anyone may.
    fn admit(
        &self,
        name: String,
        token: Option<Secret>,
    ) -> Result<(String, Grants), ServerMessage> {
        let Some(secret) = &self.ctx.registry.config().jwt_secret else {
            let open = Grants {
                record: true,
                layout: true,
            };
            return Ok((name, open));
        };
        let refuse = |e: crate::auth::TokenError| {
            limited_info!("join refused: {e}");
            ServerMessage::error(ErrorCode::Unauthorized, e.to_string())
        };
        let token = token.ok_or_else(|| refuse(crate::auth::TokenError::Missing))?;
        let claims =
            crate::auth::verify(secret, token.expose(), self.room.as_str()).map_err(refuse)?;
        let name = validate_display_name(&claims.name).map_err(|e| {
            ServerMessage::error(
                ErrorCode::InvalidDisplayName,
                format!("the token's display name {e}"),
            )
        })?;
        let grants = Grants {
            record: claims.record,
            layout: claims.layout,
        };
        Ok((name, grants))
    }

    async fn join(
        &mut self,
        name: String,
        token: Option<Secret>,
        peer_tx: &mpsc::Sender<PeerEvent>,
    ) -> Result<bool> {
        if let Err(refusal) = self.enter(name, token, peer_tx).await? {
            // A redirect ends this socket: the client connects to the room's node instead.
            let stay = !matches!(refusal, ServerMessage::Redirect { .. });
            self.reply(refusal).await;
            return Ok(stay);
        }
        Ok(true)
    }

    /// Joins the room in the session's role and sets its peer connection up for it (before any
    /// offer). `Ok(Err(message))` is a refusal, worded for the client.
    async fn enter(
        &mut self,
        name: String,
        token: Option<Secret>,
        peer_tx: &mpsc::Sender<PeerEvent>,
    ) -> Result<Result<(), ServerMessage>> {
        let (name, grants) = match self.admit(name, token) {
            Ok(admitted) => admitted,
            Err(refusal) => {
                crate::metrics::metrics().join_refusals.inc();
                return Ok(Err(refusal));
            }
        };
        let (room, joined, removed) = match self
            .ctx
            .registry
            .join(
                &self.room,
                &name,
                self.role,
                self.client,
                self.outbox.clone(),
            )
            .await
        {
            Ok(j) => j,
            // Not a refusal: the room lives on another node of the cluster, the client goes there.
            Err(e @ RoomError::Elsewhere { .. }) => {
                tracing::debug!(client = %self.client, "sent on: {e}");
                crate::metrics::metrics().cluster_redirects.inc();
                return Ok(Err(e.to_message()));
            }
            Err(e) => {
                limited_info!(client = %self.client, role = ?self.role, "join refused: {e}");
                crate::metrics::metrics().join_refusals.inc();
                return Ok(Err(e.to_message()));
            }
        };
        if self.role != Role::Watcher {
            crate::metrics::metrics().joins.inc();
        }
        let joined_at = Instant::now();
        let id = joined.id;
        tracing::Span::current().record("participant", tracing::field::display(id));
        self.activity.joined();
        // Registered before anything can fail, so `close` always tells the room we left.
        let pc = match self.ctx.rtc.peer_connection().await {
            Ok(pc) => pc,
            Err(e) => {
                room.leave(id).await;
                return Err(e);
            }
        };
        self.member = Some(Membership {
            room: room.clone(),
            id,
            pc: pc.clone(),
            grants,
            viewer: None,
            room_changes: RateLimit::new(ROOM_CHANGE_BURST, ROOM_CHANGE_PER_SECOND),
        });
        self.signalling.joined();
        let removed_tx = self.removed_tx.clone();
        self.spawn(async move {
            if let Ok(reason) = removed.await {
                let _ = removed_tx.send(reason).await;
            }
        });
        if let Some(feeds) = joined.feeds {
            let feedback = self
                .send_room(
                    &pc,
                    &room,
                    id,
                    joined.video_codec,
                    joined.tiers,
                    feeds,
                    joined_at,
                )
                .await?;
            if let Some(member) = self.member.as_mut() {
                member.viewer = Some(feedback);
            }
        }
        install_callbacks(
            &pc,
            peer_tx.clone(),
            self.channel_tx.clone(),
            self.upload_pacer.clone(),
        );
        if self.role != Role::Participant {
            tracing::info!(role = ?self.role, codec = ?joined.video_codec, "session joined");
            return Ok(Ok(()));
        }
        let file_rate = self.ctx.registry.config().file_rate;
        self.sharing = Some(Sharing::new(
            id,
            room.clone(),
            self.route.clone(),
            self.ws_binary.clone(),
            file_rate,
        ));

        self.reply(ServerMessage::Joined {
            participant_id: id.to_string(),
            room: self.room.to_string(),
            participants: joined.participants,
            ice_servers: self.ctx.rtc.ice_servers().to_vec(),
            can_record: grants.record,
            recording: joined.recording,
            max_file_size: self.ctx.registry.config().max_file_size,
            can_set_layout: grants.layout,
        })
        .await;
        tracing::info!(codec = ?joined.video_codec, "session joined");
        Ok(Ok(()))
    }

    /// Runs `task` for as long as this session, inside its span.
    fn spawn(&mut self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks.push(tokio::spawn(task.in_current_span()));
    }

    async fn record(&mut self, action: RecordAction) {
        let Some(member) = &self.member else { return };
        if !member.grants.record {
            self.reply(ServerMessage::error(
                ErrorCode::Forbidden,
                "your join token does not allow recording",
            ))
            .await;
            return;
        }
        let result = match action {
            RecordAction::Start => member.room.start_recording().await.map(|_| ()),
            RecordAction::Stop => member.room.stop_recording().await.map(|_| ()),
        };
        // Success is announced to the whole room by the room itself.
        if let Err(e) = result {
            self.reply(e.to_message()).await;
        }
    }

    /// Whether the participant may change what the room sees now; tells them when not.
    async fn room_change_allowed(&mut self) -> bool {
        let Some(member) = &mut self.member else {
            return false;
        };
        if member.room_changes.allow(Instant::now()) {
            return true;
        }
        self.reply(ServerMessage::error(
            ErrorCode::RateLimited,
            "too many layout or mute changes: at most one a second",
        ))
        .await;
        false
    }

    async fn set_layout(&mut self, request: LayoutRequest) {
        let Some(allowed) = self.member.as_ref().map(|m| m.grants.layout) else {
            return;
        };
        if !allowed {
            self.reply(ServerMessage::error(
                ErrorCode::Forbidden,
                "your join token does not allow switching the layout",
            ))
            .await;
            return;
        }
        if !self.room_change_allowed().await {
            return;
        }
        let Some(room) = self.member.as_ref().map(|m| m.room.clone()) else {
            return;
        };
        // Success is announced to the whole room (a `layout` message).
        if let Err(e) = room.set_layout(request).await {
            self.reply(e.to_message()).await;
        }
    }

    /// Leaves the room, closes the peer connection and waits for every task this session started.
    async fn close(&mut self) {
        if let Some(mut sharing) = self.sharing.take() {
            sharing.close().await;
        }
        if let Some(member) = self.member.take() {
            if self.role != Role::Watcher {
                crate::metrics::metrics().leaves.inc();
            }
            member.room.leave(member.id).await;
            if let Err(e) = member.pc.close().await {
                tracing::debug!("closing a peer connection: {e}");
            }
        }
        for task in self.tasks.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}
