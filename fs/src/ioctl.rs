//! The pmemfs ioctls: what `pmemfs du` and `pmemfs stat` ask a mount.
//!
//! Both are "restricted" FUSE ioctls (their size and direction are encoded
//! in the number, so the kernel moves the data itself) and answer a fixed
//! array of little-endian u64s.

use pmemfs_ondisk::{Body, Ino, PAGE_SIZE};

use crate::cache::CacheStats;
use crate::data::pages_of;
use crate::error::{fail, FsResult};
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

/// A file's extents from a byte offset on: what `FS_IOC_FIEMAP` reports
/// (the kernel refuses FIEMAP on FUSE before the daemon hears of it, so the
/// preload library asks this instead) and where the preload's clone finds
/// the source's data. In-data: one u64, the byte offset to start at; out:
/// see [`Extents`].
pub const PMEMFS_IOC_EXTENTS: u32 = iowr(7, Extents::BYTES as u32);

/// FIDEDUPERANGE, asked of the source: see [`crate::dedupe`]. In-data: a
/// [`DedupeRequest`]; out: a [`DedupeAnswer`] in the same buffer.
pub const PMEMFS_IOC_DEDUPE: u32 = iowr(8, DEDUPE_BYTES as u32);

/// Destinations per dedupe request: as the kernel's, whose request must
/// fit a page (24 bytes of header and 32 per destination).
pub const DEDUPE_DESTS: usize = 127;
const DEDUPE_BYTES: usize = 24 + DEDUPE_DESTS * 16;

/// The fingerprints of a file's pages, for `pmemfs dedupe`: see
/// [`crate::dedupe`]. In-data: one u64, the page index to start at; out:
/// see [`PageHashes`].
pub const PMEMFS_IOC_PAGE_HASHES: u32 = iowr(9, PageHashes::BYTES as u32);

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
        let records = self
            .files
            .iter()
            .map(|(ino, u)| [*ino, u.total, u.exclusive, u.shared]);
        encode_listing(
            vec![self.files.len() as u64, self.next],
            records,
            Self::BYTES,
        )
    }

    pub fn decode(bytes: &[u8]) -> Option<DirUsage> {
        let w = decode::<{ Self::BYTES / 8 }>(bytes)?;
        let files = decode_listing::<4>(&w, 2, 0, Self::RECORDS)?
            .into_iter()
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

/// One extent: `length` bytes of the file from `logical` on, at byte
/// `physical` of the image, on consecutive pages that are all shared with
/// another reference (`shared`) or all not.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub logical: u64,
    pub physical: u64,
    pub length: u64,
    pub shared: bool,
}

/// One answer of [`PMEMFS_IOC_EXTENTS`]: `[count, next, last]`, then
/// `count` records of `[logical, physical, length, flags]` (flags bit 0:
/// shared), zero-padded. `next` is the byte offset to ask from next; `last`
/// is 1 when no extent follows these. The preload library reads this
/// layout (preload/src/lib.rs): the fixed-bytes test below pins it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Extents {
    pub extents: Vec<Extent>,
    pub next: u64,
    pub last: bool,
}

impl Extents {
    /// Records per answer: as many as fit the 14-bit size of an ioctl
    /// number with the header.
    pub const RECORDS: usize = 400;
    pub const BYTES: usize = 24 + Self::RECORDS * 32;
    /// Flag bit of a shared extent.
    pub const SHARED: u64 = 1;

    pub fn encode(&self) -> Vec<u8> {
        let head = vec![self.extents.len() as u64, self.next, self.last as u64];
        let records = self.extents.iter().map(|e| {
            let flags = if e.shared { Self::SHARED } else { 0 };
            [e.logical, e.physical, e.length, flags]
        });
        encode_listing(head, records, Self::BYTES)
    }

