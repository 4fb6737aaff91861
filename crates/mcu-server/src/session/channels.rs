//! The session's side of the data channels and of chat and file requests: what arrives on the
//! `chat` and `files` channels (or, in the fallback, on the WebSocket), handed to `Sharing`, and
//! replies sent back on the transport each request came on.

use super::sharing::{ChannelInput, Transport};
use super::Session;
use crate::protocol::sharing::DATA_CHANNEL_READ_LIMIT;
use crate::protocol::{parse_client_message, ErrorCode, ServerMessage};
use crate::signalling::{Action, Share};

impl Session {
    /// Sends a reply on the transport its request came on.
    pub(super) async fn reply_on(&self, transport: &Transport, message: ServerMessage) {
        if let Transport::DataChannel(dc) = transport {
            if let Ok(text) = serde_json::to_string(&message) {
                if dc.send_text(text).await.is_ok() {
                    return;
                }
            }
        }
        self.reply(message).await;
    }

    pub(super) async fn share(&mut self, share: Share, transport: Transport) {
        let Some(sharing) = self.sharing.as_mut() else {
            return;
        };
        let reply = match share {
            Share::Subscribe => sharing.subscribe(&transport).await,
            Share::Chat(text) => sharing.chat(text).await,
            Share::Offer {
                name,
                size,
                mime,
                reference,
            } => Some(sharing.offer(name, size, mime, reference).await),
            Share::Get(file_id) => sharing.get(file_id, &transport).await,
        };
        if let Some(reply) = reply {
            self.reply_on(&transport, reply).await;
        }
    }

    /// File bytes from the WebSocket, in the fallback for a missing data channel: paced like
    /// the data channel (the session stops reading the socket meanwhile, so TCP slows the
    /// sender down). They are not media: only RTP and RTCP keep a participant in the room.
    pub(super) async fn on_ws_binary(&mut self, frame: &[u8]) -> Option<ServerMessage> {
        if self.sharing.is_some() {
            let wait = self
                .upload_pacer
                .lock()
                .await
                .delay(frame.len(), std::time::Instant::now());
            if !wait.is_zero() {
                tokio::time::sleep(wait).await;
            }
        }
        self.on_binary(frame).await
    }

    /// File bytes, from the `files` data channel or (in the fallback) the WebSocket. `Some` is
    /// an error for the sender.
    pub(super) async fn on_binary(&mut self, frame: &[u8]) -> Option<ServerMessage> {
        match self.sharing.as_mut() {
            Some(sharing) => sharing.chunk(frame).await,
            None => Some(ServerMessage::error(
                ErrorCode::OutOfOrder,
                "file bytes before joining",
            )),
        }
    }

    pub(super) async fn on_channel_input(&mut self, input: ChannelInput) {
        match input {
            ChannelInput::Opened(dc) => {
                if let Some(sharing) = self.sharing.as_mut() {
                    sharing.opened(dc).await;
                }
            }
            ChannelInput::Text(dc, text) => {
                let transport = Transport::DataChannel(dc);
                let message = match parse_client_message(&text) {
                    Ok(m) if m.belongs_on_data_channel() => m,
                    Ok(_) => {
                        let refusal = ServerMessage::error(
                            ErrorCode::OutOfOrder,
                            "only chat, file and ping messages travel on the data channel",
                        );
                        return self.reply_on(&transport, refusal).await;
                    }
                    Err(reply) => return self.reply_on(&transport, reply).await,
                };
                match self.signalling.on_message(message) {
                    Ok(Action::Share(share)) => self.share(share, transport).await,
                    Ok(Action::Reply(reply)) | Err(reply) => self.reply_on(&transport, reply).await,
                    Ok(_) => {}
                }
            }
            ChannelInput::Binary(dc, frame) => {
                if let Some(reply) = self.on_binary(&frame).await {
                    self.reply_on(&Transport::DataChannel(dc), reply).await;
                }
            }
            ChannelInput::Misplaced(dc) => {
                let refusal = ServerMessage::error(
                    ErrorCode::BadMessage,
                    "the chat channel carries text, the files channel binary frames",
                );
                self.reply_on(&Transport::DataChannel(dc), refusal).await;
            }
            ChannelInput::Failed(dc, reason) => {
                tracing::info!(channel = dc.label(), %reason, "data channel failed");
                // The channel is closing, so the reason goes on the WebSocket, which also carries
                // this participant's chat and files from here on.
                let why = if reason.contains("Short buffer") {
                    format!("a message over its {DATA_CHANNEL_READ_LIMIT} bytes cannot be read")
                } else {
                    reason
                };
                self.reply(ServerMessage::error(
                    ErrorCode::BadMessage,
                    format!(
                        "the {} data channel closed: {why}; chat and files continue on the WebSocket",
                        dc.label()
                    ),
                ))
                .await;
            }
            ChannelInput::Closed(dc) => {
                if let Some(sharing) = self.sharing.as_mut() {
                    sharing.closed(&dc);
                }
            }
        }
    }
}
