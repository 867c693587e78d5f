//! The event log: one append-only sequence of [`Envelope`]s, the single source of truth.
//!
//! The narrow interface of [`EventLog`] (append, read a range, read a stream, follow the head,
//! remove superseded records) is what actors, projections, backup and the janitor see. Behind
//! it, the group-commit [`writer`] assigns seqs and timestamps and hands each group to a
//! [`Backend`]: [`SledBackend`], the embedded default, or [`MemoryBackend`] (tests). Nothing
//! outside this module names the storage engine.
//!
//! Durability: [`EventLog::append`] answers only after the backend has made the record durable
//! (for sled: written, flushed, and its `db` file fsynced; DESIGN.md invariant 1,
//! "acknowledged means durable").

mod backend;
pub mod compact;
#[cfg(test)]
mod conformance;
pub mod floor;
pub mod jetstream;
mod memory;
mod pack;
mod sled_store;
mod writer;

use std::path::Path;
use std::sync::Arc;

use tokio::sync::{mpsc, oneshot, watch};

pub use crate::config::{LogBackend, LogConfig};
pub use backend::{Backend, Encoded, Raw, Rewritten};
pub use memory::MemoryBackend;
pub use sled_store::{LegacyDb, SledBackend};
pub use writer::Expect;

use crate::event::{decode, DecodeError, Envelope, Event, StreamId};
use writer::WriterMsg;

/// The highest seq the log hands out or accepts: 2^53 − 1, the largest integer a JavaScript
/// client reads exactly. Far past any real log (a crash skips at most `floor::SEQ_RESERVE`);
/// the bound is for crafted input (a backup archive, a seq floor file) that would otherwise
/// make seq arithmetic overflow.
pub const SEQ_MAX: u64 = (1 << 53) - 1;

