//! Projections: folds over the log that serve reads.
//!
//! A [`Projection`] stores its state and its checkpoint (the last applied seq) in one atomic
//! write, so after a crash it resumes from the checkpoint and never applies an event twice or
//! skips one (DESIGN.md, "Projections"). A [`Runner`] follows the log head and feeds it;
//! [`rebuild`] drops a projection's state and replays the whole log into it. [`Kind`] is the one
//! list of them.

pub mod files;
pub mod history;
pub mod registry;
pub mod search;
pub mod sessions;
#[cfg(test)]
pub(crate) mod testing;

pub use registry::Kind;

use std::time::Instant;

use tokio::sync::watch;

use crate::event::Envelope;
use crate::log::{EventLog, LogError};

/// A key and its value, as a projection's tree holds them.
pub use crate::durable::Entry;

/// What the projections kept in one sled tree share: the checkpoint under key `c`, stored as a
/// big-endian u64 in the same batch as the state, and how a tree is reset.
pub(crate) mod tree {
    use super::ProjectionError;

    pub const CHECKPOINT_KEY: &[u8] = b"c";

    /// A big-endian u64 value (0 if malformed).
    pub fn u64_of(bytes: &[u8]) -> u64 {
        bytes.try_into().map(u64::from_be_bytes).unwrap_or(0)
    }

    /// Every entry of `tree` except the checkpoint, for comparing a rebuilt projection with
    /// the live one.
    pub fn dump(tree: &sled::Tree) -> Result<Vec<super::Entry>, ProjectionError> {
        tree.iter()
            .filter(|item| !matches!(item, Ok((k, _)) if k.as_ref() == CHECKPOINT_KEY))
            .map(|item| item.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(ProjectionError::from))
            .collect()
    }

    /// The checkpoint stored in `tree` (0 before the first batch).
    pub fn checkpoint(tree: &sled::Tree) -> Result<u64, ProjectionError> {
        Ok(tree.get(CHECKPOINT_KEY)?.map_or(0, |v| u64_of(&v)))
    }

    /// Writes a batch's changes together with its checkpoint (the seq of its last event), in
    /// one atomic sled batch: a projection's state and checkpoint never disagree.
    pub fn commit(
        tree: &sled::Tree,
        mut write: sled::Batch,
        batch: &[crate::event::Envelope],
    ) -> Result<(), ProjectionError> {
        if let Some(last) = batch.last() {
            write.insert(CHECKPOINT_KEY, &last.seq.to_be_bytes());
        }
        tree.apply_batch(write)?;
        Ok(())
    }

    /// Moves the checkpoint past a batch that changed nothing in `tree`, by a plain insert:
    /// there is no state to keep it consistent with, and a sled batch would make sled write
    /// and wait on its data file at once (a chat message's batch used to cost the state
    /// database one such write per projection that ignores messages). A crash that loses it
    /// replays events that change nothing here.
    pub fn advance(tree: &sled::Tree, through: Option<u64>) -> Result<(), ProjectionError> {
        if let Some(seq) = through {
            tree.insert(CHECKPOINT_KEY, &seq.to_be_bytes())?;
        }
        Ok(())
    }

    /// Removes all state and the checkpoint, durably.
    pub fn reset(tree: &sled::Tree) -> Result<(), ProjectionError> {
        tree.clear()?;
        tree.flush()?;
        Ok(())
    }

    /// The key under which a tree whose layout changed records its format.
    pub const FORMAT_KEY: &[u8] = b"v";

    /// For a tree that records its format: writes `format` into an empty tree; for a tree of
    /// another (`first` names the one that had no format key), why it must be rebuilt, which
    /// its `Projection::checkpoint` answers with `ProjectionError::Outdated`.
    pub fn outdated(tree: &sled::Tree, what: &str, format: u8, first: &str) -> Result<Option<String>, ProjectionError> {
        if tree.is_empty() {
            tree.insert(FORMAT_KEY, &[format])?;
        }
        let found = tree.get(FORMAT_KEY)?;
        Ok((found.as_deref() != Some(&[format][..])).then(|| {
            let found = found.and_then(|v| v.first().copied()).map_or(first.to_owned(), |f| f.to_string());
            format!("{what} of format {found}, not {format}")
        }))
    }

