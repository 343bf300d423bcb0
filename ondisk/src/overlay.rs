//! Metadata pages as a transaction or a replay sees them: copies of the
//! pages it changed, over the mapped image.
//!
//! Nothing reaches a metadata page in place before the journal entry (or
//! the checkpoint) holding its patches is durable, since a crash would
//! otherwise leave a half-changed node that no committed state explains.
//! So a transaction's B+tree changes go to an [`Overlay`]; at commit its
//! [`Overlay::patches`] go into the entry, and once that is durable
//! [`Overlay::store`] writes them where they belong. Replay builds an
//! overlay from the patches it finds, which readers that may not write
//! (`fsck -n`) read through.

use std::collections::HashMap;

use crate::btree::{Checked, Pages};
use crate::error::{Corrupt, Error, Result};
use crate::layout::PAGE_SIZE;
use crate::pmem::Pmem;
use crate::rangemap::RangeMap;
use crate::record::patch::Patch;

const PAGE: usize = PAGE_SIZE as usize;

/// Equal bytes shorter than this between two changed spans do not end a
/// patch: a patch record costs 12 bytes and an allocation, and records
/// moved within a node (directory entries of similar names) leave short
/// equal runs between their differing bytes.
const JOIN: usize = 32;
/// Bytes compared at once while looking for a difference.
const CHUNK: usize = 64;

/// The spans `[start, end)` where `new` differs from `old` (of one
/// length), spans closer than [`JOIN`] equal bytes joined: the bytes a
/// patch list must carry. Compares eight bytes at a time: a run of
/// [`JOIN`] (at least 15) equal bytes holds an aligned equal word, so inside a
/// span (moved records, which differ almost everywhere) only equal words
/// are looked at closely.
fn spans(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
    let n = old.len().min(new.len());
    let word = |i: usize| {
        let (mut a, mut b) = ([0u8; 8], [0u8; 8]);
        a.copy_from_slice(&old[i..i + 8]);
        b.copy_from_slice(&new[i..i + 8]);
        u64::from_le_bytes(a) == u64::from_le_bytes(b)
    };
    // The first index at or after `i` where the two differ (`n`: none).
    let next_diff = |mut i: usize| {
        while i < n && i % 8 != 0 && old[i] == new[i] {
            i += 1;
        }
        // Whole chunks at memcmp speed once a word is equal (most of a
        // page is, away from the change).
        while i + 8 <= n && word(i) {
            i += 8;
            while i % CHUNK == 0 && i + CHUNK <= n && old[i..i + CHUNK] == new[i..i + CHUNK] {
                i += CHUNK;
            }
        }
        while i < n && old[i] == new[i] {
            i += 1;
        }
        i
    };
    let mut out = Vec::new();
    let mut i = next_diff(0);
    while i < n {
        let start = i;
        // The span ends where the first run of JOIN equal bytes after it
        // starts, or after its last differing byte when equal bytes run
        // to the end.
        let mut w = (start / 8 + 1) * 8;
        let end = loop {
            while w + 8 <= n && !word(w) {
                w += 8;
            }
            if w + 8 > n {
                let mut e = n;
                while e > start + 1 && old[e - 1] == new[e - 1] {
                    e -= 1;
                }
                break e;
            }
            let mut r = w;
            while r > start + 1 && old[r - 1] == new[r - 1] {
                r -= 1;
            }
            let d = next_diff(w + 8);
            if d - r >= JOIN || d >= n {
                break r;
            }
            w = (d / 8 + 1) * 8;
        };
        out.push((start, end));
        i = next_diff(end);
    }
    out
}

