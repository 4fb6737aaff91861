//! Recordings on disk: where a new one goes, what is known about each, and which file an API
//! request may touch. Every recording is a media file plus a small JSON sidecar (room, times,
//! status) written when it starts and rewritten when it ends, so the list survives restarts and a
//! recording cut short by a crash is still listed, as `interrupted`.
//!
//! Names come from validated room names and the UTC start time; an id from a request is checked
//! against the same strict alphabet before it is joined to the directory, so no request can name
//! a file outside it.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::codec::VideoCodec;
use crate::ids::RoomId;

/// Longest recording id: a 64-character room name, a timestamp and a counter fit well within it.
pub const MAX_ID_LEN: usize = 100;
const SIDECAR_EXTENSION: &str = "json";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RecordingStatus {
    /// Being written now.
    Recording,
    /// Stopped and finished: the file has its index and duration.
    Complete,
    /// Stopped by an error (e.g. a full disk); the file plays up to the error.
    Failed,
    /// The server stopped without finishing it (killed, crashed); the file plays up to the end
    /// of what reached the disk, and its duration is estimated from the file's last write.
    Interrupted,
}

/// What the API lists for a recording.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RecordingInfo {
    pub id: String,
    pub room: String,
    /// The media file's name in the recordings directory.
    pub file: String,
    pub codec: VideoCodec,
    /// RFC 3339, UTC.
    pub started_at: String,
    #[serde(default)]
    pub ended_at: Option<String>,
    pub status: RecordingStatus,
    #[serde(default)]
    pub error: Option<String>,
    /// Wall-clock length: so far while recording, estimated for an interrupted one.
    #[serde(default)]
    pub duration_seconds: Option<f64>,
    /// The file's size now (not stored in the sidecar).
    #[serde(default, skip_deserializing)]
    pub size_bytes: u64,
    #[serde(skip)]
    started: Option<SystemTime>,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("{0:?} is not a recording id")]
    BadId(String),
    #[error("no recording {0}")]
    NotFound(String),
    #[error("recording {0} is still being written; stop it first")]
    Active(String),
    #[error(transparent)]
    Io(#[from] anyhow::Error),
}

pub struct RecordingStore {
    dir: PathBuf,
    /// Ids this process is writing now; any other sidecar that says `recording` was cut short.
    active: Mutex<HashSet<String>>,
    /// Bumped whenever a recording starts, ends or is deleted: a cluster node republishes its
    /// list when this moved (cluster/recordings.rs).
    changes: AtomicU64,
}