    /// [`reset`], then records `format`: the tree is empty and of this build's format.
    pub fn reset_to(tree: &sled::Tree, format: u8) -> Result<(), ProjectionError> {
        reset(tree)?;
        tree.insert(FORMAT_KEY, &[format])?;
        Ok(())
    }
}

/// Events read from the log and applied in one atomic write. Large enough to amortise sled's
/// per-batch cost during a rebuild; small enough that one batch stays a few MiB.
pub const APPLY_BATCH_MAX: usize = 4096;

/// What can go wrong in a projection. The edges report it as "not ready" (HTTP 503) and the
/// runner stops with the error logged: a projection never skips an event it cannot apply.
#[derive(Debug, thiserror::Error)]
pub enum ProjectionError {
    /// The projection's own storage failed.
    #[error("projection storage: {0}")]
    Storage(#[from] sled::Error),
    /// A table of the state store failed.
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    /// Reading the log failed, or a record does not decode.
    #[error(transparent)]
    Log(#[from] LogError),
    /// The search index failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The projection has applied events past the log's head: the log lost records, or the
    /// state belongs to another log. Start-up rebuilds it from the log.
    #[error("the projection's checkpoint {checkpoint} is past the log's head {head}")]
    Ahead { checkpoint: u64, head: u64 },
    /// The background task running the projection panicked or was cancelled.
    #[error("projection task: {0}")]
    Task(String),
    /// The state was written in a format this build no longer reads. Start-up rebuilds it from
    /// the log.
    #[error("stored in an earlier format: {0}")]
    Outdated(String),
}

/// A fold over the log with its own checkpoint.
pub trait Projection: Send + 'static {
    /// The name an operator uses (`roomlog rebuild NAME`) and metrics carry.
    fn name(&self) -> &'static str;
    /// The seq of the last event applied (0 before the first).
    fn checkpoint(&self) -> Result<u64, ProjectionError>;
    /// Applies events that directly follow the checkpoint, and moves the checkpoint to the
    /// last of them, in one atomic write.
    fn apply(&mut self, batch: &[Envelope]) -> Result<(), ProjectionError>;
    /// Removes all state and the checkpoint.
    fn reset(&mut self) -> Result<(), ProjectionError>;
    /// The seq through which reads see the state. A projection that makes its writes
    /// visible in batches (the search index) trails its checkpoint; others equal it.
    fn visible(&self) -> Result<u64, ProjectionError> {
        self.checkpoint()
    }
    /// When writes applied but not yet visible are due to be made so, if any are pending.
    fn flush_due(&self) -> Option<Instant> {
        None
    }
    /// Makes every applied write durable and visible now.
    fn flush(&mut self) -> Result<(), ProjectionError> {
        Ok(())
    }
}

/// Applies every event after the projection's checkpoint up to the log's current head.
/// Returns the number of events applied. Blocking: run it on a blocking thread.
pub fn catch_up<P: Projection>(
    log: &EventLog,
    projection: &mut P,
    mut progress: impl FnMut(u64),
) -> Result<u64, ProjectionError> {
    let mut applied = 0;
    loop {
        let from = projection.checkpoint()? + 1;
        let batch = log.read_range_blocking(from, APPLY_BATCH_MAX)?;
        if batch.is_empty() {
            return Ok(applied);
        }
        if batch.len() == APPLY_BATCH_MAX {
            return apply_read_ahead(log, projection, batch, applied, progress);
        }
        projection.apply(&batch)?;
        applied += batch.len() as u64;
        progress(applied);
    }
}

/// Catches up a projection that is a full batch or more behind (a rebuild, a start-up after
/// downtime): a second thread reads and decodes the next batch while this one applies the
/// last, which is most of the time of a projection that writes little. A follower a few
/// events behind never gets here, so it starts no thread.
fn apply_read_ahead<P: Projection>(
    log: &EventLog,
    projection: &mut P,
    first: Vec<Envelope>,
    mut applied: u64,
    mut progress: impl FnMut(u64),
) -> Result<u64, ProjectionError> {
    let Some(after) = first.last().map(|e| e.seq) else { return Ok(applied) };
    // One batch read ahead: more would only hold memory while the projection is the slower.
    let (ahead, batches) = std::sync::mpsc::sync_channel::<Result<Vec<Envelope>, LogError>>(1);
    std::thread::scope(|scope| {
        scope.spawn(move || {
            let mut from = after + 1;
            loop {
                let batch = log.read_range_blocking(from, APPLY_BATCH_MAX);
                let next = batch.as_ref().ok().and_then(|b| b.last()).map(|e| e.seq + 1);
                // A send fails once the applying side stopped (done, or failed): so does this.
                if ahead.send(batch).is_err() {
                    return;
                }
                match next {
                    Some(seq) => from = seq,
                    None => return,
                }
            }
        });
        let mut batch = first;
        loop {
            projection.apply(&batch)?;
            applied += batch.len() as u64;
            progress(applied);
            batch = match batches.recv() {
                Ok(next) => next?,
                Err(_) => return Ok(applied), // the reader stopped: it found the end
            };
            if batch.is_empty() {
                return Ok(applied);
            }
        }
    })
}

/// Drops a projection's state and rebuilds it from the whole log; returns events applied
/// and the rate in events per second.
pub fn rebuild<P: Projection>(
    log: &EventLog,
    projection: &mut P,
    progress: impl FnMut(u64),
) -> Result<(u64, f64), ProjectionError> {
    let started = Instant::now();
    projection.reset()?;
    let applied = catch_up(log, projection, progress)?;
    projection.flush()?;
    let secs = started.elapsed().as_secs_f64().max(1e-9);
    Ok((applied, applied as f64 / secs))
}

/// Where a runner pauses for lack of space: below `floor` bytes free on the volume of `dir`.
#[derive(Debug, Clone)]
pub struct SpaceFloor {
    pub dir: std::path::PathBuf,
    pub floor: u64,
}

/// Consecutive failures after which a runner gives up: its storage keeps refusing (sled fails
/// until it is reopened), and only a restart of the process reopens it.
const FAILURES_MAX: u32 = 6;
/// The first wait after a failure, doubled after each (1 s, 2 s ... 32 s: about a minute).
const RETRY_FIRST: std::time::Duration = std::time::Duration::from_secs(1);
/// How often a paused runner looks at the disk again.
const SPACE_RECHECK: std::time::Duration = std::time::Duration::from_secs(1);

/// A projection kept up to date in the background, and the seq it has applied.
#[derive(Debug, Clone)]
pub struct Runner {
    name: &'static str,
    applied: watch::Receiver<u64>,
    /// Why it is not applying the log now (paused for space, retrying after a failure), if so.
    stalled: watch::Receiver<Option<String>>,
    /// Why it gave up for good, once it has: the server must restart.
    failed: watch::Receiver<Option<String>>,
}

impl Runner {
    /// Catches the projection up with the log, then follows the head in a background task,
    /// returned so that shutdown can wait for it (it ends once the log is closed). Catching up
    /// happens before this returns, so a server starts serving complete reads. Below `space`'s
    /// floor the follower pauses, and goes on by itself once there is room again.
    pub async fn start<P: Projection>(
        log: EventLog,
        mut projection: P,
        space: Option<SpaceFloor>,
    ) -> Result<(Self, tokio::task::JoinHandle<()>), ProjectionError> {
        let name = projection.name();
        let (projection, start) = tokio::task::spawn_blocking(move || {
            let result = catch_up(&log, &mut projection, |_| {})
                .and_then(|_| projection.flush())
                .and_then(|()| projection.visible());
            (projection, result.map(|visible| (log, visible)))
        })
        .await
        .map_err(|e| ProjectionError::Task(e.to_string()))?;
        let (log, checkpoint) = start?;
        let (applied_tx, applied) = watch::channel(checkpoint);
        let (stalled_tx, stalled) = watch::channel(None);
        let (failed_tx, failed) = watch::channel(None);
        let outputs = Follower { applied: applied_tx, stalled: stalled_tx, failed: failed_tx, space };
        let following = tokio::spawn(follow(log, projection, outputs));
        Ok((Self { name, applied, stalled, failed }, following))
    }

