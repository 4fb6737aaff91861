//! The room's chat and file sharing, a component the room owns: a task of its own with its own
//! commands (`ShareCommand`), so chat and file bookkeeping (and the small file I/O of creating and
//! finishing stored files) never queue behind the media commands of the room actor. It numbers
//! chat messages and keeps the backlog, admits files within the limits and keeps the catalogue,
//! and tells the participants who subscribed. The bytes themselves never pass through here: a
//! session writes an upload to the file opened for it, and reads a download from the file's path.
//!
//! The room keeps it told of who is in the room (`Membership`), and it asks the room to remove a
//! participant whose event queue is full, as the room does for its own messages.

mod state;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::{RoomCommand, RoomError};
use crate::files::FileStore;
use crate::ids::ParticipantId;
use crate::protocol::sharing::{validate_file_name, validate_mime};
use crate::protocol::{ErrorCode, FileInfo, ServerMessage, TextError};
pub use state::OfferError;
use state::{size_text, ChatLog, FileCatalog, FileState};

/// An upload that received no bytes for this long has failed (its sender's tab froze, say), so
/// its share of the room's quota comes back.
pub const UPLOAD_IDLE: Duration = Duration::from_secs(30);
/// How often the component looks for uploads that stopped arriving.
const UPLOAD_CHECK: Duration = Duration::from_secs(5);
/// Most files one room holds at a time: a late joiner is sent every one of them.
pub const MAX_ROOM_FILES: usize = 100;
/// Chat and file requests queued for one room's sharing; a session waits beyond this.
const SHARE_QUEUE: usize = 256;

/// An accepted upload: where its bytes go.
pub struct Upload {
    pub info: FileInfo,
    pub file: std::fs::File,
    pub path: PathBuf,
    /// Set when the room gives up on the upload (it stalled, or failed) and has deleted its
    /// file: the session then closes the file and takes no more bytes for it.
    pub given_up: Arc<AtomicBool>,
}

/// A file ready to be sent to a participant (who was told its SHA-256 in `file_ready`).
pub struct Download {
    pub info: FileInfo,
    pub path: PathBuf,
}

/// Why a file was refused before any of its bytes was sent.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileRefusal {
    #[error("the file's name {0}")]
    BadName(TextError),
    #[error("the file's media type {0}")]
    BadMime(TextError),
    #[error("the room already holds {MAX_ROOM_FILES} files")]
    TooMany,
    #[error(transparent)]
    Limit(#[from] OfferError),
    #[error("the server cannot store the file")]
    Storage,
}

impl FileRefusal {
    pub fn code(&self) -> ErrorCode {
        match self {
            FileRefusal::BadName(_) | FileRefusal::BadMime(_) => ErrorCode::BadMessage,
            FileRefusal::Limit(OfferError::Empty) => ErrorCode::BadMessage,
            FileRefusal::TooMany | FileRefusal::Limit(_) => ErrorCode::FileTooLarge,
            FileRefusal::Storage => ErrorCode::Internal,
        }
    }
}

type Reply<T> = oneshot::Sender<Result<T, RoomError>>;

/// What sessions ask of the room's chat and files.
pub enum ShareCommand {
    /// Deliver chat and files to this participant from now on, the backlog first.
    Subscribe {
        who: ParticipantId,
    },
    /// A chat message (its session checked the text and the sender's rate).
    Chat {
        who: ParticipantId,
        text: String,
    },
    /// Admit a file (or say why not) and open the file its bytes go to.
    Offer {
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
        reply: Reply<Upload>,
    },
    Progress {
        file_id: u32,
        received: u64,
    },
    Done {
        file_id: u32,
        sha256: String,
    },
    Failed {
        file_id: u32,
        reason: String,
    },
    /// A shared file that is ready, for a download.
    Lookup {
        file_id: u32,
        reply: Reply<Download>,
    },
}

/// Who is in the room, as the room tells it.
pub(super) enum Membership {
    Joined {
        who: ParticipantId,
        name: String,
        events: mpsc::Sender<ServerMessage>,
    },
    Left {
        who: ParticipantId,
    },
}

/// The room's hold on its sharing component: dropping `members` stops it.
pub(super) struct SharingTask {
    pub members: mpsc::UnboundedSender<Membership>,
    pub task: JoinHandle<()>,
}

