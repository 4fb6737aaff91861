//! `mcu serve`'s flags (each also an `MCU_*` variable, and a key of `--config FILE`) and their
//! checking into the one `ServerConfig` the server runs on.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Args;
use mcu_server::codec::VideoCodec;
use mcu_server::config::{self, MediaConfig, ServerConfig};
use mcu_server::protocol::layout::Fit;

/// `--fit`, as clap reads it (the protocol's `Fit` stays free of CLI concerns).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum FitArg {
    Crop,
    Letterbox,
}

#[derive(Args)]
pub struct ServeArgs {
    /// A TOML file of settings, keyed by flag name (e.g. `udp-port = 50000`). Flags and
    /// environment variables override it.
    #[arg(long, env = "MCU_CONFIG")]
    config: Option<PathBuf>,
    /// Address for HTTP and WebSocket signalling (port 0 picks a free port).
    #[arg(long, env = "MCU_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: SocketAddr,
    /// Composite width in pixels.
    #[arg(long, env = "MCU_WIDTH", default_value_t = config::DEFAULT_WIDTH)]
    width: u32,
    /// Composite height in pixels.
    #[arg(long, env = "MCU_HEIGHT", default_value_t = config::DEFAULT_HEIGHT)]
    height: u32,
    /// Composite frame rate.
    #[arg(long, env = "MCU_FPS", default_value_t = config::DEFAULT_FPS)]
    fps: u32,
    /// Composite video bitrate, kbit/s.
    #[arg(long, env = "MCU_VIDEO_BITRATE_KBPS", default_value_t = config::DEFAULT_VIDEO_BITRATE_KBPS)]
    video_bitrate_kbps: u32,
    /// The composite's lower tiers, for viewers whose link cannot carry the top one, as
    /// WxH@KBPS,… (smaller and cheaper each), or none.
    #[arg(long, env = "MCU_TIERS", default_value = config::DEFAULT_TIERS, value_parser = config::parse_tiers)]
    tiers: ::std::vec::Vec<config::Tier>,
    /// How large each room's composite really is: fit (the smallest of 100, 75, 50 or 25 % of
    /// --width×--height that shows every camera at its own size; the full size while recording)
    /// or fixed (always the full size).
    #[arg(long, env = "MCU_CANVAS", value_enum, default_value_t = config::CanvasMode::Fit)]
    canvas: config::CanvasMode,
    /// The layout each room opens with: grid, speaker (the active speaker large, the others in a
    /// strip), or a name from --layouts. Participants allowed to (and the admin API) change it.
    #[arg(long, env = "MCU_LAYOUT", default_value = "grid")]
    layout: String,
    /// A JSON file of named layouts, {"layouts": {"name": {"layout": "custom", "regions": […]}}}
    /// (docs/api.md), which --layout, set_layout and the admin API can name.
    #[arg(long, env = "MCU_LAYOUTS")]
    layouts: Option<PathBuf>,
    /// How pictures fill tiles of another shape when a layout does not say: crop (scaled to fill,
    /// the edges cut, faces centred) or letterbox (whole, with bars).
    #[arg(long, env = "MCU_FIT", value_enum, default_value_t = FitArg::Crop)]
    fit: FitArg,
    /// Name labels on camera tiles (and a muted mark); false draws none.
    #[arg(long, env = "MCU_LABELS", default_value_t = true, action = clap::ArgAction::Set)]
    labels: bool,
    /// Most voices mixed at once: a room with more microphones mixes only those talking (a
    /// talker keeps their place through a pause) and encodes one mix for everyone else.
    #[arg(long, env = "MCU_MAX_MIXED_VOICES", default_value_t = config::DEFAULT_MAX_MIXED_VOICES as u64, value_parser = clap::value_parser!(u64).range(1..=25))]
    max_mixed_voices: u64,
    /// Codec of the composite for every room not named in --room-codec.
    #[arg(long, env = "MCU_VIDEO_CODEC", value_enum, default_value_t = VideoCodec::Vp8)]
    video_codec: VideoCodec,
    /// Per-room composite codec, as ROOM=vp8|h264 (repeatable, or comma-separated in the env).
    #[arg(long = "room-codec", env = "MCU_ROOM_CODECS", value_delimiter = ',')]
    room_codecs: Vec<String>,
    /// Remove a participant from whom no RTP/RTCP arrived for this many seconds.
    #[arg(long, env = "MCU_MEDIA_TIMEOUT_SECS", default_value_t = config::DEFAULT_MEDIA_TIMEOUT.as_secs_f64())]
    media_timeout_secs: f64,
    /// Remove a participant whose first RTP/RTCP did not arrive this many seconds after joining
    /// (its connection never completed).
    #[arg(long, env = "MCU_CONNECT_TIMEOUT_SECS", default_value_t = config::DEFAULT_CONNECT_TIMEOUT.as_secs_f64())]
    connect_timeout_secs: f64,
    /// Most participants in one room (at most 25, the largest grid).
    #[arg(long, env = "MCU_MAX_PARTICIPANTS", default_value_t = config::DEFAULT_MAX_PARTICIPANTS)]
    max_participants: usize,
    /// Most WHEP watchers in one room (each also holds a connection of its address).
    #[arg(long, env = "MCU_MAX_WATCHERS", default_value_t = config::DEFAULT_MAX_WATCHERS)]
    max_watchers: usize,
    /// Most rooms open at once (0: no limit). A join that would open one more is refused with
    /// server_full. By default 3 per two cores: what two cores held of rooms of four browsers
    /// (docs/performance.md).
    #[arg(long, env = "MCU_MAX_ROOMS")]
    max_rooms: Option<usize>,
    /// WebSockets one client address may hold at once (0: no limit); past it, rate_limited.
    #[arg(long, env = "MCU_MAX_CONNECTIONS_PER_ADDRESS", default_value_t = config::DEFAULT_MAX_CONNECTIONS_PER_ADDRESS)]
    max_connections_per_address: usize,
    /// Rooms one client address may open per minute (0: no limit); past it, rate_limited.
    #[arg(long, env = "MCU_MAX_NEW_ROOMS_PER_ADDRESS", default_value_t = config::DEFAULT_MAX_NEW_ROOMS_PER_ADDRESS)]
    max_new_rooms_per_address: usize,
    /// A reverse proxy in front of this server (repeatable, or comma-separated in the env): its
    /// X-Forwarded-For names the client for the per-address limits, and admin requests through
    /// it need --admin-token.
    #[arg(
        long = "trusted-proxy",
        env = "MCU_TRUSTED_PROXIES",
        value_delimiter = ','
    )]
    trusted_proxies: Vec<std::net::IpAddr>,
    /// HTTPS certificate chain (PEM); needs --tls-key.
    #[arg(long, env = "MCU_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// HTTPS private key (PEM); needs --tls-cert.
    #[arg(long, env = "MCU_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve HTTPS with a certificate generated at start-up for these host names/IPs
    /// (comma-separated; bare flag: localhost, 127.0.0.1 and --public-ip).
    #[arg(long, env = "MCU_TLS_SELF_SIGNED", num_args = 0..=1, require_equals = true,
          default_missing_value = "localhost", value_delimiter = ',', conflicts_with = "tls_cert")]
    tls_self_signed: Option<Vec<String>>,
    /// The address clients reach this server at, advertised in ICE candidates (1:1 NAT, cloud VMs).
    #[arg(long, env = "MCU_PUBLIC_IP")]
    public_ip: Option<std::net::IpAddr>,
    /// A STUN/TURN server for clients, as URL[,username,credential] (repeatable; `;` between
    /// servers in the environment variable).
    #[arg(long = "ice-server", env = "MCU_ICE_SERVERS", value_delimiter = ';')]
    ice_servers: Vec<String>,
    /// Multiplex every peer connection's media on this one UDP port.
    #[arg(long, env = "MCU_UDP_PORT", conflicts_with = "udp_port_range")]
    udp_port: Option<u16>,
    /// Take media ports from this range instead, as MIN-MAX.
    #[arg(long, env = "MCU_UDP_PORT_RANGE")]
    udp_port_range: Option<String>,
    /// Serve the web client from this directory (for development) instead of the built-in copy.
    #[arg(long, env = "MCU_WEB_DIR")]
    web_dir: Option<PathBuf>,
    /// Where recordings are written (created if missing).
    #[arg(long, env = "MCU_RECORDINGS_DIR", default_value = config::DEFAULT_RECORDINGS_DIR)]
    recordings_dir: PathBuf,
    /// A pipeline that fails writes a graph of itself here (a `.dot` file; `dot -Tsvg` draws it).
    #[arg(long, env = "MCU_DEBUG_DIR")]
    debug_dir: Option<PathBuf>,
    /// Record every room from its first participant until it empties.
    #[arg(long, env = "MCU_AUTO_RECORD", value_parser = clap::builder::FalseyValueParser::new())]
    auto_record: bool,
    /// Join a cluster: the Redis that holds which node has each room (redis://HOST:PORT). Without
    /// it this server is a cluster of one, as always.
    #[arg(long, env = "MCU_REDIS_URL", hide_env_values = true)]
    redis_url: Option<String>,
    /// How clients reach this node, e.g. https://node-b.example.org:8443 (other nodes send
    /// clients here); by default the address it listens on.
    #[arg(long, env = "MCU_NODE_URL", requires = "redis_url")]
    node_url: Option<String>,
    /// This node's name in the cluster (unique); by default the host name and a random suffix.
    #[arg(long, env = "MCU_NODE_ID", requires = "redis_url")]
    node_id: Option<String>,
    /// Bearer token for the admin API (/api/v1); without one it answers on loopback only.
    #[arg(long, env = "MCU_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// Require join tokens signed with this secret (HS256, at least 32 bytes; see `mcu token`).
    /// Without it, rooms are open to anyone who reaches the server.
    #[arg(long, env = "MCU_JWT_SECRET", hide_env_values = true)]
    jwt_secret: Option<String>,
    /// Chat messages a room keeps and shows to whoever joins later (at most 200).
    #[arg(long, env = "MCU_CHAT_HISTORY", default_value_t = config::DEFAULT_CHAT_HISTORY)]
    chat_history: usize,
    /// Largest file a participant may share, in bytes or with a unit (50MB, 2GiB).
    #[arg(long, env = "MCU_MAX_FILE_SIZE", default_value = config::DEFAULT_MAX_FILE_SIZE,
          value_parser = config::parse_byte_size)]
    max_file_size: u64,
    /// Most bytes of shared files one room holds at a time.
    #[arg(long, env = "MCU_MAX_ROOM_FILES_SIZE", default_value = config::DEFAULT_MAX_ROOM_FILES_SIZE,
          value_parser = config::parse_byte_size)]
    max_room_files_size: u64,
    /// Bytes per second of each file transfer (an upload, or a download to one participant), so
    /// a file never crowds out the call's audio and video.
    #[arg(long, env = "MCU_FILE_RATE", default_value = config::DEFAULT_FILE_RATE,
          value_parser = config::parse_byte_size)]
    file_rate: u64,
    /// Keep shared files in this directory after their room ends, each with a .json sidecar;
    /// without it they live in a temporary directory and go with their room.
    #[arg(long, env = "MCU_KEEP_FILES")]
    keep_files: Option<PathBuf>,
}

