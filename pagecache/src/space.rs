//! address_spaces: per inode, one DAX space (page index -> pfn entry) and
//! one DRAM space per NUMA node (page index -> that node's DRAM copy).
//!
//! The DAX space is the truth about which pmem page backs each index. A
//! DRAM space only caches pointers to copies that belong to the page's
//! descriptor (see [`crate::desc::DescTable::dram_copy_or_fill`]), so a page
//! shared by several files has at most one copy per node.
//!
//! # Invariants
//!
//! - A DRAM space entry at `i` points at the current copy of the pfn the DAX
//!   space maps at `i`. Every change of the DAX entry at `i` (write, copy on
//!   write, erase, clone over it) erases `i` from every DRAM space while
//!   holding the DAX write lock; readers publish only after re-checking
//!   under the DAX read lock.
//! - A pfn entry with [`PfnFlags::EXCLUSIVE`] is held by a [`WriteGuard`],
//!   which also holds the page's descriptor exclusively; others wait on the
//!   descriptor.
//! - The SHARED mark is set on both sides of a clone and may outlive the
//!   sharing (a hint); it is never missing on a shared page.
//!
//! # Lock order
//!
//! DAX space lock, then DRAM space locks, then descriptor-table locks.
//! Two DAX spaces (clone) are locked in address order.

use crate::desc::{DescTable, ExclusiveGuard};
use crate::dram::{DramPage, PAGE_SIZE};
use crate::numa::Topology;
use crate::xarray::{
    split_add_pfn, Entry, Found, Mark, PfnFlags, XArray, XaError, XaReader, MAX_ORDER,
};
use std::sync::Arc;

/// One page cache per mounted device: the descriptors of its pfns and the
/// NUMA topology its address_spaces follow.
#[derive(Debug)]
pub struct PageCache {
    pub(crate) descs: DescTable,
    topo: Topology,
}

/// The address_spaces of one inode.
#[derive(Debug)]
pub struct InodeSpaces {
    ino: u64,
    pub(crate) dax: DaxSpace,
    pub(crate) dram: Box<[DramSpace]>,
}

/// Page index -> pfn entry of one file.
#[derive(Debug)]
pub struct DaxSpace {
    pub(crate) xa: XArray,
}

/// Page index -> pointer to a DRAM copy, for one file on one node.
///
/// Every entry is a pointer made by `Arc::into_raw` from an
/// `Arc<DramPage>` this space owns one strong count of; only this type
/// stores or erases them, and always order-0, so entries are never split.
#[derive(Debug, Default)]
pub struct DramSpace {
    xa: XArray,
}

impl Default for DaxSpace {
    fn default() -> Self {
        Self::new()
    }
}

impl DaxSpace {
    /// An empty space; multi-order entries split into pfn + offset.
    ///
    /// # Locking
    /// None.
    pub fn new() -> DaxSpace {
        DaxSpace {
            xa: XArray::with_splitter(split_add_pfn),
        }
    }

