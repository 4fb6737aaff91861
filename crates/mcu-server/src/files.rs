//! Where the bytes of a room's shared files live: in a directory of the room's own under the
//! system's temporary directory, removed when the room ends; or, with `--keep-files DIR`, in DIR,
//! where they stay, each beside a `.json` sidecar naming what it is. Either way the server names
//! the files itself (`f3`, `standup_20261201T093000Z_f3.bin`): a name a participant gave is shown
//! to people and written into the sidecar, and never becomes part of a path.

use std::fs::{File, OpenOptions};
use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use anyhow::{Context, Result};

use crate::ids::RoomId;
use crate::protocol::FileInfo;

/// Removes the temporary file directories that servers which are no longer running left behind
/// (a crash or a `kill -9` gives a room no chance to clean up). Returns how many went.
pub fn sweep_stale_temporary() -> usize {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return 0;
    };
    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .and_then(|n| n.strip_prefix("mcu-files-"))
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        let alive = Path::new("/proc").join(pid.to_string()).exists();
        if !alive && std::fs::remove_dir_all(entry.path()).is_ok() {
            removed += 1;
        }
    }
    removed
}

/// This server's directory of temporary shared files: `mcu-files-<pid>` in the system's
/// temporary directory.
fn own_temporary() -> PathBuf {
    std::env::temp_dir().join(format!("mcu-files-{}", std::process::id()))
}

/// Removes this server's temporary directory at shutdown (each room removed its own already).
pub fn remove_own_temporary() {
    let _ = std::fs::remove_dir_all(own_temporary());
}

/// Creates `dir` (and its parents) readable by this user only, and refuses one that someone
/// else made: the name in /tmp is predictable, so another local user could have created it (or
/// a link by that name) to read the files or redirect them.
fn create_private_dir(dir: &Path) -> Result<()> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .with_context(|| format!("creating {} for shared files", dir.display()))?;
    let meta =
        std::fs::symlink_metadata(dir).with_context(|| format!("reading {}", dir.display()))?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        anyhow::bail!(
            "{} exists and is not a directory of this user's: remove it",
            dir.display()
        );
    }
    if meta.permissions().mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
    }
    Ok(())
}

pub struct FileStore {
    dir: PathBuf,
    room: RoomId,
    /// Files stay after the room (the `--keep-files` directory) instead of going with it.
    keep: bool,
}

impl FileStore {
    /// The store of one room's lifetime; `generation` tells rooms of the same name apart.
    pub fn open(room: &RoomId, keep_dir: Option<&Path>, generation: u64) -> Result<Self> {
        let (dir, keep) = match keep_dir {
            Some(dir) => (dir.to_path_buf(), true),
            None => (own_temporary().join(format!("{room}-{generation}")), false),
        };
        if keep {
            std::fs::create_dir_all(&dir)
                .with_context(|| format!("creating {} for shared files", dir.display()))?;
        } else {
            create_private_dir(&own_temporary())?;
            create_private_dir(&dir)?;
        }
        Ok(FileStore {
            dir,
            room: room.clone(),
            keep,
        })
    }

