//! The single log writer: group commit on a dedicated thread.
//!
//! sled's writes and the fsync block, so they run on their own OS thread rather than on the
//! async workers. The thread takes whatever is queued (up to `batch_max`), assigns seqs (above
//! the durable seq floor, which it raises first when needed), writes the group's records and
//! index entries, makes them durable once, and only then answers every caller and advances the
//! head (DESIGN.md: "acknowledged means durable").

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::floor::SeqFloor;
use super::{Encoded, LogError, Store};
use crate::durable::VALUE_BYTES_MAX;
use crate::event::{encode, Envelope, Event};

pub enum WriterMsg {
    Append {
        event: Event,
        reply: oneshot::Sender<Result<Envelope, Arc<LogError>>>,
    },
    /// Finish what was queued before this message, then stop.
    Stop {
        done: oneshot::Sender<()>,
    },
}

/// The writer's bounds, from `LogConfig`.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub batch_max: usize,
    pub min_free_bytes: u64,
}

pub fn spawn(
    store: Store,
    floor: SeqFloor,
    rx: mpsc::Receiver<WriterMsg>,
    head: watch::Sender<u64>,
    next_seq: u64,
    last_at: u64,
    limits: Limits,
) -> Result<(), LogError> {
    std::thread::Builder::new()
        .name("roomlog-log-writer".into())
        .spawn(move || Writer { store, floor, rx, head, next_seq, last_at, limits, refusing: false }.run())?;
    Ok(())
}

struct Writer {
    store: Store,
    /// Seqs are handed out only below a durable reservation (see `log::floor`).
    floor: SeqFloor,
    rx: mpsc::Receiver<WriterMsg>,
    head: watch::Sender<u64>,
    next_seq: u64,
    /// Timestamps never go backwards, even if the wall clock does, so that time ranges over
    /// the log are ranges of seqs.
    last_at: u64,
    limits: Limits,
    /// Appends are being refused for lack of space (said once, and once when they resume).
    refusing: bool,
}

/// An append stamped with its seq and encoded, waiting for its group's commit.
struct Stamped {
    envelope: Envelope,
    encoded: Vec<u8>,
    reply: oneshot::Sender<Result<Envelope, Arc<LogError>>>,
}

impl Writer {
    fn run(mut self) {
        let mut group: Vec<Stamped> = Vec::with_capacity(self.limits.batch_max);
        while let Some(first) = self.rx.blocking_recv() {
            let mut stop = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append { event, reply } => {
                        if let Some(stamped) = self.stamp(event, reply) {
                            group.push(stamped);
                        }
                    }
                    WriterMsg::Stop { done } => {
                        stop = Some(done);
                        break;
                    }
                }
                if group.len() < self.limits.batch_max {
                    next = self.rx.try_recv().ok();
                }
            }
            if !group.is_empty() {
                self.commit(&mut group);
            }
            if let Some(done) = stop {
                // Give back the unused seqs, release the database and end the head watch before
                // answering, so that a caller that awaited `close` can reopen the folder at once.
                let durable_head = *self.head.borrow();
                if let Err(error) = self.floor.release(durable_head) {
                    // Harmless: the next start goes on above the reservation instead.
                    tracing::warn!(error = %error, "could not give back the unused seq reservation");
                }
                let Writer { mut rx, store, head, .. } = self;
                rx.close();
                drop((store, head));
                let _ = done.send(());
                return;
            }
        }
    }

    /// Gives the event its seq and time and encodes it; an event too large to be a record is
    /// refused on its own, without a seq, and the rest of the group goes on.
    fn stamp(&mut self, event: Event, reply: oneshot::Sender<Result<Envelope, Arc<LogError>>>) -> Option<Stamped> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_at = self.last_at.max(now);
        let envelope = Envelope { seq: self.next_seq, at_unix_ms: self.last_at, stream: event.stream(), event };
        let encoded = encode(&envelope);
        if encoded.len() > VALUE_BYTES_MAX {
            let error = LogError::RecordTooLarge { seq: envelope.seq, bytes: encoded.len(), max: VALUE_BYTES_MAX };
            tracing::warn!(error = %error, event = envelope.event.tag(), "append refused");
            let _ = reply.send(Err(Arc::new(error)));
            return None;
        }
        self.next_seq += 1;
        Some(Stamped { envelope, encoded, reply })
    }

    fn commit(&mut self, group: &mut Vec<Stamped>) {
        let started = std::time::Instant::now();
        if let Some(available) = self.store.available_bytes().filter(|&a| a < self.limits.min_free_bytes) {
            // Refused before anything reaches sled: the seqs are given back.
            self.next_seq -= group.len() as u64;
            metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
            let error = Arc::new(LogError::DiskFull { available, floor: self.limits.min_free_bytes });
            if !self.refusing {
                tracing::error!(error = %error, "appends refused until space is freed");
                self.refusing = true;
            }
            for stamped in group.drain(..) {
                let _ = stamped.reply.send(Err(error.clone()));
            }
            return;
        }
        if std::mem::take(&mut self.refusing) {
            tracing::info!("space freed: appends accepted again");
        }
        let last_seq = group.last().map_or(0, |s| s.envelope.seq);
        let durable_head = *self.head.borrow();
        let records: Vec<Encoded<'_>> =
            group.iter().map(|s| (s.envelope.seq, &s.envelope.stream, s.encoded.as_slice())).collect();
        let result = self
            .floor
            .reserve(last_seq, durable_head)
            .map_err(LogError::from)
            .and_then(|()| self.store.write_encoded(&records))
            .and_then(|()| self.store.sync());
        metrics::histogram!(crate::metrics::APPEND_BATCH_EVENTS).record(group.len() as f64);
        match result {
            Ok(()) => {
                metrics::histogram!(crate::metrics::APPEND_DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::LOG_EVENTS_TOTAL).increment(group.len() as u64);
                // The head moves first: whoever is acknowledged sees a head at least at its seq.
                self.head.send_replace(last_seq);
                for stamped in group.drain(..) {
                    let _ = stamped.reply.send(Ok(stamped.envelope));
                }
            }
            Err(error) => {
                // Nothing of this group is acknowledged. Its seqs stay consumed: if sled kept
                // some of it in memory and writes it later, no later event may reuse a seq.
                tracing::error!(error = %error, events = group.len(), "log group commit failed");
                metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
                let error = Arc::new(error);
                for stamped in group.drain(..) {
                    let _ = stamped.reply.send(Err(error.clone()));
                }
            }
        }
    }
}
