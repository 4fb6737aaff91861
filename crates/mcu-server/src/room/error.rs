//! What a room answers when it cannot do what was asked: one type for every command, so the
//! session (a protocol error) and the admin API (an HTTP status) each translate it in one place.

use super::sharing::FileRefusal;
use crate::ids::ParticipantId;
use crate::protocol::{ErrorCode, ServerMessage};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RoomError {
    /// The room closed (or was closing) before it could answer. A join meeting a closing room
    /// retries with a fresh one.
    #[error("the room has closed")]
    Closed,
    #[error("the room is full ({0} participants)")]
    Full(usize),
    #[error("the room has as many watchers as it takes ({0}, --max-watchers)")]
    WatchersFull(usize),
    #[error("this server already holds its limit of {0} rooms: join an existing room, or try again later or on another server")]
    ServerFull(usize),
    /// The client's address hit a per-address limit (`--max-new-rooms-per-address`).
    #[error(transparent)]
    RateLimited(#[from] crate::admission::Refusal),
    #[error("{0} is not in the room")]
    NotHere(ParticipantId),
    /// The media graph could not take a participant or a track.
    #[error("{0}")]
    Media(String),
    #[error("the room is already being recorded")]
    AlreadyRecording,
    #[error("the room is not being recorded")]
    NotRecording,
    #[error("the recording could not start: {0}")]
    RecordingFailed(String),
    /// A shared file was refused before any of its bytes was sent.
    #[error(transparent)]
    File(#[from] FileRefusal),
    #[error("no file {0} is ready in this room")]
    UnknownFile(u32),
    /// A layout request that cannot be drawn; the text says why.
    #[error("layout refused: {0}")]
    Layout(#[from] crate::layout::LayoutError),
    /// The room lives on another node of the cluster, reached at `node_url`.
    #[error("room {room} is on node {node_url}")]
    Elsewhere { node_url: String, room: String },
    /// The cluster cannot say where the room lives, or has no node for a new one.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

impl RoomError {
    /// The protocol's code for this error, which clients branch on.
    pub fn code(&self) -> ErrorCode {
        match self {
            RoomError::Full(_) | RoomError::WatchersFull(_) => ErrorCode::RoomFull,
            RoomError::ServerFull(_) => ErrorCode::ServerFull,
            RoomError::RateLimited(_) => ErrorCode::RateLimited,
            RoomError::NotHere(_) => ErrorCode::OutOfOrder,
            RoomError::AlreadyRecording | RoomError::NotRecording => ErrorCode::Conflict,
            RoomError::File(refusal) => refusal.code(),
            RoomError::UnknownFile(_) => ErrorCode::UnknownFile,
            RoomError::Layout(_) => ErrorCode::BadLayout,
            RoomError::Cluster(_) => ErrorCode::ClusterUnavailable,
            // Never sent as an error: `to_message` makes it a redirect.
            RoomError::Elsewhere { .. } => ErrorCode::Internal,
            RoomError::Closed | RoomError::Media(_) | RoomError::RecordingFailed(_) => {
                ErrorCode::Internal
            }
        }
    }

    /// The error as a participant is told it.
    pub fn to_message(&self) -> ServerMessage {
        if let RoomError::Elsewhere { node_url, room } = self {
            return ServerMessage::Redirect {
                url: crate::cluster::websocket_url(node_url, room),
            };
        }
        ServerMessage::error(self.code(), self.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::room::sharing::OfferError;

    #[test]
    fn each_error_carries_the_code_clients_branch_on() {
        assert_eq!(RoomError::Full(25).code(), ErrorCode::RoomFull);
        assert_eq!(RoomError::AlreadyRecording.code(), ErrorCode::Conflict);
        assert_eq!(RoomError::ServerFull(3).code(), ErrorCode::ServerFull);
        let too_large = RoomError::from(FileRefusal::Limit(OfferError::FileTooLarge {
            size: 2,
            limit: 1,
        }));
        assert_eq!(too_large.code(), ErrorCode::FileTooLarge);
        let empty = RoomError::from(FileRefusal::Limit(OfferError::Empty));
        assert_eq!(empty.code(), ErrorCode::BadMessage);
        assert_eq!(
            RoomError::Full(25).to_message(),
            ServerMessage::error(ErrorCode::RoomFull, "the room is full (25 participants)")
        );
    }
}