    /// Maps the aligned `2^order` indexes at `index` to the freshly
    /// allocated, unshared pfns `pfn..`: no descriptor is made. Fails with
    /// `Occupied` if any index is mapped, `BadOrder` on a bad order or pfn.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn map(&self, index: u64, order: u8, pfn: u64) -> Result<(), XaError> {
        if order > MAX_ORDER
            || pfn
                .checked_add((1u64 << order) - 1)
                .is_none_or(|l| l > Entry::MAX_PFN)
        {
            return Err(XaError::BadOrder);
        }
        let e = Entry::from_pfn(pfn, PfnFlags::NONE);
        self.xa.insert_order(index, order, e)
    }

    /// The pfn mapped at `index` (the very page, inside a multi-order
    /// entry) and its entry flags.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn lookup(&self, index: u64) -> Option<(u64, PfnFlags)> {
        let e = self.xa.load(index)?;
        Some((e.pfn()?, e.pfn_flags()))
    }

    /// The whole entry covering `index`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn lookup_entry(&self, index: u64) -> Option<Found> {
        self.xa.load_found(index)
    }

    /// A read cursor for range walks (`iter`, `iter_marked`).
    ///
    /// # Locking
    /// Holds the read lock until dropped.
    pub fn read(&self) -> XaReader<'_> {
        self.xa.read()
    }

    /// Whether `index` has `mark`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn get_mark(&self, index: u64, mark: Mark) -> bool {
        self.xa.get_mark(index, mark)
    }

    /// Sets `mark` (DIRTY or TOWRITE; SHARED is kept by clone) on the entry
    /// covering `index`.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn set_mark(&self, index: u64, mark: Mark) {
        self.xa.set_mark(index, mark)
    }

    /// Clears `mark` on the entry covering `index`.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn clear_mark(&self, index: u64, mark: Mark) {
        self.xa.clear_mark(index, mark)
    }

    /// The next entry with `mark` at or after `index`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn next_marked(&self, index: u64, mark: Mark) -> Option<Found> {
        self.xa.next_marked(index, mark)
    }

    /// Whether nothing is mapped.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn is_empty(&self) -> bool {
        self.xa.is_empty()
    }

    /// Live tree nodes.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn node_count(&self) -> usize {
        self.xa.node_count()
    }
}

impl DramSpace {
    /// The cached copy at `index`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn get(&self, index: u64) -> Option<Arc<DramPage>> {
        let r = self.xa.read();
        let p = r.load(index)?.ptr::<DramPage>()?;
        // SAFETY: `p` came from `Arc::into_raw` and this space still holds
        // that strong count: erasing needs the write lock, which our read
        // lock excludes. Adding a count and wrapping it gives the caller
        // its own `Arc`.
        unsafe {
            Arc::increment_strong_count(p);
            Some(Arc::from_raw(p))
        }
    }

    /// Caches `page` at `index`, replacing (and releasing) any previous one.
    fn insert(&self, index: u64, page: Arc<DramPage>) {
        let e =
            Entry::from_ptr(Arc::into_raw(page)).expect("Arc pointers are non-null and 8-aligned");
        let old = self.xa.store(index, e);
        Self::release(old);
    }

    /// Drops the cached copies of `first..=last`.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn erase_range(&self, first: u64, last: u64) {
        let mut xas = self.xa.lock();
        xas.set(first);
        let mut old = Vec::new();
        while let Some(f) = xas.find(last) {
            old.push(f.entry);
        }
        xas.erase_range(first, last);
        drop(xas);
        for e in old {
            Self::release(Some(e));
        }
    }

    fn release(e: Option<Entry>) {
        if let Some(p) = e.and_then(|e| e.ptr::<DramPage>()) {
            // SAFETY: the entry was removed from the array under the write
            // lock, so this is the one owner of the strong count that
            // `insert` made with `Arc::into_raw`.
            drop(unsafe { Arc::from_raw(p) });
        }
    }

    /// Number of cached pages (a walk; for tests and statistics).
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn len(&self) -> usize {
        self.xa.read().iter(0, u64::MAX).count()
    }

    /// Whether nothing is cached.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn is_empty(&self) -> bool {
        self.xa.is_empty()
    }
}

impl Drop for DramSpace {
    fn drop(&mut self) {
        self.erase_range(0, u64::MAX);
    }
}

impl InodeSpaces {
    /// The inode number.
    ///
    /// # Locking
    /// None.
    pub fn ino(&self) -> u64 {
        self.ino
    }

    /// The DAX address_space.
    ///
    /// # Locking
    /// None.
    pub fn dax(&self) -> &DaxSpace {
        &self.dax
    }

    /// The DRAM address_space of `node` (dense index).
    ///
    /// # Locking
    /// None.
    pub fn dram(&self, node: usize) -> Option<&DramSpace> {
        self.dram.get(node)
    }

    /// Number of DRAM spaces (= nodes).
    ///
    /// # Locking
    /// None.
    pub fn nodes(&self) -> usize {
        self.dram.len()
    }

