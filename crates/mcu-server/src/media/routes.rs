//! Which encoder each listener hears, frame by frame. A listener whose voice is in the mix hears
//! an encode of their own (everyone but themselves); every other listener hears the room's one
//! shared encode of the full mix (media/loudest.rs says who is mixed). A listener moves between
//! the two as they start and stop talking, and must still receive one stream: sequence numbers
//! and timestamps are the listener's own, written here (the timestamp from the frame's index: each
//! packet is one 20-ms frame; the encoders' own stamps differ by Opus's 6.5-ms lookahead after a
//! pause, measured, which would shift the audio at each switch); and a packet of a frame older
//! than one already sent (the encoder switched away from, finishing late) is dropped rather than
//! sent out of order.
//!
//! The mixing thread decides (`follow`) before it hands a frame to the encoders; the encoders'
//! appsinks deliver on their streaming threads. The lock is held only to copy a packet of ~100
//! bytes into a bounded channel per listener: no GStreamer call, no waiting.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::sync::mpsc;

use super::mixminus::{FRAME, FRAME_SAMPLES};
use crate::ids::ParticipantId;

/// Where a listener's audio comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Their own encoder: the mix without their voice.
    Own,
    /// The room's shared encoder: the full mix.
    Shared,
}

impl Source {
    fn other(self) -> Self {
        match self {
            Source::Own => Source::Shared,
            Source::Shared => Source::Own,
        }
    }
}

/// The mix's frame a running time falls in. Encoders keep their input's timestamps to within a
/// few milliseconds, so the nearest frame boundary names the frame.
pub fn frame_at(running_time_ns: u64) -> i64 {
    let frame_ns = FRAME.as_nanos() as u64;
    ((running_time_ns + frame_ns / 2) / frame_ns) as i64
}

struct Route {
    packets: mpsc::Sender<Bytes>,
    source: Source,
    /// The first frame `source` applies to; frames before it came from the other one.
    since: i64,
    /// The latest frame handed on.
    last: Option<i64>,
    next_seq: u16,
    /// The RTP timestamp of frame 0.
    timestamp_base: u32,
}

impl Route {
    fn accepts(&self, from: Source, frame: i64) -> bool {
        let expected = if frame >= self.since {
            self.source
        } else {
            self.source.other()
        };
        from == expected && !matches!(self.last, Some(last) if frame <= last)
    }

    /// Sends `packet` on as this listener's next, with their own sequence number and the frame's
    /// timestamp. A full channel (the listener's writer stalled) drops it, as any appsink's
    /// channel does.
    fn deliver(&mut self, frame: i64, packet: &[u8]) {
        if packet.len() < 12 {
            return;
        }
        let timestamp = self
            .timestamp_base
            .wrapping_add((frame as u32).wrapping_mul(FRAME_SAMPLES as u32));
        let mut out = BytesMut::with_capacity(packet.len());
        out.put_slice(&packet[..2]);
        out.put_u16(self.next_seq);
        out.put_u32(timestamp);
        out.put_slice(&packet[8..]);
        self.next_seq = self.next_seq.wrapping_add(1);
        self.last = Some(frame);
        let _ = self.packets.try_send(out.freeze());
    }
}

#[derive(Default)]
pub struct Routes {
    routes: Mutex<BTreeMap<ParticipantId, Route>>,
}

impl Routes {
    /// The routes, even if a thread panicked while holding them (plain data, still usable).
    fn lock(&self) -> MutexGuard<'_, BTreeMap<ParticipantId, Route>> {
        self.routes.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A new listener, on the shared mix until the mixing thread says otherwise.
    pub fn add(&self, who: ParticipantId, packets: mpsc::Sender<Bytes>) {
        self.lock().insert(
            who,
            Route {
                packets,
                source: Source::Shared,
                since: i64::MIN,
                last: None,
                next_seq: initial_seq(who),
                timestamp_base: initial_timestamp(who),
            },
        );
    }

    pub fn remove(&self, who: ParticipantId) {
        self.lock().remove(&who);
    }

    /// From `frame` on, each listener hears what `source_of` says. Called by the mixing thread
    /// before it hands `frame` to any encoder.
    pub fn follow(&self, frame: i64, mut source_of: impl FnMut(ParticipantId) -> Source) {
        for (who, route) in self.lock().iter_mut() {
            let source = source_of(*who);
            if source != route.source {
                route.source = source;
                route.since = frame;
            }
        }
    }

    /// Listeners on the shared mix now.
    pub fn on_shared(&self) -> usize {
        self.lock()
            .values()
            .filter(|r| r.source == Source::Shared)
            .count()
    }

    /// A packet of `who`'s own encoder, for the frame at `running_time_ns`.
    pub fn deliver_own(&self, who: ParticipantId, running_time_ns: u64, packet: &[u8]) {
        let frame = frame_at(running_time_ns);
        if let Some(route) = self.lock().get_mut(&who) {
            if route.accepts(Source::Own, frame) {
                route.deliver(frame, packet);
            }
        }
    }

