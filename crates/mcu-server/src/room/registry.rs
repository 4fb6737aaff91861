//! The rooms that exist. A room is created by its first join and forgets itself when its last
//! participant leaves; a generation number makes sure a closing room never removes the fresh room
//! that replaced it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::{mpsc, oneshot};

use super::{Joined, RoomError, RoomHandle, RoomSnapshot};
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
    rooms: Mutex<HashMap<RoomId, (RoomHandle, u64)>>,
    next_generation: AtomicU64,
    /// Whether the room limit was logged since the last room opened: a flood of refused joins
    /// writes one line, not one per join.
    full_logged: AtomicBool,
    /// Joins refused because the server held its limit of rooms.
    refused_rooms: AtomicU64,
}

impl Registry {
    pub fn new(config: Arc<ServerConfig>, store: Arc<RecordingStore>) -> Arc<Self> {
        Arc::new(Registry {
            config,
            store,
            rooms: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            full_logged: AtomicBool::new(false),
            refused_rooms: AtomicU64::new(0),
        })
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    pub fn store(&self) -> &Arc<RecordingStore> {
        &self.store
    }

    /// Joins `room`, creating it if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomId,
        name: &str,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<(RoomHandle, Joined, oneshot::Receiver<String>), RoomError> {
        for _ in 0..JOIN_ATTEMPTS {
            let handle = self.get_or_create(room)?;
            let (removed, removed_rx) = oneshot::channel();
            match handle.join(name.to_string(), events.clone(), removed).await {
                Ok(joined) => return Ok((handle, joined, removed_rx)),
                Err(RoomError::Closed) => continue,
                Err(e) => return Err(e),
            }
        }
        Err(RoomError::Closed)
    }

    fn get_or_create(self: &Arc<Self>, room: &RoomId) -> Result<RoomHandle, RoomError> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((handle, _)) = rooms.get(room) {
            return Ok(handle.clone());
        }
        if let Some(limit) = self.config.max_rooms {
            if rooms.len() >= limit {
                self.refused_rooms.fetch_add(1, Ordering::Relaxed);
                if !self.full_logged.swap(true, Ordering::Relaxed) {
                    tracing::warn!(limit, "the server holds its limit of rooms (--max-rooms): new rooms are refused until one closes");
                }
                return Err(RoomError::ServerFull(limit));
            }
            self.full_logged.store(false, Ordering::Relaxed);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle = super::spawn(
            room.clone(),
            self.config.clone(),
            self.store.clone(),
            Arc::downgrade(self),
            generation,
        )
        .map_err(|e| RoomError::Media(format!("{e:#}")))?;
        rooms.insert(room.clone(), (handle.clone(), generation));
        Ok(handle)
    }

    /// Called by a room as it closes.
    pub(crate) fn forget(&self, room: &RoomId, generation: u64) {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if rooms.get(room).is_some_and(|(_, g)| *g == generation) {
            rooms.remove(room);
        }
    }

    /// Joins refused so far because the server held its limit of rooms.
    pub fn refused_rooms(&self) -> u64 {
        self.refused_rooms.load(Ordering::Relaxed)
    }

    pub fn room(&self, room: &RoomId) -> Option<RoomHandle> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.get(room).map(|(h, _)| h.clone())
    }

    fn handles(&self) -> Vec<RoomHandle> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.values().map(|(h, _)| h.clone()).collect()
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

    pub async fn snapshots(&self) -> Vec<RoomSnapshot> {
        let handles = self.handles();
        let mut out = Vec::new();
        for h in handles {
            if let Ok(s) = h.snapshot().await {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }
}
