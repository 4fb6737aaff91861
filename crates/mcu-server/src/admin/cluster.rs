//! The admin API's side of a cluster: a room on another node answered with a 307 to it, and
//! this node's own state and drain.

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
    let mut response = error(
        StatusCode::TEMPORARY_REDIRECT,
        "elsewhere",
        format!("room {room} is on node {node}: {location}"),
    );
    if let Ok(value) = header::HeaderValue::from_str(&location) {
        response.headers_mut().insert(header::LOCATION, value);
    }
    crate::metrics::metrics().cluster_redirects.inc();
    Some(response)
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
