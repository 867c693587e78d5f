//! The tree of a [`super::CutFs`]: inodes, each directory's live and durable entry tables, the
//! open handles of this power-on, and the space in use. Plain data, no FUSE: the handlers in
//! `mod.rs` lock it, call one method, and answer with its result.
//!
//! What a cut keeps is what was fsynced: a file's data with an fsync of that file, a name with
//! an fsync of the directory that holds it (as POSIX promises and ext4 with `data=writeback`
//! or XFS deliver; ext4's default ordered mode often keeps more, which a test must not count
//! on). Metadata other than names and data (mode, owner, times) is not modelled: it survives.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::ffi::{OsStr, OsString};
use std::time::SystemTime;

use fuser::{Errno, FileAttr, FileType, INodeNo};

use super::pages::{Pages, PAGE_BYTES};

/// The root directory's inode number (FUSE's).
pub const ROOT: u64 = 1;

/// Longest name, in bytes, as on ext4.
const NAME_BYTES_MAX: usize = 255;

/// What a cut did, added up over the mount's life.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CutStats {
    /// Cuts made.
    pub cuts: u64,
    /// Bytes written but not fsynced when a cut came (whole dirty pages).
    pub bytes_dropped: u64,
    /// Directory entries created, renamed or removed but not fsynced when a cut came.
    pub names_dropped: u64,
    /// Files and folders that a cut left unreachable from the root's durable tree.
    pub inodes_dropped: u64,
    /// fsync and fdatasync calls on files.
    pub file_syncs: u64,
    /// fsync calls on directories.
    pub dir_syncs: u64,
    /// Requests failed with EIO because a cut started after the kernel handed them over (or
    /// while it was under way): they came from the processes the cut killed.
    pub requests_refused: u64,
}

#[derive(Debug)]
enum Content {
    File(Pages),
    Dir(Dir),
}

/// A directory's entries: the live table, the durable one, and the names whose entry differs
/// between them, so that an fsync or a cut costs the changes, not the folder's size.
#[derive(Debug, Default)]
struct Dir {
    live: BTreeMap<OsString, u64>,
    durable: BTreeMap<OsString, u64>,
    changed: BTreeSet<OsString>,
    /// The live parent (for `..` and the rename-into-itself check).
    parent: u64,
}

#[derive(Debug)]
struct Inode {
    content: Content,
    perm: u16,
    uid: u32,
    gid: u32,
    atime: SystemTime,
    mtime: SystemTime,
    ctime: SystemTime,
    /// Names in live tables.
    links: u32,
    /// Names in durable tables: an inode with none, no live name and no open handle is freed.
    durable_links: u32,
    /// Open handles of this power-on.
    open: u32,
    /// Bytes counted in [`Tree::used_bytes`] for it.
    charged: u64,
}

impl Inode {
    fn new(content: Content, perm: u16, uid: u32, gid: u32) -> Self {
        let now = SystemTime::now();
        Self {
            content,
            perm,
            uid,
            gid,
            atime: now,
            mtime: now,
            ctime: now,
            links: 0,
            durable_links: 0,
            open: 0,
            charged: 0,
        }
    }

    fn charge(&self) -> u64 {
        match &self.content {
            Content::File(pages) => pages.held_bytes().div_ceil(PAGE_BYTES) * PAGE_BYTES,
            Content::Dir(_) => 0,
        }
    }

    fn is_dir(&self) -> bool {
        matches!(self.content, Content::Dir(_))
    }
}

