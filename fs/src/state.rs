//! The file system's state and its namespace operations.
//!
//! One [`State`] holds the open image (metadata, allocator, pmem) and the
//! open-file table. The FUSE layer keeps it behind a reader-writer lock:
//! reads and lookups share it, anything that commits takes it alone. Every
//! change is one journal transaction built here, so each operation is
//! atomic across a crash.
//!
//! The state also holds the page cache ([`Cache`]): every commit keeps the
//! DAX spaces equal to the page maps it changed and drops the DRAM copies
//! of the pages it unmapped or replaced.

use std::collections::HashMap;

use pmemfs_ondisk::meta::{Dir, MAX_NAME};
use pmemfs_ondisk::{Attr, Body, Image, Ino, Inode, Kind, NewBody, Op, Time, ROOT_INO};

use crate::atime::{AtimePolicy, Atimes, FLUSH_BATCH};
use crate::cache::{Cache, CacheOptions};
use crate::error::{fail, FsResult};

/// Longest symbolic-link target, as PATH_MAX.
pub const MAX_SYMLINK: usize = 4095;

pub struct State {
    pub image: Image,
    read_only: bool,
    /// Open handles per inode: an unlinked inode lives until the last
    /// closes.
    opens: crate::opens::Opens,
    /// Write-only handles may be direct ([`crate::opens`]).
    direct_writes: bool,
    /// Under the writeback cache, the kernel's lookup count per inode: it
    /// may write back pages and times of an unlinked file after its last
    /// close, so such a file lives until the kernel forgets it.
    lookups: Option<parking_lot::Mutex<HashMap<Ino, u64>>>,
    cache: Cache,
    /// POSIX ACLs stored and honoured (see [`crate::acl`]).
    acls: bool,
    atime_policy: AtimePolicy,
    /// Access times recorded by reads, not yet committed.
    atimes: Atimes,
    /// Files written since the online dedupe scanner saw them.
    ksm: crate::ksm::Queue,
    /// Readers and in-place writers of a file's bytes (see
    /// [`crate::datalock`]).
    data_locks: crate::datalock::DataLocks,
}

/// The page range `[first, last]` of a file whose mapping `op` changes;
/// `Delete` changes all of it.
fn touched(op: &Op) -> Option<(Ino, u64, u64)> {
    let span =
        |ino, index: u64, len: u64| (len > 0).then(|| (ino, index, index.saturating_add(len - 1)));
    match *op {
        Op::Map {
            ino, index, len, ..
        }
        | Op::Unmap { ino, index, len } => span(ino, index, len),
        Op::Clone {
            dst,
            dst_index,
            len,
            ..
        } => span(dst, dst_index, len),
        Op::Delete { ino } => Some((ino, 0, u64::MAX)),
        _ => None,
    }
}

/// What a new inode is: the kind is in the mode's S_IFMT bits.
#[derive(Debug, Clone, Copy)]
pub struct NewInode<'a> {
    pub mode: u32,
    pub rdev: u32,
    /// A symbolic link's target.
    pub target: Option<&'a [u8]>,
}

/// Who is asking: for ownership of new inodes.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// The time for stamps: the kernel's coarse clock, the one it stamps files
/// with itself (under the writeback cache, say), so that stamps from both
/// never run backwards against each other.
pub fn now() -> Time {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec.
    if unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut ts) } != 0 {
        return pmemfs_ondisk::now();
    }
    Time {
        secs: ts.tv_sec,
        nsecs: ts.tv_nsec as u32,
    }
}

/// Most links an inode may have, as ext4's EXT4_LINK_MAX.
pub const LINK_MAX: u32 = 65000;

/// Checks a name from the kernel.
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > MAX_NAME {
        return fail(libc::ENAMETOOLONG);
    }
    if !pmemfs_ondisk::meta::valid_name(name) {
        return fail(libc::EINVAL);
    }
    Ok(())
}

