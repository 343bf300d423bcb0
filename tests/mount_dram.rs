//! The DRAM cache through a real mount (issue 4): with two emulated NUMA
//! nodes and `dram_cache=64M`, pages read a second time get DRAM copies
//! that later reads hit, the stats ioctl (`pmemfs stat`) shows them, and an
//! overwrite drops them before the new bytes are read.
//!
//! Reads use O_DIRECT: the kernel's page cache would otherwise answer every
//! read after the first, and the daemon would see each page once.

mod util;

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use pmemfs_fs::ioctl::Stats;
use pmemfs_tools::control;
use util::*;

const PAGE: usize = 4096;
const LEN: usize = 1 << 20;

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(13).wrapping_add(seed) ^ (i >> 12) as u8)
        .collect()
}

fn open_direct(path: &Path) -> File {
    File::options()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .unwrap_or_else(|e| panic!("open {} with O_DIRECT: {e}", path.display()))
}

/// The whole of `f` (LEN bytes) in 128 KiB O_DIRECT reads, each one a
/// request to the daemon.
fn read_direct(f: &File) -> Vec<u8> {
    // O_DIRECT wants an aligned buffer.
    let mut buf = vec![0u8; LEN + PAGE];
    let at = buf.as_ptr().align_offset(PAGE);
    let b = &mut buf[at..at + LEN];
    let mut done = 0;
    while done < LEN {
        let end = (done + (128 << 10)).min(LEN);
        let n = f
            .read_at(&mut b[done..end], done as u64)
            .expect("O_DIRECT read");
        assert!(n > 0, "file ends early at {done}");
        done += n;
    }
    b.to_vec()
}

/// Waits up to 5 s for `cond`.
fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: not after 5 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn stats(m: &Mount) -> Stats {
    control::stats(m.path()).expect("stats ioctl")
}

#[test]
fn dram_copies_serve_reads_and_writes_drop_them() {
    let m = Mount::new("dram", "256M", "numa_nodes=2,dram_cache=64M,threads=4");
    let path = m.p("f");
    let a = pattern(LEN, 1);
    std::fs::write(&path, &a).expect("write f");
    let s = stats(&m).cache;
    assert_eq!((s.numa_nodes, s.dram_budget), (2, 64 << 20), "{s:?}");
    assert_eq!(s.dram_copies, 0, "written, never read: {s:?}");

    // Kept open, so that its DAX space stays for the stats.
    let f = open_direct(&path);
    let pages = (LEN / PAGE) as u64;
    assert_eq!(read_direct(&f), a, "first read");
    let s1 = stats(&m).cache;
    assert_eq!(s1.dram_copies, 0, "one read: not hot yet: {s1:?}");
    assert!(s1.dram_misses >= pages, "{s1:?}");
    assert!(s1.inodes >= 1 && s1.dax_pages >= pages, "{s1:?}");
    assert!(s1.dax_entries >= 1 && s1.xa_bytes > 0, "{s1:?}");
    // The second read copies every page on its reader's node; by the
    // fourth each page has been read twice on one of the two nodes.
    for i in 2..=4 {
        assert_eq!(read_direct(&f), a, "read {i}");
    }
    let s2 = stats(&m).cache;
    assert!(
        (pages..=2 * pages).contains(&s2.dram_copies),
        "each page copied on one node or both: {s2:?}"
    );
    assert_eq!(s2.dram_bytes, s2.dram_copies * PAGE as u64);
    assert!(s2.dram_hits >= pages, "{s2:?}");
    assert_eq!(s2.dram_refused, 0, "{s2:?}");

    // `pmemfs stat` shows them.
    let mut c = tool("pmemfs");
    c.arg("stat").arg(m.path());
    let o = run(c);
    assert_eq!(code(&o), 0, "pmemfs stat: {}", both(&o));
    let out = stdout(&o);
    assert!(
        out.contains(&format!("DRAM cache {} copies", s2.dram_copies))
            && out.contains("on 2 NUMA nodes")
            && out.contains("DAX "),
        "pmemfs stat printed:\n{out}"
    );

    // Overwrite in place: every copy goes before the write returns.
    let b = pattern(LEN, 2);
    let w = File::options().write(true).open(&path).expect("open");
    w.write_all_at(&b, 0).expect("overwrite");
    drop(w);
    let s3 = stats(&m).cache;
    assert_eq!(
        (s3.dram_copies, s3.dram_bytes),
        (0, 0),
        "after overwrite: {s3:?}"
    );
    assert_eq!(read_direct(&f), b, "new contents");
    assert_eq!(read_direct(&f), b, "new contents, again");
    assert!(
        stats(&m).cache.dram_copies >= pages,
        "rewritten pages are hot"
    );

    // Replace it (truncate, then write: pages unmapped, fresh ones mapped).
    let c2 = pattern(LEN, 3);
    std::fs::write(&path, &c2).expect("rewrite f");
    assert_eq!(stats(&m).cache.dram_copies, 0, "after truncate and write");
    for _ in 0..3 {
        assert_eq!(read_direct(&f), c2, "contents after rewrite");
    }
    assert_eq!(
        std::fs::read(&path).expect("read"),
        c2,
        "through the page cache"
    );
    // The kernel sends the release after close returns: give it a moment.
    drop(f);
    eventually("the last close drops the DAX space", || {
        stats(&m).cache.inodes == 0
    });
    std::fs::remove_file(&path).expect("rm");
    eventually("a deleted file's copies go", || {
        stats(&m).cache.dram_copies == 0
    });
    m.finish();
}
