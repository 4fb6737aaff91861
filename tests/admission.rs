//! A server on the internet: what one stranger can make it do. Floods from one address are
//! refused while other people's rooms keep streaming; sockets that send no media are removed;
//! floods of candidates and oversized pictures are cut off before they cost memory; and a
//! hundred joins and leaves leave nothing behind.

mod common;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use common::{wait_for, Server, SETTLE};
use futures_util::{SinkExt, StreamExt};
use mcu_probe::probe::{spec_for, Content, Crowd};
use mcu_server::codec::VideoCodec;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

type Socket = WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>>;

/// The issue's bar for a room untouched by a flood elsewhere.
const CANARY_MIN_FPS: f64 = 28.0;

/// A WebSocket to `room` from the loopback address `from` (any 127.x.y.z is this machine, and
/// the server tells them apart as it would tell two clients apart).
async fn connect_from(server: &Server, from: Ipv4Addr, room: &str) -> Socket {
    let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
    socket
        .bind(SocketAddr::new(IpAddr::V4(from), 0))
        .expect("binding a loopback address");
    let stream = socket.connect(server.addr).await.expect("connecting");
    let (ws, _) =
        tokio_tungstenite::client_async(server.ws_url(room), MaybeTlsStream::Plain(stream))
            .await
            .expect("the upgrade");
    ws
}

/// The next JSON message on `ws`, or the close frame's code when it closes.
async fn next_json(ws: &mut Socket) -> Result<serde_json::Value, Option<CloseCode>> {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("the server answers within 20 s");
        match frame {
            Some(Ok(Message::Text(text))) => {
                return Ok(serde_json::from_str(&text).expect("JSON"));
            }
            Some(Ok(Message::Close(close))) => return Err(close.map(|c| c.code)),
            Some(Ok(_)) => {}
            Some(Err(_)) | None => return Err(None),
        }
    }
}

/// Sends `join` and returns the answer: `joined`, or the error.
async fn join(ws: &mut Socket, name: &str) -> serde_json::Value {
    ws.send(Message::text(format!(
        r#"{{"type":"join","name":"{name}"}}"#
    )))
    .await
    .expect("sending the join");
    loop {
        match next_json(ws).await {
            Ok(json) if json["type"] == "joined" || json["type"] == "error" => return json,
            Ok(_) => {}
            Err(close) => panic!("closed before answering the join: {close:?}"),
        }
    }
}

