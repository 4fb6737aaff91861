//! The rooms that exist. A room is created by its first join and forgets itself when its last
//! participant leaves; a generation number makes sure a closing room never removes the fresh room
//! that replaced it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Result;
use tokio::sync::mpsc;

use super::{JoinError, Joined, RoomHandle, RoomSnapshot};
use crate::config::ServerConfig;
use crate::ids::RoomId;
use crate::protocol::ServerMessage;

/// A join that meets a closing room retries with a fresh one; twice is plenty, since a fresh
/// room cannot be closing before its first join arrives.
const JOIN_ATTEMPTS: usize = 3;

pub struct Registry {
    config: Arc<ServerConfig>,
    rooms: Mutex<HashMap<RoomId, (RoomHandle, u64)>>,
    next_generation: AtomicU64,
}

impl Registry {
    pub fn new(config: Arc<ServerConfig>) -> Arc<Self> {
        Arc::new(Registry {
            config,
            rooms: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
        })
    }

    pub fn config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// Joins `room`, creating it if needed.
    pub async fn join(
        self: &Arc<Self>,
        room: &RoomId,
        name: &str,
        events: mpsc::Sender<ServerMessage>,
    ) -> Result<(RoomHandle, Joined), JoinError> {
        let mut last = JoinError::Closing;
        for _ in 0..JOIN_ATTEMPTS {
            let handle = self
                .get_or_create(room)
                .map_err(|e| JoinError::Media(format!("{e:#}")))?;
            match handle.join(name.to_string(), events.clone()).await {
                Ok(joined) => return Ok((handle, joined)),
                Err(JoinError::Closing) => last = JoinError::Closing,
                Err(e) => return Err(e),
            }
        }
        Err(last)
    }

    fn get_or_create(self: &Arc<Self>, room: &RoomId) -> Result<RoomHandle> {
        let mut rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((handle, _)) = rooms.get(room) {
            return Ok(handle.clone());
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        let handle = super::spawn(
            room.clone(),
            self.config.clone(),
            Arc::downgrade(self),
            generation,
        )?;
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

    pub fn room(&self, room: &RoomId) -> Option<RoomHandle> {
        let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
        rooms.get(room).map(|(h, _)| h.clone())
    }

    pub fn room_count(&self) -> usize {
        self.rooms.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    pub async fn snapshots(&self) -> Vec<RoomSnapshot> {
        let handles: Vec<RoomHandle> = {
            let rooms = self.rooms.lock().unwrap_or_else(|p| p.into_inner());
            rooms.values().map(|(h, _)| h.clone()).collect()
        };
        let mut out = Vec::new();
        for h in handles {
            if let Some(s) = h.snapshot().await {
                out.push(s);
            }
        }
        out.sort_by(|a, b| a.room.cmp(&b.room));
        out
    }
}
