//! HTTP routes: the WebSocket signalling endpoint, health, the admin API, metrics, and the page.

use std::convert::Infallible;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::Filter;

use crate::admin::BodyError;
use crate::admission::{client_address, ClientKey};
use crate::protocol::MAX_MESSAGE_BYTES;
use crate::room::Role;
use crate::session::{self, SessionContext};

/// warp refuses frames above this on its own, by dropping the connection. It is far above the
/// protocol's limit, so an oversized message reaches our code and gets a proper 1009 close.
const WS_TRANSPORT_LIMIT: usize = 16 * MAX_MESSAGE_BYTES;
/// /healthz fails if a room takes longer than this to answer: its actor is stuck.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

/// /healthz fails if a room's compositor has produced no frame for this long: its pipeline has
/// stopped (a frozen call), where a CPU hiccup costs a few frame periods, not 60.
const HEALTH_MAX_COMPOSITE_IDLE_MS: u64 = 2_000;

/// Healthy when every room answered (the caller's deadline) and every room's pipeline is still
/// producing pictures.
fn health_verdict(
    rooms: &[crate::room::RoomSnapshot],
    unanswered: &[crate::ids::RoomId],
) -> (StatusCode, serde_json::Value) {
    if !unanswered.is_empty() {
        let stuck: Vec<serde_json::Value> = unanswered
            .iter()
            .map(|room| serde_json::json!({"room": room.as_str()}))
            .collect();
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stuck", "reason": "a room did not answer", "rooms": stuck}),
        );
    }
    let stuck: Vec<serde_json::Value> = rooms
        .iter()
        .filter(|r| r.pipeline.composite_idle_ms > HEALTH_MAX_COMPOSITE_IDLE_MS)
        .map(|r| serde_json::json!({"room": r.room, "composite_idle_ms": r.pipeline.composite_idle_ms}))
        .collect();
    if stuck.is_empty() {
        (
            StatusCode::OK,
            serde_json::json!({"status": "ok", "rooms": rooms.len()}),
        )
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            serde_json::json!({"status": "stuck", "reason": "a room's pipeline stopped", "rooms": stuck}),
        )
    }
}

/// The web client, built into the binary so one file serves the page. `--web-dir` serves the
/// same files from disk instead, for editing them without rebuilding.
const EMBEDDED: [(&str, &str, &str); 6] = [
    (
        "index.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/index.html"),
    ),
    (
        "app.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/app.js"),
    ),
    (
        "sharing.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/sharing.js"),
    ),
    (
        "watch.html",
        "text/html; charset=utf-8",
        include_str!("../../../web/watch.html"),
    ),
    (
        "watch.js",
        "text/javascript; charset=utf-8",
        include_str!("../../../web/watch.js"),
    ),
    (
        "style.css",
        "text/css; charset=utf-8",
        include_str!("../../../web/style.css"),
    ),
];

/// One web client file, from disk when `web_dir` is set, else from the binary.
async fn asset(
    file: &str,
    web_dir: Option<PathBuf>,
) -> Result<warp::reply::Response, warp::Rejection> {
    use warp::Reply;
    // Only the known file names are served, so no path from the URL ever reaches the disk.
    let Some((name, kind, embedded)) = EMBEDDED.iter().find(|(name, _, _)| *name == file) else {
        return Err(warp::reject::not_found());
    };
    let body = match web_dir {
        Some(dir) => tokio::fs::read(dir.join(name))
            .await
            .map_err(|_| warp::reject::not_found())?,
        None => embedded.as_bytes().to_vec(),
    };
    let mut response = warp::reply::with_header(body, "content-type", *kind).into_response();
    response.headers_mut().insert(
        "cache-control",
        warp::http::HeaderValue::from_static("no-cache"),
    );
    Ok(response)
}

/// The TCP peer of the request (the listener puts it in every request).
fn peer() -> impl Filter<Extract = (Option<SocketAddr>,), Error = Infallible> + Clone {
    warp::ext::optional::<crate::listener::Peer>()
        .map(|p: Option<crate::listener::Peer>| p.map(|p| p.0))
}

