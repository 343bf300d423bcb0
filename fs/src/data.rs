//! File data: read, write, truncate, fallocate, seek, and clone.
//!
//! A file's pages are pfns in its page map. Reads find them in the file's
//! DAX space (see [`crate::cache`]) and copy nothing in the daemon when the
//! range lies in one run of pages: the reply is a slice of the pmem mapping
//! itself. With a DRAM cache, pages with a copy on the reader's node are
//! served from it (a one-page read straight from the copy). A write
//! overwrites a page in place when the file is its only user, and otherwise
//! (a page shared with a clone, or a hole) writes a fresh page that a `Map`
//! op then puts in place: copy on write.
//! New pages are written, flushed and fenced before the transaction that
//! maps them, so a crash never exposes a page that was not fully written.
//!
//! Bytes of a file's pages past its size are normally zero, but not
//! always: an in-place write past the end that a crash cuts short before
//! its commit leaves its bytes there, with the size unchanged. So whatever
//! grows a file first zeroes the bytes it is about to expose
//! (`State::expose`); reads stop at the size, and a clone of a last page
//! carries those bytes past the clone's end too.

use pmemfs_ondisk::{Body, Ino, Op, Run, PAGE_SIZE};

use std::sync::Arc;

use pmemfs_pagecache::DramPage;

use crate::cache::{FileView, Tally};
use crate::error::{fail, FsError, FsResult};
use crate::state::{now, State};

/// The largest file, as the kernel's MAX_LFS_FILESIZE.
pub const MAX_FILE_SIZE: u64 = i64::MAX as u64;
/// Longest clone per copy_file_range call: the reply's count is 32 bits, and
/// ending on a page boundary lets the next call start aligned.
pub const MAX_CLONE: u64 = (4 << 30) - PAGE_SIZE;
const PAGE: usize = PAGE_SIZE as usize;

/// Data for a read reply: borrowed straight from pmem or from one DRAM
/// copy when possible.
pub enum ReadData<'a> {
    Pmem(&'a [u8]),
    /// Bytes `range` of one page's DRAM copy.
    Dram(Arc<DramPage>, std::ops::Range<usize>),
    Copied(Vec<u8>),
}

impl ReadData<'_> {
    pub fn as_slice(&self) -> &[u8] {
        match self {
            ReadData::Pmem(s) => s,
            ReadData::Dram(p, r) => &p.data()[r.clone()],
            ReadData::Copied(v) => v,
        }
    }
}

/// The page map of file `ino`, as everything here consults it: its DAX
/// space while the file is in use (see [`crate::cache::Cache::view`]).
pub(crate) fn pages_of(state: &State, ino: Ino) -> FsResult<FileView<'_>> {
    match &state.inode(ino)?.body {
        Body::File(m) => state
            .cache()
            .view(ino, m.view(state.image.view()), state.is_open(ino)),
        Body::Dir(_) => fail(libc::EISDIR),
        _ => fail(libc::EINVAL),
    }
}

/// `Map` ops for (page index, pfn) pairs: consecutive indexes on
/// consecutive pfns go in one op, which keeps transactions small.
fn push_maps(ino: Ino, pairs: &[(u64, u64, Option<u64>)], ops: &mut Vec<Op>) {
    let mut i = 0;
    while i < pairs.len() {
        let (index, pfn, _) = pairs[i];
        let mut len = 1;
        while i + (len as usize) < pairs.len()
            && (pairs[i + len as usize].0, pairs[i + len as usize].1) == (index + len, pfn + len)
        {
            len += 1;
        }
        ops.push(Op::Map {
            ino,
            index,
            pfn,
            len,
        });
        i += len as usize;
    }
}

/// The pages of `need` (page index, pfn it maps now) paired with the
/// fresh pfns of `runs`, taken for them in order: (index, fresh pfn, old).
fn replacements(need: &[(u64, Option<u64>)], runs: &[Run<u64>]) -> Vec<(u64, u64, Option<u64>)> {
    let fresh = runs.iter().flat_map(|r| r.start..r.start + r.len);
    need.iter()
        .zip(fresh)
        .map(|(&(idx, old), pfn)| (idx, pfn, old))
        .collect()
}

/// Who writes, as the FUSE request says.
#[derive(Debug, Clone, Copy, Default)]
pub struct Writer {
    /// The writer may not keep set-uid and set-gid (see [`crate::privs`]);
    /// file capabilities go on every write.
    pub kill_suidgid: bool,
    /// A writeback of the kernel's page cache (`-o writeback_cache`):
    /// whole pages, and times the kernel keeps.
    pub writeback: bool,
}

/// Where to allocate page `index` of a file so that it extends the file's
/// run: after the pfn of page `index - 1`, in the page map or among the
/// pages just taken for this transaction (the last run taken).
fn goal(state: &State, ino: Ino, index: u64, fresh: &Fresh) -> Option<u64> {
    let prev = index.checked_sub(1)?;
    if let Some(r) = fresh.0.last() {
        // The last fresh run ends at the page before when the two are
        // consecutive: the common case of a long write.
        return Some(r.start + r.len);
    }
    pages_of(state, ino)
        .ok()?
        .get(prev)
        .ok()?
        .map(|pfn| pfn + 1)
}

