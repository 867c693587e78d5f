//! The single log writer: group commit on a dedicated thread.
//!
//! sled's writes and the fsync block, so they run on their own OS thread rather than on the
//! async workers. The thread takes whatever is queued (up to `batch_max`), assigns seqs,
//! writes the group in one transaction, flushes and fsyncs once, and only then answers every
//! caller and advances the head (DESIGN.md: "acknowledged means durable").

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use tokio::sync::{mpsc, oneshot, watch};

use super::{LogError, Store};
use crate::event::{Envelope, Event};

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

pub fn spawn(
    store: Store,
    rx: mpsc::Receiver<WriterMsg>,
    head: watch::Sender<u64>,
    next_seq: u64,
    last_at: u64,
    batch_max: usize,
    min_free_bytes: u64,
) -> Result<(), LogError> {
    std::thread::Builder::new().name("roomlog-log-writer".into()).spawn(move || {
        Writer { store, rx, head, next_seq, last_at, batch_max, min_free_bytes, refusing: false }.run()
    })?;
    Ok(())
}

struct Writer {
    store: Store,
    rx: mpsc::Receiver<WriterMsg>,
    head: watch::Sender<u64>,
    next_seq: u64,
    /// Timestamps never go backwards, even if the wall clock does, so that time ranges over
    /// the log are ranges of seqs.
    last_at: u64,
    batch_max: usize,
    min_free_bytes: u64,
    /// Appends are being refused for lack of space (said once, and once when they resume).
    refusing: bool,
}

impl Writer {
    fn run(mut self) {
        let mut replies = Vec::with_capacity(self.batch_max);
        let mut envelopes = Vec::with_capacity(self.batch_max);
        while let Some(first) = self.rx.blocking_recv() {
            let mut stop = None;
            let mut next = Some(first);
            while let Some(msg) = next.take() {
                match msg {
                    WriterMsg::Append { event, reply } => {
                        envelopes.push(self.stamp(event));
                        replies.push(reply);
                    }
                    WriterMsg::Stop { done } => {
                        stop = Some(done);
                        break;
                    }
                }
                if envelopes.len() < self.batch_max {
                    next = self.rx.try_recv().ok();
                }
            }
            if !envelopes.is_empty() {
                self.commit(&mut envelopes, &mut replies);
            }
            if let Some(done) = stop {
                // Release the database and end the head watch before answering, so that a
                // caller that awaited `close` can reopen the folder at once.
                let Writer { mut rx, store, head, .. } = self;
                rx.close();
                drop((store, head));
                let _ = done.send(());
                return;
            }
        }
    }

    fn stamp(&mut self, event: Event) -> Envelope {
        let now = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64);
        self.last_at = self.last_at.max(now);
        let seq = self.next_seq;
        self.next_seq += 1;
        Envelope { seq, at_unix_ms: self.last_at, stream: event.stream(), event }
    }

    fn commit(
        &mut self,
        envelopes: &mut Vec<Envelope>,
        replies: &mut Vec<oneshot::Sender<Result<Envelope, Arc<LogError>>>>,
    ) {
        let started = std::time::Instant::now();
        if let Some(available) = self.store.available_bytes().filter(|&a| a < self.min_free_bytes) {
            // Refused before anything reaches sled: the seqs are given back.
            self.next_seq -= envelopes.len() as u64;
            envelopes.clear();
            metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
            let error = Arc::new(LogError::DiskFull { available, floor: self.min_free_bytes });
            if !self.refusing {
                tracing::error!(error = %error, "appends refused until space is freed");
                self.refusing = true;
            }
            for reply in replies.drain(..) {
                let _ = reply.send(Err(error.clone()));
            }
            return;
        }
        if std::mem::take(&mut self.refusing) {
            tracing::info!("space freed: appends accepted again");
        }
        let result = self.store.write(envelopes).and_then(|()| self.store.sync());
        metrics::histogram!(crate::metrics::APPEND_BATCH_EVENTS).record(envelopes.len() as f64);
        match result {
            Ok(()) => {
                metrics::histogram!(crate::metrics::APPEND_DURABLE_SECONDS).record(started.elapsed().as_secs_f64());
                metrics::counter!(crate::metrics::LOG_EVENTS_TOTAL).increment(envelopes.len() as u64);
                // The head moves first: whoever is acknowledged sees a head at least at its seq.
                if let Some(last) = envelopes.last() {
                    self.head.send_replace(last.seq);
                }
                for (envelope, reply) in envelopes.drain(..).zip(replies.drain(..)) {
                    let _ = reply.send(Ok(envelope));
                }
            }
            Err(error) => {
                // Nothing of this group is acknowledged. Its seqs stay consumed: if sled kept
                // some of it in memory and writes it later, no later event may reuse a seq.
                tracing::error!(error = %error, events = envelopes.len(), "log group commit failed");
                metrics::counter!(crate::metrics::APPEND_FAILURES_TOTAL).increment(1);
                let error = Arc::new(error);
                envelopes.clear();
                for reply in replies.drain(..) {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}
