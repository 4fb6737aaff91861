//! Layouts and the active speaker, end to end: a real server, synthetic participants whose tones
//! can be made loud or quiet, and checks on what they see (the colour at the centre of each
//! region) and are told (`active_speaker`, `layout`), and on a recording made during a switch.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::recording::decode;
use common::{settle, wait_for, Server, SETTLE};
use mcu_probe::probe::{analysis, spec_for, Crowd, Participant};
use mcu_server::codec::VideoCodec;

/// A talker close to the microphone: -13.5 dB RMS.
const LOUD: f64 = 0.3;
/// Someone in the room not talking, but not silent either: -43 dB, well above the speech gate.
const QUIET: f64 = 0.01;
/// What the issue asks: the loud one is the speaker within 2 s, a new talker takes over within
/// about 2.5 s (hysteresis: clearly louder for 0.6 s, at most one change a second).
const FIRST_DECISION: Duration = Duration::from_secs(2);
const TAKEOVER: Duration = Duration::from_millis(2500);

/// The latest `active_speaker` `p` was told, and when.
fn speaker_seen_by(p: &Participant) -> Option<(Instant, String)> {
    p.observe().speakers.last().cloned()
}

/// Waits until everyone has been told that `who` is the speaker; returns how long that took
/// from `since` for the slowest.
async fn until_speaker(crowd: &Crowd, who: &str, since: Instant, deadline: Duration) -> Duration {
    wait_for(&format!("{who} to be the active speaker"), deadline, || {
        let told: Option<Vec<Instant>> = crowd
            .members
            .iter()
            .map(|p| {
                speaker_seen_by(p)
                    .filter(|(_, s)| s == who)
                    .map(|(at, _)| at)
            })
            .collect();
        told.map(|times| times.into_iter().max().unwrap_or(since) - since)
    })
    .await
}

/// Share of the last second's frames in which `viewer` saw `colour` at the centre of `whose`
/// tile (as the layout it was told places it).
fn tile_share(viewer: &Participant, whose: &str, colour: analysis::Rgb) -> f64 {
    let obs = viewer.observe();
    let since = Instant::now() - Duration::from_secs(1);
    let frames: Vec<_> = obs.recent.iter().filter(|f| f.at >= since).collect();
    if frames.is_empty() {
        return 0.0;
    }
    let matching = frames
        .iter()
        .filter(|f| {
            f.tiles
                .iter()
                .any(|(p, c)| p == whose && analysis::shows(*c, colour))
        })
        .count();
    matching as f64 / frames.len() as f64
}

/// Whether a tile is at `rect`, or inside it by the outline the active speaker's tile gets when
/// another tile is as large (4 px each way at 1280×720).
fn same_place(tile: (u32, u32, u32, u32), rect: (u32, u32, u32, u32)) -> bool {
    tile == rect || tile == (rect.0 + 4, rect.1 + 4, rect.2 - 8, rect.3 - 8)
}

/// Waits until every member sees `whose` colour in `whose` tile, and that tile is `rect`.
async fn until_drawn(crowd: &Crowd, whose: &Participant, rect: (u32, u32, u32, u32)) {
    let (id, colour) = (whose.id().to_string(), whose.colour());
    wait_for(
        &format!("{id}'s colour in its tile {rect:?}"),
        SETTLE,
        || {
            crowd
                .members
                .iter()
                .all(|viewer| {
                    let layout = viewer.observe().layout;
                    let tile = layout.and_then(|l| {
                        l.tiles
                            .into_iter()
                            .find(|t| t.participant_id == id)
                            .map(|t| (t.x, t.y, t.width, t.height))
                    });
                    tile.is_some_and(|t| same_place(t, rect))
                        && tile_share(viewer, &id, colour) >= 0.8
                })
                .then_some(())
        },
    )
    .await;
}

async fn quiet_crowd(server: &Server, room: &str, n: usize) -> Crowd {
    let mut crowd = Crowd::new(&server.url(), room).expect("creating the probe crowd");
    for i in 0..n {
        let mut spec = spec_for(i, VideoCodec::Vp8);
        spec.volume = QUIET;
        crowd.join_with(spec).await.expect("joining");
    }
    crowd
}

