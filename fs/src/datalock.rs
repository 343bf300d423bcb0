//! Locks on a file's bytes, beside the state's lock.
//!
//! Everything that changes metadata (a page map, a size, a time, a share
//! count) holds the whole [`crate::state::State`] alone. A write that
//! changes none of it, bytes stored in place on pages the file alone maps
//! ([`crate::state::State::write_in_place`]), needs only the state shared
//! and its file's data lock exclusive: writers of different files run at
//! once, and a reader of the file, which holds the lock shared, sees a
//! write whole or not at all, as on XFS. A write that takes fresh pages
//! holds its data lock from start to commit, and the state alone only to
//! take the pages and to commit ([`crate::state::State::stage_write`]).
//!
//! Order: a data lock is taken before the state's lock, never while
//! holding it, so that a writer holding its data lock can wait for the
//! state alone while that file's readers wait for the data lock, holding
//! nothing.
//!
//! The locks are a fixed table of shards found by inode number, so a file
//! costs no lock of its own and nothing is made or freed per inode; two
//! files in one shard only wait for each other.

use parking_lot::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use pmemfs_ondisk::Ino;

/// Shards: a few times the CPUs of a large machine, so that unrelated
/// files rarely meet in one.
const SHARDS: usize = 256;

pub struct DataLocks {
    shards: Box<[RwLock<()>]>,
}

impl Default for DataLocks {
    fn default() -> DataLocks {
        DataLocks {
            shards: (0..SHARDS).map(|_| RwLock::new(())).collect(),
        }
    }
}

impl DataLocks {
    fn shard(&self, ino: Ino) -> &RwLock<()> {
        // Inode numbers are handed out in order: the low bits spread
        // neighbours over the shards.
        &self.shards[(ino as usize) % SHARDS]
    }

    /// Held while bytes of `ino` are read from its pages.
    pub fn read(&self, ino: Ino) -> RwLockReadGuard<'_, ()> {
        self.shard(ino).read()
    }

    /// Held while bytes of `ino` are stored in place.
    pub fn write(&self, ino: Ino) -> RwLockWriteGuard<'_, ()> {
        self.shard(ino).write()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_writer_excludes_readers_of_its_shard_only() {
        let l = DataLocks::default();
        let w = l.write(7);
        assert!(l.shard(7).try_read().is_none(), "same file");
        assert!(
            l.shard(7 + SHARDS as Ino).try_read().is_none(),
            "same shard"
        );
        assert!(l.shard(8).try_write().is_some(), "another file");
        drop(w);
        let (a, b) = (l.read(7), l.read(7));
        assert!(l.shard(7).try_write().is_none(), "readers exclude a writer");
        drop((a, b));
        assert!(l.shard(7).try_write().is_some());
    }
}
