//! Dedupe through a mount (issue 14): FIDEDUPERANGE through the preload
//! library shares equal ranges and reports differing ones, with the
//! kernel's semantics per destination (statuses, alignment, EOF, shortened
//! lengths, permissions, unchanged times); `xfs_io -c dedupe` and
//! `jdupes -rB` work as on XFS; `pmemfs dedupe` finds and shares the equal
//! pages of a tree itself (`-n` changes nothing, `-r` descends). Every file
//! keeps its bytes, the freed space shows in df and `pmemfs du`, and fsck
//! finds the image clean.

mod util;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use util::*;

const LIMIT: Duration = Duration::from_secs(120);

/// FIDEDUPERANGE from Python, through the C library's ioctl.
const DEDUPE_PY: &str = r#"
import fcntl
import struct
import subprocess
assert hasattr(libc, "pmemfs_reflink_version"), "the preload library is not loaded"
FIDEDUPERANGE = 0xC0189436
SAME, DIFFERS = 0, 1
PAGE = 4096

def dedupe(src, off, length, dests):
    """dests: [(fd, offset)]; returns [(status, bytes_deduped)]."""
    buf = bytearray(struct.pack("QQHHI", off, length, len(dests), 0, 0))
    for fd, doff in dests:
        buf += struct.pack("qQQiI", fd, doff, 0, 0, 0)
    fcntl.ioctl(src, FIDEDUPERANGE, buf)
    return [struct.unpack_from("qQQiI", buf, 24 + 32 * i)[2:4][::-1] for i in range(len(dests))]
"#;

fn py_dedupe(mnt: &Path, code: &str) -> String {
    py_preloaded(mnt, DEDUPE_PY, code, &[], LIMIT)
}

#[test]
fn fideduperange_has_the_kernels_semantics() {
    let m = Mount::new("dedupe-semantics", "128M", "");
    let out = py_dedupe(
        m.path(),
        r#"
        data = pattern(8 * PAGE + 100, 3)
        for name in ("src", "same", "same2", "differs", "short"):
            write(P(name), data)
        with open(P("differs"), "r+b") as f:
            f.seek(5 * PAGE + 7)
            f.write(b"!")
        write(P("short"), data[: 4 * PAGE])
        src = os.open(P("src"), os.O_RDONLY)
        fd = {n: os.open(P(n), os.O_RDWR) for n in ("same", "same2", "differs", "short")}
        os.utime(P("same"), (1_000_000_000, 1_000_000_000))
        # Equal and differing in one call; the whole file, its partial last
        # page too, since every range ends at both files' EOF.
        n = len(data)
        got = dedupe(src, 0, n, [(fd["same"], 0), (fd["differs"], 0), (fd["same2"], 0)])
        eq(got, [(SAME, n), (DIFFERS, 0), (SAME, n)], "same, differs, same")
        eq(os.stat(P("same")).st_mtime, 1_000_000_000, "a dedupe changes no time")
        # A destination range past its EOF: -EINVAL for it alone.
        got = dedupe(src, 0, 8 * PAGE, [(fd["short"], 0), (fd["same"], 0)])
        eq(got, [(-errno.EINVAL, 0), (SAME, 8 * PAGE)], "past the destination's EOF")
        # Unaligned offsets: -EINVAL.
        eq(dedupe(src, 0, PAGE, [(fd["same"], 100)]), [(-errno.EINVAL, 0)], "unaligned")
        # A length not ending at EOF is shortened to whole pages, and the
        # kernel reports the length asked.
        eq(dedupe(src, 0, PAGE + 10, [(fd["differs"], 0)]), [(SAME, PAGE + 10)], "shortened")
        # Zero length: same, nothing deduped.
        eq(dedupe(src, 0, 0, [(fd["differs"], 0)]), [(SAME, 0)], "zero length")
        # A bad descriptor, a directory, a file on another file system.
        d = os.open(P(""), os.O_RDONLY)
        other = os.open("/proc/self/status", os.O_RDONLY)
        got = dedupe(src, 0, PAGE, [(9999, 0), (d, 0), (other, 0)])
        eq([s for s, _ in got], [-errno.EBADF, -errno.EISDIR, -errno.EXDEV], "bad destinations")
        # Errors of the source fail the call.
        w = os.open(P("src"), os.O_WRONLY)
        expect_errno(errno.EINVAL, dedupe, w, 0, PAGE, [(fd["same"], 0)])
        expect_errno(errno.EINVAL, dedupe, src, 0, n + 1, [(fd["same"], 0)])
        expect_errno(errno.EISDIR, dedupe, d, 0, PAGE, [(fd["same"], 0)])
        # Overlap within one file: -EINVAL.
        eq(dedupe(src, 0, 2 * PAGE, [(src, PAGE)]), [(-errno.EINVAL, 0)], "overlap")
        # Another user's file the caller may not write: -EPERM, though it
        # is open (for reading) and equal.
        os.chmod(P("same2"), 0o644)
        def other_user():
            s = os.open(P("src"), os.O_RDONLY)
            t = os.open(P("same2"), os.O_RDONLY)
            eq(dedupe(s, 0, PAGE, [(t, 0)]), [(-errno.EPERM, 0)], "not the caller's to change")
        as_user(65534, 65534, other_user)
        # Append-only or immutable: -EPERM.
        for f in ("same",):
            for chattr in ("+a", "+i"):
                subprocess.run(["chattr", chattr, P(f)], check=True)
                eq(dedupe(src, 0, PAGE, [(fd[f], 0)]), [(-errno.EPERM, 0)], chattr)
                subprocess.run(["chattr", chattr.replace("+", "-"), P(f)], check=True)
        for name in ("same", "same2"):
            eq(read(P(name)), data, name)
        eq(read(P("differs"))[5 * PAGE + 7], ord("!"), "differs keeps its byte")
        print("ok")
        "#,
    );
    assert!(out.contains("ok"), "{out}");
    // The equal files share all their pages with the source.
    let (total, exclusive, _) = du(&m.p("same"));
    assert_eq!((total, exclusive), (9 * 4096, 0), "same: every page shared");
    let (_, exclusive, shared) = du(&m.p("differs"));
    assert_eq!(
        (exclusive, shared),
        (8 * 4096, 4096),
        "differs: one page shared by the shortened call"
    );
    m.finish();
}

