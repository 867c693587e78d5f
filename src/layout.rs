//! What lives where in the data folder, and the move from the layout before it.
//!
//! ```text
//! <data>/log/      the event log: a sled database (8 MiB segments) and its seq floor
//! <data>/state/    the projections' state and the growth samples: a sled database
//! <data>/search/   the search index (tantivy)
//! <data>/blobs/    the file store's hot tier
//! <data>/auth/     the token secret
//! ```
//!
//! Until issue 18 the log and the projections shared one sled database in `<data>/db`, with
//! sled's default 512 KiB segments, under which a large page was written to an unsynced blob
//! file. sled cannot change a database's segment size, so [`migrate`] copies the log's records,
//! as they were written, into a new `log/`, carries over its next seq as the seq floor and the
//! growth samples into `state/`, and lets the projections rebuild from the log (their pages
//! had no size bound). Every step is safe to cut off: nothing in `db/` changes until `log/`
//! is complete and durable, and a migration cut off is done again from the start.

use std::path::{Path, PathBuf};

use crate::durable::{self, SledOpenError};
use crate::event::decode;
use crate::log::floor::Floor;
use crate::log::{LegacyDb, LogError};
use crate::state::{StateDb, StateError};

/// The folder of the log's database.
pub fn log_dir(data: &Path) -> PathBuf {
    data.join(crate::config::LOG_FOLDER)
}

/// The folder of the projections' database.
pub fn state_dir(data: &Path) -> PathBuf {
    data.join(crate::config::STATE_FOLDER)
}

/// The folder of the one database of the layout before issue 18.
pub fn legacy_dir(data: &Path) -> PathBuf {
    data.join("db")
}

/// Trees of the old database copied into the new state store: the growth samples, which the
/// log cannot give back. The projections' trees are rebuilt instead.
const CARRIED_TREES: &[&str] = &["storage.daily"];

/// Records copied per step.
const CHUNK: usize = 4096;

/// What a migration did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    pub records: u64,
    pub head_seq: u64,
}

/// Why the data folder could not be migrated. Nothing of the old layout was changed.
#[derive(Debug, thiserror::Error)]
pub enum MigrateError {
    #[error("reading the old database in {path}: {source}")]
    Old { path: String, source: SledOpenError },
    #[error("reading the old log or writing the new one: {0}")]
    Log(#[from] LogError),
    #[error("writing the new state store: {0}")]
    NewState(#[from] SledOpenError),
    #[error("writing the new state store: {0}")]
    State(#[from] StateError),
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    /// The folder given as the data folder is one of sled's databases (a `log/` or `state/`
    /// of a data folder, or a copy of one): [`refuse_sled_database`].
    #[error(
        "{path} is a sled database (it holds sled's files conf and db), not a roomlog data folder: \
         give the folder that holds log/, state/ and search/ (for a database named log or state, \
         its parent)"
    )]
    SledDatabase { path: String },
}

fn io(what: &str) -> impl FnOnce(std::io::Error) -> MigrateError + '_ {
    move |source| MigrateError::Io { what: what.to_owned(), source }
}

fn sibling(dir: &Path, suffix: &str) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(suffix);
    dir.with_file_name(name)
}

/// Refuses a folder that is one of sled's databases as the data folder (an operator gave
/// `<data>/log` for `<data>`): its `db` is sled's file of segments, which [`migrate`] would
/// take for the old layout's folder and fail on with "File exists". Called before anything is
/// written to the folder.
pub fn refuse_sled_database(data: &Path) -> Result<(), MigrateError> {
    if legacy_dir(data).is_file() && data.join("conf").is_file() {
        return Err(MigrateError::SledDatabase { path: data.display().to_string() });
    }
    Ok(())
}

/// Moves a data folder of the layout before issue 18 to this one; does nothing to a folder
/// that is already of this layout (or empty). Returns what it copied, if it ran.
pub fn migrate(data: &Path, cache_bytes_max: u64) -> Result<Option<Migrated>, MigrateError> {
    let (legacy, log, state) = (legacy_dir(data), log_dir(data), state_dir(data));
    if !legacy.exists() {
        return Ok(None);
    }
    refuse_sled_database(data)?;
    if log.exists() {
        // The migration finished but for deleting the old database.
        std::fs::remove_dir_all(&legacy).map_err(io("deleting the migrated database"))?;
        durable::sync_dir(data).map_err(io("syncing the data folder"))?;
        return Ok(None);
    }
    crate::log::compact::recover(&legacy).map_err(io("settling a compaction of the old database"))?;
    let (log_new, state_new) = (sibling(&log, ".migrating"), sibling(&state, ".migrating"));
    for leftover in [&log_new, &state_new, &state] {
        if leftover.exists() {
            std::fs::remove_dir_all(leftover).map_err(io("removing a migration cut off earlier"))?;
        }
    }
    tracing::info!(from = %legacy.display(), "moving the data folder to the layout with a separate log and state store");
    let old = LegacyDb::open(&legacy, cache_bytes_max)
        .map_err(|source| MigrateError::Old { path: legacy.display().to_string(), source })?;
    let migrated = copy_log(&old, &log_new, cache_bytes_max)?;
    let new_state = StateDb::open(&state_new, cache_bytes_max)?;
    for name in CARRIED_TREES {
        new_state.put_entries(name, old.entries(name)?)?;
    }
    new_state.sync().map_err(|e| MigrateError::Log(LogError::Storage(Box::new(e))))?;
    drop((old, new_state));
    durable::rename(&state_new, &state).map_err(io("moving the new state store in"))?;
    // The commit point: from here on the folder is of the new layout.
    durable::rename(&log_new, &log).map_err(io("moving the new log in"))?;
    std::fs::remove_dir_all(&legacy).map_err(io("deleting the migrated database"))?;
    durable::sync_dir(data).map_err(io("syncing the data folder"))?;
    tracing::info!(
        records = migrated.records,
        head_seq = migrated.head_seq,
        "data folder migrated; projections rebuild from the log"
    );
    Ok(Some(migrated))
}

/// Copies every record of the old database's log, as written, into a new log in `to`, with
/// the old next seq as the new log's seq floor.
fn copy_log(old: &LegacyDb, to: &Path, cache_bytes_max: u64) -> Result<Migrated, MigrateError> {
    let new = crate::log::open_backend(to, cache_bytes_max)?;
    let mut done = Migrated { records: 0, head_seq: 0 };
    let mut chunk: Vec<(u64, crate::event::StreamId, Vec<u8>)> = Vec::with_capacity(CHUNK);
    let flush = |chunk: &mut Vec<(u64, crate::event::StreamId, Vec<u8>)>| -> Result<(), MigrateError> {
        let encoded: Vec<_> = chunk.iter().map(|(seq, stream, bytes)| (*seq, stream, bytes.as_slice())).collect();
        new.write(&encoded)?;
        chunk.clear();
        Ok(())
    };
    for record in old.records()? {
        let (seq, bytes) = record?;
        let envelope = decode(seq, &bytes).map_err(LogError::from)?;
        chunk.push((seq, envelope.stream, bytes));
        done.records += 1;
        done.head_seq = seq;
        if chunk.len() == CHUNK {
            flush(&mut chunk)?;
        }
    }
    flush(&mut chunk)?;
    new.sync()?;
    // The old log's next seq is never reused either.
    let old_next = old.next_seq()?;
    new.set_floor(Floor {
        reserved_through: old_next.saturating_sub(1).max(done.head_seq),
        acked_through: done.head_seq,
    })?;
    Ok(done)
}
