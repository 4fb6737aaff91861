//! The `mcu` binary: `serve` runs the conference server, `probe` joins synthetic participants,
//! `token` mints join tokens, `rooms`/`record`/`recordings` drive the admin API, `doctor` checks
//! the GStreamer installation, `health` asks a running server whether it is alive and `bench`
//! measures one.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use mcu::config::{self, MediaConfig, ServerConfig, VideoCodec};
use warp::http::Method;

#[derive(Parser)]
#[command(
    name = "mcu",
    version,
    about = "A WebRTC MCU: one composited stream per room"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the conference server.
    Serve(Box<ServeArgs>),
    /// Join synthetic participants to a room and check what they see and hear.
    Probe(ProbeArgs),
    /// Mint a join token (for a server started with --jwt-secret).
    Token(TokenArgs),
    /// List the rooms (admin API).
    Rooms(AdminArgs),
    /// Start or stop a room's recording (admin API).
    Record(RecordArgs),
    /// List the recordings (admin API).
    Recordings(AdminArgs),
    /// Check that every GStreamer element the server and the probe use is installed.
    Doctor,
    /// Ask a running server's /healthz (the container's HEALTHCHECK); exit 0 when healthy.
    Health(HealthArgs),
    /// Measure a server: CPU, memory, latency, frame rate and join time with N synthetic
    /// participants, against the media floor (see docs/performance.md).
    Bench(BenchArgs),
    /// The bench's media floor, run in a process of its own by `mcu bench`.
    #[command(hide = true)]
    BenchFloor(BenchFloorArgs),
}

#[derive(Args)]
struct BenchArgs {
    /// Synthetic participants (with --ramp: how many join per step).
    #[arg(long, default_value_t = 4)]
    participants: usize,
    /// How long to measure once everyone has joined (with --ramp: per step).
    #[arg(long, default_value_t = 10.0)]
    seconds: f64,
    /// Add participants until fps p5 < 29, video latency p95 > 150 ms or server CPU > 90 %,
    /// and report how many were held.
    #[arg(long)]
    ramp: bool,
    /// Spread the participants over this many rooms.
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// Participants per room that decode the composite and measure it.
    #[arg(long, default_value_t = 1)]
    receivers: usize,
    /// The server to measure; by default the bench starts its own on loopback.
    #[arg(long)]
    url: Option<String>,
    /// With --url on this machine: the server's process ID, for its CPU and memory.
    #[arg(long)]
    server_pid: Option<u32>,
    /// The size each participant sends, WxH (a browser asked for tile-sized video).
    #[arg(long, default_value = "320x180", value_parser = parse_size)]
    send_size: (usize, usize),
    /// Skip the media floor (no CPU ratio).
    #[arg(long)]
    no_floor: bool,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Write the plot (CPU and latency against participants) here, as SVG.
    #[arg(long)]
    svg: Option<PathBuf>,
}

#[derive(Args)]
struct BenchFloorArgs {
    #[arg(long)]
    media: PathBuf,
    #[arg(long)]
    participants: usize,
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    #[arg(long)]
    seconds: f64,
}

fn parse_size(text: &str) -> Result<(usize, usize), String> {
    let (w, h) = text
        .split_once('x')
        .ok_or_else(|| format!("{text:?}: expected WIDTHxHEIGHT"))?;
    let number = |v: &str| v.parse::<usize>().map_err(|e| format!("{v:?}: {e}"));
    Ok((number(w)?, number(h)?))
}

