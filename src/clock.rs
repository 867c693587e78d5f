//! Wall-clock time for due times (session expiry and purge), injectable so that tests can move
//! time forward instead of waiting a day.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::future::BoxFuture;
use tokio::sync::Notify;

/// A duration in whole milliseconds, saturating rather than truncating: a configured
/// `"18446744073709552s"` once truncated to 384 ms and expired every message.
pub fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

/// Milliseconds since the Unix epoch, and waiting until one.
pub trait Clock: Send + Sync + std::fmt::Debug {
    fn now_ms(&self) -> u64;
    /// Resolves once `now_ms() >= at_ms`.
    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()>;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
    }

    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()> {
        let wait = at_ms.saturating_sub(self.now_ms());
        Box::pin(async move {
            // Re-check after waking: the wall clock may have been set back meanwhile.
            let mut wait = wait;
            while wait > 0 {
                tokio::time::sleep(Duration::from_millis(wait)).await;
                wait = at_ms.saturating_sub(SystemClock.now_ms());
            }
        })
    }
}

/// A clock that moves only when told to, for tests.
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicU64>,
    moved: Arc<Notify>,
}

impl ManualClock {
    pub fn new(start_ms: u64) -> Self {
        Self { now: Arc::new(AtomicU64::new(start_ms)), moved: Arc::new(Notify::new()) }
    }

    /// Moves time forward and wakes every sleeper that is now due.
    pub fn advance(&self, by: Duration) {
        self.now.fetch_add(millis(by), Ordering::SeqCst);
        self.moved.notify_waiters();
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> u64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, at_ms: u64) -> BoxFuture<'static, ()> {
        let (now, moved) = (self.now.clone(), self.moved.clone());
        Box::pin(async move {
            loop {
                let notified = moved.notified();
                if now.load(Ordering::SeqCst) >= at_ms {
                    return;
                }
                notified.await;
            }
        })
    }
}
