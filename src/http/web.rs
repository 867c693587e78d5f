//! The two pages roomlog serves itself, embedded in the binary (no build step, no CDN): the
//! chat client at `/` and the operator's dashboard at `/admin`. Both talk to the server's own
//! WebSocket and JSON API only.

use std::collections::HashMap;
use std::sync::Arc;

use warp::{Filter, Reply};

use super::{admin_allowed, admin_only, App};

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

/// `GET /` and `GET /admin` (the dashboard: from this host, or with an admin token in
/// `?token=`, which the page passes on to the admin endpoints it calls).
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let chat = warp::path::end().and(warp::get()).map(|| page(CHAT));
    let admin = warp::path("admin")
        .and(warp::path::end())
        .and(warp::get())
        .and(crate::http::listen::peer())
        .and(super::credentials())
        .map(
            move |peer: Option<std::net::SocketAddr>, query: HashMap<String, String>| {
                if admin_allowed(peer, &query, &app) {
                    page(ADMIN)
                } else {
                    admin_only("the dashboard")
                }
            },
        );
    chat.or(admin).unify().boxed()
}
