//! `libpmemfs_reflink.so`: makes `cp --reflink=always` (and
//! `fallocate(FALLOC_FL_UNSHARE_RANGE)`) work on pmemfs.
//!
//! Why it exists: on stock kernels FUSE never sees `FICLONE` or
//! `FICLONERANGE`; the kernel answers `EOPNOTSUPP` before the daemon is
//! asked, so `cp --reflink=always` fails on any FUSE file system. pmemfs
//! clones through `copy_file_range` instead (whole pages are shared), which
//! `cp --reflink=auto` already uses. Preloaded, this library turns a clone
//! ioctl whose destination is on a pmemfs mount into `copy_file_range`
//! calls covering the same range, and passes every other ioctl, and every
//! clone aimed elsewhere, to the C library untouched. A clone is first
//! checked as the kernel checks one (same file system, open modes, page
//! alignment, ranges, overlap, size limits) and refused with the kernel's
//! errno before anything moves; then only the source's data extents are
//! copied and its holes punched, so a sparse file clones at the cost of its
//! mapped pages, not of its size. Likewise the kernel refuses `fallocate`
//! with `FALLOC_FL_UNSHARE_RANGE` on FUSE; aimed at a pmemfs mount it
//! becomes pmemfs's unshare ioctl. And the kernel refuses `FS_IOC_FIEMAP`
//! on FUSE (`filefrag`, `xfs_io -c fiemap`, dedupe tools): aimed at a
//! pmemfs file it is answered from pmemfs's extent ioctl, shared pages
//! flagged `FIEMAP_EXTENT_SHARED`. `FIDEDUPERANGE` (`jdupes -B`, `xfs_io
//! dedupe`) likewise becomes pmemfs's dedupe ioctl: equal ranges are
//! shared, differing ones reported as such.
//!
//! ```sh
//! LD_PRELOAD=target/release/libpmemfs_reflink.so cp --reflink=always SRC DST
//! ```

use std::ffi::{c_int, c_ulong, c_void, CStr};
use std::sync::OnceLock;

/// `_IOW(0x94, 9, int)`
const FICLONE: c_ulong = 0x4004_9409;
/// `_IOW(0x94, 13, struct file_clone_range)`
const FICLONERANGE: c_ulong = 0x4020_940d;
/// `_IOW('P', 3, [u64; 2])`: pmemfs's unshare ioctl (pmemfs_fs::ioctl).
const PMEMFS_IOC_UNSHARE: c_ulong = 0x4010_5003;
const FALLOC_FL_UNSHARE_RANGE: c_int = 0x40;
/// `_IOWR('f', 11, struct fiemap)`
const FS_IOC_FIEMAP: c_ulong = 0xc020_660b;
const FIEMAP_FLAG_SYNC: u32 = 1;
const FIEMAP_EXTENT_LAST: u32 = 1;
const FIEMAP_EXTENT_SHARED: u32 = 0x2000;
/// `_IOWR('P', 7, ...)`: pmemfs's extent ioctl, and the layout of its
/// answer (pmemfs_fs::ioctl::Extents, whose fixed-bytes test pins both):
/// `[count, next, last]`, then `count` records of `[logical, physical,
/// length, flags]`, flag bit 0 meaning shared, little-endian u64s.
const PMEMFS_IOC_EXTENTS: c_ulong = 0xf218_5007;
const EXTENT_RECORDS: usize = 400;
const EXTENTS_WORDS: usize = 3 + 4 * EXTENT_RECORDS;
/// `_IOWR(0x94, 54, struct file_dedupe_range)`
const FIDEDUPERANGE: c_ulong = 0xc018_9436;
const FILE_DEDUPE_RANGE_SAME: i32 = 0;
/// `_IOWR('P', 8, ...)`: pmemfs's dedupe ioctl, asked of the source
/// (pmemfs_fs::ioctl::DedupeRequest and DedupeAnswer, pinned by their
/// fixed-bytes test): in, `[src_off, len, count]` then `[dst_ino,
/// dst_off]` per destination; out, `[0, 0, count]` then `[status, bytes]`
/// per destination; little-endian u64s, 127 destinations at most.
const PMEMFS_IOC_DEDUPE: c_ulong = 0xc808_5008;
const DEDUPE_DESTS: usize = 127;
const DEDUPE_WORDS: usize = 3 + 2 * DEDUPE_DESTS;