#[derive(Args)]
struct HealthArgs {
    /// What to ask; by default the server described by MCU_LISTEN and MCU_TLS_* on this machine.
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
struct TokenArgs {
    /// The server's JWT secret.
    #[arg(long, env = "MCU_JWT_SECRET", hide_env_values = true)]
    jwt_secret: String,
    /// The room the token admits to.
    #[arg(long)]
    room: String,
    /// The display name its holder joins under.
    #[arg(long)]
    name: String,
    /// How long it stays valid: 90s, 30m, 1h, 2d.
    #[arg(long, default_value = "8h", value_parser = mcu::auth::parse_ttl)]
    ttl: Duration,
    /// Its holder may start and stop the room's recording.
    #[arg(long)]
    record: bool,
    /// Also print the join link on this server (e.g. https://meet.example.org).
    #[arg(long)]
    url: Option<String>,
}

#[derive(Args)]
struct AdminArgs {
    /// The server's base URL (plain HTTP; for HTTPS use curl, see docs/api.md).
    #[arg(long, env = "MCU_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// The admin token, if the server has one.
    #[arg(long, env = "MCU_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
}

#[derive(Args)]
struct RecordArgs {
    #[arg(value_enum)]
    action: RecordCommand,
    room: String,
    #[command(flatten)]
    admin: AdminArgs,
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum RecordCommand {
    Start,
    Stop,
}

#[derive(Args)]
struct ServeArgs {
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
    /// Codec of the composite for every room not named in --room-codec.
    #[arg(long, env = "MCU_VIDEO_CODEC", value_enum, default_value_t = VideoCodec::Vp8)]
    video_codec: VideoCodec,
    /// Per-room composite codec, as ROOM=vp8|h264 (repeatable, or comma-separated in the env).
    #[arg(long = "room-codec", env = "MCU_ROOM_CODECS", value_delimiter = ',')]
    room_codecs: Vec<String>,
    /// Remove a participant from whom no RTP/RTCP arrived for this many seconds.
    #[arg(long, env = "MCU_MEDIA_TIMEOUT_SECS", default_value_t = config::DEFAULT_MEDIA_TIMEOUT.as_secs_f64())]
    media_timeout_secs: f64,
    /// Most participants in one room (at most 25, the largest grid).
    #[arg(long, env = "MCU_MAX_PARTICIPANTS", default_value_t = config::DEFAULT_MAX_PARTICIPANTS)]
    max_participants: usize,
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
    /// Record every room from its first participant until it empties.
    #[arg(long, env = "MCU_AUTO_RECORD", value_parser = clap::builder::FalseyValueParser::new())]
    auto_record: bool,
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

#[derive(Args)]
struct ProbeArgs {
    /// The server's base URL.
    #[arg(long, default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Room to join.
    #[arg(long, default_value = "probe")]
    room: String,
    /// How many synthetic participants.
    #[arg(long, default_value_t = 1)]
    participants: usize,
    /// How long to measure once everyone has joined.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Codec the participants send.
    #[arg(long, value_enum, default_value_t = VideoCodec::Vp8)]
    codec: VideoCodec,
    /// Join without a camera (microphone only): the others expect this participant's placeholder.
    #[arg(long)]
    no_camera: bool,
    /// Lowest received frame rate that passes.
    #[arg(long, default_value_t = mcu::probe::DEFAULT_MIN_FPS)]
    min_fps: f64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also check that participant ID (from outside this probe, e.g. a browser) shows this
    /// colour: ID=#RRGGBB (repeatable).
    #[arg(long, value_parser = parse_expectation)]
    expect: Vec<(String, mcu::probe::analysis::Rgb)>,
    /// A join token every participant presents (see `mcu token`).
    #[arg(long, env = "MCU_JOIN_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Each participant sends chat messages on its data channel and checks it was shown
    /// everyone's, in the same order as everyone else.
    #[arg(long)]
    chat: bool,
    /// The first participant shares a random file of this many bytes (or 20MB, 5MiB…); every
    /// other one downloads it and checks its SHA-256.
    #[arg(long, value_parser = config::parse_byte_size)]
    file: Option<u64>,
}

fn parse_expectation(text: &str) -> Result<(String, mcu::probe::analysis::Rgb), String> {
    let (id, colour) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=#RRGGBB"))?;
    let colour = mcu::probe::analysis::Rgb::parse_hex(colour)
        .ok_or_else(|| format!("{colour:?} is not a #RRGGBB colour"))?;
    Ok((id.to_string(), colour))
}

fn server_config(args: ServeArgs) -> Result<ServerConfig> {
    let mut room_codecs = HashMap::new();
    for entry in &args.room_codecs {
        let (room, codec) = entry
            .split_once('=')
            .with_context(|| format!("--room-codec {entry:?}: expected ROOM=vp8|h264"))?;
        let codec = VideoCodec::parse(codec)
            .with_context(|| format!("--room-codec {entry:?}: unknown codec {codec:?}"))?;
        mcu::protocol::validate_room_name(room)
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
    if !(1..=mcu::room::layout::MAX_TILES).contains(&args.max_participants) {
        bail!(
            "--max-participants must be between 1 and {}",
            mcu::room::layout::MAX_TILES
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
        .map(mcu::auth::Secret::new);
    if let Some(secret) = &jwt_secret {
        mcu::auth::check_secret(secret).map_err(|e| anyhow::anyhow!("--jwt-secret: {e}"))?;
    }
    let admin_token = args
        .admin_token
        .filter(|t| !t.is_empty())
        .map(mcu::auth::Secret::new);
    Ok(ServerConfig {
        listen: args.listen,
        media: MediaConfig {
            width: args.width,
            height: args.height,
            fps: args.fps,
            video_bitrate_kbps: args.video_bitrate_kbps,
            ..MediaConfig::default()
        },
        video_codec: args.video_codec,
        room_codecs,
        media_timeout: Duration::from_secs_f64(args.media_timeout_secs),
        max_participants: args.max_participants,
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
    })
}

fn mint_token(args: TokenArgs) -> Result<()> {
    let secret = mcu::auth::Secret::new(args.jwt_secret);
    mcu::auth::check_secret(&secret).map_err(|e| anyhow::anyhow!("--jwt-secret: {e}"))?;
    mcu::protocol::validate_room_name(&args.room).map_err(|e| anyhow::anyhow!("room name {e}"))?;
    let name = mcu::protocol::validate_display_name(&args.name)
        .map_err(|e| anyhow::anyhow!("display name {e}"))?;
    let token = mcu::auth::mint(
        &secret,
        &args.room,
        &name,
        args.record,
        args.ttl,
        std::time::SystemTime::now(),
    )?;
    println!("{token}");
    if let Some(url) = args.url {
        println!(
            "{}/r/{}?token={token}",
            url.trim_end_matches('/'),
            args.room
        );
    }
    Ok(())
}

async fn admin_call(args: &AdminArgs, method: Method, path: &str) -> Result<bool> {
    let token = args
        .admin_token
        .clone()
        .filter(|t| !t.is_empty())
        .map(mcu::auth::Secret::new);
    let client = mcu::admin::client::AdminClient::new(&args.url, token)?;
    let answer = client.call(method, path).await?;
    Ok(mcu::admin::client::print(&answer))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=error,webrtc_ice=error,webrtc_mdns=error,webrtc_dtls=error,webrtc_srtp=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

/// Parses the command line; for `serve --config FILE`, settings from the file fill in every flag
/// that neither the command line nor the environment set (flags > environment > file > default).
fn parse_cli() -> Result<Cli> {
    let argv: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let matches = Cli::command().get_matches_from(&argv);
    let Some(("serve", serve)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = serve.get_one::<PathBuf>("config") else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
    let serve_command = Cli::command();
    let serve_command = serve_command
        .find_subcommand("serve")
        .context("the serve subcommand exists")?;
    let mut extra: Vec<std::ffi::OsString> = Vec::new();
    for (key, value) in &table {
        let arg = serve_command
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()))
            .with_context(|| format!("{}: unknown setting {key:?}", path.display()))?;
        let id = arg.get_id().as_str();
        let set_elsewhere = !matches!(
            serve.value_source(id),
            None | Some(clap::parser::ValueSource::DefaultValue)
        );
        if set_elsewhere {
            continue;
        }
        let values: Vec<String> = match value {
            toml::Value::Array(items) => items.iter().map(toml_scalar).collect::<Result<_>>()?,
            toml::Value::Boolean(true) => vec![String::new()],
            toml::Value::Boolean(false) => continue,
            other => vec![toml_scalar(other)?],
        };
        for v in values {
            if v.is_empty() {
                extra.push(format!("--{key}").into());
            } else {
                extra.push(format!("--{key}={v}").into());
            }
        }
    }
    let mut full = argv;
    full.extend(extra);
    Ok(Cli::from_arg_matches(
        &Cli::command().try_get_matches_from(full)?,
    )?)
}

fn toml_scalar(value: &toml::Value) -> Result<String> {
    Ok(match value {
        toml::Value::String(s) => s.clone(),
        toml::Value::Integer(i) => i.to_string(),
        toml::Value::Float(f) => f.to_string(),
        toml::Value::Boolean(b) => b.to_string(),
        other => bail!("unsupported value in the config file: {other}"),
    })
}

fn main() -> ExitCode {
    let cli = match parse_cli() {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    init_logging();
    if let Err(e) = gstreamer::init() {
        eprintln!("error: GStreamer could not start: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: could not start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match cli.command {
            Command::Serve(args) => mcu::server::run(server_config(*args)?).await.map(|_| true),
            Command::Probe(args) => {
                let config = mcu::probe::ProbeConfig {
                    url: args.url,
                    room: args.room,
                    participants: args.participants,
                    seconds: args.seconds,
                    codec: args.codec,
                    camera: !args.no_camera,
                    min_fps: args.min_fps,
                    json: args.json,
                    expect: args.expect,
                    token: args.token.map(mcu::auth::Secret::new),
                    chat: args.chat,
                    file: args.file.map(|b| b as usize),
                };
                let report = mcu::probe::run(&config).await?;
                print!("{}", mcu::probe::summary(&report));
                Ok(report.ok)
            }
            Command::Bench(args) => {
                let config = mcu::bench::BenchConfig {
                    url: args.url,
                    server_pid: args.server_pid,
                    participants: args.participants,
                    rooms: args.rooms,
                    receivers: args.receivers,
                    seconds: args.seconds,
                    ramp: args.ramp,
                    step_seconds: args.seconds,
                    send_width: args.send_size.0,
                    send_height: args.send_size.1,
                    floor: !args.no_floor,
                    json: args.json,
                    svg: args.svg,
                };
                let report = mcu::bench::run(&config).await?;
                print!("{}", mcu::bench::summary(&report));
                Ok(true)
            }
            Command::BenchFloor(args) => {
                let report = mcu::bench::floor::run(
                    &args.media,
                    args.participants,
                    args.rooms,
                    args.seconds,
                )
                .await?;
                println!("{}", serde_json::to_string(&report)?);
                Ok(true)
            }
            Command::Token(args) => mint_token(args).map(|_| true),
            Command::Rooms(args) => admin_call(&args, Method::GET, "rooms").await,
            Command::Recordings(args) => admin_call(&args, Method::GET, "recordings").await,
            Command::Doctor => {
                let report = mcu::doctor::examine();
                print!("{}", mcu::doctor::render(&report));
                Ok(report.ok())
            }
            Command::Health(args) => {
                let url = match args.url {
                    Some(url) => url,
                    None => mcu::health::url_from_env()?,
                };
                let answer = mcu::health::check(&url).await?;
                println!("{} {}", answer.status, answer.body.trim());
                Ok(answer.healthy())
            }
            Command::Record(args) => {
                mcu::protocol::validate_room_name(&args.room)
                    .map_err(|e| anyhow::anyhow!("room name {e}"))?;
                let method = match args.action {
                    RecordCommand::Start => Method::POST,
                    RecordCommand::Stop => Method::DELETE,
                };
                admin_call(
                    &args.admin,
                    method,
                    &format!("rooms/{}/recording", args.room),
                )
                .await
            }
        }
    });
    // Pipelines and peer connections close with the runtime.
    runtime.shutdown_timeout(Duration::from_secs(2));
    match result {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::FAILURE,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
