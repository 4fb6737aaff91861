//! The WebRTC-HTTP doors: WHIP ingest (RFC 9725) at `/whip/{room}` and WHEP watching
//! (draft-ietf-wish-whep) at `/whep/{room}`. A POSTed offer becomes a session (session/offered.rs)
//! with a resource at `/{whip|whep}/{room}/{id}`; DELETE ends it, PATCH trickles candidates.
//! Both doors take the same join tokens as the WebSocket (as `Authorization: Bearer`), count
//! against the same per-address and per-room limits, and answer refusals as RFC 9457 problems.
//! CORS is open (`*`): a browser-based client sends its token itself, no cookie is involved.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;

use warp::http::{header, HeaderMap, HeaderValue, Method, Response, StatusCode};
use warp::hyper::Body;

use crate::admission::{client_address, ClientKey};
use crate::auth::Secret;
use crate::protocol::{validate_display_name, ErrorCode, IceCandidate, IceServer};
use crate::room::Role;
use crate::session::offered::{self, Control, Refused};
use crate::session::SessionContext;

/// The largest offer taken. Browsers' offers are 3–8 kB (every codec, extensions and
/// candidates); FFmpeg's is 1 kB. Anything larger is refused before it is parsed.
pub const MAX_SDP_BYTES: usize = 64 * 1024;
/// A trickle PATCH carries a few candidate lines.
const MAX_FRAGMENT_BYTES: usize = 16 * 1024;
/// Candidates one PATCH may add: a client's every interface and server, a few times over.
const MAX_TRICKLED_CANDIDATES: usize = 32;
/// What a full room or server asks a client to wait before trying again (RFC 9725 §4.6: a 503
/// with Retry-After). Rooms free seats as people leave; 30 s is a retry, not a hammering.
const RETRY_FULL_SECS: u32 = 30;
/// What a client over its per-address limit waits: new rooms are counted per minute.
const RETRY_RATE_LIMITED_SECS: u32 = 60;
/// The one ETag of a session's ICE: restarts are not supported, so it never changes. A trickle
/// PATCH names it in If-Match.
const ETAG: &str = "\"ice-1\"";
/// Where a feed without a name (no token, no `?name=`) is shown in the room.
const DEFAULT_FEED_NAME: &str = "WHIP feed";

/// One request to a WHIP or WHEP URL, as the route hands it over.
pub struct DoorRequest {
    pub role: Role,
    pub room: String,
    /// The session's id, for a resource URL; `None` for the endpoint.
    pub id: Option<String>,
    pub method: Method,
    pub headers: HeaderMap,
    pub query: Option<String>,
    pub peer: Option<SocketAddr>,
    pub body: Result<bytes::Bytes, crate::admin::BodyError>,
}

fn door(role: Role) -> &'static str {
    match role {
        Role::Watcher => "whep",
        Role::Ingest | Role::Participant => "whip",
    }
}

pub async fn handle(ctx: Arc<SessionContext>, request: DoorRequest) -> Response<Body> {
    let response = match (&request.method, request.id.is_some()) {
        (&Method::OPTIONS, _) => preflight(&request),
        (&Method::POST, false) => post(&ctx, request).await,
        (&Method::PATCH, true) => patch(&ctx, request).await,
        (&Method::DELETE, true) => delete(&ctx, &request).await,
        (_, false) => not_allowed("POST, OPTIONS"),
        (_, true) => not_allowed("PATCH, DELETE, OPTIONS"),
    };
    with_cors(response)
}

/// Every answer may be read by a page on another origin (browser-based WHIP/WHEP clients).
fn with_cors(mut response: Response<Body>) -> Response<Body> {
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    headers.insert(
        header::ACCESS_CONTROL_EXPOSE_HEADERS,
        HeaderValue::from_static("Location, Link, ETag, Accept-Patch, Retry-After"),
    );
    response
}

