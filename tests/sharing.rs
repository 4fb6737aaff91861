//! Chat and file sharing against a real server: synthetic participants talk on their data
//! channels (one on the WebSocket fallback), a late joiner gets the backlog, a 20 MB file reaches
//! two others intact while their composite keeps its frame rate, and what the limits or the rate
//! refuse is refused with its reason, to the sender only.

mod common;

use std::time::{Duration, Instant};

use common::{init, wait_for, Server, SETTLE};
use mcu_probe::heard::lock;
use mcu_probe::probe::Observation;
use mcu_probe::probe::{spec_for, Crowd};
use mcu_probe::sharing::{random_bytes, sha256_hex, Transport};
use mcu_server::codec::VideoCodec;
use mcu_server::protocol::sharing::DATA_CHANNEL_READ_LIMIT;
use mcu_server::protocol::ErrorCode;

/// Joins one participant that shares over `transport`, and subscribes it.
async fn join_sharing(crowd: &mut Crowd, transport: Transport) -> usize {
    let mut spec = spec_for(crowd.members.len(), VideoCodec::Vp8);
    spec.sharing = Some(transport);
    crowd.join_with(spec).await.expect("joining");
    let index = crowd.members.len() - 1;
    crowd.members[index]
        .subscribe_chat()
        .await
        .expect("subscribing to chat");
    index
}

/// The (sender, text) of every chat message `member` was shown, in order.
fn chats(crowd: &Crowd, member: usize) -> Vec<(String, String)> {
    let state = crowd.members[member]
        .sharing_state()
        .expect("a sharing participant");
    let s = lock(&state);
    s.chats
        .iter()
        .map(|c| (c.from.clone(), c.text.clone()))
        .collect()
}

fn errors(crowd: &Crowd, member: usize) -> Vec<(ErrorCode, String)> {
    let state = crowd.members[member]
        .sharing_state()
        .expect("a sharing participant");
    let errors = lock(&state).errors.clone();
    errors
}

