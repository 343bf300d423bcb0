//! Faults through a real mount: the daemon killed with SIGKILL in the middle
//! of a workload of writes, renames, clones and copy-on-write writes (fsck
//! then checks share counts against references), and of three writers at
//! once (in place, appends, clones with copy on write), and a device that
//! fills up.

mod util;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use util::*;

/// Waits for the image lock to go: the daemon has let the image go.
fn wait_released(image: &Path) {
    assert!(
        wait_image_released(image, Duration::from_secs(20)),
        "the daemon kept the image locked"
    );
}

fn mkfs(image: &Path, size: &str) {
    let mut c = tool("mkfs.pmemfs");
    c.args(["-q", "-s", size]).arg(image);
    assert_eq!(code(&run(c)), 0);
}

struct Setup {
    _tmp: TempDir,
    image: PathBuf,
    dir: PathBuf,
}

fn setup(tag: &str, size: &str) -> Setup {
    let tmp = TempDir::new(tag);
    let image = tmp.join("fs.img");
    let dir = tmp.join("mnt");
    std::fs::create_dir(&dir).unwrap();
    mkfs(&image, size);
    Setup {
        _tmp: tmp,
        image,
        dir,
    }
}

impl Drop for Setup {
    fn drop(&mut self) {
        if is_mount_point(&self.dir) {
            unmount(&self.dir);
        }
    }
}

/// Mounts, runs the Python `script` on directory `roundN` of the mount for
/// `ms` milliseconds, kills the daemon with SIGKILL and then the script
/// (whose children fail with the mount), and lets the image go. Returns
/// the directory and what the script printed.
fn killed_during(s: &Setup, round: u64, script: &str, ms: u64) -> (PathBuf, String) {
    let mut daemon = mount_foreground(&s.image, &s.dir);
    let sub = s.dir.join(format!("round{round}"));
    std::fs::create_dir(&sub).unwrap();
    let mut load = Command::new("python3")
        .args(["-c", script])
        .arg(&sub)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(ms));
    daemon.kill().unwrap(); // SIGKILL
    daemon.wait().unwrap();
    let _ = load.kill();
    let out = load.wait_with_output().unwrap();
    unmount(&s.dir);
    wait_released(&s.image);
    (sub, String::from_utf8_lossy(&out.stdout).to_string())
}

/// After a kill: the crashed image is consistent before any recovery
/// writes (fsck -n finds at most a torn journal tail), `check` runs on the
/// remounted file system, and fsck finds the image clean after unmount.
fn recovered(s: &Setup, round: u64, check: impl FnOnce()) {
    let (c, out) = fsck("-n", &s.image);
    assert!(
        c == 0 || (c == 4 && out.contains("[JN1]")),
        "round {round}: fsck -n after the kill:\n{out}"
    );
    let mut daemon = mount_foreground(&s.image, &s.dir);
    check();
    unmount(&s.dir);
    daemon.wait().unwrap();
    wait_released(&s.image);
    let (c, out) = fsck("-n", &s.image);
    assert_eq!(c, 0, "round {round}: fsck after remount:\n{out}");
}

