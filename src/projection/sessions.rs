//! The sessions projection: each session's state, a deadline index of due expiries and
//! purges, and counts by state, in one sled tree written atomically with the checkpoint.
//!
//! | key | value |
//! |---|---|
//! | `c` | checkpoint: last applied seq (u64 BE) |
//! | `v` | the format: [`FORMAT`] |
//! | `s` id (16 bytes) | a [`Session`] but its id, fields in order without names |
//! | `d` due-ms (u64 BE) kind id (16 bytes) | nothing: a due time (`e` expiry, `p` purge) |
//! | `n` state | count of sessions in that state (u64 BE) |
//!
//! An id is kept as its 128 bits, not its 32 hex digits, and once (the key), not again in the
//! value: two fifths of what 100,000 sessions kept (15.8 MB of keys and values). Ids keep their
//! order (hex digits sort as their values).
//!
//! The deadline index is what makes a due time happen on time when no session actor runs, and
//! after a restart: the sweeper reads its first entries.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use super::tree::{self, u64_of};
use super::{Projection, ProjectionError};
use crate::session::{Due, Session, SessionState};

use crate::event::{Envelope, Event, SessionId};

const TREE: &str = "proj.sessions";
/// The format of the tree this build writes; a tree of another (before: ids as hex, in keys
/// and values; no format key) is rebuilt from the log at start.
pub const FORMAT: u8 = 2;

/// Read access; cheap to clone.
#[derive(Debug, Clone)]
pub struct Sessions {
    tree: sled::Tree,
}

impl Sessions {
    /// Every entry except the checkpoint, for comparing a rebuilt projection with the live one.
    pub fn dump(&self) -> Result<Vec<super::Entry>, ProjectionError> {
        tree::dump(&self.tree)
    }
}

/// The writing side, owned by the projection runner.
#[derive(Debug)]
pub struct SessionsProjection {
    tree: sled::Tree,
    /// Why the tree must be rebuilt first: it is of another format.
    outdated: Option<String>,
}

/// Opens the sessions tree in `db`.
pub fn open(db: &crate::state::StateDb) -> Result<(Sessions, SessionsProjection), ProjectionError> {
    let tree = db.open_tree(TREE)?;
    let outdated = tree::outdated(&tree, "sessions", FORMAT, "1 (ids as hex)")?;
    Ok((Sessions { tree: tree.clone() }, SessionsProjection { tree, outdated }))
}

fn session_key(id: &SessionId) -> Vec<u8> {
    let mut key = vec![b's'];
    key.extend_from_slice(&id.to_bytes());
    key
}

fn deadline_key(at: u64, due: Due, id: &SessionId) -> Vec<u8> {
    let mut key = Vec::with_capacity(26);
    key.push(b'd');
    key.extend_from_slice(&at.to_be_bytes());
    key.push(due_byte(due));
    key.extend_from_slice(&id.to_bytes());
    key
}

/// A [`Session`] as stored: its fields but the id, which is its key, in order.
type Stored = (SessionState, bool, u64, u64, u64, u64, Option<u64>, Vec<u64>);

fn encode_session(s: &Session) -> Vec<u8> {
    let stored: Stored = (
        s.state,
        s.sliding,
        s.created_at_unix_ms,
        s.expires_at_unix_ms,
        s.purge_at_unix_ms,
        s.last_touched_at_unix_ms,
        s.changed_at_unix_ms,
        s.sweeps.clone(),
    );
    encode(&stored)
}

fn decode_session(id: SessionId, bytes: &[u8]) -> Result<Session, ProjectionError> {
    let (
        state,
        sliding,
        created_at_unix_ms,
        expires_at_unix_ms,
        purge_at_unix_ms,
        last_touched_at_unix_ms,
        changed_at_unix_ms,
        sweeps,
    ): Stored = decode(bytes)?;
    Ok(Session {
        id,
        state,
        sliding,
        created_at_unix_ms,
        expires_at_unix_ms,
        purge_at_unix_ms,
        last_touched_at_unix_ms,
        changed_at_unix_ms,
        sweeps,
    })
}

/// The id a 16-byte id `bytes` of a key holds.
fn id_of(bytes: Option<&[u8]>) -> Result<SessionId, ProjectionError> {
    let bits: [u8; 16] =
        bytes.and_then(|b| b.try_into().ok()).ok_or_else(|| ProjectionError::Task("malformed session key".into()))?;
    Ok(SessionId::from_bytes(bits))
}

