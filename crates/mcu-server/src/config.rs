//! The server's settings in one struct, each default a named const with the reason for its value.
//! The command line (main.rs) fills it; everything else reads it.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use crate::codec::VideoCodec;
use crate::protocol::IceServer;

/// Listen on every interface: the server is meant to be reached from other machines (or from the
/// host, when it runs in a container).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:8080";
/// 720p is the largest size a 2-core machine composites and encodes at 30 fps with headroom for
/// 16 decoders (VP8 realtime encode of 720p runs at ~120 fps on one core here).
pub const DEFAULT_WIDTH: u32 = 1280;
pub const DEFAULT_HEIGHT: u32 = 720;
/// 30 fps is what cameras deliver and what viewers expect of a call.
pub const DEFAULT_FPS: u32 = 30;
/// 2 Mbit/s gives a clean 720p grid of mostly-static faces in VP8 and fits a typical home uplink.
pub const DEFAULT_VIDEO_BITRATE_KBPS: u32 = 2000;
/// 32 kbit/s mono Opus is transparent for speech.
pub const DEFAULT_AUDIO_BITRATE_BPS: u32 = 32_000;
/// Audio packets are 20 ms apart; holding 40 ms lets one late packet still make it into the mix.
pub const DEFAULT_AUDIO_JITTER_MS: u32 = 40;
/// A room with more microphones than this mixes only the voices talking, this many at most, and
/// encodes one mix for everyone else (media/loudest.rs). Four: more people than that talking at
/// once is no conversation anyone can follow, and each one more costs an Opus encode; in two
/// 25-person rooms the listeners' encodes were 13 % of both cores before this limit (perf).
pub const DEFAULT_MAX_MIXED_VOICES: usize = 4;
/// Extra time the compositor and the audio mix wait for a late input before producing a frame
/// without it. Small, because a frame is produced every 33 ms and a late input simply shows its
/// previous frame.
pub const DEFAULT_MIXER_LATENCY_MS: u32 = 10;
/// Latency the compositor assumes of a participant's video branch: one frame held by the decoder
/// and one by the scaler at 30 fps (measured: 66.7 ms for VP8 when the branch began with a 20 ms
/// jitter buffer, since removed: see pipelines/video-input-vp8.txt), with the 20 ms kept as margin
/// for a frame that leaves the session's reorder wait late. Assumed from the start, so a joining
/// participant never raises the compositor's latency mid-stream (which stalls the composite once
/// by the difference).
pub const VIDEO_BRANCH_LATENCY_MS: u32 = 70;
/// A participant from whom no RTP or RTCP arrived for this long has vanished (laptop lid closed,
/// network gone) and is removed. Browsers send RTCP at least every few seconds, so 10 s cannot
/// catch a live participant, and it frees a tile soon enough that the room does not stare at a
/// frozen face.
pub const DEFAULT_MEDIA_TIMEOUT: Duration = Duration::from_secs(10);
/// Until the first RTP or RTCP packet, a participant is still connecting (ICE, then DTLS), and
/// gets this long instead of the media timeout: over a lossy, jittery link each lost DTLS flight
/// costs a retransmission timer that doubles from 1 s (RFC 6347), and in a clean-clone CI run a
/// sender on a 5 %-loss uplink had not finished its handshake after 10 s and was removed before
/// its first packet. 30 s is a handshake that lost three flights in a row; a peer connection that
/// fails outright ends the session at once, whatever this says.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// Recordings go next to where the server runs unless told otherwise; the container sets
/// `MCU_RECORDINGS_DIR` to its volume.
pub const DEFAULT_RECORDINGS_DIR: &str = "recordings";
/// A 5×5 grid is the largest that stays legible at 1280×720 (see layout::MAX_TILES).
pub const DEFAULT_MAX_PARTICIPANTS: usize = crate::layout::MAX_TILES;
/// WHEP watchers one room takes. Each costs its room no encode (watchers share the composite's
/// encodes and the full mix's), but a copy of the composite on the uplink: 50 × ~2 Mbit/s is
/// 100 Mbit/s, what a typical VM's link carries beside its calls. A bigger audience belongs
/// behind a CDN fed by one watcher.
pub const DEFAULT_MAX_WATCHERS: usize = 50;
/// WebSockets one client address may hold at once. Each participant holds one (the web client
/// reconnects on the same one); an office behind one NAT filling a 25-person room needs 25, and
/// a few tabs left open on top stay within 40. A stranger's script stops there.
pub const DEFAULT_MAX_CONNECTIONS_PER_ADDRESS: usize = 40;
/// Rooms one client address may open per minute. People open one room and invite others; a
/// class or a team behind one NAT splitting into breakout rooms opens a handful at once. Past
/// it, `rate_limited`: joining existing rooms still works.
pub const DEFAULT_MAX_NEW_ROOMS_PER_ADDRESS: usize = 10;
/// Rooms a machine takes per two cores unless `--max-rooms` says otherwise. Measured with `mcu
/// bench --ramp-rooms` (docs/performance.md): two cores held 3 rooms of four people sending
/// 640×360 (what browsers send in a 2×2 grid) at full frame rate and 7 rooms of four sending
/// 320×180; the fourth room of the first kind dropped frames. Past its limit a machine queues
/// media for every room, so the default is the heavier case.
pub const DEFAULT_ROOMS_PER_TWO_CORES: usize = 3;

