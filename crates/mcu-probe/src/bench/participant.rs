//! One bench participant: joins through the real signalling, hands its tracks to the pump, and,
//! if it is one of the receivers, decodes and measures what comes back; the others read and drop
//! what they receive, as a browser that is not being watched would still have to.

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use anyhow::{Context, Result};
use gst::prelude::*;
use gstreamer as gst;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use webrtc::peer_connection::peer_connection_state::RTCPeerConnectionState;
use webrtc::rtcp::payload_feedbacks::full_intra_request::FullIntraRequest;
use webrtc::rtcp::payload_feedbacks::picture_loss_indication::PictureLossIndication;

use super::pump::{Output, Stream};
use super::receiver::{self, ReceiverContext};
use crate::probe::link::{self, Heard, Link};
use mcu_server::codec::VideoCodec;
use mcu_server::rtc::{RtcFactory, SharedTrack};

pub struct BenchParticipant {
    pub index: usize,
    pub room: String,
    /// When it started to connect (the origin of its join-to-first-frame figure).
    pub started: Instant,
    /// What it measured, if it is a receiver.
    pub observed: Option<receiver::Shared>,
    link: Option<Link>,
    alive: Arc<std::sync::atomic::AtomicBool>,
    pipelines: Arc<Mutex<Vec<gst::Pipeline>>>,
    tasks: Vec<JoinHandle<()>>,
}

/// How to reach the server and what to share with the receivers.
pub struct Joining<'a> {
    pub url: &'a str,
    pub rtc: &'a RtcFactory,
    pub pump: &'a mpsc::UnboundedSender<Stream>,
    /// Filled in for a receiver (its `heard` and `observed` are replaced by its own).
    pub receiver: Option<ReceiverContext>,
}

impl BenchParticipant {
    pub async fn join(index: usize, room: &str, how: Joining<'_>) -> Result<BenchParticipant> {
        let heard: Heard = Arc::default();
        let pipelines: Arc<Mutex<Vec<gst::Pipeline>>> = Arc::default();
        let observed = how.receiver.as_ref().map(|_| receiver::Shared::default());
        let on_track: link::OnTrack = match how.receiver.clone() {
            Some(mut ctx) => {
                ctx.heard = heard.clone();
                ctx.observed = observed.clone().unwrap_or_default();
                let pipelines = pipelines.clone();
                Arc::new(move |track| match receiver::receive(track, ctx.clone()) {
                    Ok(p) => pipelines.lock().unwrap_or_else(|e| e.into_inner()).push(p),
                    Err(e) => receiver::lock(&ctx.observed)
                        .errors
                        .push(format!("receiving: {e:#}")),
                })
            }
            None => Arc::new(|track| {
                tokio::spawn(async move { while track.read_rtp().await.is_ok() {} });
            }),
        };
        let name = format!("bench-{}", index + 1);
        let link = Link::join(how.url, room, &name, None, how.rtc, heard, on_track)
            .await
            .with_context(|| format!("{name} joining {room}"))?;
        let audio = SharedTrack::audio(&name);
        link.pc.add_track(audio.as_local()).await?;
        let video = SharedTrack::video(VideoCodec::Vp8, "camera", &name);
        let video_sender = link.pc.add_track(video.as_local()).await?;
        let stream = Stream::new(index, Output::Track(video), Output::Track(audio));
        let (restart, alive) = (stream.restart.clone(), stream.alive.clone());
        let mut tasks = Vec::new();
        // The server asks for a keyframe when it starts decoding us: restart the loop there.
        tasks.push(tokio::spawn(async move {
            while let Ok((packets, _)) = video_sender.read_rtcp().await {
                if packets.iter().any(|p| {
                    p.as_any().downcast_ref::<PictureLossIndication>().is_some()
                        || p.as_any().downcast_ref::<FullIntraRequest>().is_some()
                }) {
                    restart.store(true, Ordering::Relaxed);
                }
            }
        }));
        // Like a browser, start the stream with a keyframe once the connection is up: what was
        // written before went nowhere.
        let restart_on_connect = stream.restart.clone();
        link.pc
            .on_peer_connection_state_change(Box::new(move |state| {
                if state == RTCPeerConnectionState::Connected {
                    restart_on_connect.store(true, Ordering::Relaxed);
                }
                Box::pin(async {})
            }));
        link.offer().await?;
        how.pump.send(stream).ok().context("the pump has stopped")?;
        Ok(BenchParticipant {
            index,
            room: room.to_string(),
            started: link.started,
            observed,
            link: Some(link),
            alive,
            pipelines,
            tasks,
        })
    }

    pub async fn leave(mut self) {
        self.alive.store(false, Ordering::Relaxed);
        if let Some(link) = self.link.take() {
            link.leave().await;
        }
        self.stop();
    }

    fn stop(&mut self) {
        self.alive.store(false, Ordering::Relaxed);
        for p in self
            .pipelines
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
        {
            let _ = p.set_state(gst::State::Null);
        }
        for t in self.tasks.drain(..) {
            t.abort();
        }
    }
}

impl Drop for BenchParticipant {
    fn drop(&mut self) {
        self.stop();
    }
}