impl State {
    /// A state without DRAM copies, on one node.
    pub fn new(image: Image, read_only: bool) -> State {
        Self::with_cache(image, read_only, CacheOptions::default())
    }

    pub fn with_cache(image: Image, read_only: bool, cache: CacheOptions) -> State {
        State {
            image,
            read_only,
            opens: crate::opens::Opens::default(),
            direct_writes: false,
            lookups: None,
            cache: Cache::new(cache),
            acls: true,
            atime_policy: AtimePolicy::default(),
            atimes: Atimes::default(),
            ksm: crate::ksm::Queue::default(),
            data_locks: Default::default(),
        }
    }

    /// The files the online dedupe scanner has yet to see (empty, and
    /// never filled, unless the mount scans).
    pub fn ksm_queue(&self) -> &crate::ksm::Queue {
        &self.ksm
    }

    /// Keeps unlinked inodes until the kernel forgets them, not only until
    /// their last close (for the writeback cache).
    pub fn track_lookups(&mut self) {
        self.lookups = Some(parking_lot::Mutex::new(HashMap::new()));
    }

    /// Whether lookups are counted ([`State::track_lookups`]).
    pub fn tracks_lookups(&self) -> bool {
        self.lookups.is_some()
    }

    /// The kernel learnt of `ino` from a reply (an entry it may cache).
    pub fn looked_up(&self, ino: Ino) {
        if let Some(l) = &self.lookups {
            *l.lock().entry(ino).or_default() += 1;
        }
    }

    /// Whether the kernel may still send requests for `ino` on its own.
    fn known_to_kernel(&self, ino: Ino) -> bool {
        self.lookups
            .as_ref()
            .is_some_and(|l| l.lock().get(&ino).is_some_and(|&n| n > 0))
    }

    /// The kernel forgot `n` lookups of `ino`; an unlinked inode nobody
    /// has open goes when the kernel knows it no more.
    pub fn forgot(&mut self, ino: Ino, n: u64) -> FsResult<()> {
        let Some(l) = &self.lookups else {
            return Ok(());
        };
        let left = {
            let mut l = l.lock();
            let Some(count) = l.get_mut(&ino) else {
                return Ok(());
            };
            *count = count.saturating_sub(n);
            let left = *count;
            if left == 0 {
                l.remove(&ino);
            }
            left
        };
        if left == 0 && !self.opens.is_open(ino) {
            self.let_go_if_unlinked(ino)?;
        }
        Ok(())
    }

    /// Ops that let go of `ino`, which has no names and no open handles:
    /// its deletion, or, while the kernel still knows it (the writeback
    /// cache keeps an inode until FORGET, for the time updates the kernel
    /// may still send), only its pages, which nothing can read any more:
    /// the space comes back at the unlink, as on XFS, not when the kernel
    /// forgets. Returns whether the inode is deleted.
    fn let_go(&self, ino: Ino, ops: &mut Vec<Op>) -> FsResult<bool> {
        if !self.known_to_kernel(ino) {
            ops.push(Op::Delete { ino });
            return Ok(true);
        }
        if self.inode(ino)?.pages().is_some_and(|m| !m.is_empty()) {
            ops.push(Op::Unmap {
                ino,
                index: 0,
                len: u64::MAX,
            });
        }
        Ok(false)
    }

    /// Lets go of `ino` ([`State::let_go`]) if no name is left to it.
    fn let_go_if_unlinked(&mut self, ino: Ino) -> FsResult<()> {
        if self.inode(ino).is_ok_and(|i| i.attr.nlink == 0) && !self.read_only {
            let mut ops = Vec::new();
            self.let_go(ino, &mut ops)?;
            if !ops.is_empty() {
                self.commit(&ops)?;
            }
        }
        Ok(())
    }

