//! The HTTP face of an error: a code from the [registry](crate::error_code), its status, and a
//! readable message, answered as `{"error": {"code": "...", "message": "..."}}`.
//!
//! Handlers return `Result<Response, ApiError>` and use `?`: the happy path reads straight
//! down, and a layer error becomes its answer through `From`, with the code it says itself.

use warp::reply::{Reply, Response};

use crate::error_code::ErrorCode;

/// A refused or failed request, small enough to pass around before it becomes a reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    code: ErrorCode,
    message: String,
}

impl ApiError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self { code, message: message.into() }
    }

    /// A caller without valid credentials (401).
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Unauthorized, message)
    }

    /// A caller whose token does not cover what it asked (403).
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::Forbidden, message)
    }

    /// A query string the route cannot use (400).
    pub fn invalid_query(message: impl Into<String>) -> Self {
        Self::new(ErrorCode::InvalidQuery, message)
    }

    /// A store the answer needs cannot be read now (503). Takes the error itself so that the
    /// message is its text, whatever its type.
    pub fn storage(error: impl std::fmt::Display) -> Self {
        Self::new(ErrorCode::StorageUnavailable, error.to_string())
    }

    pub fn code(&self) -> ErrorCode {
        self.code
    }

    pub fn message(&self) -> &str {
        &self.message
    }
}

impl Reply for ApiError {
    fn into_response(self) -> Response {
        let body = serde_json::json!({ "error": { "code": self.code, "message": self.message } });
        warp::reply::with_status(warp::reply::json(&body), self.code.status()).into_response()
    }
}

/// Layer errors that say their own code: the message is the error's text.
macro_rules! from_coded {
    ($($error:ty),* $(,)?) => {
        $(impl From<$error> for ApiError {
            fn from(error: $error) -> Self {
                Self::new(error.code(), error.to_string())
            }
        })*
    };
}

from_coded!(
    crate::blob::service::FileError,
    crate::actor::session::SessionError,
    crate::actor::ChatError,
    crate::janitor::JanitorError,
    crate::log::LogError,
    super::SearchFailure,
);
