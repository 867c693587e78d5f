//! `roomlog check`: what an operator runs on a data folder they suspect, with the server
//! stopped. It reports, never panics (a damaged folder is a finding), and creates nothing.
//!
//! It reads every record of the log, and compares the log's head with what other durable
//! witnesses say was acknowledged: the seq floor (`log/seq.floor`) and each projection's
//! checkpoint, which only ever moves over durable records. A log that ends before either has
//! lost acknowledged records, whatever sled says of its own files (issue 18: a log cut short
//! once printed "log ok: 16 records" after more than 100 acknowledgements).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::log::floor::SeqFloor;
use crate::projection::{files, history, search, sessions, Kind, Projection};
use crate::state::StateDb;

/// What `roomlog check` found.
#[derive(Debug, Clone, Serialize)]
pub struct CheckReport {
    pub data: PathBuf,
    /// Records in the log that decode, and the newest seq.
    pub log_records: Option<u64>,
    pub log_head_seq: Option<u64>,
    /// The seq floor: seqs reserved, and the head that was durable when it was written.
    pub floor_reserved_through: Option<u64>,
    pub floor_acked_through: Option<u64>,
    /// Each projection's checkpoint (the last seq it applied), where it could be read.
    pub projections: Vec<(String, Option<u64>)>,
    /// Problems, each a sentence an operator can act on; empty when all is well.
    pub findings: Vec<String>,
}

impl CheckReport {
    pub fn ok(&self) -> bool {
        self.findings.is_empty()
    }
}

/// Runs `f`, turning a panic (sled panics on some damage) into a finding's text.
fn guarded<T>(what: &str, f: impl FnOnce() -> Result<T, String>) -> Result<T, String> {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(result) => result,
        Err(panic) => {
            let message = panic
                .downcast_ref::<&str>()
                .map(|s| (*s).to_owned())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "no message".to_owned());
            Err(format!("{what} panicked: {message}"))
        }
    }
}

/// Checks the data folder `data` (the server must be stopped: the databases are opened).
pub fn check(data: &Path, cache_bytes_max: u64) -> CheckReport {
    let mut report = CheckReport {
        data: data.to_path_buf(),
        log_records: None,
        log_head_seq: None,
        floor_reserved_through: None,
        floor_acked_through: None,
        projections: Vec::new(),
        findings: Vec::new(),
    };
    let (log_dir, state_dir) = (crate::layout::log_dir(data), crate::layout::state_dir(data));
    if !data.is_dir() {
        report.findings.push(format!("{} is not a folder: there is nothing to check", data.display()));
        return report;
    }
    if !log_dir.join("db").is_file() {
        let hint = if crate::layout::legacy_dir(data).is_dir() {
            "it is of the layout before the separate state store: start the server (or run `roomlog rebuild all`) once to move it, then check again"
        } else {
            "no log was ever written here (is --data right?)"
        };
        report.findings.push(format!("{} holds no log: {hint}", log_dir.display()));
        return report;
    }
    check_log(&log_dir, cache_bytes_max, &mut report);
    if state_dir.join("db").is_file() {
        check_projections(&state_dir, cache_bytes_max, &mut report);
    }
    let search_dir = data.join("search");
    if search_dir.join("meta.json").is_file() {
        let indexed = guarded("reading the search index", || {
            search::open_reader(&search_dir).map(|index| index.indexed_through()).map_err(|e| e.to_string())
        });
        match indexed {
            Ok(seq) => report.projections.push((Kind::Search.name().into(), Some(seq))),
            Err(why) => {
                report.projections.push((Kind::Search.name().into(), None));
                report
                    .findings
                    .push(format!("the search index does not open ({why}); the server rebuilds it from the log"));
            }
        }
    }
    compare_with_witnesses(&mut report);
    report
}

