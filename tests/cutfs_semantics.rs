//! CutFs, the power-cut file system of tests/cutfs, tested by itself: a cut keeps exactly what
//! was fsynced (a file's data with the file's fsync, a name with its folder's fsync), and a cut
//! under a process writing in a loop neither deadlocks nor lets that process's writes land
//! after it. Where FUSE cannot be had, each test says why it skips.

mod cutfs;

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use cutfs::pages::{Pages, PAGE_BYTES};
use cutfs::CutFs;

/// fsync of a folder: its entries become durable.
fn sync_dir(dir: &Path) {
    File::open(dir).expect("open folder").sync_all().expect("fsync folder");
}

/// Writes `bytes` to `path`, fsyncs it, and fsyncs its folder: all of it survives a cut.
fn write_durable(path: &Path, bytes: &[u8]) {
    let mut file = File::create(path).expect("create");
    file.write_all(bytes).expect("write");
    file.sync_all().expect("fsync");
    sync_dir(path.parent().expect("a folder holds it"));
}

/// A cut with no process to kill: the test itself wrote, and holds no handle open.
fn cut(fs: &CutFs) {
    fs.cut(|| {});
}

#[test]
fn pages_keep_volatile_writes_and_truncations_apart_from_durable_bytes() {
    let mut pages = Pages::new();
    pages.write(0, &[1; 10_000]);
    pages.sync();
    pages.write(1000, &[2; 100]);
    pages.set_len(3000);
    pages.set_len(9000);
    assert_eq!(pages.read(2990, 20), [vec![1; 10], vec![0; 10]].concat(), "a truncation zeroes what it cut");
    assert_eq!(pages.revert(), PAGE_BYTES, "one dirty page, within the live length");
    assert_eq!(pages.read(0, 20_000), vec![1; 10_000]);
    pages.set_len(4000);
    pages.sync();
    assert_eq!(pages.read(0, 20_000), vec![1; 4000], "an fsynced truncation stays");
}

#[test]
fn pages_agree_with_a_plain_model_over_random_writes_truncates_fsyncs_and_cuts() {
    // The model: the live bytes and the durable bytes as two plain vectors.
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = |bound: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % bound
    };
    for _ in 0..50 {
        let (mut pages, mut live, mut durable) = (Pages::new(), Vec::<u8>::new(), Vec::<u8>::new());
        for step in 0..300u64 {
            match next(10) {
                0..=3 => {
                    let (offset, len) = (next(40_000), next(9_000));
                    let data = vec![(step % 251) as u8 + 1; len as usize];
                    pages.write(offset, &data);
                    let end = (offset + len) as usize;
                    if live.len() < end {
                        live.resize(end, 0);
                    }
                    live[offset as usize..end].copy_from_slice(&data);
                }
                4 | 5 => {
                    let len = next(45_000);
                    pages.set_len(len);
                    live.resize(len as usize, 0);
                }
                6 => {
                    pages.sync();
                    durable = live.clone();
                }
                7 => {
                    pages.revert();
                    live = durable.clone();
                }
                _ => {
                    let (offset, size) = (next(50_000), next(20_000));
                    let expected = live.get(offset as usize..(offset + size).min(live.len() as u64) as usize);
                    assert_eq!(pages.read(offset, size), expected.unwrap_or_default(), "step {step}");
                }
            }
            assert_eq!(pages.live_len(), live.len() as u64);
        }
        assert!(pages.read(0, u64::MAX / 2) == live);
        pages.revert();
        assert!(pages.read(0, u64::MAX / 2) == durable);
    }
}

#[test]
fn written_but_not_fsynced_data_is_gone_after_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let path = fs.mountpoint().join("a");
    write_durable(&path, b"durable");
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(&vec![b'v'; 100_000]).expect("append");
    drop(file);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 100_007, "written, and readable before the cut");
    cut(&fs);
    assert_eq!(std::fs::read(&path).expect("read"), b"durable");
    assert!(fs.stats().bytes_dropped >= 100_000, "{:?}", fs.stats());
}

#[test]
fn fsynced_data_stays_through_a_cut_and_a_later_fsync_keeps_the_new_length() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let path = fs.mountpoint().join("a");
    let content: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    write_durable(&path, &content);
    cut(&fs);
    assert!(std::fs::read(&path).expect("read") == content, "fsynced data survives");
    let mut file = OpenOptions::new().append(true).open(&path).expect("open");
    file.write_all(b"tail").expect("append");
    file.sync_data().expect("fdatasync");
    drop(file);
    cut(&fs);
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 300_004, "fdatasync made the growth durable");
}

#[test]
fn a_file_fsynced_in_a_folder_that_was_not_is_gone_after_a_cut() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let path = fs.mountpoint().join("new");
    let mut file = File::create(&path).expect("create");
    file.write_all(b"data").expect("write");
    file.sync_all().expect("fsync the file, not its folder");
    drop(file);
    cut(&fs);
    assert!(!path.exists(), "its name was never durable");
    assert_eq!(fs.stats().inodes_dropped, 1, "{:?}", fs.stats());
}

