//! A camera branch (pipelines/video-input-vp8.txt) fed RTP frame by frame, so that a change of
//! its tile's shape and a change of its camera's size land on chosen frames.

use std::sync::Arc;
use std::time::Duration;

use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use gstreamer_video as gst_video;

use super::look::{TileLook, TileSize};
use super::video::{input_bin, InputSignals};
use crate::codec::VideoCodec;
use crate::ids::ParticipantId;
use crate::protocol::layout::Fit;

/// The camera's colour, as videotestsrc's ARGB.
const RED: u32 = 0xffe6_1e1e;
/// How long a frame may take through the branch before the test gives up on it.
const FRAME_TIMEOUT: Duration = Duration::from_secs(5);

/// One RTP packet per element, grouped by frame.
type Frames = Vec<Vec<Vec<u8>>>;

/// `count` frames of a solid red `width`×`height` VP8 picture (the first a keyframe), as RTP
/// packets numbered on from `first_seq` with timestamps from `first_ts`.
fn vp8_frames(width: u32, height: u32, count: u32, first_seq: u16, first_ts: u32) -> Frames {
    let description = format!(
        "videotestsrc pattern=solid-color foreground-color={RED} num-buffers={count} \
           ! video/x-raw,format=I420,width={width},height={height},framerate=30/1 \
           ! vp8enc deadline=1 keyframe-max-dist=1000 lag-in-frames=0 \
           ! rtpvp8pay pt=96 mtu=1200 picture-id-mode=15-bit seqnum-offset={first_seq} \
             timestamp-offset={first_ts} \
           ! appsink name=out sync=false"
    );
    let pipeline = gst::parse::launch(&description)
        .expect("the encoder pipeline parses")
        .downcast::<gst::Pipeline>()
        .expect("a pipeline");
    let out = pipeline
        .by_name("out")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSink>().ok())
        .expect("an appsink");
    pipeline.set_state(gst::State::Playing).expect("encoding");
    let mut frames: Frames = Vec::new();
    let mut last_ts = None;
    while let Some(sample) = out.try_pull_sample(gst::ClockTime::from_seconds(5)) {
        let buffer = sample.buffer().expect("a packet");
        let bytes = buffer.map_readable().expect("readable").to_vec();
        // The RTP timestamp (bytes 4–7) changes from one frame to the next.
        let ts = u32::from_be_bytes([bytes[4], bytes[5], bytes[6], bytes[7]]);
        if last_ts != Some(ts) {
            frames.push(Vec::new());
            last_ts = Some(ts);
        }
        frames.last_mut().expect("a frame").push(bytes);
    }
    let _ = pipeline.set_state(gst::State::Null);
    assert_eq!(frames.len(), count as usize, "every frame was encoded");
    frames
}

struct Branch {
    pipeline: gst::Pipeline,
    appsrc: gst_app::AppSrc,
    out: gst_app::AppSink,
    size: TileSize,
}

impl Branch {
    fn new() -> Branch {
        let (events, _) = tokio::sync::mpsc::unbounded_channel();
        let signals = Arc::new(InputSignals::default());
        let (bin, appsrc) = input_bin(ParticipantId(1), VideoCodec::Vp8, 96, signals, events)
            .expect("the camera branch builds");
        let pipeline = gst::Pipeline::new();
        let out = gst_app::AppSink::builder().sync(false).build();
        pipeline
            .add_many([bin.upcast_ref::<gst::Element>(), out.upcast_ref()])
            .expect("adding");
        bin.link(&out).expect("linking the branch to the appsink");
        let size = TileSize::follow(&bin).expect("following the branch's look");
        Branch {
            pipeline,
            appsrc,
            out,
            size,
        }
    }

    /// Pushes one frame's packets and returns the picture the branch made of it.
    fn frame(&self, packets: &[Vec<u8>]) -> gst::Sample {
        for packet in packets {
            self.appsrc
                .push_buffer(gst::Buffer::from_slice(packet.clone()))
                .expect("the branch takes the packet");
        }
        self.out
            .try_pull_sample(gst::ClockTime::from_nseconds(
                FRAME_TIMEOUT.as_nanos() as u64
            ))
            .expect("the frame came out of the branch")
    }

    /// Warnings and errors the branch posted so far.
    fn complaints(&self) -> Vec<String> {
        let bus = self.pipeline.bus().expect("a bus");
        std::iter::from_fn(|| bus.pop())
            .filter_map(|m| match m.view() {
                gst::MessageView::Warning(w) => {
                    Some(format!("warning: {} {:?}", w.error(), w.debug()))
                }
                gst::MessageView::Error(e) => Some(format!("error: {} {:?}", e.error(), e.debug())),
                _ => None,
            })
            .collect()
    }
}

/// The size of a decoded picture and the Y, U and V at its centre.
fn centre(sample: &gst::Sample) -> ((u32, u32), [u8; 3]) {
    let caps = sample.caps().expect("caps");
    let info = gst_video::VideoInfo::from_caps(caps).expect("raw video");
    let buffer = sample.buffer().expect("a buffer");
    let frame = gst_video::VideoFrameRef::from_buffer_ref_readable(buffer, &info).expect("a frame");
    let (w, h) = (info.width() as usize, info.height() as usize);
    let at = |plane: u32, x: usize, y: usize| {
        let stride = info.stride()[plane as usize] as usize;
        frame.plane_data(plane).expect("plane")[y * stride + x]
    };
    let yuv = [
        at(0, w / 2, h / 2),
        at(1, w / 4, h / 4),
        at(2, w / 4, h / 4),
    ];
    ((info.width(), info.height()), yuv)
}

fn close(a: [u8; 3], b: [u8; 3]) -> bool {
    a.iter().zip(b).all(|(x, y)| x.abs_diff(y) <= 12)
}

#[test]
fn a_new_camera_size_right_after_a_new_tile_shape_is_still_cropped_right() {
    gst::init().expect("GStreamer initialises");
    let large = vp8_frames(640, 360, 8, 1000, 0);
    let small = vp8_frames(
        316,
        178,
        8,
        1000 + large.iter().map(Vec::len).sum::<usize>() as u16,
        90_000,
    );
    let branch = Branch::new();
    let look = |width, height| TileLook {
        width,
        height,
        fit: Fit::Crop,
        label: None,
    };
    branch.size.ask(look(640, 720));
    branch
        .pipeline
        .set_state(gst::State::Playing)
        .expect("playing");

    // A look is applied on the frame that meets it, and that frame leaves at the size before
    // (the tile filter changes its caps from the next frame on): the first frame leaves at the
    // size the branch was built with.
    let mut reference = None;
    for packets in &large[..7] {
        let (size, yuv) = centre(&branch.frame(packets));
        if reference.is_some() {
            assert_eq!(size, (640, 720));
        }
        reference = Some(yuv);
    }
    let red = reference.expect("a picture");
    // The tile becomes a wide region: the new shape is applied on the last 640×360 frame...
    branch.size.ask(look(1280, 540));
    let (_, yuv) = centre(&branch.frame(&large[7]));
    assert!(close(yuv, red), "{yuv:?} against {red:?}");
    // ...and the next frames are 316×178 (a browser that lowered its resolution).
    for (n, packets) in small.iter().enumerate() {
        let (size, yuv) = centre(&branch.frame(packets));
        assert_eq!(size, (1280, 540));
        assert!(
            close(yuv, red),
            "frame {n} at 316×178 shows {yuv:?}, not {red:?}"
        );
    }
    let complaints = branch.complaints();
    let _ = branch.pipeline.set_state(gst::State::Null);
    assert!(complaints.is_empty(), "{complaints:#?}");
}
