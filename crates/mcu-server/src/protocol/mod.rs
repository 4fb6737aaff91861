//! The signalling wire protocol: every message a client and the server exchange over the WebSocket
//! (and, for chat and files, over the data channels: see `sharing`), the error codes, and the
//! validation of names. No I/O lives here, so the browser client, the synthetic participant and
//! the server can all be checked against this one definition. docs/protocol.md shows one example
//! of each message.

pub mod layout;
pub mod sharing;

use serde::{Deserialize, Serialize};

use crate::auth::Secret;
pub use sharing::{ChatEntry, FileInfo};

/// Longest room name accepted: long enough for a readable slug, short enough for a file name.
pub const MAX_ROOM_NAME_LEN: usize = 64;
/// Longest display name, in characters: it is drawn on a tile, so a sentence is already too long.
pub const MAX_DISPLAY_NAME_LEN: usize = 64;
/// Largest signalling message the server reads. An SDP offer with a few codecs and candidates is
/// 5–15 KiB; 64 KiB leaves room for rich offers while bounding what one client can make us parse.
pub const MAX_MESSAGE_BYTES: usize = 64 * 1024;
/// WebSocket close code for a message that is too big (RFC 6455, 7.4.1).
pub const CLOSE_MESSAGE_TOO_BIG: u16 = 1009;

/// A message from a client to the server.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum ClientMessage {
    /// Enter the room named in the WebSocket path under a display name. On a server that requires
    /// join tokens, `token` is one for this room, and the name it carries is the one used.
    Join {
        name: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        token: Option<Secret>,
    },
    /// An SDP offer (the client starts or renegotiates the session).
    Offer { sdp: String },
    /// An SDP answer. The server never offers, so this is always refused as out of order; it
    /// stays a known message so that a client which sends one is told why.
    Answer { sdp: String },
    /// A trickled ICE candidate; `candidate: null` means the client finished gathering.
    Candidate { candidate: Option<IceCandidate> },
    /// Leave the room; the server closes the socket after this.
    Leave {},
    /// Start or stop the room's recording (if the join allowed it: see `joined.can_record`).
    Record { action: RecordAction },
    /// Keep-alive; answered with `pong`.
    Ping {},
    /// Deliver the room's chat and files on the transport this arrived on (the `chat` data
    /// channel, or the WebSocket when that cannot open): first the backlog, then as it happens.
    ChatSubscribe {},
    /// A chat message to everyone in the room.
    Chat { text: String },
    /// Announces a file to share; the server answers `file_accepted` (send its bytes now) or an
    /// error (too large, say) before any byte is sent.
    FileOffer {
        name: String,
        size: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mime: Option<String>,
        /// The client's own number for this offer, echoed in the answer (`file_accepted` or
        /// `file_refused`), so a client with several offers under way knows which was answered.
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
    },
    /// Asks for a shared file's bytes, which arrive as binary frames.
    FileGet { file_id: u32 },
    /// Switch the room's layout (if the join allowed it: see `joined.can_set_layout`). The body
    /// is the admin API's: `{"layout": "speaker"}`, `{"layout": "pin", "participant_id": "p2"}`…
    SetLayout(layout::LayoutRequest),
    /// The participant muted (or unmuted) their own microphone: their label says so, and they
    /// are never taken for the active speaker meanwhile.
    SelfMute { muted: bool },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordAction {
    Start,
    Stop,
}

/// What happened to the room's recording, as participants are told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingState {
    Started,
    Stopped,
    /// The recording stopped on an error (e.g. the server's disk is full); the call goes on.
    Failed,
}

