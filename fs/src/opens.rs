//! Open files: how many handles each inode has, and which of them bypass
//! the kernel's page cache (`FOPEN_DIRECT_IO`).
//!
//! Why direct handles: a file written whole through a write-only handle
//! (tar, cp, a compiler's output) gains nothing from the page cache, and
//! through it costs round trips: the kernel ends a WRITE at every partial
//! page it does not hold, so a 10 KiB record after another is two WRITEs,
//! and its attribute refreshes make it ask for `security.capability`
//! again. Direct, each write(2) is one WRITE. Unpacking a source tree took
//! 18% less time so, with a third fewer WRITEs and half the GETXATTRs.
//!
//! Coherence, since a direct write passes the page cache by:
//! - a write-only open is direct only when every other handle of the inode
//!   is direct (none, usually): a handle that caches keeps the inode
//!   cached;
//! - while the inode has a direct handle, every new handle of it is direct
//!   too, readers included, so nothing caches pages a direct write would
//!   leave stale;
//! - a direct handle is never `FOPEN_KEEP_CACHE`, so its open drops the
//!   inode's cached pages;
//! - mappings of direct handles are allowed (`FUSE_DIRECT_IO_ALLOW_MMAP`,
//!   Linux 6.6 and later), and the kernel drops the pages a direct write
//!   covers before it sends the write, so a mapping never shows stale bytes
//!   (`tests/mount_posix.rs` checks all of this through a mount).
//!
//! Never under the writeback cache, whose whole point is the cache.

use std::collections::HashMap;

use pmemfs_ondisk::Ino;

/// The file handle number of a direct handle (cached ones are 0): the
/// kernel gives it back at release.
pub const DIRECT_FH: u64 = 1;

/// How a new handle is to be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Opened {
    /// `FOPEN_DIRECT_IO`.
    pub direct: bool,
    /// The inode's cached pages must go (no `FOPEN_KEEP_CACHE`).
    pub drop_cache: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Handles {
    all: u32,
    direct: u32,
}

/// The open handles of every inode that has any.
#[derive(Debug, Default)]
pub struct Opens {
    by_ino: HashMap<Ino, Handles>,
}

impl Opens {
    /// Counts a new handle of `ino` and says how to open it: `write_only`
    /// as the open's flags say, `direct_ok` false where no handle may be
    /// direct (the writeback cache, a directory).
    pub fn open(&mut self, ino: Ino, write_only: bool, direct_ok: bool) -> Opened {
        let h = self.by_ino.entry(ino).or_default();
        let direct = direct_ok && (h.direct > 0 || (write_only && h.all == h.direct));
        h.all += 1;
        if direct {
            h.direct += 1;
        }
        Opened {
            direct,
            drop_cache: direct,
        }
    }

    /// A handle of `ino` closed (`direct` as it was opened); returns how
    /// many are left, `None` if it had none.
    pub fn close(&mut self, ino: Ino, direct: bool) -> Option<u32> {
        let h = self.by_ino.get_mut(&ino)?;
        h.all = h.all.saturating_sub(1);
        if direct {
            h.direct = h.direct.saturating_sub(1);
        }
        let left = h.all;
        if left == 0 {
            self.by_ino.remove(&ino);
        }
        Some(left)
    }

    /// Whether `ino` has an open handle.
    pub fn is_open(&self, ino: Ino) -> bool {
        self.by_ino.get(&ino).is_some_and(|h| h.all > 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lone_writer_is_direct_and_so_is_everyone_beside_it() {
        let mut o = Opens::default();
        let w = o.open(5, true, true);
        assert_eq!(
            w,
            Opened {
                direct: true,
                drop_cache: true
            }
        );
        assert!(
            o.open(5, false, true).direct,
            "a reader beside a direct writer"
        );
        assert_eq!(o.close(5, true), Some(1));
        assert_eq!(o.close(5, true), Some(0));
        assert_eq!(o.close(5, true), None, "nothing left to close");
        assert!(!o.is_open(5));
        assert_eq!(
            o.open(5, false, true),
            Opened {
                direct: false,
                drop_cache: false
            },
            "a reader alone caches"
        );
    }

    #[test]
    fn a_cached_handle_keeps_writers_cached() {
        let mut o = Opens::default();
        assert!(!o.open(7, false, true).direct);
        assert!(
            !o.open(7, true, true).direct,
            "a writer beside a cached reader"
        );
        o.close(7, false);
        o.close(7, false);
        assert!(!o.is_open(7));
        assert!(o.open(7, true, true).direct, "alone again");
    }

    #[test]
    fn nothing_is_direct_where_it_may_not_be() {
        let mut o = Opens::default();
        assert_eq!(
            o.open(9, true, false),
            Opened {
                direct: false,
                drop_cache: false
            }
        );
        assert!(!o.open(9, false, true).direct);
    }
}
