//! WHIP ingest and WHEP watching, against clients not written here: FFmpeg 9's `whip` muxer and
//! aiortc (a WebRTC stack in Python), both installed by `make test-deps` in target/pyenv (see
//! tests/clients/). A synthetic participant in the room checks what people would see and hear.

mod common;

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant, SystemTime};

use common::{crowd_of, settle, wait_for, Server};
use mcu_probe::probe::analysis::{self, Rgb, TONE_PRESENT};
use mcu_probe::probe::Participant;
use mcu_server::auth::Secret;

/// The feed's colour and tone: far from every probe colour and tone.
const FEED_COLOUR: Rgb = Rgb(128, 0, 255);
const FEED_RGB_HEX: &str = "8000ff";
const FEED_TONE_HZ: f64 = 1000.0;
const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123";

/// The Python with aiortc and imageio-ffmpeg (`make test-deps` makes it).
fn python() -> PathBuf {
    let python = std::env::var_os("MCU_PYTHON").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/pyenv/bin/python"),
        PathBuf::from,
    );
    assert!(
        python.exists(),
        "{} is missing: run `make test-deps` (it installs tests/clients/requirements.txt)",
        python.display()
    );
    python
}

/// FFmpeg 9 with the `whip` muxer, as imageio-ffmpeg ships it.
fn ffmpeg() -> String {
    let out = std::process::Command::new(python())
        .args([
            "-c",
            "import imageio_ffmpeg; print(imageio_ffmpeg.get_ffmpeg_exe())",
        ])
        .output()
        .expect("running python");
    assert!(out.status.success(), "imageio_ffmpeg: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// FFmpeg pushing a 640×360 picture of the feed's colour (with moving noise, as a camera has)
/// and the feed's tone for `seconds`, in H.264 of `profile`, as `name`. FFmpeg's whip muxer
/// refuses B-frames ("not yet implemented"), hence `-bf 0`.
fn ffmpeg_whip(url: &str, profile: &str, seconds: u32) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(ffmpeg());
    command
        .args(["-hide_banner", "-loglevel", "warning", "-re"])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("color=c=0x{FEED_RGB_HEX}:s=640x360:r=30"),
        ])
        .args([
            "-f",
            "lavfi",
            "-i",
            &format!("sine=frequency={FEED_TONE_HZ}:sample_rate=48000"),
        ])
        .args(["-t", &seconds.to_string(), "-vf", "noise=alls=8:allf=t"])
        .args(["-c:v", "libx264", "-profile:v", profile, "-bf", "0"])
        .args(["-pix_fmt", "yuv420p", "-g", "60"])
        .args(["-c:a", "libopus", "-ar", "48000", "-ac", "2"])
        .args(["-f", "whip", url])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// aiortc's client (tests/clients/webrtc_http.py) in `mode` against `url`.
