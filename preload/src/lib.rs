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
//! clone aimed elsewhere, to the C library untouched. Likewise the kernel
//! refuses `fallocate` with `FALLOC_FL_UNSHARE_RANGE` on FUSE; aimed at a
//! pmemfs mount it becomes pmemfs's unshare ioctl.
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

/// The f_type of every FUSE mount.
const FUSE_SUPER_MAGIC: i64 = 0x6573_5546;
/// Longest piece per call; pmemfs answers at most 4 GiB less a page.
const CHUNK: usize = 1 << 30;

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

/// Clones `len` bytes (to EOF when 0) from `src` at `src_off` into `dst` at
/// `dst_off` with copy_file_range. Returns 0 or -1 with errno set.
fn clone_range(src: c_int, mut src_off: u64, len: u64, dst: c_int, mut dst_off: u64) -> c_int {
    let mut left = if len == 0 {
        // SAFETY: fstat fills the struct; zeroed is valid.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        if unsafe { libc::fstat(src, &mut st) } != 0 {
            return -1;
        }
        (st.st_size as u64).saturating_sub(src_off)
    } else {
        len
    };
    while left > 0 {
        let (mut so, mut doff) = (src_off as libc::loff_t, dst_off as libc::loff_t);
        let want = left.min(CHUNK as u64) as usize;
        // SAFETY: offsets are locals the call may update.
        let n = unsafe { libc::copy_file_range(src, &mut so, dst, &mut doff, want, 0) };
        if n < 0 {
            return -1;
        }
        if n == 0 {
            break; // the source ended early
        }
        src_off += n as u64;
        dst_off += n as u64;
        left -= n as u64;
    }
    0
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
        _ => pass(),
    }
}

type FallocateFn = unsafe extern "C" fn(c_int, c_int, libc::off_t, libc::off_t) -> c_int;

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
    static REAL: OnceLock<usize> = OnceLock::new();
    let p = next_symbol(&REAL, c"fallocate");
    if p == 0 {
        set_errno(libc::ENOSYS);
        return -1;
    }
    // SAFETY: a non-null dlsym("fallocate") is the C library's fallocate.
    unsafe { std::mem::transmute::<usize, FallocateFn>(p)(fd, mode, off, len) }
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