    pub fn decode(bytes: &[u8]) -> Option<Extents> {
        let w = decode::<{ Self::BYTES / 8 }>(bytes)?;
        let extents = decode_listing::<4>(&w, 3, 0, Self::RECORDS)?
            .into_iter()
            .map(|r| Extent {
                logical: r[0],
                physical: r[1],
                length: r[2],
                shared: r[3] & Self::SHARED != 0,
            })
            .collect();
        Some(Extents {
            extents,
            next: w[1],
            last: w[2] != 0,
        })
    }
}

/// A dedupe request: `[src_off, len, count]`, then `count` records of
/// `[dst_ino, dst_off]`, zero-padded to the ioctl's size. The preload
/// library writes this layout (preload/src/lib.rs): the fixed-bytes test
/// pins it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupeRequest {
    pub src_off: u64,
    pub len: u64,
    pub dsts: Vec<(Ino, u64)>,
}

impl DedupeRequest {
    pub fn encode(&self) -> Vec<u8> {
        let head = vec![self.src_off, self.len, self.dsts.len() as u64];
        let records = self.dsts.iter().map(|&(ino, off)| [ino, off]);
        encode_listing(head, records, DEDUPE_BYTES)
    }

    pub fn decode(bytes: &[u8]) -> Option<DedupeRequest> {
        let w = decode::<{ DEDUPE_BYTES / 8 }>(bytes)?;
        let dsts = decode_listing::<2>(&w, 3, 2, DEDUPE_DESTS)?
            .into_iter()
            .map(|[ino, off]| (ino, off))
            .collect();
        Some(DedupeRequest {
            src_off: w[0],
            len: w[1],
            dsts,
        })
    }
}

/// A dedupe answer: `[0, 0, count]`, then per destination `[status,
/// bytes]`, status as the kernel's `file_dedupe_range_info.status` (0
/// same, 1 differs, a negative errno) in an i64's bits.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DedupeAnswer(pub Vec<crate::dedupe::Outcome>);

impl DedupeAnswer {
    pub fn encode(&self) -> Vec<u8> {
        use crate::dedupe::Outcome;
        let records = self.0.iter().map(|o| {
            let (status, bytes) = match *o {
                Outcome::Same { bytes } => (0i64, bytes),
                Outcome::Differs => (1, 0),
                Outcome::Failed(e) => (-i64::from(e), 0),
            };
            [status as u64, bytes]
        });
        encode_listing(vec![0, 0, self.0.len() as u64], records, DEDUPE_BYTES)
    }

    pub fn decode(bytes: &[u8]) -> Option<DedupeAnswer> {
        use crate::dedupe::Outcome;
        let w = decode::<{ DEDUPE_BYTES / 8 }>(bytes)?;
        let outcomes = decode_listing::<2>(&w, 3, 2, DEDUPE_DESTS)?
            .into_iter()
            .map(|r| match r[0] as i64 {
                0 => Some(Outcome::Same { bytes: r[1] }),
                1 => Some(Outcome::Differs),
                e if e < 0 => i32::try_from(-e).ok().map(Outcome::Failed),
                _ => None,
            })
            .collect::<Option<Vec<_>>>()?;
        Some(DedupeAnswer(outcomes))
    }
}

/// One page's fingerprint: its index in the file, its pfn, the hash of
/// its bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PageHash {
    pub index: u64,
    pub pfn: u64,
    pub hash: u64,
}

/// One answer of [`PMEMFS_IOC_PAGE_HASHES`]: `[count, next, last]`, then
/// `count` records of `[index, pfn, hash]`, zero-padded. `next` is the page
/// index to ask from next; `last` is 1 when no page follows these.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageHashes {
    pub pages: Vec<PageHash>,
    pub next: u64,
    pub last: bool,
}

impl PageHashes {
    /// Records per answer: as many as fit the 14-bit size of an ioctl
    /// number with the header.
    pub const RECORDS: usize = 600;
    pub const BYTES: usize = 24 + Self::RECORDS * 24;

