//! CutFs: an in-process FUSE file system that models a power cut, for fault tests.
//!
//! kill -9 (tests/crash.rs) keeps everything a process wrote, fsynced or not, because the
//! kernel's page cache outlives the process. A power cut does not: what was written but not
//! fsynced is gone. CutFs holds every file in the test's memory as durable content plus
//! volatile changes, and [`CutFs::cut`] drops the volatile part at once:
//!
//! - a file's data (`write`, truncate, `fallocate`) becomes durable with an `fsync` or
//!   `fdatasync` of that file, through any handle; `close` makes nothing durable;
//! - a name (created, renamed in or away, linked, removed; mkdir and rmdir too) becomes
//!   durable with an `fsync` of the folder that holds it, and then the folder's whole table
//!   does; a rename between folders needs both;
//! - at a cut, files and folders go back to their durable state, and whatever the root's
//!   durable tree no longer reaches is freed.
//!
//! The kernel must not hide a cut: entries and attributes are cached for 0 s, files are opened
//! without `keep_cache` (so the page cache is dropped at the next open), no writeback cache, and
//! no lock support is advertised (flock and fcntl locks stay in the kernel).
//!
//! The test process hosts the file system, and every process a test starts is stopped by its
//! pid. fuser mounts without libfuse: with mount(2) when the test runs as root, otherwise
//! through `fusermount3` (Debian's `fuse3`). (fuser's `auto_unmount` is not used: its
//! fusermount3 helper exited at once here and the unmount at drop then waited forever.)

#![allow(dead_code)]

pub mod pages;
mod tree;

use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, SystemTime};

use fuser::{
    AccessFlags, BackgroundSession, Errno, FileHandle, Filesystem, FopenFlags, Generation, INodeNo, LockOwner,
    MountOption, OpenFlags, RenameFlags, ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry,
    ReplyOpen, ReplyStatfs, ReplyWrite, Request, SessionACL, TimeOrNow, WriteFlags,
};

pub use tree::CutStats;
use tree::Tree;

/// Capacity a mount reports until a test sets another: large enough for any test's data, so
/// that a server's free-space checks see a healthy disk.
pub const DEFAULT_CAPACITY_BYTES: u64 = 16 << 30;

/// How long the kernel may cache an entry or attributes: never, so a cut is seen at once.
const TTL: Duration = Duration::ZERO;

/// fallocate's `FALLOC_FL_KEEP_SIZE`: reserve without growing, which a model without blocks
/// can take as done.
const FALLOC_FL_KEEP_SIZE: i32 = 1;

