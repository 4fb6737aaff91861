//! The chat and file-sharing half of the protocol: the messages' payloads, what makes a chat
//! text or a file name acceptable, and the binary frames that carry a file's bytes. No I/O.
//!
//! Chat and file control messages are ordinary protocol messages (see `ClientMessage::Chat` and
//! friends). They travel on the participant's `chat` data channel once it is open, or on the
//! WebSocket when it cannot open; a file's bytes travel as binary frames on the `files` data
//! channel (or as binary WebSocket frames in that fallback), each `[file id: u32 BE][bytes]`.

use serde::{Deserialize, Serialize};

use super::{checked_text, TextError};

/// Longest chat message, in characters: a paragraph, not a document (that is what files are for).
pub const MAX_CHAT_CHARS: usize = 2000;
/// Longest file name shown, in characters (common file systems stop at 255 bytes).
pub const MAX_FILE_NAME_CHARS: usize = 255;
/// Longest media type accepted for a file (`application/vnd…` names run long, not this long).
pub const MAX_MIME_CHARS: usize = 127;
/// Bytes of a file per binary frame. 16 KiB is the size every browser's data channel sends and
/// receives without fragmenting trouble, and small enough that a frame never holds up the
/// channel's other messages for long.
pub const FILE_CHUNK_BYTES: usize = 16 * 1024;
/// The frame header: the file's id.
pub const CHUNK_HEADER_BYTES: usize = 4;
/// The largest message the server reads whole on a data channel: webrtc-rs reads into a buffer
/// of this size (its `DATA_CHANNEL_BUFFER_SIZE`) and closes the channel on anything larger.
pub const DATA_CHANNEL_READ_LIMIT: usize = u16::MAX as usize;

/// One chat message as everyone in the room sees it. `id`s rise by one in the order the server
/// received the messages, which is the order everyone is shown them in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatEntry {
    pub id: u64,
    /// The sender's participant id.
    pub from: String,
    /// The sender's display name, as it was when they wrote.
    pub name: String,
    /// When the server received it, RFC 3339 UTC.
    pub at: String,
    pub text: String,
}

/// A file shared in the room, as everyone sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileInfo {
    pub file_id: u32,
    /// The name the sender gave, for display and as the name to save under. Never a path on the
    /// server: the server stores files under names of its own.
    pub name: String,
    pub size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mime: Option<String>,
    pub from: String,
    pub from_name: String,
    /// When the sender offered it, RFC 3339 UTC.
    pub at: String,
}

/// A chat text is shown as typed, line breaks and tabs included; other control characters (which
/// could forge log lines or hide text) are refused. Surrounding blank lines are trimmed.
pub fn validate_chat_text(text: &str) -> Result<String, TextError> {
    checked_text(text, MAX_CHAT_CHARS, &['\n', '\t']).map(str::to_string)
}

/// The name a file is shown under: only its last path component (a browser sends a bare name,
/// anything else could only be an attempt to look like a path), without control characters,
/// and not empty, `.` or `..`.
pub fn validate_file_name(name: &str) -> Result<String, TextError> {
    let last = name.rsplit(['/', '\\']).next().unwrap_or_default().trim();
    if last == "." || last == ".." {
        return Err(TextError::Empty);
    }
    checked_text(last, MAX_FILE_NAME_CHARS, &[]).map(str::to_string)
}

/// A media type such as `image/png`: the receiver's browser uses it for the saved file, so it
/// must look like one (`type/subtype`, token characters only).
pub fn validate_mime(mime: &str) -> Result<String, TextError> {
    let token = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "!#$&-^_.+".contains(c))
    };
    if mime.len() > MAX_MIME_CHARS {
        return Err(TextError::TooLong(MAX_MIME_CHARS));
    }
    match mime.split_once('/') {
        Some((kind, sub)) if token(kind) && token(sub) => Ok(mime.to_ascii_lowercase()),
        _ => Err(TextError::BadCharacter(
            mime.chars().find(|c| !c.is_ascii_graphic()).unwrap_or('/'),
        )),
    }
}

