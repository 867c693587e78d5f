//! A sled 0.34 database that keeps roomlog's promise through a power cut.
//!
//! sled writes almost everything into one file, `db`, and recovers a consistent prefix of it
//! after a crash; roomlog fsyncs that file at every commit, because sled's own flush ends in
//! `sync_file_range`, which is not durable (sled issue #1452). The trap is elsewhere: a page
//! whose serialised size passes a quarter of the segment size is written to its own file under
//! `blobs/` with plain writes, and neither that file nor its folder is ever fsynced, while the
//! pointer to it lands in `db`, which is. After a cut the pointer survives and the file does
//! not: acknowledged records vanish and sled panics at the next start (issue 18's harness saw
//! both). sled also writes such pages from its own background thread (segment cleaning), so no
//! fsync discipline on roomlog's side can close the race.
//!
//! So no page may ever become a blob file. A page is a tree node of at most 17 entries (sled
//! splits a leaf past 16; a random insert-and-remove workload never showed 18), so each
//! database's segment size and value bound go together ([`Shape`]): 24 values at the bound, a
//! third more than a leaf can hold, still fit under a quarter of a segment. The log's database
//! has 8 MiB segments (blob threshold 2 MiB) for records up to [`VALUE_BYTES_MAX`], 80 KiB; the
//! projections' has 1 MiB (threshold 256 KiB) for values up to 10 KiB. The log refuses a larger
//! record and the projections never build one (history pages close by bytes: the largest is
//! about 8 KB; an edit's text stays in the log; a stream-index entry holds at most
//! [`crate::log`]'s 4,096 seqs);
//! `tests/no_blob_files.rs` drives the worst-case sizes and finds no file under `blobs/`.
//!
//! Databases created from issue 18 to 2026-12-06 have 16 MiB segments (sled's maximum; blob
//! threshold 4 MiB, for values then held to 128 KiB), and projections' databases created on
//! 2026-12-06 before this have 8 MiB; each opens as it is: a value of today's bound is safer
//! still in larger segments. Smaller segments are for the disk: sled grows and cleans its file
//! a whole segment at a time and keeps a few partly filled, which at 16 MiB was most of a small
//! database (`bash benches/run-footprint.sh`: 100,000 sessions took 1,211 bytes each with
//! 16 MiB segments, 927 with 8 MiB; the 1M corpus's `state/` 83.9 MB with 16 MiB, 58.7 MB with
//! 8 MiB, 21.7 MB with 1 MiB and zstd pages). The log's records go to 66 KiB (a 64 KiB
//! message), which 8 MiB segments need; smaller ones took little off it (163.7 MB with 4 MiB
//! or 1 MiB against 167.8 MB).
//!
//! Measured before choosing (`cargo bench --bench sled_blobs`: sequential records committed 16
//! at a time, each commit fsynced), this way against the other remedy (default segments, and an
//! fsync of every new blob file and its folder at each commit): 20 KB records 6,115/s against
//! 4,323/s; 66 KB records 1,540/s against 2,579/s; 100 B records within 10 % either way.
//! Neither is faster throughout; this one has no race and nothing to remember between commits.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// One key and its value, as stored.
pub type Entry = (Vec<u8>, Vec<u8>);

/// The segment size a database is created with, and the largest value it may then hold: a
/// page passes to a blob file past a quarter of a segment, and 24 values at the bound, a third
/// more than a leaf holds, stay under that. sled cannot change the segment size of an existing
/// database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shape {
    pub segment_bytes: usize,
    pub value_bytes_max: usize,
}

/// The log's database: 8 MiB segments (blob threshold 2 MiB) for records up to 80 KiB (a
/// 64 KiB message is a record of about 66 KiB).
pub const LOG: Shape = Shape { segment_bytes: 8 * 1024 * 1024, value_bytes_max: VALUE_BYTES_MAX };

/// The projections' database: 1 MiB segments (blob threshold 256 KiB) for values up to 10 KiB
/// (a history page closes at 6 KiB of its authors and client ids, about 8 KB stored at most; an
/// edit's text stays in the log; a session or a file entry is well under 2 KiB). The smaller
/// segments took the 1M corpus's `state/` from 58.7 MB (8 MiB) to 41.9 MB (4 MiB) and 21.7 MB.
pub const STATE: Shape = Shape { segment_bytes: 1024 * 1024, value_bytes_max: 10 * 1024 };

/// sled's segment size for the log's database ([`LOG`]).
pub const SEGMENT_BYTES: usize = LOG.segment_bytes;

/// The segment size of the databases roomlog created before 2026-12-06 (sled's maximum), which
/// it still opens as they are.
pub const SEGMENT_BYTES_BEFORE: usize = 16 * 1024 * 1024;

/// The segment sizes roomlog has created databases with since issue 18: a database of one of
/// them at least its [`Shape`]'s opens as it is (a value of the shape's bound is safer still
/// in larger segments).
const SEGMENT_BYTES_KNOWN: [usize; 4] = [STATE.segment_bytes, 4 * 1024 * 1024, LOG.segment_bytes, SEGMENT_BYTES_BEFORE];