/// Every inode and handle, and whether a cut is under way.
#[derive(Debug)]
pub struct Tree {
    inodes: HashMap<u64, Inode>,
    /// Never reused: the kernel may still hold a number a cut freed.
    next_ino: u64,
    /// Open handle → inode. Cleared by a cut: a handle opened before it answers EIO after it.
    handles: HashMap<u64, u64>,
    /// Never reused, for the same reason as inode numbers.
    next_fh: u64,
    /// Set while a cut is under way: every request then fails with EIO (see `CutFs::cut`).
    pub frozen: bool,
    pub capacity_bytes: u64,
    used_bytes: u64,
    pub stats: CutStats,
    /// Folders with names changed since their last fsync.
    changed_dirs: BTreeSet<u64>,
    /// Any fsync makes every folder's names durable: a file system whose metadata journal
    /// commits all name changes at once (what ext4 and XFS do in practice), rather than
    /// only what POSIX promises. Off by default.
    pub journaled_names: bool,
}

fn check_name(name: &OsStr) -> Result<(), Errno> {
    if name.len() > NAME_BYTES_MAX {
        return Err(Errno::ENAMETOOLONG);
    }
    Ok(())
}

impl Tree {
    pub fn new(capacity_bytes: u64, uid: u32, gid: u32) -> Self {
        let mut root = Inode::new(Content::Dir(Dir { parent: ROOT, ..Dir::default() }), 0o755, uid, gid);
        root.links = 1;
        root.durable_links = 1;
        Self {
            inodes: HashMap::from([(ROOT, root)]),
            next_ino: ROOT + 1,
            handles: HashMap::new(),
            next_fh: 1,
            frozen: false,
            capacity_bytes,
            used_bytes: 0,
            stats: CutStats::default(),
            changed_dirs: BTreeSet::new(),
            journaled_names: false,
        }
    }

    pub fn used_bytes(&self) -> u64 {
        self.used_bytes
    }

    pub fn inode_count(&self) -> u64 {
        self.inodes.len() as u64
    }

    fn inode(&self, ino: u64) -> Result<&Inode, Errno> {
        self.inodes.get(&ino).ok_or(Errno::ENOENT)
    }

    fn inode_mut(&mut self, ino: u64) -> Result<&mut Inode, Errno> {
        self.inodes.get_mut(&ino).ok_or(Errno::ENOENT)
    }

