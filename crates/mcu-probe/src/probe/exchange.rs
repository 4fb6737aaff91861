//! `mcu probe --chat` and `--file BYTES`: the probe's participants talk and share while their
//! media is measured. With `--chat`, each sends a few messages and checks that it was shown
//! everyone's, in the one order the whole room shares. With `--file`, the first participant
//! shares a file of random bytes and every other one downloads it and checks its SHA-256; the
//! composite's frame rate during the transfer is reported beside it.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::member::Participant;
use crate::heard::lock;
use crate::sharing::{random_bytes, sha256_hex};

/// Chat messages each participant sends.
pub const CHAT_MESSAGES: usize = 3;
/// Between one participant's message and the next one's: people talking, not a script flooding
/// (which the server's rate limit would rightly cut off).
const CHAT_SPACING: Duration = Duration::from_millis(150);
/// How long the chat may take to reach everyone, after the last message went.
const CHAT_DEADLINE: Duration = Duration::from_secs(10);
/// Time allowed to move a file, on top of what its size takes at the server's default pace.
const FILE_SLACK: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Serialize)]
pub struct ChatCheck {
    pub participant: String,
    pub sent: usize,
    /// Messages it was shown, its own included.
    pub received: usize,
    pub expected: usize,
    /// Shown in the same order as the first participant was.
    pub same_order: bool,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileCheck {
    pub participant: String,
    pub bytes: usize,
    /// The SHA-256 of what arrived matches what the sender sent.
    pub intact: bool,
    pub seconds: f64,
    /// Composite frames per second this participant received during the transfer.
    pub fps_during: f64,
    pub error: Option<String>,
    pub ok: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct FileReport {
    pub bytes: usize,
    pub sha256: String,
    pub sender: String,
    pub upload_seconds: f64,
    pub receivers: Vec<FileCheck>,
    pub error: Option<String>,
    pub ok: bool,
}

/// Every participant sends `CHAT_MESSAGES` messages, round by round; then each one's view is
/// checked against the first one's.
pub async fn chat(members: &[Participant]) -> Vec<ChatCheck> {
    let mut send_errors = vec![None; members.len()];
    for round in 1..=CHAT_MESSAGES {
        for (i, m) in members.iter().enumerate() {
            let text = format!("message {round} of {CHAT_MESSAGES} from {}", m.spec().name);
            if let Err(e) = m.send_chat(&text).await {
                send_errors[i] = Some(format!("{e:#}"));
            }
            tokio::time::sleep(CHAT_SPACING).await;
        }
    }
    let expected = members.len() * CHAT_MESSAGES;
    let views = |members: &[Participant]| -> Vec<Vec<(String, String)>> {
        members
            .iter()
            .map(|m| {
                m.sharing_state().map_or_else(Vec::new, |state| {
                    lock(&state)
                        .chats
                        .iter()
                        .map(|c| (c.from.clone(), c.text.clone()))
                        .collect()
                })
            })
            .collect()
    };
    let deadline = Instant::now() + CHAT_DEADLINE;
    let mut seen = views(members);
    while seen.iter().any(|v| v.len() < expected) && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = views(members);
    }
    let reference = seen.first().cloned().unwrap_or_default();
    members
        .iter()
        .zip(&seen)
        .zip(send_errors)
        .map(|((m, view), send_error)| {
            let same_order = *view == reference;
            ChatCheck {
                participant: m.id().to_string(),
                sent: if send_error.is_none() {
                    CHAT_MESSAGES
                } else {
                    0
                },
                received: view.len(),
                expected,
                same_order,
                ok: send_error.is_none() && view.len() == expected && same_order,
            }
        })
        .collect()
}

/// The first member shares `bytes` random bytes; every other member downloads and checks them.
pub async fn file(members: &[Participant], bytes: usize, rate: u64) -> FileReport {
    let content = random_bytes(bytes);
    let sha256 = sha256_hex(&content);
    let mut report = FileReport {
        bytes,
        sha256: sha256.clone(),
        sender: members
            .first()
            .map(|m| m.id().to_string())
            .unwrap_or_default(),
        upload_seconds: 0.0,
        receivers: Vec::new(),
        error: None,
        ok: false,
    };
    let Some((sender, receivers)) = members.split_first() else {
        report.error = Some("no participant to share from".into());
        return report;
    };
    let transfer_time = Duration::from_secs_f64(bytes as f64 / rate.max(1) as f64);
    let started = Instant::now();
    let file_id = match sender.share_file("probe.bin", &content).await {
        Ok(id) => id,
        Err(e) => {
            report.error = Some(format!("sharing: {e:#}"));
            return report;
        }
    };
    // Ready once the server has it all (and says so with its hash).
    let deadline = Instant::now() + transfer_time + FILE_SLACK;
    let announced = loop {
        let hash = sender.sharing_state().and_then(|state| {
            let s = lock(&state);
            s.files.get(&file_id).and_then(|f| f.sha256.clone())
        });
        if hash.is_some() || Instant::now() > deadline {
            break hash;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    report.upload_seconds = started.elapsed().as_secs_f64();
    match announced {
        Some(h) if h == sha256 => {}
        Some(h) => {
            report.error = Some(format!("the server stored another file (SHA-256 {h})"));
            return report;
        }
        None => {
            report.error = Some("the server never finished receiving the file".into());
            return report;
        }
    }
    let deadline = Instant::now() + transfer_time + FILE_SLACK;
    let fetches = receivers.iter().map(|r| async move {
        let from = Instant::now();
        let result = r.download(file_id, deadline).await;
        (r, from, Instant::now(), result)
    });
    for (r, from, to, result) in futures_util::future::join_all(fetches).await {
        let frames = r
            .observe()
            .frame_times
            .iter()
            .filter(|t| **t >= started && **t <= to)
            .count();
        let fps_during = frames as f64 / (to - started).as_secs_f64().max(1e-3);
        let (intact, error) = match &result {
            Ok(got) => (sha256_hex(got) == sha256, None),
            Err(e) => (false, Some(format!("{e:#}"))),
        };
        report.receivers.push(FileCheck {
            participant: r.id().to_string(),
            bytes: result.as_ref().map_or(0, Vec::len),
            intact,
            seconds: (to - from).as_secs_f64(),
            fps_during,
            error,
            ok: intact,
        });
    }
    report.ok = !report.receivers.is_empty() && report.receivers.iter().all(|r| r.ok);
    report
}