/// The largest value roomlog writes into the log's tree (a record). See the module
/// documentation for why this keeps every page out of blob files.
pub const VALUE_BYTES_MAX: usize = 80 * 1024;

/// How long opening waits for sled to release the lock of a handle this process just dropped.
const LOCK_WAIT: Duration = Duration::from_secs(3);

/// Why a database did not open.
#[derive(Debug, thiserror::Error)]
pub enum SledOpenError {
    /// sled refused to open it or to recover it.
    #[error("sled: {0}")]
    Sled(#[from] sled::Error),
    /// The folder or one of its files could not be created, read or fsynced.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// sled panicked while recovering the database: its files are damaged.
    #[error("sled panicked while recovering the database (its files are damaged): {0}")]
    Panicked(String),
    /// The database was written with another segment size (by a roomlog before issue 18);
    /// its data is migrated into a new database rather than opened in place.
    #[error("the database was created with {found}-byte segments, not {wanted} or one of the larger roomlog created; it must be migrated")]
    OldLayout { found: usize, wanted: usize },
}

/// An open database with the handle that makes its commits durable.
#[derive(Debug, Clone)]
pub struct SledDb {
    db: sled::Db,
    /// sled's data file, opened once so that each commit can fsync it (none for a temporary
    /// database in a unit test).
    data_file: Option<Arc<Mutex<File>>>,
    dir: PathBuf,
}

impl SledDb {
    /// Opens (or creates) the database in `dir`: a new one with `shape`'s segments, one of
    /// larger segments roomlog created before as it is; then makes every file sled wrote while
    /// opening durable, folders included.
    pub fn open(dir: &Path, shape: Shape, cache_bytes_max: u64) -> Result<Self, SledOpenError> {
        let segment_bytes = match segment_size_of(dir) {
            None => shape.segment_bytes,
            Some(found) if found >= shape.segment_bytes && SEGMENT_BYTES_KNOWN.contains(&found) => found,
            Some(found) => return Err(SledOpenError::OldLayout { found, wanted: shape.segment_bytes }),
        };
        let db = open_sled(dir, segment_bytes, cache_bytes_max)?;
        let data_file = File::options().read(true).write(true).open(dir.join("db"))?;
        let opened = Self { db, data_file: Some(Arc::new(Mutex::new(data_file))), dir: dir.to_path_buf() };
        opened.settle_files()?;
        Ok(opened)
    }

    /// A database in memory that is gone when dropped, for unit tests.
    pub fn temporary() -> Result<Self, SledOpenError> {
        let db = sled::Config::new().temporary(true).segment_size(SEGMENT_BYTES).open()?;
        Ok(Self { db, data_file: None, dir: PathBuf::new() })
    }

    /// Opens a database written by an earlier roomlog with its own segment size, to read it
    /// once for a migration.
    pub fn open_old(dir: &Path, cache_bytes_max: u64) -> Result<sled::Db, SledOpenError> {
        let segment_bytes = segment_size_of(dir).unwrap_or(512 * 1024);
        open_sled(dir, segment_bytes, cache_bytes_max)
    }

    /// fsyncs what sled creates when it opens a database: `conf`, the data file, the snapshot
    /// it writes after recovery, and the folders holding their names.
    fn settle_files(&self) -> std::io::Result<()> {
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            if entry.file_type()?.is_file() {
                File::open(entry.path())?.sync_all()?;
            }
        }
        let blobs = self.dir.join("blobs");
        if blobs.is_dir() {
            super::sync_dir(&blobs)?;
        }
        super::sync_dir(&self.dir)?;
        super::sync_parent(&self.dir)
    }

    /// The database, for opening trees.
    pub fn db(&self) -> &sled::Db {
        &self.db
    }

    /// The folder holding the database.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Makes everything written so far durable: sled's flush, then an fsync of its data file,
    /// the only file it writes while no page passes the blob threshold.
    pub fn sync(&self) -> Result<(), SledSyncError> {
        self.db.flush()?;
        if let Some(file) = &self.data_file {
            file.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).sync_data()?;
        }
        Ok(())
    }

    /// Files under `blobs/`: none, unless a page passed the blob threshold, which would not be
    /// durable (`roomlog check` reports them).
    pub fn blob_files(&self) -> usize {
        std::fs::read_dir(self.dir.join("blobs")).map_or(0, Iterator::count)
    }
}