pub fn server_config(args: ServeArgs) -> Result<ServerConfig> {
    let mut room_codecs = HashMap::new();
    for entry in &args.room_codecs {
        let (room, codec) = entry
            .split_once('=')
            .with_context(|| format!("--room-codec {entry:?}: expected ROOM=vp8|h264"))?;
        let codec = VideoCodec::parse(codec)
            .with_context(|| format!("--room-codec {entry:?}: unknown codec {codec:?}"))?;
        mcu_server::protocol::validate_room_name(room)
            .map_err(|e| anyhow::anyhow!("--room-codec {entry:?}: room name {e}"))?;
        room_codecs.insert(room.to_string(), codec);
    }
    if !args.width.is_multiple_of(2)
        || !args.height.is_multiple_of(2)
        || args.width < 64
        || args.height < 64
    {
        bail!("the composite must be at least 64×64 with even sides");
    }
    if !(1..=60).contains(&args.fps) {
        bail!("--fps must be between 1 and 60");
    }
    if !(1..=mcu_server::layout::MAX_TILES).contains(&args.max_participants) {
        bail!(
            "--max-participants must be between 1 and {}",
            mcu_server::layout::MAX_TILES
        );
    }
    if args.chat_history > config::MAX_CHAT_HISTORY {
        bail!(
            "--chat-history must be at most {}",
            config::MAX_CHAT_HISTORY
        );
    }
    if args.max_file_size > args.max_room_files_size {
        bail!("--max-file-size cannot exceed --max-room-files-size");
    }
    if !(args.media_timeout_secs.is_finite() && args.media_timeout_secs > 0.0) {
        bail!("--media-timeout-secs must be a positive number");
    }
    if !(args.connect_timeout_secs.is_finite() && args.connect_timeout_secs > 0.0) {
        bail!("--connect-timeout-secs must be a positive number");
    }
    let ice_servers = args
        .ice_servers
        .iter()
        .filter(|s| !s.trim().is_empty())
        .map(|s| config::parse_ice_server(s).map_err(|e| anyhow::anyhow!("--ice-server: {e}")))
        .collect::<Result<Vec<_>>>()?;
    let udp = match (args.udp_port, &args.udp_port_range) {
        (Some(port), _) => config::UdpPolicy::Muxed(port),
        (None, Some(range)) => {
            let (min, max) = config::parse_port_range(range)
                .map_err(|e| anyhow::anyhow!("--udp-port-range: {e}"))?;
            config::UdpPolicy::Range(min, max)
        }
        (None, None) => config::UdpPolicy::Ephemeral,
    };
    let tls = match (&args.tls_cert, &args.tls_key, &args.tls_self_signed) {
        (Some(cert), Some(key), _) => Some(config::TlsConfig::Files {
            cert: cert.clone(),
            key: key.clone(),
        }),
        (_, _, Some(hosts)) => {
            let mut hosts: Vec<String> = hosts.iter().filter(|h| !h.is_empty()).cloned().collect();
            for default in ["localhost", "127.0.0.1"] {
                if !hosts.iter().any(|h| h == default) {
                    hosts.push(default.to_string());
                }
            }
            if let Some(ip) = args.public_ip {
                hosts.push(ip.to_string());
            }
            Some(config::TlsConfig::SelfSigned { hosts })
        }
        _ => None,
    };
    // Empty is unset, as for the admin token: docker-compose.yml passes `${MCU_JWT_SECRET:-}`.
    // The server then warns at start-up that rooms are open.
    let jwt_secret = args
        .jwt_secret
        .filter(|s| !s.is_empty())
        .map(mcu_server::auth::Secret::new);
    if let Some(secret) = &jwt_secret {
        mcu_server::auth::check_secret(secret).map_err(|e| anyhow::anyhow!("--jwt-secret: {e}"))?;
    }
    let admin_token = args
        .admin_token
        .filter(|t| !t.is_empty())
        .map(mcu_server::auth::Secret::new);
    let layouts = match &args.layouts {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("--layouts: reading {}", path.display()))?;
            mcu_server::layout::NamedLayouts::parse(&text)
                .map_err(|e| anyhow::anyhow!("--layouts {}: {e}", path.display()))?
        }
        None => mcu_server::layout::NamedLayouts::default(),
    };
    let layouts = layouts.with_default_fit(match args.fit {
        FitArg::Crop => Fit::Crop,
        FitArg::Letterbox => Fit::Letterbox,
    });
    let layout = layouts
        .resolve(&mcu_server::protocol::layout::LayoutRequest {
            layout: args.layout.clone(),
            ..Default::default()
        })
        .map_err(|e| anyhow::anyhow!("--layout: {e}"))?;
    Ok(ServerConfig {
        listen: args.listen,
        media: MediaConfig {
            width: args.width,
            height: args.height,
            fps: args.fps,
            video_bitrate_kbps: args.video_bitrate_kbps,
            lower_tiers: args.tiers,
            debug_dir: args.debug_dir,
            canvas: args.canvas,
            max_mixed_voices: args.max_mixed_voices as usize,
            labels: args.labels,
            ..MediaConfig::default()
        },
        video_codec: args.video_codec,
        room_codecs,
        media_timeout: Duration::from_secs_f64(args.media_timeout_secs),
        connect_timeout: Duration::from_secs_f64(args.connect_timeout_secs),
        max_participants: args.max_participants,
        max_watchers: args.max_watchers,
        max_rooms: match args.max_rooms {
            Some(0) => None,
            Some(n) => Some(n),
            None => Some(config::default_max_rooms(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            )),
        },
        max_connections_per_address: args.max_connections_per_address,
        max_new_rooms_per_address: args.max_new_rooms_per_address,
        trusted_proxies: args.trusted_proxies,
        rtc: config::RtcOptions {
            ice_servers,
            public_ip: args.public_ip,
            udp,
            loopback_only: false,
        },
        tls,
        web_dir: args.web_dir,
        recordings_dir: args.recordings_dir,
        auto_record: args.auto_record,
        admin_token,
        jwt_secret,
        chat_history: args.chat_history,
        max_file_size: args.max_file_size,
        max_room_files_size: args.max_room_files_size,
        file_rate: args.file_rate,
        keep_files: args.keep_files,
        layout,
        layouts,
        cluster: args
            .redis_url
            .map(|redis_url| mcu_server::cluster::ClusterConfig {
                redis_url,
                node_id: args
                    .node_id
                    .unwrap_or_else(mcu_server::cluster::default_node_id),
                node_url: args.node_url,
            }),
    })
}
