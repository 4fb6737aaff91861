//! The room's side of chat and file sharing: numbering chat messages and keeping the backlog,
//! admitting files within the limits and keeping the catalogue, and telling the participants who
//! subscribed. The bytes themselves never pass through here: a session writes an upload to the
//! file the room opened for it, and reads a download from the file's path.

use std::path::PathBuf;
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::oneshot;

use super::sharing::{size_text, FileState, OfferError};
use super::Room;
use crate::ids::ParticipantId;
use crate::protocol::sharing::{validate_file_name, validate_mime};
use crate::protocol::{ErrorCode, FileInfo, ServerMessage};

/// An upload that received no bytes for this long has failed (its sender's tab froze, say), so
/// its share of the room's quota comes back.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// Most files one room holds at a time: a late joiner is sent every one of them.
pub const MAX_ROOM_FILES: usize = 100;

/// An accepted upload: where its bytes go.
pub struct Upload {
    pub info: FileInfo,
    pub file: std::fs::File,
    pub path: PathBuf,
}

/// A file ready to be sent to a participant.
pub struct Download {
    pub info: FileInfo,
    pub path: PathBuf,
    pub sha256: String,
}

pub type OfferReply = oneshot::Sender<Result<Upload, ServerMessage>>;

fn now_text() -> String {
    crate::recordings::rfc3339(SystemTime::now()).unwrap_or_default()
}

impl Room {
    /// `who` wants the room's chat and files: the backlog now, new ones as they come.
    pub(super) fn subscribe_chat(&mut self, who: ParticipantId) {
        let mut backlog: Vec<ServerMessage> = self
            .chat
            .backlog()
            .cloned()
            .map(|c| ServerMessage::Chat(Box::new(c)))
            .collect();
        for entry in self.files.entries() {
            backlog.push(ServerMessage::FileOffered(Box::new(entry.info.clone())));
            backlog.push(match &entry.state {
                FileState::Uploading { received } => ServerMessage::FileProgress {
                    file_id: entry.info.file_id,
                    received: *received,
                },
                FileState::Ready { sha256 } => ServerMessage::FileReady {
                    file_id: entry.info.file_id,
                    sha256: sha256.clone(),
                },
            });
        }
        let Some(p) = self.participants.iter_mut().find(|p| p.id == who) else {
            return;
        };
        p.subscribed = true;
        for message in backlog {
            if p.events.try_send(message).is_err() {
                tracing::warn!(room = %self.id, participant = %who, "chat backlog did not fit the event queue");
                break;
            }
        }
    }

    /// A chat message (its session checked the text and the sender's rate).
    pub(super) fn chat(&mut self, who: ParticipantId, text: String) {
        let Some(name) = self
            .participants
            .iter()
            .find(|p| p.id == who)
            .map(|p| p.name.clone())
        else {
            return;
        };
        let entry = self.chat.push(who.to_string(), name, now_text(), text);
        self.broadcast_sharing(ServerMessage::Chat(Box::new(entry)));
    }

    /// Admits a file within the limits, before any of its bytes is sent, and opens its file.
    pub(super) fn offer_file(
        &mut self,
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
    ) -> Result<Upload, ServerMessage> {
        let bad = |what: &str, e: crate::protocol::TextError| {
            ServerMessage::error(ErrorCode::BadMessage, format!("the file's {what} {e}"))
        };
        let name = validate_file_name(&name).map_err(|e| bad("name", e))?;
        let mime = mime
            .map(|m| validate_mime(&m))
            .transpose()
            .map_err(|e| bad("media type", e))?;
        if self.files.entries().count() >= MAX_ROOM_FILES {
            return Err(ServerMessage::error(
                ErrorCode::FileTooLarge,
                format!("the room already holds {MAX_ROOM_FILES} files"),
            ));
        }
        let from_name = self
            .participants
            .iter()
            .find(|p| p.id == who)
            .map(|p| p.name.clone())
            .ok_or_else(|| ServerMessage::error(ErrorCode::OutOfOrder, "not in the room"))?;
        let offered = FileInfo {
            file_id: 0,
            name,
            size,
            mime,
            from: who.to_string(),
            from_name,
            at: now_text(),
        };
        let info = self
            .files
            .offer(offered, Instant::now())
            .map_err(|e| match e {
                OfferError::Empty => ServerMessage::error(ErrorCode::BadMessage, e.to_string()),
                _ => ServerMessage::error(ErrorCode::FileTooLarge, e.to_string()),
            })?;
        let (file, path) = match self.file_store.create(&info) {
            Ok(created) => created,
            Err(e) => {
                self.files.fail(info.file_id);
                tracing::error!(room = %self.id, "cannot store a shared file: {e:#}");
                return Err(ServerMessage::error(
                    ErrorCode::Internal,
                    "the server cannot store the file",
                ));
            }
        };
        self.file_paths.insert(info.file_id, path.clone());
        tracing::info!(room = %self.id, participant = %who, file_id = info.file_id, size = %size_text(info.size), "file offered");
        self.broadcast_sharing(ServerMessage::FileOffered(Box::new(info.clone())));
        Ok(Upload { info, file, path })
    }

