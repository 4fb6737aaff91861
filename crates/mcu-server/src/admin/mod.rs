//! The admin API: JSON over HTTP under `/api/v1` (documented in docs/api.md). Rooms (list, get,
//! close, layout), participants (remove, mute), recordings (start, stop, list, get, download, delete).
//!
//! Access: with `--admin-token`, every request needs `Authorization: Bearer <token>`; without
//! one, the API answers on loopback only. Errors are `{"error": {"code", "message"}}`.
//! The routing is a plain match on method and path segments, so the whole API reads in one place.

mod access;
mod cluster;
pub mod download;

use access::check_access;
pub use access::Caller;

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use warp::http::{header, Method, Response, StatusCode};
use warp::hyper::Body;

use crate::ids::{ParticipantId, RoomId};
use crate::protocol::layout::LayoutRequest;
use crate::recordings::{self, StoreError};
use crate::room::{RoomError, RoomHandle};
use crate::session::SessionContext;

/// How long a scrape of /metrics waits for each room: /healthz's deadline, well inside
/// Prometheus's default scrape timeout (10 s).
const METRICS_ROOM_DEADLINE: Duration = Duration::from_secs(2);
/// How long a request waits for a room to answer before reporting it stuck.
const ROOM_ANSWER_DEADLINE: Duration = Duration::from_secs(10);
/// Closing a room finishes its recording first (see media/recorder.rs FINISH_TIMEOUT).
const ROOM_CLOSE_DEADLINE: Duration = Duration::from_secs(10);

/// One API request, as the router needs it.
pub struct ApiRequest {
    pub method: Method,
    /// The path below `/api/v1/`, still percent-encoded (an encoded `/` or `.` stays visible and
    /// is refused by the name checks).
    pub path: String,
    pub caller: Caller,
    pub authorization: Option<String>,
    pub range: Option<String>,
    /// The request's body, read up to `MAX_BODY_BYTES`.
    pub body: Result<bytes::Bytes, BodyError>,
}

/// The largest request body the API reads: a custom layout of 25 regions is about 3 KiB.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyError {
    TooLarge,
    Unreadable,
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response<Body> {
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from(body.to_string()))
        .unwrap_or_else(|_| Response::new(Body::empty()))
}

pub fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<Body> {
    json_response(
        status,
        json!({"error": {"code": code, "message": message.into()}}),
    )
}

fn no_content() -> Response<Body> {
    let mut response = Response::new(Body::empty());
    *response.status_mut() = StatusCode::NO_CONTENT;
    response
}

