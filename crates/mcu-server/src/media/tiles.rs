//! The compositor's side of a room: one branch per tile (a participant's placeholder, their
//! decoded camera), where each is drawn, and the canvas they are drawn on (output.rs). Layouts
//! arrive on the nominal frame; tiles are placed in canvas pixels.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

use super::look::{self, TileLook, TileSize};
use super::output::Output;
use super::still::{Stillness, AFTER_CHANGE};
use super::video::{self, InputSignals, PadPlace};
use super::{align_test_sources, MediaConfig};
use crate::canvas::{self, TileContent};
use crate::ids::ParticipantId;
use crate::layout::{Arrangement, Rect};

/// A bin feeding the compositor through one of its request pads.
struct TileBranch {
    bin: gst::Bin,
    pad: gst::Pad,
    size: TileSize,
    /// A camera's branch tells its session the tile's size (placeholders have none).
    shown: Option<Arc<InputSignals>>,
    /// A camera's decoder output, whose caps say how large the camera's pictures are.
    decoded: Option<gst::Pad>,
}

/// A tile nobody sees (picture-in-picture hides the rest of the room) is scaled to this, so its
/// branch costs next to nothing until it is shown again, and its sender is asked for little.
const HIDDEN_TILE: Rect = Rect {
    x: 0,
    y: 0,
    width: 32,
    height: 18,
};

/// What the room says about a participant's label.
struct Named {
    name: String,
    muted: bool,
}