/// Ranges written, in order and joined where they overlap or lie closer
/// than [`JOIN`] bytes.
fn joined(ranges: &[(usize, usize)]) -> Vec<(usize, usize)> {
    let mut r = ranges.to_vec();
    r.sort_unstable();
    let mut out: Vec<(usize, usize)> = Vec::with_capacity(r.len());
    for (a, b) in r {
        match out.last_mut() {
            Some(last) if a <= last.1 + JOIN => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

#[derive(Debug, Default)]
pub struct Overlay {
    pages: HashMap<u64, Box<[u8]>>,
    /// Pages handed out in this transaction: their old bytes mean nothing,
    /// so their patch is every byte written, not a difference.
    fresh: HashMap<u64, usize>,
    /// Pages every write to which was of bytes known to change
    /// (`Pages::write_new`): the ranges written, which are their patches
    /// without a comparison. A page written otherwise is compared whole.
    exact: HashMap<u64, Option<Vec<(usize, usize)>>>,
}

impl Overlay {
    pub fn is_empty(&self) -> bool {
        self.pages.is_empty()
    }

    fn page_mut(&mut self, pmem: &Pmem, pfn: u64) -> Result<&mut [u8]> {
        Ok(match self.pages.entry(pfn) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                let copy = pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE)?.to_vec();
                e.insert(copy.into_boxed_slice())
            }
        })
    }

    fn page<'a>(&'a self, pmem: &'a Pmem, pfn: u64) -> Result<&'a [u8]> {
        match self.pages.get(&pfn) {
            Some(p) => Ok(p),
            None => pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE),
        }
    }

    fn write(&mut self, pmem: &Pmem, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        let end = off + bytes.len();
        if end > PAGE {
            return Err(Corrupt::new(format!("page {pfn}"), "a write past its end").into());
        }
        self.page_mut(pmem, pfn)?[off..end].copy_from_slice(bytes);
        if let Some(e) = self.fresh.get_mut(&pfn) {
            *e = (*e).max(end);
        }
        self.exact.insert(pfn, None);
        Ok(())
    }

    /// [`Overlay::write`] of bytes the caller knows differ from the page's
    /// (records moved within a node): their patch is what was written.
    fn write_new(&mut self, pmem: &Pmem, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        let end = off + bytes.len();
        self.write_known(pmem, pfn, off, end, |p| p[off..end].copy_from_slice(bytes))
    }

    /// Replaces the `remove` bytes at `at` with `insert`, moving the bytes
    /// after them up to `end` along, in the page's copy (no buffer of the
    /// moved bytes); the patch is what changed, as for `write_new`.
    fn splice(
        &mut self,
        pmem: &Pmem,
        pfn: u64,
        at: usize,
        end: usize,
        remove: usize,
        insert: &[u8],
    ) -> Result<()> {
        if at + remove > end || end > PAGE {
            return Err(Corrupt::new(format!("page {pfn}"), "a splice past its bytes").into());
        }
        let moved = at + insert.len();
        let new_end = moved + (end - at - remove);
        self.write_known(pmem, pfn, at, new_end, |p| {
            p.copy_within(at + remove..end, moved);
            p[at..moved].copy_from_slice(insert);
        })
    }

    /// Changes bytes `off..end` of the page by `change`. Their patch is
    /// that range, without a comparison, while every change to the page in
    /// this transaction was made this way.
    fn write_known(
        &mut self,
        pmem: &Pmem,
        pfn: u64,
        off: usize,
        end: usize,
        change: impl FnOnce(&mut [u8]),
    ) -> Result<()> {
        if end > PAGE {
            return Err(Corrupt::new(format!("page {pfn}"), "a write past its end").into());
        }
        let known = match self.exact.remove(&pfn) {
            Some(k) => k,
            None if !self.pages.contains_key(&pfn) => Some(Vec::new()),
            // Written before this transaction tracked it: compare.
            None => None,
        };
        change(self.page_mut(pmem, pfn)?);
        if let Some(e) = self.fresh.get_mut(&pfn) {
            *e = (*e).max(end);
        }
        let known = known.map(|mut k| {
            // An empty write (a node's last records removed) patches nothing.
            if off < end {
                k.push((off, end));
            }
            k
        });
        self.exact.insert(pfn, known);
        Ok(())
    }

    /// Applies `patches` (replay), in order.
    pub fn apply(&mut self, pmem: &Pmem, patches: &[Patch]) -> Result<()> {
        for p in patches {
            self.write(pmem, p.pfn, usize::from(p.off), &p.bytes)?;
        }
        Ok(())
    }

    /// The patches that make the media's pages the overlay's, in pfn order.
    pub fn patches(&self, pmem: &Pmem) -> Result<Vec<Patch>> {
        let mut pfns: Vec<u64> = self.pages.keys().copied().collect();
        pfns.sort_unstable();
        let mut out = Vec::new();
        for pfn in pfns {
            let new = &self.pages[&pfn];
            if let Some(&end) = self.fresh.get(&pfn) {
                if end > 0 {
                    out.push(Patch {
                        pfn,
                        off: 0,
                        bytes: new[..end].to_vec(),
                    });
                }
                continue;
            }
            let found;
            let spans = match self.exact.get(&pfn) {
                Some(Some(known)) => joined(known),
                _ => {
                    found = spans(pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE)?, new);
                    found
                }
            };
            for (start, end) in spans {
                out.push(Patch {
                    pfn,
                    off: start as u16,
                    bytes: new[start..end].to_vec(),
                });
            }
        }
        Ok(out)
    }

    /// Stores `patches` in place and flushes them; the fence that makes
    /// them durable is the next commit's (a checkpoint fences before it
    /// restarts the journal that holds them).
    pub fn store(pmem: &Pmem, patches: &[Patch]) -> Result<()> {
        for p in patches {
            let at = p.pfn * PAGE_SIZE + u64::from(p.off);
            pmem.write(at, &p.bytes)?;
            pmem.flush(at, p.bytes.len() as u64)?;
        }
        Ok(())
    }

    /// A read-only view of the pages through this overlay.
    pub fn view<'a>(&'a self, pmem: &'a Pmem) -> View<'a> {
        View {
            pmem,
            over: Some(self),
            checked: None,
        }
    }
}

