# Prepended to every Python snippet the mount tests run (tests/util/mod.rs,
# `py`): argv[1] is the mount point; helpers for the syscalls Python's os
# module does not wrap (renameat2, fallocate) and for expected failures.
import ctypes
import errno
import hashlib
import json
import mmap
import os
import stat
import sys
import time
import traceback

M = sys.argv[1]
# Mounted with the kernel's writeback cache (PMEMFS_TEST_MOUNT_OPTS): the
# kernel answers SEEK_DATA/SEEK_HOLE itself then, all data up to EOF.
WRITEBACK = "writeback_cache" in os.environ.get("PMEMFS_TEST_MOUNT_OPTS", "")
ARGS = sys.argv[2:]
libc = ctypes.CDLL(None, use_errno=True)
AT_FDCWD = -100
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2
FALLOC_FL_KEEP_SIZE = 0x1
FALLOC_FL_PUNCH_HOLE = 0x2
FALLOC_FL_COLLAPSE_RANGE = 0x8
FALLOC_FL_ZERO_RANGE = 0x10


def P(*parts):
    """A path inside the mount."""
    return os.path.join(M, *parts)


def _check(r, what):
    if r != 0:
        e = ctypes.get_errno()
        raise OSError(e, os.strerror(e), what)


def renameat2(old, new, flags):
    f = libc.renameat2
    f.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    _check(f(AT_FDCWD, os.fsencode(old), AT_FDCWD, os.fsencode(new), flags), old)


def fallocate(fd, mode, off, length):
    f = libc.fallocate
    f.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]
    _check(f(fd, mode, off, length), "fallocate")


def errname(e):
    return errno.errorcode.get(e, str(e))


def expect_errno(codes, fn, *args, **kw):
    """Runs fn and asserts it fails with one of `codes` (an errno or a
    tuple); returns the errno it failed with."""
    if isinstance(codes, int):
        codes = (codes,)
    want = "/".join(errname(c) for c in codes)
    try:
        fn(*args, **kw)
    except OSError as e:
        assert e.errno in codes, f"{fn.__name__}{args}: expected {want}, got {errname(e.errno)} ({e})"
        return e.errno
    raise AssertionError(f"{fn.__name__}{args} succeeded; expected {want}")


def pattern(n, seed=0):
    """n bytes of a pattern that differs at every offset modulo 251."""
    unit = bytes((i * 7 + seed) % 251 for i in range(251))
    return (unit * (n // 251 + 1))[:n]


def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while True:
            b = f.read(1 << 20)
            if not b:
                return h.hexdigest()
            h.update(b)


def read(path):
    with open(path, "rb") as f:
        return f.read()


def write(path, data, mode=0o644):
    fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_TRUNC, mode)
    try:
        assert os.write(fd, data) == len(data)
    finally:
        os.close(fd)


def eq(got, want, what):
    assert got == want, f"{what}: got {got!r}, want {want!r}"


def as_user(uid, gid, fn, groups=()):
    """Runs fn() in a child process that has dropped to uid/gid (with the
    supplementary `groups`); re-raises its failure, with the child's
    traceback, here."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            os.setgroups(list(groups))
            os.setgid(gid)
            os.setuid(uid)
            assert os.geteuid() == uid
            fn()
            os.write(w, b"ok")
        except BaseException:
            os.write(w, traceback.format_exc().encode())
        os._exit(0)
    os.close(w)
    msg = b""
    while True:
        b = os.read(r, 65536)
        if not b:
            break
        msg += b
    os.close(r)
    os.waitpid(pid, 0)
    assert msg == b"ok", f"as uid {uid}:\n" + msg.decode()
