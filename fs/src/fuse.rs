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
use std::time::{Duration, SystemTime};

use fuser::{
    BsdFileFlags, Config, CopyFileRangeFlags, Errno, FileHandle, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenFlags, RenameFlags,
    ReplyAttr, ReplyCreate, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyLseek,
    ReplyOpen, ReplyStatfs, ReplyWrite, ReplyXattr, Request, TimeOrNow, WriteFlags,
};
use parking_lot::{Mutex, RwLock};
use pmemfs_ondisk::{Access, Image, Ino, Kind, PAGE_SIZE};

use crate::attr::{kind_to_fuse, time_from_system, to_fuse};
use crate::cache::CacheOptions;
use crate::error::{fail, FsError, FsResult};
use crate::ioctl::{PMEMFS_IOC_STATS, PMEMFS_IOC_UNSHARE, PMEMFS_IOC_USAGE};
use crate::options::MountOptions;
use crate::state::{now, Caller, NewInode, State};

/// How long the kernel may trust attributes and entries. Every change goes
/// through this daemon and the kernel updates its cache on each reply, so
/// the TTL only bounds how stale a view another mount could see; there is
/// no other mount.
const TTL: Duration = Duration::from_secs(1);
/// Largest request the kernel may send: 256 pages.
const MAX_WRITE: u32 = 256 * PAGE_SIZE as u32;

type Listing = Vec<(Ino, Kind, Vec<u8>)>;

