//! The compositor's side of a room: one branch per tile (a participant's placeholder, their
//! decoded camera), where each is drawn, and the canvas they are drawn on (output.rs). Layouts
//! arrive on the nominal frame; tiles are placed in canvas pixels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

use super::output::Output;
use super::still::{Stillness, AFTER_CHANGE};
use super::video::{self, InputSignals};
use super::{align_test_sources, MediaConfig};
use crate::canvas::{self, TileContent};
use crate::ids::ParticipantId;
use crate::layout::Rect;

/// A bin feeding the compositor through one of its request pads.
struct TileBranch {
    bin: gst::Bin,
    pad: gst::Pad,
    size: video::TileSize,
    /// A camera's branch tells its session the tile's size (placeholders have none).
    shown: Option<Arc<InputSignals>>,
    /// A camera's decoder output, whose caps say how large the camera's pictures are.
    decoded: Option<gst::Pad>,
}

pub(super) struct Tiles {
    pipeline: gst::Pipeline,
    compositor: gst::Element,
    output: Output,
    stillness: Arc<Stillness>,
    full_kbps: u32,
    placeholders: HashMap<ParticipantId, TileBranch>,
    videos: HashMap<ParticipantId, TileBranch>,
    /// The last layout, on the nominal frame.
    layout: Vec<(ParticipantId, Rect)>,
}

impl Tiles {
    pub fn new(
        pipeline: &gst::Pipeline,
        media: &MediaConfig,
        stillness: Arc<Stillness>,
    ) -> Result<Self> {
        let compositor = pipeline
            .by_name("compositor")
            .context("pipelines/room.txt has no element named compositor")?;
        Ok(Tiles {
            pipeline: pipeline.clone(),
            compositor,
            output: Output::new(pipeline, media)?,
            stillness,
            full_kbps: media.video_bitrate_kbps,
            placeholders: HashMap::new(),
            videos: HashMap::new(),
            layout: Vec::new(),
        })
    }

    /// The canvas's size now and the top tier's bitrate for it.
    pub fn canvas(&self) -> (u32, u32, u32) {
        let (width, height) = self.output.size();
        let kbps = canvas::bitrate_kbps(self.full_kbps, self.output.step());
        (width, height, kbps)
    }

    pub fn add_placeholder(&mut self, who: ParticipantId, bin: gst::Bin, tile: Rect) -> Result<()> {
        let branch = self.attach(bin, tile, video::PLACEHOLDER_ZORDER)?;
        self.placeholders.insert(who, branch);
        Ok(())
    }

    pub fn remove_placeholder(&mut self, who: ParticipantId) {
        if let Some(branch) = self.placeholders.remove(&who) {
            self.detach(branch);
        }
    }

    pub fn add_camera(
        &mut self,
        who: ParticipantId,
        bin: gst::Bin,
        tile: Rect,
        signals: Arc<InputSignals>,
    ) -> Result<()> {
        let decoded = bin
            .by_name("decoder")
            .and_then(|d| d.static_pad("src"))
            .with_context(|| format!("{} has no decoder with a src pad", bin.name()))?;
        self.stillness.watch_camera(&bin)?;
        let mut branch = self.attach(bin, tile, video::VIDEO_ZORDER)?;
        branch.shown = Some(signals);
        branch.decoded = Some(decoded);
        self.videos.insert(who, branch);
        Ok(())
    }

    pub fn remove_camera(&mut self, who: ParticipantId) {
        if let Some(branch) = self.videos.remove(&who) {
            self.detach(branch);
        }
    }

    pub fn camera_signals(&self, who: ParticipantId) -> Option<&Arc<InputSignals>> {
        self.videos.get(&who)?.shown.as_ref()
    }

    pub fn compositor_pads(&self) -> usize {
        self.compositor.sink_pads().len()
    }

    /// Moves each participant's tiles (camera and placeholder) to its rectangle of the nominal
    /// frame. A camera's session hears of its tile's nominal size (what the sender is asked for).
    pub fn apply_layout(&mut self, tiles: &[(ParticipantId, Rect)]) {
        self.layout = tiles.to_vec();
        for (who, rect) in tiles {
            if let Some(signals) = self.camera_signals(*who) {
                signals.show_in(*rect);
            }
        }
        self.place_all();
    }

    /// The largest canvas allowed from now on (an index into canvas::STEPS, larger is smaller; 0
    /// allows the full frame), applied at the next `refresh_canvas`.
    pub fn set_min_canvas_step(&mut self, step: usize) {
        self.output.set_min_step(step);
    }

    /// Chooses the canvas again for what the tiles show now (`pinned`: the full frame, for a
    /// recording); returns the new size and bitrate when it changed.
    pub fn refresh_canvas(&mut self, pinned: bool, now: Instant) -> Option<(u32, u32, u32)> {
        let contents: Vec<(Rect, TileContent)> = self
            .layout
            .iter()
            .map(|(who, rect)| (*rect, self.content(*who)))
            .collect();
        self.output.decide(&contents, pinned, now)?;
        self.place_all();
        Some(self.canvas())
    }

