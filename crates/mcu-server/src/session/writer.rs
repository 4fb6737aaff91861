//! The one writer of a session's WebSocket: replies, room events, file bytes in the WebSocket
//! fallback, and finally a close frame. Chat and file messages go to the data channel the
//! participant subscribed on instead, while it is open.

use bytes::Bytes;
use futures_util::stream::SplitSink;
use futures_util::SinkExt;
use tokio::sync::mpsc;
use warp::ws::{Message, WebSocket};

use super::sharing::Route;
use crate::protocol::ServerMessage;

pub(super) async fn write_socket(
    mut ws_out: SplitSink<WebSocket, Message>,
    mut outbox_rx: mpsc::Receiver<ServerMessage>,
    mut ws_binary_rx: mpsc::Receiver<Bytes>,
    mut close_rx: mpsc::Receiver<(u16, &'static str)>,
    route: Route,
) {
    loop {
        tokio::select! {
            message = outbox_rx.recv() => {
                let Some(message) = message else { break };
                let Ok(text) = serde_json::to_string(&message) else { continue };
                if message.is_sharing() {
                    let channel = route.lock().unwrap_or_else(|e| e.into_inner()).clone();
                    if let Some(dc) = channel {
                        if dc.send_text(text.clone()).await.is_ok() {
                            continue;
                        }
                    }
                }
                if ws_out.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            Some(frame) = ws_binary_rx.recv() => {
                if ws_out.send(Message::binary(frame.to_vec())).await.is_err() {
                    break;
                }
            }
            close = close_rx.recv() => {
                let (code, reason) = close.unwrap_or((1000, "bye"));
                // Flush what is already queued (e.g. the error that explains the close).
                while let Ok(message) = outbox_rx.try_recv() {
                    if let Ok(text) = serde_json::to_string(&message) {
                        let _ = ws_out.send(Message::text(text)).await;
                    }
                }
                let _ = ws_out.send(Message::close_with(code, reason)).await;
                break;
            }
        }
    }
    let _ = ws_out.close().await;
}
