//! Recording, end to end: a real server records a room of synthetic participants, and the test
//! decodes the file the way a player would and looks at the picture and listens to the sound.

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::recording::decode;
use common::{crowd_of, settle, wait_for, was_told, Server, SETTLE};
use mcu_probe::probe::analysis;

const FPS: f64 = 30.0;

/// The room's recording as the admin API shows it, once its duration reaches `seconds`.
async fn wait_until_recorded(server: &Server, room: &str, seconds: f64) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds) + SETTLE;
    loop {
        let reply = server
            .request("GET", &format!("/api/v1/rooms/{room}"), &[])
            .await;
        if reply.status == 200 {
            let recording = reply.json()["recording"].clone();
            if recording["duration_seconds"].as_f64().unwrap_or(0.0) >= seconds {
                return recording;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the recording of {room} did not reach {seconds} s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Starts `room`'s recording through the API; returns what the API says of it.
async fn start_recording(server: &Server, room: &str) -> serde_json::Value {
    let start = server
        .request("POST", &format!("/api/v1/rooms/{room}/recording"), &[])
        .await;
    assert_eq!(
        start.status,
        201,
        "{}",
        String::from_utf8_lossy(&start.body)
    );
    start.json()
}

/// Stops `room`'s recording through the API; returns what the API says of the finished file.
async fn stop_recording(server: &Server, room: &str) -> serde_json::Value {
    let stop = server
        .request("DELETE", &format!("/api/v1/rooms/{room}/recording"), &[])
        .await;
    assert_eq!(stop.status, 200, "{}", String::from_utf8_lossy(&stop.body));
    stop.json()
}

/// Each participant's colour at the centre of its tile of `frame` (`when` names the moment).
fn assert_tiles_show(
    frame: &common::recording::VideoFrame,
    tiles: &serde_json::Value,
    roster: &std::collections::HashMap<String, mcu_probe::probe::Expected>,
    when: &str,
) {
    for tile in tiles.as_array().expect("tiles") {
        let id = tile["participant_id"].as_str().expect("an id");
        let expected = roster[id].colour;
        let cx = (tile["x"].as_u64().unwrap() + tile["width"].as_u64().unwrap() / 2) as usize;
        let cy = (tile["y"].as_u64().unwrap() + tile["height"].as_u64().unwrap() / 2) as usize;
        let seen = frame.average(cx, cy, 8);
        assert!(
            analysis::shows(seen, expected),
            "{when}: the tile of {id} shows {} instead of {}",
            seen.hex(),
            expected.hex()
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_shows_every_tile_and_carries_every_voice_for_as_long_as_it_ran() {
    common::init();
    let server = Server::start("recording-three", &[]);
    let crowd = crowd_of(&server, "rec3", 3).await;
    settle(&crowd, "three participants to see and hear each other").await;
    let room = server.room("rec3").await.expect("the room exists");
    let layout = room["layout"]["tiles"].clone();

    let started = Instant::now();
    let info = start_recording(&server, "rec3").await;
    assert_eq!(info["status"], "recording");
    // The participants are told.
    wait_for(
        "every participant to hear that recording started",
        SETTLE,
        || {
            crowd
                .members
                .iter()
                .all(|m| {
                    was_told(m, |n| {
                        matches!(n, mcu_server::protocol::ServerMessage::Recording { state, .. }
                        if *state == mcu_server::protocol::RecordingState::Started)
                    })
                })
                .then_some(())
        },
    )
    .await;
    wait_until_recorded(&server, "rec3", 10.0).await;
    let stopped = stop_recording(&server, "rec3").await;
    let recorded_for = started.elapsed();
    let info = stopped;
    assert_eq!(info["status"], "complete");
    let file = server
        .recordings
        .join(info["file"].as_str().expect("the file is named"));

    let decoded = decode(&file);
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let duration = decoded.video_duration(FPS);
    println!(
        "recorded for {recorded_for:?} (between the API calls), the file's video lasts {duration:?}"
    );
    let off_by = duration.as_secs_f64() - recorded_for.as_secs_f64();
    assert!(
        off_by.abs() <= 1.0,
        "the file lasts {duration:?}, the recording ran {recorded_for:?}"
    );
    let first = &decoded.video[0];
    assert_eq!((first.width, first.height), (1280, 720));

    // A/V sync: both streams start together and end together.
    let audio_start = decoded.audio_start.expect("the file has audio");
    let start_offset = audio_start.as_secs_f64() - first.pts.as_secs_f64();
    let audio_end = audio_start.as_secs_f64() + decoded.audio.len() as f64 / 48_000.0;
    let end_offset = audio_end - (first.pts + duration).as_secs_f64();
    println!(
        "A/V offset: audio starts {:+.0} ms and ends {:+.0} ms from the video",
        start_offset * 1000.0,
        end_offset * 1000.0
    );
    assert!(start_offset.abs() < 0.2 && end_offset.abs() < 0.2);

    // The picture: at the start, the middle and the end, each participant's colour in its tile.
    let roster = crowd.roster();
    for at in [
        Duration::from_secs(1),
        duration / 2,
        duration - Duration::from_secs(1),
    ] {
        let frame = decoded
            .frame_near(first.pts + at)
            .expect("a kept frame near that time");
        assert_tiles_show(frame, &layout, &roster, &format!("at {at:?}"));
    }

    // The sound: the full mix, everyone's tone in every second we listen to.
    for at in [Duration::from_secs(1), duration / 2] {
        let second = decoded.audio_second(at);
        for expected in roster.values() {
            let hz = expected.tone_hz.expect("probe participants send a tone");
            let share = analysis::tone_share(second, 48_000.0, hz);
            assert!(
                share >= analysis::TONE_PRESENT,
                "{hz} Hz at {at:?} has {share:.3} of the power"
            );
        }
    }

    // And the list says what the file is.
    let list = server
        .request("GET", "/api/v1/recordings", &[])
        .await
        .json();
    let listed = &list["recordings"][0];
    assert_eq!(listed["id"], info["id"]);
    assert_eq!(listed["room"], "rec3");
    assert!(listed["size_bytes"].as_u64().unwrap() > 10_000);
    let listed_seconds = listed["duration_seconds"].as_f64().unwrap();
    assert!((listed_seconds - recorded_for.as_secs_f64()).abs() <= 1.0);
}

/// A recording that starts with its room, before any camera, while people arrive one by one: the
/// composite's caps must not change as cameras arrive (the muxer refuses a change and the
/// recording used to fail 0.6 s in), so the file plays for as long as the room ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_that_starts_with_its_room_plays_for_as_long_as_the_room_ran() {
    common::init();
    let server = Server::start("recording-from-creation", &["--auto-record"]);
    let opened = Instant::now();
    let mut crowd = crowd_of(&server, "early", 1).await;
    for _ in 0..2 {
        // People arrive a second apart, each bringing a camera into a room already recording.
        tokio::time::sleep(Duration::from_secs(1)).await;
        crowd
            .join(mcu_server::codec::VideoCodec::Vp8)
            .await
            .expect("a participant joins");
    }
    settle(&crowd, "three participants to see each other").await;
    let layout = server.room("early").await.expect("the room exists")["layout"]["tiles"].clone();
    let recording = wait_until_recorded(&server, "early", 6.0).await;
    let roster = crowd.roster();
    crowd.leave_all().await;
    let lived = opened.elapsed();
    let sidecar_path = server
        .recordings
        .join(format!("{}.json", recording["id"].as_str().unwrap()));
    let sidecar = wait_for("the emptied room's recording to end", SETTLE, || {
        let text = std::fs::read_to_string(&sidecar_path).ok()?;
        let sidecar: serde_json::Value = serde_json::from_str(&text).ok()?;
        (sidecar["status"] != "recording").then_some(sidecar)
    })
    .await;
    assert_eq!(sidecar["status"], "complete", "{sidecar}");
    let recorded = sidecar["duration_seconds"].as_f64().expect("a duration");
    println!("the room lived {lived:?}; its recording lasts {recorded} s");
    assert!(
        (lived.as_secs_f64() - recorded).abs() <= 1.5,
        "the room lived {lived:?} but its recording lasts {recorded} s"
    );
    let decoded = decode(&server.recordings.join(sidecar["file"].as_str().unwrap()));
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let duration = decoded.video_duration(FPS);
    assert!(
        (duration.as_secs_f64() - recorded).abs() <= 1.0,
        "the file's video lasts {duration:?} of the {recorded} s recorded"
    );
    // Near its end, the file shows the three who were there.
    let first = &decoded.video[0];
    let frame = decoded
        .frame_near(first.pts + duration - Duration::from_secs(1))
        .expect("a kept frame near the end");
    assert_tiles_show(frame, &layout, &roster, "a second before the end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_killed_mid_recording_leaves_a_file_that_plays_to_near_the_end() {
    common::init();
    let mut server = Server::start("recording-killed", &["--auto-record"]);
    let crowd = crowd_of(&server, "crash", 1).await;
    settle(&crowd, "the participant to see itself").await;
    let recording = wait_until_recorded(&server, "crash", 8.0).await;
    server.kill();
    let recordings: PathBuf = server.recordings.clone();
    let file = recordings.join(recording["file"].as_str().expect("the file is named"));

    let decoded = decode(&file);
    let duration = decoded.video_duration(FPS);
    println!(
        "killed 8 s in: the file decodes to {duration:?} of video, {:.1} s of audio (decoder said: {:?})",
        decoded.audio.len() as f64 / 48_000.0,
        decoded.error
    );
    assert!(
        duration >= Duration::from_secs(6),
        "only {duration:?} survived"
    );
    let first = &decoded.video[0];
    assert_eq!((first.width, first.height), (1280, 720));
    let colour = crowd
        .roster()
        .values()
        .next()
        .expect("one participant")
        .colour;
    let seen = decoded
        .frame_near(first.pts + duration / 2)
        .expect("a frame mid-way")
        .average(640, 360, 8);
    assert!(
        analysis::shows(seen, colour),
        "the middle shows {}",
        seen.hex()
    );

    // A server started on the same directory lists it as interrupted, with its length estimated.
    let restarted = Server::start_with_env(
        "recording-killed-restart",
        &[],
        &[("MCU_RECORDINGS_DIR", recordings.to_str().unwrap())],
    );
    let list = restarted
        .request("GET", "/api/v1/recordings", &[])
        .await
        .json();
    let listed = &list["recordings"][0];
    assert_eq!(listed["status"], "interrupted");
    assert!(listed["duration_seconds"].as_f64().unwrap() >= 6.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_outlives_comings_and_goings_ends_with_its_room_and_with_sigterm() {
    common::init();
    let mut server = Server::start("recording-sigterm", &["--auto-record"]);

    // A room that empties ends its recording cleanly.
    let mut brief = crowd_of(&server, "brief", 1).await;
    settle(&brief, "the brief participant to see itself").await;
    let brief_recording = wait_until_recorded(&server, "brief", 1.0).await;
    brief.leave_all().await;
    let brief_sidecar = server
        .recordings
        .join(format!("{}.json", brief_recording["id"].as_str().unwrap()));
    wait_for(
        "the emptied room's recording to be complete",
        SETTLE,
        || {
            let text = std::fs::read_to_string(&brief_sidecar).ok()?;
            let sidecar: serde_json::Value = serde_json::from_str(&text).ok()?;
            (sidecar["status"] == "complete").then_some(())
        },
    )
    .await;

    // Someone joins and leaves mid-recording; the recording goes on without a gap.
    let mut crowd = crowd_of(&server, "term", 1).await;
    settle(&crowd, "the participant to see itself").await;
    crowd
        .join(mcu_server::codec::VideoCodec::Vp8)
        .await
        .expect("a second joins");
    settle(&crowd, "two participants to see each other").await;
    crowd.leave(1).await;
    let recording = wait_until_recorded(&server, "term", 4.0).await;
    let status = server.terminate().expect("the server exits after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    let sidecar = server
        .recordings
        .join(format!("{}.json", recording["id"].as_str().unwrap()));
    let sidecar: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(sidecar).expect("the sidecar exists"))
            .expect("the sidecar is JSON");
    assert_eq!(sidecar["status"], "complete");
    let decoded = decode(&server.recordings.join(recording["file"].as_str().unwrap()));
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let longest_gap = decoded.longest_gap();
    println!("longest gap between recorded frames: {longest_gap:?}");
    assert!(
        longest_gap < Duration::from_millis(500),
        "the recording skipped {longest_gap:?} while people came and went"
    );
    let duration = decoded.video_duration(FPS).as_secs_f64();
    let recorded = sidecar["duration_seconds"]
        .as_f64()
        .expect("a finished duration");
    assert!(
        recorded >= 4.0 && (duration - recorded).abs() <= 1.0,
        "the file lasts {duration:.2} s of the {recorded} s recorded"
    );
}

/// A room whose canvas is small (one 320×180 camera: a 320×180 composite, see canvas.rs) starts
/// recording; the canvas goes to the full frame for the file (a muxer refuses a change of size),
/// people come and go, which would have changed the canvas, and the file plays from start to end
/// at one size. When the recording stops, the room's canvas shrinks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_recording_of_a_room_whose_canvas_changes_plays_from_start_to_end() {
    common::init();
    let server = Server::start("recording-canvas", &[]);
    let mut crowd = crowd_of(&server, "resize", 1).await;
    settle(&crowd, "the participant to see itself").await;
    let size_now = |crowd: &mcu_probe::probe::Crowd| {
        crowd.members[0]
            .observe()
            .recent
            .last()
            .map(|f| (f.width, f.height))
    };
    assert_eq!(
        size_now(&crowd),
        Some((320, 180)),
        "the canvas before recording"
    );

    let started = Instant::now();
    let info = start_recording(&server, "resize").await;
    wait_for("the canvas to be the full frame", SETTLE, || {
        (size_now(&crowd) == Some((1280, 720))).then_some(())
    })
    .await;
    // Alone for the file's first seconds, so that they show one tile.
    tokio::time::sleep(Duration::from_secs(2)).await;
    crowd
        .join(mcu_server::codec::VideoCodec::Vp8)
        .await
        .expect("a second joins");
    settle(&crowd, "two participants to see each other").await;
    crowd.leave(1).await;
    // Long enough alone again that the file's last second is the one-tile layout.
    tokio::time::sleep(Duration::from_secs(2)).await;
    wait_until_recorded(&server, "resize", 8.0).await;
    stop_recording(&server, "resize").await;
    let recorded_for = started.elapsed();
    let file = server
        .recordings
        .join(info["file"].as_str().expect("a file"));

    let decoded = decode(&file);
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let sizes: std::collections::BTreeSet<(usize, usize)> =
        decoded.video.iter().map(|f| (f.width, f.height)).collect();
    assert_eq!(sizes.into_iter().collect::<Vec<_>>(), [(1280, 720)]);
    let duration = decoded.video_duration(FPS);
    let longest_gap = decoded.longest_gap();
    println!(
        "recorded for {recorded_for:?}; the file lasts {duration:?}, longest gap {longest_gap:?}"
    );
    assert!(
        (duration.as_secs_f64() - recorded_for.as_secs_f64()).abs() <= 1.0,
        "the file lasts {duration:?}, the recording ran {recorded_for:?}"
    );
    assert!(
        longest_gap < Duration::from_millis(500),
        "a gap of {longest_gap:?}"
    );
    // The one who stayed is in the whole frame from the first second to the last.
    let colour = crowd.members[0].colour();
    let first = decoded.video[0].pts;
    for at in [Duration::from_secs(1), duration - Duration::from_secs(1)] {
        let frame = decoded.frame_near(first + at).expect("a kept frame");
        let seen = frame.average(640, 360, 8);
        assert!(
            analysis::shows(seen, colour),
            "at {at:?} the centre shows {} instead of {}",
            seen.hex(),
            colour.hex()
        );
    }

    // Unpinned, the canvas fits the one camera again.
    wait_for(
        "the canvas to shrink after the recording",
        mcu_server::canvas::SHRINK_AFTER + SETTLE,
        || (size_now(&crowd) == Some((320, 180))).then_some(()),
    )
    .await;
    crowd.leave_all().await;
}

/// An H.264 room records the very H.264 frames its participants receive into Matroska; the file
/// decodes to the composite with every tile's colour. (The encoder's avc output goes into the
/// file unchanged: no parser, so the runtime needs no gstreamer1.0-plugins-bad.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_h264_room_records_its_own_encode_into_matroska() {
    common::init();
    let server = Server::start("recording-h264", &["--room-codec", "rech=h264"]);
    let crowd = crowd_of(&server, "rech", 2).await;
    settle(&crowd, "two participants to see each other in H.264").await;
    let layout = server.room("rech").await.expect("the room exists")["layout"]["tiles"].clone();
    let started = Instant::now();
    start_recording(&server, "rech").await;
    wait_until_recorded(&server, "rech", 4.0).await;
    let stopped = stop_recording(&server, "rech").await;
    let recorded_for = started.elapsed();
    let file = stopped["file"]
        .as_str()
        .expect("the file is named")
        .to_string();
    assert!(file.ends_with(".mkv"), "{file}");

    let decoded = decode(&server.recordings.join(&file));
    assert!(decoded.error.is_none(), "decoding: {:?}", decoded.error);
    let duration = decoded.video_duration(FPS);
    println!("H.264: recorded for {recorded_for:?}, the file's video lasts {duration:?}");
    assert!((duration.as_secs_f64() - recorded_for.as_secs_f64()).abs() <= 1.0);
    let first = &decoded.video[0];
    assert_eq!((first.width, first.height), (1280, 720));
    let audio_start = decoded.audio_start.expect("the file has audio");
    let offset = audio_start.as_secs_f64() - first.pts.as_secs_f64();
    println!(
        "H.264: audio starts {:+.0} ms from the video",
        offset * 1000.0
    );
    assert!(
        offset.abs() < 0.2,
        "audio and video start {offset:.3} s apart"
    );
    let frame = decoded
        .frame_near(first.pts + duration / 2)
        .expect("a frame in the middle");
    assert_tiles_show(frame, &layout, &crowd.roster(), "in the middle");
}
