//! Events: what happened, in the past tense, as they are stored in the log.
//!
//! Every event kind carries a version in its stored tag (`"MessagePosted.1"`). The code works
//! with [`Event`], the current shape of every kind; the log is read through [`StoredEvent`],
//! which names every shape ever written. When a kind changes, its old shape stays in
//! `StoredEvent` under its old tag and is upcast into the new one on read; stored bytes are
//! never rewritten (DESIGN.md, "The event log"). `schema/events.md` documents each version and
//! `snapshots/events/` keeps a golden encoding of each, decoded by a test.

use serde::{Deserialize, Serialize};

use crate::ids::{ContentHash, FileKey, Tier};

/// Where an event belongs: the entity whose history it is part of.
///
/// The stream lets one entity's events be read (or purged) without scanning the log.
/// Stored as a short string (`room/lobby`) so that the index key is readable in a dump.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct StreamId(String);

impl StreamId {
    /// The longest stream name the log indexes (`file/` and a 512-byte key is the longest a
    /// server makes); the log refuses a record of a longer one rather than mis-index it.
    pub const LEN_MAX: usize = 1024;

    /// The stream of one chat room.
    pub fn room(room: &RoomId) -> Self {
        Self(format!("room/{}", room.as_str()))
    }

    /// The stream of one session.
    pub fn session(id: &SessionId) -> Self {
        Self(format!("session/{}", id.as_str()))
    }

    /// The stream of one file key.
    pub fn file(key: &FileKey) -> Self {
        Self(format!("file/{}", key.as_str()))
    }

    /// The stream of one piece of stored content.
    pub fn content(hash: &ContentHash) -> Self {
        Self(format!("content/{}", hash.as_str()))
    }

    /// The stream of the janitor's runs.
    pub fn janitor() -> Self {
        Self("janitor".into())
    }

    /// The stream of the session sweeper's batches (`SessionsExpired`, `SessionsPurged`);
    /// each session's own history finds them through the sessions projection.
    pub fn session_sweeps() -> Self {
        Self("sessions".into())
    }

    /// The stream as stored.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A session's id: 32 lower-case hex digits (128 random bits), chosen by the server.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    /// A new random id.
    pub fn random() -> Self {
        Self(format!("{:032x}", uuid::Uuid::new_v4().as_u128()))
    }

