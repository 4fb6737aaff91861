//! The signalling state of one WebSocket session, as a pure state machine: it takes a parsed
//! client message and says what the session should do, or which error to send back. The session
//! task does the I/O; this module decides, so every ordering rule is tested without a socket.
//!
//! Only the client offers (first and to renegotiate): the server answers, and never sends an
//! offer of its own, so an `answer` from a client is always out of order.

use crate::auth::Secret;
use crate::protocol::{
    validate_display_name, ClientMessage, ErrorCode, IceCandidate, RecordAction, ServerMessage,
};

/// Candidates that arrive before the offer they belong to are held until it is applied. Browsers
/// gather a handful per interface; 64 is generous and stops a client from growing our memory.
pub const MAX_EARLY_CANDIDATES: usize = 64;
/// Candidates one session may send in all. A browser sends a handful per network interface and
/// per renegotiation (about 10 on a laptop with VPN and IPv6); each one makes webrtc-rs start
/// connectivity checks, and 20,000 trickled ones cost 67 MB and a core for 30 s after the client
/// left. Past the cap one error says so and the rest are dropped unread.
pub const MAX_CANDIDATES: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingJoin,
    Joined,
    Left,
}

/// What the session must do for a message.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    Join {
        name: String,
        token: Option<Secret>,
    },
    ApplyOffer {
        sdp: String,
    },
    AddCandidate(IceCandidate),
    /// The client finished gathering; nothing to do for a server with no pending checks of its own.
    EndOfCandidates,
    /// The candidate was kept for later; nothing to do now.
    Buffered,
    /// Past the session's cap of candidates: dropped without a reply (the client was told once).
    Ignored,
    Leave,
    Record(RecordAction),
    /// A layout for the room (checked there, as is the permission).
    SetLayout(crate::protocol::layout::LayoutRequest),
    SelfMute(bool),
    /// A chat or file request, for the room.
    Share(Share),
    Reply(ServerMessage),
}

/// A chat or file request, as the session hands it on.
#[derive(Debug, Clone, PartialEq)]
pub enum Share {
    Subscribe,
    Chat(String),
    Offer {
        name: String,
        size: u64,
        mime: Option<String>,
        reference: Option<u32>,
    },
    Get(u32),
}

#[derive(Debug)]
pub struct Signalling {
    phase: Phase,
    has_remote_description: bool,
    early_candidates: Vec<IceCandidate>,
    /// Every candidate this session sent, taken or not.
    candidates_seen: usize,
    /// The client was told that candidates past `MAX_EARLY_CANDIDATES` are dropped.
    early_overflow_told: bool,
}

impl Default for Signalling {
    fn default() -> Self {
        Self::new()
    }
}

impl Signalling {
    pub fn new() -> Self {
        Signalling {
            phase: Phase::AwaitingJoin,
            has_remote_description: false,
            early_candidates: Vec::new(),
            candidates_seen: 0,
            early_overflow_told: false,
        }
    }