fn check_log(log_dir: &Path, cache_bytes_max: u64, report: &mut CheckReport) {
    let opened =
        guarded("opening the log", || crate::log::open_backend(log_dir, cache_bytes_max).map_err(|e| e.to_string()));
    let store = match opened {
        Ok(store) => store,
        Err(why) => {
            report.findings.push(format!(
                "the log in {} does not open: {why}. Restore the data folder from a backup (`roomlog restore`)",
                log_dir.display()
            ));
            return;
        }
    };
    let blob_files = store.unsafe_files();
    if blob_files > 0 {
        report.findings.push(format!(
            "{blob_files} page files under {}/blobs: sled wrote pages past its blob threshold, which a power cut can lose",
            log_dir.display()
        ));
    }
    match guarded("reading the log", || crate::log::verify(store.as_ref()).map_err(|e| e.to_string())) {
        Ok(count) => report.log_records = Some(count),
        Err(why) => report.findings.push(format!("the log does not read to its end: {why}")),
    }
    let head = || -> Result<u64, crate::log::LogError> {
        Ok(match store.last()? {
            Some((seq, bytes)) => crate::event::decode(seq, &bytes)?.seq,
            None => 0,
        })
    };
    match guarded("reading the log's head", || head().map_err(|e| e.to_string())) {
        Ok(seq) => report.log_head_seq = Some(seq),
        Err(why) => report.findings.push(format!("the log's newest record does not read: {why}")),
    }
    match SeqFloor::open(log_dir) {
        Ok(floor) => {
            report.floor_reserved_through = Some(floor.floor().reserved_through);
            report.floor_acked_through = Some(floor.floor().acked_through);
        }
        Err(e) => report.findings.push(format!("the seq floor does not read: {e}")),
    }
}

fn check_projections(state_dir: &Path, cache_bytes_max: u64, report: &mut CheckReport) {
    let state = match guarded("opening the projections' store", || {
        StateDb::open(state_dir, cache_bytes_max).map_err(|e| e.to_string())
    }) {
        Ok(state) => state,
        Err(why) => {
            report.findings.push(format!(
                "the projections' store in {} does not open ({why}); the server sets it aside and rebuilds it from the log",
                state_dir.display()
            ));
            return;
        }
    };
    if state.blob_files() > 0 {
        report.findings.push(format!(
            "{} page files under {}/blobs: sled wrote pages past its blob threshold, which a power cut can lose",
            state.blob_files(),
            state_dir.display()
        ));
    }
    let checkpoints: [(&str, Result<u64, String>); 3] = [
        (Kind::History.name(), guarded("history", || checkpoint_of(history::projection(&state).map(|p| ((), p))))),
        (Kind::Sessions.name(), guarded("sessions", || checkpoint_of(sessions::open(&state)))),
        (Kind::Files.name(), guarded("files", || checkpoint_of(files::open(&state)))),
    ];
    for (name, checkpoint) in checkpoints {
        match checkpoint {
            Ok(seq) => report.projections.push((name.into(), Some(seq))),
            Err(why) => {
                report.projections.push((name.into(), None));
                report
                    .findings
                    .push(format!("the {name} projection does not read ({why}); the server rebuilds it from the log"));
            }
        }
    }
}

fn checkpoint_of<R, P: Projection>(opened: Result<(R, P), crate::projection::ProjectionError>) -> Result<u64, String> {
    opened.and_then(|(_, projection)| projection.checkpoint()).map_err(|e| e.to_string())
}

/// A log that ends before what a durable witness says was acknowledged lost records.
fn compare_with_witnesses(report: &mut CheckReport) {
    let Some(head) = report.log_head_seq else { return };
    let mut witnesses: Vec<(String, u64)> =
        report.floor_acked_through.map(|acked| ("the seq floor".to_owned(), acked)).into_iter().collect();
    witnesses
        .extend(report.projections.iter().filter_map(|(name, seq)| Some((format!("the {name} projection"), (*seq)?))));
    for (witness, seq) in witnesses {
        if seq > head {
            report.findings.push(format!(
                "the log ends at seq {head} but {witness} says seqs through {seq} were acknowledged: acknowledged records were lost. Restore the data folder from a backup (`roomlog restore`)"
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_folder_is_a_finding_and_nothing_is_created() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = dir.path().join("nonexistent");
        let report = check(&missing, 1 << 20);
        assert!(!report.ok());
        assert!(!missing.exists(), "check creates nothing");
        let empty = dir.path().join("empty");
        std::fs::create_dir(&empty).expect("mkdir");
        let report = check(&empty, 1 << 20);
        assert!(report.findings[0].contains("holds no log"), "{:?}", report.findings);
        assert_eq!(std::fs::read_dir(&empty).expect("list").count(), 0, "check creates nothing");
    }
}
