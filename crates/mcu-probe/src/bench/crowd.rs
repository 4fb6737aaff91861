//! The bench's participants in their rooms, and what their receivers measured: the window's
//! figures, the join times, the errors.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

use anyhow::Result;

use super::figures::{self, Quantiles, WindowFigures};
use super::links::{self, ImpairedViewer};
use super::media::{self, BenchMedia};
use super::member::{self, Joining, Member};
use super::pump;
use super::receiver::{self, ReceiverContext};
use super::report::RoomFigures;
use super::COMPOSITE_FPS;
use crate::frames::frame_gaps;
use crate::impair::Impairment;
use crate::probe::FREEZE;

fn room_name(room: usize) -> String {
    format!("bench-{}", room + 1)
}

/// Which room each participant joins.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Participant i in room i % rooms: the rooms fill together.
    RoundRobin { rooms: usize },
    /// Rooms filled one after the other, this many in each (`--ramp-rooms`).
    Fill { per_room: usize },
}

impl Placement {
    /// The room (from 0) of participant `index`, and its place in that room (from 0).
    pub fn of(&self, index: usize) -> (usize, usize) {
        match *self {
            Placement::RoundRobin { rooms } => (index % rooms.max(1), index / rooms.max(1)),
            Placement::Fill { per_room } => (index / per_room.max(1), index % per_room.max(1)),
        }
    }
}

/// The participants and what they share.
pub(super) struct Crowd {
    url: String,
    rtc: mcu_server::rtc::RtcFactory,
    pump: tokio::sync::mpsc::UnboundedSender<pump::Stream>,
    pump_task: tokio::task::JoinHandle<()>,
    template: ReceiverContext,
    placement: Placement,
    receivers: usize,
    /// Bad links, by participant index (from 0).
    impaired: HashMap<usize, Impairment>,
    pub members: Vec<Member>,
}

impl Crowd {
    pub fn new(
        url: &str,
        media: Arc<BenchMedia>,
        placement: Placement,
        receivers: usize,
        impaired: HashMap<usize, Impairment>,
    ) -> Result<Self> {
        let log = Arc::new(pump::SendLog::new(
            media.participants.len(),
            media::VIDEO_LOOP_FRAMES,
        ));
        let (pump, pump_task) = pump::spawn(media.clone(), log.clone());
        Ok(Crowd {
            url: url.to_string(),
            rtc: mcu_server::rtc::RtcFactory::new(mcu_server::config::RtcOptions {
                loopback_only: crate::probe::is_loopback_url(url),
                ..Default::default()
            })?,
            pump,
            pump_task,
            template: ReceiverContext {
                heard: Default::default(),
                log,
                observed: Default::default(),
                send_width: media.width,
                send_height: media.height,
                onset_offsets: Arc::new(
                    media
                        .participants
                        .iter()
                        .map(|p| p.audio_onset_offset)
                        .collect(),
                ),
                epoch: Instant::now(),
            },
            placement,
            receivers,
            impaired,
            members: Vec::new(),
        })
    }

    /// Adds the next participant, in the room whose turn it is.
    pub async fn add(&mut self) -> Result<()> {
        let index = self.members.len();
        let (room, place) = self.placement.of(index);
        let impairment = self.impaired.get(&index).copied();
        // An impaired participant always decodes: what it sees is what it is there for.
        let is_receiver = place < self.receivers || impairment.is_some();
        let joining = Joining {
            url: &self.url,
            rtc: &self.rtc,
            pump: &self.pump,
            receiver: is_receiver.then(|| self.template.clone()),
            impairment,
        };
        let p = member::join(index, &room_name(room), joining).await?;
        self.members.push(p);
        Ok(())
    }

    /// What the receivers on good links observed: the room's figures. Impaired viewers are
    /// reported apart (`impaired_viewers`).
    fn observed(&self) -> Vec<receiver::Shared> {
        self.members
            .iter()
            .filter(|p| p.media.link.is_none())
            .filter_map(|p| p.media.observed.clone())
            .collect()
    }

