//! What a session is and how it moves (created, touched, paid, expired, ended, purged), as
//! plain state: the one place a session's rules live, used by the sessions projection and by
//! each session's actor for its own copy.

use serde::{Deserialize, Serialize};

use crate::event::{Event, SessionCreated, SessionDue, SessionId};

/// Where a session stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Created, not yet expired, paid or ended.
    Active,
    /// Reached its expiry unpaid; purged later unless paid.
    Expired,
    /// Paid: kept for good.
    Paid,
    /// Ended by the app; purged later unless paid.
    Ended,
    /// Purged with everything it owned; only its record remains.
    Purged,
}

impl SessionState {
    pub const ALL: [SessionState; 5] =
        [SessionState::Active, SessionState::Expired, SessionState::Paid, SessionState::Ended, SessionState::Purged];

    pub fn as_str(self) -> &'static str {
        match self {
            SessionState::Active => "active",
            SessionState::Expired => "expired",
            SessionState::Paid => "paid",
            SessionState::Ended => "ended",
            SessionState::Purged => "purged",
        }
    }

    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|s| s.as_str() == text)
    }
}

/// What is due for a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Due {
    Expire,
    Purge,
}

impl Due {
    /// The configured age after which this comes (`sessions.expire_after`, `purge_after`).
    pub fn age(self, config: &crate::config::SessionsConfig) -> std::time::Duration {
        match self {
            Due::Expire => config.expire_after,
            Due::Purge => config.purge_after,
        }
    }
}

/// A session as the projection keeps it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    pub id: SessionId,
    pub state: SessionState,
    pub sliding: bool,
    pub created_at_unix_ms: u64,
    pub expires_at_unix_ms: u64,
    pub purge_at_unix_ms: u64,
    pub last_touched_at_unix_ms: u64,
    /// When it changed state last (paid, expired, ended, purged), if it did.
    pub changed_at_unix_ms: Option<u64>,
    /// The seqs of the sweeper's batch events (`SessionsExpired`, `SessionsPurged`) that
    /// changed it: they are filed under the sweeper's stream, so its history looks them up here.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub sweeps: Vec<u64>,
}

impl Session {
    /// A session as its creation event makes it.
    pub fn created(e: &SessionCreated) -> Self {
        Self {
            id: e.id.clone(),
            state: SessionState::Active,
            sliding: e.sliding,
            created_at_unix_ms: e.created_at_unix_ms,
            expires_at_unix_ms: e.expires_at_unix_ms,
            purge_at_unix_ms: e.purge_at_unix_ms,
            last_touched_at_unix_ms: e.created_at_unix_ms,
            changed_at_unix_ms: None,
            sweeps: Vec::new(),
        }
    }

    /// The sessions an event changes, for every session event but a creation.
    pub fn changed_by(event: &Event) -> Vec<&SessionId> {
        match event {
            Event::SessionTouched(e) => vec![&e.id],
            Event::SessionPaid(e) => vec![&e.id],
            Event::SessionExpired(e) | Event::SessionPurged(e) => vec![&e.id],
            Event::SessionsExpired(e) | Event::SessionsPurged(e) => e.sessions.iter().map(|s| &s.id).collect(),
            Event::SessionEnded(e) => vec![&e.id],
            _ => Vec::new(),
        }
    }

    /// Applies an event of this session: the one place where a session's state moves, used by
    /// the projection and by the session's actor for its own copy. A move the state does not
    /// allow (an expiry after payment) changes nothing.
    pub fn apply(&mut self, event: &Event) {
        match event {
            Event::SessionTouched(e) if self.state == SessionState::Active => {
                self.expires_at_unix_ms = e.expires_at_unix_ms;
                self.last_touched_at_unix_ms = e.at_unix_ms;
            }
            Event::SessionPaid(e) if self.state != SessionState::Purged => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Paid, Some(e.at_unix_ms));
            }
            Event::SessionExpired(e) if self.state == SessionState::Active => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Expired, Some(e.applied_at_unix_ms));
            }
            Event::SessionPurged(e) if self.state != SessionState::Paid => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Purged, Some(e.applied_at_unix_ms));
            }
            // A batch: the caller applies it only to the sessions it names.
            Event::SessionsExpired(e) if self.state == SessionState::Active => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Expired, Some(e.applied_at_unix_ms));
            }
            Event::SessionsPurged(e) if self.state != SessionState::Paid => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Purged, Some(e.applied_at_unix_ms));
            }
            Event::SessionEnded(e) if matches!(self.state, SessionState::Active | SessionState::Expired) => {
                (self.state, self.changed_at_unix_ms) = (SessionState::Ended, Some(e.at_unix_ms));
            }
            _ => {}
        }
    }

    /// The due times still ahead of it.
    pub fn deadlines(&self) -> Vec<(u64, Due)> {
        match self.state {
            SessionState::Active => vec![(self.expires_at_unix_ms, Due::Expire), (self.purge_at_unix_ms, Due::Purge)],
            SessionState::Expired | SessionState::Ended => vec![(self.purge_at_unix_ms, Due::Purge)],
            SessionState::Paid | SessionState::Purged => Vec::new(),
        }
    }

    /// The event that applies the due time `(at, due)` at `now`, if the session still has it
    /// and it has come. `after` is the configured age that made it due, named in the event.
    pub fn due_event(&self, due: Due, at: u64, now: u64, after: std::time::Duration) -> Option<Event> {
        if !self.is_due(due, at, now) {
            return None; // moved by a touch, or the session changed meanwhile
        }
        let (reason, rule) = due.words(after);
        let id = self.id.clone();
        let event = SessionDue { id, due_at_unix_ms: at, applied_at_unix_ms: now, reason, rule };
        Some(match due {
            Due::Expire => Event::SessionExpired(event),
            Due::Purge => Event::SessionPurged(event),
        })
    }

    /// Whether the due time `(at, due)` is still this session's and has come by `now`.
    pub fn is_due(&self, due: Due, at: u64, now: u64) -> bool {
        now >= at && self.deadlines().contains(&(at, due))
    }
}

impl Due {
    /// The reason and the rule an event applying this due time names; `after` is the
    /// configured age that made it due.
    pub fn words(self, after: std::time::Duration) -> (String, String) {
        let (reason, rule) = match self {
            Due::Expire => ("unpaid at its expiry", "sessions.expire_after"),
            Due::Purge => ("unpaid at its purge age", "sessions.purge_after"),
        };
        (reason.to_owned(), format!("{rule}={}", humantime::format_duration(after)))
    }
}
