//! Who a connection is, and what it may do: the one seam where authentication plugs in.
//!
//! Every operation asks its [`Identity`] once, at one place (`may_read`, `may_write`).
//! [`TokenAuth`] verifies signed tokens (`?token=`, see `crate::token`) and, for callers
//! without one, applies `auth.anonymous`; [`NameOnly`] trusts the name a client gives and
//! allows every room (what `auth.anonymous = "write"` means, and what tests use).

use std::collections::HashMap;

use crate::clock::Clock;
pub use crate::config::Anonymous;
use crate::event::RoomId;
use crate::event::SessionId;
use crate::token::{matches, FileGrant, RoomGrant, Secrets};

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
    /// May act on anything (edit or delete anyone's message) and use the admin endpoints.
    pub admin: bool,
    /// The rooms it may read and write; `None`: every room, both.
    pub grants: Option<Vec<RoomGrant>>,
    /// The file key prefixes it may read and write; `None`: every key, both, and every
    /// session (a caller trusted by `auth.anonymous = "write"`).
    pub files: Option<Vec<FileGrant>>,
    /// The roomlog session its token is bound to: it may read and write that session's files,
    /// and read, touch and end that session.
    pub session: Option<SessionId>,
}

/// What a caller wants to do with a file key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAccess {
    Read,
    Write,
}

impl Identity {
    /// Whether this caller may join and read `room`.
    pub fn may_read(&self, room: &RoomId) -> bool {
        self.grants.as_ref().is_none_or(|grants| grants.iter().any(|g| matches(&g.pattern, room.as_str())))
    }

    /// Whether this caller may post to `room`.
    pub fn may_write(&self, room: &RoomId) -> bool {
        self.grants.as_ref().is_none_or(|grants| grants.iter().any(|g| g.write && matches(&g.pattern, room.as_str())))
    }

    /// A caller with the run of every file and session: an admin, or a trusted anonymous one.
    pub fn manages_all(&self) -> bool {
        self.admin || self.files.is_none()
    }

    /// Whether this caller may `access` the file `key`, owned by `owner` (for a write, both
    /// the key's present owner and the one it would have).
    pub fn may_file(&self, key: &str, owners: &[Option<&SessionId>], access: FileAccess) -> bool {
        if self.manages_all() {
            return true;
        }
        let granted = self.files.as_ref().is_some_and(|grants| {
            grants.iter().any(|g| key.starts_with(&g.prefix) && (g.write || access == FileAccess::Read))
        });
        let own =
            self.session.as_ref().is_some_and(|mine| !owners.is_empty() && owners.iter().all(|o| *o == Some(mine)));
        granted || own
    }

    /// Whether this caller may list keys under `prefix` (a read grant must cover all of it).
    pub fn may_list(&self, prefix: &str) -> bool {
        self.manages_all()
            || self.files.as_ref().is_some_and(|grants| grants.iter().any(|g| prefix.starts_with(&g.prefix)))
    }

    /// Whether this caller may read, touch or end `session`; paying, creating and listing
    /// are for [`Self::manages_all`] callers only.
    pub fn may_session(&self, session: &SessionId) -> bool {
        self.manages_all() || self.session.as_ref() == Some(session)
    }
}

/// Why credentials were refused: HTTP 401 with code `unauthorized`.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{0}")]
pub struct AuthError(pub String);

/// Turns credentials into an identity.
pub trait Authenticator: Send + Sync + std::fmt::Debug {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError>;

    /// Gives the authenticator the sessions' read side, once the server has opened it (for
    /// tokens bound to a session).
    fn attach_sessions(&self, _sessions: crate::projection::sessions::Sessions) {}

    /// Who a caller that presents nothing is (an HTTP search without credentials, say), or
    /// `None` when such callers are refused.
    fn anonymous(&self) -> Option<Identity> {
        Some(Identity { user: String::new(), admin: false, grants: None, files: None, session: None })
    }
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
        Ok(Identity { user: name.to_owned(), admin: false, grants: None, files: None, session: None })
    }
}

/// Signed tokens, with `anonymous` for callers that present none.
#[derive(Debug)]
pub struct TokenAuth {
    pub secrets: Secrets,
    pub anonymous: Anonymous,
    pub clock: std::sync::Arc<dyn Clock>,
    /// For tokens bound to a session; set by the server once the projection is open.
    pub sessions: std::sync::OnceLock<crate::projection::sessions::Sessions>,
    /// The names callers without a token may not take.
    pub reserved: ReservedNames,
}

