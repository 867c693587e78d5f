//! The event log: one append-only sequence of [`Envelope`]s, the single source of truth.
//!
//! The narrow interface of [`EventLog`] (append, read a range, read a stream, follow the head)
//! is what actors and projections see; the sled storage ([`store`]) and the group-commit writer
//! ([`writer`]) stay behind it, so that another backend can stand beside this one later
//! (DESIGN.md, "Beyond one machine").
//!
//! Durability: [`EventLog::append`] answers only after the record is written, sled has flushed,
//! and the `db` file has been fsynced (DESIGN.md invariant 1, "acknowledged means durable").

pub mod compact;
pub mod floor;
mod store;
mod writer;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

use crate::event::{DecodeError, Envelope, Event, StreamId};
pub use store::{Encoded, Store};
use writer::WriterMsg;

/// The highest seq the log hands out or accepts: 2^53 − 1, the largest integer a JavaScript
/// client reads exactly. Far past any real log (a crash skips at most `floor::SEQ_RESERVE`);
/// the bound is for crafted input (a backup archive, a seq floor file) that would otherwise
/// make seq arithmetic overflow.
pub const SEQ_MAX: u64 = (1 << 53) - 1;

/// Limits of the log writer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LogConfig {
    /// Most events written and flushed together in one group commit. Larger batches amortise
    /// the fsync; the bound keeps one commit's latency and memory in check.
    pub batch_max: usize,
    /// Most bytes of records in one group commit: what one commit can take of the disk is a
    /// multiple of it (see `space`), and the free-space floors are checked between commits.
    pub batch_bytes_max: usize,
    /// Most appends waiting for the writer. A full queue makes appenders wait (backpressure)
    /// instead of letting memory grow.
    pub queue_max: usize,
    /// Bytes of sled's page cache.
    pub cache_bytes_max: u64,
    /// Compact the log (see `roomlog compact`) each time the server starts, before it serves.
    pub compact_at_start: bool,
    /// New content is refused (nothing is written, nothing acknowledged: `disk_full`) while
    /// the log's filesystem has less than this many bytes free, and accepted again once it has
    /// more; clean-up goes on down to half of it (see `space::Floors`). Unset: 10 % of the
    /// volume, at least 64 MiB and at most 256 MiB; never under 32 MiB. sled cannot recover
    /// from a write that fails for lack of space without a restart, so the log never lets it
    /// get there.
    pub min_free_bytes: Option<u64>,
    /// Start even though the log ends before seqs the seq floor says were acknowledged (see
    /// [`LogError::LostRecords`]): what is left is served, and new seqs go on above every seq
    /// ever handed out. For an operator who has no backup to restore; off by default.
    pub accept_lost_records: bool,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            batch_max: 4096,
            batch_bytes_max: 1024 * 1024,
            queue_max: 65_536,
            cache_bytes_max: 256 * 1024 * 1024,
            compact_at_start: false,
            min_free_bytes: None,
            accept_lost_records: false,
        }
    }
}

