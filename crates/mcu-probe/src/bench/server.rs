//! A server for the bench to measure when no --url is given: this very binary's `serve` on a
//! free loopback port, with its log in a file and its recordings in a scratch directory.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A server on a loaded 2-core machine prints its address within a second or two.
const START_DEADLINE: Duration = Duration::from_secs(30);

pub struct OwnServer {
    pub url: String,
    pub pid: u32,
    child: tokio::process::Child,
    scratch: PathBuf,
}

impl OwnServer {
    pub async fn start() -> Result<OwnServer> {
        let exe = std::env::current_exe().context("finding this program")?;
        let scratch = std::env::temp_dir().join(format!("mcu-bench-server-{}", std::process::id()));
        std::fs::create_dir_all(&scratch)
            .with_context(|| format!("creating {}", scratch.display()))?;
        let log = scratch.join("server.log");
        let log_file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = tokio::process::Command::new(exe);
        // The server's defaults, whatever this shell sets (a JWT secret would refuse the
        // bench's participants, a fixed port could be taken).
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("MCU_") {
                command.env_remove(key);
            }
        }
        let mut child = command
            // No room limit: finding how many rooms fit is what the bench is for. And no
            // per-address limits: every synthetic participant comes from 127.0.0.1.
            .args([
                "serve",
                "--listen",
                "127.0.0.1:0",
                "--max-rooms",
                "0",
                "--max-connections-per-address",
                "0",
                "--max-new-rooms-per-address",
                "0",
                // The bench reads a frame code drawn over the whole of each sender's picture:
                // cropped to fill a tile of another shape (two side by side, 640×720), its
                // edge cells would be cut and the tile unreadable. Letterboxed it stays whole;
                // a 16:9 tile (a 4×4 grid's) is the same either way.
                "--fit",
                "letterbox",
            ])
            .env("MCU_RECORDINGS_DIR", scratch.join("recordings"))
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .kill_on_drop(true)
            .spawn()
            .context("starting `mcu serve`")?;
        let pid = child.id().context("the server exited at once")?;
        let stdout = child.stdout.take().context("no stdout from the server")?;
        let mut lines = BufReader::new(stdout).lines();
        let address = tokio::time::timeout(START_DEADLINE, async {
            while let Ok(Some(line)) = lines.next_line().await {
                if let Some(url) = line.strip_prefix("listening on ") {
                    return Some(url.trim().to_string());
                }
            }
            None
        })
        .await;
        let url = match address {
            Ok(Some(url)) => url,
            _ => bail!(
                "the bench's server did not start; its log is {}",
                log.display()
            ),
        };
        // Keep reading what it prints, so it never writes into a closed pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(OwnServer {
            url,
            pid,
            child,
            scratch,
        })
    }
}

impl Drop for OwnServer {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.scratch);
    }
}
