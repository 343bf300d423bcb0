//! Space through a mount (issue 10): a write larger than the free space
//! writes what fits and returns the short count; freed pages go back to
//! the image file on `fstrim` and with `-o discard`; `pmemfs du` asks per
//! directory, not per file.

mod util;

use std::path::Path;

use util::*;

/// Bytes the image file takes in memory (/dev/shm): its blocks.
fn allocated(image: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(image).expect("image").blocks() * 512
}

#[test]
fn enospc_writes_short_then_trim_gives_the_pages_back() {
    let mut m = Mount::new_shm("space", "64M", "");
    let out = py(
        m.path(),
        r#"
        keep = pattern(1 << 20, seed=3)
        write(P("keep"), keep)
        chunk = pattern(4 << 20, seed=5)
        fd = os.open(P("fill"), os.O_CREAT | os.O_WRONLY, 0o644)
        if WRITEBACK:
            # The kernel's cache takes every write; ENOSPC comes when it
            # writes them back, at fsync.
            while True:
                try:
                    os.write(fd, chunk)
                    os.fsync(fd)
                except OSError as e:
                    assert e.errno == errno.ENOSPC, e
                    break
            os.close(fd)
            eq(read(P("keep")), keep, "a file written before")
            # What reached the pages (the size counts what the cache took).
            print(os.stat(P("fill")).st_blocks * 512)
            sys.exit(0)
        counts = []
        while True:
            try:
                n = os.write(fd, chunk)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                break
            counts.append(n)
            assert n > 0
        os.close(fd)
        short = [n for n in counts if n != len(chunk)]
        assert len(short) == 1 and counts[-1] == short[0], f"one short write, last: {counts}"
        assert short[0] % 4096 == 0, short
        st = os.statvfs(M)
        eq(st.f_bavail, 0, "available blocks after the short write")
        size = os.stat(P("fill")).st_size
        eq(size, sum(counts), "the file holds every byte the writes counted")
        with open(P("fill"), "rb") as f:
            f.seek(size - short[0])
            eq(f.read(), chunk[:short[0]], "the bytes of the short write")
        eq(read(P("keep")), keep, "a file written before")
        print(size)
        "#,
    );
    let filled: u64 = out.trim().parse().expect("size");
    let before = allocated(m.image());
    assert!(
        before >= filled,
        "the image holds the data: {before} < {filled}"
    );
    std::fs::remove_file(m.p("fill")).unwrap();
    let trim = sh(&format!("fstrim -v '{}'", m.path().display()));
    let trimmed: u64 = trim
        .split('(')
        .nth(1)
        .and_then(|s| s.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("fstrim -v said: {trim}"));
    assert!(
        trimmed >= filled,
        "fstrim trimmed {trimmed} of {filled} freed: {trim}"
    );
    let after = allocated(m.image());
    assert!(
        before - after >= filled / 10 * 9,
        "the image file shrank by {} of {filled} freed bytes ({before} -> {after})",
        before.saturating_sub(after)
    );
    let data = sha256(&m.p("keep"));
    m.remount();
    assert_eq!(sha256(&m.p("keep")), data);
    m.finish();
}

/// Clones of a file of scattered pages on a full file system: each needs
/// pages for its page map's tree on the media. Once only what the next
/// checkpoint needs is left they fail with ENOSPC and change nothing; the
/// file system goes on (creates, unlinks, writes once space is back) and
/// fsck finds it clean.
#[test]
fn clones_on_a_full_file_system_fail_with_enospc_and_lose_nothing() {
    let mut m = Mount::new_shm("fullclone", "64M", "");
    let out = py(
        m.path(),
        r#"
        import random
        PAGES = 600
        fd = os.open(P("scattered"), os.O_CREAT | os.O_WRONLY, 0o644)
        idx = list(range(PAGES))
        random.Random(1).shuffle(idx)
        page = pattern(4096, seed=7)
        for i in idx:
            os.pwrite(fd, page, i * 4096)
        os.close(fd)
        fd = os.open(P("fill"), os.O_CREAT | os.O_WRONLY, 0o644)
        chunk = pattern(1 << 20, seed=5)
        try:
            while True:
                os.write(fd, chunk)
        except OSError as e:
            assert e.errno == errno.ENOSPC, e
        os.close(fd)
        made, refused = [], 0
        for k in range(60):
            src = os.open(P("scattered"), os.O_RDONLY)
            dst = os.open(P(f"c{k}"), os.O_CREAT | os.O_WRONLY, 0o644)
            try:
                eq(os.copy_file_range(src, dst, PAGES * 4096), PAGES * 4096, "cloned")
                made.append(k)
            except OSError as e:
                assert e.errno == errno.ENOSPC, e
                refused += 1
                eq(os.fstat(dst).st_blocks, 0, "a refused clone maps nothing")
            os.close(src)
            os.close(dst)
        assert made and refused, f"{len(made)} clones made, {refused} refused"
        whole = read(P("scattered"))
        for k in made:
            eq(read(P(f"c{k}")), whole, f"clone {k}")
        os.unlink(P("fill"))
        for k in range(60):
            if k not in made:
                os.unlink(P(f"c{k}"))
        write(P("after"), chunk)
        eq(read(P("after")), chunk, "a file written once space is back")
        print(len(made), refused)
        "#,
    );
    let counts: Vec<u64> = out
        .split_whitespace()
        .map(|n| n.parse().expect("count"))
        .collect();
    assert_eq!(counts.len(), 2, "{out}");
    m.remount();
    assert_eq!(
        std::fs::read(m.p("after")).expect("after").len(),
        1 << 20,
        "the file written after the refusals survives a remount"
    );
    m.finish();
}