pub async fn handle(ctx: Arc<SessionContext>, request: ApiRequest) -> Response<Body> {
    let config = ctx.registry.config();
    if let Err(refusal) = check_access(
        config.admin_token.as_ref(),
        &request.caller,
        request.authorization.as_deref(),
    ) {
        return refusal.into_response();
    }
    let segments: Vec<&str> = request.path.trim_end_matches('/').split('/').collect();
    let m = &request.method;
    if let ["rooms", room, ..] = segments.as_slice() {
        if let Some(moved) = cluster::elsewhere(&ctx, room, &request.path).await {
            return moved;
        }
    }
    match segments.as_slice() {
        ["rooms"] if m == Method::GET => list_rooms(&ctx).await,
        ["node"] if m == Method::GET => cluster::node_status(&ctx),
        ["node", "drain"] if m == Method::POST => cluster::drain_node(&ctx),
        ["rooms", room] if m == Method::GET => {
            with_room(&ctx, room, |h| async move { get_room(h).await }).await
        }
        ["rooms", room] if m == Method::DELETE => {
            with_room(&ctx, room, |h| async move { close_room(h).await }).await
        }
        ["rooms", room, "recording"] if m == Method::POST => {
            with_room(&ctx, room, |h| async move {
                recording_reply(&h, h.start_recording().await, StatusCode::CREATED)
            })
            .await
        }
        ["rooms", room, "recording"] if m == Method::DELETE => {
            with_room(&ctx, room, |h| async move {
                recording_reply(&h, h.stop_recording().await, StatusCode::OK)
            })
            .await
        }
        ["rooms", room, "participants", who, action @ ("remove" | "mute" | "unmute")]
            if m == Method::POST =>
        {
            let Ok(who) = who.parse::<ParticipantId>() else {
                return error(
                    StatusCode::NOT_FOUND,
                    "participant_not_found",
                    format!("{who:?} is not a participant id (they look like p3)"),
                );
            };
            let action = *action;
            with_room(
                &ctx,
                room,
                |h| async move { moderate(h, who, action).await },
            )
            .await
        }
        ["rooms", room, "layout"] if m == Method::PUT => {
            let request = match layout_request(&request.body) {
                Ok(request) => request,
                Err((status, code, message)) => return error(status, code, message),
            };
            with_room(&ctx, room, |h| async move {
                match h.set_layout(request).await {
                    Ok(layout) => json_response(StatusCode::OK, json!(layout)),
                    Err(e) => room_error(&h, e),
                }
            })
            .await
        }
        ["recordings"] if m == Method::GET => list_recordings(&ctx).await,
        ["recordings", id] if m == Method::GET => match ctx.registry.store().get(id) {
            Ok(info) => json_response(StatusCode::OK, json!(info)),
            Err(e) => recording_error(&ctx, id, &request.path, e).await,
        },
        ["recordings", id] if m == Method::DELETE => match ctx.registry.store().delete(id) {
            Ok(()) => no_content(),
            Err(e) => recording_error(&ctx, id, &request.path, e).await,
        },
        ["recordings", id, "file"] if m == Method::GET => {
            download_recording(&ctx, id, &request.path, request.range.as_deref()).await
        }
        _ => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no such endpoint: {} /api/v1/{}", m, request.path),
        ),
    }
}

/// `GET /metrics` for Prometheus (metrics.rs), behind the API's own door: the admin token when
/// one is set, else loopback only (the series name every room).
pub async fn metrics(
    ctx: Arc<SessionContext>,
    caller: Caller,
    authorization: Option<String>,
) -> Response<Body> {
    let config = ctx.registry.config();
    if let Err(refusal) = check_access(
        config.admin_token.as_ref(),
        &caller,
        authorization.as_deref(),
    ) {
        return refusal.into_response();
    }
    // Rooms are asked at once; one that does not answer in time is left out of this scrape and
    // counted, so a stuck room never costs Prometheus the whole scrape.
    let (rooms, unanswered) = ctx.registry.snapshots_within(METRICS_ROOM_DEADLINE).await;
    let node = ctx
        .registry
        .cluster()
        .map(|cluster| crate::metrics::ClusterNode {
            registry_reachable: cluster.registry_reachable(),
            draining: cluster.is_draining(),
        });
    match crate::metrics::render(&rooms, unanswered.len(), node) {
        Ok((body, content_type)) => Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, content_type)
            .body(Body::from(body))
            .unwrap_or_else(|_| Response::new(Body::empty())),
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            format!("{e:#}"),
        ),
    }
}

/// Runs `f` on the named room, or answers 400 (bad name) / 404 (no such room) / 503 (stuck).
async fn with_room<F, Fut>(ctx: &SessionContext, room: &str, f: F) -> Response<Body>
where
    F: FnOnce(RoomHandle) -> Fut,
    Fut: std::future::Future<Output = Response<Body>>,
{
    let id = match RoomId::new(room) {
        Ok(id) => id,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_room_name",
                format!("room name {e}"),
            )
        }
    };
    let Some(handle) = ctx.registry.room(&id) else {
        return error(
            StatusCode::NOT_FOUND,
            "room_not_found",
            format!("no room {id} (a room exists while someone is in it)"),
        );
    };
    match tokio::time::timeout(ROOM_ANSWER_DEADLINE, f(handle)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "room_stuck",
            format!("room {id} did not answer within {ROOM_ANSWER_DEADLINE:?}"),
        ),
    }
}