/// What can go wrong in the log. The edges report every variant as "storage unavailable"
/// (HTTP 503, WebSocket code `storage_unavailable`) except where noted.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// sled refused a read or a write.
    #[error("log storage: {0}")]
    Storage(#[from] sled::Error),
    /// The log's database did not open.
    #[error("opening the log database: {0}")]
    Open(#[from] crate::durable::SledOpenError),
    /// A group commit could not be made durable.
    #[error("making the log durable: {0}")]
    Sync(#[from] crate::durable::SledSyncError),
    /// A file of the log beside sled's (the seq floor), or the writer thread, failed.
    #[error("log: {0}")]
    Io(#[from] std::io::Error),
    /// The disk is below the log's floor of free space (HTTP 507, code `disk_full`).
    #[error("the disk is full: {available} bytes free, below the floor of {floor} (log.min_free_bytes); nothing was stored, retry once space is freed")]
    DiskFull { available: u64, floor: u64 },
    /// The writer failed earlier (its storage refused a write) and stores nothing until the
    /// server restarts; the server is not ready and `roomlog serve` exits so that its
    /// supervisor restarts it (HTTP 503, code `storage_unavailable`).
    #[error("the log writer failed and stores nothing until the server restarts: {0}")]
    WriterFailed(#[source] Arc<LogError>),
    /// A record over the size sled keeps durable (`durable::VALUE_BYTES_MAX`); nothing of its
    /// group was stored.
    #[error("record {seq} is {bytes} bytes encoded, over the {max}-byte limit of a log record; nothing was stored")]
    RecordTooLarge { seq: u64, bytes: usize, max: usize },
    /// An event of a stream longer than the log indexes (`StreamId::LEN_MAX`); nothing of its
    /// group was stored.
    #[error("record {seq} belongs to a stream of {bytes} bytes, over the {max}-byte limit; nothing was stored")]
    StreamTooLong { seq: u64, bytes: usize, max: usize },
    /// Every seq up to `SEQ_MAX` has been handed out (only crafted input gets here).
    #[error("the log has handed out every seq up to {max}; it cannot store more")]
    SeqsExhausted { max: u64 },
    /// The log ends before records that the seq floor says were acknowledged: stored records
    /// were lost, and the server does not start on such a log by itself.
    #[error(
        "the log ends at seq {head} but seqs through {acked_through} were acknowledged: acknowledged records \
         were lost. Run `roomlog check` for details, and restore the data folder from a backup \
         (`roomlog restore`); to serve what is left anyway, start once with log.accept_lost_records = true"
    )]
    LostRecords { head: u64, acked_through: u64 },
    #[error("compacting the log: {what}: {source}")]
    Compact { what: String, source: std::io::Error },
    /// A stored record does not decode.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The writer has stopped: the server is shutting down (HTTP 503, code `shutting_down`).
    #[error("the log is closed")]
    Closed,
}

impl LogError {
    /// How the edges report this error: the disk, the shutdown, or the storage.
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::DiskFull { .. } => ErrorCode::DiskFull,
            _ => ErrorCode::StorageUnavailable,
        }
    }
}

/// An append handed to the writer, not yet durable. Await it for the stored envelope.
#[derive(Debug)]
pub struct PendingAppend {
    reply: oneshot::Receiver<Result<Envelope, Arc<LogError>>>,
    gone: Gone,
}

impl PendingAppend {
    /// Waits until the event is durable and returns it with its seq.
    pub async fn durable(self) -> Result<Envelope, Arc<LogError>> {
        match self.reply.await {
            Ok(result) => result,
            Err(_) => Err(Arc::new(self.gone.why())),
        }
    }
}

/// Tells why the writer is gone: closed on purpose (shutting down), or failed.
#[derive(Debug, Clone)]
struct Gone {
    closing: Arc<std::sync::atomic::AtomicBool>,
    failure: watch::Receiver<Option<Arc<LogError>>>,
}

impl Gone {
    fn why(&self) -> LogError {
        match self.failure.borrow().clone() {
            Some(failure) => LogError::WriterFailed(failure),
            None if self.closing.load(std::sync::atomic::Ordering::SeqCst) => LogError::Closed,
            None => LogError::WriterFailed(Arc::new(LogError::Io(std::io::Error::other("the log writer stopped")))),
        }
    }
}

/// A handle to the log; cheap to clone, shared by every actor and projection.
#[derive(Debug, Clone)]
pub struct EventLog {
    store: Store,
    writer: mpsc::Sender<WriterMsg>,
    head: watch::Receiver<u64>,
    gone: Gone,
    refusing: watch::Receiver<u64>,
    floors: crate::space::Floors,
}

