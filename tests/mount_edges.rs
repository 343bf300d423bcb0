//! POSIX at the edges (issue 11), through a mount: access times under
//! relatime, strictatime and noatime; open directories that outlive a
//! rename over them; readdir after rewinddir; lseek's ENXIO cases; file
//! handles across cache drops and remounts; chattr +i, +a, +A; rename with
//! RENAME_WHITEOUT.

mod util;

use util::*;

const SIZE: &str = "128M";

/// Reads a file after making its atime old, and returns whether the read
/// moved the atime forward.
const READ_MOVES_ATIME: &str = r#"
write(P("f"), b"data")
old = 1_000_000_000
os.utime(P("f"), (old, old))
time.sleep(0.05)
with open(P("f"), "rb") as f:
    f.read()
a1 = os.stat(P("f")).st_atime
# A second read right away: relatime leaves atime (it is after mtime and
# ctime now); strictatime moves it again.
time.sleep(0.05)
with open(P("f"), "rb") as f:
    f.read()
a2 = os.stat(P("f")).st_atime
print(int(a1 > old), int(a2 > a1))
"#;

#[test]
fn atime_follows_relatime_strictatime_and_noatime() {
    let mut m = Mount::new("atime", SIZE, "");
    assert_eq!(py(m.path(), READ_MOVES_ATIME).trim(), "1 0", "relatime");
    // It survives a remount: the update was written before the final
    // checkpoint.
    let before = py(m.path(), r#"print(os.stat(P("f")).st_atime)"#);
    m.remount();
    assert_eq!(py(m.path(), r#"print(os.stat(P("f")).st_atime)"#), before);
    m.remount_with("strictatime");
    assert_eq!(py(m.path(), READ_MOVES_ATIME).trim(), "1 1", "strictatime");
    m.remount_with("noatime");
    assert_eq!(py(m.path(), READ_MOVES_ATIME).trim(), "0 0", "noatime");
    // nodiratime: a listing leaves a directory's atime; without it,
    // relatime moves it.
    m.remount_with("nodiratime");
    let dir_read = r#"
        os.makedirs(P("d"), exist_ok=True)
        old = 1_000_000_000
        os.utime(P("d"), (old, old))
        os.listdir(P("d"))
        print(int(os.stat(P("d")).st_atime > old))
        "#;
    assert_eq!(py(m.path(), dir_read).trim(), "0", "nodiratime");
    m.remount_with("");
    assert_eq!(
        py(m.path(), dir_read).trim(),
        "1",
        "relatime on a directory"
    );
    // chattr +A keeps a file's atime even under strictatime.
    m.remount_with("strictatime,lazytime,sync,dirsync");
    sh(&format!("chattr +A '{}'", m.p("f").display()));
    assert_eq!(py(m.path(), READ_MOVES_ATIME).trim(), "0 0", "chattr +A");
    m.finish();
}

#[test]
fn open_directories_outlive_renames_and_rewind_sees_new_names() {
    let m = Mount::new("dirs", SIZE, "");
    py(
        m.path(),
        r#"
        os.mkdir(P("old"))
        os.mkdir(P("new"))
        fd = os.open(P("old"), os.O_RDONLY | os.O_DIRECTORY)
        ino = os.fstat(fd).st_ino
        os.rename(P("new"), P("old"))     # replaces the empty, open "old"
        st = os.fstat(fd)                 # ENOENT before
        eq(st.st_ino, ino, "fstat of the replaced directory")
        eq(st.st_nlink, 0, "it has no names left")
        expect_errno(errno.ENOENT, os.open, f"/proc/self/fd/{fd}/x", os.O_CREAT | os.O_WRONLY)
        os.close(fd)
        # rmdir of an open directory: the same.
        os.mkdir(P("gone"))
        fd = os.open(P("gone"), os.O_RDONLY | os.O_DIRECTORY)
        os.rmdir(P("gone"))
        eq(os.fstat(fd).st_nlink, 0, "fstat after rmdir")
        os.close(fd)

        "#,
    );
    // rewinddir is lseek(fd, 0) on the directory; Python's scandir is one
    // opendir..closedir, so getdents64 is driven by hand.
    py(
        m.path(),
        r#"
        os.mkdir(P("r"))
        for i in range(5):
            write(P("r", f"a{i}"), b"")
        fd = os.open(P("r"), os.O_RDONLY | os.O_DIRECTORY)
        def names():
            os.lseek(fd, 0, os.SEEK_SET)
            buf = ctypes.create_string_buffer(1 << 16)
            out = []
            while True:
                n = libc.syscall(217, fd, buf, len(buf))   # getdents64
                if n <= 0:
                    break
                off = 0
                while off < n:
                    reclen = int.from_bytes(buf.raw[off + 16:off + 18], "little")
                    name = buf.raw[off + 19:off + reclen].split(b"\0")[0]
                    out.append(name.decode())
                    off += reclen
            return sorted(x for x in out if x not in (".", ".."))
        eq(names(), [f"a{i}" for i in range(5)], "first listing")
        write(P("r", "late"), b"")
        os.unlink(P("r", "a0"))
        eq(names(), [f"a{i}" for i in range(1, 5)] + ["late"], "after rewind")
        os.close(fd)
        "#,
    );
    m.finish();
}

#[test]
fn lseek_data_and_hole_give_enxio_like_linux() {
    let m = Mount::new("lseek", SIZE, "");
    py(
        m.path(),
        r#"
        write(P("f"), b"x" * 10000)
        fd = os.open(P("f"), os.O_RDONLY)
        lseek = libc.lseek
        lseek.restype = ctypes.c_int64
        lseek.argtypes = [ctypes.c_int, ctypes.c_int64, ctypes.c_int]
        for whence in (os.SEEK_DATA, os.SEEK_HOLE):
            for off in (-1, -4096, 10000, 10001, 1 << 40):
                r = lseek(fd, off, whence)
                eq((r, ctypes.get_errno()), (-1, errno.ENXIO), f"lseek({off}, {whence})")
        eq(lseek(fd, 0, os.SEEK_DATA), 0, "data at 0")
        eq(lseek(fd, 0, os.SEEK_HOLE), 10000, "the hole at EOF")
        os.close(fd)
        "#,
    );
    m.finish();
}

const HANDLES: &str = r#"
class FileHandle(ctypes.Structure):
    _fields_ = [("handle_bytes", ctypes.c_uint), ("handle_type", ctypes.c_int),
                ("f_handle", ctypes.c_ubyte * 128)]

def handle_of(path):
    fh = FileHandle()
    fh.handle_bytes = 128
    mnt_id = ctypes.c_int()
    r = libc.name_to_handle_at(AT_FDCWD, os.fsencode(path), ctypes.byref(fh), ctypes.byref(mnt_id), 0)
    _check(r, "name_to_handle_at")
    return bytes(fh)

def open_handle(raw):
    fh = FileHandle.from_buffer_copy(raw)
    mfd = os.open(M, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fd = libc.open_by_handle_at(mfd, ctypes.byref(fh), os.O_RDONLY)
        _check(0 if fd >= 0 else -1, "open_by_handle_at")
        return fd
    finally:
        os.close(mfd)
"#;

#[test]
fn file_handles_survive_cache_drops_and_remounts() {
    let mut m = Mount::new("handles", SIZE, "");
    let made = py(
        m.path(),
        &format!(
            "{HANDLES}\n{}",
            r#"
os.mkdir(P("d"))
write(P("d/f"), b"handle me")
print(handle_of(P("d/f")).hex(), handle_of(P("d")).hex())
"#
        ),
    );
    let handles: Vec<String> = made.split_whitespace().map(String::from).collect();
    let reopen = format!(
        "{HANDLES}\n{}",
        r#"
fd = open_handle(bytes.fromhex(ARGS[0]))
eq(os.read(fd, 100), b"handle me", "the file by its handle")
os.close(fd)
fd = open_handle(bytes.fromhex(ARGS[1]))
eq(sorted(os.listdir(fd)), ["f"], "the directory by its handle")
os.close(fd)
"#
    );
    let args: Vec<&str> = handles.iter().map(String::as_str).collect();
    sh("sync; echo 3 > /proc/sys/vm/drop_caches");
    py_args(m.path(), &reopen, &args);
    m.remount();
    py_args(m.path(), &reopen, &args);
    m.finish();
}

#[test]
fn chattr_immutable_and_append_only_bind_even_root() {
    let m = Mount::new("chattr", SIZE, "");
    let f = m.p("f").display().to_string();
    let a = m.p("a").display().to_string();
    sh(&format!(
        "echo one > '{f}' && echo one > '{a}' && chattr +i '{f}' && chattr +a '{a}'"
    ));
    let attrs = sh(&format!("lsattr '{f}' '{a}'"));
    assert!(
        attrs
            .lines()
            .any(|l| l.starts_with("----i") && l.ends_with("/f")),
        "{attrs}"
    );
    assert!(
        attrs
            .lines()
            .any(|l| l.starts_with("-----a") && l.ends_with("/a")),
        "{attrs}"
    );
    py(
        m.path(),
        r#"
        # Immutable: no write, truncate, chmod, xattr, rename, link, unlink.
        expect_errno(errno.EPERM, open, P("f"), "ab")
        expect_errno(errno.EPERM, open, P("f"), "wb")
        expect_errno(errno.EPERM, os.truncate, P("f"), 0)
        expect_errno(errno.EPERM, os.chmod, P("f"), 0o600)
        expect_errno(errno.EPERM, os.utime, P("f"), None)
        expect_errno(errno.EPERM, os.setxattr, P("f"), "user.x", b"1")
        expect_errno(errno.EPERM, os.rename, P("f"), P("g"))
        expect_errno(errno.EPERM, os.link, P("f"), P("g"))
        expect_errno(errno.EPERM, os.unlink, P("f"))
        write(P("other"), b"x")
        expect_errno(errno.EPERM, os.rename, P("other"), P("f"))
        eq(read(P("f")), b"one\n", "reading is fine")
        # Append-only: appends, nothing else.
        with open(P("a"), "ab") as fa:
            fa.write(b"two\n")
        expect_errno(errno.EPERM, open, P("a"), "wb")
        expect_errno(errno.EPERM, open, P("a"), "r+b")
        expect_errno(errno.EPERM, os.truncate, P("a"), 0)
        expect_errno(errno.EPERM, os.unlink, P("a"))
        expect_errno(errno.EPERM, os.rename, P("a"), P("b"))
        eq(read(P("a")), b"one\ntwo\n", "the append landed")
        "#,
    );
    // Only root may set or clear them; once cleared, all is allowed again.
    sh(&format!(
        "chmod 666 '{f}' 2>/dev/null || true; chmod 755 '{}' '{}'",
        m.dir().display(),
        m.path().display()
    ));
    let o = sh_output(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups chattr -i '{f}'"
    ));
    assert!(!o.status.success(), "nobody cleared +i: {}", both(&o));
    sh(&format!(
        "chattr -i '{f}' && chattr -a '{a}' && echo two >> '{f}' && rm '{f}' && : > '{a}'"
    ));
    // A directory with +i takes no new names; +a takes new ones but loses none.
    sh(&format!(
        "mkdir '{0}/di' '{0}/da' && touch '{0}/da/x' && chattr +i '{0}/di' && chattr +a '{0}/da'",
        m.path().display()
    ));
    py(
        m.path(),
        r#"
        expect_errno(errno.EPERM, write, P("di/new"), b"")
        write(P("da/new"), b"")
        expect_errno(errno.EPERM, os.unlink, P("da/x"))
        "#,
    );
    sh(&format!(
        "chattr -i '{0}/di' && chattr -a '{0}/da'",
        m.path().display()
    ));
    m.finish();
}

#[test]
fn rename_whiteout_leaves_a_whiteout() {
    let m = Mount::new("whiteout", SIZE, "");
    py(
        m.path(),
        r#"
        RENAME_WHITEOUT = 4
        write(P("upper"), b"moved")
        renameat2(P("upper"), P("moved"), RENAME_WHITEOUT)
        eq(read(P("moved")), b"moved", "the file moved")
        st = os.lstat(P("upper"))
        assert stat.S_ISCHR(st.st_mode), oct(st.st_mode)
        eq((os.major(st.st_rdev), os.minor(st.st_rdev), stat.S_IMODE(st.st_mode)), (0, 0, 0), "a whiteout")
        expect_errno(errno.EINVAL, renameat2, P("moved"), P("upper"), RENAME_WHITEOUT | RENAME_EXCHANGE)
        "#,
    );
    m.finish();
}