/// Needs the named tool, saying how to get it.
fn need(tool: &str, package: &str) {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        found,
        "this test needs {tool}: apt-get install -y {package}"
    );
}

#[test]
fn xfs_io_dedupe_shares_equal_data_and_says_differs_otherwise() {
    need("xfs_io", "xfsprogs");
    let m = Mount::new("dedupe-xfs-io", "128M", "");
    sh(&format!(
        "head -c 3M /dev/urandom > {a} && cp --reflink=never {a} {b} && cp --reflink=never {a} {c} \
         && printf Z | dd of={c} bs=1 seek=1000000 conv=notrunc status=none",
        a = m.p("a").display(),
        b = m.p("b").display(),
        c = m.p("c").display()
    ));
    let io = |dst: &str| {
        let mut c = Command::new("xfs_io");
        c.env("LD_PRELOAD", preload_library())
            .arg("-c")
            .arg(format!("dedupe {} 0 0 3145728", m.p("a").display()))
            .arg(m.p(dst));
        both(&run_captured(c, LIMIT))
    };
    let same = io("b");
    assert!(same.contains("deduped 3145728/3145728 bytes"), "{same}");
    let differs = io("c");
    assert!(differs.contains("did not match"), "{differs}");
    assert_eq!(du(&m.p("b")), (3 << 20, 0, 3 << 20), "b shares a's pages");
    assert_eq!(du(&m.p("c")), (3 << 20, 3 << 20, 0), "c keeps its own");
    m.finish();
}