async fn list_rooms(ctx: &SessionContext) -> Response<Body> {
    // Every room is asked at once, each given what a single room's request gets: a stuck one is
    // counted, not waited for, so it never costs the operator the list of the others, while a
    // room that is merely slow on a busy machine (seconds, tests/load.rs) is still listed.
    let (rooms, unanswered) = ctx.registry.snapshots_within(ROOM_ANSWER_DEADLINE).await;
    let limit = ctx.registry.config().max_rooms;
    let mut body = json!({
        "rooms": rooms,
        "unanswered_rooms": unanswered.len(),
        "max_rooms": limit,
        "live_tile_filters": crate::media::live_tile_filters(),
        "refused_rooms": ctx.registry.refused_rooms(),
    });
    // With a cluster: every room of every node, with its node (`rooms` stays this node's own,
    // in full).
    if let Some(cluster) = ctx.registry.cluster() {
        body["node"] = json!(cluster.id());
        body["cluster"] = match (cluster.rooms().await, cluster.nodes().await) {
            (Ok(rooms), Ok(nodes)) => json!({"rooms": rooms, "nodes": nodes}),
            (Err(e), _) | (_, Err(e)) => json!({"error": e.to_string()}),
        };
    }
    json_response(StatusCode::OK, body)
}

async fn get_room(handle: RoomHandle) -> Response<Body> {
    match handle.snapshot().await {
        Ok(snapshot) => json_response(StatusCode::OK, json!(snapshot)),
        Err(e) => room_error(&handle, e),
    }
}

async fn close_room(handle: RoomHandle) -> Response<Body> {
    handle.close("the room was closed by a moderator").await;
    match tokio::time::timeout(ROOM_CLOSE_DEADLINE, handle.closed()).await {
        Ok(()) => no_content(),
        Err(_) => error(
            StatusCode::SERVICE_UNAVAILABLE,
            "room_stuck",
            format!("room {} is still closing", handle.id()),
        ),
    }
}

async fn moderate(handle: RoomHandle, who: ParticipantId, action: &str) -> Response<Body> {
    let done = match action {
        "remove" => handle.remove(who, "you were removed by a moderator").await,
        muting => handle.mute(who, muting == "mute").await,
    };
    if let Err(e) = done {
        return room_error(&handle, e);
    }
    match action {
        "remove" => no_content(),
        muting => json_response(
            StatusCode::OK,
            json!({"participant_id": who.to_string(), "muted": muting == "mute"}),
        ),
    }
}

fn recording_reply(
    handle: &RoomHandle,
    result: Result<recordings::RecordingInfo, RoomError>,
    success: StatusCode,
) -> Response<Body> {
    match result {
        Ok(info) => json_response(success, json!(info)),
        Err(e) => room_error(handle, e),
    }
}

