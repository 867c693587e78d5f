//! The WebSocket upgrade (RFC 6455 §4.2), done here rather than by `warp::ws()` so that every
//! tungstenite buffer and limit comes from our configuration.
//!
//! warp 0.4 does not expose tungstenite's read buffer, whose default is 128 KiB per connection,
//! zero-filled on the first read: 10,000 idle connections held 1.3 GB that way. Here it is
//! `limits.read_buffer_bytes` (8 KiB by default; a larger frame grows it for as long as needed).

use std::sync::Arc;

use hyper::upgrade::OnUpgrade;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::WebSocketStream;
use tungstenite::protocol::{Role, WebSocketConfig};
use warp::http::{header, HeaderMap, HeaderValue, StatusCode};
use warp::reply::Response;
use warp::{Filter, Rejection, Reply};

use super::{ApiError, App};
use crate::config::Limits;
use crate::error_code::ErrorCode;

/// The WebSocket of one upgraded connection.
pub type Socket = WebSocketStream<TokioIo<hyper::upgrade::Upgraded>>;

/// What an upgrade request carries: its headers and hyper's handle on the connection.
#[derive(Debug)]
pub struct UpgradeRequest {
    headers: HeaderMap,
    on_upgrade: Option<OnUpgrade>,
}

/// Extracts an upgrade request from a GET.
pub fn request() -> impl Filter<Extract = (UpgradeRequest,), Error = Rejection> + Clone {
    warp::get()
        .and(warp::header::headers_cloned())
        .and(warp::ext::optional::<OnUpgrade>())
        .map(|headers, on_upgrade| UpgradeRequest { headers, on_upgrade })
}

/// tungstenite's configuration, from our limits.
pub fn socket_config(limits: &Limits) -> WebSocketConfig {
    WebSocketConfig::default()
        .read_buffer_size(limits.read_buffer_bytes)
        .write_buffer_size(limits.read_buffer_bytes)
        .max_write_buffer_size(limits.write_buffer_bytes_max)
        .max_message_size(Some(limits.frame_bytes_max))
        .max_frame_size(Some(limits.frame_bytes_max))
}

impl UpgradeRequest {
    /// Answers 101 and hands the upgraded socket to `serve`, or answers why it cannot.
    pub fn accept<F, Fut>(self, app: &Arc<App>, serve: F) -> Response
    where
        F: FnOnce(Socket) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        let has_token = |name: header::HeaderName, token: &str| {
            self.headers
                .get_all(name)
                .iter()
                .filter_map(|v| v.to_str().ok())
                .any(|v| v.split(',').any(|part| part.trim().eq_ignore_ascii_case(token)))
        };
        let key = self.headers.get(header::SEC_WEBSOCKET_KEY).cloned();
        let version_ok = self.headers.get(header::SEC_WEBSOCKET_VERSION).is_some_and(|v| v == "13");
        let (Some(key), Some(on_upgrade), true, true, true) = (
            key,
            self.on_upgrade,
            has_token(header::CONNECTION, "upgrade"),
            has_token(header::UPGRADE, "websocket"),
            version_ok,
        ) else {
            return ApiError::new(
                ErrorCode::NotAWebsocketUpgrade,
                "expected a WebSocket upgrade: Connection: upgrade, Upgrade: websocket, Sec-WebSocket-Version: 13, Sec-WebSocket-Key",
            )
            .into_response();
        };
        let config = socket_config(&app.config.limits);
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let socket =
                        WebSocketStream::from_raw_socket(TokioIo::new(upgraded), Role::Server, Some(config)).await;
                    serve(socket).await;
                }
                Err(error) => tracing::debug!(error = %error, "websocket upgrade failed"),
            }
        });
        let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
        let mut response = Response::default();
        *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
        let headers = response.headers_mut();
        headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
        headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        if let Ok(accept) = HeaderValue::from_str(&accept) {
            headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
        }
        response
    }
}
