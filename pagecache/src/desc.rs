//! Page descriptors: per-pfn shared state, made only when needed.
//!
//! An unshared, uncached pfn has no descriptor at all. Descriptors live in
//! chunks of 64, made by [`DescTable::get_or_make`] (called only by paths
//! that need shared state: clone, DRAM caching, exclusive use) and freed
//! when all 64 are idle and no [`DescRef`] points into the chunk. Chunks
//! hang off a hash directory that is itself empty when nothing is shared,
//! so a 1 TiB device costs a few hundred bytes until pages get shared.
//!
//! # Descriptor word
//!
//! One `AtomicU64` (8 bytes) per pfn, idle when zero:
//!
//! | bits  | field                                                        |
//! |-------|--------------------------------------------------------------|
//! | 0-31  | `extra`: references beyond the first                         |
//! | 32-37 | `order`: if non-zero, `extra` counts for the compound of `2^order` pfns headed here |
//! | 40    | EXCLUSIVE: someone holds the page for exclusive use          |
//! | 41    | WAITERS: someone sleeps until EXCLUSIVE clears               |
//! | 42    | DRAM_CACHED: the page has DRAM copies in the side table      |
//!
//! # Share counts
//!
//! The number of references to pfn `p` is `1 + extra(p) + extra(h)` for
//! every compound head `h` covering `p` (with `h != p`; a head's own
//! `extra` already counts for itself). A multi-order mapping of `2^k`
//! pages (`k <= 9`) therefore costs one descriptor, like a folio. When a
//! single page of a compound must lose a reference, the compound is split:
//! its `extra` is added to each page's own count (under `compound_lock`,
//! the only lock on these paths; counting itself is lock-free).
//!
//! # Lifetime
//!
//! A [`DescRef`] pins its chunk (`guards`); a chunk is removed from the
//! directory only under the directory's write lock, with no guard and no
//! busy descriptor, and guards are only taken under its read lock. The
//! chunk memory itself is an `Arc`, so even a racing reader never touches
//! freed memory.

use crate::dram::{CopyTable, DramPage, PAGE_SIZE};
use crate::wait;
use parking_lot::{Mutex, RwLock};
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering::*};
use std::sync::Arc;

/// Descriptors per chunk.
pub const CHUNK_DESCS: usize = 64;
/// Largest compound order carried by one descriptor (2 MiB).
pub const COMPOUND_MAX_ORDER: u8 = 9;

const EXTRA_MASK: u64 = 0xffff_ffff;
const ORDER_SHIFT: u32 = 32;
const ORDER_MASK: u64 = 0x3f << ORDER_SHIFT;
const EXCLUSIVE: u64 = 1 << 40;
const WAITERS: u64 = 1 << 41;
const DRAM_CACHED: u64 = 1 << 42;

const fn extra(s: u64) -> u64 {
    s & EXTRA_MASK
}

const fn order(s: u64) -> u8 {
    ((s & ORDER_MASK) >> ORDER_SHIFT) as u8
}

/// One page descriptor (8 bytes); see the module doc for the word.
#[derive(Default)]
pub struct Desc {
    state: AtomicU64,
}

struct Chunk {
    /// Live `DescRef`s into this chunk.
    guards: AtomicU32,
    /// Non-idle descriptors (transiently off while two updates race; exact
    /// whenever `guards` is zero).
    busy: AtomicU32,
    descs: [Desc; CHUNK_DESCS],
}

/// Bytes one chunk costs (with its `Arc` header).
pub const CHUNK_BYTES: usize = std::mem::size_of::<Chunk>() + 2 * std::mem::size_of::<usize>();

impl Chunk {
    fn new() -> Chunk {
        Chunk {
            guards: AtomicU32::new(0),
            busy: AtomicU32::new(0),
            descs: std::array::from_fn(|_| Desc::default()),
        }
    }