/// Python workload: writes files of known content, fsyncs each, and prints
/// its name only once fsync returned.
const WORKLOAD: &str = r#"
import os, sys
d = sys.argv[1]
i = 0
while True:
    name = f"f{i:05d}"
    data = name.encode() * (1 + (i * 97) % 3000)
    fd = os.open(os.path.join(d, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    os.write(fd, data)
    os.write(fd, b"tail")
    os.fsync(fd)
    os.close(fd)
    if i % 3 == 0:
        os.rename(os.path.join(d, name), os.path.join(d, name + ".r"))
        name += ".r"
        os.fsync(os.open(d, os.O_RDONLY))
    print(name, flush=True)
    if i % 2 == 0:
        # A clone, then a copy-on-write write into it.
        p = os.path.join(d, name)
        src = os.open(p, os.O_RDONLY)
        c = os.open(p + ".c", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        n, done = os.fstat(src).st_size, 0
        while done < n:
            done += os.copy_file_range(src, c, n - done, done, done)
        os.pwrite(c, b"Z", 5)
        os.fsync(c)
        os.close(c)
        os.close(src)
        print(name + ".c", flush=True)
    i += 1
"#;

fn expected(name: &str) -> Vec<u8> {
    if let Some(orig) = name.strip_suffix(".c") {
        let mut v = expected(orig);
        v[5] = b'Z';
        return v;
    }
    let base = name.trim_end_matches(".r");
    let i: usize = base[1..].parse().unwrap();
    let mut v = base.as_bytes().repeat(1 + (i * 97) % 3000);
    v.extend_from_slice(b"tail");
    v
}

#[test]
fn kill_9_during_writes_loses_nothing_fsynced() {
    let s = setup("kill9", "256M");
    for round in 0..3u64 {
        let (sub, said) = killed_during(&s, round, WORKLOAD, 700 + round * 300);
        let synced: Vec<String> = said.lines().map(str::to_string).collect();
        assert!(
            synced.len() > 5,
            "round {round}: the workload made too little progress ({})",
            synced.len()
        );
        recovered(&s, round, || {
            for name in &synced {
                let got = std::fs::read(sub.join(name))
                    .unwrap_or_else(|e| panic!("round {round}: {name} lost: {e}"));
                assert!(
                    got == expected(name),
                    "round {round}: {name} has the wrong contents"
                );
            }
        });
    }
}

/// Three writers at once, each printing a write only once it returned:
/// `A U V` rewrote unit U (16 pages) of file a with byte V in place; `B N`
/// appended to file b, now N bytes of `pattern_b`; `C NAME` cloned a into
/// NAME and wrote a page of byte 255 at page 3 of it (copy on write).
const CONCURRENT: &str = r#"
import os, sys, random
d = sys.argv[1]
UNIT = 16 * 4096
def out(line):
    os.write(1, (line + "\n").encode())
a = os.open(os.path.join(d, "a"), os.O_RDWR | os.O_CREAT, 0o644)
for u in range(8):
    os.pwrite(a, bytes([1]) * UNIT, u * UNIT)
os.fsync(a)
for u in range(8):
    out(f"A {u} 1")
def in_place():
    rng = random.Random(1)
    while True:
        u, v = rng.randrange(8), rng.randrange(2, 250)
        os.pwrite(a, bytes([v]) * UNIT, u * UNIT)
        out(f"A {u} {v}")
def appends():
    fd = os.open(os.path.join(d, "b"), os.O_WRONLY | os.O_CREAT, 0o644)
    n = 0
    while True:
        chunk = bytes((n + i) * 7 % 251 for i in range(5000))
        os.write(fd, chunk)
        n += len(chunk)
        out(f"B {n}")
def clones():
    k = 0
    while True:
        name = os.path.join(d, f"c{k}")
        src = os.open(os.path.join(d, "a"), os.O_RDONLY)
        c = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644)
        os.copy_file_range(src, c, 8 * UNIT)
        os.pwrite(c, bytes([255]) * 4096, 3 * 4096)
        os.close(c)
        os.close(src)
        out(f"C c{k}")
        k += 1
for f in (in_place, appends, clones):
    if os.fork() == 0:
        f()
os.wait()
"#;

/// The bytes of file b's first `n` bytes, as CONCURRENT appends them.
fn pattern_b(n: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(n);
    while v.len() < n {
        let base = v.len();
        v.extend((0..5000).map(|i| ((base + i) * 7 % 251) as u8));
    }
    v.truncate(n);
    v
}

#[test]
fn kill_9_during_concurrent_writers_loses_nothing_answered() {
    let s = setup("kill9conc", "256M");
    for round in 0..3u64 {
        let (sub, said) = killed_during(&s, round, CONCURRENT, 800 + round * 300);
        let (mut units, mut b_len, mut clones) = ([0u8; 8], 0usize, Vec::new());
        let mut counts = [0usize; 3];
        for line in said.lines() {
            let w: Vec<&str> = line.split(' ').collect();
            match w.as_slice() {
                ["A", u, v] => {
                    units[u.parse::<usize>().unwrap()] = v.parse().unwrap();
                    counts[0] += 1;
                }
                ["B", n] => {
                    b_len = n.parse().unwrap();
                    counts[1] += 1;
                }
                ["C", name] => {
                    clones.push(name.to_string());
                    counts[2] += 1;
                }
                _ => {} // the last line, cut short by the kill
            }
        }
        eprintln!("round {round}: writes answered (a, b, clones): {counts:?}");
        assert!(
            counts.iter().all(|&c| c > 3),
            "round {round}: a writer made too little progress: {counts:?}"
        );
        recovered(&s, round, || {
            // a: every unit as last answered, but for at most one, which a
            // write in flight at the kill may have changed in part.
            let a = std::fs::read(sub.join("a")).unwrap();
            let unit = 16 * 4096;
            let changed: Vec<usize> = (0..8)
                .filter(|&u| a[u * unit..(u + 1) * unit].iter().any(|&x| x != units[u]))
                .collect();
            assert!(
                changed.len() <= 1,
                "round {round}: units {changed:?} of a differ from their answered writes"
            );
            // b: at least what was answered, every byte as appended.
            let b = std::fs::read(sub.join("b")).unwrap();
            assert!(
                b.len() >= b_len && b[..b_len] == pattern_b(b_len)[..],
                "round {round}: b has {} bytes, {b_len} answered, or wrong bytes",
                b.len()
            );
            // Each clone answered: a's 128 pages whole (a unit of one byte
            // each) but page 3, its own.
            for name in &clones {
                let c = std::fs::read(sub.join(name)).unwrap();
                assert_eq!(c.len(), 8 * unit, "round {round}: {name}'s size");
                assert!(
                    c[3 * 4096..4 * 4096].iter().all(|&x| x == 255),
                    "round {round}: {name} lost its copy-on-write page"
                );
                for u in 1..8 {
                    let part = &c[u * unit..(u + 1) * unit];
                    assert!(
                        part.iter().all(|&x| x == part[0]),
                        "round {round}: {name} unit {u} is a mix"
                    );
                }
            }
        });
    }
}

#[test]
fn enospc_keeps_earlier_files_and_space_comes_back() {
    let s = setup("enospc", "32M");
    let mut daemon = mount_foreground(&s.image, &s.dir);
    let keep = s.dir.join("keep");
    let data: Vec<u8> = (0..3 << 20).map(|i: u32| (i * 7 % 251) as u8).collect();
    std::fs::write(&keep, &data).unwrap();
    // Fill the device.
    let mut failed = None;
    for i in 0..100 {
        let out = Command::new("dd")
            .args([
                "if=/dev/zero",
                &format!("of={}", s.dir.join(format!("fill{i}")).display()),
                "bs=1M",
                "count=4",
                "conv=fsync",
                "status=none",
            ])
            .output()
            .unwrap();
        if !out.status.success() {
            failed = Some(String::from_utf8_lossy(&out.stderr).into_owned());
            break;
        }
    }
    let msg = failed.expect("32 MiB filled without an error");
    assert!(msg.contains("No space left on device"), "dd said: {msg}");
    assert_eq!(std::fs::read(&keep).unwrap(), data, "earlier file intact");
    // Less than the 4 MiB that failed is left for data.
    let avail = available_blocks(&s.dir);
    assert!(avail < 1024, "available blocks when full: {avail}");
    // Deleting gives the space back, and it can be written again.
    for e in std::fs::read_dir(&s.dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name()
            .is_some_and(|n| n.to_string_lossy().starts_with("fill"))
        {
            std::fs::remove_file(p).unwrap();
        }
    }
    std::fs::write(s.dir.join("again"), vec![1u8; 8 << 20]).unwrap();
    assert_eq!(std::fs::read(&keep).unwrap(), data);
    unmount(&s.dir);
    daemon.wait().unwrap();
    wait_released(&s.image);
    let (c, out) = fsck("-n", &s.image);
    assert_eq!(c, 0, "{out}");
}

/// Blocks available to users, as statfs reports them.
fn available_blocks(dir: &Path) -> u64 {
    let out = Command::new("stat")
        .args(["-f", "-c", "%a"])
        .arg(dir)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}
