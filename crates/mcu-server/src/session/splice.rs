//! One viewer's composite, spliced from the tiers it moves between. Each tier is its own encode
//! with its own sequence numbers and VP8 picture ids; the viewer must see one stream: sequence
//! numbers and picture ids that go on by one, timestamps that never go back, and a switch that
//! lands on a keyframe of the new tier after the last whole frame of the old one, so its decoder
//! never sees half a frame or a reference it does not have.
//!
//! Pure: packets of any type go in with what they say of themselves (`rtp::RtpInfo`), and come
//! out, in order, with how to rewrite them. Gaps in a tier's own numbering (packets its reader
//! missed) stay gaps, so the viewer still asks for what it lost.

use std::time::{Duration, Instant};

use crate::rtp::RtpInfo;

/// After the new tier's keyframe begins, how long to wait for the old tier's frame to end. A
/// frame's packets leave the encoder within a few milliseconds; a tier that stalls longer has
/// nothing worth waiting for.
pub const CUTOVER_WAIT: Duration = Duration::from_millis(100);
/// Packets of the new tier held while the old one finishes its frame, at most: a keyframe of the
/// top tier is under 150 packets.
const MAX_HELD: usize = 400;
/// RTP timestamp units of one frame at 30 fps, put between the old tier's last frame and the new
/// tier's first when the new one would not be later.
const FRAME_TICKS: u32 = 3_000;

/// How to write a packet out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rewrite {
    pub seq: u16,
    pub timestamp: u32,
    /// The picture id to write into the payload; None when the payload's own is right.
    pub picture_id: Option<u16>,
}

#[derive(Debug, Clone, Copy, Default)]
struct Offsets {
    seq: u16,
    timestamp: u32,
    picture_id: u16,
}

/// The last packet written, as written.
#[derive(Debug, Clone, Copy)]
struct Last {
    seq: u16,
    timestamp: u32,
    picture_id: Option<u16>,
    /// It ended a frame.
    marker: bool,
}

#[derive(Debug)]
struct Pending<P> {
    tier: usize,
    /// When the new tier's keyframe began, once it has.
    keyframe_at: Option<Instant>,
    held: Vec<(P, RtpInfo)>,
}

#[derive(Debug)]
pub struct Splicer<P> {
    tier: usize,
    offsets: Offsets,
    last: Option<Last>,
    pending: Option<Pending<P>>,
}

impl<P> Splicer<P> {
    /// A viewer starting on `tier`.
    pub fn new(tier: usize) -> Self {
        Splicer {
            tier,
            offsets: Offsets::default(),
            last: None,
            pending: None,
        }
    }

    /// The tier whose packets go out now.
    pub fn tier(&self) -> usize {
        self.tier
    }

    /// The tier being moved to, until the move is done.
    pub fn moving_to(&self) -> Option<usize> {
        self.pending.as_ref().map(|p| p.tier)
    }

    /// Starts moving to `tier` (replacing a move under way); its packets are then handed to
    /// `next` until the move is done.
    pub fn move_to(&mut self, tier: usize) {
        self.pending = (tier != self.tier).then(|| Pending {
            tier,
            keyframe_at: None,
            held: Vec::new(),
        });
    }

    /// A packet of the current tier: what to send now.
    pub fn current(&mut self, packet: P, info: RtpInfo) -> Vec<(P, Rewrite)> {
        let mut out = vec![(packet, self.rewrite(&info))];
        let cut_now = self
            .pending
            .as_ref()
            .is_some_and(|p| p.keyframe_at.is_some() && info.marker);
        if cut_now {
            out.extend(self.cut_over());
        }
        out
    }