/// The room limit for a machine with `cores` cores (at least one room).
pub fn default_max_rooms(cores: usize) -> usize {
    (cores * DEFAULT_ROOMS_PER_TWO_CORES / 2).max(1)
}
/// Chat messages a room keeps for whoever joins later: an hour of a lively meeting.
pub const DEFAULT_CHAT_HISTORY: usize = 100;
/// Most chat messages a room may keep: a late joiner gets them all at once (see EVENT_QUEUE).
pub const MAX_CHAT_HISTORY: usize = 200;
/// Largest shared file: slides, a document, a short clip; not a film.
pub const DEFAULT_MAX_FILE_SIZE: &str = "50MB";
/// Bytes of shared files one room holds at once, on the server's disk while the room lasts.
pub const DEFAULT_MAX_ROOM_FILES_SIZE: &str = "200MB";
/// Each file transfer (an upload, or a download to one participant) is paced to this many bytes
/// per second: 16 Mbit/s, what a decent home link carries beside a 2 Mbit/s composite, so a file
/// never takes the call's bandwidth (data channels know nothing of the media's own estimate).
/// A 20 MB file takes 10 s. Rooms of people on thin links want it lower.
pub const DEFAULT_FILE_RATE: &str = "2MB";

/// The lower tiers of the composite (the top one is --width × --height at --video-bitrate-kbps):
/// a viewer whose link cannot carry the top tier gets the same picture smaller. 640×360 at
/// 600 kbit/s and 320×180 at 150 kbit/s keep the bits per pixel of the 2 Mbit/s top tier within a
/// factor of two, so each looks as clean as its size allows. The audio costs more on the wire
/// than its 32 kbit/s: 50 packets a second with ~50 bytes of IP, UDP, SRTP and RTP each come to
/// about 52 kbit/s. Measured with `mcu probe --downlink-kbps 250`: a 200 kbit/s bottom tier
/// overflowed the link (935 packets dropped in a minute, the tones hardly heard); 150 kbit/s
/// leaves it about 15 % spare.
pub const DEFAULT_TIERS: &str = "640x360@600,320x180@150";

/// One encode of the composite: its size and bitrate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tier {
    pub width: u32,
    pub height: u32,
    pub bitrate_kbps: u32,
}

/// Reads `WxH@KBPS[,WxH@KBPS…]`, or `none`, as `--tiers` takes it: the lower tiers, each smaller
/// and cheaper than the one before.
pub fn parse_tiers(text: &str) -> Result<Vec<Tier>, String> {
    let text = text.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("none") {
        return Ok(Vec::new());
    }
    let mut tiers: Vec<Tier> = Vec::new();
    for part in text.split(',') {
        let part = part.trim();
        let bad = || format!("{part:?}: expected WIDTHxHEIGHT@KBPS, such as 640x360@600");
        let (size, rate) = part.split_once('@').ok_or_else(bad)?;
        let (w, h) = size.split_once('x').ok_or_else(bad)?;
        let number = |v: &str| v.trim().parse::<u32>().map_err(|_| bad());
        let tier = Tier {
            width: number(w)?,
            height: number(h)?,
            bitrate_kbps: number(rate)?,
        };
        if tier.width < 16 || tier.height < 16 || tier.width % 2 == 1 || tier.height % 2 == 1 {
            return Err(format!("{part:?}: sizes must be even and at least 16"));
        }
        if tier.bitrate_kbps < 50 {
            return Err(format!("{part:?}: below 50 kbit/s no picture survives"));
        }
        if let Some(previous) = tiers.last() {
            if tier.bitrate_kbps >= previous.bitrate_kbps || tier.width > previous.width {
                return Err(format!(
                    "{part:?}: each tier must be smaller and cheaper than the one before"
                ));
            }
        }
        tiers.push(tier);
    }
    Ok(tiers)
}