    /// Drops the DRAM copies cached for `first..=last` on every node.
    /// Call with the DAX write lock held (lock order).
    pub(crate) fn drop_dram_range(&self, first: u64, last: u64) {
        for d in self.dram.iter() {
            if !d.is_empty() {
                d.erase_range(first, last);
            }
        }
    }
}

/// What [`PageCache::write_begin`] found.
pub enum WriteBegin<'a> {
    /// Nothing mapped: allocate a page and [`DaxSpace::map`] it.
    Hole,
    /// A mapped page, now held for exclusive use.
    Page(WriteGuard<'a>),
}

/// Exclusive use of one mapped page of one file during a write.
///
/// If [`WriteGuard::needs_copy`], copy the page to a new pfn, write there
/// and [`WriteGuard::commit_copy`]; otherwise write in place and
/// [`WriteGuard::commit_in_place`]. Dropping the guard without committing
/// gives the page back unchanged.
pub struct WriteGuard<'a> {
    pc: &'a PageCache,
    file: &'a InodeSpaces,
    index: u64,
    pfn: u64,
    shared: bool,
    excl: Option<ExclusiveGuard<'a>>,
    done: bool,
}

impl WriteGuard<'_> {
    /// The page index.
    ///
    /// # Locking
    /// None.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// The pmem page currently mapped.
    ///
    /// # Locking
    /// None.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    /// Whether the page is shared, so the write must go to a copy.
    ///
    /// # Locking
    /// None.
    pub fn needs_copy(&self) -> bool {
        self.shared
    }

    /// The write went to the page itself (it must not be shared). Drops the
    /// page's DRAM copies on every node and marks the index DIRTY.
    ///
    /// # Locking
    /// Takes the DAX write lock, then the DRAM locks.
    pub fn commit_in_place(mut self) {
        debug_assert!(!self.shared, "in-place write to a shared page");
        let mut xas = self.file.dax.xa.lock();
        xas.set(self.index);
        xas.store(Some(Entry::from_pfn(self.pfn, PfnFlags::NONE)));
        xas.set_mark(Mark::Dirty);
        if xas.get_mark(Mark::Shared) && self.pc.descs.share_count(self.pfn) == 1 {
            xas.clear_mark(Mark::Shared);
        }
        self.pc.descs.drop_dram_copies(self.pfn);
        self.file.drop_dram_range(self.index, self.index);
        drop(xas);
        self.done = true;
    }

    /// The write went to `new_pfn`, a fresh copy of the page. Maps it,
    /// drops this file's reference to the old page and returns the old
    /// pfn if nobody references it any more (the caller frees it).
    ///
    /// # Locking
    /// Takes the DAX write lock, then the DRAM locks.
    pub fn commit_copy(mut self, new_pfn: u64) -> Option<u64> {
        let e = Entry::try_from_pfn(new_pfn, PfnFlags::NONE)?;
        let mut xas = self.file.dax.xa.lock();
        xas.set(self.index);
        xas.store(Some(e));
        xas.clear_mark(Mark::Shared);
        xas.set_mark(Mark::Dirty);
        self.file.drop_dram_range(self.index, self.index);
        let freed = self.pc.descs.put_page(self.pfn);
        if freed {
            self.pc.descs.drop_dram_copies(self.pfn);
        }
        drop(xas);
        self.done = true;
        freed.then_some(self.pfn)
    }
}

impl Drop for WriteGuard<'_> {
    fn drop(&mut self) {
        if !self.done {
            let mut xas = self.file.dax.xa.lock();
            xas.set(self.index);
            if let Some(e) = xas.load() {
                xas.store(Some(
                    e.with_pfn_flags(e.pfn_flags().without(PfnFlags::EXCLUSIVE)),
                ));
            }
        }
        // Entry restored before the descriptor is released, so a waiter
        // woken by the release finds the entry free.
        self.excl.take();
    }
}

impl PageCache {
    /// A page cache for one device with the given topology.
    ///
    /// # Locking
    /// None.
    pub fn new(topo: Topology) -> PageCache {
        PageCache {
            descs: DescTable::new(),
            topo,
        }
    }