    fn content(&self, who: ParticipantId) -> TileContent {
        let size = self
            .videos
            .get(&who)
            .and_then(|branch| branch.decoded.as_ref()?.current_caps())
            .and_then(|caps| {
                let s = caps.structure(0)?;
                Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
            });
        match size {
            Some((width, height)) if width > 0 && height > 0 => TileContent::Camera {
                width: width as u32,
                height: height as u32,
            },
            _ => TileContent::Placeholder,
        }
    }

    /// Every tile at its place on the canvas now: each branch scales to its new size from its
    /// next frame, and the compositor moves the pads between two frames (output.rs).
    fn place_all(&self) {
        let mut pads = Vec::new();
        for (who, rect) in &self.layout {
            let scaled = self.output.scale(*rect);
            for branch in [self.placeholders.get(who), self.videos.get(who)]
                .into_iter()
                .flatten()
            {
                branch.size.ask(scaled.width, scaled.height);
                pads.push((branch.pad.clone(), scaled));
            }
        }
        self.output.place(pads);
        self.stillness.changed(AFTER_CHANGE);
    }

    /// The frame size each of `who`'s tiles (placeholder, then camera) has negotiated, i.e. what
    /// the compositor is being given now: lets a check see that a layout took effect.
    pub fn sizes(&self, who: ParticipantId) -> Vec<(i32, i32)> {
        [self.placeholders.get(&who), self.videos.get(&who)]
            .into_iter()
            .flatten()
            .filter_map(|branch| {
                let caps = branch.pad.current_caps()?;
                let s = caps.structure(0)?;
                Some((s.get::<i32>("width").ok()?, s.get::<i32>("height").ok()?))
            })
            .collect()
    }

    /// `rect` of the nominal frame in canvas pixels now.
    pub fn scale(&self, rect: Rect) -> Rect {
        self.output.scale(rect)
    }

    fn attach(&self, bin: gst::Bin, tile: Rect, zorder: u32) -> Result<TileBranch> {
        let name = bin.name();
        align_test_sources(&self.pipeline, &bin);
        self.pipeline
            .add(&bin)
            .with_context(|| format!("adding {name} to the pipeline"))?;
        let attached = (|| -> Result<TileBranch> {
            let size = video::TileSize::follow(&bin)?;
            let src = bin.static_pad("src").context("branch has no src pad")?;
            let pad = self
                .compositor
                .request_pad_simple("sink_%u")
                .context("compositor gave no sink pad")?;
            pad.set_property("zorder", zorder);
            if let Err(e) = link_to_compositor(&src, &pad) {
                self.compositor.release_request_pad(&pad);
                anyhow::bail!("linking {name} to the compositor: {e:?}");
            }
            // A new pad has no frame yet: it can be placed from here.
            video::place(&size, &pad, self.output.scale(tile));
            bin.sync_state_with_parent()
                .with_context(|| format!("starting {name}"))?;
            Ok(TileBranch {
                bin: bin.clone(),
                pad,
                size,
                shown: None,
                decoded: None,
            })
        })();
        match attached {
            Ok(branch) => {
                self.stillness.changed(AFTER_CHANGE);
                // A new input changes the compositor's latency; have every element agree again.
                let _ = self.pipeline.recalculate_latency();
                Ok(branch)
            }
            Err(e) => {
                let _ = bin.set_state(gst::State::Null);
                let _ = self.pipeline.remove(&bin);
                Err(e)
            }
        }
    }

    fn detach(&self, branch: TileBranch) {
        // Stop the branch first: its pads flush, so its streaming thread leaves the compositor pad
        // before that pad goes away (releasing first would make the thread post a not-linked error).
        let _ = branch.bin.set_state(gst::State::Null);
        self.compositor.release_request_pad(&branch.pad);
        let _ = self.pipeline.remove(&branch.bin);
        self.stillness.changed(AFTER_CHANGE);
    }
}

/// Times a link refused for its caps is tried again, and the pause between tries. Once in a full
/// test run (an H.264 room, its second camera linked 60 ms after the canvas was resized), the link
/// was refused with `Noformat` though the branch's caps are pinned to what the compositor takes;
/// the compositor answers the link's caps query from its output's caps, so a renegotiation under
/// way is the likely cause (not proven: not reproduced in 21 runs since, 15 of them under a CPU
/// hog). A real mismatch still fails, after three short tries.
const LINK_RETRIES: u32 = 3;
const LINK_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);

fn link_to_compositor(src: &gst::Pad, sink: &gst::Pad) -> Result<(), gst::PadLinkError> {
    let mut tries = 0;
    loop {
        match src.link(sink) {
            Err(gst::PadLinkError::Noformat) if tries < LINK_RETRIES => {
                tries += 1;
                tracing::debug!(
                    tries,
                    "the compositor refused a tile's caps for now; trying again"
                );
                std::thread::sleep(LINK_RETRY_PAUSE);
            }
            result => return result.map(|_| ()),
        }
    }
}
