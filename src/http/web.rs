//! The two pages roomlog serves itself, embedded in the binary (no build step, no CDN): the
//! chat client at `/` and the operator's dashboard at `/admin`. Both talk to the server's own
//! WebSocket and JSON API only.

use std::sync::Arc;

use warp::http::StatusCode;
use warp::{Filter, Reply};

use super::{error_reply, host_only, App};

const CHAT: &str = include_str!("web/chat.html");
const ADMIN: &str = include_str!("web/admin.html");

fn page(html: &'static str) -> warp::reply::Response {
    let reply = warp::reply::with_header(warp::reply::html(html), "cache-control", "no-cache");
    let reply = warp::reply::with_header(
        reply,
        "content-security-policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; media-src 'self' blob:; connect-src 'self' ws: wss:",
    );
    reply.into_response()
}

/// `GET /` and `GET /admin` (the dashboard is served to this host only until admin tokens exist,
/// like the admin endpoints it calls).
pub fn routes(_app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let chat = warp::path::end().and(warp::get()).map(|| page(CHAT));
    let admin = warp::path("admin").and(warp::path::end()).and(warp::get()).and(warp::addr::remote()).map(
        |peer: Option<std::net::SocketAddr>| {
            if host_only(peer) {
                page(ADMIN)
            } else {
                error_reply(
                    StatusCode::FORBIDDEN,
                    "forbidden",
                    "the dashboard is served to this host only until admin tokens exist",
                )
            }
        },
    );
    chat.or(admin).unify().boxed()
}