#[derive(Debug, Clone)]
pub struct MediaConfig {
    pub width: u32,
    pub height: u32,
    pub fps: u32,
    pub video_bitrate_kbps: u32,
    /// The tiers below the top one, in order (see `DEFAULT_TIERS`).
    pub lower_tiers: Vec<Tier>,
    pub audio_bitrate_bps: u32,
    pub audio_jitter_ms: u32,
    pub mixer_latency_ms: u32,
    /// Most voices mixed at once (`--max-mixed-voices`).
    pub max_mixed_voices: usize,
    /// A pipeline that fails writes a `.dot` graph of itself here (`--debug-dir`).
    pub debug_dir: Option<PathBuf>,
    /// Whether a room composites on a canvas sized to its cameras (see canvas.rs) or always on the
    /// full `width`×`height` (`--canvas fixed`).
    pub canvas: CanvasMode,
    /// Name labels on camera tiles (`--labels`).
    pub labels: bool,
}

/// `--canvas`: how large a room's composite really is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum CanvasMode {
    /// The smallest step of the canvas ladder that shows every camera at its own size (the full
    /// frame while recording). Clients are told the layout on the full frame either way.
    #[default]
    Fit,
    /// Always the full frame, unless the machine cannot keep up with the room (load.rs).
    Fixed,
}

impl MediaConfig {
    pub fn video_branch_latency_ms(&self) -> u32 {
        VIDEO_BRANCH_LATENCY_MS
    }

    /// Every tier, the top one (the composite's own size and bitrate) first.
    pub fn tiers(&self) -> Vec<Tier> {
        let top = Tier {
            width: self.width,
            height: self.height,
            bitrate_kbps: self.video_bitrate_kbps,
        };
        std::iter::once(top)
            .chain(self.lower_tiers.iter().copied())
            .collect()
    }
}

impl Default for MediaConfig {
    fn default() -> Self {
        MediaConfig {
            width: DEFAULT_WIDTH,
            height: DEFAULT_HEIGHT,
            fps: DEFAULT_FPS,
            video_bitrate_kbps: DEFAULT_VIDEO_BITRATE_KBPS,
            lower_tiers: parse_tiers(DEFAULT_TIERS).expect("DEFAULT_TIERS are tiers"),
            audio_bitrate_bps: DEFAULT_AUDIO_BITRATE_BPS,
            audio_jitter_ms: DEFAULT_AUDIO_JITTER_MS,
            mixer_latency_ms: DEFAULT_MIXER_LATENCY_MS,
            max_mixed_voices: DEFAULT_MAX_MIXED_VOICES,
            debug_dir: None,
            canvas: CanvasMode::default(),
            labels: true,
        }
    }
}

/// Where the server's media (ICE/DTLS/SRTP) sockets live.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UdpPolicy {
    /// A fresh ephemeral port per peer connection (the OS picks).
    Ephemeral,
    /// Every peer connection multiplexed on this one port: one firewall rule, one Docker mapping.
    Muxed(u16),
    /// Ports for peer connections are taken from this inclusive range.
    Range(u16, u16),
}

/// How the HTTPS certificate is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TlsConfig {
    Files {
        cert: PathBuf,
        key: PathBuf,
    },
    /// Generated at start-up for these host names and IP addresses.
    SelfSigned {
        hosts: Vec<String>,
    },
}

/// The WebRTC side of the server's network settings.
#[derive(Debug, Clone)]
pub struct RtcOptions {
    pub ice_servers: Vec<IceServer>,
    /// The address clients reach the server at, when it sits behind 1:1 NAT (a cloud VM).
    pub public_ip: Option<IpAddr>,
    pub udp: UdpPolicy,
    /// Gather loopback candidates only: for a participant on the server's own host (`mcu probe`
    /// against 127.0.0.1), where pairs between loopback and other local addresses only add noise
    /// (a wildcard-bound media port answers them from the other address, and ICE discards that).
    pub loopback_only: bool,
}

impl Default for RtcOptions {
    fn default() -> Self {
        RtcOptions {
            ice_servers: Vec::new(),
            public_ip: None,
            udp: UdpPolicy::Ephemeral,
            loopback_only: false,
        }
    }
}

