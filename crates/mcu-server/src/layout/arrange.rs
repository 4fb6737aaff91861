//! Where each participant is drawn under a layout: the layout, who is in the room (in joining
//! order) and who speaks go in, rectangles on the nominal frame come out. Pure arithmetic,
//! recomputed on every join, leave, layout change and change of speaker.

use super::spec::{Kind, LayoutSpec, Region, Seat};
use super::{even, grid, Rect};
use crate::ids::ParticipantId;
use crate::protocol::layout::Fit;

/// One participant's tile.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Placement {
    pub who: ParticipantId,
    pub rect: Rect,
    /// Higher is drawn above lower (a picture-in-picture's corner above the full frame).
    pub z: u32,
    pub fit: Fit,
}

/// What the compositor draws.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Arrangement {
    /// In joining order.
    pub tiles: Vec<Placement>,
    /// In the room but not drawn (picture-in-picture, or a custom layout with fewer regions).
    pub hidden: Vec<ParticipantId>,
    /// The frame drawn around the active speaker's tile, under it: their tile is this rectangle
    /// shrunk by the outline's width. None when the speaker's tile is already the largest.
    pub outline: Option<(ParticipantId, Rect)>,
}

impl Arrangement {
    pub fn tile_of(&self, who: ParticipantId) -> Option<Rect> {
        self.tiles.iter().find(|p| p.who == who).map(|p| p.rect)
    }
}

/// Thumbnails per row of the strip under the large picture: four while there are few (a
/// thumbnail a quarter of the frame wide, 320×180 at 1280×720), up to eight (160×90, where a face
/// is still recognisable); more than eight others make more rows.
const STRIP_MIN_COLUMNS: u32 = 4;
const STRIP_MAX_COLUMNS: u32 = 8;
/// The outline around the speaker's tile: 4 px at 1280 wide, visible on a phone's screen, even.
const OUTLINE_PER_WIDTH: u32 = 320;
/// The corner picture of `pip` is a quarter of the frame each way, inset from the edges by this
/// share of the frame's width.
const INSET_SHARE: u32 = 4;
const INSET_MARGIN_PER_WIDTH: u32 = 40;

/// The speaker the layout draws: the active one while they are here, else the first to join.
fn speaker_or_first(
    people: &[ParticipantId],
    speaker: Option<ParticipantId>,
) -> Option<ParticipantId> {
    speaker
        .filter(|s| people.contains(s))
        .or(people.first().copied())
}

pub fn arrange(
    spec: &LayoutSpec,
    people: &[ParticipantId],
    speaker: Option<ParticipantId>,
    width: u32,
    height: u32,
) -> Arrangement {
    let people = &people[..people.len().min(super::MAX_TILES)];
    let fit = spec.fit;
    let flat = |who, rect| Placement {
        who,
        rect,
        z: 0,
        fit,
    };
    let mut tiles: Vec<Placement> = match &spec.kind {
        Kind::Grid => people
            .iter()
            .zip(grid(people.len(), width, height))
            .map(|(who, rect)| flat(*who, rect))
            .collect(),
        Kind::Speaker => match speaker_or_first(people, speaker) {
            Some(main) => stage(main, people, width, height, fit),
            None => Vec::new(),
        },
        Kind::Pin(pinned) => {
            let main = Some(*pinned)
                .filter(|p| people.contains(p))
                .or_else(|| speaker_or_first(people, speaker));
            match main {
                Some(main) => stage(main, people, width, height, fit),
                None => Vec::new(),
            }
        }
        Kind::Pip { main, inset } => pip(*main, *inset, people, speaker, width, height, fit),
        Kind::Custom { regions, .. } => custom(regions, people, speaker, width, height, fit),
    };
    let hidden = people
        .iter()
        .filter(|p| !tiles.iter().any(|t| t.who == **p))
        .copied()
        .collect();
    // Joining order, so the message and the compositor's pads list people the same way always.
    tiles.sort_by_key(|t| people.iter().position(|p| *p == t.who));
    let outline = outline(&mut tiles, speaker.filter(|s| people.contains(s)), width);
    Arrangement {
        tiles,
        hidden,
        outline,
    }
}

