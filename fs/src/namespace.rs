//! The namespace: names in directories, and the inodes they make, link,
//! unlink and rename, each one transaction.

use std::collections::HashMap;

use pmemfs_ondisk::meta::MAX_NAME;
use pmemfs_ondisk::{Attr, Body, Ino, Kind, NewBody, Op, Time, ROOT_INO};

use crate::error::{fail, FsResult};
use crate::state::{now, State};

/// What a new inode is: the kind is in the mode's S_IFMT bits.
#[derive(Debug, Clone, Copy)]
pub struct NewInode<'a> {
    pub mode: u32,
    pub rdev: u32,
    /// A symbolic link's target.
    pub target: Option<&'a [u8]>,
}

/// Who is asking: for ownership of new inodes.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub uid: u32,
    pub gid: u32,
}

/// Longest symbolic-link target, as PATH_MAX.
pub const MAX_SYMLINK: usize = 4095;

/// Most links an inode may have, as ext4's EXT4_LINK_MAX.
pub const LINK_MAX: u32 = 65000;

/// Checks a name from the kernel.
pub fn check_name(name: &[u8]) -> FsResult<()> {
    if name.len() > MAX_NAME {
        return fail(libc::ENAMETOOLONG);
    }
    if !pmemfs_ondisk::meta::valid_name(name) {
        return fail(libc::EINVAL);
    }
    Ok(())
}

impl State {
    pub fn lookup(&self, parent: Ino, name: &[u8]) -> FsResult<Ino> {
        if name.len() > MAX_NAME {
            return fail(libc::ENAMETOOLONG);
        }
        match self.entry(parent, name)? {
            Some(i) => Ok(i),
            None => fail(libc::ENOENT),
        }
    }

    /// The inode `name` names in directory `parent`, read from its tree.
    fn entry(&self, parent: Ino, name: &[u8]) -> FsResult<Option<Ino>> {
        Ok(self.dir(parent)?.get(&self.image.view(), name)?)
    }

    /// Makes a new inode named `name` in `parent`, with the mode as given.
    pub fn make(&mut self, parent: Ino, name: &[u8], new: NewInode, who: Caller) -> FsResult<Ino> {
        self.make_masked(parent, name, new, who, 0)
    }

    /// Makes a new inode named `name` in `parent`: the parent's default
    /// ACL, if any, shapes its mode and ACLs, else `umask` applies.
    pub fn make_masked(
        &mut self,
        parent: Ino,
        name: &[u8],
        new: NewInode,
        who: Caller,
        umask: u32,
    ) -> FsResult<Ino> {
        let NewInode { mode, rdev, target } = new;
        let Some(kind) = crate::attr::kind_from_mode(mode) else {
            return fail(libc::EINVAL);
        };
        check_name(name)?;
        let pattr = self.attr(parent)?;
        if self.entry(parent, name)?.is_some() {
            return fail(libc::EEXIST);
        }
        if pattr.nlink == 0 {
            // A removed directory that is still open takes no new names.
            return fail(libc::ENOENT);
        }
        self.may_change_dir(parent, false)?;
        let t = now();
        let inherited = self.inherit_acl(parent, kind, (mode & 0o7777) as u16, umask)?;
        let mut perm = inherited.perm;
        let mut gid = who.gid;
        // BSD group semantics on setgid directories, as ext4 and XFS do.
        if pattr.perm & libc::S_ISGID as u16 != 0 {
            gid = pattr.gid;
            if kind == Kind::Dir {
                perm |= libc::S_ISGID as u16;
            }
        }
        let mut attr = Attr::new(kind, perm, who.uid, gid, t);
        attr.rdev = rdev;
        let body = match kind {
            Kind::File => NewBody::File,
            Kind::Dir => NewBody::Dir { parent },
            Kind::Symlink => {
                let target = target.unwrap_or_default();
                if target.len() > MAX_SYMLINK {
                    return fail(libc::ENAMETOOLONG);
                }
                if target.is_empty() {
                    return fail(libc::ENOENT);
                }
                attr.size = target.len() as u64;
                NewBody::Symlink(target.to_vec())
            }
            _ => NewBody::Special,
        };
        let ino = self.image.next_ino();
        let parent_op = self.set_attr(parent, |a| {
            a.mtime = t;
            a.ctime = t;
            if kind == Kind::Dir {
                a.nlink += 1;
            }
        })?;
        let mut ops = vec![Op::Create { ino, attr, body }];
        ops.extend(inherited.xattrs.into_iter().map(|(n, value)| Op::SetXattr {
            ino,
            name: n.to_vec(),
            value,
        }));
        ops.push(Op::Link {
            dir: parent,
            name: name.to_vec(),
            ino,
        });
        ops.push(parent_op);
        self.commit(&ops)?;
        Ok(ino)
    }