/// OPTIONS: the CORS preflight, and what the endpoint takes (RFC 9725 §4.1: Accept-Post).
fn preflight(request: &DoorRequest) -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    let headers = response.headers_mut();
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("POST, PATCH, DELETE, OPTIONS"),
    );
    headers.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Authorization, Content-Type, If-Match"),
    );
    headers.insert(
        header::ACCESS_CONTROL_MAX_AGE,
        HeaderValue::from_static("600"),
    );
    if request.id.is_none() {
        headers.insert("accept-post", HeaderValue::from_static("application/sdp"));
    } else {
        headers.insert(
            "accept-patch",
            HeaderValue::from_static("application/trickle-ice-sdpfrag"),
        );
    }
    response
}

fn not_allowed(allow: &'static str) -> Response<Body> {
    let mut response = problem(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        &format!("this URL takes {allow}"),
    );
    response
        .headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    response
}

/// An RFC 9457 problem, with our error code beside the standard members.
fn problem(status: StatusCode, code: &str, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("error"),
        "status": status.as_u16(),
        "detail": detail,
        "code": code,
    });
    let mut response = Response::new(Body::from(body.to_string()));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    response
}

/// With a cluster, a room that lives on another node: 307 to the same door there (the client
/// posts its offer again; its resource URL then belongs to that node). `None` to go on here.
/// Not counted in /metrics here: the join that placed a room elsewhere counted it already. It
/// only looks: a room that lives nowhere yet is placed by the join (after the token and the
/// per-address limits), whose refusal then sends the client here again.
async fn elsewhere(ctx: &Arc<SessionContext>, request: &DoorRequest) -> Option<Response<Body>> {
    let cluster = ctx.registry.cluster()?;
    let room = crate::ids::RoomId::new(&request.room).ok()?;
    if ctx.registry.holds(&room) {
        return None;
    }
    match cluster.find(room.as_str()).await {
        Ok(Some(crate::cluster::Place::Elsewhere { url, node })) => {
            let query = request
                .query
                .as_deref()
                .map(|q| format!("?{q}"))
                .unwrap_or_default();
            let location = format!("{url}/{}/{room}{query}", door(request.role));
            let mut response = problem(
                StatusCode::TEMPORARY_REDIRECT,
                "elsewhere",
                &format!("room {room} is on node {node}: {location}"),
            );
            if let Ok(value) = HeaderValue::from_str(&location) {
                response.headers_mut().insert(header::LOCATION, value);
            }
            Some(response)
        }
        Ok(_) => None,
        Err(e) => {
            let e = crate::room::RoomError::from(e);
            Some(refusal(&Refused::new(e.code(), e.to_string())))
        }
    }
}

/// The status a refusal gets, and how long the client should wait before retrying, if at all.
fn status_of(code: ErrorCode) -> (StatusCode, Option<u32>) {
    match code {
        ErrorCode::Unauthorized => (StatusCode::UNAUTHORIZED, None),
        ErrorCode::Forbidden => (StatusCode::FORBIDDEN, None),
        ErrorCode::RoomFull | ErrorCode::ServerFull | ErrorCode::ClusterUnavailable => {
            (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_FULL_SECS))
        }
        ErrorCode::RateLimited => (StatusCode::TOO_MANY_REQUESTS, Some(RETRY_RATE_LIMITED_SECS)),
        ErrorCode::Internal => (StatusCode::INTERNAL_SERVER_ERROR, None),
        _ => (StatusCode::BAD_REQUEST, None),
    }
}

fn refusal(refused: &Refused) -> Response<Body> {
    let (status, retry_after) = status_of(refused.code);
    let code = serde_json::to_value(refused.code)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default();
    let mut response = problem(status, &code, &refused.message);
    let headers = response.headers_mut();
    if let Some(seconds) = retry_after {
        headers.insert(header::RETRY_AFTER, HeaderValue::from(seconds));
    }
    if status == StatusCode::UNAUTHORIZED {
        headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    }
    response
}

/// Whether the request's body is of `expected` type (parameters such as a charset aside).
fn content_type_is(headers: &HeaderMap, expected: &str) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(expected))
}

/// A refusal before any session exists: an HTTP status, our code and words for the client.
struct Problem {
    status: StatusCode,
    code: &'static str,
    detail: String,
}

impl Problem {
    fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        Problem {
            status,
            code,
            detail: detail.into(),
        }
    }

    fn into_response(self) -> Response<Body> {
        problem(self.status, self.code, &self.detail)
    }
}