fn count_key(state: SessionState) -> [u8; 2] {
    [b'n', state_byte(state)]
}

/// A state's key byte in the counts: distinct for each state.
fn state_byte(state: SessionState) -> u8 {
    match state {
        SessionState::Active => b'a',
        SessionState::Expired => b'x',
        SessionState::Paid => b'p',
        SessionState::Ended => b'e',
        SessionState::Purged => b'g',
    }
}

/// A due time's kind byte in the deadline index.
fn due_byte(due: Due) -> u8 {
    match due {
        Due::Expire => b'e',
        Due::Purge => b'p',
    }
}

fn decode<T: for<'de> Deserialize<'de>>(bytes: &[u8]) -> Result<T, ProjectionError> {
    rmp_serde::from_slice(bytes).map_err(|e| ProjectionError::Task(format!("session value does not decode: {e}")))
}

/// A session as stored: its fields in order, without their names (a session's value was half
/// field names).
fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    rmp_serde::to_vec(value).expect("session values are plain structs and always encode")
}

impl Sessions {
    pub fn get(&self, id: &SessionId) -> Result<Option<Session>, ProjectionError> {
        self.tree.get(session_key(id))?.map(|v| decode_session(id.clone(), &v)).transpose()
    }

    pub fn checkpoint(&self) -> Result<u64, ProjectionError> {
        tree::checkpoint(&self.tree)
    }

    /// Up to `limit` due times at or before `now`, earliest first.
    pub fn due(&self, now_ms: u64, limit: usize) -> Result<Vec<(u64, Due, SessionId)>, ProjectionError> {
        self.due_after(now_ms, None, limit)
    }

    /// [`Self::due`], starting after the entry `after` (the last of a previous page).
    pub fn due_after(
        &self,
        now_ms: u64,
        after: Option<&(u64, Due, SessionId)>,
        limit: usize,
    ) -> Result<Vec<(u64, Due, SessionId)>, ProjectionError> {
        let end = {
            let mut key = vec![b'd'];
            key.extend_from_slice(&now_ms.to_be_bytes());
            key.push(0xff);
            key
        };
        let start = match after {
            Some((at, due, id)) => {
                let mut key = deadline_key(*at, *due, id);
                key.push(0); // the smallest key after it
                key
            }
            None => b"d".to_vec(),
        };
        if start >= end {
            return Ok(Vec::new());
        }
        let mut out = Vec::new();
        for item in self.tree.range(start..end).take(limit) {
            out.push(parse_deadline(&item?.0)?);
        }
        Ok(out)
    }

    /// The earliest due time, if any.
    pub fn next_due(&self) -> Result<Option<u64>, ProjectionError> {
        match self.tree.scan_prefix(b"d").next() {
            Some(item) => Ok(Some(parse_deadline(&item?.0)?.0)),
            None => Ok(None),
        }
    }

    /// Sessions by state.
    pub fn counts(&self) -> Result<HashMap<SessionState, u64>, ProjectionError> {
        let mut counts = HashMap::new();
        for state in SessionState::ALL {
            counts.insert(state, self.tree.get(count_key(state))?.map_or(0, |v| u64_of(&v)));
        }
        Ok(counts)
    }

    /// Unpaid sessions whose purge is due (older than the purge age) and not yet purged.
    pub fn overdue_purges(&self, now_ms: u64) -> Result<u64, ProjectionError> {
        Ok(self.due(now_ms, usize::MAX)?.iter().filter(|(_, due, _)| *due == Due::Purge).count() as u64)
    }

    /// Up to `limit` sessions after `after` (by id), in `state` if given, created before
    /// `created_before_ms` if given.
    pub fn list(
        &self,
        state: Option<SessionState>,
        created_before_ms: Option<u64>,
        after: Option<&SessionId>,
        limit: usize,
    ) -> Result<Vec<Session>, ProjectionError> {
        let start = match after {
            Some(id) => {
                let mut key = session_key(id);
                key.push(0);
                key
            }
            None => vec![b's'],
        };
        let mut out = Vec::new();
        for item in self.tree.range(start..vec![b't']) {
            let (key, value) = item?;
            let session = decode_session(id_of(key.get(1..))?, &value)?;
            let wanted = state.is_none_or(|s| s == session.state)
                && created_before_ms.is_none_or(|t| session.created_at_unix_ms < t);
            if wanted {
                out.push(session);
                if out.len() == limit {
                    break;
                }
            }
        }
        Ok(out)
    }
}