/// The state behind the mount, shared by the FUSE session thread and the test.
#[derive(Debug)]
struct Shared {
    /// Advanced when a cut starts and when it ends. A handler reads it before it takes the
    /// lock and fails with EIO if it moved: a request read from the kernel before or during a
    /// cut came from a process the cut killed, and must not land after it.
    epoch: AtomicU64,
    tree: Mutex<Tree>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Tree> {
        // A panicking handler leaves the tree as consistent as its last whole step.
        self.tree.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A mounted CutFs. Dropping it unmounts.
#[derive(Debug)]
pub struct CutFs {
    shared: Arc<Shared>,
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
}

/// Why CutFs cannot mount here, or `None` if it can. Installs `fusermount3` (Debian's `fuse3`)
/// through `.ci/need-deb` where it is missing and that is allowed; asked once per process.
pub fn unavailable() -> Option<String> {
    static REASON: OnceLock<Option<String>> = OnceLock::new();
    REASON
        .get_or_init(|| {
            if !Path::new("/dev/fuse").exists() {
                return Some("/dev/fuse is missing: this kernel or container offers no FUSE".into());
            }
            let script = concat!(env!("CARGO_MANIFEST_DIR"), "/.ci/need-deb");
            match Command::new("bash").args([script, "fusermount3", "fuse3"]).output() {
                Ok(output) if output.status.success() => None,
                Ok(output) => Some(format!(
                    "fusermount3 is missing and could not be installed: {}",
                    String::from_utf8_lossy(&output.stderr).trim()
                )),
                Err(e) => Some(format!("fusermount3 is missing and .ci/need-deb could not run: {e}")),
            }
        })
        .clone()
}

/// Mounts a CutFs at `mountpoint` (created if missing), or says on stderr why this test skips
/// and returns `None`.
pub fn mount_or_skip(mountpoint: &Path) -> Option<CutFs> {
    mount_or_why(mountpoint).map_err(|why| eprintln!("skipped: {why}")).ok()
}

/// Mounts a CutFs at `mountpoint`, or says why it cannot be had here.
pub fn mount_or_why(mountpoint: &Path) -> Result<CutFs, String> {
    if let Some(reason) = unavailable() {
        return Err(reason);
    }
    CutFs::mount(mountpoint).map_err(|e| format!("cannot mount a FUSE file system at {}: {e}", mountpoint.display()))
}

impl CutFs {
    /// Mounts an empty CutFs at `mountpoint` (created if missing), served by a thread of this
    /// process.
    pub fn mount(mountpoint: &Path) -> std::io::Result<Self> {
        std::fs::create_dir_all(mountpoint)?;
        let uid = std::fs::metadata(mountpoint)?.uid();
        let gid = std::fs::metadata(mountpoint)?.gid();
        let shared = Arc::new(Shared {
            epoch: AtomicU64::new(0),
            tree: Mutex::new(Tree::new(DEFAULT_CAPACITY_BYTES, uid, gid)),
        });
        let mut config = fuser::Config::default();
        config.mount_options = vec![MountOption::FSName("cutfs".into()), MountOption::Subtype("cutfs".into())];
        // Only the test's user reaches the mount; the processes it starts run as that user.
        config.acl = SessionACL::Owner;
        let session = fuser::spawn_mount(Handlers { shared: shared.clone() }, mountpoint, &config)?;
        Ok(Self { shared, session: Some(session), mountpoint: mountpoint.to_path_buf() })
    }

    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// A power cut. Freezes the file system, runs `kill` (which must stop every process that
    /// writes here, by pid, and reap it), then drops everything volatile at once and thaws.
    ///
    /// While frozen, every request fails with EIO rather than waiting: a killed process that
    /// is inside a FUSE request cannot exit until the request is answered (the kernel waits
    /// uninterruptibly once the daemon has read it), and `kill` waits for that exit. A request
    /// failed is a request not applied, which is what the cut needs. The caller must not touch
    /// the mount from inside `kill`.
    pub fn cut(&self, kill: impl FnOnce()) {
        {
            let mut tree = self.shared.lock();
            tree.frozen = true;
            self.shared.epoch.fetch_add(1, Ordering::SeqCst);
        }
        kill();
        let mut tree = self.shared.lock();
        tree.drop_volatile();
        tree.frozen = false;
        self.shared.epoch.fetch_add(1, Ordering::SeqCst);
    }

    /// Sets the capacity `statfs` reports; a write that would take more fails with ENOSPC.
    pub fn set_capacity(&self, bytes: u64) {
        self.shared.lock().capacity_bytes = bytes;
    }

    /// With `true`, any fsync makes every folder's names durable, as a file system whose
    /// metadata journal commits all name changes together (ext4, XFS) leaves them; file data
    /// still needs its own fsync. The default (`false`) keeps only what POSIX promises.
    pub fn set_journaled_names(&self, journaled: bool) {
        self.shared.lock().journaled_names = journaled;
    }

    /// Bytes the files hold (the larger of live and durable size, in whole pages).
    pub fn used_bytes(&self) -> u64 {
        self.shared.lock().used_bytes()
    }

    pub fn stats(&self) -> CutStats {
        self.shared.lock().stats
    }
}

impl Drop for CutFs {
    fn drop(&mut self) {
        let Some(session) = self.session.take() else { return };
        self.shared.lock().frozen = false;
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = done_tx.send(session.umount_and_join());
        });
        if !matches!(done_rx.recv_timeout(Duration::from_secs(10)), Ok(Ok(()))) {
            // Busy (a process the test forgot still has a file open): detach it, so that the
            // session ends once the last user lets go.
            let _ = Command::new("umount").arg("-l").arg(&self.mountpoint).status();
        }
    }
}

