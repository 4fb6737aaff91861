//! A bad network for one synthetic participant, built in user space at its own UDP socket (these
//! machines have no netem: the kernel lacks `sch_netem`). What the server sends it can be shaped
//! to a rate through a short queue (a thin link: what does not fit the queue is dropped), lost at
//! random, and delayed by random jitter (which reorders); what it sends can be lost and delayed.
//!
//! `ImpairedConn` wraps the socket as webrtc-rs's `Conn`, so the participant's ICE, DTLS, RTP and
//! RTCP all cross the same bad link, as they would on a real one.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Serialize;
use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio::time::Instant;
use webrtc::util::Conn;

/// How long a packet may wait in the shaped link's queue before the link drops it instead: the
/// buffer of a DSL or LTE modem holds 50–200 ms; a short one makes a thin link drop rather than
/// delay, as a policer does, which is the harder case for a sender.
pub const QUEUE_DELAY: Duration = Duration::from_millis(100);
/// Packets waiting for delivery, at most; far above what QUEUE_DELAY lets through at any rate a
/// test uses, it only bounds memory if the reader stops.
const MAX_WAITING: usize = 4096;
/// Largest datagram read: above any MTU.
const MAX_DATAGRAM: usize = 2048;

/// What is wrong with one participant's link. The default is a perfect link.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Impairment {
    /// The downlink's rate, in kbit/s (None: unlimited).
    pub downlink_kbps: Option<u32>,
    /// Share of downlink packets lost at random, 0–1.
    pub downlink_loss: f64,
    /// Share of uplink packets lost at random, 0–1.
    pub uplink_loss: f64,
    /// Each packet, either way, is delayed by a uniform random 0–`jitter_ms`.
    pub jitter_ms: u32,
}

impl Impairment {
    pub fn is_perfect(&self) -> bool {
        *self == Impairment::default()
    }
}

/// What the impaired link did, for the report.
#[derive(Debug, Default)]
pub struct LinkCounters {
    pub down_delivered: AtomicU64,
    pub down_lost: AtomicU64,
    /// Dropped because the shaped link's queue was full.
    pub down_queue_drops: AtomicU64,
    pub up_sent: AtomicU64,
    pub up_lost: AtomicU64,
}

/// A snapshot of `LinkCounters`.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct LinkFigures {
    pub down_delivered: u64,
    pub down_lost: u64,
    pub down_queue_drops: u64,
    pub up_sent: u64,
    pub up_lost: u64,
}

impl LinkCounters {
    pub fn figures(&self) -> LinkFigures {
        let read = |c: &AtomicU64| c.load(Ordering::Relaxed);
        LinkFigures {
            down_delivered: read(&self.down_delivered),
            down_lost: read(&self.down_lost),
            down_queue_drops: read(&self.down_queue_drops),
            up_sent: read(&self.up_sent),
            up_lost: read(&self.up_lost),
        }
    }
}

/// xorshift64*: cheap randomness that needs no crate, seeded from the clock.
#[derive(Debug)]
pub struct Dice(u64);

impl Dice {
    pub fn seeded() -> Self {
        let seed = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0x9e37_79b9_7f4a_7c15, |d| d.as_nanos() as u64);
        Dice(seed | 1)
    }

    /// Uniform in [0, 1).
    pub fn unit(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn chance(&mut self, p: f64) -> bool {
        p > 0.0 && self.unit() < p
    }

    /// Uniform in [0, max).
    pub fn delay(&mut self, max_ms: u32) -> Duration {
        Duration::from_secs_f64(self.unit() * f64::from(max_ms) / 1000.0)
    }
}

/// The downlink as a pure schedule: when each arriving packet leaves the link, or that it is
/// dropped. Time is passed in.
#[derive(Debug)]
pub struct Downlink {
    impairment: Impairment,
    /// When the shaped link is free again.
    busy_until: Option<Instant>,
}

