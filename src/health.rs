//! `mcu health`: asks a running server's `/healthz` whether it and its rooms' pipelines respond,
//! over HTTP or HTTPS. It is what the container's HEALTHCHECK runs (the runtime image has no
//! curl), so it must work with the server's own self-signed certificate: this client checks
//! liveness on the server's own machine, not identity, and accepts any certificate.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;

use mcu_server::config;

/// The whole check (connect, TLS, request, answer) must finish within this; a server that
/// cannot answer a health request in 5 s is not healthy, and Docker's default timeout is 30 s.
pub const HEALTH_TIMEOUT: Duration = Duration::from_secs(5);
/// More than any /healthz answer; a larger body means something else answered.
const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// What /healthz answered.
#[derive(Debug)]
pub struct HealthAnswer {
    pub status: u16,
    pub body: String,
}

impl HealthAnswer {
    pub fn healthy(&self) -> bool {
        self.status == 200
    }
}

/// The health URL of a server started with the given listen address and TLS choice, reached
/// from its own machine: an unspecified listen address (0.0.0.0, ::) becomes loopback.
pub fn local_url(listen: &str, tls: bool) -> Result<String> {
    let addr: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("{listen:?} is not an address:port"))?;
    let host = match addr.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => "127.0.0.1".to_string(),
        ip if ip.is_unspecified() => "[::1]".to_string(),
        std::net::IpAddr::V6(ip) => format!("[{ip}]"),
        ip => ip.to_string(),
    };
    let scheme = if tls { "https" } else { "http" };
    Ok(format!("{scheme}://{host}:{}/healthz", addr.port()))
}

/// The URL `mcu health` checks when none is given: from the same MCU_LISTEN and MCU_TLS_*
/// variables the server reads, so one container environment configures both.
pub fn url_from_env() -> Result<String> {
    let listen = std::env::var("MCU_LISTEN").unwrap_or_else(|_| config::DEFAULT_LISTEN.into());
    let tls = ["MCU_TLS_CERT", "MCU_TLS_SELF_SIGNED"]
        .iter()
        .any(|v| std::env::var_os(v).is_some_and(|s| !s.is_empty() && s != "false"));
    local_url(&listen, tls)
}

struct Target {
    tls: bool,
    host: String,
    port: u16,
    path: String,
}

fn parse_url(url: &str) -> Result<Target> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("https://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("http://") {
        (false, rest)
    } else {
        bail!("{url:?}: expected an http:// or https:// URL");
    };
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/healthz"),
    };
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) if !port.contains(']') => (
            host,
            port.parse::<u16>()
                .with_context(|| format!("{url:?}: bad port"))?,
        ),
        _ => (authority, if tls { 443 } else { 80 }),
    };
    if host.is_empty() {
        bail!("{url:?}: no host");
    }
    Ok(Target {
        tls,
        host: host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string(),
        port,
        path: path.to_string(),
    })
}

/// GETs `url` and returns the status and body; fails if nothing answers within HEALTH_TIMEOUT.
pub async fn check(url: &str) -> Result<HealthAnswer> {
    let target = parse_url(url)?;
    tokio::time::timeout(HEALTH_TIMEOUT, fetch(&target))
        .await
        .with_context(|| format!("{url} did not answer within {HEALTH_TIMEOUT:?}"))?
        .with_context(|| format!("asking {url}"))
}

async fn fetch(target: &Target) -> Result<HealthAnswer> {
    let tcp = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .with_context(|| format!("connecting to {}:{}", target.host, target.port))?;
    if !target.tls {
        return exchange(tcp, target).await;
    }
    let connector = tokio_rustls::TlsConnector::from(Arc::new(any_certificate_config()));
    let name = rustls::pki_types::ServerName::try_from(target.host.clone())
        .with_context(|| format!("{:?} is not a host name", target.host))?;
    let stream = connector
        .connect(name, tcp)
        .await
        .context("the TLS handshake failed")?;
    exchange(stream, target).await
}

async fn exchange(
    mut stream: impl AsyncRead + AsyncWrite + Unpin,
    target: &Target,
) -> Result<HealthAnswer> {
    let request = format!(
        "GET {} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nUser-Agent: mcu-health\r\n\r\n",
        target.path, target.host
    );
    stream.write_all(request.as_bytes()).await?;
    let mut answer = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let n = match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => n,
            // A TLS peer that closes without close_notify: the answer is already complete.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => break,
            Err(e) => return Err(e).context("reading the answer"),
        };
        answer.extend_from_slice(&chunk[..n]);
        if answer.len() > MAX_ANSWER_BYTES {
            bail!("the answer is larger than {MAX_ANSWER_BYTES} bytes");
        }
    }
    parse_answer(&answer)
}

fn parse_answer(answer: &[u8]) -> Result<HealthAnswer> {
    let text = String::from_utf8_lossy(answer);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status_line = head.lines().next().unwrap_or_default();
    let status = status_line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse::<u16>().ok())
        .with_context(|| format!("not an HTTP answer: {status_line:?}"))?;
    let chunked = head.lines().any(|l| {
        l.to_ascii_lowercase()
            .starts_with("transfer-encoding: chunked")
    });
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    Ok(HealthAnswer { status, body })
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size_line, after)) = rest.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size_line.trim(), 16) else {
            break;
        };
        if size == 0 || after.len() < size {
            break;
        }
        out.push_str(&after[..size]);
        rest = after[size..].trim_start_matches("\r\n");
    }
    out
}

/// A TLS client that accepts whatever certificate the server shows, but still checks that the
/// handshake is signed by it.
fn any_certificate_config() -> rustls::ClientConfig {
    rustls::ClientConfig::builder()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate(
            rustls::crypto::ring::default_provider(),
        )))
        .with_no_client_auth()
}

#[derive(Debug)]
struct AnyCertificate(rustls::crypto::CryptoProvider);

impl rustls::client::danger::ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &rustls::pki_types::ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_local_url_follows_the_listen_address_and_tls() {
        assert_eq!(
            local_url("0.0.0.0:8080", false).unwrap(),
            "http://127.0.0.1:8080/healthz"
        );
        assert_eq!(
            local_url("[::]:8443", true).unwrap(),
            "https://[::1]:8443/healthz"
        );
        assert_eq!(
            local_url("10.0.0.5:9000", true).unwrap(),
            "https://10.0.0.5:9000/healthz"
        );
        assert!(local_url("nonsense", false).is_err());
    }

    #[test]
    fn urls_parse_with_and_without_port_and_path() {
        let t = parse_url("https://[::1]:8443/healthz").unwrap();
        assert_eq!(
            (t.tls, t.host.as_str(), t.port, t.path.as_str()),
            (true, "::1", 8443, "/healthz")
        );
        let t = parse_url("http://example.org").unwrap();
        assert_eq!((t.tls, t.port, t.path.as_str()), (false, 80, "/healthz"));
        assert!(parse_url("ftp://x").is_err());
        assert!(parse_url("http://:80/").is_err());
        assert!(parse_url("http://h:99999/").is_err());
    }

    #[test]
    fn answers_parse_plain_and_chunked() {
        let a = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").unwrap();
        assert!(a.healthy());
        assert_eq!(a.body, "ok");
        let a = parse_answer(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n5\r\nstuck\r\n0\r\n\r\n",
        )
        .unwrap();
        assert_eq!((a.status, a.body.as_str()), (503, "stuck"));
        assert!(parse_answer(b"garbage").is_err());
    }
}