/// The request's body as text, within `limit` bytes.
fn body_text(request: &DoorRequest, limit: usize) -> Result<String, Problem> {
    let too_large = || {
        Problem::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "bad_sdp",
            format!("the body is larger than {limit} bytes"),
        )
    };
    let body = match &request.body {
        Ok(body) if body.len() > limit => return Err(too_large()),
        Ok(body) => body,
        Err(crate::admin::BodyError::TooLarge) => return Err(too_large()),
        Err(crate::admin::BodyError::Unreadable) => {
            return Err(Problem::new(
                StatusCode::BAD_REQUEST,
                "bad_sdp",
                "the body could not be read",
            ))
        }
    };
    String::from_utf8(body.to_vec())
        .map_err(|_| Problem::new(StatusCode::BAD_REQUEST, "bad_sdp", "the body is not UTF-8"))
}

/// The bearer token, when the request carries one.
fn bearer(headers: &HeaderMap) -> Option<Secret> {
    let value = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.trim().split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| Secret::new(token.trim()))
}

/// The `name` query parameter, percent-decoded.
fn query_name(query: Option<&str>) -> Option<String> {
    let query = query?;
    let pairs: Vec<(String, String)> = serde_urlencoded::from_str(query).ok()?;
    pairs.into_iter().find(|(k, _)| k == "name").map(|(_, v)| v)
}

async fn post(ctx: &Arc<SessionContext>, request: DoorRequest) -> Response<Body> {
    if let Some(elsewhere) = elsewhere(ctx, &request).await {
        if elsewhere.status() == StatusCode::TEMPORARY_REDIRECT {
            crate::metrics::metrics().cluster_redirects.inc();
        }
        return elsewhere;
    }
    if !content_type_is(&request.headers, "application/sdp") {
        let mut response = problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_sdp",
            "send the offer as Content-Type: application/sdp",
        );
        response
            .headers_mut()
            .insert("accept-post", HeaderValue::from_static("application/sdp"));
        return response;
    }
    let offer = match body_text(&request, MAX_SDP_BYTES) {
        Ok(offer) => offer,
        Err(problem) => return problem.into_response(),
    };
    let name = match (request.role, query_name(request.query.as_deref())) {
        (Role::Watcher, _) => "watcher".to_string(),
        (_, Some(name)) => match validate_display_name(&name) {
            Ok(name) => name,
            Err(e) => {
                return problem(
                    StatusCode::BAD_REQUEST,
                    "invalid_display_name",
                    &format!("name {e}"),
                )
            }
        },
        (_, None) => DEFAULT_FEED_NAME.to_string(),
    };
    let config = ctx.registry.config();
    let forwarded_for = request
        .headers
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let client = client_address(request.peer, forwarded_for, &config.trusted_proxies)
        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let slot = match ctx.registry.admission().connect(ClientKey::of(client)) {
        Ok(slot) => slot,
        Err(e) => return refusal(&Refused::new(ErrorCode::RateLimited, e.to_string())),
    };
    // A task of its own: a client that hangs up while its session is set up must not leave it
    // half-made (joined, never closed). Unanswered, the session ends at the media timeout.
    let setup = tokio::spawn(offered::start(
        ctx.clone(),
        offered::Request {
            role: request.role,
            room: request.room.clone(),
            name,
            token: bearer(&request.headers),
            offer,
        },
        slot,
    ));
    let started = match setup.await {
        Ok(Ok(started)) => started,
        Ok(Err(refused)) => {
            // The join placed the new room on another node: send the client there.
            if refused.elsewhere {
                if let Some(redirect) = elsewhere(ctx, &request).await {
                    return redirect;
                }
            }
            return refusal(&refused);
        }
        Err(e) => {
            return problem(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                &format!("setting the session up: {e}"),
            )
        }
    };
    let location = format!("/{}/{}/{}", door(request.role), request.room, started.id);
    let mut response = Response::new(Body::from(started.answer));
    *response.status_mut() = StatusCode::CREATED;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/sdp"),
    );
    if let Ok(location) = HeaderValue::from_str(&location) {
        headers.insert(header::LOCATION, location);
    }
    headers.insert(header::ETAG, HeaderValue::from_static(ETAG));
    headers.insert(
        "accept-patch",
        HeaderValue::from_static("application/trickle-ice-sdpfrag"),
    );
    for link in ice_server_links(ctx.rtc.ice_servers()) {
        if let Ok(value) = HeaderValue::from_str(&link) {
            headers.append(header::LINK, value);
        }
    }
    response
}