/// Pages read through an overlay, or straight from the media; it refuses
/// changes.
#[derive(Clone, Copy)]
pub struct View<'a> {
    pmem: &'a Pmem,
    over: Option<&'a Overlay>,
    checked: Option<&'a Checked>,
}

impl<'a> View<'a> {
    /// The media's pages as they are.
    pub fn media(pmem: &'a Pmem) -> Self {
        View {
            pmem,
            over: None,
            checked: None,
        }
    }

    /// This view, recording in `checked` the nodes it finds whole and
    /// trusting those recorded there.
    pub fn checking(self, checked: &'a Checked) -> Self {
        View {
            checked: Some(checked),
            ..self
        }
    }
}

impl Pages for View<'_> {
    fn page(&self, pfn: u64) -> Result<&[u8]> {
        match self.over {
            Some(o) => o.page(self.pmem, pfn),
            None => self.pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE),
        }
    }
    fn write(&mut self, _: u64, _: usize, _: &[u8]) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn alloc(&mut self) -> Result<u64> {
        Err(Error::ReadOnly)
    }
    fn free(&mut self, _: u64) -> Result<()> {
        Err(Error::ReadOnly)
    }
    fn checked(&self) -> Option<&Checked> {
        self.checked
    }
}

/// One transaction's changes to metadata pages: an overlay, with pages
/// for new nodes taken from the free set and freed nodes kept aside (the
/// caller gives them back only once no replay can write them again).
pub struct Txn<'a> {
    pub pmem: &'a Pmem,
    pub over: Overlay,
    /// Free data pages (value 1) and their number.
    pub free: &'a mut RangeMap<u32>,
    pub free_pages: &'a mut u64,
    /// Pages only this image may touch (the data area).
    pub data: (u64, u64),
    pub freed: Vec<u64>,
    /// Free pages a new node may not take: what the next checkpoint needs
    /// (`Image` sets it; 0 in tests).
    pub floor: u64,
    /// The image's record of nodes found whole (`Image` sets it): a node
    /// this transaction frees leaves it.
    pub checked: Option<&'a Checked>,
}

impl Pages for Txn<'_> {
    fn page(&self, pfn: u64) -> Result<&[u8]> {
        self.check(pfn)?;
        self.over.page(self.pmem, pfn)
    }
    fn write(&mut self, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        self.check(pfn)?;
        self.over.write(self.pmem, pfn, off, bytes)
    }
    fn write_new(&mut self, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        self.check(pfn)?;
        self.over.write_new(self.pmem, pfn, off, bytes)
    }
    fn splice(
        &mut self,
        pfn: u64,
        at: usize,
        end: usize,
        remove: usize,
        insert: &[u8],
    ) -> Result<()> {
        self.check(pfn)?;
        self.over.splice(self.pmem, pfn, at, end, remove, insert)
    }
    fn alloc(&mut self) -> Result<u64> {
        // Metadata may dip into the checkpoint reserve, down to the floor.
        if *self.free_pages <= self.floor {
            return Err(Error::NoSpace);
        }
        let run = self.free.first_at_or_after(0).ok_or(Error::NoSpace)?;
        self.free.remove(run.start, 1);
        *self.free_pages -= 1;
        self.over.fresh.insert(run.start, 0);
        Ok(run.start)
    }
    fn free(&mut self, pfn: u64) -> Result<()> {
        if let Some(c) = self.checked {
            c.forget(pfn);
        }
        self.freed.push(pfn);
        Ok(())
    }
    fn checked(&self) -> Option<&Checked> {
        self.checked
    }
}