impl EventLog {
    /// Opens (or creates) the log in `dir` and starts its writer thread.
    ///
    /// The newest record is decoded before anything is served: a damaged tail stops start-up
    /// with an error naming its seq.
    pub fn open(dir: &Path, config: &LogConfig) -> Result<Self, LogError> {
        compact::recover(dir)
            .map_err(|source| LogError::Compact { what: "settling an earlier compaction".into(), source })?;
        let store = Store::open(dir, config.cache_bytes_max)?;
        let last = store.last()?;
        let head = last.as_ref().map_or(0, |e| e.seq);
        let floor = floor::SeqFloor::open(dir)?;
        let recorded = floor.floor();
        if recorded.acked_through > head {
            let lost = LogError::LostRecords { head, acked_through: recorded.acked_through };
            if !config.accept_lost_records {
                return Err(lost);
            }
            tracing::error!(error = %lost, "starting anyway: log.accept_lost_records is set");
        }
        // Above every seq the log, its index or the floor says may have been handed out.
        let next_seq = [head.saturating_add(1), store.next_seq_floor()?, recorded.reserved_through.saturating_add(1)]
            .into_iter()
            .max()
            .unwrap_or(1);
        let last_at = last.as_ref().map_or(0, |e| e.at_unix_ms);
        // The head is the newest record, not `next_seq - 1`: after a crash the next seq is above
        // a gap, and followers wait for records, not for numbers.
        let (head_tx, head) = watch::channel(head);
        let (failure_tx, failure) = watch::channel(None);
        let (refusing_tx, refusing) = watch::channel(0);
        let (writer, rx) = mpsc::channel(config.queue_max.max(1));
        let floors = crate::space::Floors::for_dir(config.min_free_bytes, dir);
        let limits = writer::Limits {
            batch_max: config.batch_max.max(1),
            batch_bytes_max: config.batch_bytes_max.max(1),
            floors,
        };
        let outputs = writer::Outputs { head: head_tx, failure: failure_tx, refusing: refusing_tx };
        writer::spawn(store.clone(), floor, rx, outputs, next_seq, last_at, limits)?;
        let gone = Gone { closing: Arc::default(), failure };
        Ok(Self { store, writer, head, gone, refusing, floors })
    }

