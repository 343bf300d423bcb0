//! Inode flags, as `chattr`/`lsattr` see them (`FS_IOC_GETFLAGS`,
//! `FS_IOC_SETFLAGS`, and `FS_IOC_FSGETXATTR`/`FSSETXATTR`): immutable,
//! append-only, nodump and noatime, kept in the inode's `flags` word on the
//! media.
//!
//! The kernel checks who may set them (`CAP_LINUX_IMMUTABLE` for
//! immutable and append-only) but not what they forbid: a FUSE inode never
//! carries `S_IMMUTABLE` or `S_APPEND`, so the VFS checks that honour them
//! on ext4 and XFS never fire. They are made here instead, with the VFS's
//! errnos: an immutable inode refuses every change, even by root, until
//! `chattr -i`; an append-only one accepts only writes at its end.

use pmemfs_ondisk::Ino;

use pmemfs_ondisk::meta::flag;

use crate::error::{fail, FsResult};
use crate::state::{now, State};

const IMMUTABLE_FL: u32 = flag::IMMUTABLE;
const APPEND_FL: u32 = flag::APPEND;
/// The flags pmemfs keeps; others are refused (EOPNOTSUPP).
const SUPPORTED: u32 = flag::KNOWN;

/// `FS_IOC_GETFLAGS` and `FS_IOC_SETFLAGS` (`_IOR/_IOW('f', 1/2, long)`);
/// the kernel passes 4 bytes for either.
pub const FS_IOC_GETFLAGS: u32 = 0x8008_6601;
pub const FS_IOC_SETFLAGS: u32 = 0x4008_6602;
/// `FS_IOC_FSGETXATTR` and `FS_IOC_FSSETXATTR`: a 28-byte `struct fsxattr`
/// whose first u32 is the xflags.
pub const FS_IOC_FSGETXATTR: u32 = 0x801c_581f;
pub const FS_IOC_FSSETXATTR: u32 = 0x401c_5820;
/// Bytes of `struct fsxattr`.
pub const FSXATTR_BYTES: usize = 28;

/// The `FS_XFLAG_*` equivalent of each flag, for `struct fsxattr`.
const XFLAGS: [(u32, u32); 4] = [
    (flag::IMMUTABLE, 0x8),
    (flag::APPEND, 0x10),
    (flag::NOATIME, 0x40),
    (flag::NODUMP, 0x80),
];

/// xflags for flags.
pub fn to_xflags(flags: u32) -> u32 {
    XFLAGS
        .iter()
        .filter(|(f, _)| flags & f != 0)
        .fold(0, |x, (_, xf)| x | xf)
}

/// Flags for xflags; `None` when an xflag pmemfs does not keep is set.
pub fn from_xflags(xflags: u32) -> Option<u32> {
    let known = XFLAGS.iter().fold(0, |x, (_, xf)| x | xf);
    (xflags & !known == 0).then(|| {
        XFLAGS
            .iter()
            .filter(|(_, xf)| xflags & xf != 0)
            .fold(0, |f, (fl, _)| f | fl)
    })
}

impl State {
    /// The inode flags of `ino`.
    pub fn flags(&self, ino: Ino) -> FsResult<u32> {
        Ok(self.attr(ino)?.flags & SUPPORTED)
    }

    /// Sets the inode flags (the kernel has checked the caller may).
    pub fn set_flags(&mut self, ino: Ino, flags: u32) -> FsResult<()> {
        if flags & !SUPPORTED != 0 {
            return fail(libc::EOPNOTSUPP);
        }
        let t = now();
        let op = self.set_attr(ino, |a| {
            a.flags = (a.flags & !SUPPORTED) | flags;
            a.ctime = t;
        })?;
        self.commit(&[op])
    }

    fn has_flag(&self, ino: Ino, flag: u32) -> FsResult<bool> {
        Ok(self.attr(ino)?.flags & flag != 0)
    }

    /// An inode's own attributes, xattrs or names change (chmod, chown,
    /// explicit times, xattrs, link, unlink, rename): neither immutable nor
    /// append-only.
    pub fn may_change(&self, ino: Ino) -> FsResult<()> {
        if self.has_flag(ino, IMMUTABLE_FL | APPEND_FL)? {
            return fail(libc::EPERM);
        }
        Ok(())
    }

    /// Anything at all changes (a time set to now included): not
    /// immutable.
    pub fn may_touch(&self, ino: Ino) -> FsResult<()> {
        if self.has_flag(ino, IMMUTABLE_FL)? {
            return fail(libc::EPERM);
        }
        Ok(())
    }

    /// A directory gains a name (`removing` false) or loses one: an
    /// immutable directory does neither, an append-only one only gains.
    pub fn may_change_dir(&self, dir: Ino, removing: bool) -> FsResult<()> {
        let flag = if removing {
            IMMUTABLE_FL | APPEND_FL
        } else {
            IMMUTABLE_FL
        };
        if self.has_flag(dir, flag)? {
            return fail(libc::EPERM);
        }
        Ok(())
    }

    /// Data changes at `[off, ..)`: not immutable, and past the end of an
    /// append-only file. `anywhere` says the change is not a write at an
    /// offset (truncate, punch, clone): refused on an append-only file.
    pub fn may_write_at(&self, ino: Ino, off: u64, anywhere: bool) -> FsResult<()> {
        let a = self.attr(ino)?;
        if a.flags & IMMUTABLE_FL != 0 {
            return fail(libc::EPERM);
        }
        if a.flags & APPEND_FL != 0 && (anywhere || off < a.size) {
            return fail(libc::EPERM);
        }
        Ok(())
    }

    /// An open with `flags` (open(2)'s): writing an immutable file, or
    /// writing an append-only one other than by O_APPEND, or truncating
    /// it, is refused.
    pub fn may_open(&self, ino: Ino, flags: i32) -> FsResult<()> {
        let a = self.attr(ino)?;
        let writes = flags & libc::O_ACCMODE != libc::O_RDONLY || flags & libc::O_TRUNC != 0;
        if writes && a.flags & IMMUTABLE_FL != 0 {
            return fail(libc::EPERM);
        }
        if writes
            && a.flags & APPEND_FL != 0
            && (flags & libc::O_APPEND == 0 || flags & libc::O_TRUNC != 0)
        {
            return fail(libc::EPERM);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xflags_map_both_ways() {
        let all = SUPPORTED;
        assert_eq!(from_xflags(to_xflags(all)), Some(all));
        assert_eq!(to_xflags(IMMUTABLE_FL), 0x8);
        assert_eq!(from_xflags(0x10), Some(APPEND_FL));
        assert_eq!(from_xflags(0x1), None, "realtime: not kept");
    }
}