    /// A new name for an existing inode.
    pub fn link(&mut self, ino: Ino, parent: Ino, name: &[u8]) -> FsResult<()> {
        check_name(name)?;
        let attr = self.attr(ino)?;
        if attr.kind == Kind::Dir {
            return fail(libc::EPERM);
        }
        if attr.nlink >= LINK_MAX {
            return fail(libc::EMLINK);
        }
        if self.entry(parent, name)?.is_some() {
            return fail(libc::EEXIST);
        }
        if self.attr(parent)?.nlink == 0 {
            return fail(libc::ENOENT);
        }
        self.may_change(ino)?;
        self.may_change_dir(parent, false)?;
        let t = now();
        let ops = [
            Op::Link {
                dir: parent,
                name: name.to_vec(),
                ino,
            },
            self.set_attr(ino, |a| {
                a.nlink += 1;
                a.ctime = t;
            })?,
            self.set_attr(parent, |a| {
                a.mtime = t;
                a.ctime = t;
            })?,
        ];
        self.commit(&ops)
    }

    /// Ops that drop the name `name` (naming `ino`) from `parent`; deletes
    /// the inode too when that was its last name and nobody has it open.
    fn drop_name(
        &self,
        parent: Ino,
        name: &[u8],
        ino: Ino,
        t: Time,
        ops: &mut Vec<Op>,
    ) -> FsResult<()> {
        let attr = self.attr(ino)?;
        ops.push(Op::Unlink {
            dir: parent,
            name: name.to_vec(),
        });
        let is_dir = attr.kind == Kind::Dir;
        let left = if is_dir {
            0
        } else {
            attr.nlink.saturating_sub(1)
        };
        if left == 0 && !self.opens.is_open(ino) && self.let_go(ino, ops)? {
            return Ok(());
        }
        ops.push(Op::SetAttr {
            ino,
            attr: Attr {
                nlink: left,
                ctime: t,
                ..attr
            },
        });
        Ok(())
    }

    pub fn unlink(&mut self, parent: Ino, name: &[u8], dir_wanted: bool) -> FsResult<()> {
        let ino = self.lookup(parent, name)?;
        let is_dir = self.attr(ino)?.kind == Kind::Dir;
        match (dir_wanted, is_dir) {
            (false, true) => return fail(libc::EISDIR),
            (true, false) => return fail(libc::ENOTDIR),
            _ => {}
        }
        if is_dir && !self.dir(ino)?.is_empty() {
            return fail(libc::ENOTEMPTY);
        }
        self.may_change_dir(parent, true)?;
        self.may_change(ino)?;
        let t = now();
        let mut ops = Vec::new();
        self.drop_name(parent, name, ino, t, &mut ops)?;
        ops.push(self.set_attr(parent, |a| {
            a.mtime = t;
            a.ctime = t;
            if is_dir {
                a.nlink = a.nlink.saturating_sub(1);
            }
        })?);
        self.commit(&ops)
    }

    /// Whether `ancestor` is `ino` or lies on the path from `ino` to the root.
    fn is_ancestor(&self, ancestor: Ino, mut ino: Ino) -> FsResult<bool> {
        loop {
            if ino == ancestor {
                return Ok(true);
            }
            if ino == ROOT_INO {
                return Ok(false);
            }
            ino = self.dir(ino)?.parent;
        }
    }

    pub fn rename(
        &mut self,
        from: Ino,
        name: &[u8],
        to: Ino,
        newname: &[u8],
        flags: u32,
    ) -> FsResult<()> {
        self.rename_as(from, name, to, newname, flags, Caller { uid: 0, gid: 0 })
    }

