//! The rooms that exist. A room is created by its first join and forgets itself when its last
//! participant leaves; a generation number makes sure a closing room never removes the fresh room
//! that replaced it.
//!
//! Building a room's pipeline takes 50–300 ms of GStreamer calls (and seconds on a saturated
//! machine: during a 40-room flood, joins to other rooms waited 3–6 s behind the registry's
//! lock). So the lock only reserves the name: the room is built on a blocking thread, and joins
//! that arrive meanwhile wait for it on a watch channel, not on the lock.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot, watch};

use super::{Joined, Role, RoomError, RoomHandle, RoomSnapshot};
use crate::admission::{Admission, ClientKey, Limits};
use crate::cluster::{Cluster, Place};
use crate::config::ServerConfig;
use crate::ids::RoomId;
use crate::protocol::ServerMessage;
use crate::recordings::RecordingStore;

/// A join that meets a closing room retries with a fresh one; twice is plenty, since a fresh
/// room cannot be closing before its first join arrives.
const JOIN_ATTEMPTS: usize = 3;
/// Rounds of closing at shutdown: people joining while the server shuts down get a room that is
/// closed in the next round.
const CLOSE_ROUNDS: usize = 3;

pub struct Registry {
    config: Arc<ServerConfig>,
    store: Arc<RecordingStore>,
    /// Every room by name, with its generation; a room being built is `None` in its channel
    /// until it is open (or its build failed).
    rooms: Mutex<HashMap<RoomId, (Opening, u64)>>,
    next_generation: AtomicU64,
    /// Whether the room limit was logged since the last room opened: a flood of refused joins
    /// writes one line, not one per join.
    full_logged: AtomicBool,
    /// Joins refused because the server held its limit of rooms.
    refused_rooms: AtomicU64,
    /// Per-address limits on connections and new rooms.
    admission: Arc<Admission>,
    /// The other nodes, when this node is one of several (`--redis-url`).
    cluster: Option<Arc<Cluster>>,
    /// Rooms that recorded on the node that held them before, to record again here on their
    /// first join.
    resume_recording: Mutex<HashSet<RoomId>>,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

/// A room as it opens: `None` while it is built, then the room or why it could not open.
type Opening = watch::Receiver<Option<Result<RoomHandle, RoomError>>>;

/// Where a join goes, and whether finding that out counted as its client opening a room.
pub struct Located {
    pub place: Place,
    pub counted: bool,
}

impl Located {
    fn here() -> Self {
        Located {
            place: Place::Here,
            counted: false,
        }
    }
}

/// The open room in `opening`, if it has opened.
fn opened(opening: &Opening) -> Option<RoomHandle> {
    opening
        .borrow()
        .as_ref()
        .and_then(|r| r.as_ref().ok())
        .cloned()
}

impl Registry {
    pub fn new(
        config: Arc<ServerConfig>,
        store: Arc<RecordingStore>,
        cluster: Option<Arc<Cluster>>,
    ) -> Arc<Self> {
        Arc::new(Registry {
            cluster,
            resume_recording: Mutex::default(),
            store,
            rooms: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            full_logged: AtomicBool::new(false),
            refused_rooms: AtomicU64::new(0),
            admission: Admission::new(Limits {
                connections: config.max_connections_per_address,
                rooms_per_minute: config.max_new_rooms_per_address,
            }),
            config,
        })
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    pub fn store(&self) -> &Arc<RecordingStore> {
        &self.store
    }

    pub fn admission(&self) -> &Arc<Admission> {
        &self.admission
    }

    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    /// Where `room` lives: here if it is open (or opening) here or there is no cluster, else
    /// wherever the cluster says. A room that lives nowhere yet is placed, and the placing counts
    /// as `client` opening a room (`--max-new-rooms-per-address`) before any lease is taken:
    /// otherwise one address could fill every node's share of the cluster with leases of rooms
    /// that never open. `counted` says the opening was counted here already.
    pub async fn locate(&self, room: &RoomId, client: ClientKey) -> Result<Located, RoomError> {
        let Some(cluster) = &self.cluster else {
            return Ok(Located::here());
        };
        if self.holds(room) {
            return Ok(Located::here());
        }
        if let Some(place) = cluster.find(room.as_str()).await? {
            return Ok(Located {
                place,
                counted: false,
            });
        }
        self.admission
            .open_room(client, std::time::Instant::now())?;
        match cluster.locate(room.as_str()).await {
            Ok(place) => Ok(Located {
                place,
                counted: true,
            }),
            Err(e) => {
                // Nothing was placed: the web client retries `cluster_unavailable`, and must
                // not run out of new rooms doing so.
                self.admission.unopen_room(client);
                Err(e.into())
            }
        }
    }

    /// Whether `room` is open or opening on this node.
    pub fn holds(&self, room: &RoomId) -> bool {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.contains_key(room)
    }

    /// Joins `room` in `role` for a client at `client`, creating the room if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomId,
        name: &str,
        role: Role,
        client: ClientKey,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<(RoomHandle, Joined, oneshot::Receiver<String>), RoomError> {
        let located = self.locate(room, client).await?;
        if let Place::Elsewhere { url, .. } = located.place {
            return Err(RoomError::Elsewhere {
                node_url: url,
                room: room.to_string(),
            });
        }
        let mut counted = located.counted;
        for _ in 0..JOIN_ATTEMPTS {
            let handle = self.get_or_create(room, client, counted).await?;
            // A retry that meets a closed room opens a new one: that counts.
            counted = false;
            let (removed, removed_rx) = oneshot::channel();
            match handle
                .join(name.to_string(), role, events.clone(), removed)
                .await
            {
                Ok(joined) => {
                    if lock(&self.resume_recording).remove(room) {
                        let (handle, room) = (handle.clone(), room.clone());
                        tokio::spawn(async move {
                            match handle.start_recording().await {
                                Ok(_) => {
                                    tracing::info!(room = %room, "the room recorded on its last node: recording again here")
                                }
                                Err(e) => {
                                    tracing::warn!(room = %room, "resuming the room's recording: {e}")
                                }
                            }
                        });
                    }
                    return Ok((handle, joined, removed_rx));
                }
                Err(RoomError::Closed) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RoomError::Closed)
    }

    async fn get_or_create(
        self: &Arc<Self>,
        room: &RoomId,
        client: ClientKey,
        counted: bool,
    ) -> Result<RoomHandle, RoomError> {
        let mut opening = self.reserve(room, client, counted)?;
        let outcome = opening
            .wait_for(|state| state.is_some())
            .await
            .map_err(|_| RoomError::Closed)?
            .clone();
        outcome.unwrap_or(Err(RoomError::Closed))
    }

    /// The room's channel: the existing one, or a new one whose room is being built (counted
    /// against `--max-rooms` from now on, and against `client`'s new rooms unless `counted`
    /// says its placing was).
    fn reserve(
        self: &Arc<Self>,
        room: &RoomId,
        client: ClientKey,
        counted: bool,
    ) -> Result<Opening, RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((opening, _)) = rooms.get(room) {
            return Ok(opening.clone());
        }
        if let Some(limit) = self.config.max_rooms {
            if rooms.len() >= limit {
                self.refused_rooms.fetch_add(1, Ordering::Relaxed);
                if counted {
                    // Its placing counted an opening that this refusal undoes.
                    self.admission.unopen_room(client);
                }
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(limit, "the server holds its limit of rooms (--max-rooms): new rooms are refused until one closes");
                }
                return Err(RoomError::ServerFull(limit));
            }
            self.full_logged.store(false, Ordering::Relaxed);
        }
        if !counted {
            self.admission
                .open_room(client, std::time::Instant::now())?;
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let (publish, opening) = watch::channel(None);
        rooms.insert(room.clone(), (opening.clone(), generation));
        drop(rooms);
        // Its own task, so the room is published even if the join that asked for it is gone.
        let (registry, room) = (self.clone(), room.clone());
        tokio::spawn(async move {
            if let Err(refusal) = registry.claim(&room).await {
                registry.forget(&room, generation);
                // Nothing opened here: the client's opening is not counted (it may be on its
                // way to the node that holds the room).
                registry.admission.unopen_room(client);
                let _ = publish.send(Some(Err(refusal)));
                return;
            }
            let build = {
                let (config, store) = (registry.config.clone(), registry.store.clone());
                let (weak, room) = (Arc::downgrade(&registry), room.clone());
                tokio::task::spawn_blocking(move || {
                    super::spawn(room, config, store, weak, generation)
                        .map_err(|e| RoomError::Media(format!("{e:#}")))
                })
            };
            let outcome = build
                .await
                .unwrap_or_else(|e| Err(RoomError::Media(format!("building the room: {e}"))));
            if outcome.is_err() {
                registry.forget(&room, generation);
                registry.admission.unopen_room(client);
            }
            if let (Ok(_), Some(cluster)) = (&outcome, &registry.cluster) {
                // It recorded on the node that held it before that node died: it records again
                // here, in a new file, from its first join (an empty room closes at once).
                if !registry.config.auto_record && cluster.was_recording(room.as_str()).await {
                    lock(&registry.resume_recording).insert(room.clone());
                }
            }
            let _ = publish.send(Some(outcome));
        });
        Ok(opening)
    }

    /// Takes the room's lease for this node as it opens here (with a cluster).
    async fn claim(&self, room: &RoomId) -> Result<(), RoomError> {
        let Some(cluster) = &self.cluster else {
            return Ok(());
        };
        match cluster.open(room.as_str()).await? {
            Place::Here => Ok(()),
            Place::Elsewhere { url, .. } => Err(RoomError::Elsewhere {
                node_url: url,
                room: room.to_string(),
            }),
        }
    }

    /// Called by a room as it closes.
    pub(crate) fn forget(&self, room: &RoomId, generation: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(room).is_some_and(|(_, g)| *g == generation) {
            rooms.remove(room);
            // A "record again" mark whose first join never came must not start a recording at
            // this name's next room.
            lock(&self.resume_recording).remove(room);
            if let Some(cluster) = &self.cluster {
                cluster.release(room.as_str());
            }
        }
    }

    /// Joins refused so far because the server held its limit of rooms.
    pub fn refused_rooms(&self) -> u64 {
        self.refused_rooms.load(Ordering::Relaxed)
    }

    /// The room, if it is open.
    pub fn room(&self, room: &RoomId) -> Option<RoomHandle> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.get(room).and_then(|(opening, _)| opened(opening))
    }

