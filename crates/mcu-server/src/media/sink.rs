//! Packets leave the pipeline through an appsink whose callback hands each RTP packet to a bounded
//! channel; a task on the other end writes them to WebRTC tracks. The callback runs on a GStreamer
//! streaming thread, so it never blocks: when the channel is full the packet is dropped and counted.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

/// Packets queued between an appsink and its track writer. A 720p keyframe is ~60–120 packets of
/// 1200 bytes; 512 holds a few of them, so only a writer stalled for ~half a second loses packets.
pub const PACKET_QUEUE: usize = 512;

/// Counts of what went through one appsink.
#[derive(Debug, Default)]
pub struct PacketCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// Connects `sink` (an appsink) to a new channel and returns its receiving end.
pub fn packets_from(
    sink: &gst::Element,
    counters: Arc<PacketCounters>,
) -> Result<mpsc::Receiver<Bytes>> {
    let appsink = sink
        .clone()
        .dynamic_cast::<gst_app::AppSink>()
        .ok()
        .with_context(|| format!("{} is not an appsink", sink.name()))?;
    let (tx, rx) = mpsc::channel(PACKET_QUEUE);
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let Ok(map) = buffer.map_readable() else {
                    return Err(gst::FlowError::Error);
                };
                match tx.try_send(Bytes::copy_from_slice(map.as_slice())) {
                    Ok(()) => {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(mpsc::error::TrySendError::Full(_)) => {
                        counters.dropped.fetch_add(1, Ordering::Relaxed);
                    }
                    // Nobody listens any more (the writer ended): the branch is being torn down.
                    Err(mpsc::error::TrySendError::Closed(_)) => {}
                }
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(rx)
}