impl Downlink {
    pub fn new(impairment: Impairment) -> Self {
        Downlink {
            impairment,
            busy_until: None,
        }
    }

    /// The link changes (a test lifts its limit, say); what is queued keeps its schedule.
    pub fn set(&mut self, impairment: Impairment) {
        self.impairment = impairment;
    }

    /// What becomes of a packet of `bytes` arriving at `now`.
    pub fn admit(&mut self, bytes: usize, now: Instant, dice: &mut Dice) -> Fate {
        if dice.chance(self.impairment.downlink_loss) {
            return Fate::Lost;
        }
        let mut leaves = now;
        if let Some(kbps) = self.impairment.downlink_kbps {
            let start = self.busy_until.map_or(now, |busy| busy.max(now));
            if start.saturating_duration_since(now) > QUEUE_DELAY {
                return Fate::Overflow;
            }
            let serialise =
                Duration::from_secs_f64(bytes as f64 * 8.0 / (f64::from(kbps) * 1000.0));
            leaves = start + serialise;
            self.busy_until = Some(leaves);
        }
        Fate::Deliver(leaves + dice.delay(self.impairment.jitter_ms))
    }
}

/// What the downlink does with a packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Delivered at this instant.
    Deliver(Instant),
    /// Lost at random.
    Lost,
    /// Dropped: the shaped link's queue was full.
    Overflow,
}

/// The impairment of a link while it runs, which its owner may change.
pub type LinkSetting = Arc<Mutex<Impairment>>;

/// A UDP socket behind an impaired link, as webrtc-rs's `Conn`.
pub struct ImpairedConn {
    socket: Arc<UdpSocket>,
    setting: LinkSetting,
    delivered: tokio::sync::Mutex<mpsc::Receiver<(Bytes, SocketAddr)>>,
    dice: Mutex<Dice>,
    counters: Arc<LinkCounters>,
    shaper: JoinHandle<()>,
}

impl ImpairedConn {
    /// Binds a socket at `addr` (port 0 picks one) behind `impairment`.
    pub async fn bind(addr: SocketAddr, impairment: Impairment) -> std::io::Result<Self> {
        let socket = Arc::new(UdpSocket::bind(addr).await?);
        let counters = Arc::new(LinkCounters::default());
        let setting: LinkSetting = Arc::new(Mutex::new(impairment));
        let (tx, rx) = mpsc::channel(MAX_WAITING);
        let shaper = tokio::spawn(shape_downlink(
            socket.clone(),
            setting.clone(),
            tx,
            counters.clone(),
        ));
        Ok(ImpairedConn {
            socket,
            setting,
            delivered: tokio::sync::Mutex::new(rx),
            dice: Mutex::new(Dice::seeded()),
            counters,
            shaper,
        })
    }

    pub fn counters(&self) -> Arc<LinkCounters> {
        self.counters.clone()
    }

    /// Where to change the link while it runs.
    pub fn setting(&self) -> LinkSetting {
        self.setting.clone()
    }
}

/// A participant's own bad link: the factory its peer connection is built with (all its traffic
/// crosses the link), what the link did, and where to change it. Keep it for as long as the
/// participant runs.
pub struct ImpairedLink {
    pub rtc: Arc<mcu_server::rtc::RtcFactory>,
    pub counters: Arc<LinkCounters>,
    pub setting: LinkSetting,
}

impl ImpairedLink {
    /// Binds a socket behind `impairment`, on loopback when `like` (the shared factory) is
    /// loopback-only.
    pub async fn open(
        like: &mcu_server::rtc::RtcFactory,
        impairment: Impairment,
    ) -> anyhow::Result<Self> {
        use anyhow::Context;
        let loopback = like.loopback_only();
        let bind: SocketAddr = if loopback {
            ([127, 0, 0, 1], 0).into()
        } else {
            ([0, 0, 0, 0], 0).into()
        };
        let conn = ImpairedConn::bind(bind, impairment)
            .await
            .context("binding the impaired participant's socket")?;
        let (counters, setting) = (conn.counters(), conn.setting());
        let options = mcu_server::config::RtcOptions {
            loopback_only: loopback,
            ..Default::default()
        };
        let rtc = Arc::new(mcu_server::rtc::RtcFactory::with_conn(options, conn)?);
        Ok(ImpairedLink {
            rtc,
            counters,
            setting,
        })
    }