/// A message from the server to a client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    /// The join succeeded: who you are, who is already here, and how to reach the server's media.
    Joined {
        participant_id: String,
        room: String,
        participants: Vec<ParticipantInfo>,
        ice_servers: Vec<IceServer>,
        /// Whether this participant may start and stop the recording.
        #[serde(default)]
        can_record: bool,
        /// Whether the room is being recorded right now.
        #[serde(default)]
        recording: bool,
        /// The largest file this server accepts for sharing, in bytes.
        #[serde(default)]
        max_file_size: u64,
        /// Whether this participant may switch the room's layout (`set_layout`).
        #[serde(default)]
        can_set_layout: bool,
    },
    /// The server's answer to the client's offer.
    Answer {
        sdp: String,
    },
    Candidate {
        candidate: Option<IceCandidate>,
    },
    ParticipantJoined {
        participant: ParticipantInfo,
    },
    ParticipantLeft {
        participant_id: String,
    },
    /// Where each participant is drawn in the composite; sent on join and after every change.
    Layout(Layout),
    /// The room's active speaker changed (the loudest talker, with hysteresis).
    ActiveSpeaker {
        participant_id: String,
    },
    /// Which tier of the composite this participant now receives: 0 is the top (full size);
    /// higher tiers are the same picture, smaller, for a link that cannot carry the top one.
    /// Sent when it changes (everyone starts on the top tier).
    VideoTier {
        tier: usize,
        /// How many tiers there are.
        tiers: usize,
        width: u32,
        height: u32,
    },
    /// The room's recording started, stopped or failed (`message` says why it failed).
    Recording {
        state: RecordingState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A moderator took this participant's audio out of the mix (or put it back); with
    /// `by_self`, the participant muted their own microphone.
    ParticipantMuted {
        participant_id: String,
        muted: bool,
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        by_self: bool,
    },
    /// You were removed from the room (by a moderator, or because the room was closed); the
    /// server closes the socket next. Do not reconnect on your own.
    Removed {
        reason: String,
    },
    /// The room lives on another node of the cluster: connect to `url` (a WebSocket URL for this
    /// room there) and send the same `join`. Sent instead of `joined`, or to everyone in a room
    /// that moved; the server closes this socket next (docs/protocol.md, "Several nodes").
    Redirect {
        url: String,
    },
    Pong,
    /// A chat message; after `chat_subscribe`, first every one the room kept, then each new one.
    Chat(Box<ChatEntry>),
    /// Your `file_offer` is accepted: send the file's bytes under this id.
    FileAccepted {
        file_id: u32,
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
    },
    /// Your `file_offer` is refused (too large, a bad name…), before any byte was sent.
    FileRefused {
        #[serde(default, rename = "ref", skip_serializing_if = "Option::is_none")]
        reference: Option<u32>,
        code: ErrorCode,
        message: String,
    },
    /// Someone is sharing a file (its bytes may still be arriving: see `file_progress`).
    FileOffered(Box<FileInfo>),
    /// How much of a file the server has received so far.
    FileProgress {
        file_id: u32,
        received: u64,
    },
    /// The whole file is on the server and can be fetched with `file_get`.
    FileReady {
        file_id: u32,
        /// Lower-case hex SHA-256 of the file, for the receiver to check.
        sha256: String,
    },
    /// The file will not become available (its sender left mid-upload, or sent bad data).
    FileFailed {
        file_id: u32,
        reason: String,
    },
    Error {
        code: ErrorCode,
        message: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParticipantInfo {
    pub id: String,
    pub name: String,
}

/// An ICE candidate as the browser's `RTCIceCandidateInit` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct IceCandidate {
    pub candidate: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_mid: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sdp_m_line_index: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username_fragment: Option<String>,
}

/// A STUN/TURN server the client should use, as `RTCIceServer` spells it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IceServer {
    pub urls: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub username: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credential: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layout {
    /// Which layout is on: grid, speaker, pin, pip, custom, or a name from the server's file.
    #[serde(default)]
    pub layout: String,
    pub width: u32,
    pub height: u32,
    /// Everyone drawn, in joining order (participants a layout hides are not listed).
    pub tiles: Vec<Tile>,
}

/// One participant's rectangle in the composite, in pixels of the composite.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tile {
    pub participant_id: String,
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
    /// Tiles with a higher z are drawn over those with a lower one (a picture-in-picture's
    /// corner); a click lands on the highest tile under it.
    #[serde(default)]
    pub z: u32,
}

