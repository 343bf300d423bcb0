//! Range clone (reflink) and range erase on DAX address_spaces.
//!
//! Both walk entries, not indexes: a 2 MiB entry is one step, one
//! descriptor update and one store, so cloning 1 GiB of 2 MiB entries is
//! 512 steps.

use crate::desc::{push_range, PfnRange};
use crate::space::{InodeSpaces, PageCache};
use crate::xarray::{aligned_blocks, Entry, Found, Mark, PfnFlags, XaState};
use std::fmt;

/// Why a clone was refused.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum CloneError {
    /// The range runs past the last index.
    Range,
    /// Source and destination overlap in the same file.
    Overlap,
}

impl fmt::Display for CloneError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            CloneError::Range => "range runs past the last page index",
            CloneError::Overlap => "source and destination overlap",
        })
    }
}

impl std::error::Error for CloneError {}

/// What a clone did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CloneReport {
    /// Entries stored in the destination.
    pub entries: usize,
    /// Pages of the destination's old contents left without reference.
    pub freed: Vec<PfnRange>,
}

/// The pfn of an entry if it is a pfn entry, else `None` (reserved entries).
fn pfn_of(f: &Found) -> Option<u64> {
    f.entry.pfn()
}

/// The first EXCLUSIVE page in `first..=last`, if any.
fn exclusive_in(xas: &mut XaState<'_>, first: u64, last: u64) -> Option<u64> {
    xas.set(first);
    while let Some(f) = xas.find(last) {
        if f.entry.pfn_flags().contains(PfnFlags::EXCLUSIVE) {
            return pfn_of(&f);
        }
    }
    None
}

impl PageCache {
    /// Erases `first..=last` of `file`: drops one reference per page and
    /// returns the pages left without any (coalesced), which the caller
    /// frees. Their DRAM copies are dropped; so are the file's cached
    /// copies for the range.
    ///
    /// # Locking
    /// Takes the DAX write lock (waiting, unlocked, for pages held for
    /// exclusive use), then the DRAM locks.
    pub fn erase_range(&self, file: &InodeSpaces, first: u64, last: u64) -> Vec<PfnRange> {
        let mut freed = Vec::new();
        let mut xas = loop {
            let mut xas = file.dax.xa.lock();
            match exclusive_in(&mut xas, first, last) {
                None => break xas,
                Some(pfn) => {
                    drop(xas);
                    self.descs.wait_exclusive(pfn);
                }
            }
        };
        self.erase_locked(file, &mut xas, first, last, &mut freed);
        drop(xas);
        freed
    }

    fn erase_locked(
        &self,
        file: &InodeSpaces,
        xas: &mut XaState<'_>,
        first: u64,
        last: u64,
        freed: &mut Vec<PfnRange>,
    ) {
        let start = freed.len();
        xas.set(first);
        while let Some(f) = xas.find(last) {
            let Some(pfn) = pfn_of(&f) else { continue };
            let (a, b) = (f.index.max(first), f.last().min(last));
            if a == f.index && b == f.last() {
                self.descs.put_range(pfn, f.order, freed);
            } else {
                // Part of a multi-order entry: count page by page.
                for i in a..=b {
                    let p = pfn + (i - f.index);
                    if self.descs.put_page(p) {
                        push_range(freed, p, 1);
                    }
                }
            }
        }
        xas.erase_range(first, last);
        file.drop_dram_range(first, last);
        for r in &freed[start..] {
            self.drop_copies(r.pfn, r.count);
        }
    }

    /// Drops DRAM copies of freed pages, a directory lookup per chunk.
    fn drop_copies(&self, pfn: u64, count: u64) {
        use crate::desc::CHUNK_DESCS;
        let mut p = pfn;
        let end = pfn + count;
        while p < end {
            let chunk_end = (p / CHUNK_DESCS as u64 + 1) * CHUNK_DESCS as u64;
            let run_end = chunk_end.min(end);
            if self.descs.lookup(p).is_some() {
                for q in p..run_end {
                    self.descs.drop_dram_copies(q);
                }
            }
            p = run_end;
        }
    }

