//! Mix-minus audio. Each participant's microphone is decoded once into a tee; each participant
//! (a "listener") has a mixer fed by every *other* participant's tee, encoded once for them.
//! A full mix of everyone feeds the recorder and watch-only viewers. Links are made and undone at
//! run time as people come and go.

use std::collections::HashMap;
use std::sync::Arc;

use anyhow::{Context, Result};
use bytes::Bytes;
use gst::prelude::*;
use gstreamer as gst;
use gstreamer_app as gst_app;
use tokio::sync::mpsc;

use super::sink::{packets_from, PacketCounters};
use super::{ms_to_ns, pipelines, INPUT_QUEUE_MAX};
use crate::config::MediaConfig;
use crate::ids::ParticipantId;

/// Where a microphone's decoded audio goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum MixTarget {
    Full,
    Listener(ParticipantId),
}

/// One tee → mixer connection, with every pad it took so it can give them back.
struct AudioLink {
    tee: gst::Element,
    tee_pad: gst::Pad,
    input_ghost: gst::GhostPad,
    input_bin: gst::Bin,
    mixer: gst::Element,
    mixer_pad: gst::Pad,
    /// Set when the mixer sits inside a listener bin and is reached through a ghost pad.
    listener_ghost: Option<(gst::Bin, gst::GhostPad)>,
}

pub struct AudioGraph {
    pipeline: gst::Pipeline,
    fullmix: gst::Element,
    media: MediaConfig,
    inputs: HashMap<ParticipantId, gst::Bin>,
    listeners: HashMap<ParticipantId, gst::Bin>,
    links: HashMap<(ParticipantId, MixTarget), AudioLink>,
    /// Speakers muted by the server: their pads in every mixer stay muted, new ones included.
    muted: std::collections::HashSet<ParticipantId>,
}

impl AudioGraph {
    pub fn new(pipeline: gst::Pipeline, fullmix: gst::Element, media: MediaConfig) -> Self {
        AudioGraph {
            pipeline,
            fullmix,
            media,
            inputs: HashMap::new(),
            listeners: HashMap::new(),
            links: HashMap::new(),
            muted: std::collections::HashSet::new(),
        }
    }

    pub fn add_input(&mut self, who: ParticipantId, payload_type: u8) -> Result<gst_app::AppSrc> {
        self.remove_input(who);
        let bin = pipelines::AUDIO_INPUT.bin(
            &[
                ("queue_max_ns", INPUT_QUEUE_MAX.as_nanos().to_string()),
                ("jitter_ms", self.media.audio_jitter_ms.to_string()),
            ],
            &format!("audio-{who}"),
        )?;
        let appsrc = bin
            .by_name("src")
            .and_then(|e| e.dynamic_cast::<gst_app::AppSrc>().ok())
            .context("pipelines/audio-input.txt has no appsrc named src")?;
        appsrc.set_caps(Some(
            &gst::Caps::builder("application/x-rtp")
                .field("media", "audio")
                .field("clock-rate", 48_000i32)
                .field("encoding-name", "OPUS")
                .field("payload", i32::from(payload_type))
                .build(),
        ));
        self.pipeline
            .add(&bin)
            .with_context(|| format!("adding audio-{who}"))?;
        self.inputs.insert(who, bin.clone());
        let targets: Vec<MixTarget> = std::iter::once(MixTarget::Full)
            .chain(
                self.listeners
                    .keys()
                    .filter(|l| **l != who)
                    .map(|l| MixTarget::Listener(*l)),
            )
            .collect();
        let linked = targets
            .into_iter()
            .try_for_each(|target| self.link(who, target))
            .and_then(|_| {
                bin.sync_state_with_parent()
                    .with_context(|| format!("starting audio-{who}"))
            });
        if let Err(e) = linked {
            self.remove_input(who);
            return Err(e);
        }
        let _ = self.pipeline.recalculate_latency();
        Ok(appsrc)
    }

    pub fn add_listener(&mut self, who: ParticipantId) -> Result<mpsc::Receiver<Bytes>> {
        self.remove_listener(who);
        let bin = pipelines::LISTENER_AUDIO.bin(
            &[
                ("mixer_latency_ns", ms_to_ns(self.media.mixer_latency_ms)),
                (
                    "audio_branch_latency_ns",
                    ms_to_ns(self.media.audio_branch_latency_ms()),
                ),
                (
                    "audio_bitrate_bps",
                    self.media.audio_bitrate_bps.to_string(),
                ),
            ],
            &format!("listener-{who}"),
        )?;
        let sink = bin
            .by_name("sink")
            .context("pipelines/listener-audio.txt has no element named sink")?;
        let packets = packets_from(&sink, Arc::new(PacketCounters::default()))?;
        super::align_test_sources(&self.pipeline, &bin);
        self.pipeline
            .add(&bin)
            .with_context(|| format!("adding listener-{who}"))?;
        self.listeners.insert(who, bin.clone());
        let speakers: Vec<ParticipantId> =
            self.inputs.keys().filter(|s| **s != who).copied().collect();
        // Started before it is linked: the speakers' tees are already pushing, and a buffer that
        // meets a pad not yet running comes back FLUSHING, which stops that speaker's audio for
        // good. The bin's own silence keeps its mixer going while it has no speakers.
        let linked = bin
            .sync_state_with_parent()
            .with_context(|| format!("starting listener-{who}"))
            .and_then(|_| {
                speakers
                    .into_iter()
                    .try_for_each(|speaker| self.link(speaker, MixTarget::Listener(who)))
            });
        if let Err(e) = linked {
            self.remove_listener(who);
            return Err(e);
        }
        let _ = self.pipeline.recalculate_latency();
        Ok(packets)
    }

