//! What an operator relies on: `mcu doctor` finds every GStreamer element (and names the Debian
//! package of a missing one), and `mcu health` tells a live server from a stuck one over HTTP
//! and HTTPS, as the container's HEALTHCHECK does.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use common::{crowd_of, settle, Server};
use gstreamer as gst;

fn mcu(args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_mcu"))
        .args(args)
        .envs(env.iter().copied())
        .output()
        .expect("running mcu")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The directory this machine's GStreamer loads its plugins from, found through one of them.
fn system_plugin_dir() -> PathBuf {
    gst::init().expect("GStreamer initialises");
    let plugin = gst::Registry::get()
        .find_plugin("coreelements")
        .expect("the core elements are installed");
    let file = plugin.filename().expect("a plugin file");
    file.parent().expect("a plugin directory").to_path_buf()
}

/// A plugin directory with every system plugin except the `left_out` files.
fn plugins_without(dir: &Path, left_out: &[&str]) -> PathBuf {
    let partial = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("plugins-without");
    let _ = std::fs::remove_dir_all(&partial);
    std::fs::create_dir_all(&partial).expect("creating the partial plugin directory");
    for entry in std::fs::read_dir(dir)
        .expect("reading the plugin directory")
        .flatten()
    {
        let name = entry.file_name();
        if !left_out.iter().any(|l| name == *l) {
            std::os::unix::fs::symlink(entry.path(), partial.join(&name))
                .expect("linking a plugin");
        }
    }
    partial
}

#[test]
fn doctor_passes_here_and_names_the_package_of_each_missing_element() {
    let out = mcu(&["doctor"], &[]);
    assert!(out.status.success(), "doctor failed:\n{}", stdout(&out));
    let text = stdout(&out);
    assert!(text.contains("GStreamer 1.22"), "{text}");
    assert!(text.contains("ok       vpx"), "{text}");
    assert!(!text.contains("MISSING"), "{text}");

    // As if gstreamer1.0-x and gstreamer1.0-plugins-ugly were not installed.
    let partial = plugins_without(&system_plugin_dir(), &["libgstpango.so", "libgstx264.so"]);
    let registry = partial.with_extension("registry");
    let out = mcu(
        &["doctor"],
        &[
            (
                "GST_PLUGIN_SYSTEM_PATH_1_0",
                partial.to_str().expect("a UTF-8 path"),
            ),
            ("GST_REGISTRY_1_0", registry.to_str().expect("a UTF-8 path")),
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains(
            "MISSING  textoverlay, needed by pipelines/placeholder.txt, pipelines/video-input-h264.txt, pipelines/video-input-vp8.txt: install gstreamer1.0-x"
        ),
        "{text}"
    );
    assert!(text.contains("MISSING  x264enc"), "{text}");
    assert!(
        text.contains(
            "apt-get install --no-install-recommends gstreamer1.0-plugins-ugly gstreamer1.0-x"
        ),
        "{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_tells_a_live_server_from_a_stopped_one_over_http_and_https() {
    gst::init().expect("GStreamer initialises");
    let server = Server::start("health-http", &[]);
    let mut crowd = crowd_of(&server, "healthy", 1).await;
    settle(&crowd, "the participant to see itself").await;
    let url = format!("{}/healthz", server.url());
    let out = mcu(&["health", "--url", &url], &[]);
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(
        text.starts_with("200 ") && text.contains("\"rooms\":1"),
        "{text}"
    );

    // The URL from the same variables the server reads, over the server's self-signed TLS.
    let tls = Server::start("health-https", &["--tls-self-signed"]);
    let listen = tls.addr.to_string();
    let out = mcu(
        &["health"],
        &[
            ("MCU_LISTEN", listen.as_str()),
            ("MCU_TLS_SELF_SIGNED", "localhost"),
        ],
    );
    assert!(out.status.success(), "{}", stdout(&out));
    assert!(stdout(&out).starts_with("200 "), "{}", stdout(&out));
    // Plain HTTP to the TLS port is not an answer.
    let out = mcu(
        &["health", "--url", &format!("http://{listen}/healthz")],
        &[],
    );
    assert!(!out.status.success());

    // A stopped process answers nothing: unhealthy, within the health timeout.
    let signal = |sig: &str| {
        Command::new("kill")
            .args([sig, &server.pid().to_string()])
            .status()
            .expect("kill runs")
    };
    signal("-STOP");
    let out = mcu(&["health", "--url", &url], &[]);
    signal("-CONT");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did not answer"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    crowd.leave_all().await;
}

/// Every `MCU_*` name a file uses, in order of appearance.
fn mcu_variables(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("MCU_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `MCU_*` or `MCU_TLS_*` is prose about a group of variables, not one of them.
        if !name.ends_with('_') {
            names.push(name);
        }
    }
    names
}

/// The container files configure the server only through variables it reads: a misspelt
/// MCU_* in the image or the compose file would be silently ignored by everything.
#[test]
fn the_container_files_use_only_variables_the_server_reads() {
    let help = stdout(&mcu(&["serve", "--help"], &[]));
    let known: Vec<String> = mcu_variables(&help);
    assert!(known.contains(&"MCU_UDP_PORT".to_string()), "{help}");
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for file in [
        "Dockerfile",
        "docker-compose.yml",
        "docs/compose.env.example",
    ] {
        let text = std::fs::read_to_string(root.join(file)).expect("a container file");
        let used = mcu_variables(&text);
        assert!(!used.is_empty(), "{file} sets no MCU_* variable");
        for name in used {
            assert!(
                known.contains(&name),
                "{file}: {name} is not a variable of mcu serve"
            );
        }
    }
    // The image checks its GStreamer elements at build time and its health with mcu itself.
    let dockerfile = std::fs::read_to_string(root.join("Dockerfile")).expect("the Dockerfile");
    for needed in [
        "RUN mcu doctor",
        "CMD [\"mcu\", \"health\"]",
        ".ci/provision-runtime.sh",
        "USER mcu",
    ] {
        assert!(
            dockerfile.contains(needed),
            "the Dockerfile lacks {needed:?}"
        );
    }
}

/// Reads from `stream` until the server closes it (or resets it); false if it is still open after
/// `within` (a bound well past the server's deadlines, not a timing assertion).
async fn closed_by_the_server(stream: &mut tokio::net::TcpStream, within: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let mut sink = Vec::new();
    matches!(
        tokio::time::timeout(within, stream.read_to_end(&mut sink)).await,
        Ok(Ok(_) | Err(_))
    )
}

/// A client that opens a connection and never finishes its request headers (slowloris), or never
/// finishes a TLS handshake, is cut off by the server's deadlines (listener.rs, 10 s each), while
/// other clients are served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_at_the_header_and_handshake_deadlines() {
    use tokio::io::AsyncWriteExt;
    let bound = Duration::from_secs(30);
    let server = Server::start("deadlines-http", &[]);
    let mut slow = tokio::net::TcpStream::connect(server.addr)
        .await
        .expect("connecting");
    slow.write_all(b"GET /healthz HTTP/1.1\r\nHost: localhost\r\nX-Slow: ")
        .await
        .expect("writing half the headers");
    let healthy = server.request("GET", "/healthz", &[]).await;
    assert_eq!(healthy.status, 200, "another client is served meanwhile");
    assert!(
        closed_by_the_server(&mut slow, bound).await,
        "half-sent headers kept the connection open"
    );

    let tls = Server::start("deadlines-https", &["--tls-self-signed"]);
    let mut silent = tokio::net::TcpStream::connect(tls.addr)
        .await
        .expect("connecting");
    // One byte of a TLS record header, then nothing.
    silent.write_all(&[0x16]).await.expect("writing");
    assert!(
        closed_by_the_server(&mut silent, bound).await,
        "an unfinished TLS handshake kept the connection open"
    );
}