/// One address opens 20 rooms at once and then 15 more sockets: past its 3 rooms a minute and
/// its 12 sockets it gets `rate_limited` saying which limit, while a canary room of someone
/// else keeps its frame rate and /healthz keeps answering 200.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_from_one_address_is_refused_while_another_room_keeps_streaming() {
    common::init();
    let server = Server::start(
        "flood",
        &[
            "--max-rooms",
            "0",
            "--max-new-rooms-per-address",
            "3",
            "--max-connections-per-address",
            "12",
        ],
    );
    let mut canary = common::crowd_of(&server, "canary", 2).await;
    // Settled on its final canvas (two 320×180 cameras side by side: 640×360), so that what
    // happens to its frames next is the flood's doing.
    server
        .wait_for_room("canary", SETTLE, |room| {
            room["pipeline"]["canvas_width"] == 640 && room["pipeline"]["compositor_pads"] == 4
        })
        .await;
    common::settle(&canary, "the canary room").await;

    let flood_started = Instant::now();
    let flooder = Ipv4Addr::new(127, 0, 0, 2);
    let mut attempts = Vec::new();
    for n in 0..10 {
        let server = &server;
        attempts.push(async move {
            let mut ws = connect_from(server, flooder, &format!("flood-{n}")).await;
            let answer = join(&mut ws, "Flooder").await;
            (ws, answer)
        });
    }
    let answers = futures_util::future::join_all(attempts).await;
    let joined = answers
        .iter()
        .filter(|(_, a)| a["type"] == "joined")
        .count();
    let refused: Vec<_> = answers
        .iter()
        .filter(|(_, a)| a["code"] == "rate_limited")
        .collect();
    assert_eq!(
        (joined, refused.len()),
        (3, 7),
        "{:?}",
        answers.iter().map(|a| &a.1).collect::<Vec<_>>()
    );
    assert!(refused[0].1["message"]
        .as_str()
        .is_some_and(|m| m.contains("new rooms")));
    let mut sockets: Vec<Socket> = answers.into_iter().map(|(ws, _)| ws).collect();
    // Joining one of its rooms again is not a new room: admitted. (The three rooms are those
    // whose joins came first.)
    let rooms = server.rooms().await;
    let open: Vec<String> = rooms["rooms"]
        .as_array()
        .expect("rooms")
        .iter()
        .filter_map(|r| r["room"].as_str().map(str::to_string))
        .filter(|r| r.starts_with("flood-"))
        .collect();
    assert_eq!(open.len(), 3, "{rooms}");
    let mut again = connect_from(&server, flooder, &open[0]).await;
    assert_eq!(join(&mut again, "Flooder").await["type"], "joined");
    sockets.push(again);

    // Sockets: the flooder holds 11 now (10 + 1); one more is admitted, the next refused
    // at once with a policy close, before it can join anything.
    sockets.push(connect_from(&server, flooder, "canary").await);
    let mut over = connect_from(&server, flooder, "canary").await;
    let told = next_json(&mut over)
        .await
        .expect("an error before the close");
    assert_eq!(told["code"], "rate_limited", "{told}");
    assert!(told["message"]
        .as_str()
        .is_some_and(|m| m.contains("connections")));
    assert_eq!(
        next_json(&mut over).await.err(),
        Some(Some(CloseCode::Policy))
    );
    // Another address is not affected by the flooder's count.
    let mut neighbour = connect_from(&server, Ipv4Addr::new(127, 0, 0, 3), "canary").await;
    assert_eq!(join(&mut neighbour, "Neighbour").await["type"], "joined");
    drop(neighbour);

    let health = server.request("GET", "/healthz", &[]).await;
    assert_eq!(
        health.status,
        200,
        "{}",
        String::from_utf8_lossy(&health.body)
    );
    // The canary's frame rate from the flood's start, over 3 s at least (the flooder's sockets
    // and rooms still open).
    let window_end = Instant::now().max(flood_started + Duration::from_secs(3));
    tokio::time::sleep_until(window_end.into()).await;
    for report in canary.evaluate((flood_started, window_end), CANARY_MIN_FPS) {
        println!("canary {}: {:.1} fps", report.id, report.fps);
        assert!(report.fps >= CANARY_MIN_FPS, "{report:?}");
    }
    drop(sockets);
    canary.leave_all().await;
}

/// Behind a trusted reverse proxy every connection comes from the proxy's address: the client
/// is the address the proxy appended to `X-Forwarded-For`, and what a client wrote there itself
/// is not believed from anyone else. The admin API needs the token through the proxy.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_clients_are_counted_by_their_forwarded_address() {
    use tokio_tungstenite::tungstenite::client::IntoClientRequest;
    common::init();
    let server = Server::start(
        "proxied",
        &[
            "--trusted-proxy",
            "127.0.0.1",
            "--max-connections-per-address",
            "2",
        ],
    );
    let connect = |forwarded_for: &'static str| {
        let url = server.ws_url("proxied");
        async move {
            let mut request = url.into_client_request().expect("a request");
            request
                .headers_mut()
                .insert("x-forwarded-for", forwarded_for.parse().expect("a header"));
            tokio_tungstenite::connect_async(request)
                .await
                .expect("the upgrade")
                .0
        }
    };
    // A client that claims an address in front of the real one is counted by the real one.
    let _a = connect("198.51.100.1, 203.0.113.5").await;
    let _b = connect("203.0.113.5").await;
    let mut third = connect("203.0.113.5").await;
    assert_eq!(
        next_json(&mut third).await.expect("an error")["code"],
        "rate_limited"
    );
    let mut other = connect("203.0.113.6").await;
    assert_eq!(join(&mut other, "Other").await["type"], "joined");
    let admin = server.request("GET", "/api/v1/rooms", &[]).await;
    assert_eq!(
        admin.status, 403,
        "the proxy's own address is loopback, but it needs the token"
    );
}