    /// Checks an id given by a caller.
    pub fn parse(text: &str) -> Result<Self, InvalidSessionId> {
        let valid = text.len() == 32 && text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b));
        if valid {
            Ok(Self(text.to_owned()))
        } else {
            Err(InvalidSessionId(text.chars().take(40).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The id's 128 bits, as a store keeps them (half the bytes of its hex digits).
    pub fn to_bytes(&self) -> [u8; 16] {
        // Every id is 32 hex digits (`parse`, and `try_from` when decoded).
        u128::from_str_radix(&self.0, 16).unwrap_or_default().to_be_bytes()
    }

    /// The id whose bits [`SessionId::to_bytes`] gave.
    pub fn from_bytes(bytes: [u8; 16]) -> Self {
        Self(format!("{:032x}", u128::from_be_bytes(bytes)))
    }
}

impl std::fmt::Display for SessionId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for SessionId {
    type Error = InvalidSessionId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<SessionId> for String {
    fn from(value: SessionId) -> Self {
        value.0
    }
}

/// A session id that is not 32 lower-case hex digits.
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid session id {0:?}: expected 32 lower-case hex digits")]
pub struct InvalidSessionId(String);

/// A room's name, checked: 1 to [`RoomId::LEN_MAX`] characters of `[A-Za-z0-9_.-]`.
///
/// The charset keeps room names safe in URLs, file names and index keys alike.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct RoomId(String);

impl RoomId {
    /// The longest room name accepted.
    pub const LEN_MAX: usize = 64;

    /// Checks a room name.
    pub fn parse(name: &str) -> Result<Self, InvalidRoomId> {
        let valid_chars = name.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
        if name.is_empty() || name.len() > Self::LEN_MAX || !valid_chars {
            return Err(InvalidRoomId(name.chars().take(80).collect()));
        }
        Ok(Self(name.to_owned()))
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for RoomId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for RoomId {
    type Error = InvalidRoomId;
    fn try_from(value: String) -> Result<Self, Self::Error> {
        Self::parse(&value)
    }
}

impl From<RoomId> for String {
    fn from(value: RoomId) -> Self {
        value.0
    }
}

/// A room name that breaks the rules of [`RoomId::parse`].
#[derive(Debug, Clone, thiserror::Error)]
#[error("invalid room name {0:?}: use 1 to 64 characters of A-Z a-z 0-9 _ . -")]
pub struct InvalidRoomId(String);

/// One entry of the log: an event with its position, time and stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Envelope {
    /// Global position in the log; assigned by the log writer, never reused.
    pub seq: u64,
    /// When the log writer accepted the event, in milliseconds since the Unix epoch.
    pub at_unix_ms: u64,
    /// The entity this event belongs to.
    pub stream: StreamId,
    /// What happened.
    pub event: Event,
}

/// The current shape of every event kind. See `schema/events.md`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "StoredEvent")]
pub enum Event {
    /// A chat message was accepted into a room.
    #[serde(rename = "MessagePosted.1")]
    MessagePosted(MessagePosted),
    /// Retention removed a room's messages up to and including `through_seq`.
    #[serde(rename = "MessagesExpired.1")]
    MessagesExpired(MessagesExpired),
    /// A message's text was replaced by its author or an admin.
    #[serde(rename = "MessageEdited.1")]
    MessageEdited(MessageEdited),
    /// A message was deleted by its author or an admin.
    #[serde(rename = "MessageDeleted.1")]
    MessageDeleted(MessageDeleted),
    /// A session was created, with its due times.
    #[serde(rename = "SessionCreated.1")]
    SessionCreated(SessionCreated),
    /// A session was used; with sliding expiry, its expiry moved.
    #[serde(rename = "SessionTouched.1")]
    SessionTouched(SessionTouched),
    /// A session was paid: it is kept for good.
    #[serde(rename = "SessionPaid.1")]
    SessionPaid(SessionPaid),
    /// A session reached its expiry unpaid.
    #[serde(rename = "SessionExpired.1")]
    SessionExpired(SessionDue),
    /// An unpaid session was purged, with everything it owns.
    #[serde(rename = "SessionPurged.1")]
    SessionPurged(SessionDue),
    /// Many sessions reached their expiry unpaid at once (the sweeper's batch).
    #[serde(rename = "SessionsExpired.1")]
    SessionsExpired(SessionsDue),
    /// Many unpaid sessions were purged at once, each with everything it owns.
    #[serde(rename = "SessionsPurged.1")]
    SessionsPurged(SessionsDue),
    /// The app ended a session.
    #[serde(rename = "SessionEnded.1")]
    SessionEnded(SessionEnded),
    /// A key now names stored content (a new upload, or a copy of another key's content).
    #[serde(rename = "FileStored.1")]
    FileStored(FileStored),
    /// A key was deleted.
    #[serde(rename = "FileDeleted.1")]
    FileDeleted(FileDeleted),
    /// Content moved to another tier (a lifecycle transition, or an operator's request).
    #[serde(rename = "ContentMoved.1")]
    ContentMoved(ContentMoved),
    /// Content whose bytes no longer matched its hash was moved aside by a scrub.
    #[serde(rename = "ContentQuarantined.1")]
    ContentQuarantined(ContentQuarantined),
    /// A janitor run ended: what it removed per rule, or why it failed.
    #[serde(rename = "JanitorRan.2")]
    JanitorRan(JanitorRan),
}

/// Messages an event takes out of a room: the one mechanism by which every read model (the
/// history, the search index) learns that messages are gone, whatever the cause.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Removal<'a> {
    /// One message (deleted, or edited: its old text goes and the new one comes).
    Message { room: &'a RoomId, seq: u64 },
    /// Every message of the room up to and including `through_seq` (retention).
    Through { room: &'a RoomId, through_seq: u64 },
}

impl Event {
    /// The stream this event belongs to.
    pub fn stream(&self) -> StreamId {
        match self {
            Event::MessagePosted(e) => StreamId::room(&e.room),
            Event::MessagesExpired(e) => StreamId::room(&e.room),
            Event::MessageEdited(e) => StreamId::room(&e.room),
            Event::MessageDeleted(e) => StreamId::room(&e.room),
            Event::SessionCreated(e) => StreamId::session(&e.id),
            Event::SessionTouched(e) => StreamId::session(&e.id),
            Event::SessionPaid(e) => StreamId::session(&e.id),
            Event::SessionExpired(e) | Event::SessionPurged(e) => StreamId::session(&e.id),
            Event::SessionsExpired(_) | Event::SessionsPurged(_) => StreamId::session_sweeps(),
            Event::SessionEnded(e) => StreamId::session(&e.id),
            Event::FileStored(e) => StreamId::file(&e.key),
            Event::FileDeleted(e) => StreamId::file(&e.key),
            Event::ContentMoved(e) => StreamId::content(&e.hash),
            Event::ContentQuarantined(e) => StreamId::content(&e.hash),
            Event::JanitorRan(_) => StreamId::janitor(),
        }
    }

    /// Whether this event records clean-up: something removed or moved by a rule or an
    /// operator, or the janitor's own record. Below the log's floor of free space only these are
    /// still appended (`space::Floors`), so that the janitor can free space on a full disk.
    pub fn is_cleanup(&self) -> bool {
        match self {
            Event::MessagesExpired(_)
            | Event::MessageDeleted(_)
            | Event::SessionExpired(_)
            | Event::SessionPurged(_)
            | Event::SessionsExpired(_)
            | Event::SessionsPurged(_)
            | Event::SessionEnded(_)
            | Event::FileDeleted(_)
            | Event::ContentMoved(_)
            | Event::ContentQuarantined(_)
            | Event::JanitorRan(_) => true,
            Event::MessagePosted(_)
            | Event::MessageEdited(_)
            | Event::SessionCreated(_)
            | Event::SessionTouched(_)
            | Event::SessionPaid(_)
            | Event::FileStored(_) => false,
        }
    }

    /// The messages this event removes, if any. Every cause of removal answers here, so the
    /// read models apply one mechanism, not one per cause.
    pub fn removal(&self) -> Option<Removal<'_>> {
        match self {
            Event::MessagePosted(_) => None,
            Event::MessagesExpired(e) => Some(Removal::Through { room: &e.room, through_seq: e.through_seq }),
            Event::MessageEdited(e) => Some(Removal::Message { room: &e.room, seq: e.seq }),
            Event::MessageDeleted(e) => Some(Removal::Message { room: &e.room, seq: e.seq }),
            Event::SessionCreated(_)
            | Event::SessionTouched(_)
            | Event::SessionPaid(_)
            | Event::SessionExpired(_)
            | Event::SessionPurged(_)
            | Event::SessionsExpired(_)
            | Event::SessionsPurged(_)
            | Event::SessionEnded(_)
            | Event::FileStored(_)
            | Event::FileDeleted(_)
            | Event::ContentMoved(_)
            | Event::ContentQuarantined(_)
            | Event::JanitorRan(_) => None,
        }
    }

    /// The stored tag of this event's kind and version, for logs and errors.
    pub fn tag(&self) -> &'static str {
        match self {
            Event::MessagePosted(_) => "MessagePosted.1",
            Event::MessagesExpired(_) => "MessagesExpired.1",
            Event::MessageEdited(_) => "MessageEdited.1",
            Event::MessageDeleted(_) => "MessageDeleted.1",
            Event::SessionCreated(_) => "SessionCreated.1",
            Event::SessionTouched(_) => "SessionTouched.1",
            Event::SessionPaid(_) => "SessionPaid.1",
            Event::SessionExpired(_) => "SessionExpired.1",
            Event::SessionPurged(_) => "SessionPurged.1",
            Event::SessionsExpired(_) => "SessionsExpired.1",
            Event::SessionsPurged(_) => "SessionsPurged.1",
            Event::SessionEnded(_) => "SessionEnded.1",
            Event::FileStored(_) => "FileStored.1",
            Event::FileDeleted(_) => "FileDeleted.1",
            Event::ContentMoved(_) => "ContentMoved.1",
            Event::ContentQuarantined(_) => "ContentQuarantined.1",
            Event::JanitorRan(_) => "JanitorRan.2",
        }
    }
}

/// `MessagePosted` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagePosted {
    /// The room the message was posted to.
    pub room: RoomId,
    /// Who posted it, as the connection identified itself.
    pub author: String,
    /// The sender's own id for this message; a retry with the same id is the same message.
    pub client_id: String,
    /// The text.
    pub body: String,
}

/// `MessagesExpired` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessagesExpired {
    /// The room whose history was cut.
    pub room: RoomId,
    /// Every message of the room with a seq up to and including this one is removed.
    pub through_seq: u64,
    /// The retention rule that caused the removal (DESIGN.md invariant 5).
    pub policy: String,
}

/// `MessageEdited` version 1. It repeats what the message was (author, time) so that a read
/// model can replace the message without reading it back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageEdited {
    /// The message's room.
    pub room: RoomId,
    /// The seq of the message edited.
    pub seq: u64,
    /// The message's author (unchanged by the edit).
    pub author: String,
    /// The message's client id (unchanged by the edit).
    pub client_id: String,
    /// When the message was first posted, ms since the Unix epoch.
    pub posted_at_unix_ms: u64,
    /// Who edited it: the author, or an admin.
    pub edited_by: String,
    /// The new text.
    pub body: String,
}

