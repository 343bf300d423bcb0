//! The preload library's clone ioctls (`FICLONE`, `FICLONERANGE`) through
//! real mounts. Guards that a clone is refused, with the errno the kernel's
//! own clone checks give (fs/ioctl.c, fs/remap_range.c) and before any
//! byte moves, when it crosses file systems (EXDEV), when a descriptor is
//! open the wrong way (EBADF) or is not a regular file (EISDIR, EINVAL),
//! and when its ranges are past the source's EOF, unaligned, overlapping
//! or past the size limits (EINVAL, EFBIG); and that a valid clone of a
//! sparse source costs its mapped pages, never its size: an 8 EiB file with
//! one page clones at once, and the source's holes become holes of the
//! destination, over whatever data it had there (SEEK_DATA and FIEMAP both
//! say so); and that FS_IOC_FIEMAP through the preload reports extents,
//! shared pages and the last extent as the kernel's FIEMAP does.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::*;

/// How long one snippet or one cp may take before it counts as hung: the
/// failure mode of a clone that walks a sparse file's size, not its pages.
/// Nothing here is timed beyond that.
const HANG: Duration = Duration::from_secs(30);

/// The largest file size pmemfs (and the kernel) accepts: 8 EiB less a
/// byte.
const MAX_SIZE: u64 = i64::MAX as u64;

/// Clone helpers for the snippets, after the prelude: the ioctls go
/// through the C library's ioctl, where the preload library sits.
const CLONE_PY: &str = r#"
import fcntl
import struct
assert hasattr(libc, "pmemfs_reflink_version"), "the preload library is not loaded"
FICLONE = 0x40049409
FICLONERANGE = 0x4020940D
PAGE = 4096

def ficlone(dst, src):
    fcntl.ioctl(dst, FICLONE, src)

def ficlonerange(src, src_off, length, dst, dst_off):
    fcntl.ioctl(dst, FICLONERANGE, struct.pack("qQQQ", src, src_off, length, dst_off))

def size(fd):
    return os.fstat(fd).st_size

FS_IOC_FIEMAP = 0xC020660B
FIEMAP_EXTENT_LAST = 0x1
FIEMAP_EXTENT_SHARED = 0x2000

def fiemap(fd, start=0, length=2**64 - 1, count=64, flags=0):
    """FS_IOC_FIEMAP: (mapped count, [(logical, length, flags)])."""
    buf = bytearray(struct.pack("QQIIII", start, length, flags, 0, count, 0) + bytes(56 * count))
    fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
    mapped = struct.unpack_from("QQIIII", buf)[3]
    out = []
    for i in range(min(mapped, count)):
        lo, _, ln, _, _, fl = struct.unpack_from("QQQQQI", buf, 32 + 56 * i)
        out.append((lo, ln, fl))
    return mapped, out

def data_extents(fd):
    """The (logical, length) of each extent, as the daemon's page maps say."""
    return [(lo, ln) for lo, ln, _ in fiemap(fd)[1]]
"#;

/// Runs a Python snippet after the prelude and [`CLONE_PY`] with the
/// preload library in LD_PRELOAD, `M` the mount point `mnt` and `ARGS`
/// the paths in `args`; fails the test unless it exits 0 within [`HANG`].
/// Returns its stdout.
fn py_clone(mnt: &Path, code: &str, args: &[&Path]) -> String {
    py_preloaded(mnt, CLONE_PY, code, args, HANG)
}

