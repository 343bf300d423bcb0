//! POSIX behaviour through a real FUSE mount: each test makes an image,
//! mounts it with `pmemfs-mount`, drives it with the ordinary tools (cp, mv,
//! ln, dd, truncate, df, stat) and Python's os module, and ends by
//! unmounting, waiting for the daemon to exit and checking the image with
//! `fsck.pmemfs -n` (util::Mount).

mod util;

use std::path::Path;

use util::*;

const SIZE: &str = "256M";

/// `stat -c FORMAT PATH`, trimmed.
fn stat(format: &str, path: &Path) -> String {
    sh(&format!("stat -c '{format}' '{}'", path.display()))
        .trim()
        .to_string()
}

fn sha256sum(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn files_write_read_append_overwrite() {
    let mut m = Mount::new("files", SIZE, "");
    let refs = m.dir().join("refs");
    std::fs::create_dir(&refs).unwrap();
    let sizes = [0u64, 1, 4095, 4096, 4097, (1 << 20) + 3];
    // Reference files outside the mount, each a known pattern.
    py_args(
        m.path(),
        r#"
        for n in ARGS[1:]:
            write(os.path.join(ARGS[0], n), pattern(int(n), seed=int(n) % 13))
        "#,
        &[
            refs.to_str().unwrap(),
            "0",
            "1",
            "4095",
            "4096",
            "4097",
            "1048579",
        ],
    );
    let mut sums = Vec::new();
    for n in sizes {
        let (r, f, back) = (
            refs.join(n.to_string()),
            m.p(&format!("f{n}")),
            refs.join(format!("back{n}")),
        );
        // Written in 4 KiB blocks (a partial last one), read back in
        // 1000-byte blocks that straddle pages.
        sh(&format!(
            "dd if='{r}' of='{f}' bs=4096 status=none && dd if='{f}' of='{b}' bs=1000 status=none && cmp '{r}' '{b}'",
            r = r.display(),
            f = f.display(),
            b = back.display()
        ));
        assert_eq!(stat("%s", &f), n.to_string(), "size of f{n}");
        assert_eq!(sha256sum(&f), sha256sum(&r), "sha256 of f{n}");
        // cp gives the same bytes again.
        let c = m.p(&format!("c{n}"));
        sh(&format!("cp '{}' '{}'", f.display(), c.display()));
        assert_eq!(sha256sum(&c), sha256sum(&r), "sha256 of the cp of f{n}");
        sums.push((f, sha256sum(&r)));
    }
    // Append (twice: through the shell and through dd oflag=append).
    let big = refs.join("1048579");
    let a = m.p("appended");
    sh(&format!(
        "cp '{r}' '{a}' && cat '{r}' >> '{a}' && dd if='{s}' of='{a}' oflag=append conv=notrunc status=none",
        r = big.display(),
        a = a.display(),
        s = refs.join("4097").display()
    ));
    py_args(
        m.path(),
        r#"
        big, small = read(os.path.join(ARGS[0], "1048579")), read(os.path.join(ARGS[0], "4097"))
        got = read(P("appended"))
        eq(len(got), 2 * len(big) + len(small), "appended size")
        assert got == big + big + small, "appended content differs"
        "#,
        &[refs.to_str().unwrap()],
    );
    // Overwrite in the middle, across a page boundary, without truncating.
    sh(&format!(
        "printf 'XYZW' | dd of='{f}' bs=1 seek=4094 conv=notrunc status=none && printf 'Q' | dd of='{f}' bs=1 seek=700000 conv=notrunc status=none",
        f = m.p("f1048579").display()
    ));
    let expect = py_args(
        m.path(),
        r#"
        want = bytearray(pattern(1048579, seed=1048579 % 13))
        want[4094:4098] = b"XYZW"
        want[700000] = ord("Q")
        got = read(P("f1048579"))
        eq(len(got), len(want), "size after overwrite")
        assert got == want, "overwritten content differs at %d" % next(i for i in range(len(got)) if got[i] != want[i])
        print(hashlib.sha256(want).hexdigest())
        "#,
        &[],
    );
    sums.pop();
    sums.push((m.p("f1048579"), expect.trim().to_string()));
    // Everything reached the media, not only the kernel's page cache.
    m.remount();
    for (f, sum) in &sums {
        assert_eq!(&sha256sum(f), sum, "{} after remount", f.display());
    }
    m.finish();
}

#[test]
fn directories_nested_listing_and_large() {
    let m = Mount::new("dirs", SIZE, "");
    let d = m.path().display().to_string();
    sh(&format!(
        "mkdir -p '{d}/a/b/c/d' && touch '{d}/a/b/x' '{d}/a/b/y' && mkdir '{d}/a/b/z'"
    ));
    assert_eq!(stat("%F", &m.p("a/b/c/d")), "directory");
    // Link counts: a directory has 2 + one per subdirectory.
    assert_eq!(stat("%h", &m.p("a")), "3");
    assert_eq!(stat("%h", &m.p("a/b")), "4", "b holds c and z");
    assert_eq!(stat("%h", &m.p("a/b/c/d")), "2");
    assert_eq!(
        sh(&format!("ls -a '{d}/a/b'"))
            .split_whitespace()
            .collect::<Vec<_>>(),
        [".", "..", "c", "x", "y", "z"]
    );
    let o = sh_output(&format!("rmdir '{d}/a'"));
    assert!(
        !o.status.success(),
        "rmdir of a non-empty directory succeeded"
    );
    py(
        m.path(),
        r#"
        expect_errno(errno.ENOTEMPTY, os.rmdir, P("a"))
        expect_errno(errno.ENOTEMPTY, os.rmdir, P("a/b/c"))
        expect_errno(errno.ENOTDIR, os.rmdir, P("a/b/x"))
        expect_errno(errno.EISDIR, os.unlink, P("a/b/z"))
        expect_errno(errno.EEXIST, os.mkdir, P("a/b/x"))
        expect_errno(errno.ENOENT, os.mkdir, P("nowhere/x"))
        os.rmdir(P("a/b/c/d"))
        eq(os.stat(P("a/b/c")).st_nlink, 2, "nlink of c after rmdir d")
        eq(os.listdir(P("a/b/c")), [], "c is empty")
        # .. of a nested directory is its parent.
        eq(os.stat(P("a/b/c/..")).st_ino, os.stat(P("a/b")).st_ino, "c/.. is b")

        # 1000 entries, files and directories, each listed exactly once.
        os.mkdir(P("big"))
        names = ["e%04d" % i for i in range(1000)]
        for i, n in enumerate(names):
            if i % 10 == 0:
                os.mkdir(P("big", n))
            else:
                write(P("big", n), n.encode())
        listed = os.listdir(P("big"))
        eq(len(listed), 1000, "entries listed")
        eq(sorted(listed), names, "names listed")
        kinds = {e.name: e.is_dir() for e in os.scandir(P("big"))}
        eq(sum(kinds.values()), 100, "directories seen by scandir")
        eq(os.stat(P("big")).st_nlink, 102, "nlink of big")
        # Deleting while listing: every name that stays is listed once.
        for n in names[::2]:
            (os.rmdir if int(n[1:]) % 10 == 0 else os.unlink)(P("big", n))
        listed = os.listdir(P("big"))
        eq(sorted(listed), names[1::2], "names left after deleting half")
        "#,
    );
    // Raw readdir order through ls -f (., .. and every name once).
    let raw = sh(&format!("ls -f '{d}/big'"));
    let mut lines: Vec<&str> = raw.lines().collect();
    assert_eq!(lines.len(), 502, "ls -f lines");
    lines.sort();
    lines.dedup();
    assert_eq!(lines.len(), 502, "ls -f repeats a name");
    assert_eq!(sh(&format!("ls '{d}/big' | wc -l")).trim(), "500");
    m.finish();
}

#[test]
fn hard_links_symlinks_and_open_unlinked_files() {
    let m = Mount::new("links", SIZE, "");
    let d = m.path().display().to_string();
    sh(&format!(
        "printf 'hello links' > '{d}/f' && ln '{d}/f' '{d}/g' && mkdir '{d}/sub' && ln '{d}/f' '{d}/sub/h'"
    ));
    assert_eq!(stat("%h", &m.p("f")), "3");
    assert_eq!(stat("%i", &m.p("f")), stat("%i", &m.p("sub/h")));
    sh(&format!("rm '{d}/f'"));
    assert_eq!(stat("%h", &m.p("g")), "2");
    assert_eq!(std::fs::read(m.p("g")).unwrap(), b"hello links");
    sh(&format!("rm '{d}/g'"));
    assert_eq!(stat("%h", &m.p("sub/h")), "1");
    assert_eq!(std::fs::read(m.p("sub/h")).unwrap(), b"hello links");
    // Symbolic links: relative, absolute, dangling.
    sh(&format!(
        "ln -s sub/h '{d}/rel' && ln -s '{d}/sub/h' '{d}/abs' && ln -s does/not/exist '{d}/dangling'"
    ));
    assert_eq!(sh(&format!("readlink '{d}/rel'")).trim(), "sub/h");
    assert_eq!(
        sh(&format!("cat '{d}/rel' '{d}/abs'")),
        "hello linkshello links"
    );
    assert_eq!(stat("%F", &m.p("dangling")), "symbolic link");
    assert_eq!(
        stat("%s", &m.p("dangling")),
        "14",
        "a symlink's size is its target's length"
    );
    py(
        m.path(),
        r#"
        eq(os.readlink(P("dangling")), "does/not/exist", "dangling target")
        expect_errno(errno.ENOENT, os.stat, P("dangling"))
        assert stat.S_ISLNK(os.lstat(P("dangling")).st_mode)
        expect_errno(errno.EEXIST, os.symlink, "x", P("rel"))
        expect_errno(errno.EEXIST, os.link, P("sub/h"), P("abs"))
        expect_errno(errno.EPERM, os.link, P("sub"), P("sub2"))
        expect_errno(errno.EINVAL, os.readlink, P("sub/h"))
        long = "t" * 4000
        os.symlink(long, P("long"))
        eq(os.readlink(P("long")), long, "a 4000-byte target")

        # An unlinked file stays readable and writable until closed, and its
        # space comes back after the last close.
        data = pattern(1 << 20, 5)
        before = os.statvfs(M).f_bfree
        fd = os.open(P("doomed"), os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, data)
        os.fsync(fd)
        os.unlink(P("doomed"))
        expect_errno(errno.ENOENT, os.stat, P("doomed"))
        assert "doomed" not in os.listdir(M)
        eq(os.fstat(fd).st_nlink, 0, "nlink of the open unlinked file")
        eq(os.pread(fd, len(data), 0), data, "data of the open unlinked file")
        os.pwrite(fd, b"more", len(data))
        eq(os.pread(fd, 10, len(data) - 6), data[-6:] + b"more", "written after unlink")
        os.fsync(fd)
        held = os.statvfs(M).f_bfree
        assert before - held >= 256, f"the open unlinked file holds its pages: {before} -> {held}"
        fd2 = os.open(P("sub/h"), os.O_RDONLY)  # another file open meanwhile
        os.close(fd)
        deadline = time.time() + 5
        while os.statvfs(M).f_bfree < before - 2 and time.time() < deadline:
            time.sleep(0.05)
        after = os.statvfs(M).f_bfree
        assert after >= before - 2, f"pages of the closed unlinked file came back: {before} -> {held} -> {after}"
        os.close(fd2)
        "#,
    );
    m.finish();
}

#[test]
fn rename_plain_replace_dirs_and_flags() {
    let m = Mount::new("rename", SIZE, "");
    let d = m.path().display().to_string();
    sh(&format!(
        "printf A > '{d}/a' && mv '{d}/a' '{d}/b' && test ! -e '{d}/a' && test \"$(cat '{d}/b')\" = A"
    ));
    // Over an existing file that has a second name.
    sh(&format!(
        "printf X > '{d}/x' && printf Y > '{d}/y' && ln '{d}/y' '{d}/y2' && mv '{d}/x' '{d}/y'"
    ));
    assert!(!m.p("x").exists());
    assert_eq!(std::fs::read(m.p("y")).unwrap(), b"X");
    assert_eq!(std::fs::read(m.p("y2")).unwrap(), b"Y");
    assert_eq!(stat("%h", &m.p("y2")), "1");
    // A directory across parents.
    sh(&format!(
        "mkdir -p '{d}/p1/dir/sub' '{d}/p2' && printf in > '{d}/p1/dir/file' && mv '{d}/p1/dir' '{d}/p2/'"
    ));
    assert_eq!(std::fs::read(m.p("p2/dir/file")).unwrap(), b"in");
    assert_eq!(stat("%h", &m.p("p1")), "2", "p1 lost a subdirectory");
    assert_eq!(stat("%h", &m.p("p2")), "3", "p2 gained one");
    assert_eq!(stat("%i", &m.p("p2/dir/..")), stat("%i", &m.p("p2")));
    let o = sh_output(&format!("mv '{d}/p2' '{d}/p2/dir/sub/'"));
    assert!(
        !o.status.success(),
        "mv into its own subdirectory succeeded"
    );
    py(
        m.path(),
        r#"
        expect_errno(errno.EINVAL, os.rename, P("p2"), P("p2/dir/sub/p2"))
        expect_errno(errno.EINVAL, os.rename, P("p2/dir"), P("p2/dir/x"))
        os.mkdir(P("full")); write(P("full/f"), b"f"); os.mkdir(P("empty"))
        expect_errno((errno.ENOTEMPTY, errno.EEXIST), os.rename, P("empty"), P("full"))
        expect_errno(errno.EISDIR, os.rename, P("b"), P("empty"))
        expect_errno(errno.ENOTDIR, os.rename, P("empty"), P("b"))
        expect_errno(errno.ENOENT, os.rename, P("missing"), P("b2"))
        # A directory over an empty one.
        os.mkdir(P("d2")); write(P("d2/k"), b"k")
        os.rename(P("d2"), P("empty"))
        eq(read(P("empty/k")), b"k", "moved over an empty directory")
        assert not os.path.exists(P("d2"))
        # Renaming a name onto another name of the same file does nothing.
        os.rename(P("y2"), P("y2"))

        # RENAME_NOREPLACE
        write(P("n1"), b"one"); write(P("n2"), b"two")
        expect_errno(errno.EEXIST, renameat2, P("n1"), P("n2"), RENAME_NOREPLACE)
        eq((read(P("n1")), read(P("n2"))), (b"one", b"two"), "NOREPLACE left both alone")
        renameat2(P("n1"), P("n3"), RENAME_NOREPLACE)
        assert not os.path.exists(P("n1"))
        eq(read(P("n3")), b"one", "NOREPLACE to a free name")

        # RENAME_EXCHANGE: two files, then a file and a directory in
        # different parents.
        renameat2(P("n2"), P("n3"), RENAME_EXCHANGE)
        eq((read(P("n2")), read(P("n3"))), (b"one", b"two"), "EXCHANGE swapped")
        expect_errno(errno.ENOENT, renameat2, P("n2"), P("nothing"), RENAME_EXCHANGE)
        expect_errno(errno.EINVAL, renameat2, P("n2"), P("n3"), RENAME_EXCHANGE | RENAME_NOREPLACE)
        os.mkdir(P("q1")); os.mkdir(P("q2")); os.mkdir(P("q1/dir")); write(P("q1/dir/in"), b"i")
        write(P("q2/file"), b"file")
        renameat2(P("q1/dir"), P("q2/file"), RENAME_EXCHANGE)
        eq(read(P("q1/dir")), b"file", "the file moved to q1")
        eq(read(P("q2/file/in")), b"i", "the directory moved to q2")
        eq(os.stat(P("q1")).st_nlink, 2, "q1 lost a subdirectory")
        eq(os.stat(P("q2")).st_nlink, 3, "q2 gained one")
        eq(os.stat(P("q2/file/..")).st_ino, os.stat(P("q2")).st_ino, "the directory's .. follows it")
        "#,
    );
    m.finish();
}

#[test]
fn xattrs_set_get_list_remove_and_flags() {
    let mut m = Mount::new("xattr", SIZE, "");
    py(
        m.path(),
        r#"
        f = P("f"); write(f, b"x")
        os.mkdir(P("d"))
        eq(os.listxattr(f), [], "no xattrs at first")
        os.setxattr(f, "user.a", b"alpha")
        os.setxattr(f, "user.empty", b"")
        os.setxattr(P("d"), "user.on_dir", b"dir")
        eq(os.getxattr(f, "user.a"), b"alpha", "user.a")
        eq(os.getxattr(f, "user.empty"), b"", "an empty value")
        eq(sorted(os.listxattr(f)), ["user.a", "user.empty"], "listxattr")
        eq(os.getxattr(P("d"), "user.on_dir"), b"dir", "xattr of a directory")
        expect_errno(errno.EEXIST, os.setxattr, f, "user.a", b"again", os.XATTR_CREATE)
        eq(os.getxattr(f, "user.a"), b"alpha", "XATTR_CREATE left the value")
        expect_errno(errno.ENODATA, os.setxattr, f, "user.nope", b"v", os.XATTR_REPLACE)
        os.setxattr(f, "user.a", b"beta", os.XATTR_REPLACE)
        eq(os.getxattr(f, "user.a"), b"beta", "replaced")
        os.setxattr(f, "user.new", b"n", os.XATTR_CREATE)
        expect_errno(errno.ENODATA, os.getxattr, f, "user.missing")
        big = pattern(65536, 3)
        os.setxattr(f, "user.big", big)
        eq(os.getxattr(f, "user.big"), big, "a 64 KiB value")
        os.removexattr(f, "user.a")
        expect_errno(errno.ENODATA, os.getxattr, f, "user.a")
        expect_errno(errno.ENODATA, os.removexattr, f, "user.a")
        eq(sorted(os.listxattr(f)), ["user.big", "user.empty", "user.new"], "after remove")
        # A buffer too small for the value is ERANGE.
        buf = ctypes.create_string_buffer(4)
        r = libc.getxattr(os.fsencode(f), b"user.big", buf, ctypes.c_size_t(4))
        eq((r, ctypes.get_errno()), (-1, errno.ERANGE), "getxattr into a small buffer")
        "#,
    );
    m.remount();
    py(
        m.path(),
        r#"
        f = P("f")
        eq(sorted(os.listxattr(f)), ["user.big", "user.empty", "user.new"], "after remount")
        eq(os.getxattr(f, "user.big"), pattern(65536, 3), "64 KiB value after remount")
        eq(os.getxattr(P("d"), "user.on_dir"), b"dir", "directory xattr after remount")
        "#,
    );
    m.finish();
}

#[test]
fn truncate_shrink_and_grow() {
    let mut m = Mount::new("truncate", SIZE, "");
    let f = m.p("f").display().to_string();
    py(m.path(), r#"write(P("f"), pattern(10000, 1))"#);
    sh(&format!("truncate -s 5000 '{f}'"));
    assert_eq!(stat("%s", &m.p("f")), "5000");
    sh(&format!("truncate -s 20000 '{f}'"));
    assert_eq!(stat("%s", &m.p("f")), "20000");
    let check = r#"
        got = read(P("f"))
        eq(len(got), 20000, "size")
        assert got[:5000] == pattern(10000, 1)[:5000], "bytes below the shrunk size kept"
        bad = [i for i in range(5000, 20000) if got[i] != 0]
        assert not bad, f"bytes past the shrunk size read {len(bad)} non-zero, first at {bad[:1]}"
        "#;
    py(m.path(), check);
    // Shrinking to a page boundary and to zero; ftruncate on an open file
    // with writes not yet flushed.
    py(
        m.path(),
        r#"
        write(P("g"), pattern(3 * 4096 + 17, 2))
        os.truncate(P("g"), 4096)
        os.truncate(P("g"), 3 * 4096 + 17)
        got = read(P("g"))
        assert got[:4096] == pattern(4096, 2) and got[4096:] == bytes(2 * 4096 + 17), "page-boundary shrink then grow"
        os.truncate(P("g"), 0)
        eq(os.stat(P("g")).st_size, 0, "size 0")
        os.truncate(P("g"), 100)
        eq(read(P("g")), bytes(100), "grown from 0")
        fd = os.open(P("h"), os.O_CREAT | os.O_RDWR, 0o644)
        os.write(fd, pattern(8192, 4))
        os.ftruncate(fd, 100)
        os.ftruncate(fd, 8192)
        eq(os.pread(fd, 8192, 0), pattern(100, 4) + bytes(8092), "ftruncate down and up")
        os.close(fd)
        "#,
    );
    // Zeros reached the media: the same after remount.
    m.remount();
    py(m.path(), check);
    py(
        m.path(),
        r#"
        eq(read(P("g")), bytes(100), "g after remount")
        eq(read(P("h")), pattern(100, 4) + bytes(8092), "h after remount")
        "#,
    );
    m.finish();
}

#[test]
fn fallocate_modes() {
    let mut m = Mount::new("fallocate", SIZE, "");
    py(
        m.path(),
        r#"
        MiB = 1 << 20
        # Mode 0: the size grows, the range reads zeros, blocks are there.
        fd = os.open(P("a"), os.O_CREAT | os.O_RDWR, 0o644)
        fallocate(fd, 0, 0, MiB)
        st = os.fstat(fd)
        eq(st.st_size, MiB, "size after fallocate mode 0")
        assert st.st_blocks >= MiB // 512, f"st_blocks {st.st_blocks} after allocating 1 MiB"
        eq(os.pread(fd, MiB, 0), bytes(MiB), "allocated range reads zeros")
        os.close(fd)

        # KEEP_SIZE: the size stays, the blocks grow.
        write(P("b"), pattern(4096, 1))
        fd = os.open(P("b"), os.O_RDWR)
        os.fsync(fd)
        b0 = os.fstat(fd).st_blocks
        fallocate(fd, FALLOC_FL_KEEP_SIZE, 4096, MiB)
        st = os.fstat(fd)
        eq(st.st_size, 4096, "size after KEEP_SIZE")
        assert st.st_blocks >= b0 + MiB // 512, f"st_blocks {b0} -> {st.st_blocks} after KEEP_SIZE of 1 MiB"
        eq(os.pread(fd, 8192, 0), pattern(4096, 1), "KEEP_SIZE left the data and the EOF")
        os.close(fd)

        # PUNCH_HOLE|KEEP_SIZE: aligned and unaligned ranges.
        data = bytearray(pattern(MiB, 2))
        write(P("c"), data)
        fd = os.open(P("c"), os.O_RDWR)
        os.fsync(fd)
        b0 = os.fstat(fd).st_blocks
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 65536, 131072)
        data[65536:65536 + 131072] = bytes(131072)
        st = os.fstat(fd)
        eq(st.st_size, MiB, "size after punching")
        assert st.st_blocks <= b0 - 131072 // 512, f"st_blocks {b0} -> {st.st_blocks} after punching 128 KiB"
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, 100, 5000)
        data[100:5100] = bytes(5000)
        fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, MiB - 10, 4096)  # past EOF
        data[MiB - 10:] = bytes(10)
        eq(os.fstat(fd).st_size, MiB, "punching past EOF keeps the size")
        got = os.pread(fd, MiB + 10, 0)
        assert got == data, "punched content differs at %d" % next(i for i in range(len(data)) if got[i] != data[i])
        os.close(fd)

        # ZERO_RANGE inside the file, then past EOF (grows the size).
        data = bytearray(pattern(100000, 3))
        write(P("z"), data)
        fd = os.open(P("z"), os.O_RDWR)
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 10000, 20000)
        data[10000:30000] = bytes(20000)
        eq(os.fstat(fd).st_size, 100000, "size after ZERO_RANGE inside")
        got = os.pread(fd, 200000, 0)
        assert got == data, "zeroed content differs at %d" % next(i for i in range(len(data)) if got[i] != data[i])
        fallocate(fd, FALLOC_FL_ZERO_RANGE, 90000, 30000)
        eq(os.fstat(fd).st_size, 120000, "ZERO_RANGE past EOF grows the size")
        eq(os.pread(fd, 200000, 0), bytes(data[:90000]) + bytes(30000), "ZERO_RANGE past EOF")
        fallocate(fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, 119000, 10000)
        eq(os.fstat(fd).st_size, 120000, "ZERO_RANGE|KEEP_SIZE keeps the size")

        # Unsupported modes.
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, FALLOC_FL_COLLAPSE_RANGE, 0, 4096)
        expect_errno(errno.EOPNOTSUPP, fallocate, fd, FALLOC_FL_PUNCH_HOLE, 0, 4096)
        expect_errno(errno.EINVAL, fallocate, fd, 0, 0, 0)
        os.close(fd)
        "#,
    );
    m.remount();
    py(
        m.path(),
        r#"
        MiB = 1 << 20
        eq(read(P("a")), bytes(MiB), "a after remount")
        eq(read(P("b")), pattern(4096, 1), "b after remount")
        data = bytearray(pattern(MiB, 2))
        data[65536:65536 + 131072] = bytes(131072); data[100:5100] = bytes(5000); data[MiB - 10:] = bytes(10)
        assert read(P("c")) == data, "c after remount"
        "#,
    );
    m.finish();
}

