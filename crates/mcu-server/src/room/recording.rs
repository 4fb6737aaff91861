//! The room's side of recording: starting and stopping the recorder on the room's pipeline,
//! keeping the recording's sidecar up to date, and telling the participants.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;

use super::Room;
use crate::protocol::{RecordingState, ServerMessage};
use crate::recordings::{RecordingInfo, RecordingStore};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("the room is already being recorded")]
    AlreadyRecording,
    #[error("the room is not being recorded")]
    NotRecording,
    #[error("the recording could not start: {0}")]
    Failed(String),
    #[error("the room has closed")]
    RoomClosed,
}

/// The recording a room is writing now.
pub(super) struct ActiveRecording {
    pub info: RecordingInfo,
    /// Tells this recorder's failure apart from an earlier one's late report.
    pub number: u64,
}

pub(super) type StopReply = oneshot::Sender<Result<RecordingInfo, RecordError>>;

impl Room {
    pub(super) fn start_recording(&mut self) -> Result<RecordingInfo, RecordError> {
        if self.recording.is_some() {
            return Err(RecordError::AlreadyRecording);
        }
        let mut info = self
            .store
            .begin(&self.id, self.codec, SystemTime::now())
            .map_err(|e| RecordError::Failed(format!("{e:#}")))?;
        self.recordings_started += 1;
        let number = self.recordings_started;
        let path = self.store.media_path(&info);
        if let Err(e) = self.pipeline.start_recording(&path, number) {
            let reason = format!("{e:#}");
            let _ = self
                .store
                .end(&mut info, SystemTime::now(), Err(reason.clone()));
            tracing::error!(room = %self.id, file = %path.display(), "recording could not start: {reason}");
            return Err(RecordError::Failed(reason));
        }
        tracing::info!(room = %self.id, file = %path.display(), "recording started");
        self.recording = Some(ActiveRecording {
            info: info.clone(),
            number,
        });
        self.broadcast(ServerMessage::Recording {
            state: RecordingState::Started,
            message: None,
        });
        Ok(info)
    }

    /// Stops taking media at once; the file is finished on a task of its own, which answers
    /// `reply` when the file is complete. The room waits for it before it closes.
    pub(super) fn stop_recording(&mut self, reply: Option<StopReply>) {
        let Some(active) = self.recording.take() else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(RecordError::NotRecording));
            }
            return;
        };
        let finish = self.pipeline.stop_recording();
        self.broadcast(ServerMessage::Recording {
            state: RecordingState::Stopped,
            message: None,
        });
        let store: Arc<RecordingStore> = self.store.clone();
        let room = self.id.clone();
        self.finishing.push(tokio::spawn(async move {
            let outcome = match finish {
                Some(finish) => finish.await.map_err(|e| format!("{e:#}")),
                None => Ok(()),
            };
            let mut info = active.info;
            match &outcome {
                Ok(()) => tracing::info!(%room, file = %info.file, "recording finished"),
                Err(e) => tracing::warn!(%room, file = %info.file, "recording ended badly: {e}"),
            }
            if let Err(e) = store.end(&mut info, SystemTime::now(), outcome) {
                tracing::error!(%room, file = %info.file, "could not update the recording's sidecar: {e:#}");
            }
            if let Some(reply) = reply {
                let _ = reply.send(Ok(info));
            }
        }));
    }

    /// The recorder failed (e.g. a full disk): the recording ends, the call goes on.
    pub(super) fn on_recorder_failed(&mut self, number: u64, error: String) {
        if self.recording.as_ref().map(|r| r.number) != Some(number) {
            return;
        }
        let Some(active) = self.recording.take() else {
            return;
        };
        self.pipeline.abort_recording();
        let mut info = active.info;
        tracing::error!(room = %self.id, file = %info.file, "recording failed, the call goes on: {error}");
        if let Err(e) = self
            .store
            .end(&mut info, SystemTime::now(), Err(error.clone()))
        {
            tracing::error!(room = %self.id, "could not update the recording's sidecar: {e:#}");
        }
        self.broadcast(ServerMessage::Recording {
            state: RecordingState::Failed,
            message: Some(error),
        });
    }

    /// The recording as the room view shows it: its sidecar data with the time so far.
    pub(super) fn recording_view(&self) -> Option<RecordingInfo> {
        let active = self.recording.as_ref()?;
        self.store.get(&active.info.id).ok()
    }

    /// Waits for every file still being finished (the room is closing).
    pub(super) async fn finish_recordings(&mut self) {
        self.stop_recording(None);
        for task in self.finishing.drain(..) {
            let _ = task.await;
        }
    }
}
