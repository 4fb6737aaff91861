//! Several nodes, one Redis: a room lives on one node at a time, any node is a door to every
//! room, and new rooms go where there is headroom. Redis is the only shared state (store.rs); no
//! node talks to another. A server started without `--redis-url` has no `Cluster` and behaves as
//! a single node always did.
//!
//! - A door (any node a client reaches) asks `locate`: the room's holder if it is alive, else a
//!   node chosen by headroom (placement.rs), assigned the room's lease on the spot so the next
//!   door agrees. The client is sent there (a `redirect` message or a 307).
//! - The node that opens the room claims the lease (`open`); it renews every lease it holds every
//!   `PUBLISH_EVERY` (heartbeat.rs) and closes a room whose lease another node took.
//! - A node that dies stops publishing; its record expires within `NODE_RECORD_TTL`, and from
//!   then on its rooms may be claimed by the next door that is asked for them.
//! - Draining: the node says so in its record, so no door places a room on it; its rooms go on.
//! - Redis unreachable: open rooms go on (leases are only given up when another node holds
//!   them); new rooms are refused with `cluster_unavailable`.

mod heartbeat;
pub mod placement;
mod recordings;
pub mod store;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

pub(crate) use heartbeat::run as heartbeat;
use placement::{Candidate, NodeRecord};
use store::Store;

/// How long a room's lease lasts unrenewed: a dead node's rooms are free at the latest this
/// long after its last renewal (sooner: when its record expires). The issue allows 15 s.
pub const ROOM_LEASE: Duration = Duration::from_secs(10);
/// How often a node publishes its record and renews its leases: five renewals per lease, so a
/// Redis hiccup of a few seconds loses nothing.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(2);
/// A node's record outlives three publishing periods: one missed publish is not death, and a
/// dead node's rooms are free for others within 6 s.
pub const NODE_RECORD_TTL: Duration = Duration::from_secs(6);
/// How long the "this room records" mark outlives its last refresh: long enough for the room to
/// reopen on another node after its node died.
pub const RECORDING_MARK_TTL: Duration = Duration::from_secs(60);

/// Who this node is to the others.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    pub redis_url: String,
    /// Unique among the nodes; by default derived from the host name and a random suffix.
    pub node_id: String,
    /// How clients reach this node (`--node-url`), e.g. https://node-b.example.org:8443; by
    /// default its listening address.
    pub node_url: Option<String>,
}

/// Where a room lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    Here,
    /// On another node, reached at `url` (its `--node-url`).
    Elsewhere {
        node: String,
        url: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterError {
    #[error("the cluster's room registry (Redis) cannot be reached, so no new room can open now ({0}); rooms already open go on; try again later")]
    Unavailable(String),
    #[error("no node of the cluster takes new rooms now (each is draining, full or busy); try again later")]
    Full,
}

fn unavailable(e: anyhow::Error) -> ClusterError {
    ClusterError::Unavailable(format!("{e:#}"))
}

/// One room of the cluster, as `GET /api/v1/rooms` lists it.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterRoom {
    pub room: String,
    pub node: String,
    pub node_url: String,
    pub participants: usize,
    pub watchers: usize,
    pub recording: bool,
}

pub struct Cluster {
    store: Store,
    id: String,
    url: String,
    draining: AtomicBool,
    /// Whether this node's last record reached Redis (false until the first one did).
    registry_reachable: AtomicBool,
    /// What this node published last (for `GET /api/v1/node`).
    last_record: Mutex<Option<NodeRecord>>,
    /// Releases still on their way to Redis, by room: a room that reopens here at once waits
    /// for its old lease's release before claiming, or the release (the same node id, so it
    /// matches) would delete the fresh lease and leave the room unheld until the next renewal.
    releasing: Mutex<HashMap<String, tokio::task::JoinHandle<()>>>,
}

