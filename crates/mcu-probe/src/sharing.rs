//! A synthetic participant's chat and file sharing, as a browser does it: a `chat` and a `files`
//! data channel created before the offer, `chat_subscribe` once they open (or on the WebSocket,
//! to exercise the fallback), chat messages, uploads with back-pressure and downloads. What the
//! server sends, on either transport, is kept in `heard::SharingState` for the checks.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;
use webrtc::peer_connection::RTCPeerConnection;

use crate::heard::{lock, SharedState};
use crate::link::Link;
use mcu_server::protocol::sharing::{encode_chunk, FILE_CHUNK_BYTES};
use mcu_server::protocol::{ClientMessage, ServerMessage};

/// How long to wait for the data channels to open once the peer connection is up.
const OPEN_DEADLINE: Duration = Duration::from_secs(10);
/// How long the server may take to accept or refuse an offered file.
const ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// An upload waits while more than this is queued on the files channel (as the web client does).
const HIGH_WATER: usize = 1024 * 1024;

/// Which transport the participant subscribes to chat and files on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    DataChannel,
    /// As a client whose data channels cannot open: everything on the WebSocket.
    WebSocket,
}

/// The participant's sharing: its data channels (when it uses them) and what it heard.
pub struct SharingClient {
    transport: Transport,
    chat: Option<Arc<RTCDataChannel>>,
    files: Option<Arc<RTCDataChannel>>,
    pub state: SharedState,
}

impl SharingClient {
    /// Creates the data channels (before the offer, so the offer carries them).
    pub async fn create(
        pc: &Arc<RTCPeerConnection>,
        transport: Transport,
        state: SharedState,
    ) -> Result<Self> {
        let (chat, files) = match transport {
            Transport::WebSocket => (None, None),
            Transport::DataChannel => {
                let chat = pc
                    .create_data_channel("chat", None)
                    .await
                    .context("creating the chat data channel")?;
                let files = pc
                    .create_data_channel("files", None)
                    .await
                    .context("creating the files data channel")?;
                let s = state.clone();
                chat.on_message(Box::new(move |m: DataChannelMessage| {
                    if let Ok(message) = serde_json::from_slice::<ServerMessage>(&m.data) {
                        lock(&s).record(&message);
                    }
                    Box::pin(async {})
                }));
                let s = state.clone();
                files.on_message(Box::new(move |m: DataChannelMessage| {
                    lock(&s).record_chunk(&m.data);
                    Box::pin(async {})
                }));
                (Some(chat), Some(files))
            }
        };
        Ok(SharingClient {
            transport,
            chat,
            files,
            state,
        })
    }

    /// Waits for the data channels to open (if used), then subscribes.
    pub async fn subscribe(&self, link: &Link) -> Result<()> {
        if let (Some(chat), Some(files)) = (&self.chat, &self.files) {
            let deadline = Instant::now() + OPEN_DEADLINE;
            while !(is_open(chat) && is_open(files)) {
                if Instant::now() > deadline {
                    bail!("the data channels did not open within {OPEN_DEADLINE:?}");
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        self.send(link, &ClientMessage::ChatSubscribe {}).await
    }

    pub async fn send(&self, link: &Link, message: &ClientMessage) -> Result<()> {
        let text = serde_json::to_string(message).context("serialising")?;
        match &self.chat {
            Some(chat) if self.transport == Transport::DataChannel => {
                chat.send_text(text)
                    .await
                    .context("sending on the chat channel")?;
            }
            _ => {
                if !link.send_raw(text).await {
                    bail!("the WebSocket closed");
                }
            }
        }
        Ok(())
    }

    /// Sends `text` as it is on the chat channel (for tests of bad input).
    pub async fn send_raw(&self, text: &str) -> Result<()> {
        let chat = self.chat.as_ref().context("no chat data channel")?;
        chat.send_text(text.to_string())
            .await
            .context("sending on the chat channel")?;
        Ok(())
    }

    /// Offers `bytes` as a file and sends them once accepted. Returns the file's id, or the
    /// server's refusal as an error.
    pub async fn share(&self, link: &Link, name: &str, bytes: &[u8]) -> Result<u32> {
        let reference = {
            let mut s = lock(&self.state);
            s.next_ref += 1;
            Some(s.next_ref)
        };
        self.send(
            link,
            &ClientMessage::FileOffer {
                name: name.to_string(),
                size: bytes.len() as u64,
                mime: Some("application/octet-stream".into()),
                reference,
            },
        )
        .await?;
        let deadline = Instant::now() + ANSWER_DEADLINE;
        let file_id = loop {
            {
                let s = lock(&self.state);
                if let Some((_, id)) = s.accepted.iter().find(|(r, _)| *r == reference) {
                    break *id;
                }
                if let Some((_, code, message)) = s.refused.iter().find(|(r, ..)| *r == reference) {
                    bail!("refused: {code:?}: {message}");
                }
            }
            if Instant::now() > deadline {
                bail!("no answer to the file offer within {ANSWER_DEADLINE:?}");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        for chunk in bytes.chunks(FILE_CHUNK_BYTES) {
            let frame = Bytes::from(encode_chunk(file_id, chunk));
            match &self.files {
                Some(files) if self.transport == Transport::DataChannel => {
                    while files.buffered_amount().await > HIGH_WATER {
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    files
                        .send(&frame)
                        .await
                        .context("sending on the files channel")?;
                }
                _ => {
                    if !link.send_binary(frame).await {
                        bail!("the WebSocket closed");
                    }
                }
            }
        }
        Ok(file_id)
    }

    /// Asks for a file and waits until all of it arrived (or `deadline`); returns its bytes.
    pub async fn download(&self, link: &Link, file_id: u32, deadline: Instant) -> Result<Vec<u8>> {
        let size = lock(&self.state)
            .files
            .get(&file_id)
            .map(|f| f.info.size)
            .context("no such file announced")?;
        lock(&self.state).downloads.remove(&file_id);
        self.send(link, &ClientMessage::FileGet { file_id }).await?;
        loop {
            {
                let mut s = lock(&self.state);
                let got = s.downloads.get(&file_id).map_or(0, Vec::len) as u64;
                if got >= size {
                    return Ok(s.downloads.remove(&file_id).unwrap_or_default());
                }
            }
            if Instant::now() > deadline {
                let got = lock(&self.state)
                    .downloads
                    .get(&file_id)
                    .map_or(0, Vec::len);
                bail!("file {file_id}: {got} of {size} bytes arrived in time");
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}

fn is_open(dc: &RTCDataChannel) -> bool {
    dc.ready_state() == webrtc::data_channel::data_channel_state::RTCDataChannelState::Open
}

/// Lower-case hex SHA-256.
pub fn sha256_hex(bytes: &[u8]) -> String {
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// `len` bytes that do not compress and differ run to run (xorshift, seeded from the clock):
/// a file whose every byte must arrive as sent.
pub fn random_bytes(len: usize) -> Vec<u8> {
    let mut state = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64)
        | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        out.extend_from_slice(&state.to_le_bytes());
    }
    out.truncate(len);
    out
}