    pub fn encode(&self) -> Vec<u8> {
        let head = vec![self.pages.len() as u64, self.next, self.last as u64];
        let records = self.pages.iter().map(|p| [p.index, p.pfn, p.hash]);
        encode_listing(head, records, Self::BYTES)
    }

    pub fn decode(bytes: &[u8]) -> Option<PageHashes> {
        let w = decode::<{ Self::BYTES / 8 }>(bytes)?;
        let pages = decode_listing::<3>(&w, 3, 0, Self::RECORDS)?
            .into_iter()
            .map(|r| PageHash {
                index: r[0],
                pfn: r[1],
                hash: r[2],
            })
            .collect();
        Some(PageHashes {
            pages,
            next: w[1],
            last: w[2] != 0,
        })
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
    /// The online dedupe scanner's counters.
    pub ksm: crate::ksm::KsmStats,
}

fn encode(words: &[u64]) -> Vec<u8> {
    words.iter().flat_map(|w| w.to_le_bytes()).collect()
}

/// A listing, the layout of every pmemfs ioctl that carries a list:
/// `head` words, then records of `R` words, zero-padded to `bytes`.
fn encode_listing<const R: usize>(
    mut head: Vec<u64>,
    records: impl IntoIterator<Item = [u64; R]>,
    bytes: usize,
) -> Vec<u8> {
    head.extend(records.into_iter().flatten());
    head.resize(bytes / 8, 0);
    encode(&head)
}

/// The records of a listing's words `w`: they start after `head` words,
/// and word `count_at` counts them, at most `max`.
fn decode_listing<const R: usize>(
    w: &[u64],
    head: usize,
    count_at: usize,
    max: usize,
) -> Option<Vec<[u64; R]>> {
    let n = usize::try_from(*w.get(count_at)?)
        .ok()
        .filter(|&n| n <= max)?;
    w.get(head..head + R * n)?
        .chunks_exact(R)
        .map(|c| c.try_into().ok())
        .collect()
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
    pub const WORDS: usize = 29;
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
            self.ksm.on as u64,
            self.ksm.scanned,
            self.ksm.merged,
            self.ksm.unshared,
            self.ksm.differed,
            self.ksm.files,
            self.ksm.queued,
            self.ksm.shared,
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
            ksm: crate::ksm::KsmStats {
                on: w[21] != 0,
                scanned: w[22],
                merged: w[23],
                unshared: w[24],
                differed: w[25],
                files: w[26],
                queued: w[27],
                shared: w[28],
            },
        })
    }
}

impl State {
    /// A regular file's usage; other inodes use nothing.
    pub fn usage(&self, ino: Ino) -> FsResult<Usage> {
        let mut u = Usage::default();
        if let Body::File(_) = &self.inode(ino)?.body {
            for r in pages_of(self, ino)?.range(0, u64::MAX)? {
                u.total += r.len * PAGE_SIZE;
                for c in self.image.shared_in(r.value, r.len)? {
                    u.shared += c.len * PAGE_SIZE;
                }
            }
            u.exclusive = u.total - u.shared;
        }
        Ok(u)
    }

    /// The extents of file `ino` from byte `from` on, at most
    /// [`Extents::RECORDS`]: runs of consecutive pages on consecutive
    /// pfns, split where the pages' sharing changes; one that starts
    /// before `from`'s page is reported from that page on.
    pub fn extents(&self, ino: Ino, from: u64) -> FsResult<Extents> {
        let Body::File(_) = &self.inode(ino)?.body else {
            return fail(libc::EINVAL);
        };
        let map = pages_of(self, ino)?;
        let mut out = Extents::default();
        let mut index = from / PAGE_SIZE;
        while let Some(run) = map.first_at_or_after(index)? {
            for c in self.image.share_counts_in(run.value, run.len)? {
                let e = Extent {
                    logical: (run.start + (c.start - run.value)) * PAGE_SIZE,
                    physical: c.start * PAGE_SIZE,
                    length: c.len * PAGE_SIZE,
                    shared: c.value > 1,
                };
                if let Some(p) = out.extents.last_mut() {
                    if p.shared == e.shared
                        && p.logical + p.length == e.logical
                        && p.physical + p.length == e.physical
                    {
                        p.length += e.length;
                        continue;
                    }
                }
                if out.extents.len() == Extents::RECORDS {
                    out.next = e.logical;
                    return Ok(out);
                }
                out.extents.push(e);
            }
            index = run.start + run.len;
        }
        out.last = true;
        Ok(out)
    }

