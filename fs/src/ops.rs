//! Per-opcode request counters: how many requests of each FUSE opcode the
//! daemon served, their total and their longest service time. Every
//! request path is judged by them (`pmemfs stat --ops MOUNT`): they show
//! the round trips a user operation costs, and where the daemon's time
//! goes.
//!
//! Three relaxed atomics per opcode, updated once per request when its
//! timer drops (after the reply went out): no lock, and on the hot path
//! one clock read at each end.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// The opcodes counted, named as in the FUSE protocol (`FUSE_LOOKUP` is
/// `LOOKUP`). `RENAME` counts rename2 too, and `FORGET` each node of a
/// BATCH_FORGET: fuser hands both to one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(usize)]
pub enum Opcode {
    Lookup,
    Forget,
    Getattr,
    Setattr,
    Readlink,
    Symlink,
    Mknod,
    Mkdir,
    Unlink,
    Rmdir,
    Rename,
    Link,
    Open,
    Read,
    Write,
    Statfs,
    Release,
    Fsync,
    Setxattr,
    Getxattr,
    Listxattr,
    Removexattr,
    Flush,
    Opendir,
    Readdir,
    Releasedir,
    Fsyncdir,
    Create,
    Fallocate,
    Lseek,
    Ioctl,
    CopyFileRange,
}

impl Opcode {
    /// Every opcode, in the order of the counters' encoding.
    pub const ALL: [Opcode; 32] = [
        Opcode::Lookup,
        Opcode::Forget,
        Opcode::Getattr,
        Opcode::Setattr,
        Opcode::Readlink,
        Opcode::Symlink,
        Opcode::Mknod,
        Opcode::Mkdir,
        Opcode::Unlink,
        Opcode::Rmdir,
        Opcode::Rename,
        Opcode::Link,
        Opcode::Open,
        Opcode::Read,
        Opcode::Write,
        Opcode::Statfs,
        Opcode::Release,
        Opcode::Fsync,
        Opcode::Setxattr,
        Opcode::Getxattr,
        Opcode::Listxattr,
        Opcode::Removexattr,
        Opcode::Flush,
        Opcode::Opendir,
        Opcode::Readdir,
        Opcode::Releasedir,
        Opcode::Fsyncdir,
        Opcode::Create,
        Opcode::Fallocate,
        Opcode::Lseek,
        Opcode::Ioctl,
        Opcode::CopyFileRange,
    ];

    /// The protocol's name, without `FUSE_`.
    pub fn name(self) -> &'static str {
        use Opcode::*;
        match self {
            Lookup => "LOOKUP",
            Forget => "FORGET",
            Getattr => "GETATTR",
            Setattr => "SETATTR",
            Readlink => "READLINK",
            Symlink => "SYMLINK",
            Mknod => "MKNOD",
            Mkdir => "MKDIR",
            Unlink => "UNLINK",
            Rmdir => "RMDIR",
            Rename => "RENAME",
            Link => "LINK",
            Open => "OPEN",
            Read => "READ",
            Write => "WRITE",
            Statfs => "STATFS",
            Release => "RELEASE",
            Fsync => "FSYNC",
            Setxattr => "SETXATTR",
            Getxattr => "GETXATTR",
            Listxattr => "LISTXATTR",
            Removexattr => "REMOVEXATTR",
            Flush => "FLUSH",
            Opendir => "OPENDIR",
            Readdir => "READDIR",
            Releasedir => "RELEASEDIR",
            Fsyncdir => "FSYNCDIR",
            Create => "CREATE",
            Fallocate => "FALLOCATE",
            Lseek => "LSEEK",
            Ioctl => "IOCTL",
            CopyFileRange => "COPY_FILE_RANGE",
        }
    }
}

/// One opcode's figures.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct OpStat {
    pub count: u64,
    /// Service time summed, in nanoseconds.
    pub total_ns: u64,
    pub max_ns: u64,
}

/// The counters of a mount.
#[derive(Debug, Default)]
pub struct OpCounters {
    counts: [[AtomicU64; 3]; Opcode::ALL.len()],
}

/// Times one request; records it when dropped.
pub struct Timer<'a> {
    counters: &'a OpCounters,
    op: Opcode,
    start: Instant,
}

impl Drop for Timer<'_> {
    fn drop(&mut self) {
        let ns = u64::try_from(self.start.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let [count, total, max] = &self.counters.counts[self.op as usize];
        count.fetch_add(1, Ordering::Relaxed);
        total.fetch_add(ns, Ordering::Relaxed);
        max.fetch_max(ns, Ordering::Relaxed);
    }
}

impl OpCounters {
    /// Starts timing a request of `op`.
    pub fn time(&self, op: Opcode) -> Timer<'_> {
        Timer {
            counters: self,
            op,
            start: Instant::now(),
        }
    }

    pub fn get(&self, op: Opcode) -> OpStat {
        let [c, t, m] = &self.counts[op as usize];
        OpStat {
            count: c.load(Ordering::Relaxed),
            total_ns: t.load(Ordering::Relaxed),
            max_ns: m.load(Ordering::Relaxed),
        }
    }

    /// Zeroes every counter (`pmemfs stat --ops --reset`).
    pub fn reset(&self) {
        for c in self.counts.iter().flatten() {
            c.store(0, Ordering::Relaxed);
        }
    }

    /// Every opcode's figures, three little-endian u64s each, in
    /// [`Opcode::ALL`] order: the answer of `PMEMFS_IOC_OPS`.
    pub fn encode(&self) -> Vec<u8> {
        Opcode::ALL
            .iter()
            .flat_map(|&op| {
                let s = self.get(op);
                [s.count, s.total_ns, s.max_ns]
            })
            .flat_map(u64::to_le_bytes)
            .collect()
    }

    /// Bytes of [`OpCounters::encode`].
    pub const BYTES: usize = Opcode::ALL.len() * 24;

    /// The figures from an encoding, with their names.
    pub fn decode(bytes: &[u8]) -> Option<Vec<(&'static str, OpStat)>> {
        if bytes.len() != Self::BYTES {
            return None;
        }
        let word = |i: usize| {
            let b: [u8; 8] = bytes[i * 8..i * 8 + 8].try_into().ok()?;
            Some(u64::from_le_bytes(b))
        };
        Opcode::ALL
            .iter()
            .enumerate()
            .map(|(i, op)| {
                let s = OpStat {
                    count: word(3 * i)?,
                    total_ns: word(3 * i + 1)?,
                    max_ns: word(3 * i + 2)?,
                };
                Some((op.name(), s))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timers_count_and_round_trip() {
        let c = OpCounters::default();
        for (i, op) in Opcode::ALL.iter().enumerate() {
            assert_eq!(*op as usize, i, "ALL is in discriminant order");
        }
        drop(c.time(Opcode::Getxattr));
        drop(c.time(Opcode::Getxattr));
        let s = c.get(Opcode::Getxattr);
        assert_eq!(s.count, 2);
        assert!(s.max_ns <= s.total_ns);
        let d = OpCounters::decode(&c.encode()).unwrap();
        assert_eq!(d.iter().find(|(n, _)| *n == "GETXATTR").unwrap().1, s);
        assert_eq!(d.iter().filter(|(_, s)| s.count > 0).count(), 1);
        c.reset();
        assert_eq!(c.get(Opcode::Getxattr), OpStat::default());
        assert_eq!(OpCounters::decode(&[0; 8]), None);
    }
}