#[test]
fn clones_between_two_mounts_fail_with_exdev() {
    let (m1, m2) = (
        Mount::new("clone-xdev1", "64M", ""),
        Mount::new("clone-xdev2", "64M", ""),
    );
    let outside = m1.dir().join("outside");
    std::fs::write(&outside, [7u8; 8192]).unwrap();
    let out = py_clone(
        m1.path(),
        r#"
        a = os.open(P("a"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(a, pattern(3 * PAGE, 1), 0)
        b = os.open(ARGS[0], os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(b, b"\xee" * (2 * PAGE), 0)
        e = os.open(ARGS[1], os.O_RDWR | os.O_CREAT, 0o644)
        expect_errno(errno.EXDEV, ficlone, b, a)
        expect_errno(errno.EXDEV, ficlone, e, a)
        expect_errno(errno.EXDEV, ficlonerange, a, 0, PAGE, b, 0)
        expect_errno(errno.EXDEV, ficlonerange, a, PAGE, 0, e, 0)
        eq(os.pread(b, 4 * PAGE, 0), b"\xee" * (2 * PAGE), "the destination")
        eq(size(e), 0, "the empty destination's size")
        # Nor from another kind of file system into pmemfs.
        o = os.open(ARGS[2], os.O_RDONLY)
        expect_errno(errno.EXDEV, ficlone, e, o)
        eq(size(e), 0, "the empty destination's size")
        # Within one mount the same clone works.
        c = os.open(P("c"), os.O_RDWR | os.O_CREAT, 0o644)
        ficlone(c, a)
        eq(os.pread(c, 4 * PAGE, 0), pattern(3 * PAGE, 1), "a clone on one mount")
        print("ok")
        "#,
        &[&m2.p("b"), &m2.p("e"), &outside],
    );
    assert!(out.contains("ok"), "{out}");

    // cp --reflink=always cannot clone across mounts either.
    let o = Command::new("cp")
        .env("LD_PRELOAD", preload_library())
        .arg("--reflink=always")
        .arg(m1.p("a"))
        .arg(m2.p("b"))
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "cp --reflink=always between two mounts succeeded"
    );
    // cp truncated its destination before the clone; no data came.
    let b = std::fs::read(m2.p("b")).unwrap();
    assert!(b.iter().all(|&x| x == 0xee), "cp's failed clone wrote data");
    assert_eq!(du(&m1.p("c")).2, 3 * 4096, "the clone on one mount shares");
    m1.finish();
    m2.finish();
}

#[test]
fn ranges_are_checked_as_the_kernel_checks_them() {
    let m = Mount::new("clone-ranges", "256M", "");
    let out = py_clone(
        m.path(),
        r#"
        import resource
        import signal
        S = 4 * PAGE + 100
        src = os.open(P("src"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(src, pattern(S, 3), 0)
        dst = os.open(P("dst"), os.O_RDWR | os.O_CREAT, 0o644)

        def refused(code, *args):
            expect_errno(code, ficlonerange, *args)
            eq(size(dst), 0, f"the destination after refusing {args}")

        # Source ranges past the source's EOF.
        refused(errno.EINVAL, src, 0, 5 * PAGE, dst, 0)
        refused(errno.EINVAL, src, 3 * PAGE, 2 * PAGE, dst, 0)
        refused(errno.EINVAL, src, 8 * PAGE, PAGE, dst, 0)
        refused(errno.EINVAL, src, 8 * PAGE, 0, dst, 0)
        # Unaligned offsets.
        refused(errno.EINVAL, src, 100, PAGE, dst, 0)
        refused(errno.EINVAL, src, 0, PAGE, dst, 100)
        refused(errno.EINVAL, src, 100, 0, dst, 0)
        # Unaligned lengths that do not end at the source's EOF.
        refused(errno.EINVAL, src, 0, PAGE + 1, dst, 0)
        refused(errno.EINVAL, src, PAGE, 3 * PAGE + 99, dst, 0)
        # Offsets and ends past what an loff_t holds, or past the largest
        # file.
        refused(errno.EINVAL, src, 0, PAGE, dst, 2**63)
        refused(errno.EINVAL, src, 2**64 - PAGE, PAGE, dst, 0)
        refused(errno.EINVAL, src, 0, 2 * PAGE, dst, 2**63 - PAGE)
        refused(errno.EINVAL, src, 0, 2**63 - PAGE, dst, 2 * PAGE)

        # An unaligned length that ends at the source's EOF is a clone.
        ficlonerange(src, PAGE, S - PAGE, dst, 0)
        eq(size(dst), S - PAGE, "the clone's size")
        eq(os.pread(dst, S, 0), pattern(S, 3)[PAGE:], "the clone's contents")

        # ... but its partial last page may not land inside the
        # destination's data; at or past its EOF it may.
        d2 = os.open(P("d2"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(d2, b"\xee" * (8 * PAGE), 0)
        expect_errno(errno.EINVAL, ficlonerange, src, PAGE, S - PAGE, d2, 0)
        expect_errno(errno.EINVAL, ficlonerange, src, PAGE, 0, d2, PAGE)
        eq(os.pread(d2, 9 * PAGE, 0), b"\xee" * (8 * PAGE), "d2 after refusals")
        ficlonerange(src, PAGE, 0, d2, 5 * PAGE)
        eq(size(d2), 8 * PAGE + 100, "d2's size")
        want = b"\xee" * (5 * PAGE) + pattern(S, 3)[PAGE:]
        eq(os.pread(d2, 9 * PAGE, 0), want, "d2's contents")

        # Overlapping ranges of one file, through one descriptor or two.
        one = os.open(P("one"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(one, pattern(4 * PAGE, 5), 0)
        two = os.open(P("one"), os.O_RDWR)
        for f in (one, two):
            expect_errno(errno.EINVAL, ficlonerange, one, 0, 2 * PAGE, f, PAGE)
            expect_errno(errno.EINVAL, ficlonerange, one, PAGE, 0, f, 0)
            expect_errno(errno.EINVAL, ficlonerange, one, 0, PAGE, f, 0)
            expect_errno(errno.EINVAL, ficlone, f, one)
        eq(os.pread(one, 5 * PAGE, 0), pattern(4 * PAGE, 5), "one after refusals")
        ficlonerange(one, 0, PAGE, two, 3 * PAGE)
        eq(os.pread(one, PAGE, 3 * PAGE), pattern(PAGE, 5), "disjoint ranges of one file")
        # An overlap longer than one copy_file_range piece: refused before
        # the first piece moves (pieces of it do not overlap).
        big = os.open(P("big"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(big, 3 << 30)
        os.pwrite(big, b"A" * PAGE, 0)
        os.pwrite(big, b"B" * PAGE, 1 << 30)
        expect_errno(errno.EINVAL, ficlonerange, big, 0, 2 << 30, big, 1 << 30)
        eq(os.pread(big, PAGE, 1 << 30), b"B" * PAGE, "big at 1 GiB")
        eq(os.pread(big, PAGE, 2 << 30), b"\0" * PAGE, "big at 2 GiB")

        # RLIMIT_FSIZE: at the limit EFBIG; across it EINVAL, not a clone
        # cut short.
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        lim = os.open(P("limited"), os.O_RDWR | os.O_CREAT, 0o644)
        resource.setrlimit(resource.RLIMIT_FSIZE, (8 * PAGE, resource.RLIM_INFINITY))
        expect_errno(errno.EFBIG, ficlonerange, src, 0, PAGE, lim, 8 * PAGE)
        expect_errno(errno.EINVAL, ficlonerange, src, 0, 2 * PAGE, lim, 7 * PAGE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
        eq(size(lim), 0, "the limited destination")
        print("ok")
        "#,
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    // The clone ending at the source's EOF shares all four of its pages,
    // the partial last one too.
    assert_eq!(
        du(&m.p("dst")).2,
        4 * 4096,
        "the EOF clone shares its pages"
    );
    m.finish();
}

#[test]
fn open_modes_and_file_types_are_checked_first() {
    let m = Mount::new("clone-modes", "64M", "");
    let out = py_clone(
        m.path(),
        r#"
        write(P("src"), pattern(2 * PAGE, 1))
        write(P("empty"), b"")
        write(P("dst"), b"\xee" * PAGE)
        src = os.open(P("src"), os.O_RDONLY)
        empty = os.open(P("empty"), os.O_RDONLY)
        rw = os.open(P("dst"), os.O_RDWR)
        # The source at its EOF clones nothing; the descriptors are
        # checked all the same.
        ro = os.open(P("dst"), os.O_RDONLY)
        app = os.open(P("dst"), os.O_WRONLY | os.O_APPEND)
        path = os.open(P("dst"), os.O_PATH)
        for s in (src, empty):
            for d in (ro, app, path):
                expect_errno(errno.EBADF, ficlone, d, s)
                expect_errno(errno.EBADF, ficlonerange, s, 0, 0, d, 0)
            expect_errno(errno.EBADF, ficlonerange, s, 2 * PAGE, 0, ro, 0)
        for name in ("src", "empty"):
            wo = os.open(P(name), os.O_WRONLY)
            expect_errno(errno.EBADF, ficlone, rw, wo)
            spath = os.open(P(name), os.O_PATH)
            expect_errno(errno.EBADF, ficlone, rw, spath)
        expect_errno(errno.EBADF, ficlone, rw, 4000)
        # Directories: EISDIR; other non-regular files: EINVAL.
        d = os.open(M, os.O_RDONLY | os.O_DIRECTORY)
        os.mkfifo(P("fifo"))
        fifo = os.open(P("fifo"), os.O_RDWR)
        for s in (src, empty):
            expect_errno(errno.EISDIR, ficlone, d, s)
            expect_errno(errno.EINVAL, ficlone, fifo, s)
        expect_errno(errno.EISDIR, ficlone, rw, d)
        expect_errno(errno.EINVAL, ficlone, rw, fifo)
        eq(read(P("dst")), b"\xee" * PAGE, "the destination after refusals")
        # The same descriptors the right way round work.
        ficlone(rw, src)
        eq(read(P("dst")), pattern(2 * PAGE, 1), "the clone")
        print("ok")
        "#,
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    m.finish();
}

#[test]
fn cp_reflink_of_an_8_eib_sparse_file_costs_its_one_page() {
    let m = Mount::new("clone-8eib", "64M", "");
    let at = 1u64 << 62; // 4 EiB
    py(
        m.path(),
        &format!(
            r#"
            f = os.open(P("huge"), os.O_RDWR | os.O_CREAT, 0o644)
            os.ftruncate(f, {MAX_SIZE})
            os.pwrite(f, pattern(4096, 9), {at})
            eq(os.fstat(f).st_size, {MAX_SIZE}, "the source's size")
            "#
        ),
    );
    let mut cp = Command::new("cp");
    cp.env("LD_PRELOAD", preload_library())
        .arg("--reflink=always")
        .arg(m.p("huge"))
        .arg(m.p("copy"));
    let o = run_captured(cp, HANG);
    assert!(o.status.success(), "cp --reflink=always: {}", both(&o));
    // cmp skips to the page with lseek, so it reads one page of each.
    sh(&format!(
        "cmp -n 4096 -i {at} {} {}",
        m.p("huge").display(),
        m.p("copy").display()
    ));
    let out = py_clone(
        m.path(),
        &format!(
            r#"
            s = os.open(P("huge"), os.O_RDONLY)
            c = os.open(P("copy"), os.O_RDONLY)
            eq(os.fstat(c).st_size, {MAX_SIZE}, "the copy's size")
            eq(os.pread(c, 4096, {at}), os.pread(s, 4096, {at}), "the written page")
            eq(os.pread(c, 4096, {at}), pattern(4096, 9), "the written page")
            # Reads end at the largest offset: past it the kernel says EINVAL.
            for off in (0, 1 << 20, {at} - 4096, {at} + 4096, 1 << 62 | 1 << 61, {MAX_SIZE} - 100):
                n = min(4096, {MAX_SIZE} - off)
                eq(os.pread(c, n, off), b"\0" * n, f"the copy at {{off}}")
            eq(data_extents(c), [({at}, 4096)], "the copy's one extent")
            if not WRITEBACK:
                eq(os.lseek(c, 0, os.SEEK_DATA), {at}, "the copy's first data")
                eq(os.lseek(c, {at}, os.SEEK_HOLE), {at} + 4096, "the copy's first hole after it")
            print("ok")
            "#
        ),
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    assert_eq!(du(&m.p("huge")), (4096, 0, 4096), "the source's one page");
    assert_eq!(du(&m.p("copy")), (4096, 0, 4096), "the copy's one page");
    m.finish();
}

#[test]
fn source_holes_become_holes_over_destination_data() {
    let m = Mount::new("clone-holes", "128M", "");
    let out = py_clone(
        m.path(),
        r#"
        Z = b"\0" * PAGE
        # The source: 16 pages, data at pages 0 and 5, the rest holes.
        src = os.open(P("src"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(src, 16 * PAGE)
        os.pwrite(src, pattern(PAGE, 1), 0)
        os.pwrite(src, pattern(PAGE, 2), 5 * PAGE)
        want = bytearray(16 * PAGE)
        want[0:PAGE] = pattern(PAGE, 1)
        want[5 * PAGE : 6 * PAGE] = pattern(PAGE, 2)

        # A whole-file clone over 16 pages of data.
        a = os.open(P("a"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(a, b"\xee" * (16 * PAGE), 0)
        ficlone(a, src)
        eq(size(a), 16 * PAGE, "a's size")
        eq(os.pread(a, 17 * PAGE, 0), bytes(want), "a")

        # A range into the middle of 32 pages of data: only that range
        # changes.
        b = os.open(P("b"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(b, b"\xee" * (32 * PAGE), 0)
        ficlonerange(src, PAGE, 11 * PAGE, b, 8 * PAGE)
        wb = b"\xee" * (8 * PAGE) + bytes(want[PAGE : 12 * PAGE]) + b"\xee" * (13 * PAGE)
        eq(os.pread(b, 33 * PAGE, 0), wb, "b")

        # A clone to EOF over a shorter file: its data goes where the
        # source has holes, and it grows to the clone's end.
        c = os.open(P("c"), os.O_RDWR | os.O_CREAT, 0o644)
        os.pwrite(c, b"\xee" * (10 * PAGE), 0)
        ficlonerange(src, 0, 0, c, 0)
        eq(size(c), 16 * PAGE, "c's size")
        eq(os.pread(c, 17 * PAGE, 0), bytes(want), "c")

        # The same at 8 EiB: the destination's data far out in the
        # source's hole goes, in no more time than its pages take.
        MAX = 2**63 - 1
        hs = os.open(P("huge-src"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(hs, MAX)
        os.pwrite(hs, pattern(PAGE, 3), 3 * PAGE)
        hd = os.open(P("huge-dst"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(hd, MAX)
        far = (0, 1 << 40, 1 << 62, MAX // PAGE * PAGE - PAGE)
        for off in far:
            os.pwrite(hd, b"\xee" * PAGE, off)
        ficlonerange(hs, 0, 0, hd, 0)
        eq(size(hd), MAX, "huge-dst's size")
        eq(os.pread(hd, PAGE, 3 * PAGE), pattern(PAGE, 3), "huge-dst's one page")
        for off in far + (MAX - 100,):
            eq(os.pread(hd, 100, off), b"\0" * 100, f"huge-dst at {off}")
        eq(data_extents(hd), [(3 * PAGE, PAGE)], "huge-dst's one extent")
        if not WRITEBACK:
            eq(os.lseek(hd, 0, os.SEEK_DATA), 3 * PAGE, "huge-dst's first data")
            eq(os.lseek(hd, 3 * PAGE, os.SEEK_HOLE), 4 * PAGE, "huge-dst's hole after it")
            expect_errno(errno.ENXIO, os.lseek, hd, 4 * PAGE, os.SEEK_DATA)
        print("ok")
        "#,
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    // Holes cost nothing: each clone holds only the source's mapped pages.
    assert_eq!(du(&m.p("a")), (2 * 4096, 0, 2 * 4096), "a");
    assert_eq!(du(&m.p("c")), (2 * 4096, 0, 2 * 4096), "c");
    assert_eq!(du(&m.p("huge-dst")), (4096, 0, 4096), "huge-dst");
    let (total, _, shared) = du(&m.p("b"));
    assert_eq!(
        (total, shared),
        (21 * 4096 + 4096, 4096),
        "b: 20 pages of its own data left, one shared"
    );
    m.finish();
}

#[test]
fn fiemap_shows_extents_and_shared_pages_as_the_kernel_would() {
    let m = Mount::new("fiemap", "64M", "");
    let out = py_clone(
        m.path(),
        r#"
        # Data at pages 0..4 and 10..12, a hole between, size 16 pages.
        a = os.open(P("a"), os.O_RDWR | os.O_CREAT, 0o644)
        os.ftruncate(a, 16 * PAGE)
        os.pwrite(a, pattern(4 * PAGE, 1), 0)
        os.pwrite(a, pattern(2 * PAGE, 2), 10 * PAGE)
        b = os.open(P("b"), os.O_RDWR | os.O_CREAT, 0o644)
        ficlonerange(a, PAGE, 2 * PAGE, b, 0)
        def pages(fd):
            mapped, ext = fiemap(fd)
            eq(mapped, len(ext), "mapped extents")
            got = []
            for lo, ln, fl in ext:
                for p in range(lo // PAGE, (lo + ln) // PAGE):
                    got.append((p, bool(fl & FIEMAP_EXTENT_SHARED)))
            eq(bool(ext[-1][2] & FIEMAP_EXTENT_LAST), True, "the last extent")
            eq(sum(bool(fl & FIEMAP_EXTENT_LAST) for _, _, fl in ext), 1, "one last extent")
            return got
        eq(pages(a), [(0, False), (1, True), (2, True), (3, False), (10, False), (11, False)], "a")
        eq(pages(b), [(0, True), (1, True)], "b")
        # Counting only (no room): the kernel's fm_extent_count = 0.
        n, ext = fiemap(a, count=0)
        eq((n >= 3, ext), (True, []), "counted")
        # A range: only the extents that overlap it.
        eq([lo // PAGE for lo, _, _ in fiemap(a, 8 * PAGE, 8 * PAGE)[1]], [10], "from page 8")
        eq(fiemap(a, 4 * PAGE, 6 * PAGE)[1], [], "inside the hole")
        # Room for one: one extent, and the count stops there.
        n, ext = fiemap(a, count=1)
        eq((n, [lo for lo, _, _ in ext]), (1, [0]), "room for one")
        # As the kernel: a zero length is EINVAL, an unknown flag EBADR.
        expect_errno(errno.EINVAL, fiemap, a, 0, 0)
        expect_errno(errno.EBADR, fiemap, a, 0, 2**64 - 1, 4, 2)
        # FIEMAP_FLAG_SYNC is taken.
        eq(len(fiemap(a, flags=1)[1]) >= 3, True, "with FIEMAP_FLAG_SYNC")
        print("ok")
        "#,
        &[],
    );
    assert!(out.contains("ok"), "{out}");
    // filefrag, as a user runs it.
    let mut c = Command::new("filefrag");
    c.env("LD_PRELOAD", preload_library())
        .arg("-v")
        .arg(m.p("b"));
    let o = run_captured(c, HANG);
    assert!(o.status.success(), "filefrag -v: {}", both(&o));
    let text = stdout(&o);
    assert!(
        text.contains("shared") && text.contains("last") && text.contains("1 extent found"),
        "filefrag -v of a clone:\n{text}"
    );
    m.finish();
}
