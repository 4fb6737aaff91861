//! Test harness: a real `mcu serve` process on loopback, and small helpers to wait on conditions
//! with a deadline (never a bare sleep standing in for a check).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

impl Server {
    /// Starts `mcu serve` on a free loopback port with `extra` arguments; its log goes to
    /// target/test-logs/<name>.log.
    pub fn start(name: &str, extra: &[&str]) -> Server {
        Self::start_with_env(name, extra, &[])
    }

    /// As `start`, with extra environment variables for the server.
    pub fn start_with_env(name: &str, extra: &[&str], env: &[(&str, &str)]) -> Server {
        let logs = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("test-logs");
        std::fs::create_dir_all(&logs).expect("creating the test log directory");
        let log = logs.join(format!("{name}.log"));
        let log_file = std::fs::File::create(&log).expect("creating the server log");
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcu"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("RUST_LOG", "info,webrtc=error,webrtc_ice=error")
            .envs(env.iter().copied())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(log_file))
            .spawn()
            .expect("starting mcu serve");
        let stdout = child.stdout.take().expect("stdout is piped");
        let mut line = String::new();
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the server's first line");
        let addr = line
            .trim()
            .strip_prefix("listening on http://")
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; see {}", log.display()))
            .parse()
            .expect("the server prints its address");
        Server { child, addr, log }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// GET a path; returns the status code and the body.
    pub async fn get(&self, path: &str) -> (u16, String) {
        let mut stream = tokio::net::TcpStream::connect(self.addr)
            .await
            .expect("connecting to the server");
        let request = format!(
            "GET {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        stream
            .write_all(request.as_bytes())
            .await
            .expect("sending a request");
        let mut response = Vec::new();
        stream
            .read_to_end(&mut response)
            .await
            .expect("reading a response");
        let text = String::from_utf8_lossy(&response).to_string();
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_string())
            .unwrap_or_default();
        (status, body)
    }

    /// The server's view of its rooms (/api/v1/rooms).
    pub async fn rooms(&self) -> serde_json::Value {
        let (status, body) = self.get("/api/v1/rooms").await;
        assert_eq!(status, 200, "GET /api/v1/rooms: {body}");
        let body = dechunk(&body);
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("bad JSON {body:?}: {e}"))
    }

    pub async fn room(&self, name: &str) -> Option<serde_json::Value> {
        let rooms = self.rooms().await;
        rooms["rooms"]
            .as_array()?
            .iter()
            .find(|r| r["room"] == name)
            .cloned()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Undoes HTTP/1.1 chunked transfer encoding if the body uses it.
fn dechunk(body: &str) -> String {
    let trimmed = body.trim_start();
    if trimmed.starts_with('{') {
        return body.to_string();
    }
    let mut out = String::new();
    let mut rest = body;
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `check` every 100 ms until it returns `Some`, or panics with `what` after `deadline`.
pub async fn wait_for<T>(
    what: &str,
    deadline: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let end = Instant::now() + deadline;
    loop {
        if let Some(v) = check() {
            return v;
        }
        if Instant::now() > end {
            panic!("timed out after {deadline:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

pub fn init() {
    gstreamer::init().expect("GStreamer initialises");
}
