//! What one viewer receives of the composite: a task that reads the tier its link carries, follows
//! the viewer's reports to choose that tier (tiering.rs), splices the move between tiers
//! (splice.rs), and writes the packets to the viewer's track. It tells the viewer which tier it
//! gets, and the room how the viewer's link is doing.

use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::splice::{Rewrite, Splicer};
use super::tiering::{Decision, NackLosses, Signal, TierChoice, TEST_RAMP};
use crate::codec::VideoCodec;
use crate::config::Tier;
use crate::ids::ParticipantId;
use crate::media::FeedReader;
use crate::protocol::ServerMessage;
use crate::room::{LinkView, RoomHandle};
use crate::rtc::OutboundTrack;
use crate::rtp;

/// How often the tier is reconsidered (and a stalled move finished): a quarter of a receiver
/// report interval, so a decision follows a report by at most this.
const TIER_TICK: Duration = Duration::from_millis(250);
/// How often the room hears how the link is doing.
const LINK_REPORT: Duration = Duration::from_secs(1);
/// Feedback queued for the task; the RTCP reader drops beyond this rather than wait.
pub(super) const FEEDBACK_QUEUE: usize = 64;
/// While a link test runs, copies of recent packets go out this often, each batch the test's
/// extra rate's worth: 20 ms is a frame's worth of spreading, so the test looks like a stream.
const TEST_PACING: Duration = Duration::from_millis(20);
/// Recent packets kept to copy in a link test (a receiver drops a copy of a packet it has).
const TEST_PACKETS: usize = 64;

/// A link test under way: copies of recent packets, on top of the tier, up to a rate.
struct LinkTest {
    /// Bytes per second on top of what the tier sends, once the ramp is done.
    extra_bytes_per_second: f64,
    started: Instant,
    /// Bytes that may go now.
    budget: f64,
    ticker: tokio::time::Interval,
    next_copy: usize,
}

impl LinkTest {
    /// The extra bytes per second at `now`, on the ramp.
    fn extra_now(&self, now: Instant) -> f64 {
        let ramp =
            now.saturating_duration_since(self.started).as_secs_f64() / TEST_RAMP.as_secs_f64();
        self.extra_bytes_per_second * ramp.min(1.0)
    }
}

async fn tick_of(test: &mut Option<LinkTest>) {
    match test {
        Some(test) => {
            test.ticker.tick().await;
        }
        None => std::future::pending().await,
    }
}

/// What the viewer said about the composite, as the RTCP reader passes it on.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Feedback {
    /// The viewer's decoder needs a keyframe (a PLI or FIR, or the connection just came up).
    KeyframeWanted,
    /// Its browser's estimate of its link (REMB), in bit/s.
    Remb(f32),
    /// A receiver report about the composite.
    Report {
        /// Fraction lost since the previous report, 0–1.
        loss: f64,
        jitter_ms: f64,
        rtt: Option<Duration>,
    },
    /// It asked for these packets again.
    Nacked(Vec<u16>),
}

pub(super) struct Viewer {
    pub room: RoomHandle,
    pub who: ParticipantId,
    pub codec: VideoCodec,
    pub tiers: Vec<Tier>,
    pub track: OutboundTrack,
    /// The session's messages to the viewer (to say which tier it gets).
    pub outbox: mpsc::Sender<ServerMessage>,
    pub feedback: mpsc::Receiver<Feedback>,
    /// When the participant joined, until their first composite packet is written (the
    /// join-to-first-frame metric).
    pub joined_at: Option<Instant>,
}

/// The next packet of a tier being moved to; pending forever when there is none.
async fn next_of(reader: &mut Option<FeedReader>) -> Option<Bytes> {
    match reader {
        Some(reader) => reader.next().await,
        None => std::future::pending().await,
    }
}

