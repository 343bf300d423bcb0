//! The image lock: whoever has an image open read-write holds an exclusive
//! `flock` on it, so that two writers (a mount and mkfs, say) never meet.
//! The kernel drops the lock when the holder's file closes, including when
//! the process is killed, so a crash never leaves a stale lock behind.

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};

/// How long to keep trying a held lock before calling the image in use.
///
/// A lock outlives its holder's close for a moment when another thread of
/// the holder forked just before (the child shares the open file until it
/// execs), and a daemon that was just unmounted is still writing its final
/// checkpoint: umount(8) returns before the daemon has let go, and the
/// checkpoint of a large image takes most of a second. The wait rides
/// these out, so `umount && fsck` or `umount && mount` never see the image
/// in use; the tools tell a mounted image from a closing one first (by
/// /proc/self/mountinfo) so a real conflict is reported at once.
pub const LOCK_PATIENCE: Duration = Duration::from_secs(10);

/// Takes the exclusive lock on `file`, waiting at most [`LOCK_PATIENCE`].
pub fn lock_exclusive(file: &File) -> Result<()> {
    flock_patiently(file, libc::LOCK_EX)
}

/// Takes a shared lock on `file` (a read-only user: it keeps writers out
/// and lets other readers in), waiting at most [`LOCK_PATIENCE`].
pub fn lock_shared(file: &File) -> Result<()> {
    flock_patiently(file, libc::LOCK_SH)
}

fn flock_patiently(file: &File, op: libc::c_int) -> Result<()> {
    let start = Instant::now();
    loop {
        // SAFETY: flock on a valid descriptor has no memory effects.
        let r = unsafe { libc::flock(file.as_raw_fd(), op | libc::LOCK_NB) };
        if r == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
            return Err(Error::Io(e));
        }
        if start.elapsed() >= LOCK_PATIENCE {
            return Err(Error::Locked);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to `patience` for every holder of the lock on the image at
/// `path` to let go; returns whether the lock was free at the end.
pub fn released_within(path: &Path, patience: Duration) -> io::Result<bool> {
    let start = Instant::now();
    loop {
        if !is_locked(path)? {
            return Ok(true);
        }
        if start.elapsed() >= patience {
            return Ok(false);
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Whether another process holds the lock on the image at `path`.
pub fn is_locked(path: &Path) -> io::Result<bool> {
    let f = File::open(path)?;
    // SAFETY: as above; a shared lock taken here is dropped with `f`.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    if r == 0 {
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(true)
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_writer_is_refused_and_lock_dies_with_the_file() {
        let p = std::env::temp_dir().join(format!("pmemfs-lock-{}", std::process::id()));
        std::fs::write(&p, b"x").unwrap();
        let a = File::options().read(true).write(true).open(&p).unwrap();
        lock_exclusive(&a).unwrap();
        let b = File::options().read(true).write(true).open(&p).unwrap();
        assert!(matches!(lock_exclusive(&b), Err(Error::Locked)));
        assert!(is_locked(&p).unwrap());
        drop(a);
        assert!(!is_locked(&p).unwrap());
        lock_exclusive(&b).unwrap();
        drop(b);
        std::fs::remove_file(&p).unwrap();
    }
}
