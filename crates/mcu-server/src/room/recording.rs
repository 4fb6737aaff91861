//! The room's recording, as a component the room owns: starting and stopping the recorder on the
//! room's pipeline, keeping the recording's sidecar up to date, and finishing files on tasks of
//! their own. What participants are told is the room's business: these methods say what happened
//! and the room announces it.

use std::sync::Arc;
use std::time::SystemTime;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tracing::Instrument;

use super::RoomError;
use crate::codec::VideoCodec;
use crate::ids::RoomId;
use crate::media::RoomPipeline;
use crate::recordings::{RecordingInfo, RecordingStore};

pub(super) type StopReply = oneshot::Sender<Result<RecordingInfo, RoomError>>;

/// The recording a room is writing now.
struct Active {
    info: RecordingInfo,
    /// Tells this recorder's failure apart from an earlier one's late report.
    number: u64,
}

pub(super) struct Recording {
    store: Arc<RecordingStore>,
    active: Option<Active>,
    started: u64,
    /// Recordings whose files are still being finished.
    finishing: Vec<JoinHandle<()>>,
}

impl Recording {
    pub fn new(store: Arc<RecordingStore>) -> Self {
        Recording {
            store,
            active: None,
            started: 0,
            finishing: Vec::new(),
        }
    }

    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    pub fn start(
        &mut self,
        room: &RoomId,
        codec: VideoCodec,
        pipeline: &mut RoomPipeline,
    ) -> Result<RecordingInfo, RoomError> {
        if self.active.is_some() {
            return Err(RoomError::AlreadyRecording);
        }
        let mut info = self
            .store
            .begin(room, codec, SystemTime::now())
            .map_err(|e| RoomError::RecordingFailed(format!("{e:#}")))?;
        self.started += 1;
        let number = self.started;
        let path = self.store.media_path(&info);
        if let Err(e) = pipeline.start_recording(&path, number) {
            let reason = format!("{e:#}");
            let _ = self
                .store
                .end(&mut info, SystemTime::now(), Err(reason.clone()));
            tracing::error!(file = %path.display(), "recording could not start: {reason}");
            crate::metrics::metrics().recordings_failed.inc();
            return Err(RoomError::RecordingFailed(reason));
        }
        tracing::info!(file = %path.display(), "recording started");
        crate::metrics::metrics().recordings_started.inc();
        self.active = Some(Active {
            info: info.clone(),
            number,
        });
        Ok(info)
    }

    /// Stops taking media at once; the file is finished on a task of its own, which answers
    /// `reply` when the file is complete. False (and `NotRecording` to `reply`) when nothing was
    /// recording.
    pub fn stop(&mut self, pipeline: &mut RoomPipeline, reply: Option<StopReply>) -> bool {
        let Some(active) = self.active.take() else {
            if let Some(reply) = reply {
                let _ = reply.send(Err(RoomError::NotRecording));
            }
            return false;
        };
        let finish = pipeline.stop_recording();
        let store = self.store.clone();
        let finishing = async move {
            let outcome = match finish {
                Some(finish) => finish.await.map_err(|e| format!("{e:#}")),
                None => Ok(()),
            };
            let mut info = active.info;
            match &outcome {
                Ok(()) => tracing::info!(file = %info.file, "recording finished"),
                Err(e) => {
                    crate::metrics::metrics().recordings_failed.inc();
                    tracing::warn!(file = %info.file, "recording ended badly: {e}")
                }
            }
            if let Err(e) = store.end(&mut info, SystemTime::now(), outcome) {
                tracing::error!(file = %info.file, "could not update the recording's sidecar: {e:#}");
            }
            if let Some(reply) = reply {
                let _ = reply.send(Ok(info));
            }
        };
        self.finishing
            .push(tokio::spawn(finishing.in_current_span()));
        true
    }

    /// The recorder numbered `number` failed (e.g. a full disk): the recording ends, the call
    /// goes on. False when it was not the current recording (an earlier one's late report).
    pub fn failed(&mut self, number: u64, error: &str, pipeline: &mut RoomPipeline) -> bool {
        if self.active.as_ref().map(|r| r.number) != Some(number) {
            return false;
        }
        let Some(active) = self.active.take() else {
            return false;
        };
        crate::metrics::metrics().recordings_failed.inc();
        pipeline.abort_recording();
        let mut info = active.info;
        tracing::error!(file = %info.file, "recording failed, the call goes on: {error}");
        if let Err(e) = self
            .store
            .end(&mut info, SystemTime::now(), Err(error.to_string()))
        {
            tracing::error!("could not update the recording's sidecar: {e:#}");
        }
        true
    }

    /// The recording as the room view shows it: its sidecar data with the time so far.
    pub fn view(&self) -> Option<RecordingInfo> {
        let active = self.active.as_ref()?;
        self.store.get(&active.info.id).ok()
    }

    /// Stops any recording and waits until every file is complete (the room is closing).
    pub async fn finish_all(&mut self, pipeline: &mut RoomPipeline) {
        self.stop(pipeline, None);
        for task in self.finishing.drain(..) {
            let _ = task.await;
        }
    }
}