    /// rename(2) with renameat2's flags, for caller `who` (the owner of
    /// the whiteout `RENAME_WHITEOUT` leaves, as overlayfs asks of its
    /// upper layer: a character device 0:0 at the old name, made in the
    /// same transaction).
    pub fn rename_as(
        &mut self,
        from: Ino,
        name: &[u8],
        to: Ino,
        newname: &[u8],
        flags: u32,
        who: Caller,
    ) -> FsResult<()> {
        check_name(newname)?;
        let noreplace = flags & libc::RENAME_NOREPLACE != 0;
        let exchange = flags & libc::RENAME_EXCHANGE != 0;
        let whiteout = flags & libc::RENAME_WHITEOUT != 0;
        let known = libc::RENAME_NOREPLACE | libc::RENAME_EXCHANGE | libc::RENAME_WHITEOUT;
        if flags & !known != 0 || (noreplace && exchange) || (whiteout && exchange) {
            return fail(libc::EINVAL);
        }
        let ino = self.lookup(from, name)?;
        self.dir(to)?;
        if self.attr(to)?.nlink == 0 {
            return fail(libc::ENOENT);
        }
        let target = self.lookup(to, newname).ok();
        if target == Some(ino) {
            return Ok(()); // two names of one inode: POSIX says do nothing
        }
        self.may_change_dir(from, true)?;
        self.may_change_dir(to, target.is_some())?;
        self.may_change(ino)?;
        if let Some(t) = target {
            self.may_change(t)?;
        }
        let src_dir = self.attr(ino)?.kind == Kind::Dir;
        // A directory cannot move below itself.
        if src_dir && from != to && self.is_ancestor(ino, to)? {
            return fail(libc::EINVAL);
        }
        let t = now();
        let mut ops = Vec::new();
        // The plain move of `name` to `newname`.
        let unlink = |dir: Ino, name: &[u8]| Op::Unlink {
            dir,
            name: name.to_vec(),
        };
        let link = |dir: Ino, name: &[u8], ino: Ino| Op::Link {
            dir,
            name: name.to_vec(),
            ino,
        };
        // Directories that change parent: (dir, old parent, new parent).
        let mut moved_dirs = Vec::new();
        let mut nlink_delta: HashMap<Ino, i64> = HashMap::new();
        match (target, exchange) {
            (None, true) => return fail(libc::ENOENT),
            (Some(_), false) if noreplace => return fail(libc::EEXIST),
            (Some(other), true) => {
                let other_dir = self.attr(other)?.kind == Kind::Dir;
                if other_dir && to != from && self.is_ancestor(other, from)? {
                    return fail(libc::EINVAL);
                }
                ops.extend([
                    unlink(from, name),
                    unlink(to, newname),
                    link(from, name, other),
                ]);
                ops.push(link(to, newname, ino));
                if other_dir {
                    moved_dirs.push((other, to, from));
                }
                ops.push(self.set_attr(other, |a| a.ctime = t)?);
            }
            (Some(other), false) => {
                let other_dir = self.attr(other)?.kind == Kind::Dir;
                match (src_dir, other_dir) {
                    (true, false) => return fail(libc::ENOTDIR),
                    (false, true) => return fail(libc::EISDIR),
                    (true, true) if !self.dir(other)?.is_empty() => return fail(libc::ENOTEMPTY),
                    _ => {}
                }
                self.drop_name(to, newname, other, t, &mut ops)?;
                if other_dir {
                    *nlink_delta.entry(to).or_default() -= 1;
                }
                ops.extend([unlink(from, name), link(to, newname, ino)]);
            }
            (None, false) => ops.extend([unlink(from, name), link(to, newname, ino)]),
        }
        if src_dir {
            moved_dirs.push((ino, from, to));
        }
        for (dir, old, new) in moved_dirs {
            ops.push(Op::SetParent { dir, parent: new });
            *nlink_delta.entry(old).or_default() -= 1;
            *nlink_delta.entry(new).or_default() += 1;
        }
        ops.push(self.set_attr(ino, |a| a.ctime = t)?);
        if whiteout {
            let w = self.image.next_ino();
            let attr = Attr::new(Kind::CharDev, 0, who.uid, who.gid, t);
            ops.push(Op::Create {
                ino: w,
                attr,
                body: NewBody::Special,
            });
            ops.push(link(from, name, w));
        }
        for d in if from == to {
            vec![from]
        } else {
            vec![from, to]
        } {
            let delta = nlink_delta.get(&d).copied().unwrap_or(0);
            ops.push(self.set_attr(d, |a| {
                a.mtime = t;
                a.ctime = t;
                a.nlink = (i64::from(a.nlink) + delta).max(0) as u32;
            })?);
        }
        self.commit(&ops)
    }

    pub fn readlink(&self, ino: Ino) -> FsResult<Vec<u8>> {
        match &self.inode(ino)?.body {
            Body::Symlink(t) => Ok(t.clone()),
            _ => fail(libc::EINVAL),
        }
    }

    /// Entries of a directory for readdir: `.`, `..`, then the names.
    pub fn list(&self, ino: Ino) -> FsResult<Vec<(Ino, Kind, Vec<u8>)>> {
        let d = self.dir(ino)?;
        let entries = d.list(&self.image.view())?;
        let mut out = Vec::with_capacity(entries.len() + 2);
        out.push((ino, Kind::Dir, b".".to_vec()));
        out.push((d.parent, Kind::Dir, b"..".to_vec()));
        for (name, child) in entries {
            let kind = self
                .image
                .meta()
                .get(child)
                .map_or(Kind::File, |i| i.attr.kind);
            out.push((child, kind, name));
        }
        Ok(out)
    }
}
