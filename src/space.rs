//! The free-space floors: nothing roomlog stores may reach a full disk inside sled or tantivy.
//!
//! sled cannot recover from a write that fails for lack of space without being reopened, and
//! at a full disk its flush can hang; tantivy's commit fails and leaves its writer unusable.
//! So every writer stops before the disk is full, each at its own floor, and goes on by itself
//! once space is back (issue 18):
//!
//! - below the **log floor**, appends of new content (messages, uploads, sessions) are refused
//!   at once with `disk_full`, before anything reaches sled;
//! - below the **clean-up floor** (half of it), the appends that free space (retention cuts,
//!   purges, deletions, the janitor's record) are refused too, and the projections pause: the
//!   room between the two floors is kept for clean-up and for the projections to apply what the
//!   log accepted;
//! - a **reserve** file (`<data>/reserve`, [`RESERVE_BYTES`]) holds space that only clean-up
//!   may have: the janitor deletes it when it must work below the log floor, and start-up
//!   deletes it when it must open the databases below it; it is written again once the disk
//!   has room for it above the log floor.
//!
//! How much one group commit can take (measured by `cargo bench --bench disk_burst`, 4 MiB
//! bursts): up to 25 MiB of log and 27 MiB of projection store, 8 to 14 times the bodies
//! appended, because sled rewrites whole leaves and cleans segments later. A group commit is
//! held to `log.batch_bytes_max` (1 MiB) of records, so the default floors leave several
//! commits' worth of room at each step.

use std::path::{Path, PathBuf};

/// The least log floor, whatever `log.min_free_bytes` says: below it, one burst of commits and
/// the projections' catching up could reach a full disk.
pub const FLOOR_BYTES_MIN: u64 = 32 * 1024 * 1024;
/// The default log floor: 10 % of the volume, within these bounds.
pub const FLOOR_DEFAULT_BYTES_MIN: u64 = 64 * 1024 * 1024;
pub const FLOOR_DEFAULT_BYTES_MAX: u64 = 256 * 1024 * 1024;
/// Bytes of the reserve file.
pub const RESERVE_BYTES: u64 = 16 * 1024 * 1024;

/// The floors in force for one volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floors {
    /// Below this many bytes free, new content is refused.
    pub log: u64,
    /// Below this many bytes free, clean-up appends are refused and projections pause.
    pub cleanup: u64,
}

impl Floors {
    /// The floors for a volume of `total_bytes`: `configured` (`log.min_free_bytes`) if set,
    /// else 10 % of the volume within [`FLOOR_DEFAULT_BYTES_MIN`]..[`FLOOR_DEFAULT_BYTES_MAX`];
    /// never under [`FLOOR_BYTES_MIN`].
    pub fn for_volume(configured: Option<u64>, total_bytes: u64) -> Self {
        let log = configured
            .unwrap_or_else(|| (total_bytes / 10).clamp(FLOOR_DEFAULT_BYTES_MIN, FLOOR_DEFAULT_BYTES_MAX))
            .max(FLOOR_BYTES_MIN);
        Self { log, cleanup: log / 2 }
    }

    /// The floors for the volume holding `dir` (the default-sized ones if it cannot be asked).
    pub fn for_dir(configured: Option<u64>, dir: &Path) -> Self {
        Self::for_volume(configured, fs2::total_space(dir).unwrap_or(0))
    }
}

/// Bytes free for roomlog on the volume holding `dir`; `None` if it cannot be asked.
pub fn available(dir: &Path) -> Option<u64> {
    fs2::available_space(dir).ok()
}

/// The reserve file of a data folder.
#[derive(Debug, Clone)]
pub struct Reserve {
    path: PathBuf,
}

impl Reserve {
    pub fn of(data: &Path) -> Self {
        Self { path: data.join("reserve") }
    }

    /// Whether the reserve is in place.
    pub fn held(&self) -> bool {
        self.path.is_file()
    }

    /// Writes the reserve if it is missing and the disk has room for it above `floors.log`;
    /// true if it was written now. Its bytes are written (not a sparse length) and fsynced, so
    /// the space is really taken.
    pub fn restore(&self, floors: Floors) -> std::io::Result<bool> {
        if self.held() {
            return Ok(false);
        }
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if available(dir).is_none_or(|free| free < floors.log.saturating_add(2 * RESERVE_BYTES)) {
            return Ok(false);
        }
        let tmp = self.path.with_extension("tmp");
        let written = (|| {
            let mut file = std::fs::File::create(&tmp)?;
            let chunk = vec![0u8; 1 << 20];
            for _ in 0..RESERVE_BYTES / chunk.len() as u64 {
                std::io::Write::write_all(&mut file, &chunk)?;
            }
            file.sync_all()?;
            crate::durable::rename(&tmp, &self.path)
        })();
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written.map(|()| true)
    }

    /// Deletes the reserve so that clean-up (or start-up) has room; true if it was there.
    pub fn release(&self, why: &str) -> std::io::Result<bool> {
        if !self.held() {
            return Ok(false);
        }
        crate::durable::remove_file(&self.path)?;
        tracing::warn!(bytes = RESERVE_BYTES, why, "reserve file released");
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_floor_follows_the_volume_within_bounds() {
        const MIB: u64 = 1024 * 1024;
        assert_eq!(Floors::for_volume(None, 100 * MIB).log, 64 * MIB, "small volume: the least default");
        assert_eq!(Floors::for_volume(None, 1000 * MIB).log, 100 * MIB, "10 %");
        assert_eq!(Floors::for_volume(None, 100_000 * MIB).log, 256 * MIB, "large volume: capped");
        assert_eq!(Floors::for_volume(Some(0), 100_000 * MIB).log, FLOOR_BYTES_MIN, "never under the least");
        assert_eq!(Floors::for_volume(Some(512 * MIB), 100 * MIB), Floors { log: 512 * MIB, cleanup: 256 * MIB });
    }

    #[test]
    fn the_reserve_is_written_whole_and_released() {
        let dir = tempfile::tempdir().expect("tempdir");
        let reserve = Reserve::of(dir.path());
        let floors = Floors { log: 0, cleanup: 0 };
        assert!(reserve.restore(floors).expect("restore"));
        assert_eq!(std::fs::metadata(dir.path().join("reserve")).expect("meta").len(), RESERVE_BYTES);
        assert!(!reserve.restore(floors).expect("already held"));
        assert!(reserve.release("test").expect("release"));
        assert!(!reserve.held());
    }
}