    /// The descriptor table.
    ///
    /// # Locking
    /// None.
    pub fn descs(&self) -> &DescTable {
        &self.descs
    }

    /// The topology.
    ///
    /// # Locking
    /// None.
    pub fn topology(&self) -> &Topology {
        &self.topo
    }

    /// Empty address_spaces for inode `ino`: one DAX space and one DRAM
    /// space per node.
    ///
    /// # Locking
    /// None.
    pub fn new_inode(&self, ino: u64) -> InodeSpaces {
        InodeSpaces {
            ino,
            dax: DaxSpace::new(),
            dram: (0..self.topo.node_count())
                .map(|_| DramSpace::default())
                .collect(),
        }
    }

    /// The DRAM copy of page `index` of `file` on `node`, made with
    /// `fill(pfn, buf)` (copy the pmem page into `buf`) on a miss. `None`
    /// for a hole or a node out of range.
    ///
    /// # Locking
    /// DRAM read lock; on a miss the descriptor's copy-table shard lock
    /// while filling, then the DAX read lock and the DRAM write lock to
    /// publish.
    pub fn read_cached(
        &self,
        file: &InodeSpaces,
        index: u64,
        node: usize,
        fill: impl FnOnce(u64, &mut [u8; PAGE_SIZE]),
    ) -> Option<Arc<DramPage>> {
        let dram = file.dram.get(node)?;
        if let Some(p) = dram.get(index) {
            return Some(p);
        }
        let pfn = file.dax.xa.load(index)?.pfn()?;
        let page = self
            .descs
            .dram_copy_or_fill(pfn, node as u32, |buf| fill(pfn, buf));
        // Publish only if the mapping and the copy are still current; a
        // writer changes either under the DAX write lock.
        let r = file.dax.xa.read();
        let current = r
            .load(index)
            .is_some_and(|e| e.pfn() == Some(pfn) && !e.pfn_flags().contains(PfnFlags::EXCLUSIVE))
            && self
                .descs
                .dram_copy(pfn, node as u32)
                .is_some_and(|c| Arc::ptr_eq(&c, &page));
        if current {
            dram.insert(index, page.clone());
        }
        drop(r);
        Some(page)
    }

    /// [`PageCache::read_cached`] on the node of the calling thread's CPU.
    ///
    /// # Locking
    /// As [`PageCache::read_cached`].
    pub fn read_cached_here(
        &self,
        file: &InodeSpaces,
        index: u64,
        fill: impl FnOnce(u64, &mut [u8; PAGE_SIZE]),
    ) -> Option<Arc<DramPage>> {
        self.read_cached(file, index, self.topo.current_node(), fill)
    }

    /// Takes page `index` of `file` for a write: waits while someone else
    /// holds it, then marks the entry EXCLUSIVE (splitting a multi-order
    /// entry) and tells whether the write must copy.
    ///
    /// # Locking
    /// Takes the DAX write lock briefly; may sleep on the page descriptor
    /// (never with a lock held).
    pub fn write_begin<'a>(&'a self, file: &'a InodeSpaces, index: u64) -> WriteBegin<'a> {
        loop {
            let mut xas = file.dax.xa.lock();
            xas.set(index);
            let Some(e) = xas.load() else {
                return WriteBegin::Hole;
            };
            let Some(pfn) = e.pfn() else {
                return WriteBegin::Hole;
            };
            let excl = if e.pfn_flags().contains(PfnFlags::EXCLUSIVE) {
                None
            } else {
                self.descs.try_lock_exclusive(pfn)
            };
            let Some(excl) = excl else {
                drop(xas);
                self.descs.wait_exclusive(pfn);
                continue;
            };
            let shared = xas.get_mark(Mark::Shared) && self.descs.share_count(pfn) > 1;
            xas.store(Some(
                e.with_pfn_flags(e.pfn_flags().with(PfnFlags::EXCLUSIVE)),
            ));
            return WriteBegin::Page(WriteGuard {
                pc: self,
                file,
                index,
                pfn,
                shared,
                excl: Some(excl),
                done: false,
            });
        }
    }
}
