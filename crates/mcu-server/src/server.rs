//! `mcu serve`: wires the recordings, the registry, the WebRTC factory and the HTTP routes, and
//! runs until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};

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
    let registry = Registry::new(config.clone(), store);
    let ctx = Arc::new(SessionContext {
        registry: registry.clone(),
        rtc: Arc::new(RtcFactory::new(config.rtc.clone())?),
        resources: Arc::default(),
    });
    let routes = crate::http::routes(ctx, config.web_dir.clone());
    // On SIGINT/SIGTERM every room closes first (recordings get their index and duration), then
    // the listener stops.
    let shutdown_signal = move || {
        let registry = registry.clone();
        async move {
            shutdown_signal().await;
            registry.close_all("the server is shutting down").await;
            crate::files::remove_own_temporary();
            tracing::info!("every room closed");
        }
    };
    // Printed on stdout, alone on its line, so scripts and tests can find the port (`--listen :0`).
    let pem = config.tls.as_ref().map(crate::tls::load).transpose()?;
    let (local, listener, tls) = crate::listener::bind(config.listen, pem.as_ref()).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    println!("listening on {scheme}://{local}");
    tracing::info!(%local, "serving {}", scheme.to_uppercase());
    crate::listener::serve(listener, tls, routes, shutdown_signal()).await;
    Ok(())
}

async fn shutdown_signal() {
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
            return;
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
    tracing::info!("shutting down");
}
