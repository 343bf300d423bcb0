//! The `fuser::Filesystem` implementation: each method decodes its
//! arguments, calls one operation on [`State`] and replies exactly once.
//!
//! Locking: the state sits behind one reader-writer lock. Lookups, getattr,
//! read and readdir share it; anything that commits takes it alone. The
//! kernel caches attributes, entries and data (writeback cache), so most
//! reads never reach here twice.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Config, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock, RwLockUpgradableReadGuard, RwLockWriteGuard};
use pmemfs_ondisk::{Access, Image, Ino, Kind, PAGE_SIZE};

use crate::attr::{kind_to_fuse, time_from_system};
use crate::cache::CacheOptions;
use crate::data::Writer;
use crate::datalock::DataLocks;
use crate::error::{fail, FsError, FsResult};
use crate::ioctl::{
    FITRIM, PMEMFS_IOC_DEDUPE, PMEMFS_IOC_DIR_USAGE, PMEMFS_IOC_EXTENTS, PMEMFS_IOC_OPS,
    PMEMFS_IOC_OPS_RESET, PMEMFS_IOC_PAGE_HASHES, PMEMFS_IOC_STATS, PMEMFS_IOC_UNSHARE,
    PMEMFS_IOC_USAGE,
};
use crate::namespace::{Caller, NewInode};
use crate::opens;
use crate::ops::{OpCounters, Opcode, Timer};
use crate::options::MountOptions;
use crate::poll::Poller;
use crate::state::{now, State};

/// How long the kernel may trust attributes and entries: a day, as good as
/// for ever. The daemon is the image's only writer (it holds the lock) and
/// every change is a request the kernel sent, after whose reply it updates
/// or drops its copy: the reply's attributes (setattr, create, link), or
/// an invalidation of its own (write and fallocate: size and times;
/// read and readdir: atime; setxattr of an ACL: the mode; unlink and
/// rename: the nlink of the inodes). The one change the kernel does not
/// see is the ctime that chattr sets, which it shows stale until the next
/// change. The model test (tests/mount_model.rs) compares every attribute
/// after random operations under this TTL.
const TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// Largest request the kernel may send: 256 pages.
const MAX_WRITE: u32 = 256 * PAGE_SIZE as u32;

type Listing = Vec<(Ino, Kind, Vec<u8>)>;

pub struct PmemFs {
    state: Arc<RwLock<State>>,
    /// Each file's bytes ([`crate::datalock`]): taken before the state.
    data: DataLocks,
    /// The online dedupe scanner, while the mount runs one.
    scanner: Mutex<Option<crate::ksm::Scanner>>,
    /// Directory listings taken at opendir, served by readdir.
    listings: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
    /// Requests served, per opcode (`pmemfs stat --ops`).
    ops: OpCounters,
    /// Polls the device while requests come quickly (see [`crate::poll`]).
    poller: Arc<Poller>,
    opts: MountOptions,
    name: String,
}

fn caller(req: &Request) -> Caller {
    Caller {
        uid: req.uid(),
        gid: req.gid(),
    }
}

impl PmemFs {
    /// Opens the image for mounting: recovery runs here, and the image is
    /// locked (exclusively, or shared for a read-only mount) until the
    /// session ends.
    pub fn open(image: &Path, opts: MountOptions) -> Result<PmemFs, pmemfs_ondisk::Error> {
        let access = if opts.read_only {
            Access::ReadOnly
        } else {
            Access::ReadWrite
        };
        let file = File::options()
            .read(true)
            .write(!opts.read_only)
            .open(image)?;
        if opts.read_only {
            pmemfs_ondisk::lock::lock_shared(&file)?;
        }
        let mut img = Image::open_file(file, access)?;
        img.set_discard(opts.discard);
        let mut state = State::with_cache(img, opts.read_only, CacheOptions::from_mount(&opts));
        state.set_acls(opts.acl);
        state.set_direct_writes(!opts.writeback_cache);
        state.set_atime_policy(opts.atime);
        if opts.writeback_cache {
            state.track_lookups();
        }
        Ok(PmemFs {
            state: Arc::new(RwLock::new(state)),
            data: DataLocks::default(),
            scanner: Mutex::new(None),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            ops: OpCounters::default(),
            poller: Poller::new(opts.poll),
            name: image
                .canonicalize()
                .unwrap_or_else(|_| image.to_path_buf())
                .display()
                .to_string(),
            opts,
        })
    }

