//! The mount's page cache: per inode, a DAX address_space (page index ->
//! pfn, `pmemfs-pagecache`'s XArray) that reads find their pfns in, and,
//! with `dram_cache=SIZE`, per-node DRAM copies of hot pages.
//!
//! # Who is the truth
//!
//! The page maps (on the media: Meta's page map records and their trees,
//! `pmemfs_ondisk::filemap`) and the share counts are the truth, for
//! persistence and for copy on write. A DAX space is the in-memory index
//! of one file's page map while it is in use, made when
//! the file is first used while open (a read, a write, a clone) from its
//! runs (a 2 MiB entry where a run covers an aligned block of 512 pages,
//! single pages elsewhere) and kept equal to the map: after every commit,
//! each range an op mapped, unmapped or cloned into is erased and mapped
//! again from the map, and an aligned block the range cuts into becomes one
//! entry again when it is one run ([`State::commit`], `Cache::resync`);
//! a deleted inode's spaces go, and so do a file's at its last close.
//! Reads, writes, truncate, fallocate, seek, clone and dedupe find a
//! file's pages in its space (`Cache::view`); a file nobody has open
//! (the online dedupe scanner's, a writeback after the last close) is
//! read from its map, so that no space is left that no close would drop.
//! Nothing here takes references in the descriptor table (no
//! `clone_range`, no `write_begin`), so it never holds a share count that
//! could disagree with Meta's; erasing reports every page as unreferenced,
//! and that report is ignored. The table only holds the DRAM copies.
//!
//! # DRAM copies
//!
//! A copy belongs to the pfn (one per node at most, in the descriptor
//! table's copy table), not to a file, so clones share copies. Rules:
//!
//! - Hotness: a page gets a copy on its second read (a miss that finds its
//!   pfn remembered), counted per pfn, whichever node read it first, in a
//!   table of recently read pfns: sets of 8 slots chosen by a hash of the
//!   pfn, a full set replacing one slot. Two slots per page the budget
//!   holds, so a page is forgotten only after about twice as many other
//!   distinct pages were read once as the budget could copy. Reads of the
//!   file system itself (the head and tail of a clone) do not count.
//! - Budget: the bytes of all copies on all nodes stay within `dram_cache`;
//!   a copy is reserved before it is made. When the budget is full, the
//!   oldest copies go first (first in, first out, in the order they were
//!   made) to make room; a copy not made even then is counted as `refused`.
//!   Copies also go when their page is written, unmapped or replaced.
//! - Coherence: before any commit that maps, unmaps or clones over a range
//!   (or deletes an inode), the copies of the pfns the range held go, on
//!   every node; an in-place write drops its page's copies as it writes. A
//!   pfn that has copies is therefore always mapped, and its copies hold its
//!   current bytes. Writers that commit hold the state's write lock, so
//!   no read runs between a drop and the commit; an in-place write holds
//!   its file's data lock ([`crate::datalock`]), which every reader of the
//!   page holds too, the page being that file's alone.
//!
//! The per-(inode, node) DRAM address_spaces of `pmemfs-pagecache` are not
//! used: their pointers would keep copies alive that the copy table, and so
//! the budget, no longer counts.
//!
//! [`State::commit`]: crate::state::State::commit

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};
use pmemfs_ondisk::overlay::View;
use pmemfs_ondisk::{Ino, MapView, Result as MediaResult, Run, PAGE_SIZE};
use pmemfs_pagecache::desc::CHUNK_DESCS;
use pmemfs_pagecache::xarray::{XaError, NODE_BYTES};
use pmemfs_pagecache::{DaxSpace, DramPage, InodeSpaces, PageCache, Topology};

use crate::error::FsResult;
use crate::memory;
use crate::options::MountOptions;

/// Order of the largest DAX entry made: 2 MiB, the largest compound a
/// page descriptor covers.
pub const BLOCK_ORDER: u8 = 9;

/// Slots per set of the table of pages read once.
const SEEN_WAYS: usize = 8;

/// What the page cache is built with.
#[derive(Debug, Clone)]
pub struct CacheOptions {
    /// Bytes of DRAM copies allowed over all nodes; below one page, none.
    pub dram_cache: u64,
    pub topology: Topology,
}

impl Default for CacheOptions {
    /// No DRAM copies, one node: what an in-process user (tests, tools)
    /// wants, without reading sysfs.
    fn default() -> Self {
        CacheOptions {
            dram_cache: 0,
            topology: Topology::single(1),
        }
    }
}

impl CacheOptions {
    /// From the mount options: `numa_nodes=N` emulates N nodes (on a
    /// one-node machine), otherwise the machine's topology.
    pub fn from_mount(opts: &MountOptions) -> CacheOptions {
        let topo = Topology::detect();
        CacheOptions {
            dram_cache: opts.dram_cache,
            topology: match opts.numa_nodes {
                Some(n) => topo.emulate(n),
                None => topo,
            },
        }
    }
}