    /// The room called `name`, if it is open here.
    pub fn room_named(&self, name: &str) -> Option<RoomHandle> {
        RoomId::new(name).ok().and_then(|id| self.room(&id))
    }

    /// Every room open or opening here, by name.
    pub fn room_names(&self) -> Vec<String> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.keys().map(|r| r.to_string()).collect()
    }

    /// Every open room (not those still being built).
    fn handles(&self) -> Vec<RoomHandle> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms
            .values()
            .filter_map(|(opening, _)| opened(opening))
            .collect()
    }

    /// Closes every room and waits until each has finished (recordings completed), for a clean
    /// shutdown. Rooms created meanwhile are closed too, a few rounds at most (the listener is
    /// still open while this runs).
    pub async fn close_all(&self, reason: &str) {
        for _ in 0..CLOSE_ROUNDS {
            let handles = self.handles();
            if handles.is_empty() {
                return;
            }
            for h in &handles {
                h.close(reason).await;
            }
            for h in &handles {
                h.closed().await;
            }
        }
    }

    /// Every room's snapshot, asked of all rooms at once, each given `deadline` to answer; also
    /// the rooms that did not (a stuck room's actor never answers, and must not hold up the
    /// others).
    pub async fn snapshots_within(
        &self,
        deadline: std::time::Duration,
    ) -> (Vec<RoomSnapshot>, Vec<RoomId>) {
        let asked = self.handles().into_iter().map(|h| async move {
            let answer = tokio::time::timeout(deadline, h.snapshot()).await;
            (h.id().clone(), answer)
        });
        let answers = futures_util::future::join_all(asked).await;
        let mut rooms = Vec::new();
        let mut unanswered = Vec::new();
        for (room, answer) in answers {
            match answer {
                Ok(Ok(snapshot)) => rooms.push(snapshot),
                // It closed while being asked: not a room any more.
                Ok(Err(_)) => {}
                Err(_) => unanswered.push(room),
            }
        }
        rooms.sort_by(|a, b| a.room.cmp(&b.room));
        unanswered.sort();
        (rooms, unanswered)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_opening_refused_for_a_full_server_is_not_counted_against_its_client() {
        let dir = std::env::temp_dir().join(format!("mcu-registry-test-{}", std::process::id()));
        let store = Arc::new(RecordingStore::open(&dir).expect("a recording directory"));
        let config = Arc::new(ServerConfig {
            max_rooms: Some(0),
            max_new_rooms_per_address: 2,
            ..ServerConfig::default()
        });
        let registry = Registry::new(config, store, None);
        let client = ClientKey::of("192.0.2.7".parse().expect("an address"));
        let room = RoomId::new("standup").expect("a room name");
        let now = std::time::Instant::now();
        for _ in 0..3 {
            // As a cluster's placing does: count first, then open.
            registry
                .admission()
                .open_room(client, now)
                .expect("the opening refused last time was given back");
            assert!(matches!(
                registry.reserve(&room, client, true),
                Err(RoomError::ServerFull(0))
            ));
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