#[test]
fn jdupes_dedupes_a_tree_and_every_file_keeps_its_bytes() {
    need("jdupes", "jdupes");
    let m = Mount::new_shm("dedupe-jdupes", "256M", "");
    let tree = m.p("tree");
    sh(&format!(
        "mkdir -p {t}/sub && head -c 8M /dev/urandom > {t}/f0 \
         && for i in 1 2 3 4 5 6; do cp --reflink=never {t}/f0 {t}/f$i; done \
         && for i in 7 8 9; do cp --reflink=never {t}/f0 {t}/sub/f$i; done \
         && cp --reflink=never {t}/f0 {t}/g && printf Q | dd of={t}/g bs=1 seek=4444444 conv=notrunc status=none \
         && cd {t} && find . -type f | sort | xargs sha256sum > ../sums",
        t = tree.display()
    ));
    let used = || df_used(m.path());
    let before = used();
    let mut c = Command::new("jdupes");
    c.env("LD_PRELOAD", preload_library()).arg("-rB").arg(&tree);
    let o = run_captured(c, LIMIT);
    assert!(o.status.success(), "jdupes -rB: {}", both(&o));
    let after = used();
    let dup = 9 * (8u64 << 20);
    assert!(
        before - after >= dup * 99 / 100,
        "jdupes -rB freed {} of {dup} duplicate bytes ({})",
        before - after,
        both(&o)
    );
    sh(&format!(
        "cd {} && sha256sum -c --quiet ../sums",
        tree.display()
    ));
    let (_, exclusive, _) = du(&tree.join("g"));
    assert_eq!(exclusive, 8 << 20, "the differing file keeps its own pages");
    m.finish();
}

#[test]
fn pmemfs_dedupe_shares_the_equal_pages_of_a_tree() {
    let m = Mount::new_shm("dedupe-tool", "256M", "");
    let t = m.p("tree");
    sh(&format!(
        "mkdir -p {t}/sub/deeper && head -c 4M /dev/urandom > {t}/f0 \
         && for p in f1 f2 sub/f3 sub/deeper/f4; do cp --reflink=never {t}/f0 {t}/$p; done \
         && ln {t}/f1 {t}/f1-link \
         && cp --reflink=never {t}/f0 {t}/g && printf Q | dd of={t}/g bs=1 seek=100000 conv=notrunc status=none \
         && head -c 2M {t}/f0 > {t}/half && head -c 1M /dev/urandom >> {t}/half \
         && truncate -s 64M {t}/sparse && dd if={t}/f0 of={t}/sparse bs=1M count=1 seek=40 conv=notrunc status=none \
         && cd {t} && find . -type f | sort | xargs sha256sum > ../sums",
        t = t.display()
    ));
    let used = || df_used(m.path());
    let dedupe = |args: &[&str]| {
        let mut c = tool("pmemfs");
        c.arg("dedupe").args(args).arg(&t);
        let o = run_captured(c, LIMIT);
        assert!(o.status.success(), "pmemfs dedupe {args:?}: {}", both(&o));
        stdout(&o)
    };
    let before = used();
    let dry = dedupe(&["-r", "-n"]);
    assert!(
        dry.contains("would free") && dry.contains("nothing changed"),
        "{dry}"
    );
    assert_eq!(used(), before, "-n changed nothing");
    assert_eq!(du(&t.join("f1")).1, 4 << 20, "-n: f1 still its own");
    // Without -r only the top directory's files: f1, f2, g, half, sparse
    // against f0; the copies below stay.
    let top = dedupe(&[]);
    assert!(top.contains("freed"), "{top}");
    assert_eq!(du(&t.join("sub/f3")).1, 4 << 20, "no -r: sub/f3 untouched");
    assert_eq!(du(&t.join("f2")).1, 0, "f2 shares all its pages");
    let all = dedupe(&["-r"]);
    assert!(all.contains("freed"), "{all}");
    // Every copy shares all its pages; g all but the page it differs in;
    // half its first 2 MiB; sparse its 1 MiB of data, its holes stay holes.
    for f in ["f1", "f2", "sub/f3", "sub/deeper/f4"] {
        assert_eq!(du(&t.join(f)), (4 << 20, 0, 4 << 20), "{f}");
    }
    assert_eq!(du(&t.join("g")).1, 4096, "g keeps the page it differs in");
    assert_eq!(
        du(&t.join("half")).1,
        1 << 20,
        "half keeps its own last 1 MiB"
    );
    assert_eq!(
        du(&t.join("sparse")),
        (1 << 20, 0, 1 << 20),
        "sparse: its data shared, holes free"
    );
    let freed = before - used();
    let dup = (4 + 1) * (4u64 << 20) - 4096 + (2 << 20) + (1 << 20);
    assert!(
        freed >= dup * 99 / 100,
        "freed {freed} of {dup} duplicate bytes: {all}"
    );
    sh(&format!(
        "cd {} && sha256sum -c --quiet ../sums",
        t.display()
    ));
    let again = dedupe(&["-r"]);
    assert!(
        again.contains(" 0 duplicate pages"),
        "a second run finds nothing: {again}"
    );
    m.finish();
}