/// Counts of one read request, added to the totals once.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tally {
    hits: u64,
    misses: u64,
    refused: u64,
}

/// Page-cache figures for the stats ioctl.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct CacheStats {
    /// Inodes with DAX spaces.
    pub inodes: u64,
    /// DAX entries (a 2 MiB entry is one).
    pub dax_entries: u64,
    /// Pages those entries map.
    pub dax_pages: u64,
    pub xa_nodes: u64,
    pub xa_bytes: u64,
    pub dram_copies: u64,
    pub dram_bytes: u64,
    pub dram_budget: u64,
    pub dram_hits: u64,
    pub dram_misses: u64,
    /// Copies not made because the budget was full.
    pub dram_refused: u64,
    pub numa_nodes: u64,
    /// Memory of the page-descriptor table.
    pub desc_bytes: u64,
}

/// One file's page map, where the file system finds it: the DAX space of
/// a file in use, else the map as stored (see [`Cache::view`]). Both say
/// the same: the space is kept equal to the map ([`Cache::resync`]).
pub(crate) enum FileView<'a> {
    Dax(Arc<InodeSpaces>),
    Stored(MapView<'a, View<'a>>),
}

impl FileView<'_> {
    /// The pfn of page `index`; `None` for a hole.
    pub fn get(&self, index: u64) -> MediaResult<Option<u64>> {
        match self {
            FileView::Dax(s) => Ok(s.dax().lookup(index).map(|(pfn, _)| pfn)),
            FileView::Stored(m) => m.get(index),
        }
    }

    /// The mapped pages of `start..start + len` as index runs on
    /// consecutive pfns, holes left out, adjacent entries merged so that a
    /// range inside one run of pmem is one run.
    pub fn range(&self, start: u64, len: u64) -> MediaResult<Vec<Run<u64>>> {
        let s = match self {
            FileView::Dax(s) => s,
            FileView::Stored(m) => return m.range(start, len),
        };
        let Some(last) = len.checked_sub(1).map(|n| start.saturating_add(n)) else {
            return Ok(Vec::new());
        };
        let r = s.dax().read();
        let mut out: Vec<Run<u64>> = Vec::new();
        for f in r.iter(start, last) {
            // Only pfn entries are stored here.
            let Some(pfn) = f.entry.pfn() else { continue };
            let (a, b) = (f.index.max(start), f.last().min(last));
            let p = pfn + (a - f.index);
            match out.last_mut() {
                Some(l) if l.start + l.len == a && l.value + l.len == p => l.len += b - a + 1,
                _ => out.push(Run {
                    start: a,
                    len: b - a + 1,
                    value: p,
                }),
            }
        }
        Ok(out)
    }

    /// The first run that covers or follows page `from`, clipped to start
    /// at `from`, as long as consecutive pages on consecutive pfns go.
    pub fn first_at_or_after(&self, from: u64) -> MediaResult<Option<Run<u64>>> {
        let s = match self {
            FileView::Dax(s) => s,
            FileView::Stored(m) => return m.first_at_or_after(from),
        };
        let r = s.dax().read();
        let mut run: Option<Run<u64>> = None;
        for f in r.iter(from, u64::MAX) {
            let Some(pfn) = f.entry.pfn() else { continue };
            let a = f.index.max(from);
            let p = pfn + (a - f.index);
            let len = f.last() - a + 1;
            match &mut run {
                None => {
                    run = Some(Run {
                        start: a,
                        len,
                        value: p,
                    })
                }
                Some(l) if l.start + l.len == a && l.value + l.len == p => l.len += len,
                Some(_) => break,
            }
        }
        Ok(run)
    }
}

/// See the module doc.
pub struct Cache {
    pc: PageCache,
    /// Behind its own lock because readers (sharing the state) make spaces;
    /// writers own the state and reach it with `get_mut`.
    spaces: RwLock<HashMap<Ino, Arc<InodeSpaces>>>,
    budget: u64,
    /// Bytes of DRAM copies in the copy table, reserved before a copy is
    /// made; zero means no copy exists anywhere.
    dram_bytes: AtomicU64,
    hits: AtomicU64,
    misses: AtomicU64,
    refused: AtomicU64,
    /// pfn + 1 of pages read once (0: empty), in sets of [`SEEN_WAYS`].
    seen: Box<[AtomicU64]>,
    /// The (pfn, node) of every copy made, oldest first: the eviction
    /// order. Entries of copies since dropped stay until they come up
    /// (or [`Cache::note_copy`] sweeps them), and evict nothing then.
    made: Mutex<VecDeque<(u64, u32)>>,
}

impl std::fmt::Debug for Cache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cache")
            .field("inodes", &self.spaces.read().len())
            .field("budget", &self.budget)
            .field("dram_bytes", &self.dram_bytes.load(Relaxed))
            .finish()
    }
}