/// Twenty "participants" that join and then send five bytes on the WebSocket every second, with
/// no peer connection at all, are removed at the media timeout: only RTP and RTCP count as media.
/// Having never sent a packet, they are removed at the connect timeout, set as short here: the
/// rule that removes anyone who joined and never completed ICE and DTLS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ghosts_that_send_only_websocket_frames_are_removed_at_the_media_timeout() {
    common::init();
    let server = Server::start(
        "ghosts",
        &["--media-timeout-secs", "3", "--connect-timeout-secs", "3"],
    );
    let joined_at = Instant::now();
    let mut ghosts = Vec::new();
    for n in 0..20 {
        let mut ws = connect_from(&server, Ipv4Addr::new(127, 0, 0, 1), "ghosts").await;
        assert_eq!(join(&mut ws, &format!("Ghost {n}")).await["type"], "joined");
        ghosts.push(ws);
    }
    let ended = futures_util::future::join_all(ghosts.into_iter().map(|mut ws| async move {
        let mut beat = tokio::time::interval(Duration::from_secs(1));
        let mut told = None;
        loop {
            tokio::select! {
                _ = beat.tick() => {
                    if ws.send(Message::binary(vec![0u8, 1, 2, 3, 4])).await.is_err() {
                        return (told, None, joined_at.elapsed());
                    }
                }
                answer = next_json(&mut ws) => match answer {
                    Ok(json) if json["type"] == "error" && json["code"] == "internal" => told = json["message"].as_str().map(str::to_string),
                    Ok(_) => {}
                    Err(close) => return (told, close, joined_at.elapsed()),
                }
            }
        }
    }))
    .await;
    for (told, close, after) in &ended {
        assert!(
            told.as_deref().is_some_and(|m| m.contains("no media")),
            "{told:?}"
        );
        assert_eq!(*close, Some(CloseCode::Normal));
        // 3 s of timeout, checked every 0.5 s, for twenty sessions on 2 cores.
        assert!(*after < Duration::from_secs(10), "removed after {after:?}");
    }
    let deadline = Instant::now() + SETTLE;
    while server.room("ghosts").await.is_some() {
        assert!(Instant::now() < deadline, "the ghosts' room did not close");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// 20,000 trickled candidates: the client is told twice (past 64 before the offer, past 256 in
/// all) and everything else is dropped unanswered; the session still answers a ping.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_candidate_flood_is_cut_off_at_the_cap() {
    common::init();
    let server = Server::start("candidates", &[]);
    let mut ws = connect_from(&server, Ipv4Addr::new(127, 0, 0, 1), "candidates").await;
    assert_eq!(join(&mut ws, "Flood").await["type"], "joined");
    let (mut tx, mut rx) = ws.split();
    let sender = tokio::spawn(async move {
        for n in 0..20_000u32 {
            let candidate = format!(
                r#"{{"type":"candidate","candidate":{{"candidate":"candidate:{n} 1 udp 2122260223 10.{}.{}.{} {} typ host","sdpMid":"0","sdpMLineIndex":0}}}}"#,
                n >> 16,
                (n >> 8) & 255,
                n & 255,
                1024 + n % 60000
            );
            tx.send(Message::text(candidate)).await.expect("sending");
        }
        tx.send(Message::text(r#"{"type":"ping"}"#))
            .await
            .expect("sending");
        tx
    });
    let mut errors = Vec::new();
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(30), rx.next())
            .await
            .expect("the pong within 30 s")
            .expect("the socket stays open")
            .expect("a frame");
        let Ok(text) = frame.to_text() else { continue };
        let json: serde_json::Value = serde_json::from_str(text).expect("JSON");
        match json["type"].as_str() {
            Some("pong") => break,
            Some("error") => errors.push(json),
            _ => {}
        }
    }
    let _tx = sender.await.expect("the sender");
    println!("errors: {errors:?}");
    assert_eq!(errors.len(), 2, "{errors:?}");
    assert!(errors.iter().all(|e| e["code"] == "bad_candidate"));
    assert!(errors[1]["message"]
        .as_str()
        .is_some_and(|m| m.contains("256")));
    let health = server.request("GET", "/healthz", &[]).await;
    assert_eq!(health.status, 200);
}