/// The f_type of every FUSE mount.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Longest piece per call; pmemfs answers at most 4 GiB less a page.
const CHUNK: usize = 1 << 30;

/// pmemfs's page: clone offsets and lengths align to it, as the kernel
/// aligns them to the file system's block.
const PAGE: u64 = 4096;
/// The largest file size: the kernel's MAX_LFS_FILESIZE, which is FUSE's
/// s_maxbytes, and pmemfs's own limit.
const MAX_SIZE: u64 = i64::MAX as u64;

/// `struct fiemap`'s header; `fm_extent_count` extents follow it.
#[repr(C)]
struct FiemapHeader {
    fm_start: u64,
    fm_length: u64,
    fm_flags: u32,
    fm_mapped_extents: u32,
    fm_extent_count: u32,
    fm_reserved: u32,
}

/// `struct fiemap_extent`.
#[repr(C)]
struct FiemapExtent {
    fe_logical: u64,
    fe_physical: u64,
    fe_length: u64,
    fe_reserved64: [u64; 2],
    fe_flags: u32,
    fe_reserved: [u32; 3],
}

/// `struct file_dedupe_range`'s header; `dest_count` infos follow it.
#[repr(C)]
struct DedupeHeader {
    src_offset: u64,
    src_length: u64,
    dest_count: u16,
    reserved1: u16,
    reserved2: u32,
}

/// `struct file_dedupe_range_info`.
#[repr(C)]
struct DedupeInfo {
    dest_fd: i64,
    dest_offset: u64,
    bytes_deduped: u64,
    status: i32,
    reserved: u32,
}

#[repr(C)]
struct FileCloneRange {
    src_fd: i64,
    src_offset: u64,
    src_length: u64,
    dest_offset: u64,
}

type IoctlFn = unsafe extern "C" fn(c_int, c_ulong, *mut c_void) -> c_int;

/// The address of the definition of `name` after this library's (the C
/// library's), looked up once into `slot`; 0 when there is none.
fn next_symbol(slot: &OnceLock<usize>, name: &CStr) -> usize {
    *slot.get_or_init(|| {
        // SAFETY: dlsym with a NUL-terminated name; RTLD_NEXT finds the
        // definition after this library's.
        unsafe { libc::dlsym(libc::RTLD_NEXT, name.as_ptr()) as usize }
    })
}

/// The C library's ioctl.
fn real_ioctl() -> Option<IoctlFn> {
    static REAL: OnceLock<usize> = OnceLock::new();
    let p = next_symbol(&REAL, c"ioctl");
    // SAFETY: a non-null result of dlsym("ioctl") is the C library's ioctl.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, IoctlFn>(p) })
}

type FallocateFn = unsafe extern "C" fn(c_int, c_int, libc::off_t, libc::off_t) -> c_int;

/// The C library's fallocate: this library exports its own, which clones
/// must not go through.
fn real_fallocate() -> Option<FallocateFn> {
    static REAL: OnceLock<usize> = OnceLock::new();
    let p = next_symbol(&REAL, c"fallocate");
    // SAFETY: a non-null dlsym("fallocate") is the C library's fallocate.
    (p != 0).then(|| unsafe { std::mem::transmute::<usize, FallocateFn>(p) })
}

