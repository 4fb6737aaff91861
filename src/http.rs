//! HTTP routes: the WebSocket signalling endpoint, health, the read-only room view, and the page.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use warp::http::StatusCode;
use warp::Filter;

use crate::protocol::MAX_MESSAGE_BYTES;
use crate::session::{self, SessionContext};

/// warp refuses frames above this on its own, by dropping the connection. It is far above the
/// protocol's limit, so an oversized message reaches our code and gets a proper 1009 close.
const WS_TRANSPORT_LIMIT: usize = 16 * MAX_MESSAGE_BYTES;
/// /healthz fails if a room takes longer than this to answer: its actor is stuck.
const HEALTH_DEADLINE: Duration = Duration::from_secs(2);

const INDEX_HTML: &str = include_str!("../web/index.html");

pub fn routes(
    ctx: Arc<SessionContext>,
) -> impl Filter<Extract = (impl warp::Reply,), Error = Infallible> + Clone {
    let with_ctx = {
        let ctx = ctx.clone();
        warp::any().map(move || ctx.clone())
    };
    let ws = warp::path!("ws" / String)
        .and(warp::ws())
        .and(with_ctx.clone())
        .map(|room: String, ws: warp::ws::Ws, ctx: Arc<SessionContext>| {
            ws.max_message_size(WS_TRANSPORT_LIMIT)
                .max_frame_size(WS_TRANSPORT_LIMIT)
                .on_upgrade(move |socket| session::serve(socket, room, ctx))
        });
    let health = warp::path!("healthz")
        .and(warp::get())
        .and(with_ctx.clone())
        .then(|ctx: Arc<SessionContext>| async move {
            match tokio::time::timeout(HEALTH_DEADLINE, ctx.registry.snapshots()).await {
                Ok(rooms) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"status": "ok", "rooms": rooms.len()})),
                    StatusCode::OK,
                ),
                Err(_) => warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"status": "stuck"})),
                    StatusCode::SERVICE_UNAVAILABLE,
                ),
            }
        });
    let rooms = warp::path!("api" / "v1" / "rooms")
        .and(warp::get())
        .and(warp::addr::remote())
        .and(with_ctx)
        .then(|peer: Option<SocketAddr>, ctx: Arc<SessionContext>| async move {
            // Until the admin API has its token (a later issue), room details stay on loopback.
            if !peer.is_some_and(|p| p.ip().is_loopback()) {
                return warp::reply::with_status(
                    warp::reply::json(&serde_json::json!({"error": {"code": "forbidden", "message": "the room view answers on loopback only"}})),
                    StatusCode::FORBIDDEN,
                );
            }
            let rooms = ctx.registry.snapshots().await;
            warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"rooms": rooms})),
                StatusCode::OK,
            )
        });
    let index = warp::path::end()
        .and(warp::get())
        .map(|| warp::reply::html(INDEX_HTML));
    ws.or(health)
        .or(rooms)
        .or(index)
        .recover(|_rejection: warp::Rejection| async move {
            Ok::<_, Infallible>(warp::reply::with_status(
                warp::reply::json(&serde_json::json!({"error": {"code": "not_found", "message": "no such route"}})),
                StatusCode::NOT_FOUND,
            ))
        })
}
