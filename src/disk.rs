//! Disk thresholds on the filesystems of the data folder and the cold tier: healthy, warning,
//! critical, danger (by used fraction, as `df` counts it). The worst folder decides. Warning is
//! logged and exported; critical makes the janitor run now instead of at its slot; danger
//! refuses new uploads (507 `insufficient_storage`) and makes the server not ready, while chat
//! keeps working. Nothing is deleted ahead of its rule.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use crate::config::DiskConfig;

/// How full the fullest watched filesystem is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskState {
    Healthy = 0,
    Warning = 1,
    Critical = 2,
    Danger = 3,
}

impl DiskState {
    pub fn as_str(self) -> &'static str {
        match self {
            DiskState::Healthy => "healthy",
            DiskState::Warning => "warning",
            DiskState::Critical => "critical",
            DiskState::Danger => "danger",
        }
    }

    fn from_u8(n: u8) -> Self {
        match n {
            1 => DiskState::Warning,
            2 => DiskState::Critical,
            3 => DiskState::Danger,
            _ => DiskState::Healthy,
        }
    }
}

impl DiskConfig {
    /// The state of a filesystem this full.
    pub fn state_of(&self, used: f64) -> DiskState {
        if used > self.danger {
            DiskState::Danger
        } else if used >= self.critical {
            DiskState::Critical
        } else if used >= self.warning {
            DiskState::Warning
        } else {
            DiskState::Healthy
        }
    }
}

/// The last measurement, shared; cheap to clone.
#[derive(Debug, Clone)]
pub struct Disk {
    state: Arc<AtomicU8>,
    /// The fullest folder's used fraction, as f64 bits; `u64::MAX` when never measured.
    used: Arc<AtomicU64>,
    folders: Arc<Vec<(&'static str, PathBuf)>>,
    pub config: DiskConfig,
    /// The data folder's reserve file and the floors it is kept above (see `space`).
    reserve: Option<(crate::space::Reserve, crate::space::Floors)>,
}

impl Disk {
    /// Watches `folders` (name, path): the data folder, and the cold tier's if any.
    pub fn new(folders: Vec<(&'static str, PathBuf)>, config: DiskConfig) -> Self {
        Self {
            state: Arc::new(AtomicU8::new(0)),
            used: Arc::new(AtomicU64::new(u64::MAX)),
            folders: Arc::new(folders),
            config,
            reserve: None,
        }
    }

    /// Keeps `reserve` written whenever the disk has room for it above `floors`, and asks the
    /// janitor to run when the disk is below the log floor (it releases the reserve to work).
    pub fn with_reserve(mut self, reserve: crate::space::Reserve, floors: crate::space::Floors) -> Self {
        self.reserve = Some((reserve, floors));
        self
    }

    /// Writes the reserve again if there is room (blocking). True when the disk is below the
    /// log floor.
    fn tend_reserve(&self) -> bool {
        let Some((reserve, floors)) = &self.reserve else { return false };
        match reserve.restore(*floors) {
            Ok(true) => tracing::info!(bytes = crate::space::RESERVE_BYTES, "reserve file written"),
            Ok(false) => {}
            Err(error) => tracing::warn!(error = %error, "the reserve file could not be written"),
        }
        let data = self.folders.first().map(|(_, path)| path.as_path());
        data.and_then(crate::space::available).is_some_and(|free| free < floors.log)
    }

    /// The state as last measured.
    pub fn state(&self) -> DiskState {
        DiskState::from_u8(self.state.load(Ordering::Relaxed))
    }

    /// The fullest folder's used fraction as last measured.
    pub fn used(&self) -> Option<f64> {
        let bits = self.used.load(Ordering::Relaxed);
        (bits != u64::MAX).then(|| f64::from_bits(bits))
    }

    /// Measures every folder now (blocking: call from a blocking thread), records and exports
    /// the result, and returns the state.
    pub fn measure(&self) -> DiskState {
        let mut worst: Option<f64> = None;
        for (name, path) in self.folders.iter() {
            if let Some(used) = crate::metrics::disk_used_ratio(path) {
                metrics::gauge!(crate::metrics::DISK_USED_RATIO, "folder" => *name).set(used);
                worst = Some(worst.map_or(used, |w: f64| w.max(used)));
            }
        }
        let Some(used) = worst else { return self.state() };
        let state = self.config.state_of(used);
        self.used.store(used.to_bits(), Ordering::Relaxed);
        self.state.store(state as u8, Ordering::Relaxed);
        metrics::gauge!(crate::metrics::DISK_STATE).set(state as u8 as f64);
        state
    }

    /// Measures every `check_every`; says when the state changes, and calls `critical` (the
    /// server has it ask the janitor to run) when it is critical or worse, or below the log's
    /// floor, at most once per `janitor_min_interval`.
    pub async fn watch(self, critical: impl Fn() + Send + 'static, mut stopping: watch::Receiver<bool>) {
        let mut last = DiskState::Healthy;
        let mut janitor_asked: Option<Instant> = None;
        loop {
            let this = self.clone();
            let (state, below_floor) = tokio::task::spawn_blocking(move || (this.measure(), this.tend_reserve()))
                .await
                .unwrap_or((last, false));
            let used = self.used().unwrap_or(0.0) * 100.0;
            if state != last {
                match state {
                    DiskState::Healthy => tracing::info!(used_percent = used, "disk healthy again"),
                    DiskState::Warning => tracing::warn!(used_percent = used, "disk state: warning"),
                    DiskState::Critical => {
                        tracing::error!(used_percent = used, "disk state: critical; the janitor runs now")
                    }
                    DiskState::Danger => tracing::error!(
                        used_percent = used,
                        "disk state: danger; uploads are refused until space is freed (chat continues)"
                    ),
                }
                last = state;
            }
            let due = janitor_asked.is_none_or(|at| at.elapsed() >= self.config.janitor_min_interval);
            if (state >= DiskState::Critical || below_floor) && due {
                janitor_asked = Some(Instant::now());
                critical();
            }
            tokio::select! {
                _ = tokio::time::sleep(self.config.check_every) => {}
                _ = stopping.wait_for(|stop| *stop) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_split_the_range_as_configured() {
        let config = DiskConfig::default();
        let states: Vec<DiskState> =
            [0.10, 0.50, 0.74, 0.75, 0.85, 0.851].iter().map(|&u| config.state_of(u)).collect();
        use DiskState::*;
        assert_eq!(states, [Healthy, Warning, Warning, Critical, Critical, Danger]);
    }
}
