//! The cluster's index of recordings. A recording's files stay on the disk of the node that
//! wrote it; each node publishes the list of its own recordings to Redis, so any node's admin API
//! lists every recording with its node, and answers a request for one held elsewhere with a 307
//! there. Lists outlive their nodes: a node that died still has its files, and says so again when
//! it comes back.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use super::Cluster;
use crate::recordings::{RecordingStatus, RecordingStore};

/// While one of its recordings is being written (its size and duration grow), a node
/// republishes its list this often; otherwise only when the list changed.
const REFRESH_WHILE_RECORDING: Duration = Duration::from_secs(10);

/// What this node last published of its recordings.
#[derive(Default)]
pub(crate) struct Publisher {
    /// The store's change count that list reflected; none until a list reached Redis.
    published: Option<u64>,
    at: Option<Instant>,
    recording: bool,
}

impl Publisher {
    /// Publishes this node's recordings when they changed since the last publish (or one of them
    /// is growing and the last publish is `REFRESH_WHILE_RECORDING` old).
    pub(crate) async fn tick(&mut self, cluster: &Cluster, store: &Arc<RecordingStore>) {
        let changes = store.changes();
        let stale = self
            .at
            .is_none_or(|at| at.elapsed() >= REFRESH_WHILE_RECORDING);
        if self.published == Some(changes) && !(self.recording && stale) {
            return;
        }
        let listing = {
            let store = store.clone();
            tokio::task::spawn_blocking(move || store.list()).await
        };
        let list = match listing {
            Ok(Ok(list)) => list,
            Ok(Err(e)) => {
                tracing::warn!("listing recordings to publish: {e:#}");
                return;
            }
            Err(e) => {
                tracing::warn!("listing recordings to publish: {e}");
                return;
            }
        };
        let recording = list.iter().any(|r| r.status == RecordingStatus::Recording);
        let body = json!({"url": cluster.url, "recordings": list}).to_string();
        // A failure is Redis being away: the heartbeat says so, and the next tick tries again.
        if cluster
            .store
            .publish_recordings(&cluster.id, &body)
            .await
            .is_ok()
        {
            self.published = Some(changes);
            self.at = Some(Instant::now());
            self.recording = recording;
        }
    }
}

impl Cluster {
    /// Every recording every node published, newest first, each with `node`, `node_url` and
    /// `node_live` (whether that node runs now: a dead node's files are out of reach until it
    /// is back).
    pub async fn recordings(&self) -> Result<Vec<Value>> {
        let live: HashSet<String> = self
            .nodes()
            .await
            .context("reading the nodes")?
            .into_iter()
            .map(|n| n.id)
            .collect();
        let mut out = Vec::new();
        for (node, text) in self.store.recordings().await? {
            let Ok(published) = serde_json::from_str::<Value>(&text) else {
                tracing::warn!(node, "an unreadable list of recordings in Redis");
                continue;
            };
            let url = published["url"].clone();
            let Some(list) = published["recordings"].as_array() else {
                continue;
            };
            for recording in list {
                let mut recording = recording.clone();
                if let Some(fields) = recording.as_object_mut() {
                    fields.insert("node".into(), json!(node));
                    fields.insert("node_url".into(), url.clone());
                    fields.insert("node_live".into(), json!(live.contains(&node)));
                    out.push(recording);
                }
            }
        }
        out.sort_by(|a, b| {
            let key = |v: &Value| (v["started_at"].to_string(), v["id"].to_string());
            key(b).cmp(&key(a))
        });
        Ok(out)
    }

    /// Recording `id` as another node published it (this node's own list is its disk).
    pub async fn find_recording(&self, id: &str) -> Result<Option<Value>> {
        Ok(self
            .recordings()
            .await?
            .into_iter()
            .find(|r| r["id"] == id && r["node"] != self.id.as_str()))
    }
}
