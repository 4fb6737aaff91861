//! A session's chat and file sharing: the participant's two data channels (`chat` for messages,
//! `files` for bytes), where the room's chat and file messages are sent (the data channel the
//! participant subscribed on, or the WebSocket), uploads written straight to the file the room
//! opened for them, and downloads read from disk and sent with back-pressure. File bytes never
//! pass through the room actor.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use tokio::sync::{mpsc, Notify};
use tokio::task::JoinHandle;
use tracing::Instrument;
use webrtc::data_channel::data_channel_message::DataChannelMessage;
use webrtc::data_channel::RTCDataChannel;

use super::transfer::{hex, send_file, ChunkSink, Pacer, LOW_WATER};
use crate::ids::ParticipantId;
use crate::protocol::sharing::{decode_chunk, validate_chat_text};
use crate::protocol::{ErrorCode, ServerMessage};
use crate::rate::RateLimit;
use crate::room::{RoomHandle, Upload};

/// How many chat messages a participant may send at once before the rate applies: a burst of
/// quick replies is normal, a script pasting lines is not.
pub const CHAT_BURST: f64 = 8.0;
/// The rate a participant's chat refills at, in messages per second: faster than anyone types.
pub const CHAT_PER_SECOND: f64 = 2.0;
/// `chat_subscribe`s at once: the web client sends one when it joins and one each time its chat
/// channel (re)opens; each replays up to the whole backlog, so a loop of them would make the
/// server send the backlog again and again.
const SUBSCRIBE_BURST: f64 = 4.0;
/// Then one every 5 s.
const SUBSCRIBE_PER_SECOND: f64 = 0.2;

/// The data channel a client opens for chat and file control messages (ordered, reliable).
pub const CHAT_CHANNEL: &str = "chat";
/// The data channel for file bytes, apart from chat so a large file never holds a message up.
pub const FILES_CHANNEL: &str = "files";
/// Upload progress goes to the room at most this often: enough for a smooth progress bar.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(250);
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

/// The pace of file bytes arriving from one client (its data channels and, in the fallback, its
/// WebSocket), shared by all of them.
pub type UploadPacer = Arc<tokio::sync::Mutex<Pacer>>;

pub fn upload_pacer(bytes_per_second: u64) -> UploadPacer {
    Arc::new(tokio::sync::Mutex::new(Pacer::new(bytes_per_second)))
}

/// Forwards a data channel's events into the session. Each message is handed over before the
/// next is read (the handler awaits the bounded channel, and on `files` keeps to the pace), so
/// an uploader is slowed down through SCTP's flow control rather than queued without bound.
pub fn watch_channel(
    dc: &Arc<RTCDataChannel>,
    input: mpsc::Sender<ChannelInput>,
    pacer: UploadPacer,
) {
    let wants_text = dc.label() == CHAT_CHANNEL;
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
    /// Raised by the room when it gave up on this upload and deleted its file.
    given_up: Arc<AtomicBool>,
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
    /// `chat_subscribe` replays the room's backlog, so it has a tighter limit of its own.
    subscribe_limit: RateLimit,
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
            subscribe_limit: RateLimit::new(SUBSCRIBE_BURST, SUBSCRIBE_PER_SECOND),
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

    /// `chat_subscribe`: the room's chat and files come on the transport it came on. `Some` is
    /// an error for the sender.
    pub async fn subscribe(&mut self, transport: &Transport) -> Option<ServerMessage> {
        if !self.subscribe_limit.allow(Instant::now()) {
            return Some(ServerMessage::error(
                ErrorCode::RateLimited,
                "chat_subscribe too often (it replays the backlog); this one was dropped",
            ));
        }
        let channel = match transport {
            Transport::DataChannel(dc) => Some(dc.clone()),
            Transport::WebSocket => None,
        };
        tracing::info!(
            via = if channel.is_some() {
                "data channel"
            } else {
                "websocket"
            },
            "chat subscribed"
        );
        *self.route.lock().unwrap_or_else(|e| e.into_inner()) = channel;
        self.room.subscribe_chat(self.who).await;
        None
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
        self.room.chat(self.who, text).await;
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
            Ok(Upload {
                info,
                file,
                path,
                given_up,
            }) => {
                self.uploads.insert(
                    info.file_id,
                    Receiving {
                        file: tokio::fs::File::from_std(file),
                        path,
                        given_up,
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
            Err(refusal) => refused(refusal.to_message()),
        }
    }

    /// A binary frame of an upload. `Some` is an error for the sender.
    pub async fn chunk(&mut self, frame: &[u8]) -> Option<ServerMessage> {
        let (file_id, bytes) = match decode_chunk(frame) {
            Ok(c) => c,
            Err(e) => return Some(ServerMessage::error(ErrorCode::BadMessage, e.to_string())),
        };
        self.drop_given_up_uploads();
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
            self.room.file_done(file_id, sha256).await;
        } else if upload.last_progress.elapsed() >= PROGRESS_INTERVAL {
            upload.last_progress = Instant::now();
            self.room.file_progress(file_id, received).await;
        }
        None
    }

    /// Closes the files of the uploads the room gave up on (their `file_failed` went to everyone,
    /// the sender included): nothing more is written into a file the room deleted.
    pub fn drop_given_up_uploads(&mut self) {
        self.uploads.retain(|file_id, upload| {
            let keep = !upload.given_up.load(Ordering::Relaxed);
            if !keep {
                tracing::info!(file_id, "upload given up by the room, its file closed");
            }
            keep
        });
    }

    async fn fail_upload(&mut self, file_id: u32, reason: &str) {
        self.uploads.remove(&file_id);
        self.room.file_failed(file_id, reason.to_string()).await;
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
        let download = match self.room.lookup_file(file_id).await {
            Ok(download) => download,
            Err(e) => return Some(e.to_message()),
        };
        let rate = self.rate;
        let sending = async move {
            if let Err(e) = send_file(&download, sink, rate).await {
                tracing::info!(file_id, "download stopped: {e:#}");
            } else {
                tracing::debug!(file_id, "download sent");
            }
        };
        let task = tokio::spawn(sending.in_current_span());
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
