//! Set-uid, set-gid and file capabilities, dropped where the kernel drops
//! them (`FUSE_HANDLE_KILLPRIV_V2`: the server takes the job, so the
//! kernel neither asks `GETXATTR security.capability` before every write
//! nor sends a mode change of its own):
//! - a write by a caller without `CAP_FSETID` (the kernel says so with
//!   `FUSE_WRITE_KILL_SUIDGID`) and a truncate by anyone but root drop
//!   set-uid, and set-gid where the group may execute;
//! - a chown drops them the same way whoever asks, as Linux does;
//! - each of them drops `security.capability`.

use pmemfs_ondisk::{Attr, Ino, Kind, Op};

use crate::state::State;

/// The xattr that holds a file's capabilities.
pub const CAPABILITY: &[u8] = b"security.capability";

/// Drops set-uid, and set-gid when the group may execute (a set-gid file
/// the group cannot execute is mandatory locking, and keeps it).
pub fn kill_suid_sgid(a: &mut Attr) {
    if a.kind == Kind::Dir {
        return;
    }
    a.perm &= !(libc::S_ISUID as u16);
    if a.perm & libc::S_IXGRP as u16 != 0 {
        a.perm &= !(libc::S_ISGID as u16);
    }
}

impl State {
    /// The op that drops the file capabilities of `ino`, if it has any.
    pub fn kill_capability(&self, ino: Ino) -> Option<Op> {
        let inode = self.inode(ino).ok()?;
        inode
            .xattrs
            .contains_key(CAPABILITY)
            .then(|| Op::RemoveXattr {
                ino,
                name: CAPABILITY.to_vec(),
            })
    }
}