    /// The projection's name.
    pub fn name(&self) -> &'static str {
        self.name
    }

    /// The seq of the last event reads see.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// False once the runner has stopped (it gave up, or the log closed).
    pub fn is_running(&self) -> bool {
        self.applied.has_changed().is_ok()
    }

    /// Why it is not applying the log right now, if so (it goes on by itself).
    pub fn stalled(&self) -> Option<String> {
        self.stalled.borrow().clone()
    }

    /// Why it gave up for good, if it has.
    pub fn failed(&self) -> Option<String> {
        self.failed.borrow().clone()
    }

    /// Follows [`Self::failed`].
    pub fn watch_failed(&self) -> watch::Receiver<Option<String>> {
        self.failed.clone()
    }

    /// Waits until reads of the projection see `seq`; false if the runner has stopped first.
    pub async fn wait_applied(&self, seq: u64) -> bool {
        let mut applied = self.applied.clone();
        let reached = applied.wait_for(|&a| a >= seq).await.is_ok();
        reached
    }
}

/// What a follower reports, and where it pauses.
struct Follower {
    applied: watch::Sender<u64>,
    stalled: watch::Sender<Option<String>>,
    failed: watch::Sender<Option<String>>,
    space: Option<SpaceFloor>,
}

impl Follower {
    /// Bytes free if below the floor (the follower must not write now).
    fn short_of_space(&self) -> Option<u64> {
        let space = self.space.as_ref()?;
        crate::space::available(&space.dir).filter(|&free| free < space.floor)
    }
}

