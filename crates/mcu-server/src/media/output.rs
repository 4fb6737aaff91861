//! The compositor's output: the canvas's size (chosen in canvas.rs) and where each tile is drawn on
//! it, changed between two composite frames.
//!
//! Tiles are moved and the canvas resized from the compositor's own streaming thread, in a probe
//! just after it: what the room asks for is handed over and applied as one frame leaves, so the
//! next frame is the first drawn the new way. Set from the room's thread instead, a frame could be
//! drawn with the tiles of the new canvas on the old one (the top-left quarter of the picture,
//! twice as large), and the encoder would send it.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

use super::look::{self, TileLook, TileSize};
use super::video::{self, PadPlace};
use crate::canvas::{self, CanvasChoice, TileContent};
use crate::config::{CanvasMode, MediaConfig};
use crate::layout::Rect;

/// A change the compositor's thread applies before its next frame.
#[derive(Default)]
struct Pending {
    /// The canvas's new size, when it changes.
    size: Option<(u32, u32)>,
    /// Every tile's pad and its place in canvas pixels.
    tiles: Vec<(gst::Pad, PadPlace)>,
}

pub(super) struct Output {
    nominal: (u32, u32),
    choice: CanvasChoice,
    adaptive: bool,
    pending: Arc<Mutex<Pending>>,
    /// The largest canvas allowed is this step of canvas::STEPS (0 unless the room is short of
    /// CPU, see load.rs).
    min_step: usize,
}

impl Output {
    /// Takes over the room pipeline's `canvas_caps` and `background_caps`; the room opens on
    /// `initial_step` (see `initial_step`).
    pub fn new(pipeline: &gst::Pipeline, media: &MediaConfig) -> Result<Self> {
        let element = |n: &str| {
            pipeline
                .by_name(n)
                .with_context(|| format!("pipelines/room.txt has no element named {n}"))
        };
        let canvas_caps = element("canvas_caps")?;
        let background = TileSize::follow_filter(element("background_caps")?)?;
        let background_pad = element("compositor")?
            .static_pad("sink_0")
            .context("the compositor has no background pad sink_0")?;
        let pending = Arc::new(Mutex::new(Pending::default()));
        let handed_over = pending.clone();
        let canvas_sink = canvas_caps
            .static_pad("sink")
            .context("canvas_caps has no sink pad")?;
        // The background's source is asked for the new size only once the canvas has it, from
        // this probe: asked from the room's thread at the same time, its source could renegotiate
        // first, against a canvas still at the old size, and fail (`not-negotiated`, which closed
        // the room: seen twice in CI, right after a canvas grew).
        let background_follows = background;
        // Weak references: the probe lives on canvas_caps's own pad, and strong ones would keep
        // the filter and the compositor's pad alive after the room's pipeline is gone.
        let (canvas_caps, background_pad) = (canvas_caps.downgrade(), background_pad.downgrade());
        canvas_sink.add_probe(gst::PadProbeType::BUFFER, move |_, _| {
            let change = std::mem::take(&mut *lock(&handed_over));
            let (Some(canvas_caps), Some(background_pad)) =
                (canvas_caps.upgrade(), background_pad.upgrade())
            else {
                return gst::PadProbeReturn::Ok;
            };
            if let Some((width, height)) = change.size {
                look::resize_filter(&canvas_caps, width, height);
                background_follows.ask(TileLook::sized(width, height));
                // Until the background source meets its new size, the compositor scales it.
                video::set_pad_rect(
                    &background_pad,
                    Rect {
                        x: 0,
                        y: 0,
                        width,
                        height,
                    },
                );
            }
            for (pad, place) in change.tiles {
                video::set_pad_place(&pad, place);
            }
            gst::PadProbeReturn::Ok
        });
        let adaptive = media.canvas == CanvasMode::Fit;
        Ok(Output {
            nominal: (media.width, media.height),
            choice: CanvasChoice::fixed(initial_step(media)),
            adaptive,
            pending,
            min_step: 0,
        })
    }

    pub fn step(&self) -> usize {
        self.choice.step()
    }

    pub fn set_min_step(&mut self, step: usize) {
        self.min_step = step.min(canvas::STEPS.len() - 1);
    }

    /// The canvas's size now, in pixels.
    pub fn size(&self) -> (u32, u32) {
        canvas::size(self.step(), self.nominal.0, self.nominal.1)
    }

    /// `rect` of the nominal frame, in canvas pixels now.
    pub fn scale(&self, rect: Rect) -> Rect {
        canvas::scale_rect(rect, self.step())
    }

    /// Decides the canvas for tiles showing `contents`; returns the new size when it changes (the
    /// caller then places every tile again, which hands the size over with them).
    pub fn decide(
        &mut self,
        contents: &[(Rect, TileContent)],
        pinned: bool,
        now: Instant,
    ) -> Option<(u32, u32)> {
        // A fixed canvas is the full frame, until the machine cannot keep up with the room
        // (load.rs): a smaller picture is better than a stalled one.
        let needed = if self.adaptive {
            canvas::needed_step(contents)
        } else {
            0
        };
        let needed = needed.max(self.min_step);
        let step = self.choice.decide(needed, pinned, now)?;
        let (width, height) = canvas::size(step, self.nominal.0, self.nominal.1);
        lock(&self.pending).size = Some((width, height));
        tracing::info!(width, height, "canvas resized");
        Some((width, height))
    }

    /// Hands every tile's place (in canvas pixels) to the compositor's thread; the latest call
    /// wins, and a pending resize goes with it.
    pub fn place(&self, tiles: Vec<(gst::Pad, PadPlace)>) {
        lock(&self.pending).tiles = tiles;
    }
}

/// The step a room opens on: the smallest canvas when it fits its cameras (the first camera grows
/// it), the full frame otherwise. Room.txt is filled at this size.
pub fn initial_step(media: &MediaConfig) -> usize {
    match media.canvas {
        CanvasMode::Fit => CanvasChoice::default().step(),
        CanvasMode::Fixed => 0,
    }
}

fn lock(pending: &Mutex<Pending>) -> std::sync::MutexGuard<'_, Pending> {
    // Held only to swap a value in or out; a panic elsewhere cannot leave it half-written.
    pending.lock().unwrap_or_else(|e| e.into_inner())
}