    /// Applies `f` to descriptor `slot` atomically; `None` from `f` means
    /// "leave it" and returns the current word as the error. Keeps `busy`.
    fn update(
        &self,
        slot: usize,
        mut f: impl FnMut(u64) -> Option<u64>,
    ) -> Result<(u64, u64), u64> {
        let d = &self.descs[slot].state;
        let mut cur = d.load(Acquire);
        loop {
            let new = f(cur).ok_or(cur)?;
            match d.compare_exchange_weak(cur, new, AcqRel, Acquire) {
                Ok(_) => {
                    if cur == 0 && new != 0 {
                        self.busy.fetch_add(1, AcqRel);
                    } else if cur != 0 && new == 0 {
                        self.busy.fetch_sub(1, AcqRel);
                    }
                    return Ok((cur, new));
                }
                Err(x) => cur = x,
            }
        }
    }
}

/// Hash for chunk numbers: one multiply, enough for sequential keys.
#[derive(Default)]
struct ChunkHasher(u64);

impl Hasher for ChunkHasher {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0 ^ x).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    }
    fn finish(&self) -> u64 {
        self.0 ^ (self.0 >> 29)
    }
}

type Dir = HashMap<u64, Arc<Chunk>, BuildHasherDefault<ChunkHasher>>;

/// A run of pfns, e.g. pages that became free.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct PfnRange {
    /// First pfn.
    pub pfn: u64,
    /// Number of pages.
    pub count: u64,
}

/// Appends `pfn..pfn+count` to `out`, merging with the last run.
pub(crate) fn push_range(out: &mut Vec<PfnRange>, pfn: u64, count: u64) {
    if let Some(last) = out.last_mut() {
        if last.pfn + last.count == pfn {
            last.count += count;
            return;
        }
    }
    out.push(PfnRange { pfn, count });
}

/// The descriptor table of one device.
pub struct DescTable {
    dir: RwLock<Dir>,
    /// Live compound descriptors; while zero, a page without its own count
    /// has exactly one reference and no search for a covering head is needed.
    compounds: AtomicUsize,
    /// Serialises compound splits and the searches that trigger them.
    compound_lock: Mutex<()>,
    copies: CopyTable,
}

impl Default for DescTable {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for DescTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DescTable")
            .field("chunks", &self.chunk_count())
            .finish()
    }
}

/// A counted reference to one descriptor; keeps its chunk alive.
pub struct DescRef<'t> {
    table: &'t DescTable,
    chunk: Arc<Chunk>,
    pfn: u64,
}

impl Drop for DescRef<'_> {
    fn drop(&mut self) {
        if self.chunk.guards.fetch_sub(1, AcqRel) == 1 && self.chunk.busy.load(Acquire) == 0 {
            self.table.try_reclaim(self.pfn / CHUNK_DESCS as u64);
        }
    }
}

/// Snapshot of a descriptor's flags.
#[derive(Copy, Clone, PartialEq, Eq, Debug, Default)]
pub struct DescFlags {
    /// The page has more than one reference (its own or a compound's).
    pub shared: bool,
    /// Someone holds the page for exclusive use.
    pub exclusive: bool,
    /// The page has DRAM copies.
    pub dram_cached: bool,
}

impl<'t> DescRef<'t> {
    /// The pfn described.
    ///
    /// # Locking
    /// None.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    fn slot(&self) -> usize {
        (self.pfn % CHUNK_DESCS as u64) as usize
    }

    fn state(&self) -> u64 {
        self.chunk.descs[self.slot()].state.load(Acquire)
    }

    fn update(&self, f: impl FnMut(u64) -> Option<u64>) -> Result<(u64, u64), u64> {
        self.chunk.update(self.slot(), f)
    }

    /// References beyond the first held in this descriptor (per page, or
    /// for the compound it heads).
    ///
    /// # Locking
    /// None: one atomic load.
    pub fn extra(&self) -> u32 {
        extra(self.state()) as u32
    }

    /// Order of the compound this descriptor heads (0: none).
    ///
    /// # Locking
    /// None: one atomic load.
    pub fn order(&self) -> u8 {
        order(self.state())
    }

    /// The flags of this descriptor alone (`shared` from its own count;
    /// [`DescTable::share_count`] also sees covering compounds).
    ///
    /// # Locking
    /// None: one atomic load.
    pub fn flags(&self) -> DescFlags {
        let s = self.state();
        DescFlags {
            shared: extra(s) > 0,
            exclusive: s & EXCLUSIVE != 0,
            dram_cached: s & DRAM_CACHED != 0,
        }
    }

    /// Whether every flag and count is clear (the chunk may then go).
    ///
    /// # Locking
    /// None: one atomic load.
    pub fn is_idle(&self) -> bool {
        self.state() == 0
    }

    /// Another reference to a pfn of the same chunk, without the directory.
    fn neighbour(&self, pfn: u64) -> Option<DescRef<'t>> {
        (pfn / CHUNK_DESCS as u64 == self.pfn / CHUNK_DESCS as u64).then(|| {
            self.chunk.guards.fetch_add(1, AcqRel);
            DescRef {
                table: self.table,
                chunk: self.chunk.clone(),
                pfn,
            }
        })
    }
}