#[test]
fn seek_data_and_hole() {
    let m = Mount::new("seek", SIZE, "");
    let f = m.p("f").display().to_string();
    // Made by separate processes, each closing the file.
    sh(&format!(
        "truncate -s 2M '{f}' && dd if=/dev/urandom of='{f}' bs=4096 count=1 conv=notrunc status=none && dd if=/dev/urandom of='{f}' bs=4096 count=1 seek=256 conv=notrunc status=none"
    ));
    let check = r#"
        MiB = 1 << 20
        def seeks(fd, what):
            def s(off, whence):
                try:
                    return os.lseek(fd, off, whence)
                except OSError as e:
                    return errname(e.errno)
            got = {
                "data@0": s(0, os.SEEK_DATA), "hole@0": s(0, os.SEEK_HOLE),
                "data@100": s(100, os.SEEK_DATA), "hole@100": s(100, os.SEEK_HOLE),
                "data@4096": s(4096, os.SEEK_DATA), "hole@4096": s(4096, os.SEEK_HOLE),
                "data@1M": s(MiB, os.SEEK_DATA), "hole@1M": s(MiB, os.SEEK_HOLE),
                "data@1M+4K": s(MiB + 4096, os.SEEK_DATA), "hole@1M+4K": s(MiB + 4096, os.SEEK_HOLE),
                "hole@2M-1": s(2 * MiB - 1, os.SEEK_HOLE), "data@2M": s(2 * MiB, os.SEEK_DATA),
                "hole@2M": s(2 * MiB, os.SEEK_HOLE),
            }
            want = {
                "data@0": 0, "hole@0": 4096, "data@100": 100, "hole@100": 4096,
                "data@4096": MiB, "hole@4096": 4096, "data@1M": MiB, "hole@1M": MiB + 4096,
                "data@1M+4K": "ENXIO", "hole@1M+4K": MiB + 4096, "hole@2M-1": 2 * MiB - 1,
                "data@2M": "ENXIO", "hole@2M": "ENXIO",
            }
            if WRITEBACK:
                # No holes seen: data wherever the file is, a hole at EOF.
                size = 2 * MiB
                for k in want:
                    off = {"0": 0, "100": 100, "4096": 4096, "1M": MiB, "1M+4K": MiB + 4096,
                           "2M-1": 2 * MiB - 1, "2M": 2 * MiB}[k.split("@")[1]]
                    want[k] = "ENXIO" if off >= size else (off if k.startswith("data") else size)
            wrong = {k: (got[k], want[k]) for k in want if got[k] != want[k]}
            assert not wrong, f"{what}: (got, want) {wrong}"
        "#;
    py(
        m.path(),
        &format!(
            "{}\n{}",
            dedent(check),
            dedent(
                r#"
            fd = os.open(P("f"), os.O_RDONLY)
            seeks(fd, "a file written and closed by dd")
            os.close(fd)
            # The same, written and sought through one descriptor, as a
            # program that writes and then looks for its holes does.
            fd = os.open(P("g"), os.O_CREAT | os.O_RDWR, 0o644)
            os.ftruncate(fd, 2 * MiB)
            os.pwrite(fd, pattern(4096, 1), 0)
            os.pwrite(fd, pattern(4096, 2), MiB)
            seeks(fd, "a file written through the same descriptor, not yet closed")
            os.close(fd)
            "#
            )
        ),
    );
    m.finish();
}