/// Why a commit was not made durable.
#[derive(Debug, thiserror::Error)]
pub enum SledSyncError {
    #[error("sled flush: {0}")]
    Flush(#[from] sled::Error),
    #[error("fsync of the data file: {0}")]
    Fsync(#[from] std::io::Error),
}

/// The segment size recorded in the `conf` file of the database in `dir`, if there is one.
fn segment_size_of(dir: &Path) -> Option<usize> {
    let bytes = std::fs::read(dir.join("conf")).ok()?;
    let text = String::from_utf8_lossy(bytes.get(..bytes.len().checked_sub(4)?)?).into_owned();
    text.lines().find_map(|line| line.strip_prefix("segment_size: ")?.trim().parse().ok())
}

/// Opens sled, waiting briefly for a lock this process is releasing and turning a panic during
/// recovery into an error: a damaged database is a finding, not a crash.
fn open_sled(dir: &Path, segment_bytes: usize, cache_bytes_max: u64) -> Result<sled::Db, SledOpenError> {
    super::create_dir_all(dir)?;
    let started = Instant::now();
    loop {
        let config = sled::Config::new()
            .path(dir)
            .segment_size(segment_bytes)
            .cache_capacity(cache_bytes_max)
            .flush_every_ms(Some(1000));
        let opened = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| config.open()))
            .map_err(|panic| SledOpenError::Panicked(panic_message(panic.as_ref())))?;
        match opened {
            // sled releases its file lock when the last handle's background work ends, which
            // can trail the drop of the last handle by a moment.
            Err(sled::Error::Io(e))
                if e.to_string().contains("could not acquire lock") && started.elapsed() < LOCK_WAIT =>
            {
                std::thread::sleep(Duration::from_millis(20));
            }
            other => return Ok(other?),
        }
    }
}

fn panic_message(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_of_an_earlier_layout_is_recognised_not_opened() {
        let dir = tempfile::tempdir().expect("tempdir");
        let old = sled::Config::new().path(dir.path()).segment_size(512 * 1024).open().expect("old sled");
        old.insert("k", "v").expect("insert");
        old.flush().expect("flush");
        drop(old);
        let err = SledDb::open(dir.path(), STATE, 1 << 20).expect_err("an old layout is not opened in place");
        assert!(matches!(err, SledOpenError::OldLayout { found: 524_288, .. }), "{err}");
        let read = SledDb::open_old(dir.path(), 1 << 20).expect("opened for migration");
        assert_eq!(read.get("k").expect("get").as_deref(), Some(&b"v"[..]));
    }

    fn sled_with_segments(dir: &Path, segment_bytes: usize) {
        let older = sled::Config::new().path(dir).segment_size(segment_bytes).open().expect("older sled");
        older.insert("k", "v").expect("insert");
        older.flush().expect("flush");
    }

    #[test]
    fn a_new_database_has_its_shapes_segments_and_one_of_larger_segments_opens_as_it_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let at = |name: &str| dir.path().join(name);
        for (name, segment_bytes) in [("log-16", SEGMENT_BYTES_BEFORE), ("state-16", SEGMENT_BYTES_BEFORE)] {
            sled_with_segments(&at(name), segment_bytes);
        }
        sled_with_segments(&at("state-8"), LOG.segment_bytes);
        sled_with_segments(&at("log-4"), 4 << 20);
        drop(SledDb::open(&at("log"), LOG, 1 << 20).expect("a new log database"));
        drop(SledDb::open(&at("state"), STATE, 1 << 20).expect("a new state database"));
        assert_eq!(segment_size_of(&at("log")), Some(8 << 20));
        assert_eq!(segment_size_of(&at("state")), Some(1 << 20));
        for (name, shape) in [("log-16", LOG), ("state-16", STATE), ("state-8", STATE)] {
            let opened = SledDb::open(&at(name), shape, 1 << 20).expect("larger segments open");
            assert_eq!(opened.db().get("k").expect("get").as_deref(), Some(&b"v"[..]));
        }
        assert_eq!(segment_size_of(&at("state-8")), Some(8 << 20), "left as it was");
        let err = SledDb::open(&at("log-4"), LOG, 1 << 20).expect_err("segments too small for the log's records");
        assert!(matches!(err, SledOpenError::OldLayout { found: 4_194_304, wanted: 8_388_608 }), "{err}");
    }

    #[test]
    fn values_up_to_the_bound_never_become_blob_files() {
        for shape in [LOG, STATE] {
            values_up_to_the_bound_of(shape);
        }
    }

    fn values_up_to_the_bound_of(shape: Shape) {
        let value_bytes = shape.value_bytes_max;
        let dir = tempfile::tempdir().expect("tempdir");
        let db = SledDb::open(dir.path(), shape, 64 << 20).expect("open");
        let tree = db.db().open_tree("t").expect("tree");
        let mut x: u64 = 88_172_645_463_325_252;
        for n in 0..400u64 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            // Appends and random overwrites and removals, as the log and the projections do.
            tree.insert(n.to_be_bytes(), vec![1u8; value_bytes]).expect("append");
            let key = (x % 100).to_be_bytes();
            if x.is_multiple_of(3) {
                tree.remove(key).expect("remove");
            } else {
                tree.insert(key, vec![2u8; value_bytes]).expect("overwrite");
            }
            if n % 16 == 0 {
                db.sync().expect("sync");
            }
        }
        db.sync().expect("sync");
        assert_eq!(db.blob_files(), 0, "no page may be written to a blob file ({shape:?})");
    }
}
