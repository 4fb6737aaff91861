//! A session's chat and file sharing: the participant's two data channels (`chat` for messages,
//! `files` for bytes), where the room's chat and file messages are sent (the data channel the
//! participant subscribed on, or the WebSocket), uploads written straight to the file the room
//! opened for them, and downloads read from disk and sent with back-pressure. File bytes never
//! pass through the room actor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;

use crate::ids::ParticipantId;
use crate::protocol::sharing::{decode_chunk, encode_chunk, validate_chat_text, FILE_CHUNK_BYTES};
use crate::protocol::{ErrorCode, ServerMessage};
use crate::room::sharing::{RateLimit, CHAT_BURST, CHAT_PER_SECOND};
use crate::room::{Download, RoomCommand, RoomHandle, Upload};

/// The data channel a client opens for chat and file control messages (ordered, reliable).
pub const CHAT_CHANNEL: &str = "chat";
/// The data channel for file bytes, apart from chat so a large file never holds a message up.
pub const FILES_CHANNEL: &str = "files";
/// Upload progress goes to the room at most this often: enough for a smooth progress bar.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
/// A download waits while more than this is queued on its data channel, and resumes once the
/// queue is down to `LOW_WATER`: a second or so of a slow link, so the file flows without
/// crowding out the participant's audio and video.
const HIGH_WATER: usize = 1024 * 1024;
const LOW_WATER: usize = 256 * 1024;
/// Downloads one participant may run at once.
const MAX_DOWNLOADS: usize = 2;
/// Binary WebSocket frames (the fallback's file bytes) queued for the socket; the download waits
/// beyond this, which is its back-pressure.
pub const WS_BINARY_QUEUE: usize = 8;

/// Which transport a request came on, and so where its reply goes.
#[derive(Clone)]
pub enum Transport {
    WebSocket,
    DataChannel(Arc<RTCDataChannel>),
}

/// Where the room's chat and file messages for this participant go.
pub type Route = Arc<Mutex<Option<Arc<RTCDataChannel>>>>;

/// What a data channel brings to the session task.
pub enum ChannelInput {
    Opened(Arc<RTCDataChannel>),
    Text(Arc<RTCDataChannel>, String),
    Binary(Arc<RTCDataChannel>, Bytes),
    /// A message of the wrong kind for its channel (text on `files`, binary on `chat`).
    Misplaced(Arc<RTCDataChannel>),
    /// The channel could not be read any more (a message over its read buffer, or a broken
    /// association); webrtc-rs closes it next.
    Failed(Arc<RTCDataChannel>, String),
    Closed(Arc<RTCDataChannel>),
}

/// Spaces a transfer's bytes out to `rate` bytes per second on average (after a first burst),
/// so a file never takes the whole of a participant's link from their audio and video.
#[derive(Debug)]
pub struct Pacer {
    rate: f64,
    started: Option<Instant>,
    sent: u64,
}

/// What a transfer may send at once before the pace applies: a few frames, so a small file
/// goes at once.
const PACER_BURST: u64 = 256 * 1024;

impl Pacer {
    pub fn new(bytes_per_second: u64) -> Self {
        Pacer {
            rate: bytes_per_second.max(1) as f64,
            started: None,
            sent: 0,
        }
    }

    /// How long to wait before sending `bytes` more at `now`.
    pub fn delay(&mut self, bytes: usize, now: Instant) -> Duration {
        let started = *self.started.get_or_insert(now);
        self.sent += bytes as u64;
        let due = self.sent.saturating_sub(PACER_BURST) as f64 / self.rate;
        Duration::from_secs_f64(due).saturating_sub(now.saturating_duration_since(started))
    }
}