/// Composite frames per second that `obs` received between `from` and `to`.
fn fps_between(obs: &Observation, from: Instant, to: Instant) -> f64 {
    let frames = obs
        .frame_times
        .iter()
        .filter(|t| **t >= from && **t <= to)
        .count();
    frames as f64 / (to - from).as_secs_f64().max(1e-3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_reaches_everyone_in_one_order_and_a_late_joiner_gets_the_backlog() {
    init();
    let server = Server::start("chat-order", &["--chat-history", "5"]);
    let mut crowd = Crowd::new(&server.url(), "chat").expect("a crowd");
    // Two on their data channels, the third as a client whose data channels cannot open.
    for transport in [
        Transport::DataChannel,
        Transport::DataChannel,
        Transport::WebSocket,
    ] {
        join_sharing(&mut crowd, transport).await;
    }
    // Interleaved, as people talk: two messages each, round by round.
    for round in 1..=2 {
        for i in 0..3 {
            crowd.members[i]
                .send_chat(&format!("round {round} from {}", crowd.members[i].id()))
                .await
                .expect("sending chat");
        }
    }
    let first = wait_for("everyone to see all six messages", SETTLE, || {
        let seen: Vec<_> = (0..3).map(|i| chats(&crowd, i)).collect();
        seen.iter().all(|s| s.len() == 6).then(|| seen[0].clone())
    })
    .await;
    for i in 1..3 {
        assert_eq!(chats(&crowd, i), first, "participant {i} saw another order");
    }
    // Each sender's own messages appear in the order it sent them.
    for member in &crowd.members {
        let own: Vec<&str> = first
            .iter()
            .filter(|(from, _)| from == member.id())
            .map(|(_, text)| text.as_str())
            .collect();
        assert_eq!(own.len(), 2);
        assert!(own[0].starts_with("round 1") && own[1].starts_with("round 2"));
    }

    // A late joiner is shown the backlog: the last five messages (the server keeps five here),
    // in the same order, and then what is said after it came.
    let late = join_sharing(&mut crowd, Transport::DataChannel).await;
    let backlog = wait_for("the backlog", SETTLE, || {
        let s = chats(&crowd, late);
        (s.len() >= 5).then_some(s)
    })
    .await;
    assert_eq!(backlog, first[1..].to_vec());
    crowd.members[late]
        .send_chat("hello, I am late")
        .await
        .expect("sending chat");
    wait_for("everyone to see the late joiner's message", SETTLE, || {
        (0..4)
            .all(|i| chats(&crowd, i).last().map(|(_, t)| t.as_str()) == Some("hello, I am late"))
            .then_some(())
    })
    .await;
    for i in 0..4 {
        assert!(errors(&crowd, i).is_empty(), "{i}: {:?}", errors(&crowd, i));
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_20_mb_file_reaches_two_others_intact_while_their_composite_keeps_its_frame_rate() {
    init();
    let server = Server::start("file-share", &[]);
    let mut crowd = Crowd::new(&server.url(), "files").expect("a crowd");
    for _ in 0..3 {
        join_sharing(&mut crowd, Transport::DataChannel).await;
    }
    common::settle(&crowd, "three participants in the room").await;
    let before = Instant::now();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let started = Instant::now();
    let fps_before: Vec<f64> = (1..3)
        .map(|i| fps_between(&crowd.members[i].observe(), before, started))
        .collect();

    let file = random_bytes(20 * 1024 * 1024);
    let expected = sha256_hex(&file);
    let file_id = crowd.members[0]
        .share_file("big.bin", &file)
        .await
        .expect("the file is accepted and sent");
    let uploaded = Instant::now();
    // The server announces the file with the hash of what it stored: the sender's.
    for i in 0..3 {
        let announced = wait_for("the file to be ready", SETTLE, || {
            let state = crowd.members[i].sharing_state()?;
            let s = lock(&state);
            s.files.get(&file_id).and_then(|f| f.sha256.clone())
        })
        .await;
        assert_eq!(announced, expected, "participant {i} was told another hash");
    }
    let deadline = Instant::now() + Duration::from_secs(120);
    let (a, b) = tokio::join!(
        crowd.members[1].download(file_id, deadline),
        crowd.members[2].download(file_id, deadline)
    );
    let done = Instant::now();
    for (who, bytes) in [(1, a), (2, b)] {
        let bytes = bytes.expect("the download completes");
        assert_eq!(bytes.len(), file.len(), "participant {who}: size");
        assert_eq!(sha256_hex(&bytes), expected, "participant {who}: content");
    }
    let fps = |from, to| -> Vec<f64> {
        (1..3)
            .map(|i| fps_between(&crowd.members[i].observe(), from, to))
            .collect()
    };
    let fps_during = fps(started, done);
    println!(
        "20 MiB: upload {:.1} s, two downloads {:.1} s; receivers' composite fps before {fps_before:.1?}, \
         during the upload {:.1?}, during the downloads {:.1?}",
        (uploaded - started).as_secs_f64(),
        (done - uploaded).as_secs_f64(),
        fps(started, uploaded),
        fps(uploaded, done),
    );
    // The composite kept flowing for the receivers throughout (the probe's own floor for a
    // working call, as in every media test).
    for fps in fps_during {
        assert!(
            fps >= common::MIN_FPS,
            "composite fps {fps:.1} during the transfer"
        );
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_over_the_limits_are_refused_before_a_byte_is_sent_and_bad_input_stays_with_its_sender(
) {
    init();
    let server = Server::start(
        "file-limits",
        &["--max-file-size", "1MB", "--max-room-files-size", "1500kB"],
    );
    let mut crowd = Crowd::new(&server.url(), "limits").expect("a crowd");
    for transport in [
        Transport::DataChannel,
        Transport::DataChannel,
        Transport::WebSocket,
    ] {
        join_sharing(&mut crowd, transport).await;
    }
    // Over the per-file limit: refused with the reason, and nobody is told of a file.
    let refused = crowd.members[0]
        .share_file("huge.bin", &random_bytes(1_000_001))
        .await
        .expect_err("a file over the limit");
    let refusal = format!("{refused:#}");
    assert!(
        refusal.contains("FileTooLarge") && refusal.contains("1.0 MB"),
        "{refusal}"
    );
    // Within it, twice: the second would take the room over its limit.
    crowd.members[0]
        .share_file("a.bin", &random_bytes(900_000))
        .await
        .expect("within the limits");
    let over_room = crowd.members[2]
        .share_file("b.bin", &random_bytes(900_000))
        .await
        .expect_err("over the room's limit");
    assert!(
        format!("{over_room:#}").contains("over its 1.5 MB limit"),
        "{over_room:#}"
    );
    wait_for("the accepted file to be ready for everyone", SETTLE, || {
        (0..3)
            .all(|i| {
                let state = crowd.members[i].sharing_state().expect("sharing");
                let s = lock(&state);
                s.files.len() == 1 && s.files.values().all(|f| f.sha256.is_some())
            })
            .then_some(())
    })
    .await;

    // Garbage on the data channel is answered on it, to its sender only.
    for bad in [
        "not json",
        r#"{"type":"offer","sdp":"v=0"}"#,
        r#"{"type":"chat","text":""}"#,
    ] {
        crowd.members[1]
            .send_raw_on_chat_channel(bad)
            .await
            .expect("sending");
    }
    let told = wait_for("the errors for the bad messages", SETTLE, || {
        let e = errors(&crowd, 1);
        (e.len() >= 3).then_some(e)
    })
    .await;
    let codes: Vec<ErrorCode> = told.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        codes,
        [
            ErrorCode::BadMessage,
            ErrorCode::OutOfOrder,
            ErrorCode::BadMessage
        ],
        "{told:?}"
    );

    // A flood is cut off by the rate limit; what got through reached everyone.
    for n in 0..30 {
        crowd.members[1]
            .send_chat(&format!("flood {n}"))
            .await
            .expect("sending");
    }
    let limited = wait_for("the flood to be rate-limited", SETTLE, || {
        let e = errors(&crowd, 1);
        let n = e
            .iter()
            .filter(|(c, _)| *c == ErrorCode::RateLimited)
            .count();
        (n > 0).then_some(n)
    })
    .await;
    assert!(limited >= 15, "only {limited} of 30 were held back");
    let through = wait_for("the messages that got through to arrive", SETTLE, || {
        let counts: Vec<usize> = (0..3).map(|i| chats(&crowd, i).len()).collect();
        (counts.iter().all(|c| *c == counts[0]) && counts[0] > 0).then_some(counts[0])
    })
    .await;
    assert!(through <= 15, "{through} of 30 got through");
    // Nobody else was told anything about it.
    for i in [0, 2] {
        assert!(
            errors(&crowd, i)
                .iter()
                .all(|(c, _)| *c == ErrorCode::FileTooLarge),
            "participant {i}: {:?}",
            errors(&crowd, i)
        );
    }
    // And the call went on for everyone.
    common::settle(&crowd, "the call after the bad input").await;

    // A message larger than the server's data channel can read closes that channel (webrtc-rs
    // cannot read it in part); the sender is told why on its WebSocket, and its chat goes on there.
    let oversized = "x".repeat(DATA_CHANNEL_READ_LIMIT + 1);
    crowd.members[1]
        .send_raw_on_chat_channel(&oversized)
        .await
        .expect("sending");
    let notice = wait_for("the notice that the channel closed", SETTLE, || {
        crowd.members[1]
            .observe()
            .errors
            .into_iter()
            .find(|e| e.contains("data channel closed"))
    })
    .await;
    assert!(
        notice.contains("BadMessage") && notice.contains(&DATA_CHANNEL_READ_LIMIT.to_string()),
        "{notice}"
    );
    let before = chats(&crowd, 1).len();
    crowd.members[0]
        .send_chat("still here?")
        .await
        .expect("sending");
    wait_for("chat to reach the sender on its WebSocket", SETTLE, || {
        let seen = chats(&crowd, 1);
        (seen.len() > before && seen.last().is_some_and(|(_, t)| t == "still here?")).then_some(())
    })
    .await;
    for i in [0, 2] {
        assert!(
            crowd.members[i].observe().errors.is_empty(),
            "participant {i}: {:?}",
            crowd.members[i].observe().errors
        );
    }
    crowd.leave_all().await;
}
