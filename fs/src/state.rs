//! The file system's state: what it holds, and the lookups everything
//! shares.
//!
//! One [`State`] holds the open image (metadata, allocator, pmem), the
//! open-file table and the page cache ([`crate::cache`]). The FUSE layer
//! keeps it behind a reader-writer lock: reads and lookups share it, and
//! so do in-place writes ([`crate::datalock`]); anything that commits
//! takes it alone. The operations live with their concepts:
//! [`crate::namespace`] (names and the inodes they make),
//! [`crate::data`] (file data and copy on write), [`crate::commit`] (one
//! journal transaction per change, the page cache kept equal to it),
//! [`crate::lifetime`] (open and unlinked inodes), [`crate::xattr`],
//! [`crate::attr`], [`crate::flags`], [`crate::acl`], [`crate::atime`].

use std::collections::HashMap;

use pmemfs_ondisk::Dir;
use pmemfs_ondisk::{Attr, Image, Ino, Inode, Op, Time};

use crate::atime::{AtimePolicy, Atimes, FLUSH_BATCH};
use crate::cache::{Cache, CacheOptions};
use crate::error::{fail, FsResult};

pub struct State {
    pub image: Image,
    pub(crate) read_only: bool,
    /// Open handles per inode: an unlinked inode lives until the last
    /// closes.
    pub(crate) opens: crate::opens::Opens,
    /// Write-only handles may be direct ([`crate::opens`]).
    pub(crate) direct_writes: bool,
    /// Under the writeback cache, the kernel's lookup count per inode: it
    /// may write back pages and times of an unlinked file after its last
    /// close, so such a file lives until the kernel forgets it.
    pub(crate) lookups: Option<parking_lot::Mutex<HashMap<Ino, u64>>>,
    pub(crate) cache: Cache,
    /// POSIX ACLs stored and honoured (see [`crate::acl`]).
    pub(crate) acls: bool,
    atime_policy: AtimePolicy,
    /// Access times recorded by reads, not yet committed.
    pub(crate) atimes: Atimes,
    /// Files written since the online dedupe scanner saw them.
    pub(crate) ksm: crate::ksm::Queue,
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
        }
    }

    /// The files the online dedupe scanner has yet to see (empty, and
    /// never filled, unless the mount scans).
    pub fn ksm_queue(&self) -> &crate::ksm::Queue {
        &self.ksm
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
}