    /// Decides what a client message means now. `Err` is the error reply for the client; the
    /// session carries on after it.
    pub fn on_message(&mut self, message: ClientMessage) -> Result<Action, ServerMessage> {
        use ClientMessage as M;
        match (self.phase, message) {
            (_, M::Ping {}) => Ok(Action::Reply(ServerMessage::Pong)),
            (Phase::Left, _) => Err(out_of_order("this session has left the room")),
            (Phase::AwaitingJoin, M::Join { name, token }) => {
                let name = validate_display_name(&name).map_err(|e| {
                    ServerMessage::error(ErrorCode::InvalidDisplayName, format!("display name {e}"))
                })?;
                Ok(Action::Join { name, token })
            }
            (Phase::AwaitingJoin, M::Leave {}) => {
                self.phase = Phase::Left;
                Ok(Action::Leave)
            }
            (Phase::AwaitingJoin, _) => Err(out_of_order("send join first")),
            (Phase::Joined, M::Join { .. }) => Err(out_of_order("already joined")),
            (Phase::Joined, M::Offer { sdp }) => Ok(Action::ApplyOffer { sdp }),
            (Phase::Joined, M::Answer { .. }) => Err(out_of_order(
                "the server never offers, so there is nothing to answer: send an offer",
            )),
            (Phase::Joined, M::Candidate { candidate: None }) => Ok(Action::EndOfCandidates),
            (Phase::Joined, M::Candidate { candidate: Some(c) }) => {
                self.candidates_seen += 1;
                if self.candidates_seen > MAX_CANDIDATES + 1 {
                    Ok(Action::Ignored)
                } else if self.candidates_seen == MAX_CANDIDATES + 1 {
                    Err(ServerMessage::error(
                        ErrorCode::BadCandidate,
                        format!("more than {MAX_CANDIDATES} candidates in one session; the rest are ignored"),
                    ))
                } else if self.has_remote_description {
                    Ok(Action::AddCandidate(c))
                } else if self.early_candidates.len() < MAX_EARLY_CANDIDATES {
                    self.early_candidates.push(c);
                    Ok(Action::Buffered)
                } else if !self.early_overflow_told {
                    self.early_overflow_told = true;
                    Err(ServerMessage::error(
                        ErrorCode::BadCandidate,
                        format!("more than {MAX_EARLY_CANDIDATES} candidates before an offer; the rest are ignored"),
                    ))
                } else {
                    Ok(Action::Ignored)
                }
            }
            (Phase::Joined, M::Leave {}) => {
                self.phase = Phase::Left;
                Ok(Action::Leave)
            }
            (Phase::Joined, M::Record { action }) => Ok(Action::Record(action)),
            (Phase::Joined, M::ChatSubscribe {}) => Ok(Action::Share(Share::Subscribe)),
            (Phase::Joined, M::Chat { text }) => Ok(Action::Share(Share::Chat(text))),
            (
                Phase::Joined,
                M::FileOffer {
                    name,
                    size,
                    mime,
                    reference,
                },
            ) => Ok(Action::Share(Share::Offer {
                name,
                size,
                mime,
                reference,
            })),
            (Phase::Joined, M::FileGet { file_id }) => Ok(Action::Share(Share::Get(file_id))),
            (Phase::Joined, M::SetLayout(request)) => Ok(Action::SetLayout(request)),
            (Phase::Joined, M::SelfMute { muted }) => Ok(Action::SelfMute(muted)),
        }
    }

    /// The room accepted the join.
    pub fn joined(&mut self) {
        self.phase = Phase::Joined;
    }

    /// The client's offer was applied: the candidates that waited for it can now be added.
    pub fn remote_description_applied(&mut self) -> Vec<IceCandidate> {
        self.has_remote_description = true;
        std::mem::take(&mut self.early_candidates)
    }
}