/// Names a caller without a token (`auth.anonymous = "read"` or `"write"`) may not take, so
/// that nobody can post as a token user: the operator's `auth.reserved_names`, and every user
/// that has connected with a valid token since the server started. Compared lower-cased
/// (`Alice` is `alice`). Bounded: past [`RESERVED_NAMES_MAX`] names learnt from tokens, new
/// ones are no longer learnt (the configured ones always hold).
#[derive(Debug, Default)]
pub struct ReservedNames {
    names: std::sync::RwLock<std::collections::HashSet<String>>,
}

/// Most names [`ReservedNames`] learns from tokens.
pub const RESERVED_NAMES_MAX: usize = 100_000;

impl ReservedNames {
    /// The operator's list (`auth.reserved_names`).
    pub fn new(configured: &[String]) -> Self {
        Self { names: std::sync::RwLock::new(configured.iter().map(|n| n.trim().to_lowercase()).collect()) }
    }

    /// Reserves `user`, a token's user.
    pub fn learn(&self, user: &str) {
        if self.is_reserved(user) {
            return;
        }
        let mut names = self.names.write().unwrap_or_else(std::sync::PoisonError::into_inner);
        if names.len() < RESERVED_NAMES_MAX {
            names.insert(user.to_lowercase());
        }
    }

    pub fn is_reserved(&self, name: &str) -> bool {
        let names = self.names.read().unwrap_or_else(std::sync::PoisonError::into_inner);
        names.contains(&name.trim().to_lowercase())
    }
}

impl Authenticator for TokenAuth {
    fn authenticate(&self, credentials: &Credentials) -> Result<Identity, AuthError> {
        if let Some(token) = credentials.query.get("token") {
            let claims = self.secrets.verify(token, self.clock.now_ms()).map_err(|e| AuthError(e.to_string()))?;
            if let Some(id) = &claims.session {
                use crate::session::SessionState;
                let state = match self.sessions.get().map(|s| s.get(id)) {
                    Some(Ok(Some(session))) => session.state,
                    Some(Ok(None)) => return Err(AuthError(format!("the token's session {id} does not exist"))),
                    Some(Err(e)) => return Err(AuthError(format!("the token's session cannot be read: {e}"))),
                    None => return Err(AuthError("sessions are not open yet; retry".into())),
                };
                if !matches!(state, SessionState::Active | SessionState::Paid) {
                    return Err(AuthError(format!("the token's session {id} is {}", state.as_str())));
                }
            }
            self.reserved.learn(&claims.user);
            return Ok(Identity {
                user: claims.user,
                admin: claims.admin,
                grants: Some(claims.rooms),
                files: Some(claims.files),
                session: claims.session,
            });
        }
        let named = |credentials: &Credentials| {
            let identity = NameOnly.authenticate(credentials)?;
            if self.reserved.is_reserved(&identity.user) {
                return Err(AuthError(format!(
                    "the name {:?} is reserved for a user with a token: connect with your token, or pick another name",
                    identity.user
                )));
            }
            Ok(identity)
        };
        match self.anonymous {
            Anonymous::None => Err(AuthError("a token is required: connect with ?token=TOKEN".into())),
            Anonymous::Read => {
                let mut identity = named(credentials)?;
                identity.grants = Some(vec![RoomGrant { pattern: "*".into(), write: false }]);
                identity.files = Some(vec![FileGrant { prefix: String::new(), write: false }]);
                Ok(identity)
            }
            Anonymous::Write => named(credentials),
        }
    }

    fn attach_sessions(&self, sessions: crate::projection::sessions::Sessions) {
        let _ = self.sessions.set(sessions);
    }

    fn anonymous(&self) -> Option<Identity> {
        let read_all = Some(vec![RoomGrant { pattern: "*".into(), write: false }]);
        match self.anonymous {
            Anonymous::None => None,
            Anonymous::Read => Some(Identity {
                user: String::new(),
                admin: false,
                grants: read_all,
                files: Some(vec![FileGrant { prefix: String::new(), write: false }]),
                session: None,
            }),
            Anonymous::Write => NameOnly.anonymous(),
        }
    }
}

/// Failed authentications per source address, in one-minute windows: an address over the
/// limit is refused until its window ends. Bounded: at most [`FAILURES_TRACKED_MAX`] addresses
/// are tracked (expired windows are dropped first, then the oldest).
#[derive(Debug)]
pub struct FailureLimiter {
    per_minute: u32,
    windows: std::sync::Mutex<HashMap<std::net::IpAddr, (std::time::Instant, u32)>>,
}