/// Reads `URL[,username,credential]`, as `--ice-server` takes it.
pub fn parse_ice_server(text: &str) -> Result<IceServer, String> {
    let mut parts = text.split(',').map(str::trim);
    let url = parts
        .next()
        .filter(|u| !u.is_empty())
        .ok_or("empty ICE server")?;
    if !["stun:", "stuns:", "turn:", "turns:"]
        .iter()
        .any(|scheme| url.starts_with(scheme))
    {
        return Err(format!(
            "{url:?} is not a stun:, stuns:, turn: or turns: URL"
        ));
    }
    let username = parts.next().map(str::to_string);
    let credential = parts.next().map(str::to_string);
    if parts.next().is_some() {
        return Err(format!("{text:?}: expected URL[,username,credential]"));
    }
    if url.starts_with("turn") && (username.is_none() || credential.is_none()) {
        return Err(format!(
            "{url}: a TURN server needs a username and a credential"
        ));
    }
    Ok(IceServer {
        urls: vec![url.to_string()],
        username,
        credential,
    })
}

/// Reads `MIN-MAX`, as `--udp-port-range` takes it.
pub fn parse_port_range(text: &str) -> Result<(u16, u16), String> {
    let (a, b) = text
        .split_once('-')
        .ok_or_else(|| format!("{text:?}: expected MIN-MAX"))?;
    let min: u16 = a
        .trim()
        .parse()
        .map_err(|_| format!("{a:?} is not a port"))?;
    let max: u16 = b
        .trim()
        .parse()
        .map_err(|_| format!("{b:?} is not a port"))?;
    if min == 0 || min > max {
        return Err(format!("{text:?}: need 0 < MIN <= MAX"));
    }
    Ok((min, max))
}

/// Reads a size as people write it: `52428800`, `50MB`, `50 MiB`, `2GB`, `900kB` (k, M, G are
/// powers of 1000; Ki, Mi, Gi of 1024; a trailing B is optional).
pub fn parse_byte_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a size such as 50MB"))?;
    let unit = unit.trim().to_ascii_lowercase();
    let unit = unit.strip_suffix('b').unwrap_or(&unit);
    let factor: f64 = match unit {
        "" => 1.0,
        "k" => 1e3,
        "m" => 1e6,
        "g" => 1e9,
        "ki" => 1024.0,
        "mi" => 1024.0 * 1024.0,
        "gi" => 1024.0 * 1024.0 * 1024.0,
        _ => {
            return Err(format!(
                "{text:?}: unknown unit (use kB, MB, GB, KiB, MiB or GiB)"
            ))
        }
    };
    let bytes = value * factor;
    if !(bytes.is_finite() && bytes >= 1.0 && bytes < u64::MAX as f64) {
        return Err(format!("{text:?}: out of range"));
    }
    Ok(bytes.round() as u64)
}

#[derive(Debug, Clone)]
pub struct ServerConfig {
    pub listen: SocketAddr,
    pub media: MediaConfig,
    /// The composite's codec for rooms not named in `room_codecs`.
    pub video_codec: VideoCodec,
    /// Per-room codec overrides (e.g. an H.264 room for devices that only decode H.264 in hardware).
    pub room_codecs: HashMap<String, VideoCodec>,
    pub media_timeout: Duration,
    /// How long a participant may take from its join to its first RTP or RTCP packet.
    pub connect_timeout: Duration,
    pub max_participants: usize,
    /// Most WHEP watchers in one room.
    pub max_watchers: usize,
    /// Most rooms open at once; a join that would open one more is refused (`server_full`).
    /// `None`: no limit.
    pub max_rooms: Option<usize>,
    /// WebSockets one client address may hold at once (0: no limit).
    pub max_connections_per_address: usize,
    /// Rooms one client address may open per minute (0: no limit).
    pub max_new_rooms_per_address: usize,
    /// Reverse proxies whose `X-Forwarded-For` names the client (their own address otherwise
    /// would be every client's).
    pub trusted_proxies: Vec<std::net::IpAddr>,
    pub rtc: RtcOptions,
    pub tls: Option<TlsConfig>,
    /// Serve the web client from this directory instead of the copy built into the binary.
    pub web_dir: Option<PathBuf>,
    pub recordings_dir: PathBuf,
    /// Record every room from its creation until it empties.
    pub auto_record: bool,
    /// Bearer token for the admin API; without one, the API answers on loopback only.
    pub admin_token: Option<crate::auth::Secret>,
    /// With a secret, joining requires an HS256 token signed with it; without, rooms are open.
    pub jwt_secret: Option<crate::auth::Secret>,
    pub chat_history: usize,
    pub max_file_size: u64,
    pub max_room_files_size: u64,
    /// Bytes per second of each file transfer.
    pub file_rate: u64,
    /// Keep shared files here after their room ends; without it they go with the room.
    pub keep_files: Option<PathBuf>,
    /// The layout a room opens with (`--layout`).
    pub layout: crate::layout::LayoutSpec,
    /// Named layouts from `--layouts FILE`, which `--layout`, `set_layout` and the admin API can
    /// name.
    pub layouts: crate::layout::NamedLayouts,
    /// The cluster this node belongs to (`--redis-url`), if any.
    pub cluster: Option<crate::cluster::ClusterConfig>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: DEFAULT_LISTEN
                .parse()
                .expect("DEFAULT_LISTEN is a valid address"),
            media: MediaConfig::default(),
            video_codec: VideoCodec::Vp8,
            room_codecs: HashMap::new(),
            media_timeout: DEFAULT_MEDIA_TIMEOUT,
            connect_timeout: DEFAULT_CONNECT_TIMEOUT,
            max_participants: DEFAULT_MAX_PARTICIPANTS,
            max_watchers: DEFAULT_MAX_WATCHERS,
            max_rooms: None,
            max_connections_per_address: DEFAULT_MAX_CONNECTIONS_PER_ADDRESS,
            max_new_rooms_per_address: DEFAULT_MAX_NEW_ROOMS_PER_ADDRESS,
            trusted_proxies: Vec::new(),
            rtc: RtcOptions::default(),
            tls: None,
            web_dir: None,
            recordings_dir: PathBuf::from(DEFAULT_RECORDINGS_DIR),
            auto_record: false,
            admin_token: None,
            jwt_secret: None,
            chat_history: DEFAULT_CHAT_HISTORY,
            max_file_size: parse_byte_size(DEFAULT_MAX_FILE_SIZE)
                .expect("DEFAULT_MAX_FILE_SIZE is a size"),
            max_room_files_size: parse_byte_size(DEFAULT_MAX_ROOM_FILES_SIZE)
                .expect("DEFAULT_MAX_ROOM_FILES_SIZE is a size"),
            file_rate: parse_byte_size(DEFAULT_FILE_RATE).expect("DEFAULT_FILE_RATE is a size"),
            keep_files: None,
            layout: crate::layout::LayoutSpec::default(),
            layouts: crate::layout::NamedLayouts::default(),
            cluster: None,
        }
    }
}

