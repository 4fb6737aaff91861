//! Test harness: a real `mcu serve` process on loopback, and small helpers to wait on conditions
//! with a deadline (never a bare sleep standing in for a check).

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mcu_probe::probe::{Crowd, ParticipantReport};
use mcu_server::codec::VideoCodec;

pub mod recording;
pub mod redis;

/// A bare WebSocket to the server, as a test's own client holds it.
pub type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Sends `join` as `name` on a bare WebSocket to `room` and returns the answer (`joined`,
/// `redirect` or `error`, skipping anything else), with the socket: closing it leaves a room
/// that was joined.
pub async fn bare_join(server: &Server, room: &str, name: &str) -> (serde_json::Value, Socket) {
    use futures_util::{SinkExt, StreamExt};
    use tokio_tungstenite::tungstenite::Message;
    let (mut ws, _) = tokio_tungstenite::connect_async(server.ws_url(room))
        .await
        .expect("the upgrade");
    let join = serde_json::json!({"type": "join", "name": name}).to_string();
    ws.send(Message::text(join))
        .await
        .expect("sending the join");
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(20), ws.next())
            .await
            .expect("an answer within 20 s");
        let Some(Ok(Message::Text(text))) = frame else {
            panic!("closed before answering the join to {room}: {frame:?}");
        };
        let json: serde_json::Value = serde_json::from_str(&text).expect("JSON");
        if ["joined", "redirect", "error"].contains(&json["type"].as_str().unwrap_or_default()) {
            return (json, ws);
        }
    }
}

pub struct Server {
    child: Child,
    pub addr: SocketAddr,
    pub log: PathBuf,
    /// This server's recordings directory (fresh for each test, under target/).
    pub recordings: PathBuf,
}

