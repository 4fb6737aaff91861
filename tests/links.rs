//! Thin and lossy links: synthetic participants behind a bad link built at their own socket
//! (mcu-probe's impair.rs; these machines have no netem), sending camera-like video so the
//! composite's encoders really reach their bitrates. What a person would see is asserted loosely
//! (frame rates well under the targets, which live in `mcu bench` and docs/performance.md).

mod common;

use std::time::{Duration, Instant};

use common::{wait_for, Server};
use mcu_probe::frames::{frame_gaps, FrameGaps};
use mcu_probe::impair::Impairment;
use mcu_probe::probe::{Observation, Participant};
use mcu_server::protocol::ServerMessage;

/// Well under the top tier (2 Mbit/s) and over the middle one (600 kbit/s with its headroom and
/// the audio), so the viewer has somewhere to go.
const THIN_LINK_KBPS: u32 = 1000;
/// Frame rate a viewer on a thin link must keep, loosely (the target is 25 at 1.2 Mbit/s).
const THIN_MIN_FPS: f64 = 15.0;
/// And the viewers on good links (the target is 29).
const GOOD_MIN_FPS: f64 = 20.0;
/// Time to move down: a receiver report or two, and the splice onto a keyframe.
const MOVE_DOWN_DEADLINE: Duration = Duration::from_secs(20);
/// Time to climb back once the link is lifted: the wait before a link test doubles after each
/// failed one, up to a minute (tiering.rs MAX_UP_HOLD), then two tests and two moves.
const MOVE_UP_DEADLINE: Duration = Duration::from_secs(100);
/// Frames further apart than this are a stall a person would notice.
const STALL: Duration = Duration::from_millis(700);

/// Frame rate and longest wait over a window of what `obs` decoded.
fn gaps(obs: &Observation, from: Instant, to: Instant) -> FrameGaps {
    frame_gaps(&obs.frame_times, from, to, STALL)
}

fn current_width(p: &Participant) -> Option<u32> {
    p.observe().sizes.last().map(|(_, w, _)| *w)
}

/// Every size the participant's composite had since it joined: a viewer on a good link only ever
/// has the top tier's.
fn widths(p: &Participant) -> Vec<u32> {
    p.observe().sizes.iter().map(|(_, w, _)| *w).collect()
}

