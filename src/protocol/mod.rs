//! The signalling wire protocol: every message a client and the server exchange over the WebSocket
//! (and, for chat and files, over the data channels: see `sharing`), the error codes, and the
//! validation of names. No I/O lives here, so the browser client, the synthetic participant and
//! the server can all be checked against this one definition. docs/protocol.md shows one example
//! of each message.

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
    /// An SDP answer to an offer the server sent.
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
    },
    /// Asks for a shared file's bytes, which arrive as binary frames.
    FileGet { file_id: u32 },
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
    },
    Offer {
        sdp: String,
    },
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
    /// The room's recording started, stopped or failed (`message` says why it failed).
    Recording {
        state: RecordingState,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        message: Option<String>,
    },
    /// A moderator took this participant's audio out of the mix (or put it back).
    ParticipantMuted {
        participant_id: String,
        muted: bool,
    },
    /// You were removed from the room (by a moderator, or because the room was closed); the
    /// server closes the socket next. Do not reconnect on your own.
    Removed {
        reason: String,
    },
    Pong,
    /// A chat message; after `chat_subscribe`, first every one the room kept, then each new one.
    Chat(Box<ChatEntry>),
    /// Your `file_offer` is accepted: send the file's bytes under this id.
    FileAccepted {
        file_id: u32,
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
    pub width: u32,
    pub height: u32,
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

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("is longer than {0} characters")]
    TooLong(usize),
    #[error("contains a character that is not allowed: {0:?}")]
    BadCharacter(char),
}

/// Room names end up in URLs, log lines and recording file names, so they are a strict slug:
/// ASCII letters, digits, `-` and `_`. No dots, so no `..`, no hidden files, no extensions.
pub fn validate_room_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_ROOM_NAME_LEN {
        return Err(NameError::TooLong(MAX_ROOM_NAME_LEN));
    }
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(NameError::BadCharacter(c)),
        None => Ok(()),
    }
}

