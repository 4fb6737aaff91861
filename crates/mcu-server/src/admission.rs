//! Per-address admission: how many WebSockets one client address may hold at once, and how many
//! rooms it may open per minute. `--max-rooms` protects the machine; these stop one stranger from
//! taking all of it (measured before: one script opened 40 rooms in a second and saturated both
//! cores, and nothing was refused).
//!
//! The address is the TCP peer's, or, when that peer is a trusted reverse proxy
//! (`--trusted-proxy`), the nearest address in `X-Forwarded-For` that is not itself a trusted
//! proxy. IPv6 clients are counted per /64, the block one household or one cloud VM gets, since a
//! single host can use any address inside it.
//!
//! The counting is pure (time passed in) and tested here; the HTTP layer holds a
//! [`ConnectionSlot`] for each socket and the registry asks before it opens a room.

use std::collections::{HashMap, VecDeque};
use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The window of `--max-new-rooms-per-address`.
pub const ROOM_WINDOW: Duration = Duration::from_secs(60);

/// A client address as counted: an IPv4 address, or an IPv6 /64.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(_) => ClientKey(ip),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let segments = v6.segments();
                    ClientKey(IpAddr::V6(Ipv6Addr::new(
                        segments[0],
                        segments[1],
                        segments[2],
                        segments[3],
                        0,
                        0,
                        0,
                        0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// The client behind a request: the TCP peer, unless it is a trusted proxy, in which case the
/// nearest untrusted hop of `X-Forwarded-For` (the proxy appends the address it saw; anything
/// further left was written by the client and is not believed). `None` when warp could not tell
/// the peer (never for TCP).
pub fn client_address(
    peer: Option<SocketAddr>,
    forwarded_for: Option<&str>,
    trusted_proxies: &[IpAddr],
) -> Option<IpAddr> {
    let peer = peer?.ip();
    if !trusted_proxies.contains(&peer) {
        return Some(peer);
    }
    let hops = forwarded_for.unwrap_or_default().split(',').rev();
    for hop in hops {
        match hop.trim().parse::<IpAddr>() {
            Ok(ip) if trusted_proxies.contains(&ip) => continue,
            Ok(ip) => return Some(ip),
            // A malformed hop: trust nothing further left of it.
            Err(_) => break,
        }
    }
    Some(peer)
}

/// Why a client address was turned away.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("too many connections from your address (at most {0} at once): close some tabs or wait for them to end")]
    Connections(usize),
    #[error("too many new rooms from your address (at most {0} a minute): join an existing room, or try again in a minute")]
    Rooms(usize),
}

#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// WebSockets one address may hold at once; 0: no limit.
    pub connections: usize,
    /// Rooms one address may open per minute; 0: no limit.
    pub rooms_per_minute: usize,
}

#[derive(Default)]
struct Counts {
    connections: HashMap<ClientKey, usize>,
    /// When each address opened its rooms of the last minute, oldest first.
    room_openings: HashMap<ClientKey, VecDeque<Instant>>,
    /// Refusals so far (for the admin API).
    refused: u64,
}

/// The per-address counters of one server. Its lock is held only to count, never across I/O.
pub struct Admission {
    limits: Limits,
    counts: Mutex<Counts>,
}

impl Admission {
    pub fn new(limits: Limits) -> Arc<Self> {
        Arc::new(Admission {
            limits,
            counts: Mutex::new(Counts::default()),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        self.counts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A new WebSocket from `key`: a slot held until the socket ends, or a refusal.
    pub fn connect(self: &Arc<Self>, key: ClientKey) -> Result<ConnectionSlot, Refusal> {
        let mut counts = self.counts();
        let held = counts.connections.entry(key).or_insert(0);
        if self.limits.connections > 0 && *held >= self.limits.connections {
            counts.refused += 1;
            return Err(Refusal::Connections(self.limits.connections));
        }
        *held += 1;
        Ok(ConnectionSlot {
            admission: self.clone(),
            key,
        })
    }

    /// `key` opens a room at `now`: counted, or refused when it opened its limit this minute.
    pub fn open_room(&self, key: ClientKey, now: Instant) -> Result<(), Refusal> {
        let limit = self.limits.rooms_per_minute;
        if limit == 0 {
            return Ok(());
        }
        let mut counts = self.counts();
        // Forget the minutes gone by, for every address, so the map holds only the last minute.
        counts.room_openings.retain(|_, times| {
            while times
                .front()
                .is_some_and(|t| now.saturating_duration_since(*t) >= ROOM_WINDOW)
            {
                times.pop_front();
            }
            !times.is_empty()
        });
        let times = counts.room_openings.entry(key).or_default();
        if times.len() >= limit {
            counts.refused += 1;
            return Err(Refusal::Rooms(limit));
        }
        times.push_back(now);
        Ok(())
    }

    /// `key`'s latest opening did not open anything (no node could take the room, or Redis
    /// failed while placing it): it is not counted, so a client that retries an outage is not
    /// refused for rooms it never got.
    pub fn unopen_room(&self, key: ClientKey) {
        let mut counts = self.counts();
        if let Some(times) = counts.room_openings.get_mut(&key) {
            times.pop_back();
            if times.is_empty() {
                counts.room_openings.remove(&key);
            }
        }
    }

    /// Connections and rooms refused so far.
    pub fn refused(&self) -> u64 {
        self.counts().refused
    }

    /// Addresses holding a connection now.
    pub fn addresses(&self) -> usize {
        self.counts().connections.len()
    }
}

/// One WebSocket counted against its address until dropped.
pub struct ConnectionSlot {
    admission: Arc<Admission>,
    key: ClientKey,
}

impl ConnectionSlot {
    pub fn key(&self) -> ClientKey {
        self.key
    }
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let mut counts = self.admission.counts();
        if let Some(held) = counts.connections.get_mut(&self.key) {
            *held = held.saturating_sub(1);
            if *held == 0 {
                counts.connections.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn peer(s: &str) -> Option<SocketAddr> {
        Some(SocketAddr::new(ip(s), 40000))
    }

    #[test]
    fn the_tcp_peer_is_the_client_unless_it_is_a_trusted_proxy() {
        let proxies = [ip("127.0.0.1")];
        // A stranger's own X-Forwarded-For is not believed.
        assert_eq!(
            client_address(peer("198.51.100.7"), Some("1.2.3.4"), &proxies),
            Some(ip("198.51.100.7"))
        );
        // Behind the proxy: the hop the proxy appended, not what the client wrote before it.
        assert_eq!(
            client_address(peer("127.0.0.1"), Some("1.2.3.4, 203.0.113.9"), &proxies),
            Some(ip("203.0.113.9"))
        );
        // Proxies in a chain are skipped; a malformed hop stops the walk at the last proxy.
        let chain = [ip("127.0.0.1"), ip("10.0.0.2")];
        assert_eq!(
            client_address(peer("127.0.0.1"), Some("203.0.113.9,10.0.0.2"), &chain),
            Some(ip("203.0.113.9"))
        );
        assert_eq!(
            client_address(peer("127.0.0.1"), Some("203.0.113.9, junk"), &proxies),
            Some(ip("127.0.0.1"))
        );
        assert_eq!(
            client_address(peer("127.0.0.1"), None, &proxies),
            Some(ip("127.0.0.1"))
        );
    }

    #[test]
    fn ipv6_clients_count_per_64_and_mapped_ipv4_as_ipv4() {
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            ClientKey::of(ip("2001:db8:1:2::1")),
            ClientKey::of(ip("2001:db8:1:3::1"))
        );
        assert_eq!(
            ClientKey::of(ip("::ffff:192.0.2.1")),
            ClientKey::of(ip("192.0.2.1"))
        );
        assert_eq!(
            ClientKey::of(ip("2001:db8:1:2::1")).to_string(),
            "2001:db8:1:2::/64"
        );
    }

    #[test]
    fn connections_past_the_limit_are_refused_until_one_ends() {
        let admission = Admission::new(Limits {
            connections: 2,
            rooms_per_minute: 0,
        });
        let (a, b) = (
            ClientKey::of(ip("192.0.2.1")),
            ClientKey::of(ip("192.0.2.2")),
        );
        let first = admission.connect(a).unwrap();
        let _second = admission.connect(a).unwrap();
        assert_eq!(admission.connect(a).err(), Some(Refusal::Connections(2)));
        // Another address is not affected.
        let _other = admission.connect(b).unwrap();
        drop(first);
        assert!(admission.connect(a).is_ok());
        assert_eq!(admission.refused(), 1);
    }

    #[test]
    fn rooms_past_the_limit_per_minute_are_refused_until_the_minute_passes() {
        let admission = Admission::new(Limits {
            connections: 0,
            rooms_per_minute: 3,
        });
        let a = ClientKey::of(ip("192.0.2.1"));
        let t0 = Instant::now();
        for s in 0..3 {
            admission.open_room(a, t0 + Duration::from_secs(s)).unwrap();
        }
        let refused = admission.open_room(a, t0 + Duration::from_secs(30));
        assert_eq!(refused, Err(Refusal::Rooms(3)));
        assert!(refused
            .unwrap_err()
            .to_string()
            .contains("join an existing room"));
        assert!(admission
            .open_room(ClientKey::of(ip("192.0.2.9")), t0)
            .is_ok());
        // An opening that opened nothing is given back.
        admission.unopen_room(a);
        assert!(admission.open_room(a, t0 + Duration::from_secs(31)).is_ok());
        // The first opening leaves the window at t0 + 60 s.
        assert!(admission.open_room(a, t0 + Duration::from_secs(60)).is_ok());
        assert!(admission
            .open_room(a, t0 + Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn the_counters_forget_addresses_that_left() {
        let admission = Admission::new(Limits {
            connections: 5,
            rooms_per_minute: 5,
        });
        let t0 = Instant::now();
        for n in 0..100u8 {
            let key = ClientKey::of(IpAddr::from([192, 0, 2, n]));
            drop(admission.connect(key).unwrap());
            admission.open_room(key, t0).unwrap();
        }
        assert_eq!(admission.addresses(), 0);
        admission
            .open_room(ClientKey::of(ip("192.0.2.200")), t0 + ROOM_WINDOW)
            .unwrap();
        assert_eq!(admission.counts().room_openings.len(), 1);
    }
}
