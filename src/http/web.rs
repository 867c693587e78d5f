//! The two pages roomlog serves itself, embedded in the binary (no build step, no CDN): the
//! chat client at `/` and the operator's dashboard at `/admin`. Both talk to the server's own
//! WebSocket and JSON API only.

use std::collections::HashMap;
use std::sync::Arc;

use warp::{Filter, Reply};

use super::{admin_check, App};
use crate::error_code::ErrorCode;

const CHAT: &str = include_str!("web/chat.html");
const ADMIN: &str = include_str!("web/admin.html");
/// What `/admin` shows a caller it refuses: a form for the admin token, with the reason.
const ADMIN_TOKEN: &str = include_str!("web/admin-token.html");

fn page(html: &'static str) -> warp::reply::Response {
    let reply = warp::reply::with_header(warp::reply::html(html), "cache-control", "no-cache");
    let reply = warp::reply::with_header(
        reply,
        "content-security-policy",
        "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src 'self' blob:; media-src 'self' blob:; connect-src 'self' ws: wss:",
    );
    reply.into_response()
}

/// The page that asks for an admin token, with `why` (HTML-escaped) and `status`: 401 for no
/// token or one that is not valid, 403 for a valid one without the admin scope (as every admin
/// endpoint answers; a browser shows a page rather than the JSON error).
fn admin_token_page(status: warp::http::StatusCode, why: &str) -> warp::reply::Response {
    let why = why.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;");
    let html = ADMIN_TOKEN.replace("{{why}}", &why);
    let reply = warp::reply::with_header(warp::reply::html(html), "cache-control", "no-store");
    let reply = warp::reply::with_header(
        reply,
        "content-security-policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'",
    );
    warp::reply::with_status(reply, status).into_response()
}

/// `GET /` and `GET /admin` (the dashboard: from this host, or with an admin token in
/// `?token=`, which the page passes on to the admin endpoints it calls; others get a page
/// asking for the token).
pub fn routes(app: Arc<App>) -> warp::filters::BoxedFilter<(warp::reply::Response,)> {
    let chat = warp::path::end().and(warp::get()).map(|| page(CHAT));
    let admin = warp::path("admin")
        .and(warp::path::end())
        .and(warp::get())
        .and(crate::http::listen::peer())
        .and(super::credentials())
        .map(move |peer: Option<std::net::SocketAddr>, query: HashMap<String, String>| {
            match admin_check(peer, &query, &app) {
                Ok(()) => page(ADMIN),
                Err(refusal) if refusal.code() == ErrorCode::Forbidden => {
                    admin_token_page(refusal.code().status(), "This token does not have the admin scope.")
                }
                Err(_) if !query.contains_key("token") => {
                    admin_token_page(warp::http::StatusCode::UNAUTHORIZED, "No admin token was given.")
                }
                Err(refusal) => admin_token_page(
                    refusal.code().status(),
                    &format!("This token was refused: {}.", refusal.message()),
                ),
            }
        });
    chat.or(admin).unify().boxed()
}
