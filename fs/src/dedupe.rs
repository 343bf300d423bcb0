//! Dedupe: a range of one file shared into others where, and only where,
//! their bytes are equal (`FIDEDUPERANGE`, "KSM for file pages").
//!
//! The kernel refuses `FIDEDUPERANGE` on FUSE before the daemon hears of
//! it; the preload library turns it into `PMEMFS_IOC_DEDUPE` on the source
//! (the destinations named by inode number), and this answers it with the
//! semantics of the kernel's `vfs_dedupe_file_range`: per destination the
//! ranges are compared byte for byte and shared only if equal
//! (`FILE_DEDUPE_RANGE_SAME`, else `_DIFFERS`, or an errno), offsets
//! page-aligned, a length that is not shortened to whole pages unless the
//! range ends at both files' EOF, the source untouched, neither file's
//! times changed. The comparison and the sharing happen under the state's
//! exclusive lock, so no writer of either file comes between them, and
//! every destination's sharing is one journal transaction.
//!
//! Finding the equal pages is the deduplicator's job (`pmemfs dedupe`):
//! [`State::page_hashes`] gives it a fingerprint per page, taken from pmem
//! here, so that it scans without copying file data through FUSE.

use pmemfs_ondisk::{Attr, Ino, Kind, Op, PAGE_SIZE};

use crate::data::pages_of;
use crate::error::{fail, FsResult};
use crate::ioctl::{PageHash, PageHashes};
use crate::state::State;

/// The most one call compares and shares, as the kernel's 1 GiB limit per
/// dedupe request.
pub const MAX_DEDUPE: u64 = 1 << 30;

/// What became of one destination.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Equal, and now shared: `bytes` as the kernel reports them (the
    /// request's length after the 1 GiB limit).
    Same { bytes: u64 },
    /// The bytes differ: nothing changed.
    Differs,
    /// Refused with this errno: nothing changed.
    Failed(i32),
}

/// A page's fingerprint: xxh3, 64 bits. Equal fingerprints make pages
/// candidates only; their bytes are compared before anything is shared.
pub fn fingerprint(page: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(page)
}

impl State {
    /// The fingerprints of file `ino`'s mapped whole pages (those wholly
    /// inside its size) from page `from` on, at most
    /// [`PageHashes::RECORDS`], with their pfns (equal pfns are shared
    /// already). Holes have none: they cost nothing to begin with.
    pub fn page_hashes(&self, ino: Ino, from: u64) -> FsResult<PageHashes> {
        let (pages, next) = self.page_hashes_from(ino, from, PageHashes::RECORDS)?;
        Ok(PageHashes {
            pages,
            next: next.unwrap_or(0),
            last: next.is_none(),
        })
    }

