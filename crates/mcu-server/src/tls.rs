//! The HTTPS certificate: read from files, or generated at start-up for the given host names and
//! addresses (so a VM without a domain can serve the camera page over HTTPS).

use anyhow::{Context, Result};

use crate::config::TlsConfig;

/// A certificate chain and its private key, both PEM.
pub struct Pem {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

pub fn load(config: &TlsConfig) -> Result<Pem> {
    match config {
        TlsConfig::Files { cert, key } => Ok(Pem {
            cert: std::fs::read(cert)
                .with_context(|| format!("reading the TLS certificate {}", cert.display()))?,
            key: std::fs::read(key)
                .with_context(|| format!("reading the TLS key {}", key.display()))?,
        }),
        TlsConfig::SelfSigned { hosts } => self_signed(hosts),
    }
}

/// A self-signed certificate whose subject alternative names are `hosts` (names, or IP addresses,
/// which become IP SANs). Browsers warn once; after that the page is a secure context.
pub fn self_signed(hosts: &[String]) -> Result<Pem> {
    let generated = rcgen::generate_simple_self_signed(hosts.to_vec())
        .context("generating a self-signed certificate")?;
    Ok(Pem {
        cert: generated.cert.pem().into_bytes(),
        key: generated.key_pair.serialize_pem().into_bytes(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_self_signed_certificate_is_pem() {
        let pem = self_signed(&["localhost".into(), "127.0.0.1".into()]).unwrap();
        let cert = String::from_utf8(pem.cert).unwrap();
        let key = String::from_utf8(pem.key).unwrap();
        assert!(cert.starts_with("-----BEGIN CERTIFICATE-----"));
        assert!(key.contains("PRIVATE KEY"));
    }
}
