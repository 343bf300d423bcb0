//! How long an inode lives: an unlinked inode stays while a handle of it
//! is open, and under the writeback cache until the kernel forgets it
//! (it may still write back pages and times after the last close).

use std::collections::HashMap;

use pmemfs_ondisk::{Ino, Kind, Op};

use crate::error::FsResult;
use crate::state::State;

impl State {
    /// Keeps unlinked inodes until the kernel forgets them, not only until
    /// their last close (for the writeback cache).
    pub fn track_lookups(&mut self) {
        self.lookups = Some(parking_lot::Mutex::new(HashMap::new()));
    }

    /// Whether lookups are counted ([`State::track_lookups`]).
    pub fn tracks_lookups(&self) -> bool {
        self.lookups.is_some()
    }

    /// The kernel learnt of `ino` from a reply (an entry it may cache).
    pub fn looked_up(&self, ino: Ino) {
        if let Some(l) = &self.lookups {
            *l.lock().entry(ino).or_default() += 1;
        }
    }

    /// Whether the kernel may still send requests for `ino` on its own.
    fn known_to_kernel(&self, ino: Ino) -> bool {
        self.lookups
            .as_ref()
            .is_some_and(|l| l.lock().get(&ino).is_some_and(|&n| n > 0))
    }

    /// The kernel forgot `n` lookups of `ino`; an unlinked inode nobody
    /// has open goes when the kernel knows it no more.
    pub fn forgot(&mut self, ino: Ino, n: u64) -> FsResult<()> {
        let Some(l) = &self.lookups else {
            return Ok(());
        };
        let left = {
            let mut l = l.lock();
            let Some(count) = l.get_mut(&ino) else {
                return Ok(());
            };
            *count = count.saturating_sub(n);
            let left = *count;
            if left == 0 {
                l.remove(&ino);
            }
            left
        };
        if left == 0 && !self.opens.is_open(ino) {
            self.let_go_if_unlinked(ino)?;
        }
        Ok(())
    }

    /// Ops that let go of `ino`, which has no names and no open handles:
    /// its deletion, or, while the kernel still knows it (the writeback
    /// cache keeps an inode until FORGET, for the time updates the kernel
    /// may still send), only its pages, which nothing can read any more:
    /// the space comes back at the unlink, as on XFS, not when the kernel
    /// forgets. Returns whether the inode is deleted.
    pub(crate) fn let_go(&self, ino: Ino, ops: &mut Vec<Op>) -> FsResult<bool> {
        if !self.known_to_kernel(ino) {
            ops.push(Op::Delete { ino });
            return Ok(true);
        }
        if self.inode(ino)?.pages().is_some_and(|m| !m.is_empty()) {
            ops.push(Op::Unmap {
                ino,
                index: 0,
                len: u64::MAX,
            });
        }
        Ok(false)
    }

    /// Lets go of `ino` ([`State::let_go`]) if no name is left to it.
    pub(crate) fn let_go_if_unlinked(&mut self, ino: Ino) -> FsResult<()> {
        if self.inode(ino).is_ok_and(|i| i.attr.nlink == 0) && !self.read_only {
            let mut ops = Vec::new();
            self.let_go(ino, &mut ops)?;
            if !ops.is_empty() {
                self.commit(&ops)?;
            }
        }
        Ok(())
    }

    /// Deletes every unlinked inode (at unmount, when the kernel sends no
    /// more forgets), so the final checkpoint holds none.
    pub fn delete_unlinked(&mut self) -> FsResult<()> {
        let gone = pmemfs_ondisk::image::unlinked_inodes(self.image.meta(), &self.image.view())?;
        if gone.is_empty() || self.read_only {
            return Ok(());
        }
        let ops: Vec<Op> = gone.into_iter().map(|ino| Op::Delete { ino }).collect();
        self.commit(&ops)
    }

    /// Counts a new handle of `ino` (a directory's too) and says how to
    /// open it ([`crate::opens`]); `write_only` as the open's flags say.
    pub fn opened(&mut self, ino: Ino, write_only: bool) -> FsResult<crate::opens::Opened> {
        let is_file = self.inode(ino)?.attr.kind == Kind::File;
        Ok(self
            .opens
            .open(ino, write_only, self.direct_writes && is_file))
    }

    /// Whether write-only handles may bypass the page cache (not under
    /// the writeback cache, whose point is the cache).
    pub fn set_direct_writes(&mut self, on: bool) {
        self.direct_writes = on;
    }

    /// A handle of `ino` closed (`direct` as it was opened). The last close
    /// of an unlinked inode deletes it.
    pub fn closed(&mut self, ino: Ino, direct: bool) -> FsResult<()> {
        if self.opens.close(ino, direct) == Some(0) {
            // Spaces are made again by the next read; DRAM copies stay.
            self.cache.forget(ino);
            self.let_go_if_unlinked(ino)?;
        }
        Ok(())
    }
}
