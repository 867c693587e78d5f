//! The projections' own store: a sled database in `<data>/state`, beside the log's rather than
//! inside it.
//!
//! Projection state is derived: every byte of it can be rebuilt from the log. Kept apart, it
//! needs no fsync before an acknowledgement (a cut leaves a consistent earlier state, and the
//! projection resumes from its checkpoint), it cannot race the log's durable commit (issue 18:
//! a projection's write landing between the log's fsyncs), and when it is damaged it is set
//! aside and rebuilt instead of stopping the server. The growth samples live here too; they are
//! the one thing here that the log cannot give back, and a damaged store loses them.

use std::path::{Path, PathBuf};

use crate::durable::{SledDb, SledOpenError, SledSyncError};

/// The projections' database.
#[derive(Debug, Clone)]
pub struct StateDb {
    db: SledDb,
}

/// How the store was opened.
#[derive(Debug)]
pub enum Opened {
    /// As it was.
    AsItWas,
    /// It did not open (damaged by a crash, or by hand); it was moved to `set_aside` and a new
    /// empty store took its place: every projection rebuilds from the log.
    Replaced { set_aside: PathBuf, reason: String },
}

impl StateDb {
    /// Opens the store in `dir`, creating it if needed.
    pub fn open(dir: &Path, cache_bytes_max: u64) -> Result<Self, SledOpenError> {
        Ok(Self { db: SledDb::open(dir, cache_bytes_max)? })
    }

    /// Opens the store in `dir`; one that does not open is moved aside (never deleted: an
    /// operator may want to look at it) and replaced by an empty one. A store held by another
    /// process is an error, not damage.
    pub fn open_or_replace(dir: &Path, cache_bytes_max: u64) -> Result<(Self, Opened), SledOpenError> {
        match Self::open(dir, cache_bytes_max) {
            Ok(db) => Ok((db, Opened::AsItWas)),
            Err(error) if is_lock_error(&error) => Err(error),
            Err(error) => {
                let reason = error.to_string();
                let stamp =
                    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
                let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
                name.push(format!(".damaged-{stamp}"));
                let set_aside = dir.with_file_name(name);
                crate::durable::rename(dir, &set_aside)?;
                tracing::error!(error = %reason, set_aside = %set_aside.display(), "the projections' store did not open: it was set aside and the projections rebuild from the log");
                Ok((Self::open(dir, cache_bytes_max)?, Opened::Replaced { set_aside, reason }))
            }
        }
    }

    /// A store in memory, for unit tests.
    pub fn temporary() -> Result<Self, SledOpenError> {
        Ok(Self { db: SledDb::temporary()? })
    }

    /// Opens (or creates) one projection's tree.
    pub fn open_tree(&self, name: &str) -> Result<sled::Tree, sled::Error> {
        self.db.db().open_tree(name)
    }

    /// Makes everything written so far durable (a rebuild's end, a clean stop).
    pub fn sync(&self) -> Result<(), SledSyncError> {
        self.db.sync()
    }

    /// Files sled wrote under `blobs/` (see `durable::SledDb`): none is expected.
    pub fn blob_files(&self) -> usize {
        self.db.blob_files()
    }

    /// The folder holding the store.
    pub fn dir(&self) -> &Path {
        self.db.dir()
    }
}

fn is_lock_error(error: &SledOpenError) -> bool {
    match error {
        SledOpenError::Sled(sled::Error::Io(e)) => e.to_string().contains("could not acquire lock"),
        _ => false,
    }
}