    /// Creates the file for an accepted upload: never one that exists already.
    pub fn create(&self, info: &FileInfo) -> Result<(File, PathBuf)> {
        let stamp = crate::recordings::file_stamp(SystemTime::now())?;
        for attempt in 1..100u32 {
            let path = self.path_for(info.file_id, &stamp, attempt);
            match OpenOptions::new().write(true).create_new(true).open(&path) {
                Ok(file) => return Ok((file, path)),
                Err(e) if e.kind() == ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(e).with_context(|| format!("creating {}", path.display()));
                }
            }
        }
        anyhow::bail!(
            "no free file name for file {} in {}",
            info.file_id,
            self.dir.display()
        )
    }

    fn path_for(&self, id: u32, stamp: &str, attempt: u32) -> PathBuf {
        let counter = if attempt == 1 {
            String::new()
        } else {
            format!("-{attempt}")
        };
        if self.keep {
            self.dir
                .join(format!("{}_{stamp}_f{id}{counter}.bin", self.room))
        } else {
            self.dir.join(format!("f{id}{counter}"))
        }
    }

    /// The upload is complete: in the keep directory, a sidecar says what the file is.
    pub fn finish(&self, path: &Path, info: &FileInfo, sha256: &str) -> Result<()> {
        if !self.keep {
            return Ok(());
        }
        let sidecar = path.with_extension("json");
        let text = serde_json::to_string_pretty(&serde_json::json!({
            "room": self.room.as_str(),
            "name": info.name,
            "size": info.size,
            "mime": info.mime,
            "from_name": info.from_name,
            "at": info.at,
            "sha256": sha256,
            "file": path.file_name().map(|n| n.to_string_lossy().to_string()),
        }))?;
        std::fs::write(&sidecar, text).with_context(|| format!("writing {}", sidecar.display()))
    }

    /// An upload that failed leaves nothing behind.
    pub fn discard(&self, path: &Path) {
        let _ = std::fs::remove_file(path);
    }

    /// The room ended: its temporary files go (kept files stay).
    pub fn close(&self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    #[cfg(test)]
    fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(id: u32, name: &str) -> FileInfo {
        FileInfo {
            file_id: id,
            name: name.into(),
            size: 3,
            mime: None,
            from: "p1".into(),
            from_name: "Ada".into(),
            at: "2026-12-01T10:00:00Z".into(),
        }
    }

    #[test]
    fn temporary_files_are_named_by_id_and_go_with_the_room() {
        let room = RoomId::new("files-test").unwrap();
        let store = FileStore::open(&room, None, 424_242).unwrap();
        let (_, path) = store.create(&info(1, "../../etc/passwd")).unwrap();
        assert_eq!(path.file_name().unwrap(), "f1");
        // Private: only this user may list or read them, the server's directory included.
        use std::os::unix::fs::PermissionsExt;
        for dir in [store.dir(), &own_temporary()] {
            let mode = std::fs::metadata(dir).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o700, "{}", dir.display());
        }
        assert!(path.starts_with(store.dir()));
        // A second file with the same id never overwrites the first.
        let (_, again) = store.create(&info(1, "x")).unwrap();
        assert_ne!(again, path);
        store.close();
        assert!(!store.dir().exists());
    }

    #[test]
    fn directories_of_servers_no_longer_running_are_swept() {
        // Pid 0 is never a process of ours; our own directory stays.
        let stale = std::env::temp_dir().join("mcu-files-0");
        let ours = std::env::temp_dir().join(format!("mcu-files-{}", std::process::id()));
        std::fs::create_dir_all(stale.join("room-1")).unwrap();
        std::fs::create_dir_all(&ours).unwrap();
        assert!(sweep_stale_temporary() >= 1);
        assert!(!stale.exists());
        assert!(ours.exists());
    }

    #[test]
    fn kept_files_stay_with_a_sidecar_naming_what_they_are() {
        let dir = std::env::temp_dir().join(format!("mcu-keep-test-{}", std::process::id()));
        let room = RoomId::new("standup").unwrap();
        let store = FileStore::open(&room, Some(&dir), 1).unwrap();
        let shared = info(7, "notes/../report.pdf");
        let (_, path) = store.create(&shared).unwrap();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        assert!(
            name.starts_with("standup_") && name.ends_with("_f7.bin"),
            "{name}"
        );
        std::fs::write(&path, b"abc").unwrap();
        store.finish(&path, &shared, "ba7816bf").unwrap();
        store.close();
        assert!(path.exists(), "kept after the room");
        let sidecar: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        assert_eq!(sidecar["name"], "notes/../report.pdf");
        assert_eq!(sidecar["sha256"], "ba7816bf");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