    fn dir(&self, ino: u64) -> Result<&Dir, Errno> {
        match &self.inode(ino)?.content {
            Content::Dir(dir) => Ok(dir),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn dir_mut(&mut self, ino: u64) -> Result<&mut Dir, Errno> {
        match &mut self.inode_mut(ino)?.content {
            Content::Dir(dir) => Ok(dir),
            Content::File(_) => Err(Errno::ENOTDIR),
        }
    }

    fn pages(&self, ino: u64) -> Result<&Pages, Errno> {
        match &self.inode(ino)?.content {
            Content::File(pages) => Ok(pages),
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    fn pages_mut(&mut self, ino: u64) -> Result<&mut Pages, Errno> {
        match &mut self.inode_mut(ino)?.content {
            Content::File(pages) => Ok(pages),
            Content::Dir(_) => Err(Errno::EISDIR),
        }
    }

    pub fn attr(&self, ino: u64) -> Result<FileAttr, Errno> {
        let inode = self.inode(ino)?;
        let (kind, size, nlink) = match &inode.content {
            Content::File(pages) => (FileType::RegularFile, pages.live_len(), inode.links),
            // 1: "unknown", so that no tool counts subfolders by it (as btrfs reports).
            Content::Dir(_) => (FileType::Directory, 4096, 1),
        };
        Ok(FileAttr {
            ino: INodeNo(ino),
            size,
            blocks: inode.charge() / 512,
            atime: inode.atime,
            mtime: inode.mtime,
            ctime: inode.ctime,
            crtime: inode.ctime,
            kind,
            perm: inode.perm,
            nlink,
            uid: inode.uid,
            gid: inode.gid,
            rdev: 0,
            blksize: PAGE_BYTES as u32,
            flags: 0,
        })
    }

    pub fn lookup(&self, parent: u64, name: &OsStr) -> Result<FileAttr, Errno> {
        check_name(name)?;
        let ino = self.dir(parent)?.live.get(name).copied().ok_or(Errno::ENOENT)?;
        self.attr(ino)
    }

    /// Adds the live entry `parent/name → ino`.
    fn link_name(&mut self, parent: u64, name: &OsStr, ino: u64) -> Result<(), Errno> {
        let dir = self.dir_mut(parent)?;
        dir.live.insert(name.to_owned(), ino);
        dir.changed.insert(name.to_owned());
        self.changed_dirs.insert(parent);
        let inode = self.inode_mut(ino)?;
        inode.links += 1;
        inode.ctime = SystemTime::now();
        if let Content::Dir(dir) = &mut inode.content {
            dir.parent = parent;
        }
        Ok(())
    }

    /// Removes the live entry `parent/name`; returns the inode it named.
    fn unlink_name(&mut self, parent: u64, name: &OsStr) -> Result<u64, Errno> {
        let dir = self.dir_mut(parent)?;
        let ino = dir.live.remove(name).ok_or(Errno::ENOENT)?;
        dir.changed.insert(name.to_owned());
        self.changed_dirs.insert(parent);
        let inode = self.inode_mut(ino)?;
        inode.links -= 1;
        inode.ctime = SystemTime::now();
        Ok(ino)
    }

    /// A new inode named `parent/name`.
    fn make(
        &mut self,
        parent: u64,
        name: &OsStr,
        content: Content,
        perm: u16,
        uid: u32,
        gid: u32,
    ) -> Result<u64, Errno> {
        check_name(name)?;
        if self.dir(parent)?.live.contains_key(name) {
            return Err(Errno::EEXIST);
        }
        let ino = self.next_ino;
        self.next_ino += 1;
        self.inodes.insert(ino, Inode::new(content, perm, uid, gid));
        self.link_name(parent, name, ino)?;
        Ok(ino)
    }

    pub fn create_file(&mut self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<u64, Errno> {
        self.make(parent, name, Content::File(Pages::new()), (mode & 0o7777) as u16, uid, gid)
    }

    pub fn mkdir(&mut self, parent: u64, name: &OsStr, mode: u32, uid: u32, gid: u32) -> Result<u64, Errno> {
        self.make(parent, name, Content::Dir(Dir::default()), (mode & 0o7777) as u16, uid, gid)
    }

    pub fn unlink(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.dir(parent)?.live.get(name).copied().ok_or(Errno::ENOENT)?;
        if self.inode(ino)?.is_dir() {
            return Err(Errno::EISDIR);
        }
        self.unlink_name(parent, name)?;
        self.free_if_unused(ino);
        Ok(())
    }

    pub fn rmdir(&mut self, parent: u64, name: &OsStr) -> Result<(), Errno> {
        let ino = self.dir(parent)?.live.get(name).copied().ok_or(Errno::ENOENT)?;
        if !self.dir(ino)?.live.is_empty() {
            return Err(Errno::ENOTEMPTY);
        }
        self.unlink_name(parent, name)?;
        self.free_if_unused(ino);
        Ok(())
    }

    /// Whether `ancestor` is `ino` or above it in the live tree.
    fn is_at_or_above(&self, ancestor: u64, mut ino: u64) -> bool {
        loop {
            if ino == ancestor {
                return true;
            }
            match self.dir(ino) {
                Ok(dir) if ino != ROOT => ino = dir.parent,
                _ => return false,
            }
        }
    }

    pub fn rename(
        &mut self,
        parent: u64,
        name: &OsStr,
        newparent: u64,
        newname: &OsStr,
        noreplace: bool,
    ) -> Result<(), Errno> {
        check_name(newname)?;
        let ino = self.dir(parent)?.live.get(name).copied().ok_or(Errno::ENOENT)?;
        let moving_dir = self.inode(ino)?.is_dir();
        if moving_dir && self.is_at_or_above(ino, newparent) {
            return Err(Errno::EINVAL);
        }
        let target = self.dir(newparent)?.live.get(newname).copied();
        if let Some(target) = target {
            if noreplace {
                return Err(Errno::EEXIST);
            }
            if target == ino {
                return Ok(());
            }
            match (moving_dir, self.inode(target)?.is_dir()) {
                (true, false) => return Err(Errno::ENOTDIR),
                (false, true) => return Err(Errno::EISDIR),
                (true, true) if !self.dir(target)?.live.is_empty() => return Err(Errno::ENOTEMPTY),
                _ => {}
            }
            self.unlink_name(newparent, newname)?;
        }
        self.unlink_name(parent, name)?;
        self.link_name(newparent, newname, ino)?;
        if let Some(target) = target {
            self.free_if_unused(target);
        }
        Ok(())
    }

    pub fn link(&mut self, ino: u64, newparent: u64, newname: &OsStr) -> Result<(), Errno> {
        check_name(newname)?;
        if self.inode(ino)?.is_dir() {
            return Err(Errno::EPERM);
        }
        if self.dir(newparent)?.live.contains_key(newname) {
            return Err(Errno::EEXIST);
        }
        self.link_name(newparent, newname, ino)
    }

    /// Frees `ino` (and what only it held) once nothing names or holds it, live or durable.
    fn free_if_unused(&mut self, ino: u64) {
        let mut candidates = vec![ino];
        while let Some(ino) = candidates.pop() {
            let unused = match self.inodes.get(&ino) {
                Some(inode) => ino != ROOT && inode.links == 0 && inode.durable_links == 0 && inode.open == 0,
                None => false,
            };
            if !unused {
                continue;
            }
            let Some(inode) = self.inodes.remove(&ino) else { continue };
            self.used_bytes -= inode.charged;
            if let Content::Dir(dir) = inode.content {
                for child in dir.durable.into_values() {
                    if let Some(child_inode) = self.inodes.get_mut(&child) {
                        child_inode.durable_links -= 1;
                        candidates.push(child);
                    }
                }
            }
        }
    }

    /// Opens `ino` (a file, or a folder when `dir`); returns the handle.
    pub fn open(&mut self, ino: u64, dir: bool) -> Result<u64, Errno> {
        let inode = self.inode_mut(ino)?;
        match (dir, inode.is_dir()) {
            (true, false) => return Err(Errno::ENOTDIR),
            (false, true) => return Err(Errno::EISDIR),
            _ => {}
        }
        inode.open += 1;
        let fh = self.next_fh;
        self.next_fh += 1;
        self.handles.insert(fh, ino);
        Ok(fh)
    }

    /// A handle of this power-on, open on `ino`; one from before a cut is gone with the power.
    pub fn check_handle(&self, fh: u64, ino: u64) -> Result<(), Errno> {
        match self.handles.get(&fh) {
            Some(&open) if open == ino => Ok(()),
            _ => Err(Errno::EIO),
        }
    }

    /// Closes a handle; a handle from before a cut is ignored.
    pub fn release(&mut self, fh: u64) {
        if let Some(ino) = self.handles.remove(&fh) {
            if let Some(inode) = self.inodes.get_mut(&ino) {
                inode.open -= 1;
            }
            self.free_if_unused(ino);
        }
    }

    /// Refuses with ENOSPC a change that would make `ino` hold `held` bytes if the capacity
    /// cannot take the growth.
    fn reserve(&self, ino: u64, held: u64) -> Result<(), Errno> {
        let inode = self.inode(ino)?;
        let charge = held.div_ceil(PAGE_BYTES) * PAGE_BYTES;
        if charge > inode.charged && self.used_bytes - inode.charged + charge > self.capacity_bytes {
            return Err(Errno::ENOSPC);
        }
        Ok(())
    }

    fn recharge(&mut self, ino: u64) {
        if let Some(inode) = self.inodes.get_mut(&ino) {
            let charge = inode.charge();
            self.used_bytes = self.used_bytes - inode.charged + charge;
            inode.charged = charge;
        }
    }

    pub fn read(&mut self, ino: u64, offset: u64, size: u64) -> Result<Vec<u8>, Errno> {
        let data = self.pages(ino)?.read(offset, size);
        self.inode_mut(ino)?.atime = SystemTime::now();
        Ok(data)
    }

    pub fn write(&mut self, ino: u64, offset: u64, data: &[u8]) -> Result<(), Errno> {
        let end = offset.checked_add(data.len() as u64).ok_or(Errno::EFBIG)?;
        self.reserve(ino, self.pages(ino)?.held_bytes().max(end))?;
        self.pages_mut(ino)?.write(offset, data);
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        inode.ctime = inode.mtime;
        self.recharge(ino);
        Ok(())
    }

    pub fn set_len(&mut self, ino: u64, len: u64) -> Result<(), Errno> {
        self.reserve(ino, self.pages(ino)?.held_bytes().max(len))?;
        self.pages_mut(ino)?.set_len(len);
        let inode = self.inode_mut(ino)?;
        inode.mtime = SystemTime::now();
        inode.ctime = inode.mtime;
        self.recharge(ino);
        Ok(())
    }

    /// fallocate mode 0: the file grows with zeros to `offset + length` if it is shorter.
    pub fn allocate(&mut self, ino: u64, offset: u64, length: u64) -> Result<(), Errno> {
        let end = offset.checked_add(length).ok_or(Errno::EFBIG)?;
        if end > self.pages(ino)?.live_len() {
            self.set_len(ino, end)?;
        }
        Ok(())
    }

    pub fn set_perm(&mut self, ino: u64, mode: u32) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.perm = (mode & 0o7777) as u16;
        inode.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_owner(&mut self, ino: u64, uid: Option<u32>, gid: Option<u32>) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.uid = uid.unwrap_or(inode.uid);
        inode.gid = gid.unwrap_or(inode.gid);
        inode.ctime = SystemTime::now();
        Ok(())
    }

    pub fn set_times(&mut self, ino: u64, atime: Option<SystemTime>, mtime: Option<SystemTime>) -> Result<(), Errno> {
        let inode = self.inode_mut(ino)?;
        inode.atime = atime.unwrap_or(inode.atime);
        inode.mtime = mtime.unwrap_or(inode.mtime);
        inode.ctime = SystemTime::now();
        Ok(())
    }

    /// fsync or fdatasync of a file: all its data and its size become durable.
    pub fn sync_file(&mut self, ino: u64) -> Result<(), Errno> {
        self.pages_mut(ino)?.sync();
        self.recharge(ino);
        self.stats.file_syncs += 1;
        if self.journaled_names {
            self.sync_all_names();
        }
        Ok(())
    }

    /// Every folder's names become durable (the journal commit of [`Tree::journaled_names`]).
    fn sync_all_names(&mut self) {
        for dir in std::mem::take(&mut self.changed_dirs) {
            let _ = self.sync_names(dir);
        }
    }

    /// fsync of a folder: its whole entry table becomes durable.
    pub fn sync_dir(&mut self, ino: u64) -> Result<(), Errno> {
        self.sync_names(ino)?;
        self.stats.dir_syncs += 1;
        if self.journaled_names {
            self.sync_all_names();
        }
        Ok(())
    }

    fn sync_names(&mut self, ino: u64) -> Result<(), Errno> {
        self.changed_dirs.remove(&ino);
        let dir = self.dir_mut(ino)?;
        let mut moved = Vec::new();
        for name in std::mem::take(&mut dir.changed) {
            let live = dir.live.get(&name).copied();
            let durable = match live {
                Some(ino) => dir.durable.insert(name, ino),
                None => dir.durable.remove(&name),
            };
            if live != durable {
                moved.push((durable, live));
            }
        }
        let mut unlinked = Vec::new();
        for (old, new) in moved {
            if let Some(inode) = new.and_then(|new| self.inodes.get_mut(&new)) {
                inode.durable_links += 1;
            }
            if let Some(old) = old {
                if let Some(inode) = self.inodes.get_mut(&old) {
                    inode.durable_links -= 1;
                }
                unlinked.push(old);
            }
        }
        for old in unlinked {
            self.free_if_unused(old);
        }
        Ok(())
    }

    /// Up to the live entries of a folder after the first `offset`, with `.` and `..` first:
    /// (inode, next offset, kind, name).
    pub fn entries(&self, ino: u64, offset: u64) -> Result<Vec<(u64, u64, FileType, OsString)>, Errno> {
        let dir = self.dir(ino)?;
        let dots = [(ino, OsString::from(".")), (dir.parent, OsString::from(".."))];
        let named = dir.live.iter().map(|(name, &child)| (child, name.clone()));
        Ok(dots
            .into_iter()
            .chain(named)
            .enumerate()
            .skip(offset as usize)
            .map(|(i, (child, name))| {
                let kind = match self.inodes.get(&child) {
                    Some(inode) if inode.is_dir() => FileType::Directory,
                    _ => FileType::RegularFile,
                };
                (child, i as u64 + 1, kind, name)
            })
            .collect())
    }

    /// The power cut itself: every file reverts to its durable content, every folder to its
    /// durable table, handles close, and inodes that the root's durable tree no longer reaches
    /// are freed. A folder that the durable tables name twice (a rename between two folders
    /// of which only the target was fsynced) keeps its first name found, as fsck would leave it.
    pub fn drop_volatile(&mut self) {
        let mut stats = self.stats;
        stats.cuts += 1;
        for inode in self.inodes.values_mut() {
            match &mut inode.content {
                Content::File(pages) => stats.bytes_dropped += pages.revert(),
                Content::Dir(dir) => {
                    stats.names_dropped += dir.changed.len() as u64;
                    for name in std::mem::take(&mut dir.changed) {
                        match dir.durable.get(&name) {
                            Some(&ino) => dir.live.insert(name, ino),
                            None => dir.live.remove(&name),
                        };
                    }
                }
            }
            inode.links = 0;
            inode.durable_links = 0;
            inode.open = 0;
        }
        self.handles.clear();
        self.changed_dirs.clear();

        let mut reached = HashSet::from([ROOT]);
        let mut folders = vec![ROOT];
        while let Some(folder) = folders.pop() {
            let entries: Vec<(OsString, u64)> = match self.dir(folder) {
                Ok(dir) => dir.durable.iter().map(|(name, &ino)| (name.clone(), ino)).collect(),
                Err(_) => continue,
            };
            for (name, child) in entries {
                let first_visit = reached.insert(child);
                let Some(is_dir) = self.inodes.get(&child).map(Inode::is_dir) else { continue };
                if is_dir && !first_visit {
                    if let Ok(parent) = self.dir_mut(folder) {
                        parent.durable.remove(&name);
                        parent.live.remove(&name);
                    }
                    stats.names_dropped += 1;
                    continue;
                }
                let Some(inode) = self.inodes.get_mut(&child) else { continue };
                if let Content::Dir(dir) = &mut inode.content {
                    dir.parent = folder;
                    folders.push(child);
                }
                inode.links += 1;
                inode.durable_links += 1;
            }
        }
        let before = self.inodes.len();
        self.inodes.retain(|ino, _| reached.contains(ino));
        stats.inodes_dropped += (before - self.inodes.len()) as u64;
        if let Some(root) = self.inodes.get_mut(&ROOT) {
            root.links = 1;
            root.durable_links = 1;
        }
        self.used_bytes = 0;
        for inode in self.inodes.values_mut() {
            inode.charged = inode.charge();
            self.used_bytes += inode.charged;
        }
        self.stats = stats;
    }
}
