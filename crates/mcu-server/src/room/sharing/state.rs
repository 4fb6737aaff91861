//! What a room keeps of its chat and shared files, as plain data the sharing component owns: the
//! chat backlog, and the catalogue of files with their upload state and the room's quota. Pure: no
//! I/O, time passed in.

use std::collections::{BTreeMap, VecDeque};
use std::time::{Duration, Instant};

use crate::protocol::{ChatEntry, FileInfo};

/// The last `capacity` chat messages, numbered in the order the room received them.
pub struct ChatLog {
    entries: VecDeque<ChatEntry>,
    capacity: usize,
    next_id: u64,
}

impl ChatLog {
    pub fn new(capacity: usize) -> Self {
        ChatLog {
            entries: VecDeque::with_capacity(capacity.min(1024)),
            capacity,
            next_id: 1,
        }
    }

    /// Numbers and keeps a message (forgetting the oldest beyond the capacity); returns it as
    /// everyone is to see it.
    pub fn push(&mut self, from: String, name: String, at: String, text: String) -> ChatEntry {
        let entry = ChatEntry {
            id: self.next_id,
            from,
            name,
            at,
            text,
        };
        self.next_id += 1;
        if self.capacity > 0 {
            if self.entries.len() == self.capacity {
                self.entries.pop_front();
            }
            self.entries.push_back(entry.clone());
        }
        entry
    }

