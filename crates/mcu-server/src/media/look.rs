//! How a tile branch draws its frames (its look): the size it scales to, how its picture fills
//! that size (cropped to the tile's shape, or whole and letterboxed), and the name label over it.
//! The room asks for a look; the branch's own streaming thread applies it between two frames.

use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

use crate::protocol::layout::Fit;

/// How a tile branch draws its frames: their size, how the picture fills it, and the name label
/// over it. Every field is applied together, between two frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TileLook {
    pub width: u32,
    pub height: u32,
    pub fit: Fit,
    /// None: no label (or the branch has none).
    pub label: Option<Label>,
}

impl TileLook {
    pub fn sized(width: u32, height: u32) -> Self {
        TileLook {
            width,
            height,
            fit: Fit::Letterbox,
            label: None,
        }
    }
}

/// A name label: Pango markup (escaped) and its font size in pixels.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Label {
    pub markup: String,
    pub font_px: u32,
}

/// The smallest and largest label font: 10 px is still legible on a 160×90 thumbnail; 28 px is
/// large on a full frame without hiding a face.
const LABEL_MIN_PX: u32 = 10;
const LABEL_MAX_PX: u32 = 28;
/// The font is a fourteenth of the tile's height between those: one line of text in a strip
/// thumbnail covers the bottom ninth of it.
const LABEL_PX_PER_HEIGHT: u32 = 14;
/// Average glyph width as a share of the font size in DejaVu/Noto Sans: how many characters of a
/// name fit across a tile before it is cut with an ellipsis.
const GLYPH_WIDTH_SHARE: f64 = 0.62;

/// The label for `name` on a tile `width`×`height` pixels large: escaped (a name is user input;
/// textoverlay reads Pango markup, so "<b>" or "&" are shown as typed), shortened to fit one line,
/// with a red "muted" after it when the participant's audio is muted.
pub fn label_for(name: &str, muted: bool, width: u32, height: u32) -> Label {
    let font_px = (height / LABEL_PX_PER_HEIGHT).clamp(LABEL_MIN_PX, LABEL_MAX_PX);
    let suffix = if muted { " \u{b7} muted" } else { "" };
    let room = f64::from(width.saturating_sub(font_px)) / (f64::from(font_px) * GLYPH_WIDTH_SHARE);
    let fits = (room as usize)
        .saturating_sub(suffix.chars().count())
        .max(1);
    let shown: String = if name.chars().count() > fits {
        name.chars()
            .take(fits.saturating_sub(1))
            .chain(std::iter::once('\u{2026}'))
            .collect()
    } else {
        name.to_string()
    };
    let mut markup = gst::glib::markup_escape_text(&shown).to_string();
    if muted {
        markup.push_str(" <span foreground=\"#ff8a80\">\u{b7} muted</span>");
    }
    Label { markup, font_px }
}

/// A tile branch's look, asked for by the room and applied by the branch's own streaming thread.
/// Setting the `tile_caps` filter from the room's thread races the branch's negotiation: its
/// source (videotestsrc, or the videoscale before the filter) may query the old size, the filter
/// change to the new one, and the caps it then sends be refused — `not-negotiated`, and the branch
/// dies. Applied from a probe just before the filter, the change lands between two frames of the
/// same thread, and the next frame is negotiated at the new size. The crop before the scaler and
/// the label after the filter change in the same probe, so one frame never shows a new size with
/// the old crop.
#[derive(Clone)]
pub struct TileSize {
    wanted: Arc<Mutex<Option<TileLook>>>,
}

/// The branch's elements a look changes, held weakly: the probes live on the branch's own pads,
/// so strong references would keep the branch alive for ever once it is removed.
struct LookElements {
    caps_filter: gst::glib::WeakRef<gst::Element>,
    crop: Option<Crop>,
    label: Option<gst::glib::WeakRef<gst::Element>>,
}

impl LookElements {
    fn apply(&self, look: &TileLook, before: Option<&TileLook>) {
        let Some(caps_filter) = self.caps_filter.upgrade() else {
            return;
        };
        resize_filter(&caps_filter, look.width, look.height);
        let changed = |f: &dyn Fn(&TileLook) -> bool| before.is_none_or(f);
        if let Some(crop) = &self.crop {
            if changed(&|b| (b.width, b.height, b.fit) != (look.width, look.height, look.fit)) {
                crop.reshape(match look.fit {
                    Fit::Crop if look.width > 0 && look.height > 0 => {
                        Some((look.width, look.height))
                    }
                    _ => None,
                });
            }
        }
        if let Some(label) = self.label.as_ref().and_then(|l| l.upgrade()) {
            if changed(&|b| b.label != look.label) {
                match &look.label {
                    Some(l) => {
                        let pad = (l.font_px / 2) as i32;
                        label.set_property("font-desc", format!("Sans Bold {}px", l.font_px));
                        label.set_property("xpad", pad);
                        label.set_property("ypad", pad);
                        label.set_property("text", l.markup.as_str());
                    }
                    None => label.set_property("text", ""),
                }
            }
        }
    }
}