    /// The usage of the regular files of directory `dir`, from its
    /// `from`th entry on (in the directory's order), at most
    /// [`DirUsage::RECORDS`].
    pub fn dir_usage(&self, dir: Ino, from: u64) -> FsResult<DirUsage> {
        let entries = self.dir(dir)?.list(&self.image.view())?;
        let mut out = DirUsage::default();
        let skip = usize::try_from(from).unwrap_or(usize::MAX);
        for (pos, (_, ino)) in (from..).zip(entries.into_iter().skip(skip)) {
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

    pub fn stats(&self) -> FsResult<Stats> {
        let meta = self.image.meta();
        let mut s = Stats {
            data_pages: self.image.geometry().data_pages(),
            free_pages: self.image.free_pages(),
            inodes: meta.inodes.len() as u64,
            checkpoint_pages: self.image.checkpoint_pfns().len() as u64,
            cache: self.cache().stats(),
            ksm: self.ksm_queue().stats(),
            ..Stats::default()
        };
        for r in self.image.counted_shares()?.iter() {
            s.used_pages += r.len;
            s.referenced_pages += r.len * u64::from(r.value);
        }
        s.shared_pages = self.image.shared_runs()?.0.pages();
        s.map_runs = meta
            .inodes
            .values()
            .filter_map(|i| i.pages())
            .map(|m| m.runs())
            .sum();
        Ok(s)
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
        assert_eq!(PMEMFS_IOC_STATS, 0x80e8_5002);
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

    #[test]
    fn dedupe_round_trip_and_fixed_bytes() {
        use crate::dedupe::Outcome;
        // preload/src/lib.rs spells the number and the layouts out.
        assert_eq!(PMEMFS_IOC_DEDUPE, 0xc808_5008);
        let r = DedupeRequest {
            src_off: 4096,
            len: 8192,
            dsts: vec![(12, 0), (13, 65536)],
        };
        let bytes = r.encode();
        assert_eq!(bytes.len(), DEDUPE_BYTES);
        assert_eq!(&bytes[..8], &4096u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &2u64.to_le_bytes());
        assert_eq!(&bytes[24..32], &12u64.to_le_bytes());
        assert_eq!(&bytes[48..56], &65536u64.to_le_bytes());
        assert!(bytes[56..].iter().all(|&b| b == 0));
        assert_eq!(DedupeRequest::decode(&bytes), Some(r));
        let a = DedupeAnswer(vec![
            Outcome::Same { bytes: 8192 },
            Outcome::Differs,
            Outcome::Failed(libc::EPERM),
        ]);
        let bytes = a.encode();
        assert_eq!(&bytes[16..24], &3u64.to_le_bytes());
        assert_eq!(
            &bytes[24..40],
            &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0x20, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(&bytes[40..48], &1u64.to_le_bytes());
        assert_eq!(&bytes[56..64], &(-1i64).to_le_bytes(), "-EPERM");
        assert_eq!(DedupeAnswer::decode(&bytes), Some(a));
        let mut bad = bytes.clone();
        bad[16] = 200;
        assert_eq!(DedupeAnswer::decode(&bad), None, "more than fit");
        assert_eq!(DedupeRequest::decode(&bytes[..64]), None, "short");
    }

    #[test]
    fn page_hashes_round_trip() {
        const { assert!(PageHashes::BYTES < 1 << 14) };
        let h = PageHashes {
            pages: vec![PageHash {
                index: 3,
                pfn: 99,
                hash: 0xdead_beef,
            }],
            next: 0,
            last: true,
        };
        let bytes = h.encode();
        assert_eq!(&bytes[..8], &1u64.to_le_bytes());
        assert_eq!(&bytes[16..24], &1u64.to_le_bytes());
        assert_eq!(&bytes[40..48], &0xdead_beefu64.to_le_bytes());
        assert_eq!(PageHashes::decode(&bytes), Some(h));
        assert_eq!(PageHashes::decode(&bytes[..48]), None);
    }

    #[test]
    fn page_hashes_of_equal_pages_are_equal_and_holes_have_none() {
        let mut st = state();
        let a = file(&mut st, "a");
        let pg = PAGE_SIZE as usize;
        st.write(a, 0, &vec![5u8; 2 * pg]).expect("write");
        st.write(a, 4 * PAGE_SIZE, &[6u8; 10]).expect("write");
        let h = st.page_hashes(a, 0).expect("hashes");
        assert!(h.last);
        // Pages 0 and 1 (equal bytes), not the hole, not the partial tail.
        assert_eq!(h.pages.iter().map(|p| p.index).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(h.pages[0].hash, h.pages[1].hash);
        assert_ne!(h.pages[0].pfn, h.pages[1].pfn);
        st.write(a, 5 * PAGE_SIZE, &vec![6u8; pg]).expect("write");
        let h = st.page_hashes(a, 1).expect("hashes");
        // Page 4 is whole now that the file ends after page 5.
        assert_eq!(
            h.pages.iter().map(|p| p.index).collect::<Vec<_>>(),
            [1, 4, 5]
        );
        assert_ne!(h.pages[0].hash, h.pages[1].hash);
        assert_ne!(h.pages[1].hash, h.pages[2].hash);
        assert_eq!(
            h.pages[1].hash,
            crate::dedupe::fingerprint(&st_page(&st, a, 4))
        );
    }

    fn st_page(st: &State, ino: Ino, index: u64) -> Vec<u8> {
        st.read(ino, index * PAGE_SIZE, PAGE_SIZE as u32)
            .expect("read")
            .as_slice()
            .to_vec()
    }

    #[test]
    fn extents_round_trip_and_fixed_bytes() {
        // preload/src/lib.rs spells the number and the layout out.
        assert_eq!(PMEMFS_IOC_EXTENTS, 0xf218_5007);
        const { assert!(Extents::BYTES < 1 << 14) };
        let e = Extents {
            extents: vec![
                Extent {
                    logical: 0,
                    physical: 0x10_0000,
                    length: 0x2000,
                    shared: true,
                },
                Extent {
                    logical: 0x4000,
                    physical: 0x5000,
                    length: 0x1000,
                    shared: false,
                },
            ],
            next: 0,
            last: true,
        };
        let bytes = e.encode();
        assert_eq!(bytes.len(), Extents::BYTES);
        let words: Vec<u64> = bytes[..11 * 8]
            .chunks_exact(8)
            .map(|c| u64::from_le_bytes(c.try_into().unwrap()))
            .collect();
        assert_eq!(
            words,
            [2, 0, 1, 0, 0x10_0000, 0x2000, 1, 0x4000, 0x5000, 0x1000, 0]
        );
        assert!(bytes[11 * 8..].iter().all(|&b| b == 0), "zero-padded");
        assert_eq!(Extents::decode(&bytes), Some(e));
        let mut bad = bytes.clone();
        bad[0] = 0xff;
        bad[1] = 0xff;
        assert_eq!(Extents::decode(&bad), None, "more records than fit");
        assert_eq!(Extents::decode(&bytes[..100]), None, "short");
    }

    fn state() -> State {
        use pmemfs_ondisk::{format_pmem, FormatOptions, Image, Pmem, MIN_IMAGE_BYTES};
        let pmem = Pmem::memory(MIN_IMAGE_BYTES);
        format_pmem(&pmem, &FormatOptions::fixed("extents")).expect("format");
        State::new(Image::open_pmem(pmem).expect("open"), false)
    }

    fn file(st: &mut State, name: &str) -> Ino {
        use crate::namespace::{Caller, NewInode};
        let new = NewInode {
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
            target: None,
        };
        st.make(
            pmemfs_ondisk::ROOT_INO,
            name.as_bytes(),
            new,
            Caller { uid: 0, gid: 0 },
        )
        .expect("create")
    }

    #[test]
    fn extents_follow_the_page_map_and_its_sharing() {
        let mut st = state();
        let a = file(&mut st, "a");
        let pg = PAGE_SIZE as usize;
        // Pages 0..4 and 8..10, a hole between.
        st.write(a, 0, &vec![1u8; 4 * pg]).expect("write");
        st.write(a, 8 * PAGE_SIZE, &vec![2u8; 2 * pg])
            .expect("write");
        let b = file(&mut st, "b");
        // b shares a's pages 1 and 2 at its own pages 1 and 2.
        st.copy_range(a, PAGE_SIZE, b, PAGE_SIZE, 2 * PAGE_SIZE)
            .expect("clone");
        let e = st.extents(a, 0).expect("extents");
        assert!(e.last);
        let shape: Vec<(u64, u64, bool)> = e
            .extents
            .iter()
            .map(|x| (x.logical / PAGE_SIZE, x.length / PAGE_SIZE, x.shared))
            .collect();
        // Page 0 and 3 alone, 1..3 shared, 8..10 alone; a run on
        // consecutive pfns may already have been split by the allocator,
        // so only the sharing boundaries are certain.
        let pages = |from: u64, to: u64, shared: bool| {
            shape
                .iter()
                .filter(|&&(l, n, s)| l >= from && l + n <= to && s == shared)
                .map(|&(_, n, _)| n)
                .sum::<u64>()
        };
        assert_eq!(pages(0, 1, false), 1, "{shape:?}");
        assert_eq!(pages(1, 3, true), 2, "{shape:?}");
        assert_eq!(pages(3, 4, false), 1, "{shape:?}");
        assert_eq!(pages(8, 10, false), 2, "{shape:?}");
        assert_eq!(shape.iter().map(|s| s.1).sum::<u64>(), 6, "{shape:?}");
        let eb = st.extents(b, 0).expect("extents");
        assert_eq!(eb.extents.len(), 1);
        assert_eq!(
            (
                eb.extents[0].logical,
                eb.extents[0].length,
                eb.extents[0].shared
            ),
            (PAGE_SIZE, 2 * PAGE_SIZE, true)
        );
        let shared_a: Vec<u64> = e
            .extents
            .iter()
            .filter(|x| x.shared)
            .map(|x| x.physical)
            .collect();
        assert_eq!(shared_a, [eb.extents[0].physical], "the same pages");
        // From the middle of the hole on: only the last run.
        let tail = st.extents(a, 5 * PAGE_SIZE).expect("extents");
        assert_eq!(
            tail.extents.iter().map(|x| x.logical).min(),
            Some(8 * PAGE_SIZE)
        );
        assert!(st
            .extents(a, 10 * PAGE_SIZE)
            .expect("extents")
            .extents
            .is_empty());
    }

    #[test]
    fn many_extents_come_in_answers_that_continue() {
        let mut st = state();
        let a = file(&mut st, "a");
        let n = Extents::RECORDS as u64 + 50;
        for i in 0..n {
            st.write(a, 2 * i * PAGE_SIZE, &[7u8; 10]).expect("write");
        }
        let mut from = 0;
        let mut got = Vec::new();
        loop {
            let e = st.extents(a, from).expect("extents");
            got.extend(e.extents.iter().map(|x| x.logical / PAGE_SIZE));
            if e.last {
                break;
            }
            assert_eq!(e.extents.len(), Extents::RECORDS);
            from = e.next;
        }
        assert_eq!(got, (0..n).map(|i| 2 * i).collect::<Vec<_>>());
    }
}