/// Whether `fd` lies on a pmemfs mount: a FUSE file system whose mount
/// (found through /proc/self/fdinfo's mnt_id) has type `fuse.pmemfs` or a
/// source starting `pmemfs:` (pmemfs-mount's name for its mounts).
fn on_pmemfs(fd: c_int) -> bool {
    // SAFETY: fstatfs fills the struct for a descriptor; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(fd, &mut st) } != 0 || st.f_type as i64 != FUSE_SUPER_MAGIC {
        return false;
    }
    let Ok(info) = std::fs::read_to_string(format!("/proc/self/fdinfo/{fd}")) else {
        return false;
    };
    let Some(mnt_id) = info
        .lines()
        .find_map(|l| l.strip_prefix("mnt_id:"))
        .map(str::trim)
    else {
        return false;
    };
    let Ok(mounts) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    mounts.lines().any(|l| {
        let mut tail = l.split(" - ").nth(1).unwrap_or("").split(' ');
        let (fstype, source) = (tail.next().unwrap_or(""), tail.next().unwrap_or(""));
        l.split(' ').next() == Some(mnt_id)
            && (fstype == "fuse.pmemfs" || source.starts_with("pmemfs:"))
    })
}

fn set_errno(e: c_int) {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() = e };
}

/// This thread's errno, as a failed call left it.
fn errno() -> c_int {
    // SAFETY: __errno_location returns this thread's errno.
    unsafe { *libc::__errno_location() }
}

/// One end of a clone: what fstat and fcntl(F_GETFL) say about it.
struct End {
    st: libc::stat,
    flags: c_int,
}

impl End {
    /// EBADF for a closed descriptor or an O_PATH one, which the kernel's
    /// fdget refuses as an ioctl target or a clone source.
    fn of(fd: c_int) -> Result<End, c_int> {
        // SAFETY: fcntl(F_GETFL) takes no argument.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
        if flags < 0 || flags & libc::O_PATH != 0 {
            return Err(libc::EBADF);
        }
        // SAFETY: fstat fills the struct; zeroed is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(fd, &mut st) } != 0 {
            return Err(errno());
        }
        Ok(End { st, flags })
    }

    fn kind(&self) -> libc::mode_t {
        self.st.st_mode & libc::S_IFMT
    }

    fn size(&self) -> u64 {
        self.st.st_size.max(0) as u64
    }

    fn readable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_RDONLY | libc::O_RDWR)
    }

    fn writable(&self) -> bool {
        matches!(self.flags & libc::O_ACCMODE, libc::O_WRONLY | libc::O_RDWR)
    }
}

/// A clone the checks let through: `len` bytes (never 0) from `src` at
/// `src_off` to `dst` at `dst_off`, whose size was `dst_size` before.
struct Plan {
    src: c_int,
    src_off: u64,
    dst: c_int,
    dst_off: u64,
    len: u64,
    dst_size: u64,
}

/// remap_verify_area: offsets and lengths are loff_t, so neither may
/// exceed i64::MAX, nor may their sum.
fn check_area(pos: u64, len: u64) -> Result<(), c_int> {
    match pos.checked_add(len) {
        Some(end) if end <= MAX_SIZE => Ok(()),
        _ => Err(libc::EINVAL),
    }
}

/// generic_file_rw_checks: regular files only, the source open for
/// reading, the destination for writing and not appending.
fn check_files(src: &End, dst: &End) -> Result<(), c_int> {
    if src.kind() == libc::S_IFDIR || dst.kind() == libc::S_IFDIR {
        return Err(libc::EISDIR);
    }
    if src.kind() != libc::S_IFREG || dst.kind() != libc::S_IFREG {
        return Err(libc::EINVAL);
    }
    if !src.readable() || !dst.writable() || dst.flags & libc::O_APPEND != 0 {
        return Err(libc::EBADF);
    }
    Ok(())
}