/// Display names are shown to people, so any script is welcome; control characters (which could
/// forge log lines or break the tile text) are not. Returns the trimmed name.
pub fn validate_display_name(name: &str) -> Result<String, NameError> {
    let trimmed = name.trim();
    if trimmed.is_empty() {
        return Err(NameError::Empty);
    }
    if trimmed.chars().count() > MAX_DISPLAY_NAME_LEN {
        return Err(NameError::TooLong(MAX_DISPLAY_NAME_LEN));
    }
    if let Some(c) = trimmed.chars().find(|c| c.is_control()) {
        return Err(NameError::BadCharacter(c));
    }
    Ok(trimmed.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn join_reads_from_the_documented_json() {
        let m = parse_client_message(r#"{"type":"join","name":"Ada"}"#).unwrap();
        assert_eq!(
            m,
            ClientMessage::Join {
                name: "Ada".into(),
                token: None
            }
        );
    }

    #[test]
    fn a_join_token_reads_from_json_but_never_shows_in_debug_output() {
        let m = parse_client_message(
            r#"{"type":"join","name":"Ada","token":"eyJhbGciOiJIUzI1NiJ9.e30.c2lnbmF0dXJl"}"#,
        )
        .unwrap();
        match &m {
            ClientMessage::Join { token: Some(t), .. } => assert!(t.expose().starts_with("eyJ")),
            other => panic!("unexpected {other:?}"),
        }
        assert!(!format!("{m:?}").contains("eyJ"));
        assert_eq!(
            parse_client_message(r#"{"type":"record","action":"start"}"#).unwrap(),
            ClientMessage::Record {
                action: RecordAction::Start
            }
        );
    }

    #[test]
    fn messages_without_fields_read_from_their_type_alone() {
        assert_eq!(
            parse_client_message(r#"{"type":"leave"}"#).unwrap(),
            ClientMessage::Leave {}
        );
        assert_eq!(
            serde_json::to_string(&ClientMessage::Ping {}).unwrap(),
            r#"{"type":"ping"}"#
        );
    }

    #[test]
    fn candidate_uses_browser_field_names_and_null_ends_gathering() {
        let m = parse_client_message(
            r#"{"type":"candidate","candidate":{"candidate":"candidate:1 1 udp 1 127.0.0.1 5000 typ host","sdpMid":"0","sdpMLineIndex":0}}"#,
        )
        .unwrap();
        match m {
            ClientMessage::Candidate { candidate: Some(c) } => {
                assert_eq!(c.sdp_mid.as_deref(), Some("0"));
                assert_eq!(c.sdp_m_line_index, Some(0));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(
            parse_client_message(r#"{"type":"candidate","candidate":null}"#).unwrap(),
            ClientMessage::Candidate { candidate: None }
        );
    }

    #[test]
    fn malformed_and_unknown_messages_become_bad_message_errors() {
        for text in [
            "",
            "not json",
            "{}",
            "[]",
            r#"{"type":"dance"}"#,
            r#"{"type":"join"}"#,
            r#"{"type":"join","name":5}"#,
            r#"{"type":"offer","sdp":"x","extra":1}"#,
            r#"{"type":"ping","extra":true}"#,
            r#"{"type":"leave","now":1}"#,
            "\u{0}\u{1}",
        ] {
            match parse_client_message(text) {
                Err(ServerMessage::Error { code, .. }) => assert_eq!(code, ErrorCode::BadMessage),
                other => panic!("{text:?} gave {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_text_is_refused_before_parsing() {
        let big = format!(
            r#"{{"type":"offer","sdp":"{}"}}"#,
            "a".repeat(MAX_MESSAGE_BYTES)
        );
        assert!(parse_client_message(&big).is_err());
    }

    #[test]
    fn server_messages_serialise_with_snake_case_tags() {
        let json = serde_json::to_value(ServerMessage::error(ErrorCode::OutOfOrder, "join first"))
            .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"error","code":"out_of_order","message":"join first"})
        );
        let json = serde_json::to_value(ServerMessage::Layout(Layout {
            width: 1280,
            height: 720,
            tiles: vec![Tile {
                participant_id: "p1".into(),
                x: 0,
                y: 0,
                width: 1280,
                height: 720,
            }],
        }))
        .unwrap();
        assert_eq!(json["type"], "layout");
        assert_eq!(json["tiles"][0]["participant_id"], "p1");
        let json = serde_json::to_value(ServerMessage::ParticipantLeft {
            participant_id: "p2".into(),
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"participant_left","participant_id":"p2"})
        );
    }

    #[test]
    fn every_server_message_round_trips() {
        let messages = vec![
            ServerMessage::Joined {
                participant_id: "p1".into(),
                room: "r".into(),
                participants: vec![ParticipantInfo {
                    id: "p0".into(),
                    name: "Zoë".into(),
                }],
                ice_servers: vec![IceServer {
                    urls: vec!["stun:stun.example.org".into()],
                    username: None,
                    credential: None,
                }],
                can_record: true,
                recording: false,
                max_file_size: 50_000_000,
            },
            ServerMessage::Chat(Box::new(ChatEntry {
                id: 7,
                from: "p2".into(),
                name: "Zoë".into(),
                at: "2026-12-01T10:00:00Z".into(),
                text: "see https://example.org <b>".into(),
            })),
            ServerMessage::FileAccepted { file_id: 3 },
            ServerMessage::FileOffered(Box::new(FileInfo {
                file_id: 3,
                name: "notes.txt".into(),
                size: 1234,
                mime: Some("text/plain".into()),
                from: "p2".into(),
                from_name: "Zoë".into(),
                at: "2026-12-01T10:00:00Z".into(),
            })),
            ServerMessage::FileProgress {
                file_id: 3,
                received: 1000,
            },
            ServerMessage::FileReady {
                file_id: 3,
                sha256: "ab".repeat(32),
            },
            ServerMessage::FileFailed {
                file_id: 3,
                reason: "the sender left".into(),
            },
            ServerMessage::Recording {
                state: RecordingState::Failed,
                message: Some("disk full".into()),
            },
            ServerMessage::ParticipantMuted {
                participant_id: "p2".into(),
                muted: true,
            },
            ServerMessage::Removed {
                reason: "removed by a moderator".into(),
            },
            ServerMessage::Offer { sdp: "v=0".into() },
            ServerMessage::Answer { sdp: "v=0".into() },
            ServerMessage::Candidate { candidate: None },
            ServerMessage::Pong,
        ];
        for m in messages {
            let text = serde_json::to_string(&m).unwrap();
            let back: ServerMessage = serde_json::from_str(&text).unwrap();
            assert_eq!(back, m);
        }
    }

    #[test]
    fn chat_and_file_messages_read_from_the_documented_json() {
        assert_eq!(
            parse_client_message(r#"{"type":"chat_subscribe"}"#).unwrap(),
            ClientMessage::ChatSubscribe {}
        );
        assert_eq!(
            parse_client_message(r#"{"type":"chat","text":"hello"}"#).unwrap(),
            ClientMessage::Chat {
                text: "hello".into()
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"file_offer","name":"a.pdf","size":10}"#).unwrap(),
            ClientMessage::FileOffer {
                name: "a.pdf".into(),
                size: 10,
                mime: None
            }
        );
        assert_eq!(
            parse_client_message(r#"{"type":"file_get","file_id":2}"#).unwrap(),
            ClientMessage::FileGet { file_id: 2 }
        );
        for bad in [
            r#"{"type":"file_offer","name":"a","size":-1}"#,
            r#"{"type":"file_get","file_id":"f2"}"#,
            r#"{"type":"chat","text":5}"#,
        ] {
            assert!(parse_client_message(bad).is_err(), "{bad}");
        }
        // A chat entry is flat, like the layout: its fields sit beside the type.
        let json = serde_json::to_value(ServerMessage::FileProgress {
            file_id: 1,
            received: 5,
        })
        .unwrap();
        assert_eq!(
            json,
            serde_json::json!({"type":"file_progress","file_id":1,"received":5})
        );
        assert!(ServerMessage::FileAccepted { file_id: 1 }.is_sharing());
        assert!(!ServerMessage::Pong.is_sharing());
        assert!(ClientMessage::Chat { text: "x".into() }.belongs_on_data_channel());
        assert!(!ClientMessage::Leave {}.belongs_on_data_channel());
    }

    #[test]
    fn room_names_are_strict_slugs() {
        assert!(validate_room_name("standup-2024_q1").is_ok());
        assert_eq!(validate_room_name(""), Err(NameError::Empty));
        assert_eq!(
            validate_room_name("../etc"),
            Err(NameError::BadCharacter('.'))
        );
        assert_eq!(validate_room_name("a/b"), Err(NameError::BadCharacter('/')));
        assert_eq!(
            validate_room_name("café"),
            Err(NameError::BadCharacter('é'))
        );
        assert_eq!(
            validate_room_name(&"x".repeat(MAX_ROOM_NAME_LEN + 1)),
            Err(NameError::TooLong(MAX_ROOM_NAME_LEN))
        );
    }

    #[test]
    fn display_names_allow_any_script_but_no_control_characters() {
        assert_eq!(validate_display_name("  Zoë 李  ").unwrap(), "Zoë 李");
        assert_eq!(validate_display_name("   "), Err(NameError::Empty));
        assert_eq!(
            validate_display_name("a\nb"),
            Err(NameError::BadCharacter('\n'))
        );
        assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN)).is_ok());
        assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN + 1)).is_err());
    }
}
