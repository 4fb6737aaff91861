//! `mcu serve`: wires the registry, the WebRTC factory and the HTTP routes, and runs until
//! SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::{Context, Result};

use crate::config::ServerConfig;
use crate::room::registry::Registry;
use crate::rtc::RtcFactory;
use crate::session::SessionContext;

pub async fn run(config: ServerConfig) -> Result<()> {
    let config = Arc::new(config);
    let ctx = Arc::new(SessionContext {
        registry: Registry::new(config.clone()),
        rtc: Arc::new(RtcFactory::new(config.rtc.clone())?),
    });
    let routes = crate::http::routes(ctx, config.web_dir.clone());
    // Printed on stdout, alone on its line, so scripts and tests can find the port (`--listen :0`).
    match &config.tls {
        None => {
            let (local, serving) = warp::serve(routes)
                .try_bind_with_graceful_shutdown(config.listen, shutdown_signal())
                .with_context(|| format!("listening on {}", config.listen))?;
            println!("listening on http://{local}");
            tracing::info!(%local, "serving HTTP");
            serving.await;
        }
        Some(tls) => {
            let pem = crate::tls::load(tls)?;
            let (local, serving) = warp::serve(routes)
                .tls()
                .cert(pem.cert)
                .key(pem.key)
                .try_bind_with_graceful_shutdown(config.listen, shutdown_signal())
                .with_context(|| format!("listening on {} with TLS", config.listen))?;
            println!("listening on https://{local}");
            tracing::info!(%local, "serving HTTPS");
            serving.await;
        }
    }
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