/// Exclusive use of a page, released (and waiters woken) on drop.
pub struct ExclusiveGuard<'t> {
    desc: DescRef<'t>,
}

impl ExclusiveGuard<'_> {
    /// The page held.
    ///
    /// # Locking
    /// None.
    pub fn pfn(&self) -> u64 {
        self.desc.pfn
    }
}

impl Drop for ExclusiveGuard<'_> {
    fn drop(&mut self) {
        let r = self.desc.update(|s| Some(s & !(EXCLUSIVE | WAITERS)));
        if matches!(r, Ok((old, _)) if old & WAITERS != 0) {
            wait::wake(self.desc.pfn);
        }
    }
}

impl std::fmt::Debug for ExclusiveGuard<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ExclusiveGuard(pfn {:#x})", self.desc.pfn)
    }
}

/// Keeps the last chunk used so a run of pfns visits the directory once
/// per chunk.
struct Cursor<'t> {
    cur: Option<DescRef<'t>>,
}

impl<'t> Cursor<'t> {
    fn new() -> Self {
        Cursor { cur: None }
    }

    fn get(&mut self, table: &'t DescTable, pfn: u64, make: bool) -> Option<&DescRef<'t>> {
        let hit = self.cur.as_ref().and_then(|r| r.neighbour(pfn));
        self.cur = match hit {
            Some(r) => Some(r),
            None if make => Some(table.get_or_make(pfn)),
            None => table.lookup(pfn),
        };
        self.cur.as_ref()
    }
}

impl DescTable {
    /// An empty table.
    ///
    /// # Locking
    /// None.
    pub fn new() -> DescTable {
        DescTable {
            dir: RwLock::new(Dir::default()),
            compounds: AtomicUsize::new(0),
            compound_lock: Mutex::new(()),
            copies: CopyTable::new(),
        }
    }

    /// The descriptor of `pfn` if its chunk exists. Never allocates.
    ///
    /// # Locking
    /// Takes the directory read lock briefly.
    pub fn lookup(&self, pfn: u64) -> Option<DescRef<'_>> {
        let dir = self.dir.read();
        let chunk = dir.get(&(pfn / CHUNK_DESCS as u64))?;
        chunk.guards.fetch_add(1, AcqRel);
        Some(DescRef {
            table: self,
            chunk: chunk.clone(),
            pfn,
        })
    }