    pub(super) fn file_progress(&mut self, file_id: u32, received: u64) {
        if self.files.get(file_id).is_none() {
            return;
        }
        self.files.progress(file_id, received, Instant::now());
        self.broadcast_sharing(ServerMessage::FileProgress { file_id, received });
    }

    pub(super) fn file_done(&mut self, file_id: u32, sha256: String) {
        let Some(entry) = self.files.ready(file_id, sha256.clone()) else {
            return;
        };
        let info = entry.info.clone();
        if let Some(path) = self.file_paths.get(&file_id) {
            if let Err(e) = self.file_store.finish(path, &info, &sha256) {
                tracing::warn!(room = %self.id, file_id, "no sidecar for a kept file: {e:#}");
            }
        }
        tracing::info!(room = %self.id, file_id, size = %size_text(info.size), "file shared");
        self.broadcast_sharing(ServerMessage::FileReady { file_id, sha256 });
    }

    pub(super) fn file_failed(&mut self, file_id: u32, reason: String) {
        if self.files.fail(file_id).is_none() {
            return;
        }
        if let Some(path) = self.file_paths.remove(&file_id) {
            self.file_store.discard(&path);
        }
        tracing::info!(room = %self.id, file_id, "file upload failed: {reason}");
        self.broadcast_sharing(ServerMessage::FileFailed { file_id, reason });
    }

    pub(super) fn lookup_file(&self, file_id: u32) -> Option<Download> {
        let entry = self.files.get(file_id)?;
        let FileState::Ready { sha256 } = &entry.state else {
            return None;
        };
        Some(Download {
            info: entry.info.clone(),
            path: self.file_paths.get(&file_id)?.clone(),
            sha256: sha256.clone(),
        })
    }

    /// Uploads that stopped, or whose sender left, fail.
    pub(super) fn fail_abandoned_uploads(&mut self, left: Option<ParticipantId>) {
        let mut failed: Vec<(u32, &str)> = self
            .files
            .stalled(Instant::now(), UPLOAD_IDLE)
            .into_iter()
            .map(|id| (id, "no data arrived for too long"))
            .collect();
        if let Some(who) = left {
            failed.extend(
                self.files
                    .uploading_by(&who.to_string())
                    .into_iter()
                    .map(|id| (id, "the sender left before it was sent")),
            );
        }
        for (id, reason) in failed {
            self.file_failed(id, reason.to_string());
        }
    }

    /// Sends to every participant who subscribed to chat and files.
    pub(super) fn broadcast_sharing(&mut self, message: ServerMessage) {
        let stuck: Vec<ParticipantId> = self
            .participants
            .iter()
            .filter(|p| p.subscribed)
            .filter(|p| {
                matches!(
                    p.events.try_send(message.clone()),
                    Err(tokio::sync::mpsc::error::TrySendError::Full(_))
                )
            })
            .map(|p| p.id)
            .collect();
        for who in stuck {
            tracing::warn!(room = %self.id, participant = %who, "event queue full, removing");
            self.leave(who);
        }
    }
}