    /// The mount's poller: the session attaches its device after INIT.
    pub fn poller(&self) -> Arc<Poller> {
        Arc::clone(&self.poller)
    }

    /// A write, holding the state alone as little as it can: most store
    /// bytes in place and need it shared only ([`State::write_in_place`]);
    /// one that takes fresh pages (holes, appends, copy on write) holds it
    /// alone to take them and to commit, and stores its bytes in between
    /// with the state upgradable (shared with readers and in-place writers,
    /// no other change) and the file's data lock held alone, so that
    /// readers of other files are not held up by the copy. The rest go
    /// the whole way with the state alone ([`State::write_as`]).
    fn write_staged(&self, ino: Ino, off: u64, data: &[u8], who: Writer) -> FsResult<u32> {
        let _data = self.data.write(ino);
        if let Some(n) = self.state.read().write_in_place(ino, off, data, who)? {
            return Ok(n);
        }
        let s = self.state.upgradable_read();
        let Some(mut w) = s.stage_write(ino, off, data)? else {
            drop(s);
            return self.state.write().write_as(ino, off, data, who);
        };
        let mut x = RwLockUpgradableReadGuard::upgrade(s);
        x.take_staged(ino, &mut w)?;
        let s = RwLockWriteGuard::downgrade_to_upgradable(x);
        let filled = s.fill_staged(ino, off, data, &w);
        RwLockUpgradableReadGuard::upgrade(s).finish_staged(ino, off, data, who, w, filled)
    }