    pub fn remove_participant(&mut self, who: ParticipantId) {
        self.remove_input(who);
        self.remove_listener(who);
        self.muted.remove(&who);
    }

    /// Takes `who`'s microphone out of every mix (or puts it back), without renegotiating
    /// anything: their mixer pads are muted, so the room hears silence from them.
    pub fn set_muted(&mut self, who: ParticipantId, muted: bool) {
        if muted {
            self.muted.insert(who);
        } else {
            self.muted.remove(&who);
        }
        for ((speaker, _), link) in &self.links {
            if *speaker == who {
                link.mixer_pad.set_property("mute", muted);
            }
        }
    }

    /// Mixer pads currently muted, over every mix: what the tests check server-side mute by.
    pub fn muted_pads(&self) -> usize {
        self.links
            .values()
            .filter(|l| l.mixer_pad.property::<bool>("mute"))
            .count()
    }

    pub fn listener_mix_pads(&self) -> usize {
        self.listeners
            .values()
            .filter_map(|bin| bin.by_name("mixer"))
            .map(|m| m.sink_pads().len())
            .sum()
    }

    fn remove_input(&mut self, who: ParticipantId) {
        let Some(bin) = self.inputs.remove(&who) else {
            return;
        };
        // Stop the branch before its links go, so the tee is not pushing while pads are released.
        let _ = bin.set_state(gst::State::Null);
        let keys: Vec<_> = self
            .links
            .keys()
            .filter(|(s, _)| *s == who)
            .copied()
            .collect();
        for key in keys {
            if let Some(link) = self.links.remove(&key) {
                unlink(link);
            }
        }
        let _ = self.pipeline.remove(&bin);
    }

    fn remove_listener(&mut self, who: ParticipantId) {
        let Some(bin) = self.listeners.remove(&who) else {
            return;
        };
        // Other people's tees are still running: take their branches out first, then stop ours.
        let keys: Vec<_> = self
            .links
            .keys()
            .filter(|(_, t)| *t == MixTarget::Listener(who))
            .copied()
            .collect();
        for key in keys {
            if let Some(link) = self.links.remove(&key) {
                unlink(link);
            }
        }
        let _ = bin.set_state(gst::State::Null);
        let _ = self.pipeline.remove(&bin);
    }

    fn link(&mut self, speaker: ParticipantId, target: MixTarget) -> Result<()> {
        let input_bin = self
            .inputs
            .get(&speaker)
            .cloned()
            .with_context(|| format!("no audio input for {speaker}"))?;
        let tee = input_bin
            .by_name("tee")
            .context("pipelines/audio-input.txt has no element named tee")?;
        let (mixer, listener_bin) = match target {
            MixTarget::Full => (self.fullmix.clone(), None),
            MixTarget::Listener(l) => {
                let bin = self
                    .listeners
                    .get(&l)
                    .cloned()
                    .with_context(|| format!("no listener {l}"))?;
                let mixer = bin
                    .by_name("mixer")
                    .context("pipelines/listener-audio.txt has no element named mixer")?;
                (mixer, Some(bin))
            }
        };
        let tee_pad = tee
            .request_pad_simple("src_%u")
            .context("tee gave no pad")?;
        let input_ghost = ghost(&input_bin, &tee_pad)?;
        let mixer_pad = mixer
            .request_pad_simple("sink_%u")
            .context("audiomixer gave no pad")?;
        if self.muted.contains(&speaker) {
            mixer_pad.set_property("mute", true);
        }
        let listener_ghost = match listener_bin {
            Some(bin) => {
                let g = ghost(&bin, &mixer_pad)?;
                Some((bin, g))
            }
            None => None,
        };
        let link = AudioLink {
            tee,
            tee_pad,
            input_ghost,
            input_bin,
            mixer,
            mixer_pad,
            listener_ghost,
        };
        let peer: gst::Pad = match &link.listener_ghost {
            Some((_, g)) => g.clone().upcast(),
            None => link.mixer_pad.clone(),
        };
        if let Err(e) = link.input_ghost.link(&peer) {
            unlink(link);
            anyhow::bail!("linking {speaker}'s audio to {target:?}: {e:?}");
        }
        self.links.insert((speaker, target), link);
        Ok(())
    }
}

/// Exposes `target` (a pad inside `bin`) on the bin, active, so elements outside can link to it.
fn ghost(bin: &gst::Bin, target: &gst::Pad) -> Result<gst::GhostPad> {
    let ghost = gst::GhostPad::with_target(target)
        .with_context(|| format!("ghosting {} on {}", target.name(), bin.name()))?;
    let _ = ghost.set_active(true);
    bin.add_pad(&ghost)
        .with_context(|| format!("adding a ghost pad to {}", bin.name()))?;
    Ok(ghost)
}

fn unlink(link: AudioLink) {
    if let Some(peer) = link.input_ghost.peer() {
        let _ = link.input_ghost.unlink(&peer);
    }
    link.tee.release_request_pad(&link.tee_pad);
    let _ = link.input_bin.remove_pad(&link.input_ghost);
    link.mixer.release_request_pad(&link.mixer_pad);
    if let Some((bin, ghost)) = link.listener_ghost {
        let _ = bin.remove_pad(&ghost);
    }
}