#[test]
fn statfs_counts_and_df() {
    let m = Mount::new("statfs", SIZE, "");
    py(
        m.path(),
        r#"
        s = os.statvfs(M)
        eq(s.f_bsize, 4096, "f_bsize")
        eq(s.f_frsize, 4096, "f_frsize")
        image = 256 << 20
        assert 0.9 * image <= s.f_blocks * 4096 <= image, f"f_blocks {s.f_blocks} for a 256 MiB image"
        assert s.f_blocks - 64 <= s.f_bfree <= s.f_blocks, f"f_bfree {s.f_bfree} of {s.f_blocks} on an empty file system"
        assert s.f_bavail <= s.f_bfree, "f_bavail <= f_bfree"
        eq(s.f_namemax, 255, "f_namemax")
        assert s.f_files > 0 and s.f_ffree <= s.f_files, f"inodes {s.f_ffree} free of {s.f_files}"
        n = 16 << 20
        write(P("f"), pattern(n, 1))
        fd = os.open(P("f"), os.O_RDONLY); os.fsync(fd); os.close(fd)
        t = os.statvfs(M)
        used = (s.f_bfree - t.f_bfree) * 4096
        assert n <= used <= n + (1 << 20), f"free space dropped by {used} bytes after writing {n}"
        assert t.f_ffree < s.f_ffree, "one inode more in use"
        os.unlink(P("f"))
        deadline = time.time() + 5
        while os.statvfs(M).f_bfree < s.f_bfree - 16 and time.time() < deadline:
            time.sleep(0.05)
        u = os.statvfs(M)
        assert u.f_bfree >= s.f_bfree - 16, f"deleting gave the space back: {s.f_bfree} -> {t.f_bfree} -> {u.f_bfree}"
        "#,
    );
    let out = sh(&format!("df -k '{}'", m.path().display()));
    let line = out.lines().last().unwrap();
    let cols: Vec<&str> = line.split_whitespace().collect();
    assert_eq!(cols.last().copied(), m.path().to_str(), "df line: {out}");
    let total_k: u64 = cols[1].parse().unwrap();
    assert!(
        (230_000..=262_144).contains(&total_k),
        "df total of a 256 MiB image: {out}"
    );
    m.finish();
}

