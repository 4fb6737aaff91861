//! Who may do what: join tokens (HS256 JWTs naming the room, the display name and whether the
//! holder may record) and the admin API's bearer token. Secrets and tokens are wrapped so that no
//! `{:?}` or log line can print them.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

/// HS256 with a short secret can be brute-forced offline from any token a user holds; 32 bytes
/// is the hash's own size and what RFC 7518 (3.2) asks for.
pub const MIN_SECRET_BYTES: usize = 32;
/// Clocks of the minting and the verifying machine may differ a little.
const CLOCK_LEEWAY_SECONDS: u64 = 30;
/// A token minted without `--ttl` is valid for a working day's meeting.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// A secret string (JWT secret, admin token, a join token). Debug never shows it.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    pub fn expose(&self) -> &str {
        &self.0
    }

    /// Compares in constant time, so response timing does not leak how much of a guess matched.
    pub fn matches(&self, candidate: &str) -> bool {
        self.0.as_bytes().ct_eq(candidate.as_bytes()).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(<redacted>)")
    }
}

/// What a join token carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinClaims {
    pub room: String,
    pub name: String,
    /// The holder may start and stop the room's recording.
    #[serde(default)]
    pub record: bool,
    /// The holder may switch the room's layout (`set_layout`).
    #[serde(default)]
    pub layout: bool,
    /// Expiry, seconds since 1970 (required).
    pub exp: u64,
    #[serde(default)]
    pub iat: u64,
}

/// Why a join token was refused; the text is what the client is told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("this server requires a join token (ask the organiser for a link with one)")]
    Missing,
    #[error("the join token is not a JWT")]
    Malformed,
    #[error("the join token uses algorithm {0:?}; only HS256 is accepted")]
    Algorithm(String),
    #[error("the join token's signature does not match this server's secret")]
    Signature,
    #[error("the join token has expired")]
    Expired,
    #[error("the join token is for room {0:?}, not this one")]
    WrongRoom(String),
    #[error("the join token's claims are unreadable: {0}")]
    Claims(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    #[error("the JWT secret must be at least {MIN_SECRET_BYTES} bytes (got {0})")]
    TooShort(usize),
}

/// Checks a JWT secret from the configuration.
pub fn check_secret(secret: &Secret) -> Result<(), SecretError> {
    let len = secret.expose().len();
    if len < MIN_SECRET_BYTES {
        return Err(SecretError::TooShort(len));
    }
    Ok(())
}

/// What a join token allows beyond joining.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Grants {
    pub record: bool,
    pub layout: bool,
}

/// Mints a join token valid for `ttl` from `now`.
pub fn mint(
    secret: &Secret,
    room: &str,
    name: &str,
    record: bool,
    ttl: Duration,
    now: SystemTime,
) -> anyhow::Result<String> {
    let grants = Grants {
        record,
        layout: false,
    };
    mint_with(secret, room, name, grants, ttl, now)
}

/// As `mint`, with every grant spelled out.
pub fn mint_with(
    secret: &Secret,
    room: &str,
    name: &str,
    grants: Grants,
    ttl: Duration,
    now: SystemTime,
) -> anyhow::Result<String> {
    let iat = now.duration_since(UNIX_EPOCH)?.as_secs();
    let claims = JoinClaims {
        room: room.to_string(),
        name: name.to_string(),
        record: grants.record,
        layout: grants.layout,
        exp: iat + ttl.as_secs(),
        iat,
    };
    Ok(jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        &claims,
        &EncodingKey::from_secret(secret.expose().as_bytes()),
    )?)
}

/// Verifies a join token for `room`. The algorithm is read from the header first and anything
/// but HS256 (`none` included) is refused before any signature check.
pub fn verify(secret: &Secret, token: &str, room: &str) -> Result<JoinClaims, TokenError> {
    let algorithm = header_algorithm(token)?;
    if algorithm != "HS256" {
        return Err(TokenError::Algorithm(algorithm));
    }
    let mut validation = Validation::new(Algorithm::HS256);
    validation.leeway = CLOCK_LEEWAY_SECONDS;
    validation.set_required_spec_claims(&["exp"]);
    let data = jsonwebtoken::decode::<JoinClaims>(
        token,
        &DecodingKey::from_secret(secret.expose().as_bytes()),
        &validation,
    )
    .map_err(|e| {
        use jsonwebtoken::errors::ErrorKind as K;
        match e.kind() {
            K::ExpiredSignature => TokenError::Expired,
            K::InvalidSignature => TokenError::Signature,
            K::InvalidAlgorithm | K::InvalidAlgorithmName => {
                TokenError::Algorithm("unknown".into())
            }
            K::InvalidToken | K::Base64(_) | K::Utf8(_) => TokenError::Malformed,
            other => TokenError::Claims(format!("{other:?}")),
        }
    })?;
    if data.claims.room != room {
        return Err(TokenError::WrongRoom(data.claims.room));
    }
    Ok(data.claims)
}

