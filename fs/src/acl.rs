//! POSIX ACLs: stored as the `system.posix_acl_access` and
//! `system.posix_acl_default` xattrs, in the kernel's own encoding
//! ([`pmemfs_ondisk::acl`]), and enforced by the kernel
//! (`FUSE_POSIX_ACL`), which asks for them with getxattr.
//!
//! With `FUSE_POSIX_ACL` the kernel leaves to the server what a kernel file
//! system does in its own `set_acl`, `chmod` and `create`, and this module
//! does it the way ext4 and XFS do:
//! - setting an access ACL sets the mode's permission bits from it, and an
//!   ACL that says no more than the mode is not stored at all;
//! - chmod rewrites the access ACL's owner, group-or-mask and other
//!   entries;
//! - a new inode in a directory with a default ACL gets an access ACL made
//!   from it and the requested mode (the umask does not apply), and a new
//!   directory inherits the default ACL itself; elsewhere the umask
//!   applies (the kernel sends it unapplied, `FUSE_DONT_MASK`).

use pmemfs_ondisk::acl::{self, Acl};
use pmemfs_ondisk::{Ino, Kind, Op};

use crate::error::{fail, FsResult};
use crate::state::{now, State};

/// Whether `name` is one of the two ACL xattrs.
pub fn is_acl_name(name: &[u8]) -> bool {
    name == acl::ACCESS || name == acl::DEFAULT
}

/// An ACL from the kernel, checked: EINVAL when it does not decode (the
/// kernel checks before sending, so only a raw caller gets here).
fn parse(value: &[u8]) -> FsResult<Acl> {
    Acl::decode(value).or_else(|_| fail(libc::EINVAL))
}

/// What a new inode gets from its parent's default ACL.
pub struct Inherited {
    /// The permission bits (and set-id bits) of the new inode.
    pub perm: u16,
    /// The xattrs to store with it.
    pub xattrs: Vec<(&'static [u8], Vec<u8>)>,
}

impl State {
    /// The parent's default ACL applied to a new inode of `kind` asking for
    /// permission bits `perm` (set-id bits included), or the umask when the
    /// parent has none (or ACLs are off).
    pub fn inherit_acl(
        &self,
        parent: Ino,
        kind: Kind,
        perm: u16,
        umask: u32,
    ) -> FsResult<Inherited> {
        let default = match self.acls_enabled() {
            true => self.inode(parent)?.xattrs.get(acl::DEFAULT),
            false => None,
        };
        let masked = || perm & !(umask as u16 & 0o777);
        let Some(default) = default.filter(|_| kind != Kind::Symlink) else {
            return Ok(Inherited {
                perm: masked(),
                xattrs: Vec::new(),
            });
        };
        // A stored default ACL that does not decode was checked when it was
        // set; fsck reports it. Fall back to the umask rather than fail.
        let Ok(default) = Acl::decode(default) else {
            return Ok(Inherited {
                perm: masked(),
                xattrs: Vec::new(),
            });
        };
        let (access, mode) = default.create(u32::from(perm));
        let mut xattrs = Vec::new();
        if access.equiv_mode().is_none() {
            xattrs.push((acl::ACCESS, access.encode()));
        }
        if kind == Kind::Dir {
            xattrs.push((acl::DEFAULT, default.encode()));
        }
        Ok(Inherited {
            perm: (mode & 0o7777) as u16,
            xattrs,
        })
    }

    /// Sets an ACL xattr: one transaction with the mode kept in step.
    /// `in_group` says whether the caller may keep the set-gid bit (root,
    /// or a member of the file's group), as `posix_acl_update_mode` asks.
    pub fn set_acl(
        &mut self,
        ino: Ino,
        name: &[u8],
        value: &[u8],
        flags: i32,
        in_group: bool,
    ) -> FsResult<()> {
        if !self.acls_enabled() {
            return fail(libc::EOPNOTSUPP);
        }
        self.may_change(ino)?;
        let parsed = parse(value)?;
        let inode = self.inode(ino)?;
        let exists = inode.xattrs.contains_key(name);
        if flags & libc::XATTR_CREATE != 0 && exists {
            return fail(libc::EEXIST);
        }
        if flags & libc::XATTR_REPLACE != 0 && !exists {
            return fail(libc::ENODATA);
        }
        let is_dir = inode.attr.kind == Kind::Dir;
        let t = now();
        let mut attr = inode.attr;
        attr.ctime = t;
        let mut store = !parsed.is_empty();
        if name == acl::DEFAULT {
            if !is_dir {
                return fail(libc::EACCES);
            }
        } else {
            if !parsed.is_empty() {
                let bits = parsed.mode_bits() as u16;
                attr.perm = (attr.perm & !0o777) | bits;
                store = parsed.equiv_mode().is_none();
            }
            if !in_group {
                attr.perm &= !(libc::S_ISGID as u16);
            }
        }
        let mut ops = Vec::new();
        if store {
            ops.push(Op::SetXattr {
                ino,
                name: name.to_vec(),
                value: parsed.encode(),
            });
        } else if exists {
            ops.push(Op::RemoveXattr {
                ino,
                name: name.to_vec(),
            });
        }
        ops.push(Op::SetAttr { ino, attr });
        self.commit(&ops)
    }

    /// The op that keeps a file's access ACL in step with a chmod to
    /// `perm`, if it has one.
    pub fn chmod_acl(&self, ino: Ino, perm: u16) -> FsResult<Option<Op>> {
        let Some(stored) = self.inode(ino)?.xattrs.get(acl::ACCESS) else {
            return Ok(None);
        };
        let Ok(mut a) = Acl::decode(stored) else {
            return Ok(None);
        };
        a.chmod(u32::from(perm));
        Ok(Some(Op::SetXattr {
            ino,
            name: acl::ACCESS.to_vec(),
            value: a.encode(),
        }))
    }
}
