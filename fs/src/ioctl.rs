//! The pmemfs ioctls: what `pmemfs du` and `pmemfs stat` ask a mount.
//!
//! Both are "restricted" FUSE ioctls (their size and direction are encoded
//! in the number, so the kernel moves the data itself) and answer a fixed
//! array of little-endian u64s.

use pmemfs_ondisk::{Body, Ino, PAGE_SIZE};

use crate::cache::CacheStats;
use crate::error::FsResult;
use crate::state::State;

const fn ior(nr: u32, size: u32) -> u32 {
    (2 << 30) | (size << 16) | ((b'P' as u32) << 8) | nr
}

/// A file's bytes: [total, exclusive, shared, 0]. Total counts mapped pages;
/// exclusive those only this file maps (once); shared the rest.
pub const PMEMFS_IOC_USAGE: u32 = ior(1, 32);
/// The file system's figures, see [`Stats`]; asked of any inode. The
/// size in the number changes with the figures (it was 64 before the page
/// cache's), so an old client gets EINVAL rather than a wrong answer.
pub const PMEMFS_IOC_STATS: u32 = ior(2, Stats::BYTES as u32);
/// Unshares `[off, off + len)` of a file: its in-data is two little-endian
/// u64s, offset and length. This is `fallocate(FALLOC_FL_UNSHARE_RANGE)`,
/// which the kernel refuses on FUSE before the daemon hears of it; the
/// preload library turns that call into this ioctl.
pub const PMEMFS_IOC_UNSHARE: u32 = iow(3, 16);

const fn iow(nr: u32, size: u32) -> u32 {
    (1 << 30) | (size << 16) | ((b'P' as u32) << 8) | nr
}

const fn iowr(nr: u32, size: u32) -> u32 {
    (3 << 30) | (size << 16) | ((b'P' as u32) << 8) | nr
}

/// The usage of a directory's regular files, many a call, so that `pmemfs
/// du` costs a request per directory rather than several per file. In-data:
/// one u64, the position to start at (0 first); out: see [`DirUsage`].
pub const PMEMFS_IOC_DIR_USAGE: u32 = iowr(4, DirUsage::BYTES as u32);

/// The position a [`PMEMFS_IOC_DIR_USAGE`] request starts at: its first
/// u64 (the kernel sends the whole buffer in, as the number says).
pub fn decode_position(bytes: &[u8]) -> Option<u64> {
    Some(u64::from_le_bytes(bytes.get(..8)?.try_into().ok()?))
}

/// The per-opcode request counters ([`crate::ops::OpCounters::encode`]),
/// asked of any inode.
pub const PMEMFS_IOC_OPS: u32 = ior(5, crate::ops::OpCounters::BYTES as u32);
/// Zeroes the request counters: `_IO('P', 6)`.
pub const PMEMFS_IOC_OPS_RESET: u32 = ((b'P' as u32) << 8) | 6;

/// FITRIM (`fstrim`): `_IOWR('X', 121, struct fstrim_range)`, the range
/// being three u64s (start, len, minlen); the answer's len is the bytes
/// trimmed.
pub const FITRIM: u32 = (3 << 30) | (24 << 16) | ((b'X' as u32) << 8) | 121;

/// The range of a FITRIM request: (start, len, minlen) in bytes.
pub fn decode_trim(bytes: &[u8]) -> Option<(u64, u64, u64)> {
    let [start, len, minlen] = decode::<3>(bytes)?;
    Some((start, len, minlen))
}

/// FITRIM's answer: the range with `len` set to the bytes trimmed.
pub fn encode_trim(start: u64, trimmed: u64, minlen: u64) -> Vec<u8> {
    encode(&[start, trimmed, minlen])
}

/// One answer of [`PMEMFS_IOC_DIR_USAGE`]: `[count, next]`, then `count`
/// records of `[ino, total, exclusive, shared]`, zero-padded. `next` is the
/// position to ask for next, or 0 when the directory is done.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DirUsage {
    pub files: Vec<(Ino, Usage)>,
    pub next: u64,
}

impl DirUsage {
    /// Records per answer: as many as fit the 14-bit size of an ioctl
    /// number with the header.
    pub const RECORDS: usize = 500;
    pub const BYTES: usize = 16 + Self::RECORDS * 32;

    pub fn encode(&self) -> Vec<u8> {
        let mut w = vec![self.files.len() as u64, self.next];
        for (ino, u) in &self.files {
            w.extend([*ino, u.total, u.exclusive, u.shared]);
        }
        w.resize(Self::BYTES / 8, 0);
        encode(&w)
    }

    pub fn decode(bytes: &[u8]) -> Option<DirUsage> {
        let w = decode::<{ Self::BYTES / 8 }>(bytes)?;
        let n = usize::try_from(w[0]).ok().filter(|&n| n <= Self::RECORDS)?;
        let files = w[2..2 + 4 * n]
            .chunks_exact(4)
            .map(|r| {
                let u = Usage {
                    total: r[1],
                    exclusive: r[2],
                    shared: r[3],
                };
                (r[0], u)
            })
            .collect();
        Some(DirUsage { files, next: w[1] })
    }
}

