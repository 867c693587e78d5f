//! The registry of error codes: every code a client can be answered with, over HTTP
//! (`{"error": {"code": "...", "message": "..."}}`) and over the WebSocket (an `error` frame),
//! with the HTTP status beside it.
//!
//! One registry so that the two edges cannot disagree about the same failure (a search the
//! index cannot serve was once `search_unavailable` over HTTP and `storage_unavailable` over
//! the WebSocket). Every layer error that reaches an edge says its code with
//! `fn code(&self) -> ErrorCode`; the edge turns it into a reply or a frame.
//!
//! The strings are a contract with clients: the wording of messages may change, a code's string
//! does not. `schema/wire.md` lists them all (`tests/docs.rs` checks it does).

use serde::Serialize;
use warp::http::StatusCode;

/// Stable machine-readable error codes; the wording of messages may change, these do not.
///
/// Codes marked (WebSocket) can appear in an `error` frame; the rest only over HTTP. A
/// WebSocket-only code still has a status: the one an HTTP answer would carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// (WebSocket) The frame is not a JSON object.
    MalformedJson,
    /// (WebSocket) Binary frames are not part of the protocol.
    BinaryFrame,
    /// (WebSocket) `type` is missing or names no frame.
    UnknownType,
    /// (WebSocket) A required field is missing.
    MissingField,
    /// (WebSocket) A field the frame does not have.
    UnknownField,
    /// (WebSocket) A field has the wrong type or an absurd value.
    InvalidField,
    /// (WebSocket) The room name breaks the naming rules.
    InvalidRoom,
    /// (WebSocket) The message body, or a request body, is over its limit.
    BodyTooLarge,
    /// (WebSocket) The client message id is empty or over its limit.
    InvalidClientId,
    /// (WebSocket) The operation needs the room to be joined first.
    NotJoined,
    /// (WebSocket) The connection has joined as many rooms as it may.
    TooManyRooms,
    /// (WebSocket) The identity may not do this (in this room, to this key or session).
    Forbidden,
    /// (WebSocket) The connection sends frames faster than `limits.frames_per_second`; this
    /// one was dropped unread.
    RateLimited,
    /// (WebSocket) The message, file, session or route does not exist (never did, was
    /// deleted, or was removed by retention).
    NotFound,
    /// (WebSocket) A query, or a search's query or options, cannot be understood.
    InvalidQuery,
    /// (WebSocket) The log or a store cannot serve this now; a message was not stored, retry
    /// with the same client_id.
    StorageUnavailable,
    /// (WebSocket) The search index cannot answer now; retry later.
    SearchUnavailable,
    /// (WebSocket) The disk is below the server's floor of free space: nothing was stored;
    /// retry (with the same client_id) once space is freed.
    DiskFull,
    /// (WebSocket) The room cannot be reached right now (restarting too often); retry later.
    RoomUnavailable,
    /// (WebSocket) The server is shutting down.
    ShuttingDown,
    /// No valid credentials (a token that is not valid, or none where one is needed).
    Unauthorized,
    /// A request body that is not what the route takes.
    InvalidBody,
    /// A file key that breaks the key rules.
    InvalidKey,
    /// A session id that is not one.
    InvalidSessionId,
    /// A `Range` the file cannot satisfy.
    InvalidRange,
    /// A room without messages.
    RoomNotFound,
    /// The route exists, not with this method.
    MethodNotAllowed,
    /// A request warp refused for another reason.
    BadRequest,
    /// A plain request to `/ws` that is not a WebSocket upgrade.
    NotAWebsocketUpgrade,
    /// The server has as many connections as `limits.connections_max`.
    TooManyConnections,
    /// The caller's address has as many connections as `limits.connections_per_address_max`.
    TooManyConnectionsFromAddress,
    /// The caller's address failed to authenticate too often this minute.
    TooManyFailures,
    /// The disk is above its danger threshold: uploads are refused.
    InsufficientStorage,
    /// The running configuration cannot be rendered.
    ConfigUnavailable,
    /// The janitor cannot plan now.
    JanitorUnavailable,
    /// Another metrics recorder is installed in this process.
    MetricsUnavailable,
    /// A task of the server failed (a bug).
    Internal,
    /// The session is not in a state that allows the command.
    SessionConflict,
    /// Another node changed the same thing first (a cluster's conditional append): reload and
    /// retry.
    Conflict,
    /// No live session to own the file.
    NoSession,
    /// The key's content is missing from the store (quarantined by a scrub?).
    ContentMissing,
    /// An upload over `limits.upload_bytes_max`.
    UploadTooLarge,
    /// The upload's blake3 is not the one the client announced.
    HashMismatch,
    /// The upload was cut off.
    UploadCut,
    /// No such tier is configured (`files.cold_dir`).
    NoTier,
}