/// What can go wrong in the log. The edges report every variant as "storage unavailable"
/// (HTTP 503, WebSocket code `storage_unavailable`) except where noted.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// The backend did not open, or refused a read, a write or a sync; its own error is the
    /// source.
    #[error("log storage: {0}")]
    Storage(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// A file of the log beside the backend's (the seq floor), or the writer thread, failed.
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
    /// A record over the size the backend keeps durable ([`Backend::record_bytes_max`]);
    /// nothing was stored.
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
    /// A stored value of the sled log is neither a record nor a pack of records.
    #[error(transparent)]
    Pack(#[from] pack::PackError),
    /// The writer has stopped: the server is shutting down (HTTP 503, code `shutting_down`).
    #[error("the log is closed")]
    Closed,
    /// A conditional append found that another node appended to the same thing first
    /// (HTTP 409, code `conflict`); nothing was stored.
    #[error("changed meanwhile by another node: {0}; nothing was stored")]
    Conflict(String),
}

impl LogError {
    /// How the edges report this error: the disk, the shutdown, or the storage.
    pub fn code(&self) -> crate::error_code::ErrorCode {
        use crate::error_code::ErrorCode;
        match self {
            LogError::Closed => ErrorCode::ShuttingDown,
            LogError::DiskFull { .. } => ErrorCode::DiskFull,
            LogError::Conflict(_) => ErrorCode::Conflict,
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

/// What a node of a cluster knows of its link to the cluster's log.
#[derive(Debug, Clone)]
struct ClusterState {
    leases: jetstream::Leases,
    files: jetstream::SharedFiles,
    client: async_nats::Client,
    connected: watch::Receiver<bool>,
    lag: watch::Receiver<u64>,
    lag_max: u64,
    newest: jetstream::Newest,
}

/// A guard on a lease holder's appends (see [`EventLog::submit_fenced`]): the newest record
/// of `stream` that the holder read when it started its work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fence {
    pub stream: StreamId,
    pub last_seq: u64,
}

/// A handle to the log; cheap to clone, shared by every actor and projection.
#[derive(Debug, Clone)]
pub struct EventLog {
    backend: Arc<dyn Backend>,
    writer: mpsc::Sender<WriterMsg>,
    head: watch::Receiver<u64>,
    gone: Gone,
    refusing: watch::Receiver<u64>,
    floors: crate::space::Floors,
    /// On the JetStream log: whether this node reaches NATS now, how far its replica is
    /// behind the stream, and how far it may be while ready.
    cluster: Option<ClusterState>,
}

impl EventLog {
    /// Opens (or creates) the log in `dir` on the embedded default backend (sled) and starts
    /// its writer thread.
    ///
    /// The newest record is decoded before anything is served: a damaged tail stops start-up
    /// with an error naming its seq.
    pub fn open(dir: &Path, config: &LogConfig) -> Result<Self, LogError> {
        let backend = SledBackend::open(dir, config.cache_bytes_max)?;
        let floors = crate::space::Floors::for_dir(config.min_free_bytes, dir);
        Self::start(Arc::new(backend), config, floors)
    }

    /// A log in memory (see [`MemoryBackend`]), for tests.
    pub fn in_memory(config: &LogConfig) -> Result<Self, LogError> {
        Self::on(Arc::new(MemoryBackend::new()), config)
    }

    /// Starts a log on `backend`, as it is: the way to reopen a [`MemoryBackend`] ("restart").
    pub fn on(backend: Arc<dyn Backend>, config: &LogConfig) -> Result<Self, LogError> {
        Self::start(backend, config, crate::space::Floors::for_volume(config.min_free_bytes, 0))
    }

    fn start(backend: Arc<dyn Backend>, config: &LogConfig, floors: crate::space::Floors) -> Result<Self, LogError> {
        let last = backend.last()?.map(|(seq, bytes)| decode(seq, &bytes)).transpose()?;
        let head = last.as_ref().map_or(0, |e| e.seq);
        let recorded = backend.floor();
        if recorded.acked_through > head {
            let lost = LogError::LostRecords { head, acked_through: recorded.acked_through };
            if !config.accept_lost_records {
                return Err(lost);
            }
            tracing::error!(error = %lost, "starting anyway: log.accept_lost_records is set");
        }
        // Above every seq the log, its index or the floor says may have been handed out.
        let next_seq = [head.saturating_add(1), backend.next_seq_floor()?, recorded.reserved_through.saturating_add(1)]
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
        let limits = writer::Limits {
            batch_max: config.batch_max.max(1),
            batch_bytes_max: config.batch_bytes_max.max(1),
            floors,
        };
        let outputs = writer::Outputs { head: head_tx, failure: failure_tx, refusing: refusing_tx };
        writer::spawn(backend.clone(), rx, outputs, next_seq, last_at, limits)?;
        let gone = Gone { closing: Arc::default(), failure };
        Ok(Self { backend, writer, head, gone, refusing, floors, cluster: None })
    }

    /// Opens the log of a cluster: the stream on NATS JetStream that `cluster` names, with this
    /// node's replica of it in `dir` (see [`jetstream`]). Waits for NATS up to
    /// `cluster.connect_timeout`.
    ///
    /// With `purge_superseded`, the node purges what removals superseded after a janitor's
    /// run (see [`jetstream`]).
    pub async fn open_jetstream(
        dir: &Path,
        config: &LogConfig,
        cluster: &jetstream::JetStreamConfig,
        purge_superseded: bool,
    ) -> Result<Self, LogError> {
        let (dir, cache) = (dir.to_owned(), config.cache_bytes_max);
        let replica = off_async(move || Ok(Arc::new(SledBackend::open(&dir, cache)?))).await?;
        Self::on_jetstream(replica, config, cluster, purge_superseded).await
    }

    /// [`EventLog::open_jetstream`] with the replica on `replica` (a memory one, for tests).
    pub async fn on_jetstream(
        replica: Arc<dyn Backend>,
        config: &LogConfig,
        cluster: &jetstream::JetStreamConfig,
        purge_superseded: bool,
    ) -> Result<Self, LogError> {
        let (writer, rx) = mpsc::channel(config.queue_max.max(1));
        let started = jetstream::start(replica.clone(), cluster, rx, purge_superseded).await?;
        let (_, refusing) = watch::channel(0);
        let gone = Gone { closing: Arc::default(), failure: started.failure };
        let floors = crate::space::Floors::for_volume(config.min_free_bytes, 0);
        let cluster = Some(ClusterState {
            leases: started.leases,
            files: started.files,
            client: started.client,
            connected: started.connected,
            lag: started.lag,
            lag_max: cluster.ready_lag_max,
            newest: started.newest,
        });
        Ok(Self { backend: replica, writer, head: started.head, gone, refusing, floors, cluster })
    }

    /// Whether other nodes append to this log too (the JetStream log): what a room shows
    /// then comes from the log as it is committed, not from this node's own appends.
    pub fn is_shared(&self) -> bool {
        self.cluster.is_some()
    }

    /// Whether this node may run work that must run on one node at a time (`name`: the
    /// session sweeper, the janitor's schedule), changing as it takes or loses the lease; `None`
    /// on a local log, where it always may. Drop every receiver to give the lease up.
    pub fn lease(&self, name: &str) -> Option<watch::Receiver<bool>> {
        self.cluster.as_ref().map(|c| c.leases.hold(name))
    }

    /// On the JetStream log: the NATS connection, to ask the other nodes what they hold in
    /// memory only (presence).
    pub fn nats(&self) -> Option<async_nats::Client> {
        self.cluster.as_ref().map(|c| c.client.clone())
    }

    /// On the JetStream log: the content of files, shared by every node.
    pub fn shared_files(&self) -> Option<jetstream::SharedFiles> {
        self.cluster.as_ref().map(|c| c.files.clone())
    }

    /// Whether this node still holds lease `name` now, asked of the cluster just before work
    /// under it (see [`jetstream::Leases::confirm`]); always on a local log.
    pub async fn confirm_lease(&self, name: &str) -> bool {
        match &self.cluster {
            Some(cluster) => cluster.leases.confirm(name).await,
            None => true,
        }
    }

    /// On the JetStream log: this node's link to it (connected, records behind, leases held).
    pub fn cluster_status(&self) -> Option<crate::views::ClusterStatus> {
        let cluster = self.cluster.as_ref()?;
        Some(crate::views::ClusterStatus {
            connected: *cluster.connected.borrow(),
            lag_records: *cluster.lag.borrow(),
            leases_held: cluster.leases.held(),
        })
    }

    /// On the JetStream log, why this node should not serve now (NATS unreachable, or its
    /// replica too far behind the stream); `None` when it should, and on a local log.
    pub fn cluster_trouble(&self) -> Option<String> {
        let cluster = self.cluster.as_ref()?;
        if !*cluster.connected.borrow() {
            return Some("this node cannot reach NATS JetStream: sends fail with storage_unavailable until it reconnects (it retries by itself)".into());
        }
        let lag = *cluster.lag.borrow();
        (lag > cluster.lag_max).then(|| {
            format!(
                "this node's copy of the log is {lag} records behind the cluster's (jetstream.ready_lag_max {})",
                cluster.lag_max
            )
        })
    }

    /// The largest encoded record the log takes.
    pub fn record_bytes_max(&self) -> usize {
        self.backend.record_bytes_max()
    }

    /// The backend's name ("sled", "memory", or "jetstream" for a cluster's log).
    pub fn backend_name(&self) -> &'static str {
        if self.cluster.is_some() {
            "jetstream"
        } else {
            self.backend.name()
        }
    }

    /// Hands an event to the writer without waiting for it to be durable, so that a caller can
    /// pipeline many appends behind one flush. Appends are written in the order submitted.
    /// Waits only while the writer's queue is full.
    pub async fn submit(&self, event: Event) -> Result<PendingAppend, LogError> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriterMsg::Append { event, reply, expect: None }).await.map_err(|_| self.gone.why())?;
        Ok(PendingAppend { reply: rx, gone: self.gone.clone() })
    }

    /// [`EventLog::submit`], stored only if the newest record of what `event` changes is still
    /// `last_seq` (0: none) when it reaches the log, else refused with [`LogError::Conflict`].
    /// What "what it changes" is, is the log's business: on a cluster's log one amended
    /// message (see `jetstream::subject_of`); a local log has one writer, which holds it.
    pub async fn submit_if_last(&self, event: Event, last_seq: u64) -> Result<PendingAppend, LogError> {
        self.submit_expecting(event, Expect { last_seq, on: None }).await
    }

    /// [`EventLog::submit`], stored only if the newest record of `fence.stream` is still
    /// `fence.last_seq` when it reaches the log, else refused with [`LogError::Conflict`]:
    /// how a lease holder's run is guarded, so that a holder paused past its lease writes
    /// nothing once another node has recorded a run. A local log has one writer and ignores it.
    pub async fn submit_fenced(&self, event: Event, fence: &Fence) -> Result<PendingAppend, LogError> {
        self.submit_expecting(event, Expect { last_seq: fence.last_seq, on: Some(fence.stream.clone()) }).await
    }

    /// [`EventLog::append`] under `fence`, if any (see [`EventLog::submit_fenced`]).
    pub async fn append_fenced(&self, event: Event, fence: Option<&Fence>) -> Result<Envelope, Arc<LogError>> {
        match fence {
            Some(fence) => self.submit_fenced(event, fence).await.map_err(Arc::new)?.durable().await,
            None => self.append(event).await,
        }
    }

    async fn submit_expecting(&self, event: Event, expect: Expect) -> Result<PendingAppend, LogError> {
        let (reply, rx) = oneshot::channel();
        let msg = WriterMsg::Append { event, reply, expect: Some(expect) };
        self.writer.send(msg).await.map_err(|_| self.gone.why())?;
        Ok(PendingAppend { reply: rx, gone: self.gone.clone() })
    }

    /// The seq of the newest record of `stream`: on a cluster's log, the newest the cluster
    /// holds, asked of it, once this node's copy holds it too (what a node does before it
    /// decides again after a [`LogError::Conflict`]); on a local log, the newest in it.
    pub async fn newest_of(&self, stream: &StreamId) -> Result<u64, LogError> {
        match &self.cluster {
            Some(cluster) => cluster.newest.caught_up(stream).await,
            None => self.newest_held(stream, u64::MAX).await,
        }
    }

    /// The seq of the newest record of the whole log, once this node's copy holds it: on a
    /// cluster's log, asked of the stream's leader, so that everything any node committed
    /// before this call is in this node's copy after it; on a local log, the head.
    pub async fn newest_everywhere(&self) -> Result<u64, LogError> {
        match &self.cluster {
            Some(cluster) => cluster.newest.caught_up_all().await,
            None => Ok(self.head()),
        }
    }

    /// The seq of the newest record of `stream` at or below `through` in this node's copy of
    /// the log (0: none). Reads the stream from its start.
    pub async fn newest_held(&self, stream: &StreamId, through: u64) -> Result<u64, LogError> {
        const PAGE: usize = 4096;
        let (mut after, mut newest) = (0, 0);
        loop {
            let page = self.read_stream(stream, after, PAGE).await?;
            for envelope in &page {
                if envelope.seq <= through {
                    newest = envelope.seq;
                }
            }
            match page.last() {
                Some(last) if page.len() == PAGE && last.seq < through => after = last.seq,
                _ => return Ok(newest),
            }
        }
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
    /// otherwise be ahead of the log after a power cut). Blocking: for callers already off the
    /// async threads (projection runners, backups); async callers use [`EventLog::read_range`].
    pub fn read_range_blocking(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        decode_all(self.backend.read_raw(from_seq, self.head(), limit)?)
    }

    /// Up to `limit` durable records with seq ≥ `from_seq`, as stored: (seq, encoded envelope).
    /// Blocking, as [`EventLog::read_range_blocking`].
    pub fn read_raw_blocking(&self, from_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        self.backend.read_raw(from_seq, self.head(), limit)
    }

    /// Up to `limit` durable events of one stream with seq > `after_seq`, in seq order.
    /// Blocking, as [`EventLog::read_range_blocking`].
    pub fn read_stream_blocking(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        decode_all(self.backend.read_stream_raw(stream, after_seq, self.head(), limit)?)
    }

    /// [`EventLog::read_range_blocking`] on a blocking thread.
    pub async fn read_range(&self, from_seq: u64, limit: usize) -> Result<Vec<Envelope>, LogError> {
        let log = self.clone();
        off_async(move || log.read_range_blocking(from_seq, limit)).await
    }

    /// [`EventLog::read_raw_blocking`] on a blocking thread.
    pub async fn read_raw(&self, from_seq: u64, limit: usize) -> Result<Vec<Raw>, LogError> {
        let log = self.clone();
        off_async(move || log.read_raw_blocking(from_seq, limit)).await
    }

    /// [`EventLog::read_stream_blocking`] on a blocking thread.
    pub async fn read_stream(
        &self,
        stream: &StreamId,
        after_seq: u64,
        limit: usize,
    ) -> Result<Vec<Envelope>, LogError> {
        let (log, stream) = (self.clone(), stream.clone());
        off_async(move || log.read_stream_blocking(&stream, after_seq, limit)).await
    }

    /// Removes records that later removals superseded (see [`compact::superseded`]), in order
    /// with the appends before it, and returns how many went, once that is durable. The
    /// newest record always stays, and no seq is handed out again.
    pub async fn remove(&self, seqs: Vec<u64>) -> Result<u64, Arc<LogError>> {
        let (reply, rx) = oneshot::channel();
        self.writer.send(WriterMsg::Remove { seqs, reply }).await.map_err(|_| Arc::new(self.gone.why()))?;
        rx.await.map_err(|_| Arc::new(self.gone.why()))?
    }

    /// Rewrites the log's files while it serves, giving the space of removed records back to
    /// the filesystem (see [`SledBackend::rewrite`]); `None` where the backend has nothing to
    /// give back this way. Appends wait only for the swap at the end.
    pub async fn rewrite(&self) -> Result<Option<Rewritten>, LogError> {
        let backend = self.backend.clone();
        off_async(move || backend.rewrite()).await
    }

    /// Decodes every record, oldest first, and returns how many there are: the check an
    /// operator runs on a log they suspect (`roomlog check`). Blocking.
    pub fn verify(&self) -> Result<u64, LogError> {
        verify(self.backend.as_ref())
    }

    /// Files the backend wrote that a power cut could lose (see [`Backend::unsafe_files`]).
    pub fn unsafe_files(&self) -> usize {
        self.backend.unsafe_files()
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

/// The embedded default backend on the log folder `dir`, opened for an offline command
/// (restore, migration, check) that writes or reads records without a writer.
pub fn open_backend(dir: &Path, cache_bytes_max: u64) -> Result<Arc<dyn Backend>, LogError> {
    Ok(Arc::new(SledBackend::open(dir, cache_bytes_max)?))
}

/// Decodes every record of `backend`, oldest first, and returns how many there are.
pub fn verify(backend: &dyn Backend) -> Result<u64, LogError> {
    let (mut from, mut count) = (1, 0);
    loop {
        let chunk = backend.read_raw(from, u64::MAX, 4096)?;
        let Some(&(last, _)) = chunk.last() else { return Ok(count) };
        count += decode_all(chunk)?.len() as u64;
        from = last.saturating_add(1);
    }
}

fn decode_all(records: Vec<Raw>) -> Result<Vec<Envelope>, LogError> {
    records.iter().map(|(seq, bytes)| Ok(decode(*seq, bytes)?)).collect()
}

/// Runs a blocking call of the backend on a blocking thread.
async fn off_async<T: Send + 'static>(
    read: impl FnOnce() -> Result<T, LogError> + Send + 'static,
) -> Result<T, LogError> {
    tokio::task::spawn_blocking(read)
        .await
        .unwrap_or_else(|join| Err(LogError::Io(std::io::Error::other(format!("a log read stopped: {join}")))))
}