async fn follow<P: Projection>(log: EventLog, projection: P, out: Follower) {
    let name = projection.name();
    let mut head = log.watch_head();
    let mut projection = Some(projection);
    let mut position = *out.applied.borrow();
    let mut failures = 0u32;
    loop {
        let target = *head.borrow_and_update();
        let due = projection.as_ref().and_then(|p| p.flush_due());
        let step: Step = if position < target {
            Step::CatchUp
        } else {
            tokio::select! {
                changed = head.changed() => match changed {
                    Ok(()) => continue,
                    Err(_) => Step::Final, // the log closed: make pending writes durable, then stop
                },
                _ = sleep_until(due), if due.is_some() => Step::Flush,
            }
        };
        if !matches!(step, Step::Final) {
            if let Some(free) = out.short_of_space() {
                let floor = out.space.as_ref().map_or(0, |s| s.floor);
                if out.stalled.borrow().is_none() {
                    tracing::warn!(projection = name, free, floor, "projection paused: the disk is below its floor");
                }
                out.stalled.send_replace(Some(format!(
                    "paused: {free} bytes free, below the floor of {floor}; it goes on once space is freed"
                )));
                tokio::time::sleep(SPACE_RECHECK).await;
                continue;
            }
        }
        let Some(mut owned) = projection.take() else { return };
        let log_for_task = log.clone();
        let outcome = tokio::task::spawn_blocking(move || {
            let result = match step {
                Step::CatchUp => catch_up(&log_for_task, &mut owned, |_| {}).map(|_| ()),
                Step::Flush | Step::Final => owned.flush(),
            };
            let result = result.and_then(|()| Ok((owned.checkpoint()?, owned.visible()?)));
            (owned, result)
        })
        .await;
        match outcome {
            Ok((returned, Ok((checkpoint, visible)))) => {
                position = checkpoint;
                out.applied.send_replace(visible);
                if out.stalled.borrow().is_some() {
                    tracing::info!(projection = name, "projection applying the log again");
                    out.stalled.send_replace(None);
                }
                failures = 0;
                if matches!(step, Step::Final) {
                    return;
                }
                projection = Some(returned);
            }
            Ok((returned, Err(error))) => {
                failures += 1;
                if failures >= FAILURES_MAX {
                    let why = format!("it failed {failures} times in a row, the last: {error}");
                    tracing::error!(projection = name, error = %error, "projection gave up: the server must restart");
                    out.failed.send_replace(Some(why));
                    return;
                }
                let wait = RETRY_FIRST * 2u32.pow(failures - 1);
                tracing::error!(projection = name, error = %error, retry_in = ?wait, "projection could not apply the log; retrying");
                out.stalled.send_replace(Some(format!("retrying after a failure: {error}")));
                projection = Some(returned);
                tokio::time::sleep(wait).await;
            }
            Err(error) => {
                tracing::error!(projection = name, error = %error, "projection task failed: the server must restart");
                out.failed.send_replace(Some(format!("its task failed: {error}")));
                return;
            }
        }
    }
}

/// What the follower does next.
#[derive(Debug, Clone, Copy)]
enum Step {
    CatchUp,
    Flush,
    Final,
}

async fn sleep_until(due: Option<Instant>) {
    match due {
        Some(due) => tokio::time::sleep_until(due.into()).await,
        None => std::future::pending().await,
    }
}
