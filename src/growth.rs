//! How fast the data grows: one sample a day (the day's latest, taken by the disk watcher)
//! of the bytes roomlog keeps in its data folder and of the data folder's filesystem, in a
//! table of the state store (`state::Table`); from them, growth per day over the last 7 and 30 days and the
//! days until each disk threshold at that rate.
//!
//! The samples are measurements, not events: they describe the disk, which the log does not.
//! A day without a running server has no sample; rates span the days between the samples
//! they compare.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::disk::DiskConfig;
use crate::state::{StateError, Table};

const TREE: &str = "storage.daily";
const DAY_MS: u64 = 24 * 3600 * 1000;

/// One measurement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sample {
    pub at_unix_ms: u64,
    /// Bytes of the files under the data folder (the log, the index, the hot tier, backups).
    pub roomlog_bytes: u64,
    /// The data folder's filesystem, as `df` counts it: used, and used plus available.
    pub fs_used_bytes: u64,
    pub fs_size_bytes: u64,
}

/// Growth per day of both figures over a span.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Rate {
    pub days: f64,
    pub roomlog_bytes_per_day: f64,
    pub fs_used_bytes_per_day: f64,
}

/// What `GET /api/storage` shows of growth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GrowthReport {
    pub days_sampled: usize,
    pub latest: Option<Sample>,
    pub last_7_days: Option<Rate>,
    pub last_30_days: Option<Rate>,
    /// Per threshold (`warning`, `critical`, `danger`): days until the filesystem reaches it at
    /// the 7-day rate (the 30-day one while there is no 7-day span); 0 when already there;
    /// `null` when it is not growing or there is no rate yet.
    pub days_until: BTreeMap<String, Option<f64>>,
}

/// The samples; cheap to clone.
#[derive(Debug, Clone)]
pub struct Growth {
    table: Table,
}

impl Growth {
    pub fn open(db: &crate::state::StateDb) -> Result<Self, StateError> {
        Ok(Self { table: db.table(TREE)? })
    }

    /// Records `sample` as its day's (replacing an earlier one of the same day).
    pub fn record(&self, sample: &Sample) -> Result<(), StateError> {
        self.table.put(sample.at_unix_ms / DAY_MS, sample)
    }

    /// Every day's sample, oldest first.
    pub fn samples(&self) -> Result<Vec<Sample>, StateError> {
        self.table.values()
    }

    /// Growth and days until each threshold, as of the latest sample.
    pub fn report(&self, thresholds: &DiskConfig) -> Result<GrowthReport, StateError> {
        Ok(report(&self.samples()?, thresholds))
    }
}

/// The rate between the latest sample and the oldest one at most `days` before it, if they are
/// at least a day apart.
fn rate(samples: &[Sample], days: u64) -> Option<Rate> {
    let latest = samples.last()?;
    let oldest = samples.iter().find(|s| latest.at_unix_ms.saturating_sub(s.at_unix_ms) <= days * DAY_MS)?;
    let span = latest.at_unix_ms.saturating_sub(oldest.at_unix_ms) as f64 / DAY_MS as f64;
    (span >= 1.0).then(|| Rate {
        days: span,
        roomlog_bytes_per_day: (latest.roomlog_bytes as f64 - oldest.roomlog_bytes as f64) / span,
        fs_used_bytes_per_day: (latest.fs_used_bytes as f64 - oldest.fs_used_bytes as f64) / span,
    })
}

/// See [`Growth::report`]; `samples` oldest first.
pub fn report(samples: &[Sample], thresholds: &DiskConfig) -> GrowthReport {
    let (last_7_days, last_30_days) = (rate(samples, 7), rate(samples, 30));
    let latest = samples.last().copied();
    let per_day = last_7_days.or(last_30_days).map(|r| r.fs_used_bytes_per_day);
    let days_until =
        [("warning", thresholds.warning), ("critical", thresholds.critical), ("danger", thresholds.danger)]
            .into_iter()
            .map(|(name, ratio)| {
                let days = match (latest, per_day) {
                    (Some(now), Some(per_day)) => {
                        let left = ratio * now.fs_size_bytes as f64 - now.fs_used_bytes as f64;
                        if left <= 0.0 {
                            Some(0.0)
                        } else {
                            (per_day > 0.0).then(|| left / per_day)
                        }
                    }
                    _ => None,
                };
                (name.to_owned(), days)
            })
            .collect();
    GrowthReport { days_sampled: samples.len(), latest, last_7_days, last_30_days, days_until }
}

/// Measures the data folder now (blocking: it walks the folder).
pub fn measure(data: &std::path::Path, now_ms: u64) -> Option<Sample> {
    let (fs_used_bytes, fs_size_bytes) = crate::metrics::disk_usage(data)?;
    Some(Sample { at_unix_ms: now_ms, roomlog_bytes: crate::metrics::disk_bytes(data), fs_used_bytes, fs_size_bytes })
}

#[cfg(test)]
mod tests {
    use super::*;

    const GB: u64 = 1_000_000_000;

    fn day(n: u64, used_gb: u64, roomlog_gb: u64) -> Sample {
        Sample {
            at_unix_ms: 1_800_000_000_000 + n * DAY_MS,
            roomlog_bytes: roomlog_gb * GB,
            fs_used_bytes: used_gb * GB,
            fs_size_bytes: 100 * GB,
        }
    }

    #[test]
    fn a_steady_growth_gives_its_rate_and_the_days_left_to_each_threshold() {
        // 30 days: 20 GB used growing 1 GB a day, of which roomlog's own grows 0.5 GB a day.
        let samples: Vec<Sample> = (0..=30).map(|n| day(n, 20 + n, 10 + n / 2)).collect();
        let r = report(&samples, &DiskConfig::default());
        let week = r.last_7_days.expect("7-day rate");
        assert_eq!((week.days, week.fs_used_bytes_per_day), (7.0, GB as f64));
        assert!((week.roomlog_bytes_per_day - 0.5 * GB as f64).abs() < 0.2 * GB as f64);
        assert_eq!(r.last_30_days.expect("30-day rate").days, 30.0);
        // 50 GB used now: warning (50 %) is reached; critical at 75 GB is 25 days away.
        assert_eq!(r.days_until["warning"], Some(0.0));
        assert_eq!(r.days_until["critical"], Some(25.0));
        assert_eq!(r.days_until["danger"], Some(35.0));
    }

    #[test]
    fn no_rate_before_a_day_of_samples_and_no_forecast_when_shrinking() {
        let r = report(&[day(0, 20, 10)], &DiskConfig::default());
        assert_eq!((r.last_7_days, r.days_until["danger"]), (None, None));
        let shrinking = report(&[day(0, 40, 10), day(3, 30, 5)], &DiskConfig::default());
        assert_eq!(shrinking.last_7_days.map(|r| r.days), Some(3.0));
        assert_eq!(shrinking.days_until["danger"], None, "not growing: never");
    }

    #[test]
    fn a_sample_replaces_the_earlier_one_of_its_day() {
        let db = crate::state::StateDb::temporary().expect("temporary store");
        let growth = Growth::open(&db).expect("open");
        growth.record(&day(0, 20, 10)).expect("record");
        let mut later = day(0, 21, 11);
        later.at_unix_ms += 3600 * 1000;
        growth.record(&later).expect("record");
        growth.record(&day(1, 22, 12)).expect("record");
        assert_eq!(growth.samples().expect("samples"), vec![later, day(1, 22, 12)]);
    }
}