/// generic_write_check_limits: writing at `pos` fails with EFBIG when
/// `pos` is at a limit already (at RLIMIT_FSIZE raising SIGXFSZ, as the
/// kernel does); otherwise `count` shrinks to fit under the limits, and the
/// caller refuses a shortened clone.
fn write_limits(pos: u64, mut count: u64) -> Result<u64, c_int> {
    // SAFETY: getrlimit fills the struct; zeroed is valid.
    let mut rl: libc::rlimit = unsafe { std::mem::zeroed() };
    let limited = unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl) } == 0
        && rl.rlim_cur != libc::RLIM_INFINITY;
    if limited {
        if pos >= rl.rlim_cur {
            // SAFETY: raise only queues a signal for this thread.
            unsafe { libc::raise(libc::SIGXFSZ) };
            return Err(libc::EFBIG);
        }
        count = count.min(rl.rlim_cur - pos);
    }
    if pos >= MAX_SIZE {
        return Err(libc::EFBIG);
    }
    Ok(count.min(MAX_SIZE - pos))
}

/// Checks a clone of `req` bytes (to EOF when 0) as the kernel's clone
/// ioctls do (fs/ioctl.c, fs/remap_range.c), in the same order, so that
/// the caller sees the errno a local file system would give, and nothing
/// moves unless the whole clone is valid. `None`: nothing to do.
fn plan(
    src: c_int,
    src_off: u64,
    req: u64,
    dst: c_int,
    dst_off: u64,
) -> Result<Option<Plan>, c_int> {
    let d = End::of(dst)?;
    let s = End::of(src)?;
    check_area(src_off, req)?;
    check_area(dst_off, req)?;
    // Clones never cross a superblock: one pmemfs image to another, or to
    // any other file system, would be a byte copy. The kernel no longer
    // refuses two mounts of one superblock (bind mounts), so neither does
    // this.
    if s.st.st_dev != d.st.st_dev {
        return Err(libc::EXDEV);
    }
    check_files(&s, &d)?;
    // generic_remap_file_range_prep: a length of 0 runs to the source's
    // EOF; at EOF there is nothing to clone.
    let size_in = s.size();
    let len = match req {
        0 if src_off == size_in => return Ok(None),
        0 if src_off > size_in => return Err(libc::EINVAL),
        0 => size_in - src_off,
        n => n,
    };
    // generic_remap_checks: aligned offsets, a source range inside the
    // source, a destination range under the size limits, an aligned length
    // unless it ends at the source's EOF, no overlap within one file, and
    // nothing shortened (clone ioctls cannot report a short clone).
    if src_off % PAGE != 0 || dst_off % PAGE != 0 || src_off >= size_in {
        return Err(libc::EINVAL);
    }
    let mut count = write_limits(dst_off, len.min(size_in - src_off))?;
    let span = if src_off + count == size_in {
        size_in.next_multiple_of(PAGE) - src_off
    } else {
        count -= count % PAGE;
        count
    };
    // One inode: st_dev is the same by now.
    let same = s.st.st_ino == d.st.st_ino;
    if same && dst_off + span > src_off && dst_off < src_off + span {
        return Err(libc::EINVAL);
    }
    if count != len {
        return Err(libc::EINVAL);
    }
    // generic_remap_check_len: a partial last page lands only at or past
    // the destination's EOF, never inside its data.
    let dst_size = d.size();
    if len % PAGE != 0 && dst_off + len < dst_size {
        return Err(libc::EINVAL);
    }
    Ok(Some(Plan {
        src,
        src_off,
        dst,
        dst_off,
        len,
        dst_size,
    }))
}

/// One extent of a pmemfs file, in bytes.
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    physical: u64,
    length: u64,
    shared: bool,
}

/// pmemfs's extents of `fd` from byte `from` on, one answer's worth: the
/// extents, where to ask next, and whether none follow. The daemon answers
/// from its page maps, so this sees the media even where the kernel's
/// writeback cache answers SEEK_DATA itself (all data).
fn extents(fd: c_int, from: u64) -> Result<(Vec<Extent>, u64, bool), c_int> {
    let Some(real) = real_ioctl() else {
        return Err(libc::ENOSYS);
    };
    let mut buf = vec![0u64; EXTENTS_WORDS];
    buf[0] = from.to_le();
    // SAFETY: the buffer is as large as the number says, and lives across
    // the call.
    if unsafe { real(fd, PMEMFS_IOC_EXTENTS, buf.as_mut_ptr() as *mut c_void) } != 0 {
        return Err(errno());
    }
    let w = |i: usize| u64::from_le(buf[i]);
    let n = usize::try_from(w(0)).unwrap_or(usize::MAX);
    if n > EXTENT_RECORDS {
        return Err(libc::EIO);
    }
    let list = (0..n)
        .map(|i| Extent {
            logical: w(3 + 4 * i),
            physical: w(4 + 4 * i),
            length: w(5 + 4 * i),
            shared: w(6 + 4 * i) & 1 != 0,
        })
        .collect();
    Ok((list, w(1), w(2) != 0))
}