/// The FUSE side: each handler locks the tree once, does one step, and answers.
struct Handlers {
    shared: Arc<Shared>,
}

fn system_time(time: TimeOrNow) -> SystemTime {
    match time {
        TimeOrNow::SpecificTime(time) => time,
        TimeOrNow::Now => SystemTime::now(),
    }
}

impl Handlers {
    /// Runs `step` on the tree, unless a cut started since the request was read (EIO). Called
    /// first thing in every handler, so that the epoch is read before the lock is taken.
    fn step<T>(&self, step: impl FnOnce(&mut Tree) -> Result<T, Errno>) -> Result<T, Errno> {
        let epoch = self.shared.epoch.load(Ordering::SeqCst);
        let mut tree = self.shared.lock();
        if tree.frozen || self.shared.epoch.load(Ordering::SeqCst) != epoch {
            tree.stats.requests_refused += 1;
            return Err(Errno::EIO);
        }
        step(&mut tree)
    }
}

fn entry(reply: ReplyEntry, result: Result<fuser::FileAttr, Errno>) {
    match result {
        Ok(attr) => reply.entry(&TTL, &attr, Generation(0)),
        Err(e) => reply.error(e),
    }
}

fn empty(reply: ReplyEmpty, result: Result<(), Errno>) {
    match result {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e),
    }
}

impl Filesystem for Handlers {
    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        entry(reply, self.step(|tree| tree.lookup(parent.0, name)));
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match self.step(|tree| tree.attr(ino.0)) {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        _ctime: Option<SystemTime>,
        fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let result = self.step(|tree| {
            let ino = ino.0;
            if let Some(fh) = fh {
                tree.check_handle(fh.0, ino)?;
            }
            if let Some(mode) = mode {
                tree.set_perm(ino, mode)?;
            }
            if uid.is_some() || gid.is_some() {
                tree.set_owner(ino, uid, gid)?;
            }
            if let Some(size) = size {
                tree.set_len(ino, size)?;
            }
            if atime.is_some() || mtime.is_some() {
                tree.set_times(ino, atime.map(system_time), mtime.map(system_time))?;
            }
            tree.attr(ino)
        });
        match result {
            Ok(attr) => reply.attr(&TTL, &attr),
            Err(e) => reply.error(e),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _rdev: u32,
        reply: ReplyEntry,
    ) {
        entry(
            reply,
            self.step(|tree| {
                if mode & libc::S_IFMT != libc::S_IFREG {
                    return Err(Errno::EPERM);
                }
                let ino = tree.create_file(parent.0, name, mode & !umask, req.uid(), req.gid())?;
                tree.attr(ino)
            }),
        );
    }

    fn mkdir(&self, req: &Request, parent: INodeNo, name: &OsStr, mode: u32, umask: u32, reply: ReplyEntry) {
        entry(
            reply,
            self.step(|tree| {
                let ino = tree.mkdir(parent.0, name, mode & !umask, req.uid(), req.gid())?;
                tree.attr(ino)
            }),
        );
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.step(|tree| tree.unlink(parent.0, name)));
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(reply, self.step(|tree| tree.rmdir(parent.0, name)));
    }

