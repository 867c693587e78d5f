//! Actors (ractor on tokio): one [`room::RoomActor`] per active room under one
//! [`rooms::RoomSupervisor`], and one [`session::SessionActor`] per live session under the
//! supervisor in [`sessions`], which also sweeps due expiries and purges. The janitor is its own
//! actor in `crate::janitor`.

pub mod room;
pub mod rooms;
pub mod session;
pub mod sessions;

use std::sync::Arc;

use tokio::sync::{mpsc, Notify};

use crate::config::{ChatConfig, Limits};
use crate::error_code::ErrorCode;
use crate::log::EventLog;
use crate::projection::history::History;
use crate::projection::Runner;
use crate::room::MemberId;

/// What every room actor needs, shared.
#[derive(Debug, Clone)]
pub struct ChatContext {
    pub log: EventLog,
    pub history: History,
    /// The history projection's runner, to wait until it has applied a seq.
    pub history_runner: Runner,
    pub chat: ChatConfig,
    pub limits: Limits,
}

/// A frame on its way to one connection. `seq` is set on `message` frames so that the
/// connection knows the last seq it delivered and can resume from it.
#[derive(Debug, Clone)]
pub struct Outbound {
    pub seq: Option<u64>,
    pub frame: Arc<str>,
}

/// A connection as a room sees it.
#[derive(Debug)]
pub struct Member {
    pub id: MemberId,
    /// Who the connection is (the token's user or the name given): the key of presence.
    pub user: String,
    /// Bounded queue of frames for this connection in this room. When it is full the
    /// connection is too slow: the room drops it and rings `kick`.
    pub tx: mpsc::Sender<Outbound>,
    /// Rung when this member is disconnected for being too slow.
    pub kick: Arc<Notify>,
    /// Bytes queued for this connection across all its rooms, and the most it may have.
    pub queued: Arc<QueuedBytes>,
}

/// The bytes of frames queued for one connection, shared by its rooms' queues: rooms add
/// what they queue, the connection subtracts what it takes.
#[derive(Debug)]
pub struct QueuedBytes {
    bytes: std::sync::atomic::AtomicUsize,
    max: usize,
}

impl QueuedBytes {
    pub fn new(max: usize) -> Self {
        Self { bytes: std::sync::atomic::AtomicUsize::new(0), max }
    }

    /// Counts `len` more bytes in; false (and nothing counted) when that would pass the limit.
    pub fn add(&self, len: usize) -> bool {
        use std::sync::atomic::Ordering;
        let before = self.bytes.fetch_add(len, Ordering::AcqRel);
        if before + len > self.max {
            self.bytes.fetch_sub(len, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// Counts `len` bytes out.
    pub fn remove(&self, len: usize) {
        self.bytes.fetch_sub(len, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Errors of the chat actors, reported to the client as an error frame with [`Self::code`].
#[derive(Debug, Clone, thiserror::Error)]
pub enum ChatError {
    /// The room actor could not start or answer (reading history failed).
    #[error("room {room} is unavailable: {reason}")]
    RoomUnavailable { room: String, reason: String },
    /// The server is stopping.
    #[error("the server is shutting down")]
    ShuttingDown,
}

impl ChatError {
    /// The wire code for this error.
    pub fn code(&self) -> ErrorCode {
        match self {
            ChatError::RoomUnavailable { .. } => ErrorCode::RoomUnavailable,
            ChatError::ShuttingDown => ErrorCode::ShuttingDown,
        }
    }
}