/// Why a `PUT …/layout` body is refused: the status, the error code and the message.
type BodyRefusal = (StatusCode, &'static str, String);

/// A `PUT …/layout` body as a layout request, or why it is refused.
fn layout_request(body: &Result<bytes::Bytes, BodyError>) -> Result<LayoutRequest, BodyRefusal> {
    let body = match body {
        Ok(body) => body,
        Err(BodyError::TooLarge) => {
            return Err((
                StatusCode::PAYLOAD_TOO_LARGE,
                "too_large",
                format!("a layout is at most {MAX_BODY_BYTES} bytes"),
            ))
        }
        Err(BodyError::Unreadable) => {
            return Err((
                StatusCode::BAD_REQUEST,
                "bad_layout",
                "the request's body could not be read".to_string(),
            ))
        }
    };
    serde_json::from_slice(body).map_err(|e| {
        (
            StatusCode::BAD_REQUEST,
            "bad_layout",
            format!("not a layout request: {e}"),
        )
    })
}

/// A room's refusal as the API answers it.
fn room_error(handle: &RoomHandle, e: RoomError) -> Response<Body> {
    let (status, code, message) = match &e {
        RoomError::Closed => (
            StatusCode::NOT_FOUND,
            "room_not_found",
            format!("room {} has closed", handle.id()),
        ),
        RoomError::NotHere(who) => (
            StatusCode::NOT_FOUND,
            "participant_not_found",
            format!("no participant {who} in room {}", handle.id()),
        ),
        RoomError::AlreadyRecording | RoomError::NotRecording => {
            (StatusCode::CONFLICT, "conflict", e.to_string())
        }
        RoomError::ServerFull(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "server_full",
            e.to_string(),
        ),
        RoomError::RateLimited(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limited", e.to_string()),
        RoomError::Layout(_) => (StatusCode::BAD_REQUEST, "bad_layout", e.to_string()),
        RoomError::Cluster(_) => (
            StatusCode::SERVICE_UNAVAILABLE,
            "cluster_unavailable",
            e.to_string(),
        ),
        RoomError::RecordingFailed(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "recording_failed",
            e.to_string(),
        ),
        _ => (StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
    };
    error(status, code, message)
}

/// This node's recordings and, on a cluster node, every node's (`cluster.recordings`).
async fn list_recordings(ctx: &SessionContext) -> Response<Body> {
    // Every sidecar in the directory is read: off the async workers.
    let store = ctx.registry.store().clone();
    let listed = tokio::task::spawn_blocking(move || store.list())
        .await
        .unwrap_or_else(|e| Err(anyhow::anyhow!("the listing task failed: {e}")));
    match listed {
        Ok(list) => {
            let mut body = json!({ "recordings": list });
            if let Some(cluster) = cluster::recordings(ctx).await {
                body["cluster"] = cluster;
            }
            json_response(StatusCode::OK, body)
        }
        Err(e) => {
            tracing::error!("listing recordings: {e:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the recordings directory could not be read",
            )
        }
    }
}

async fn download_recording(
    ctx: &SessionContext,
    id: &str,
    path: &str,
    range: Option<&str>,
) -> Response<Body> {
    let store = ctx.registry.store();
    let info = match store.get(id) {
        Ok(info) => info,
        Err(e) => return recording_error(ctx, id, path, e).await,
    };
    let content_type = match info.codec {
        crate::codec::VideoCodec::Vp8 => "video/webm",
        crate::codec::VideoCodec::H264 => "video/x-matroska",
    };
    match download::serve_file(&store.media_path(&info), &info.file, content_type, range).await {
        Ok(response) => response,
        Err(e) => {
            tracing::warn!(recording = %info.id, "download failed: {e:#}");
            error(
                StatusCode::NOT_FOUND,
                "recording_not_found",
                format!("the file of recording {} is missing", info.id),
            )
        }
    }
}

/// A recording request this node's store could not answer: one it does not have may be on
/// another node of the cluster.
async fn recording_error(
    ctx: &SessionContext,
    id: &str,
    path: &str,
    e: StoreError,
) -> Response<Body> {
    if matches!(e, StoreError::NotFound(_)) {
        if let Some(elsewhere) = cluster::recording_elsewhere(ctx, id, path).await {
            return elsewhere;
        }
    }
    store_error(e)
}

fn store_error(e: StoreError) -> Response<Body> {
    match e {
        StoreError::BadId(_) => error(
            StatusCode::BAD_REQUEST,
            "invalid_recording_id",
            e.to_string(),
        ),
        StoreError::NotFound(_) => {
            error(StatusCode::NOT_FOUND, "recording_not_found", e.to_string())
        }
        StoreError::Active(_) => error(StatusCode::CONFLICT, "conflict", e.to_string()),
        StoreError::Io(inner) => {
            tracing::error!("recordings: {inner:#}");
            error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "the recording could not be read or removed",
            )
        }
    }
}