    /// Hands an event to the writer without waiting for it to be durable, so that a caller can
    /// pipeline many appends behind one flush. Appends are written in the order submitted.
    /// Waits only while the writer's queue is full.
    pub async fn submit(&self, event: Event) -> Result<PendingAppend, LogError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriterMsg::Append { event, reply }).await.map_err(|_| self.gone.why())?;
        Ok(PendingAppend { reply: rx, gone: self.gone.clone() })
    }

    /// Appends one event and waits until it is durable.
    pub async fn append(&self, event: Event) -> Result<Envelope, Arc<LogError>> {
        self.submit(event).await.map_err(Arc::new)?.durable().await
    }

    /// The seq of the newest durable event (0 when the log is empty).
    pub fn head(&self) -> u64 {
        *self.head.borrow()
    }

    /// Why the writer failed, once it has: it then stores nothing until the server restarts.
    pub fn failure(&self) -> Option<Arc<LogError>> {
        self.gone.failure.borrow().clone()
    }

    /// Follows the writer's failure: changes once, when it fails.
    pub fn watch_failure(&self) -> watch::Receiver<Option<Arc<LogError>>> {
        self.gone.failure.clone()
    }

    /// While new content is refused for lack of space: the bytes free at the last check.
    pub fn refusing_for_space(&self) -> Option<u64> {
        Some(*self.refusing.borrow()).filter(|&free| free > 0)
    }

    /// The free-space floors in force for the log's volume.
    pub fn floors(&self) -> crate::space::Floors {
        self.floors
    }

    /// Follows the head: the receiver changes after every durable group commit.
    pub fn watch_head(&self) -> watch::Receiver<u64> {
        self.head.clone()
    }

    /// Up to `limit` events with seq ≥ `from_seq`, in seq order, through the durable head
    /// only: no reader sees a record before it is durable (a projection that applied one could
    /// otherwise be ahead of the log after a power cut).
    pub fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        self.store.read_range(from_seq, self.head(), limit)
    }

    /// Up to `limit` durable records with seq ≥ `from_seq`, as stored: (seq, encoded envelope).
    pub fn read_raw(&self, from_seq: u64, limit: usize) -> Result<Vec<(u64, Vec<u8>)>, LogError> {
        self.store.read_raw(from_seq, self.head(), limit)
    }

    /// Up to `limit` durable events of one stream with seq > `after_seq`, in seq order.
    pub fn read_stream(&self, stream: &StreamId, after_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        self.store.read_stream(stream, after_seq, self.head(), limit)
    }

    /// Decodes every record, oldest first, and returns how many there are: the check an
    /// operator runs on a log they suspect (`roomlog check`).
    pub fn verify(&self) -> Result<u64, LogError> {
        self.store.verify()
    }

    /// Stops the writer after everything already submitted is durable.
    pub async fn close(&self) {
        self.gone.closing.store(true, std::sync::atomic::Ordering::SeqCst);
        let (done, rx) = oneshot::channel();
        if self.writer.send(WriterMsg::Stop { done }).await.is_ok() {
            let _ = rx.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::{MessagePosted, RoomId};

    pub(crate) fn posted(room: &str, n: usize) -> Event {
        Event::MessagePosted(MessagePosted {
            room: RoomId::parse(room).expect("valid test room"),
            author: "ann".into(),
            client_id: format!("c{n}"),
            body: format!("message {n}"),
        })
    }

    #[tokio::test]
    async fn appends_get_consecutive_seqs_and_survive_reopening() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
            let mut pending = Vec::new();
            for n in 0..100 {
                pending.push(log.submit(posted(if n % 2 == 0 { "a" } else { "b" }, n)).await.expect("submit"));
            }
            for (n, p) in pending.into_iter().enumerate() {
                assert_eq!(p.durable().await.expect("durable").seq, n as u64 + 1);
            }
            assert_eq!(log.head(), 100);
            log.close().await;
        }
        let log = EventLog::open(dir.path(), &LogConfig::default()).expect("reopen");
        assert_eq!(log.head(), 100);
        assert_eq!(log.append(posted("a", 100)).await.expect("append").seq, 101);
        let range = log.read_range(99, 10).expect("range");
        assert_eq!(range.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![99, 100, 101]);
        let room_b = StreamId::room(&RoomId::parse("b").expect("room"));
        let b = log.read_stream(&room_b, 90, 100).expect("stream");
        assert_eq!(b.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![92, 94, 96, 98, 100]);
        assert!(b.iter().all(|e| e.stream == room_b));
        assert_eq!(log.verify().expect("verify"), 101);
    }

    #[tokio::test]
    async fn records_whose_index_write_was_lost_are_indexed_at_the_next_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let room_a = StreamId::room(&RoomId::parse("a").expect("room"));
        {
            let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
            for n in 0..3 {
                log.append(posted("a", n)).await.expect("append");
            }
            // A crash after the records of seqs 4..=6 were written, before their index entries.
            let lost: Vec<Envelope> = (4..=6)
                .map(|seq| Envelope { seq, at_unix_ms: seq, stream: room_a.clone(), event: posted("a", seq as usize) })
                .collect();
            log.store.write_records_only_for_test(&lost).expect("records only");
            log.close().await;
        }
        let log = EventLog::open(dir.path(), &LogConfig::default()).expect("reopen");
        let seqs: Vec<u64> = log.read_stream(&room_a, 0, 100).expect("stream").iter().map(|e| e.seq).collect();
        assert_eq!(seqs, vec![1, 2, 3, 4, 5, 6]);
        assert_eq!(log.append(posted("a", 7)).await.expect("append").seq, 7, "seqs continue after the repaired ones");
        let after: Vec<u64> = log.read_stream(&room_a, 5, 100).expect("stream").iter().map(|e| e.seq).collect();
        assert_eq!(after, vec![6, 7]);
    }

    #[tokio::test]
    async fn a_corrupt_record_stops_opening_with_its_seq() {
        let dir = tempfile::tempdir().expect("tempdir");
        {
            let log = EventLog::open(dir.path(), &LogConfig::default()).expect("open");
            log.append(posted("a", 1)).await.expect("append");
            log.append(posted("a", 2)).await.expect("append");
            log.close().await;
            log.store.corrupt_for_test(2).expect("corrupt");
            log.store.sync().expect("sync");
        }
        let err = EventLog::open(dir.path(), &LogConfig::default()).expect_err("must refuse");
        assert!(err.to_string().contains("log record 2 does not decode"), "{err}");
    }
}
