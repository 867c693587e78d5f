//! The single log writer: group commit on a dedicated thread.
//!
//! sled's writes and the fsync block, so they run on their own OS thread rather than on the
//! async workers. The thread takes whatever is queued (up to `batch_max` events and
//! `batch_bytes_max` bytes), refuses what the free-space floors do not allow before anything
//! reaches sled, assigns seqs (above the durable seq floor, which it raises first when needed),
//! writes the group's records and index entries, makes them durable once, and only then
//! answers every caller and advances the head (DESIGN.md: "acknowledged means durable").
//!
//! A write or fsync that fails leaves sled failing until it is reopened, so the writer then
//! stops storing: it answers every later append with [`LogError::WriterFailed`] (never a
//! misleading "shutting down"), and publishes the failure, on which the server turns not ready
//! and `roomlog serve` exits for its supervisor to restart it. Nothing acknowledged is lost by
//! that: it is durable.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::backend::{Backend, Encoded};
use super::LogError;
use crate::event::{encode, Envelope, Event};
use crate::space::Floors;

type Reply = oneshot::Sender<Result<Envelope, Arc<LogError>>>;

pub enum WriterMsg {
    Append {
        event: Event,
        reply: Reply,
        /// For a conditional append: what must still be the newest record. The local writer
        /// is the only writer, so its callers' reads hold: it ignores it.
        expect: Option<Expect>,
    },
    /// Remove these records (ascending), after what was queued before this message is
    /// durable; answers how many were removed, once the removal is durable.
    Remove { seqs: Vec<u64>, reply: oneshot::Sender<Result<u64, Arc<LogError>>> },
    /// Finish what was queued before this message, then stop.
    Stop { done: oneshot::Sender<()> },
}

/// The condition of a conditional append: the seq the newest record of something must still
/// have when the append reaches the log (0: it has none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Expect {
    pub last_seq: u64,
    /// Whose newest record: `None` for what the event itself changes (on a cluster's log, the
    /// subject it is published on, `jetstream::subject_of`); a stream for a fence (a lease
    /// holder's run, guarded by the newest record of its own stream).
    pub on: Option<crate::event::StreamId>,
}

/// The writer's bounds, from `LogConfig` and the volume.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_max: usize,
    pub batch_bytes_max: usize,
    pub floors: Floors,
}

/// What the writer reports to the rest of the server.
#[derive(Debug)]
pub struct Outputs {
    /// The newest durable seq.
    pub head: watch::Sender<u64>,
    /// Set once the writer has failed, with why.
    pub failure: watch::Sender<Option<Arc<LogError>>>,
    /// Bytes free below the log floor while appends of new content are refused; 0 otherwise.
    pub refusing: watch::Sender<u64>,
}

pub fn spawn(
    backend: Arc<dyn Backend>,
    rx: mpsc::Receiver<WriterMsg>,
    outputs: Outputs,
    next_seq: u64,
    last_at: u64,
    limits: Limits,
) -> Result<(), LogError> {
    std::thread::Builder::new().name("roomlog-log-writer".into()).spawn(move || {
        let failure = outputs.failure.clone();
        let writer = Writer { backend, rx, out: outputs, next_seq, last_at, limits, failed: None };
        if let Err(panic) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| writer.run())) {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned());
            let error = LogError::Io(std::io::Error::other(format!(
                "the log writer thread panicked: {}",
                what.unwrap_or_else(|| "no message".into())
            )));
            tracing::error!(error = %error, "log writer failed");
            failure.send_replace(Some(Arc::new(error)));
        }
    })?;
    Ok(())
}

struct Writer {
    /// Where records go. Seqs are handed out only below its durable reservation (see
    /// `log::floor`).
    backend: Arc<dyn Backend>,
    rx: mpsc::Receiver<WriterMsg>,
    out: Outputs,
    next_seq: u64,
    /// Timestamps never go backwards, even if the wall clock does, so that time ranges over
    /// the log are ranges of seqs.
    last_at: u64,
    limits: Limits,
    /// The failure after which nothing more is stored.
    failed: Option<Arc<LogError>>,
}