/// Where an admin request came from (see `admin::check_access`).
fn caller(
    ctx: Arc<SessionContext>,
) -> impl Filter<Extract = (crate::admin::Caller,), Error = Infallible> + Clone {
    peer().and(warp::header::headers_cloned()).map(
        move |peer: Option<SocketAddr>, headers: warp::http::HeaderMap| {
            let text = |name: &str| {
                headers
                    .get(name)
                    .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            };
            crate::admin::Caller {
                peer,
                host: text("host"),
                origin: text("origin"),
                forwarded: ["x-forwarded-for", "forwarded", "x-real-ip"]
                    .iter()
                    .any(|h| headers.contains_key(*h)),
                via_trusted_proxy: peer
                    .is_some_and(|p| ctx.registry.config().trusted_proxies.contains(&p.ip())),
            }
        },
    )
}

pub fn routes(
    ctx: Arc<SessionContext>,
    web_dir: Option<PathBuf>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let with_ctx = {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let ws = warp::path!("ws" / String)
        .and(warp::ws())
        .and(peer())
        .and(warp::header::optional::<String>("x-forwarded-for"))
        .and(with_ctx.clone())
        .map(
            |room: String,
             ws: warp::ws::Ws,
             peer: Option<SocketAddr>,
             forwarded_for: Option<String>,
             ctx: Arc<SessionContext>| {
                let config = ctx.registry.config();
                let client =
                    client_address(peer, forwarded_for.as_deref(), &config.trusted_proxies)
                        .unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
                // Counted from the upgrade request on, so a refused socket never reaches a room;
                // it is still upgraded, since a browser cannot read why a failed upgrade failed.
                let slot = ctx.registry.admission().connect(ClientKey::of(client));
                ws.max_message_size(WS_TRANSPORT_LIMIT)
                    .max_frame_size(WS_TRANSPORT_LIMIT)
                    .on_upgrade(move |socket| async move {
                        match slot {
                            Ok(slot) => session::serve(socket, room, ctx, slot).await,
                            Err(refusal) => session::refuse(socket, &room, client, refusal).await,
                        }
                    })
            },
        );
    let health = warp::path!("healthz")
        .and(warp::get())
        .and(with_ctx.clone())
        .then(|ctx: Arc<SessionContext>| async move {
            // Every room is asked at once and given the deadline, so the answer names each
            // room whose actor is stuck, however many rooms there are.
            let (rooms, unanswered) = ctx.registry.snapshots_within(HEALTH_DEADLINE).await;
            let (status, body) = health_verdict(&rooms, &unanswered);
            warp::reply::with_status(warp::reply::json(&body), status)
        });
    // The admin API routes its own paths (see admin/mod.rs) and never rejects.
    let api = warp::path!("api" / "v1" / ..)
        .and(warp::method())
        .and(warp::path::tail())
        .and(caller(ctx.clone()))
        .and(warp::header::optional::<String>("authorization"))
        .and(warp::header::optional::<String>("range"))
        .and(warp::body::stream())
        .and(with_ctx.clone())
        .then(
            |method, tail: warp::path::Tail, caller, authorization, range, body, ctx| async move {
                let body = read_body(body, crate::admin::MAX_BODY_BYTES).await;
                crate::admin::handle(
                    ctx,
                    crate::admin::ApiRequest {
                        method,
                        path: tail.as_str().to_string(),
                        caller,
                        authorization,
                        range,
                        body,
                    },
                )
                .await
            },
        );
    let metrics = warp::path!("metrics")
        .and(warp::get())
        .and(caller(ctx.clone()))
        .and(warp::header::optional::<String>("authorization"))
        .and(with_ctx.clone())
        .then(|caller, authorization, ctx| crate::admin::metrics(ctx, caller, authorization));
    // WHIP and WHEP (whip.rs routes the methods and the resource URLs itself, never rejects).
    let doors = warp::path("whip")
        .map(|| Role::Ingest)
        .or(warp::path("whep").map(|| Role::Watcher))
        .unify()
        .and(warp::path::param::<String>())
        .and(warp::path::tail())
        .and(warp::method())
        .and(warp::header::headers_cloned())
        .and(
            warp::query::raw()
                .map(Some)
                .or(warp::any().map(|| None))
                .unify(),
        )
        .and(peer())
        .and(warp::body::stream())
        .and(with_ctx.clone())
        .then(
            |role, room, tail: warp::path::Tail, method, headers, query, peer, body, ctx| async move {
                let body = read_body(body, crate::whip::MAX_SDP_BYTES).await;
                let id = (!tail.as_str().is_empty()).then(|| tail.as_str().to_string());
                crate::whip::handle(
                    ctx,
                    crate::whip::DoorRequest {
                        role,
                        room,
                        id,
                        method,
                        headers,
                        query,
                        peer,
                        body,
                    },
                )
                .await
            },
        );
    let with_dir = warp::any().map(move || web_dir.clone());
    // The watch page plays a room over WHEP (web/watch.js).
    let watch_page = warp::path!("w" / String)
        .and(warp::get())
        .and(with_dir.clone())
        .and_then(
            |_room: String, dir: Option<PathBuf>| async move { asset("watch.html", dir).await },
        );
    // The landing page and every room link load the same page; the script reads the path.
    let page = warp::path::end()
        .or(warp::path!("r" / String)
            .map(|_room: String| ())
            .untuple_one())
        .unify()
        .and(warp::get())
        .and(with_dir.clone())
        .and_then(|dir: Option<PathBuf>| async move { asset("index.html", dir).await });
    let files = warp::path!("static" / String)
        .and(warp::get())
        .and(with_dir)
        .and_then(|file: String, dir: Option<PathBuf>| async move { asset(&file, dir).await });
    ws.or(health)
        .or(api)
        .or(metrics)
        .or(doors)
        .or(watch_page)
        .or(page)
        .or(files)
        .recover(|_rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"error": {"code": "not_found", "message": "no such route"}})),
                StatusCode::NOT_FOUND,
            ))
        })
}

