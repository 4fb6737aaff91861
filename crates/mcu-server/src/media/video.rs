//! Video branches that feed the compositor: a participant's decoded camera, and the named
//! placeholder shown until that camera's first frame.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::{mpsc, Notify};

use super::look::{TileLook, TileSize};
use super::{pipelines, PipelineEvent, INPUT_QUEUE_MAX};
use crate::codec::VideoCodec;
use crate::ids::ParticipantId;
use crate::layout::Rect;

/// The compositor's layers: the background is pad 0 at zorder 0; each tile of layout layer `z`
/// has three above it, the speaker's outline, then the placeholder, then the camera, so a camera
/// covers its placeholder the moment it shows anything and a corner picture (a higher `z`) covers
/// all of the tile it sits on.
pub fn outline_zorder(z: u32) -> u32 {
    1 + 3 * z
}

pub fn placeholder_zorder(z: u32) -> u32 {
    2 + 3 * z
}

pub fn camera_zorder(z: u32) -> u32 {
    3 + 3 * z
}

/// Camera branches' `tile_caps` filters alive in this process, in every room. Each tile holds
/// one while it lives; one more per join that outlives its leave is a leak (its pad probe once
/// held a strong reference to the filter, and every departed camera kept one alive).
static LIVE_TILE_FILTERS: AtomicUsize = AtomicUsize::new(0);

pub fn live_tile_filters() -> usize {
    LIVE_TILE_FILTERS.load(Ordering::Relaxed)
}

/// What a video input branch reports to the session that feeds it, without going through the
/// room actor: whether a frame was decoded yet, when the decoder wants a keyframe (which the
/// session turns into a PLI to the sender), and how large its tile is (which the session turns
/// into a cap on what the sender sends).
#[derive(Debug, Default)]
pub struct InputSignals {
    pub first_frame_decoded: AtomicBool,
    pub frames_decoded: AtomicU64,
    pub keyframe_wanted: Notify,
    /// Keyframes the depayloader handed to the decoder: a keyframe request made before the last
    /// one arrived is answered.
    pub keyframes_received: AtomicU64,
    /// Pixels of the tile the input is shown in (width × height); 0 before it is placed.
    pub tile_pixels: AtomicU32,
}

impl InputSignals {
    pub fn show_in(&self, tile: Rect) {
        self.tile_pixels
            .store(tile.width.saturating_mul(tile.height), Ordering::Relaxed);
    }
}

/// A participant's tile until their first frame is decoded (or for good, without a camera): a
/// dark tile with their name, which the tile's look sets (`TileLook::label`).
pub fn placeholder_bin(who: ParticipantId, fps: u32) -> Result<gst::Bin> {
    pipelines::PLACEHOLDER.bin(
        &[
            ("fps", fps.to_string()),
            ("tile_width", HIDDEN_SIDE.to_string()),
            ("tile_height", HIDDEN_SIDE.to_string()),
        ],
        &format!("placeholder-{who}"),
    )
}

/// The frame drawn around the active speaker's tile (pipelines/outline.txt).
pub fn outline_bin(tile: Rect, fps: u32) -> Result<gst::Bin> {
    pipelines::OUTLINE.bin(
        &[
            ("fps", fps.to_string()),
            ("tile_width", tile.width.to_string()),
            ("tile_height", tile.height.to_string()),
        ],
        "speaker-outline",
    )
}

/// The size a branch is built at, before its look (applied with its first frame) sizes it.
const HIDDEN_SIDE: u32 = 16;