    /// Deletes every unlinked inode (at unmount, when the kernel sends no
    /// more forgets), so the final checkpoint holds none.
    pub fn delete_unlinked(&mut self) -> FsResult<()> {
        let gone = pmemfs_ondisk::image::unlinked_inodes(self.image.meta());
        if gone.is_empty() || self.read_only {
            return Ok(());
        }
        let ops: Vec<Op> = gone.into_iter().map(|ino| Op::Delete { ino }).collect();
        self.commit(&ops)
    }

    /// How reads update access times (see [`crate::atime`]).
    pub fn set_atime_policy(&mut self, policy: AtimePolicy) {
        self.atime_policy = policy;
    }

    /// Records a read of `ino` for its access time; no commit.
    pub fn touch_atime(&self, ino: Ino) {
        if self.read_only {
            return;
        }
        if let Ok(a) = self.attr(ino) {
            self.atimes.touch(&self.atime_policy, ino, &a);
        }
    }

    /// Whether a read of `ino` now would update its access time.
    pub fn atime_due(&self, ino: Ino) -> bool {
        !self.read_only
            && self
                .attr(ino)
                .is_ok_and(|a| self.atime_policy.due(&a, now()))
    }

    /// Whether reads must reach the daemon every time for their access
    /// times (`strictatime`).
    pub fn atime_strict(&self) -> bool {
        self.atime_policy.mode == crate::atime::AtimeMode::Strict
    }

    /// Writes the access times reads recorded, in transactions of at most
    /// [`FLUSH_BATCH`] inodes.
    pub fn flush_atimes(&mut self) -> FsResult<()> {
        if self.read_only {
            return Ok(());
        }
        while !self.atimes.is_empty() {
            let ops: Vec<Op> = self
                .atimes
                .take(FLUSH_BATCH)
                .into_iter()
                .filter_map(|(ino, t)| {
                    let mut attr = self.image.meta().get(ino)?.attr;
                    attr.atime = t;
                    Some(Op::SetAttr { ino, attr })
                })
                .collect();
            if !ops.is_empty() {
                self.image.commit(&ops)?;
            }
        }
        Ok(())
    }

    /// The FUSE attributes of `ino`, as they are now shown (a pending
    /// access time included).
    pub fn fuse_attr(&self, ino: Ino) -> FsResult<fuser::FileAttr> {
        let inode = self.inode(ino)?;
        let mut fa = crate::attr::to_fuse(ino, inode);
        fa.atime = crate::attr::time_to_system(self.atimes.overlay(ino, inode.attr).atime);
        Ok(fa)
    }

    /// Turns POSIX ACLs on or off (`-o noacl`): off, their xattrs are
    /// refused and new inodes get the umask only.
    pub fn set_acls(&mut self, on: bool) {
        self.acls = on;
    }

    pub fn acls_enabled(&self) -> bool {
        self.acls
    }

    pub fn cache(&self) -> &Cache {
        &self.cache
    }

    /// Whether some handle of `ino` is open.
    pub fn is_open(&self, ino: Ino) -> bool {
        self.opens.is_open(ino)
    }

    pub fn data_locks(&self) -> &crate::datalock::DataLocks {
        &self.data_locks
    }

    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    pub fn inode(&self, ino: Ino) -> FsResult<&Inode> {
        match self.image.meta().get(ino) {
            Some(i) => Ok(i),
            None => fail(libc::ENOENT),
        }
    }

    /// The attributes of `ino` as they are now shown: with an access
    /// time a read recorded and no commit has written yet.
    pub fn attr(&self, ino: Ino) -> FsResult<Attr> {
        Ok(self.atimes.overlay(ino, self.inode(ino)?.attr))
    }

    pub fn dir(&self, ino: Ino) -> FsResult<&Dir> {
        match self.inode(ino)?.dir() {
            Some(d) => Ok(d),
            None => fail(libc::ENOTDIR),
        }
    }

    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Ino> {
        if name.len() > MAX_NAME {
            return fail(libc::ENAMETOOLONG);
        }
        match self.dir(parent)?.entries.get(name) {
            Some(&i) => Ok(i),
            None => fail(libc::ENOENT),
        }
    }