    /// What someone who arrives now is shown, oldest first.
    pub fn backlog(&self) -> impl Iterator<Item = &ChatEntry> {
        self.entries.iter()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileState {
    Uploading { received: u64 },
    Ready { sha256: String },
}

#[derive(Debug, Clone)]
pub struct CatalogEntry {
    pub info: FileInfo,
    pub state: FileState,
    /// When its last bytes arrived (or when it was offered): an upload idle for too long failed.
    pub touched: Instant,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum OfferError {
    #[error("{} is larger than the {} this server accepts for a file", size_text(*.size), size_text(*.limit))]
    FileTooLarge { size: u64, limit: u64 },
    #[error("the room's files would take {} with this one, over its {} limit", size_text(*.total), size_text(*.limit))]
    RoomFull { total: u64, limit: u64 },
    #[error("an empty file has nothing to share")]
    Empty,
}

/// Sizes as people read them: "52.4 MB", "900 kB", "12 bytes".
pub fn size_text(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000_000 => format!("{:.1} GB", b as f64 / 1e9),
        b if b >= 1_000_000 => format!("{:.1} MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.0} kB", b as f64 / 1e3),
        b => format!("{b} bytes"),
    }
}

/// The room's shared files: their details, how far each upload got, and the room's quota.
pub struct FileCatalog {
    entries: BTreeMap<u32, CatalogEntry>,
    next_id: u32,
    max_file: u64,
    max_room: u64,
}

impl FileCatalog {
    pub fn new(max_file: u64, max_room: u64) -> Self {
        FileCatalog {
            entries: BTreeMap::new(),
            next_id: 1,
            max_file,
            max_room,
        }
    }

    /// Bytes the room's files take or will take once their uploads finish.
    pub fn used(&self) -> u64 {
        self.entries.values().map(|e| e.info.size).sum()
    }

    /// Accepts a file of `info.size` bytes (within both limits) and gives it its id.
    pub fn offer(&mut self, mut info: FileInfo, now: Instant) -> Result<FileInfo, OfferError> {
        if info.size == 0 {
            return Err(OfferError::Empty);
        }
        if info.size > self.max_file {
            return Err(OfferError::FileTooLarge {
                size: info.size,
                limit: self.max_file,
            });
        }
        let total = self.used().saturating_add(info.size);
        if total > self.max_room {
            return Err(OfferError::RoomFull {
                total,
                limit: self.max_room,
            });
        }
        info.file_id = self.next_id;
        self.next_id += 1;
        self.entries.insert(
            info.file_id,
            CatalogEntry {
                info: info.clone(),
                state: FileState::Uploading { received: 0 },
                touched: now,
            },
        );
        Ok(info)
    }

    pub fn get(&self, id: u32) -> Option<&CatalogEntry> {
        self.entries.get(&id)
    }

    pub fn progress(&mut self, id: u32, received: u64, now: Instant) {
        if let Some(e) = self.entries.get_mut(&id) {
            if let FileState::Uploading { received: r } = &mut e.state {
                *r = received;
                e.touched = now;
            }
        }
    }

    /// The upload finished; returns the file for everyone to be told.
    pub fn ready(&mut self, id: u32, sha256: String) -> Option<&CatalogEntry> {
        let e = self.entries.get_mut(&id)?;
        e.state = FileState::Ready { sha256 };
        Some(e)
    }

    /// The upload failed: the file goes, and its share of the quota with it.
    pub fn fail(&mut self, id: u32) -> Option<CatalogEntry> {
        self.entries.remove(&id)
    }

    /// Uploads that received nothing for `idle` up to `now`.
    pub fn stalled(&self, now: Instant, idle: Duration) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|(_, e)| {
                matches!(e.state, FileState::Uploading { .. })
                    && now.saturating_duration_since(e.touched) > idle
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// Uploads by `who` (a participant id), unfinished.
    pub fn uploading_by(&self, who: &str) -> Vec<u32> {
        self.entries
            .iter()
            .filter(|(_, e)| e.info.from == who && matches!(e.state, FileState::Uploading { .. }))
            .map(|(id, _)| *id)
            .collect()
    }

    pub fn entries(&self) -> impl Iterator<Item = &CatalogEntry> {
        self.entries.values()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(size: u64, from: &str) -> FileInfo {
        FileInfo {
            file_id: 0,
            name: "a.bin".into(),
            size,
            mime: None,
            from: from.into(),
            from_name: "Ada".into(),
            at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn the_chat_log_numbers_in_order_and_keeps_the_last_few() {
        let mut log = ChatLog::new(3);
        for i in 1..=5 {
            let e = log.push("p1".into(), "Ada".into(), "t".into(), format!("m{i}"));
            assert_eq!(e.id, i);
        }
        let kept: Vec<_> = log.backlog().map(|e| e.text.as_str()).collect();
        assert_eq!(kept, ["m3", "m4", "m5"]);
        let mut none = ChatLog::new(0);
        none.push("p1".into(), "Ada".into(), "t".into(), "x".into());
        assert_eq!(none.backlog().count(), 0);
    }

    #[test]
    fn files_over_either_limit_are_refused_before_they_take_an_id() {
        let now = Instant::now();
        let mut files = FileCatalog::new(100, 250);
        assert_eq!(
            files.offer(info(101, "p1"), now),
            Err(OfferError::FileTooLarge {
                size: 101,
                limit: 100
            })
        );
        assert_eq!(files.offer(info(0, "p1"), now), Err(OfferError::Empty));
        let a = files.offer(info(100, "p1"), now).unwrap();
        let b = files.offer(info(100, "p2"), now).unwrap();
        assert_eq!((a.file_id, b.file_id), (1, 2));
        assert_eq!(
            files.offer(info(60, "p1"), now),
            Err(OfferError::RoomFull {
                total: 260,
                limit: 250
            })
        );
        // A failed upload gives its share back.
        files.fail(b.file_id);
        assert_eq!(files.offer(info(60, "p1"), now).unwrap().file_id, 3);
        assert_eq!(files.used(), 160);
    }

    #[test]
    fn uploads_progress_finish_and_stall() {
        let t0 = Instant::now();
        let mut files = FileCatalog::new(1000, 1000);
        let a = files.offer(info(10, "p1"), t0).unwrap().file_id;
        let b = files.offer(info(10, "p2"), t0).unwrap().file_id;
        files.progress(a, 5, t0 + Duration::from_secs(20));
        assert_eq!(
            files.stalled(t0 + Duration::from_secs(31), Duration::from_secs(30)),
            vec![b]
        );
        assert_eq!(files.uploading_by("p1"), vec![a]);
        files.ready(a, "00".into());
        assert!(files.uploading_by("p1").is_empty());
        assert_eq!(
            files.get(a).map(|e| e.state.clone()),
            Some(FileState::Ready {
                sha256: "00".into()
            })
        );
        // A finished file never counts as stalled.
        assert!(!files
            .stalled(t0 + Duration::from_secs(100), Duration::from_secs(30))
            .contains(&a));
    }

    #[test]
    fn sizes_read_as_people_write_them() {
        assert_eq!(size_text(52_428_800), "52.4 MB");
        assert_eq!(size_text(900_000), "900 kB");
        assert_eq!(size_text(12), "12 bytes");
    }
}
