//! How long each composite frame spends in its encoder, for the metrics (metrics.rs): from a raw
//! frame entering the encoder to the encoded frame with the same timestamp leaving it. The
//! realtime encoders the tiers use hold no frame back (no lookahead, no B-frames), so a frame
//! leaves before the next one enters; one they drop simply never matches.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;

/// Frames remembered while they are in the encoder: far more than a realtime encoder holds, and
/// a bound on what one that stalls can cost.
const IN_FLIGHT: usize = 32;

type Entries = Arc<Mutex<VecDeque<(gst::ClockTime, Instant)>>>;

fn lock(entries: &Entries) -> std::sync::MutexGuard<'_, VecDeque<(gst::ClockTime, Instant)>> {
    // Held only to push or pop an entry; a panic elsewhere cannot leave it half-written.
    entries.lock().unwrap_or_else(|e| e.into_inner())
}

/// Times `encoder`'s frames as tier `tier`'s.
pub fn time(encoder: &gst::Element, tier: usize) -> Result<()> {
    let sink = encoder
        .static_pad("sink")
        .context("an encoder has a sink pad")?;
    let src = encoder
        .static_pad("src")
        .context("an encoder has a src pad")?;
    let entered = Entries::default();
    let on_entry = entered.clone();
    sink.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        if let Some(pts) = info.buffer().and_then(|b| b.pts()) {
            let mut entries = lock(&on_entry);
            if entries.len() == IN_FLIGHT {
                entries.pop_front();
            }
            entries.push_back((pts, Instant::now()));
        }
        gst::PadProbeReturn::Ok
    });
    src.add_probe(gst::PadProbeType::BUFFER, move |_, info| {
        let Some(pts) = info.buffer().and_then(|b| b.pts()) else {
            return gst::PadProbeReturn::Ok;
        };
        let mut entries = lock(&entered);
        while let Some(&(entry, at)) = entries.front() {
            if entry > pts {
                break;
            }
            entries.pop_front();
            if entry == pts {
                crate::metrics::metrics().encoded(tier, at.elapsed());
                break;
            }
        }
        gst::PadProbeReturn::Ok
    });
    Ok(())
}
