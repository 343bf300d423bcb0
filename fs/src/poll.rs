//! Adaptive polling of `/dev/fuse`: while requests come in quick
//! succession, one worker reads the device without sleeping, so that the
//! next request finds it running.
//!
//! Why: a FUSE round trip is two wake-ups, the daemon's when the request
//! is queued and the caller's when the reply is written. A wake-up of a
//! thread whose CPU went idle costs an interrupt to that CPU, and on a
//! virtual machine the halt and the interrupt are each an exit to the
//! hypervisor: measured here, 10 to 15 us of a 25 us GETXATTR. A worker
//! that keeps reading (the device is non-blocking then, and fuser's read
//! loop retries EAGAIN at once) takes the request without a wake-up. It
//! costs a CPU while a burst lasts and for [`Poller`]'s window after the
//! last request; after that the device is blocking again and an idle
//! mount costs nothing.
//!
//! The mode is one flag on the device's open file description, so only
//! the worker reading that description polls; workers on cloned
//! descriptions sleep in read as before. A governor thread ends the mode
//! when a window passes without a request; the next request starts it
//! again (one `fcntl`).

use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::time::Duration;

/// The polling state of a mount. Requests call [`Poller::busy`]; the
/// session attaches the device with [`Poller::attach`].
#[derive(Debug)]
pub struct Poller {
    window: Duration,
    /// Requests seen: the governor compares it across a window.
    requests: AtomicU64,
    /// The device is non-blocking (a worker polls).
    polling: AtomicBool,
    /// Stopped for good: the session ends, or requests come through
    /// io_uring queues, where nothing is gained by polling the device.
    off: AtomicBool,
    inner: Mutex<Inner>,
    wake: Condvar,
}

#[derive(Debug, Default)]
struct Inner {
    /// Our own duplicate of the device descriptor: it shares the open file
    /// description (and so its O_NONBLOCK flag) with the worker's, and
    /// stays valid however the session closes its own.
    device: Option<OwnedFd>,
    stopped: bool,
}

impl Poller {
    /// A poller that stops polling after `window` without a request; a
    /// zero window never polls.
    pub fn new(window: Duration) -> Arc<Poller> {
        Arc::new(Poller {
            window,
            requests: AtomicU64::new(0),
            polling: AtomicBool::new(false),
            off: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            wake: Condvar::new(),
        })
    }

    /// Polls on `device` (the session's descriptor, after INIT) from now
    /// on, and starts the governor. Does nothing with a zero window.
    pub fn attach(self: &Arc<Self>, device: BorrowedFd<'_>) -> std::io::Result<()> {
        if self.window.is_zero() || self.off.load(Ordering::Relaxed) {
            return Ok(());
        }
        let fd = device.try_clone_to_owned()?;
        lock(&self.inner).device = Some(fd);
        let me = Arc::clone(self);
        std::thread::Builder::new()
            .name("pmemfs-poll".into())
            .spawn(move || me.govern())?;
        Ok(())
    }

    /// Called at the start of every request: starts polling if it had
    /// stopped.
    pub fn busy(&self) {
        self.requests.fetch_add(1, Ordering::Relaxed);
        if self.polling.load(Ordering::Relaxed) || self.off.load(Ordering::Relaxed) {
            return;
        }
        let inner = lock(&self.inner);
        if inner.stopped || self.polling.load(Ordering::Relaxed) {
            return;
        }
        if let Some(fd) = &inner.device {
            if set_nonblocking(fd, true) {
                self.polling.store(true, Ordering::Relaxed);
                self.wake.notify_one();
            }
        }
    }

    /// Ends polling for good (the session is ending, or requests come
    /// through io_uring): the device blocks again and the governor exits.
    pub fn stop(&self) {
        self.off.store(true, Ordering::Relaxed);
        let mut inner = lock(&self.inner);
        inner.stopped = true;
        if let Some(fd) = inner.device.take() {
            set_nonblocking(&fd, false);
        }
        self.polling.store(false, Ordering::Relaxed);
        self.wake.notify_one();
    }

    /// Whether a worker is polling now.
    pub fn polling(&self) -> bool {
        self.polling.load(Ordering::Relaxed)
    }

    /// The governor: while polling, looks once a window; a window without
    /// a request makes the device blocking again.
    fn govern(&self) {
        let mut inner = lock(&self.inner);
        loop {
            if inner.stopped {
                return;
            }
            if !self.polling.load(Ordering::Relaxed) {
                inner = self.wake.wait(inner).unwrap_or_else(|e| e.into_inner());
                continue;
            }
            let seen = self.requests.load(Ordering::Relaxed);
            drop(inner);
            std::thread::sleep(self.window);
            inner = lock(&self.inner);
            if self.requests.load(Ordering::Relaxed) == seen {
                if let Some(fd) = &inner.device {
                    set_nonblocking(fd, false);
                }
                self.polling.store(false, Ordering::Relaxed);
            }
        }
    }
}

fn lock(m: &Mutex<Inner>) -> std::sync::MutexGuard<'_, Inner> {
    // The state is two plain fields, sound after any panic.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sets or clears O_NONBLOCK on the open file description; false if the
/// descriptor refused.
fn set_nonblocking(fd: &OwnedFd, on: bool) -> bool {
    let fd = fd.as_raw_fd();
    // SAFETY: fcntl on a descriptor we own, with integer arguments.
    unsafe {
        let flags = libc::fcntl(fd, libc::F_GETFL);
        if flags < 0 {
            return false;
        }
        let flags = if on {
            flags | libc::O_NONBLOCK
        } else {
            flags & !libc::O_NONBLOCK
        };
        libc::fcntl(fd, libc::F_SETFL, flags) == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn nonblocking(fd: BorrowedFd<'_>) -> bool {
        // SAFETY: F_GETFL on a live descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) & libc::O_NONBLOCK != 0 }
    }

    #[test]
    fn polls_while_busy_and_stops_after_a_quiet_window() {
        let (r, _w) = std::io::pipe().unwrap();
        let p = Poller::new(Duration::from_millis(20));
        p.attach(r.as_fd()).unwrap();
        assert!(!nonblocking(r.as_fd()), "no request yet");
        p.busy();
        assert!(p.polling() && nonblocking(r.as_fd()));
        // Requests within the window keep it polling.
        for _ in 0..5 {
            std::thread::sleep(Duration::from_millis(5));
            p.busy();
            assert!(nonblocking(r.as_fd()));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while p.polling() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            !p.polling() && !nonblocking(r.as_fd()),
            "quiet: blocking again"
        );
        p.busy();
        assert!(nonblocking(r.as_fd()), "the next request polls again");
        p.stop();
        assert!(!nonblocking(r.as_fd()), "stopped: blocking");
        p.busy();
        assert!(!nonblocking(r.as_fd()), "stopped for good");
    }

    #[test]
    fn a_zero_window_never_polls() {
        let (r, _w) = std::io::pipe().unwrap();
        let p = Poller::new(Duration::ZERO);
        p.attach(r.as_fd()).unwrap();
        p.busy();
        assert!(!p.polling() && !nonblocking(r.as_fd()));
    }
}