/// `MessageDeleted` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageDeleted {
    /// The message's room.
    pub room: RoomId,
    /// The seq of the message deleted.
    pub seq: u64,
    /// Who deleted it.
    pub deleted_by: String,
    /// Why, in words: `"deleted by its author"` or `"deleted by an admin"` (invariant 5).
    pub reason: String,
}

/// `SessionCreated` version 1. Times are ms since the Unix epoch, by the server's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionCreated {
    pub id: SessionId,
    pub created_at_unix_ms: u64,
    /// When it expires unless paid (moved by touches when `sliding`).
    pub expires_at_unix_ms: u64,
    /// When it is purged unless paid.
    pub purge_at_unix_ms: u64,
    /// Whether activity moves the expiry.
    pub sliding: bool,
}

/// `SessionTouched` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionTouched {
    pub id: SessionId,
    pub at_unix_ms: u64,
    /// The expiry after this touch (unchanged unless sliding).
    pub expires_at_unix_ms: u64,
}

/// `SessionPaid` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionPaid {
    pub id: SessionId,
    pub at_unix_ms: u64,
}

/// `SessionExpired` and `SessionPurged` version 1: a due time reached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionDue {
    pub id: SessionId,
    /// When it was due; applied late (after a restart) it keeps its original due time.
    pub due_at_unix_ms: u64,
    /// When it was applied.
    pub applied_at_unix_ms: u64,
    /// Why, in words (DESIGN.md invariant 5).
    pub reason: String,
    /// The rule that made it due (`sessions.expire_after=24h`, `sessions.purge_after=7d`).
    pub rule: String,
}

