//! `mcu serve`: wires the recordings, the registry, the WebRTC factory and the HTTP routes, and
//! runs until SIGINT/SIGTERM.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};

use crate::cluster::Cluster;
use crate::config::ServerConfig;
use crate::recordings::RecordingStore;
use crate::room::registry::Registry;
use crate::rtc::RtcFactory;
use crate::session::SessionContext;

pub async fn run(config: ServerConfig) -> Result<()> {
    let config = Arc::new(config);
    let store = Arc::new(RecordingStore::open(&config.recordings_dir)?);
    if config.jwt_secret.is_none() {
        tracing::warn!("no --jwt-secret: rooms are open to anyone who can reach this server");
    }
    let swept = crate::files::sweep_stale_temporary();
    if swept > 0 {
        tracing::info!(
            directories = swept,
            "removed shared files a stopped server left behind"
        );
    }
    if let Some(dir) = &config.keep_files {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating --keep-files {}", dir.display()))?;
    }
    if let Some(dir) = &config.media.debug_dir {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating --debug-dir {}", dir.display()))?;
    }
    let pem = config.tls.as_ref().map(crate::tls::load).transpose()?;
    let (local, listener, tls) = crate::listener::bind(config.listen, pem.as_ref()).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let cluster = match &config.cluster {
        None => None,
        Some(cluster) => {
            let url = cluster.node_url.clone().unwrap_or_else(|| {
                if local.ip().is_unspecified() {
                    tracing::warn!("no --node-url: other nodes will send clients to {scheme}://{local}, which they cannot reach; set --node-url");
                }
                format!("{scheme}://{local}")
            });
            let cluster = Cluster::new(cluster, url)?;
            tracing::info!(
                node = cluster.id(),
                url = cluster.url(),
                "joining the cluster"
            );
            Some(cluster)
        }
    };
    let registry = Registry::new(config.clone(), store, cluster.clone());
    if let Some(cluster) = &cluster {
        tokio::spawn(crate::cluster::heartbeat(cluster.clone(), registry.clone()));
    }
    let ctx = Arc::new(SessionContext {
        registry: registry.clone(),
        rtc: Arc::new(RtcFactory::new(config.rtc.clone())?),
        resources: Arc::default(),
    });
    let routes = crate::http::routes(ctx, config.web_dir.clone());
    // On SIGINT/SIGTERM every room closes first (recordings get their index and duration), then
    // the listener stops. A node of a cluster drains on SIGTERM instead: it stops when its last
    // room has ended (or on a second signal).
    let shutdown = async move {
        match &cluster {
            None => shutdown_signal().await,
            Some(cluster) => drain_then_stop(cluster, &registry).await,
        }
        registry.close_all("the server is shutting down").await;
        if let Some(cluster) = &cluster {
            cluster.withdraw().await;
        }
        crate::files::remove_own_temporary();
        tracing::info!("every room closed");
    };
    // Printed on stdout, alone on its line, so scripts and tests can find the port (`--listen :0`).
    println!("listening on {scheme}://{local}");
    tracing::info!(%local, "serving {}", scheme.to_uppercase());
    crate::listener::serve(listener, tls, routes, shutdown).await;
    Ok(())
}

/// How often a draining node looks whether its last room has ended.
const DRAIN_CHECK: Duration = Duration::from_secs(1);

/// A cluster node's stop: SIGINT stops at once; SIGTERM drains (no new room here, the others
/// take them) and returns when no room is left here, or at a second signal.
async fn drain_then_stop(cluster: &Cluster, registry: &Registry) {
    let mut term = sigterm();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => return,
        _ = next_signal(&mut term) => {}
    }
    cluster.drain();
    tracing::info!(
        rooms = registry.room_names().len(),
        "SIGTERM: draining; the node stops when its last room ends (SIGTERM again or SIGINT stops it now)"
    );
    loop {
        tokio::select! {
            _ = tokio::signal::ctrl_c() => return,
            _ = next_signal(&mut term) => return,
            _ = tokio::time::sleep(DRAIN_CHECK) => {
                if registry.room_names().is_empty() {
                    tracing::info!("drained: no room left on this node");
                    return;
                }
            }
        }
    }
}

async fn shutdown_signal() {
    let mut term = sigterm();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = next_signal(&mut term) => {}
    }
    tracing::info!("shutting down");
}

/// SIGTERM's stream, or none where it cannot be had (then only SIGINT stops the server).
fn sigterm() -> Option<tokio::signal::unix::Signal> {
    tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok()
}

/// The next signal on `signal`; never, without one.
async fn next_signal(signal: &mut Option<tokio::signal::unix::Signal>) {
    match signal {
        Some(signal) => {
            signal.recv().await;
        }
        None => std::future::pending::<()>().await,
    }
}
