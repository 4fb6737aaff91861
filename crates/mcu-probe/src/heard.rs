//! What the server told a synthetic participant, besides the negotiation: the layout, room
//! notices, errors, the candidates it offered, and everything about chat and files. Written by the
//! participant's signalling link (and its data channels), read by the checks.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use mcu_server::protocol::sharing::decode_chunk;
use mcu_server::protocol::{ChatEntry, ErrorCode, FileInfo, Layout, ServerMessage};

/// What the server told this participant besides the negotiation.
#[derive(Debug, Default)]
pub struct Announcements {
    pub layout: Option<Layout>,
    pub errors: Vec<String>,
    /// The ICE candidates the server sent, as SDP candidate lines.
    pub server_candidates: Vec<String>,
    /// Room notices received: recording, mute, removal, video tier messages and a `redirect`
    /// after joining (the room moved), in order.
    pub notices: Vec<ServerMessage>,
    /// Where cluster doors sent this participant before it joined (WebSocket URLs, in order).
    pub redirects: Vec<String>,
    /// Each `active_speaker` message: when it arrived, and who.
    pub speakers: Vec<(std::time::Instant, String)>,
    /// Chat and file messages (and file bytes) that came on the WebSocket, for a participant
    /// using the fallback; shared with its data channels' handlers otherwise.
    pub sharing: SharedState,
}

pub type Heard = Arc<Mutex<Announcements>>;

/// The state behind `mutex`, even if a thread panicked while holding it: it is plain data and
/// stays readable, and the checks would rather see it than panic too.
pub fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// One shared file as this participant knows it.
#[derive(Debug, Clone)]
pub struct FileView {
    pub info: FileInfo,
    pub received_by_server: u64,
    pub sha256: Option<String>,
    pub failed: Option<String>,
}

/// What the server said about chat and files.
#[derive(Debug, Default)]
pub struct SharingState {
    pub chats: Vec<ChatEntry>,
    pub files: BTreeMap<u32, FileView>,
    /// `file_accepted` answers: (the offer's ref, the file's id).
    pub accepted: Vec<(Option<u32>, u32)>,
    /// `file_refused` answers: (the offer's ref, why).
    pub refused: Vec<(Option<u32>, ErrorCode, String)>,
    /// The ref the next offer carries.
    pub next_ref: u32,
    pub errors: Vec<(ErrorCode, String)>,
    /// Bytes of each downloaded file so far.
    pub downloads: HashMap<u32, Vec<u8>>,
}

impl SharingState {
    /// Takes in a message from the server; false if it was not about chat or files.
    pub fn record(&mut self, message: &ServerMessage) -> bool {
        match message {
            ServerMessage::Chat(entry) => self.chats.push((**entry).clone()),
            ServerMessage::FileAccepted { file_id, reference } => {
                self.accepted.push((*reference, *file_id))
            }
            ServerMessage::FileRefused {
                reference,
                code,
                message,
            } => self.refused.push((*reference, *code, message.clone())),
            ServerMessage::FileOffered(info) => {
                self.files.insert(
                    info.file_id,
                    FileView {
                        info: (**info).clone(),
                        received_by_server: 0,
                        sha256: None,
                        failed: None,
                    },
                );
            }
            ServerMessage::FileProgress { file_id, received } => {
                if let Some(f) = self.files.get_mut(file_id) {
                    f.received_by_server = *received;
                }
            }
            ServerMessage::FileReady { file_id, sha256 } => {
                if let Some(f) = self.files.get_mut(file_id) {
                    f.received_by_server = f.info.size;
                    f.sha256 = Some(sha256.clone());
                }
            }
            ServerMessage::FileFailed { file_id, reason } => {
                if let Some(f) = self.files.get_mut(file_id) {
                    f.failed = Some(reason.clone());
                }
            }
            ServerMessage::Error { code, message } => {
                self.errors.push((*code, message.clone()));
            }
            _ => return false,
        }
        true
    }

    /// A binary frame of a download.
    pub fn record_chunk(&mut self, frame: &[u8]) {
        if let Ok((id, bytes)) = decode_chunk(frame) {
            self.downloads
                .entry(id)
                .or_default()
                .extend_from_slice(bytes);
        }
    }
}

pub type SharedState = Arc<Mutex<SharingState>>;
