//! The pmemfs ioctls: what `pmemfs du` and `pmemfs stat` ask a mount.
//!
//! Both are "restricted" FUSE ioctls (their size and direction are encoded
//! in the number, so the kernel moves the data itself) and answer a fixed
//! array of little-endian u64s.

use pmemfs_ondisk::{Body, Ino, PAGE_SIZE};

use crate::error::FsResult;
use crate::state::State;

const fn ior(nr: u32, size: u32) -> u32 {
    (2 << 30) | (size << 16) | ((b'P' as u32) << 8) | nr
}

/// A file's bytes: [total, exclusive, shared, 0]. Total counts mapped pages;
/// exclusive those only this file maps (once); shared the rest.
pub const PMEMFS_IOC_USAGE: u32 = ior(1, 32);
/// The file system's figures, see [`Stats`]; asked of any inode.
pub const PMEMFS_IOC_STATS: u32 = ior(2, 64);

/// A file's usage, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub exclusive: u64,
    pub shared: u64,
}

/// File-system figures, in pages unless named otherwise.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    pub data_pages: u64,
    pub free_pages: u64,
    /// Pages some file maps, each counted once.
    pub used_pages: u64,
    /// Page references summed over files: what the files would take
    /// unshared.
    pub referenced_pages: u64,
    /// Used pages with more than one reference.
    pub shared_pages: u64,
    pub inodes: u64,
    /// Runs in the page maps: page-cache entries after merging.
    pub map_runs: u64,
    pub checkpoint_pages: u64,
}

fn encode(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

fn decode<const N: usize>(bytes: &[u8]) -> Option<[u64; N]> {
    if bytes.len() != N * 8 {
        return None;
    }
    let mut out = [0u64; N];
    for (o, c) in out.iter_mut().zip(bytes.chunks_exact(8)) {
        *o = u64::from_le_bytes(c.try_into().ok()?);
    }
    Some(out)
}

impl Usage {
    pub fn encode(&self) -> Vec<u8> {
        encode(&[self.total, self.exclusive, self.shared, 0])
    }
    pub fn decode(bytes: &[u8]) -> Option<Usage> {
        let [total, exclusive, shared, _] = decode::<4>(bytes)?;
        Some(Usage {
            total,
            exclusive,
            shared,
        })
    }
}

impl Stats {
    pub fn encode(&self) -> Vec<u8> {
        encode(&[
            self.data_pages,
            self.free_pages,
            self.used_pages,
            self.referenced_pages,
            self.shared_pages,
            self.inodes,
            self.map_runs,
            self.checkpoint_pages,
        ])
    }
    pub fn decode(bytes: &[u8]) -> Option<Stats> {
        let w = decode::<8>(bytes)?;
        Some(Stats {
            data_pages: w[0],
            free_pages: w[1],
            used_pages: w[2],
            referenced_pages: w[3],
            shared_pages: w[4],
            inodes: w[5],
            map_runs: w[6],
            checkpoint_pages: w[7],
        })
    }
}

impl State {
    /// A regular file's usage; other inodes use nothing.
    pub fn usage(&self, ino: Ino) -> FsResult<Usage> {
        let mut u = Usage::default();
        if let Body::File(map) = &self.inode(ino)?.body {
            let shares = &self.image.meta().shares;
            for r in map.iter() {
                u.total += r.len * PAGE_SIZE;
                for c in shares.range(r.value, r.len) {
                    if c.value == 1 {
                        u.exclusive += c.len * PAGE_SIZE;
                    }
                }
            }
            u.shared = u.total - u.exclusive;
        }
        Ok(u)
    }

    pub fn stats(&self) -> Stats {
        let meta = self.image.meta();
        let mut s = Stats {
            data_pages: self.image.geometry().data_pages(),
            free_pages: self.image.free_pages(),
            inodes: meta.inodes.len() as u64,
            checkpoint_pages: self.image.checkpoint_pfns().len() as u64,
            ..Stats::default()
        };
        for r in meta.shares.iter() {
            s.used_pages += r.len;
            s.referenced_pages += r.len * u64::from(r.value);
            if r.value > 1 {
                s.shared_pages += r.len;
            }
        }
        s.map_runs = meta
            .inodes
            .values()
            .filter_map(|i| i.pages())
            .map(|m| m.run_count() as u64)
            .sum();
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_and_round_trips() {
        assert_eq!(PMEMFS_IOC_USAGE, 0x8020_5001);
        let u = Usage {
            total: 3,
            exclusive: 2,
            shared: 1,
        };
        assert_eq!(Usage::decode(&u.encode()), Some(u));
        assert_eq!(Usage::decode(&[0; 31]), None);
        let s = Stats {
            data_pages: 9,
            map_runs: 4,
            ..Stats::default()
        };
        assert_eq!(Stats::decode(&s.encode()), Some(s));
    }
}