/// `SessionsExpired` and `SessionsPurged` version 1: one due time reached by many sessions,
/// applied together (the sweeper writes one such event per batch of sessions without a
/// running actor, instead of one event each).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionsDue {
    /// The sessions, each with the time it was due.
    pub sessions: Vec<DueSession>,
    /// When they were applied.
    pub applied_at_unix_ms: u64,
    /// Why, in words (DESIGN.md invariant 5).
    pub reason: String,
    /// The rule that made them due.
    pub rule: String,
}

/// One session of a [`SessionsDue`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DueSession {
    pub id: SessionId,
    pub due_at_unix_ms: u64,
}

impl SessionsDue {
    /// The part of the batch about `id`, as the single-session event would say it.
    pub fn for_session(&self, id: &SessionId) -> Option<SessionDue> {
        let one = self.sessions.iter().find(|s| &s.id == id)?;
        Some(SessionDue {
            id: one.id.clone(),
            due_at_unix_ms: one.due_at_unix_ms,
            applied_at_unix_ms: self.applied_at_unix_ms,
            reason: self.reason.clone(),
            rule: self.rule.clone(),
        })
    }
}

/// `SessionEnded` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionEnded {
    pub id: SessionId,
    pub at_unix_ms: u64,
    pub reason: String,
}