impl ErrorCode {
    /// Every code, in the order of the enum (a test checks it): for the registry's tests, the
    /// docs' test, and the metrics that count them. Add a new code here and to `schema/wire.md`.
    pub const ALL: [ErrorCode; 45] = [
        ErrorCode::MalformedJson,
        ErrorCode::BinaryFrame,
        ErrorCode::UnknownType,
        ErrorCode::MissingField,
        ErrorCode::UnknownField,
        ErrorCode::InvalidField,
        ErrorCode::InvalidRoom,
        ErrorCode::BodyTooLarge,
        ErrorCode::InvalidClientId,
        ErrorCode::NotJoined,
        ErrorCode::TooManyRooms,
        ErrorCode::Forbidden,
        ErrorCode::RateLimited,
        ErrorCode::NotFound,
        ErrorCode::InvalidQuery,
        ErrorCode::StorageUnavailable,
        ErrorCode::SearchUnavailable,
        ErrorCode::DiskFull,
        ErrorCode::RoomUnavailable,
        ErrorCode::ShuttingDown,
        ErrorCode::Unauthorized,
        ErrorCode::InvalidBody,
        ErrorCode::InvalidKey,
        ErrorCode::InvalidSessionId,
        ErrorCode::InvalidRange,
        ErrorCode::RoomNotFound,
        ErrorCode::MethodNotAllowed,
        ErrorCode::BadRequest,
        ErrorCode::NotAWebsocketUpgrade,
        ErrorCode::TooManyConnections,
        ErrorCode::TooManyConnectionsFromAddress,
        ErrorCode::TooManyFailures,
        ErrorCode::InsufficientStorage,
        ErrorCode::ConfigUnavailable,
        ErrorCode::JanitorUnavailable,
        ErrorCode::MetricsUnavailable,
        ErrorCode::Internal,
        ErrorCode::SessionConflict,
        ErrorCode::Conflict,
        ErrorCode::NoSession,
        ErrorCode::ContentMissing,
        ErrorCode::UploadTooLarge,
        ErrorCode::HashMismatch,
        ErrorCode::UploadCut,
        ErrorCode::NoTier,
    ];