/// A request's body, read only up to `limit` bytes: whatever a client sends, with or without a
/// Content-Length, costs at most that much memory.
async fn read_body(
    body: impl futures_util::Stream<Item = Result<impl warp::Buf, warp::Error>>,
    limit: usize,
) -> Result<bytes::Bytes, BodyError> {
    use futures_util::StreamExt;
    let mut body = std::pin::pin!(body);
    let mut read = Vec::new();
    while let Some(chunk) = body.next().await {
        let mut chunk = chunk.map_err(|_| BodyError::Unreadable)?;
        if read.len() + chunk.remaining() > limit {
            return Err(BodyError::TooLarge);
        }
        while chunk.has_remaining() {
            let part = chunk.chunk();
            read.extend_from_slice(part);
            let n = part.len();
            chunk.advance(n);
        }
    }
    Ok(read.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::codec::VideoCodec;
    use crate::media::PipelineStats;
    use crate::protocol::Layout;
    use crate::room::RoomSnapshot;

    fn room(name: &str, composite_idle_ms: u64) -> RoomSnapshot {
        RoomSnapshot {
            room: name.into(),
            codec: VideoCodec::Vp8,
            participants: Vec::new(),
            watchers: 0,
            layout: Layout {
                layout: "grid".into(),
                width: 1280,
                height: 720,
                tiles: Vec::new(),
            },
            active_speaker: None,
            recording: None,
            pipeline: PipelineStats {
                composite_idle_ms,
                ..PipelineStats::default()
            },
        }
    }

    #[test]
    fn health_fails_when_a_rooms_pipeline_stops_producing_pictures() {
        let (status, body) = health_verdict(&[room("a", 40), room("b", 33)], &[]);
        assert_eq!((status, body["rooms"].as_u64()), (StatusCode::OK, Some(2)));
        let (status, body) = health_verdict(&[room("a", 40), room("frozen", 5_000)], &[]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["rooms"][0]["room"], "frozen");
        assert_eq!(health_verdict(&[], &[]).0, StatusCode::OK);
    }

    #[test]
    fn health_fails_and_names_a_room_that_did_not_answer() {
        let stuck = crate::ids::RoomId::new("stuck").expect("a room name");
        let (status, body) = health_verdict(&[room("a", 40)], &[stuck]);
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body["reason"], "a room did not answer");
        assert_eq!(body["rooms"][0]["room"], "stuck");
    }
}