/// `FileStored` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStored {
    pub key: FileKey,
    pub hash: ContentHash,
    pub size: u64,
    pub content_type: String,
    /// The session that owns the key: purged with it.
    pub owner: Option<SessionId>,
}

/// `FileDeleted` version 1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileDeleted {
    pub key: FileKey,
    pub hash: ContentHash,
    /// Why, in words (`deleted by the app`, a lifecycle rule's expiry).
    pub reason: String,
}

/// `ContentMoved` version 1: every key naming the content now reads it from `to`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentMoved {
    pub hash: ContentHash,
    pub size: u64,
    pub from: Tier,
    pub to: Tier,
    /// Why (`lifecycle rule TransitionToIA: GLACIER after 90 days`, `moved by an operator`).
    pub reason: String,
}

/// `ContentQuarantined` version 1: the content's bytes no longer hashed to its name; the file
/// was moved aside and the keys naming it cannot be read until it is uploaded again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContentQuarantined {
    pub hash: ContentHash,
    pub tier: Tier,
    /// The blake3 of the bytes found.
    pub found: String,
    /// Where the damaged file was moved.
    pub quarantined_to: String,
}

/// `JanitorRan` version 2: version 1 and what failed, item by item (issue 17: one failing
/// item no longer stops a run).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JanitorRan {
    /// Numbers runs from 1, in the order they ended.
    pub run: u64,
    /// `schedule`, `manual`, `disk_critical`, or `retry` (after a run that did not finish all).
    pub trigger: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    /// `succeeded` (everything planned was done), `partial` (some items or parts of the plan
    /// failed, the rest was done) or `failed` (nothing could be done).
    pub outcome: String,
    /// In a sentence, what failed; the next run retries it.
    pub error: Option<String>,
    /// What each rule removed or moved.
    pub rules: Vec<RuleTally>,
    /// What each rule failed to do (the items and their bytes).
    pub failed: Vec<RuleTally>,
    /// The failures one by one with their reasons, the first [`JanitorRan::FAILURES_KEPT`].
    pub failures: Vec<ItemFailure>,
}

impl JanitorRan {
    /// Failures kept in one record, so that it stays far under a log record's size.
    pub const FAILURES_KEPT: usize = 50;
}

/// One thing a janitor run could not do, and why.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ItemFailure {
    pub rule: String,
    /// The item's action (`move_to_cold`, `expire_messages` ...), or `plan` for a part of the
    /// plan that could not be read.
    pub action: String,
    pub target: String,
    pub error: String,
}

/// `JanitorRan` version 1: no failures item by item (a run stopped at its first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JanitorRanV1 {
    pub run: u64,
    pub trigger: String,
    pub started_at_unix_ms: u64,
    pub finished_at_unix_ms: u64,
    pub outcome: String,
    pub error: Option<String>,
    pub rules: Vec<RuleTally>,
}

impl From<JanitorRanV1> for JanitorRan {
    fn from(v1: JanitorRanV1) -> Self {
        Self {
            run: v1.run,
            trigger: v1.trigger,
            started_at_unix_ms: v1.started_at_unix_ms,
            finished_at_unix_ms: v1.finished_at_unix_ms,
            outcome: v1.outcome,
            error: v1.error,
            rules: v1.rules,
            failed: Vec::new(),
            failures: Vec::new(),
        }
    }
}

/// What one rule did in a janitor run, or would do in a plan.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RuleTally {
    /// The rule: a lifecycle rule's ID, `sessions.purge_after`, `orphans`, `files.on_pay`.
    pub rule: String,
    /// Items removed (or moved, or renamed).
    pub items: u64,
    /// Their bytes (a file key's size; a purged session counts 0 here, its keys count apart).
    pub bytes: u64,
}

