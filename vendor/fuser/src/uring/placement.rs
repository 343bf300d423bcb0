//! Where a caller runs after its reply: keeping it on the CPU it asked
//! from, by running the ring threads under SCHED_IDLE while that costs
//! nobody anything.
//!
//! Why: a ring thread commits a reply from the caller's CPU, and the
//! caller wakes while the ring thread is still running there. The
//! scheduler then sees that CPU busy and moves the caller to an idle one,
//! and waking a halted CPU is the expensive part of a round trip on a
//! virtual machine (measured here: a GETXATTR round trip of 47-65 us so,
//! 9-11 us when the caller stays). A CPU running only SCHED_IDLE threads
//! counts as idle for that choice, so the caller stays, preempts the ring
//! thread (which was about to sleep anyway) and runs at once.
//!
//! The price of SCHED_IDLE is starvation when other work wants the same
//! CPU: a SCHED_IDLE thread gets a tiny share, and every caller waiting
//! on it would wait too. So a governor watches each ring thread's
//! run-queue delay (/proc/self/task/TID/schedstat) every few milliseconds
//! while requests come, puts a thread that waited back to SCHED_OTHER for
//! a while, and puts all of them back to SCHED_OTHER before it rests.
//! Where the process may not leave SCHED_IDLE again (an unprivileged
//! daemon with RLIMIT_NICE 0), the threads stay SCHED_OTHER.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;
use std::time::Duration;
use std::time::Instant;

use log::debug;
use parking_lot::Condvar;
use parking_lot::Mutex;

/// How often the governor looks while requests come.
const TICK: Duration = Duration::from_millis(5);
/// Run-queue delay in one tick that may be contention...
const CONTENDED: Duration = Duration::from_millis(1);
/// ...when a thread also waited this long on average each time it ran.
/// A ring thread that woke its caller is preempted by it before it
/// sleeps again and waits for the caller's next request: a wait as long
/// as the caller's think time, microseconds while a tree is copied, that
/// adds up to more than `CONTENDED` in a busy tick and costs nobody
/// anything. A thread starved by other work waits a time slice of theirs,
/// milliseconds, each time.
const CONTENDED_PER_RUN: Duration = Duration::from_micros(200);
/// How long a thread that waited stays SCHED_OTHER before trying again.
const BACKOFF: Duration = Duration::from_secs(1);
/// Ticks without a request before the governor rests.
const QUIET_TICKS: u32 = 100;

/// Shared between the ring threads and the governor.
#[derive(Debug, Default)]
pub(crate) struct Placement {
    tids: Mutex<Vec<i32>>,
    requests: AtomicU64,
    resting: AtomicBool,
    stop: AtomicBool,
    lock: Mutex<()>,
    wake: Condvar,
}

impl Placement {
    /// A ring thread says who it is.
    pub(crate) fn register(&self) {
        // SAFETY: gettid has no preconditions.
        let tid = unsafe { libc::gettid() };
        self.tids.lock().push(tid);
    }

    /// A ring thread served requests.
    pub(crate) fn active(&self) {
        self.requests.fetch_add(1, Ordering::SeqCst);
        if self.resting.load(Ordering::SeqCst) {
            let _g = self.lock.lock();
            self.wake.notify_one();
        }
    }

    pub(crate) fn stop(&self) {
        self.stop.store(true, Ordering::SeqCst);
        let _g = self.lock.lock();
        self.wake.notify_one();
    }
}

fn set_policy(tid: i32, idle: bool) -> bool {
    let param = libc::sched_param { sched_priority: 0 };
    let policy = if idle {
        libc::SCHED_IDLE
    } else {
        libc::SCHED_OTHER
    };
    // SAFETY: a valid sched_param for a thread of this process.
    unsafe { libc::sched_setscheduler(tid, policy, &param) == 0 }
}

/// What `tid` has spent waiting on a run queue: nanoseconds, and the
/// number of times it ran.
fn run_delay(tid: i32) -> Option<Waits> {
    let s = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let mut f = s.split_whitespace().skip(1);
    Some(Waits {
        delay: f.next()?.parse().ok()?,
        runs: f.next()?.parse().ok()?,
    })
}

#[derive(Debug, Clone, Copy)]
struct Waits {
    delay: u64,
    runs: u64,
}

impl Waits {
    /// Whether the waits since `before` look like other work holding the
    /// CPU (see [`CONTENDED_PER_RUN`]).
    fn contended_since(&self, before: Waits) -> bool {
        let delay = self.delay.saturating_sub(before.delay);
        let runs = self.runs.saturating_sub(before.runs).max(1);
        delay > CONTENDED.as_nanos() as u64 && delay / runs > CONTENDED_PER_RUN.as_nanos() as u64
    }
}

#[derive(Debug, Clone, Copy)]
enum Mode {
    Idle { waits: Waits },
    Other { since: Instant },
}

/// Starts the governor. It first tries the round trip to SCHED_IDLE and
/// back on itself, and ends at once (leaving the ring threads SCHED_OTHER)
/// where the process may not leave SCHED_IDLE.
pub(crate) fn govern(p: Arc<Placement>) -> std::io::Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name("fuser-placement".into())
        .spawn(move || {
            // SAFETY: gettid has no preconditions.
            let me = unsafe { libc::gettid() };
            if !set_policy(me, true) || !set_policy(me, false) {
                debug!("ring threads stay SCHED_OTHER: this process may not leave SCHED_IDLE");
                return;
            }
            run(&p)
        })
}

fn run(p: &Placement) {
    let mut modes: Vec<(i32, Mode)> = Vec::new();
    let mut seen = p.requests.load(Ordering::Relaxed);
    let mut quiet = 0u32;
    let long_ago = Instant::now()
        .checked_sub(BACKOFF)
        .unwrap_or_else(Instant::now);
    loop {
        {
            let mut g = p.lock.lock();
            if p.stop.load(Ordering::SeqCst) {
                return;
            }
            if quiet >= QUIET_TICKS {
                // Rest: nothing is served, and a thread left SCHED_IDLE
                // might starve before it could wake the governor.
                for (tid, mode) in &mut modes {
                    set_policy(*tid, false);
                    *mode = Mode::Other { since: long_ago };
                }
                p.resting.store(true, Ordering::SeqCst);
                while p.requests.load(Ordering::SeqCst) == seen && !p.stop.load(Ordering::SeqCst) {
                    p.wake.wait(&mut g);
                }
                p.resting.store(false, Ordering::SeqCst);
                quiet = 0;
                continue;
            }
            p.wake.wait_for(&mut g, TICK);
        }
        let now = p.requests.load(Ordering::Relaxed);
        quiet = if now == seen { quiet + 1 } else { 0 };
        seen = now;
        for &tid in p.tids.lock().iter() {
            if !modes.iter().any(|(t, _)| *t == tid) {
                modes.push((tid, Mode::Other { since: long_ago }));
            }
        }
        for (tid, mode) in &mut modes {
            let Some(waits) = run_delay(*tid) else {
                continue;
            };
            *mode = match *mode {
                Mode::Idle { waits: before } if waits.contended_since(before) => {
                    set_policy(*tid, false);
                    Mode::Other {
                        since: Instant::now(),
                    }
                }
                Mode::Idle { .. } => Mode::Idle { waits },
                Mode::Other { since } if since.elapsed() >= BACKOFF && set_policy(*tid, true) => {
                    Mode::Idle { waits }
                }
                m => m,
            };
        }
    }
}
