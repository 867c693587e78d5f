//! Fixtures for unit tests that run projections and actors as the server does, on the memory
//! log and a temporary state store (issue 15: most tests need neither sockets nor disks): the
//! log, the store, the events clients cause, and waits that stop by themselves.

use std::time::Duration;

use crate::event::{Envelope, Event, MessageDeleted, MessageEdited, MessagePosted, RoomId};
use crate::log::{EventLog, LogConfig};
use crate::projection::Runner;
use crate::state::StateDb;

/// The longest a test waits for something that takes milliseconds: a stuck test fails with a
/// message instead of hanging the suite.
pub const WAIT: Duration = Duration::from_secs(5);

/// A log in memory with the default limits.
pub fn memory_log() -> EventLog {
    EventLog::in_memory(&LogConfig::default()).expect("a memory log always opens")
}

/// A state store in memory, gone when dropped.
pub fn state() -> StateDb {
    StateDb::temporary().expect("a temporary store opens")
}

pub fn room(name: &str) -> RoomId {
    RoomId::parse(name).expect("test room names are valid")
}

/// A message posted to `room` by `author` under `client_id`.
pub fn posted(room_name: &str, author: &str, client_id: &str, body: &str) -> Event {
    Event::MessagePosted(MessagePosted {
        room: room(room_name),
        author: author.into(),
        client_id: client_id.into(),
        body: body.into(),
    })
}

/// An edit by `by` of the message `of` (a stored `MessagePosted`).
pub fn edited(of: &Envelope, by: &str, body: &str) -> Event {
    let Event::MessagePosted(message) = &of.event else { panic!("an edit names a posted message, not {of:?}") };
    Event::MessageEdited(MessageEdited {
        room: message.room.clone(),
        seq: of.seq,
        author: message.author.clone(),
        client_id: message.client_id.clone(),
        posted_at_unix_ms: of.at_unix_ms,
        edited_by: by.into(),
        body: body.into(),
    })
}

/// A deletion by `by` of the message `of` (a stored `MessagePosted`).
pub fn deleted(of: &Envelope, by: &str) -> Event {
    let Event::MessagePosted(message) = &of.event else { panic!("a deletion names a posted message, not {of:?}") };
    Event::MessageDeleted(MessageDeleted {
        room: message.room.clone(),
        seq: of.seq,
        deleted_by: by.into(),
        reason: "deleted by its author".into(),
    })
}

/// Appends `event` and waits until it is durable.
pub async fn append(log: &EventLog, event: Event) -> Envelope {
    tokio::time::timeout(WAIT, log.append(event))
        .await
        .expect("the memory log answers within the wait")
        .expect("the memory log stores the event")
}

/// Waits until `runner` has applied (made visible) everything durable in `log` now.
pub async fn caught_up(runner: &Runner, log: &EventLog) {
    let head = log.head();
    let reached = tokio::time::timeout(WAIT, runner.wait_applied(head))
        .await
        .unwrap_or_else(|_| panic!("the {} projection did not reach seq {head} within the wait", runner.name()));
    assert!(reached, "the {} projection stopped before seq {head}", runner.name());
}

/// Closes the log and waits for the runner's task, which ends with it.
pub async fn close(log: &EventLog, following: tokio::task::JoinHandle<()>) {
    log.close().await;
    tokio::time::timeout(WAIT, following)
        .await
        .expect("the runner stops once the log closes")
        .expect("the runner's task ends without panicking");
}
