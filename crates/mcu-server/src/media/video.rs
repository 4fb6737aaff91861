//! Video branches that feed the compositor: a participant's decoded camera, and the named
//! placeholder shown until that camera's first frame.

use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::{mpsc, Notify};

use super::{pipelines, PipelineEvent, INPUT_QUEUE_MAX};
use crate::codec::VideoCodec;
use crate::ids::ParticipantId;
use crate::layout::Rect;

/// The background is pad 0 at zorder 0; placeholders sit above it and cameras above those, so a
/// camera covers its placeholder the moment it shows anything.
pub const PLACEHOLDER_ZORDER: u32 = 1;
pub const VIDEO_ZORDER: u32 = 2;

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

pub fn placeholder_bin(who: ParticipantId, name: &str, tile: Rect, fps: u32) -> Result<gst::Bin> {
    let bin = pipelines::PLACEHOLDER.bin(
        &[
            ("fps", fps.to_string()),
            ("tile_width", tile.width.to_string()),
            ("tile_height", tile.height.to_string()),
        ],
        &format!("placeholder-{who}"),
    )?;
    let label = bin
        .by_name("label")
        .context("pipelines/placeholder.txt has no element named label")?;
    // Set as a property, never spliced into the description: a name is user input. textoverlay
    // reads Pango markup, so "<b>" or "&" in a name must be escaped to be shown as typed.
    label.set_property("text", gst::glib::markup_escape_text(name).as_str());
    Ok(bin)
}

#[allow(clippy::too_many_arguments)]
pub fn input_bin(
    who: ParticipantId,
    codec: VideoCodec,
    payload_type: u8,
    tile: Rect,
    scaled: Rect,
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
            ("tile_width", scaled.width.to_string()),
            ("tile_height", scaled.height.to_string()),
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
    signals.show_in(tile);
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

/// A tile branch's frame size, asked for by the room and applied by the branch's own streaming
/// thread. Setting the `tile_caps` filter from the room's thread races the branch's negotiation:
/// its source (videotestsrc, or the videoscale before the filter) may query the old size, the
/// filter change to the new one, and the caps it then sends be refused — `not-negotiated`, and
/// the branch dies. Applied from a probe just before the filter, the change lands between two
/// frames of the same thread, and the next frame is negotiated at the new size.
#[derive(Clone)]
pub struct TileSize {
    wanted: Arc<std::sync::Mutex<Option<(u32, u32)>>>,
}

impl TileSize {
    /// Watches the branch's `tile_caps` filter; sizes asked for later are applied by the probe.
    pub fn follow(bin: &gst::Bin) -> Result<Self> {
        let caps_filter = bin
            .by_name("tile_caps")
            .with_context(|| format!("{} has no element named tile_caps", bin.name()))?;
        Self::follow_filter(caps_filter)
    }

    /// Watches `caps_filter`, which a source of its own feeds (a tile's, or the background's).
    pub fn follow_filter(caps_filter: gst::Element) -> Result<Self> {
        let sink = caps_filter
            .static_pad("sink")
            .context("tile_caps has no sink pad")?;
        let size = TileSize {
            wanted: Arc::default(),
        };
        let wanted = size.wanted.clone();
        // Weak: the probe lives on the filter's own pad, so a strong reference would keep the
        // filter (and its branch) alive for ever once the branch is removed.
        let caps_filter = caps_filter.downgrade();
        sink.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                let next = wanted.lock().unwrap_or_else(|e| e.into_inner()).take();
                if let (Some((width, height)), Some(caps_filter)) = (next, caps_filter.upgrade()) {
                    resize_filter(&caps_filter, width, height);
                }
                gst::PadProbeReturn::Ok
            },
        );
        Ok(size)
    }

    pub fn ask(&self, width: u32, height: u32) {
        *self.wanted.lock().unwrap_or_else(|e| e.into_inner()) = Some((width, height));
    }
}

/// Sets the filter's width and height, keeping the rest of its caps (format, rate, aspect).
pub(super) fn resize_filter(caps_filter: &gst::Element, width: u32, height: u32) {
    let current: Option<gst::Caps> = caps_filter.property("caps");
    let wanted = current.as_ref().and_then(|c| c.structure(0)).map(|s| {
        let mut s = s.to_owned();
        s.set("width", width as i32);
        s.set("height", height as i32);
        gst::Caps::builder_full().structure(s).build()
    });
    if let Some(caps) = wanted {
        if current.as_ref() != Some(&caps) {
            caps_filter.set_property("caps", &caps);
        }
    }
}

/// Puts a tile branch at `rect`: the branch scales (and letterboxes) to the tile size itself, from
/// its next frame on, and the compositor pad positions it. The pad's size is set too, so the
/// frames still on their way at the old size are scaled to fit instead of overlapping a neighbour
/// (the compositor scales only when a frame's size differs from its pad's).
pub fn place(size: &TileSize, pad: &gst::Pad, rect: Rect) {
    size.ask(rect.width, rect.height);
    set_pad_rect(pad, rect);
}

/// Where the compositor draws the pad's frames, and at what size.
pub(super) fn set_pad_rect(pad: &gst::Pad, rect: Rect) {
    pad.set_property("xpos", rect.x as i32);
    pad.set_property("ypos", rect.y as i32);
    pad.set_property("width", rect.width as i32);
    pad.set_property("height", rect.height as i32);
}

/// Pushes one marshalled RTP packet into an input branch; GStreamer wraps the bytes, no copy.
pub fn push_rtp(appsrc: &gst_app::AppSrc, packet: bytes::Bytes) -> Result<(), gst::FlowError> {
    let buffer = gst::Buffer::from_slice(packet);
    appsrc.push_buffer(buffer).map(|_| ())
}