/// Maps `len` pages of a page-map run (index `start`, first pfn `pfn`)
/// into `dax`: order-9 entries for aligned blocks of 512 indexes, order 0
/// around them.
fn map_run(dax: &DaxSpace, start: u64, len: u64, pfn: u64) -> Result<(), XaError> {
    let block = 1u64 << BLOCK_ORDER;
    let mut i = 0;
    while i < len {
        let index = start + i;
        let order = if index % block == 0 && len - i >= block {
            BLOCK_ORDER
        } else {
            0
        };
        // A pfn past the end of u64 is a corrupt page map, not a panic.
        let p = pfn.checked_add(i).ok_or(XaError::BadOrder)?;
        dax.map(index, order, p)?;
        i += 1 << order;
    }
    Ok(())
}

impl Cache {
    pub fn new(opts: CacheOptions) -> Cache {
        let budget = if opts.dram_cache >= PAGE_SIZE {
            opts.dram_cache
        } else {
            0
        };
        // Two slots per page the budget holds, within 1 Ki..4 Mi slots
        // (8 KiB..32 MiB, the top for budgets of 8 GiB and more).
        let slots = if budget == 0 {
            0
        } else {
            (2 * (budget / PAGE_SIZE)).clamp(1 << 10, 1 << 22) as usize / SEEN_WAYS * SEEN_WAYS
        };
        Cache {
            pc: PageCache::new(opts.topology),
            spaces: RwLock::new(HashMap::new()),
            budget,
            dram_bytes: AtomicU64::new(0),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            refused: AtomicU64::new(0),
            seen: (0..slots).map(|_| AtomicU64::new(0)).collect(),
            made: Mutex::new(VecDeque::new()),
        }
    }

    /// The page cache itself (descriptor table, topology).
    pub fn page_cache(&self) -> &PageCache {
        &self.pc
    }

    /// Whether reads may be served from DRAM copies.
    pub fn dram_enabled(&self) -> bool {
        self.budget > 0
    }

    /// The spaces of `ino` if it has them now (tests, statistics).
    pub fn spaces_of(&self, ino: Ino) -> Option<Arc<InodeSpaces>> {
        self.spaces.read().get(&ino).cloned()
    }

    /// The spaces of `ino`, made from its page map `map` on first use.
    fn spaces(&self, ino: Ino, map: &MapView<View>) -> FsResult<Arc<InodeSpaces>> {
        if let Some(s) = self.spaces.read().get(&ino) {
            return Ok(Arc::clone(s));
        }
        // Built outside the lock: the caller shares the state, so the map
        // cannot change, and a racing builder builds the same spaces.
        let s = self.pc.new_inode(ino);
        let mut mapped = Ok(());
        map.each(|r| {
            mapped = map_run(s.dax(), r.start, r.len, r.value);
            mapped.is_ok()
        })?;
        mapped?;
        let mut all = self.spaces.write();
        Ok(Arc::clone(all.entry(ino).or_insert_with(|| Arc::new(s))))
    }

