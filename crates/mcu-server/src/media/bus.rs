//! One bus watch per room pipeline. It holds only a weak reference to the pipeline, answers
//! latency changes, and turns errors into events for the room actor: an error inside one
//! participant's branch concerns that participant only; any other error ends the room.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use anyhow::{Context, Result};
use futures_util::StreamExt;
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;

use super::PipelineEvent;
use crate::ids::ParticipantId;

/// Branch bins are named `<kind>-<participant>`; these are the kinds (see media/video.rs, audio.rs).
const BRANCH_PREFIXES: [&str; 4] = ["video-", "audio-", "listener-", "placeholder-"];

/// Watches the bus. `lost_playing` counts the times the pipeline fell from PLAYING back to PAUSED,
/// which freezes every participant's picture (a branch that prerolls would cause it).
pub fn watch(
    pipeline: &gst::Pipeline,
    events: mpsc::UnboundedSender<PipelineEvent>,
    lost_playing: Arc<AtomicU64>,
) -> Result<tokio::task::JoinHandle<()>> {
    let bus = pipeline.bus().context("a pipeline always has a bus")?;
    let weak = pipeline.downgrade();
    let name = pipeline.name().to_string();
    Ok(tokio::spawn(async move {
        let mut messages = bus.stream();
        while let Some(message) = messages.next().await {
            use gst::MessageView;
            match message.view() {
                MessageView::Error(err) => {
                    let text = format!(
                        "{}: {} ({})",
                        err.src().map(|s| s.path_string()).unwrap_or_default(),
                        err.error(),
                        err.debug().unwrap_or_default()
                    );
                    let event = match err.src().and_then(owning_participant) {
                        Some(participant) => PipelineEvent::BranchFailed {
                            participant,
                            error: text,
                        },
                        None => PipelineEvent::Failed(text),
                    };
                    if events.send(event).is_err() {
                        break;
                    }
                }
                MessageView::Warning(w) => {
                    tracing::warn!(pipeline = %name, source = ?w.src().map(|s| s.path_string()), "{} ({:?})", w.error(), w.debug());
                }
                // On the way to NULL (the room closing) leaving PLAYING is expected.
                MessageView::StateChanged(change)
                    if change.src().map(|s| s.name() == name).unwrap_or(false)
                        && change.old() == gst::State::Playing
                        && change.current() != gst::State::Playing
                        && !matches!(change.pending(), gst::State::Null | gst::State::Ready) =>
                {
                    lost_playing.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(pipeline = %name, "the pipeline left PLAYING");
                }
                MessageView::Latency(_) => {
                    if let Some(pipeline) = weak.upgrade() {
                        let _ = pipeline.recalculate_latency();
                    }
                }
                _ => {}
            }
        }
    }))
}

/// The participant whose branch contains `object`, from the names of its ancestors.
fn owning_participant(object: &gst::Object) -> Option<ParticipantId> {
    let mut current = Some(object.clone());
    while let Some(o) = current {
        if let Some(id) = branch_owner(&o.name()) {
            return Some(id);
        }
        current = o.parent();
    }
    None
}

fn branch_owner(name: &str) -> Option<ParticipantId> {
    BRANCH_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))
        .and_then(|rest| rest.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn branch_names_map_to_their_participant() {
        assert_eq!(branch_owner("video-p3"), Some(ParticipantId(3)));
        assert_eq!(branch_owner("listener-p12"), Some(ParticipantId(12)));
        assert_eq!(branch_owner("compositor"), None);
        assert_eq!(branch_owner("video-x"), None);
    }
}
