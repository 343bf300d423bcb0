//! FUSE over io_uring (vendor/fuser/src/uring.rs), through a mount: with
//! the kernel's `fuse.enable_uring` on, requests are served by the
//! per-CPU ring threads (each pinned to its CPU), not by the /dev/fuse
//! worker; large writes, reads, directory listings and xattrs come through
//! whole; an idle daemon sleeps; `-o nouring` serves through the device.
//!
//! The tests turn the kernel parameter on themselves (they run as root, as
//! the mount tests do) and fail, saying so, where it cannot be.

mod util;

use std::collections::BTreeMap;
use std::time::Duration;

use util::*;

const SIZE: &str = "256M";
const PARAM: &str = "/sys/module/fuse/parameters/enable_uring";

/// Turns on FUSE over io_uring in the kernel, or fails saying why not.
fn enable_uring() {
    let now = std::fs::read_to_string(PARAM).unwrap_or_else(|e| {
        panic!(
            "{PARAM}: {e}: this kernel's fuse module has no io_uring transport \
             (CONFIG_FUSE_IO_URING, Linux 6.14 and later); the io_uring tests need it"
        )
    });
    if now.trim() == "Y" {
        return;
    }
    std::fs::write(PARAM, "Y").unwrap_or_else(|e| {
        panic!("cannot turn on FUSE over io_uring ({PARAM}: {e}); the io_uring tests run as root")
    });
}

/// The daemon's threads: (name, /proc/PID/task/TID).
fn threads(daemon: &Proc) -> Vec<(String, std::path::PathBuf)> {
    std::fs::read_dir(format!("/proc/{}/task", daemon.pid))
        .expect("daemon's tasks")
        .flatten()
        .map(|t| {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            (comm.trim().to_string(), t.path())
        })
        .collect()
}