/// Most source addresses [`FailureLimiter`] remembers at once.
pub const FAILURES_TRACKED_MAX: usize = 100_000;
const WINDOW: std::time::Duration = std::time::Duration::from_secs(60);

impl FailureLimiter {
    pub fn new(per_minute: u32) -> Self {
        Self { per_minute, windows: std::sync::Mutex::new(HashMap::new()) }
    }

    /// Whether `ip` has used up its failures for the current window.
    pub fn blocked(&self, ip: std::net::IpAddr) -> bool {
        let windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        windows.get(&ip).is_some_and(|(start, n)| start.elapsed() < WINDOW && *n >= self.per_minute)
    }

    /// Counts a failed authentication from `ip`.
    pub fn failed(&self, ip: std::net::IpAddr) {
        let mut windows = self.windows.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if windows.len() >= FAILURES_TRACKED_MAX && !windows.contains_key(&ip) {
            windows.retain(|_, (start, _)| start.elapsed() < WINDOW);
            if windows.len() >= FAILURES_TRACKED_MAX {
                if let Some(oldest) = windows.iter().min_by_key(|(_, (start, _))| *start).map(|(ip, _)| *ip) {
                    windows.remove(&oldest);
                }
            }
        }
        let entry = windows.entry(ip).or_insert((std::time::Instant::now(), 0));
        if entry.0.elapsed() >= WINDOW {
            *entry = (std::time::Instant::now(), 0);
        }
        entry.1 += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_blocked_after_its_failures_and_others_are_not() {
        let limiter = FailureLimiter::new(3);
        let (bad, good): (std::net::IpAddr, std::net::IpAddr) =
            ("10.0.0.1".parse().expect("ip"), "10.0.0.2".parse().expect("ip"));
        for _ in 0..2 {
            limiter.failed(bad);
        }
        assert!(!limiter.blocked(bad), "two failures of three");
        limiter.failed(bad);
        assert!(limiter.blocked(bad));
        assert!(!limiter.blocked(good));
    }

    #[test]
    fn an_address_gets_its_slots_back_when_connections_close() {
        let slots = AddressSlots::new(2);
        let ip: std::net::IpAddr = "10.0.0.1".parse().expect("ip");
        let (a, b) = (slots.take(ip).expect("first"), slots.take(ip).expect("second"));
        assert!(slots.take(ip).is_none(), "a third is refused");
        assert!(slots.take("10.0.0.2".parse().expect("ip")).is_some(), "another address is not");
        drop(a);
        assert!(slots.take(ip).is_some(), "a closed connection frees its slot");
        drop(b);
    }

    #[test]
    fn read_only_and_write_grants_are_told_apart() {
        let room = |n: &str| RoomId::parse(n).expect("room");
        let identity = Identity {
            user: "rita".into(),
            admin: false,
            grants: Some(vec![
                RoomGrant { pattern: "team-*".into(), write: false },
                RoomGrant { pattern: "team-rita".into(), write: true },
            ]),
            files: Some(Vec::new()),
            session: None,
        };
        assert!(identity.may_read(&room("team-a")) && !identity.may_write(&room("team-a")));
        assert!(identity.may_read(&room("team-rita")) && identity.may_write(&room("team-rita")));
        assert!(!identity.may_read(&room("lobby")) && !identity.may_write(&room("lobby")));
    }
}

/// Open connections per source address, each held by an [`AddressSlot`].
#[derive(Debug)]
pub struct AddressSlots {
    max: usize,
    open: std::sync::Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
}

/// One open connection from an address; gives its slot back when dropped.
#[derive(Debug)]
pub struct AddressSlot {
    ip: std::net::IpAddr,
    open: std::sync::Arc<std::sync::Mutex<HashMap<std::net::IpAddr, usize>>>,
}

impl AddressSlots {
    pub fn new(max: usize) -> Self {
        Self { max, open: Default::default() }
    }

    /// A slot for one more connection from `ip`, unless it already has `max`.
    pub fn take(&self, ip: std::net::IpAddr) -> Option<AddressSlot> {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let n = open.entry(ip).or_insert(0);
        if *n >= self.max {
            return None;
        }
        *n += 1;
        Some(AddressSlot { ip, open: self.open.clone() })
    }
}

impl Drop for AddressSlot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(n) = open.get_mut(&self.ip) {
            *n -= 1;
            if *n == 0 {
                open.remove(&self.ip);
            }
        }
    }
}
