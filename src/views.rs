//! The operator's views of a running server: the JSON answers of `/api/status` and
//! `/api/janitor/runs` as typed structs. The HTTP handlers serialize them and `roomlog status`
//! and `roomlog janitor` read them back, so that a field renamed on one side breaks the build
//! or a test instead of printing `?` (issue 15). `/api/janitor/run` answers with
//! [`JanitorRan`] itself, `/api/janitor/plan` with [`crate::janitor::Plan`] and `/api/scrub`
//! with [`crate::blob::service::ScrubReport`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::disk::{DiskConfig, DiskState};
use crate::event::JanitorRan;
use crate::growth::GrowthReport;
use crate::recent_errors::RecentError;

/// `GET /api/status`: how the server is, for `roomlog status` and the admin page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    /// The server's version (`CARGO_PKG_VERSION`).
    pub version: String,
    pub uptime_seconds: u64,
    /// The address it listens on.
    pub listen: String,
    /// Its data folder.
    pub data: String,
    /// What `/readyz` says: ready when `not_ready_because` is empty.
    pub ready: bool,
    pub not_ready_because: Vec<String>,
    pub log: LogStatus,
    /// Each projection, by name.
    pub projections: BTreeMap<String, ProjectionStatus>,
    pub search: SearchStatus,
    pub rooms_active: usize,
    pub connections_open: usize,
    /// The last warnings and errors, oldest first.
    pub recent_errors: Vec<RecentError>,
    /// What the server repaired or moved as it started, in a sentence each.
    pub recovered_at_start: Vec<String>,
    /// On a cluster's log (`log.backend = "jetstream"`): this node's link to it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterStatus>,
}

/// A cluster node's part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// Whether it reaches NATS now.
    pub connected: bool,
    /// Records of the stream not yet in its copy of the log.
    pub lag_records: u64,
    /// The one-node-at-a-time work it runs now (`sessions.sweeper`, `janitor.schedule`).
    pub leases_held: Vec<String>,
}

/// The log's part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogStatus {
    pub head_seq: u64,
    pub disk_bytes: u64,
}

/// One projection's part of [`Status`] (and of `/readyz`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProjectionStatus {
    /// The last seq it applied.
    pub applied_seq: u64,
    /// How far it is behind the log's head.
    pub lag_events: u64,
    /// False when it stopped (a failure it could not get past).
    pub running: bool,
}

/// The search index's part of [`Status`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SearchStatus {
    pub documents: u64,
    pub disk_bytes: u64,
}

/// `GET /api/janitor/runs`: the last runs, newest first.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JanitorRuns {
    pub runs: Vec<JanitorRunRecord>,
}

/// One run of [`JanitorRuns`]: its record, and the seq of the log record that holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JanitorRunRecord {
    pub seq: u64,
    #[serde(flatten)]
    pub ran: JanitorRan,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::RuleTally;

    /// Each run of `/api/janitor/runs` is the run's record with its `seq` beside its fields, as
    /// the admin page and `roomlog janitor runs --json` readers expect, and reads back as it was.
    #[test]
    fn a_janitor_run_record_is_the_run_with_its_seq_beside_it() {
        let ran = JanitorRan {
            run: 3,
            trigger: "manual".to_owned(),
            started_at_unix_ms: 1_000,
            finished_at_unix_ms: 2_500,
            outcome: "succeeded".to_owned(),
            error: None,
            rules: vec![RuleTally { rule: "orphans".to_owned(), items: 2, bytes: 10 }],
            failed: Vec::new(),
            failures: Vec::new(),
        };
        let runs = JanitorRuns { runs: vec![JanitorRunRecord { seq: 42, ran }] };
        let json = serde_json::to_value(&runs).expect("serializes");
        assert_eq!((&json["runs"][0]["seq"], &json["runs"][0]["run"]), (&serde_json::json!(42), &serde_json::json!(3)));
        assert_eq!(json["runs"][0]["rules"][0]["rule"], "orphans");
        assert_eq!(serde_json::from_value::<JanitorRuns>(json).expect("reads back"), runs);
    }
}

/// `GET /api/storage`: what is stored and where, measured when asked (`roomlog stats`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Storage {
    pub disk_state: DiskState,
    /// The fullest watched filesystem's used fraction; `None` before the first measurement.
    pub disk_used_ratio: Option<f64>,
    pub thresholds: DiskConfig,
    /// Bytes of the files each part is made of, as on disk now (`log`, `projections`,
    /// `search_index`, `quarantine`, `files_hot`, `files_cold`).
    pub on_disk: BTreeMap<String, u64>,
    /// Content files (each stored once per hash) per tier: count and bytes.
    pub content: BTreeMap<String, PrefixTotal>,
    /// Keys per `prefix/tier`; a key's bytes count once per key, even when content is shared.
    pub keys: BTreeMap<String, PrefixTotal>,
    /// Per room: messages kept and the text they store.
    pub messages: BTreeMap<String, RoomTotal>,
    /// Sessions per state (`active`, `expired`, ...).
    pub sessions: BTreeMap<String, u64>,
    /// Growth per day over the last 7 and 30 days, and days until each disk threshold.
    pub growth: GrowthReport,
}

/// Keys (or content files) and their bytes.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PrefixTotal {
    pub keys: u64,
    pub bytes: u64,
}

/// Messages a room keeps and the text they store.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomTotal {
    pub messages: u64,
    pub bytes: u64,
}