impl RecordingStore {
    /// Uses `dir`, creating it if needed.
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the recordings directory {}", dir.display()))?;
        Ok(RecordingStore {
            dir: dir.to_path_buf(),
            active: Mutex::new(HashSet::new()),
            changes: AtomicU64::new(0),
        })
    }

    /// Reserves a file for a new recording of `room` starting `now`, and writes its sidecar.
    pub fn begin(
        &self,
        room: &RoomId,
        codec: VideoCodec,
        now: SystemTime,
    ) -> Result<RecordingInfo> {
        let stamp = file_stamp(now)?;
        let extension = media_extension(codec);
        let mut active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        // Two recordings of one room within a second get a counter; create_new never overwrites.
        for attempt in 1..100u32 {
            let id = if attempt == 1 {
                format!("{room}_{stamp}")
            } else {
                format!("{room}_{stamp}-{attempt}")
            };
            let file = format!("{id}.{extension}");
            // The id is taken once its sidecar or its media file exists (in either format).
            let taken = self.sidecar_path(&id).exists()
                || [VideoCodec::Vp8, VideoCodec::H264].iter().any(|c| {
                    self.dir
                        .join(format!("{id}.{}", media_extension(*c)))
                        .exists()
                });
            if taken {
                continue;
            }
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(self.dir.join(&file))
            {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating {} in {}", file, self.dir.display()))
                }
            }
            let info = RecordingInfo {
                id: id.clone(),
                room: room.to_string(),
                file,
                codec,
                started_at: rfc3339(now)?,
                ended_at: None,
                status: RecordingStatus::Recording,
                error: None,
                duration_seconds: None,
                size_bytes: 0,
                started: Some(now),
            };
            self.write_sidecar(&info)?;
            active.insert(id);
            return Ok(info);
        }
        anyhow::bail!("too many recordings of {room} started within one second")
    }

    /// How many times the list changed since the store opened.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    pub fn media_path(&self, info: &RecordingInfo) -> PathBuf {
        self.dir.join(&info.file)
    }

    /// Records how a recording ended and releases it.
    pub fn end(
        &self,
        info: &mut RecordingInfo,
        now: SystemTime,
        outcome: Result<(), String>,
    ) -> Result<()> {
        info.ended_at = Some(rfc3339(now)?);
        info.duration_seconds = info.started.map(|s| seconds_between(s, now));
        match outcome {
            Ok(()) => info.status = RecordingStatus::Complete,
            Err(e) => {
                info.status = RecordingStatus::Failed;
                info.error = Some(e);
            }
        }
        self.active
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&info.id);
        self.write_sidecar(info)
    }

    /// Every recording in the directory, newest first.
    pub fn list(&self) -> Result<Vec<RecordingInfo>> {
        let mut out = Vec::new();
        let entries = std::fs::read_dir(&self.dir)
            .with_context(|| format!("reading {}", self.dir.display()))?;
        for entry in entries.flatten() {
            let path = entry.path();
            if path.extension().and_then(|e| e.to_str()) != Some(SIDECAR_EXTENSION) {
                continue;
            }
            let Some(id) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            if validate_id(id).is_err() {
                continue;
            }
            match self.read(id) {
                Ok(info) => out.push(info),
                Err(e) => {
                    tracing::warn!(file = %path.display(), "unreadable recording sidecar: {e:#}")
                }
            }
        }
        out.sort_by(|a, b| b.started_at.cmp(&a.started_at).then(b.id.cmp(&a.id)));
        Ok(out)
    }

    pub fn get(&self, id: &str) -> Result<RecordingInfo, StoreError> {
        validate_id(id)?;
        if !self.sidecar_path(id).exists() {
            return Err(StoreError::NotFound(id.to_string()));
        }
        Ok(self.read(id)?)
    }

    /// Deletes a finished recording (media file and sidecar).
    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let info = self.get(id)?;
        if info.status == RecordingStatus::Recording {
            return Err(StoreError::Active(id.to_string()));
        }
        match std::fs::remove_file(self.media_path(&info)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(StoreError::Io(
                    anyhow::Error::new(e).context(format!("deleting {}", info.file)),
                ))
            }
        }
        self.changes.fetch_add(1, Ordering::Relaxed);
        std::fs::remove_file(self.sidecar_path(id))
            .with_context(|| format!("deleting the sidecar of {id}"))?;
        Ok(())
    }

    fn read(&self, id: &str) -> Result<RecordingInfo> {
        let path = self.sidecar_path(id);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut info: RecordingInfo =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        // The sidecar names its file; accept only the name this store would have given it.
        if info.id != id || info.file != format!("{id}.{}", media_extension(info.codec)) {
            anyhow::bail!("{} does not describe {id}", path.display());
        }
        info.started = parse_rfc3339(&info.started_at);
        let media = std::fs::metadata(self.media_path(&info)).ok();
        info.size_bytes = media.as_ref().map(|m| m.len()).unwrap_or(0);
        if info.status == RecordingStatus::Recording {
            let active = self
                .active
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .contains(id);
            if active {
                info.duration_seconds = info.started.map(|s| seconds_between(s, SystemTime::now()));
            } else {
                info.status = RecordingStatus::Interrupted;
                info.duration_seconds = match (info.started, media.and_then(|m| m.modified().ok()))
                {
                    (Some(s), Some(last_write)) => Some(seconds_between(s, last_write)),
                    _ => None,
                };
            }
        }
        Ok(info)
    }

    fn sidecar_path(&self, id: &str) -> PathBuf {
        self.dir.join(format!("{id}.{SIDECAR_EXTENSION}"))
    }

    /// Written to a temporary file and renamed, so a crash never leaves half a sidecar.
    fn write_sidecar(&self, info: &RecordingInfo) -> Result<()> {
        let path = self.sidecar_path(&info.id);
        let temporary = self.dir.join(format!(".{}.tmp", info.id));
        let text = serde_json::to_string_pretty(info).context("serialising a sidecar")?;
        std::fs::write(&temporary, text)
            .with_context(|| format!("writing {}", temporary.display()))?;
        let renamed = std::fs::rename(&temporary, &path)
            .with_context(|| format!("renaming {} into place", temporary.display()));
        self.changes.fetch_add(1, Ordering::Relaxed);
        renamed
    }
}

/// Recording ids are `ROOM_STAMP[-N]`: the room-name alphabet only, so never a path.
pub fn validate_id(id: &str) -> Result<(), StoreError> {
    let fine = !id.is_empty()
        && id.len() <= MAX_ID_LEN
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if fine {
        Ok(())
    } else {
        Err(StoreError::BadId(id.chars().take(MAX_ID_LEN).collect()))
    }
}

/// WebM is Matroska limited to VP8/VP9/AV1 and Vorbis/Opus: an H.264 room records to .mkv.
pub fn media_extension(codec: VideoCodec) -> &'static str {
    match codec {
        VideoCodec::Vp8 => "webm",
        VideoCodec::H264 => "mkv",
    }
}

fn seconds_between(from: SystemTime, to: SystemTime) -> f64 {
    let seconds = to
        .duration_since(from)
        .unwrap_or(Duration::ZERO)
        .as_secs_f64();
    (seconds * 10.0).round() / 10.0
}

fn utc(t: SystemTime) -> Result<time::OffsetDateTime> {
    let since_epoch = t
        .duration_since(UNIX_EPOCH)
        .context("the clock is before 1970")?;
    time::OffsetDateTime::from_unix_timestamp_nanos(since_epoch.as_nanos() as i128)
        .context("the clock is out of range")
}

