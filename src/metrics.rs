//! Prometheus metrics: every name in one place, described once, rendered on `/metrics`.
//!
//! Names follow `roomlog_<thing>_<unit>`; counters end in `_total`; units are base units
//! (seconds, bytes). No label takes unbounded values: labels are error codes, reasons and
//! projection names, never room or user names.
//!
//! The recorder is process-wide (the `metrics` facade has one global recorder), so servers
//! started in one process, as the integration tests do, share their counters.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub const CONNECTIONS_OPEN: &str = "roomlog_connections_open";
pub const CONNECTIONS_TOTAL: &str = "roomlog_connections_total";
pub const CONNECTIONS_REFUSED_TOTAL: &str = "roomlog_connections_refused_total";
pub const ACCEPT_ERRORS_TOTAL: &str = "roomlog_accept_errors_total";
pub const RATE_LIMITED_TOTAL: &str = "roomlog_frames_rate_limited_total";
pub const IDLE_CLOSED_TOTAL: &str = "roomlog_connections_idle_closed_total";
pub const JOINS_TOTAL: &str = "roomlog_joins_total";
pub const FRAME_ERRORS_TOTAL: &str = "roomlog_frame_errors_total";
pub const MESSAGES_APPENDED_TOTAL: &str = "roomlog_messages_appended_total";
pub const MESSAGES_DELIVERED_TOTAL: &str = "roomlog_messages_delivered_total";
pub const DELIVERY_SECONDS: &str = "roomlog_delivery_seconds";
pub const SLOW_CONSUMERS_TOTAL: &str = "roomlog_slow_consumers_disconnected_total";
pub const APPEND_BATCH_EVENTS: &str = "roomlog_append_batch_events";
pub const APPEND_DURABLE_SECONDS: &str = "roomlog_append_durable_seconds";
pub const APPEND_FAILURES_TOTAL: &str = "roomlog_append_failures_total";
pub const LOG_EVENTS_TOTAL: &str = "roomlog_log_events_total";
pub const LOG_HEAD_SEQ: &str = "roomlog_log_head_seq";
pub const LOG_DISK_BYTES: &str = "roomlog_log_disk_bytes";
pub const DISK_USED_RATIO: &str = "roomlog_disk_used_ratio";
pub const DISK_STATE: &str = "roomlog_disk_state";
pub const READY: &str = "roomlog_ready";
pub const PROJECTION_LAG_EVENTS: &str = "roomlog_projection_lag_events";
pub const ROOMS_ACTIVE: &str = "roomlog_rooms_active";
pub const ROOM_RESTARTS_TOTAL: &str = "roomlog_room_restarts_total";
pub const UPTIME_SECONDS: &str = "roomlog_uptime_seconds";
pub const BACKUP_LAST_SUCCESS_SECONDS: &str = "roomlog_backup_last_success_timestamp_seconds";
pub const BACKUP_FAILURES_TOTAL: &str = "roomlog_backup_failures_total";
pub const SESSION_DUE_APPLIED_TOTAL: &str = "roomlog_session_due_applied_total";
pub const SESSIONS: &str = "roomlog_sessions";
pub const SEARCH_SECONDS: &str = "roomlog_search_seconds";
pub const SEARCH_INDEX_DOCUMENTS: &str = "roomlog_search_index_documents";
pub const SEARCH_INDEX_DISK_BYTES: &str = "roomlog_search_index_disk_bytes";
pub const JANITOR_RUNS_TOTAL: &str = "roomlog_janitor_runs_total";
pub const JANITOR_RUN_SECONDS: &str = "roomlog_janitor_run_seconds";
pub const JANITOR_FREED_BYTES_TOTAL: &str = "roomlog_janitor_freed_bytes_total";
pub const FILE_TIER_MOVES_TOTAL: &str = "roomlog_file_tier_moves_total";
pub const FILE_SHARED_RELEASES_TOTAL: &str = "roomlog_file_shared_releases_total";
pub const FILES: &str = "roomlog_files";
pub const FILE_UPLOADS_TOTAL: &str = "roomlog_file_uploads_total";
pub const FILE_UPLOAD_BYTES_TOTAL: &str = "roomlog_file_upload_bytes_total";
pub const FILE_BYTES: &str = "roomlog_file_bytes";