/// The branch's `videocrop` (named `crop`), cutting each decoded picture to its tile's shape.
///
/// Its four sides are computed here from the size of the pictures it is given, and set again
/// whenever either changes: when the tile's shape changes (from the look's probe, for the frames
/// now passing) and when the decoder announces a new size (from a probe on the crop's sink pad,
/// before the crop sees that size). Both run in the branch's one streaming thread, so the sides
/// always belong to the size they are applied to. GStreamer 1.22's aspectratiocrop, used before,
/// re-applied on the frame after a change of shape the input size it had when the shape changed;
/// a camera whose size changed in between (browsers change theirs under load or on a thin link,
/// often just as the layout moves them) had its new frames cropped as the old size, "invalid
/// video buffer received" on each, and its tile showed garbage for the rest of the call.
#[derive(Clone)]
struct Crop {
    element: gst::glib::WeakRef<gst::Element>,
    /// The tile's shape (width, height) while the picture is cropped to fill it; None: whole.
    shape: Arc<Mutex<Option<(u32, u32)>>>,
}

impl Crop {
    fn follow(element: &gst::Element) -> Result<Self> {
        let crop = Crop {
            element: element.downgrade(),
            shape: Arc::default(),
        };
        let on_caps = crop.clone();
        element
            .static_pad("sink")
            .context("the crop has no sink pad")?
            .add_probe(gst::PadProbeType::EVENT_DOWNSTREAM, move |_, info| {
                if let Some(gst::EventView::Caps(caps)) = info.event().map(|e| e.view()) {
                    if let Some(size) = picture_size(caps.caps()) {
                        on_caps.cut(size);
                    }
                }
                gst::PadProbeReturn::Ok
            });
        Ok(crop)
    }

    /// A new shape to fill, for the pictures passing now (and the ones after them).
    fn reshape(&self, shape: Option<(u32, u32)>) {
        *lock(&self.shape) = shape;
        let current = self
            .element
            .upgrade()
            .and_then(|e| e.static_pad("sink"))
            .and_then(|pad| pad.current_caps());
        if let Some(size) = current.as_ref().and_then(|c| picture_size(c)) {
            self.cut(size);
        }
    }

