//! Where each participant is drawn in the composite: the automatic grid (here), the layouts a room
//! can switch to (`spec`: what was asked for, checked) and the placement of everyone under one of
//! them (`arrange`). Pure arithmetic, recomputed on every join, leave, layout change and change of
//! speaker. A leaf: it knows participant ids and the protocol's layout types, nothing else.

mod arrange;
pub mod spec;

pub use arrange::{arrange, Arrangement, Placement};
pub use spec::{LayoutError, LayoutSpec, NamedLayouts};

/// A rectangle in composite pixels. Every coordinate and size is even, because I420 stores colour
/// at half resolution: an odd edge would smear the colour of one tile into its neighbour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rect {
    pub x: u32,
    pub y: u32,
    pub width: u32,
    pub height: u32,
}

/// The largest grid the layout draws (5×5). Beyond this a tile is too small to recognise a face
/// at 1280×720, so the room refuses more participants.
pub const MAX_TILES: usize = 25;

/// Columns and rows for `n` participants: 1 → 1×1, 2 → 2×1 (side by side), then the smallest
/// square that holds everyone (3–4 → 2×2, 5–9 → 3×3, 10–16 → 4×4, 17–25 → 5×5).
pub fn grid_dimensions(n: usize) -> (u32, u32) {
    match n {
        0 | 1 => (1, 1),
        2 => (2, 1),
        _ => {
            let mut side = 2u32;
            while (side * side) < n as u32 {
                side += 1;
            }
            (side, side)
        }
    }
}

fn even(v: u32) -> u32 {
    v & !1
}

/// The tiles for `n` participants on a `width`×`height` canvas, in participant order (row by row).
/// A last row that is not full is centred, so a 3-person call does not look lopsided.
pub fn grid(n: usize, width: u32, height: u32) -> Vec<Rect> {
    let n = n.min(MAX_TILES);
    let (cols, rows) = grid_dimensions(n);
    let tile_w = even(width / cols);
    let tile_h = even(height / rows);
    // Spare pixels from rounding are split evenly around the grid so the grid is centred.
    let margin_x = even((width - tile_w * cols) / 2);
    let margin_y = even((height - tile_h * rows) / 2);
    (0..n as u32)
        .map(|i| {
            let row = i / cols;
            let col = i % cols;
            let in_this_row = (n as u32 - row * cols).min(cols);
            let row_offset = even((cols - in_this_row) * tile_w / 2);
            Rect {
                x: margin_x + row_offset + col * tile_w,
                y: margin_y + row * tile_h,
                width: tile_w,
                height: tile_h,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const W: u32 = 1280;
    const H: u32 = 720;

    fn overlaps(a: &Rect, b: &Rect) -> bool {
        a.x < b.x + b.width && b.x < a.x + a.width && a.y < b.y + b.height && b.y < a.y + a.height
    }

    #[test]
    fn grid_sizes_follow_the_documented_steps() {
        let expect = [
            (1, (1, 1)),
            (2, (2, 1)),
            (3, (2, 2)),
            (4, (2, 2)),
            (5, (3, 3)),
            (9, (3, 3)),
            (10, (4, 4)),
            (16, (4, 4)),
            (17, (5, 5)),
            (25, (5, 5)),
        ];
        for (n, dims) in expect {
            assert_eq!(grid_dimensions(n), dims, "n = {n}");
        }
    }

    #[test]
    fn one_participant_fills_the_frame() {
        assert_eq!(
            grid(1, W, H),
            vec![Rect {
                x: 0,
                y: 0,
                width: W,
                height: H
            }]
        );
    }

    #[test]
    fn two_sit_side_by_side() {
        let tiles = grid(2, W, H);
        assert_eq!(
            tiles[0],
            Rect {
                x: 0,
                y: 0,
                width: 640,
                height: 720
            }
        );
        assert_eq!(
            tiles[1],
            Rect {
                x: 640,
                y: 0,
                width: 640,
                height: 720
            }
        );
    }

    #[test]
    fn four_fill_the_quadrants_in_reading_order() {
        let tiles = grid(4, W, H);
        let centers: Vec<_> = tiles
            .iter()
            .map(|t| (t.x + t.width / 2, t.y + t.height / 2))
            .collect();
        assert_eq!(
            centers,
            vec![(320, 180), (960, 180), (320, 540), (960, 540)]
        );
    }

    #[test]
    fn three_centre_the_last_row() {
        let tiles = grid(3, W, H);
        assert_eq!(
            tiles[2],
            Rect {
                x: 320,
                y: 360,
                width: 640,
                height: 360
            }
        );
    }

    #[test]
    fn every_count_gives_even_disjoint_tiles_inside_the_canvas() {
        for (w, h) in [(1280, 720), (1920, 1080), (640, 360), (854, 480)] {
            for n in 1..=MAX_TILES {
                let tiles = grid(n, w, h);
                assert_eq!(tiles.len(), n);
                for (i, t) in tiles.iter().enumerate() {
                    assert!(
                        t.x + t.width <= w && t.y + t.height <= h,
                        "{n} tiles: {t:?}"
                    );
                    assert!(t.width > 0 && t.height > 0);
                    for v in [t.x, t.y, t.width, t.height] {
                        assert_eq!(v % 2, 0, "{n} tiles on {w}x{h}: {t:?}");
                    }
                    for other in &tiles[i + 1..] {
                        assert!(!overlaps(t, other), "{t:?} overlaps {other:?}");
                    }
                }
            }
        }
    }

    #[test]
    fn more_than_the_maximum_is_capped() {
        assert_eq!(grid(40, W, H).len(), MAX_TILES);
    }
}
