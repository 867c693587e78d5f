//! Who a connection is, and what it may do: the one seam where authentication plugs in.
//!
//! Every operation asks its [`Identity`] once, at one place (`may_read`, `may_write`). Until
//! signed tokens land, [`NameOnly`] trusts the name a client gives and allows every room.

use std::collections::HashMap;

use crate::event::RoomId;

/// What a client presents when it connects: the query string of the upgrade request.
#[derive(Debug, Default, Clone)]
pub struct Credentials {
    pub query: HashMap<String, String>,
}

/// An authenticated caller and its rights.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The name stored as the author of this caller's messages.
    pub user: String,
    /// May act on anything (edit or delete anyone's message). No authenticator grants it yet.
    pub admin: bool,
}

impl Identity {
    /// Whether this caller may join and read `room`.
    pub fn may_read(&self, _room: &RoomId) -> bool {
        true
    }

    /// Whether this caller may post to `room`.
    pub fn may_write(&self, _room: &RoomId) -> bool {
        true
    }
}

/// Why credentials were refused: HTTP 401 with code `unauthorized`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Turns credentials into an identity.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError>;
}

/// The trust-the-client authenticator: `?name=alice`.
#[derive(Debug, Default)]
pub struct NameOnly;

/// Longest user name accepted.
pub const USER_LEN_MAX: usize = 64;

impl Authenticator for NameOnly {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        let name = credentials.query.get("name").map(String::as_str).unwrap_or("");
        let valid = !name.is_empty() && name.len() <= USER_LEN_MAX && !name.chars().any(char::is_control);
        if !valid {
            return Err(AuthError(format!(
                "connect with ?name=NAME: 1 to {USER_LEN_MAX} bytes, no control characters"
            )));
        }
        Ok(Identity { user: name.to_owned(), admin: false })
    }
}
