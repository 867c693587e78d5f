//! Steps on the file system that survive a power cut, and the sled databases built on them.
//!
//! After a power cut a file holds what was last fsynced into it, and a folder holds the names
//! it had when it was last fsynced: a new, renamed or removed name is not durable until its
//! folder is (POSIX leaves it open; ext4 mostly hides it, other file systems do not). Every
//! place that creates or renames a file that roomlog relies on goes through these helpers, and
//! `tests/powercut.rs` checks them under a file system that drops exactly what was not made
//! durable (DESIGN.md invariant 1).

mod sled_db;
pub mod squeeze;

use std::io::Write;
use std::path::{Path, PathBuf};

pub use sled_db::{Entry, Shape, SledDb, SledOpenError, SledSyncError, LOG, SEGMENT_BYTES, STATE, VALUE_BYTES_MAX};

/// Makes the names in `dir` (new, renamed or removed ones) durable.
pub fn sync_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::File::open(dir)?.sync_all()
}

/// Makes the name of `path` in its parent folder durable.
pub fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => sync_dir(parent),
        _ => sync_dir(Path::new(".")),
    }
}

/// Creates `dir` and any missing parents, and makes each new folder's name durable in its
/// parent, so that what is later put inside is not lost with a folder that vanished in a cut.
pub fn create_dir_all(dir: &Path) -> std::io::Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut at = Some(dir);
    while let Some(path) = at.filter(|p| !p.as_os_str().is_empty() && !p.is_dir()) {
        missing.push(path.to_path_buf());
        at = path.parent();
    }
    for path in missing.iter().rev() {
        match std::fs::create_dir(path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && path.is_dir() => {}
            Err(e) => return Err(e),
        }
        sync_parent(path)?;
    }
    Ok(())
}

/// Renames `from` to `to` and makes both folders' names durable.
pub fn rename(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::rename(from, to)?;
    sync_parent(to)?;
    if from.parent() != to.parent() {
        sync_parent(from)?;
    }
    Ok(())
}

/// Removes `path` (a file) and makes its removal durable; gone already is fine.
pub fn remove_file(path: &Path) -> std::io::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => sync_parent(path),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Moves a damaged folder or file aside as `NAME.damaged-<unix seconds>`, durably, for an
/// operator to look at; returns where it went.
pub fn set_aside(path: &Path) -> std::io::Result<PathBuf> {
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".damaged-{stamp}"));
    let aside = path.with_file_name(name);
    rename(path, &aside)?;
    Ok(aside)
}

/// Replaces the content of `path` with `bytes` so that a cut leaves either the old content or
/// the new, whole: written to a temporary sibling, fsynced, renamed over, folder fsynced.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".tmp");
    let tmp = path.with_file_name(name);
    let mut file = std::fs::File::create(&tmp)?;
    file.write_all(bytes)?;
    file.sync_all()?;
    drop(file);
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_dir_all_makes_every_missing_level() {
        let dir = tempfile::tempdir().expect("tempdir");
        let deep = dir.path().join("a/b/c");
        create_dir_all(&deep).expect("create");
        assert!(deep.is_dir());
        create_dir_all(&deep).expect("an existing folder is fine");
    }

    #[test]
    fn write_atomically_replaces_the_whole_content_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("floor");
        write_atomically(&path, b"first").expect("write");
        write_atomically(&path, b"second").expect("write");
        assert_eq!(std::fs::read(&path).expect("read"), b"second");
        let names: Vec<_> =
            std::fs::read_dir(dir.path()).expect("list").map(|e| e.expect("entry").file_name()).collect();
        assert_eq!(names, vec![std::ffi::OsString::from("floor")]);
    }
}