    /// A packet of the tier being moved to: nothing until its keyframe begins, then held until
    /// the current tier ends its frame (or `CUTOVER_WAIT` passes, see `tick`).
    pub fn next(&mut self, packet: P, info: RtpInfo, now: Instant) -> Vec<(P, Rewrite)> {
        let ends_a_frame = self.last.is_none_or(|l| l.marker);
        let Some(pending) = self.pending.as_mut() else {
            return Vec::new();
        };
        if pending.keyframe_at.is_none() {
            if !info.keyframe_start {
                return Vec::new();
            }
            pending.keyframe_at = Some(now);
        }
        if pending.held.len() >= MAX_HELD {
            // Something is badly wrong with the old tier: go now.
            return self.cut_over();
        }
        pending.held.push((packet, info));
        if ends_a_frame {
            return self.cut_over();
        }
        Vec::new()
    }

    /// Moves on when the current tier has not ended its frame within `CUTOVER_WAIT` of the new
    /// tier's keyframe.
    pub fn tick(&mut self, now: Instant) -> Vec<(P, Rewrite)> {
        let overdue = self.pending.as_ref().is_some_and(|p| {
            p.keyframe_at
                .is_some_and(|at| now.saturating_duration_since(at) >= CUTOVER_WAIT)
        });
        if overdue {
            self.cut_over()
        } else {
            Vec::new()
        }
    }

    fn cut_over(&mut self) -> Vec<(P, Rewrite)> {
        let Some(pending) = self.pending.take() else {
            return Vec::new();
        };
        self.tier = pending.tier;
        let mut held = pending.held.into_iter();
        let Some((first_packet, first)) = held.next() else {
            return Vec::new();
        };
        if let Some(last) = self.last {
            self.offsets.seq = last.seq.wrapping_add(1).wrapping_sub(first.seq);
            if let (Some(last_id), Some(id)) = (last.picture_id, first.picture_id) {
                self.offsets.picture_id = (last_id.wrapping_add(1).wrapping_sub(id)) & 0x7fff;
            }
            // The tiers share a clock, so the new tier's keyframe is normally later already; if
            // it is not (the old tier ran a frame ahead), it is put a frame after the old tier.
            let mapped = first.timestamp.wrapping_add(self.offsets.timestamp);
            if !is_after(mapped, last.timestamp) {
                self.offsets.timestamp = last
                    .timestamp
                    .wrapping_add(FRAME_TICKS)
                    .wrapping_sub(first.timestamp);
            }
        }
        let mut out = vec![(first_packet, self.rewrite(&first))];
        for (packet, info) in held {
            let rewrite = self.rewrite(&info);
            out.push((packet, rewrite));
        }
        out
    }

    fn rewrite(&mut self, info: &RtpInfo) -> Rewrite {
        let seq = info.seq.wrapping_add(self.offsets.seq);
        let timestamp = info.timestamp.wrapping_add(self.offsets.timestamp);
        let picture_id = info
            .picture_id
            .map(|id| id.wrapping_add(self.offsets.picture_id) & 0x7fff);
        self.last = Some(Last {
            seq,
            timestamp,
            picture_id,
            marker: info.marker,
        });
        Rewrite {
            seq,
            timestamp,
            picture_id: picture_id.filter(|_| self.offsets.picture_id != 0),
        }
    }
}