    /// Changes the link while it runs (lifts a limit, say).
    pub fn set(&self, impairment: Impairment) {
        *self.setting.lock().unwrap_or_else(|p| p.into_inner()) = impairment;
    }
}

impl Drop for ImpairedConn {
    fn drop(&mut self) {
        self.shaper.abort();
    }
}

/// Reads the socket, and hands each packet on when the impaired downlink delivers it.
async fn shape_downlink(
    socket: Arc<UdpSocket>,
    setting: LinkSetting,
    deliver: mpsc::Sender<(Bytes, SocketAddr)>,
    counters: Arc<LinkCounters>,
) {
    let current = || *setting.lock().unwrap_or_else(|p| p.into_inner());
    let mut link = Downlink::new(current());
    let mut dice = Dice::seeded();
    // Packets in flight, by delivery time (then arrival order, so equal times keep their order).
    let mut waiting: BinaryHeap<Reverse<(Instant, u64, Packet)>> = BinaryHeap::new();
    let mut arrivals = 0u64;
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        let next = waiting.peek().map(|Reverse((at, _, _))| *at);
        tokio::select! {
            received = socket.recv_from(&mut buf) => {
                let Ok((n, from)) = received else { return };
                link.set(current());
                match link.admit(n, Instant::now(), &mut dice) {
                    Fate::Deliver(at) if waiting.len() < MAX_WAITING => {
                        arrivals += 1;
                        let packet = Packet(Bytes::copy_from_slice(&buf[..n]), from);
                        waiting.push(Reverse((at, arrivals, packet)));
                    }
                    Fate::Deliver(_) | Fate::Overflow => {
                        counters.down_queue_drops.fetch_add(1, Ordering::Relaxed);
                    }
                    Fate::Lost => {
                        counters.down_lost.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
            _ = sleep_until_opt(next) => {
                while let Some(Reverse((at, _, _))) = waiting.peek() {
                    if *at > Instant::now() {
                        break;
                    }
                    let Some(Reverse((_, _, Packet(bytes, from)))) = waiting.pop() else { break };
                    if deliver.send((bytes, from)).await.is_err() {
                        return;
                    }
                    counters.down_delivered.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
}

/// A datagram and where it came from; ordered by nothing (the heap orders by time and arrival).
#[derive(Debug)]
struct Packet(Bytes, SocketAddr);

impl PartialEq for Packet {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}
impl Eq for Packet {}
impl PartialOrd for Packet {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Packet {
    fn cmp(&self, _: &Self) -> std::cmp::Ordering {
        std::cmp::Ordering::Equal
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

#[async_trait]
impl Conn for ImpairedConn {
    async fn connect(&self, addr: SocketAddr) -> webrtc::util::Result<()> {
        Ok(self.socket.connect(addr).await?)
    }

    async fn recv(&self, buf: &mut [u8]) -> webrtc::util::Result<usize> {
        Ok(self.recv_from(buf).await?.0)
    }

    async fn recv_from(&self, buf: &mut [u8]) -> webrtc::util::Result<(usize, SocketAddr)> {
        let mut delivered = self.delivered.lock().await;
        match delivered.recv().await {
            Some((bytes, from)) => {
                let n = bytes.len().min(buf.len());
                buf[..n].copy_from_slice(&bytes[..n]);
                Ok((n, from))
            }
            None => Err(std::io::Error::from(std::io::ErrorKind::BrokenPipe).into()),
        }
    }

    async fn send(&self, buf: &[u8]) -> webrtc::util::Result<usize> {
        Ok(self.socket.send(buf).await?)
    }

    async fn send_to(&self, buf: &[u8], target: SocketAddr) -> webrtc::util::Result<usize> {
        let impairment = *self.setting.lock().unwrap_or_else(|p| p.into_inner());
        let (lost, delay) = {
            let mut dice = self.dice.lock().unwrap_or_else(|p| p.into_inner());
            (
                dice.chance(impairment.uplink_loss),
                dice.delay(impairment.jitter_ms),
            )
        };
        if lost {
            self.counters.up_lost.fetch_add(1, Ordering::Relaxed);
            return Ok(buf.len());
        }
        self.counters.up_sent.fetch_add(1, Ordering::Relaxed);
        if delay.is_zero() {
            return Ok(self.socket.send_to(buf, target).await?);
        }
        // Delayed on a task of its own, so later packets may overtake it, as jitter does.
        let (socket, packet) = (self.socket.clone(), buf.to_vec());
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let _ = socket.send_to(&packet, target).await;
        });
        Ok(buf.len())
    }

    fn local_addr(&self) -> webrtc::util::Result<SocketAddr> {
        Ok(self.socket.local_addr()?)
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        None
    }

    async fn close(&self) -> webrtc::util::Result<()> {
        self.shaper.abort();
        Ok(())
    }

    fn as_any(&self) -> &(dyn std::any::Any + Send + Sync) {
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shaped_link_spaces_packets_at_its_rate_and_drops_what_overflows_its_queue() {
        let t0 = Instant::now();
        let mut dice = Dice::seeded();
        let mut link = Downlink::new(Impairment {
            downlink_kbps: Some(1000),
            ..Impairment::default()
        });
        // 1250 bytes take 10 ms at 1 Mbit/s: a burst of 20 queues up to the 100 ms limit.
        let admitted: Vec<_> = (0..20).map(|_| link.admit(1250, t0, &mut dice)).collect();
        let delivered: Vec<Instant> = admitted
            .iter()
            .filter_map(|f| match f {
                Fate::Deliver(at) => Some(*at),
                _ => None,
            })
            .collect();
        assert_eq!(delivered.len(), 11, "{admitted:?}");
        assert_eq!(delivered[0], t0 + Duration::from_millis(10));
        assert_eq!(delivered[10], t0 + Duration::from_millis(110));
        assert!(admitted[11..].iter().all(|f| *f == Fate::Overflow));
        // Once the queue drained, packets pass again.
        let later = t0 + Duration::from_secs(1);
        assert_eq!(
            link.admit(1250, later, &mut dice),
            Fate::Deliver(later + Duration::from_millis(10))
        );
    }

    #[test]
    fn random_loss_takes_about_its_share_and_a_perfect_link_delivers_at_once() {
        let t0 = Instant::now();
        let mut dice = Dice::seeded();
        let mut lossy = Downlink::new(Impairment {
            downlink_loss: 0.05,
            ..Impairment::default()
        });
        let lost = (0..20_000)
            .filter(|_| lossy.admit(1000, t0, &mut dice) == Fate::Lost)
            .count();
        assert!((800..1200).contains(&lost), "{lost} of 20000 lost");
        let mut perfect = Downlink::new(Impairment::default());
        assert_eq!(perfect.admit(1000, t0, &mut dice), Fate::Deliver(t0));
    }

    #[test]
    fn jitter_delays_within_its_bound() {
        let t0 = Instant::now();
        let mut dice = Dice::seeded();
        let mut link = Downlink::new(Impairment {
            jitter_ms: 30,
            ..Impairment::default()
        });
        for _ in 0..1000 {
            let Fate::Deliver(at) = link.admit(1000, t0, &mut dice) else {
                panic!("a jittery link loses nothing");
            };
            assert!(at >= t0 && at < t0 + Duration::from_millis(30));
        }
    }
}
