//! Conversions between the media's attributes and FUSE's, in one place.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use fuser::{FileAttr, FileType, INodeNo};
use pmemfs_ondisk::{Attr, Ino, Inode, Kind, Time, PAGE_SIZE};

pub fn kind_to_fuse(k: Kind) -> FileType {
    match k {
        Kind::File => FileType::RegularFile,
        Kind::Dir => FileType::Directory,
        Kind::Symlink => FileType::Symlink,
        Kind::Fifo => FileType::NamedPipe,
        Kind::Socket => FileType::Socket,
        Kind::CharDev => FileType::CharDevice,
        Kind::BlockDev => FileType::BlockDevice,
    }
}

/// The kind a mode's `S_IFMT` bits name.
pub fn kind_from_mode(mode: u32) -> Option<Kind> {
    Some(match mode & libc::S_IFMT {
        libc::S_IFREG | 0 => Kind::File,
        libc::S_IFDIR => Kind::Dir,
        libc::S_IFLNK => Kind::Symlink,
        libc::S_IFIFO => Kind::Fifo,
        libc::S_IFSOCK => Kind::Socket,
        libc::S_IFCHR => Kind::CharDev,
        libc::S_IFBLK => Kind::BlockDev,
        _ => return None,
    })
}

pub fn time_to_system(t: Time) -> SystemTime {
    if t.secs >= 0 {
        UNIX_EPOCH + Duration::new(t.secs as u64, t.nsecs.min(999_999_999))
    } else {
        UNIX_EPOCH - Duration::new(t.secs.unsigned_abs(), 0)
            + Duration::new(0, t.nsecs.min(999_999_999))
    }
}

pub fn time_from_system(t: SystemTime) -> Time {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => Time {
            secs: d.as_secs() as i64,
            nsecs: d.subsec_nanos(),
        },
        Err(e) => {
            let d = e.duration();
            let (mut secs, mut nsecs) = (-(d.as_secs() as i64), d.subsec_nanos());
            if nsecs > 0 {
                secs -= 1;
                nsecs = 1_000_000_000 - nsecs;
            }
            Time { secs, nsecs }
        }
    }
}

/// The FUSE view of an inode. `blocks` counts mapped pages (a shared page
/// counts for each sharer, as `du` on XFS reflinks shows).
pub fn to_fuse(ino: Ino, inode: &Inode) -> FileAttr {
    let a: &Attr = &inode.attr;
    let blocks = match (&inode.body, a.kind) {
        (pmemfs_ondisk::Body::File(m), _) => m.pages() * (PAGE_SIZE / 512),
        (pmemfs_ondisk::Body::Symlink(t), _) => (t.len() as u64).div_ceil(512),
        _ => 0,
    };
    let size = match &inode.body {
        pmemfs_ondisk::Body::Symlink(t) => t.len() as u64,
        pmemfs_ondisk::Body::Dir(d) => (d.len() + 2) * 32,
        _ => a.size,
    };
    FileAttr {
        ino: INodeNo(ino),
        size,
        blocks,
        atime: time_to_system(a.atime),
        mtime: time_to_system(a.mtime),
        ctime: time_to_system(a.ctime),
        crtime: time_to_system(a.crtime),
        kind: kind_to_fuse(a.kind),
        perm: a.perm,
        nlink: a.nlink,
        uid: a.uid,
        gid: a.gid,
        rdev: a.rdev,
        blksize: PAGE_SIZE as u32,
        flags: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_both_sides_of_the_epoch() {
        for t in [
            Time { secs: 5, nsecs: 7 },
            Time { secs: -5, nsecs: 7 },
            Time { secs: 0, nsecs: 0 },
        ] {
            assert_eq!(time_from_system(time_to_system(t)), t);
        }
    }

    #[test]
    fn modes_name_kinds() {
        assert_eq!(kind_from_mode(libc::S_IFDIR | 0o755), Some(Kind::Dir));
        assert_eq!(kind_from_mode(0o644), Some(Kind::File));
        assert_eq!(kind_from_mode(0o170000), None);
    }
}
