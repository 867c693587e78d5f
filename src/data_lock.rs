//! One server per data folder: a server holds an exclusive lock on `<data>/roomlog.lock` while
//! it runs, with its process id in the file, so that a second one started on the same folder
//! says who holds it instead of failing on the database's own lock with a raw error.
//!
//! The lock is `flock(2)` (through `fs2`): the kernel drops it when the process ends, kill -9
//! included, so a crash never leaves a stale lock behind.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};

/// The lock file's name in the data folder.
pub const FILE_NAME: &str = "roomlog.lock";

/// Why the data folder could not be locked.
#[derive(Debug, thiserror::Error)]
pub enum DataLockError {
    /// Another process holds the folder; `roomlog serve` reports it and exits 1.
    #[error("another roomlog (pid {pid}, listening on {addr}) is using {}", data.display())]
    InUse { pid: String, addr: String, data: PathBuf },
    /// The lock file could not be opened or written.
    #[error("{what} {}", path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// The held lock; dropping it (the file closes) releases it.
#[derive(Debug)]
pub struct DataLock {
    _file: File,
}

impl DataLock {
    /// Locks `data` for this process, or says which process holds it and where it listens
    /// (from `addr_file`, the address a running server writes).
    pub fn acquire(data: &Path, addr_file: &Path) -> Result<Self, DataLockError> {
        let path = data.join(FILE_NAME);
        let io = |what: &'static str| {
            let path = path.clone();
            move |source| DataLockError::Io { what, path, source }
        };
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io("opening the lock file"))?;
        if let Err(error) = fs2::FileExt::try_lock_exclusive(&file) {
            if error.raw_os_error() != fs2::lock_contended_error().raw_os_error() {
                return Err(io("locking")(error));
            }
            let mut pid = String::new();
            let _ = file.read_to_string(&mut pid);
            let pid = Some(pid.trim().to_owned()).filter(|p| !p.is_empty()).unwrap_or_else(|| "unknown".into());
            let addr = std::fs::read_to_string(addr_file)
                .ok()
                .map(|a| a.trim().to_owned())
                .filter(|a| !a.is_empty())
                .unwrap_or_else(|| "an address not yet written".into());
            return Err(DataLockError::InUse { pid, addr, data: data.to_path_buf() });
        }
        file.set_len(0).map_err(io("writing the lock file"))?;
        file.rewind().map_err(io("writing the lock file"))?;
        writeln!(file, "{}", std::process::id()).map_err(io("writing the lock file"))?;
        Ok(Self { _file: file })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_lock_on_a_folder_names_the_holder_and_a_dropped_one_frees_it() {
        let dir = tempfile::tempdir().expect("tempdir");
        let addr_file = dir.path().join("roomlog.addr");
        std::fs::write(&addr_file, "127.0.0.1:7700\n").expect("addr");
        let first = DataLock::acquire(dir.path(), &addr_file).expect("the first lock");
        let second = DataLock::acquire(dir.path(), &addr_file).expect_err("the folder is held");
        assert_eq!(
            second.to_string(),
            format!(
                "another roomlog (pid {}, listening on 127.0.0.1:7700) is using {}",
                std::process::id(),
                dir.path().display()
            )
        );
        drop(first);
        DataLock::acquire(dir.path(), &addr_file).expect("free again once dropped");
    }
}