    /// Starts serving a request of `op`: the poller hears of it, and the
    /// returned timer counts it when dropped.
    fn begin(&self, op: Opcode) -> Timer<'_> {
        self.poller.busy();
        self.ops.time(op)
    }

    /// What recovery found when the image was opened.
    pub fn recovery(&self) -> pmemfs_ondisk::Recovery {
        self.state.read().image.recovery().clone()
    }

    /// The FUSE session configuration for these options. The source shown
    /// in /proc/mounts and df is `pmemfs:IMAGE` and the type `fuse.pmemfs`.
    /// The subtype goes as a plain option because fuser hands
    /// `MountOption::Subtype` only to fusermount3, and a direct mount(2)
    /// would then record the type as plain `fuse`; the kernel and
    /// fusermount3 both take `subtype=`.
    pub fn config(&self) -> Config {
        let mut c = Config::default();
        c.mount_options = vec![
            MountOption::FSName(format!("pmemfs:{}", self.name)),
            MountOption::CUSTOM("subtype=pmemfs".into()),
        ];
        if self.opts.read_only {
            c.mount_options.push(MountOption::RO);
        }
        if self.opts.default_permissions {
            c.mount_options.push(MountOption::DefaultPermissions);
        }
        if self.opts.admits_everyone() {
            c.acl = fuser::SessionACL::All;
        }
        c.mount_options.push(if self.opts.dev {
            MountOption::Dev
        } else {
            MountOption::NoDev
        });
        c.mount_options.push(if self.opts.suid {
            MountOption::Suid
        } else {
            MountOption::NoSuid
        });
        c.mount_options.push(if self.opts.exec {
            MountOption::Exec
        } else {
            MountOption::NoExec
        });
        c.n_threads = Some(self.opts.threads);
        c.clone_fd = true;
        c
    }

    /// The inode-flag ioctls (`chattr`, `lsattr`, `xfs_io -c lsattr`), or
    /// `None` for any other number. The kernel has checked that the caller
    /// may set what it sets.
    fn flags_ioctl(&self, cmd: u32, ino: Ino, in_data: &[u8]) -> Option<FsResult<Vec<u8>>> {
        use crate::flags::*;
        let word = |b: &[u8]| {
            b.get(..4)
                .and_then(|w| w.try_into().ok())
                .map(u32::from_le_bytes)
        };
        Some(match cmd {
            FS_IOC_GETFLAGS => self
                .state
                .read()
                .flags(ino)
                .map(|f| f.to_le_bytes().to_vec()),
            FS_IOC_SETFLAGS => match word(in_data) {
                Some(f) => self.state.write().set_flags(ino, f).map(|()| Vec::new()),
                None => fail(libc::EINVAL),
            },
            FS_IOC_FSGETXATTR => self.state.read().flags(ino).map(|f| {
                let mut x = vec![0u8; FSXATTR_BYTES];
                x[..4].copy_from_slice(&to_xflags(f).to_le_bytes());
                x
            }),
            FS_IOC_FSSETXATTR => match word(in_data).map(from_xflags) {
                Some(Some(f)) => self.state.write().set_flags(ino, f).map(|()| Vec::new()),
                Some(None) => fail(libc::EOPNOTSUPP),
                None => fail(libc::EINVAL),
            },
            _ => return None,
        })
    }

    fn entry(&self, ino: Ino, reply: ReplyEntry) {
        let s = self.state.read();
        match s.fuse_attr(ino) {
            Ok(a) => {
                s.looked_up(ino);
                reply.entry(&TTL, &a, Generation(0))
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn attr_reply(&self, ino: Ino, reply: ReplyAttr) {
        match self.state.read().fuse_attr(ino) {
            Ok(a) => reply.attr(&TTL, &a),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn make(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        new: NewInode,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let made =
            self.state
                .write()
                .make_masked(parent.0, name.as_bytes(), new, caller(req), umask);
        match made {
            Ok(ino) => self.entry(ino, reply),
            Err(e) => reply.error(e.errno()),
        }
    }
}

fn empty(r: FsResult<()>, reply: ReplyEmpty) {
    match r {
        Ok(()) => reply.ok(),
        Err(e) => reply.error(e.errno()),
    }
}

fn to_time(t: TimeOrNow) -> pmemfs_ondisk::Time {
    match t {
        TimeOrNow::Now => now(),
        TimeOrNow::SpecificTime(s) => time_from_system(s),
    }
}

impl Filesystem for PmemFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        // Each capability is optional: an older kernel without it still
        // mounts, only slower. The writeback cache is off unless asked for:
        // with it the kernel holds written data the daemon has not seen, so
        // SEEK_DATA/SEEK_HOLE would miss it, and stamps mtime from its own
        // coarser clock.
        // EXPORT_SUPPORT: node ids are inode numbers, never reused, so a
        // file handle (name_to_handle_at, NFS) stays good across cache
        // drops and remounts.
        let mut want = InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS
            | InitFlags::FUSE_EXPORT_SUPPORT
            // The daemon drops set-uid, set-gid and capabilities itself
            // (crate::privs): the kernel then asks no GETXATTR
            // security.capability before each write.
            | InitFlags::FUSE_HANDLE_KILLPRIV_V2
            // Mappings of direct handles (crate::opens), which the kernel
            // keeps coherent with direct writes.
            | InitFlags::FUSE_DIRECT_IO_ALLOW_MMAP;
        if self.opts.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        if self.opts.acl {
            // The kernel enforces ACLs it reads with getxattr; it sends
            // the umask unapplied, since a default ACL overrides it.
            want |= InitFlags::FUSE_POSIX_ACL | InitFlags::FUSE_DONT_MASK;
        }
        let _ = config.add_capabilities(want);
        // FUSE over io_uring (the kernel offers it when the fuse module's
        // enable_uring is set): each CPU's requests are served by a thread
        // on that CPU, which saves the cross-CPU wake-ups polling works
        // around, so the poller stays off.
        if self.opts.uring
            && config
                .add_capabilities(InitFlags::FUSE_OVER_IO_URING)
                .is_ok()
        {
            self.poller.stop();
        }
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        if self.opts.dedupe_online && !self.opts.read_only {
            self.state.read().ksm_queue().enable();
            let scanner =
                crate::ksm::Scanner::start(Arc::clone(&self.state), self.opts.dedupe_rate)?;
            *self.scanner.lock() = Some(scanner);
        }
        Ok(())
    }

    fn destroy(&mut self) {
        self.poller.stop();
        // The scanner takes the state's lock: it stops before the last
        // checkpoint takes it.
        if let Some(mut scanner) = self.scanner.lock().take() {
            scanner.stop();
        }
        let mut s = self.state.write();
        if !s.is_read_only() {
            if let Err(e) = s.delete_unlinked() {
                eprintln!("pmemfs: {}: unlinked inodes could not be freed ({e}); the next mount frees them", self.name);
            }
            if let Err(e) = s.flush_atimes() {
                eprintln!(
                    "pmemfs: {}: access times could not be written ({e})",
                    self.name
                );
            }
            if let Err(e) = s.image.mark_clean() {
                eprintln!("pmemfs: {}: the final checkpoint failed ({e}); the journal still holds every change", self.name);
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let _timer = self.begin(Opcode::Lookup);
        // "." and ".." come from the kernel only to find an inode (or its
        // parent) from a file handle that outlived its cache
        // (FUSE_EXPORT_SUPPORT): "." names any inode itself.
        let found = match name.as_bytes() {
            b"." => Ok(parent.0),
            b".." => self.state.read().dir(parent.0).map(|d| d.parent),
            n => self.state.read().lookup(parent.0, n),
        };
        match found {
            Ok(ino) => self.entry(ino, reply),
            // A negative entry the kernel may cache: every create passes
            // through it, so it never goes stale, and a create then costs
            // one request less.
            Err(FsError::Posix(libc::ENOENT)) => {
                reply.entry(&TTL, &negative_entry(), Generation(0))
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    /// Node ids are inode numbers; lookups are counted only under the
    /// writeback cache, where an unlinked inode lives until forgotten
    /// (fuser hands a BATCH_FORGET over as one call here per node).
    fn forget(&self, _req: &Request, ino: INodeNo, nlookup: u64) {
        let _timer = self.begin(Opcode::Forget);
        if !self.state.read().tracks_lookups() {
            // Nothing is counted: no need to take the state's lock from
            // under the writers.
            return;
        }
        if let Err(e) = self.state.write().forgot(ino.0, nlookup) {
            // No reply to carry it: the inode stays unlinked, and the
            // next mount's recovery frees it.
            eprintln!("pmemfs: {}: freeing inode {}: {e}", self.name, ino.0);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        let _timer = self.begin(Opcode::Getattr);
        self.attr_reply(ino.0, reply)
    }

    fn setattr(
        &self,
        req: &Request,
        ino: INodeNo,
        mode: Option<u32>,
        uid: Option<u32>,
        gid: Option<u32>,
        size: Option<u64>,
        atime: Option<TimeOrNow>,
        mtime: Option<TimeOrNow>,
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let _timer = self.begin(Opcode::Setattr);
        let t = now();
        // Set-uid and set-gid go on chown, and on truncate by anyone but
        // root, unless the same request sets the mode (crate::privs).
        let chown = uid.is_some() || gid.is_some();
        let kill = mode.is_none() && (chown || (size.is_some() && req.uid() != 0));
        let change = move |a: &mut pmemfs_ondisk::Attr| {
            if kill {
                crate::privs::kill_suid_sgid(a);
            }
            if let Some(m) = mode {
                a.perm = (m & 0o7777) as u16;
            }
            if let Some(u) = uid {
                a.uid = u;
            }
            if let Some(g) = gid {
                a.gid = g;
            }
            if let Some(x) = atime {
                a.atime = to_time(x);
            }
            if let Some(x) = mtime {
                a.mtime = to_time(x);
            }
            if let Some(c) = crtime {
                a.crtime = time_from_system(c);
            }
            a.ctime = ctime.map_or(t, time_from_system);
        };
        let explicit = |t: &Option<TimeOrNow>| matches!(t, Some(TimeOrNow::SpecificTime(_)));
        // Under the writeback cache the kernel sends the times it kept,
        // with a ctime (which utimensat never sets): not a user's change.
        let kernel_times = ctime.is_some() && atime.is_none();
        let owner_change = mode.is_some()
            || uid.is_some()
            || gid.is_some()
            || explicit(&atime)
            || (explicit(&mtime) && !kernel_times)
            || crtime.is_some();
        let r = {
            let mut s = self.state.write();
            // What chattr +i and +a forbid (crate::flags); a size change
            // is checked by set_size.
            let allowed = if owner_change {
                s.may_change(ino.0)
            } else if size.is_none() {
                s.may_touch(ino.0)
            } else {
                Ok(())
            };
            let acl_op = match mode {
                Some(m) => allowed.and_then(|()| s.chmod_acl(ino.0, (m & 0o7777) as u16)),
                None => allowed.map(|()| None),
            };
            match (size, acl_op) {
                (_, Err(e)) => Err(e),
                // A size and a mode at once (rare): two transactions.
                (Some(sz), Ok(acl_op)) => s
                    .set_size(ino.0, sz, change)
                    .and_then(|()| acl_op.map_or(Ok(()), |op| s.commit(&[op]))),
                (None, Ok(acl_op)) => s.set_attr(ino.0, change).and_then(|op| {
                    let caps = if chown {
                        s.kill_capability(ino.0)
                    } else {
                        None
                    };
                    s.commit(
                        &[Some(op), acl_op, caps]
                            .into_iter()
                            .flatten()
                            .collect::<Vec<_>>(),
                    )
                }),
            }
        };
        match r {
            Ok(()) => self.attr_reply(ino.0, reply),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
        let _timer = self.begin(Opcode::Readlink);
        match self.state.read().readlink(ino.0) {
            Ok(t) => reply.data(&t),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn mknod(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        let _timer = self.begin(Opcode::Mknod);
        self.make(
            req,
            parent,
            name,
            NewInode {
                mode,
                rdev,
                target: None,
            },
            umask,
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        reply: ReplyEntry,
    ) {
        let _timer = self.begin(Opcode::Mkdir);
        let mode = (mode & 0o7777) | libc::S_IFDIR;
        self.make(
            req,
            parent,
            name,
            NewInode {
                mode,
                rdev: 0,
                target: None,
            },
            umask,
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.begin(Opcode::Unlink);
        empty(
            self.state.write().unlink(parent.0, name.as_bytes(), false),
            reply,
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.begin(Opcode::Rmdir);
        empty(
            self.state.write().unlink(parent.0, name.as_bytes(), true),
            reply,
        )
    }

    fn symlink(
        &self,
        req: &Request,
        parent: INodeNo,
        link_name: &OsStr,
        target: &Path,
        reply: ReplyEntry,
    ) {
        let _timer = self.begin(Opcode::Symlink);
        let target = Some(target.as_os_str().as_bytes());
        self.make(
            req,
            parent,
            link_name,
            NewInode {
                mode: libc::S_IFLNK | 0o777,
                rdev: 0,
                target,
            },
            0,
            reply,
        )
    }

    fn rename(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        newparent: INodeNo,
        newname: &OsStr,
        flags: RenameFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Rename);
        let r = self.state.write().rename_as(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
            caller(req),
        );
        empty(r, reply)
    }

    fn link(
        &self,
        _req: &Request,
        ino: INodeNo,
        newparent: INodeNo,
        newname: &OsStr,
        reply: ReplyEntry,
    ) {
        let _timer = self.begin(Opcode::Link);
        let r = self
            .state
            .write()
            .link(ino.0, newparent.0, newname.as_bytes());
        match r {
            Ok(()) => self.entry(ino.0, reply),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.begin(Opcode::Open);
        let mut s = self.state.write();
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let write_only = flags.0 & libc::O_ACCMODE == libc::O_WRONLY;
        let r = match s.attr(ino.0) {
            Ok(a) if a.kind == Kind::Dir && writes => fail(libc::EISDIR),
            Ok(_) if writes && s.is_read_only() => fail(libc::EROFS),
            Ok(_) => s
                .may_open(ino.0, flags.0)
                .and_then(|()| s.opened(ino.0, write_only)),
            Err(e) => Err(e),
        };
        // The kernel's page cache stays valid across opens: every change
        // to the data passes through it. But reads it serves never reach
        // here, so when a read is to update the access time the cache goes
        // and the next read comes (see crate::atime).
        let reads = flags.0 & libc::O_ACCMODE != libc::O_WRONLY;
        let keep = if reads && (s.atime_strict() || s.atime_due(ino.0)) {
            FopenFlags::empty()
        } else {
            FopenFlags::FOPEN_KEEP_CACHE
        };
        match r {
            Ok(o) => reply.opened(handle(o), fopen(o, keep)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        let _timer = self.begin(Opcode::Read);
        // Until the reply is out: a write of the file waits.
        let _data = self.data.read(ino.0);
        let s = self.state.read();
        match s.read(ino.0, offset, size) {
            Ok(d) => {
                reply.data(d.as_slice());
                s.touch_atime(ino.0);
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        let _timer = self.begin(Opcode::Write);
        let who = Writer {
            kill_suidgid: write_flags.contains(WriteFlags::FUSE_WRITE_KILL_SUIDGID),
            writeback: write_flags.contains(WriteFlags::FUSE_WRITE_CACHE),
        };
        match self.write_staged(ino.0, offset, data, who) {
            Ok(n) => reply.written(n),
            // Under the writeback cache the kernel writes back dirty pages
            // of a file after its last close, when an unlinked file is
            // gone already: nobody can read them, so they are done with,
            // not an error that `sync` would report.
            Err(FsError::Posix(libc::ENOENT))
                if write_flags.contains(WriteFlags::FUSE_WRITE_CACHE) =>
            {
                reply.written(data.len() as u32)
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lock_owner: LockOwner,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Flush);
        // Nothing is buffered here. ENOSYS tells the kernel so once, and it
        // stops sending a flush with every close.
        reply.error(Errno::ENOSYS)
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Release);
        empty(
            self.state.write().closed(ino.0, fh.0 == opens::DIRECT_FH),
            reply,
        )
    }

    /// Every write and metadata change is durable when its request returns
    /// (the journal entry is fenced before the reply); only access times
    /// recorded by reads are left to write.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Fsync);
        if datasync {
            return reply.ok();
        }
        empty(self.state.write().flush_atimes(), reply)
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let _timer = self.begin(Opcode::Opendir);
        // An open directory lives until its last release, like an open
        // file: rmdir or a rename over it leaves it to its holders.
        let r = {
            let mut s = self.state.write();
            s.dir(ino.0)
                .map(|_| ())
                .and_then(|()| s.opened(ino.0, false))
                .map(|_| ())
        };
        match r {
            Ok(()) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.listings.lock().insert(fh, Vec::new());
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    /// Offsets are positions in the listing this handle took when it last
    /// read from offset 0 (at the first readdir, and again after
    /// rewinddir): stable while it reads on, whatever is created or
    /// removed meanwhile, and a rewind sees the directory as it is then.
    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let _timer = self.begin(Opcode::Readdir);
        let mut listings = self.listings.lock();
        let Some(l) = listings.get_mut(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
        if offset == 0 {
            let s = self.state.read();
            match s.list(ino.0) {
                Ok(fresh) => *l = fresh,
                Err(e) => return reply.error(e.errno()),
            }
            s.touch_atime(ino.0);
        }
        for (i, (ino, kind, name)) in l.iter().enumerate().skip(offset as usize) {
            if reply.add(
                INodeNo(*ino),
                (i + 1) as u64,
                kind_to_fuse(*kind),
                OsStr::from_bytes(name),
            ) {
                break;
            }
        }
        reply.ok()
    }

    fn releasedir(
        &self,
        _req: &Request,
        ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Releasedir);
        self.listings.lock().remove(&fh.0);
        empty(self.state.write().closed(ino.0, false), reply)
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Fsyncdir);
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
        let _timer = self.begin(Opcode::Statfs);
        let s = self.state.read();
        let g = s.image.geometry();
        let free = s.image.free_pages();
        let avail = s.image.available_pages();
        let files = s.image.meta().inodes.len() as u64;
        // Inodes take no fixed space: as many more fit as free pages.
        reply.statfs(
            g.data_pages(),
            free,
            avail,
            files + avail,
            avail,
            PAGE_SIZE as u32,
            255,
            PAGE_SIZE as u32,
        );
    }

    fn setxattr(
        &self,
        req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Setxattr);
        let name = name.as_bytes();
        let mut s = self.state.write();
        let r = if crate::acl::is_acl_name(name) {
            let in_group = s
                .attr(ino.0)
                .map(|a| req.uid() == 0 || in_group(req, a.gid));
            in_group.and_then(|g| s.set_acl(ino.0, name, value, flags, g))
        } else {
            s.setxattr(ino.0, name, value, flags)
        };
        empty(r, reply)
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let _timer = self.begin(Opcode::Getxattr);
        let v = self.state.read().getxattr(ino.0, name.as_bytes());
        xattr_reply(v, size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let _timer = self.begin(Opcode::Listxattr);
        let v = self.state.read().listxattr(ino.0);
        xattr_reply(v, size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        let _timer = self.begin(Opcode::Removexattr);
        empty(
            self.state.write().removexattr(ino.0, name.as_bytes()),
            reply,
        )
    }

    fn create(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        umask: u32,
        flags: i32,
        reply: ReplyCreate,
    ) {
        let _timer = self.begin(Opcode::Create);
        let write_only = flags & libc::O_ACCMODE == libc::O_WRONLY;
        let mut s = self.state.write();
        let r = s
            .make_masked(
                parent.0,
                name.as_bytes(),
                NewInode {
                    mode,
                    rdev: 0,
                    target: None,
                },
                caller(req),
                umask,
            )
            .and_then(|ino| s.opened(ino, write_only).map(|o| (ino, o)));
        match r.and_then(|(ino, o)| s.fuse_attr(ino).map(|a| (ino, o, a))) {
            Ok((ino, o, attr)) => {
                s.looked_up(ino);
                reply.created(
                    &TTL,
                    &attr,
                    Generation(0),
                    handle(o),
                    fopen(o, FopenFlags::FOPEN_KEEP_CACHE),
                )
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        let _timer = self.begin(Opcode::Fallocate);
        empty(
            self.state.write().fallocate(ino.0, offset, length, mode),
            reply,
        )
    }

    fn lseek(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: i64,
        whence: i32,
        reply: ReplyLseek,
    ) {
        let _timer = self.begin(Opcode::Lseek);
        // Under the writeback cache data may sit in the kernel that the
        // daemon has not seen, and the kernel asks before writing it back:
        // ENOSYS makes it answer itself, all data up to EOF, never a hole
        // where data is.
        if self.opts.writeback_cache {
            return reply.error(Errno::ENOSYS);
        }
        // A negative offset is ENXIO for SEEK_DATA and SEEK_HOLE, as on
        // ext4 and XFS (there is no data or hole before the start).
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(match whence {
                libc::SEEK_DATA | libc::SEEK_HOLE => Errno::ENXIO,
                _ => Errno::EINVAL,
            });
        };
        match self.state.read().seek(ino.0, off, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn ioctl(
        &self,
        req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
        let _timer = self.begin(Opcode::Ioctl);
        if cmd == PMEMFS_IOC_UNSHARE {
            let mode = libc::FALLOC_FL_UNSHARE_RANGE | libc::FALLOC_FL_KEEP_SIZE;
            let r = match crate::ioctl::decode_range(in_data) {
                Some((off, len)) => self.state.write().fallocate(ino.0, off, len, mode),
                None => fail(libc::EINVAL),
            };
            return match r {
                Ok(()) => reply.ioctl(0, &[]),
                Err(e) => reply.error(e.errno()),
            };
        }
        if let Some(r) = self.flags_ioctl(cmd, ino.0, in_data) {
            return match r {
                Ok(v) => reply.ioctl(0, &v),
                Err(e) => reply.error(e.errno()),
            };
        }
        if cmd == PMEMFS_IOC_OPS_RESET {
            self.ops.reset();
            return reply.ioctl(0, &[]);
        }
        if cmd == FITRIM {
            // As a kernel file system, trimming is for the administrator.
            let r = match crate::ioctl::decode_trim(in_data) {
                _ if req.uid() != 0 => fail(libc::EPERM),
                Some((start, len, minlen)) => {
                    let first = start / PAGE_SIZE;
                    let pages = len.div_ceil(PAGE_SIZE);
                    let min_pages = minlen.div_ceil(PAGE_SIZE);
                    let mut s = self.state.write();
                    if s.is_read_only() {
                        fail(libc::EROFS)
                    } else {
                        s.image
                            .trim(first, pages, min_pages)
                            .map(|n| crate::ioctl::encode_trim(start, n, minlen))
                            .map_err(FsError::from)
                    }
                }
                None => fail(libc::EINVAL),
            };
            return match r {
                Ok(v) => reply.ioctl(0, &v),
                Err(e) => reply.error(e.errno()),
            };
        }
        if cmd == PMEMFS_IOC_DEDUPE {
            let r = match crate::ioctl::DedupeRequest::decode(in_data) {
                Some(d) => {
                    let may_write = |a: &pmemfs_ondisk::Attr| may_write(req, a);
                    self.state
                        .write()
                        .dedupe(ino.0, d.src_off, d.len, &d.dsts, may_write)
                        .map(|o| crate::ioctl::DedupeAnswer(o).encode())
                }
                None => fail(libc::EINVAL),
            };
            return match r {
                Ok(v) => reply.ioctl(0, &v),
                Err(e) => reply.error(e.errno()),
            };
        }
        let s = self.state.read();
        let out = match cmd {
            PMEMFS_IOC_USAGE => s.usage(ino.0).map(|u| u.encode()),
            PMEMFS_IOC_STATS => s.stats().map(|st| st.encode()),
            PMEMFS_IOC_OPS => Ok(self.ops.encode()),
            PMEMFS_IOC_PAGE_HASHES => match crate::ioctl::decode_position(in_data) {
                Some(from) => s.page_hashes(ino.0, from).map(|h| h.encode()),
                None => fail(libc::EINVAL),
            },
            PMEMFS_IOC_EXTENTS => match crate::ioctl::decode_position(in_data) {
                Some(from) => s.extents(ino.0, from).map(|e| e.encode()),
                None => fail(libc::EINVAL),
            },
            PMEMFS_IOC_DIR_USAGE => match crate::ioctl::decode_position(in_data) {
                Some(from) => s.dir_usage(ino.0, from).map(|d| d.encode()),
                None => fail(libc::EINVAL),
            },
            _ => fail(libc::ENOTTY),
        };
        match out {
            Ok(v) if v.len() == out_size as usize => reply.ioctl(0, &v),
            Ok(_) => reply.error(Errno::EINVAL),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn copy_file_range(
        &self,
        _req: &Request,
        ino_in: INodeNo,
        _fh_in: FileHandle,
        offset_in: u64,
        ino_out: INodeNo,
        _fh_out: FileHandle,
        offset_out: u64,
        len: u64,
        flags: CopyFileRangeFlags,
        reply: ReplyWrite,
    ) {
        let _timer = self.begin(Opcode::CopyFileRange);
        if !flags.is_empty() {
            return reply.error(Errno::EINVAL);
        }
        match self
            .state
            .write()
            .copy_range(ino_in.0, offset_in, ino_out.0, offset_out, len)
        {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(e.errno()),
        }
    }
}

/// Whether the caller of `req` may change a file with attributes `a` as a
/// dedupe destination, as the kernel's may_dedupe_file: root, the owner,
/// or write permission by the mode bits. (The kernel also admits a caller
/// holding the file open for writing, which such a caller has shown at
/// open, and consults an ACL, which this does not.)
fn may_write(req: &Request, a: &pmemfs_ondisk::Attr) -> bool {
    let perm = u32::from(a.perm);
    if req.uid() == 0 || req.uid() == a.uid {
        true
    } else if in_group(req, a.gid) {
        perm & 0o020 != 0
    } else {
        perm & 0o002 != 0
    }
}

/// Whether the caller of `req` is in group `gid`: its primary group, or
/// one of the supplementary groups the kernel lists for its process (FUSE
/// does not send them).
fn in_group(req: &Request, gid: u32) -> bool {
    if req.gid() == gid {
        return true;
    }
    let Ok(status) = std::fs::read_to_string(format!("/proc/{}/status", req.pid())) else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("Groups:"))
        .is_some_and(|g| g.split_whitespace().any(|x| x.parse() == Ok(gid)))
}

/// The attributes of a negative entry: node id 0 means "no such name".
fn negative_entry() -> fuser::FileAttr {
    let epoch = std::time::UNIX_EPOCH;
    fuser::FileAttr {
        ino: INodeNo(0),
        size: 0,
        blocks: 0,
        atime: epoch,
        mtime: epoch,
        ctime: epoch,
        crtime: epoch,
        kind: fuser::FileType::RegularFile,
        perm: 0,
        nlink: 0,
        uid: 0,
        gid: 0,
        rdev: 0,
        blksize: 0,
        flags: 0,
    }
}

/// The file handle of an open file: says at release whether it was direct.
fn handle(o: opens::Opened) -> FileHandle {
    FileHandle(if o.direct { opens::DIRECT_FH } else { 0 })
}

/// The open reply's flags: direct, or cached keeping the kernel's pages
/// (`keep`) unless they must go.
fn fopen(o: opens::Opened, keep: FopenFlags) -> FopenFlags {
    if o.direct {
        FopenFlags::FOPEN_DIRECT_IO
    } else if o.drop_cache {
        FopenFlags::empty()
    } else {
        keep
    }
}

fn xattr_reply(v: FsResult<Vec<u8>>, size: u32, reply: ReplyXattr) {
    match v {
        Ok(v) if size == 0 => reply.size(v.len() as u32),
        Ok(v) if v.len() > size as usize => reply.error(Errno::ERANGE),
        Ok(v) => reply.data(&v),
        Err(e) => reply.error(e.errno()),
    }
}

impl From<FsError> for Errno {
    fn from(e: FsError) -> Errno {
        e.errno()
    }
}