pub(crate) fn file_stamp(t: SystemTime) -> Result<String> {
    let format = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    utc(t)?.format(&format).context("formatting a time")
}

/// RFC 3339 in UTC with milliseconds: durations are computed back from it.
pub fn rfc3339(t: SystemTime) -> Result<String> {
    let since_epoch = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let millis = UNIX_EPOCH + Duration::from_millis(since_epoch.as_millis() as u64);
    let format = time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    );
    utc(millis)?.format(&format).context("formatting a time")
}

fn parse_rfc3339(text: &str) -> Option<SystemTime> {
    let t =
        time::OffsetDateTime::parse(text, &time::format_description::well_known::Rfc3339).ok()?;
    let nanos = u64::try_from(t.unix_timestamp_nanos()).ok()?;
    Some(UNIX_EPOCH + Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn store() -> (tempdir::Dir, RecordingStore) {
        let dir = tempdir::Dir::new();
        let store = RecordingStore::open(dir.path()).unwrap();
        (dir, store)
    }

    /// A scratch directory removed on drop (std only; a test helper, not worth a crate).
    mod tempdir {
        pub struct Dir(std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
                let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let path = std::env::temp_dir()
                    .join(format!("mcu-recordings-test-{}-{n}", std::process::id()));
                let _ = std::fs::remove_dir_all(&path);
                Dir(path)
            }
            pub fn path(&self) -> &std::path::Path {
                &self.0
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn at(seconds: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(seconds)
    }

    #[test]
    fn files_are_named_from_the_room_and_utc_start_time_and_never_overwritten() {
        let (_dir, store) = store();
        let room = RoomId::new("standup").unwrap();
        // 2026-11-24T09:30:00Z
        let first = store
            .begin(&room, VideoCodec::Vp8, at(1_795_512_600))
            .unwrap();
        assert_eq!(first.id, "standup_20261124T093000Z");
        assert_eq!(first.file, "standup_20261124T093000Z.webm");
        assert_eq!(first.started_at, "2026-11-24T09:30:00.000Z");
        let second = store
            .begin(&room, VideoCodec::H264, at(1_795_512_600))
            .unwrap();
        assert_eq!(second.id, "standup_20261124T093000Z-2");
        assert_eq!(second.file, "standup_20261124T093000Z-2.mkv");
    }

    #[test]
    fn a_recording_is_listed_while_written_then_complete_with_its_duration() {
        let (_dir, store) = store();
        let room = RoomId::new("a").unwrap();
        let mut info = store.begin(&room, VideoCodec::Vp8, at(1_000)).unwrap();
        std::fs::write(store.media_path(&info), b"12345").unwrap();
        let listed = store.list().unwrap();
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].status, RecordingStatus::Recording);
        assert_eq!(listed[0].size_bytes, 5);
        store.end(&mut info, at(1_012), Ok(())).unwrap();
        let done = store.get(&info.id).unwrap();
        assert_eq!(done.status, RecordingStatus::Complete);
        assert_eq!(done.duration_seconds, Some(12.0));
        assert_eq!(done.ended_at.as_deref(), Some("1970-01-01T00:16:52.000Z"));
    }

    #[test]
    fn a_recording_left_behind_by_another_process_is_interrupted() {
        let (dir, store) = store();
        let info = store
            .begin(
                &RoomId::new("a").unwrap(),
                VideoCodec::Vp8,
                SystemTime::now(),
            )
            .unwrap();
        let restarted = RecordingStore::open(dir.path()).unwrap();
        let seen = restarted.get(&info.id).unwrap();
        assert_eq!(seen.status, RecordingStatus::Interrupted);
        assert!(seen.duration_seconds.is_some());
    }

    #[test]
    fn ids_that_could_name_another_file_are_refused() {
        let (_dir, store) = store();
        for id in [
            "../etc/passwd",
            "a/b",
            "..",
            "",
            "a.json",
            "x\0y",
            &"a".repeat(101),
        ] {
            assert!(
                matches!(store.get(id), Err(StoreError::BadId(_))),
                "{id:?} accepted"
            );
        }
        assert!(matches!(store.get("nope"), Err(StoreError::NotFound(_))));
    }

    #[test]
    fn an_active_recording_cannot_be_deleted_a_finished_one_can() {
        let (_dir, store) = store();
        let mut info = store
            .begin(&RoomId::new("a").unwrap(), VideoCodec::Vp8, at(5))
            .unwrap();
        assert!(matches!(store.delete(&info.id), Err(StoreError::Active(_))));
        store
            .end(&mut info, at(6), Err("disk full".into()))
            .unwrap();
        assert_eq!(store.get(&info.id).unwrap().status, RecordingStatus::Failed);
        store.delete(&info.id).unwrap();
        assert!(!store.media_path(&info).exists());
        assert!(matches!(store.get(&info.id), Err(StoreError::NotFound(_))));
    }
}