impl Viewer {
    /// Writes the composite until the room's feed ends, starting on the top tier with `top`.
    pub async fn run(mut self, top: FeedReader) {
        let mut current = top;
        let mut next: Option<FeedReader> = None;
        let mut splicer: Splicer<Bytes> = Splicer::new(0);
        let mut choice = TierChoice::new(self.tiers.iter().map(|t| t.bitrate_kbps).collect());
        let mut nacks = NackLosses::default();
        let mut link = self.link_view(0);
        let mut sent = 0usize;
        let mut failures = 0u64;
        let mut tick = tokio::time::interval(TIER_TICK);
        let mut report = tokio::time::interval(LINK_REPORT);
        let mut test: Option<LinkTest> = None;
        let mut recent: std::collections::VecDeque<(Bytes, Rewrite)> =
            std::collections::VecDeque::with_capacity(TEST_PACKETS);
        loop {
            let out = tokio::select! {
                packet = current.next() => {
                    let Some(packet) = packet else { break };
                    match rtp::read(&packet, self.codec) {
                        Some(info) => splicer.current(packet, info),
                        None => Vec::new(),
                    }
                }
                packet = next_of(&mut next) => match packet {
                    Some(packet) => match rtp::read(&packet, self.codec) {
                        Some(info) => splicer.next(packet, info, Instant::now()),
                        None => Vec::new(),
                    },
                    // The tier went away under the move: stay where we are.
                    None => {
                        next = None;
                        splicer.move_to(splicer.tier());
                        Vec::new()
                    }
                },
                Some(feedback) = self.feedback.recv() => {
                    let now = Instant::now();
                    match feedback {
                        Feedback::KeyframeWanted => {
                            tracing::debug!(tier = splicer.tier(), "the viewer wants a keyframe");
                            self.room.request_keyframe(splicer.tier());
                            if let Some(tier) = splicer.moving_to() {
                                self.room.request_keyframe(tier);
                            }
                        }
                        Feedback::Remb(bps) => {
                            let kbps = (bps / 1000.0).clamp(0.0, u32::MAX as f32) as u32;
                            choice.observe(Signal::Remb(kbps), now);
                            link.estimate_kbps = Some(kbps);
                        }
                        Feedback::Report { loss, jitter_ms, rtt } => {
                            tracing::trace!(loss, jitter_ms, ?rtt, "receiver report");
                            choice.observe(Signal::Loss(loss), now);
                            link.jitter_ms = Some(jitter_ms);
                            if let Some(rtt) = rtt {
                                link.rtt_ms = Some(rtt.as_millis().min(u128::from(u32::MAX)) as u32);
                            }
                        }
                        Feedback::Nacked(seqs) => {
                            let lost = nacks.count(&seqs, now);
                            tracing::trace!(asked = seqs.len(), lost, "nacked");
                            choice.observe(Signal::Nacked(lost), now);
                            if test.is_some() && lost > 0 {
                                // A test ends at its first loss, not at the next tick.
                                choice.observe(Signal::Sent(std::mem::take(&mut sent)), now);
                                let decision = choice.decide(now);
                                self.follow(decision, &mut test, &mut splicer, &mut next).await;
                            }
                        }
                    }
                    Vec::new()
                }
                _ = tick.tick() => {
                    let now = Instant::now();
                    choice.observe(Signal::Sent(std::mem::take(&mut sent)), now);
                    let decision = choice.decide(now);
                    self.follow(decision, &mut test, &mut splicer, &mut next).await;
                    splicer.tick(now)
                }
                _ = tick_of(&mut test) => {
                    // Copies of packets the viewer already has: they test the link and are
                    // dropped on arrival.
                    let mut copies = Vec::new();
                    if let Some(test) = test.as_mut() {
                        test.budget += test.extra_now(Instant::now()) * TEST_PACING.as_secs_f64();
                        while test.budget > 0.0 && !recent.is_empty() {
                            test.next_copy %= recent.len();
                            let (packet, rewrite) = &recent[test.next_copy];
                            test.budget -= packet.len() as f64;
                            test.next_copy += 1;
                            copies.push((packet.clone(), *rewrite));
                        }
                    }
                    for (packet, rewrite) in &copies {
                        self.write(packet, rewrite, &mut failures).await;
                    }
                    Vec::new()
                }
                _ = report.tick() => {
                    link.loss = choice.loss();
                    tracing::debug!(tier = splicer.tier(), loss = link.loss, estimate_kbps = ?link.estimate_kbps, rtt_ms = ?link.rtt_ms, "viewer link");
                    self.room.report_link(self.who, link.clone());
                    Vec::new()
                }
            };
            sent += out.len();
            for (packet, rewrite) in &out {
                self.write(packet, rewrite, &mut failures).await;
                if recent.len() == TEST_PACKETS {
                    recent.pop_front();
                }
                recent.push_back((packet.clone(), *rewrite));
            }
            if !out.is_empty() && splicer.tier() != link.tier {
                // The move is done: the new tier's reader becomes the current one.
                if let Some(reader) = next.take() {
                    current = reader;
                }
                let tier = splicer.tier();
                let estimate = link.estimate_kbps;
                link = LinkView {
                    estimate_kbps: estimate,
                    ..self.link_view(tier)
                };
                tracing::info!(
                    tier,
                    width = link.width,
                    height = link.height,
                    "viewer moved to a tier"
                );
                let _ = self.outbox.try_send(ServerMessage::VideoTier {
                    tier,
                    tiers: self.tiers.len(),
                    width: link.width,
                    height: link.height,
                });
            }
        }
    }