fn aiortc(mode: &str, url: &str, args: &[&str]) -> tokio::process::Command {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/clients/webrtc_http.py");
    let mut command = tokio::process::Command::new(python());
    command
        .arg(script)
        .args([mode, url])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

/// The JSON line a client printed last.
fn printed(out: &std::process::Output) -> serde_json::Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    let line = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(line).unwrap_or_else(|e| {
        panic!(
            "the client printed no JSON ({e}): {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// The room's one feed (a participant that only sends), once it is there.
async fn feed_in(server: &Server, room: &str) -> serde_json::Value {
    let view = server
        .wait_for_room(room, Duration::from_secs(15), |r| {
            r["participants"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["ingest"] == true))
        })
        .await;
    view["participants"]
        .as_array()
        .and_then(|p| p.iter().find(|p| p["ingest"] == true).cloned())
        .expect("a feed")
}

/// Whether `viewer`'s last second of composite frames showed `whose` tile in `colour`.
fn shows_tile(viewer: &Participant, whose: &str, colour: Rgb) -> bool {
    let since = Instant::now() - Duration::from_secs(1);
    let frames: Vec<_> = viewer
        .observe()
        .recent
        .into_iter()
        .filter(|f| f.at >= since)
        .collect();
    !frames.is_empty()
        && frames.iter().all(|f| {
            f.tiles
                .iter()
                .any(|(p, c)| p == whose && analysis::shows(*c, colour))
        })
}

fn hears(viewer: &Participant, hz: f64) -> bool {
    analysis::tone_share(&viewer.observe().audio, 48_000.0, hz) >= TONE_PRESENT
}

/// Whether the server logged that a session ended because its client deleted it.
fn logged_deletion(server: &Server) -> bool {
    std::fs::read_to_string(&server.log)
        .unwrap_or_default()
        .contains("session ended: its resource was deleted")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ffmpeg_pushes_a_picture_and_a_tone_that_the_room_sees_and_hears_until_it_leaves() {
    common::init();
    let server = Server::start("whip-ffmpeg", &[]);
    let crowd = crowd_of(&server, "stage", 1).await;
    settle(&crowd, "the probe to see itself").await;
    let probe = &crowd.members[0];

    // FFmpeg's default H.264 profile for yuv420p is High.
    let url = format!("{}/whip/stage?name=Stage%20camera", server.url());
    let ffmpeg = ffmpeg_whip(&url, "high", 14)
        .spawn()
        .expect("starting FFmpeg");
    let feed = feed_in(&server, "stage").await;
    assert_eq!(feed["name"], "Stage camera", "{feed}");
    let id = feed["id"].as_str().expect("an id").to_string();
    wait_for(
        "the probe to see the feed's colour in its tile",
        Duration::from_secs(15),
        || shows_tile(probe, &id, FEED_COLOUR).then_some(()),
    )
    .await;
    wait_for(
        "the probe to hear the feed's tone",
        Duration::from_secs(10),
        || hears(probe, FEED_TONE_HZ).then_some(()),
    )
    .await;
    let room = server.room("stage").await.expect("the room");
    assert_eq!(room["layout"]["tiles"].as_array().map(Vec::len), Some(2));
    assert_eq!(room["watchers"], 0);

    // FFmpeg deletes its session as it ends: the tile goes at once, not after the media
    // timeout (FFmpeg 9 reports "Failed to read response from DELETE" for any 200 without a
    // body it can read, but sends it).
    let out = ffmpeg.wait_with_output().await.expect("FFmpeg ends");
    assert!(
        out.status.success(),
        "FFmpeg failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    server
        .wait_for_room("stage", Duration::from_secs(5), |r| {
            r["participants"].as_array().map(Vec::len) == Some(1)
        })
        .await;
    assert!(
        logged_deletion(&server),
        "the feed left, but not by its DELETE"
    );
    wait_for(
        "the probe's layout to lose the feed's tile",
        Duration::from_secs(5),
        || {
            let layout = probe.observe().layout?;
            layout
                .tiles
                .iter()
                .all(|t| t.participant_id != id)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn feeds_in_h264_baseline_and_main_and_in_vp8_from_aiortc_are_shown() {
    common::init();
    let server = Server::start("whip-codecs", &[]);
    let crowd = crowd_of(&server, "codecs", 1).await;
    settle(&crowd, "the probe to see itself").await;
    let probe = &crowd.members[0];
    let url = format!("{}/whip/codecs", server.url());
    for profile in ["baseline", "main"] {
        let ffmpeg = ffmpeg_whip(&url, profile, 8)
            .spawn()
            .expect("starting FFmpeg");
        let id = feed_in(&server, "codecs").await["id"]
            .as_str()
            .expect("an id")
            .to_string();
        wait_for(
            &format!("the probe to see an H.264 {profile} feed"),
            Duration::from_secs(15),
            || shows_tile(probe, &id, FEED_COLOUR).then_some(()),
        )
        .await;
        let out = ffmpeg.wait_with_output().await.expect("FFmpeg ends");
        assert!(out.status.success(), "FFmpeg ({profile}) failed: {out:?}");
        server
            .wait_for_room("codecs", Duration::from_secs(5), |r| {
                r["participants"].as_array().map(Vec::len) == Some(1)
            })
            .await;
    }

    let tone = FEED_TONE_HZ.to_string();
    let aiortc = aiortc(
        "publish",
        &format!("{url}?name=aiortc"),
        &[
            "--codec",
            "vp8",
            "--colour",
            FEED_RGB_HEX,
            "--tone",
            &tone,
            "--seconds",
            "12",
        ],
    )
    .spawn()
    .expect("starting aiortc");
    let feed = feed_in(&server, "codecs").await;
    assert_eq!(feed["name"], "aiortc");
    let id = feed["id"].as_str().expect("an id").to_string();
    wait_for(
        "the probe to see the VP8 feed",
        Duration::from_secs(15),
        || shows_tile(probe, &id, FEED_COLOUR).then_some(()),
    )
    .await;
    wait_for(
        "the probe to hear the VP8 feed's tone",
        Duration::from_secs(10),
        || hears(probe, FEED_TONE_HZ).then_some(()),
    )
    .await;
    let out = aiortc.wait_with_output().await.expect("aiortc ends");
    assert_eq!(printed(&out)["delete_status"], 200, "{out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whep_player_receives_the_whole_composite_and_everyones_audio_without_a_tile() {
    common::init();
    // The canvas fits its cameras by default (canvas.rs), and the probes' are small: fixed, the
    // room composites the full 1280×720 a room of HD cameras gets.
    let server = Server::start("whep-aiortc", &["--canvas", "fixed"]);
    let crowd = crowd_of(&server, "audience", 2).await;
    settle(&crowd, "two probes to see each other").await;
    let first_tone = crowd.members[0].tone_hz().to_string();
    let player = aiortc(
        "watch",
        &format!("{}/whep/audience", server.url()),
        &["--seconds", "12", "--tone", &first_tone],
    )
    .spawn()
    .expect("starting aiortc");

    // Watching: counted as a watcher, not a participant; no tile.
    let room = server
        .wait_for_room("audience", Duration::from_secs(15), |r| r["watchers"] == 1)
        .await;
    assert_eq!(room["participants"].as_array().map(Vec::len), Some(2));
    assert_eq!(room["layout"]["tiles"].as_array().map(Vec::len), Some(2));
    let metrics = server.request("GET", "/metrics", &[]).await;
    let text = String::from_utf8_lossy(&metrics.body);
    assert!(
        text.lines().any(|l| l == "mcu_watchers 1"),
        "mcu_watchers: {text}"
    );
    // The player rides the room's shared encodes: still one top tier, now with a viewer more.
    let tiers = &room["pipeline"]["tiers"];
    assert_eq!(tiers[0]["viewers"], 3, "{tiers}");

    let out = player.wait_with_output().await.expect("aiortc ends");
    let seen = printed(&out);
    println!("the WHEP player saw: {seen}");
    assert_eq!(seen["size"], serde_json::json!([1280, 720]), "{seen}");
    let fps = seen["fps"].as_f64().unwrap_or_default();
    assert!(
        fps >= 25.0,
        "the player decoded {fps} frames a second: {seen}"
    );
    // The full mix: the first participant's voice is in what the player hears.
    let share = seen["tone_share"].as_f64().unwrap_or_default();
    assert!(
        share >= TONE_PRESENT,
        "the first tone's share {share}: {seen}"
    );
    assert_eq!(seen["delete_status"], 200, "{seen}");
    server
        .wait_for_room("audience", Duration::from_secs(5), |r| r["watchers"] == 0)
        .await;
}

/// The HTTP side of both doors, with offers FFmpeg and aiortc sent (tests/data/): no media
/// flows here.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_doors_answer_as_rfc_9725_and_whep_say() {
    common::init();
    let server = Server::start(
        "whip-http",
        &["--max-participants", "1", "--max-watchers", "1"],
    );
    let whip_offer = include_bytes!("data/ffmpeg-whip-offer.sdp").to_vec();
    let whep_offer = include_bytes!("data/aiortc-whep-offer.sdp").to_vec();
    let sdp = [("content-type", "application/sdp")];

    let options = server.request("OPTIONS", "/whip/http", &[]).await;
    assert_eq!(options.status, 204);
    assert_eq!(options.headers["accept-post"], "application/sdp");
    assert_eq!(options.headers["access-control-allow-origin"], "*");
    assert!(options.headers["access-control-allow-headers"]
        .to_str()
        .is_ok_and(|h| h.contains("Authorization")));

    let wrong_type = server
        .request_with_body(
            "POST",
            "/whip/http",
            &[("content-type", "text/plain")],
            whip_offer.clone(),
        )
        .await;
    assert_eq!(wrong_type.status, 415);
    let garbage = server
        .request_with_body("POST", "/whip/http", &sdp, b"v=0\r\nnonsense".to_vec())
        .await;
    assert_eq!(garbage.status, 400);
    assert_eq!(garbage.headers["content-type"], "application/problem+json");
    assert_eq!(garbage.json()["code"], "bad_sdp");
    let huge = server
        .request_with_body("POST", "/whip/http", &sdp, vec![b'a'; 100_000])
        .await;
    assert_eq!(huge.status, 413);
    let bad_room = server
        .request_with_body("POST", "/whip/no%20spaces", &sdp, whip_offer.clone())
        .await;
    assert_eq!(
        bad_room.status,
        400,
        "{:?}",
        String::from_utf8_lossy(&bad_room.body)
    );

    // A feed is created: the answer takes both m-lines and carries the server's candidates.
    let created = server
        .request_with_body("POST", "/whip/http?name=Camera", &sdp, whip_offer.clone())
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(created.headers["content-type"], "application/sdp");
    let answer = String::from_utf8_lossy(&created.body).to_string();
    assert_eq!(answer.matches("a=recvonly").count(), 2, "{answer}");
    assert!(answer.contains("a=candidate:"), "{answer}");
    let location = created.headers["location"]
        .to_str()
        .expect("a Location")
        .to_string();
    assert!(location.starts_with("/whip/http/"), "{location}");
    let etag = created.headers["etag"]
        .to_str()
        .expect("an ETag")
        .to_string();
    let feed = feed_in(&server, "http").await;
    assert_eq!(feed["name"], "Camera");

    // The room holds one participant: a second feed is refused as the RFC says (503).
    let full = server
        .request_with_body("POST", "/whip/http", &sdp, whip_offer.clone())
        .await;
    assert_eq!(full.status, 503);
    assert!(full.headers.contains_key("retry-after"));
    assert_eq!(full.json()["code"], "room_full");

    // Trickle: If-Match is required, ICE restarts are not supported, candidates are taken.
    let fragment = b"a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 127.0.0.1 61764 typ host\r\na=end-of-candidates\r\n".to_vec();
    let frag = ("content-type", "application/trickle-ice-sdpfrag");
    let no_etag = server
        .request_with_body("PATCH", &location, &[frag], fragment.clone())
        .await;
    assert_eq!(no_etag.status, 428);
    let restart = server
        .request_with_body(
            "PATCH",
            &location,
            &[frag, ("if-match", "*")],
            fragment.clone(),
        )
        .await;
    assert_eq!(restart.status, 422);
    let stale = server
        .request_with_body(
            "PATCH",
            &location,
            &[frag, ("if-match", "\"other\"")],
            fragment.clone(),
        )
        .await;
    assert_eq!(stale.status, 412);
    let trickled = server
        .request_with_body("PATCH", &location, &[frag, ("if-match", &etag)], fragment)
        .await;
    assert_eq!(trickled.status, 204);

    // A WHEP offer that cannot receive video (FFmpeg's sends only) is refused.
    let sendonly = server
        .request_with_body("POST", "/whep/http", &sdp, whip_offer.clone())
        .await;
    assert_eq!(
        sendonly.status,
        400,
        "{}",
        String::from_utf8_lossy(&sendonly.body)
    );
    // A player is not a participant: it gets in although the room is full of participants,
    // and the room takes one player (--max-watchers 1).
    let watching = server
        .request_with_body("POST", "/whep/http", &sdp, whep_offer.clone())
        .await;
    assert_eq!(
        watching.status,
        201,
        "{}",
        String::from_utf8_lossy(&watching.body)
    );
    let answer = String::from_utf8_lossy(&watching.body).to_string();
    assert_eq!(answer.matches("a=sendonly").count(), 2, "{answer}");
    let second = server
        .request_with_body("POST", "/whep/http", &sdp, whep_offer.clone())
        .await;
    assert_eq!(second.status, 503);
    let player = watching.headers["location"]
        .to_str()
        .expect("a Location")
        .to_string();
    assert!(player.starts_with("/whep/http/"), "{player}");
    // A resource is only reached through its own door and room.
    let crossed = player.replacen("/whep/", "/whip/", 1);
    assert_eq!(server.request("DELETE", &crossed, &[]).await.status, 404);

    assert_eq!(server.request("DELETE", &player, &[]).await.status, 200);
    assert_eq!(server.request("DELETE", &location, &[]).await.status, 200);
    assert_eq!(server.request("DELETE", &location, &[]).await.status, 404);
    assert_eq!(
        server.request("GET", &location, &[]).await.status,
        405,
        "a resource takes PATCH and DELETE"
    );
    // With its feed and its player gone, the room closes.
    let end = Instant::now() + Duration::from_secs(5);
    while server.room("http").await.is_some() {
        assert!(
            Instant::now() < end,
            "the room stays open with nobody in it"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_jwt_secret_a_feed_needs_a_join_token_and_is_named_by_it() {
    common::init();
    let server = Server::start("whip-jwt", &["--jwt-secret", JWT_SECRET]);
    let offer = include_bytes!("data/ffmpeg-whip-offer.sdp").to_vec();
    let sdp = ("content-type", "application/sdp");

    let anonymous = server
        .request_with_body("POST", "/whip/secure", &[sdp], offer.clone())
        .await;
    assert_eq!(anonymous.status, 401);
    assert_eq!(anonymous.headers["www-authenticate"], "Bearer");
    assert_eq!(anonymous.json()["code"], "unauthorized");

    let secret = Secret::new(JWT_SECRET);
    let mint = |room: &str| {
        mcu_server::auth::mint(
            &secret,
            room,
            "Lobby camera",
            false,
            Duration::from_secs(600),
            SystemTime::now(),
        )
        .expect("minting")
    };
    let other_room = format!("Bearer {}", mint("elsewhere"));
    let refused = server
        .request_with_body(
            "POST",
            "/whip/secure",
            &[sdp, ("authorization", &other_room)],
            offer.clone(),
        )
        .await;
    assert_eq!(refused.status, 401, "a token for another room");

    let bearer = format!("Bearer {}", mint("secure"));
    let created = server
        .request_with_body(
            "POST",
            "/whip/secure?name=Ignored",
            &[sdp, ("authorization", &bearer)],
            offer,
        )
        .await;
    assert_eq!(
        created.status,
        201,
        "{}",
        String::from_utf8_lossy(&created.body)
    );
    assert_eq!(feed_in(&server, "secure").await["name"], "Lobby camera");
    let location = created.headers["location"].to_str().expect("a Location");
    assert_eq!(
        server
            .request("DELETE", location, &[("authorization", &bearer)])
            .await
            .status,
        200
    );
}
