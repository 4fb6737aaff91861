//! The `mcu` binary: `serve` runs the conference server, `probe` joins synthetic participants,
//! `token` mints join tokens, `rooms`/`record`/`recordings` drive the admin API, `doctor` checks
//! the GStreamer installation, `health` asks a running server whether it is alive and `bench`
//! measures one.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use mcu_server::codec::VideoCodec;
use mcu_server::config;
use warp::http::Method;

mod admin_client;
mod doctor;
mod health;
mod serve_args;
use serve_args::{server_config, ServeArgs};

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
    /// Spread the participants over this many rooms (with --ramp-rooms: the most rooms to open).
    #[arg(long, default_value_t = 1)]
    rooms: usize,
    /// With --ramp: open rooms of --participants one after the other, up to --rooms, until a
    /// criterion breaks, and report the rooms held.
    #[arg(long)]
    ramp_rooms: bool,
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
    #[arg(long, default_value = mcu_probe::bench::DEFAULT_SEND_SIZE, value_parser = parse_size)]
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
    /// Bad links for chosen participants, who are then measured apart (their tier over time,
    /// frame rate, freezes, settling time).
    #[command(flatten)]
    link: LinkArgs,
    /// Lift the bad links this many seconds into the measurement, to see the viewers move back
    /// up.
    #[arg(long)]
    lift_after: Option<f64>,
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
    #[arg(long, default_value = "8h", value_parser = mcu_server::auth::parse_ttl)]
    ttl: Duration,
    /// Its holder may start and stop the room's recording.
    #[arg(long)]
    record: bool,
    /// Its holder may switch the room's layout.
    #[arg(long)]
    layout: bool,
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
    #[arg(long, default_value_t = mcu_probe::probe::DEFAULT_MIN_FPS)]
    min_fps: f64,
    /// Write the JSON report here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Also check that participant ID (from outside this probe, e.g. a browser) shows this
    /// colour: ID=#RRGGBB (repeatable).
    #[arg(long, value_parser = parse_expectation)]
    expect: Vec<(String, mcu_probe::probe::analysis::Rgb)>,
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
    #[command(flatten)]
    link: LinkArgs,
    /// Send camera-like video (moving detail around the colour the checks read) instead of a
    /// flat colour, which compresses to almost nothing; on whenever a link is impaired.
    #[arg(long)]
    camera_like: bool,
}

/// A bad link for chosen synthetic participants, built at their own UDP socket.
#[derive(Args)]
struct LinkArgs {
    /// Shape their downlink (what the server sends them) to this many kbit/s, through a short
    /// queue: what does not fit is dropped, as on a thin link. A list (1200,300) is handed out
    /// to the impaired participants in turn.
    #[arg(long, value_delimiter = ',')]
    downlink_kbps: Vec<u32>,
    /// Percent of their downlink packets lost at random.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    downlink_loss: f64,
    /// Percent of their uplink packets (what they send the server) lost at random.
    #[arg(long, default_value_t = 0.0, value_parser = parse_percent)]
    uplink_loss: f64,
    /// Delay each of their packets, either way, by a random 0 to this many ms (which reorders).
    #[arg(long, default_value_t = 0)]
    jitter_ms: u32,
    /// Which participants have the bad link, by join order (1 is the first; comma-separated);
    /// by default the last one.
    #[arg(long, value_delimiter = ',')]
    impaired: Vec<usize>,
}

impl LinkArgs {
    /// The impaired participants (by join order, from 1) of `participants`, each with its link;
    /// empty when no link flag was given.
    fn impaired(&self, participants: usize) -> Result<Vec<(usize, mcu_probe::impair::Impairment)>> {
        let link = |n: usize| mcu_probe::impair::Impairment {
            downlink_kbps: match self.downlink_kbps.as_slice() {
                [] => None,
                rates => Some(rates[n % rates.len()]),
            },
            downlink_loss: self.downlink_loss / 100.0,
            uplink_loss: self.uplink_loss / 100.0,
            jitter_ms: self.jitter_ms,
        };
        if link(0).is_perfect() {
            return Ok(Vec::new());
        }
        let chosen = match self.impaired.as_slice() {
            [] => vec![participants],
            chosen => chosen.to_vec(),
        };
        if let Some(n) = chosen.iter().find(|n| **n == 0 || **n > participants) {
            bail!("--impaired {n}: participants are numbered 1 to {participants}");
        }
        Ok(chosen
            .into_iter()
            .enumerate()
            .map(|(i, n)| (n, link(i)))
            .collect())
    }
}