    /// Lifts every impaired link (they become perfect); the instant it happened.
    pub fn lift_links(&self) -> Instant {
        for p in &self.members {
            if let Some((_, link)) = &p.media.link {
                link.set(Impairment::default());
            }
        }
        Instant::now()
    }

    /// Each impaired viewer's figures over the window, its link lifted at `lift`.
    pub fn impaired_viewers(
        &self,
        from: Instant,
        to: Instant,
        lift: Option<Instant>,
    ) -> Vec<ImpairedViewer> {
        self.members
            .iter()
            .filter_map(|p| {
                let (impairment, link) = p.media.link.as_ref()?;
                let observed = p.media.observed.as_ref()?;
                let o = receiver::lock(observed);
                let times: Vec<Instant> = o.decoded.iter().map(|(t, _, _)| *t).collect();
                let gaps = frame_gaps(&times, from, to, FREEZE);
                Some(ImpairedViewer {
                    participant: p.media.index + 1,
                    room: p.media.room.clone(),
                    link: *impairment,
                    fps: gaps.fps,
                    freezes: gaps.freezes_at_s.len(),
                    freezes_at_s: gaps.freezes_at_s,
                    moves: links::moves(&o.decoded, p.started(), from, lift),
                    link_figures: link.counters.figures(),
                })
            })
            .collect()
    }

    pub fn figures(&self, from: Instant, to: Instant) -> WindowFigures {
        let shared = self.observed();
        let guards: Vec<_> = shared.iter().map(receiver::lock).collect();
        let refs: Vec<&receiver::Observed> = guards.iter().map(|g| &**g).collect();
        figures::summarise(&refs, from, to, COMPOSITE_FPS)
    }

    /// The window's figures of each room, from its own receivers on good links.
    pub fn room_figures(&self, from: Instant, to: Instant) -> Vec<RoomFigures> {
        let mut rooms: Vec<&str> = Vec::new();
        for p in &self.members {
            if !rooms.contains(&p.media.room.as_str()) {
                rooms.push(&p.media.room);
            }
        }
        rooms
            .into_iter()
            .map(|room| {
                let here = || self.members.iter().filter(|p| p.media.room == room);
                let shared: Vec<receiver::Shared> = here()
                    .filter(|p| p.media.link.is_none())
                    .filter_map(|p| p.media.observed.clone())
                    .collect();
                let guards: Vec<_> = shared.iter().map(receiver::lock).collect();
                let refs: Vec<&receiver::Observed> = guards.iter().map(|g| &**g).collect();
                RoomFigures {
                    room: room.to_string(),
                    participants: here().count(),
                    figures: figures::summarise(&refs, from, to, COMPOSITE_FPS),
                }
            })
            .collect()
    }

    /// Join → first composite frame showing the newcomer, at a receiver of its room, for the
    /// participants numbered in `which`.
    pub fn join_times(&self, which: std::ops::Range<usize>) -> (Quantiles, Vec<f64>, Vec<String>) {
        let mut times = Vec::new();
        let mut never = Vec::new();
        for p in self.members.get(which).unwrap_or_default() {
            let seen = self
                .members
                .iter()
                .filter(|r| r.media.room == p.media.room)
                .filter_map(|r| r.media.observed.as_ref())
                .filter_map(|o| receiver::lock(o).first_seen.get(&p.media.index).copied())
                .min();
            match seen {
                Some(t) => {
                    times.push(t.saturating_duration_since(p.started()).as_secs_f64() * 1000.0)
                }
                None => never.push(format!(
                    "bench-{} never appeared in the composite",
                    p.media.index + 1
                )),
            }
        }
        (Quantiles::of(&times), times, never)
    }

    pub fn errors(&self) -> Vec<String> {
        self.members
            .iter()
            .filter_map(|p| p.media.observed.as_ref())
            .flat_map(|o| receiver::lock(o).errors.clone())
            .collect()
    }

    pub async fn leave_all(&mut self) {
        for p in self.members.drain(..) {
            p.leave().await;
        }
        self.pump_task.abort();
    }
}