    /// A packet of the shared encoder: to every listener on it for that frame.
    pub fn deliver_shared(&self, running_time_ns: u64, packet: &[u8]) {
        let frame = frame_at(running_time_ns);
        for route in self.lock().values_mut() {
            if route.accepts(Source::Shared, frame) {
                route.deliver(frame, packet);
            }
        }
    }
}

/// Where a listener's sequence numbers start: arbitrary, and different between listeners.
fn initial_seq(who: ParticipantId) -> u16 {
    (who.0.wrapping_mul(40_503) ^ 0x5a5a) as u16
}

/// A listener's RTP timestamp of frame 0: random per room and listener, as RFC 3550 asks of a
/// stream's first timestamp.
fn initial_timestamp(who: ParticipantId) -> u32 {
    super::tiers::timestamp_offset() ^ (who.0 as u32).wrapping_mul(2_654_435_761)
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: ParticipantId = ParticipantId(1);
    const B: ParticipantId = ParticipantId(2);
    const MS: u64 = 1_000_000;

    /// An RTP packet whose payload is `tag`.
    fn packet(tag: u8) -> Vec<u8> {
        let mut p = vec![0x80, 111, 0xff, 0xff, 0, 0, 0, 1, 0, 0, 0, 9];
        p.push(tag);
        p
    }

    /// (sequence number, timestamp, payload tag) of each packet received.
    fn received(rx: &mut mpsc::Receiver<Bytes>) -> Vec<(u16, u32, u8)> {
        let mut out = Vec::new();
        while let Ok(p) = rx.try_recv() {
            let timestamp = u32::from_be_bytes([p[4], p[5], p[6], p[7]]);
            out.push((u16::from_be_bytes([p[2], p[3]]), timestamp, p[12]));
        }
        out
    }

    #[test]
    fn a_listener_moves_between_encoders_in_one_stream() {
        let routes = Routes::default();
        let (tx, mut rx) = mpsc::channel(16);
        routes.add(A, tx);
        // Frames 0 and 1 from the shared encode; A's own encode is not heard.
        routes.deliver_shared(0, &packet(10));
        routes.deliver_own(A, 0, &packet(99));
        routes.deliver_shared(20 * MS, &packet(11));
        // A starts talking at frame 2: its own encode from then on.
        routes.follow(2, |_| Source::Own);
        routes.deliver_shared(40 * MS, &packet(98));
        routes.deliver_own(A, 41 * MS, &packet(12));
        // Back to the shared mix at frame 4; the own encoder's late frame 3 still counts.
        routes.follow(4, |_| Source::Shared);
        routes.deliver_shared(80 * MS, &packet(14));
        routes.deliver_own(A, 60 * MS, &packet(13));
        let got = received(&mut rx);
        let tags: Vec<u8> = got.iter().map(|p| p.2).collect();
        assert_eq!(
            tags,
            vec![10, 11, 12, 14],
            "13 came after 14 and is dropped"
        );
        let seqs: Vec<u16> = got.iter().map(|p| p.0.wrapping_sub(got[0].0)).collect();
        assert_eq!(seqs, vec![0, 1, 2, 3]);
        // Timestamps follow the frames (41 ms was frame 2), whichever encoder sent them.
        let stamps: Vec<u32> = got.iter().map(|p| p.1.wrapping_sub(got[0].1)).collect();
        assert_eq!(stamps, vec![0, 960, 1920, 3840]);
    }

    #[test]
    fn the_shared_encode_reaches_every_listener_on_it_and_only_them() {
        let routes = Routes::default();
        let (ta, mut ra) = mpsc::channel(16);
        let (tb, mut rb) = mpsc::channel(16);
        routes.add(A, ta);
        routes.add(B, tb);
        routes.follow(0, |who| {
            if who == A {
                Source::Own
            } else {
                Source::Shared
            }
        });
        assert_eq!(routes.on_shared(), 1);
        routes.deliver_shared(0, &packet(1));
        routes.deliver_own(A, 0, &packet(2));
        assert_eq!(
            received(&mut ra).iter().map(|p| p.2).collect::<Vec<_>>(),
            vec![2]
        );
        assert_eq!(
            received(&mut rb).iter().map(|p| p.2).collect::<Vec<_>>(),
            vec![1]
        );
        routes.remove(B);
        routes.deliver_shared(20 * MS, &packet(3));
        assert!(received(&mut rb).is_empty());
    }

    #[test]
    fn frames_are_named_by_their_nearest_boundary() {
        assert_eq!(frame_at(0), 0);
        assert_eq!(frame_at(9 * MS), 0);
        assert_eq!(frame_at(11 * MS), 1);
        assert_eq!(frame_at(1_000 * MS), 50);
    }
}