    /// The descriptor of `pfn`, making its chunk if needed. Only for paths
    /// that need shared state (clone, DRAM caching, exclusive use).
    ///
    /// # Locking
    /// Directory read lock; the write lock when a chunk is made.
    pub fn get_or_make(&self, pfn: u64) -> DescRef<'_> {
        if let Some(r) = self.lookup(pfn) {
            return r;
        }
        let mut dir = self.dir.write();
        let chunk = dir
            .entry(pfn / CHUNK_DESCS as u64)
            .or_insert_with(|| Arc::new(Chunk::new()));
        chunk.guards.fetch_add(1, AcqRel);
        DescRef {
            table: self,
            chunk: chunk.clone(),
            pfn,
        }
    }

    fn try_reclaim(&self, chunk_no: u64) {
        let mut dir = self.dir.write();
        let Some(c) = dir.get(&chunk_no) else { return };
        // Guards are only taken under the read lock, so zero stays zero
        // while we hold the write lock, and without guards nobody can make
        // a descriptor busy.
        if c.guards.load(Acquire) != 0 || c.busy.load(Acquire) != 0 {
            return;
        }
        dir.remove(&chunk_no);
        if dir.is_empty() {
            *dir = Dir::default();
        } else if dir.capacity() > 4 * dir.len() + 64 {
            let len = dir.len();
            dir.shrink_to(2 * len);
        }
    }

    /// Chunks currently allocated.
    ///
    /// # Locking
    /// Takes the directory read lock.
    pub fn chunk_count(&self) -> usize {
        self.dir.read().len()
    }

    /// Bytes used by this table: itself, the directory and the chunks
    /// (DRAM copies and the global wait table not included).
    ///
    /// # Locking
    /// Takes the directory read lock.
    pub fn bytes(&self) -> usize {
        let dir = self.dir.read();
        let slot = std::mem::size_of::<(u64, Arc<Chunk>)>() + 1;
        std::mem::size_of::<Self>() + dir.capacity() * slot + dir.len() * CHUNK_BYTES
    }

    /// How many references `pfn` has, counting covering compounds (1 when
    /// it has no descriptor: a page in use has its one owner).
    ///
    /// # Locking
    /// Directory read lock, per descriptor looked at.
    pub fn share_count(&self, pfn: u64) -> u64 {
        let mut n = 1 + self.lookup(pfn).map_or(0, |r| extra(r.state()));
        if self.compounds.load(Acquire) != 0 {
            for k in 1..=COMPOUND_MAX_ORDER {
                let h = pfn & !((1u64 << k) - 1);
                if h != pfn {
                    if let Some(r) = self.lookup(h) {
                        let s = r.state();
                        if order(s) == k {
                            n += extra(s);
                        }
                    }
                }
            }
        }
        n
    }

    /// Adds one reference to each page of `pfn .. pfn + 2^order`: one
    /// compound count per 2^9 pages when `pfn` is aligned to the order,
    /// page by page otherwise.
    ///
    /// # Locking
    /// Lock-free counting; `compound_lock` only when a compound must split.
    pub fn get_range(&self, pfn: u64, order_: u8) {
        if order_ == 0 || pfn & ((1u64 << order_) - 1) != 0 {
            // Compounds are aligned, so `share_count` can find their heads.
            return self.get_pages(pfn, 1u64 << order_);
        }
        let k = order_.min(COMPOUND_MAX_ORDER);
        let n = 1u64 << order_;
        let mut head = pfn;
        while head < pfn + n {
            self.get_compound(head, k);
            head += 1 << k;
        }
    }

    fn get_compound(&self, h: u64, k: u8) {
        let r = self.get_or_make(h);
        let res = r.update(|s| {
            if order(s) == k && extra(s) > 0 {
                Some(s + 1)
            } else if order(s) == 0 && extra(s) == 0 {
                Some(s | (k as u64) << ORDER_SHIFT | 1)
            } else {
                None
            }
        });
        match res {
            Ok((old, _)) if order(old) == 0 => {
                self.compounds.fetch_add(1, AcqRel);
            }
            Ok(_) => {}
            Err(_) => {
                // The head already counts for itself alone (or heads
                // another order): count page by page.
                drop(r);
                self.get_pages(h, 1 << k);
            }
        }
    }

    /// Adds one reference to one page.
    ///
    /// # Locking
    /// Lock-free; `compound_lock` if `pfn` heads a compound (split first).
    pub fn get_page(&self, pfn: u64) {
        self.get_pages(pfn, 1);
    }

    fn get_pages(&self, pfn: u64, n: u64) {
        let mut cur = Cursor::new();
        for p in pfn..pfn + n {
            loop {
                let r = cur.get(self, p, true).expect("get with make always yields");
                if r.update(|s| (order(s) == 0).then_some(s + 1)).is_ok() {
                    break;
                }
                self.split_compound(p);
            }
        }
    }

    /// Drops one reference from each page of `pfn .. pfn + 2^order` (as
    /// taken by [`DescTable::get_range`] or page by page), appending pages left without reference to `freed`.
    ///
    /// # Locking
    /// Lock-free counting; `compound_lock` when a compound must split.
    pub fn put_range(&self, pfn: u64, order_: u8, freed: &mut Vec<PfnRange>) {
        if order_ == 0 || pfn & ((1u64 << order_) - 1) != 0 {
            return self.put_pages(pfn, 1u64 << order_, freed);
        }
        let k = order_.min(COMPOUND_MAX_ORDER);
        let n = 1u64 << order_;
        let mut head = pfn;
        while head < pfn + n {
            let dropped = self.lookup(head).is_some_and(|r| {
                let res = r.update(|s| {
                    (order(s) == k && extra(s) > 0).then(|| {
                        if extra(s) == 1 {
                            (s - 1) & !ORDER_MASK
                        } else {
                            s - 1
                        }
                    })
                });
                if matches!(res, Ok((_, new)) if order(new) == 0) {
                    self.compounds.fetch_sub(1, AcqRel);
                }
                res.is_ok()
            });
            if !dropped {
                self.put_pages(head, 1 << k, freed);
            }
            head += 1 << k;
        }
    }

    fn put_pages(&self, pfn: u64, n: u64, freed: &mut Vec<PfnRange>) {
        let mut p = pfn;
        let end = pfn + n;
        while p < end {
            let chunk_end = ((p / CHUNK_DESCS as u64) + 1) * CHUNK_DESCS as u64;
            let run_end = chunk_end.min(end);
            if self.compounds.load(Acquire) == 0 && self.lookup(p).is_none() {
                // No descriptor and no compound: one reference each, ours.
                push_range(freed, p, run_end - p);
            } else {
                for q in p..run_end {
                    if self.put_page(q) {
                        push_range(freed, q, 1);
                    }
                }
            }
            p = run_end;
        }
    }

    /// Drops one reference from one page; true if that was the last.
    ///
    /// # Locking
    /// Lock-free; `compound_lock` when the page has no count of its own
    /// and compounds exist.
    pub fn put_page(&self, pfn: u64) -> bool {
        loop {
            if let Some(r) = self.lookup(pfn) {
                match r.update(|s| (order(s) == 0 && extra(s) > 0).then(|| s - 1)) {
                    Ok(_) => return false,
                    Err(s) if order(s) > 0 => {
                        drop(r);
                        self.split_compound(pfn);
                        continue;
                    }
                    Err(_) => {}
                }
            }
            if self.compounds.load(Acquire) == 0 {
                return true;
            }
            let _g = self.compound_lock.lock();
            match self.covering_head(pfn) {
                Some(h) => self.split_locked(h),
                None => return true,
            }
        }
    }

    /// The head of a compound (other than `pfn` itself) covering `pfn`.
    fn covering_head(&self, pfn: u64) -> Option<u64> {
        (1..=COMPOUND_MAX_ORDER).find_map(|k| {
            let h = pfn & !((1u64 << k) - 1);
            (h != pfn && self.lookup(h).is_some_and(|r| order(r.state()) == k)).then_some(h)
        })
    }

    fn split_compound(&self, h: u64) {
        let _g = self.compound_lock.lock();
        self.split_locked(h);
    }

    /// Turns the compound headed at `h` into per-page counts.
    fn split_locked(&self, h: u64) {
        let Some(r) = self.lookup(h) else { return };
        let Ok((old, _)) = r.update(|s| (order(s) > 0).then_some(s & !ORDER_MASK)) else {
            return;
        };
        drop(r);
        self.compounds.fetch_sub(1, AcqRel);
        let (k, e) = (order(old), extra(old));
        let mut cur = Cursor::new();
        for p in h + 1..h + (1u64 << k) {
            loop {
                let r = cur.get(self, p, true).expect("get with make always yields");
                if r.update(|s| (order(s) == 0).then_some(s + e)).is_ok() {
                    break;
                }
                // A smaller compound nested inside: split it too.
                self.split_locked(p);
            }
        }
    }

    /// Takes `pfn` for exclusive use, sleeping while someone else has it.
    ///
    /// # Locking
    /// May sleep; takes a wait-table bucket lock while going to sleep.
    /// Do not hold an address_space lock across this call.
    pub fn lock_exclusive(&self, pfn: u64) -> ExclusiveGuard<'_> {
        let desc = self.get_or_make(pfn);
        loop {
            if desc
                .update(|s| (s & EXCLUSIVE == 0).then_some(s | EXCLUSIVE))
                .is_ok()
            {
                return ExclusiveGuard { desc };
            }
            Self::sleep_while_exclusive(&desc);
        }
    }

    /// Takes `pfn` for exclusive use if nobody has it.
    ///
    /// # Locking
    /// Lock-free (directory lock briefly).
    pub fn try_lock_exclusive(&self, pfn: u64) -> Option<ExclusiveGuard<'_>> {
        let desc = self.get_or_make(pfn);
        desc.update(|s| (s & EXCLUSIVE == 0).then_some(s | EXCLUSIVE))
            .ok()
            .map(|_| ExclusiveGuard { desc })
    }

    /// Sleeps until `pfn` is not held for exclusive use.
    ///
    /// # Locking
    /// May sleep; see [`DescTable::lock_exclusive`].
    pub fn wait_exclusive(&self, pfn: u64) {
        let Some(desc) = self.lookup(pfn) else { return };
        while desc.state() & EXCLUSIVE != 0 {
            Self::sleep_while_exclusive(&desc);
        }
    }

    fn sleep_while_exclusive(desc: &DescRef<'_>) {
        wait::wait(desc.pfn, || {
            desc.update(|s| (s & EXCLUSIVE != 0).then_some(s | WAITERS))
                .is_ok()
        });
    }

    /// The DRAM copy of `pfn` for `node`, if any.
    ///
    /// # Locking
    /// Directory read lock, then the copy-table shard lock.
    pub fn dram_copy(&self, pfn: u64, node: u32) -> Option<Arc<DramPage>> {
        let r = self.lookup(pfn)?;
        if r.state() & DRAM_CACHED == 0 {
            return None;
        }
        let shard = self.copies.shard(pfn);
        shard.get(&pfn)?.iter().find(|c| c.node() == node).cloned()
    }

    /// The DRAM copy of `pfn` for `node`, made with `fill` (which copies
    /// the pmem page) if missing. At most one copy per (pfn, node).
    ///
    /// # Locking
    /// Holds the copy-table shard lock while filling, so that a concurrent
    /// [`DescTable::drop_dram_copies`] either precedes the fill (which then
    /// reads the new data) or removes the copy.
    pub fn dram_copy_or_fill(
        &self,
        pfn: u64,
        node: u32,
        fill: impl FnOnce(&mut [u8; PAGE_SIZE]),
    ) -> Arc<DramPage> {
        let r = self.get_or_make(pfn);
        let mut shard = self.copies.shard(pfn);
        let list = shard.entry(pfn).or_default();
        if let Some(c) = list.iter().find(|c| c.node() == node) {
            return c.clone();
        }
        let page = Arc::new(DramPage::new(pfn, node, fill));
        list.push(page.clone());
        // Set under the shard lock: flag and list change together.
        let _ = r.update(|s| Some(s | DRAM_CACHED));
        page
    }

    /// Drops every DRAM copy of `pfn` (on every node); returns how many.
    /// Call after a write to the page reached pmem.
    ///
    /// # Locking
    /// Directory read lock, then the copy-table shard lock.
    pub fn drop_dram_copies(&self, pfn: u64) -> usize {
        let Some(r) = self.lookup(pfn) else { return 0 };
        // No peek at DRAM_CACHED first: a fill in progress holds the shard
        // lock and has not set the flag yet; waiting for it is the point.
        let mut shard = self.copies.shard(pfn);
        let n = shard.remove(&pfn).map_or(0, |l| l.len());
        let _ = r.update(|s| Some(s & !DRAM_CACHED));
        n
    }
}