fn parse_percent(text: &str) -> Result<f64, String> {
    let value: f64 = text
        .trim_end_matches('%')
        .parse()
        .map_err(|_| format!("{text:?} is not a percentage"))?;
    if !(0.0..=100.0).contains(&value) {
        return Err(format!("{text:?} is not between 0 and 100"));
    }
    Ok(value)
}

fn parse_expectation(text: &str) -> Result<(String, mcu_probe::probe::analysis::Rgb), String> {
    let (id, colour) = text
        .split_once('=')
        .ok_or_else(|| format!("{text:?}: expected ID=#RRGGBB"))?;
    let colour = mcu_probe::probe::analysis::Rgb::parse_hex(colour)
        .ok_or_else(|| format!("{colour:?} is not a #RRGGBB colour"))?;
    Ok((id.to_string(), colour))
}

fn mint_token(args: TokenArgs) -> Result<()> {
    let secret = mcu_server::auth::Secret::new(args.jwt_secret);
    mcu_server::auth::check_secret(&secret).map_err(|e| anyhow::anyhow!("--jwt-secret: {e}"))?;
    mcu_server::protocol::validate_room_name(&args.room)
        .map_err(|e| anyhow::anyhow!("room name {e}"))?;
    let name = mcu_server::protocol::validate_display_name(&args.name)
        .map_err(|e| anyhow::anyhow!("display name {e}"))?;
    let token = mcu_server::auth::mint_with(
        &secret,
        &args.room,
        &name,
        mcu_server::auth::Grants {
            record: args.record,
            layout: args.layout,
        },
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
        .map(mcu_server::auth::Secret::new);
    let client = crate::admin_client::AdminClient::new(&args.url, token)?;
    let answer = client.call(method, path).await?;
    Ok(crate::admin_client::print(&answer))
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,webrtc=error,webrtc_ice=error,webrtc_mdns=error,webrtc_dtls=error,webrtc_srtp=error"));
    // Colours only for a person at a terminal, not in a log file or `docker logs`.
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
            Command::Serve(args) => mcu_server::server::run(server_config(*args)?)
                .await
                .map(|_| true),
            Command::Probe(args) => {
                let impaired = args.link.impaired(args.participants)?;
                let config = mcu_probe::probe::ProbeConfig {
                    camera_like: args.camera_like || !impaired.is_empty(),
                    impaired,
                    url: args.url,
                    room: args.room,
                    participants: args.participants,
                    seconds: args.seconds,
                    codec: args.codec,
                    camera: !args.no_camera,
                    min_fps: args.min_fps,
                    json: args.json,
                    expect: args.expect,
                    token: args.token.map(mcu_server::auth::Secret::new),
                    chat: args.chat,
                    file: args.file.map(|b| b as usize),
                };
                let report = mcu_probe::probe::run(&config).await?;
                print!("{}", mcu_probe::probe::summary(&report));
                Ok(report.ok)
            }
            Command::Bench(args) => {
                let config = mcu_probe::bench::BenchConfig {
                    url: args.url,
                    server_pid: args.server_pid,
                    participants: args.participants,
                    rooms: args.rooms,
                    receivers: args.receivers,
                    seconds: args.seconds,
                    ramp: args.ramp || args.ramp_rooms,
                    ramp_rooms: args.ramp_rooms,
                    step_seconds: args.seconds,
                    send_width: args.send_size.0,
                    send_height: args.send_size.1,
                    floor: !args.no_floor,
                    json: args.json,
                    svg: args.svg,
                    impaired: args
                        .link
                        .impaired(args.participants)?
                        .into_iter()
                        .map(|(n, link)| (n - 1, link))
                        .collect(),
                    lift_after: args.lift_after,
                };
                let report = mcu_probe::bench::run(&config).await?;
                print!("{}", mcu_probe::bench::summary(&report));
                Ok(true)
            }
            Command::BenchFloor(args) => {
                let report = mcu_probe::bench::floor::run(
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
                let report = crate::doctor::examine();
                print!("{}", crate::doctor::render(&report));
                Ok(report.ok())
            }
            Command::Health(args) => {
                let url = match args.url {
                    Some(url) => url,
                    None => crate::health::url_from_env()?,
                };
                let answer = crate::health::check(&url).await?;
                println!("{} {}", answer.status, answer.body.trim());
                Ok(answer.healthy())
            }
            Command::Record(args) => {
                mcu_server::protocol::validate_room_name(&args.room)
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