    /// The page map of file `ino` (`map`, as stored) for the file system
    /// to consult: its DAX space when it has one, or is open (`in_use`)
    /// and gets one now; the stored map for a file nobody has open (the
    /// online dedupe scanner's, a writeback after the last close), which
    /// should not leave a space behind that no close would drop.
    pub(crate) fn view<'a>(
        &self,
        ino: Ino,
        map: MapView<'a, View<'a>>,
        in_use: bool,
    ) -> FsResult<FileView<'a>> {
        if !in_use {
            if let Some(s) = self.spaces.read().get(&ino) {
                return Ok(FileView::Dax(Arc::clone(s)));
            }
            return Ok(FileView::Stored(map));
        }
        Ok(FileView::Dax(self.spaces(ino, &map)?))
    }

    /// After a commit that changed pages `first..=last` of `ino` (or failed
    /// half way through): the DAX space, if `ino` has one, is made equal to
    /// `map` (its page map now; `None` if it is no longer a file) there.
    /// Should mapping fail, the spaces go and the next read remakes them.
    pub(crate) fn resync(&mut self, ino: Ino, map: Option<MapView<View>>, first: u64, last: u64) {
        let spaces = self.spaces.get_mut();
        let Some(s) = spaces.get(&ino) else { return };
        let Some(map) = map else {
            spaces.remove(&ino);
            return;
        };
        // The pages it returns as unreferenced are not freed here: the
        // descriptor table counts nothing, Meta's share counts decide.
        let _ = self.pc.erase_range(s, first, last);
        // A page map that cannot be read leaves no space behind: the next
        // use reads it again and fails there.
        let Ok(runs) = map.range(first, (last - first).saturating_add(1)) else {
            spaces.remove(&ino);
            return;
        };
        let remapped = runs
            .iter()
            .try_for_each(|r| map_run(s.dax(), r.start, r.len, r.value))
            .and_then(|()| {
                // The aligned blocks the range cuts into may be whole runs
                // now (a file written 1 MiB a request completes its 2 MiB
                // blocks half by half): one entry each then, as a space
                // made from the map has.
                let block = 1u64 << BLOCK_ORDER;
                let (a, b) = (first - first % block, last - last % block);
                let mut edges = std::iter::once(a).chain((b != a).then_some(b));
                edges.try_for_each(|at| match map.range(at, block).as_deref() {
                    Ok(&[r])
                        if r.len == block
                            && s.dax().lookup_entry(at).is_some_and(|e| e.order == 0) =>
                    {
                        let _ = self.pc.erase_range(s, at, at + block - 1);
                        map_run(s.dax(), at, block, r.value)
                    }
                    _ => Ok(()),
                })
            });
        if remapped.is_err() {
            spaces.remove(&ino);
        }
    }

    /// Drops the spaces of `ino` (deleted, or closed for the last time).
    /// DRAM copies stay with their pfns.
    pub(crate) fn forget(&mut self, ino: Ino) {
        let gone = self.spaces.get_mut().remove(&ino);
        // The last reference goes here unless a reply still holds one.
        if gone.is_some_and(|s| s.dax().node_count() >= memory::BIG_SPACE_NODES) {
            memory::give_back_freed();
        }
    }

    /// Whether any DRAM copy exists.
    pub fn has_copies(&self) -> bool {
        self.dram_bytes.load(Relaxed) != 0
    }

    /// Drops the DRAM copies of pfns `pfn..pfn + len` on every node. Call
    /// with the state's write lock held, or the data lock of the file that
    /// alone maps them, so that no read makes a copy again before the
    /// change is in place.
    pub(crate) fn drop_copies(&self, pfn: u64, len: u64) {
        if !self.has_copies() {
            return;
        }
        let descs = self.pc.descs();
        let chunk = CHUNK_DESCS as u64;
        let end = pfn.saturating_add(len);
        let (mut p, mut dropped) = (pfn, 0u64);
        while p < end {
            let chunk_end = (p / chunk + 1).saturating_mul(chunk).min(end);
            // No chunk, no descriptor, no copy: skip 64 pfns at once.
            if descs.lookup(p).is_some() {
                for q in p..chunk_end {
                    dropped += descs.drop_dram_copies(q) as u64;
                }
            }
            p = chunk_end;
        }
        self.dram_bytes.fetch_sub(dropped * PAGE_SIZE, Relaxed);
    }

    /// The node of the calling thread's CPU.
    pub fn current_node(&self) -> u32 {
        self.pc.topology().current_node() as u32
    }

    /// Whether this read of `pfn` is its second (see the module doc); if
    /// not, remembers it. Racing readers may both remember a pfn or lose
    /// one: it is a hint, and costs at most a copy made a read later.
    fn second_read(&self, pfn: u64) -> bool {
        let sets = self.seen.len() / SEEN_WAYS;
        if sets == 0 {
            return false;
        }
        let tag = pfn.wrapping_add(1);
        let h = pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let set = ((h >> 32) % sets as u64) as usize * SEEN_WAYS;
        let ways = &self.seen[set..set + SEEN_WAYS];
        if ways.iter().any(|w| w.load(Relaxed) == tag) {
            return true;
        }
        let victim = ways
            .iter()
            .position(|w| w.load(Relaxed) == 0)
            .unwrap_or((h >> 24) as usize % SEEN_WAYS);
        ways[victim].store(tag, Relaxed);
        false
    }

    /// Takes room for one copy in the budget.
    fn reserve(&self) -> bool {
        let budget = self.budget;
        self.dram_bytes
            .fetch_update(Relaxed, Relaxed, |b| {
                (b + PAGE_SIZE <= budget).then_some(b + PAGE_SIZE)
            })
            .is_ok()
    }

    /// Remembers a copy just made, in eviction order. Entries of dropped
    /// copies are swept when they outnumber the copies the budget holds.
    fn note_copy(&self, pfn: u64, node: u32) {
        let mut made = self.made.lock();
        made.push_back((pfn, node));
        let room = (self.budget / PAGE_SIZE) as usize;
        if made.len() > 2 * room + 64 {
            let descs = self.pc.descs();
            made.retain(|&(p, n)| descs.dram_copy(p, n).is_some());
        }
    }

    /// Takes room for one copy, dropping the oldest copies while the budget
    /// is full. Dropping a page's copies while the state is only shared is
    /// safe: a copy is a cache of the pmem page, and readers that hold it
    /// keep their `Arc`.
    fn make_room(&self) -> bool {
        loop {
            if self.reserve() {
                return true;
            }
            let Some((pfn, _)) = self.made.lock().pop_front() else {
                return false;
            };
            let dropped = self.pc.descs().drop_dram_copies(pfn) as u64;
            self.dram_bytes.fetch_sub(dropped * PAGE_SIZE, Relaxed);
        }
    }

    /// A read of page `pfn` (bytes `pmem_page` in pmem) on `node`: its
    /// copy there if it has one (a hit); else a miss, which makes a copy
    /// when this is the page's second read (evicting older copies when the
    /// budget is full). `None`: serve it from pmem.
    pub(crate) fn dram_page(
        &self,
        pfn: u64,
        node: u32,
        pmem_page: &[u8],
        tally: &mut Tally,
    ) -> Option<Arc<DramPage>> {
        let descs = self.pc.descs();
        if let Some(c) = descs.dram_copy(pfn, node) {
            tally.hits += 1;
            return Some(c);
        }
        tally.misses += 1;
        if !self.second_read(pfn) {
            return None;
        }
        if !self.make_room() {
            tally.refused += 1;
            return None;
        }
        let mut filled = false;
        let c = descs.dram_copy_or_fill(pfn, node, |buf| {
            buf.copy_from_slice(pmem_page);
            filled = true;
        });
        if filled {
            self.note_copy(pfn, node);
        } else {
            // Another reader made it first and took its own room.
            self.dram_bytes.fetch_sub(PAGE_SIZE, Relaxed);
        }
        Some(c)
    }

    /// Adds a request's counts to the totals.
    pub(crate) fn record(&self, t: Tally) {
        for (total, n) in [
            (&self.hits, t.hits),
            (&self.misses, t.misses),
            (&self.refused, t.refused),
        ] {
            if n != 0 {
                total.fetch_add(n, Relaxed);
            }
        }
    }

    /// The figures of `pmemfs stat`: a walk of every DAX space.
    pub fn stats(&self) -> CacheStats {
        let mut s = CacheStats {
            dram_bytes: self.dram_bytes.load(Relaxed),
            dram_budget: self.budget,
            dram_hits: self.hits.load(Relaxed),
            dram_misses: self.misses.load(Relaxed),
            dram_refused: self.refused.load(Relaxed),
            numa_nodes: self.pc.topology().node_count() as u64,
            desc_bytes: self.pc.descs().bytes() as u64,
            ..CacheStats::default()
        };
        s.dram_copies = s.dram_bytes / PAGE_SIZE;
        let spaces = self.spaces.read();
        s.inodes = spaces.len() as u64;
        for sp in spaces.values() {
            let dax = sp.dax();
            s.xa_nodes += dax.node_count() as u64;
            for f in dax.read().iter(0, u64::MAX) {
                s.dax_entries += 1;
                s.dax_pages += 1u64 << f.order;
            }
        }
        s.xa_bytes = s.xa_nodes * NODE_BYTES as u64;
        s
    }
}

