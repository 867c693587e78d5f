//! The seq floor: a small file, kept apart from the database, that says which seqs may already
//! have been handed out, so that no seq is ever handed out twice (DESIGN.md: "Sequence numbers
//! are never reused").
//!
//! If the tail of the log were ever lost (a disk that lied about an fsync, a damaged file), the
//! writer would otherwise start again after the surviving head, and a resend of an
//! acknowledged client id would get a different seq, and a reader resuming with `since` would
//! never see what was stored under numbers it had already seen. Seqs are therefore reserved in
//! blocks of [`SEQ_RESERVE`]: before the writer hands out a seq above the reservation, it
//! records a new one here, durably (written beside, fsynced, renamed, folder fsynced). After a
//! crash the log goes on above the reservation, leaving a gap, which readers already expect of
//! a global sequence; a clean stop gives the unused part back. The file also records the head
//! that was durable when it was written, a lower bound of what was acknowledged, for
//! `roomlog check` and for start-up to notice a log that lost records.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Seqs reserved at a time: about ten seconds of appends at full speed, so the file is
/// rewritten rarely; a crash skips at most this many seqs.
pub const SEQ_RESERVE: u64 = 1 << 20;

/// The file's name inside the log folder (sled ignores files it does not know).
const FILE_NAME: &str = "seq.floor";

/// What the file records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Floor {
    /// Every seq up to this one may have been handed out: the next one is above it.
    pub reserved_through: u64,
    /// The durable head when this was written: every seq up to it was acknowledged.
    pub acked_through: u64,
}

/// The seq floor of one log folder.
#[derive(Debug)]
pub struct SeqFloor {
    path: PathBuf,
    floor: Floor,
}

impl SeqFloor {
    /// Reads the floor of the log in `dir`; a missing file is a floor of zero (a new log, or one
    /// written before the floor existed). A file that does not parse is an error: guessing low
    /// could reuse seqs.
    pub fn open(dir: &Path) -> std::io::Result<Self> {
        let path = dir.join(FILE_NAME);
        let floor = match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes).map_err(|e| {
                std::io::Error::new(std::io::ErrorKind::InvalidData, format!("{}: {e}", path.display()))
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Floor::default(),
            Err(e) => return Err(e),
        };
        if floor.reserved_through > super::SEQ_MAX || floor.acked_through > super::SEQ_MAX {
            let why = format!("{}: seqs past {} are not ones this server hands out", path.display(), super::SEQ_MAX);
            return Err(std::io::Error::new(std::io::ErrorKind::InvalidData, why));
        }
        Ok(Self { path, floor })
    }

    /// What the file says.
    pub fn floor(&self) -> Floor {
        self.floor
    }

    /// Makes sure every seq through `through` is reserved, recording `acked_through` with it;
    /// writes the file only when the reservation must grow.
    pub fn reserve(&mut self, through: u64, acked_through: u64) -> std::io::Result<()> {
        if through <= self.floor.reserved_through {
            return Ok(());
        }
        self.write(Floor { reserved_through: through.saturating_add(SEQ_RESERVE).min(super::SEQ_MAX), acked_through })
    }

    /// Gives back the unused part of the reservation at a clean stop: the next start goes on
    /// right after `head`.
    pub fn release(&mut self, head: u64) -> std::io::Result<()> {
        self.write(Floor { reserved_through: head, acked_through: head })
    }

    /// Records `floor` as it is (a migration carrying an earlier log's floor over).
    pub fn write(&mut self, floor: Floor) -> std::io::Result<()> {
        let bytes = serde_json::to_vec(&floor).map_err(std::io::Error::other)?;
        crate::durable::write_atomically(&self.path, &bytes)?;
        self.floor = floor;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reservation_survives_and_a_release_gives_it_back() {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut floor = SeqFloor::open(dir.path()).expect("open");
        assert_eq!(floor.floor(), Floor::default());
        floor.reserve(10, 0).expect("reserve");
        floor.reserve(11, 5).expect("within the reservation: nothing written");
        let reopened = SeqFloor::open(dir.path()).expect("reopen").floor();
        assert_eq!(reopened, Floor { reserved_through: 10 + SEQ_RESERVE, acked_through: 0 });
        floor.release(42).expect("release");
        assert_eq!(
            SeqFloor::open(dir.path()).expect("reopen").floor(),
            Floor { reserved_through: 42, acked_through: 42 }
        );
    }

    #[test]
    fn a_damaged_file_is_an_error_not_a_zero() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join(FILE_NAME), b"{not json").expect("write");
        assert!(SeqFloor::open(dir.path()).is_err());
    }
}