impl ServerConfig {
    pub fn codec_for_room(&self, room: &str) -> VideoCodec {
        self.room_codecs
            .get(room)
            .copied()
            .unwrap_or(self.video_codec)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ice_servers_read_url_username_and_credential() {
        let stun = parse_ice_server("stun:stun.example.org:3478").unwrap();
        assert_eq!(stun.urls, vec!["stun:stun.example.org:3478"]);
        assert_eq!(stun.username, None);
        let turn =
            parse_ice_server("turn:turn.example.org:3478?transport=udp,alice,s3cret").unwrap();
        assert_eq!(turn.username.as_deref(), Some("alice"));
        assert_eq!(turn.credential.as_deref(), Some("s3cret"));
        assert!(
            parse_ice_server("turn:turn.example.org").is_err(),
            "TURN needs credentials"
        );
        assert!(parse_ice_server("http://example.org").is_err());
        assert!(parse_ice_server("").is_err());
        assert!(parse_ice_server("stun:a,b,c,d").is_err());
    }

    #[test]
    fn sizes_read_with_decimal_and_binary_units() {
        assert_eq!(parse_byte_size("52428800"), Ok(52_428_800));
        assert_eq!(parse_byte_size("50MB"), Ok(50_000_000));
        assert_eq!(parse_byte_size("50 MiB"), Ok(52_428_800));
        assert_eq!(parse_byte_size("1.5gb"), Ok(1_500_000_000));
        assert_eq!(parse_byte_size("900kB"), Ok(900_000));
        assert_eq!(parse_byte_size("2K"), Ok(2_000));
        for bad in ["", "MB", "50XB", "-5MB", "0"] {
            assert!(parse_byte_size(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn tiers_read_as_sizes_and_rates_each_below_the_last() {
        assert_eq!(
            parse_tiers("640x360@600, 320x180@200"),
            Ok(vec![
                Tier {
                    width: 640,
                    height: 360,
                    bitrate_kbps: 600
                },
                Tier {
                    width: 320,
                    height: 180,
                    bitrate_kbps: 200
                }
            ])
        );
        assert_eq!(parse_tiers("none"), Ok(vec![]));
        for bad in [
            "640x360",
            "640x360@",
            "641x360@600",
            "320x180@200,640x360@600",
            "8x8@100",
            "640x360@10",
        ] {
            assert!(parse_tiers(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn port_ranges_are_ordered_and_nonzero() {
        assert_eq!(parse_port_range("50000-50100"), Ok((50000, 50100)));
        assert!(parse_port_range("50100-50000").is_err());
        assert!(parse_port_range("0-10").is_err());
        assert!(parse_port_range("5000").is_err());
    }
}
