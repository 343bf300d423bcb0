//! Access times, as Linux keeps them: `relatime` by default (a read
//! updates atime when it is not later than mtime or ctime, or is a day
//! old), `strictatime` (every read), `noatime`, and `nodiratime` for
//! directories; a file with the `noatime` inode flag (`chattr +A`) keeps its
//! atime.
//!
//! The kernel leaves atime to a FUSE server (its inodes are `S_NOATIME`),
//! and sees to it that the server hears of reads only of data it does not
//! cache; so an open for reading drops the kernel's cached pages when an
//! atime update is due (see `PmemFs::open`), and the read that follows
//! comes here.
//!
//! An update is never a journal commit of its own: reads record it in
//! memory ([`Atimes`]), every attribute reply shows it, and it is written
//! with the next transaction (in transactions of its own of at most
//! [`FLUSH_BATCH`] inodes, ahead of it), by fsync, and before the final
//! checkpoint at unmount. This is `lazytime`'s promise, for every mode: a
//! crash may lose access times recorded since the last commit, and nothing
//! else.

use std::collections::HashMap;

use parking_lot::Mutex;
use pmemfs_ondisk::meta::flag::NOATIME as NOATIME_FL;
use pmemfs_ondisk::{Attr, Ino, Kind, Time};

use crate::state::now;

/// How reads update atime.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AtimeMode {
    /// Linux's default: when atime is not later than mtime or ctime, or
    /// is older than a day.
    #[default]
    Relatime,
    /// Every read.
    Strict,
    /// Never.
    Never,
}

/// Most pending updates written in one transaction.
pub const FLUSH_BATCH: usize = 256;

const DAY_SECS: i64 = 24 * 60 * 60;

/// What atime policy a mount follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AtimePolicy {
    pub mode: AtimeMode,
    /// Directories keep their atime (`nodiratime`).
    pub nodiratime: bool,
}

impl AtimePolicy {
    /// Whether a read of an inode with `attr` (its atime as now shown)
    /// should set its atime to `now`.
    pub fn due(&self, attr: &Attr, now: Time) -> bool {
        if attr.flags & NOATIME_FL != 0 || (self.nodiratime && attr.kind == Kind::Dir) {
            return false;
        }
        let key = |t: Time| (t.secs, t.nsecs);
        match self.mode {
            AtimeMode::Never => false,
            AtimeMode::Strict => key(attr.atime) != key(now),
            AtimeMode::Relatime => {
                key(attr.atime) <= key(attr.mtime)
                    || key(attr.atime) <= key(attr.ctime)
                    || now.secs.saturating_sub(attr.atime.secs) >= DAY_SECS
            }
        }
    }
}

/// Access times recorded by reads and not yet committed.
#[derive(Debug, Default)]
pub struct Atimes {
    pending: Mutex<HashMap<Ino, Time>>,
}

impl Atimes {
    /// `attr` as it is now shown: with its pending atime.
    pub fn overlay(&self, ino: Ino, mut attr: Attr) -> Attr {
        if let Some(t) = self.pending.lock().get(&ino) {
            attr.atime = *t;
        }
        attr
    }

    /// Records a read of `ino` (attributes `attr`, as shown) under `policy`.
    pub fn touch(&self, policy: &AtimePolicy, ino: Ino, attr: &Attr) {
        let t = now();
        if policy.due(attr, t) {
            self.pending.lock().insert(ino, t);
        }
    }

    pub fn is_empty(&self) -> bool {
        self.pending.lock().is_empty()
    }

    /// Takes up to `n` pending updates.
    pub fn take(&self, n: usize) -> Vec<(Ino, Time)> {
        let mut p = self.pending.lock();
        let keys: Vec<Ino> = p.keys().take(n).copied().collect();
        keys.into_iter()
            .filter_map(|k| p.remove(&k).map(|t| (k, t)))
            .collect()
    }

    /// Forgets the pending update of `ino` (a SetAttr of its own carries
    /// it, or the inode is gone).
    pub fn forget(&self, ino: Ino) {
        self.pending.lock().remove(&ino);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(atime: i64, mtime: i64, ctime: i64) -> Attr {
        let mut a = Attr::new(Kind::File, 0o644, 0, 0, Time { secs: 0, nsecs: 0 });
        a.atime = Time {
            secs: atime,
            nsecs: 0,
        };
        a.mtime = Time {
            secs: mtime,
            nsecs: 0,
        };
        a.ctime = Time {
            secs: ctime,
            nsecs: 0,
        };
        a
    }

    #[test]
    fn relatime_strict_and_never() {
        let now = Time {
            secs: 1_000_000,
            nsecs: 5,
        };
        let rel = AtimePolicy::default();
        assert!(rel.due(&attr(10, 10, 10), now), "atime not after mtime");
        assert!(rel.due(&attr(20, 10, 30), now), "atime not after ctime");
        assert!(!rel.due(&attr(999_990, 10, 10), now), "read lately");
        assert!(
            rel.due(&attr(now.secs - DAY_SECS, 10, 10), now),
            "a day old"
        );
        let strict = AtimePolicy {
            mode: AtimeMode::Strict,
            nodiratime: false,
        };
        assert!(strict.due(&attr(999_990, 10, 10), now));
        let never = AtimePolicy {
            mode: AtimeMode::Never,
            nodiratime: false,
        };
        assert!(!never.due(&attr(10, 10, 10), now));
        let mut flagged = attr(10, 10, 10);
        flagged.flags |= NOATIME_FL;
        assert!(!strict.due(&flagged, now), "chattr +A");
        let mut dir = attr(10, 10, 10);
        dir.kind = Kind::Dir;
        let nodir = AtimePolicy {
            mode: AtimeMode::Strict,
            nodiratime: true,
        };
        assert!(!nodir.due(&dir, now) && nodir.due(&attr(10, 10, 10), now));
    }

    #[test]
    fn pending_updates_show_and_drain() {
        let a = Atimes::default();
        let strict = AtimePolicy {
            mode: AtimeMode::Strict,
            nodiratime: false,
        };
        let base = attr(10, 10, 10);
        a.touch(&strict, 7, &base);
        assert_ne!(a.overlay(7, base).atime, base.atime);
        assert_eq!(a.overlay(8, base).atime, base.atime);
        assert_eq!(a.take(10).len(), 1);
        assert!(a.is_empty());
    }
}