#[test]
fn a_rename_without_the_folder_fsync_reverts_and_each_side_needs_its_own() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let root = fs.mountpoint();
    let (x, y) = (root.join("x"), root.join("y"));
    std::fs::create_dir(&x).expect("mkdir");
    std::fs::create_dir(&y).expect("mkdir");
    sync_dir(root);
    write_durable(&x.join("f"), b"old");

    // The atomic-replace pattern without its final folder fsync: the old content comes back.
    write_durable(&x.join("tmp"), b"new");
    std::fs::rename(x.join("tmp"), x.join("f")).expect("rename over");
    assert_eq!(std::fs::read(x.join("f")).expect("read"), b"new");
    cut(&fs);
    assert_eq!(std::fs::read(x.join("f")).expect("read"), b"old");
    assert_eq!(std::fs::read(x.join("tmp")).expect("read"), b"new", "the temp name was durable");

    // Across folders, only the target's folder fsynced: both names survive (a hard link).
    std::fs::rename(x.join("f"), y.join("f")).expect("rename across");
    sync_dir(&y);
    cut(&fs);
    assert_eq!(std::fs::read(x.join("f")).expect("read"), b"old");
    assert_eq!(std::fs::read(y.join("f")).expect("read"), b"old");

    // Both folders fsynced: the move is whole.
    std::fs::rename(x.join("f"), y.join("g")).expect("rename across");
    sync_dir(&x);
    sync_dir(&y);
    cut(&fs);
    assert!(!x.join("f").exists());
    assert_eq!(std::fs::read(y.join("g")).expect("read"), b"old");
    assert_eq!(std::fs::read(y.join("f")).expect("read"), b"old", "the other name stays: a hard link");
}

#[test]
fn a_no_clobber_rename_keeps_the_target() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let root = fs.mountpoint();
    write_durable(&root.join("a"), b"a");
    write_durable(&root.join("b"), b"b");
    // renameat2 is not in std; coreutils' `mv -n` asks the kernel for RENAME_NOREPLACE.
    let _ = Command::new("mv").args(["-n", "a", "b"]).current_dir(root).stderr(Stdio::null()).status().expect("mv");
    assert_eq!(std::fs::read(root.join("b")).expect("read"), b"b");
    assert_eq!(std::fs::read(root.join("a")).expect("read"), b"a");
}

#[test]
fn unlink_and_rmdir_revert_without_the_folder_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let root = fs.mountpoint();
    let folder = root.join("d");
    std::fs::create_dir(&folder).expect("mkdir");
    sync_dir(root);
    write_durable(&folder.join("f"), b"kept");
    std::fs::remove_file(folder.join("f")).expect("unlink");
    std::fs::remove_dir(&folder).expect("rmdir");
    assert!(!folder.exists());
    cut(&fs);
    assert_eq!(std::fs::read(folder.join("f")).expect("read"), b"kept");

    std::fs::remove_file(folder.join("f")).expect("unlink");
    sync_dir(&folder);
    std::fs::remove_dir(&folder).expect("rmdir");
    sync_dir(root);
    cut(&fs);
    assert!(!folder.exists(), "fsynced removals stay removed");
}

#[test]
fn a_truncate_reverts_without_an_fsync() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let path = fs.mountpoint().join("a");
    let content: Vec<u8> = (0..50_000u32).map(|i| (i % 13) as u8).collect();
    write_durable(&path, &content);
    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(100).expect("truncate");
    file.set_len(20_000).expect("extend");
    drop(file);
    assert_eq!(std::fs::read(&path).expect("read")[100..], vec![0; 19_900], "zeros past the truncation");
    cut(&fs);
    assert!(std::fs::read(&path).expect("read") == content, "the truncation was never durable");

    let file = OpenOptions::new().write(true).open(&path).expect("open");
    file.set_len(100).expect("truncate");
    file.sync_all().expect("fsync");
    drop(file);
    cut(&fs);
    assert_eq!(std::fs::read(&path).expect("read"), content[..100]);
}

#[test]
fn statfs_reports_the_capacity_and_a_write_past_it_fails_with_enospc() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    assert_eq!(fs2::total_space(fs.mountpoint()).expect("statvfs"), cutfs::DEFAULT_CAPACITY_BYTES);
    fs.set_capacity(1 << 20);
    write_durable(&fs.mountpoint().join("a"), &[7; 300_000]);
    let free = fs2::available_space(fs.mountpoint()).expect("statvfs");
    assert_eq!(free, (1 << 20) - 300_000u64.div_ceil(PAGE_BYTES) * PAGE_BYTES);
    let mut file = File::create(fs.mountpoint().join("b")).expect("create");
    let error = file.write_all(&[1; 1 << 20]).expect_err("more than is free");
    assert_eq!(error.raw_os_error(), Some(libc::ENOSPC), "{error}");
    drop(file);
    std::fs::remove_file(fs.mountpoint().join("b")).expect("unlink");
    std::fs::remove_file(fs.mountpoint().join("a")).expect("unlink");
    // A cut could bring back a removal the folder fsync has not made durable, so its pages stay
    // charged until then. And the kernel sends FUSE's release after close() has returned, while
    // an unlinked file keeps its pages as long as it is open: wait (bounded) for the release.
    sync_dir(fs.mountpoint());
    for _ in 0..200 {
        if fs.used_bytes() == 0 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(fs.used_bytes(), 0, "the unlinked files' pages are freed once closed");
    let mut file = File::create(fs.mountpoint().join("c")).expect("create");
    file.write_all(&[1; 500_000]).expect("space is free again: the names were removed");
}

