//! The seam under the log: what a place that stores records must do, so that [`EventLog`]
//! (the API actors, projections, backup and the janitor use) stays the same whatever holds
//! the records.
//!
//! Two backends implement it: [`SledBackend`](super::SledBackend), the embedded default, and
//! [`MemoryBackend`](super::MemoryBackend), for tests and the conformance suite
//! (`log::conformance`) that runs over both. Both are *local*: the log's one writer thread
//! (`log::writer`) assigns seqs and timestamps, groups appends, calls [`Backend::write`] and
//! then [`Backend::sync`] once per group, and only then acknowledges. That is why this is a
//! trait of blocking calls, made off the async threads (the writer's own thread,
//! `spawn_blocking`), rather than an async trait.
//!
//! A trait rather than an enum: the backends share no code but the writer, the writer holds
//! one `Arc<dyn Backend>`, and a dynamic call costs nothing beside a group's fsync. A remote
//! log that assigns seqs itself (NATS JetStream, issue 16) does not fit under the local
//! writer; it comes in beside it, as a second way [`EventLog`] is backed, keeping the same
//! public API (see ARCHITECTURE.md, "The log and its backends").
//!
//! [`EventLog`]: super::EventLog

use super::floor::Floor;
use super::LogError;
use crate::event::StreamId;

/// A record as handed to [`Backend::write`]: its seq, its stream (for the stream index) and
/// its encoded envelope, as it is to be stored and read back.
pub type Encoded<'a> = (u64, &'a StreamId, &'a [u8]);

/// A stored record as read back: its seq and its encoded envelope.
pub type Raw = (u64, Vec<u8>);

/// What a local log backend stores and how. Every method may block.
///
/// The contract, checked for every backend by `log::conformance`:
/// - records are read back byte for byte, in seq order, by range and by stream;
/// - after [`Backend::sync`] returns, everything written before it survives a crash of the
///   process and a power cut (for a backend that persists at all);
/// - a seq once written or reserved is never handed out again, through restarts and removals
///   ([`Backend::next_seq_floor`], [`Backend::floor`]);
/// - a removed record is never read again, by range or by stream.
pub trait Backend: Send + Sync + std::fmt::Debug + 'static {
    /// A short name for logs and the status page ("sled", "memory").
    fn name(&self) -> &'static str;

    /// The newest record, if any.
    fn last(&self) -> Result<Option<Raw>, LogError>;

    /// The lowest seq the writer may assign next, as the backend's own bookkeeping records it
    /// (1 for an empty log): seqs are not reused even when the newest records were removed.
    fn next_seq_floor(&self) -> Result<u64, LogError>;

    /// The seq reservation and the acknowledged head last recorded (see `log::floor`).
    fn floor(&self) -> Floor;

    /// Makes sure every seq through `through` is reserved before it is handed out, recording
    /// `acked_through` beside it; durable before it returns.
    fn reserve(&self, through: u64, acked_through: u64) -> Result<(), LogError>;

    /// Gives back the unused part of the reservation at a clean stop.
    fn release(&self, head: u64) -> Result<(), LogError>;

    /// Records `floor` as it is (a restore or migration carrying an earlier log's floor).
    fn set_floor(&self, floor: Floor) -> Result<(), LogError>;

    /// Writes one group of records, ascending by seq, each within
    /// [`Backend::record_bytes_max`]. Not yet durable: see [`Backend::sync`].
    fn write(&self, records: &[Encoded<'_>]) -> Result<(), LogError>;

    /// Makes every write before it durable.
    fn sync(&self) -> Result<(), LogError>;

    /// Up to `limit` records with `from_seq` ≤ seq ≤ `through_seq`, ascending.
    fn read_raw(&self, from_seq: u64, through_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError>;

    /// Up to `limit` records of `stream` with `after_seq` < seq ≤ `through_seq`, ascending.
    fn read_stream_raw(
        &self,
        stream: &StreamId,
        after_seq: u64,
        through_seq: u64,
        limit: usize,
    ) -> Result<Vec<Raw>, LogError>;

    /// Removes the records of `seqs` (ascending; ones already gone are skipped) and returns how
    /// many it removed. Not yet durable: see [`Backend::sync`].
    fn remove(&self, seqs: &[u64]) -> Result<u64, LogError>;

    /// The largest encoded record the backend keeps durable.
    fn record_bytes_max(&self) -> usize;

    /// Bytes free where the records are stored, for the free-space floors; `None` where that
    /// does not apply (memory) or cannot be asked.
    fn available_bytes(&self) -> Option<u64>;

    /// Files the storage engine wrote that a power cut could lose (sled's blob files): none is
    /// expected (see `durable::SledDb`).
    fn unsafe_files(&self) -> usize {
        0
    }

    /// Rewrites the backend's files while the log serves, giving back to the filesystem the
    /// space of removed records; `None` where there is nothing to give back this way (memory,
    /// or a store that frees space itself).
    fn rewrite(&self) -> Result<Option<Rewritten>, LogError> {
        Ok(None)
    }
}

/// What an online rewrite of the log's files did ([`Backend::rewrite`]).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Rewritten {
    /// Records copied.
    pub records: u64,
    /// Bytes the filesystem held for the log's folder before and after.
    pub bytes_before: u64,
    pub bytes_after: u64,
    /// How long every other call on the log waited for the swap at the end.
    pub paused_ms: u64,
}