/// RFC 9725 §4.4: each STUN/TURN server as a `Link` header.
fn ice_server_links(servers: &[IceServer]) -> Vec<String> {
    // Quotes and backslashes cannot appear inside a quoted-string parameter unescaped; such
    // credentials are not sent rather than sent broken.
    let quotable = |s: &str| !s.contains(['"', '\\', '\r', '\n']);
    let mut links = Vec::new();
    for server in servers {
        for url in &server.urls {
            if url.contains(['<', '>', '\r', '\n']) {
                continue;
            }
            let mut link = format!("<{url}>; rel=\"ice-server\"");
            if let (Some(user), Some(credential)) = (&server.username, &server.credential) {
                if !(quotable(user) && quotable(credential)) {
                    continue;
                }
                link.push_str(&format!(
                    "; username=\"{user}\"; credential=\"{credential}\"; credential-type=\"password\""
                ));
            }
            links.push(link);
        }
    }
    links
}

/// The session a resource URL names, or 404.
fn resource(ctx: &SessionContext, request: &DoorRequest) -> Result<offered::Resource, Problem> {
    let id = request.id.as_deref().unwrap_or_default();
    ctx.resources
        .find(id, request.role, &request.room)
        .ok_or_else(not_found)
}

fn not_found() -> Problem {
    Problem::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such session: it ended, or was never started here",
    )
}

async fn delete(ctx: &Arc<SessionContext>, request: &DoorRequest) -> Response<Body> {
    let id = request.id.as_deref().unwrap_or_default();
    // Taken out now, not when the session has wound down: a second DELETE right after this one
    // finds nothing (404), as the RFC's resource semantics say.
    let Some(resource) = ctx.resources.take(id, request.role, &request.room) else {
        return not_found().into_response();
    };
    // A session that is ending already has nothing more to do with it.
    let _ = resource.control.send(Control::Stop).await;
    Response::new(Body::empty())
}