async fn put_layout(server: &Server, room: &str, body: &str) -> common::Reply {
    server
        .request_with_body(
            "PUT",
            &format!("/api/v1/rooms/{room}/layout"),
            &[("content-type", "application/json")],
            body.as_bytes().to_vec(),
        )
        .await
}

/// The large region of the `speaker` and `pin` layouts with three people: the frame above a
/// strip of 320×180 thumbnails.
const STAGE: (u32, u32, u32, u32) = (0, 0, 1280, 540);
/// How long the recording runs on the grid before the switch.
const BEFORE_SWITCH: Duration = Duration::from_secs(3);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loud_participant_is_the_speaker_and_fills_the_stage_and_equals_do_not_flap() {
    common::init();
    let server = Server::start("speaker_layout", &["--layout", "speaker"]);
    let crowd = quiet_crowd(&server, "stage", 3).await;
    settle(&crowd, "three quiet participants on the stage").await;
    let [a, b, c] = [&crowd.members[0], &crowd.members[1], &crowd.members[2]];

    // b speaks up.
    let since = Instant::now();
    b.set_volume(LOUD);
    let took = until_speaker(&crowd, b.id(), since, SETTLE).await;
    println!("b became the active speaker {took:?} after speaking up");
    assert!(
        took <= FIRST_DECISION,
        "b became the speaker after {took:?}"
    );
    until_drawn(&crowd, b, STAGE).await;
    let layout = a.observe().layout.expect("a layout");
    assert_eq!(layout.layout, "speaker");

    // b falls quiet, c speaks up: c takes over.
    let since = Instant::now();
    b.set_volume(QUIET);
    c.set_volume(LOUD);
    let took = until_speaker(&crowd, c.id(), since, SETTLE).await;
    println!("c took over {took:?} after speaking up");
    assert!(took <= TAKEOVER, "c took over after {took:?}");
    until_drawn(&crowd, c, STAGE).await;

    // b and c talk at once, equally loud: the decision does not flap.
    b.set_volume(LOUD);
    let window = Duration::from_secs(8);
    let start = Instant::now();
    tokio::time::sleep(window).await;
    let changes = a
        .observe()
        .speakers
        .iter()
        .filter(|(at, _)| *at >= start)
        .count();
    println!("{changes} speaker changes in {window:?} of two equal talkers");
    assert!(
        changes as f64 <= window.as_secs_f64(),
        "{changes} changes in {window:?}"
    );
    let mut crowd = crowd;
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pin_pip_and_custom_layouts_put_people_where_they_say_and_a_recording_shows_the_switch() {
    common::init();
    let server = Server::start("layouts_api", &[]);
    let mut crowd = common::crowd_of(&server, "layouts", 3).await;
    settle(&crowd, "three participants in the grid").await;
    let [a, b, c] = [&crowd.members[0], &crowd.members[1], &crowd.members[2]];
    let roster: HashMap<String, analysis::Rgb> = crowd
        .members
        .iter()
        .map(|p| (p.id().to_string(), p.colour()))
        .collect();

    // A recording runs across the switch from the grid to a pin.
    let started = server
        .request("POST", "/api/v1/rooms/layouts/recording", &[])
        .await;
    assert_eq!(
        started.status,
        201,
        "{}",
        String::from_utf8_lossy(&started.body)
    );
    tokio::time::sleep(BEFORE_SWITCH).await;
    let reply = put_layout(
        &server,
        "layouts",
        &format!(r#"{{"layout":"pin","participant_id":"{}"}}"#, a.id()),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    assert_eq!(reply.json()["layout"], "pin");
    until_drawn(&crowd, a, STAGE).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let stopped = server
        .request("DELETE", "/api/v1/rooms/layouts/recording", &[])
        .await;
    assert_eq!(
        stopped.status,
        200,
        "{}",
        String::from_utf8_lossy(&stopped.body)
    );

    // Picture-in-picture: c fills the frame, a sits in the corner, b is not drawn.
    let reply = put_layout(
        &server,
        "layouts",
        &format!(
            r#"{{"layout":"pip","participant_id":"{}","inset_participant_id":"{}"}}"#,
            c.id(),
            a.id()
        ),
    )
    .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    until_drawn(&crowd, c, (0, 0, 1280, 720)).await;
    until_drawn(&crowd, a, (928, 508, 320, 180)).await;
    let layout = b.observe().layout.expect("a layout");
    assert!(
        layout.tiles.iter().all(|t| t.participant_id != b.id()),
        "b is hidden: {layout:?}"
    );
    let inset = layout.tiles.iter().find(|t| t.participant_id == a.id());
    assert_eq!(inset.map(|t| t.z), Some(1), "the corner is drawn above");

    // A custom layout from the API: b on the left half, the first other (a) on the right.
    let custom = format!(
        r#"{{"layout":"custom","regions":[
            {{"x":0,"y":0,"width":0.5,"height":1,"seat":"{}"}},
            {{"x":0.5,"y":0,"width":0.5,"height":1,"seat":1,"fit":"letterbox"}}]}}"#,
        b.id()
    );
    let reply = put_layout(&server, "layouts", &custom).await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    until_drawn(&crowd, b, (0, 0, 640, 720)).await;
    until_drawn(&crowd, a, (640, 0, 640, 720)).await;

    // Bad layouts are refused with the reason, and the room keeps the one it has.
    for (body, reason) in [
        (
            r#"{"layout":"custom","regions":[{"x":0.8,"y":0,"width":0.5,"height":1,"seat":1}]}"#,
            "reaches past the frame",
        ),
        (
            r#"{"layout":"pin","participant_id":"p99"}"#,
            "p99 is not in this room",
        ),
        (r#"{"layout":"mosaic"}"#, "unknown layout"),
        (r#"{"layout":"grid","regions":[]}"#, "not used by the grid"),
        (r#"{"layout": 3}"#, "not a layout request"),
    ] {
        let reply = put_layout(&server, "layouts", body).await;
        assert_eq!(reply.status, 400, "{body}");
        assert_eq!(reply.error_code(), "bad_layout", "{body}");
        let message = reply.json()["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        assert!(message.contains(reason), "{body}: {message}");
    }
    let view = server.room("layouts").await.expect("the room");
    assert_eq!(view["layout"]["layout"], "custom");

    // The recording shows the grid before the switch and the pin after it.
    let info = stopped.json();
    let file = server
        .recordings
        .join(info["file"].as_str().expect("the file is named"));
    let decoded = decode(&file);
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let first = decoded.video.first().expect("frames").pts;
    let grid_frame = decoded
        .frame_near(first + BEFORE_SWITCH / 2)
        .expect("a frame before the switch");
    let last = decoded.video.last().expect("frames").pts;
    let pin_frame = decoded
        .frame_near(last - Duration::from_millis(1000))
        .expect("a frame after the switch");
    // The 2×2 grid's tiles for three: two above, one centred below.
    for (who, (cx, cy)) in [(a, (320, 180)), (b, (960, 180)), (c, (640, 540))] {
        let seen = grid_frame.average(cx, cy, 8);
        assert!(
            analysis::shows(seen, roster[who.id()]),
            "before the switch, {}'s grid tile shows {}",
            who.id(),
            seen.hex()
        );
    }
    // The pin: a large, b and c in the strip (two 320×180 thumbnails, centred).
    for (who, (cx, cy)) in [(a, (640, 270)), (b, (480, 630)), (c, (800, 630))] {
        let seen = pin_frame.average(cx, cy, 8);
        assert!(
            analysis::shows(seen, roster[who.id()]),
            "after the switch, {}'s tile shows {}",
            who.id(),
            seen.hex()
        );
    }
    // Labels: the bottom-left corner of a's large tile holds its name, drawn over a's colour.
    // (Its dark box and white letters: far from a's colour in some channel, where `shows`, made
    // to forgive compression, would take the darkened colour for a's.)
    let label = pin_frame.average(40, 510, 6);
    let own = roster[a.id()];
    let difference = [(label.0, own.0), (label.1, own.1), (label.2, own.2)]
        .iter()
        .map(|(x, y)| x.abs_diff(*y))
        .max()
        .unwrap_or(0);
    assert!(
        difference >= 60,
        "no label at the bottom left of a's tile: {} is close to a's colour {}",
        label.hex(),
        own.hex()
    );
    crowd.leave_all().await;
}
