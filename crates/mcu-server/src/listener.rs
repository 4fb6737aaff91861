//! The HTTP(S) listener: accepts connections and serves the routes on each with hyper, with the
//! deadlines warp's own server cannot set. A client that opens a connection and then sends its
//! request headers one byte a minute (slowloris), or never finishes a TLS handshake, held a task
//! and a socket for ever; now it is dropped after `HEADER_READ_TIMEOUT` or `TLS_HANDSHAKE_TIMEOUT`.
//!
//! Each request carries the TCP peer's address as a [`Peer`] extension (warp's `addr::remote`
//! only knows it under warp's own server); `http::peer()` reads it.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::net::TcpListener;
use tokio::task::JoinSet;
use warp::hyper;

use crate::tls::Pem;

/// A client has this long to send a request's headers (each request of a kept-alive
/// connection). Browsers send them in one packet; 10 s covers a slow mobile link's handshake
/// retransmissions with room to spare.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);
/// And this long to finish the TLS handshake after connecting: two round trips, which take
/// well under a second even over a satellite link.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// At shutdown, connections still open after the rooms closed get this long to finish.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

/// The TCP peer of a request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Binds `listen`; the bound address is returned with the future that serves until `shutdown`.
pub async fn bind(
    listen: SocketAddr,
    tls: Option<&Pem>,
) -> Result<(SocketAddr, TcpListener, Option<tokio_rustls::TlsAcceptor>)> {
    let acceptor = tls.map(acceptor).transpose()?;
    let listener = TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    let local = listener.local_addr().context("reading the bound address")?;
    Ok((local, listener, acceptor))
}

fn acceptor(pem: &Pem) -> Result<tokio_rustls::TlsAcceptor> {
    use tokio_rustls::rustls;
    let certs = rustls_pemfile::certs(&mut pem.cert.as_slice())
        .collect::<std::result::Result<Vec<_>, _>>()
        .context("reading the TLS certificate chain")?;
    let key = rustls_pemfile::private_key(&mut pem.key.as_slice())
        .context("reading the TLS key")?
        .context("the TLS key file holds no private key")?;
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .context("the TLS certificate and key do not match")?;
    // HTTP/1.1 only: WebSockets need it (hyper 0.14 has no WebSocket over HTTP/2), and the
    // header-read deadline applies to it.
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` on every connection `listener` accepts until `shutdown` completes, then
/// waits up to `SHUTDOWN_GRACE` for the connections still open.
pub async fn serve<F>(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    routes: F,
    shutdown: impl std::future::Future<Output = ()>,
) where
    F: warp::Filter + Clone + Send + Sync + 'static,
    F::Extract: warp::Reply,
{
    let service = warp::service(routes);
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    // Out of file descriptors, mostly: wait a moment rather than spin.
                    tracing::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
        };
        let _ = stream.set_nodelay(true);
        let (service, tls) = (service.clone(), tls.clone());
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |mut request| {
                request.extensions_mut().insert(Peer(peer));
                let mut service = service.clone();
                hyper::service::Service::call(&mut service, request)
            });
            let mut http = hyper::server::conn::Http::new();
            http.http1_only(true)
                .http1_header_read_timeout(HEADER_READ_TIMEOUT);
            let served = match tls {
                None => http.serve_connection(stream, service).with_upgrades().await,
                Some(tls) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, tls.accept(stream)).await {
                        Ok(Ok(stream)) => {
                            http.serve_connection(stream, service).with_upgrades().await
                        }
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, "TLS handshake failed: {e}");
                            return;
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "no TLS handshake within the deadline");
                            return;
                        }
                    }
                }
            };
            if let Err(e) = served {
                tracing::debug!(%peer, "connection ended: {e}");
            }
        });
    }
    drop(listener);
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    connections.abort_all();
}
