//! The admin API's side of a cluster: a room or a recording on another node answered with a 307
//! to it, every node's recordings, and this node's own state and drain.

use serde_json::json;
use warp::http::{header, Response, StatusCode};
use warp::hyper::Body;

use super::{error, json_response};
use crate::ids::RoomId;
use crate::session::SessionContext;

/// A request about a room that lives on another node of the cluster: 307 to the same path there
/// (the method and body are kept; the client must send its token again, see docs/api.md).
pub(super) async fn elsewhere(
    ctx: &SessionContext,
    room: &str,
    path: &str,
) -> Option<Response<Body>> {
    let cluster = ctx.registry.cluster()?;
    let id = RoomId::new(room).ok()?;
    if ctx.registry.room(&id).is_some() {
        return None;
    }
    let Ok(Some(crate::cluster::Place::Elsewhere { url, node })) = cluster.find(room).await else {
        return None;
    };
    let location = format!("{url}/api/v1/{path}");
    Some(redirect(
        &location,
        format!("room {room} is on node {node}: {location}"),
    ))
}

/// 307 to `location` (the method and body are kept).
fn redirect(location: &str, message: String) -> Response<Body> {
    let mut response = error(StatusCode::TEMPORARY_REDIRECT, "elsewhere", message);
    if let Ok(value) = header::HeaderValue::from_str(location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    crate::metrics::metrics().cluster_redirects.inc();
    response
}

/// A request about recording `id`, which this node does not have: 307 to the node that
/// published it, or 503 if that node is not running (its files are on its disk). None when no
/// other node has it either (or there is no cluster): the caller answers 404.
pub(super) async fn recording_elsewhere(
    ctx: &SessionContext,
    id: &str,
    path: &str,
) -> Option<Response<Body>> {
    let cluster = ctx.registry.cluster()?;
    let found = match cluster.find_recording(id).await {
        Ok(found) => found?,
        Err(e) => {
            tracing::warn!(
                recording = id,
                "looking for a recording in the cluster: {e:#}"
            );
            return None;
        }
    };
    let node = found["node"].as_str().unwrap_or("?");
    let url = found["node_url"].as_str()?;
    if found["node_live"] != true {
        return Some(error(
            StatusCode::SERVICE_UNAVAILABLE,
            "node_unavailable",
            format!("recording {id} is on node {node} ({url}), which is not running now; its files are on that node's disk"),
        ));
    }
    let location = format!("{url}/api/v1/{path}");
    Some(redirect(
        &location,
        format!("recording {id} is on node {node}: {location}"),
    ))
}

/// `GET /api/v1/recordings`'s `cluster` part: every node's recordings, with their node.
pub(super) async fn recordings(ctx: &SessionContext) -> Option<serde_json::Value> {
    let cluster = ctx.registry.cluster()?;
    Some(match cluster.recordings().await {
        Ok(recordings) => json!({"recordings": recordings}),
        Err(e) => json!({"error": format!("{e:#}")}),
    })
}

/// `GET /api/v1/node`: this node in its cluster.
pub(super) fn node_status(ctx: &SessionContext) -> Response<Body> {
    match ctx.registry.cluster() {
        None => json_response(StatusCode::OK, json!({"cluster": false})),
        Some(cluster) => json_response(
            StatusCode::OK,
            json!({
                "cluster": true,
                "id": cluster.id(),
                "url": cluster.url(),
                "draining": cluster.is_draining(),
                "registry_reachable": cluster.registry_reachable(),
                "published": cluster.last_record(),
            }),
        ),
    }
}

/// `POST /api/v1/node/drain`: no new room on this node; its rooms go on until they end.
pub(super) fn drain_node(ctx: &SessionContext) -> Response<Body> {
    match ctx.registry.cluster() {
        None => error(
            StatusCode::CONFLICT,
            "not_a_cluster",
            "this server runs without --redis-url: there is no other node to send new rooms to",
        ),
        Some(cluster) => {
            cluster.drain();
            json_response(
                StatusCode::OK,
                json!({"id": cluster.id(), "draining": true, "rooms": ctx.registry.room_names().len()}),
            )
        }
    }
}