    /// The code as it appears on the wire (and as a metrics label).
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::MalformedJson => "malformed_json",
            ErrorCode::BinaryFrame => "binary_frame",
            ErrorCode::UnknownType => "unknown_type",
            ErrorCode::MissingField => "missing_field",
            ErrorCode::UnknownField => "unknown_field",
            ErrorCode::InvalidField => "invalid_field",
            ErrorCode::InvalidRoom => "invalid_room",
            ErrorCode::BodyTooLarge => "body_too_large",
            ErrorCode::InvalidClientId => "invalid_client_id",
            ErrorCode::NotJoined => "not_joined",
            ErrorCode::TooManyRooms => "too_many_rooms",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::NotFound => "not_found",
            ErrorCode::InvalidQuery => "invalid_query",
            ErrorCode::StorageUnavailable => "storage_unavailable",
            ErrorCode::SearchUnavailable => "search_unavailable",
            ErrorCode::DiskFull => "disk_full",
            ErrorCode::RoomUnavailable => "room_unavailable",
            ErrorCode::ShuttingDown => "shutting_down",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::InvalidBody => "invalid_body",
            ErrorCode::InvalidKey => "invalid_key",
            ErrorCode::InvalidSessionId => "invalid_session_id",
            ErrorCode::InvalidRange => "invalid_range",
            ErrorCode::RoomNotFound => "room_not_found",
            ErrorCode::MethodNotAllowed => "method_not_allowed",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::NotAWebsocketUpgrade => "not_a_websocket_upgrade",
            ErrorCode::TooManyConnections => "too_many_connections",
            ErrorCode::TooManyConnectionsFromAddress => "too_many_connections_from_address",
            ErrorCode::TooManyFailures => "too_many_failures",
            ErrorCode::InsufficientStorage => "insufficient_storage",
            ErrorCode::ConfigUnavailable => "config_unavailable",
            ErrorCode::JanitorUnavailable => "janitor_unavailable",
            ErrorCode::MetricsUnavailable => "metrics_unavailable",
            ErrorCode::Internal => "internal",
            ErrorCode::SessionConflict => "session_conflict",
            ErrorCode::Conflict => "conflict",
            ErrorCode::NoSession => "no_session",
            ErrorCode::ContentMissing => "content_missing",
            ErrorCode::UploadTooLarge => "upload_too_large",
            ErrorCode::HashMismatch => "hash_mismatch",
            ErrorCode::UploadCut => "upload_cut",
            ErrorCode::NoTier => "no_tier",
        }
    }

    /// The HTTP status an answer with this code carries.
    pub fn status(self) -> StatusCode {
        match self {
            ErrorCode::MalformedJson
            | ErrorCode::BinaryFrame
            | ErrorCode::UnknownType
            | ErrorCode::MissingField
            | ErrorCode::UnknownField
            | ErrorCode::InvalidField
            | ErrorCode::InvalidRoom
            | ErrorCode::InvalidClientId
            | ErrorCode::InvalidQuery
            | ErrorCode::InvalidBody
            | ErrorCode::InvalidKey
            | ErrorCode::InvalidSessionId
            | ErrorCode::BadRequest
            | ErrorCode::NotAWebsocketUpgrade
            | ErrorCode::HashMismatch
            | ErrorCode::UploadCut => StatusCode::BAD_REQUEST,
            ErrorCode::Unauthorized => StatusCode::UNAUTHORIZED,
            ErrorCode::Forbidden => StatusCode::FORBIDDEN,
            ErrorCode::NotFound | ErrorCode::RoomNotFound => StatusCode::NOT_FOUND,
            ErrorCode::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ErrorCode::NotJoined
            | ErrorCode::SessionConflict
            | ErrorCode::Conflict
            | ErrorCode::NoSession
            | ErrorCode::NoTier => StatusCode::CONFLICT,
            ErrorCode::BodyTooLarge | ErrorCode::UploadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::InvalidRange => StatusCode::RANGE_NOT_SATISFIABLE,
            ErrorCode::TooManyRooms
            | ErrorCode::RateLimited
            | ErrorCode::TooManyConnectionsFromAddress
            | ErrorCode::TooManyFailures => StatusCode::TOO_MANY_REQUESTS,
            ErrorCode::ConfigUnavailable | ErrorCode::Internal | ErrorCode::ContentMissing => {
                StatusCode::INTERNAL_SERVER_ERROR
            }
            ErrorCode::StorageUnavailable
            | ErrorCode::SearchUnavailable
            | ErrorCode::RoomUnavailable
            | ErrorCode::ShuttingDown
            | ErrorCode::TooManyConnections
            | ErrorCode::JanitorUnavailable
            | ErrorCode::MetricsUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            ErrorCode::DiskFull | ErrorCode::InsufficientStorage => StatusCode::INSUFFICIENT_STORAGE,
        }
    }

    /// Whether the code can appear in a WebSocket `error` frame (the `(WebSocket)` codes).
    pub fn in_frames(self) -> bool {
        matches!(
            self,
            ErrorCode::MalformedJson
                | ErrorCode::BinaryFrame
                | ErrorCode::UnknownType
                | ErrorCode::MissingField
                | ErrorCode::UnknownField
                | ErrorCode::InvalidField
                | ErrorCode::InvalidRoom
                | ErrorCode::BodyTooLarge
                | ErrorCode::InvalidClientId
                | ErrorCode::NotJoined
                | ErrorCode::TooManyRooms
                | ErrorCode::Forbidden
                | ErrorCode::RateLimited
                | ErrorCode::NotFound
                | ErrorCode::InvalidQuery
                | ErrorCode::StorageUnavailable
                | ErrorCode::SearchUnavailable
                | ErrorCode::DiskFull
                | ErrorCode::RoomUnavailable
                | ErrorCode::ShuttingDown
                | ErrorCode::Conflict
        )
    }

    /// The codes a WebSocket `error` frame can carry: the metrics count these per code.
    pub fn frame_codes() -> impl Iterator<Item = ErrorCode> {
        Self::ALL.into_iter().filter(|code| code.in_frames())
    }
}

impl std::fmt::Display for ErrorCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::ErrorCode;

    #[test]
    fn every_code_has_a_unique_snake_case_string_and_an_error_status() {
        let mut seen = HashSet::new();
        for code in ErrorCode::ALL {
            let text = code.as_str();
            assert!(seen.insert(text), "{code:?}: {text} is used twice");
            assert!(
                !text.is_empty()
                    && text.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    && !text.starts_with('_')
                    && !text.ends_with('_')
                    && !text.contains("__"),
                "{code:?}: {text} is not snake_case"
            );
            let status = code.status();
            assert!(status.is_client_error() || status.is_server_error(), "{code:?}: {status} is not an error");
            // serde writes the same string the registry does (error frames serialize the enum).
            assert_eq!(serde_json::to_value(code).ok(), Some(serde_json::Value::from(text)), "{code:?}");
        }
    }

    #[test]
    fn all_lists_the_variants_in_order_without_gaps() {
        for (index, code) in ErrorCode::ALL.into_iter().enumerate() {
            assert_eq!(code as usize, index, "{code:?} is out of place in ErrorCode::ALL");
        }
    }
}
