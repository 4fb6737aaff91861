//! The composite's ladder of encodes. The top tier (the composite's own size, at
//! `--video-bitrate-kbps`) is always encoded: every viewer with a good link is on it, and the
//! recording takes it. The lower tiers (`--tiers`) are the same picture scaled down and encoded on
//! their own; a lower tier is built the first time a viewer needs it, and its valve is shut while
//! nobody watches it, so a tier nobody needs costs no CPU. Viewers on one tier share its one
//! encode, whatever their number.
//!
//! Every tier's payloader stamps the same RTP timestamps (one offset per room), so a viewer that
//! moves between tiers keeps one clock; its session renumbers sequence numbers and VP8 picture
//! ids (session/splice.rs).

use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

use super::pipelines;
use super::sink::{FeedReader, PacketFeed};
use crate::codec::VideoCodec;
use crate::config::Tier;

/// Forced keyframes aside, a periodic one every 10 s (at 30 fps) lets a recording be cut anywhere
/// and repairs a viewer whose PLI was lost, at ~1 % of the bitrate.
pub const KEYFRAME_MAX_DIST_SECONDS: u32 = 10;
/// A lower tier is never recorded, and its viewers are on thin links, where a keyframe is the one
/// burst that overflows the queue: measured with `mcu probe --downlink-kbps 250`, each periodic
/// keyframe of the 150 kbit/s tier lost packets and froze the picture (every 11 s). Its keyframes
/// come when asked for (a viewer's PLI, a move onto the tier); this is only a backstop.
pub const LOWER_TIER_KEYFRAME_MAX_DIST_SECONDS: u32 = 300;
/// A lower tier nobody has watched for this long is shut. Long enough that a viewer moving down
/// and straight back up does not pay for building the encode again; short enough that the CPU is
/// back within seconds of the last thin link leaving.
pub const TIER_LINGER: Duration = Duration::from_secs(5);

/// The encoder (and payloader) of one tier, as a launch description.
pub fn encoder_description(
    codec: VideoCodec,
    tier: Tier,
    fps: u32,
    timestamp_offset: u32,
    keyframe_max_dist_seconds: u32,
) -> Result<String> {
    let keyframe_max_dist = (keyframe_max_dist_seconds * fps).to_string();
    match codec {
        VideoCodec::Vp8 => pipelines::ENCODER_VP8.fill(&[
            ("bitrate_bps", (tier.bitrate_kbps * 1000).to_string()),
            ("keyframe_max_dist", keyframe_max_dist),
            ("timestamp_offset", timestamp_offset.to_string()),
        ]),
        VideoCodec::H264 => pipelines::ENCODER_H264.fill(&[
            ("bitrate_kbps", tier.bitrate_kbps.to_string()),
            ("keyframe_max_dist", keyframe_max_dist),
            ("timestamp_offset", timestamp_offset.to_string()),
        ]),
    }
}

/// What a tier is doing, for the room view.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct TierStats {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
    /// Viewers reading its packets now.
    pub viewers: usize,
    /// Whether it is being encoded (the top tier always is).
    pub running: bool,
    pub packets_out: u64,
    /// Packets its viewers missed because their writers fell behind.
    pub packets_dropped: u64,
}

/// One encode and the packets it hands out.
struct Encode {
    encoder: gst::Element,
    feed: PacketFeed,
}

/// A lower tier's branch of the room pipeline.
struct Lower {
    encode: Encode,
    valve: gst::Element,
    /// When its last viewer left, while it still runs.
    idle_since: Option<Instant>,
}

pub(super) struct Tiers {
    specs: Vec<Tier>,
    codec: VideoCodec,
    fps: u32,
    timestamp_offset: u32,
    top: Encode,
    /// What the top tier encodes now: the canvas's size, not always the full frame of `specs[0]`.
    top_now: Tier,
    /// Tier i + 1, once built.
    lower: Vec<Option<Lower>>,
}

