//! Who may use the admin API (and /metrics): the bearer token when `--admin-token` is set, else
//! direct loopback callers asking for localhost from no foreign web page.

use std::net::SocketAddr;

use warp::http::{header, Response, StatusCode};
use warp::hyper::Body;

use super::error;
use crate::auth::Secret;

/// Where a request came from, as far as tokenless (loopback) access cares.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    pub peer: Option<SocketAddr>,
    /// The `Host` header.
    pub host: Option<String>,
    /// The `Origin` header: a browser sends it on cross-origin requests (and on every POST,
    /// PUT and DELETE).
    pub origin: Option<String>,
    /// The request carries `X-Forwarded-For`, `Forwarded` or `X-Real-IP`: a proxy passed it on.
    pub forwarded: bool,
    /// The peer is one of `--trusted-proxy`.
    pub via_trusted_proxy: bool,
}

impl Caller {
    #[cfg(test)]
    fn direct(peer: Option<SocketAddr>) -> Self {
        Caller {
            peer,
            ..Caller::default()
        }
    }
}

/// Whether `authority` (a `Host` value, or an origin without its scheme) names this machine's
/// loopback: `localhost`, `127.x.y.z` or `[::1]`, with any port.
fn is_loopback_authority(authority: &str) -> bool {
    let host = if let Some(rest) = authority.strip_prefix('[') {
        rest.split(']').next().unwrap_or_default()
    } else {
        authority.rsplit_once(':').map_or(authority, |(h, _)| h)
    };
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn is_loopback_origin(origin: &str) -> bool {
    let Some((scheme, rest)) = origin.split_once("://") else {
        // `null` (a sandboxed page, a file) and anything malformed.
        return false;
    };
    matches!(scheme, "http" | "https")
        && is_loopback_authority(rest.split('/').next().unwrap_or(rest))
}

/// Why a caller may not use the API.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// No admin token is configured and the caller is not on loopback.
    NotLoopback,
    /// No admin token, and the request came through a reverse proxy: on the same host every
    /// request would look like loopback.
    Proxied,
    /// No admin token, and a loopback request names another host or comes from a web page of
    /// another origin (a page in a browser on this machine, or DNS rebinding).
    ForeignSite,
    NoToken,
    WrongToken,
}

impl Refusal {
    pub fn status(self) -> StatusCode {
        match self {
            Refusal::NotLoopback | Refusal::Proxied | Refusal::ForeignSite => StatusCode::FORBIDDEN,
            Refusal::NoToken | Refusal::WrongToken => StatusCode::UNAUTHORIZED,
        }
    }

    pub(super) fn into_response(self) -> Response<Body> {
        let (code, message) = match self {
            Refusal::NotLoopback => (
                "forbidden",
                "without --admin-token the admin API answers on loopback only",
            ),
            Refusal::Proxied => (
                "forbidden",
                "this request came through a reverse proxy: set --admin-token and send it as `Authorization: Bearer <token>`",
            ),
            Refusal::ForeignSite => (
                "forbidden",
                "without --admin-token the admin API answers only requests to localhost from no web page but its own",
            ),
            Refusal::NoToken => (
                "unauthorized",
                "send the admin token as `Authorization: Bearer <token>`",
            ),
            Refusal::WrongToken => (
                "unauthorized",
                "the bearer token is not this server's admin token",
            ),
        };
        let mut response = error(self.status(), code, message);
        if self.status() == StatusCode::UNAUTHORIZED {
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer"),
            );
        }
        response
    }
}

/// Who may use the API: the bearer token when one is configured, else loopback callers only,
/// and of those only direct ones (no proxy) asking for localhost from no foreign web page.
pub fn check_access(
    admin_token: Option<&Secret>,
    caller: &Caller,
    authorization: Option<&str>,
) -> Result<(), Refusal> {
    match admin_token {
        Some(token) => {
            let given = authorization.and_then(|h| {
                let (scheme, value) = h.trim().split_once(' ')?;
                scheme.eq_ignore_ascii_case("bearer").then(|| value.trim())
            });
            match given {
                Some(given) if token.matches(given) => Ok(()),
                Some(_) => Err(Refusal::WrongToken),
                None => Err(Refusal::NoToken),
            }
        }
        None if !caller.peer.is_some_and(|p| p.ip().is_loopback()) => Err(Refusal::NotLoopback),
        None if caller.via_trusted_proxy || caller.forwarded => Err(Refusal::Proxied),
        None if caller
            .host
            .as_deref()
            .is_some_and(|h| !is_loopback_authority(h))
            || caller
                .origin
                .as_deref()
                .is_some_and(|o| !is_loopback_origin(o)) =>
        {
            Err(Refusal::ForeignSite)
        }
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(ip: &str) -> Caller {
        Caller::direct(Some(SocketAddr::new(ip.parse().unwrap(), 40000)))
    }

    #[test]
    fn without_a_token_only_loopback_gets_in() {
        assert!(check_access(None, &addr("127.0.0.1"), None).is_ok());
        assert!(check_access(None, &addr("::1"), None).is_ok());
        let refused = check_access(None, &addr("192.0.2.7"), None).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        assert!(!refused
            .into_response()
            .headers()
            .contains_key(header::WWW_AUTHENTICATE));
    }

    #[test]
    fn without_a_token_proxied_and_foreign_site_requests_are_refused() {
        let local = |host: Option<&str>, origin: Option<&str>| Caller {
            host: host.map(str::to_string),
            origin: origin.map(str::to_string),
            ..addr("127.0.0.1")
        };
        for ok in [
            local(Some("localhost:8080"), None),
            local(Some("127.0.0.1"), Some("http://127.0.0.1:8080")),
            local(Some("[::1]:8080"), Some("https://localhost")),
        ] {
            assert!(check_access(None, &ok, None).is_ok(), "{ok:?}");
        }
        for foreign in [
            // DNS rebinding: a name that resolved to 127.0.0.1.
            local(Some("evil.example:8080"), None),
            // A page of another site in a browser on this machine.
            local(Some("localhost:8080"), Some("https://evil.example")),
            local(Some("localhost:8080"), Some("null")),
        ] {
            assert_eq!(
                check_access(None, &foreign, None),
                Err(Refusal::ForeignSite)
            );
        }
        let proxied = Caller {
            forwarded: true,
            ..local(Some("localhost"), None)
        };
        assert_eq!(check_access(None, &proxied, None), Err(Refusal::Proxied));
        let via_proxy = Caller {
            via_trusted_proxy: true,
            ..local(Some("localhost"), None)
        };
        let refused = check_access(None, &via_proxy, None).unwrap_err();
        assert_eq!(refused.status(), StatusCode::FORBIDDEN);
        // With the token, the proxy is fine.
        let token = Secret::new("s3cret-admin-token");
        assert!(check_access(Some(&token), &via_proxy, Some("Bearer s3cret-admin-token")).is_ok());
    }

    #[test]
    fn with_a_token_everyone_needs_it_loopback_included() {
        let token = Secret::new("s3cret-admin-token");
        let t = Some(&token);
        assert!(check_access(t, &addr("192.0.2.7"), Some("Bearer s3cret-admin-token")).is_ok());
        assert!(check_access(t, &addr("192.0.2.7"), Some("bearer  s3cret-admin-token ")).is_ok());
        for header in [
            None,
            Some("Bearer nope"),
            Some("Basic s3cret-admin-token"),
            Some(""),
        ] {
            let refused = check_access(t, &addr("127.0.0.1"), header).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{header:?}");
            assert!(refused
                .into_response()
                .headers()
                .contains_key(header::WWW_AUTHENTICATE));
        }
    }
}
