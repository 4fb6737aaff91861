//! The WebSocket door: one task per socket reads signalling frames into its `Session`, writes
//! the session's messages back (writer.rs), and closes the socket with a code that says why.
//! The HTTP doors (WHIP, WHEP) drive the same `Session` from offered.rs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tracing::Instrument;
use warp::ws::WebSocket;

use super::peer::PeerEvent;
use super::sharing::{self, ChannelInput, Route};
use super::{
    writer, Outlets, Session, SessionContext, CHANNEL_INPUT_QUEUE, CLOSE_REMOVED, LIVENESS_CHECK,
};
use crate::admission::{ClientKey, ConnectionSlot};
use crate::ids::RoomId;
use crate::log_limit::limited_info;
use crate::protocol::{ErrorCode, ServerMessage, CLOSE_MESSAGE_TOO_BIG, MAX_MESSAGE_BYTES};
use crate::room::{Role, EVENT_QUEUE};

/// A socket that has not joined within this long is closed (a refused join counts as not
/// joined). The web client and the probe send `join` as soon as the socket opens (the name is
/// asked for before it connects); a socket left idle only holds a task, a buffer and a file
/// descriptor, which a stranger could otherwise pile up without limit.
const JOIN_DEADLINE: Duration = Duration::from_secs(15);
/// Close code for a socket that never joined: policy violation.
const CLOSE_NO_JOIN: u16 = 1008;
/// Serves one WebSocket until it closes; everything it logs carries the room and, once joined,
/// the participant. `slot` counts it against its client's address until it ends.
pub async fn serve(
    socket: WebSocket,
    room_name: String,
    ctx: Arc<SessionContext>,
    slot: ConnectionSlot,
) {
    let span = tracing::info_span!(
        "session",
        room = %room_name,
        participant = tracing::field::Empty
    );
    run(socket, room_name, ctx, slot.key())
        .instrument(span)
        .await;
    drop(slot);
}

/// A WebSocket its address may not open: one `rate_limited` error that says why, then a
/// policy-violation close.
pub async fn refuse(
    socket: WebSocket,
    room: &str,
    client: std::net::IpAddr,
    refusal: crate::admission::Refusal,
) {
    use futures_util::SinkExt;
    limited_info!(%client, room, "connection refused: {refusal}");
    let mut socket = socket;
    let message = ServerMessage::error(ErrorCode::RateLimited, refusal.to_string());
    if let Ok(text) = serde_json::to_string(&message) {
        let _ = socket.send(warp::ws::Message::text(text)).await;
    }
    let _ = socket
        .send(warp::ws::Message::close_with(CLOSE_NO_JOIN, "rate limited"))
        .await;
    let _ = socket.close().await;
}

async fn run(socket: WebSocket, room_name: String, ctx: Arc<SessionContext>, client: ClientKey) {
    let (ws_out, mut ws_in) = socket.split();
    let (outbox, outbox_rx) = mpsc::channel::<ServerMessage>(EVENT_QUEUE);
    let (close_tx, close_rx) = mpsc::channel::<(u16, &'static str)>(1);
    let (ws_binary, ws_binary_rx) = mpsc::channel::<Bytes>(sharing::WS_BINARY_QUEUE);
    let route: Route = Arc::default();

    let writer = tokio::spawn(
        writer::write_socket(ws_out, outbox_rx, ws_binary_rx, close_rx, route.clone())
            .in_current_span(),
    );

    let room = match RoomId::new(&room_name) {
        Ok(room) => room,
        Err(e) => {
            let _ = outbox
                .send(ServerMessage::error(
                    ErrorCode::InvalidRoomName,
                    format!("room name {e}"),
                ))
                .await;
            let _ = close_tx.send((1008, "invalid room name")).await;
            let _ = writer.await;
            return;
        }
    };

    let (removed_tx, mut removed_rx) = mpsc::channel::<String>(1);
    let (channel_tx, mut channel_rx) = mpsc::channel::<ChannelInput>(CHANNEL_INPUT_QUEUE);
    let outlets = Outlets {
        outbox,
        removed_tx,
        route,
        ws_binary,
        channel_tx,
    };
    let mut session = Session::new(ctx, room, Role::Participant, client, outlets);
    let (peer_tx, mut peer_rx) = mpsc::channel::<PeerEvent>(64);
    let mut liveness = tokio::time::interval(LIVENESS_CHECK);
    let opened = Instant::now();
    let close = loop {
        tokio::select! {
            frame = ws_in.next() => {
                let Some(Ok(frame)) = frame else { break (1000, "bye") };
                if frame.is_close() {
                    break (1000, "bye");
                }
                if frame.is_ping() || frame.is_pong() {
                    continue;
                }
                if frame.as_bytes().len() > MAX_MESSAGE_BYTES {
                    limited_info!(bytes = frame.as_bytes().len(), "oversized message, closing");
                    break (CLOSE_MESSAGE_TOO_BIG, "message too big");
                }
                let Ok(text) = frame.to_str() else {
                    // Binary frames are file bytes, in the fallback for a missing data channel.
                    let reply = session.on_ws_binary(frame.as_bytes()).await;
                    if let Some(reply) = reply {
                        session.reply(reply).await;
                    }
                    continue;
                };
                match session.on_text(text, &peer_tx).await {
                    Ok(true) => {}
                    Ok(false) => break (1000, "left"),
                    Err(e) => {
                        tracing::warn!("session failed: {e:#}");
                        session.reply(ServerMessage::error(ErrorCode::Internal, format!("{e:#}"))).await;
                        break (1011, "internal error");
                    }
                }
            }
            Some(event) = peer_rx.recv() => {
                if !session.on_peer_event(event).await {
                    break (1000, "peer connection ended");
                }
            }
            Some(input) = channel_rx.recv() => session.on_channel_input(input).await,
            Some(reason) = removed_rx.recv() => {
                // The room already told the client why (a `removed` message) and forgot them.
                tracing::info!("participant removed: {reason}");
                break (CLOSE_REMOVED, "removed");
            }
            _ = liveness.tick() => {
                if let Some(sharing) = session.sharing.as_mut() {
                    sharing.drop_given_up_uploads();
                }
                if session.member.is_none() && opened.elapsed() > JOIN_DEADLINE {
                    limited_info!("no join within {JOIN_DEADLINE:?}, closing the socket");
                    session.reply(ServerMessage::error(ErrorCode::OutOfOrder, format!("no join within {} s; connect again to join", JOIN_DEADLINE.as_secs()))).await;
                    break (CLOSE_NO_JOIN, "no join");
                }
                let silence = session.member.as_ref().and(session.activity.silence(session.ctx.registry.config()));
                if let Some(silence) = silence {
                    limited_info!("{silence}, removing the participant");
                    session.reply(ServerMessage::error(ErrorCode::Internal, "no media arrived for too long; you were removed")).await;
                    break (1000, "media timeout");
                }
            }
        }
    };
    session.close().await;
    let _ = close_tx.send(close).await;
    let _ = writer.await;
}