impl Cluster {
    /// `url` is `--node-url`, or the address the server listens on.
    pub fn new(config: &ClusterConfig, url: String) -> Result<Arc<Self>> {
        Ok(Arc::new(Cluster {
            store: Store::new(&config.redis_url)?,
            id: config.node_id.clone(),
            url: url.trim_end_matches('/').to_string(),
            draining: AtomicBool::new(false),
            registry_reachable: AtomicBool::new(false),
            last_record: Mutex::new(None),
            releasing: Mutex::new(HashMap::new()),
        }))
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Whether this node's last published record reached Redis: while it did not, new rooms
    /// are refused (`cluster_unavailable`) and open rooms go on.
    pub fn registry_reachable(&self) -> bool {
        self.registry_reachable.load(Ordering::Relaxed)
    }

    pub(crate) fn set_registry_reachable(&self, reachable: bool) {
        self.registry_reachable.store(reachable, Ordering::Relaxed);
    }

    /// Takes no new room from now on (published with the next record, within `PUBLISH_EVERY`).
    pub fn drain(&self) {
        if !self.draining.swap(true, Ordering::Relaxed) {
            tracing::info!("draining: no new room will open on this node; its rooms go on");
        }
    }

    pub fn last_record(&self) -> Option<NodeRecord> {
        self.last_record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Every live node, with the rooms its leases hold.
    async fn candidates(&self) -> Result<Vec<(Candidate, Vec<String>)>, ClusterError> {
        let published = self.store.nodes().await.map_err(unavailable)?;
        Ok(published
            .into_iter()
            .filter_map(|p| {
                let mut record: NodeRecord = serde_json::from_str(&p.record).ok()?;
                // Our own drain counts at once, not from our next record on.
                if record.id == self.id && self.is_draining() {
                    record.state = placement::NodeState::Draining;
                }
                let candidate = Candidate {
                    record,
                    held_rooms: p.rooms.len(),
                };
                Some((candidate, p.rooms))
            })
            .collect())
    }

    fn place_of(&self, holder: &str, nodes: &[(Candidate, Vec<String>)]) -> Option<Place> {
        if holder == self.id {
            return Some(Place::Here);
        }
        nodes
            .iter()
            .find(|(c, _)| c.record.id == holder)
            .map(|(c, _)| Place::Elsewhere {
                node: c.record.id.clone(),
                url: c.record.url.clone(),
            })
    }

    /// Where `room` lives, placing it if it lives nowhere (or on a dead node) yet. Called by a
    /// door for a room it does not hold.
    pub async fn locate(&self, room: &str) -> Result<Place, ClusterError> {
        let nodes = self.candidates().await?;
        let holder = self.store.holder(room).await.map_err(unavailable)?;
        if let Some(place) = holder.as_deref().and_then(|h| self.place_of(h, &nodes)) {
            return Ok(place);
        }
        let pool: Vec<Candidate> = nodes.iter().map(|(c, _)| c.clone()).collect();
        let chosen = placement::choose(&pool).ok_or(ClusterError::Full)?;
        // The lease is taken for the chosen node now, so doors asked next send the room there
        // too; if the node never opens it, the lease lapses after ROOM_LEASE.
        let winner = self
            .store
            .claim(room, &chosen.record.id, ROOM_LEASE)
            .await
            .map_err(unavailable)?;
        if winner != chosen.record.id {
            tracing::info!(room, node = %winner, "another door placed the room first");
        } else {
            tracing::info!(room, node = %winner, headroom = chosen.headroom(), "room placed");
        }
        self.place_of(&winner, &nodes).ok_or(ClusterError::Full)
    }

    /// Where `room` lives, if it lives anywhere (nothing is placed).
    pub async fn find(&self, room: &str) -> Result<Option<Place>, ClusterError> {
        let Some(holder) = self.store.holder(room).await.map_err(unavailable)? else {
            return Ok(None);
        };
        let nodes = self.candidates().await?;
        Ok(self.place_of(&holder, &nodes))
    }

    /// Claims `room` for this node as it opens here: `Here`, or where it lives if another node
    /// holds it (a door raced us).
    pub async fn open(&self, room: &str) -> Result<Place, ClusterError> {
        let pending = self
            .releasing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(room);
        if let Some(release) = pending {
            // Bounded: each Redis call gives up after its deadline.
            let _ = release.await;
        }
        let winner = self
            .store
            .claim(room, &self.id, ROOM_LEASE)
            .await
            .map_err(unavailable)?;
        if winner == self.id {
            return Ok(Place::Here);
        }
        let nodes = self.candidates().await?;
        self.place_of(&winner, &nodes).ok_or(ClusterError::Full)
    }

    /// Gives `room`'s lease up as it closes here (in the background: the room is gone either
    /// way, and an unreleased lease lapses by itself).
    pub fn release(self: &Arc<Self>, room: &str) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let task = runtime.spawn({
            let (cluster, room) = (self.clone(), room.to_string());
            async move {
                if let Err(e) = cluster.store.release(&room, &cluster.id).await {
                    tracing::warn!(
                        room,
                        "releasing the room's lease: {e:#} (it lapses by itself)"
                    );
                }
            }
        });
        let mut releasing = self.releasing.lock().unwrap_or_else(|p| p.into_inner());
        // Forget the releases that are done, so the map holds only those in flight.
        releasing.retain(|_, t| !t.is_finished());
        releasing.insert(room.to_string(), task);
    }

    /// Whether `room` recorded on the node that held it before (so it records again here).
    pub async fn was_recording(&self, room: &str) -> bool {
        self.store.was_recording(room).await.unwrap_or(false)
    }

    /// Every room of the cluster, by node.
    pub async fn rooms(&self) -> Result<Vec<ClusterRoom>, ClusterError> {
        let nodes = self.candidates().await?;
        let mut rooms = Vec::new();
        for (candidate, held) in nodes {
            let record = candidate.record;
            for room in held {
                let load = record.rooms.iter().find(|r| r.room == room);
                rooms.push(ClusterRoom {
                    room,
                    node: record.id.clone(),
                    node_url: record.url.clone(),
                    participants: load.map_or(0, |l| l.participants),
                    watchers: load.map_or(0, |l| l.watchers),
                    recording: load.is_some_and(|l| l.recording),
                });
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        Ok(rooms)
    }

    /// Every live node's record.
    pub async fn nodes(&self) -> Result<Vec<NodeRecord>, ClusterError> {
        Ok(self
            .candidates()
            .await?
            .into_iter()
            .map(|(c, _)| c.record)
            .collect())
    }

    /// Takes this node's record out of Redis (a clean exit): its rooms are free at once.
    pub async fn withdraw(&self) {
        if let Err(e) = self.store.withdraw(&self.id).await {
            tracing::warn!("withdrawing this node from Redis: {e:#} (its record lapses by itself)");
        }
    }
}

/// The WebSocket URL of `room` on the node at `node_url`.
pub fn websocket_url(node_url: &str, room: &str) -> String {
    let base = node_url.trim_end_matches('/');
    let base = if let Some(rest) = base.strip_prefix("https://") {
        format!("wss://{rest}")
    } else if let Some(rest) = base.strip_prefix("http://") {
        format!("ws://{rest}")
    } else {
        base.to_string()
    };
    format!("{base}/ws/{room}")
}

/// A node id when none is given: the host name and a random suffix (two nodes on one host, or a
/// restarted node whose old leases have not lapsed, never share one).
pub fn default_node_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "node".to_string());
    let mut suffix = [0u8; 4];
    // Without randomness the process id still tells two nodes on one host apart.
    if getrandom::getrandom(&mut suffix).is_err() {
        suffix = std::process::id().to_be_bytes();
    }
    format!("{host}-{:08x}", u32::from_be_bytes(suffix))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_url_becomes_its_websocket_for_the_room() {
        assert_eq!(
            websocket_url("https://node-b.example.org:8443/", "standup"),
            "wss://node-b.example.org:8443/ws/standup"
        );
        assert_eq!(
            websocket_url("http://127.0.0.1:9000", "a"),
            "ws://127.0.0.1:9000/ws/a"
        );
    }
}
