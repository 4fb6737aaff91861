//! End-to-end: a real `mcu serve` on loopback and synthetic participants that look at the media
//! they receive. Run serially (`--test-threads=1`): each test is a whole conference on 2 cores.

mod common;

use std::time::{Duration, Instant};

use common::{all_ok, crowd_of, settle, wait_for, Server, SETTLE};
use mcu_probe::frames::frame_gaps;
use mcu_probe::probe::{analysis, Crowd};
use mcu_server::codec::VideoCodec;

/// Frames further apart than this are a stall a person would notice.
const STALL: Duration = Duration::from_millis(700);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_participant_sees_itself_full_frame() {
    common::init();
    let server = Server::start("one_participant", &[]);
    let mut crowd = crowd_of(&server, "solo", 1).await;
    settle(&crowd, "the participant to see itself").await;
    let obs = crowd.members[0].observe();
    let layout = obs.layout.expect("a layout arrived");
    assert_eq!(layout.tiles.len(), 1);
    let tile = &layout.tiles[0];
    assert_eq!((tile.x, tile.y, tile.width, tile.height), (0, 0, 1280, 720));
    // The layout is on the nominal 1280×720 frame; the composite itself is no larger than the
    // one camera in it (the probe sends 320×180): see canvas.rs.
    let frame = obs.recent.last().expect("frames arrived");
    assert_eq!((frame.width, frame.height), (320, 180));
    // Full frame: the colour reaches the top of the picture too (no bars).
    let colour = crowd.members[0].colour();
    assert!(
        frame.tops.iter().all(|(_, c)| analysis::shows(*c, colour)),
        "{frame:?}"
    );
    assert!(obs.first_self_frame.is_some());
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_participants_find_every_colour_in_its_quadrant_and_a_leaver_frees_its_tile() {
    common::init();
    let server = Server::start("four_participants", &[]);
    let mut crowd = crowd_of(&server, "four", 4).await;
    let reports = settle(&crowd, "all four colours in their tiles").await;
    // Quadrants in join order: the layout is what the probe checked colours against, so check
    // that it is the 2×2 grid.
    let layout = crowd.members[0].observe().layout.expect("a layout arrived");
    // Centres: the active speaker's tile is inset by its outline.
    let quadrants: Vec<(u32, u32)> = layout
        .tiles
        .iter()
        .map(|t| (t.x + t.width / 2, t.y + t.height / 2))
        .collect();
    assert_eq!(
        quadrants,
        vec![(320, 180), (960, 180), (320, 540), (960, 540)]
    );
    let ids: Vec<&str> = crowd.members.iter().map(|p| p.id()).collect();
    let tile_owners: Vec<&str> = layout
        .tiles
        .iter()
        .map(|t| t.participant_id.as_str())
        .collect();
    assert_eq!(tile_owners, ids);
    for r in &reports {
        assert!(r.tiles.iter().all(|t| t.ok), "{r:#?}");
    }

    // One leaves: the other three get the 3-tile layout within 2 s, and the composite never stalls.
    let left_at = Instant::now();
    crowd.leave(3).await;
    wait_for(
        "the three-tile layout with the right colours",
        Duration::from_secs(2),
        || {
            let three = crowd.members.iter().all(|p| {
                let obs = p.observe();
                obs.layout.as_ref().is_some_and(|l| l.tiles.len() == 3)
                    && obs
                        .recent
                        .last()
                        .is_some_and(|f| f.tiles.len() == 3 && f.at > left_at)
            });
            (three && all_ok(&crowd).is_some()).then_some(())
        },
    )
    .await;
    // Look a little past the change too.
    tokio::time::sleep(Duration::from_millis(500)).await;
    for p in &crowd.members {
        let obs = p.observe();
        let gap = frame_gaps(
            &obs.frame_times,
            left_at - Duration::from_secs(1),
            Instant::now(),
            STALL,
        )
        .max_gap;
        assert!(
            gap < STALL,
            "{} saw the composite stall for {gap:?}",
            p.id()
        );
    }
    crowd.leave_all().await;
}

/// The canvas follows the cameras (canvas.rs): alone with a 320×180 camera, a participant gets a
/// 320×180 composite; a second 320×180 camera beside it needs 640×360, at once; when it leaves the
/// canvas shrinks back after a while. Through every change the first participant's picture keeps
/// its frame rate and shows the right colours.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_one_person_room_keeps_its_frame_rate_as_its_canvas_grows_and_shrinks() {
    common::init();
    let server = Server::start("canvas", &[]);
    let mut crowd = crowd_of(&server, "canvas", 1).await;
    settle(&crowd, "the first participant to see itself").await;
    let size_now = |crowd: &Crowd| {
        crowd.members[0]
            .observe()
            .recent
            .last()
            .map(|f| (f.width, f.height))
    };
    assert_eq!(size_now(&crowd), Some((320, 180)));
    let watched_from = Instant::now();

    crowd.join(VideoCodec::Vp8).await.expect("a second joins");
    settle(&crowd, "two participants to see each other").await;
    wait_for("the canvas to grow to 640×360", SETTLE, || {
        (size_now(&crowd) == Some((640, 360)) && all_ok(&crowd).is_some()).then_some(())
    })
    .await;

    crowd.leave(1).await;
    let shrink_by = mcu_server::canvas::SHRINK_AFTER + SETTLE;
    wait_for("the canvas to shrink back to 320×180", shrink_by, || {
        (size_now(&crowd) == Some((320, 180)) && all_ok(&crowd).is_some()).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    let obs = crowd.members[0].observe();
    let sizes: Vec<(u32, u32)> = obs
        .sizes
        .iter()
        .filter(|(at, ..)| *at >= watched_from)
        .map(|(_, w, h)| (*w, *h))
        .collect();
    assert_eq!(
        sizes,
        [(640, 360), (320, 180)],
        "the sizes the composite took"
    );
    let gaps = frame_gaps(&obs.frame_times, watched_from, Instant::now(), STALL);
    println!(
        "through both changes: {:.1} fps, longest gap {:?}",
        gaps.fps, gaps.max_gap
    );
    assert!(gaps.fps >= 27.0, "the composite ran at {:.1} fps", gaps.fps);
    assert!(
        gaps.max_gap < STALL,
        "the composite stalled for {:?}",
        gaps.max_gap
    );
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_sit_side_by_side_cropped_to_fill_or_letterboxed_and_a_cameraless_participant_keeps_its_placeholder(
) {
    common::init();
    let server = Server::start("side_by_side", &[]);
    let mut crowd = Crowd::new(&server.url(), "pair").expect("crowd");
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("camera participant joins");
    crowd
        .join_without_camera()
        .await
        .expect("audio-only participant joins");
    // all_ok includes the placeholder grey in the cameraless participant's tile, for both.
    settle(&crowd, "the camera's colour and the placeholder").await;
    let obs = crowd.members[1].observe();
    let layout = obs.layout.expect("a layout arrived");
    let tiles: Vec<_> = layout
        .tiles
        .iter()
        .map(|t| (t.x, t.y, t.width, t.height))
        .collect();
    // The tiles may be inset by the active speaker's outline (4 px).
    assert!(
        matches!(
            tiles.as_slice(),
            [(0 | 4, 0 | 4, _, _), (640 | 644, 0 | 4, _, _)]
        ),
        "{tiles:?}"
    );
    let camera = crowd.members[0].id().to_string();
    let share_at_top = |colour: analysis::Rgb| {
        let obs = crowd.members[1].observe();
        let matching = obs
            .recent
            .iter()
            .filter(|f| {
                f.tops
                    .iter()
                    .any(|(p, c)| *p == camera && analysis::shows(*c, colour))
            })
            .count();
        matching as f64 / obs.recent.len().max(1) as f64
    };
    // By default 16:9 video fills a 640×720 tile: cropped at the sides, its colour reaches the
    // top of the tile.
    let colour = crowd.members[0].colour();
    wait_for("the camera's colour at the top of its tile", SETTLE, || {
        (share_at_top(colour) >= 0.8).then_some(())
    })
    .await;
    // Letterboxed on request: black above the picture, and the picture whole.
    let reply = server
        .request_with_body(
            "PUT",
            "/api/v1/rooms/pair/layout",
            &[],
            br#"{"layout":"grid","fit":"letterbox"}"#.to_vec(),
        )
        .await;
    assert_eq!(
        reply.status,
        200,
        "{}",
        String::from_utf8_lossy(&reply.body)
    );
    wait_for("letterbox bars above the camera", SETTLE, || {
        (share_at_top(analysis::BAR_COLOUR) >= 0.8).then_some(())
    })
    .await;
    crowd.leave_all().await;
}

/// A browser changes its camera's size mid-call when its CPU or its link falls behind (Chromium
/// went 640×360 → 632×356 → 316×178 in one call under load), often just as the layout changes
/// (it sends at its tile's size, which a layout change just moved). Each change reaches the
/// tile's crop: a new size from the decoder, a new shape from the layout, and the tile must show
/// the camera throughout. (The exact frame-by-frame race that once left a tile showing garbage,
/// a new size arriving on the frame after a new shape, is replayed deterministically in
/// crates/mcu-server/src/media/camera_tests.rs; here the whole call goes through it as it comes.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_camera_that_changes_its_size_as_the_layout_changes_still_fills_its_tile() {
    common::init();
    let server = Server::start("camera_resize", &[]);
    let mut crowd = crowd_of(&server, "resize", 2).await;
    settle(&crowd, "both cameras in their tiles").await;
    let resized = crowd.members[0].id().to_string();
    // Smaller and larger than before, odd sizes (as browsers send), and smaller than what was
    // being cropped away; each time the layout switches between pinning it (1280×540, cropped at
    // the top and bottom) and the grid (640×720, cropped at the sides) at the same moment.
    let sizes = [
        (160, 90),
        (474, 267),
        (158, 88),
        (640, 360),
        (316, 178),
        (320, 180),
    ];
    for (step, (width, height)) in sizes.into_iter().enumerate() {
        let layout = if step % 2 == 0 {
            format!(r#"{{"layout":"pin","participant_id":"{resized}"}}"#)
        } else {
            r#"{"layout":"grid"}"#.to_string()
        };
        assert!(crowd.members[0].resize_camera(width, height));
        let reply = server
            .request_with_body(
                "PUT",
                "/api/v1/rooms/resize/layout",
                &[],
                layout.into_bytes(),
            )
            .await;
        assert_eq!(
            reply.status,
            200,
            "{}",
            String::from_utf8_lossy(&reply.body)
        );
        // What is checked is the last second's frames, all at the new size and shape.
        tokio::time::sleep(Duration::from_millis(1500)).await;
        settle(
            &crowd,
            &format!("the camera at {width}×{height} in its tile (step {step})"),
        )
        .await;
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mix_minus_everyone_hears_the_others_and_never_themselves() {
    common::init();
    let server = Server::start("mix_minus", &[]);
    let mut crowd = crowd_of(&server, "mixminus", 3).await;
    let reports = settle(&crowd, "every tone check to pass").await;
    for r in &reports {
        for t in &r.tones {
            if t.participant == r.id {
                assert!(
                    !t.expect_present && t.share < analysis::TONE_ABSENT,
                    "{r:#?}"
                );
            } else {
                assert!(
                    t.expect_present && t.share >= analysis::TONE_PRESENT,
                    "{r:#?}"
                );
            }
        }
    }
    crowd.leave_all().await;
}

/// Whether every listener hears exactly the `mixed` participants' tones, never their own.
fn heard_as(crowd: &Crowd, tones: &[f64], mixed: &[usize]) -> bool {
    (0..crowd.members.len()).all(|listener| {
        let audio = crowd.members[listener].observe().audio;
        tones.iter().enumerate().all(|(speaker, hz)| {
            let share = analysis::tone_share(&audio, 48_000.0, *hz);
            if mixed.contains(&speaker) && speaker != listener {
                share >= analysis::TONE_PRESENT
            } else {
                share < analysis::TONE_ABSENT
            }
        })
    })
}

/// A room with more microphones than --max-mixed-voices mixes that many voices (here everyone
/// "talks", so the first ones in keep their places) and everyone else hears one shared encode of
/// that mix. When a moderator mutes a mixed voice, a waiting one takes its place: it moves from
/// the shared encode to its own (everyone but itself), the muted one the other way, and both
/// streams go on being decoded by the probes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_over_the_mixing_limit_mixes_its_talkers_and_the_others_share_one_encode() {
    common::init();
    let server = Server::start("loudest", &["--max-mixed-voices", "2"]);
    let mut crowd = crowd_of(&server, "loudest", 4).await;
    let roster = crowd.roster();
    let ids: Vec<String> = crowd.members.iter().map(|m| m.id().to_string()).collect();
    let tones: Vec<f64> = ids
        .iter()
        .map(|id| roster[id].tone_hz.expect("a tone"))
        .collect();
    // Whichever two microphones reached the room first hold the two places (all four talk without
    // a pause, so nobody gives one up): the order the tracks arrive in is the network's.
    let pairs: Vec<[usize; 2]> = (0..4)
        .flat_map(|a| (a + 1..4).map(move |b| [a, b]))
        .collect();
    let [first, second] = wait_for(
        "two to be heard by everyone else, the other two by nobody",
        SETTLE,
        || {
            pairs
                .iter()
                .copied()
                .find(|pair| heard_as(&crowd, &tones, pair))
        },
    )
    .await;
    let waiting: Vec<usize> = (0..4).filter(|i| *i != first && *i != second).collect();
    let mixing = |room: &serde_json::Value| {
        (
            room["pipeline"]["mixed_voices"].as_u64(),
            room["pipeline"]["listeners_on_shared_mix"].as_u64(),
        )
    };
    let room = server.room("loudest").await.expect("the room");
    assert_eq!(mixing(&room), (Some(2), Some(2)), "{room:#}");

    let muted = server
        .request(
            "POST",
            &format!("/api/v1/rooms/loudest/participants/{}/mute", ids[first]),
            &[],
        )
        .await;
    assert_eq!(muted.status, 200);
    let newcomer = wait_for(
        "a waiting voice to take the muted one's place",
        SETTLE,
        || {
            waiting
                .iter()
                .copied()
                .find(|&w| heard_as(&crowd, &tones, &[second, w]))
        },
    )
    .await;
    let room = server.room("loudest").await.expect("the room");
    assert_eq!(mixing(&room), (Some(2), Some(2)), "{room:#}");
    assert!(
        room["pipeline"]["mix"]["mix_changes"].as_u64() >= Some(4),
        "{room:#}"
    );
    // The newcomer hears the other talker through its own encode, and keeps hearing it.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(heard_as(&crowd, &tones, &[second, newcomer]), "{newcomer}");
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_sender_is_composited_beside_a_vp8_sender() {
    common::init();
    let server = Server::start("h264_sender", &[]);
    let mut crowd = Crowd::new(&server.url(), "mixed-codecs").expect("crowd");
    crowd
        .join(VideoCodec::H264)
        .await
        .expect("H.264 participant joins");
    crowd
        .join(VideoCodec::Vp8)
        .await
        .expect("VP8 participant joins");
    settle(&crowd, "both colours in both composites").await;
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_room_sends_an_h264_composite() {
    common::init();
    let server = Server::start("h264_room", &["--room-codec", "hroom=h264"]);
    let mut crowd = crowd_of(&server, "hroom", 2).await;
    wait_for("both colours in the H.264 composite", SETTLE, || {
        all_ok(&crowd)
    })
    .await;
    // The colours were decoded from an H.264 track: the room's codec, not the senders' VP8.
    for member in &crowd.members {
        assert_eq!(
            member.observe().composite_codec,
            Some(VideoCodec::H264),
            "{} received the composite in another codec",
            member.id()
        );
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_viewers_pli_yields_a_keyframe() {
    common::init();
    let server = Server::start("pli", &[]);
    let mut crowd = crowd_of(&server, "pli", 1).await;
    settle(&crowd, "the first composite frame").await;
    let viewer = &crowd.members[0];
    // Three PLIs, each answered by a keyframe. Periodic keyframes come every 10 s, so they cannot
    // answer three requests in a row.
    for round in 0..3 {
        // Leave more than the 500 ms keyframe throttle since the last keyframe.
        tokio::time::sleep(Duration::from_millis(700)).await;
        let asked = Instant::now();
        assert!(viewer.send_pli().await, "round {round}: PLI not sent");
        wait_for(
            &format!("a keyframe after PLI {round}"),
            Duration::from_millis(1500),
            || {
                viewer
                    .observe()
                    .keyframes
                    .iter()
                    .any(|k| *k > asked)
                    .then_some(())
            },
        )
        .await;
    }
    crowd.leave_all().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn media_ports_come_from_the_configured_range_and_candidates_carry_the_public_ip() {
    common::init();
    // 127.0.0.1 stands in for a VM's public address: every host candidate is rewritten to it,
    // and since it is loopback the call still connects here.
    let server = Server::start(
        "port_range",
        &[
            "--udp-port-range",
            "47000-47099",
            "--public-ip",
            "127.0.0.1",
        ],
    );
    let mut crowd = crowd_of(&server, "ranged", 2).await;
    settle(&crowd, "both participants over the ranged ports").await;
    for p in &crowd.members {
        let candidates = p.observe().server_candidates;
        assert!(!candidates.is_empty());
        for c in &candidates {
            // candidate:<foundation> <component> <transport> <priority> <address> <port> typ ...
            let fields: Vec<&str> = c.split_whitespace().collect();
            let (address, port) = (fields[4], fields[5].parse::<u16>().expect("a port"));
            // The mapping is per address family: an IPv4 public address rewrites IPv4 candidates.
            if !address.contains(':') {
                assert_eq!(address, "127.0.0.1", "{c}");
            }
            assert!((47000..=47099).contains(&port), "{c}");
        }
    }
    crowd.leave_all().await;
}

/// The ports in the server's ICE candidates, as one participant received them.
fn candidate_ports(p: &mcu_probe::probe::Participant) -> Vec<u16> {
    p.observe()
        .server_candidates
        .iter()
        .filter_map(|c| c.split_whitespace().nth(5)?.parse().ok())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_config_file_sets_the_media_port_and_the_environment_overrides_it() {
    common::init();
    let dir = std::path::PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let file = dir.join("mcu-test.toml");
    std::fs::write(&file, "udp-port = 47311\nmax-participants = 4\n").expect("writing the config");
    let file = file.to_string_lossy().to_string();

    let server = Server::start("config_file", &["--config", &file]);
    let mut crowd = crowd_of(&server, "configured", 1).await;
    settle(&crowd, "media through the configured port").await;
    let ports = candidate_ports(&crowd.members[0]);
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == 47311),
        "{ports:?}"
    );
    crowd.leave_all().await;
    drop(server);

    let server = Server::start_with_env(
        "config_env",
        &["--config", &file],
        &[("MCU_UDP_PORT", "47312")],
    );
    let mut crowd = crowd_of(&server, "configured", 1).await;
    settle(&crowd, "media through the environment's port").await;
    let ports = candidate_ports(&crowd.members[0]);
    assert!(
        !ports.is_empty() && ports.iter().all(|p| *p == 47312),
        "{ports:?}"
    );
    crowd.leave_all().await;
}