#[cfg(test)]
mod tests {
    //! The coherence rules on an in-memory image: after every operation
    //! each DAX space equals its page map page for page, the copies counted
    //! are the copies that exist, and the pages an operation changed have
    //! no DRAM copy left.

    use super::*;
    use crate::namespace::{Caller, NewInode};
    use crate::state::State;
    use pmemfs_ondisk::{format_pmem, FormatOptions, Image, Pmem, MIN_IMAGE_BYTES, ROOT_INO};

    const PG: u64 = PAGE_SIZE;
    const PUNCH: i32 = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;

    /// Keeps the test thread on the CPU it runs on, so that it stays on
    /// one emulated node: a loaded machine would otherwise move it between
    /// reads, and the copies of one node would not be the other's hits.
    fn pin_thread() {
        let Some(cpu) = pmemfs_pagecache::numa::current_cpu() else {
            return;
        };
        // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and
        // sched_setaffinity only touch the set and this thread.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu as usize, &mut set);
            libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
        }
    }

    fn state(dram_cache: u64) -> State {
        pin_thread();
        let pmem = Pmem::memory(MIN_IMAGE_BYTES);
        let opts = FormatOptions::fixed("cache");
        format_pmem(&pmem, &opts).expect("format");
        let image = Image::open_pmem(pmem).expect("open");
        // Two emulated nodes: whichever the test thread runs on, the
        // other one's copies must go too.
        let topology = Topology::single(2).emulate(2);
        State::with_cache(
            image,
            false,
            CacheOptions {
                dram_cache,
                topology,
            },
        )
    }

    fn create(st: &mut State, name: &str) -> Ino {
        let new = NewInode {
            mode: libc::S_IFREG | 0o644,
            rdev: 0,
            target: None,
        };
        let ino = st
            .make(ROOT_INO, name.as_bytes(), new, Caller { uid: 0, gid: 0 })
            .expect("create");
        // Open, as through a mount: files in use have spaces.
        st.opened(ino, false).expect("open");
        ino
    }

    fn pattern(len: u64, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed) ^ (i >> 12) as u8)
            .collect()
    }

    fn read_all(st: &State, ino: Ino) -> Vec<u8> {
        let size = st.attr(ino).expect("attr").size;
        let mut out = Vec::new();
        // In requests of 37 pages, as the kernel would split them, so that
        // some cross the 2 MiB entries.
        while (out.len() as u64) < size {
            let d = st
                .read(ino, out.len() as u64, 37 * PG as u32)
                .expect("read");
            assert!(!d.as_slice().is_empty(), "short read");
            out.extend_from_slice(d.as_slice());
        }
        out
    }

    fn pfn(st: &State, ino: Ino, index: u64) -> u64 {
        let map = st.image.file_map(ino).expect("a file");
        map.get(index).expect("page map").expect("mapped")
    }

    /// DRAM copies of `pfn` on any node.
    fn copies(st: &State, pfn: u64) -> usize {
        let pc = st.cache().page_cache();
        (0..pc.topology().node_count())
            .filter(|&n| pc.descs().dram_copy(pfn, n as u32).is_some())
            .count()
    }

    /// Every inode with spaces: its DAX space maps exactly what its page
    /// map does. And the copies counted are those of mapped pfns.
    fn check(st: &State) {
        let meta = st.image.meta();
        for (&ino, inode) in &meta.inodes {
            let Some(s) = st.cache().spaces_of(ino) else {
                continue;
            };
            assert!(inode.pages().is_some(), "only files have spaces");
            let m = st.image.file_map(ino).expect("a file");
            let dax = s.dax();
            let mut pages = 0;
            for f in dax.read().iter(0, u64::MAX) {
                for i in f.index..=f.last() {
                    let got = dax.lookup(i).map(|(p, _)| p);
                    assert_eq!(
                        got,
                        m.get(i).expect("page map"),
                        "ino {ino} page {i}: DAX vs page map"
                    );
                    pages += 1;
                }
            }
            assert_eq!(pages, m.pages(), "ino {ino}: pages mapped in DAX");
        }
        for ino in st.cache().spaces.read().keys() {
            assert!(meta.get(*ino).is_some(), "spaces of deleted inode {ino}");
        }
        let mut n = 0;
        for r in st.image.counted_shares().expect("page maps").iter() {
            for p in r.start..r.start + r.len {
                n += copies(st, p) as u64;
            }
        }
        assert_eq!(n, st.cache().stats().dram_copies, "copies counted");
    }

    #[test]
    fn dax_spaces_follow_the_page_maps_and_writes_drop_copies() {
        let mut st = state(4 << 20);
        let f = create(&mut st, "f");
        let len = 2 * (1 << 20) + 5 * PG + 100;
        let mut want_f = pattern(len, 1);
        st.write(f, 0, &want_f).expect("write");
        assert!(
            st.cache().spaces_of(f).is_some(),
            "an open file's writes consult its space"
        );

        // Two reads: the second makes copies (on this thread's node).
        assert_eq!(read_all(&st, f), want_f);
        check(&st);
        let s = st.cache().spaces_of(f).expect("spaces after a read");
        let head = s.dax().lookup_entry(0).expect("page 0");
        assert_eq!(
            head.order, BLOCK_ORDER,
            "a 2 MiB entry for the aligned block"
        );
        assert_eq!(s.dax().lookup_entry(512).map(|e| e.order), Some(0));
        drop(s);
        assert_eq!(st.cache().stats().dram_copies, 0, "one read: not hot yet");
        assert_eq!(read_all(&st, f), want_f);
        let pages = len.div_ceil(PG);
        let st1 = st.cache().stats();
        assert_eq!(st1.dram_copies, pages, "second read: every page copied");
        assert_eq!(read_all(&st, f), want_f);
        let st2 = st.cache().stats();
        assert_eq!(st2.dram_hits - st1.dram_hits, pages, "third read: all hits");
        check(&st);

        // In place (the page is f's alone): its copy goes, others stay.
        let p3 = pfn(&st, f, 3);
        assert_eq!(copies(&st, p3), 1);
        st.write(f, 3 * PG + 7, b"in place").expect("write");
        want_f[3 * PG as usize + 7..][..8].copy_from_slice(b"in place");
        assert_eq!(pfn(&st, f, 3), p3, "written in place");
        assert_eq!(copies(&st, p3), 0, "in-place write drops the copy");
        assert_eq!(copies(&st, pfn(&st, f, 4)), 1);
        check(&st);
        assert_eq!(read_all(&st, f), want_f);

        // Clone f into g: nothing of f changes.
        let g = create(&mut st, "g");
        let mut done = 0;
        while done < len {
            done += st.copy_range(f, done, g, done, len - done).expect("clone");
        }
        let mut want_g = want_f.clone();
        assert_eq!(pfn(&st, g, 300), pfn(&st, f, 300), "pages shared");
        assert_eq!(read_all(&st, g), want_g);
        check(&st);
        assert_eq!(copies(&st, pfn(&st, f, 4)), 1, "a clone keeps copies");

        // Write into the clone, inside f's 2 MiB entry: copy on write.
        let shared = pfn(&st, g, 10);
        st.write(g, 10 * PG, b"cow").expect("write");
        want_g[10 * PG as usize..][..3].copy_from_slice(b"cow");
        assert_ne!(pfn(&st, g, 10), shared, "copied on write");
        assert_eq!(pfn(&st, f, 10), shared, "the source keeps its page");
        assert_eq!(copies(&st, shared), 0, "the replaced page's copies go");
        check(&st);
        assert_eq!(read_all(&st, f), want_f);
        assert_eq!(read_all(&st, g), want_g);

        // Truncate f into its 2 MiB entry: the tail goes, the new last
        // page's end is zeroed (copied: g shares it).
        let old: Vec<u64> = (100..pages).map(|i| pfn(&st, f, i)).collect();
        for _ in 0..2 {
            read_all(&st, f);
        }
        let new_size = 100 * PG + 10;
        st.set_size(f, new_size, |_| {}).expect("truncate");
        want_f.truncate(new_size as usize);
        for p in &old {
            assert_eq!(copies(&st, *p), 0, "truncated page {p} keeps a copy");
        }
        check(&st);
        assert_eq!(read_all(&st, f), want_f);
        assert_eq!(read_all(&st, g), want_g, "the clone is untouched");

        // Punch a hole in g across the end of its first 2 MiB.
        for _ in 0..2 {
            read_all(&st, g);
        }
        let holed: Vec<u64> = (508..516).map(|i| pfn(&st, g, i)).collect();
        st.fallocate(g, 508 * PG + 1, 8 * PG, PUNCH).expect("punch");
        want_g[508 * PG as usize + 1..516 * PG as usize + 1].fill(0);
        for p in &holed[1..] {
            assert_eq!(copies(&st, *p), 0, "punched page {p} keeps a copy");
        }
        assert_eq!(copies(&st, holed[0]), 0, "page 508 was zeroed in part");
        check(&st);
        assert_eq!(read_all(&st, g), want_g);

        // Zero range, then unlink and close g (deleted: spaces and copies go).
        st.fallocate(g, 20 * PG, 3 * PG, libc::FALLOC_FL_ZERO_RANGE)
            .expect("zero range");
        want_g[20 * PG as usize..23 * PG as usize].fill(0);
        check(&st);
        assert_eq!(read_all(&st, g), want_g);
        read_all(&st, g);
        let gp: Vec<u64> = st
            .image
            .file_map(g)
            .expect("a file")
            .all()
            .expect("page map")
            .iter()
            .map(|r| r.value)
            .collect();
        st.unlink(ROOT_INO, b"g", false).expect("unlink");
        st.closed(g, false).expect("last close");
        assert!(st.cache().spaces_of(g).is_none());
        for p in gp {
            assert_eq!(copies(&st, p), 0);
        }
        check(&st);
        assert_eq!(read_all(&st, f), want_f);
    }

    #[test]
    fn copies_stay_within_the_budget() {
        let mut st = state(16 * PG);
        let f = create(&mut st, "f");
        let want = pattern(64 * PG, 9);
        st.write(f, 0, &want).expect("write");
        for _ in 0..3 {
            assert_eq!(read_all(&st, f), want);
        }
        let s = st.cache().stats();
        assert_eq!((s.dram_copies, s.dram_bytes), (16, 16 * PG));
        assert_eq!(s.dram_refused, 0, "{s:?}");
        check(&st);
        // Writes drop copies: of the last 16 pages copied, the 8 rewritten.
        st.write(f, 48 * PG, &pattern(8 * PG, 2)).expect("write");
        assert_eq!(st.cache().stats().dram_copies, 8);
        check(&st);
    }

    /// Pages that turn hot after the budget filled up displace the oldest
    /// copies, and are then read from DRAM.
    #[test]
    fn new_hot_pages_displace_the_oldest_copies() {
        let mut st = state(16 * PG);
        let f = create(&mut st, "f");
        let want = pattern(64 * PG, 5);
        st.write(f, 0, &want).expect("write");
        let read = |st: &State, first: u64, pages: u64| {
            for i in first..first + pages {
                let d = st.read(f, i * PG, PG as u32).expect("read");
                assert_eq!(
                    d.as_slice(),
                    &want[(i * PG) as usize..((i + 1) * PG) as usize]
                );
            }
        };
        for _ in 0..2 {
            read(&st, 0, 16);
        }
        assert_eq!(st.cache().stats().dram_copies, 16);
        let old: Vec<u64> = (0..16).map(|i| pfn(&st, f, i)).collect();
        for _ in 0..2 {
            read(&st, 32, 16);
        }
        let before = st.cache().stats();
        read(&st, 32, 16);
        let s = st.cache().stats();
        assert_eq!((s.dram_copies, s.dram_refused), (16, 0), "{s:?}");
        assert_eq!(s.dram_hits - before.dram_hits, 16, "the new hot pages hit");
        for i in 32..48 {
            assert_eq!(copies(&st, pfn(&st, f, i)), 1, "page {i}");
        }
        for p in old {
            assert_eq!(copies(&st, p), 0, "old copy of pfn {p} evicted");
        }
        check(&st);
    }

    #[test]
    fn without_dram_reads_use_dax_and_copy_nothing() {
        let mut st = state(0);
        let f = create(&mut st, "f");
        let want = pattern(600 * PG, 4);
        st.write(f, 0, &want).expect("write");
        for _ in 0..3 {
            assert_eq!(read_all(&st, f), want);
        }
        // One run of pmem: the reply is pmem itself.
        assert!(matches!(
            st.read(f, 0, 512 * PG as u32).expect("read"),
            crate::data::ReadData::Pmem(_)
        ));
        let s = st.cache().stats();
        assert_eq!(s.inodes, 1);
        assert_eq!(s.dax_pages, 600);
        assert_eq!((s.dram_copies, s.dram_hits, s.dram_misses), (0, 0, 0));
        st.closed(f, false).expect("close");
        assert!(st.cache().spaces_of(f).is_none(), "last close drops spaces");
        check(&st);
        // Closed, the file is read from its stored map, and no space is
        // left behind that no close would drop.
        assert_eq!(read_all(&st, f), want);
        assert!(
            st.cache().spaces_of(f).is_none(),
            "no space for a closed file"
        );
    }

    /// A file written in requests of 1 MiB, as the kernel sends them: each
    /// 2 MiB block becomes one entry once its second half is written.
    #[test]
    fn blocks_completed_by_later_writes_become_one_entry() {
        let mut st = state(0);
        let f = create(&mut st, "f");
        let mib = 1 << 20;
        let want = pattern(5 * mib, 7);
        for (i, part) in want.chunks(mib as usize).enumerate() {
            st.write(f, i as u64 * mib, part).expect("write");
            check(&st);
        }
        let s = st.cache().spaces_of(f).expect("spaces");
        let orders: Vec<u8> = [0, 512, 1024]
            .iter()
            .map(|&i| s.dax().lookup_entry(i).expect("mapped").order)
            .collect();
        assert_eq!(
            orders,
            [BLOCK_ORDER, BLOCK_ORDER, 0],
            "two whole blocks, half of a third"
        );
        assert_eq!(st.cache().stats().dax_entries, 2 + 256);
        assert_eq!(read_all(&st, f), want);
    }

    /// Random writes, truncates, punches and clones over three files,
    /// against a model of their bytes.
    #[test]
    fn random_operations_keep_every_space_coherent() {
        let mut st = state(64 * PG);
        let names = ["a", "b", "c"];
        let inos: Vec<Ino> = names.iter().map(|n| create(&mut st, n)).collect();
        let mut model: Vec<Vec<u8>> = vec![Vec::new(); 3];
        let mut x = 0x2545_f491_4f6c_dd1du64;
        let mut rnd = |n: u64| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x % n
        };
        for step in 0..400 {
            let k = rnd(3) as usize;
            let ino = inos[k];
            match rnd(6) {
                0 | 1 => {
                    let off = rnd(40 * PG);
                    let data = pattern(rnd(6 * PG) + 1, step as u8);
                    st.write(ino, off, &data).expect("write");
                    let m = &mut model[k];
                    let end = off as usize + data.len();
                    if m.len() < end {
                        m.resize(end, 0);
                    }
                    m[off as usize..end].copy_from_slice(&data);
                }
                2 => {
                    let size = rnd(44 * PG);
                    st.set_size(ino, size, |_| {}).expect("truncate");
                    model[k].resize(size as usize, 0);
                }
                3 => {
                    let size = model[k].len() as u64;
                    if size > 0 {
                        let off = rnd(size);
                        let len = rnd(8 * PG) + 1;
                        st.fallocate(ino, off, len, PUNCH).expect("punch");
                        let end = (off + len).min(size) as usize;
                        model[k][off as usize..end].fill(0);
                    }
                }
                _ => {
                    let j = rnd(3) as usize;
                    let size = model[j].len() as u64;
                    if size == 0 || j == k {
                        continue;
                    }
                    let src_off = rnd(size) / PG * PG;
                    let dst_off = rnd(40) * PG;
                    let len = rnd(size - src_off) + 1;
                    let n = st
                        .copy_range(inos[j], src_off, ino, dst_off, len)
                        .expect("clone");
                    let bytes = model[j][src_off as usize..(src_off + n) as usize].to_vec();
                    let m = &mut model[k];
                    let end = (dst_off + n) as usize;
                    if m.len() < end {
                        m.resize(end, 0);
                    }
                    m[dst_off as usize..end].copy_from_slice(&bytes);
                }
            }
            // Read some files (making spaces and, read twice, copies).
            for (i, &ino) in inos.iter().enumerate() {
                if rnd(2) == 0 {
                    assert_eq!(read_all(&st, ino), model[i], "step {step} file {i}");
                }
            }
            check(&st);
        }
        assert!(st.cache().stats().dram_hits > 0);
    }
}
