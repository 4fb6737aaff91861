//! The admin API and join tokens against a real server: who gets in, what each refusal says,
//! and that moderation (mute, remove, close) changes what the participants hear and see.

mod common;

use std::time::{Duration, SystemTime};

use common::{crowd_of, settle, wait_for, was_told, Server, SETTLE};
use mcu_probe::probe::{analysis, spec_for, Crowd};
use mcu_server::auth::Secret;
use mcu_server::codec::VideoCodec;
use mcu_server::protocol::ServerMessage;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
const JWT_SECRET: &str = "test-jwt-secret-0123456789abcdef0123";

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_wants_its_token_answers_json_errors_and_serves_recordings_by_range() {
    common::init();
    let server = Server::start("admin-api", &["--admin-token", ADMIN_TOKEN]);
    let auth = bearer(ADMIN_TOKEN);
    let with_token = [("authorization", auth.as_str())];

    // 401 without a token and with a wrong one, loopback or not.
    let none = server.request("GET", "/api/v1/rooms", &[]).await;
    assert_eq!(
        (none.status, none.error_code().as_str()),
        (401, "unauthorized")
    );
    assert!(none.headers.contains_key("www-authenticate"));
    let wrong = server
        .request("GET", "/api/v1/rooms", &[("authorization", "Bearer guess")])
        .await;
    assert_eq!(wrong.status, 401);
    let ok = server.request("GET", "/api/v1/rooms", &with_token).await;
    assert_eq!(ok.status, 200);
    assert_eq!(ok.json()["rooms"], serde_json::json!([]));

    // 404 for a room nobody is in, 400 for names that are not room names.
    for (method, path) in [
        ("GET", "/api/v1/rooms/nobody"),
        ("POST", "/api/v1/rooms/nobody/recording"),
        ("DELETE", "/api/v1/rooms/nobody"),
    ] {
        let r = server.request(method, path, &with_token).await;
        assert_eq!(
            (r.status, r.error_code().as_str()),
            (404, "room_not_found"),
            "{method} {path}"
        );
    }
    for path in [
        "/api/v1/rooms/..%2F..%2Fetc/recording",
        "/api/v1/rooms/a.b/recording",
        "/api/v1/recordings/..%2F..%2Fetc%2Fpasswd/file",
        "/api/v1/recordings/%2Fetc%2Fpasswd",
    ] {
        let method = if path.ends_with("/recording") {
            "POST"
        } else {
            "GET"
        };
        let r = server.request(method, path, &with_token).await;
        assert_eq!(
            r.status,
            400,
            "{path}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(!String::from_utf8_lossy(&r.body).contains("root:"));
    }
    let dotted = server
        .request("GET", "/api/v1/recordings/../../../etc/passwd", &with_token)
        .await;
    assert!(
        matches!(dotted.status, 400 | 404)
            && !String::from_utf8_lossy(&dotted.body).contains("root:"),
        "a dotted path got {}",
        dotted.status
    );

    // A room to record: 201, then 409 for a second start.
    let crowd = crowd_of(&server, "api", 1).await;
    settle(&crowd, "the participant to see itself").await;
    let start = server
        .request("POST", "/api/v1/rooms/api/recording", &with_token)
        .await;
    assert_eq!(start.status, 201);
    let id = start.json()["id"].as_str().expect("an id").to_string();
    let again = server
        .request("POST", "/api/v1/rooms/api/recording", &with_token)
        .await;
    assert_eq!(
        (again.status, again.error_code().as_str()),
        (409, "conflict")
    );
    let room = server
        .request("GET", "/api/v1/rooms/api", &with_token)
        .await
        .json();
    assert_eq!(room["recording"]["id"], id.as_str());
    assert_eq!(room["participants"][0]["name"], "probe-1");
    // Deleting what is still being written is a conflict too.
    let busy = server
        .request("DELETE", &format!("/api/v1/recordings/{id}"), &with_token)
        .await;
    assert_eq!(busy.status, 409);
    wait_for("a few seconds of recording", SETTLE, || {
        let size = std::fs::metadata(server.recordings.join(format!("{id}.webm")))
            .map(|m| m.len())
            .unwrap_or(0);
        (size > 20_000).then_some(())
    })
    .await;
    let stop = server
        .request("DELETE", "/api/v1/rooms/api/recording", &with_token)
        .await;
    assert_eq!(stop.status, 200);
    assert_eq!(stop.json()["status"], "complete");
    let twice = server
        .request("DELETE", "/api/v1/rooms/api/recording", &with_token)
        .await;
    assert_eq!(twice.status, 409);

    // Download: whole, then a range, then a range past the end.
    let file = std::fs::read(server.recordings.join(format!("{id}.webm"))).expect("the file");
    let whole = server
        .request("GET", &format!("/api/v1/recordings/{id}/file"), &with_token)
        .await;
    assert_eq!(whole.status, 200);
    assert_eq!(whole.body, file);
    assert_eq!(whole.headers["content-type"], "video/webm");
    let range_header = [
        ("authorization", auth.as_str()),
        ("range", "bytes=100-1099"),
    ];
    let part = server
        .request(
            "GET",
            &format!("/api/v1/recordings/{id}/file"),
            &range_header,
        )
        .await;
    assert_eq!(part.status, 206);
    assert_eq!(
        part.headers["content-range"],
        format!("bytes 100-1099/{}", file.len()).as_str()
    );
    assert_eq!(part.body, file[100..1100]);
    let past = [
        ("authorization", auth.as_str()),
        ("range", "bytes=999999999-"),
    ];
    let past = server
        .request("GET", &format!("/api/v1/recordings/{id}/file"), &past)
        .await;
    assert_eq!(past.status, 416);

    // Listed, then deleted, then gone.
    let list = server
        .request("GET", "/api/v1/recordings", &with_token)
        .await
        .json();
    assert_eq!(list["recordings"][0]["id"], id.as_str());
    let deleted = server
        .request("DELETE", &format!("/api/v1/recordings/{id}"), &with_token)
        .await;
    assert_eq!(deleted.status, 204);
    let gone = server
        .request("GET", &format!("/api/v1/recordings/{id}"), &with_token)
        .await;
    assert_eq!(
        (gone.status, gone.error_code().as_str()),
        (404, "recording_not_found")
    );
    assert!(!server.recordings.join(format!("{id}.webm")).exists());

    // The CLI speaks to the same API.
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_mcu"))
        .args([
            "rooms",
            "--url",
            &server.url(),
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .output()
        .expect("running mcu rooms");
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let rooms: serde_json::Value = serde_json::from_slice(&cli.stdout).expect("JSON out");
    assert_eq!(rooms["rooms"][0]["room"], "api");
    let refused = std::process::Command::new(env!("CARGO_BIN_EXE_mcu"))
        .args(["record", "start", "api", "--url", &server.url()])
        .output()
        .expect("running mcu record");
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("401"));
}

/// The share of `hz` in the last second `member` heard.
fn hears(crowd: &Crowd, member: usize, hz: f64) -> f64 {
    let audio = crowd.members[member].observe().audio;
    analysis::tone_share(&audio, 48_000.0, hz)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_moderator_mutes_removes_and_closes_and_the_participants_notice() {
    common::init();
    let server = Server::start("admin-moderation", &[]);
    let crowd = crowd_of(&server, "mod", 3).await;
    settle(&crowd, "three participants to see and hear each other").await;
    let roster = crowd.roster();
    let first = crowd.members[0].id().to_string();
    let first_tone = roster[&first].tone_hz.expect("a tone");
    let second_tone = roster[crowd.members[1].id()].tone_hz.expect("a tone");

    // Mute: the others stop hearing the first participant, and still hear each other.
    let muted = server
        .request(
            "POST",
            &format!("/api/v1/rooms/mod/participants/{first}/mute"),
            &[],
        )
        .await;
    assert_eq!(muted.status, 200);
    assert_eq!(muted.json()["muted"], true);
    wait_for(
        "the muted participant to fall silent for the others",
        SETTLE,
        || {
            (hears(&crowd, 1, first_tone) < analysis::TONE_ABSENT
                && hears(&crowd, 2, first_tone) < analysis::TONE_ABSENT)
                .then_some(())
        },
    )
    .await;
    assert!(hears(&crowd, 2, second_tone) >= analysis::TONE_PRESENT);
    let room = server.request("GET", "/api/v1/rooms/mod", &[]).await.json();
    assert_eq!(room["participants"][0]["muted"], true);
    assert!(was_told(&crowd.members[1], |n| matches!(n,
        ServerMessage::ParticipantMuted { participant_id, muted: true, by_self: false } if *participant_id == first)));
    let unmuted = server
        .request(
            "POST",
            &format!("/api/v1/rooms/mod/participants/{first}/unmute"),
            &[],
        )
        .await;
    assert_eq!(unmuted.status, 200);
    wait_for("the unmuted participant to be heard again", SETTLE, || {
        (hears(&crowd, 1, first_tone) >= analysis::TONE_PRESENT).then_some(())
    })
    .await;

    // Remove: the third participant is told, and the layout shrinks to two tiles.
    let third = crowd.members[2].id().to_string();
    let removed = server
        .request(
            "POST",
            &format!("/api/v1/rooms/mod/participants/{third}/remove"),
            &[],
        )
        .await;
    assert_eq!(removed.status, 204);
    let unknown = server
        .request("POST", "/api/v1/rooms/mod/participants/p99/remove", &[])
        .await;
    assert_eq!(
        (unknown.status, unknown.error_code().as_str()),
        (404, "participant_not_found")
    );
    wait_for("the removed participant to be told", SETTLE, || {
        was_told(&crowd.members[2], |n| {
            matches!(n, ServerMessage::Removed { .. })
        })
        .then_some(())
    })
    .await;
    let room = server.request("GET", "/api/v1/rooms/mod", &[]).await.json();
    assert_eq!(room["layout"]["tiles"].as_array().map(Vec::len), Some(2));

    // Close: everyone is told, and the room is gone.
    let closed = server.request("DELETE", "/api/v1/rooms/mod", &[]).await;
    assert_eq!(closed.status, 204);
    assert_eq!(
        server.request("GET", "/api/v1/rooms/mod", &[]).await.status,
        404
    );
    wait_for("the others to be told the room closed", SETTLE, || {
        crowd.members[..2]
            .iter()
            .all(|m| was_told(m, |n| matches!(n, ServerMessage::Removed { .. })))
            .then_some(())
    })
    .await;
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

async fn join_with_token(
    server: &Server,
    room: &str,
    token: Option<&str>,
) -> Result<Crowd, String> {
    let mut crowd = Crowd::new(&server.url(), room).expect("a crowd");
    let mut spec = spec_for(0, VideoCodec::Vp8);
    spec.token = token.map(Secret::new);
    match crowd.join_with(spec).await {
        Ok(_) => Ok(crowd),
        Err(e) => Err(format!("{e:#}")),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn join_tokens_admit_their_holder_and_every_bad_token_is_refused_with_its_reason() {
    common::init();
    let server = Server::start("admin-jwt", &["--jwt-secret", JWT_SECRET]);
    let secret = Secret::new(JWT_SECRET);
    let now = SystemTime::now();
    let valid = mcu_server::auth::mint(
        &secret,
        "jwt",
        "Grace",
        false,
        Duration::from_secs(600),
        now,
    )
    .expect("minting");

    let crowd = join_with_token(&server, "jwt", Some(&valid))
        .await
        .expect("a valid token joins");
    settle(&crowd, "the token holder to see itself").await;
    let room = server.request("GET", "/api/v1/rooms/jwt", &[]).await.json();
    assert_eq!(
        room["participants"][0]["name"], "Grace",
        "the token's name is used"
    );

    let expired = mcu_server::auth::mint(
        &secret,
        "jwt",
        "Grace",
        false,
        Duration::from_secs(60),
        now - Duration::from_secs(3600),
    )
    .expect("minting");
    let wrong_room = mcu_server::auth::mint(
        &secret,
        "other",
        "Grace",
        false,
        Duration::from_secs(600),
        now,
    )
    .expect("minting");
    let claims = serde_json::json!({"room": "jwt", "name": "Mallory", "record": true,
        "exp": now.duration_since(SystemTime::UNIX_EPOCH).unwrap().as_secs() + 600});
    let alg_none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT"}"#),
        b64(claims.to_string().as_bytes())
    );
    let hs512 = jsonwebtoken::encode(
        &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS512),
        &claims,
        &jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes()),
    )
    .expect("an HS512 token");
    let forged = mcu_server::auth::mint(
        &Secret::new("someone-elses-secret-0123456789abcdef"),
        "jwt",
        "Mallory",
        true,
        Duration::from_secs(600),
        now,
    )
    .expect("minting");
    let cases: [(Option<&str>, &str); 6] = [
        (None, "requires a join token"),
        (Some(&expired), "expired"),
        (Some(&wrong_room), "for room \"other\""),
        (Some(&alg_none), "algorithm \"none\""),
        (Some(&hs512), "algorithm \"HS512\""),
        (Some(&forged), "signature"),
    ];
    for (token, reason) in cases {
        let refusal = join_with_token(&server, "jwt", token)
            .await
            .err()
            .unwrap_or_else(|| panic!("{reason}: the join was accepted"));
        assert!(
            refusal.contains("Unauthorized") && refusal.contains(reason),
            "expected {reason:?} in {refusal:?}"
        );
    }

    // No token, whole or in part, ever reaches the log.
    drop(crowd);
    let log = std::fs::read_to_string(&server.log).expect("the server log");
    for token in [&valid, &expired, &wrong_room, &alg_none, &hs512, &forged] {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!log.contains(token.as_str()), "a token is in the log");
        assert!(
            signature.is_empty() || !log.contains(signature),
            "a signature is in the log"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_a_token_that_allows_it_may_record_from_the_call() {
    common::init();
    let server = Server::start("admin-jwt-record", &["--jwt-secret", JWT_SECRET]);
    let secret = Secret::new(JWT_SECRET);
    let now = SystemTime::now();
    let viewer = mcu_server::auth::mint(
        &secret,
        "rec",
        "Viewer",
        false,
        Duration::from_secs(600),
        now,
    )
    .expect("minting");
    let host = mcu_server::auth::mint(&secret, "rec", "Host", true, Duration::from_secs(600), now)
        .expect("minting");
    let viewer = join_with_token(&server, "rec", Some(&viewer))
        .await
        .expect("joins");
    let host = join_with_token(&server, "rec", Some(&host))
        .await
        .expect("joins");
    let start = r#"{"type":"record","action":"start"}"#.to_string();
    assert!(viewer.members[0].send_raw(start.clone()).await);
    wait_for("the viewer's refusal", SETTLE, || {
        viewer.members[0]
            .observe()
            .errors
            .iter()
            .any(|e| e.contains("Forbidden"))
            .then_some(())
    })
    .await;
    assert!(host.members[0].send_raw(start).await);
    wait_for("the room to be recorded", SETTLE, || {
        was_told(&viewer.members[0], |n| {
            matches!(n, ServerMessage::Recording { .. })
        })
        .then_some(())
    })
    .await;
    let room = server.request("GET", "/api/v1/rooms/rec", &[]).await.json();
    assert_eq!(room["recording"]["status"], "recording");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_named_layout_from_the_file_opens_rooms_and_only_a_token_that_allows_it_switches() {
    common::init();
    let file = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("layouts-test.json");
    std::fs::write(
        &file,
        r#"{"layouts": {"stage+2": {"layout": "custom", "regions": [
            {"x": 0, "y": 0, "width": 0.75, "height": 1, "seat": "speaker"},
            {"x": 0.75, "y": 0, "width": 0.25, "height": 0.5, "seat": 1},
            {"x": 0.75, "y": 0.5, "width": 0.25, "height": 0.5, "seat": 2}]}}}"#,
    )
    .expect("writing the layouts file");
    let path = file.to_str().expect("a UTF-8 path");
    let server = Server::start(
        "admin-jwt-layout",
        &[
            "--jwt-secret",
            JWT_SECRET,
            "--layouts",
            path,
            "--layout",
            "stage+2",
        ],
    );
    let secret = Secret::new(JWT_SECRET);
    let (now, ttl) = (SystemTime::now(), Duration::from_secs(600));
    let mint = |name: &str, layout: bool| {
        let grants = mcu_server::auth::Grants {
            record: false,
            layout,
        };
        mcu_server::auth::mint_with(&secret, "deck", name, grants, ttl, now).expect("minting")
    };
    let guest = join_with_token(&server, "deck", Some(&mint("Guest", false)))
        .await
        .expect("joins");
    let host = join_with_token(&server, "deck", Some(&mint("Host", true)))
        .await
        .expect("joins");
    // The room opened on the file's layout: the first to join (the speaker before anyone
    // speaks) in the large region.
    let opened = wait_for("the file's layout", SETTLE, || {
        guest.members[0]
            .observe()
            .layout
            .filter(|l| l.tiles.len() == 2)
    })
    .await;
    assert_eq!(opened.layout, "stage+2");
    let speaker_tile = &opened.tiles[0];
    assert_eq!((speaker_tile.width, speaker_tile.height), (960, 720));

    let speaker = r#"{"type":"set_layout","layout":"speaker"}"#.to_string();
    assert!(guest.members[0].send_raw(speaker.clone()).await);
    wait_for("the guest's refusal", SETTLE, || {
        guest.members[0]
            .observe()
            .errors
            .iter()
            .any(|e| e.contains("Forbidden") && e.contains("layout"))
            .then_some(())
    })
    .await;
    assert_eq!(
        server.room("deck").await.expect("the room")["layout"]["layout"],
        "stage+2"
    );
    assert!(host.members[0].send_raw(speaker).await);
    wait_for("everyone to be told of the speaker layout", SETTLE, || {
        [&guest, &host]
            .iter()
            .all(|c| {
                c.members[0]
                    .observe()
                    .layout
                    .is_some_and(|l| l.layout == "speaker")
            })
            .then_some(())
    })
    .await;
    // A bad request from the host is refused with its reason, not forbidden.
    let bad = r#"{"type":"set_layout","layout":"pin","participant_id":"p9"}"#.to_string();
    assert!(host.members[0].send_raw(bad).await);
    wait_for("the host's bad_layout", SETTLE, || {
        host.members[0]
            .observe()
            .errors
            .iter()
            .any(|e| e.contains("BadLayout") && e.contains("p9 is not in this room"))
            .then_some(())
    })
    .await;
    // A flood of switches is cut to one a second (after a burst of four): each would redraw
    // everyone's picture.
    for i in 0..8 {
        let layout = if i % 2 == 0 { "grid" } else { "speaker" };
        let switch = format!(r#"{{"type":"set_layout","layout":"{layout}"}}"#);
        assert!(host.members[0].send_raw(switch).await);
    }
    wait_for("the host's flood to be rate-limited", SETTLE, || {
        let heard = host.members[0].heard();
        let refusals = mcu_probe::heard::lock(&heard.sharing).errors.clone();
        refusals
            .iter()
            .any(|(code, message)| {
                *code == mcu_server::protocol::ErrorCode::RateLimited && message.contains("layout")
            })
            .then_some(())
    })
    .await;
}