impl Tiers {
    /// The ladder for a room whose top encoder is `encoder`, feeding the appsink `top_sink`.
    pub fn new(
        specs: Vec<Tier>,
        codec: VideoCodec,
        fps: u32,
        timestamp_offset: u32,
        encoder: gst::Element,
        top_sink: &gst::Element,
    ) -> Result<Self> {
        let lower = (1..specs.len()).map(|_| None).collect();
        let top_now = specs.first().copied().context("a room has a top tier")?;
        super::encode_time::time(&encoder, 0)?;
        Ok(Tiers {
            top_now,
            specs,
            codec,
            fps,
            timestamp_offset,
            top: Encode {
                encoder,
                feed: PacketFeed::from_appsink(top_sink)?,
            },
            lower,
        })
    }

    pub fn count(&self) -> usize {
        self.specs.len()
    }

    fn encode(&self, tier: usize) -> Option<&Encode> {
        match tier {
            0 => Some(&self.top),
            n => self.lower.get(n - 1)?.as_ref().map(|l| &l.encode),
        }
    }

    /// A reader of `tier`'s packets from now on, building or reopening the tier if needed (it
    /// then starts with a keyframe). `tee` is the room's `composite` tee.
    pub fn reader(
        &mut self,
        tier: usize,
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        room: &str,
    ) -> Result<FeedReader> {
        if tier == 0 {
            return Ok(self.top.feed.subscribe());
        }
        anyhow::ensure!(tier < self.specs.len(), "there is no tier {tier}");
        if self.lower[tier - 1].is_none() {
            let built = self.build(tier, pipeline, tee, room)?;
            self.lower[tier - 1] = Some(built);
            tracing::info!(tier, "tier built");
        }
        let lower = self.lower[tier - 1]
            .as_mut()
            .context("the tier was just built")?;
        lower.idle_since = None;
        if lower.valve.property::<bool>("drop") {
            lower.valve.set_property("drop", false);
            force_keyframe(&lower.encode.encoder);
            tracing::info!(tier, "tier reopened");
        }
        Ok(lower.encode.feed.subscribe())
    }

    fn build(
        &self,
        tier: usize,
        pipeline: &gst::Pipeline,
        tee: &gst::Element,
        room: &str,
    ) -> Result<Lower> {
        let spec = self.specs[tier];
        let encoder = encoder_description(
            self.codec,
            spec,
            self.fps,
            self.timestamp_offset,
            LOWER_TIER_KEYFRAME_MAX_DIST_SECONDS,
        )?;
        let description = pipelines::TIER.fill(&[
            ("width", spec.width.to_string()),
            ("height", spec.height.to_string()),
            ("fps", self.fps.to_string()),
            ("encoder", encoder),
        ])?;
        let name = format!("tier{tier}-{room}");
        let bin = gst::parse::bin_from_description(&description, false)
            .with_context(|| format!("parsing pipelines/tier.txt for {name}"))?;
        bin.set_property("name", &name);
        let element = |n: &str| {
            bin.by_name(n)
                .with_context(|| format!("pipelines/tier.txt has no element named {n}"))
        };
        let queue_sink = element("queue")?
            .static_pad("sink")
            .context("a queue has a sink pad")?;
        let ghost = gst::GhostPad::builder_with_target(&queue_sink)
            .context("ghosting the tier's sink")?
            .name("sink")
            .build();
        bin.add_pad(&ghost).context("adding the tier's sink pad")?;
        let encoder = element("encoder")?;
        super::encode_time::time(&encoder, tier)?;
        let lower = Lower {
            encode: Encode {
                encoder,
                feed: PacketFeed::from_appsink(&element("sink")?)?,
            },
            valve: element("valve")?,
            idle_since: None,
        };
        pipeline
            .add(&bin)
            .with_context(|| format!("adding {name} to the room"))?;
        let linked = (|| -> Result<()> {
            bin.sync_state_with_parent()
                .with_context(|| format!("starting {name}"))?;
            let tee_pad = tee
                .request_pad_simple("src_%u")
                .context("the composite tee gave no pad")?;
            if let Err(e) = tee_pad.link(&ghost) {
                tee.release_request_pad(&tee_pad);
                anyhow::bail!("linking {name}: {e:?}");
            }
            Ok(())
        })();
        if let Err(e) = linked {
            let _ = bin.set_state(gst::State::Null);
            let _ = pipeline.remove(&bin);
            return Err(e);
        }
        Ok(lower)
    }