/// Every event shape ever written, by stored tag. Reading goes through here so that an old
/// shape can be upcast to the current one; see the module documentation.
#[derive(Debug, Deserialize)]
enum StoredEvent {
    #[serde(rename = "MessagePosted.1")]
    MessagePostedV1(MessagePosted),
    #[serde(rename = "MessagesExpired.1")]
    MessagesExpiredV1(MessagesExpired),
    #[serde(rename = "MessageEdited.1")]
    MessageEditedV1(MessageEdited),
    #[serde(rename = "MessageDeleted.1")]
    MessageDeletedV1(MessageDeleted),
    #[serde(rename = "SessionCreated.1")]
    SessionCreatedV1(SessionCreated),
    #[serde(rename = "SessionTouched.1")]
    SessionTouchedV1(SessionTouched),
    #[serde(rename = "SessionPaid.1")]
    SessionPaidV1(SessionPaid),
    #[serde(rename = "SessionExpired.1")]
    SessionExpiredV1(SessionDue),
    #[serde(rename = "SessionPurged.1")]
    SessionPurgedV1(SessionDue),
    #[serde(rename = "SessionsExpired.1")]
    SessionsExpiredV1(SessionsDue),
    #[serde(rename = "SessionsPurged.1")]
    SessionsPurgedV1(SessionsDue),
    #[serde(rename = "SessionEnded.1")]
    SessionEndedV1(SessionEnded),
    #[serde(rename = "FileStored.1")]
    FileStoredV1(FileStored),
    #[serde(rename = "FileDeleted.1")]
    FileDeletedV1(FileDeleted),
    #[serde(rename = "ContentMoved.1")]
    ContentMovedV1(ContentMoved),
    #[serde(rename = "ContentQuarantined.1")]
    ContentQuarantinedV1(ContentQuarantined),
    #[serde(rename = "JanitorRan.1")]
    JanitorRanV1(JanitorRanV1),
    #[serde(rename = "JanitorRan.2")]
    JanitorRanV2(JanitorRan),
}

impl From<StoredEvent> for Event {
    fn from(stored: StoredEvent) -> Self {
        match stored {
            StoredEvent::MessagePostedV1(e) => Event::MessagePosted(e),
            StoredEvent::MessagesExpiredV1(e) => Event::MessagesExpired(e),
            StoredEvent::MessageEditedV1(e) => Event::MessageEdited(e),
            StoredEvent::MessageDeletedV1(e) => Event::MessageDeleted(e),
            StoredEvent::SessionCreatedV1(e) => Event::SessionCreated(e),
            StoredEvent::SessionTouchedV1(e) => Event::SessionTouched(e),
            StoredEvent::SessionPaidV1(e) => Event::SessionPaid(e),
            StoredEvent::SessionExpiredV1(e) => Event::SessionExpired(e),
            StoredEvent::SessionPurgedV1(e) => Event::SessionPurged(e),
            StoredEvent::SessionsExpiredV1(e) => Event::SessionsExpired(e),
            StoredEvent::SessionsPurgedV1(e) => Event::SessionsPurged(e),
            StoredEvent::SessionEndedV1(e) => Event::SessionEnded(e),
            StoredEvent::FileStoredV1(e) => Event::FileStored(e),
            StoredEvent::FileDeletedV1(e) => Event::FileDeleted(e),
            StoredEvent::ContentMovedV1(e) => Event::ContentMoved(e),
            StoredEvent::ContentQuarantinedV1(e) => Event::ContentQuarantined(e),
            StoredEvent::JanitorRanV1(e) => Event::JanitorRan(e.into()),
            StoredEvent::JanitorRanV2(e) => Event::JanitorRan(e),
        }
    }
}

/// A stored record that does not decode as any known event shape.
#[derive(Debug, thiserror::Error)]
#[error("log record {seq} does not decode: {source}")]
pub struct DecodeError {
    /// The key the record was stored under.
    pub seq: u64,
    #[source]
    source: rmp_serde::decode::Error,
}