/// Where the next data at or after `pos` starts, or `None` if none does.
fn next_data(fd: c_int, pos: u64) -> Result<Option<u64>, c_int> {
    let (list, _, _) = extents(fd, pos)?;
    Ok(list.first().map(|e| e.logical.max(pos)))
}

/// Writes back what the kernel holds of `fd` (under the writeback cache;
/// otherwise nothing is held), so that the daemon's page maps are the
/// file's data, as the kernel's own FIEMAP and remap do first.
fn write_back(fd: c_int) -> Result<(), c_int> {
    let how = libc::SYNC_FILE_RANGE_WAIT_BEFORE
        | libc::SYNC_FILE_RANGE_WRITE
        | libc::SYNC_FILE_RANGE_WAIT_AFTER;
    // SAFETY: sync_file_range on a descriptor, over the whole file.
    match unsafe { libc::sync_file_range(fd, 0, 0, how) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// FS_IOC_FIEMAP on a pmemfs file, as the kernel's ioctl_fiemap and
/// fiemap_prep do it: the extents that overlap `[fm_start, fm_start +
/// fm_length)`, counted only when `fm_extent_count` is 0, shared pages
/// flagged FIEMAP_EXTENT_SHARED and the file's last extent
/// FIEMAP_EXTENT_LAST; only FIEMAP_FLAG_SYNC is supported (any other flag:
/// EBADR, with the unsupported ones left in `fm_flags`).
///
/// # Safety
/// `arg` must point to a `struct fiemap` with room for its
/// `fm_extent_count` extents, as for the real ioctl.
unsafe fn fiemap(fd: c_int, arg: *mut c_void) -> Result<(), c_int> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's struct fiemap, read and written in place.
    let head = unsafe { &mut *(arg as *mut FiemapHeader) };
    if head.fm_length == 0 {
        return Err(libc::EINVAL);
    }
    if head.fm_flags & !FIEMAP_FLAG_SYNC != 0 {
        head.fm_flags &= !FIEMAP_FLAG_SYNC;
        return Err(libc::EBADR);
    }
    if head.fm_start > MAX_SIZE {
        return Err(libc::EFBIG);
    }
    if head.fm_flags & FIEMAP_FLAG_SYNC != 0 {
        write_back(fd)?;
    }
    let end = head.fm_start.saturating_add(head.fm_length).min(MAX_SIZE);
    let room = head.fm_extent_count as usize;
    // SAFETY: the extents follow the header, `room` of them.
    let out = unsafe {
        std::slice::from_raw_parts_mut(
            (arg as *mut u8).add(std::mem::size_of::<FiemapHeader>()) as *mut FiemapExtent,
            room,
        )
    };
    let mut mapped = 0usize;
    let mut from = head.fm_start;
    'answers: loop {
        let (list, next, last) = extents(fd, from)?;
        let count = list.len();
        for (i, e) in list.into_iter().enumerate() {
            if e.logical >= end {
                break 'answers;
            }
            if room > 0 {
                if mapped == room {
                    break 'answers;
                }
                let mut flags = 0;
                if e.shared {
                    flags |= FIEMAP_EXTENT_SHARED;
                }
                if last && i + 1 == count {
                    flags |= FIEMAP_EXTENT_LAST;
                }
                out[mapped] = FiemapExtent {
                    fe_logical: e.logical,
                    fe_physical: e.physical,
                    fe_length: e.length,
                    fe_reserved64: [0; 2],
                    fe_flags: flags,
                    fe_reserved: [0; 3],
                };
            }
            mapped += 1;
        }
        if last {
            break;
        }
        from = next;
    }
    head.fm_mapped_extents = u32::try_from(mapped).unwrap_or(u32::MAX);
    Ok(())
}

