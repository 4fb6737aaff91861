//! A bench participant: the synthetic participant (participant.rs) replaying its pre-encoded,
//! frame-coded loop through the pump, and, if it is one of its room's receivers, decoding and
//! measuring what comes back; the others read and drop what they receive, as a browser that is
//! not being watched would still have to.

use std::sync::Arc;

use anyhow::Result;
use tokio::sync::mpsc;

use super::pump::{replay_source, Stream};
use super::receiver::{self, ReceiverContext};
use crate::heard::Heard;
use crate::impair::{ImpairedLink, Impairment};
use crate::participant::{self, OnTrack};
use mcu_server::rtc::RtcFactory;

pub type Member = participant::Participant<Measured>;

/// Which bench participant it is, and what it measured.
pub struct Measured {
    pub index: usize,
    pub room: String,
    /// What it measured, if it is a receiver.
    pub observed: Option<receiver::Shared>,
    /// Its own bad link, if it has one (then it is always a receiver).
    pub link: Option<(Impairment, ImpairedLink)>,
}

/// How to reach the server and what to share with the receivers.
pub struct Joining<'a> {
    pub url: &'a str,
    pub rtc: &'a RtcFactory,
    pub pump: &'a mpsc::UnboundedSender<Stream>,
    /// Filled in for a receiver (its `heard` and `observed` are replaced by its own).
    pub receiver: Option<ReceiverContext>,
    /// A bad link for this one.
    pub impairment: Option<Impairment>,
}

pub async fn join(index: usize, room: &str, how: Joining<'_>) -> Result<Member> {
    let heard: Heard = Arc::default();
    let observed = how.receiver.as_ref().map(|_| receiver::Shared::default());
    let on_track: OnTrack = match how.receiver.clone() {
        Some(mut ctx) => {
            ctx.heard = heard.clone();
            ctx.observed = observed.clone().unwrap_or_default();
            Arc::new(move |track| receiver::receive(track, ctx.clone()).map(Some))
        }
        None => Arc::new(|track| {
            tokio::spawn(async move { while track.read_rtp().await.is_ok() {} });
            Ok(None)
        }),
    };
    let link = match how.impairment.filter(|i| !i.is_perfect()) {
        Some(impairment) => Some((impairment, ImpairedLink::open(how.rtc, impairment).await?)),
        None => None,
    };
    let own_rtc = link.as_ref().map(|(_, l)| l.rtc.clone());
    let joining = participant::Joining {
        url: how.url,
        room,
        name: format!("bench-{}", index + 1),
        token: None,
        rtc: own_rtc.as_deref().unwrap_or(how.rtc),
        heard,
        sharing: None,
    };
    let pump = how.pump.clone();
    let measured = Measured {
        index,
        room: room.to_string(),
        observed,
        link,
    };
    Member::join(joining, on_track, move |_| {
        Ok((replay_source(index, pump), measured))
    })
    .await
}
