//! One bus watch per room pipeline. It holds only a weak reference to the pipeline, answers
//! latency changes, and turns errors into events for the room actor: an error inside one
//! participant's branch concerns that participant only; any other error ends the room. With a
//! debug directory configured, a pipeline that fails also leaves a graph of itself there.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, Result};
use futures_util::StreamExt;
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;

use super::PipelineEvent;
use crate::ids::ParticipantId;

/// Branch bins are named `<kind>-<participant>`; these are the kinds (see media/video.rs, audio.rs).
const BRANCH_PREFIXES: [&str; 4] = ["video-", "audio-", "listener-", "placeholder-"];
/// A failing branch can post a burst of errors; one graph per pipeline this often tells the
/// story without filling the disk.
const GRAPH_INTERVAL: Duration = Duration::from_secs(5);

/// Watches the bus. `lost_playing` counts the times the pipeline fell from PLAYING back to PAUSED,
/// which freezes every participant's picture (a branch that prerolls would cause it).
pub fn watch(
    pipeline: &gst::Pipeline,
    events: mpsc::UnboundedSender<PipelineEvent>,
    lost_playing: Arc<AtomicU64>,
    debug_dir: Option<PathBuf>,
) -> Result<tokio::task::JoinHandle<()>> {
    let bus = pipeline.bus().context("a pipeline always has a bus")?;
    let weak = pipeline.downgrade();
    let name = pipeline.name().to_string();
    let mut graphs = GraphWriter::new(debug_dir);
    Ok(tokio::spawn(async move {
        let mut messages = bus.stream();
        while let Some(message) = messages.next().await {
            use gst::MessageView;
            match message.view() {
                MessageView::Error(err) => {
                    if let Some(pipeline) = weak.upgrade() {
                        graphs.write(&pipeline).await;
                    }
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

/// Writes a pipeline's graph (every element, pad, caps and state) as a `.dot` file when it fails,
/// at most once per `GRAPH_INTERVAL`: what failed reads like a map (`dot -Tsvg FILE`).
pub(super) struct GraphWriter {
    dir: Option<PathBuf>,
    last: Option<Instant>,
}

impl GraphWriter {
    pub fn new(dir: Option<PathBuf>) -> Self {
        GraphWriter { dir, last: None }
    }

    pub async fn write(&mut self, pipeline: &gst::Pipeline) {
        let Some(dir) = &self.dir else { return };
        if self.last.is_some_and(|at| at.elapsed() < GRAPH_INTERVAL) {
            return;
        }
        self.last = Some(Instant::now());
        let dot = pipeline.debug_to_dot_data(gst::DebugGraphDetails::all());
        let path = graph_path(dir, &pipeline.name(), SystemTime::now());
        match tokio::fs::write(&path, dot.as_bytes()).await {
            Ok(()) => {
                tracing::info!(file = %path.display(), "the failed pipeline's graph is written")
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), "could not write the pipeline's graph: {e}")
            }
        }
    }
}

/// `<dir>/<pipeline>-<milliseconds since the epoch>.dot`. Pipeline names are built from room
/// names, which are slugs (see protocol::validate_room_name), so they are safe in a file name.
fn graph_path(dir: &Path, pipeline: &str, now: SystemTime) -> PathBuf {
    let millis = now
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    dir.join(format!("{pipeline}-{millis}.dot"))
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
    fn graphs_are_named_after_their_pipeline_and_time() {
        let at = SystemTime::UNIX_EPOCH + Duration::from_millis(1_764_590_000_123);
        assert_eq!(
            graph_path(Path::new("/tmp/dbg"), "room-daily", at),
            PathBuf::from("/tmp/dbg/room-daily-1764590000123.dot")
        );
    }

    #[test]
    fn branch_names_map_to_their_participant() {
        assert_eq!(branch_owner("video-p3"), Some(ParticipantId(3)));
        assert_eq!(branch_owner("listener-p12"), Some(ParticipantId(12)));
        assert_eq!(branch_owner("compositor"), None);
        assert_eq!(branch_owner("video-x"), None);
    }
}