#[test]
fn permissions_for_another_user() {
    let m = Mount::new("perms", SIZE, "allow_other");
    // The way down to the mount point must be open to the other user
    // whatever the umask.
    sh(&format!(
        "chmod 755 '{}' '{}'",
        m.dir().display(),
        m.path().display()
    ));
    let d = m.path().display().to_string();
    sh(&format!(
        "printf secret > '{d}/secret' && chmod 600 '{d}/secret' && printf public > '{d}/public' && chmod 644 '{d}/public' && mkdir -m 700 '{d}/private' && mkdir -m 777 '{d}/open'"
    ));
    assert_eq!(stat("%a %u", &m.p("secret")), "600 0");
    assert_eq!(stat("%a", &m.p("private")), "700");
    py(
        m.path(),
        r#"
        # The checks run in a child that drops to nobody (uid/gid 65534).
        def nobody():
            expect_errno(errno.EACCES, open, P("secret"), "rb")
            eq(read(P("public")), b"public", "reading the 0644 file")
            expect_errno(errno.EACCES, open, P("public"), "ab")
            expect_errno(errno.EACCES, os.truncate, P("public"), 0)
            expect_errno(errno.EACCES, os.listdir, P("private"))
            expect_errno(errno.EACCES, open, P("private/new"), "wb")
            expect_errno(errno.EACCES, os.mkdir, P("private/d"))
            expect_errno(errno.EACCES, open, P("new_in_root"), "wb")
            expect_errno(errno.EPERM, os.chmod, P("public"), 0o666)
            expect_errno(errno.EPERM, os.chown, P("public"), 65534, 65534)
            expect_errno(errno.EACCES, os.setxattr, P("public"), "user.x", b"v")
            expect_errno(errno.EACCES, os.unlink, P("public"))
            # Where it may write, what it makes is its own.
            write(P("open/mine"), b"mine", 0o600)
            st = os.stat(P("open/mine"))
            eq((st.st_uid, st.st_gid), (65534, 65534), "owner of a file nobody made")
            os.chmod(P("open/mine"), 0o640)
            eq(stat.S_IMODE(os.stat(P("open/mine")).st_mode), 0o640, "chmod by the owner")
        as_user(65534, 65534, nobody)
        # Root still reads the 0600 file, and the failed attempts changed nothing.
        eq(read(P("secret")), b"secret", "root reads the 0600 file")
        eq(read(P("public")), b"public", "the 0644 file is untouched")
        eq(stat.S_IMODE(os.stat(P("public")).st_mode), 0o644, "mode of the 0644 file")
        eq(os.listdir(P("private")), [], "nothing made in the 0700 directory")
        "#,
    );
    m.finish();
}