    /// The top tier now encodes a canvas of `width`×`height` (see canvas.rs) at `bitrate_kbps`.
    /// The encoder meets the new size at its next frame, restarts on it, and sends a keyframe.
    pub fn resize_top(&mut self, width: u32, height: u32, bitrate_kbps: u32) {
        match self.codec {
            VideoCodec::Vp8 => self
                .top
                .encoder
                .set_property("target-bitrate", (bitrate_kbps * 1000) as i32),
            VideoCodec::H264 => self.top.encoder.set_property("bitrate", bitrate_kbps),
        }
        self.top_now = Tier {
            width,
            height,
            bitrate_kbps,
        };
    }

    /// Asks `tier`'s encoder for a keyframe (with its headers, so a viewer can start there).
    pub fn force_keyframe(&self, tier: usize) {
        tracing::debug!(tier, "keyframe forced");
        if let Some(encode) = self.encode(tier) {
            force_keyframe(&encode.encoder);
        }
    }

    /// Shuts the lower tiers nobody has watched for `TIER_LINGER`.
    pub fn shut_idle(&mut self, now: Instant) {
        for (i, lower) in self.lower.iter_mut().enumerate() {
            let Some(lower) = lower else { continue };
            if lower.encode.feed.readers() > 0 || lower.valve.property::<bool>("drop") {
                lower.idle_since = None;
                continue;
            }
            let since = *lower.idle_since.get_or_insert(now);
            if now.saturating_duration_since(since) >= TIER_LINGER {
                lower.valve.set_property("drop", true);
                lower.idle_since = None;
                tracing::info!(tier = i + 1, "tier shut: nobody watches it");
            }
        }
    }

    pub fn stats(&self) -> Vec<TierStats> {
        use std::sync::atomic::Ordering::Relaxed;
        self.specs
            .iter()
            .enumerate()
            .map(|(i, spec)| {
                let encode = self.encode(i);
                let running = match i {
                    0 => true,
                    n => self.lower[n - 1]
                        .as_ref()
                        .is_some_and(|l| !l.valve.property::<bool>("drop")),
                };
                let spec = if i == 0 { &self.top_now } else { spec };
                TierStats {
                    width: spec.width,
                    height: spec.height,
                    bitrate_kbps: spec.bitrate_kbps,
                    viewers: encode.map_or(0, |e| e.feed.readers()),
                    running,
                    packets_out: encode.map_or(0, |e| e.feed.counters().sent.load(Relaxed)),
                    packets_dropped: encode.map_or(0, |e| e.feed.counters().dropped.load(Relaxed)),
                }
            })
            .collect()
    }
}

fn force_keyframe(encoder: &gst::Element) {
    crate::metrics::metrics().keyframes_forced.inc();
    let event = gstreamer_video::UpstreamForceKeyUnitEvent::builder()
        .all_headers(true)
        .build();
    match encoder.static_pad("src") {
        Some(pad) => {
            if !pad.send_event(event) {
                tracing::warn!(encoder = %encoder.name(), "encoder ignored a keyframe request");
            }
        }
        None => tracing::error!("an encoder has no src pad"),
    }
}

/// One RTP timestamp offset for all of a room's tiers (a viewer moving between them keeps one
/// clock); random per room, as RFC 3550 asks of a stream's first timestamp.
pub(super) fn timestamp_offset() -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    nanos.wrapping_mul(2_654_435_761)
}