#[test]
fn pmemfs_dedupe_refuses_what_is_not_pmemfs() {
    let dir = TempDir::new("dedupe-elsewhere");
    std::fs::write(dir.join("a"), b"x").unwrap();
    let mut c = tool("pmemfs");
    c.arg("dedupe").arg(dir.join("a"));
    let o = run_captured(c, LIMIT);
    assert_eq!(code(&o), 1, "{}", both(&o));
    assert!(both(&o).contains("not on a pmemfs mount"), "{}", both(&o));
    let mut c = tool("pmemfs");
    c.arg("dedupe");
    let o = run_captured(c, LIMIT);
    assert_eq!(code(&o), 2, "no path is a usage error: {}", both(&o));
}

/// `pmemfs stat`'s dedupe line.
fn dedupe_line(m: &Mount) -> String {
    let mut c = tool("pmemfs");
    c.arg("stat").arg(m.path());
    let out = stdout(&run_captured(c, LIMIT));
    out.lines()
        .find(|l| l.trim_start().starts_with("dedupe"))
        .unwrap_or("")
        .to_string()
}

/// The number before `word` in `line`.
fn count_before(line: &str, word: &str) -> u64 {
    let words: Vec<&str> = line.split_whitespace().collect();
    words
        .windows(2)
        .find(|w| w[1].trim_end_matches([',', ';']) == word)
        .and_then(|w| w[0].parse().ok())
        .unwrap_or_else(|| panic!("no count before {word:?} in {line:?}"))
}

#[test]
fn online_dedupe_merges_copies_and_never_pages_that_differ() {
    // A faster rate than the default, to keep the test short.
    let m = Mount::new_shm("dedupe-online", "256M", "dedupe=online,dedupe_pages=2000");
    let t = m.path();
    sh(&format!(
        "head -c 8M /dev/urandom > {t}/a && cp --reflink=never {t}/a {t}/b \
         && cp --reflink=never {t}/a {t}/c && printf Q | dd of={t}/c bs=1 seek=3000000 conv=notrunc status=none \
         && sha256sum {t}/a {t}/b {t}/c > {t}/../sums",
        t = t.display()
    ));
    let pages = (8u64 << 20) / 4096;
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    let mut line = dedupe_line(&m);
    // b's pages and all but one of c's.
    while count_before(&line, "merged") < 2 * pages - 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "not merged within 60 s: {line}"
        );
        std::thread::sleep(Duration::from_millis(200));
        line = dedupe_line(&m);
    }
    assert!(line.contains("online"), "{line}");
    // As KSM's pages_shared: a's pages, each with b's and c's merged in.
    assert_eq!(count_before(&line, "shared"), pages, "{line}");
    assert_eq!(du(&m.p("b")), (8 << 20, 0, 8 << 20), "b: {line}");
    assert_eq!(
        du(&m.p("c")).1,
        4096,
        "c keeps the page it differs in: {line}"
    );
    sh(&format!("sha256sum -c --quiet {}/../sums", t.display()));
    // A write into a merged page copies it: the others keep their bytes.
    py(
        t,
        r#"
        with open(P("b"), "r+b") as f:
            f.seek(4096 * 7 + 5)
            f.write(b"changed")
        a, b = read(P("a")), read(P("b"))
        eq(b[4096 * 7 + 5 : 4096 * 7 + 12], b"changed", "b")
        eq(a[: 4096 * 7 + 5] + a[4096 * 7 + 12 :], b[: 4096 * 7 + 5] + b[4096 * 7 + 12 :], "the rest")
        "#,
    );
    // a and c as they were.
    sh(&format!(
        "grep -v '/b$' {}/../sums | sha256sum -c --quiet",
        t.display()
    ));
    m.finish();
}

#[test]
fn without_the_option_nothing_is_merged() {
    let m = Mount::new_shm("dedupe-off", "64M", "");
    let t = m.path();
    sh(&format!(
        "head -c 1M /dev/urandom > {t}/a && cp --reflink=never {t}/a {t}/b",
        t = t.display()
    ));
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        dedupe_line(&m).contains("online off"),
        "{}",
        dedupe_line(&m)
    );
    assert_eq!(du(&m.p("b")), (1 << 20, 1 << 20, 0));
    m.finish();
}