#[test]
fn mmap_shared_writes() {
    let mut m = Mount::new("mmap", SIZE, "");
    let expect = py(
        m.path(),
        r#"
        n = 3 * 4096 + 100
        write(P("f"), pattern(n, 1))
        want = bytearray(pattern(n, 1))
        with open(P("f"), "r+b") as f:
            mm = mmap.mmap(f.fileno(), 0)
            mm[10:20] = b"0123456789"
            mm[4090:4100] = b"ABCDEFGHIJ"
            mm[n - 1] = ord("!")
            mm.flush()
            mm.close()
        want[10:20] = b"0123456789"; want[4090:4100] = b"ABCDEFGHIJ"; want[n - 1] = ord("!")
        eq(read(P("f")), bytes(want), "read back through a fresh open")
        # A private mapping does not write through.
        with open(P("f"), "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, flags=mmap.MAP_PRIVATE, prot=mmap.PROT_READ | mmap.PROT_WRITE)
            mm[0:4] = b"PRIV"
            mm.close()
        eq(read(P("f")), bytes(want), "MAP_PRIVATE changes stay private")
        print(hashlib.sha256(want).hexdigest())
        "#,
    );
    m.remount();
    assert_eq!(
        sh(&format!("cat '{}' | sha256sum", m.p("f").display()))
            .split_whitespace()
            .next()
            .unwrap(),
        expect.trim(),
        "the mmap'd changes after remount"
    );
    m.finish();
}

#[test]
fn name_length_limits() {
    let m = Mount::new("names", SIZE, "");
    py(
        m.path(),
        r#"
        n255, n256 = "n" * 255, "n" * 256
        write(P(n255), b"long")
        eq(os.stat(P(n255)).st_size, 4, "stat of a 255-byte name")
        assert n255 in os.listdir(M), "a 255-byte name is listed"
        eq(read(P(n255)), b"long", "read through a 255-byte name")
        os.mkdir(P("d" * 255))
        os.symlink("x", P("s" * 255))
        expect_errno(errno.ENAMETOOLONG, open, P(n256), "wb")
        expect_errno(errno.ENAMETOOLONG, os.stat, P(n256))
        expect_errno(errno.ENAMETOOLONG, os.mkdir, P("d" * 256))
        expect_errno(errno.ENAMETOOLONG, os.symlink, "x", P("s" * 256))
        expect_errno(errno.ENAMETOOLONG, os.rename, P(n255), P(n256))
        expect_errno(errno.ENAMETOOLONG, os.link, P(n255), P(n256))
        # Multi-byte characters count as bytes: 127 two-byte characters fit,
        # 128 do not.
        write(P("é" * 127), b"")
        expect_errno(errno.ENAMETOOLONG, open, P("é" * 128), "wb")
        assert n256 not in os.listdir(M)
        "#,
    );
    m.finish();
}

#[test]
fn offsets_near_the_maximum_file_size() {
    let m = Mount::new("maxoff", SIZE, "");
    py(
        m.path(),
        r#"
        top = 2**63 - 2
        fd = os.open(P("f"), os.O_CREAT | os.O_RDWR, 0o644)
        try:
            n = os.pwrite(fd, b"Z", top)
            outcome = "ok"
        except OSError as e:
            outcome = errname(e.errno)
        eq(outcome, "ok", "pwrite of 1 byte at 2**63-2 (the largest file is 2**63-1 bytes)")
        eq(n, 1, "bytes written")
        eq(os.fstat(fd).st_size, 2**63 - 1, "size after writing the last byte")
        # (pos + count may not pass 2**63-1, or the kernel says EINVAL.)
        eq(os.pread(fd, 1, top), b"Z", "the byte at 2**63-2")
        eq(os.pread(fd, 4, top - 3), b"\0\0\0Z", "zeros before it")
        eq(os.pread(fd, 1, 2**63 - 2 - 8192), b"\0", "a hole before it")
        # One byte further is past the largest file.
        # Linux refuses pos + count past 2**63-1 before the file system sees it.
        expect_errno((errno.EFBIG, errno.EINVAL), os.pwrite, fd, b"Z", 2**63 - 1)
        try:
            os.pwrite(fd, b"Z", 2**63)
            raise AssertionError("pwrite at 2**63 succeeded")
        except OverflowError:
            pass
        except OSError as e:
            assert e.errno in (errno.EFBIG, errno.EINVAL), f"pwrite at 2**63: {e}"
        os.fsync(fd)
        if WRITEBACK:
            eq(os.lseek(fd, 0, os.SEEK_HOLE), 2**63 - 1, "SEEK_HOLE at 0, writeback cache")
            eq(os.lseek(fd, 0, os.SEEK_DATA), 0, "SEEK_DATA at 0, writeback cache")
        else:
            eq(os.lseek(fd, 0, os.SEEK_HOLE), 0, "SEEK_HOLE at 0 of a sparse file")
            d = os.lseek(fd, 0, os.SEEK_DATA)
            assert (top & ~4095) <= d <= top, f"SEEK_DATA from 0 found {d}, want the last page"
        eq(os.lseek(fd, top, os.SEEK_HOLE), 2**63 - 1, "SEEK_HOLE from the last byte is EOF")
        expect_errno(errno.ENXIO, os.lseek, fd, 2**63 - 1, os.SEEK_DATA)
        os.close(fd)
        assert os.stat(P("f")).st_blocks <= 16, "only the last page is allocated"
        # The size can be set near the limit too, and not past it.
        write(P("g"), b"")
        os.truncate(P("g"), 2**63 - 1)
        eq(os.stat(P("g")).st_size, 2**63 - 1, "truncate to the largest size")
        fd = os.open(P("g"), os.O_RDWR)
        expect_errno((errno.EFBIG, errno.EINVAL), fallocate, fd, 0, 2**63 - 4096, 8192)
        os.close(fd)
        "#,
    );
    m.finish();
}

#[test]
fn persistence_across_remount() {
    let mut m = Mount::new("persist", SIZE, "");
    let snapshot = r#"
        def snap():
            out = {}
            for root, dirs, files in os.walk(M):
                dirs.sort()
                for name in sorted(dirs + files):
                    p = os.path.join(root, name)
                    rel = os.path.relpath(p, M)
                    st = os.lstat(p)
                    e = {"mode": oct(st.st_mode), "nlink": st.st_nlink, "uid": st.st_uid,
                         "gid": st.st_gid, "ino": st.st_ino,
                         "xattrs": {k: os.getxattr(p, k, follow_symlinks=False).hex()
                                    for k in sorted(os.listxattr(p, follow_symlinks=False))}}
                    if stat.S_ISLNK(st.st_mode):
                        e["target"] = os.readlink(p)
                    elif stat.S_ISREG(st.st_mode):
                        e["size"] = st.st_size
                        e["sha256"] = sha(p)
                        e["blocks"] = st.st_blocks
                        e["mtime"] = st.st_mtime_ns
                    out[rel] = e
            return json.dumps(out, indent=1, sort_keys=True)
        "#;
    let before = py(
        m.path(),
        &format!(
            "{}\n{}",
            dedent(snapshot),
            dedent(
                r#"
            os.makedirs(P("top/mid/low"))
            write(P("top/a"), pattern(12345, 1), 0o640)
            write(P("top/mid/b"), pattern((1 << 20) + 7, 2))
            write(P("top/mid/low/empty"), b"")
            fd = os.open(P("sparse"), os.O_CREAT | os.O_WRONLY, 0o600)
            os.pwrite(fd, b"end", 5 << 20)
            os.close(fd)
            os.link(P("top/a"), P("top/mid/a_link"))
            os.symlink("../a", P("top/mid/sym"))
            os.symlink("/nowhere/at/all", P("dangling"))
            os.setxattr(P("top/a"), "user.colour", b"blue")
            os.setxattr(P("top/mid"), "user.dir", pattern(3000, 4))
            os.chmod(P("top/mid/low"), 0o711)
            os.chmod(P("top/mid/b"), 0o4755)
            os.chown(P("top/mid/low/empty"), 1234, 5678)
            os.mkfifo(P("fifo"), 0o620)
            os.utime(P("top/a"), ns=(1_000_000_000, 1_234_567_890_123_456_789))
            print(snap())
            "#
            )
        ),
    );
    assert!(before.contains("\"top/mid/a_link\""), "{before}");
    m.remount();
    let after = py(m.path(), &format!("{}\nprint(snap())", dedent(snapshot)));
    assert_eq!(before, after, "the tree differs after remount");
    // The data too, read by another tool.
    assert_eq!(
        sh(&format!("cat '{}' | wc -c", m.p("top/mid/b").display())).trim(),
        ((1 << 20) + 7).to_string()
    );
    m.finish();
}

#[test]
fn numa_and_dram_cache_options_mount_and_work() {
    let mut m = Mount::new("numa", SIZE, "numa_nodes=2,dram_cache=64M,threads=4");
    let d = m.path().display().to_string();
    sh(&format!(
        "dd if=/dev/urandom of='{d}/../ref' bs=65536 count=40 status=none && cp '{d}/../ref' '{d}/f' && cmp '{d}/../ref' '{d}/f' && mkdir '{d}/dir' && mv '{d}/f' '{d}/dir/f'"
    ));
    let want = sha256sum(&m.dir().join("ref"));
    assert_eq!(sha256sum(&m.p("dir/f")), want);
    // Many readers at once.
    sh(&format!(
        "for i in 1 2 3 4; do cat '{d}/dir/f' > /dev/null & done; wait"
    ));
    m.remount();
    assert_eq!(sha256sum(&m.p("dir/f")), want, "after remount");
    m.finish();
}

#[test]
fn read_only_mount() {
    let mut m = Mount::new("ro", SIZE, "");
    let d = m.path().display().to_string();
    sh(&format!(
        "printf data > '{d}/f' && mkdir '{d}/dir' && ln -s f '{d}/sym'"
    ));
    py(m.path(), r#"os.setxattr(P("f"), "user.k", b"v")"#);
    m.remount_with("ro");
    assert!(
        std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.contains(&format!(" {d} "))
                && l.split(' ')
                    .nth(5)
                    .is_some_and(|o| o.split(',').any(|x| x == "ro"))),
        "the mount is read-only in mountinfo"
    );
    assert_eq!(sh(&format!("cat '{d}/f' '{d}/sym'")), "datadata");
    assert_eq!(
        sh(&format!("ls '{d}'"))
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["dir", "f", "lost+found", "sym"]
    );
    py(
        m.path(),
        r#"
        eq(os.getxattr(P("f"), "user.k"), b"v", "xattr on a read-only mount")
        eq(os.statvfs(M).f_flag & os.ST_RDONLY, os.ST_RDONLY, "statvfs says read-only")
        R = errno.EROFS
        expect_errno(R, open, P("f"), "ab")
        expect_errno(R, open, P("f"), "r+b")
        expect_errno(R, open, P("new"), "wb")
        expect_errno(R, os.mkdir, P("d2"))
        expect_errno(R, os.unlink, P("f"))
        expect_errno(R, os.rmdir, P("dir"))
        expect_errno(R, os.rename, P("f"), P("g"))
        expect_errno(R, os.link, P("f"), P("g"))
        expect_errno(R, os.symlink, "f", P("s2"))
        expect_errno(R, os.chmod, P("f"), 0o600)
        expect_errno(R, os.truncate, P("f"), 0)
        expect_errno(R, os.setxattr, P("f"), "user.k", b"w")
        expect_errno(R, os.removexattr, P("f"), "user.k")
        expect_errno(R, os.utime, P("f"), (1, 1))
        eq(read(P("f")), b"data", "unchanged")
        "#,
    );
    let o = sh_output(&format!("touch '{d}/t'"));
    assert!(
        !o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "touch on a read-only mount: {}",
        both(&o)
    );
    m.finish();
}

/// The mountinfo fields of the mount at `dir`: (mount options, type,
/// source).
fn mountinfo(dir: &Path) -> (String, String, String) {
    let info = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
    let d = dir.display().to_string();
    let line = info
        .lines()
        .find(|l| l.split(' ').nth(4) == Some(d.as_str()))
        .unwrap_or_else(|| panic!("{d} is not in mountinfo"));
    let (left, right) = line.split_once(" - ").expect("mountinfo separator");
    let mut r = right.split(' ');
    let opts = left.split(' ').nth(5).unwrap_or_default().to_string();
    let fstype = r.next().unwrap_or_default().to_string();
    let source = r.next().unwrap_or_default().to_string();
    (opts, fstype, source)
}

/// The kernel shows a pmemfs mount as type `fuse.pmemfs` with source
/// `pmemfs:IMAGE`, and for `mount -o remount` (or an fstab line of that
/// type) fuse3's mount.fuse3 runs `pmemfs SOURCE MOUNTPOINT -o OPTIONS`
/// with every option of the mount: called so, pmemfs remounts read-only
/// and back.
#[test]
fn mount_helper_remounts_read_only_and_back() {
    let m = Mount::new("helper", SIZE, "");
    let (opts, fstype, source) = mountinfo(m.path());
    assert_eq!(fstype, "fuse.pmemfs");
    assert_eq!(source, format!("pmemfs:{}", m.image().display()));
    assert!(opts.split(',').any(|o| o == "rw"), "{opts}");
    let helper = |opts: &str| {
        let mut c = tool("pmemfs");
        c.arg(&source).arg(m.path()).arg("-o").arg(opts);
        let o = run(c);
        assert!(
            o.status.success(),
            "pmemfs {source} -o {opts}: {}",
            both(&o)
        );
    };
    helper("rw,relatime,user_id=0,group_id=0,default_permissions,remount,ro");
    let (opts, ..) = mountinfo(m.path());
    assert!(opts.split(',').any(|o| o == "ro"), "{opts}");
    let o = sh_output(&format!("touch '{}/t'", m.path().display()));
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only file system"),
        "touch on the remounted mount: {}",
        both(&o)
    );
    helper("remount,rw");
    let (opts, ..) = mountinfo(m.path());
    assert!(opts.split(',').any(|o| o == "rw"), "{opts}");
    sh(&format!("touch '{}/t'", m.path().display()));
    m.finish();
}