/// How often the exporter's histograms are rolled over when nothing scrapes.
pub const UPKEEP_EVERY: Duration = Duration::from_secs(5);

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder on first use and returns the handle that renders it;
/// `None` if another recorder was installed first (then `/metrics` says so).
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let seconds = [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5];
            let events = [1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0];
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &seconds)
                .and_then(|b| b.set_buckets_for_metric(Matcher::Full(APPEND_BATCH_EVENTS.into()), &events));
            match builder.and_then(|b| b.install_recorder()) {
                Ok(handle) => {
                    describe();
                    zero();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(error = %error, "metrics recorder not installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    describe_gauge!(CONNECTIONS_OPEN, "WebSocket connections open now");
    describe_counter!(CONNECTIONS_TOTAL, "WebSocket connections accepted");
    describe_counter!(CONNECTIONS_REFUSED_TOTAL, "WebSocket connections refused, by reason");
    describe_counter!(ACCEPT_ERRORS_TOTAL, "TCP accepts that failed (out of file descriptors, most likely)");
    describe_counter!(RATE_LIMITED_TOTAL, "client frames refused for exceeding the per-connection rate");
    describe_counter!(IDLE_CLOSED_TOTAL, "WebSocket connections closed for sending nothing within the idle timeout");
    describe_counter!(JOINS_TOTAL, "room joins, resumes included");
    describe_counter!(FRAME_ERRORS_TOTAL, "client frames answered with an error, by code");
    describe_counter!(MESSAGES_APPENDED_TOTAL, "chat messages made durable");
    describe_counter!(MESSAGES_DELIVERED_TOTAL, "message frames queued to members");
    describe_histogram!(
        DELIVERY_SECONDS,
        Unit::Seconds,
        "from a post reaching its room to its fan-out, durable append included"
    );
    describe_counter!(SLOW_CONSUMERS_TOTAL, "connections dropped for falling behind their queue");
    describe_histogram!(APPEND_BATCH_EVENTS, Unit::Count, "events written per group commit");
    describe_histogram!(APPEND_DURABLE_SECONDS, Unit::Seconds, "write, flush and fsync of one group commit");
    describe_counter!(APPEND_FAILURES_TOTAL, "group commits that failed; their callers were told");
    describe_counter!(LOG_EVENTS_TOTAL, "events appended to the log by this process");
    describe_gauge!(LOG_HEAD_SEQ, "seq of the newest durable event");
    describe_gauge!(LOG_DISK_BYTES, Unit::Bytes, "bytes of the log database on disk");
    describe_gauge!(DISK_USED_RATIO, "used fraction of the filesystem holding a folder (data, cold)");
    describe_gauge!(DISK_STATE, "disk threshold state: 0 healthy, 1 warning, 2 critical, 3 danger");
    describe_gauge!(READY, "1 when /readyz would answer ready, else 0");
    describe_gauge!(PROJECTION_LAG_EVENTS, "events between the log head and what a projection applied");
    describe_gauge!(ROOMS_ACTIVE, "room actors running");
    describe_counter!(ROOM_RESTARTS_TOTAL, "room actors restarted after a failure");
    describe_gauge!(UPTIME_SECONDS, Unit::Seconds, "seconds since the server started");
    describe_gauge!(
        BACKUP_LAST_SUCCESS_SECONDS,
        Unit::Seconds,
        "Unix time of the last scheduled backup that succeeded"
    );
    describe_counter!(BACKUP_FAILURES_TOTAL, "scheduled backups that failed");
    describe_counter!(SESSION_DUE_APPLIED_TOTAL, "session expiries and purges handed out by the sweeper");
    describe_gauge!(SESSIONS, "sessions by state");
    describe_histogram!(SEARCH_SECONDS, Unit::Seconds, "message searches, query and snippets");
    describe_gauge!(SEARCH_INDEX_DOCUMENTS, "messages in the search index as last committed");
    describe_gauge!(SEARCH_INDEX_DISK_BYTES, Unit::Bytes, "bytes of the search index on disk");
    describe_counter!(
        JANITOR_RUNS_TOTAL,
        "janitor runs, by outcome (succeeded, partial, failed; fenced: refused by a cluster's log, another node ran since it began)"
    );
    describe_histogram!(JANITOR_RUN_SECONDS, Unit::Seconds, "duration of janitor runs");
    describe_counter!(JANITOR_FREED_BYTES_TOTAL, Unit::Bytes, "bytes of keys, content and orphans the janitor removed");
    describe_counter!(FILE_TIER_MOVES_TOTAL, "content moved between tiers, by target tier");
    describe_counter!(
        FILE_SHARED_RELEASES_TOTAL,
        "content no key named, deleted from a cluster's shared bucket by this node's reaper, by outcome (deleted; put_back: a key through another node named it meanwhile)"
    );
    describe_gauge!(FILES, "content files stored, by tier");
    describe_counter!(FILE_UPLOADS_TOTAL, "uploads stored under a key");
    describe_counter!(FILE_UPLOAD_BYTES_TOTAL, Unit::Bytes, "bytes of uploads stored under a key");
    describe_gauge!(FILE_BYTES, Unit::Bytes, "bytes of content stored, by tier");
}

/// Why a WebSocket connection is refused: the values of `reason` on [`CONNECTIONS_REFUSED_TOTAL`].
pub const REFUSED_REASONS: [&str; 4] =
    ["too_many_failures", "unauthorized", "too_many_from_address", "too_many_connections"];

/// How a janitor run ends: the values of `outcome` on [`JANITOR_RUNS_TOTAL`] (`fenced`: on a
/// cluster's log, refused because another node recorded a run after it began).
pub const JANITOR_OUTCOMES: [&str; 4] = ["succeeded", "partial", "failed", "fenced"];

/// Registers every counter, with every label value it can take, and every histogram, at 0.
///
/// A counter that first appears at 1 hides its first increase from PromQL (`increase()` needs
/// two samples), so the alert on the first failure after a start never fired (issue 17).
fn zero() {
    for name in [
        CONNECTIONS_TOTAL,
        ACCEPT_ERRORS_TOTAL,
        RATE_LIMITED_TOTAL,
        IDLE_CLOSED_TOTAL,
        JOINS_TOTAL,
        MESSAGES_APPENDED_TOTAL,
        MESSAGES_DELIVERED_TOTAL,
        SLOW_CONSUMERS_TOTAL,
        APPEND_FAILURES_TOTAL,
        LOG_EVENTS_TOTAL,
        ROOM_RESTARTS_TOTAL,
        BACKUP_FAILURES_TOTAL,
        SESSION_DUE_APPLIED_TOTAL,
        JANITOR_FREED_BYTES_TOTAL,
        FILE_UPLOADS_TOTAL,
        FILE_UPLOAD_BYTES_TOTAL,
    ] {
        metrics::counter!(name).increment(0);
    }
    for reason in REFUSED_REASONS {
        metrics::counter!(CONNECTIONS_REFUSED_TOTAL, "reason" => reason).increment(0);
    }
    for code in crate::error_code::ErrorCode::frame_codes() {
        metrics::counter!(FRAME_ERRORS_TOTAL, "code" => code.as_str()).increment(0);
    }
    for outcome in JANITOR_OUTCOMES {
        metrics::counter!(JANITOR_RUNS_TOTAL, "outcome" => outcome).increment(0);
    }
    for to in ["hot", "cold"] {
        metrics::counter!(FILE_TIER_MOVES_TOTAL, "to" => to).increment(0);
    }
    for outcome in ["deleted", "put_back"] {
        metrics::counter!(FILE_SHARED_RELEASES_TOTAL, "outcome" => outcome).increment(0);
    }
    // A histogram handle renders its buckets at 0 until the first sample.
    for name in [DELIVERY_SECONDS, APPEND_BATCH_EVENTS, APPEND_DURABLE_SECONDS, SEARCH_SECONDS, JANITOR_RUN_SECONDS] {
        let _ = metrics::histogram!(name);
    }
}

/// Used fraction (0 to 1) of the filesystem holding `dir`; `None` if it cannot be read.
pub fn disk_used_ratio(dir: &std::path::Path) -> Option<f64> {
    let (used, size) = disk_usage(dir)?;
    (size > 0).then(|| used as f64 / size as f64)
}

/// The filesystem of `dir` as `df` counts it for Use%: bytes used, and used plus available to
/// us. Blocks reserved for root (or held back by a quota) count neither as used nor as
/// available, so that a disk with a large reserve does not look fuller than it is.
pub fn disk_usage(dir: &std::path::Path) -> Option<(u64, u64)> {
    let total = fs2::total_space(dir).ok()?;
    let free = fs2::free_space(dir).ok()?;
    let available = fs2::available_space(dir).ok()?;
    let used = total.saturating_sub(free);
    Some((used, used + available))
}

/// Bytes the filesystem has allocated to the files under `dir` (not following links): what
/// `du` counts and deleting them gives back, holes in sparse files left out.
pub fn allocated_bytes(dir: &std::path::Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    sum_files(dir, &|m| m.blocks() * 512)
}

/// Bytes of the files under `dir` (not following links).
pub fn disk_bytes(dir: &std::path::Path) -> u64 {
    sum_files(dir, &|m| m.len())
}

/// `bytes` of every file under `dir`, summed (not following links; what cannot be read counts 0).
fn sum_files(dir: &std::path::Path, bytes: &dyn Fn(&std::fs::Metadata) -> u64) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    entries
        .filter_map(Result::ok)
        .map(|entry| match entry.file_type() {
            Ok(t) if t.is_dir() => sum_files(&entry.path(), bytes),
            Ok(t) if t.is_file() => entry.metadata().map_or(0, |m| bytes(&m)),
            _ => 0,
        })
        .sum()
}
