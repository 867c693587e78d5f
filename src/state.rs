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
        Ok(Self { db: SledDb::open(dir, crate::durable::STATE, cache_bytes_max)? })
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

    /// Opens (or creates) a table of values keyed by a number, for state that is not a
    /// projection's (the growth samples).
    pub fn table(&self, name: &str) -> Result<Table, StateError> {
        Ok(Table { tree: self.open_tree(name)? })
    }

    /// Writes `entries` (key, value) into `tree` as they are: what the migration carries over
    /// from the layout before issue 18.
    pub fn put_entries(&self, tree: &str, entries: Vec<crate::durable::Entry>) -> Result<(), StateError> {
        let tree = self.open_tree(tree)?;
        for (key, value) in entries {
            tree.insert(key, value)?;
        }
        Ok(())
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

/// The store refused a read or a write.
#[derive(Debug, thiserror::Error)]
#[error("the projections' store: {0}")]
pub struct StateError(#[from] sled::Error);

/// Values keyed by a number, ascending, in the state store (see [`StateDb::table`]). A value
/// that no longer decodes is skipped when read: what is kept here is measured, not derived.
#[derive(Debug, Clone)]
pub struct Table {
    tree: sled::Tree,
}

impl Table {
    /// Stores `value` under `key`, replacing what was there.
    pub fn put<T: serde::Serialize>(&self, key: u64, value: &T) -> Result<(), StateError> {
        let value = rmp_serde::to_vec(value).unwrap_or_default();
        self.tree.insert(key.to_be_bytes(), value)?;
        Ok(())
    }

    /// Every value that decodes, by ascending key.
    pub fn values<T: serde::de::DeserializeOwned>(&self) -> Result<Vec<T>, StateError> {
        let mut out = Vec::new();
        for item in self.tree.iter() {
            if let Ok(value) = rmp_serde::from_slice(&item?.1) {
                out.push(value);
            }
        }
        Ok(out)
    }
}

fn is_lock_error(error: &SledOpenError) -> bool {
    match error {
        SledOpenError::Sled(sled::Error::Io(e)) => e.to_string().contains("could not acquire lock"),
        _ => false,
    }
}
