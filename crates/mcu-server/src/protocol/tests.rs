//! The protocol read from and written as the documented JSON (docs/protocol.md).

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
    let json =
        serde_json::to_value(ServerMessage::error(ErrorCode::OutOfOrder, "join first")).unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type":"error","code":"out_of_order","message":"join first"})
    );
    let json = serde_json::to_value(ServerMessage::Layout(Layout {
        layout: "speaker".into(),
        width: 1280,
        height: 720,
        tiles: vec![Tile {
            participant_id: "p1".into(),
            x: 0,
            y: 0,
            width: 1280,
            height: 720,
            z: 0,
        }],
    }))
    .unwrap();
    assert_eq!(json["type"], "layout");
    assert_eq!(json["layout"], "speaker");
    assert_eq!(json["tiles"][0]["participant_id"], "p1");
    let json = serde_json::to_value(ServerMessage::ActiveSpeaker {
        participant_id: "p2".into(),
    })
    .unwrap();
    assert_eq!(
        json,
        serde_json::json!({"type":"active_speaker","participant_id":"p2"})
    );
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
            can_set_layout: true,
        },
        ServerMessage::Chat(Box::new(ChatEntry {
            id: 7,
            from: "p2".into(),
            name: "Zoë".into(),
            at: "2026-12-01T10:00:00Z".into(),
            text: "see https://example.org <b>".into(),
        })),
        ServerMessage::FileAccepted {
            file_id: 3,
            reference: Some(1),
        },
        ServerMessage::FileRefused {
            reference: Some(2),
            code: ErrorCode::FileTooLarge,
            message: "60.0 MB is larger than the 50.0 MB this server accepts".into(),
        },
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
            by_self: false,
        },
        ServerMessage::ParticipantMuted {
            participant_id: "p3".into(),
            muted: true,
            by_self: true,
        },
        ServerMessage::ActiveSpeaker {
            participant_id: "p3".into(),
        },
        ServerMessage::Removed {
            reason: "removed by a moderator".into(),
        },
        ServerMessage::Answer { sdp: "v=0".into() },
        ServerMessage::Candidate { candidate: None },
        ServerMessage::VideoTier {
            tier: 1,
            tiers: 3,
            width: 640,
            height: 360,
        },
        ServerMessage::Pong,
    ];
    for m in messages {
        let text = serde_json::to_string(&m).unwrap();
        let back: ServerMessage = serde_json::from_str(&text).unwrap();
        assert_eq!(back, m);
    }
}

#[test]
fn layout_requests_read_from_the_documented_json() {
    let message =
        parse_client_message(r#"{"type":"set_layout","layout":"pin","participant_id":"p2"}"#)
            .unwrap();
    assert_eq!(
        message,
        ClientMessage::SetLayout(super::layout::LayoutRequest {
            layout: "pin".into(),
            participant_id: Some("p2".into()),
            ..Default::default()
        })
    );
    let custom = r#"{"type":"set_layout","layout":"custom","regions":[
        {"x":0,"y":0,"width":0.5,"height":1,"seat":"speaker"},
        {"x":0.5,"y":0,"width":0.5,"height":1,"seat":1,"z":2,"fit":"letterbox"}]}"#;
    let ClientMessage::SetLayout(request) = parse_client_message(custom).unwrap() else {
        panic!("not a set_layout");
    };
    let regions = request.regions.unwrap();
    assert_eq!(regions[1].seat, super::layout::SeatRequest::Other(1));
    assert_eq!(
        parse_client_message(r#"{"type":"self_mute","muted":true}"#).unwrap(),
        ClientMessage::SelfMute { muted: true }
    );
    for bad in [
        r#"{"type":"set_layout"}"#,
        r#"{"type":"set_layout","layout":"grid","speaker":"p1"}"#,
        r#"{"type":"set_layout","layout":"custom","regions":{}}"#,
    ] {
        assert!(parse_client_message(bad).is_err(), "{bad}");
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
        parse_client_message(r#"{"type":"file_offer","name":"a.pdf","size":10,"ref":4}"#).unwrap(),
        ClientMessage::FileOffer {
            name: "a.pdf".into(),
            size: 10,
            mime: None,
            reference: Some(4)
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
    assert!(ServerMessage::FileAccepted {
        file_id: 1,
        reference: None
    }
    .is_sharing());
    assert!(!ServerMessage::Pong.is_sharing());
    assert!(ClientMessage::Chat { text: "x".into() }.belongs_on_data_channel());
    assert!(!ClientMessage::Leave {}.belongs_on_data_channel());
}

#[test]
fn room_names_are_strict_slugs() {
    assert!(validate_room_name("standup-2024_q1").is_ok());
    assert_eq!(validate_room_name(""), Err(TextError::Empty));
    assert_eq!(
        validate_room_name("../etc"),
        Err(TextError::BadCharacter('.'))
    );
    assert_eq!(validate_room_name("a/b"), Err(TextError::BadCharacter('/')));
    assert_eq!(
        validate_room_name("café"),
        Err(TextError::BadCharacter('é'))
    );
    assert_eq!(
        validate_room_name(&"x".repeat(MAX_ROOM_NAME_LEN + 1)),
        Err(TextError::TooLong(MAX_ROOM_NAME_LEN))
    );
}

#[test]
fn display_names_allow_any_script_but_no_control_characters() {
    assert_eq!(validate_display_name("  Zoë 李  ").unwrap(), "Zoë 李");
    assert_eq!(validate_display_name("   "), Err(TextError::Empty));
    assert_eq!(
        validate_display_name("a\nb"),
        Err(TextError::BadCharacter('\n'))
    );
    assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN)).is_ok());
    assert!(validate_display_name(&"é".repeat(MAX_DISPLAY_NAME_LEN + 1)).is_err());
}