fn parse_deadline(key: &[u8]) -> Result<(u64, Due, SessionId), ProjectionError> {
    let bad = || ProjectionError::Task("malformed session deadline key".into());
    let at = u64_of(key.get(1..9).ok_or_else(bad)?);
    let due = match key.get(9) {
        Some(b'e') => Due::Expire,
        Some(b'p') => Due::Purge,
        _ => return Err(bad()),
    };
    Ok((at, due, id_of(key.get(10..))?))
}

impl Projection for SessionsProjection {
    fn name(&self) -> &'static str {
        crate::projection::Kind::Sessions.name()
    }

    /// The checkpoint, or an error for a tree of another format, which start-up answers by
    /// rebuilding the sessions from the log.
    fn checkpoint(&self) -> Result<u64, ProjectionError> {
        if let Some(why) = &self.outdated {
            return Err(ProjectionError::Outdated(why.clone()));
        }
        self.reader().checkpoint()
    }

    fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError> {
        let reader = self.reader();
        let mut changed: HashMap<SessionId, (Option<Session>, Session)> = HashMap::new();
        for envelope in batch {
            if let Event::SessionCreated(e) = &envelope.event {
                let before = match changed.remove(&e.id) {
                    Some((before, _)) => before,
                    None => reader.get(&e.id)?,
                };
                changed.insert(e.id.clone(), (before, Session::created(e)));
                continue;
            }
            let sweep = matches!(envelope.event, Event::SessionsExpired(_) | Event::SessionsPurged(_));
            for id in Session::changed_by(&envelope.event) {
                if !changed.contains_key(id) {
                    let Some(current) = reader.get(id)? else { continue }; // an event for no session: nothing to change
                    changed.insert(id.clone(), (Some(current.clone()), current));
                }
                if let Some((_, session)) = changed.get_mut(id) {
                    let state = session.state;
                    session.apply(&envelope.event);
                    if sweep && session.state != state {
                        session.sweeps.push(envelope.seq);
                    }
                }
            }
        }
        if changed.is_empty() {
            return tree::advance(&self.tree, batch.last().map(|e| e.seq));
        }
        let mut write = sled::Batch::default();
        let mut counts: HashMap<SessionState, i64> = HashMap::new();
        for (id, (before, after)) in &changed {
            if let Some(before) = before {
                for (at, due) in before.deadlines() {
                    write.remove(deadline_key(at, due, id));
                }
                *counts.entry(before.state).or_default() -= 1;
            }
            for (at, due) in after.deadlines() {
                write.insert(deadline_key(at, due, id), &[]);
            }
            *counts.entry(after.state).or_default() += 1;
            write.insert(session_key(id), encode_session(after));
        }
        let stored = reader.counts()?;
        for (state, delta) in counts {
            let now = (stored.get(&state).copied().unwrap_or(0) as i64 + delta).max(0) as u64;
            write.insert(&count_key(state), &now.to_be_bytes());
        }
        tree::commit(&self.tree, write, batch)
    }

    fn reset(&mut self) -> Result<(), ProjectionError> {
        tree::reset_to(&self.tree, FORMAT)?;
        self.outdated = None;
        Ok(())
    }
}