/// A write between its steps (see [`State::stage_write`]): the pages it
/// replaces and the fresh pages taken for them.
pub struct StagedWrite {
    need: Vec<(u64, Option<u64>)>,
    fresh: Fresh,
}

/// Pages written and not yet flushed, as one run of consecutive pfns.
#[derive(Default)]
struct Dirty {
    run: Option<(u64, u64)>,
}

impl Dirty {
    /// Notes page `pfn`; flushes the run so far when `pfn` does not extend it.
    fn add(&mut self, pmem: &pmemfs_ondisk::Pmem, pfn: u64) -> FsResult<()> {
        match &mut self.run {
            Some((start, len)) if *start + *len == pfn => *len += 1,
            _ => {
                self.flush(pmem)?;
                self.run = Some((pfn, 1));
            }
        }
        Ok(())
    }

    fn flush(&mut self, pmem: &pmemfs_ondisk::Pmem) -> FsResult<()> {
        if let Some((start, len)) = self.run.take() {
            pmem.flush(start * PAGE_SIZE, len * PAGE_SIZE)?;
        }
        Ok(())
    }
}

/// Pages allocated for a transaction that has not committed yet: given back
/// if it fails.
#[derive(Default)]
struct Fresh(Vec<Run<u64>>);

impl Fresh {
    fn give_back(self, state: &mut State) {
        for r in self.0 {
            state.image.release(r.start, r.len);
        }
    }
}