/// Forwards a data channel's events into the session. Each message is handed over before the
/// next is read (the handler awaits the bounded channel, and on `files` keeps to `rate`), so an
/// uploader is slowed down through SCTP's flow control rather than queued without bound.
pub fn watch_channel(dc: &Arc<RTCDataChannel>, input: mpsc::Sender<ChannelInput>, rate: u64) {
    let wants_text = dc.label() == CHAT_CHANNEL;
    let pacer = Arc::new(tokio::sync::Mutex::new(Pacer::new(rate)));
    {
        let (dc2, input) = (dc.clone(), input.clone());
        dc.on_open(Box::new(move || {
            Box::pin(async move {
                let _ = input.send(ChannelInput::Opened(dc2)).await;
            })
        }));
    }
    {
        let (dc2, input) = (Arc::downgrade(dc), input.clone());
        dc.on_message(Box::new(move |message: DataChannelMessage| {
            let (dc2, input, pacer) = (dc2.clone(), input.clone(), pacer.clone());
            Box::pin(async move {
                if !wants_text {
                    let wait = pacer.lock().await.delay(message.data.len(), Instant::now());
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                let Some(dc) = dc2.upgrade() else { return };
                let event = match (wants_text, message.is_string) {
                    (true, true) => match String::from_utf8(message.data.to_vec()) {
                        Ok(text) => ChannelInput::Text(dc, text),
                        Err(_) => ChannelInput::Misplaced(dc),
                    },
                    (false, false) => ChannelInput::Binary(dc, message.data),
                    _ => ChannelInput::Misplaced(dc),
                };
                let _ = input.send(event).await;
            })
        }));
    }
    {
        let (dc2, input) = (Arc::downgrade(dc), input.clone());
        dc.on_error(Box::new(move |error| {
            let (dc2, input) = (dc2.clone(), input.clone());
            Box::pin(async move {
                if let Some(dc) = dc2.upgrade() {
                    let _ = input
                        .send(ChannelInput::Failed(dc, error.to_string()))
                        .await;
                }
            })
        }));
    }
    let (dc2, input) = (Arc::downgrade(dc), input);
    dc.on_close(Box::new(move || {
        let (dc2, input) = (dc2.clone(), input.clone());
        Box::pin(async move {
            if let Some(dc) = dc2.upgrade() {
                let _ = input.send(ChannelInput::Closed(dc)).await;
            }
        })
    }));
}

/// An upload in progress: its file, and how much of it came.
struct Receiving {
    file: tokio::fs::File,
    path: PathBuf,
    size: u64,
    received: u64,
    hash: Sha256,
    last_progress: Instant,
}

/// The session's half of sharing.
pub struct Sharing {
    who: ParticipantId,
    room: RoomHandle,
    route: Route,
    chat_channel: Option<Arc<RTCDataChannel>>,
    files_channel: Option<(Arc<RTCDataChannel>, Arc<Notify>)>,
    uploads: HashMap<u32, Receiving>,
    downloads: Vec<(u32, JoinHandle<()>)>,
    ws_binary: mpsc::Sender<Bytes>,
    /// Chat messages and file offers share one rate limit.
    limit: RateLimit,
    /// Bytes per second of each download.
    rate: u64,
}

impl Sharing {
    pub fn new(
        who: ParticipantId,
        room: RoomHandle,
        route: Route,
        ws_binary: mpsc::Sender<Bytes>,
        rate: u64,
    ) -> Self {
        Sharing {
            who,
            room,
            route,
            chat_channel: None,
            files_channel: None,
            uploads: HashMap::new(),
            downloads: Vec::new(),
            ws_binary,
            limit: RateLimit::new(CHAT_BURST, CHAT_PER_SECOND),
            rate,
        }
    }

    /// A data channel opened: `chat` carries requests and (once subscribed) the room's chat,
    /// `files` carries bytes, with a low-water mark for the downloads' back-pressure.
    pub async fn opened(&mut self, dc: Arc<RTCDataChannel>) {
        match dc.label() {
            CHAT_CHANNEL => self.chat_channel = Some(dc),
            FILES_CHANNEL => {
                let drained = Arc::new(Notify::new());
                dc.set_buffered_amount_low_threshold(LOW_WATER).await;
                let notify = drained.clone();
                dc.on_buffered_amount_low(Box::new(move || {
                    notify.notify_one();
                    Box::pin(async {})
                }))
                .await;
                self.files_channel = Some((dc, drained));
            }
            _ => {}
        }
    }

    /// A data channel closed: chat falls back to the WebSocket.
    pub fn closed(&mut self, dc: &Arc<RTCDataChannel>) {
        let mut route = self.route.lock().unwrap_or_else(|e| e.into_inner());
        if route.as_ref().is_some_and(|r| Arc::ptr_eq(r, dc)) {
            *route = None;
        }
        if self
            .chat_channel
            .as_ref()
            .is_some_and(|c| Arc::ptr_eq(c, dc))
        {
            self.chat_channel = None;
        }
        if self
            .files_channel
            .as_ref()
            .is_some_and(|(c, _)| Arc::ptr_eq(c, dc))
        {
            self.files_channel = None;
        }
    }

    /// `chat_subscribe`: the room's chat and files come on the transport it came on.
    pub async fn subscribe(&mut self, transport: &Transport) {
        let channel = match transport {
            Transport::DataChannel(dc) => Some(dc.clone()),
            Transport::WebSocket => None,
        };
        tracing::info!(
            room = %self.room.id(),
            participant = %self.who,
            via = if channel.is_some() { "data channel" } else { "websocket" },
            "chat subscribed"
        );
        *self.route.lock().unwrap_or_else(|e| e.into_inner()) = channel;
        self.room
            .send(RoomCommand::ChatSubscribe { who: self.who })
            .await;
    }

    fn rate_limited(&mut self) -> Option<ServerMessage> {
        (!self.limit.allow(Instant::now())).then(|| {
            ServerMessage::error(
                ErrorCode::RateLimited,
                "too many messages too fast; this one was dropped",
            )
        })
    }

    /// A chat message for the room, once its text and the sender's rate pass. `Some` is an
    /// error for the sender.
    pub async fn chat(&mut self, text: String) -> Option<ServerMessage> {
        if let Some(refusal) = self.rate_limited() {
            return Some(refusal);
        }
        let text = match validate_chat_text(&text) {
            Ok(t) => t,
            Err(e) => {
                return Some(ServerMessage::error(
                    ErrorCode::BadMessage,
                    format!("the chat message {e}"),
                ))
            }
        };
        self.room
            .send(RoomCommand::Chat {
                who: self.who,
                text,
            })
            .await;
        None
    }

    /// `file_offer`: the room admits it (or says why not); the answer is the reply to send.
    pub async fn offer(
        &mut self,
        name: String,
        size: u64,
        mime: Option<String>,
        reference: Option<u32>,
    ) -> ServerMessage {
        let refused = |refusal: ServerMessage| match refusal {
            ServerMessage::Error { code, message } => ServerMessage::FileRefused {
                reference,
                code,
                message,
            },
            other => other,
        };
        if let Some(refusal) = self.rate_limited() {
            return refused(refusal);
        }
        match self.room.offer_file(self.who, name, size, mime).await {
            Ok(Upload { info, file, path }) => {
                self.uploads.insert(
                    info.file_id,
                    Receiving {
                        file: tokio::fs::File::from_std(file),
                        path,
                        size: info.size,
                        received: 0,
                        hash: Sha256::new(),
                        last_progress: Instant::now(),
                    },
                );
                ServerMessage::FileAccepted {
                    file_id: info.file_id,
                    reference,
                }
            }
            Err(refusal) => refused(refusal),
        }
    }

    /// A binary frame of an upload. `Some` is an error for the sender.
    pub async fn chunk(&mut self, frame: &[u8]) -> Option<ServerMessage> {
        let (file_id, bytes) = match decode_chunk(frame) {
            Ok(c) => c,
            Err(e) => return Some(ServerMessage::error(ErrorCode::BadMessage, e.to_string())),
        };
        let Some(upload) = self.uploads.get_mut(&file_id) else {
            return Some(ServerMessage::error(
                ErrorCode::UnknownFile,
                format!("no upload of yours with id {file_id} is in progress"),
            ));
        };
        let received = upload.received + bytes.len() as u64;
        if received > upload.size {
            let size = upload.size;
            self.fail_upload(file_id, "it sent more bytes than it announced")
                .await;
            return Some(ServerMessage::error(
                ErrorCode::BadMessage,
                format!("file {file_id}: more than the {size} bytes offered"),
            ));
        }
        if let Err(e) = upload.file.write_all(bytes).await {
            tracing::error!(file = %upload.path.display(), "writing a shared file: {e}");
            self.fail_upload(file_id, "the server could not store it")
                .await;
            return Some(ServerMessage::error(
                ErrorCode::Internal,
                "the server could not store the file",
            ));
        }
        upload.hash.update(bytes);
        upload.received = received;
        if received == upload.size {
            let mut done = self.uploads.remove(&file_id)?;
            if let Err(e) = done.file.flush().await {
                tracing::error!(file = %done.path.display(), "finishing a shared file: {e}");
                self.fail_upload(file_id, "the server could not store it")
                    .await;
                return None;
            }
            let sha256 = hex(&done.hash.finalize());
            self.room
                .send(RoomCommand::FileDone { file_id, sha256 })
                .await;
        } else if upload.last_progress.elapsed() >= PROGRESS_INTERVAL {
            upload.last_progress = Instant::now();
            self.room
                .send(RoomCommand::FileProgress { file_id, received })
                .await;
        }
        None
    }

    async fn fail_upload(&mut self, file_id: u32, reason: &str) {
        self.uploads.remove(&file_id);
        self.room
            .send(RoomCommand::FileFailed {
                file_id,
                reason: reason.to_string(),
            })
            .await;
    }

    /// `file_get`: sends the file's bytes on the transport the request came on. `Some` is an
    /// error for the requester.
    pub async fn get(&mut self, file_id: u32, transport: &Transport) -> Option<ServerMessage> {
        self.downloads.retain(|(_, task)| !task.is_finished());
        if self.downloads.iter().any(|(id, _)| *id == file_id) {
            return Some(ServerMessage::error(
                ErrorCode::OutOfOrder,
                format!("file {file_id} is already on its way to you"),
            ));
        }
        if self.downloads.len() >= MAX_DOWNLOADS {
            return Some(ServerMessage::error(
                ErrorCode::RateLimited,
                format!("at most {MAX_DOWNLOADS} downloads at a time"),
            ));
        }
        let sink = match transport {
            Transport::DataChannel(_) => match &self.files_channel {
                Some((dc, drained)) => ChunkSink::Channel(dc.clone(), drained.clone()),
                None => {
                    return Some(ServerMessage::error(
                        ErrorCode::OutOfOrder,
                        "open the files data channel before asking for a file",
                    ))
                }
            },
            Transport::WebSocket => ChunkSink::WebSocket(self.ws_binary.clone()),
        };
        let Some(download) = self.room.lookup_file(file_id).await else {
            return Some(ServerMessage::error(
                ErrorCode::UnknownFile,
                format!("no file {file_id} is ready in this room"),
            ));
        };
        let (who, rate) = (self.who, self.rate);
        let task = tokio::spawn(async move {
            if let Err(e) = send_file(&download, sink, rate).await {
                tracing::info!(participant = %who, file_id, "download stopped: {e:#}");
            } else {
                tracing::debug!(participant = %who, file_id, "download sent");
            }
        });
        self.downloads.push((file_id, task));
        None
    }

    /// The session ends: unfinished uploads fail, downloads stop.
    pub async fn close(&mut self) {
        let unfinished: Vec<u32> = self.uploads.keys().copied().collect();
        for file_id in unfinished {
            self.fail_upload(file_id, "the sender left before it was sent")
                .await;
        }
        for (_, task) in self.downloads.drain(..) {
            task.abort();
            let _ = task.await;
        }
    }
}

/// Where a download's frames go.
enum ChunkSink {
    Channel(Arc<RTCDataChannel>, Arc<Notify>),
    WebSocket(mpsc::Sender<Bytes>),
}

async fn send_file(download: &Download, sink: ChunkSink, rate: u64) -> Result<()> {
    let file_id = download.info.file_id;
    let mut file = tokio::fs::File::open(&download.path)
        .await
        .with_context(|| format!("opening {}", download.path.display()))?;
    let mut buffer = vec![0u8; FILE_CHUNK_BYTES];
    let mut pacer = Pacer::new(rate);
    loop {
        let n = file.read(&mut buffer).await.context("reading the file")?;
        if n == 0 {
            return Ok(());
        }
        let wait = pacer.delay(n, Instant::now());
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
        let frame = Bytes::from(encode_chunk(file_id, &buffer[..n]));
        match &sink {
            ChunkSink::Channel(dc, drained) => {
                while dc.buffered_amount().await > HIGH_WATER {
                    // The low-water callback wakes us; the timeout only guards a missed wake-up.
                    let _ =
                        tokio::time::timeout(Duration::from_millis(200), drained.notified()).await;
                }
                dc.send(&frame)
                    .await
                    .context("sending on the files channel")?;
            }
            ChunkSink::WebSocket(out) => out
                .send(frame)
                .await
                .map_err(|_| anyhow::anyhow!("the WebSocket closed"))?,
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pacer_lets_a_burst_go_then_keeps_to_the_rate() {
        let t0 = Instant::now();
        let mut pacer = Pacer::new(1_000_000);
        // The first 256 KiB go at once.
        for _ in 0..16 {
            assert_eq!(pacer.delay(16 * 1024, t0), Duration::ZERO);
        }
        // Then 1 MB more is due one second in.
        let mut wait = Duration::ZERO;
        for _ in 0..61 {
            wait = pacer.delay(16_393, t0);
        }
        assert!((wait.as_secs_f64() - 1.0).abs() < 0.01, "{wait:?}");
        // Time that passed counts: a second later, that same byte count is due now.
        assert!(pacer.delay(0, t0 + Duration::from_secs(1)) < Duration::from_millis(10));
    }

    #[test]
    fn hashes_print_as_lower_case_hex() {
        use sha2::Digest;
        let digest = sha2::Sha256::digest(b"abc");
        assert_eq!(
            super::hex(&digest),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