/// PATCH: trickled candidates (RFC 9725 §4.3). ICE restarts are not supported: 422, and the
/// client starts a new session.
async fn patch(ctx: &Arc<SessionContext>, request: DoorRequest) -> Response<Body> {
    let resource = match resource(ctx, &request) {
        Ok(r) => r,
        Err(problem) => return problem.into_response(),
    };
    if !content_type_is(&request.headers, "application/trickle-ice-sdpfrag") {
        return problem(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "bad_candidate",
            "send candidates as Content-Type: application/trickle-ice-sdpfrag",
        );
    }
    let if_match = request
        .headers
        .get(header::IF_MATCH)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    match if_match {
        None => {
            return problem(
                StatusCode::PRECONDITION_REQUIRED,
                "bad_candidate",
                &format!("send If-Match: {ETAG} (the ETag of the session's answer)"),
            )
        }
        Some("*") => {
            return problem(
                StatusCode::UNPROCESSABLE_ENTITY,
                "bad_candidate",
                "ICE restarts are not supported: end this session and start a new one",
            )
        }
        Some(tag) if tag != ETAG => {
            return problem(
                StatusCode::PRECONDITION_FAILED,
                "bad_candidate",
                &format!("If-Match {tag} is not this session's ETag {ETAG}"),
            )
        }
        Some(_) => {}
    }
    let fragment = match body_text(&request, MAX_FRAGMENT_BYTES) {
        Ok(text) => text,
        Err(problem) => return problem.into_response(),
    };
    let candidates = match trickled_candidates(&fragment) {
        Ok(c) => c,
        Err(why) => return problem(StatusCode::BAD_REQUEST, "bad_candidate", why),
    };
    if resource
        .control
        .send(Control::Candidates(candidates))
        .await
        .is_err()
    {
        return problem(StatusCode::NOT_FOUND, "not_found", "the session has ended");
    }
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

/// The candidates of an RFC 8840 fragment, each with the `a=mid` above it and the fragment's
/// ufrag. A fragment may hold no candidate (only `a=end-of-candidates`).
fn trickled_candidates(fragment: &str) -> Result<Vec<IceCandidate>, &'static str> {
    let mut ufrag = None;
    let mut mid = None;
    let mut candidates = Vec::new();
    for line in fragment.lines().map(str::trim) {
        if let Some(value) = line.strip_prefix("a=ice-ufrag:") {
            ufrag = Some(value.to_string());
        } else if let Some(value) = line.strip_prefix("a=mid:") {
            mid = Some(value.to_string());
        } else if let Some(candidate) = line.strip_prefix("a=") {
            if candidate.starts_with("candidate:") {
                if candidates.len() == MAX_TRICKLED_CANDIDATES {
                    return Err("too many candidates in one PATCH");
                }
                candidates.push(IceCandidate {
                    candidate: candidate.to_string(),
                    sdp_mid: mid.clone(),
                    sdp_m_line_index: None,
                    username_fragment: None,
                });
            }
        } else if !line.is_empty() && !line.starts_with("m=") {
            return Err("not an SDP fragment: each line is a=… or m=…");
        }
    }
    for c in &mut candidates {
        c.username_fragment = ufrag.clone();
    }
    Ok(candidates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fragment_gives_its_candidates_with_their_mid_and_ufrag() {
        let fragment = "a=ice-ufrag:EsAw\r\na=ice-pwd:P2uYro0UCOQ4zxjKXaWCBui1\r\nm=audio 9 RTP/AVP 0\r\na=mid:0\r\na=candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host\r\na=end-of-candidates\r\n";
        let candidates = trickled_candidates(fragment).expect("a fragment");
        assert_eq!(candidates.len(), 1);
        assert_eq!(
            candidates[0].candidate,
            "candidate:1 1 udp 2122260223 192.0.2.1 61764 typ host"
        );
        assert_eq!(candidates[0].sdp_mid.as_deref(), Some("0"));
        assert_eq!(candidates[0].username_fragment.as_deref(), Some("EsAw"));
        assert!(trickled_candidates("hello").is_err());
        let flood = "a=candidate:1 1 udp 1 192.0.2.1 1 typ host\n".repeat(33);
        assert!(trickled_candidates(&flood).is_err());
    }

    #[test]
    fn ice_servers_become_link_headers() {
        let servers = [
            IceServer {
                urls: vec!["stun:stun.example.net:3478".into()],
                username: None,
                credential: None,
            },
            IceServer {
                urls: vec!["turn:turn.example.net?transport=udp".into()],
                username: Some("user".into()),
                credential: Some("pass".into()),
            },
        ];
        assert_eq!(
            ice_server_links(&servers),
            vec![
                "<stun:stun.example.net:3478>; rel=\"ice-server\"".to_string(),
                "<turn:turn.example.net?transport=udp>; rel=\"ice-server\"; username=\"user\"; credential=\"pass\"; credential-type=\"password\"".to_string(),
            ]
        );
    }

    #[test]
    fn refusals_get_the_status_the_rfc_gives() {
        assert_eq!(
            status_of(ErrorCode::RoomFull),
            (StatusCode::SERVICE_UNAVAILABLE, Some(RETRY_FULL_SECS))
        );
        assert_eq!(
            status_of(ErrorCode::Unauthorized).0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status_of(ErrorCode::BadSdp).0, StatusCode::BAD_REQUEST);
        assert_eq!(
            status_of(ErrorCode::RateLimited).0,
            StatusCode::TOO_MANY_REQUESTS
        );
    }

    #[test]
    fn the_name_comes_from_the_query() {
        assert_eq!(
            query_name(Some("name=Stage%20camera&x=1")).as_deref(),
            Some("Stage camera")
        );
        assert_eq!(query_name(Some("x=1")), None);
        assert_eq!(query_name(None), None);
    }
}