impl State {
    /// Reads up to `size` bytes at `off`; pages with a DRAM copy on this
    /// thread's node come from it.
    pub fn read(&self, ino: Ino, off: u64, size: u32) -> FsResult<ReadData<'_>> {
        self.read_pages(ino, off, size, true)
    }

    /// [`State::read`], from pmem only when `dram` is false (reads of the
    /// file system itself, which should neither count as hits nor make
    /// pages hot).
    fn read_pages(&self, ino: Ino, off: u64, size: u32, dram: bool) -> FsResult<ReadData<'_>> {
        let map = pages_of(self, ino)?;
        let file_size = self.attr(ino)?.size;
        if off >= file_size {
            return Ok(ReadData::Copied(Vec::new()));
        }
        let end = file_size.min(off.saturating_add(u64::from(size)));
        if end == off {
            return Ok(ReadData::Copied(Vec::new()));
        }
        let pmem = self.image.pmem();
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        let runs = map.range(first, last - first + 1)?;
        if dram && self.cache().dram_enabled() {
            if let Some(d) = self.read_dram(&runs, off, end)? {
                return Ok(d);
            }
        }
        // One run covering the whole range: reply from pmem directly.
        if let [r] = runs.as_slice() {
            if r.start == first && r.len == last - first + 1 {
                let at = r.value * PAGE_SIZE + off % PAGE_SIZE;
                return Ok(ReadData::Pmem(pmem.bytes(at, end - off)?));
            }
        }
        let mut out = vec![0u8; (end - off) as usize];
        for r in runs {
            let (a, b) = (
                (r.start * PAGE_SIZE).max(off),
                ((r.start + r.len) * PAGE_SIZE).min(end),
            );
            let src = r.value * PAGE_SIZE + (a - r.start * PAGE_SIZE);
            out[(a - off) as usize..(b - off) as usize].copy_from_slice(pmem.bytes(src, b - a)?);
        }
        Ok(ReadData::Copied(out))
    }

    /// Bytes `[off, end)` of the pages `runs` from their DRAM copies on
    /// this node where they have one (or get one now, see
    /// [`crate::cache`]), from pmem elsewhere. `None` when no page had a
    /// copy: the caller replies from pmem, without a copy in the daemon.
    fn read_dram(&self, runs: &[Run<u64>], off: u64, end: u64) -> FsResult<Option<ReadData<'_>>> {
        let pmem = self.image.pmem();
        let cache = self.cache();
        let node = cache.current_node();
        let mut tally = Tally::default();
        // (page index, copy) for pages served from DRAM.
        let mut copies = Vec::new();
        for r in runs {
            for k in 0..r.len {
                let pfn = r.value + k;
                let page = pmem.bytes(pfn * PAGE_SIZE, PAGE_SIZE)?;
                if let Some(c) = cache.dram_page(pfn, node, page, &mut tally) {
                    copies.push((r.start + k, c));
                }
            }
        }
        cache.record(tally);
        if copies.is_empty() {
            return Ok(None);
        }
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        if first == last {
            if let Some((_, c)) = copies.pop() {
                let at = (off % PAGE_SIZE) as usize;
                return Ok(Some(ReadData::Dram(c, at..at + (end - off) as usize)));
            }
        }
        let mut out = vec![0u8; (end - off) as usize];
        let mut copies = copies.into_iter().peekable();
        for r in runs {
            for k in 0..r.len {
                let idx = r.start + k;
                let (a, b) = ((idx * PAGE_SIZE).max(off), ((idx + 1) * PAGE_SIZE).min(end));
                let at = (a - idx * PAGE_SIZE) as usize;
                let dst = &mut out[(a - off) as usize..(b - off) as usize];
                match copies.next_if(|(i, _)| *i == idx) {
                    Some((_, c)) => dst.copy_from_slice(&c.data()[at..at + dst.len()]),
                    None => dst
                        .copy_from_slice(pmem.bytes((r.value + k) * PAGE_SIZE + at as u64, b - a)?),
                }
            }
        }
        Ok(Some(ReadData::Copied(out)))
    }

    /// Whether the file is the only user of `pfn`, a mapped pfn.
    fn exclusive(&self, pfn: u64) -> FsResult<bool> {
        Ok(self.image.share_count(pfn)? == 1)
    }

    /// Stores `data` at byte `off` of the file's pages and returns the `Map`
    /// ops that must commit with it (fresh pages for holes and shared
    /// pages). In-place stores to exclusive pages are flushed; fresh pages
    /// are written whole (old contents or zeros around `data`) and flushed.
    /// Everything is fenced before returning.
    fn store(
        &mut self,
        ino: Ino,
        off: u64,
        data: &[u8],
        ops: &mut Vec<Op>,
        fresh: &mut Fresh,
    ) -> FsResult<()> {
        if data.is_empty() {
            return Ok(());
        }
        let need = self.pages_to_replace(&pages_of(self, ino)?, off, data.len())?;
        let taken = fresh.0.len();
        self.take_fresh(ino, &need, fresh)?;
        let pairs = replacements(&need, &fresh.0[taken..]);
        self.fill(&pages_of(self, ino)?, off, data, &pairs)?;
        push_maps(ino, &pairs, ops);
        Ok(())
    }

    /// The pages of bytes `[off, off + len)` that a write must replace
    /// with fresh ones (holes and shared pages; the file's own pages are
    /// written in place), with the pfn each maps now.
    fn pages_to_replace(
        &self,
        map: &FileView,
        off: u64,
        len: usize,
    ) -> FsResult<Vec<(u64, Option<u64>)>> {
        let end = off + len as u64;
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        let mut need = Vec::new();
        for idx in first..=last {
            match map.get(idx)? {
                Some(pfn) if self.exclusive(pfn)? => {}
                old => need.push((idx, old)),
            }
        }
        Ok(need)
    }

    /// Takes fresh pages for `need` (see [`State::pages_to_replace`]),
    /// each run placed to extend the file's run before it, onto `fresh`.
    fn take_fresh(
        &mut self,
        ino: Ino,
        need: &[(u64, Option<u64>)],
        fresh: &mut Fresh,
    ) -> FsResult<()> {
        let mut i = 0;
        while i < need.len() {
            let goal = goal(self, ino, need[i].0, fresh);
            let run = self
                .image
                .alloc_for((need.len() - i) as u64, goal, need[i].0)?;
            fresh.0.push(run);
            i += run.len as usize;
        }
        Ok(())
    }

    /// Stores `data` at byte `off` of the file `map` is of: in place on its
    /// own pages, and
    /// into the fresh pages `pairs` (page index, fresh pfn, pfn it
    /// replaces) whole, with the old bytes or zeros around `data`; then
    /// flushes and fences it all. Needs the state alone, or shared with the
    /// file's data lock held alone and the fresh pages not yet mapped.
    fn fill(
        &self,
        map: &FileView,
        off: u64,
        data: &[u8],
        pairs: &[(u64, u64, Option<u64>)],
    ) -> FsResult<()> {
        let end = off + data.len() as u64;
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        // The bytes of `data` that land in page `idx`, and where in it.
        let part = |idx: u64| {
            let (a, b) = ((idx * PAGE_SIZE).max(off), ((idx + 1) * PAGE_SIZE).min(end));
            (
                (a - idx * PAGE_SIZE) as usize,
                &data[(a - off) as usize..(b - off) as usize],
            )
        };
        // Flushes go out per run of consecutive pfns: with the msync domain
        // each flush is a system call.
        let mut dirty = Dirty::default();
        let mut fresh = pairs.iter().peekable();
        // The buffer for partial fresh pages, made only when one needs it:
        // an in-place write, the common case, takes no allocation.
        let mut page = Vec::new();
        for idx in first..=last {
            let (at, bytes) = part(idx);
            let Some(&(_, pfn, old)) = fresh.next_if(|p| p.0 == idx) else {
                let pfn = map.get(idx)?.ok_or(FsError::Posix(libc::EIO))?;
                self.store_in_place(pfn, at, bytes, &mut dirty)?;
                continue;
            };
            if bytes.len() == PAGE {
                self.image.pmem().write(pfn * PAGE_SIZE, bytes)?;
            } else {
                page.resize(PAGE, 0);
                match old {
                    Some(old) => self.image.pmem().read(old * PAGE_SIZE, &mut page)?,
                    None => page.fill(0),
                }
                page[at..at + bytes.len()].copy_from_slice(bytes);
                self.image.pmem().write(pfn * PAGE_SIZE, &page)?;
            }
            dirty.add(self.image.pmem(), pfn)?;
        }
        dirty.flush(self.image.pmem())?;
        if !pmemfs_ondisk::testing::skip_data_fence() {
            self.image.pmem().fence()?;
        }
        Ok(())
    }

    /// Stores `bytes` at byte `at` of `pfn`, a page the file alone maps.
    /// Its DRAM copies would be stale: they go first, and no read of the
    /// page can make one again before the store is done (the caller holds
    /// the state alone, or the file's data lock, which every reader of a
    /// page the file alone maps holds).
    fn store_in_place(&self, pfn: u64, at: usize, bytes: &[u8], dirty: &mut Dirty) -> FsResult<()> {
        self.cache().drop_copies(pfn, 1);
        self.image
            .pmem()
            .write(pfn * PAGE_SIZE + at as u64, bytes)?;
        dirty.add(self.image.pmem(), pfn)
    }

    /// The write that needs no transaction, with the state shared: `data`
    /// lies within the file's size on pages the file alone maps, and
    /// neither the times (the coarse clock has not ticked since they were
    /// stamped, or the writeback cache keeps them), nor the mode, nor the
    /// file's capabilities change. Its stores are flushed and fenced, so
    /// the write is durable when this returns. `None` when the write needs
    /// more, or is refused: [`State::write_as`], with the state alone,
    /// does it or says why (an error here, for what is not a file, is the
    /// one it would give). The caller holds the file's data lock
    /// ([`crate::datalock`]) exclusive.
    pub fn write_in_place(
        &self,
        ino: Ino,
        off: u64,
        data: &[u8],
        who: Writer,
    ) -> FsResult<Option<u32>> {
        let map = pages_of(self, ino)?;
        let end = match off.checked_add(data.len() as u64) {
            Some(end) if !data.is_empty() => end,
            _ => return Ok(None),
        };
        if self.is_read_only() || self.may_write_at(ino, off, false).is_err() {
            return Ok(None);
        }
        // Past the size, the size changes; the times may have to move.
        let mut ops = Vec::new();
        self.write_attr_ops(ino, end, who, &mut ops)?;
        if !ops.is_empty() {
            return Ok(None);
        }
        // Every page mapped, and the file's alone.
        if !self.pages_to_replace(&map, off, data.len())?.is_empty() {
            return Ok(None);
        }
        self.fill(&map, off, data, &[])?;
        self.ksm_queue().push(ino);
        Ok(Some(data.len() as u32))
    }

    /// Runs `build` to make a transaction's ops, committing them with
    /// `extra`; fresh pages go back to the allocator if anything fails.
    fn transact(
        &mut self,
        build: impl FnOnce(&mut State, &mut Vec<Op>, &mut Fresh) -> FsResult<()>,
    ) -> FsResult<()> {
        if self.is_read_only() {
            return fail(libc::EROFS);
        }
        let mut ops = Vec::new();
        let mut fresh = Fresh(Vec::new());
        // Nothing to commit when nothing changed but bytes stored in place.
        let r = build(self, &mut ops, &mut fresh).and_then(|()| match ops.is_empty() {
            true => Ok(()),
            false => self.commit(&ops),
        });
        if r.is_err() {
            fresh.give_back(self);
        }
        r
    }

    /// Zeroes whatever is not zero in bytes `[from, to)` of the file's
    /// pages, which lie past its size `from`: called before the size grows
    /// past them. Usually there is nothing to zero and nothing is written;
    /// otherwise the zeroing is a transaction of its own (harmless if a
    /// crash stops the growth after it), so that the growth's own stores
    /// see its pages.
    fn expose(&mut self, ino: Ino, from: u64, to: u64) -> FsResult<()> {
        let dirty = self.to_expose(ino, from, to)?;
        if dirty.is_empty() {
            return Ok(());
        }
        self.transact(|s, ops, fresh| {
            for (a, b) in dirty {
                s.store(ino, a, &vec![0u8; (b - a) as usize], ops, fresh)?;
            }
            Ok(())
        })
    }

    /// The byte ranges of `[from, to)` (past the size `from`) that are not
    /// zero: what [`State::expose`] zeroes.
    fn to_expose(&self, ino: Ino, from: u64, to: u64) -> FsResult<Vec<(u64, u64)>> {
        let mut dirty = Vec::new();
        if from >= to {
            return Ok(dirty);
        }
        let (first, last) = (from / PAGE_SIZE, (to - 1) / PAGE_SIZE);
        for r in pages_of(self, ino)?.range(first, last - first + 1)? {
            for k in 0..r.len {
                let idx = r.start + k;
                let (a, b) = ((idx * PAGE_SIZE).max(from), ((idx + 1) * PAGE_SIZE).min(to));
                let at = (r.value + k) * PAGE_SIZE + (a - idx * PAGE_SIZE);
                if self.image.pmem().bytes(at, b - a)?.iter().any(|&x| x != 0) {
                    dirty.push((a, b));
                }
            }
        }
        Ok(dirty)
    }

    /// Whether a write of `data` at `off` leaves every byte below the
    /// file's size as it is (only what lies past the end is new).
    fn rewrites_as_is(&self, ino: Ino, off: u64, data: &[u8]) -> FsResult<bool> {
        let size = self.attr(ino)?.size;
        let below =
            usize::try_from(size.saturating_sub(off)).map_or(data.len(), |n| n.min(data.len()));
        let have = self.read_pages(ino, off, below as u32, false)?;
        Ok(have.as_slice() == &data[..below])
    }

    /// How many of `len` bytes at `off` a write can store with the pages
    /// left: all of them when the range needs no more fresh pages (holes
    /// and shared pages) than are available, else those before the first
    /// page that does not fit.
    fn bytes_that_fit(&self, ino: Ino, off: u64, len: usize) -> FsResult<usize> {
        if len == 0 {
            return Ok(0);
        }
        let avail = self.image.available_pages();
        let (first, last) = (off / PAGE_SIZE, (off + len as u64 - 1) / PAGE_SIZE);
        if last - first < avail {
            return Ok(len);
        }
        let map = pages_of(self, ino)?;
        let mut fresh = 0;
        for idx in first..=last {
            let needs_page = match map.get(idx)? {
                Some(pfn) => !self.exclusive(pfn)?,
                None => true,
            };
            if needs_page {
                if fresh == avail {
                    return Ok((idx * PAGE_SIZE).saturating_sub(off) as usize);
                }
                fresh += 1;
            }
        }
        Ok(len)
    }

    pub fn write(&mut self, ino: Ino, off: u64, data: &[u8]) -> FsResult<u32> {
        self.write_as(ino, off, data, Writer::default())
    }

    /// A write by `who` (see [`Writer`]).
    pub fn write_as(&mut self, ino: Ino, off: u64, data: &[u8], who: Writer) -> FsResult<u32> {
        pages_of(self, ino)?;
        if off
            .checked_add(data.len() as u64)
            .is_none_or(|e| e > MAX_FILE_SIZE)
        {
            return fail(libc::EFBIG);
        }
        if let Err(e) = self.may_write_at(ino, off, false) {
            // The writeback cache writes back whole pages, so an append to
            // an append-only file arrives as a write from the start of its
            // last page, rewriting bytes below the end as they are: that
            // changes nothing there, and is let through.
            use pmemfs_ondisk::meta::flag;
            let f = self.flags(ino)?;
            let append_only = f & flag::APPEND != 0 && f & flag::IMMUTABLE == 0;
            if !(who.writeback && append_only && self.rewrites_as_is(ino, off, data)?) {
                return Err(e);
            }
        }
        // At ENOSPC a write stores the pages that fit and returns their
        // count, as Linux file systems do; only a write of which nothing
        // fits fails.
        let data = &data[..self.bytes_that_fit(ino, off, data.len())?];
        if data.is_empty() {
            return fail(libc::ENOSPC);
        }
        let end = off + data.len() as u64;
        self.expose(ino, self.attr(ino)?.size, off)?;
        self.transact(|s, ops, fresh| {
            s.store(ino, off, data, ops, fresh)?;
            s.write_attr_ops(ino, end, who, ops)
        })?;
        self.ksm_queue().push(ino);
        Ok(data.len() as u32)
    }

    /// The ops a write by `who` ending at `end` commits besides its
    /// pages: the attributes it changes, and the capabilities it drops.
    /// The size grows to `end`, the times are stamped (under the writeback
    /// cache the kernel keeps them and sends them itself), and set-uid and
    /// set-gid go when the kernel says so.
    fn write_attr_ops(&self, ino: Ino, end: u64, who: Writer, ops: &mut Vec<Op>) -> FsResult<()> {
        let before = self.attr(ino)?;
        let mut a = before;
        a.size = a.size.max(end);
        if !who.writeback {
            a.mtime = now();
            a.ctime = a.mtime;
        }
        if who.kill_suidgid {
            crate::privs::kill_suid_sgid(&mut a);
        }
        // An in-place write within the size whose times do not move (the
        // coarse clock has not ticked, or the writeback cache keeps them)
        // changes no metadata: its stores are durable already, and no
        // transaction is written.
        if a != before {
            ops.push(Op::SetAttr { ino, attr: a });
        }
        ops.extend(self.kill_capability(ino));
        Ok(())
    }

    /// The first step of a write that takes fresh pages (holes, an append,
    /// copy on write of shared pages), in three steps so that the bytes
    /// are stored while the state is shared ([`crate::fuse`]'s write):
    /// with the state shared, what it needs; `None` when the write must
    /// go the whole way with the state alone ([`State::write_as`]: it is
    /// refused, or only part of it fits, or bytes past the size must be
    /// zeroed first, or it takes no fresh page).
    pub fn stage_write(&self, ino: Ino, off: u64, data: &[u8]) -> FsResult<Option<StagedWrite>> {
        let map = pages_of(self, ino)?;
        let fits = off
            .checked_add(data.len() as u64)
            .is_some_and(|e| e <= MAX_FILE_SIZE);
        if !fits || data.is_empty() || self.is_read_only() {
            return Ok(None);
        }
        if self.may_write_at(ino, off, false).is_err()
            || self.bytes_that_fit(ino, off, data.len())? != data.len()
            || !self.to_expose(ino, self.attr(ino)?.size, off)?.is_empty()
        {
            return Ok(None);
        }
        let need = self.pages_to_replace(&map, off, data.len())?;
        Ok((!need.is_empty()).then(|| StagedWrite {
            need,
            fresh: Fresh(Vec::new()),
        }))
    }

    /// The second step, with the state alone and briefly: takes the fresh
    /// pages. Nothing is taken if it fails.
    pub fn take_staged(&mut self, ino: Ino, w: &mut StagedWrite) -> FsResult<()> {
        let r = self.take_fresh(ino, &w.need, &mut w.fresh);
        if r.is_err() {
            std::mem::take(&mut w.fresh).give_back(self);
        }
        r
    }

    /// The third, with the state shared again and the file's data lock
    /// held alone: stores the bytes (in place and into the fresh pages),
    /// flushed and fenced.
    pub fn fill_staged(&self, ino: Ino, off: u64, data: &[u8], w: &StagedWrite) -> FsResult<()> {
        let pairs = replacements(&w.need, &w.fresh.0);
        self.fill(&pages_of(self, ino)?, off, data, &pairs)
    }

    /// The last, with the state alone: commits the fresh pages and the
    /// attributes, given how [`State::fill_staged`] went; the pages go
    /// back if anything failed. The state must not have changed since
    /// [`State::stage_write`] but for bytes stored in place.
    pub fn finish_staged(
        &mut self,
        ino: Ino,
        off: u64,
        data: &[u8],
        who: Writer,
        w: StagedWrite,
        filled: FsResult<()>,
    ) -> FsResult<u32> {
        let mut ops = Vec::new();
        push_maps(ino, &replacements(&w.need, &w.fresh.0), &mut ops);
        let r = filled
            .and_then(|()| self.write_attr_ops(ino, off + data.len() as u64, who, &mut ops))
            .and_then(|()| self.commit(&ops));
        if r.is_err() {
            w.fresh.give_back(self);
            return r.map(|()| 0);
        }
        self.ksm_queue().push(ino);
        Ok(data.len() as u32)
    }

    /// Zeroes bytes `[off, end)` of the pages, without touching the size:
    /// whole pages become holes, partial edges are overwritten with zeros.
    fn zero(
        &mut self,
        ino: Ino,
        off: u64,
        end: u64,
        ops: &mut Vec<Op>,
        fresh: &mut Fresh,
    ) -> FsResult<()> {
        if off >= end {
            return Ok(());
        }
        let first_whole = off.div_ceil(PAGE_SIZE);
        let end_whole = end / PAGE_SIZE;
        if first_whole < end_whole {
            ops.push(Op::Unmap {
                ino,
                index: first_whole,
                len: end_whole - first_whole,
            });
        }
        // Partial pages at either edge, where mapped (a hole reads zero).
        let mut edges = vec![];
        if off % PAGE_SIZE != 0 {
            edges.push((off, end.min(first_whole * PAGE_SIZE)));
        }
        let tail = end_whole * PAGE_SIZE;
        if end % PAGE_SIZE != 0
            && tail >= off
            && (off % PAGE_SIZE == 0 || end_whole != off / PAGE_SIZE)
        {
            edges.push((tail, end));
        }
        for (a, b) in edges {
            if pages_of(self, ino)?.get(a / PAGE_SIZE)?.is_some() {
                self.store(ino, a, &vec![0u8; (b - a) as usize], ops, fresh)?;
            }
        }
        Ok(())
    }

    /// Changes the size; shrinking drops pages past it and zeroes the tail
    /// of the new last page.
    fn truncate(
        &mut self,
        ino: Ino,
        size: u64,
        ops: &mut Vec<Op>,
        fresh: &mut Fresh,
    ) -> FsResult<()> {
        pages_of(self, ino)?;
        if size > MAX_FILE_SIZE {
            return fail(libc::EFBIG);
        }
        let old = self.attr(ino)?.size;
        if size < old {
            let keep = size.div_ceil(PAGE_SIZE);
            ops.push(Op::Unmap {
                ino,
                index: keep,
                len: u64::MAX - keep,
            });
            if size % PAGE_SIZE != 0 {
                self.zero(ino, size, keep * PAGE_SIZE, ops, fresh)?;
            }
        }
        Ok(())
    }

    /// setattr's size change as its own transaction.
    pub fn set_size(
        &mut self,
        ino: Ino,
        size: u64,
        extra: impl FnOnce(&mut pmemfs_ondisk::Attr),
    ) -> FsResult<()> {
        self.may_write_at(ino, 0, true)?;
        if pages_of(self, ino).is_ok() {
            self.expose(ino, self.attr(ino)?.size, size)?;
        }
        self.transact(|s, ops, fresh| {
            s.truncate(ino, size, ops, fresh)?;
            let t = now();
            ops.push(s.set_attr(ino, |a| {
                a.size = size;
                a.mtime = t;
                a.ctime = t;
                extra(a);
            })?);
            ops.extend(s.kill_capability(ino));
            Ok(())
        })
    }

    /// fallocate(2): allocate (optionally keeping the size), punch a hole,
    /// zero a range.
    pub fn fallocate(&mut self, ino: Ino, off: u64, len: u64, mode: i32) -> FsResult<()> {
        pages_of(self, ino)?;
        let end = off
            .checked_add(len)
            .filter(|&e| e <= MAX_FILE_SIZE && len > 0);
        let Some(end) = end else {
            return fail(if len == 0 { libc::EINVAL } else { libc::EFBIG });
        };
        let keep_size = mode & libc::FALLOC_FL_KEEP_SIZE != 0;
        let reshapes =
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_UNSHARE_RANGE;
        self.may_write_at(ino, off, mode & reshapes != 0)?;
        let known = libc::FALLOC_FL_KEEP_SIZE
            | libc::FALLOC_FL_PUNCH_HOLE
            | libc::FALLOC_FL_ZERO_RANGE
            | libc::FALLOC_FL_UNSHARE_RANGE;
        if mode & !known != 0 {
            return fail(libc::EOPNOTSUPP);
        }
        // As XFS does: unshare, then allocate what is still a hole.
        if mode & libc::FALLOC_FL_UNSHARE_RANGE != 0 {
            if mode & (libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_ZERO_RANGE) != 0 {
                return fail(libc::EINVAL);
            }
            self.unshare(ino, off, end)?;
        }
        let punch = mode & libc::FALLOC_FL_PUNCH_HOLE != 0;
        let zero_range = mode & libc::FALLOC_FL_ZERO_RANGE != 0;
        if punch && (!keep_size || zero_range) {
            return fail(libc::EOPNOTSUPP);
        }
        if !keep_size {
            self.expose(ino, self.attr(ino)?.size, end)?;
        }
        self.transact(|s, ops, fresh| {
            let size = s.attr(ino)?.size;
            if punch || zero_range {
                s.zero(
                    ino,
                    off,
                    end.min(if punch { size } else { end }),
                    ops,
                    fresh,
                )?;
            }
            if !punch {
                // Zeroed pages for every hole in the range; with ZERO_RANGE
                // the whole pages just unmapped are holes too.
                let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
                let unmapped = off.div_ceil(PAGE_SIZE)..end / PAGE_SIZE;
                let map = pages_of(s, ino)?;
                let mut holes = Vec::new();
                for i in first..=last {
                    if map.get(i)?.is_none() || (zero_range && unmapped.contains(&i)) {
                        holes.push(i);
                    }
                }
                let mut i = 0;
                while i < holes.len() {
                    let goal = goal(s, ino, holes[i], fresh);
                    let run = s
                        .image
                        .alloc_for((holes.len() - i) as u64, goal, holes[i])?;
                    fresh.0.push(run);
                    s.image
                        .pmem()
                        .zero(run.start * PAGE_SIZE, run.len * PAGE_SIZE)?;
                    s.image
                        .pmem()
                        .flush(run.start * PAGE_SIZE, run.len * PAGE_SIZE)?;
                    let pairs: Vec<_> = (0..run.len)
                        .map(|k| (holes[i + k as usize], run.start + k, None))
                        .collect();
                    push_maps(ino, &pairs, ops);
                    i += run.len as usize;
                }
                s.image.pmem().fence()?;
            }
            let t = now();
            ops.push(s.set_attr(ino, |a| {
                if !keep_size {
                    a.size = a.size.max(end);
                }
                a.ctime = t;
                if punch || zero_range {
                    a.mtime = t;
                }
            })?);
            Ok(())
        })
    }

    /// Gives the file its own copy of every shared page in `[off, end)`.
    fn unshare(&mut self, ino: Ino, off: u64, end: u64) -> FsResult<()> {
        let (first, last) = (off / PAGE_SIZE, (end - 1) / PAGE_SIZE);
        let mut shared = Vec::new();
        for r in pages_of(self, ino)?.range(first, last - first + 1)? {
            for k in 0..r.len {
                if !self.exclusive(r.value + k)? {
                    shared.push((r.start + k, r.value + k));
                }
            }
        }
        if shared.is_empty() {
            return Ok(());
        }
        self.transact(|s, ops, fresh| {
            // Storing a shared page's own bytes copies it on write; pages
            // go in pieces of consecutive indexes, up to 1 MiB each, so
            // the fresh pages map in few ops.
            let mut i = 0;
            while i < shared.len() {
                let mut n = 1;
                while i + n < shared.len() && n < 256 && shared[i + n].0 == shared[i].0 + n as u64 {
                    n += 1;
                }
                let mut bytes = Vec::with_capacity(n * PAGE);
                for &(_, pfn) in &shared[i..i + n] {
                    bytes.extend_from_slice(s.image.pmem().bytes(pfn * PAGE_SIZE, PAGE_SIZE)?);
                }
                s.store(ino, shared[i].0 * PAGE_SIZE, &bytes, ops, fresh)?;
                i += n;
            }
            Ok(())
        })
    }

    /// lseek(2) with SEEK_DATA or SEEK_HOLE.
    pub fn seek(&self, ino: Ino, off: u64, whence: i32) -> FsResult<u64> {
        let map = pages_of(self, ino)?;
        let size = self.attr(ino)?.size;
        if off >= size {
            return fail(libc::ENXIO);
        }
        let idx = off / PAGE_SIZE;
        match whence {
            libc::SEEK_DATA => match map.first_at_or_after(idx)? {
                Some(r) if r.start * PAGE_SIZE < size => Ok((r.start * PAGE_SIZE).max(off)),
                _ => fail(libc::ENXIO),
            },
            libc::SEEK_HOLE => {
                let mut at = idx;
                while let Some(r) = map.first_at_or_after(at)? {
                    if r.start != at {
                        break;
                    }
                    at = r.start + r.len;
                }
                Ok((at * PAGE_SIZE).max(off).min(size))
            }
            _ => fail(libc::EINVAL),
        }
    }

    /// copy_file_range(2): shares whole pages (a reflink) and copies the
    /// unaligned head and tail. Returns the bytes copied.
    pub fn copy_range(
        &mut self,
        src: Ino,
        src_off: u64,
        dst: Ino,
        dst_off: u64,
        len: u64,
    ) -> FsResult<u64> {
        pages_of(self, src)?;
        pages_of(self, dst)?;
        self.may_write_at(dst, dst_off, false)?;
        let src_size = self.attr(src)?.size;
        if src_off >= src_size || len == 0 {
            return Ok(0);
        }
        let mut len = len.min(src_size - src_off);
        if src_off % PAGE_SIZE != dst_off % PAGE_SIZE {
            // Nothing can be shared: a plain copy, in bounded pieces.
            len = len.min(1 << 20);
        } else if len > MAX_CLONE {
            // End on a page boundary so that the next call is aligned.
            len = MAX_CLONE - (src_off + MAX_CLONE) % PAGE_SIZE;
        }
        let dst_end = dst_off.checked_add(len).filter(|&e| e <= MAX_FILE_SIZE);
        let Some(dst_end) = dst_end else {
            return fail(libc::EFBIG);
        };
        if src == dst && src_off < dst_end && dst_off < src_off + len {
            return fail(libc::EINVAL);
        }
        let dst_size = self.attr(dst)?.size;
        let src_end = src_off + len;
        // Whole pages can be shared only when both sides sit at the same
        // offset inside a page.
        let (mut clone_first, mut clone_pages) = (0, 0);
        if src_off % PAGE_SIZE == dst_off % PAGE_SIZE {
            let first = src_off.div_ceil(PAGE_SIZE);
            let mut end_page = src_end / PAGE_SIZE;
            // The source's partial last page may go whole when the copy ends
            // at its EOF and nothing of the destination lies past the end.
            if src_end == src_size && src_end % PAGE_SIZE != 0 && dst_end >= dst_size {
                end_page += 1;
            }
            if end_page > first {
                (clone_first, clone_pages) = (first, end_page - first);
            }
        }
        let head_end = if clone_pages > 0 {
            clone_first * PAGE_SIZE
        } else {
            src_end
        };
        let tail_start = if clone_pages > 0 {
            ((clone_first + clone_pages) * PAGE_SIZE).min(src_end)
        } else {
            src_end
        };
        let head = self
            .read_pages(src, src_off, (head_end - src_off) as u32, false)?
            .as_slice()
            .to_vec();
        let tail = self
            .read_pages(src, tail_start, (src_end - tail_start) as u32, false)?
            .as_slice()
            .to_vec();
        let delta = dst_off as i128 - src_off as i128;
        self.expose(dst, dst_size, dst_off)?;
        self.transact(|s, ops, fresh| {
            s.store(dst, dst_off, &head, ops, fresh)?;
            if clone_pages > 0 {
                let dst_index = (clone_first as i128 + delta / PAGE_SIZE as i128) as u64;
                ops.push(Op::Clone {
                    src,
                    src_index: clone_first,
                    dst,
                    dst_index,
                    len: clone_pages,
                });
            }
            s.store(dst, (tail_start as i128 + delta) as u64, &tail, ops, fresh)?;
            let t = now();
            ops.push(s.set_attr(dst, |a| {
                a.size = a.size.max(dst_end);
                a.mtime = t;
                a.ctime = t;
            })?);
            Ok(())
        })?;
        if clone_pages == 0 || !head.is_empty() || !tail.is_empty() {
            self.ksm_queue().push(dst);
        }
        Ok(len)
    }
}