/// `main` large above a strip of everyone else's thumbnails.
fn stage(
    main: ParticipantId,
    people: &[ParticipantId],
    width: u32,
    height: u32,
    fit: Fit,
) -> Vec<Placement> {
    let others: Vec<ParticipantId> = people.iter().copied().filter(|p| *p != main).collect();
    let flat = |who, rect| Placement {
        who,
        rect,
        z: 0,
        fit,
    };
    if others.is_empty() {
        return vec![flat(main, full(width, height))];
    }
    let n = others.len() as u32;
    let columns = n.clamp(STRIP_MIN_COLUMNS, STRIP_MAX_COLUMNS);
    let rows = n.div_ceil(columns);
    let thumb_w = even(width / columns);
    let thumb_h = even(thumb_w * height / width);
    let strip_top = height.saturating_sub(rows * thumb_h);
    let mut tiles = vec![flat(
        main,
        Rect {
            x: 0,
            y: 0,
            width,
            height: strip_top,
        },
    )];
    for (i, who) in others.into_iter().enumerate() {
        let (row, col) = (i as u32 / columns, i as u32 % columns);
        let in_row = (n - row * columns).min(columns);
        let left = even((width - in_row * thumb_w) / 2);
        tiles.push(flat(
            who,
            Rect {
                x: left + col * thumb_w,
                y: strip_top + row * thumb_h,
                width: thumb_w,
                height: thumb_h,
            },
        ));
    }
    tiles
}

fn full(width: u32, height: u32) -> Rect {
    Rect {
        x: 0,
        y: 0,
        width,
        height,
    }
}

fn pip(
    main: Option<ParticipantId>,
    inset: Option<ParticipantId>,
    people: &[ParticipantId],
    speaker: Option<ParticipantId>,
    width: u32,
    height: u32,
    fit: Fit,
) -> Vec<Placement> {
    let main = main
        .filter(|m| people.contains(m))
        .or_else(|| speaker_or_first(people, speaker));
    let Some(main) = main else {
        return Vec::new();
    };
    let mut tiles = vec![Placement {
        who: main,
        rect: full(width, height),
        z: 0,
        fit,
    }];
    let inset = inset
        .filter(|i| people.contains(i) && *i != main)
        .or_else(|| people.iter().copied().find(|p| *p != main));
    if let Some(inset) = inset {
        let (w, h) = (even(width / INSET_SHARE), even(height / INSET_SHARE));
        let margin = even(width / INSET_MARGIN_PER_WIDTH);
        tiles.push(Placement {
            who: inset,
            rect: Rect {
                x: width - w - margin,
                y: height - h - margin,
                width: w,
                height: h,
            },
            z: 1,
            fit,
        });
    }
    tiles
}

/// A region's rectangle in pixels: edges rounded to even pixels, at least 2×2.
fn region_rect(region: &Region, width: u32, height: u32) -> Rect {
    let px = |v: f64, total: u32| even(((v * f64::from(total)).round() as u32).min(total));
    let (x0, y0) = (px(region.x, width), px(region.y, height));
    let (x1, y1) = (
        px(region.x + region.width, width),
        px(region.y + region.height, height),
    );
    let (x0, y0) = (x0.min(width - 2), y0.min(height - 2));
    Rect {
        x: x0,
        y: y0,
        width: x1.saturating_sub(x0).max(2),
        height: y1.saturating_sub(y0).max(2),
    }
}

fn custom(
    regions: &[Region],
    people: &[ParticipantId],
    speaker: Option<ParticipantId>,
    width: u32,
    height: u32,
    fit: Fit,
) -> Vec<Placement> {
    // Seats by name first, then the speaker (unless seated by name), then the others in order.
    let mut seated: Vec<(usize, ParticipantId)> = regions
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match r.seat {
            Seat::Participant(who) if people.contains(&who) => Some((i, who)),
            _ => None,
        })
        .collect();
    let taken = |seated: &[(usize, ParticipantId)], who: ParticipantId| {
        seated.iter().any(|(_, w)| *w == who)
    };
    let speaker = speaker_or_first(people, speaker);
    for (i, r) in regions.iter().enumerate() {
        if r.seat == Seat::Speaker {
            let who = speaker
                .filter(|s| !taken(&seated, *s))
                .or_else(|| people.iter().copied().find(|p| !taken(&seated, *p)));
            if let Some(who) = who {
                seated.push((i, who));
            }
        }
    }
    let rest: Vec<ParticipantId> = people
        .iter()
        .copied()
        .filter(|p| !taken(&seated, *p))
        .collect();
    for (i, r) in regions.iter().enumerate() {
        if let Seat::Other(n) = r.seat {
            if let Some(who) = rest.get(n as usize - 1) {
                seated.push((i, *who));
            }
        }
    }
    seated
        .into_iter()
        .map(|(i, who)| {
            let region = &regions[i];
            Placement {
                who,
                rect: region_rect(region, width, height),
                z: region.z,
                fit: region.fit.unwrap_or(fit),
            }
        })
        .collect()
}

