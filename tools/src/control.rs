//! Talking to a mounted pmemfs from the client tools: the ioctls of
//! `pmemfs_fs::ioctl`, and copy_file_range for clones.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use pmemfs_fs::ioctl::{Stats, Usage, PMEMFS_IOC_STATS, PMEMFS_IOC_USAGE};

fn ioctl_words(path: &Path, cmd: u32, bytes: usize) -> anyhow::Result<Vec<u8>> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    let mut buf = vec![0u8; bytes];
    // SAFETY: the ioctl writes at most `bytes` (encoded in `cmd`) into buf.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), cmd as libc::c_ulong, buf.as_mut_ptr()) };
    if r != 0 {
        let e = std::io::Error::last_os_error();
        if matches!(
            e.raw_os_error(),
            Some(libc::ENOTTY | libc::ENOSYS | libc::EOPNOTSUPP | libc::EINVAL)
        ) {
            bail!("{} is not on a pmemfs mount", path.display());
        }
        return Err(e).with_context(|| format!("{}", path.display()));
    }
    Ok(buf)
}

/// A file's usage, asked of its mount.
pub fn usage(path: &Path) -> anyhow::Result<Usage> {
    let b = ioctl_words(path, PMEMFS_IOC_USAGE, 32)?;
    Usage::decode(&b).context("short answer")
}

/// The figures of the mount holding `path`.
pub fn stats(path: &Path) -> anyhow::Result<Stats> {
    let b = ioctl_words(path, PMEMFS_IOC_STATS, Stats::BYTES)?;
    Stats::decode(&b).context("short answer")
}

/// Clones `len` bytes (to the end of `src` when `None`) from `src` at
/// `src_off` to `dst` at `dst_off` with copy_file_range, which pmemfs turns
/// into shared pages. Returns the bytes cloned.
pub fn clone_range(
    src: &File,
    mut src_off: u64,
    len: Option<u64>,
    dst: &File,
    mut dst_off: u64,
) -> std::io::Result<u64> {
    let mut left = match len {
        Some(l) => l,
        None => src.metadata()?.len().saturating_sub(src_off),
    };
    let mut done = 0;
    while left > 0 {
        let (mut so, mut d) = (src_off as libc::loff_t, dst_off as libc::loff_t);
        let want = left.min(1 << 30) as usize;
        // SAFETY: both descriptors are open; the offsets are locals.
        let n = unsafe {
            libc::copy_file_range(src.as_raw_fd(), &mut so, dst.as_raw_fd(), &mut d, want, 0)
        };
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break;
        }
        let n = n as u64;
        (src_off, dst_off, left, done) = (src_off + n, dst_off + n, left - n, done + n);
    }
    Ok(done)
}
