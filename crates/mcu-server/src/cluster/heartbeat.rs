//! A node's pulse: every `PUBLISH_EVERY` it publishes its record (load and state), renews the
//! lease of every room it holds, marks which of them record, closes a room whose lease another
//! node took (its participants are sent there), and publishes its recordings when they changed
//! (recordings.rs). While Redis is unreachable it keeps its rooms and says so once in the log.

use std::sync::Arc;
use std::time::Duration;

use super::placement::{NodeRecord, NodeState, RoomLoad};
use super::recordings::Publisher;
use super::{
    websocket_url, Cluster, NODE_RECORD_TTL, PUBLISH_EVERY, RECORDING_MARK_TTL, ROOM_LEASE,
};
use crate::proc_stat::{machine_cores, ProcessSample};
use crate::room::registry::Registry;

/// A room that does not say how it is within this long counts as empty in the record (its
/// lease is still renewed: it is still here).
const ROOM_ANSWER_DEADLINE: Duration = Duration::from_secs(1);

/// CPU is measured over at least this long (the first record reports none).
const MIN_CPU_WINDOW: Duration = Duration::from_secs(1);

pub(crate) async fn run(cluster: Arc<Cluster>, registry: Arc<Registry>) {
    let mut tick = tokio::time::interval(PUBLISH_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cpu_then = ProcessSample::of_self().ok();
    let mut redis_lost = false;
    let mut recordings = Publisher::default();
    loop {
        tick.tick().await;
        let (snapshots, _) = registry.snapshots_within(ROOM_ANSWER_DEADLINE).await;
        let rooms: Vec<RoomLoad> = snapshots
            .iter()
            .map(|s| RoomLoad {
                room: s.room.clone(),
                participants: s.participants.len(),
                watchers: s.watchers,
                recording: s.recording.is_some(),
            })
            .collect();
        // The first tick comes at once: a few ms of CPU over a few ms of wall time would read
        // as whole cores (a fresh node looked full to the doors in one test run), so the
        // baseline moves only once a window of MIN_CPU_WINDOW is measured.
        let mut cpu_cores = 0.0;
        match (ProcessSample::of_self().ok(), &cpu_then) {
            (Some(now), Some(then)) if now.at.duration_since(then.at) >= MIN_CPU_WINDOW => {
                cpu_cores = now.cores_since(then);
                cpu_then = Some(now);
            }
            (Some(now), None) => cpu_then = Some(now),
            _ => {}
        }
        let record = NodeRecord {
            id: cluster.id.clone(),
            url: cluster.url.clone(),
            state: if cluster.is_draining() {
                NodeState::Draining
            } else {
                NodeState::Serving
            },
            cores: machine_cores(),
            cpu_cores,
            max_rooms: registry.config().max_rooms,
            rooms,
        };
        let beaten = beat(&cluster, &registry, &record).await;
        cluster.set_registry_reachable(beaten.is_ok());
        if beaten.is_ok() {
            recordings.tick(&cluster, registry.store()).await;
        }
        match beaten {
            Ok(()) if redis_lost => {
                redis_lost = false;
                tracing::info!("Redis is reachable again: new rooms open again");
            }
            Ok(()) => {}
            Err(e) if !redis_lost => {
                redis_lost = true;
                tracing::warn!("Redis is unreachable: open rooms go on, new rooms are refused until it is back: {e:#}");
            }
            Err(_) => {}
        }
        *cluster
            .last_record
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Some(record);
    }
}

/// One publish-and-renew round.
async fn beat(
    cluster: &Arc<Cluster>,
    registry: &Arc<Registry>,
    record: &NodeRecord,
) -> anyhow::Result<()> {
    let json = serde_json::to_string(record)?;
    cluster
        .store
        .publish(&cluster.id, &json, NODE_RECORD_TTL)
        .await?;
    let mut lost = Vec::new();
    for room in registry.room_names() {
        let holder = cluster.store.renew(&room, &cluster.id, ROOM_LEASE).await?;
        if holder != cluster.id {
            lost.push((room, holder));
        }
    }
    let marks: Vec<(String, bool)> = record
        .rooms
        .iter()
        .map(|r| (r.room.clone(), r.recording))
        .collect();
    cluster
        .store
        .mark_recording(&marks, RECORDING_MARK_TTL)
        .await?;
    if lost.is_empty() {
        return Ok(());
    }
    let nodes = cluster.candidates().await.unwrap_or_default();
    for (room, holder) in lost {
        // Where its participants go: the new holder, or back through this node's door (which
        // then finds the holder) if its record cannot be read.
        let url = match cluster.place_of(&holder, &nodes) {
            Some(super::Place::Elsewhere { url, .. }) => websocket_url(&url, &room),
            _ => websocket_url(&cluster.url, &room),
        };
        tracing::warn!(room, node = %holder, "another node holds this room's lease now: closing it here");
        if let Some(handle) = registry.room_named(&room) {
            handle
                .close_moved("the room moved to another node", url)
                .await;
        }
    }
    Ok(())
}
