//! Extended attributes: user, trusted and security names, and the POSIX
//! ACLs when they are on (see [`crate::acl`]).

use pmemfs_ondisk::{Ino, Op};

use crate::error::{fail, FsResult};
use crate::state::{now, State};

/// Largest extended attribute value, as Linux's XATTR_SIZE_MAX.
pub const XATTR_SIZE_MAX: usize = 65536;

impl State {
    /// Sets an xattr; the ACL xattrs go through [`State::set_acl`], which
    /// keeps the mode in step (and is called for them by the FUSE layer).
    pub fn setxattr(&mut self, ino: Ino, name: &[u8], value: &[u8], flags: i32) -> FsResult<()> {
        if crate::acl::is_acl_name(name) {
            return self.set_acl(ino, name, value, flags, true);
        }
        self.check_xattr_name(name)?;
        self.may_change(ino)?;
        if value.len() > XATTR_SIZE_MAX {
            return fail(libc::E2BIG);
        }
        let exists = self.inode(ino)?.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return fail(libc::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return fail(libc::ENODATA);
        }
        let t = now();
        let ops = [
            Op::SetXattr {
                ino,
                name: name.to_vec(),
                value: value.to_vec(),
            },
            self.set_attr(ino, |a| a.ctime = t)?,
        ];
        self.commit(&ops)
    }

    pub fn getxattr(&self, ino: Ino, name: &[u8]) -> FsResult<Vec<u8>> {
        self.check_xattr_name(name)?;
        match self.inode(ino)?.xattrs.get(name) {
            Some(v) => Ok(v.clone()),
            None => fail(libc::ENODATA),
        }
    }

    pub fn listxattr(&self, ino: Ino) -> FsResult<Vec<u8>> {
        let mut out = Vec::new();
        let hidden = |n: &[u8]| !self.acls && crate::acl::is_acl_name(n);
        for name in self.inode(ino)?.xattrs.keys().filter(|n| !hidden(n)) {
            out.extend_from_slice(name);
            out.push(0);
        }
        Ok(out)
    }

    pub fn removexattr(&mut self, ino: Ino, name: &[u8]) -> FsResult<()> {
        self.check_xattr_name(name)?;
        self.may_change(ino)?;
        if !self.inode(ino)?.xattrs.contains_key(name) {
            return fail(libc::ENODATA);
        }
        let t = now();
        let ops = [
            Op::RemoveXattr {
                ino,
                name: name.to_vec(),
            },
            self.set_attr(ino, |a| a.ctime = t)?,
        ];
        self.commit(&ops)
    }

    fn check_xattr_name(&self, name: &[u8]) -> FsResult<()> {
        if name.is_empty() || name.len() > 255 {
            return fail(libc::ERANGE);
        }
        // Of system.*, only the POSIX ACLs, and only when they are on:
        // refused, tools fall back to the mode bits.
        if crate::acl::is_acl_name(name) && self.acls {
            return Ok(());
        }
        let known = [&b"user."[..], b"trusted.", b"security."];
        if !known.iter().any(|p| name.starts_with(p)) {
            return fail(libc::EOPNOTSUPP);
        }
        Ok(())
    }
}