    /// Sets the sides for pictures of `size`; unchanged sides are left alone (each change makes
    /// the crop negotiate again).
    fn cut(&self, size: (u32, u32)) {
        let Some(element) = self.element.upgrade() else {
            return;
        };
        let shape = *lock(&self.shape);
        let sides = crop_sides(size, shape);
        for (name, value) in [
            ("left", sides.left),
            ("right", sides.right),
            ("top", sides.top),
            ("bottom", sides.bottom),
        ] {
            let value = value as i32;
            if element.property::<i32>(name) != value {
                element.set_property(name, value);
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Held only to copy a value in or out; a panic elsewhere cannot leave it half-written.
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// A raw video caps' width and height.
fn picture_size(caps: &gst::CapsRef) -> Option<(u32, u32)> {
    let s = caps.structure(0)?;
    let width = s.get::<i32>("width").ok()?;
    let height = s.get::<i32>("height").ok()?;
    (width > 0 && height > 0).then_some((width as u32, height as u32))
}

/// Pixels cut from each side of a picture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Sides {
    pub left: u32,
    pub right: u32,
    pub top: u32,
    pub bottom: u32,
}

/// What to cut from a `size` picture (square pixels) so that what is left has `shape`'s aspect
/// ratio, centred: the sides of a picture wider than the tile, the top and bottom of a taller
/// one. None, or a shape within a pixel of the picture's: nothing. Left and top stay even, so
/// the chroma of 4:2:0 pictures stays aligned with their luma.
pub fn crop_sides((width, height): (u32, u32), shape: Option<(u32, u32)>) -> Sides {
    let Some((shape_w, shape_h)) = shape.filter(|(w, h)| *w > 0 && *h > 0) else {
        return Sides::default();
    };
    let (width, height, shape_w, shape_h) = (
        u64::from(width),
        u64::from(height),
        u64::from(shape_w),
        u64::from(shape_h),
    );
    // Compared as width × shape_h against height × shape_w: no rounding of ratios.
    if width * shape_h > height * shape_w {
        let kept = (height * shape_w / shape_h).max(2);
        let (first, second) = split(width.saturating_sub(kept));
        Sides {
            left: first,
            right: second,
            ..Sides::default()
        }
    } else {
        let kept = (width * shape_h / shape_w).max(2);
        let (first, second) = split(height.saturating_sub(kept));
        Sides {
            top: first,
            bottom: second,
            ..Sides::default()
        }
    }
}

/// Splits a cut in two, the first part even; a cut of a pixel is not worth a copy of the frame.
fn split(cut: u64) -> (u32, u32) {
    if cut < 2 {
        return (0, 0);
    }
    let first = (cut / 2) & !1;
    (first as u32, (cut - first) as u32)
}

impl TileSize {
    /// Watches the branch's `tile_caps` filter (and its `crop` and `label`, if it has them);
    /// looks asked for later are applied by the probe.
    pub fn follow(bin: &gst::Bin) -> Result<Self> {
        let caps_filter = bin
            .by_name("tile_caps")
            .with_context(|| format!("{} has no element named tile_caps", bin.name()))?;
        let crop = match bin.by_name("crop") {
            Some(element) => Some(Crop::follow(&element)?),
            None => None,
        };
        let elements = LookElements {
            caps_filter: caps_filter.downgrade(),
            crop,
            label: bin.by_name("label").map(|l| l.downgrade()),
        };
        Self::follow_elements(&caps_filter, elements)
    }

    /// Watches `caps_filter`, which a source of its own feeds (a tile's, or the background's).
    pub fn follow_filter(caps_filter: gst::Element) -> Result<Self> {
        let elements = LookElements {
            caps_filter: caps_filter.downgrade(),
            crop: None,
            label: None,
        };
        Self::follow_elements(&caps_filter, elements)
    }

    fn follow_elements(caps_filter: &gst::Element, elements: LookElements) -> Result<Self> {
        let sink = caps_filter
            .static_pad("sink")
            .context("tile_caps has no sink pad")?;
        let size = TileSize {
            wanted: Arc::default(),
        };
        let wanted = size.wanted.clone();
        // Only this branch's streaming thread touches it.
        let applied: Mutex<Option<TileLook>> = Mutex::new(None);
        sink.add_probe(
            gst::PadProbeType::BUFFER | gst::PadProbeType::BUFFER_LIST,
            move |_, _| {
                let next = lock(&wanted).take();
                if let Some(look) = next {
                    let mut applied = lock(&applied);
                    elements.apply(&look, applied.as_ref());
                    *applied = Some(look);
                }
                gst::PadProbeReturn::Ok
            },
        );
        Ok(size)
    }

    pub fn ask(&self, look: TileLook) {
        *lock(&self.wanted) = Some(look);
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

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(size: (u32, u32), shape: (u32, u32)) -> (u32, u32) {
        let s = crop_sides(size, Some(shape));
        (size.0 - s.left - s.right, size.1 - s.top - s.bottom)
    }

    #[test]
    fn a_wide_picture_loses_its_sides_and_a_tall_one_its_top_and_bottom() {
        // 16:9 into a 640×720 grid tile: the middle 320×360 of a 640×360 camera.
        assert_eq!(
            crop_sides((640, 360), Some((640, 720))),
            Sides {
                left: 160,
                right: 160,
                top: 0,
                bottom: 0
            }
        );
        // 16:9 into a 1280×540 speaker region: 640×270 of it, centred.
        assert_eq!(
            crop_sides((640, 360), Some((1280, 540))),
            Sides {
                left: 0,
                right: 0,
                top: 44,
                bottom: 46
            }
        );
        // A phone held upright into a landscape tile.
        assert_eq!(kept((360, 640), (1280, 720)), (360, 202));
    }

    #[test]
    fn whole_pictures_are_not_cut() {
        assert_eq!(crop_sides((640, 360), None), Sides::default());
        assert_eq!(crop_sides((640, 360), Some((1280, 720))), Sides::default());
        // Within a pixel of the shape (632×356 against 16:9): not worth copying the frame.
        assert_eq!(crop_sides((632, 356), Some((1280, 720))), Sides::default());
        assert_eq!(crop_sides((640, 360), Some((0, 720))), Sides::default());
    }

    #[test]
    fn every_size_a_camera_may_send_keeps_a_picture_of_the_tile_shape_with_even_left_and_top() {
        for (w, h) in [
            (2, 2),
            (158, 88),
            (316, 178),
            (474, 267),
            (1279, 719),
            (4096, 2160),
        ] {
            for shape in [(640, 720), (1280, 540), (320, 180), (1, 1000), (1000, 1)] {
                let s = crop_sides((w, h), Some(shape));
                assert_eq!(s.left % 2 + s.top % 2, 0, "{w}×{h} into {shape:?}: {s:?}");
                let (kw, kh) = kept((w, h), shape);
                assert!(kw >= 1 && kh >= 1, "{w}×{h} into {shape:?}: {s:?}");
                // The kept picture has the tile's shape, to the rounding of a pixel or two.
                let error =
                    (i64::from(kw) * i64::from(shape.1) - i64::from(kh) * i64::from(shape.0)).abs();
                let tolerance = 2 * i64::from(shape.0.max(shape.1));
                assert!(
                    error <= tolerance || kw <= 2 || kh <= 2,
                    "{w}×{h} into {shape:?} kept {kw}×{kh}"
                );
            }
        }
    }
}
