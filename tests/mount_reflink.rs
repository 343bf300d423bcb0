//! cp --reflink through a real mount: clones share pages, writes copy them
//! first, and the preload library makes `cp --reflink=always` work.

mod util;

use std::path::Path;
use std::process::Command;

use util::*;

fn sha256(file: &Path) -> String {
    let o = Command::new("sha256sum")
        .arg(file)
        .output()
        .expect("sha256sum");
    String::from_utf8_lossy(&o.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// Free bytes as df sees them.
fn df_free(dir: &Path) -> u64 {
    let o = Command::new("df")
        .args(["-B1", "--output=avail"])
        .arg(dir)
        .output()
        .expect("df");
    String::from_utf8_lossy(&o.stdout)
        .lines()
        .nth(1)
        .unwrap_or("0")
        .trim()
        .parse()
        .expect("df number")
}

const GIB: u64 = 1 << 30;

#[test]
fn a_one_gib_clone_shares_every_page_and_copies_on_write() {
    let m = Mount::new("reflink1g", "3G", "");
    let (src, copy) = (m.p("src"), m.p("copy"));
    sh(&format!(
        "dd if=/dev/urandom of={} bs=1M count=1024 status=none",
        src.display()
    ));
    let want = sha256(&src);
    let free = df_free(m.path());
    sh(&format!(
        "cp --reflink=auto {} {}",
        src.display(),
        copy.display()
    ));
    assert_eq!(sha256(&copy), want, "contents equal");
    assert_eq!(du(&src), (GIB, 0, GIB), "the source is all shared");
    assert_eq!(du(&copy), (GIB, 0, GIB), "the copy is all shared");
    let after = df_free(m.path());
    assert!(
        free.abs_diff(after) <= 1 << 20,
        "df's free space moved by {} bytes",
        free.abs_diff(after)
    );

    // One byte into the copy: one page of each becomes exclusive. The byte
    // written is the complement of the source's, so the copy must differ
    // (a fixed byte equals the random one there once in 256 runs).
    const AT: u64 = 123_456_789;
    let byte_at = |f: &Path| {
        use std::os::unix::fs::FileExt;
        let mut b = [0u8];
        std::fs::File::open(f)
            .unwrap()
            .read_exact_at(&mut b, AT)
            .unwrap();
        b[0]
    };
    let old = byte_at(&src);
    {
        use std::os::unix::fs::FileExt;
        let f = std::fs::OpenOptions::new().write(true).open(&copy).unwrap();
        f.write_all_at(&[!old], AT).unwrap();
    }
    assert_eq!(byte_at(&copy), !old, "the copy reads the byte written");
    assert_eq!(byte_at(&src), old, "the source keeps its byte");
    assert_eq!(sha256(&src), want, "the source never changes");
    assert_ne!(sha256(&copy), want);
    assert_eq!(du(&src), (GIB, 4096, GIB - 4096));
    assert_eq!(du(&copy), (GIB, 4096, GIB - 4096));

    // The source goes: the copy keeps its pages, now all its own.
    let copy_sum = sha256(&copy);
    std::fs::remove_file(&src).unwrap();
    assert_eq!(sha256(&copy), copy_sum, "the copy is intact");
    assert_eq!(du(&copy), (GIB, GIB, 0), "and fully exclusive");
    m.finish(); // fsck -n clean after unmount
}

#[test]
fn unaligned_ranges_and_holes() {
    let m = Mount::new("reflinkrange", "256M", "");
    let out = py(
        m.path(),
        r#"
import os
os.chdir(M)
src = os.open("src", os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(src, pattern(3 * 4096 + 100, 7), 0)
os.pwrite(src, pattern(4096, 9), 10 * 4096)          # a hole at pages 4..9
dst = os.open("dst", os.O_RDWR | os.O_CREAT, 0o644)
os.pwrite(dst, b"\xee" * (20 * 4096), 0)
# Unaligned head and tail around shared whole pages.
n = os.copy_file_range(src, dst, 11 * 4096 - 50, 50, 4096 + 50)
assert n == 11 * 4096 - 50, n
data = os.pread(dst, 20 * 4096, 0)
want = bytearray(b"\xee" * (20 * 4096))
want[4096 + 50 : 4096 + 50 + n] = os.pread(src, n, 50)
assert data == bytes(want), "clone contents"
# Holes stay holes: the hole of the source reads as zeros in the copy.
assert os.pread(dst, 4096, 4096 + 5 * 4096) == b"\0" * 4096
# Offsets in different places within a page: bytes are copied, not shared.
n = os.copy_file_range(src, dst, 4096, 1, 7)
assert n == 4096 and os.pread(dst, 4096, 7) == os.pread(src, 4096, 1)
print("ok")
"#,
    );
    assert!(out.contains("ok"), "{out}");
    // Source pages 1-3 and 10 are whole inside the range and mapped (4-9
    // are the hole): exactly those four are shared, as dst pages 2-4, 11.
    let (_, _, shared) = du(&m.p("dst"));
    assert_eq!(shared, 4 * 4096, "whole pages are shared, holes stay holes");
    m.finish();
}

#[test]
fn preload_library_clones_on_pmemfs_and_changes_nothing_elsewhere() {
    let lib = preload_library();
    let m = Mount::new("preload", "256M", "");
    sh(&format!(
        "dd if=/dev/urandom of={} bs=1M count=8 status=none",
        m.p("a").display()
    ));
    // Without the library the kernel refuses FICLONE on FUSE.
    let plain = sh_output(&format!(
        "cp --reflink=always {} {}",
        m.p("a").display(),
        m.p("b").display()
    ));
    assert!(
        !plain.status.success(),
        "cp --reflink=always cannot work on FUSE without help"
    );
    let o = Command::new("cp")
        .env("LD_PRELOAD", &lib)
        .arg("--reflink=always")
        .arg(m.p("a"))
        .arg(m.p("c"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "cp with the preload library: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert_eq!(sha256(&m.p("a")), sha256(&m.p("c")));
    assert_eq!(du(&m.p("c")), (8 << 20, 0, 8 << 20), "a clone, not a copy");

    // fallocate(FALLOC_FL_UNSHARE_RANGE): the kernel refuses it on FUSE;
    // through the library it unshares, and the contents stay.
    let unshare = |preload: bool| {
        let mut c = Command::new(python3());
        if preload {
            c.env("LD_PRELOAD", &lib);
        }
        let code = "import ctypes,os,sys\nlibc=ctypes.CDLL(None,use_errno=True)\nfd=os.open(sys.argv[1],os.O_RDWR)\nr=libc.fallocate(fd,0x40,ctypes.c_long(3*4096),ctypes.c_long(10*4096))\nprint(0 if r==0 else ctypes.get_errno())";
        let o = c.arg("-c").arg(code).arg(m.p("c")).output().unwrap();
        String::from_utf8_lossy(&o.stdout).trim().to_string()
    };
    assert_eq!(
        unshare(false),
        libc::EOPNOTSUPP.to_string(),
        "stock kernels refuse it"
    );
    assert_eq!(unshare(true), "0");
    assert_eq!(du(&m.p("c")), (8 << 20, 10 * 4096, (8 << 20) - 10 * 4096));
    assert_eq!(sha256(&m.p("a")), sha256(&m.p("c")));
    m.finish();

    // Outside any pmemfs mount the library changes nothing: the same
    // outcome, the same message, with and without it.
    let t = TempDir::new("preload-outside");
    std::fs::write(t.join("x"), b"hello").unwrap();
    let run_cp = |preload: bool, dst: &str| {
        let mut c = Command::new("cp");
        if preload {
            c.env("LD_PRELOAD", &lib);
        }
        let o = c
            .arg("--reflink=always")
            .arg(t.join("x"))
            .arg(t.join(dst))
            .output()
            .unwrap();
        (
            o.status.code(),
            String::from_utf8_lossy(&o.stderr).replace(dst, "DST"),
        )
    };
    assert_eq!(run_cp(true, "y1"), run_cp(false, "y2"));
    let ok = |preload: bool| {
        let mut c = Command::new("cp");
        if preload {
            c.env("LD_PRELOAD", &lib);
        }
        c.arg(t.join("x"))
            .arg(t.join("z"))
            .status()
            .unwrap()
            .success()
    };
    assert!(ok(true) && ok(false), "plain copies pass through");
}