fn sha256(path: &Path) -> String {
    sh(&format!("sha256sum < '{}'", path.display()))
}

#[test]
fn discard_gives_pages_back_as_they_are_freed() {
    discard_on("discard", "discard");
}

/// Under the writeback cache an unlinked inode lives until the kernel
/// forgets it; its pages must not wait for that.
#[test]
fn discard_gives_pages_back_at_the_unlink_under_the_writeback_cache() {
    discard_on("discardwb", "discard,writeback_cache");
}

fn discard_on(name: &str, opts: &str) {
    let m = Mount::new_shm(name, "128M", opts);
    py(m.path(), r#"write(P("big"), pattern(32 << 20, seed=1))"#);
    // Under the writeback cache the data may still be the kernel's: the
    // image holds it only once written back.
    sh(&format!("sync -f '{}'", m.path().display()));
    let before = allocated(m.image());
    std::fs::remove_file(m.p("big")).unwrap();
    let after = allocated(m.image());
    assert!(
        before - after >= (32 << 20) / 10 * 9,
        "-o discard: the image shrank by {} of 32 MiB ({before} -> {after})",
        before.saturating_sub(after)
    );
    m.finish();
}

#[test]
fn trim_is_for_root_only() {
    let m = Mount::new("trimroot", "64M", "");
    sh(&format!(
        "chmod 755 '{}' '{}'",
        m.dir().display(),
        m.path().display()
    ));
    let o = sh_output(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups fstrim '{}'",
        m.path().display()
    ));
    assert!(!o.status.success(), "fstrim as nobody: {}", both(&o));
    m.finish();
}

#[test]
fn du_reports_every_file_of_large_directories() {
    let m = Mount::new("du", "256M", "");
    // 1,200 files in one directory (more than one answer of the
    // directory ioctl), some in a subdirectory, and a clone.
    py(
        m.path(),
        r#"
        os.mkdir(P("d"))
        os.mkdir(P("d/sub"))
        for i in range(1200):
            write(P("d", f"f{i:04}"), b"x" * (1 + i % 3) * 4096)
        for i in range(7):
            write(P("d/sub", f"s{i}"), b"y" * 5000)
        write(P("big"), pattern(1 << 20))
        "#,
    );
    sh(&format!(
        "cp --reflink=always '{0}/big' '{0}/d/clone' 2>/dev/null || cp --reflink=auto '{0}/big' '{0}/d/clone'",
        m.path().display()
    ));
    let mut c = tool("pmemfs");
    c.args(["du", "--raw"]).arg(m.path());
    // run_captured: the listing is larger than a pipe holds.
    let out = stdout(&run_captured(c, std::time::Duration::from_secs(60)));
    let lines: Vec<&str> = out.lines().collect();
    // Header, 1,200 + 7 + 2 files, total.
    assert_eq!(lines.len(), 1 + 1209 + 1, "{}", &out[..out.len().min(2000)]);
    let total: Vec<u64> = lines[lines.len() - 1]
        .split_whitespace()
        .take(3)
        .map(|n| n.parse().unwrap())
        .collect();
    let files_bytes: u64 = (0..1200u64).map(|i| (1 + i % 3) * 4096).sum::<u64>() + 7 * 8192;
    let big = 1u64 << 20;
    assert_eq!(total[0], files_bytes + 2 * big, "total: {out:.200}");
    assert_eq!(total[2], 2 * big, "shared: the clone and its source");
    assert_eq!(total[1], files_bytes, "exclusive");
    let f = lines
        .iter()
        .find(|l| l.ends_with("/d/f0001"))
        .expect("f0001 listed");
    assert!(f.trim_start().starts_with("8192 "), "{f}");
    m.finish();
}