/// One copy_file_range of at most `len` bytes; returns how many pmemfs
/// took (it shares the whole pages).
fn copy_once(src: c_int, src_off: u64, len: u64, dst: c_int, dst_off: u64) -> Result<u64, c_int> {
    let (mut so, mut doff) = (src_off as libc::loff_t, dst_off as libc::loff_t);
    let want = len.min(CHUNK as u64) as usize;
    // SAFETY: offsets are locals the call may update.
    let n = unsafe { libc::copy_file_range(src, &mut so, dst, &mut doff, want, 0) };
    if n < 0 {
        return Err(errno());
    }
    Ok(n as u64)
}

/// Makes `[from, to)` of `dst` a hole, as far as it lies inside `size`
/// (past it, the final size change leaves zeros anyway): a hole of the
/// source must read as zeros in the clone, and must cost no page.
fn punch(dst: c_int, from: u64, to: u64, size: u64) -> Result<(), c_int> {
    let to = to.min(size);
    if from >= to {
        return Ok(());
    }
    let Some(real) = real_fallocate() else {
        return Err(libc::ENOSYS);
    };
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: the C library's fallocate on a descriptor; both values are
    // at most i64::MAX.
    match unsafe { real(dst, mode, from as libc::off_t, (to - from) as libc::off_t) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// FIDEDUPERANGE with a pmemfs source, as the kernel's
/// ioctl_file_dedupe_range and vfs_dedupe_file_range do it: the checks of
/// the source fail the call, those of a destination set its status
/// (-EBADF, -EXDEV, -EISDIR, -EINVAL here; the daemon's own: -EPERM,
/// -EINVAL, FILE_DEDUPE_RANGE_DIFFERS), and pmemfs compares and shares the
/// valid destinations in one request and one transaction.
///
/// # Safety
/// `arg` must point to a `struct file_dedupe_range` with its
/// `dest_count` infos, as for the real ioctl.
unsafe fn dedupe(src: c_int, arg: *mut c_void) -> Result<(), c_int> {
    if arg.is_null() {
        return Err(libc::EFAULT);
    }
    // SAFETY: the caller's struct, read and written in place.
    let head = unsafe { &mut *(arg as *mut DedupeHeader) };
    let count = usize::from(head.dest_count);
    let size = std::mem::size_of::<DedupeHeader>() + count * std::mem::size_of::<DedupeInfo>();
    if size > PAGE as usize {
        return Err(libc::ENOMEM);
    }
    // SAFETY: the infos follow the header, `count` of them.
    let infos = unsafe {
        std::slice::from_raw_parts_mut(
            (arg as *mut u8).add(std::mem::size_of::<DedupeHeader>()) as *mut DedupeInfo,
            count,
        )
    };
    let s = End::of(src)?;
    if !s.readable() || head.reserved1 != 0 || head.reserved2 != 0 {
        return Err(libc::EINVAL);
    }
    match s.kind() {
        libc::S_IFDIR => return Err(libc::EISDIR),
        libc::S_IFREG => {}
        _ => return Err(libc::EINVAL),
    }
    let (off, len) = (head.src_offset, head.src_length);
    check_area(off, len)?;
    if off + len > s.size() {
        return Err(libc::EINVAL);
    }
    for i in infos.iter_mut() {
        i.bytes_deduped = 0;
        i.status = FILE_DEDUPE_RANGE_SAME;
    }
    // Which infos go to the daemon, in its request's order.
    let mut asked = Vec::new();
    let mut words = vec![0u64; DEDUPE_WORDS];
    for (n, info) in infos.iter_mut().enumerate() {
        let status = match c_int::try_from(info.dest_fd).map(End::of) {
            _ if info.reserved != 0 => Err(libc::EINVAL),
            Ok(Ok(d)) if d.st.st_dev != s.st.st_dev => Err(libc::EXDEV),
            Ok(Ok(d)) if d.kind() == libc::S_IFDIR => Err(libc::EISDIR),
            Ok(Ok(d)) if d.kind() != libc::S_IFREG => Err(libc::EINVAL),
            Ok(Ok(d)) => Ok(d),
            Ok(Err(_)) | Err(_) => Err(libc::EBADF),
        };
        match status {
            Ok(d) => {
                words[3 + 2 * asked.len()] = d.st.st_ino.to_le();
                words[4 + 2 * asked.len()] = info.dest_offset.to_le();
                asked.push(n);
            }
            Err(e) => info.status = -e,
        }
    }
    if asked.is_empty() {
        return Ok(());
    }
    // The kernel compares the page cache; pmemfs compares the media, so
    // what the writeback cache holds goes there first.
    write_back(src)?;
    for &n in &asked {
        if let Ok(fd) = c_int::try_from(infos[n].dest_fd) {
            write_back(fd)?;
        }
    }
    words[0] = off.to_le();
    words[1] = len.to_le();
    words[2] = (asked.len() as u64).to_le();
    let Some(real) = real_ioctl() else {
        return Err(libc::ENOSYS);
    };
    // SAFETY: the buffer is as large as the number says, and lives across
    // the call.
    if unsafe { real(src, PMEMFS_IOC_DEDUPE, words.as_mut_ptr() as *mut c_void) } != 0 {
        return Err(errno());
    }
    let w = |i: usize| u64::from_le(words[i]);
    if w(2) != asked.len() as u64 {
        return Err(libc::EIO);
    }
    for (k, &n) in asked.iter().enumerate() {
        let status = w(3 + 2 * k) as i64;
        infos[n].status = i32::try_from(status).map_err(|_| libc::EIO)?;
        infos[n].bytes_deduped = w(4 + 2 * k);
    }
    Ok(())
}

/// Clones a checked range: from each data extent's start (the daemon's
/// extents, after the kernel's dirty pages of the source are written back)
/// one copy_file_range over as much as pmemfs takes in one call, holes
/// within it and all (pmemfs clones a hole as a hole), so a file of many
/// small extents costs a few requests, not a few per extent; the holes
/// between calls are skipped and punched in the destination, then the
/// destination's size is set, so a sparse source costs its mapped pages
/// and never its size. The source's file offset does not move.
fn clone_planned(p: &Plan) -> Result<(), c_int> {
    let end = p.src_off + p.len;
    let at_dst = |off: u64| p.dst_off + (off - p.src_off);
    let mut pos = p.src_off;
    write_back(p.src)?;
    while pos < end {
        let data = next_data(p.src, pos)?.map_or(end, |d| d.clamp(pos, end));
        if data > pos {
            punch(p.dst, at_dst(pos), at_dst(data), p.dst_size)?;
        }
        if data == end {
            break;
        }
        let n = copy_once(p.src, data, end - data, p.dst, at_dst(data))?;
        if n == 0 {
            break; // the source ended early
        }
        pos = data + n;
    }
    extend(p.dst, at_dst(end))
}

/// Grows `dst` to `size` when it is smaller: a clone ending past the
/// destination's EOF (in a hole of the source, say) moves its EOF there.
fn extend(dst: c_int, size: u64) -> Result<(), c_int> {
    // SAFETY: fstat fills the struct; zeroed is valid.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstat(dst, &mut st) } != 0 {
        return Err(errno());
    }
    if st.st_size.max(0) as u64 >= size {
        return Ok(());
    }
    // SAFETY: ftruncate on a descriptor; size is at most i64::MAX.
    match unsafe { libc::ftruncate(dst, size as libc::off_t) } {
        0 => Ok(()),
        _ => Err(errno()),
    }
}

/// Clones `len` bytes (to EOF when 0) from `src` at `src_off` into `dst` at
/// `dst_off`, after the kernel's checks. Returns 0 or -1 with errno set.
fn clone_range(src: c_int, src_off: u64, len: u64, dst: c_int, dst_off: u64) -> c_int {
    let done = match plan(src, src_off, len, dst, dst_off) {
        Ok(Some(p)) => clone_planned(&p),
        Ok(None) => Ok(()),
        Err(e) => Err(e),
    };
    match done {
        Ok(()) => 0,
        Err(e) => {
            set_errno(e);
            -1
        }
    }
}

/// The preloaded `ioctl`. Declared with three fixed arguments: every ioctl
/// call passes at most one, and on the x86_64 and aarch64 C ABIs a fixed
/// argument arrives where the first variadic one would.
///
/// # Safety
/// Same contract as ioctl(2): `arg` must be what `request` expects.
#[no_mangle]
pub unsafe extern "C" fn ioctl(fd: c_int, request: c_ulong, arg: *mut c_void) -> c_int {
    let pass = || match real_ioctl() {
        // SAFETY: forwarding the caller's own arguments.
        Some(f) => unsafe { f(fd, request, arg) },
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    };
    match request {
        FICLONE if on_pmemfs(fd) => clone_range(arg as usize as c_int, 0, 0, fd, 0),
        FICLONERANGE if on_pmemfs(fd) && !arg.is_null() => {
            // SAFETY: FICLONERANGE's argument is a struct file_clone_range.
            let r = unsafe { &*(arg as *const FileCloneRange) };
            match c_int::try_from(r.src_fd) {
                Ok(src) => clone_range(src, r.src_offset, r.src_length, fd, r.dest_offset),
                Err(_) => {
                    set_errno(libc::EBADF);
                    -1
                }
            }
        }
        FIDEDUPERANGE if on_pmemfs(fd) => {
            // SAFETY: the caller's struct file_dedupe_range, as for the
            // real ioctl.
            match unsafe { dedupe(fd, arg) } {
                Ok(()) => 0,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            }
        }
        FS_IOC_FIEMAP if on_pmemfs(fd) => {
            // SAFETY: the caller's struct fiemap, as for the real ioctl.
            match unsafe { fiemap(fd, arg) } {
                Ok(()) => 0,
                Err(e) => {
                    set_errno(e);
                    -1
                }
            }
        }
        _ => pass(),
    }
}

/// The preloaded `fallocate` (and `fallocate64`, the same on 64-bit).
///
/// # Safety
/// Same contract as fallocate(2).
#[no_mangle]
pub unsafe extern "C" fn fallocate(
    fd: c_int,
    mode: c_int,
    off: libc::off_t,
    len: libc::off_t,
) -> c_int {
    if mode & FALLOC_FL_UNSHARE_RANGE != 0 && on_pmemfs(fd) {
        let Some(real) = real_ioctl() else {
            set_errno(libc::ENOSYS);
            return -1;
        };
        let range = [off as u64, len as u64];
        // SAFETY: the unshare ioctl reads two u64s from `range`.
        return unsafe { real(fd, PMEMFS_IOC_UNSHARE, range.as_ptr() as *mut c_void) };
    }
    match real_fallocate() {
        // SAFETY: forwarding the caller's own arguments.
        Some(real) => unsafe { real(fd, mode, off, len) },
        None => {
            set_errno(libc::ENOSYS);
            -1
        }
    }
}

/// # Safety
/// Same contract as fallocate(2).
#[no_mangle]
pub unsafe extern "C" fn fallocate64(
    fd: c_int,
    mode: c_int,
    off: libc::off_t,
    len: libc::off_t,
) -> c_int {
    // SAFETY: off_t is 64 bits on the targets this builds for.
    unsafe { fallocate(fd, mode, off, len) }
}

/// Names the library in `ldd`-style listings and proves it links.
#[no_mangle]
pub extern "C" fn pmemfs_reflink_version() -> *const libc::c_char {
    static V: &CStr = c"pmemfs_reflink 1";
    V.as_ptr()
}
