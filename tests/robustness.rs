//! Bad input and vanishing participants: each gets a clear answer, and nobody else is touched.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{wait_for, Server, MIN_FPS, SETTLE};
use futures_util::{SinkExt, StreamExt};
use mcu_probe::probe::Crowd;
use mcu_server::codec::VideoCodec;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

/// A hundred messages a broken or hostile client might send, each of which must get an error.
fn malformed_messages() -> Vec<Message> {
    let mut out: Vec<Message> = vec![
        Message::text(""),
        Message::text("not json"),
        Message::text("{"),
        Message::text("[]"),
        Message::text("null"),
        Message::text("{}"),
        Message::text(r#"{"type":"dance"}"#),
        Message::text(r#"{"type":"join"}"#),
        Message::text(r#"{"type":"join","name":42}"#),
        Message::text(r#"{"type":"join","name":""}"#),
        Message::text(r#"{"type":"join","name":"a\nb"}"#),
        Message::text(format!(r#"{{"type":"join","name":"{}"}}"#, "x".repeat(500))),
        Message::text(r#"{"type":"offer","sdp":"v=0"}"#),
        Message::text(r#"{"type":"answer","sdp":"v=0"}"#),
        Message::text(r#"{"type":"candidate","candidate":{"candidate":"x"}}"#),
        Message::text(r#"{"type":"offer"}"#),
        Message::text(r#"{"type":"ping","extra":true}"#),
        Message::binary(vec![0u8, 159, 146, 150]),
        Message::text("\u{feff}{\"type\":\"ping\"}"),
        Message::text(r#"{"type":["join"]}"#),
    ];
    let mut n = 0;
    while out.len() < 100 {
        n += 1;
        out.push(match n % 4 {
            0 => Message::text(format!(r#"{{"type":"offer","sdp":"garbage {n}"}}"#)),
            1 => Message::text(format!("{{\"type\":\"join\",\"name\":{n}}}")),
            2 => Message::text(format!("\u{0}{n}")),
            _ => Message::text(format!(
                r#"{{"type":"candidate","candidate":{{"candidate":"{n}"}}}}"#
            )),
        });
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_each_get_an_error_while_another_room_keeps_streaming() {
    common::init();
    let server = Server::start("malformed", &[]);
    let mut crowd = Crowd::new(&server.url(), "steady").expect("crowd");
    crowd.join(VideoCodec::Vp8).await.expect("join");
    crowd.join(VideoCodec::Vp8).await.expect("join");
    let healthy = |crowd: &Crowd| {
        let now = Instant::now();
        crowd
            .evaluate((now - Duration::from_secs(1), now), MIN_FPS)
            .into_iter()
            .all(|r| r.ok && r.tiles.len() == 2 && r.frames >= 30)
    };
    wait_for("the steady room to stream", SETTLE, || {
        healthy(&crowd).then_some(())
    })
    .await;

    let flood_started = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("noisy"))
        .await
        .expect("connecting");
    let messages = malformed_messages();
    assert_eq!(messages.len(), 100);
    let mut codes = Vec::new();
    for m in messages {
        let sent = format!("{m:?}");
        ws.send(m).await.expect("sending");
        let reply = tokio::time::timeout(Duration::from_secs(5), ws.next())
            .await
            .unwrap_or_else(|_| panic!("no reply to {sent}"))
            .expect("the socket stays open")
            .expect("a frame");
        let json: serde_json::Value =
            serde_json::from_str(reply.to_text().expect("a text reply")).expect("JSON reply");
        assert_eq!(json["type"], "error", "reply to {sent}: {json}");
        assert!(json["message"].as_str().is_some_and(|m| !m.is_empty()));
        codes.push(json["code"].as_str().unwrap_or_default().to_string());
    }
    assert_eq!(codes.len(), 100);
    assert!(codes.iter().any(|c| c == "bad_message"));
    assert!(codes.iter().any(|c| c == "out_of_order"));
    assert!(codes.iter().any(|c| c == "invalid_display_name"));

    // The session is still usable after all that.
    ws.send(Message::text(r#"{"type":"ping"}"#))
        .await
        .expect("ping");
    let pong = ws.next().await.expect("a reply").expect("a frame");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(pong.to_text().unwrap_or_default())
            .ok()
            .map(|v| v["type"].clone()),
        Some(serde_json::json!("pong"))
    );
    // Once joined, a broken offer is refused as bad SDP and the session still answers.
    let mut reply_to = async |text: &str| -> serde_json::Value {
        ws.send(Message::text(text.to_string()))
            .await
            .expect("sending");
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(10), ws.next())
                .await
                .expect("a reply in time")
                .expect("the socket stays open")
                .expect("a frame");
            let json: serde_json::Value =
                serde_json::from_str(frame.to_text().unwrap_or_default()).expect("JSON");
            // Room events (layout, participants) may come in between.
            if !matches!(json["type"].as_str(), Some("layout" | "participant_joined")) {
                return json;
            }
        }
    };
    assert_eq!(
        reply_to(r#"{"type":"join","name":"Mallory"}"#).await["type"],
        "joined"
    );
    let bad_offer = reply_to(r#"{"type":"offer","sdp":"v=0\r\nthis is not sdp"}"#).await;
    assert_eq!(bad_offer["code"], "bad_sdp", "{bad_offer}");
    assert_eq!(
        reply_to(r#"{"type":"answer","sdp":"v=0"}"#).await["code"],
        "out_of_order"
    );
    assert_eq!(
        reply_to(r#"{"type":"join","name":"again"}"#).await["code"],
        "out_of_order"
    );
    assert_eq!(reply_to(r#"{"type":"ping"}"#).await["type"], "pong");

    // An oversized message closes the socket with 1009.
    let big = format!(r#"{{"type":"offer","sdp":"{}"}}"#, "a".repeat(100 * 1024));
    ws.send(Message::text(big))
        .await
        .expect("sending the big message");
    let close = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(Ok(frame)) = ws.next().await {
            if let Message::Close(c) = frame {
                return c;
            }
        }
        None
    })
    .await
    .expect("the server closes the socket");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Size));

    // The other room streamed throughout: measured over at least three seconds from the flood's
    // start, so the frame rate is a rate and not a handful of frames.
    let window_end = flood_started + Duration::from_secs(3);
    tokio::time::sleep_until(window_end.max(Instant::now()).into()).await;
    let now = Instant::now();
    for r in crowd.evaluate((flood_started, now), MIN_FPS) {
        assert!(r.ok, "the steady room suffered: {r:#?}");
        assert!(
            r.max_frame_gap_ms < 700.0,
            "{} stalled for {} ms",
            r.id,
            r.max_frame_gap_ms
        );
    }
    // An invalid room name is refused with its own code.
    let (mut bad_room, _) = tokio_tungstenite::connect_async(server.ws_url("..%2Fetc"))
        .await
        .expect("connecting");
    let reply = bad_room.next().await.expect("a reply").expect("a frame");
    let json: serde_json::Value =
        serde_json::from_str(reply.to_text().unwrap_or_default()).expect("JSON");
    assert_eq!(json["code"], "invalid_room_name");
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_vanished_participant_is_removed_within_the_timeout_and_its_resources_released() {
    common::init();
    let server = Server::start("vanish", &["--media-timeout-secs", "3"]);
    let mut crowd = Crowd::new(&server.url(), "vanish").expect("crowd");
    crowd.join(VideoCodec::Vp8).await.expect("join");
    wait_for("the first participant to see itself", SETTLE, || {
        let now = Instant::now();
        crowd.evaluate((now - Duration::from_secs(1), now), MIN_FPS)[0]
            .ok
            .then_some(())
    })
    .await;
    let alone = server.room("vanish").await.expect("the room exists");

    // A second participant in another process, which then freezes (like a laptop whose lid
    // closed): its WebSocket stays open, but no media or RTCP comes from it any more.
    let mut other = Command::new(env!("CARGO_BIN_EXE_mcu"))
        .args([
            "probe",
            "--url",
            &server.url(),
            "--room",
            "vanish",
            "--participants",
            "1",
            "--seconds",
            "120",
        ])
        .env("RUST_LOG", "error")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting a probe process");
    let deadline = Instant::now() + SETTLE;
    let together = loop {
        let room = server.room("vanish").await.expect("the room exists");
        // Both decoded (placeholders gone): background, the speaker outline and two video pads.
        if room["participants"].as_array().map(Vec::len) == Some(2)
            && room["pipeline"]["compositor_pads"] == 4
            && room["pipeline"]["mix_voices"] == 2
        {
            break room;
        }
        assert!(
            Instant::now() < deadline,
            "the second participant never settled: {room}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    // Both are heard, and both hear the mix.
    assert_eq!(together["pipeline"]["mix_listeners"], 2);

    let frozen_at = Instant::now();
    let stopped = Command::new("kill")
        .args(["-STOP", &other.id().to_string()])
        .status();
    assert!(stopped.is_ok_and(|s| s.success()));
    let deadline = Instant::now() + Duration::from_secs(3 + 5);
    let after = loop {
        let room = server
            .room("vanish")
            .await
            .expect("the first participant keeps the room");
        if room["participants"].as_array().map(Vec::len) == Some(1) {
            break room;
        }
        assert!(
            Instant::now() < deadline,
            "the frozen participant was never removed: {room}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let removed_after = frozen_at.elapsed();
    assert!(
        removed_after >= Duration::from_secs(2),
        "removed too early ({removed_after:?}): the timeout is 3 s"
    );
    // Everything it held was released: the pipeline looks as it did before it came.
    assert_eq!(
        after["pipeline"]["compositor_pads"],
        alone["pipeline"]["compositor_pads"]
    );
    assert_eq!(
        after["pipeline"]["mix_voices"],
        alone["pipeline"]["mix_voices"]
    );
    assert_eq!(
        after["pipeline"]["mix_listeners"],
        alone["pipeline"]["mix_listeners"]
    );
    assert_eq!(
        after["pipeline"]["pipeline_children"],
        alone["pipeline"]["pipeline_children"]
    );
    let _ = other.kill();
    let _ = other.wait();

    // The one who stayed sees itself full-frame again, and when it leaves the room is gone.
    wait_for(
        "the remaining participant to be alone in the layout",
        Duration::from_secs(5),
        || {
            let obs = crowd.members[0].observe();
            obs.layout.is_some_and(|l| l.tiles.len() == 1).then_some(())
        },
    )
    .await;
    crowd.leave_all().await;
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let rooms = server.rooms().await;
        if rooms["rooms"].as_array().is_some_and(|r| r.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the empty room was not torn down: {rooms}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `--max-rooms 2`: a third room is refused with `server_full` and a message that says what to do;
/// the rooms that exist still take joins and keep streaming; once a room closes, a new one opens.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_past_the_limit_are_refused_and_existing_rooms_still_take_joins() {
    common::init();
    let server = Server::start("max_rooms", &["--max-rooms", "2"]);
    let mut first = Crowd::new(&server.url(), "first").expect("crowd");
    first.join(VideoCodec::Vp8).await.expect("join");
    let mut second = Crowd::new(&server.url(), "second").expect("crowd");
    second.join(VideoCodec::Vp8).await.expect("join");

    let refused = common::bare_join(&server, "third", "Knocker").await.0;
    assert_eq!(refused["code"], "server_full", "{refused}");
    let message = refused["message"].as_str().unwrap_or_default();
    assert!(message.contains("limit of 2 rooms"), "{message}");
    assert!(server.room("third").await.is_none(), "no half-built room");
    let listed = server.rooms().await;
    assert_eq!(
        (
            listed["max_rooms"].as_u64(),
            listed["refused_rooms"].as_u64(),
            listed["rooms"].as_array().map(Vec::len),
            listed["unanswered_rooms"].as_u64()
        ),
        (Some(2), Some(1), Some(2), Some(0))
    );

    // An existing room still takes a newcomer, and both see each other.
    first
        .join(VideoCodec::Vp8)
        .await
        .expect("a second joins the first room");
    common::settle(&first, "the first room's two participants").await;

    // A room that empties frees its place.
    second.leave_all().await;
    let deadline = Instant::now() + SETTLE;
    while server.room("second").await.is_some() {
        assert!(Instant::now() < deadline, "the second room did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let admitted = common::bare_join(&server, "third", "Knocker").await.0;
    assert_eq!(admitted["type"], "joined", "{admitted}");
    first.leave_all().await;
}

/// A socket that never joins is closed (policy violation, 1008) with an error that says why, after
/// the server's 15-s join deadline: a stranger cannot pile up idle sockets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_socket_that_never_joins_is_closed() {
    common::init();
    let server = Server::start("unjoined", &[]);
    let opened = Instant::now();
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url("idle"))
        .await
        .expect("connecting");
    let mut told = None;
    let close = loop {
        let frame = tokio::time::timeout(Duration::from_secs(25), ws.next())
            .await
            .expect("the server acts within 25 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
                if json["type"] == "error" {
                    told = json["message"].as_str().map(str::to_string);
                }
            }
            Some(Ok(Message::Close(close))) => break close,
            Some(Ok(_)) => {}
            Some(Err(e)) => panic!("the socket failed instead of closing: {e}"),
            None => panic!("the socket ended without a close frame"),
        }
    };
    let after = opened.elapsed();
    println!("closed after {after:?}: {close:?}, told {told:?}");
    assert_eq!(close.map(|c| c.code), Some(CloseCode::Policy));
    assert!(told.is_some_and(|m| m.contains("no join")));
    assert!(after >= Duration::from_secs(14), "closed after {after:?}");
}
