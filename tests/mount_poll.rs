//! Adaptive polling of /dev/fuse (fs/src/poll.rs), through a mount: a
//! burst of requests is served (by the polling worker), and once requests
//! stop the daemon goes back to sleep instead of spinning; `nopoll` and
//! `poll=USECS` mount and serve the same; a window out of range is refused.
//! The mounts are `nouring`: requests through io_uring queues need no
//! polling (tests/mount_uring.rs).

mod util;

use std::time::Duration;

use util::*;

const SIZE: &str = "64M";

const BURST: &str = r#"
for i in range(2000):
    write(P(f"f{i}"), b"x" * (i % 5000))
for i in range(2000):
    assert read(P(f"f{i}")) == b"x" * (i % 5000), i
for i in range(2000):
    os.unlink(P(f"f{i}"))
print(len(os.listdir(P(""))))
"#;

/// Serves a burst, then checks that the daemon, left alone, uses almost no
/// CPU: a worker that kept polling would use all of one.
fn served_then_idle(opts: &str) {
    // The poller serves /dev/fuse; with FUSE over io_uring it is off.
    let all = ["nouring", opts].join(",");
    let m = Mount::new(&format!("poll-{opts}"), SIZE, all.trim_end_matches(','));
    let daemon = *m.daemon().first().expect("daemon");
    assert_eq!(py(m.path(), BURST).trim(), "1", "only lost+found is left");
    // The longest window a mount may ask for is 0.1 s.
    assert_idle(&daemon, &format!("-o {opts} (did it keep polling?)"));
    m.finish();
}

#[test]
fn a_burst_is_served_and_an_idle_daemon_sleeps() {
    served_then_idle("");
}

#[test]
fn the_longest_window_also_ends() {
    served_then_idle("poll=100000");
}

#[test]
fn nopoll_and_many_threads_serve_the_same() {
    served_then_idle("nopoll,threads=4");
    served_then_idle("poll=50,threads=3");
}

#[test]
fn a_window_out_of_range_is_refused() {
    let dir = TempDir::new("poll-range");
    let image = dir.join("img");
    let mnt = dir.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    format_image(&image, 64 << 20);
    for bad in ["poll=100001", "poll=x", "poll"] {
        let mut c = tool("pmemfs-mount");
        c.args(["-o", bad]).arg(&image).arg(&mnt);
        let o = run_captured(c, Duration::from_secs(30));
        assert_ne!(code(&o), 0, "-o {bad} mounted");
        assert!(both(&o).contains("poll"), "-o {bad}: {}", both(&o));
        assert!(!is_mount_point(&mnt), "-o {bad} left a mount");
    }
}