/// A camera that sends 2560×1440 is told `video_too_large` and its frames never reach a
/// decoder (its tile stays a placeholder), while another participant in the room streams on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_oversized_camera_is_refused_before_decoding() {
    common::init();
    let server = Server::start("oversized", &[]);
    let mut crowd = Crowd::new(&server.url(), "oversized").expect("crowd");
    crowd.join(VideoCodec::Vp8).await.expect("join");
    let mut huge = spec_for(1, VideoCodec::Vp8);
    huge.content = Content::Oversized;
    crowd
        .join_with(huge)
        .await
        .expect("the oversized camera joins");
    let told = wait_for("the oversized camera to be told", SETTLE, || {
        crowd.members[1]
            .observe()
            .errors
            .iter()
            .find(|e| e.contains("VideoTooLarge"))
            .cloned()
    })
    .await;
    assert!(told.contains("2560×1440"), "{told}");
    // Seconds later it still has decoded nothing: its tile is the placeholder.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let room = server.room("oversized").await.expect("the room");
    let second = &room["participants"][1];
    assert_eq!(second["camera_frames"], 0, "{room}");
    let now = Instant::now();
    let first = &crowd.evaluate((now - Duration::from_secs(2), now), common::MIN_FPS)[0];
    assert!(first.fps >= common::MIN_FPS, "{first:?}");
    crowd.leave_all().await;
}

/// What the server process holds, from /proc.
fn process_figures(pid: u32) -> (usize, usize, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
            .expect("a /proc field")
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .expect("fds")
        .count();
    (field("Threads:") as usize, fds, field("VmRSS:") / 1024)
}

/// One participant stays while another joins and leaves 100 times: the room's elements, the
/// camera filters alive in the process, its threads and file descriptors come back to what
/// they were after the first few cycles, and its memory stays near it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_joins_and_leaves_leave_nothing_behind() {
    common::init();
    let server = Server::start("cycles", &[]);
    let mut crowd = common::crowd_of(&server, "cycles", 1).await;
    let settled = |room: &serde_json::Value| room["pipeline"]["compositor_pads"] == 3;
    let mut baseline = None;
    for cycle in 0..100 {
        crowd.join(VideoCodec::Vp8).await.expect("join");
        server
            .wait_for_room("cycles", SETTLE, |room| {
                room["participants"].as_array().map(Vec::len) == Some(2)
                    && room["participants"][1]["camera_frames"].as_u64() > Some(0)
            })
            .await;
        crowd.leave(1).await;
        let room = server
            .wait_for_room("cycles", SETTLE, |room| {
                room["participants"].as_array().map(Vec::len) == Some(1) && settled(room)
            })
            .await;
        let rooms = server.rooms().await;
        let figures = (
            room["pipeline"]["elements"].as_u64().expect("elements"),
            rooms["live_tile_filters"].as_u64().expect("filters"),
            process_figures(server.pid()),
        );
        if cycle == 4 {
            println!("after 5 cycles: {figures:?}");
            baseline = Some(figures);
        }
        if cycle == 99 {
            println!("after 100 cycles: {figures:?}");
            let (elements, filters, (threads, fds, rss)) = baseline.expect("a baseline");
            assert_eq!(figures.0, elements, "elements");
            // The one camera that stays holds the only filter.
            assert_eq!((figures.1, filters), (1, 1), "live tile filters");
            let (now_threads, now_fds, now_rss) = figures.2;
            assert!(
                now_threads <= threads + 4,
                "threads {threads} → {now_threads}"
            );
            assert!(now_fds <= fds + 8, "fds {fds} → {now_fds}");
            assert!(now_rss <= rss + 64, "RSS {rss} MB → {now_rss} MB");
        }
    }
    crowd.leave_all().await;
}