fn out_of_order(message: &str) -> ServerMessage {
    ServerMessage::error(ErrorCode::OutOfOrder, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn candidate(n: u32) -> IceCandidate {
        IceCandidate {
            candidate: format!("candidate:{n} 1 udp 1 127.0.0.1 {n} typ host"),
            sdp_mid: Some("0".into()),
            sdp_m_line_index: Some(0),
            username_fragment: None,
        }
    }

    fn join(name: &str) -> ClientMessage {
        ClientMessage::Join {
            name: name.into(),
            token: None,
        }
    }

    fn code(r: Result<Action, ServerMessage>) -> ErrorCode {
        match r {
            Err(ServerMessage::Error { code, .. }) => code,
            other => panic!("expected an error, got {other:?}"),
        }
    }

    #[test]
    fn nothing_but_join_or_ping_is_accepted_before_join() {
        let mut s = Signalling::new();
        assert_eq!(
            code(s.on_message(ClientMessage::Offer { sdp: "v=0".into() })),
            ErrorCode::OutOfOrder
        );
        assert_eq!(
            code(s.on_message(ClientMessage::Record {
                action: RecordAction::Start
            })),
            ErrorCode::OutOfOrder
        );
        assert_eq!(
            code(s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(1))
            })),
            ErrorCode::OutOfOrder
        );
        for early in [
            ClientMessage::ChatSubscribe {},
            ClientMessage::Chat { text: "hi".into() },
            ClientMessage::FileGet { file_id: 1 },
        ] {
            assert_eq!(code(s.on_message(early)), ErrorCode::OutOfOrder);
        }
        assert_eq!(
            s.on_message(ClientMessage::Ping {}),
            Ok(Action::Reply(ServerMessage::Pong))
        );
        assert_eq!(
            s.on_message(join(" Ada ")),
            Ok(Action::Join {
                name: "Ada".into(),
                token: None
            })
        );
    }

    #[test]
    fn a_bad_display_name_is_refused_and_the_session_may_try_again() {
        let mut s = Signalling::new();
        assert_eq!(code(s.on_message(join(""))), ErrorCode::InvalidDisplayName);
        assert!(s.on_message(join("Ada")).is_ok());
    }

    #[test]
    fn joining_twice_is_out_of_order() {
        let mut s = Signalling::new();
        s.joined();
        assert_eq!(code(s.on_message(join("Ada"))), ErrorCode::OutOfOrder);
    }

    #[test]
    fn chat_and_file_requests_pass_to_the_room_once_joined() {
        let mut s = Signalling::new();
        s.joined();
        assert_eq!(
            s.on_message(ClientMessage::Chat { text: "hi".into() }),
            Ok(Action::Share(Share::Chat("hi".into())))
        );
        assert_eq!(
            s.on_message(ClientMessage::FileOffer {
                name: "a.txt".into(),
                size: 3,
                mime: None,
                reference: Some(1)
            }),
            Ok(Action::Share(Share::Offer {
                name: "a.txt".into(),
                size: 3,
                mime: None,
                reference: Some(1)
            }))
        );
        assert_eq!(
            s.on_message(ClientMessage::ChatSubscribe {}),
            Ok(Action::Share(Share::Subscribe))
        );
    }

    #[test]
    fn early_candidates_wait_for_the_offer_then_come_out_in_order() {
        let mut s = Signalling::new();
        s.joined();
        for n in 0..3 {
            assert_eq!(
                s.on_message(ClientMessage::Candidate {
                    candidate: Some(candidate(n))
                }),
                Ok(Action::Buffered)
            );
        }
        assert_eq!(
            s.on_message(ClientMessage::Offer { sdp: "v=0".into() }),
            Ok(Action::ApplyOffer { sdp: "v=0".into() })
        );
        let held = s.remote_description_applied();
        assert_eq!(held, vec![candidate(0), candidate(1), candidate(2)]);
        assert_eq!(
            s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(9))
            }),
            Ok(Action::AddCandidate(candidate(9)))
        );
    }

    #[test]
    fn early_candidates_are_bounded() {
        let mut s = Signalling::new();
        s.joined();
        for n in 0..MAX_EARLY_CANDIDATES as u32 {
            s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(n)),
            })
            .unwrap();
        }
        assert_eq!(
            code(s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(999))
            })),
            ErrorCode::BadCandidate
        );
        // Told once; the rest are dropped quietly.
        assert_eq!(
            s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(1000))
            }),
            Ok(Action::Ignored)
        );
    }

    #[test]
    fn a_candidate_flood_is_cut_off_at_the_cap_with_one_error() {
        let mut s = Signalling::new();
        s.joined();
        s.remote_description_applied();
        for n in 0..MAX_CANDIDATES as u32 {
            assert!(matches!(
                s.on_message(ClientMessage::Candidate {
                    candidate: Some(candidate(n))
                }),
                Ok(Action::AddCandidate(_))
            ));
        }
        assert_eq!(
            code(s.on_message(ClientMessage::Candidate {
                candidate: Some(candidate(1000))
            })),
            ErrorCode::BadCandidate
        );
        for n in 0..10_000 {
            assert_eq!(
                s.on_message(ClientMessage::Candidate {
                    candidate: Some(candidate(n))
                }),
                Ok(Action::Ignored)
            );
        }
        // The end-of-candidates marker and everything else still work.
        assert_eq!(
            s.on_message(ClientMessage::Candidate { candidate: None }),
            Ok(Action::EndOfCandidates)
        );
    }

    #[test]
    fn only_the_client_offers_so_an_answer_is_out_of_order() {
        let mut s = Signalling::new();
        s.joined();
        assert_eq!(
            code(s.on_message(ClientMessage::Answer { sdp: "v=0".into() })),
            ErrorCode::OutOfOrder
        );
        assert!(matches!(
            s.on_message(ClientMessage::Offer { sdp: "v=0".into() }),
            Ok(Action::ApplyOffer { .. })
        ));
        s.remote_description_applied();
        // Renegotiation is the client's offer again.
        assert!(matches!(
            s.on_message(ClientMessage::Offer { sdp: "v=0".into() }),
            Ok(Action::ApplyOffer { .. })
        ));
    }

    #[test]
    fn after_leave_everything_but_ping_is_refused() {
        let mut s = Signalling::new();
        s.joined();
        assert_eq!(s.on_message(ClientMessage::Leave {}), Ok(Action::Leave));
        assert_eq!(
            code(s.on_message(ClientMessage::Offer { sdp: "v=0".into() })),
            ErrorCode::OutOfOrder
        );
    }
}