/// Outlines the speaker's tile when another tile is at least as large (a grid, a strip): the
/// tile shrinks by the outline's width, and the outline fills the rectangle it had.
fn outline(
    tiles: &mut [Placement],
    speaker: Option<ParticipantId>,
    width: u32,
) -> Option<(ParticipantId, Rect)> {
    let speaker = speaker?;
    let area = |r: &Rect| u64::from(r.width) * u64::from(r.height);
    let own = tiles.iter().find(|t| t.who == speaker)?.rect;
    let rivalled = tiles
        .iter()
        .any(|t| t.who != speaker && area(&t.rect) >= area(&own));
    let thickness = even(width / OUTLINE_PER_WIDTH).max(2);
    if !rivalled || own.width <= 4 * thickness || own.height <= 4 * thickness {
        return None;
    }
    let tile = tiles.iter_mut().find(|t| t.who == speaker)?;
    tile.rect = Rect {
        x: own.x + thickness,
        y: own.y + thickness,
        width: own.width - 2 * thickness,
        height: own.height - 2 * thickness,
    };
    Some((speaker, own))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::spec::NamedLayouts;
    use crate::protocol::layout::LayoutRequest;

    const W: u32 = 1280;
    const H: u32 = 720;

    fn people(n: u64) -> Vec<ParticipantId> {
        (1..=n).map(ParticipantId).collect()
    }

    fn spec(json: &str) -> LayoutSpec {
        let request: LayoutRequest = serde_json::from_str(json).unwrap();
        NamedLayouts::default().resolve(&request).unwrap()
    }

    fn centre(r: Rect) -> (u32, u32) {
        (r.x + r.width / 2, r.y + r.height / 2)
    }

    fn inside(r: &Rect) -> bool {
        r.x + r.width <= W && r.y + r.height <= H && r.width > 0 && r.height > 0
    }

    #[test]
    fn speaker_layout_puts_the_speaker_large_above_a_strip() {
        let a = arrange(
            &spec(r#"{"layout":"speaker"}"#),
            &people(3),
            Some(ParticipantId(2)),
            W,
            H,
        );
        assert_eq!(
            a.tile_of(ParticipantId(2)),
            Some(Rect {
                x: 0,
                y: 0,
                width: W,
                height: 540
            })
        );
        // Two thumbnails of a four-wide strip, centred.
        assert_eq!(
            a.tile_of(ParticipantId(1)),
            Some(Rect {
                x: 320,
                y: 540,
                width: 320,
                height: 180
            })
        );
        assert_eq!(a.outline, None, "the speaker is already the largest");
        assert!(a.hidden.is_empty());
    }

    #[test]
    fn before_anyone_speaks_the_first_to_join_is_large() {
        let a = arrange(&spec(r#"{"layout":"speaker"}"#), &people(2), None, W, H);
        assert_eq!(a.tile_of(ParticipantId(1)).map(|r| r.height), Some(540));
    }

    #[test]
    fn every_layout_keeps_tiles_even_inside_the_frame_and_strip_tiles_apart() {
        for n in 1..=25 {
            for json in [
                r#"{"layout":"grid"}"#,
                r#"{"layout":"speaker"}"#,
                r#"{"layout":"pin","participant_id":"p1"}"#,
                r#"{"layout":"pip"}"#,
            ] {
                let a = arrange(&spec(json), &people(n), Some(ParticipantId(n)), W, H);
                assert_eq!(a.tiles.len() + a.hidden.len(), n as usize, "{json} n={n}");
                for t in &a.tiles {
                    assert!(inside(&t.rect), "{json} n={n}: {t:?}");
                    for v in [t.rect.x, t.rect.y, t.rect.width, t.rect.height] {
                        assert_eq!(v % 2, 0, "{json} n={n}: {t:?}");
                    }
                }
                let same_z: Vec<_> = a.tiles.iter().filter(|t| t.z == 0).collect();
                for (i, t) in same_z.iter().enumerate() {
                    for o in &same_z[i + 1..] {
                        let r = (t.rect, o.rect);
                        let apart = r.0.x + r.0.width <= r.1.x
                            || r.1.x + r.1.width <= r.0.x
                            || r.0.y + r.0.height <= r.1.y
                            || r.1.y + r.1.height <= r.0.y;
                        assert!(apart, "{json} n={n}: {t:?} overlaps {o:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn sixteen_on_stage_leave_half_the_frame_to_the_speaker() {
        let a = arrange(&spec(r#"{"layout":"speaker"}"#), &people(16), None, W, H);
        assert_eq!(a.tile_of(ParticipantId(1)).map(|r| r.height), Some(540));
        assert_eq!(a.tile_of(ParticipantId(16)).map(|r| r.width), Some(160));
    }

    #[test]
    fn pin_keeps_the_presenter_large_whoever_speaks() {
        let pin = spec(r#"{"layout":"pin","participant_id":"p3"}"#);
        let a = arrange(&pin, &people(4), Some(ParticipantId(1)), W, H);
        assert_eq!(centre(a.tile_of(ParticipantId(3)).unwrap()), (640, 270));
        // The speaker in the strip is outlined.
        let (who, ring) = a.outline.expect("an outline");
        assert_eq!(who, ParticipantId(1));
        let tile = a.tile_of(ParticipantId(1)).unwrap();
        assert_eq!((ring.width - tile.width, ring.height - tile.height), (8, 8));
    }

    #[test]
    fn pip_draws_two_and_hides_the_rest() {
        let a = arrange(
            &spec(r#"{"layout":"pip","participant_id":"p2","inset_participant_id":"p4"}"#),
            &people(4),
            None,
            W,
            H,
        );
        let main = a.tiles.iter().find(|t| t.who == ParticipantId(2)).unwrap();
        assert_eq!((main.rect, main.z), (full(W, H), 0));
        let inset = a.tiles.iter().find(|t| t.who == ParticipantId(4)).unwrap();
        assert_eq!(inset.z, 1);
        assert_eq!(centre(inset.rect), (1088, 598));
        assert_eq!(a.hidden, vec![ParticipantId(1), ParticipantId(3)]);
    }

    #[test]
    fn the_grid_outlines_the_speaker() {
        let a = arrange(
            &spec(r#"{"layout":"grid"}"#),
            &people(4),
            Some(ParticipantId(4)),
            W,
            H,
        );
        assert_eq!(
            a.outline,
            Some((
                ParticipantId(4),
                Rect {
                    x: 640,
                    y: 360,
                    width: 640,
                    height: 360
                }
            ))
        );
        assert_eq!(
            a.tile_of(ParticipantId(4)),
            Some(Rect {
                x: 644,
                y: 364,
                width: 632,
                height: 352
            })
        );
        // Alone, nobody is outlined.
        let alone = arrange(
            &spec(r#"{"layout":"grid"}"#),
            &people(1),
            Some(ParticipantId(1)),
            W,
            H,
        );
        assert_eq!(alone.outline, None);
    }

    #[test]
    fn custom_seats_names_first_then_the_speaker_then_the_others_in_order() {
        let layout = spec(
            r#"{"layout":"custom","regions":[
                {"x":0,"y":0,"width":0.5,"height":1,"seat":"speaker"},
                {"x":0.5,"y":0,"width":0.5,"height":0.5,"seat":"p1"},
                {"x":0.5,"y":0.5,"width":0.25,"height":0.5,"seat":1},
                {"x":0.75,"y":0.5,"width":0.25,"height":0.5,"seat":2,"z":3}]}"#,
        );
        // p1 is named; p3 speaks; the others in order are p2 and p4; p5 has no seat.
        let a = arrange(&layout, &people(5), Some(ParticipantId(3)), W, H);
        let at = |p| a.tile_of(ParticipantId(p)).map(centre);
        assert_eq!(at(3), Some((320, 360)));
        assert_eq!(at(1), Some((960, 180)));
        assert_eq!(at(2), Some((800, 540)));
        assert_eq!(at(4), Some((1120, 540)));
        assert_eq!(a.hidden, vec![ParticipantId(5)]);
        // The named participant speaking takes no second seat: the speaker's seat goes to the
        // first unseated participant.
        let b = arrange(&layout, &people(5), Some(ParticipantId(1)), W, H);
        assert_eq!(b.tile_of(ParticipantId(2)).map(centre), Some((320, 360)));
        assert_eq!(b.tile_of(ParticipantId(1)).map(centre), Some((960, 180)));
    }

    #[test]
    fn fit_comes_from_the_layout_unless_a_region_says_otherwise() {
        let layout = spec(
            r#"{"layout":"custom","fit":"letterbox","regions":[
                {"x":0,"y":0,"width":0.5,"height":1,"seat":1},
                {"x":0.5,"y":0,"width":0.5,"height":1,"seat":2,"fit":"crop"}]}"#,
        );
        let a = arrange(&layout, &people(2), None, W, H);
        let fits: Vec<Fit> = a.tiles.iter().map(|t| t.fit).collect();
        assert_eq!(fits, vec![Fit::Letterbox, Fit::Crop]);
    }
}
