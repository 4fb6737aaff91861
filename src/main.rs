//! The `mcu` binary: `serve` runs the conference server, `probe` joins synthetic participants.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use mcu::config::{self, MediaConfig, ServerConfig, VideoCodec};

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
    Serve(ServeArgs),
    /// Join synthetic participants to a room and check what they see and hear.
    Probe(ProbeArgs),
}

#[derive(Args)]
struct ServeArgs {
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
    if !(args.media_timeout_secs.is_finite() && args.media_timeout_secs > 0.0) {
        bail!("--media-timeout-secs must be a positive number");
    }
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
        ice_servers: Vec::new(),
    })
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=error,webrtc_ice=error,webrtc_mdns=error,webrtc_dtls=error,webrtc_srtp=error"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
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
            Command::Serve(args) => mcu::server::run(server_config(args)?).await.map(|_| true),
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
                };
                let report = mcu::probe::run(&config).await?;
                print!("{}", mcu::probe::summary(&report));
                Ok(report.ok)
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