pub fn input_bin(
    who: ParticipantId,
    codec: VideoCodec,
    payload_type: u8,
    signals: Arc<InputSignals>,
    events: mpsc::UnboundedSender<PipelineEvent>,
) -> Result<(gst::Bin, gst_app::AppSrc)> {
    let (template, encoding_name) = match codec {
        VideoCodec::Vp8 => (pipelines::VIDEO_INPUT_VP8, "VP8"),
        VideoCodec::H264 => (pipelines::VIDEO_INPUT_H264, "H264"),
    };
    let bin = template.bin(
        &[
            ("queue_max_ns", INPUT_QUEUE_MAX.as_nanos().to_string()),
            ("tile_width", HIDDEN_SIDE.to_string()),
            ("tile_height", HIDDEN_SIDE.to_string()),
        ],
        &format!("video-{who}"),
    )?;
    let appsrc = bin
        .by_name("src")
        .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
        .with_context(|| format!("pipelines/{} has no appsrc named src", template.file))?;
    appsrc.set_caps(Some(
        &gst::Caps::builder("application/x-rtp")
            .field("media", "video")
            .field("clock-rate", 90_000i32)
            .field("encoding-name", encoding_name)
            .field("payload", i32::from(payload_type))
            .build(),
    ));

    // The depayloader (and the decoder through it) asks upstream for a keyframe after loss or
    // at start; upstream of it is only our appsrc, so catch the request here and let the session
    // send a PLI to the participant.
    let depay = bin
        .by_name("depay")
        .with_context(|| format!("pipelines/{} has no element named depay", template.file))?;
    let depay_sink = depay
        .static_pad("sink")
        .context("depayloader has no sink pad")?;
    let keyframes = signals.clone();
    depay
        .static_pad("src")
        .context("depayloader has no src pad")?
        .add_probe(gst::PadProbeType::BUFFER, move |_, info| {
            if info
                .buffer()
                .is_some_and(|b| !b.flags().contains(gst::BufferFlags::DELTA_UNIT))
            {
                keyframes.keyframes_received.fetch_add(1, Ordering::Relaxed);
            }
            gst::PadProbeReturn::Ok
        });
    let wanted = signals.clone();
    depay_sink.add_probe(gst::PadProbeType::EVENT_UPSTREAM, move |_, info| {
        if let Some(event) = info.event() {
            if event
                .structure()
                .is_some_and(|s| s.name() == "GstForceKeyUnit")
            {
                wanted.keyframe_wanted.notify_one();
            }
        }
        gst::PadProbeReturn::Ok
    });

    // Count decoded frames after scaling; the first one tells the room to drop the placeholder.
    let tile_caps = bin
        .by_name("tile_caps")
        .with_context(|| format!("pipelines/{} has no element named tile_caps", template.file))?;
    LIVE_TILE_FILTERS.fetch_add(1, Ordering::Relaxed);
    // The notice stays connected when its handle is dropped; it fires as the filter is disposed.
    let _ = tile_caps.add_weak_ref_notify(|| {
        LIVE_TILE_FILTERS.fetch_sub(1, Ordering::Relaxed);
    });
    let tile_src = tile_caps
        .static_pad("src")
        .context("tile_caps has no src pad")?;
    tile_src.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
        if signals.frames_decoded.fetch_add(1, Ordering::Relaxed) == 0 {
            signals.first_frame_decoded.store(true, Ordering::Release);
            let _ = events.send(PipelineEvent::FirstFrame(who));
        }
        gst::PadProbeReturn::Ok
    });
    Ok((bin, appsrc))
}

/// Where the compositor draws a pad's frames, at what size, in which layer, and whether at all.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PadPlace {
    pub rect: Rect,
    pub zorder: u32,
    pub visible: bool,
}

/// Puts a tile branch at `place`: the branch scales (and crops or letterboxes) to the tile size
/// itself, from its next frame on, and the compositor pad positions it. The pad's size is set too,
/// so the frames still on their way at the old size are scaled to fit instead of overlapping a
/// neighbour (the compositor scales only when a frame's size differs from its pad's).
pub fn place(size: &TileSize, pad: &gst::Pad, look: TileLook, place: PadPlace) {
    size.ask(look);
    set_pad_place(pad, place);
}

/// Where the compositor draws the pad's frames, and at what size.
pub(super) fn set_pad_rect(pad: &gst::Pad, rect: Rect) {
    pad.set_property("xpos", rect.x as i32);
    pad.set_property("ypos", rect.y as i32);
    pad.set_property("width", rect.width as i32);
    pad.set_property("height", rect.height as i32);
}

/// As `set_pad_rect`, with the layer and visibility: a hidden tile keeps its branch (so showing
/// it again is instant) and the compositor skips it (alpha 0 is never blended).
pub(super) fn set_pad_place(pad: &gst::Pad, place: PadPlace) {
    set_pad_rect(pad, place.rect);
    if pad.property::<u32>("zorder") != place.zorder {
        pad.set_property("zorder", place.zorder);
    }
    pad.set_property("alpha", if place.visible { 1.0f64 } else { 0.0 });
}

/// Pushes one marshalled RTP packet into an input branch; GStreamer wraps the bytes, no copy.
pub fn push_rtp(appsrc: &gst_app::AppSrc, packet: bytes::Bytes) -> Result<(), gst::FlowError> {
    let buffer = gst::Buffer::from_slice(packet);
    appsrc.push_buffer(buffer).map(|_| ())
}
