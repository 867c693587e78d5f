//! A seam for crash tests: with `ROOMLOG_FAULT_PAUSE=<point>` in its environment, the server
//! stops for good when it reaches that point, after saying so on stderr, so that a test can
//! kill -9 it exactly there. Without the variable (always, in production) nothing happens.
//!
//! Points: `tier-move:copying` (half way through copying content to another tier),
//! `tier-move:copied` (the copy is complete and checked, nothing recorded yet),
//! `tier-move:recorded` (the move is in the log, the source copy not yet removed).
//!
//! [`fail_once`] is the in-process counterpart: a test arms a point and the code there returns
//! an error once (`janitor:item`, before the janitor applies an item; `log:commit`, before the
//! log writer's fsync of a group; `files:shared-read`, a read of the cluster's shared bucket
//! breaking off; `jetstream:files-bucket`, a node's request for the shared bucket going
//! unanswered as it starts), and [`hold_once`] makes the next pass through a point wait
//! until the test lets it go (`janitor:planned`, a janitor run planned and about to apply: a
//! lease holder paused mid-run).

/// The environment variable naming the point to stop at.
pub const ENV: &str = "ROOMLOG_FAULT_PAUSE";

/// Stops here forever if the environment names `point`.
pub async fn pause(point: &str) {
    if std::env::var(ENV).is_ok_and(|p| p == point) {
        eprintln!("roomlog fault: paused at {point}");
        std::future::pending::<()>().await;
    }
}

/// [`pause`] for blocking code: the thread stops here for good if the environment names
/// `point`. Points: `log-rewrite:copied` (an online rewrite of the log has its copy synced,
/// appends held off, nothing renamed), `log-swap:moved-aside` (a compaction or rewrite moved
/// the old log aside, the new one not yet in place), `log-rewrite:swapped` (both renames and
/// the folder's fsync done, the new log not yet opened), `log-rewrite:reopened` (the new log
/// open and taking appends, the old one not yet deleted).
pub fn pause_blocking(point: &str) {
    if std::env::var(ENV).is_ok_and(|p| p == point) {
        eprintln!("roomlog fault: paused at {point}");
        loop {
            std::thread::park();
        }
    }
}

/// Points armed by [`fail_once`], each with the passes still to let through: one entry per point,
/// so that tests running side by side in one process can arm different points.
static ARMED: std::sync::Mutex<Vec<(String, u64)>> = std::sync::Mutex::new(Vec::new());

/// A failure injected at a point, once, by a test in this process.
#[derive(Debug, thiserror::Error)]
#[error("injected failure at {0}")]
pub struct Injected(String);

/// Makes the `(after + 1)`-th pass through `point` fail, once (tests in this process only).
pub fn fail_once(point: &str, after: u64) {
    if let Ok(mut armed) = ARMED.lock() {
        armed.retain(|(p, _)| p != point);
        armed.push((point.to_owned(), after));
    }
}

/// Whether a point armed by [`fail_once`] is still waiting for its pass (a test checks that
/// the code it meant to fail went through the point).
pub fn still_armed(point: &str) -> bool {
    ARMED.lock().is_ok_and(|armed| armed.iter().any(|(p, _)| p == point))
}

/// Fails here if a test armed this point and its count is reached.
pub fn fail(point: &str) -> Result<(), Injected> {
    let Ok(mut armed) = ARMED.lock() else { return Ok(()) };
    let Some(at) = armed.iter().position(|(p, _)| p == point) else { return Ok(()) };
    match &mut armed[at].1 {
        0 => {
            armed.remove(at);
            Err(Injected(point.to_owned()))
        }
        n => {
            *n -= 1;
            Ok(())
        }
    }
}

type HeldPoint = (String, tokio::sync::oneshot::Sender<()>, tokio::sync::oneshot::Receiver<()>);

static HELD: std::sync::Mutex<Option<HeldPoint>> = std::sync::Mutex::new(None);

/// A test's hold on a point (see [`hold_once`]).
#[derive(Debug)]
pub struct Hold {
    /// Fires when the code reaches the point (and waits there).
    pub reached: tokio::sync::oneshot::Receiver<()>,
    release: tokio::sync::oneshot::Sender<()>,
}

impl Hold {
    /// Lets the code go on from the point (dropping the hold does too).
    pub fn release(self) {
        let _ = self.release.send(());
    }
}

/// Makes the next pass through `point` (in this process) wait until the returned hold is
/// released or dropped.
pub fn hold_once(point: &str) -> Hold {
    let (reached_tx, reached) = tokio::sync::oneshot::channel();
    let (release, release_rx) = tokio::sync::oneshot::channel();
    if let Ok(mut held) = HELD.lock() {
        *held = Some((point.to_owned(), reached_tx, release_rx));
    }
    Hold { reached, release }
}

/// Waits here if a test holds this point (once); otherwise goes on at once.
pub async fn hold(point: &str) {
    let taken = match HELD.lock() {
        Ok(mut held) if held.as_ref().is_some_and(|(p, _, _)| p == point) => held.take(),
        _ => None,
    };
    if let Some((_, reached, release)) = taken {
        let _ = reached.send(());
        let _ = release.await;
    }
}