    /// Commits one transaction, and keeps the page cache equal to the page
    /// maps: DRAM copies of the pages the ops unmap or replace go before
    /// (the state is ours alone, so no read brings them back), and each DAX
    /// range the ops touched is synced from the page map after, whether
    /// the commit worked or failed half way.
    pub fn commit(&mut self, ops: &[Op]) -> FsResult<()> {
        if self.read_only {
            return fail(libc::EROFS);
        }
        // The ops' own attributes already carry a pending access time
        // (they are made from `attr`); the others' go first, apart.
        for op in ops {
            if let Op::SetAttr { ino, .. } = op {
                self.atimes.forget(*ino);
            }
        }
        self.flush_atimes()?;
        if self.cache.has_copies() {
            for (ino, first, last) in ops.iter().filter_map(touched) {
                if let Some(map) = self.image.meta().get(ino).and_then(|i| i.pages()) {
                    for r in map.range(first, (last - first).saturating_add(1)) {
                        self.cache.drop_copies(r.value, r.len);
                    }
                }
            }
        }
        let r = self.image.commit(ops);
        for (ino, first, last) in ops.iter().filter_map(touched) {
            let map = self.image.meta().get(ino).and_then(|i| i.pages());
            self.cache.resync(ino, map, first, last);
        }
        Ok(r?)
    }

    /// A `SetAttr` for `ino` after `f` changed a copy of its attributes.
    pub fn set_attr(&self, ino: Ino, f: impl FnOnce(&mut Attr)) -> FsResult<Op> {
        let mut attr = self.attr(ino)?;
        f(&mut attr);
        Ok(Op::SetAttr { ino, attr })
    }

    /// Makes a new inode named `name` in `parent`, with the mode as given.
    pub fn make(&mut self, parent: Ino, name: &[u8], new: NewInode, who: Caller) -> FsResult<Ino> {
        self.make_masked(parent, name, new, who, 0)
    }

    /// Makes a new inode named `name` in `parent`: the parent's default
    /// ACL, if any, shapes its mode and ACLs, else `umask` applies.
    pub fn make_masked(
        &mut self,
        parent: Ino,
        name: &[u8],
        new: NewInode,
        who: Caller,
        umask: u32,
    ) -> FsResult<Ino> {
        let NewInode { mode, rdev, target } = new;
        let Some(kind) = crate::attr::kind_from_mode(mode) else {
            return fail(libc::EINVAL);
        };
        check_name(name)?;
        let pattr = self.attr(parent)?;
        if self.dir(parent)?.entries.contains_key(name) {
            return fail(libc::EEXIST);
        }
        if pattr.nlink == 0 {
            // A removed directory that is still open takes no new names.
            return fail(libc::ENOENT);
        }
        self.may_change_dir(parent, false)?;
        let t = now();
        let inherited = self.inherit_acl(parent, kind, (mode & 0o7777) as u16, umask)?;
        let mut perm = inherited.perm;
        let mut gid = who.gid;
        // BSD group semantics on setgid directories, as ext4 and XFS do.
        if pattr.perm & libc::S_ISGID as u16 != 0 {
            gid = pattr.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        let mut attr = Attr::new(kind, perm, who.uid, gid, t);
        attr.rdev = rdev;
        let body = match kind {
            Kind::File => NewBody::File,
            Kind::Dir => NewBody::Dir { parent },
            Kind::Symlink => {
                let target = target.unwrap_or_default();
                if target.len() > MAX_SYMLINK {
                    return fail(libc::ENAMETOOLONG);
                }
                if target.is_empty() {
                    return fail(libc::ENOENT);
                }
                attr.size = target.len() as u64;
                NewBody::Symlink(target.to_vec())
            }
            _ => NewBody::Special,
        };
        let ino = self.image.next_ino();
        let parent_op = self.set_attr(parent, |a| {
            a.mtime = t;
            a.ctime = t;
            if kind == Kind::Dir {
                a.nlink += 1;
            }
        })?;
        let mut ops = vec![Op::Create { ino, attr, body }];
        ops.extend(inherited.xattrs.into_iter().map(|(n, value)| Op::SetXattr {
            ino,
            name: n.to_vec(),
            value,
        }));
        ops.push(Op::Link {
            dir: parent,
            name: name.to_vec(),
            ino,
        });
        ops.push(parent_op);
        self.commit(&ops)?;
        Ok(ino)
    }

    /// A new name for an existing inode.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let attr = self.attr(ino)?;
        if attr.kind == Kind::Dir {
            return fail(libc::EPERM);
        }
        if attr.nlink >= LINK_MAX {
            return fail(libc::EMLINK);
        }
        if self.dir(parent)?.entries.contains_key(name) {
            return fail(libc::EEXIST);
        }
        if self.attr(parent)?.nlink == 0 {
            return fail(libc::ENOENT);
        }
        self.may_change(ino)?;
        self.may_change_dir(parent, false)?;
        let t = now();
        let ops = [
            Op::Link {
                dir: parent,
                name: name.to_vec(),
                ino,
            },
            self.set_attr(ino, |a| {
                a.nlink += 1;
                a.ctime = t;
            })?,
            self.set_attr(parent, |a| {
                a.mtime = t;
                a.ctime = t;
            })?,
        ];
        self.commit(&ops)
    }