/// Voluntary context switches of the daemon's threads, summed by name
/// (`fuser-ring-0`, `fuser-0`, ...): a thread that serves a request and
/// waits for the next switches once per request.
fn switches(daemon: &Proc) -> BTreeMap<String, u64> {
    let mut by_name = BTreeMap::new();
    for (name, path) in threads(daemon) {
        let status = std::fs::read_to_string(path.join("status")).unwrap_or_default();
        let n = status
            .lines()
            .find_map(|l| l.strip_prefix("voluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse::<u64>().ok())
            .unwrap_or(0);
        *by_name.entry(name).or_insert(0) += n;
    }
    by_name
}

fn ring_total(s: &BTreeMap<String, u64>) -> u64 {
    s.iter()
        .filter(|(k, _)| k.starts_with("fuser-ring-"))
        .map(|(_, v)| v)
        .sum()
}

const REQUESTS: usize = 3000;

/// Many small requests: getxattr of a missing name is one round trip each.
const SMALL: &str = r#"
write(P("f"), b"x")
n = 0
for i in range(3000):
    try:
        os.getxattr(P("f"), "user.none")
    except OSError:
        n += 1
print(n)
"#;

#[test]
fn requests_are_served_by_the_ring_threads() {
    enable_uring();
    let m = Mount::new("uring-on", SIZE, "");
    let daemon = *m.daemon().first().expect("daemon");
    // The session starts its ring threads just after the mount is ready
    // (the kernel holds requests back until they register).
    let start = std::time::Instant::now();
    let before = loop {
        let s = switches(&daemon);
        if s.keys().any(|k| k.starts_with("fuser-ring-")) {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "no io_uring threads in the daemon: {s:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(py(m.path(), SMALL).trim(), REQUESTS.to_string());
    let after = switches(&daemon);
    let ring = ring_total(&after) - ring_total(&before);
    let dev =
        after.get("fuser-0").copied().unwrap_or(0) - before.get("fuser-0").copied().unwrap_or(0);
    assert!(
        ring as usize >= REQUESTS / 2,
        "{REQUESTS} requests, but the ring threads switched only {ring} times: {before:?} -> {after:?}"
    );
    assert!(
        (dev as usize) < REQUESTS / 10,
        "the /dev/fuse worker served requests ({dev} switches) while the ring was up"
    );
    // Each ring thread is pinned to the CPU whose queue it serves.
    for (name, path) in threads(&daemon) {
        if let Some(q) = name.strip_prefix("fuser-ring-") {
            let status = std::fs::read_to_string(path.join("status")).unwrap();
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .expect("Cpus_allowed_list")
                .trim()
                .to_string();
            assert_eq!(cpus, q, "ring thread {q} runs on CPUs {cpus}");
        }
    }
    m.finish();
}

#[test]
fn nouring_serves_through_the_device() {
    enable_uring();
    let m = Mount::new("uring-off", SIZE, "nouring");
    let daemon = *m.daemon().first().expect("daemon");
    assert_eq!(py(m.path(), SMALL).trim(), REQUESTS.to_string());
    let after = switches(&daemon);
    assert_eq!(
        ring_total(&after),
        0,
        "-o nouring, yet ring threads ran: {after:?}"
    );
    m.finish();
}

/// Requests and replies as large as the protocol makes them: 1 MiB
/// writes and reads, a directory listing of many pages, a 64 KiB xattr,
/// names of 255 bytes, and writes of every small size (the request's
/// payload then sits right after its per-op header).
const LARGE: &str = r#"
import hashlib
data = bytes((i * 7 + 3) % 251 for i in range(8 << 20))
fd = os.open(P("big"), os.O_CREAT | os.O_WRONLY, 0o644)
for off in range(0, len(data), 1 << 20):
    assert os.pwrite(fd, data[off:off + (1 << 20)], off) == 1 << 20
os.close(fd)
os.system("sync")
fd = os.open(P("big"), os.O_RDONLY)
got = b"".join(os.pread(fd, 1 << 20, off) for off in range(0, len(data), 1 << 20))
os.close(fd)
assert hashlib.sha256(got).digest() == hashlib.sha256(data).digest()
os.mkdir(P("d"))
names = set()
for i in range(2000):
    n = f"{i:04d}" + "n" * 251
    names.add(n)
    open(P("d/" + n), "w").close()
assert set(os.listdir(P("d"))) == names
v = bytes(range(256)) * 256
os.setxattr(P("big"), "user.big", v)
assert os.getxattr(P("big"), "user.big") == v
fd = os.open(P("small"), os.O_CREAT | os.O_RDWR, 0o644)
for n in range(1, 300):
    os.pwrite(fd, bytes([n % 256]) * n, 0)
    assert os.pread(fd, n, 0) == bytes([n % 256]) * n, n
os.close(fd)
print("ok")
"#;

#[test]
fn large_requests_and_replies_come_through_whole() {
    enable_uring();
    let m = Mount::new("uring-large", SIZE, "");
    assert_eq!(py(m.path(), LARGE).trim(), "ok");
    m.finish();
}

#[test]
fn an_idle_daemon_with_rings_sleeps() {
    enable_uring();
    let m = Mount::new("uring-idle", SIZE, "");
    let daemon = *m.daemon().first().expect("daemon");
    assert_eq!(py(m.path(), SMALL).trim(), REQUESTS.to_string());
    assert_idle(&daemon, "io_uring");
    m.finish();
}

/// Scheduling policy (field 41 of /proc/PID/task/TID/stat) of each ring
/// thread: 0 SCHED_OTHER, 5 SCHED_IDLE.
fn ring_policies(daemon: &Proc) -> Vec<u32> {
    policies_of(daemon, "fuser-ring-")
}

/// The policies of the daemon's threads whose names start with `prefix`.
fn policies_of(daemon: &Proc, prefix: &str) -> Vec<u32> {
    let mut out = Vec::new();
    for (name, path) in threads(daemon) {
        if !name.starts_with(prefix) {
            continue;
        }
        let stat = std::fs::read_to_string(path.join("stat")).unwrap_or_default();
        let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
        // After the name, field 41 is the 39th.
        if let Some(p) = rest.split_whitespace().nth(38).and_then(|p| p.parse().ok()) {
            out.push(p);
        }
    }
    out
}

/// The ring threads run SCHED_IDLE while requests come and nothing else
/// wants their CPUs (so that a caller stays on its CPU: see
/// vendor/fuser/src/uring/placement.rs), and SCHED_OTHER once requests
/// stop; with CPU hogs on the caller's CPU the requests are still served.
#[test]
fn ring_threads_idle_priority_only_while_serving() {
    enable_uring();
    let m = Mount::new("uring-sched", SIZE, "");
    let daemon = *m.daemon().first().expect("daemon");
    let mut busy = std::process::Command::new(python3())
        .arg("-c")
        .arg(format!(
            "import os, time\nend = time.time() + 3\np = {:?}\nopen(p, 'w').close()\n\
             while time.time() < end:\n    os.close(os.open(p, os.O_RDONLY))\n    sum(range(300))\n",
            m.p("f").display().to_string()
        ))
        .spawn()
        .expect("python3");
    // The caller computes a little after each close, as cp or tar does:
    // the ring thread woken for the RELEASE, which the kernel sends
    // without waiting, waits that long each time, which is no
    // contention, so the threads stay SCHED_IDLE throughout.
    let mut samples = Vec::new();
    for _ in 0..25 {
        std::thread::sleep(Duration::from_millis(100));
        samples.push(ring_policies(&daemon));
    }
    assert!(busy.wait().expect("python3").success());
    let idle = samples.iter().skip(1).filter(|p| p.contains(&5)).count();
    assert!(
        idle >= 12,
        "ring threads SCHED_IDLE in {idle} of 24 samples while requests came: {samples:?}"
    );
    std::thread::sleep(Duration::from_millis(1500));
    let after = ring_policies(&daemon);
    assert!(
        !after.is_empty() && after.iter().all(|&p| p == 0),
        "ring threads' policies a second after the last request: {after:?}"
    );
    // Two CPU hogs and the caller on one CPU: served all the same.
    let hogs: Vec<std::process::Child> = (0..2)
        .map(|_| {
            std::process::Command::new("taskset")
                .args(["-c", "0", "sh", "-c", "while :; do :; done"])
                .spawn()
                .expect("taskset (util-linux)")
        })
        .collect();
    // For two seconds at least, so that the governor sees the waits.
    let mut c = std::process::Command::new("taskset");
    c.args(["-c", "0"]).arg(python3()).arg("-c").arg(format!(
        "import os, time\np = {:?}\nn = 0\nend = time.time() + 2\nwhile n < 2000 or time.time() < end:\n    try: os.getxattr(p, 'user.none')\n    except OSError: n += 1\nprint(n >= 2000)\n",
        m.p("f").display().to_string()
    ));
    let sampler = std::thread::spawn(move || {
        let mut samples = Vec::new();
        for _ in 0..15 {
            std::thread::sleep(Duration::from_millis(100));
            samples.push(policies_of(&daemon, "fuser-ring-0"));
        }
        samples
    });
    let o = run_captured(c, Duration::from_secs(120));
    let samples = sampler.join().expect("sampler");
    for mut h in hogs {
        let _ = h.kill();
        let _ = h.wait();
    }
    assert_eq!(stdout(&o).trim(), "True", "beside CPU hogs: {}", both(&o));
    // The ring thread of CPU 0 waited behind the hogs: SCHED_OTHER then.
    assert!(
        samples.iter().any(|p| p == &[0]),
        "the ring thread of the hogs' CPU stayed SCHED_IDLE beside them: {samples:?}"
    );
    m.finish();
}