/// Encodes an envelope as stored in the log: MessagePack with field names, so that a later
/// version can add fields with defaults and still read this one.
pub fn encode(envelope: &Envelope) -> Vec<u8> {
    rmp_serde::to_vec_named(envelope).expect("an envelope always encodes: no maps with non-string keys")
}

/// Decodes a stored record; `seq` is the key it was read under, named in the error.
pub fn decode(seq: u64, bytes: &[u8]) -> Result<Envelope, DecodeError> {
    rmp_serde::from_slice(bytes).map_err(|source| DecodeError { seq, source })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn room(name: &str) -> RoomId {
        RoomId::parse(name).expect("valid test room")
    }

    /// The `StoredEvent` arm that reads back an event of today's shape. A match without a
    /// wildcard: a new `Event` variant does not compile here until it has its arm (which
    /// `tests/snapshots.rs` then holds to a golden file and a sample), where forgetting the arm
    /// used to compile, write the event, and fail to read it back.
    fn stored_arm(event: Event) -> StoredEvent {
        match event {
            Event::MessagePosted(e) => StoredEvent::MessagePostedV1(e),
            Event::MessagesExpired(e) => StoredEvent::MessagesExpiredV1(e),
            Event::MessageEdited(e) => StoredEvent::MessageEditedV1(e),
            Event::MessageDeleted(e) => StoredEvent::MessageDeletedV1(e),
            Event::SessionCreated(e) => StoredEvent::SessionCreatedV1(e),
            Event::SessionTouched(e) => StoredEvent::SessionTouchedV1(e),
            Event::SessionPaid(e) => StoredEvent::SessionPaidV1(e),
            Event::SessionExpired(e) => StoredEvent::SessionExpiredV1(e),
            Event::SessionPurged(e) => StoredEvent::SessionPurgedV1(e),
            Event::SessionsExpired(e) => StoredEvent::SessionsExpiredV1(e),
            Event::SessionsPurged(e) => StoredEvent::SessionsPurgedV1(e),
            Event::SessionEnded(e) => StoredEvent::SessionEndedV1(e),
            Event::FileStored(e) => StoredEvent::FileStoredV1(e),
            Event::FileDeleted(e) => StoredEvent::FileDeletedV1(e),
            Event::ContentMoved(e) => StoredEvent::ContentMovedV1(e),
            Event::ContentQuarantined(e) => StoredEvent::ContentQuarantinedV1(e),
            Event::JanitorRan(e) => StoredEvent::JanitorRanV2(e),
        }
    }

    #[test]
    fn room_names_are_checked() {
        assert!(RoomId::parse("team-1.general_x").is_ok());
        for bad in ["", "a b", "../etc", "é", &"x".repeat(65)] {
            assert!(RoomId::parse(bad).is_err(), "{bad:?} must be refused");
        }
    }

    #[test]
    fn a_record_that_is_not_an_event_names_its_seq() {
        let err = decode(42, b"\x93garbage").expect_err("garbage must not decode");
        assert!(err.to_string().starts_with("log record 42 does not decode"), "{err}");
    }

    proptest! {
        #[test]
        fn every_envelope_survives_encoding(
            seq in any::<u64>(), at in any::<u64>(), name in "[a-z0-9_.-]{1,64}",
            author in ".{0,40}", client_id in ".{0,40}", body in ".{0,400}", expired in any::<bool>(),
        ) {
            let room = room(&name);
            let event = if expired {
                Event::MessagesExpired(MessagesExpired { room: room.clone(), through_seq: seq, policy: body })
            } else {
                Event::MessagePosted(MessagePosted { room: room.clone(), author, client_id, body })
            };
            prop_assert_eq!(Event::from(stored_arm(event.clone())), event.clone());
            let envelope = Envelope { seq, at_unix_ms: at, stream: StreamId::room(&room), event };
            prop_assert_eq!(decode(seq, &encode(&envelope)).expect("decodes"), envelope);
        }

        #[test]
        fn arbitrary_bytes_never_panic_the_decoder(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(1, &bytes);
        }
    }
}