pub(super) struct Tiles {
    pipeline: gst::Pipeline,
    compositor: gst::Element,
    output: Output,
    stillness: Arc<Stillness>,
    full_kbps: u32,
    placeholders: HashMap<ParticipantId, TileBranch>,
    videos: HashMap<ParticipantId, TileBranch>,
    /// The frame around the active speaker's tile (pipelines/outline.txt); None only while the
    /// room is being built.
    outline: Option<TileBranch>,
    /// The last arrangement, on the nominal frame.
    arrangement: Arrangement,
    names: HashMap<ParticipantId, Named>,
    /// Name labels on camera tiles (`--labels`).
    labels: bool,
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
        let mut tiles = Tiles {
            pipeline: pipeline.clone(),
            compositor,
            output: Output::new(pipeline, media)?,
            stillness,
            full_kbps: media.video_bitrate_kbps,
            placeholders: HashMap::new(),
            videos: HashMap::new(),
            outline: None,
            arrangement: Arrangement::default(),
            names: HashMap::new(),
            labels: media.labels,
        };
        let outline = video::outline_bin(HIDDEN_TILE, media.fps)?;
        tiles.outline = Some(tiles.attach(
            outline,
            TileLook::sized(HIDDEN_TILE.width, HIDDEN_TILE.height),
            hidden_place(video::outline_zorder(0)),
        )?);
        Ok(tiles)
    }

    /// The canvas's size now and the top tier's bitrate for it.
    pub fn canvas(&self) -> (u32, u32, u32) {
        let (width, height) = self.output.size();
        let kbps = canvas::bitrate_kbps(self.full_kbps, self.output.step());
        (width, height, kbps)
    }

    /// Shows `name` on `who`'s tiles from now on (the placeholder's, and the camera's label).
    pub fn set_name(&mut self, who: ParticipantId, name: &str) {
        let muted = self.names.get(&who).is_some_and(|n| n.muted);
        self.names.insert(
            who,
            Named {
                name: name.to_string(),
                muted,
            },
        );
    }

    /// Marks `who`'s label muted (or not), from the next frame.
    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        if let Some(named) = self.names.get_mut(&who) {
            if named.muted != muted {
                named.muted = muted;
                self.place_all();
            }
        }
    }

    pub fn add_placeholder(&mut self, who: ParticipantId, bin: gst::Bin) -> Result<()> {
        let (look, place) = self.look_of(who, Layer::Placeholder);
        let branch = self.attach(bin, look, place)?;
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
        signals: Arc<InputSignals>,
    ) -> Result<()> {
        let decoded = bin
            .by_name("decoder")
            .and_then(|d| d.static_pad("src"))
            .with_context(|| format!("{} has no decoder with a src pad", bin.name()))?;
        self.stillness.watch_camera(&bin)?;
        let (look, place) = self.look_of(who, Layer::Camera);
        signals.show_in(self.arrangement.tile_of(who).unwrap_or(HIDDEN_TILE));
        let mut branch = self.attach(bin, look, place)?;
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

    /// Forgets everything of `who` (their branches are removed by the calls above).
    pub fn forget(&mut self, who: ParticipantId) {
        self.names.remove(&who);
    }

    pub fn camera_signals(&self, who: ParticipantId) -> Option<&Arc<InputSignals>> {
        self.videos.get(&who)?.shown.as_ref()
    }

    pub fn compositor_pads(&self) -> usize {
        self.compositor.sink_pads().len()
    }

    /// Moves each participant's tiles (camera and placeholder) to their place in `arrangement`,
    /// on the nominal frame, all from the same composite frame on. A camera's session hears of its
    /// tile's nominal size (what the sender is asked for).
    pub fn apply_layout(&mut self, arrangement: &Arrangement) {
        self.arrangement = arrangement.clone();
        for (who, branch) in &self.videos {
            if let Some(signals) = &branch.shown {
                signals.show_in(arrangement.tile_of(*who).unwrap_or(HIDDEN_TILE));
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
            .arrangement
            .tiles
            .iter()
            .map(|t| (t.rect, self.content(t.who)))
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

    /// How one of `who`'s branches is drawn now: its look (size in canvas pixels, fit, label)
    /// and its pad's place.
    fn look_of(&self, who: ParticipantId, layer: Layer) -> (TileLook, PadPlace) {
        let Some(tile) = self.arrangement.tiles.iter().find(|t| t.who == who) else {
            let zorder = match layer {
                Layer::Placeholder => video::placeholder_zorder(0),
                Layer::Camera => video::camera_zorder(0),
            };
            return (
                TileLook::sized(HIDDEN_TILE.width, HIDDEN_TILE.height),
                hidden_place(zorder),
            );
        };
        let scaled = self.output.scale(tile.rect);
        let named = self.names.get(&who);
        let label = |always: bool| {
            named
                .filter(|_| always || self.labels)
                .map(|n| look::label_for(&n.name, n.muted, scaled.width, scaled.height))
        };
        let (look, zorder) = match layer {
            Layer::Placeholder => (
                TileLook {
                    width: scaled.width,
                    height: scaled.height,
                    fit: tile.fit,
                    // The placeholder always names who it stands for.
                    label: label(true),
                },
                video::placeholder_zorder(tile.z),
            ),
            Layer::Camera => (
                TileLook {
                    width: scaled.width,
                    height: scaled.height,
                    fit: tile.fit,
                    label: label(false),
                },
                video::camera_zorder(tile.z),
            ),
        };
        let place = PadPlace {
            rect: scaled,
            zorder,
            visible: true,
        };
        (look, place)
    }

    /// Every tile at its place on the canvas now: each branch scales to its new size from its
    /// next frame, and the compositor moves the pads between two frames (output.rs).
    fn place_all(&self) {
        let mut pads = Vec::new();
        for (who, branch) in &self.placeholders {
            let (look, place) = self.look_of(*who, Layer::Placeholder);
            branch.size.ask(look);
            pads.push((branch.pad.clone(), place));
        }
        for (who, branch) in &self.videos {
            let (look, place) = self.look_of(*who, Layer::Camera);
            branch.size.ask(look);
            pads.push((branch.pad.clone(), place));
        }
        if let Some(outline) = &self.outline {
            let z = |who| {
                self.arrangement
                    .tiles
                    .iter()
                    .find(|t| t.who == who)
                    .map_or(0, |t| t.z)
            };
            let place = match self.arrangement.outline {
                Some((who, ring)) => {
                    let scaled = self.output.scale(ring);
                    outline
                        .size
                        .ask(TileLook::sized(scaled.width, scaled.height));
                    PadPlace {
                        rect: scaled,
                        zorder: video::outline_zorder(z(who)),
                        visible: true,
                    }
                }
                None => hidden_place(video::outline_zorder(0)),
            };
            pads.push((outline.pad.clone(), place));
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

    fn attach(&self, bin: gst::Bin, look: TileLook, place: PadPlace) -> Result<TileBranch> {
        let name = bin.name();
        align_test_sources(&self.pipeline, &bin);
        self.pipeline
            .add(&bin)
            .with_context(|| format!("adding {name} to the pipeline"))?;
        let attached = (|| -> Result<TileBranch> {
            let size = TileSize::follow(&bin)?;
            let src = bin.static_pad("src").context("branch has no src pad")?;
            let pad = self
                .compositor
                .request_pad_simple("sink_%u")
                .context("compositor gave no sink pad")?;
            pad.set_property("zorder", place.zorder);
            if let Err(e) = link_to_compositor(&src, &pad) {
                self.compositor.release_request_pad(&pad);
                anyhow::bail!("linking {name} to the compositor: {e:?}");
            }
            // A new pad has no frame yet: it can be placed from here.
            video::place(&size, &pad, look, place);
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

#[derive(Clone, Copy)]
enum Layer {
    Placeholder,
    Camera,
}

fn hidden_place(zorder: u32) -> PadPlace {
    PadPlace {
        rect: HIDDEN_TILE,
        zorder,
        visible: false,
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