/// An HTTP answer.
pub struct Reply {
    pub status: u16,
    pub headers: warp::http::HeaderMap,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    /// The `error.code` of a JSON error answer.
    pub fn error_code(&self) -> String {
        self.json()["error"]["code"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    }
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
        let recordings = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join("test-recordings")
            .join(name);
        let _ = std::fs::remove_dir_all(&recordings);
        let mut child = Command::new(env!("CARGO_BIN_EXE_mcu"))
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("MCU_TEST_LOG")
                    .unwrap_or_else(|_| "info,webrtc=error,webrtc_ice=error".into()),
            )
            // Never the repository's own ./recordings; a test's own setting overrides this.
            .env("MCU_RECORDINGS_DIR", &recordings)
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
            .or_else(|| line.trim().strip_prefix("listening on https://"))
            .unwrap_or_else(|| panic!("unexpected first line {line:?}; see {}", log.display()))
            .parse()
            .expect("the server prints its address");
        Server {
            child,
            addr,
            log,
            recordings,
        }
    }

    /// The server's process id (to stop or continue it with a signal).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the server with SIGKILL: no chance to finish anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Stops the server with SIGTERM and waits for it to exit; returns its exit status.
    pub fn terminate(&mut self) -> Option<std::process::ExitStatus> {
        self.sigterm_and_wait(Duration::from_secs(15))
    }

    /// Waits up to `deadline` for the server to exit by itself; its exit status, or `None`.
    pub fn wait_exit(&mut self, deadline: Duration) -> Option<std::process::ExitStatus> {
        let end = Instant::now() + deadline;
        while Instant::now() < end {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// `None` if it has not exited within `grace` (or had exited already and was reaped).
    fn sigterm_and_wait(&mut self, grace: Duration) -> Option<std::process::ExitStatus> {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = Instant::now() + grace;
        while Instant::now() < deadline {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        None
    }

    /// Sends an HTTP request with an empty body.
    pub async fn request(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
        self.request_with_body(method, path, headers, Vec::new())
            .await
    }

    /// Sends an HTTP request with `body`.
    pub async fn request_with_body(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Reply {
        let mut request = warp::http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.url()));
        for (k, v) in headers {
            request = request.header(*k, *v);
        }
        let request = request
            .body(warp::hyper::Body::from(body))
            .expect("a valid request");
        let response = warp::hyper::Client::new()
            .request(request)
            .await
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let body = warp::hyper::body::to_bytes(response.into_body())
            .await
            .expect("reading the body")
            .to_vec();
        Reply {
            status,
            headers,
            body,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn ws_url(&self, room: &str) -> String {
        format!("ws://{}/ws/{room}", self.addr)
    }

    /// The server's view of its rooms (/api/v1/rooms).
    pub async fn rooms(&self) -> serde_json::Value {
        let reply = self.request("GET", "/api/v1/rooms", &[]).await;
        assert_eq!(
            reply.status,
            200,
            "GET /api/v1/rooms: {}",
            String::from_utf8_lossy(&reply.body)
        );
        reply.json()
    }

    pub async fn room(&self, name: &str) -> Option<serde_json::Value> {
        let rooms = self.rooms().await;
        rooms["rooms"]
            .as_array()?
            .iter()
            .find(|r| r["room"] == name)
            .cloned()
    }

    /// The admin view of `room` once `ready` holds for it; panics after `deadline`.
    pub async fn wait_for_room(
        &self,
        room: &str,
        deadline: Duration,
        ready: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let end = Instant::now() + deadline;
        loop {
            let view = self.room(room).await;
            if let Some(view) = view.filter(|v| ready(v)) {
                return view;
            }
            assert!(
                Instant::now() < end,
                "room {room} not as expected within {deadline:?}: {:#}",
                self.room(room).await.unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Server {
    /// Waits until `room` is no longer open on this server; panics after `deadline`.
    pub async fn wait_for_room_gone(&self, room: &str, deadline: Duration) {
        let end = Instant::now() + deadline;
        while self.room(room).await.is_some() {
            assert!(
                Instant::now() < end,
                "room {room} still open after {deadline:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Ok(Some(_)) = self.child.try_wait() {
            return;
        }
        if self.sigterm_and_wait(Duration::from_secs(5)).is_some() {
            return;
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Whether `member` has received a room notice (recording, mute, removal) that `is` describes.
pub fn was_told(
    member: &mcu_probe::probe::Participant,
    is: impl Fn(&mcu_server::protocol::ServerMessage) -> bool,
) -> bool {
    member.observe().notices.iter().any(is)
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

/// How long to wait for a conference to settle (everyone connected, first keyframes decoded).
pub const SETTLE: Duration = Duration::from_secs(15);
pub const MIN_FPS: f64 = 20.0;

/// Everyone's checks over the last second, once every check passes; `None` while any fails.
pub fn all_ok(crowd: &Crowd) -> Option<Vec<ParticipantReport>> {
    let now = Instant::now();
    let reports = crowd.evaluate((now - Duration::from_secs(1), now), MIN_FPS);
    let tiles_expected = crowd.members.len();
    let complete = reports
        .iter()
        .all(|r| r.ok && r.tiles.len() == tiles_expected && r.tones.len() == tiles_expected);
    complete.then_some(reports)
}

/// Waits until every check passes for everyone; on timeout, fails with the last reports.
pub async fn settle(crowd: &Crowd, what: &str) -> Vec<ParticipantReport> {
    let deadline = Instant::now() + SETTLE;
    loop {
        if let Some(reports) = all_ok(crowd) {
            return reports;
        }
        if Instant::now() > deadline {
            let now = Instant::now();
            let reports = crowd.evaluate((now - Duration::from_secs(1), now), MIN_FPS);
            panic!("timed out waiting for {what}: {reports:#?}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A participant whose camera looks like a camera to the encoder (a still texture and moving
/// sensor noise around its colour): flat colours compress to ~100 kbit/s and would hide every
/// bandwidth or CPU problem.
pub fn camera_like(index: usize) -> mcu_probe::probe::Spec {
    let mut spec = mcu_probe::probe::spec_for(index, VideoCodec::Vp8);
    spec.content = mcu_probe::probe::Content::CameraLike;
    spec
}

/// `n` camera-like participants in `room`.
pub async fn camera_like_crowd(server: &Server, room: &str, n: usize) -> Crowd {
    let mut crowd = Crowd::new(&server.url(), room).expect("creating the probe crowd");
    for i in 0..n {
        crowd.join_with(camera_like(i)).await.expect("joining");
    }
    crowd
}

pub async fn crowd_of(server: &Server, room: &str, n: usize) -> Crowd {
    let mut crowd = Crowd::new(&server.url(), room).expect("creating the probe crowd");
    for _ in 0..n {
        crowd.join(VideoCodec::Vp8).await.expect("joining");
    }
    crowd
}