impl SessionsProjection {
    fn reader(&self) -> Sessions {
        Sessions { tree: self.tree.clone() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{DueSession, SessionCreated, SessionPaid, SessionsDue};
    use crate::log::EventLog;
    use crate::projection::testing::{append, memory_log, state};
    use crate::projection::{catch_up, rebuild};

    const START_MS: u64 = 1_800_000_000_000;
    const TTL_MS: u64 = 24 * 3600 * 1000;
    const PURGE_MS: u64 = 7 * 24 * 3600 * 1000;

    fn id(n: u32) -> SessionId {
        SessionId::parse(&format!("{n:032x}")).expect("a valid session id")
    }

    fn created(id: &SessionId) -> Event {
        Event::SessionCreated(SessionCreated {
            id: id.clone(),
            created_at_unix_ms: START_MS,
            expires_at_unix_ms: START_MS + TTL_MS,
            purge_at_unix_ms: START_MS + PURGE_MS,
            sliding: false,
        })
    }

    fn paid(id: &SessionId) -> Event {
        Event::SessionPaid(SessionPaid { id: id.clone(), at_unix_ms: START_MS + 1000 })
    }

    /// The event the sweeper or the actor appends for a due time, from the session as stored.
    fn due_event(sessions: &Sessions, id: &SessionId, due: Due, now: u64) -> Option<Event> {
        let session = sessions.get(id).expect("read").expect("the session exists");
        let at = if due == Due::Expire { session.expires_at_unix_ms } else { session.purge_at_unix_ms };
        session.due_event(due, at, now, std::time::Duration::from_millis(at - START_MS))
    }

    fn projection() -> (Sessions, SessionsProjection, crate::state::StateDb) {
        let db = state();
        let (read, write) = open(&db).expect("open sessions");
        (read, write, db)
    }

    fn apply(log: &EventLog, projection: &mut SessionsProjection) {
        catch_up(log, projection, |_| {}).expect("catch up");
    }

    #[test]
    fn a_session_is_stored_under_its_ids_bits_without_its_id_or_field_names() {
        let Event::SessionCreated(e) = created(&id(7)) else { unreachable!("created makes a SessionCreated") };
        let mut session = Session::created(&e);
        let stored = encode_session(&session);
        let named = rmp_serde::to_vec_named(&session).expect("encodes");
        assert!(stored.len() * 3 < named.len(), "{} bytes stored, {} with names and id", stored.len(), named.len());
        assert!(!stored.windows(32).any(|w| w == session.id.as_str().as_bytes()), "no hex id in the value");
        assert_eq!(session_key(&session.id).len(), 17, "the key holds the id's 16 bytes");
        assert_eq!(decode_session(session.id.clone(), &stored).expect("reads"), session);
        session.state = SessionState::Expired;
        session.changed_at_unix_ms = Some(START_MS + TTL_MS);
        session.sweeps = vec![41, 97];
        assert_eq!(decode_session(session.id.clone(), &encode_session(&session)).expect("with sweeps"), session);
        let top = SessionId::parse("ffffffffffffffffffffffffffffffff").expect("valid");
        assert_eq!(id_of(Some(&top.to_bytes())).expect("an id"), top);
        assert_eq!(SessionId::from_bytes(id(1).to_bytes()), id(1));
    }

    /// A tree written before (ids as hex, no format key) is not read as this format: its
    /// checkpoint says it is outdated, which start-up answers by rebuilding it; the reset tree
    /// is of this format.
    #[test]
    fn a_tree_of_the_format_before_is_outdated_until_reset() {
        let db = state();
        let tree = db.open_tree(TREE).expect("tree");
        tree.insert(b"s0123456789abcdef0123456789abcdef", b"old").expect("an old session");
        tree.insert(tree::CHECKPOINT_KEY, &5u64.to_be_bytes()).expect("its checkpoint");
        let (_, mut projection) = open(&db).expect("open");
        let err = projection.checkpoint().expect_err("outdated");
        assert!(matches!(err, ProjectionError::Outdated(_)), "{err}");
        projection.reset().expect("reset");
        assert_eq!(projection.checkpoint().expect("a checkpoint"), 0);
        let (_, reopened) = open(&db).expect("open again");
        assert_eq!(reopened.checkpoint().expect("of this format"), 0);
    }

    #[tokio::test]
    async fn given_a_created_session_when_its_ttl_passes_then_its_expiry_is_due_and_applying_it_expires_it() {
        let log = memory_log();
        let (sessions, mut projection, _db) = projection();
        append(&log, created(&id(1))).await;
        apply(&log, &mut projection);
        assert!(sessions.due(START_MS + TTL_MS - 1, 10).expect("due").is_empty(), "nothing is due before the ttl");
        assert_eq!(sessions.due(START_MS + TTL_MS, 10).expect("due"), vec![(START_MS + TTL_MS, Due::Expire, id(1))]);
        assert_eq!(due_event(&sessions, &id(1), Due::Expire, START_MS + TTL_MS - 1), None, "not yet");

        let expiry = due_event(&sessions, &id(1), Due::Expire, START_MS + TTL_MS).expect("due at its ttl");
        append(&log, expiry).await;
        apply(&log, &mut projection);

        let session = sessions.get(&id(1)).expect("read").expect("exists");
        assert_eq!((session.state, session.changed_at_unix_ms), (SessionState::Expired, Some(START_MS + TTL_MS)));
        assert_eq!(sessions.next_due().expect("next due"), Some(START_MS + PURGE_MS), "its purge is still ahead");
    }

    #[tokio::test]
    async fn given_an_unpaid_session_when_seven_days_pass_then_its_purge_is_due_and_applying_it_purges_it() {
        let log = memory_log();
        let (sessions, mut projection, _db) = projection();
        append(&log, created(&id(1))).await;
        apply(&log, &mut projection);
        assert_eq!(sessions.overdue_purges(START_MS + PURGE_MS - 1).expect("overdue"), 0);
        assert_eq!(sessions.overdue_purges(START_MS + PURGE_MS).expect("overdue"), 1);

        let purge = due_event(&sessions, &id(1), Due::Purge, START_MS + PURGE_MS).expect("due after seven days");
        append(&log, purge).await;
        apply(&log, &mut projection);

        assert_eq!(sessions.get(&id(1)).expect("read").expect("its record stays").state, SessionState::Purged);
        assert_eq!(sessions.next_due().expect("next due"), None, "a purged session has nothing left due");
        assert_eq!(sessions.overdue_purges(u64::MAX).expect("overdue"), 0);
    }

    #[tokio::test]
    async fn given_a_paid_session_then_nothing_is_due_and_a_late_expiry_or_purge_changes_nothing() {
        let log = memory_log();
        let (sessions, mut projection, _db) = projection();
        append(&log, created(&id(1))).await;
        append(&log, paid(&id(1))).await;
        apply(&log, &mut projection);
        assert_eq!(sessions.due(u64::MAX, 10).expect("due"), Vec::new(), "a paid session is kept for good");

        // A sweeper batch that read the deadline index before the payment was applied.
        let late = SessionsDue {
            sessions: vec![DueSession { id: id(1), due_at_unix_ms: START_MS + PURGE_MS }],
            applied_at_unix_ms: START_MS + PURGE_MS,
            reason: "unpaid at its purge age".into(),
            rule: "sessions.purge_after=7days".into(),
        };
        append(&log, Event::SessionsExpired(late.clone())).await;
        append(&log, Event::SessionsPurged(late)).await;
        apply(&log, &mut projection);

        let session = sessions.get(&id(1)).expect("read").expect("exists");
        assert_eq!((session.state, session.sweeps.len()), (SessionState::Paid, 0));
        assert_eq!(sessions.counts().expect("counts")[&SessionState::Paid], 1);
    }

    #[tokio::test]
    async fn given_sessions_in_every_state_then_the_counts_match_and_a_rebuild_counts_the_same() {
        let log = memory_log();
        let (sessions, mut projection, _db) = projection();
        for n in 1..=6 {
            append(&log, created(&id(n))).await;
        }
        append(&log, paid(&id(2))).await;
        let ended =
            crate::event::SessionEnded { id: id(3), at_unix_ms: START_MS + 5, reason: "ended by the app".into() };
        append(&log, Event::SessionEnded(ended)).await;
        apply(&log, &mut projection);
        let sweep = |ids: &[u32], at: u64| SessionsDue {
            sessions: ids.iter().map(|&n| DueSession { id: id(n), due_at_unix_ms: at }).collect(),
            applied_at_unix_ms: at,
            reason: "due".into(),
            rule: "test".into(),
        };
        let expired = append(&log, Event::SessionsExpired(sweep(&[4, 5], START_MS + TTL_MS))).await;
        append(&log, Event::SessionsPurged(sweep(&[5], START_MS + PURGE_MS))).await;
        apply(&log, &mut projection);

        let counts = sessions.counts().expect("counts");
        let by_state = |state| counts[&state];
        assert_eq!(
            SessionState::ALL.map(by_state),
            [2, 1, 1, 1, 1],
            "active (1, 6), expired (4), paid (2), ended (3), purged (5)"
        );
        assert_eq!(sessions.get(&id(4)).expect("read").expect("exists").sweeps, vec![expired.seq]);
        assert_eq!(sessions.list(Some(SessionState::Active), None, None, 10).expect("list").len(), 2);

        let db = state();
        let (rebuilt, mut replay) = open(&db).expect("open");
        rebuild(&log, &mut replay, |_| {}).expect("rebuild");
        assert_eq!(rebuilt.counts().expect("counts"), counts);
        assert_eq!(rebuilt.dump().expect("dump"), sessions.dump().expect("dump"));
    }
}
