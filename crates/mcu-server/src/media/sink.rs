//! Packets leave the pipeline through an appsink whose callback hands each RTP packet on without
//! waiting: to a feed that any number of readers follow (the composite, read by every viewer), or
//! with its running time to a callback (the listeners' audio, see media/routes.rs). The callback
//! runs on a GStreamer streaming thread, so it never blocks: a full channel drops the packet, and
//! a feed's reader that falls too far behind skips ahead.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::broadcast;

/// Packets queued between an appsink and its track writer. A 720p keyframe is ~60–120 packets of
/// 1200 bytes; 512 holds a few of them, so only a writer stalled for ~half a second loses packets.
pub const PACKET_QUEUE: usize = 512;

/// Counts of what went through one appsink.
#[derive(Debug, Default)]
pub struct PacketCounters {
    pub sent: AtomicU64,
    pub dropped: AtomicU64,
}

/// The packets of one appsink for any number of readers, each of which gets every packet from
/// the moment it subscribes. Only the appsink's callback sends, so the feed ends (its readers
/// get `None`) when the appsink goes away with its pipeline.
pub struct PacketFeed {
    sender: broadcast::WeakSender<Bytes>,
    counters: Arc<PacketCounters>,
}

impl PacketFeed {
    /// Connects `sink` (an appsink) to a new feed.
    pub fn from_appsink(sink: &gst::Element) -> Result<Self> {
        let (tx, _) = broadcast::channel(PACKET_QUEUE);
        let feed = PacketFeed {
            sender: tx.downgrade(),
            counters: Arc::default(),
        };
        let counters = feed.counters.clone();
        on_each_packet(sink, move |packet| {
            // No reader yet (nobody in the room watches) is not a loss.
            if tx.send(packet).is_ok() {
                counters.sent.fetch_add(1, Ordering::Relaxed);
            }
        })?;
        Ok(feed)
    }

    /// A reader that gets every packet from now on.
    pub fn subscribe(&self) -> FeedReader {
        FeedReader {
            receiver: self.sender.upgrade().map(|s| s.subscribe()),
            counters: self.counters.clone(),
        }
    }

    /// Packets handed out, and packets readers missed because they fell behind.
    pub fn counters(&self) -> &PacketCounters {
        &self.counters
    }

    /// Readers subscribed now.
    pub fn readers(&self) -> usize {
        self.sender.upgrade().map_or(0, |s| s.receiver_count())
    }
}

/// One reader of a `PacketFeed`.
pub struct FeedReader {
    /// None when the feed had already ended as this reader subscribed.
    receiver: Option<broadcast::Receiver<Bytes>>,
    counters: Arc<PacketCounters>,
}

impl FeedReader {
    /// The packets from now on, as a stream.
    pub fn into_stream(self) -> impl futures_util::Stream<Item = Bytes> + Send {
        futures_util::stream::unfold(self, |mut reader| async move {
            reader.next().await.map(|packet| (packet, reader))
        })
    }

    /// The next packet, or None once the feed has ended. A reader more than `PACKET_QUEUE`
    /// packets behind skips to the oldest packet still held; what it skipped is counted as
    /// dropped (the viewer's decoder asks for a keyframe to recover).
    pub async fn next(&mut self) -> Option<Bytes> {
        let receiver = self.receiver.as_mut()?;
        loop {
            match receiver.recv().await {
                Ok(packet) => return Some(packet),
                Err(broadcast::error::RecvError::Lagged(missed)) => {
                    self.counters.dropped.fetch_add(missed, Ordering::Relaxed);
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    }
}

/// Calls `deliver` with the data of every buffer `sink` (an appsink) receives and its running time
/// in ns (None without a timestamp), on the streaming thread; an error from `deliver` goes back
/// upstream as the flow's result.
pub fn on_each_buffer(
    sink: &gst::Element,
    deliver: impl Fn(Option<u64>, &[u8]) -> Result<(), gst::FlowError> + Send + Sync + 'static,
) -> Result<()> {
    let appsink = sink
        .clone()
        .dynamic_cast::<gst_app::AppSink>()
        .ok()
        .with_context(|| format!("{} is not an appsink", sink.name()))?;
    appsink.set_callbacks(
        gst_app::AppSinkCallbacks::builder()
            .new_sample(move |appsink| {
                let sample = appsink.pull_sample().map_err(|_| gst::FlowError::Eos)?;
                let Some(buffer) = sample.buffer() else {
                    return Ok(gst::FlowSuccess::Ok);
                };
                let running_time = buffer.pts().and_then(|pts| {
                    sample
                        .segment()
                        .and_then(|s| s.downcast_ref::<gst::ClockTime>())
                        .and_then(|s| s.to_running_time(pts))
                });
                let map = buffer.map_readable().map_err(|_| gst::FlowError::Error)?;
                deliver(running_time.map(gst::ClockTime::nseconds), map.as_slice())?;
                Ok(gst::FlowSuccess::Ok)
            })
            .build(),
    );
    Ok(())
}

/// Calls `deliver` with every packet `sink` (an appsink) receives and its running time (ns), on
/// the streaming thread. Packets without a timestamp are dropped: they cannot be placed.
pub fn on_each_stamped_packet(
    sink: &gst::Element,
    deliver: impl Fn(u64, &[u8]) + Send + Sync + 'static,
) -> Result<()> {
    on_each_buffer(sink, move |running_time, packet| {
        if let Some(running_time) = running_time {
            deliver(running_time, packet);
        }
        Ok(())
    })
}

/// Calls `deliver` with every packet `sink` (an appsink) receives, on its streaming thread.
fn on_each_packet(
    sink: &gst::Element,
    deliver: impl Fn(Bytes) + Send + Sync + 'static,
) -> Result<()> {
    on_each_buffer(sink, move |_, packet| {
        deliver(Bytes::copy_from_slice(packet));
        Ok(())
    })
}
