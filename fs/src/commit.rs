//! Commits: every change is one journal transaction, durable when the
//! call returns, with the page cache kept equal to the page maps it
//! changed.

use pmemfs_ondisk::{Attr, Ino, Op};

use crate::error::{fail, FsResult};
use crate::memory;
use crate::state::State;

/// The page range `[first, last]` of a file whose mapping `op` changes;
/// `Delete` changes all of it.
fn touched(op: &Op) -> Option<(Ino, u64, u64)> {
    let span =
        |ino, index: u64, len: u64| (len > 0).then(|| (ino, index, index.saturating_add(len - 1)));
    match *op {
        Op::Map {
            ino, index, len, ..
        }
        | Op::Unmap { ino, index, len } => span(ino, index, len),
        Op::Clone {
            dst,
            dst_index,
            len,
            ..
        } => span(dst, dst_index, len),
        Op::Delete { ino } => Some((ino, 0, u64::MAX)),
        _ => None,
    }
}

impl State {
    /// Commits one transaction, and keeps the page cache equal to the page
    /// maps: DRAM copies of the pages the ops unmap or replace go before
    /// (the state is ours alone, so no read brings them back), and each DAX
    /// range the ops touched is synced from the page map after, whether
    /// the commit worked or failed half way.
    pub fn commit(&mut self, ops: &[Op]) -> FsResult<()> {
        if self.read_only {
            return fail(libc::EROFS);
        }
        // The ops' own attributes already carry a pending access time
        // (they are made from `attr`); the others' go first, apart.
        for op in ops {
            if let Op::SetAttr { ino, .. } = op {
                self.atimes.forget(*ino);
            }
        }
        self.flush_atimes()?;
        if self.cache.has_copies() {
            for (ino, first, last) in ops.iter().filter_map(touched) {
                if let Some(map) = self.image.file_map(ino) {
                    for r in map.range(first, (last - first).saturating_add(1))? {
                        self.cache.drop_copies(r.value, r.len);
                    }
                }
            }
        }
        let r = self.image.commit(ops);
        if self.image.last_patch_bytes() >= memory::BIG_PATCHES {
            memory::give_back_freed();
        }
        for (ino, first, last) in ops.iter().filter_map(touched) {
            self.cache
                .resync(ino, self.image.file_map(ino), first, last);
        }
        Ok(r?)
    }

    /// A `SetAttr` for `ino` after `f` changed a copy of its attributes.
    pub fn set_attr(&self, ino: Ino, f: impl FnOnce(&mut Attr)) -> FsResult<Op> {
        let mut attr = self.attr(ino)?;
        f(&mut attr);
        Ok(Op::SetAttr { ino, attr })
    }
}
