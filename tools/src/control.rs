//! Talking to a mounted pmemfs from the client tools: the ioctls of
//! `pmemfs_fs::ioctl`, and copy_file_range for clones.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;

use anyhow::{bail, Context};
use pmemfs_fs::ioctl::{
    DirUsage, Stats, Usage, PMEMFS_IOC_DIR_USAGE, PMEMFS_IOC_OPS, PMEMFS_IOC_OPS_RESET,
    PMEMFS_IOC_STATS, PMEMFS_IOC_USAGE,
};
use pmemfs_fs::ops::{OpCounters, OpStat};

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

/// The usage of every regular file of the directory `dir`, by inode
/// number, in one request per [`DirUsage::RECORDS`] files.
pub fn dir_usage(dir: &Path) -> anyhow::Result<std::collections::HashMap<u64, Usage>> {
    let f = File::open(dir).with_context(|| format!("cannot open {}", dir.display()))?;
    let mut out = std::collections::HashMap::new();
    let mut from = 0u64;
    loop {
        let mut buf = vec![0u8; DirUsage::BYTES];
        buf[..8].copy_from_slice(&from.to_le_bytes());
        ask(&f, PMEMFS_IOC_DIR_USAGE, &mut buf).map_err(|e| on_pmemfs(e, dir))?;
        let d = DirUsage::decode(&buf).context("bad answer")?;
        out.extend(d.files);
        if d.next == 0 {
            return Ok(out);
        }
        from = d.next;
    }
}

/// A pmemfs ioctl whose number says `buf.len()` bytes go in and come back
/// in `buf` (`_IOWR`).
pub fn ask(f: &File, cmd: u32, buf: &mut [u8]) -> std::io::Result<()> {
    // SAFETY: the buffer is as large as the number says; the ioctl reads
    // it and writes at most that much into it.
    match unsafe { libc::ioctl(f.as_raw_fd(), cmd as libc::c_ulong, buf.as_mut_ptr()) } {
        0 => Ok(()),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// The error of an ioctl on `path`: that it is not on pmemfs, when the
/// errno says no such ioctl, else the errno.
pub fn on_pmemfs(e: std::io::Error, path: &Path) -> anyhow::Error {
    match e.raw_os_error() {
        Some(libc::ENOTTY | libc::ENOSYS | libc::EOPNOTSUPP) => {
            anyhow::anyhow!("{} is not on a pmemfs mount", path.display())
        }
        _ => anyhow::Error::new(e).context(path.display().to_string()),
    }
}

/// The requests the mount holding `path` served, per opcode.
pub fn ops(path: &Path) -> anyhow::Result<Vec<(&'static str, OpStat)>> {
    let b = ioctl_words(path, PMEMFS_IOC_OPS, OpCounters::BYTES)?;
    OpCounters::decode(&b).context("short answer")
}

/// Zeroes the request counters of the mount holding `path`.
pub fn reset_ops(path: &Path) -> anyhow::Result<()> {
    let f = File::open(path).with_context(|| format!("cannot open {}", path.display()))?;
    // SAFETY: the ioctl takes no argument.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), PMEMFS_IOC_OPS_RESET as libc::c_ulong) };
    if r != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{}", path.display()));
    }
    Ok(())
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

/// Where the image at `image` is mounted, if it is: the kernel shows a
/// pmemfs mount's source as `pmemfs:CANONICAL_PATH` in
/// /proc/self/mountinfo. Tells a mounted image (a real conflict, reported
/// at once) from one whose daemon is still closing (waited for).
pub fn mount_of(image: &Path) -> Option<std::path::PathBuf> {
    let want = format!("pmemfs:{}", image.canonicalize().ok()?.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|line| {
        // ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTS [TAGS...] - TYPE SOURCE SUPER
        let (head, tail) = line.split_once(" - ")?;
        let mut t = tail.split(' ');
        let (_fstype, source) = (t.next()?, t.next()?);
        if unescape(source) != want {
            return None;
        }
        Some(unescape(head.split(' ').nth(4)?).into())
    })
}

/// Undoes mountinfo's octal escapes (`\040` for a space, ...).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let oct = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], oct) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(super::unescape(r"/mnt/a\040b\134c"), r"/mnt/a b\c");
        assert_eq!(super::unescape(r"plain\0"), r"plain\0");
    }
}