    /// Carries out what the tier choice decided.
    async fn follow(
        &self,
        decision: Option<Decision>,
        test: &mut Option<LinkTest>,
        splicer: &mut Splicer<Bytes>,
        next: &mut Option<FeedReader>,
    ) {
        match decision {
            Some(Decision::Move(tier)) => {
                *test = None;
                self.move_to(tier, splicer, next).await;
            }
            Some(Decision::Test { kbps }) => {
                let tier_kbps = self.tiers.get(splicer.tier()).map_or(0, |t| t.bitrate_kbps);
                let extra = f64::from(kbps.saturating_sub(tier_kbps)) * 1000.0 / 8.0;
                tracing::debug!(kbps, "testing the link");
                *test = Some(LinkTest {
                    extra_bytes_per_second: extra,
                    started: Instant::now(),
                    budget: 0.0,
                    ticker: tokio::time::interval(TEST_PACING),
                    next_copy: 0,
                });
            }
            Some(Decision::EndTest) => {
                tracing::debug!("the link test found loss");
                *test = None;
            }
            None => {}
        }
    }

    /// Starts moving to `tier`: its reader joins until the splice is done.
    async fn move_to(
        &self,
        tier: usize,
        splicer: &mut Splicer<Bytes>,
        next: &mut Option<FeedReader>,
    ) {
        if tier == splicer.tier() {
            *next = None;
            splicer.move_to(tier);
            return;
        }
        match self.room.watch(tier).await {
            Ok(reader) => {
                *next = Some(reader);
                splicer.move_to(tier);
            }
            Err(e) => tracing::warn!(tier, "cannot move to the tier: {e}"),
        }
    }

    async fn write(&mut self, packet: &Bytes, rewrite: &Rewrite, failures: &mut u64) {
        let written = self
            .track
            .write_spliced(packet, rewrite.seq, rewrite.timestamp, rewrite.picture_id)
            .await;
        // Counted once the connection takes them (0 bytes: not bound yet). The splicer starts a
        // viewer on a keyframe, so the first packet taken starts their first frame.
        if let Ok(1..) = written {
            let metrics = crate::metrics::metrics();
            metrics.rtp(
                crate::metrics::Direction::Out,
                crate::metrics::Kind::Video,
                packet.len(),
            );
            if let Some(joined) = self.joined_at.take() {
                metrics.first_frame.observe(joined.elapsed().as_secs_f64());
            }
        }
        if let Err(e) = written {
            // A connection that is not up yet, or gone, fails every write: the first and then
            // every thousandth are logged.
            if failures.is_multiple_of(1000) {
                tracing::debug!(failures = *failures, "writing the composite: {e}");
            }
            *failures += 1;
        }
    }

    fn link_view(&self, tier: usize) -> LinkView {
        let spec = self.tiers.get(tier).copied().unwrap_or(Tier {
            width: 0,
            height: 0,
            bitrate_kbps: 0,
        });
        LinkView {
            tier,
            width: spec.width,
            height: spec.height,
            ..LinkView::default()
        }
    }
}
