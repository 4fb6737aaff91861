//! Every pipeline description in pipelines/ parses, fills, and reaches PLAYING inside a room
//! pipeline, and a participant's branches come and go without leaving pads behind.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mcu::config::{MediaConfig, VideoCodec};
use mcu::ids::ParticipantId;
use mcu::media::{pipelines, InputSignals, RoomPipeline};
use mcu::room::layout::grid;

async fn until_playing(room: &RoomPipeline, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let waiting = room.not_playing();
        if waiting.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not reach PLAYING: {waiting:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[test]
fn every_description_names_its_placeholders() {
    for t in pipelines::ALL {
        for name in t.placeholders() {
            assert!(
                name.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "pipelines/{}: odd placeholder {{{name}}}",
                t.file
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_pipelines_with_every_branch_reach_playing_and_release_their_pads() {
    gstreamer::init().expect("GStreamer initialises");
    for codec in [VideoCodec::Vp8, VideoCodec::H264] {
        let media = MediaConfig::default();
        let (events, _events_rx) = tokio::sync::mpsc::unbounded_channel();
        let (mut room, _packets) =
            RoomPipeline::start("test", &media, codec, events).expect("the room pipeline builds");
        until_playing(&room, "the empty room").await;
        let empty = room.stats();
        assert_eq!(empty.compositor_pads, 1, "only the background");
        assert_eq!(empty.full_mix_pads, 1, "only the silence source");

        let tiles = grid(2, media.width, media.height);
        let (a, b) = (ParticipantId(1), ParticipantId(2));
        for (who, tile, sender) in [
            (a, tiles[0], VideoCodec::Vp8),
            (b, tiles[1], VideoCodec::H264),
        ] {
            room.add_placeholder(who, "Zoë \"quoted\" ! name", tile)
                .expect("placeholder");
            let _listener = room.add_listener(who).expect("listener");
            room.add_video_input(who, sender, 96, tile, Arc::new(InputSignals::default()))
                .expect("video input");
            room.add_audio_input(who, 111).expect("audio input");
        }
        until_playing(&room, "a room with two participants").await;
        let full = room.stats();
        assert_eq!(
            full.compositor_pads,
            1 + 2 * 2,
            "background + a placeholder and a video each"
        );
        assert_eq!(full.full_mix_pads, 1 + 2);
        assert_eq!(
            full.listener_mix_pads,
            2 * (1 + 1),
            "each hears silence + the other"
        );

        room.remove_participant(b);
        let one = room.stats();
        assert_eq!(one.compositor_pads, 1 + 2);
        assert_eq!(one.full_mix_pads, 1 + 1);
        assert_eq!(one.listener_mix_pads, 1, "a's mixer: silence only");
        room.remove_participant(a);
        let after = room.stats();
        assert_eq!(after.compositor_pads, empty.compositor_pads);
        assert_eq!(after.full_mix_pads, empty.full_mix_pads);
        assert_eq!(after.listener_mix_pads, 0);
        assert_eq!(after.pipeline_children, empty.pipeline_children);
        until_playing(&room, "the room after everyone left").await;
        // Adding and removing branches never took the room out of PLAYING (which would freeze
        // every picture until the new branch prerolled).
        assert_eq!(room.stats().lost_playing, 0);
    }
}