/// Unmounts (lazily if it must) when dropped: cleanup for the test below,
/// which drives the mount by hand.
struct UnmountOnDrop(std::path::PathBuf);

impl Drop for UnmountOnDrop {
    fn drop(&mut self) {
        if is_mount_point(&self.0) {
            let ok = std::process::Command::new("umount")
                .arg(&self.0)
                .status()
                .is_ok_and(|s| s.success());
            if !ok {
                let _ = std::process::Command::new("umount")
                    .arg("-l")
                    .arg(&self.0)
                    .status();
            }
        }
    }
}

/// The README's contract: on umount the daemon writes its checkpoint and
/// exits, releasing the image lock; so a script that waits for the lock and
/// mounts the image again at the same place gets a mount that stays up.
#[test]
fn remount_as_soon_as_the_lock_is_released() {
    use std::time::{Duration, Instant};
    let dir = TempDir::new("relock");
    let (image, mnt) = (dir.join("img"), dir.join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let _guard = UnmountOnDrop(mnt.clone());
    let mkfs = {
        let mut c = tool("mkfs.pmemfs");
        c.args(["-q", "-s", SIZE]).arg(&image);
        run_captured(c, Duration::from_secs(30))
    };
    assert!(mkfs.status.success(), "{}", both(&mkfs));
    let mount = || {
        assert!(
            Path::new("/dev/fuse").exists(),
            "cannot mount: /dev/fuse is missing"
        );
        let mut c = tool("pmemfs-mount");
        c.arg(&image).arg(&mnt);
        let o = run_captured(c, Duration::from_secs(30));
        assert!(o.status.success(), "cannot mount: {}", both(&o));
        assert!(is_mount_point(&mnt));
        holders(&image)
    };
    let wait_unlocked = || {
        let start = Instant::now();
        while pmemfs_ondisk::lock::is_locked(&image).unwrap() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the image stays locked after umount"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    let first = mount();
    assert!(!first.is_empty(), "no daemon holds the image");
    std::fs::write(mnt.join("f"), b"kept").unwrap();
    sh(&format!("umount '{}'", mnt.display()));
    wait_unlocked();
    let old_alive = first.iter().any(Proc::alive);
    let second = mount();
    // Give the old daemon every chance to finish exiting, then look.
    assert!(
        wait_exited(&first, Duration::from_secs(20)),
        "the old daemon never exits"
    );
    std::thread::sleep(Duration::from_millis(400));
    let still = is_mount_point(&mnt);
    let read = std::fs::read(mnt.join("f"));
    assert!(
        still && read.as_ref().is_ok_and(|r| r == b"kept"),
        "the second mount did not stay up: mounted {still}, reading f gave {read:?}; \
         the first daemon {first:?} was {} when the image lock was released, and the \
         second daemon {second:?} is {}",
        if old_alive { "still running" } else { "gone" },
        if second.iter().any(Proc::alive) {
            "running"
        } else {
            "gone"
        },
    );
    sh(&format!("umount '{}'", mnt.display()));
    wait_unlocked();
    assert!(
        wait_exited(&second, Duration::from_secs(20)),
        "the second daemon never exits"
    );
    let (c, out) = fsck("-n", &image);
    assert_eq!(c, 0, "{out}");
}

/// Write-only handles of files nobody caches bypass the page cache
/// (fs/src/opens.rs), and every view of the file stays coherent: readers
/// beside the writer, a shared mapping, a cached open after it, a writer
/// beside a cached reader. And the point of it: each write(2) through such
/// a handle is one WRITE, whatever its alignment.
#[test]
fn write_only_handles_go_direct_and_every_view_stays_coherent() {
    let m = Mount::new("direct", "64M", "");
    py(
        m.path(),
        r#"
        p = P("f")
        w = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        os.write(w, b"A" * 5000)
        r = os.open(p, os.O_RDONLY)
        eq(os.pread(r, 5000, 0), b"A" * 5000, "a reader beside the writer")
        os.pwrite(w, b"B", 0)
        eq(os.pread(r, 2, 0), b"BA", "the reader sees the next write")
        # A shared mapping beside a direct writer works and follows writes.
        mm = mmap.mmap(r, 5000, mmap.MAP_SHARED, mmap.PROT_READ)
        eq(mm[0:2], b"BA", "the mapping")
        os.pwrite(w, b"C", 0)
        eq(mm[0:2], b"CA", "the mapping after a write beside it")
        os.pwrite(w, b"Z" * 4096, 4096)
        eq(mm[4096:4100], b"ZZZZ", "the mapping's second page after a write")
        mm.close()
        os.close(r)
        os.close(w)
        # Cached now: read whole, so the kernel holds the pages.
        with open(p, "rb") as f:
            eq(f.read()[:2], b"CA", "a cached read after the direct writer")
        # A lone writer again, then a cached reader: not the old pages.
        w = os.open(p, os.O_WRONLY)
        os.pwrite(w, b"D", 0)
        os.close(w)
        with open(p, "rb") as f:
            eq(f.read(2), b"DA", "a cached read after another direct write")
        # A writer beside a cached reader stays cached, and coherent.
        r = os.open(p, os.O_RDONLY)
        eq(os.pread(r, 1, 0), b"D", "cached reader")
        w = os.open(p, os.O_WRONLY | os.O_APPEND)
        os.write(w, b"E")
        os.close(w)
        eq(os.pread(r, 1, os.fstat(r).st_size - 1), b"E", "the appended byte")
        os.close(r)
        eq(os.stat(p).st_size, 8193, "size")
        "#,
    );
    // Four 10 KiB records through a write-only handle: four WRITEs.
    let f = m.p("records");
    sh(&format!(
        "dd if=/dev/zero of='{}' bs=10240 count=1 status=none",
        f.display()
    ));
    let ops = |m: &Mount| {
        let mut c = tool("pmemfs");
        c.args(["stat", "--ops", "--reset"]).arg(m.path());
        stdout(&run(c))
    };
    ops(&m);
    sh(&format!(
        "dd if=/dev/urandom of='{}' bs=10240 count=4 status=none",
        f.display()
    ));
    let counts = ops(&m);
    let writes = counts
        .lines()
        .find_map(|l| l.strip_prefix("WRITE "))
        .and_then(|l| l.split_whitespace().next())
        .unwrap_or("0")
        .to_string();
    let want = if std::env::var("PMEMFS_TEST_MOUNT_OPTS")
        .unwrap_or_default()
        .contains("writeback_cache")
    {
        writes.clone() // the writeback cache gathers writes as it likes
    } else {
        "4".to_string()
    };
    assert_eq!(writes, want, "WRITEs for four 10 KiB write(2)s:\n{counts}");
    m.finish();
}