/// One binary frame of a file: `[file id: u32 big-endian][bytes]`.
pub fn encode_chunk(file_id: u32, bytes: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(CHUNK_HEADER_BYTES + bytes.len());
    frame.extend_from_slice(&file_id.to_be_bytes());
    frame.extend_from_slice(bytes);
    frame
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChunkError {
    #[error("a file frame needs a {CHUNK_HEADER_BYTES}-byte file id and at least one byte")]
    TooShort,
    #[error("a file frame carries at most {FILE_CHUNK_BYTES} bytes, this one {0}")]
    TooLong(usize),
}

/// Splits a binary frame into its file id and bytes.
pub fn decode_chunk(frame: &[u8]) -> Result<(u32, &[u8]), ChunkError> {
    if frame.len() <= CHUNK_HEADER_BYTES {
        return Err(ChunkError::TooShort);
    }
    let (head, bytes) = frame.split_at(CHUNK_HEADER_BYTES);
    if bytes.len() > FILE_CHUNK_BYTES {
        return Err(ChunkError::TooLong(bytes.len()));
    }
    let id = u32::from_be_bytes([head[0], head[1], head[2], head[3]]);
    Ok((id, bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_text_keeps_line_breaks_and_refuses_other_control_characters() {
        assert_eq!(
            validate_chat_text("  hi\nthere\t!  \n").unwrap(),
            "hi\nthere\t!"
        );
        assert_eq!(validate_chat_text(" \n "), Err(TextError::Empty));
        assert_eq!(
            validate_chat_text("beep\u{7}"),
            Err(TextError::BadCharacter('\u{7}'))
        );
        assert_eq!(
            validate_chat_text("fake\rline"),
            Err(TextError::BadCharacter('\r'))
        );
        assert!(validate_chat_text(&"é".repeat(MAX_CHAT_CHARS)).is_ok());
        assert_eq!(
            validate_chat_text(&"é".repeat(MAX_CHAT_CHARS + 1)),
            Err(TextError::TooLong(MAX_CHAT_CHARS))
        );
        // Markup is text like any other: the page shows it, never interprets it.
        assert_eq!(
            validate_chat_text("<script>x</script>").unwrap(),
            "<script>x</script>"
        );
    }

    #[test]
    fn file_names_lose_any_path_and_never_name_a_directory() {
        assert_eq!(validate_file_name("report.pdf").unwrap(), "report.pdf");
        assert_eq!(validate_file_name("../../etc/passwd").unwrap(), "passwd");
        assert_eq!(validate_file_name("C:\\Users\\x\\a.txt").unwrap(), "a.txt");
        for bad in ["", "..", ".", "dir/", "a/..", "  "] {
            assert_eq!(validate_file_name(bad), Err(TextError::Empty), "{bad:?}");
        }
        assert_eq!(
            validate_file_name("a\u{0}.txt"),
            Err(TextError::BadCharacter('\u{0}'))
        );
        assert!(validate_file_name(&"x".repeat(MAX_FILE_NAME_CHARS + 1)).is_err());
    }

    #[test]
    fn media_types_must_look_like_one() {
        assert_eq!(validate_mime("image/PNG").unwrap(), "image/png");
        assert!(validate_mime("application/vnd.oasis.opendocument.text").is_ok());
        for bad in ["", "png", "text/html; charset=utf-8", "a/b/c", "text/<x>"] {
            assert!(validate_mime(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn chunks_round_trip_and_bad_frames_are_refused() {
        let frame = encode_chunk(0x0102_0304, b"hello");
        assert_eq!(&frame[..4], &[1, 2, 3, 4]);
        assert_eq!(decode_chunk(&frame), Ok((0x0102_0304, &b"hello"[..])));
        assert_eq!(decode_chunk(&[0, 0, 0, 1]), Err(ChunkError::TooShort));
        assert_eq!(decode_chunk(&[]), Err(ChunkError::TooShort));
        let big = encode_chunk(1, &vec![0; FILE_CHUNK_BYTES + 1]);
        assert_eq!(
            decode_chunk(&big),
            Err(ChunkError::TooLong(FILE_CHUNK_BYTES + 1))
        );
        assert!(decode_chunk(&encode_chunk(1, &vec![0; FILE_CHUNK_BYTES])).is_ok());
    }
}