pub struct PmemFs {
    state: RwLock<State>,
    /// Directory listings taken at opendir, served by readdir.
    listings: Mutex<HashMap<u64, Listing>>,
    next_fh: AtomicU64,
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
        let img = Image::open_file(file, access)?;
        Ok(PmemFs {
            state: RwLock::new(State::with_cache(
                img,
                opts.read_only,
                CacheOptions::from_mount(&opts),
            )),
            listings: Mutex::new(HashMap::new()),
            next_fh: AtomicU64::new(1),
            name: image
                .canonicalize()
                .unwrap_or_else(|_| image.to_path_buf())
                .display()
                .to_string(),
            opts,
        })
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
        if self.opts.allow_other {
            c.acl = fuser::SessionACL::All;
        }
        c.mount_options.push(MountOption::Dev);
        c.mount_options.push(MountOption::Suid);
        c.n_threads = Some(self.opts.threads);
        c.clone_fd = true;
        c
    }

    fn entry(&self, ino: Ino, reply: ReplyEntry) {
        match self.state.read().inode(ino) {
            Ok(i) => reply.entry(&TTL, &to_fuse(ino, i), Generation(0)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn attr_reply(&self, ino: Ino, reply: ReplyAttr) {
        match self.state.read().inode(ino) {
            Ok(i) => reply.attr(&TTL, &to_fuse(ino, i)),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn make(&self, req: &Request, parent: INodeNo, name: &OsStr, new: NewInode, reply: ReplyEntry) {
        let made = self
            .state
            .write()
            .make(parent.0, name.as_bytes(), new, caller(req));
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
        let mut want = InitFlags::FUSE_MAX_PAGES
            | InitFlags::FUSE_PARALLEL_DIROPS
            | InitFlags::FUSE_CACHE_SYMLINKS;
        if self.opts.writeback_cache {
            want |= InitFlags::FUSE_WRITEBACK_CACHE;
        }
        let _ = config.add_capabilities(want);
        let _ = config.set_max_write(MAX_WRITE);
        let _ = config.set_max_readahead(MAX_WRITE);
        Ok(())
    }

    fn destroy(&mut self) {
        let mut s = self.state.write();
        if !s.is_read_only() {
            if let Err(e) = s.image.mark_clean() {
                eprintln!("pmemfs: {}: the final checkpoint failed ({e}); the journal still holds every change", self.name);
            }
        }
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        let found = self.state.read().lookup(parent.0, name.as_bytes());
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

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        self.attr_reply(ino.0, reply)
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
        ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        let t = now();
        let change = move |a: &mut pmemfs_ondisk::Attr| {
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
        let r = {
            let mut s = self.state.write();
            match size {
                Some(sz) => s.set_size(ino.0, sz, change),
                None => s.set_attr(ino.0, change).and_then(|op| s.commit(&[op])),
            }
        };
        match r {
            Ok(()) => self.attr_reply(ino.0, reply),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readlink(&self, _req: &Request, ino: INodeNo, reply: ReplyData) {
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
        _umask: u32,
        rdev: u32,
        reply: ReplyEntry,
    ) {
        self.make(
            req,
            parent,
            name,
            NewInode {
                mode,
                rdev,
                target: None,
            },
            reply,
        )
    }

    fn mkdir(
        &self,
        req: &Request,
        parent: INodeNo,
        name: &OsStr,
        mode: u32,
        _umask: u32,
        reply: ReplyEntry,
    ) {
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
            reply,
        )
    }

    fn unlink(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
        empty(
            self.state.write().unlink(parent.0, name.as_bytes(), false),
            reply,
        )
    }

    fn rmdir(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEmpty) {
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
            reply,
        )
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
        let r = self.state.write().rename(
            parent.0,
            name.as_bytes(),
            newparent.0,
            newname.as_bytes(),
            flags.bits(),
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
        let mut s = self.state.write();
        let writes = flags.0 & libc::O_ACCMODE != libc::O_RDONLY;
        let r = match s.attr(ino.0) {
            Ok(a) if a.kind == Kind::Dir && writes => fail(libc::EISDIR),
            Ok(_) if writes && s.is_read_only() => fail(libc::EROFS),
            Ok(_) => s.opened(ino.0),
            Err(e) => Err(e),
        };
        match r {
            // The kernel's page cache stays valid across opens: every
            // change to the data passes through it.
            Ok(()) => reply.opened(FileHandle(0), FopenFlags::FOPEN_KEEP_CACHE),
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
        let s = self.state.read();
        match s.read(ino.0, offset, size) {
            Ok(d) => reply.data(d.as_slice()),
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
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        match self.state.write().write(ino.0, offset, data) {
            Ok(n) => reply.written(n),
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
        // Nothing is buffered here. ENOSYS tells the kernel so once, and it
        // stops sending a flush with every close.
        reply.error(Errno::ENOSYS)
    }

    fn release(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        _flush: bool,
        reply: ReplyEmpty,
    ) {
        empty(self.state.write().closed(ino.0), reply)
    }

    /// Every write and metadata change is durable when its request returns
    /// (the journal entry is fenced before the reply), so there is nothing
    /// left to flush.
    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn opendir(&self, _req: &Request, ino: INodeNo, _flags: OpenFlags, reply: ReplyOpen) {
        let listing = self.state.read().list(ino.0);
        match listing {
            Ok(l) => {
                let fh = self.next_fh.fetch_add(1, Ordering::Relaxed);
                self.listings.lock().insert(fh, l);
                reply.opened(FileHandle(fh), FopenFlags::empty());
            }
            Err(e) => reply.error(e.errno()),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        let listings = self.listings.lock();
        let Some(l) = listings.get(&fh.0) else {
            return reply.error(Errno::EBADF);
        };
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
        _ino: INodeNo,
        fh: FileHandle,
        _flags: OpenFlags,
        reply: ReplyEmpty,
    ) {
        self.listings.lock().remove(&fh.0);
        reply.ok()
    }

    fn fsyncdir(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        reply.ok()
    }

    fn statfs(&self, _req: &Request, _ino: INodeNo, reply: ReplyStatfs) {
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
        _req: &Request,
        ino: INodeNo,
        name: &OsStr,
        value: &[u8],
        flags: i32,
        _position: u32,
        reply: ReplyEmpty,
    ) {
        empty(
            self.state
                .write()
                .setxattr(ino.0, name.as_bytes(), value, flags),
            reply,
        )
    }

    fn getxattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, size: u32, reply: ReplyXattr) {
        let v = self.state.read().getxattr(ino.0, name.as_bytes());
        xattr_reply(v, size, reply)
    }

    fn listxattr(&self, _req: &Request, ino: INodeNo, size: u32, reply: ReplyXattr) {
        let v = self.state.read().listxattr(ino.0);
        xattr_reply(v, size, reply)
    }

    fn removexattr(&self, _req: &Request, ino: INodeNo, name: &OsStr, reply: ReplyEmpty) {
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
        _umask: u32,
        _flags: i32,
        reply: ReplyCreate,
    ) {
        let mut s = self.state.write();
        let r = s
            .make(
                parent.0,
                name.as_bytes(),
                NewInode {
                    mode,
                    rdev: 0,
                    target: None,
                },
                caller(req),
            )
            .and_then(|ino| s.opened(ino).map(|()| ino));
        match r.and_then(|ino| s.inode(ino).map(|i| to_fuse(ino, i))) {
            Ok(attr) => reply.created(
                &TTL,
                &attr,
                Generation(0),
                FileHandle(0),
                FopenFlags::FOPEN_KEEP_CACHE,
            ),
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
        let Ok(off) = u64::try_from(offset) else {
            return reply.error(Errno::EINVAL);
        };
        match self.state.read().seek(ino.0, off, whence) {
            Ok(o) => reply.offset(o as i64),
            Err(e) => reply.error(e.errno()),
        }
    }

    fn ioctl(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        _flags: fuser::IoctlFlags,
        cmd: u32,
        in_data: &[u8],
        out_size: u32,
        reply: fuser::ReplyIoctl,
    ) {
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
        let s = self.state.read();
        let out = match cmd {
            PMEMFS_IOC_USAGE => s.usage(ino.0).map(|u| u.encode()),
            PMEMFS_IOC_STATS => Ok(s.stats().encode()),
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