impl<'a> Txn<'a> {
    /// A transaction over `pmem` taking new nodes from `free` (the data
    /// area of geometry `g`).
    pub fn new(
        pmem: &'a Pmem,
        free: &'a mut RangeMap<u32>,
        free_pages: &'a mut u64,
        g: &crate::layout::Geometry,
    ) -> Self {
        Txn {
            pmem,
            over: Overlay::default(),
            free,
            free_pages,
            data: (g.data_start, g.total_pages),
            freed: Vec::new(),
            floor: 0,
            checked: None,
        }
    }

    /// Drops the transaction: the pages it took for new nodes are free
    /// again, and nothing it changed reaches the media.
    pub fn abandon(self) {
        for &pfn in self.over.fresh.keys() {
            // Found whole, perhaps, in bytes that never reach the media.
            if let Some(c) = self.checked {
                c.forget(pfn);
            }
            self.free.insert(pfn, 1, 1);
            *self.free_pages += 1;
        }
    }

    /// Nodes lie in the data area; a damaged pointer elsewhere is refused.
    fn check(&self, pfn: u64) -> Result<()> {
        let (start, end) = self.data;
        if pfn < start || pfn >= end {
            return Err(Corrupt::new(
                format!("metadata node pointer {pfn}"),
                "outside the data area; run fsck.pmemfs",
            )
            .into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The spans, byte by byte: what `spans` must find.
    fn spans_slowly(old: &[u8], new: &[u8]) -> Vec<(usize, usize)> {
        let mut out: Vec<(usize, usize)> = Vec::new();
        for i in (0..old.len()).filter(|&i| old[i] != new[i]) {
            match out.last_mut() {
                Some(last) if i - last.1 < JOIN => last.1 = i + 1,
                _ => out.push((i, i + 1)),
            }
        }
        out
    }

    /// Bytes written as known to change are their own patches, joined;
    /// a page also written otherwise is compared; either way the patches
    /// make the media's page the overlay's.
    #[test]
    fn known_changes_are_patched_as_written() {
        let pmem = Pmem::memory(1 << 20);
        let mut o = Overlay::default();
        o.write_new(&pmem, 3, 100, &[1; 50]).unwrap();
        o.write_new(&pmem, 3, 160, &[2; 10]).unwrap();
        o.write_new(&pmem, 3, 0, &[0; 32]).unwrap(); // unchanged, carried
        o.write_new(&pmem, 4, 10, &[5; 8]).unwrap();
        o.write(&pmem, 4, 2000, &[6; 4]).unwrap();
        // Records moved along: in, then out.
        let mut want = vec![0u8; PAGE];
        for (i, b) in want[..300].iter_mut().enumerate() {
            *b = i as u8;
        }
        o.write_new(&pmem, 5, 0, &want[..300]).unwrap();
        o.splice(&pmem, 5, 100, 300, 0, &[9; 20]).unwrap();
        o.splice(&pmem, 5, 50, 320, 30, &[]).unwrap();
        want.splice(100..100, [9; 20]);
        want.drain(50..80);
        want.truncate(290);
        assert_eq!(&o.page(&pmem, 5).unwrap()[..290], &want[..]);
        assert!(o.splice(&pmem, 5, 10, 20, 11, &[]).is_err());
        assert!(o.splice(&pmem, 5, 10, PAGE + 1, 0, &[]).is_err());
        let p = o.patches(&pmem).unwrap();
        let at = |pfn: u64| -> Vec<(u16, usize)> {
            p.iter()
                .filter(|x| x.pfn == pfn)
                .map(|x| (x.off, x.bytes.len()))
                .collect()
        };
        assert_eq!(at(3), vec![(0, 32), (100, 70)]);
        assert_eq!(
            at(4),
            vec![(10, 8), (2000, 4)],
            "compared: only what differs"
        );
        assert_eq!(at(5), vec![(0, 320)], "joined, to the furthest end written");
        Overlay::store(&pmem, &p).unwrap();
        for pfn in [3, 4, 5] {
            assert_eq!(
                o.page(&pmem, pfn).unwrap(),
                pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE).unwrap()
            );
        }
    }

    #[test]
    fn spans_are_the_differences_joined() {
        let mut rng = 0x2545_f491_4f6c_dd1du64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for round in 0..2000 {
            let old: Vec<u8> = (0..PAGE).map(|_| next(4) as u8).collect();
            let mut new = old.clone();
            for _ in 0..next(6) {
                // A span changed: shifted records, noise or a few bytes,
                // with values that often match by chance.
                let at = next(PAGE as u64) as usize;
                let len = (next(600) as usize).min(PAGE - at);
                for b in &mut new[at..at + len] {
                    if next(10) < 7 {
                        *b = next(4) as u8;
                    }
                }
            }
            assert_eq!(spans(&old, &new), spans_slowly(&old, &new), "round {round}");
        }
        let zero = vec![0u8; PAGE];
        assert!(spans(&zero, &zero).is_empty());
        let mut all = zero.clone();
        all.iter_mut().for_each(|b| *b = 1);
        assert_eq!(spans(&zero, &all), vec![(0, PAGE)]);
    }

    /// Changing one value in a leaf costs patches of its crc and that
    /// value's changed bytes, not the page.
    #[test]
    fn a_change_to_a_node_patches_only_what_changed() {
        use crate::btree::{Extent, Extents, Tree};
        let pmem = Pmem::memory(1 << 24);
        let (mut free, mut free_pages) = (RangeMap::new(), 100);
        free.insert(1000, 100, 1);
        let mut txn = Txn {
            pmem: &pmem,
            over: Overlay::default(),
            free: &mut free,
            free_pages: &mut free_pages,
            data: (1000, 1100),
            freed: Vec::new(),
            floor: 0,
            checked: None,
        };
        let ext = |pfn| Extent { pfn, len: 1 };
        let mut t = Tree::<Extents>::new(0, 5);
        for i in 0..100 {
            t.insert(&mut txn, i * 2, ext(i + 1)).unwrap();
        }
        let first = txn.over.patches(&pmem).unwrap();
        assert_eq!(first.len(), 1, "a new node is one patch");
        assert_eq!(first[0].bytes.len(), 32 + 100 * 24);
        Overlay::store(&pmem, &first).unwrap();
        txn.over = Overlay::default();
        t.insert(&mut txn, 20, ext(0x300)).unwrap();
        let ps = txn.over.patches(&pmem).unwrap();
        let sizes: Vec<usize> = ps.iter().map(|p| p.bytes.len()).collect();
        assert_eq!(
            ps.iter().map(|p| p.off).collect::<Vec<_>>()[1],
            32 + 10 * 24 + 8
        );
        assert!(
            sizes[0] <= 4 && sizes[1] == 2,
            "crc, then the pfn's two bytes: {sizes:?}"
        );
    }

    #[test]
    fn patches_are_the_difference_and_replay_to_the_same_bytes() {
        let pmem = Pmem::memory(1 << 24);
        pmem.write(5 * PAGE_SIZE, &[7; 100]).unwrap();
        let mut o = Overlay::default();
        o.write(&pmem, 5, 10, &[7, 1, 2]).unwrap();
        o.write(&pmem, 5, 20, &[9]).unwrap();
        o.write(&pmem, 5, 200, &[3]).unwrap();
        let ps = o.patches(&pmem).unwrap();
        // Byte 10 was already 7; 11..21 is one patch, 200 another.
        assert_eq!(
            ps.iter()
                .map(|p| (p.off, p.bytes.len()))
                .collect::<Vec<_>>(),
            vec![(11, 10), (200, 1)]
        );
        let copy = Pmem::memory(1 << 24);
        copy.write(5 * PAGE_SIZE, &[7; 100]).unwrap();
        Overlay::store(&copy, &ps).unwrap();
        let mut replayed = Overlay::default();
        replayed.apply(&pmem, &ps).unwrap();
        for v in [o.view(&pmem), replayed.view(&pmem), View::media(&copy)] {
            assert_eq!(v.page(5).unwrap(), o.page(&pmem, 5).unwrap());
        }
    }
}
