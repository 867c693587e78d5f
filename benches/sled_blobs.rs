//! The two ways issue 18 offered to make everything sled writes durable, measured side by side:
//! keep sled's default 512 KiB segments and fsync every blob file it creates (and their folder)
//! at each commit, or raise the segment size to 16 MiB so that no page of up to 128 KiB records
//! ever becomes a blob file, and fsync only the data file. roomlog does the second
//! (`durable::SledDb`): it is as fast or faster where it counts and leaves no race with sled's
//! background segment cleaner, which writes blob files of its own.
//!
//! `cargo bench --bench sled_blobs`: records appended with sequential keys and committed 16 at
//! a time, each commit durable; records per second and bytes on disk for each way.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Instant;

fn blob_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir.join("blobs"))
        .map(|d| d.filter_map(|e| e.ok().map(|e| e.path())).collect())
        .unwrap_or_default()
}

/// Appends `records` of `bytes` each; returns (records/s, MiB on disk, blob files fsynced).
fn run(segment_bytes: usize, bytes: usize, records: u64, sync_blobs: bool) -> (f64, u64, usize) {
    let dir = tempfile::tempdir().expect("tempdir");
    let db = sled::Config::new()
        .path(dir.path())
        .segment_size(segment_bytes)
        .cache_capacity(256 << 20)
        .flush_every_ms(Some(1000))
        .open()
        .expect("sled");
    let data_file = std::fs::File::options().read(true).write(true).open(dir.path().join("db")).expect("data file");
    let tree = db.open_tree("log").expect("tree");
    let mut synced: HashSet<PathBuf> = HashSet::new();
    let started = Instant::now();
    for n in 0..records {
        tree.insert(n.to_be_bytes(), vec![(n % 251) as u8; bytes]).expect("insert");
        if n % 16 == 15 {
            db.flush().expect("flush");
            if sync_blobs {
                let new: Vec<PathBuf> =
                    blob_files(dir.path()).into_iter().filter(|b| synced.insert(b.clone())).collect();
                for blob in &new {
                    if let Ok(file) = std::fs::File::open(blob) {
                        file.sync_all().expect("fsync blob");
                    }
                }
                if !new.is_empty() {
                    std::fs::File::open(dir.path().join("blobs")).and_then(|d| d.sync_all()).expect("fsync blobs/");
                }
            }
            data_file.sync_data().expect("fsync db");
        }
    }
    let rate = records as f64 / started.elapsed().as_secs_f64();
    drop(tree);
    drop(db);
    (rate, roomlog::metrics::disk_bytes(dir.path()) >> 20, synced.len())
}

fn main() {
    for (bytes, records) in [(100usize, 100_000u64), (20 * 1024, 4000), (64 * 1024, 4000)] {
        let (blobs_rate, blobs_mib, synced) = run(512 * 1024, bytes, records, true);
        let (big_rate, big_mib, _) = run(16 * 1024 * 1024, bytes, records, false);
        println!(
            "{bytes:>6}-byte records: 512 KiB segments + fsync of {synced} blob files {blobs_rate:>7.0}/s ({blobs_mib} MiB on disk); 16 MiB segments, no blob file {big_rate:>7.0}/s ({big_mib} MiB)"
        );
    }
}