    /// Ops that drop the name `name` (naming `ino`) from `parent`; deletes
    /// the inode too when that was its last name and nobody has it open.
    fn drop_name(
        &self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        t: Time,
        ops: &mut Vec<Op>,
    ) -> FsResult<()> {
        let attr = self.attr(ino)?;
        ops.push(Op::Unlink {
            dir: parent,
            name: name.to_vec(),
        });
        let is_dir = attr.kind == Kind::Dir;
        let left = if is_dir {
            0
        } else {
            attr.nlink.saturating_sub(1)
        };
        if left == 0 && !self.opens.is_open(ino) && self.let_go(ino, ops)? {
            return Ok(());
        }
        ops.push(Op::SetAttr {
            ino,
            attr: Attr {
                nlink: left,
                ctime: t,
                ..attr
            },
        });
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8], dir_wanted: bool) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        let is_dir = self.attr(ino)?.kind == Kind::Dir;
        match (dir_wanted, is_dir) {
            (false, true) => return fail(libc::EISDIR),
            (true, false) => return fail(libc::ENOTDIR),
            _ => {}
        }
        if is_dir && !self.dir(ino)?.entries.is_empty() {
            return fail(libc::ENOTEMPTY);
        }
        self.may_change_dir(parent, true)?;
        self.may_change(ino)?;
        let t = now();
        let mut ops = Vec::new();
        self.drop_name(parent, name, ino, t, &mut ops)?;
        ops.push(self.set_attr(parent, |a| {
            a.mtime = t;
            a.ctime = t;
            if is_dir {
                a.nlink = a.nlink.saturating_sub(1);
            }
        })?);
        self.commit(&ops)
    }

    /// Whether `ancestor` is `ino` or lies on the path from `ino` to the root.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> FsResult<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.dir(ino)?.parent;
        }
    }

    pub fn rename(
        &mut self,
        from: Ino,
        name: &[u8],
        to: Ino,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.rename_as(from, name, to, newname, flags, Caller { uid: 0, gid: 0 })
    }

    /// rename(2) with renameat2's flags, for caller `who` (the owner of
    /// the whiteout `RENAME_WHITEOUT` leaves, as overlayfs asks of its
    /// upper layer: a character device 0:0 at the old name, made in the
    /// same transaction).
    pub fn rename_as(
        &mut self,
        from: Ino,
        name: &[u8],
        to: Ino,
        newname: &[u8],
        flags: u32,
        who: Caller,
    ) -> FsResult<()> {
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 || (noreplace && exchange) || (whiteout && exchange) {
            return fail(libc::EINVAL);
        }
        let ino = self.lookup(from, name)?;
        self.dir(to)?;
        if self.attr(to)?.nlink == 0 {
            return fail(libc::ENOENT);
        }
        let target = self.lookup(to, newname).ok();
        if target == Some(ino) {
            return Ok(()); // two names of one inode: POSIX says do nothing
        }
        self.may_change_dir(from, true)?;
        self.may_change_dir(to, target.is_some())?;
        self.may_change(ino)?;
        if let Some(t) = target {
            self.may_change(t)?;
        }
        let src_dir = self.attr(ino)?.kind == Kind::Dir;
        // A directory cannot move below itself.
        if src_dir && from != to && self.is_ancestor(ino, to)? {
            return fail(libc::EINVAL);
        }
        let t = now();
        let mut ops = Vec::new();
        // The plain move of `name` to `newname`.
        let unlink = |dir: Ino, name: &[u8]| Op::Unlink {
            dir,
            name: name.to_vec(),
        };
        let link = |dir: Ino, name: &[u8], ino: Ino| Op::Link {
            dir,
            name: name.to_vec(),
            ino,
        };
        // Directories that change parent: (dir, old parent, new parent).
        let mut moved_dirs = Vec::new();
        let mut nlink_delta: HashMap<Ino, i64> = HashMap::new();
        match (target, exchange) {
            (None, true) => return fail(libc::ENOENT),
            (Some(_), false) if noreplace => return fail(libc::EEXIST),
            (Some(other), true) => {
                let other_dir = self.attr(other)?.kind == Kind::Dir;
                if other_dir && to != from && self.is_ancestor(other, from)? {
                    return fail(libc::EINVAL);
                }
                ops.extend([
                    unlink(from, name),
                    unlink(to, newname),
                    link(from, name, other),
                ]);
                ops.push(link(to, newname, ino));
                if other_dir {
                    moved_dirs.push((other, to, from));
                }
                ops.push(self.set_attr(other, |a| a.ctime = t)?);
            }
            (Some(other), false) => {
                let other_dir = self.attr(other)?.kind == Kind::Dir;
                match (src_dir, other_dir) {
                    (true, false) => return fail(libc::ENOTDIR),
                    (false, true) => return fail(libc::EISDIR),
                    (true, true) if !self.dir(other)?.entries.is_empty() => {
                        return fail(libc::ENOTEMPTY)
                    }
                    _ => {}
                }
                self.drop_name(to, newname, other, t, &mut ops)?;
                if other_dir {
                    *nlink_delta.entry(to).or_default() -= 1;
                }
                ops.extend([unlink(from, name), link(to, newname, ino)]);
            }
            (None, false) => ops.extend([unlink(from, name), link(to, newname, ino)]),
        }
        if src_dir {
            moved_dirs.push((ino, from, to));
        }
        for (dir, old, new) in moved_dirs {
            ops.push(Op::SetParent { dir, parent: new });
            *nlink_delta.entry(old).or_default() -= 1;
            *nlink_delta.entry(new).or_default() += 1;
        }
        ops.push(self.set_attr(ino, |a| a.ctime = t)?);
        if whiteout {
            let w = self.image.next_ino();
            let attr = Attr::new(Kind::CharDev, 0, who.uid, who.gid, t);
            ops.push(Op::Create {
                ino: w,
                attr,
                body: NewBody::Special,
            });
            ops.push(link(from, name, w));
        }
        for d in if from == to {
            vec![from]
        } else {
            vec![from, to]
        } {
            let delta = nlink_delta.get(&d).copied().unwrap_or(0);
            ops.push(self.set_attr(d, |a| {
                a.mtime = t;
                a.ctime = t;
                a.nlink = (i64::from(a.nlink) + delta).max(0) as u32;
            })?);
        }
        self.commit(&ops)
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        match &self.inode(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => fail(libc::EINVAL),
        }
    }

    /// Entries of a directory for readdir: `.`, `..`, then the names.
    pub fn list(&self, ino: Ino) -> FsResult<Vec<(Ino, Kind, Vec<u8>)>> {
        let d = self.dir(ino)?;
        let mut out = Vec::with_capacity(d.entries.len() + 2);
        out.push((ino, Kind::Dir, b".".to_vec()));
        out.push((d.parent, Kind::Dir, b"..".to_vec()));
        for (name, &child) in &d.entries {
            let kind = self
                .image
                .meta()
                .get(child)
                .map_or(Kind::File, |i| i.attr.kind);
            out.push((child, kind, name.clone()));
        }
        Ok(out)
    }

    /// Counts a new handle of `ino` (a directory's too) and says how to
    /// open it ([`crate::opens`]); `write_only` as the open's flags say.
    pub fn opened(&mut self, ino: Ino, write_only: bool) -> FsResult<crate::opens::Opened> {
        let is_file = self.inode(ino)?.attr.kind == Kind::File;
        Ok(self
            .opens
            .open(ino, write_only, self.direct_writes && is_file))
    }

    /// Whether write-only handles may bypass the page cache (not under
    /// the writeback cache, whose point is the cache).
    pub fn set_direct_writes(&mut self, on: bool) {
        self.direct_writes = on;
    }

    /// A handle of `ino` closed (`direct` as it was opened). The last close
    /// of an unlinked inode deletes it.
    pub fn closed(&mut self, ino: Ino, direct: bool) -> FsResult<()> {
        if self.opens.close(ino, direct) == Some(0) {
            // Spaces are made again by the next read; DRAM copies stay.
            self.cache.forget(ino);
            self.let_go_if_unlinked(ino)?;
        }
        Ok(())
    }

    /// Sets an xattr; the ACL xattrs go through [`State::set_acl`], which
    /// keeps the mode in step (and is called for them by the FUSE layer).
    pub fn setxattr(&mut self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if crate::acl::is_acl_name(name) {
            return self.set_acl(ino, name, value, flags, true);
        }
        self.check_xattr_name(name)?;
        self.may_change(ino)?;
        if value.len() > XATTR_SIZE_MAX {
            return fail(libc::E2BIG);
        }
        let exists = self.inode(ino)?.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return fail(libc::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return fail(libc::ENODATA);
        }
        let t = now();
        let ops = [
            Op::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
            },
            self.set_attr(ino, |a| a.ctime = t)?,
        ];
        self.commit(&ops)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.check_xattr_name(name)?;
        match self.inode(ino)?.xattrs.get(name) {
            Some(v) => Ok(v.clone()),
            None => fail(libc::ENODATA),
        }
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        let hidden = |n: &[u8]| !self.acls && crate::acl::is_acl_name(n);
        for name in self.inode(ino)?.xattrs.keys().filter(|n| !hidden(n)) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.check_xattr_name(name)?;
        self.may_change(ino)?;
        if !self.inode(ino)?.xattrs.contains_key(name) {
            return fail(libc::ENODATA);
        }
        let t = now();
        let ops = [
            Op::RemoveXattr {
                ino,
                name: name.to_vec(),
            },
            self.set_attr(ino, |a| a.ctime = t)?,
        ];
        self.commit(&ops)
    }
}

/// Largest extended attribute value, as Linux's XATTR_SIZE_MAX.
pub const XATTR_SIZE_MAX: usize = 65536;

impl State {
    fn check_xattr_name(&self, name: &[u8]) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 {
            return fail(libc::ERANGE);
        }
        // Of system.*, only the POSIX ACLs, and only when they are on:
        // refused, tools fall back to the mode bits.
        if crate::acl::is_acl_name(name) && self.acls {
            return Ok(());
        }
        let known = [&b"user."[..], b"trusted.", b"security."];
        if !known.iter().any(|p| name.starts_with(p)) {
            return fail(libc::EOPNOTSUPP);
        }
        Ok(())
    }
}