/// Why the server refused a message. Clients branch on these, so they are part of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Not JSON, or JSON that is not one of the messages above.
    BadMessage,
    /// A well-formed message that is not allowed in the current state (e.g. an offer before join).
    OutOfOrder,
    InvalidRoomName,
    InvalidDisplayName,
    RoomFull,
    /// The server holds as many rooms as it can (`--max-rooms`); an existing room can still be
    /// joined. The message says what to do.
    ServerFull,
    /// The SDP could not be applied (unparsable, or nothing we can receive or send).
    BadSdp,
    BadCandidate,
    /// A join token is required, or the one given was refused (the message says why).
    Unauthorized,
    /// The participant may not do this (e.g. record without a token that allows it).
    Forbidden,
    /// The request clashes with the room's state (e.g. starting a recording that already runs).
    Conflict,
    /// The server could not do what was asked for a reason of its own; the message says which.
    Internal,
    /// Too many messages too fast: this one was dropped.
    RateLimited,
    /// The file is larger than the server accepts, alone or with the room's other files.
    FileTooLarge,
    /// No file with that id is shared in this room (or it is not ready yet).
    UnknownFile,
    /// A layout that cannot be drawn (unknown name, a region outside the frame, someone not in
    /// the room…); the message says what is wrong.
    BadLayout,
    /// The cluster's room registry (Redis) cannot be reached, or no node has room for a new
    /// room: rooms already open can be joined, new ones cannot for now. Try again later.
    ClusterUnavailable,
    /// A camera declared a picture larger than the server decodes (1920×1080, either way up);
    /// its frames are dropped until a keyframe of an accepted size.
    VideoTooLarge,
}

impl ServerMessage {
    pub fn error(code: ErrorCode, message: impl Into<String>) -> Self {
        ServerMessage::Error {
            code,
            message: message.into(),
        }
    }

    /// Chat and file messages: they go where the participant subscribed to them.
    pub fn is_sharing(&self) -> bool {
        matches!(
            self,
            ServerMessage::Chat(_)
                | ServerMessage::FileAccepted { .. }
                | ServerMessage::FileRefused { .. }
                | ServerMessage::FileOffered(_)
                | ServerMessage::FileProgress { .. }
                | ServerMessage::FileReady { .. }
                | ServerMessage::FileFailed { .. }
        )
    }
}

impl ClientMessage {
    /// The messages a data channel may carry: chat and files, and keep-alives. Everything else
    /// (joining, negotiating) belongs to the WebSocket.
    pub fn belongs_on_data_channel(&self) -> bool {
        matches!(
            self,
            ClientMessage::ChatSubscribe {}
                | ClientMessage::Chat { .. }
                | ClientMessage::FileOffer { .. }
                | ClientMessage::FileGet { .. }
                | ClientMessage::Ping {}
        )
    }
}

/// Parses one text frame from a client. The error is already the reply to send.
pub fn parse_client_message(text: &str) -> Result<ClientMessage, ServerMessage> {
    if text.len() > MAX_MESSAGE_BYTES {
        return Err(ServerMessage::error(
            ErrorCode::BadMessage,
            format!(
                "message of {} bytes exceeds {MAX_MESSAGE_BYTES}",
                text.len()
            ),
        ));
    }
    serde_json::from_str(text).map_err(|e| {
        // serde's message names the offending field or type without echoing the whole input back.
        ServerMessage::error(ErrorCode::BadMessage, format!("unreadable message: {e}"))
    })
}

/// Why a name or text a person typed (room, display name, chat message, file name) was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TextError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {0} characters")]
    TooLong(usize),
    #[error("contains a character that is not allowed: {0:?}")]
    BadCharacter(char),
}

/// The checks every text shown to people shares: something is left after trimming, at most `max`
/// characters, and no control character (they could forge log lines or hide text) but those in
/// `allowed`. Returns the trimmed text.
pub(crate) fn checked_text<'a>(
    text: &'a str,
    max: usize,
    allowed: &[char],
) -> Result<&'a str, TextError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(TextError::Empty);
    }
    if trimmed.chars().count() > max {
        return Err(TextError::TooLong(max));
    }
    match trimmed
        .chars()
        .find(|c| c.is_control() && !allowed.contains(c))
    {
        Some(c) => Err(TextError::BadCharacter(c)),
        None => Ok(trimmed),
    }
}

/// Room names end up in URLs, log lines and recording file names, so they are a strict slug:
/// ASCII letters, digits, `-` and `_`. No dots, so no `..`, no hidden files, no extensions.
pub fn validate_room_name(name: &str) -> Result<(), TextError> {
    if name.is_empty() {
        return Err(TextError::Empty);
    }
    if name.len() > MAX_ROOM_NAME_LEN {
        return Err(TextError::TooLong(MAX_ROOM_NAME_LEN));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(TextError::BadCharacter(c)),
        None => Ok(()),
    }
}

/// Display names are shown to people, so any script is welcome; control characters (which could
/// forge log lines or break the tile text) are not. Returns the trimmed name.
pub fn validate_display_name(name: &str) -> Result<String, TextError> {
    checked_text(name, MAX_DISPLAY_NAME_LEN, &[]).map(str::to_string)
}

#[cfg(test)]
mod tests;