#[test]
fn temp_files_persisted_by_rename_and_a_folder_fsync_survive() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let root = fs.mountpoint();
    let mut temp = tempfile::NamedTempFile::new_in(root).expect("temp file");
    temp.write_all(b"persisted").expect("write");
    temp.as_file().sync_all().expect("fsync");
    temp.persist(root.join("kept")).expect("persist");
    sync_dir(root);
    let mut dropped = tempfile::NamedTempFile::new_in(root).expect("temp file");
    dropped.write_all(b"never persisted").expect("write");
    drop(dropped);
    cut(&fs);
    assert_eq!(std::fs::read(root.join("kept")).expect("read"), b"persisted");
    let names: Vec<_> = std::fs::read_dir(root).expect("readdir").map(|e| e.expect("entry").file_name()).collect();
    assert_eq!(names, ["kept"]);
}

/// Env var that makes [`child_writer`] the loop of a child process: the folder to write in.
const CHILD_WRITES_IN: &str = "CUTFS_CHILD_WRITES_IN";

/// Not a test by itself: run as a child process by the next test (this binary, this test
/// only), it appends numbered lines to `synced` (each fsynced) and `unsynced` (never) until it
/// is killed.
#[test]
fn child_writer() {
    let Some(folder) = std::env::var_os(CHILD_WRITES_IN) else { return };
    let folder = Path::new(&folder);
    let mut synced = OpenOptions::new().append(true).open(folder.join("synced")).expect("open synced");
    let mut unsynced = OpenOptions::new().append(true).open(folder.join("unsynced")).expect("open unsynced");
    for n in 0u64.. {
        if synced.write_all(format!("{n}\n").as_bytes()).and_then(|()| synced.sync_data()).is_err() {
            return;
        }
        if unsynced.write_all(format!("{n}\n").as_bytes()).is_err() {
            return;
        }
    }
}

#[test]
fn a_cut_under_a_child_writing_in_a_loop_does_not_deadlock_and_its_later_writes_never_land() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    let root = fs.mountpoint().to_path_buf();
    write_durable(&root.join("synced"), b"");
    write_durable(&root.join("unsynced"), b"");
    for round in 0..5 {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["child_writer", "--exact", "--nocapture"])
            .env(CHILD_WRITES_IN, &root)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let started = Instant::now();
        let lines = |name: &str| std::fs::read_to_string(root.join(name)).expect("read").lines().count();
        let lines_before = lines("synced");
        while lines("synced") < lines_before + 50 {
            assert!(started.elapsed() < Duration::from_secs(30), "the child writes");
            std::thread::sleep(Duration::from_millis(5));
        }
        let refused_before = fs.stats().requests_refused;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let pid = child.id();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                fs.cut(|| {
                    child.kill().expect("SIGKILL the child");
                    child.wait().expect("reap the child");
                });
                let _ = done_tx.send(());
            });
            done_rx.recv_timeout(Duration::from_secs(30)).unwrap_or_else(|_| panic!("the cut of child {pid} hangs"));
        });
        let synced = std::fs::read_to_string(root.join("synced")).expect("read");
        let numbers: Vec<u64> = synced.lines().map(|l| l.parse().expect("whole lines only")).collect();
        assert!(numbers.windows(2).all(|w| w[1] == w[0] + 1 || w[1] == 0), "fsynced lines, none missing");
        assert!(numbers.len() >= lines_before + 50, "every fsynced line survives: {}", numbers.len());
        assert_eq!(std::fs::read(root.join("unsynced")).expect("read"), b"", "never fsynced: empty");
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(std::fs::read_to_string(root.join("synced")).expect("read"), synced, "nothing lands later");
        eprintln!(
            "cut {round}: {} fsynced lines kept, {} requests refused in the cut",
            numbers.len(),
            fs.stats().requests_refused - refused_before
        );
    }
}

#[test]
fn with_journaled_names_any_fsync_keeps_every_name_but_not_unsynced_data() {
    let dir = tempfile::tempdir().expect("tempdir");
    let Some(fs) = cutfs::mount_or_skip(&dir.path().join("mnt")) else { return };
    fs.set_journaled_names(true);
    let root = fs.mountpoint();
    std::fs::create_dir(root.join("d")).expect("mkdir");
    std::fs::write(root.join("d/unsynced"), b"never fsynced").expect("write");
    let mut file = File::create(root.join("d/synced")).expect("create");
    file.write_all(b"fsynced").expect("write");
    file.sync_all().expect("fsync the file only");
    drop(file);
    cut(&fs);
    assert_eq!(std::fs::read(root.join("d/synced")).expect("read"), b"fsynced");
    assert_eq!(std::fs::read(root.join("d/unsynced")).expect("the name stays"), b"", "its data does not");
}