/// The (offset, length) of an unshare request.
pub fn decode_range(bytes: &[u8]) -> Option<(u64, u64)> {
    let [off, len] = decode::<2>(bytes)?;
    Some((off, len))
}

/// A file's usage, in bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub total: u64,
    pub exclusive: u64,
    pub shared: u64,
}

/// File-system figures, in pages unless named otherwise, then the page
/// cache's.
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
    pub cache: CacheStats,
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
    /// Words in the encoding.
    pub const WORDS: usize = 21;
    /// Bytes of the encoding: the ioctl's size.
    pub const BYTES: usize = Self::WORDS * 8;

    /// The words in their fixed order: the media's figures, then the page
    /// cache's.
    fn words(&self) -> [u64; Self::WORDS] {
        let c = &self.cache;
        [
            self.data_pages,
            self.free_pages,
            self.used_pages,
            self.referenced_pages,
            self.shared_pages,
            self.inodes,
            self.map_runs,
            self.checkpoint_pages,
            c.inodes,
            c.dax_entries,
            c.dax_pages,
            c.xa_nodes,
            c.xa_bytes,
            c.dram_copies,
            c.dram_bytes,
            c.dram_budget,
            c.dram_hits,
            c.dram_misses,
            c.dram_refused,
            c.numa_nodes,
            c.desc_bytes,
        ]
    }

    pub fn encode(&self) -> Vec<u8> {
        encode(&self.words())
    }

    pub fn decode(bytes: &[u8]) -> Option<Stats> {
        let w = decode::<{ Self::WORDS }>(bytes)?;
        Some(Stats {
            data_pages: w[0],
            free_pages: w[1],
            used_pages: w[2],
            referenced_pages: w[3],
            shared_pages: w[4],
            inodes: w[5],
            map_runs: w[6],
            checkpoint_pages: w[7],
            cache: CacheStats {
                inodes: w[8],
                dax_entries: w[9],
                dax_pages: w[10],
                xa_nodes: w[11],
                xa_bytes: w[12],
                dram_copies: w[13],
                dram_bytes: w[14],
                dram_budget: w[15],
                dram_hits: w[16],
                dram_misses: w[17],
                dram_refused: w[18],
                numa_nodes: w[19],
                desc_bytes: w[20],
            },
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

    /// The usage of the regular files of directory `dir`, from its
    /// `from`th entry on (in name order), at most [`DirUsage::RECORDS`].
    pub fn dir_usage(&self, dir: Ino, from: u64) -> FsResult<DirUsage> {
        let entries = &self.dir(dir)?.entries;
        let mut out = DirUsage::default();
        let skip = usize::try_from(from).unwrap_or(usize::MAX);
        for (pos, (_, &ino)) in (from..).zip(entries.iter().skip(skip)) {
            if out.files.len() == DirUsage::RECORDS {
                out.next = pos;
                break;
            }
            if matches!(self.inode(ino)?.body, Body::File(_)) {
                out.files.push((ino, self.usage(ino)?));
            }
        }
        Ok(out)
    }

    pub fn stats(&self) -> Stats {
        let meta = self.image.meta();
        let mut s = Stats {
            data_pages: self.image.geometry().data_pages(),
            free_pages: self.image.free_pages(),
            inodes: meta.inodes.len() as u64,
            checkpoint_pages: self.image.checkpoint_pfns().len() as u64,
            cache: self.cache().stats(),
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
        // preload/src/lib.rs spells this one out: keep them equal.
        assert_eq!(PMEMFS_IOC_UNSHARE, 0x4010_5003);
        assert_eq!(
            decode_range(&[1, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]),
            Some((1, 2))
        );
        let u = Usage {
            total: 3,
            exclusive: 2,
            shared: 1,
        };
        assert_eq!(Usage::decode(&u.encode()), Some(u));
        assert_eq!(Usage::decode(&[0; 31]), None);
        assert_eq!(PMEMFS_IOC_STATS, 0x80a8_5002);
        let mut s = Stats {
            data_pages: 9,
            map_runs: 4,
            ..Stats::default()
        };
        s.cache.dram_hits = 7;
        s.cache.desc_bytes = 11;
        let bytes = s.encode();
        assert_eq!(bytes.len(), Stats::BYTES);
        assert_eq!(&bytes[16 * 8..17 * 8], &7u64.to_le_bytes());
        assert_eq!(Stats::decode(&bytes), Some(s));
        assert_eq!(Stats::decode(&bytes[..64]), None);
        // fstrim's number, as linux/fs.h spells it.
        assert_eq!(FITRIM, 0xc018_5879);
        assert_eq!(decode_trim(&encode_trim(1, 2, 3)), Some((1, 2, 3)));
        const { assert!(DirUsage::BYTES < 1 << 14) };
        let d = DirUsage {
            files: vec![(5, u), (9, Usage::default())],
            next: 500,
        };
        assert_eq!(DirUsage::decode(&d.encode()), Some(d));
        let mut bad = DirUsage::default().encode();
        bad[0] = 255;
        bad[1] = 255;
        assert_eq!(DirUsage::decode(&bad), None);
    }
}