/// An append stamped with its seq and encoded, waiting for its group's commit.
struct Stamped {
    envelope: Envelope,
    encoded: Vec<u8>,
    reply: Reply,
}

/// Why an append is refused before it gets a seq.
enum Refusal {
    Space { available: u64, floor: u64 },
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Stamped> = Vec::with_capacity(self.limits.batch_max);
        while let Some(first) = self.rx.blocking_recv() {
            let space = self.space_check();
            let (mut stop, mut remove, mut bytes) = (None, None, 0usize);
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append { event, reply, .. } => {
                        if let Some(stamped) = self.stamp(event, reply, space) {
                            bytes += stamped.encoded.len();
                            group.push(stamped);
                        }
                    }
                    WriterMsg::Remove { seqs, reply } => {
                        remove = Some((seqs, reply));
                        break;
                    }
                    WriterMsg::Stop { done } => {
                        stop = Some(done);
                        break;
                    }
                }
                if group.len() < self.limits.batch_max && bytes < self.limits.batch_bytes_max {
                    next = self.rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
            if let Some((seqs, reply)) = remove {
                let _ = reply.send(self.remove(&seqs));
            }
            if let Some(done) = stop {
                self.stop(done);
                return;
            }
        }
    }

    /// Gives back the unused seqs, releases the database and ends the head watch before
    /// answering, so that a caller that awaited `close` can reopen the folder at once.
    fn stop(self, done: oneshot::Sender<()>) {
        let durable_head = *self.out.head.borrow();
        if self.failed.is_none() {
            if let Err(error) = self.backend.release(durable_head) {
                // Harmless: the next start goes on above the reservation instead.
                tracing::warn!(error = %error, "could not give back the unused seq reservation");
            }
        }
        let Writer { mut rx, backend, out, .. } = self;
        rx.close();
        drop((backend, out));
        let _ = done.send(());
    }

    /// Bytes free now, and whether new content (`.0`) and clean-up (`.1`) may be appended.
    fn space_check(&mut self) -> Option<(u64, bool, bool)> {
        let available = self.backend.available_bytes()?;
        let floors = self.limits.floors;
        let (content, cleanup) = (available >= floors.log, available >= floors.cleanup);
        let was_refusing = *self.out.refusing.borrow() > 0;
        if !content && !was_refusing {
            tracing::error!(
                available,
                floor = floors.log,
                "disk below the log floor: new messages and uploads are refused until space is freed"
            );
        } else if content && was_refusing {
            tracing::info!(available, "space freed: new content accepted again");
        }
        self.out.refusing.send_replace(if content { 0 } else { available.max(1) });
        Some((available, content, cleanup))
    }

    /// Gives the event its seq and time and encodes it. An event refused (the writer failed,
    /// the disk is below its floor, too large a record) is answered at once, without a seq,
    /// and the rest of the group goes on.
    fn stamp(&mut self, event: Event, reply: Reply, space: Option<(u64, bool, bool)>) -> Option<Stamped> {
        if let Some(failed) = &self.failed {
            let _ = reply.send(Err(Arc::new(LogError::WriterFailed(failed.clone()))));
            return None;
        }
        if self.next_seq > super::SEQ_MAX {
            let _ = reply.send(Err(Arc::new(LogError::SeqsExhausted { max: super::SEQ_MAX })));
            return None;
        }
        if let Some(Refusal::Space { available, floor }) = self.refusal(&event, space) {
            metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
            let _ = reply.send(Err(Arc::new(LogError::DiskFull { available, floor })));
            return None;
        }
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_at = self.last_at.max(now);
        let envelope = Envelope { seq: self.next_seq, at_unix_ms: self.last_at, stream: event.stream(), event };
        let encoded = encode(&envelope);
        let stream_bytes = envelope.stream.as_str().len();
        let bytes_max = self.backend.record_bytes_max();
        if encoded.len() > bytes_max || stream_bytes > crate::event::StreamId::LEN_MAX {
            let error = if stream_bytes > crate::event::StreamId::LEN_MAX {
                LogError::StreamTooLong { seq: envelope.seq, bytes: stream_bytes, max: crate::event::StreamId::LEN_MAX }
            } else {
                LogError::RecordTooLarge { seq: envelope.seq, bytes: encoded.len(), max: bytes_max }
            };
            tracing::warn!(error = %error, event = envelope.event.tag(), "append refused");
            let _ = reply.send(Err(Arc::new(error)));
            return None;
        }
        self.next_seq += 1;
        Some(Stamped { envelope, encoded, reply })
    }

    fn refusal(&self, event: &Event, space: Option<(u64, bool, bool)>) -> Option<Refusal> {
        let (available, content, cleanup) = space?;
        let floors = self.limits.floors;
        match (event.is_cleanup(), content, cleanup) {
            (_, true, _) | (true, false, true) => None,
            (true, _, false) => Some(Refusal::Space { available, floor: floors.cleanup }),
            (false, false, _) => Some(Refusal::Space { available, floor: floors.log }),
        }
    }

    fn commit(&mut self, group: &mut Vec<Stamped>) {
        let started = std::time::Instant::now();
        let last_seq = group.last().map_or(0, |s| s.envelope.seq);
        let durable_head = *self.out.head.borrow();
        let records: Vec<Encoded<'_>> =
            group.iter().map(|s| (s.envelope.seq, &s.envelope.stream, s.encoded.as_slice())).collect();
        let result = self
            .backend
            .reserve(last_seq, durable_head)
            .and_then(|()| self.backend.write(&records))
            .and_then(|()| crate::fault::fail("log:commit").map_err(|e| LogError::Io(std::io::Error::other(e))))
            .and_then(|()| self.backend.sync());
        metrics::histogram!(crate::metrics::APPEND_BATCH_EVENTS).record(group.len() as f64);
        match result {
            Ok(()) => {
                metrics::histogram!(crate::metrics::APPEND_DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::LOG_EVENTS_TOTAL).increment(group.len() as u64);
                // The head moves first: whoever is acknowledged sees a head at least at its seq.
                self.out.head.send_replace(last_seq);
                for stamped in group.drain(..) {
                    let _ = stamped.reply.send(Ok(stamped.envelope));
                }
            }
            Err(error) => {
                // Nothing of this group is acknowledged, and nothing more is stored: sled fails
                // until it is reopened. Its seqs stay consumed: if sled kept some of the group
                // and writes it later, no later event may reuse a seq.
                tracing::error!(error = %error, events = group.len(), "log group commit failed: the log stores nothing more until the server restarts");
                metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
                let error = Arc::new(error);
                self.failed = Some(error.clone());
                self.out.failure.send_replace(Some(error.clone()));
                for stamped in group.drain(..) {
                    let _ = stamped.reply.send(Err(Arc::new(LogError::WriterFailed(error.clone()))));
                }
            }
        }
    }

    /// Removes records a later removal superseded (see `log::compact`) and makes that durable.
    /// A failure is the writer's failure, as a failed commit is: the backend may have removed
    /// part, and fails until it is reopened.
    fn remove(&mut self, seqs: &[u64]) -> Result<u64, Arc<LogError>> {
        if let Some(failed) = &self.failed {
            return Err(Arc::new(LogError::WriterFailed(failed.clone())));
        }
        let head = *self.out.head.borrow();
        // The head record stays, so that the log's newest seq never goes back.
        let seqs: Vec<u64> = seqs.iter().copied().filter(|&seq| seq < head).collect();
        match self.backend.remove(&seqs).and_then(|removed| self.backend.sync().map(|()| removed)) {
            Ok(removed) => Ok(removed),
            Err(error) => {
                tracing::error!(error = %error, "log removal failed: the log stores nothing more until the server restarts");
                let error = Arc::new(error);
                self.failed = Some(error.clone());
                self.out.failure.send_replace(Some(error.clone()));
                Err(Arc::new(LogError::WriterFailed(error)))
            }
        }
    }
}