    fn rename(
        &self,
        _req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.step(|tree| {
                if !flags.difference(RenameFlags::RENAME_NOREPLACE).is_empty() {
                    return Err(Errno::EINVAL);
                }
                let noreplace = flags.contains(RenameFlags::RENAME_NOREPLACE);
                tree.rename(parent.0, name, newparent.0, newname, noreplace)
            }),
        );
    }

    fn link(&self, _req: &Request, ino: INodeNo, newparent: INodeNo, newname: &OsStr, reply: ReplyEntry) {
        entry(
            reply,
            self.step(|tree| {
                tree.link(ino.0, newparent.0, newname)?;
                tree.attr(ino.0)
            }),
        );
    }

    fn open(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.step(|tree| tree.open(ino.0, false)) {
            // No FOPEN_KEEP_CACHE: the kernel drops the file's page cache at each open.
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let result = self.step(|tree| {
            tree.check_handle(fh.0, ino.0)?;
            tree.read(ino.0, offset, u64::from(size))
        });
        match result {
            Ok(data) => reply.data(&data),
            Err(e) => reply.error(e),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let result = self.step(|tree| {
            tree.check_handle(fh.0, ino.0)?;
            tree.write(ino.0, offset, data)
        });
        match result {
            Ok(()) => reply.written(data.len() as u32),
            Err(e) => reply.error(e),
        }
    }

    fn flush(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _lock_owner: LockOwner, reply: ReplyEmpty) {
        empty(reply, self.step(|tree| tree.check_handle(fh.0, ino.0)));
    }

    fn release(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.step(|tree| {
                tree.release(fh.0);
                Ok(())
            }),
        );
    }

    fn fsync(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(
            reply,
            self.step(|tree| {
                tree.check_handle(fh.0, ino.0)?;
                tree.sync_file(ino.0)
            }),
        );
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        match self.step(|tree| tree.open(ino.0, true)) {
            Ok(fh) => reply.opened(FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn readdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, offset: u64, mut reply: ReplyDirectory) {
        let result = self.step(|tree| {
            tree.check_handle(fh.0, ino.0)?;
            tree.entries(ino.0, offset)
        });
        match result {
            Ok(entries) => {
                for (child, next, kind, name) in entries {
                    if reply.add(INodeNo(child), next, kind, name) {
                        break;
                    }
                }
                reply.ok();
            }
            Err(e) => reply.error(e),
        }
    }

    fn releasedir(&self, _req: &Request, _ino: INodeNo, fh: FileHandle, _flags: OpenFlags, reply: ReplyEmpty) {
        empty(
            reply,
            self.step(|tree| {
                tree.release(fh.0);
                Ok(())
            }),
        );
    }

    fn fsyncdir(&self, _req: &Request, ino: INodeNo, fh: FileHandle, _datasync: bool, reply: ReplyEmpty) {
        empty(
            reply,
            self.step(|tree| {
                tree.check_handle(fh.0, ino.0)?;
                tree.sync_dir(ino.0)
            }),
        );
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        match self.step(|tree| Ok((tree.capacity_bytes, tree.used_bytes(), tree.inode_count()))) {
            Ok((capacity, used, inodes)) => {
                let block = pages::PAGE_BYTES;
                let (blocks, free) = (capacity / block, capacity.saturating_sub(used) / block);
                let files = 1 << 24;
                reply.statfs(blocks, free, free, files, files - inodes.min(files), block as u32, 255, block as u32);
            }
            Err(e) => reply.error(e),
        }
    }

    fn access(&self, _req: &Request, ino: INodeNo, _mask: AccessFlags, reply: ReplyEmpty) {
        empty(reply, self.step(|tree| tree.attr(ino.0).map(|_| ())));
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let result = self.step(|tree| {
            let ino = tree.create_file(parent.0, name, mode & !umask, req.uid(), req.gid())?;
            let fh = tree.open(ino, false)?;
            Ok((tree.attr(ino)?, fh))
        });
        match result {
            Ok((attr, fh)) => reply.created(&TTL, &attr, Generation(0), FileHandle(fh), FopenFlags::empty()),
            Err(e) => reply.error(e),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        empty(
            reply,
            self.step(|tree| {
                tree.check_handle(fh.0, ino.0)?;
                match mode {
                    0 => tree.allocate(ino.0, offset, length),
                    FALLOC_FL_KEEP_SIZE => Ok(()),
                    _ => Err(Errno::EOPNOTSUPP),
                }
            }),
        );
    }
}