/// The `alg` of a JWT's header, read without trusting anything else in the token.
fn header_algorithm(token: &str) -> Result<String, TokenError> {
    let header = token.split('.').next().ok_or(TokenError::Malformed)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed)?;
    #[derive(Deserialize)]
    struct Alg {
        alg: String,
    }
    let parsed: Alg = serde_json::from_slice(&bytes).map_err(|_| TokenError::Malformed)?;
    Ok(parsed.alg)
}

/// Parses a duration like `90s`, `30m`, `1h`, `2d` (a bare number is seconds).
pub fn parse_ttl(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let (number, unit) = match text.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => text.split_at(i),
        None => (text, "s"),
    };
    let n: u64 = number
        .parse()
        .map_err(|_| format!("{text:?}: expected a number and a unit, like 1h or 30m"))?;
    let unit_seconds = match unit {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86_400,
        other => {
            return Err(format!(
                "{text:?}: unknown unit {other:?} (use s, m, h or d)"
            ))
        }
    };
    if n == 0 {
        return Err("the time to live must be positive".into());
    }
    n.checked_mul(unit_seconds)
        .map(Duration::from_secs)
        .ok_or_else(|| format!("{text:?} is too long"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secret() -> Secret {
        Secret::new("0123456789abcdef0123456789abcdef")
    }

    fn b64(bytes: &[u8]) -> String {
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    }

    #[test]
    fn a_minted_token_verifies_for_its_room_only() {
        let token = mint(
            &secret(),
            "daily",
            "Ada",
            true,
            DEFAULT_TOKEN_TTL,
            SystemTime::now(),
        )
        .unwrap();
        let claims = verify(&secret(), &token, "daily").unwrap();
        assert_eq!((claims.name.as_str(), claims.record), ("Ada", true));
        assert_eq!(
            verify(&secret(), &token, "other"),
            Err(TokenError::WrongRoom("daily".into()))
        );
        let wrong = Secret::new("ffffffffffffffffffffffffffffffff");
        assert_eq!(verify(&wrong, &token, "daily"), Err(TokenError::Signature));
    }

    #[test]
    fn expired_tokens_are_refused() {
        let long_ago = SystemTime::now() - Duration::from_secs(7200);
        let token = mint(
            &secret(),
            "daily",
            "Ada",
            false,
            Duration::from_secs(60),
            long_ago,
        )
        .unwrap();
        assert_eq!(verify(&secret(), &token, "daily"), Err(TokenError::Expired));
    }

    #[test]
    fn alg_none_and_other_algorithms_are_refused_before_the_signature() {
        let claims = format!(
            r#"{{"room":"daily","name":"Eve","record":true,"exp":{}}}"#,
            u64::MAX / 2
        );
        for alg in ["none", "HS512", "RS256"] {
            let token = format!(
                "{}.{}.",
                b64(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#).as_bytes()),
                b64(claims.as_bytes())
            );
            assert_eq!(
                verify(&secret(), &token, "daily"),
                Err(TokenError::Algorithm(alg.into()))
            );
        }
        assert_eq!(
            verify(&secret(), "garbage", "daily"),
            Err(TokenError::Malformed)
        );
    }

    #[test]
    fn secrets_never_show_in_debug_output_and_short_ones_are_refused() {
        let s = secret();
        assert!(!format!("{s:?}").contains("0123"));
        assert!(s.matches("0123456789abcdef0123456789abcdef"));
        assert!(!s.matches("0123"));
        assert_eq!(
            check_secret(&Secret::new("short")),
            Err(SecretError::TooShort(5))
        );
        assert!(check_secret(&s).is_ok());
    }

    #[test]
    fn ttls_read_with_their_unit() {
        assert_eq!(parse_ttl("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_ttl("30m"), Ok(Duration::from_secs(1800)));
        assert_eq!(parse_ttl("2d"), Ok(Duration::from_secs(172_800)));
        assert_eq!(parse_ttl("45"), Ok(Duration::from_secs(45)));
        assert!(parse_ttl("1y").is_err());
        assert!(parse_ttl("0s").is_err());
        assert!(parse_ttl("h").is_err());
    }
}