/// How long a sender on a 5 % lossy, jittery uplink may take to connect and show its tile: its
/// DTLS handshake flights are retransmitted on a doubling timer (1, 2, 4, 8 s) when a packet of
/// them is lost, and a CI run on 2026-12-02 saw no track from it within 15 s. The test is about
/// the tile moving once it is there, not about how soon it connects.
const LOSSY_CONNECT: Duration = Duration::from_secs(40);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewer_on_a_thin_link_gets_a_smaller_picture_and_the_full_one_back_when_it_widens() {
    common::init();
    // The tiers are measured under a 1280×720 top tier: four 320×180 cameras would otherwise
    // make a 640×360 canvas (canvas.rs), as large as the middle tier.
    let server = Server::start("thin_link", &["--canvas", "fixed"]);
    let mut crowd = common::camera_like_crowd(&server, "thin", 2).await;
    let mut thin = common::camera_like(2);
    thin.impairment = Some(Impairment {
        downlink_kbps: Some(THIN_LINK_KBPS),
        ..Default::default()
    });
    crowd.join_with(thin).await.expect("joining on a thin link");

    // Down: onto a smaller tier, told so, and the admin view agrees.
    let width = wait_for(
        "the thin viewer to be moved to a smaller picture",
        MOVE_DOWN_DEADLINE,
        || current_width(&crowd.members[2]).filter(|w| *w < 1280),
    )
    .await;
    let told = crowd.members[2].observe().notices.iter().any(|n| {
        matches!(n, ServerMessage::VideoTier { tier, width: w, .. } if *tier > 0 && *w == width)
    });
    assert!(told, "no video_tier message for the {width}-wide tier");
    // The session reports the link to the room once a second.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let room = server.room("thin").await.expect("the room is listed");
        let link = room["participants"][2]["link"].clone();
        if link["tier"].as_u64().is_some_and(|t| t > 0) {
            assert!(
                link["loss"].is_number() && link["jitter_ms"].is_number(),
                "{link}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the admin view does not show the thin viewer's tier: {link}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // It keeps decoding there, and the others keep the top tier.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let to = Instant::now();
    let fps = gaps(&crowd.members[2].observe(), from, to).fps;
    eprintln!("the thin viewer decodes {fps:.1} fps at {width} wide");
    assert!(fps >= THIN_MIN_FPS, "the thin viewer decodes {fps:.1} fps");
    for good in &crowd.members[..2] {
        let obs = good.observe();
        let g = gaps(&obs, from, to);
        assert!(g.fps >= GOOD_MIN_FPS, "{} decodes {:.1} fps", obs.id, g.fps);
        assert_eq!(widths(good), [1280], "{} left the top tier", obs.id);
        assert!(g.max_gap < STALL, "{} stalled for {:?}", obs.id, g.max_gap);
    }

    // Up: the link widens, and the viewer climbs back to the full picture.
    assert!(crowd.members[2].set_link(Impairment::default()));
    wait_for(
        "the viewer to be back on the full picture",
        MOVE_UP_DEADLINE,
        || current_width(&crowd.members[2]).filter(|w| *w == 1280),
    )
    .await;
    let from = Instant::now();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let fps = gaps(&crowd.members[2].observe(), from, Instant::now()).fps;
    assert!(fps >= GOOD_MIN_FPS, "back on top, it decodes {fps:.1} fps");
    for good in &crowd.members[..2] {
        assert_eq!(widths(good), [1280], "{} left the top tier", good.id());
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sender_on_a_lossy_jittery_uplink_keeps_its_tile_moving_for_the_others() {
    common::init();
    // The default timeouts: a clean-clone CI run (on 3b43ccf) had this sender's handshake still
    // unfinished after the 10-s media timeout, which then counted from the join and removed it
    // before its first packet; the connect timeout (30 s until the first packet) is for that.
    let server = Server::start("lossy_sender", &[]);
    let mut crowd = common::camera_like_crowd(&server, "lossy", 2).await;
    let mut lossy = common::camera_like(2);
    lossy.impairment = Some(Impairment {
        uplink_loss: 0.05,
        jitter_ms: 30,
        ..Default::default()
    });
    crowd
        .join_with(lossy)
        .await
        .expect("joining on a lossy link");
    let sender = crowd.members[2].id().to_string();
    let colour = crowd.members[2].colour();

    // Everyone sees the lossy sender's colour in its tile.
    wait_for(
        "the lossy sender's tile at the others",
        LOSSY_CONNECT,
        || {
            crowd.members[..2]
                .iter()
                .all(|p| {
                    p.observe().recent.last().is_some_and(|f| {
                        f.tiles.iter().any(|(id, c)| {
                            *id == sender && mcu_probe::probe::analysis::shows(*c, colour)
                        })
                    })
                })
                .then_some(())
        },
    )
    .await;

    // Its camera keeps being decoded (the server NACKs what it lost and puts the rest back in
    // order), and the others' pictures keep flowing with its colour in place.
    let camera_frames = |room: &serde_json::Value| {
        room["participants"]
            .as_array()
            .and_then(|ps| ps.iter().find(|p| p["id"] == sender.as_str()))
            .and_then(|p| p["camera_frames"].as_u64())
            .unwrap_or(0)
    };
    let before = camera_frames(&server.room("lossy").await.expect("listed"));
    let from = Instant::now();
    // 12 s: the loss is random, and one unrepaired keyframe costs the camera a second; over 6 s
    // one clean-clone run measured 17.8 fps where others measure 22-24.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let to = Instant::now();
    let after = camera_frames(&server.room("lossy").await.expect("listed"));
    let decoded_fps = (after - before) as f64 / (to - from).as_secs_f64();
    eprintln!("the lossy sender's camera decoded at {decoded_fps:.1} fps");
    assert!(
        decoded_fps >= GOOD_MIN_FPS,
        "the lossy sender's camera decoded at {decoded_fps:.1} fps"
    );
    for viewer in &crowd.members[..2] {
        let obs = viewer.observe();
        let g = gaps(&obs, from, to);
        assert!(g.fps >= GOOD_MIN_FPS, "{} decodes {:.1} fps", obs.id, g.fps);
        assert!(g.max_gap < STALL, "{} stalled for {:?}", obs.id, g.max_gap);
        let shown = obs
            .recent
            .iter()
            .filter(|f| f.at >= from)
            .filter(|f| {
                f.tiles
                    .iter()
                    .any(|(id, c)| *id == sender && mcu_probe::probe::analysis::shows(*c, colour))
            })
            .count();
        let sampled = obs.recent.iter().filter(|f| f.at >= from).count();
        assert!(
            sampled > 0 && shown * 10 >= sampled * 9,
            "{}: the lossy sender's colour in {shown} of {sampled} frames",
            obs.id
        );
    }
    crowd.leave_all().await;
}