    /// At most `max` fingerprints as [`State::page_hashes`] gives them, and
    /// the page to go on from, `None` when no page follows.
    pub fn page_hashes_from(
        &self,
        ino: Ino,
        from: u64,
        max: usize,
    ) -> FsResult<(Vec<PageHash>, Option<u64>)> {
        let map = pages_of(self, ino)?;
        let whole = self.attr(ino)?.size / PAGE_SIZE;
        let pmem = self.image.pmem();
        let mut out = Vec::new();
        let mut index = from;
        while let Some(run) = map.first_at_or_after(index)?.filter(|r| r.start < whole) {
            let len = run.len.min(whole - run.start);
            for k in 0..len {
                if out.len() == max {
                    return Ok((out, Some(run.start + k)));
                }
                let pfn = run.value + k;
                let bytes = pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE)?;
                out.push(PageHash {
                    index: run.start + k,
                    pfn,
                    hash: fingerprint(bytes),
                });
            }
            index = run.start + len;
        }
        Ok((out, None))
    }

    /// Shares `[src_off, src_off + len)` of `src` into each destination
    /// `(inode, offset)` whose bytes there are equal; `may_write` says
    /// whether the caller may change a destination (the kernel's
    /// may_dedupe_file). Errors that concern the source fail the whole
    /// call; the rest are per destination.
    pub fn dedupe(
        &mut self,
        src: Ino,
        src_off: u64,
        len: u64,
        dsts: &[(Ino, u64)],
        may_write: impl Fn(&Attr) -> bool,
    ) -> FsResult<Vec<Outcome>> {
        let sa = self.attr(src)?;
        match sa.kind {
            Kind::Dir => return fail(libc::EISDIR),
            Kind::File => {}
            _ => return fail(libc::EINVAL),
        }
        if src_off.checked_add(len).is_none_or(|end| end > sa.size) {
            return fail(libc::EINVAL);
        }
        let len = len.min(MAX_DEDUPE);
        let mut outcomes = Vec::with_capacity(dsts.len());
        let mut ops = Vec::new();
        for &(dst, dst_off) in dsts {
            let outcome = match self.dedupe_one(src, &sa, src_off, len, dst, dst_off, &may_write) {
                Ok(Some(op)) => {
                    ops.extend(op);
                    Outcome::Same { bytes: len }
                }
                Ok(None) => Outcome::Differs,
                Err(e) => Outcome::Failed(e.errno().code()),
            };
            outcomes.push(outcome);
        }
        if !ops.is_empty() {
            if self.is_read_only() {
                return fail(libc::EROFS);
            }
            self.commit(&ops)?;
        }
        Ok(outcomes)
    }

    /// One destination: its checks, the comparison, and the clone that
    /// shares it (`None` when the bytes differ; no op for an empty range).
    #[allow(clippy::too_many_arguments)]
    fn dedupe_one(
        &self,
        src: Ino,
        sa: &Attr,
        src_off: u64,
        len: u64,
        dst: Ino,
        dst_off: u64,
        may_write: &impl Fn(&Attr) -> bool,
    ) -> FsResult<Option<Option<Op>>> {
        let da = self.attr(dst)?;
        match da.kind {
            Kind::Dir => return fail(libc::EISDIR),
            Kind::File => {}
            _ => return fail(libc::EINVAL),
        }
        if len == 0 {
            return Ok(Some(None));
        }
        if !may_write(&da) {
            return fail(libc::EPERM);
        }
        if self.is_read_only() {
            return fail(libc::EROFS);
        }
        use pmemfs_ondisk::meta::flag;
        if da.flags & (flag::IMMUTABLE | flag::APPEND) != 0 {
            return fail(libc::EPERM);
        }
        // generic_remap_checks for a dedupe: both ranges inside EOF,
        // aligned offsets, a whole last page only where both end at EOF,
        // otherwise the length shortened to whole pages.
        if src_off % PAGE_SIZE != 0 || dst_off % PAGE_SIZE != 0 {
            return fail(libc::EINVAL);
        }
        if dst_off.checked_add(len).is_none_or(|end| end > da.size) {
            return fail(libc::EINVAL);
        }
        let both_at_eof = src_off + len == sa.size && dst_off + len == da.size;
        let count = if both_at_eof {
            len
        } else {
            len - len % PAGE_SIZE
        };
        if src == dst && dst_off < src_off + len && src_off < dst_off + len {
            return fail(libc::EINVAL);
        }
        if count == 0 {
            return Ok(Some(None));
        }
        if !self.equal(src, src_off, dst, dst_off, count)? {
            return Ok(None);
        }
        Ok(Some(Some(Op::Clone {
            src,
            src_index: src_off / PAGE_SIZE,
            dst,
            dst_index: dst_off / PAGE_SIZE,
            len: count.div_ceil(PAGE_SIZE),
        })))
    }

    /// Whether `count` bytes of `a` at `a_off` equal those of `b` at
    /// `b_off` (both page-aligned): page by page, a page both map to the
    /// same pfn is equal unread, a hole reads as zeros.
    fn equal(&self, a: Ino, a_off: u64, b: Ino, b_off: u64, count: u64) -> FsResult<bool> {
        let (ma, mb) = (pages_of(self, a)?, pages_of(self, b)?);
        let pmem = self.image.pmem();
        let zeros = [0u8; PAGE_SIZE as usize];
        let pages = count.div_ceil(PAGE_SIZE);
        for i in 0..pages {
            let n = (count - i * PAGE_SIZE).min(PAGE_SIZE);
            let (pa, pb) = (
                ma.get(a_off / PAGE_SIZE + i)?,
                mb.get(b_off / PAGE_SIZE + i)?,
            );
            if pa.is_some() && pa == pb {
                continue;
            }
            let bytes = |pfn: Option<u64>| -> FsResult<&[u8]> {
                match pfn {
                    Some(p) => Ok(pmem.bytes(p * PAGE_SIZE, n)?),
                    None => Ok(&zeros[..n as usize]),
                }
            };
            if bytes(pa)? != bytes(pb)? {
                return Ok(false);
            }
        }
        Ok(true)
    }
}