struct Member {
    name: String,
    events: mpsc::Sender<ServerMessage>,
    /// Gets the room's chat and file messages (after `chat_subscribe`).
    subscribed: bool,
}

struct Sharing {
    members: BTreeMap<ParticipantId, Member>,
    chat: ChatLog,
    files: FileCatalog,
    store: FileStore,
    paths: HashMap<u32, PathBuf>,
    /// The flag of each upload in progress, raised when the room gives up on it.
    live_uploads: HashMap<u32, Arc<AtomicBool>>,
    /// To ask the room to remove a participant that stopped reading its events.
    room: mpsc::WeakSender<RoomCommand>,
}

/// Starts the component with `store` for the files' bytes; it runs until the room drops the
/// returned task's `members`.
pub(super) fn spawn(
    chat_history: usize,
    limits: FileLimits,
    store: FileStore,
    room: mpsc::WeakSender<RoomCommand>,
) -> (mpsc::Sender<ShareCommand>, SharingTask) {
    let (commands_tx, commands) = mpsc::channel(SHARE_QUEUE);
    let (members, membership) = mpsc::unbounded_channel();
    let sharing = Sharing {
        members: BTreeMap::new(),
        chat: ChatLog::new(chat_history),
        files: FileCatalog::new(limits.max_file, limits.max_room),
        store,
        paths: HashMap::new(),
        live_uploads: HashMap::new(),
        room,
    };
    let task = tokio::spawn(sharing.run(commands, membership).in_current_span());
    (commands_tx, SharingTask { members, task })
}

/// The limits on a room's files.
pub(super) struct FileLimits {
    pub max_file: u64,
    pub max_room: u64,
}

fn now_text() -> String {
    crate::recordings::rfc3339(SystemTime::now()).unwrap_or_default()
}

impl Sharing {
    async fn run(
        mut self,
        mut commands: mpsc::Receiver<ShareCommand>,
        mut membership: mpsc::UnboundedReceiver<Membership>,
    ) {
        let mut upload_check = tokio::time::interval(UPLOAD_CHECK);
        loop {
            // Membership first: a participant's join is always known before its first request.
            tokio::select! {
                biased;
                change = membership.recv() => match change {
                    Some(change) => self.on_membership(change),
                    None => break,
                },
                Some(command) = commands.recv() => self.handle(command),
                _ = upload_check.tick() => self.fail_abandoned_uploads(None),
            }
        }
        // Temporary shared files go with the room (kept ones stay in --keep-files).
        self.store.close();
    }

    fn on_membership(&mut self, change: Membership) {
        match change {
            Membership::Joined { who, name, events } => {
                self.members.insert(
                    who,
                    Member {
                        name,
                        events,
                        subscribed: false,
                    },
                );
            }
            Membership::Left { who } => {
                self.members.remove(&who);
                self.fail_abandoned_uploads(Some(who));
            }
        }
    }

    fn handle(&mut self, command: ShareCommand) {
        match command {
            ShareCommand::Subscribe { who } => self.subscribe(who),
            ShareCommand::Chat { who, text } => self.chat(who, text),
            ShareCommand::Offer {
                who,
                name,
                size,
                mime,
                reply,
            } => {
                let _ = reply.send(self.offer(who, name, size, mime));
            }
            ShareCommand::Progress { file_id, received } => self.progress(file_id, received),
            ShareCommand::Done { file_id, sha256 } => self.done(file_id, sha256),
            ShareCommand::Failed { file_id, reason } => self.failed(file_id, reason),
            ShareCommand::Lookup { file_id, reply } => {
                let _ = reply.send(self.lookup(file_id).ok_or(RoomError::UnknownFile(file_id)));
            }
        }
    }

    /// `who` wants the room's chat and files: the backlog now, new ones as they come.
    fn subscribe(&mut self, who: ParticipantId) {
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
        let Some(member) = self.members.get_mut(&who) else {
            return;
        };
        member.subscribed = true;
        for message in backlog {
            if member.events.try_send(message).is_err() {
                tracing::warn!(participant = %who, "chat backlog did not fit the event queue");
                break;
            }
        }
    }

    fn chat(&mut self, who: ParticipantId, text: String) {
        let Some(name) = self.members.get(&who).map(|m| m.name.clone()) else {
            return;
        };
        let entry = self.chat.push(who.to_string(), name, now_text(), text);
        self.broadcast(ServerMessage::Chat(Box::new(entry)));
    }