    /// Shares `count` pages of `src` starting at `src_index` into `dst` at
    /// `dst_index` (same or another file, any offsets), replacing what the
    /// destination range held. Share counts rise by one per page and both
    /// sides get the SHARED mark. Time is proportional to entries: an
    /// entry whose destination keeps its alignment is stored whole and
    /// counted once; otherwise it is cut into the largest blocks aligned
    /// on both sides.
    ///
    /// # Locking
    /// Takes both DAX write locks (in address order; one if same file),
    /// waiting unlocked for pages held for exclusive use; then the DRAM
    /// locks of `dst`.
    pub fn clone_range(
        &self,
        src: &InodeSpaces,
        src_index: u64,
        dst: &InodeSpaces,
        dst_index: u64,
        count: u64,
    ) -> Result<CloneReport, CloneError> {
        let mut report = CloneReport::default();
        if count == 0 {
            return Ok(report);
        }
        let src_last = src_index.checked_add(count - 1).ok_or(CloneError::Range)?;
        let dst_last = dst_index.checked_add(count - 1).ok_or(CloneError::Range)?;
        let same = std::ptr::eq(src, dst);
        if same && src_index <= dst_last && dst_index <= src_last {
            return Err(CloneError::Overlap);
        }
        // Lock both (address order), with no exclusive page in either range.
        let (mut a, mut b) = loop {
            let first_is_src = same || (src as *const InodeSpaces) < (dst as *const InodeSpaces);
            let (x, y) = if first_is_src { (src, dst) } else { (dst, src) };
            let mut xa = x.dax.xa.lock();
            let mut xb = if same { None } else { Some(y.dax.xa.lock()) };
            let (s, d) = match (first_is_src, xb.as_mut()) {
                (_, None) => (&mut xa, None),
                (true, Some(xb)) => (&mut xa, Some(xb)),
                (false, Some(xb)) => (xb, Some(&mut xa)),
            };
            let busy = exclusive_in(s, src_index, src_last).or_else(|| match d {
                Some(d) => exclusive_in(d, dst_index, dst_last),
                None => exclusive_in(s, dst_index, dst_last),
            });
            match busy {
                None => {
                    break if first_is_src {
                        (xa, xb)
                    } else {
                        (xb.expect("two files"), Some(xa))
                    }
                }
                Some(pfn) => {
                    drop((xa, xb));
                    self.descs.wait_exclusive(pfn);
                }
            }
        };
        // `a` is the source cursor; `b` the destination's if another file.

        // The destination's old contents go first.
        match b.as_mut() {
            Some(d) => self.erase_locked(dst, d, dst_index, dst_last, &mut report.freed),
            None => self.erase_locked(dst, &mut a, dst_index, dst_last, &mut report.freed),
        }

        let mut entries = Vec::new();
        a.set(src_index);
        while let Some(f) = a.find(src_last) {
            if pfn_of(&f).is_some() {
                entries.push(f);
                a.set_mark(Mark::Shared);
            }
        }
        let delta = dst_index.wrapping_sub(src_index);
        // Largest block order keeping alignment on both sides.
        let cap = if delta == 0 {
            63
        } else {
            delta.trailing_zeros().min(63) as u8
        };
        for f in entries {
            let pfn = pfn_of(&f).expect("filtered above");
            let keep = f.entry.pfn_flags().without(PfnFlags::EXCLUSIVE);
            let (lo, hi) = (f.index.max(src_index), f.last().min(src_last));
            for (i, o) in aligned_blocks(lo, hi, cap) {
                let p = pfn + (i - f.index);
                self.descs.get_range(p, o);
                let dxas = b.as_mut().unwrap_or(&mut a);
                dxas.set_order(i.wrapping_add(delta), o);
                dxas.store(Some(Entry::from_pfn(p, keep)));
                dxas.set_mark(Mark::Shared);
                report.entries += 1;
            }
        }
        Ok(report)
    }
}