/// `a` is later than `b` on the wrapping 32-bit RTP clock.
fn is_after(a: u32, b: u32) -> bool {
    a != b && a.wrapping_sub(b) < 1 << 31
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(seq: u16, timestamp: u32, marker: bool, key: bool, id: u16) -> RtpInfo {
        RtpInfo {
            seq,
            timestamp,
            marker,
            keyframe_start: key,
            picture_id: Some(id),
        }
    }

    #[test]
    fn a_viewer_that_never_moves_gets_its_tier_as_it_is() {
        let mut s = Splicer::new(0);
        let out = s.current("a", info(100, 9000, true, false, 7));
        assert_eq!(
            out[0].1,
            Rewrite {
                seq: 100,
                timestamp: 9000,
                picture_id: None
            }
        );
    }

    #[test]
    fn a_move_lands_on_the_new_tiers_keyframe_after_the_old_tiers_last_whole_frame() {
        let t0 = Instant::now();
        let mut s = Splicer::new(0);
        let mut out = Vec::new();
        // Tier 0, frame at 9000: two packets.
        out.extend(s.current("0a", info(100, 9000, false, false, 50)));
        out.extend(s.current("0b", info(101, 9000, true, false, 50)));
        s.move_to(1);
        // Tier 1 before its keyframe: dropped.
        assert!(s
            .next("1x", info(5000, 12000, true, false, 900), t0)
            .is_empty());
        // Tier 0 starts its next frame (12000); tier 1's keyframe (12000) begins meanwhile.
        out.extend(s.current("0c", info(102, 12000, false, false, 51)));
        assert!(s
            .next("1a", info(5001, 12000, false, true, 901), t0)
            .is_empty());
        assert!(s
            .next("1b", info(5002, 12000, true, false, 901), t0)
            .is_empty());
        // Tier 0 ends its frame: it goes out, then tier 1 takes over with the held keyframe.
        out.extend(s.current("0d", info(103, 12000, true, false, 51)));
        assert_eq!(s.tier(), 1);
        out.extend(s.current("1c", info(5003, 15000, true, false, 902)));
        let rows: Vec<(&str, u16, u32)> =
            out.iter().map(|(n, r)| (*n, r.seq, r.timestamp)).collect();
        assert_eq!(
            rows,
            [
                ("0a", 100, 9000),
                ("0b", 101, 9000),
                ("0c", 102, 12000),
                ("0d", 103, 12000),
                // The new tier's keyframe is not later than the old tier's last frame: one frame on.
                ("1a", 104, 15000),
                ("1b", 105, 15000),
                ("1c", 106, 18000),
            ]
        );
        // Picture ids go on by one: 50, 51, then the new tier's 901 becomes 52.
        let ids: Vec<Option<u16>> = out.iter().map(|(_, r)| r.picture_id).collect();
        assert_eq!(ids[4..], [Some(52), Some(52), Some(53)]);
        assert_eq!(
            ids[..4],
            [None, None, None, None],
            "no rewrite before the move"
        );
    }

    #[test]
    fn a_move_at_a_frame_boundary_goes_at_once_and_keeps_the_shared_clock() {
        let t0 = Instant::now();
        let mut s = Splicer::new(1);
        s.current("1a", info(10, 30_000, true, false, 5));
        s.move_to(0);
        let out = s.next("0a", info(700, 33_000, false, true, 300), t0);
        assert_eq!(s.tier(), 0);
        assert_eq!(out.len(), 1);
        assert_eq!(
            out[0].1,
            Rewrite {
                seq: 11,
                timestamp: 33_000,
                picture_id: Some(6)
            }
        );
    }

    #[test]
    fn a_stalled_old_tier_is_left_after_the_cutover_wait() {
        let t0 = Instant::now();
        let mut s = Splicer::new(0);
        s.current("0a", info(1, 0, false, false, 1));
        s.move_to(2);
        assert!(s.next("2a", info(50, 3000, false, true, 9), t0).is_empty());
        assert!(s.tick(t0 + CUTOVER_WAIT / 2).is_empty());
        let out = s.tick(t0 + CUTOVER_WAIT);
        assert_eq!(out.len(), 1);
        assert_eq!(s.tier(), 2);
        assert_eq!(out[0].1.seq, 2);
    }

    #[test]
    fn gaps_in_a_tier_stay_gaps_and_sequence_numbers_wrap() {
        let mut s = Splicer::new(0);
        s.current("a", info(65_534, 0, true, false, 0x7ffe));
        let out = s.current("b", info(1, 3000, true, false, 0x7fff));
        assert_eq!(out[0].1.seq, 1, "a gap of two packets stays a gap");
        let t0 = Instant::now();
        s.move_to(1);
        let out = s.next("k", info(40_000, 6000, true, true, 3), t0);
        assert_eq!(out[0].1.seq, 2);
        assert_eq!(out[0].1.picture_id, Some(0), "picture ids wrap at 15 bits");
    }
}