    /// Admits a file within the limits, before any of its bytes is sent, and opens its file.
    fn offer(
        &mut self,
        who: ParticipantId,
        name: String,
        size: u64,
        mime: Option<String>,
    ) -> Result<Upload, RoomError> {
        let name = validate_file_name(&name).map_err(FileRefusal::BadName)?;
        let mime = mime
            .map(|m| validate_mime(&m))
            .transpose()
            .map_err(FileRefusal::BadMime)?;
        if self.files.entries().count() >= MAX_ROOM_FILES {
            return Err(FileRefusal::TooMany.into());
        }
        let from_name = self
            .members
            .get(&who)
            .map(|m| m.name.clone())
            .ok_or(RoomError::NotHere(who))?;
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
            .map_err(FileRefusal::Limit)?;
        let (file, path) = match self.store.create(&info) {
            Ok(created) => created,
            Err(e) => {
                self.files.fail(info.file_id);
                tracing::error!("cannot store a shared file: {e:#}");
                return Err(FileRefusal::Storage.into());
            }
        };
        self.paths.insert(info.file_id, path.clone());
        let given_up = Arc::new(AtomicBool::new(false));
        self.live_uploads.insert(info.file_id, given_up.clone());
        tracing::info!(participant = %who, file_id = info.file_id, size = %size_text(info.size), "file offered");
        self.broadcast(ServerMessage::FileOffered(Box::new(info.clone())));
        Ok(Upload {
            info,
            file,
            path,
            given_up,
        })
    }

    fn progress(&mut self, file_id: u32, received: u64) {
        if self.files.get(file_id).is_none() {
            return;
        }
        self.files.progress(file_id, received, Instant::now());
        self.broadcast(ServerMessage::FileProgress { file_id, received });
    }

    fn done(&mut self, file_id: u32, sha256: String) {
        let Some(entry) = self.files.ready(file_id, sha256.clone()) else {
            return;
        };
        let info = entry.info.clone();
        self.live_uploads.remove(&file_id);
        if let Some(path) = self.paths.get(&file_id) {
            if let Err(e) = self.store.finish(path, &info, &sha256) {
                tracing::warn!(file_id, "no sidecar for a kept file: {e:#}");
            }
        }
        tracing::info!(file_id, size = %size_text(info.size), "file shared");
        self.broadcast(ServerMessage::FileReady { file_id, sha256 });
    }

    fn failed(&mut self, file_id: u32, reason: String) {
        if self.files.fail(file_id).is_none() {
            return;
        }
        if let Some(given_up) = self.live_uploads.remove(&file_id) {
            given_up.store(true, Ordering::Relaxed);
        }
        if let Some(path) = self.paths.remove(&file_id) {
            self.store.discard(&path);
        }
        tracing::info!(file_id, "file upload failed: {reason}");
        self.broadcast(ServerMessage::FileFailed { file_id, reason });
    }

    fn lookup(&self, file_id: u32) -> Option<Download> {
        let entry = self.files.get(file_id)?;
        if !matches!(entry.state, FileState::Ready { .. }) {
            return None;
        }
        Some(Download {
            info: entry.info.clone(),
            path: self.paths.get(&file_id)?.clone(),
        })
    }

    /// Uploads that stopped, or whose sender left, fail.
    fn fail_abandoned_uploads(&mut self, left: Option<ParticipantId>) {
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
            self.failed(id, reason.to_string());
        }
    }

    /// Sends to every participant who subscribed; one whose queue is full is stuck, and the
    /// room is asked to remove it.
    fn broadcast(&mut self, message: ServerMessage) {
        let stuck: Vec<ParticipantId> = self
            .members
            .iter()
            .filter(|(_, m)| m.subscribed)
            .filter(|(_, m)| {
                matches!(
                    m.events.try_send(message.clone()),
                    Err(mpsc::error::TrySendError::Full(_))
                )
            })
            .map(|(who, _)| *who)
            .collect();
        for who in stuck {
            tracing::warn!(participant = %who, "event queue full, removing");
            self.members.remove(&who);
            if let Some(room) = self.room.upgrade() {
                let _ = room.try_send(RoomCommand::Leave { who });
            }
        }
    }
}
