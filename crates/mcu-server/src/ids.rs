//! Identifiers as types, so a room name is never passed where a participant id belongs.

use std::fmt;
use std::str::FromStr;

use crate::protocol::{validate_room_name, TextError};

/// A participant, unique within its room for the room's lifetime (ids are never reused, so a
/// late event about someone who left cannot be mistaken for a newcomer). Shown as `p7`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ParticipantId(pub u64);

impl fmt::Display for ParticipantId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "p{}", self.0)
    }
}

impl FromStr for ParticipantId {
    type Err = ();
    fn from_str(s: &str) -> Result<Self, ()> {
        s.strip_prefix('p')
            .and_then(|n| n.parse().ok())
            .map(ParticipantId)
            .ok_or(())
    }
}

/// A validated room name (see `protocol::validate_room_name`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomId(String);

impl RoomId {
    pub fn new(name: &str) -> Result<Self, TextError> {
        validate_room_name(name)?;
        Ok(RoomId(name.to_string()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RoomId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn participant_ids_round_trip_through_text() {
        assert_eq!(ParticipantId(7).to_string(), "p7");
        assert_eq!("p7".parse::<ParticipantId>(), Ok(ParticipantId(7)));
        assert!("7".parse::<ParticipantId>().is_err());
        assert!("px".parse::<ParticipantId>().is_err());
    }

    #[test]
    fn room_ids_are_validated() {
        assert!(RoomId::new("daily").is_ok());
        assert!(RoomId::new("../x").is_err());
    }
}
