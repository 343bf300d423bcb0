//! An open image: format, open with recovery, commit, checkpoint.
//!
//! Durability rules, kept here:
//! - A transaction is durable when its journal entry is flushed and fenced.
//!   Its ops are applied to the in-memory [`Meta`] first (so an op that does
//!   not fit is refused before anything is written), then journaled.
//! - Data pages are written, flushed and fenced by the caller before the
//!   `Map` op that makes them reachable is committed (fenced: under
//!   MAP_SYNC the entry could otherwise reach the media before the data).
//! - A pfn freed by a transaction goes back to the allocator only after that
//!   transaction is durable, and a checkpoint's pages only after the
//!   superblock no longer names it. Until then nobody can overwrite a page a
//!   crash could bring back.
//! - The allocator's free set is never stored: it is every data page that no
//!   page map references, that is no node of the share tree, and that the
//!   checkpoint does not occupy.
//! - Share counts live in a B+tree on the media (`shares`). A transaction
//!   changes its nodes in an overlay; the entry carries the patches, and
//!   they are stored in place only once the entry is durable (or, when the
//!   journal is full, the checkpoint that carries them). A node freed by a
//!   transaction is reused only once the journal restarts, since replaying
//!   an older entry would write it again; a node freed by the transaction
//!   a checkpoint carries, only at the checkpoint after.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::Path;

use crate::btree::{Checked, Pages, Shape};
use crate::checkpoint;
use crate::dir::{Dir, Entry};
use crate::error::{Corrupt, Error, Result};
use crate::filemap::{FileMap, MapView};
use crate::journal::{self, End};
use crate::layout::{Geometry, PAGE_SIZE};
use crate::lock;
use crate::meta::{count_run, Attr, Body, Ino, Meta, Op, Time};
use crate::overlay::{Overlay, Txn, View};
use crate::pmem::Pmem;
use crate::rangemap::{RangeMap, Run};
use crate::record::patch::Patch;
use crate::shares::ShareTree;
use crate::superblock::{self, CheckpointRef, JournalPos, State, Superblock};

/// What an image assembled from parts writes anew before it is used:
/// fsck's repairs of trees. `Default`: nothing.
#[derive(Debug, Default)]
pub struct Rebuild {
    /// The share tree, from the page maps (its old nodes are free).
    pub shares: bool,
    /// These files' page maps, from the runs given (their maps in `Meta`
    /// are empty meanwhile, and their old trees' nodes free).
    pub maps: BTreeMap<Ino, Vec<Run<u64>>>,
    /// These directories' entries, likewise.
    pub dirs: BTreeMap<Ino, Vec<Entry>>,
}

/// How an image is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No lock, no writes, no recovery writes (replay happens in memory).
    ReadOnly,
    /// Exclusive lock; recovery is written back.
    ReadWrite,
}

/// What mkfs asks for.
#[derive(Debug, Clone)]
pub struct FormatOptions {
    pub label: String,
    pub uuid: [u8; 16],
    /// Owner of the root directory.
    pub uid: u32,
    pub gid: u32,
    pub now: Time,
}

impl FormatOptions {
    /// Options that make the same image every time (root-owned, a fixed
    /// UUID and time, bar the journal nonce): for tests.
    pub fn fixed(label: &str) -> FormatOptions {
        FormatOptions {
            label: label.into(),
            uuid: [0x42; 16],
            uid: 0,
            gid: 0,
            now: Time { secs: 1, nsecs: 0 },
        }
    }
}

/// What opening an image found and did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// The image was not closed cleanly.
    pub was_in_use: bool,
    pub entries_replayed: usize,
    /// A torn journal tail was found (and cut when opened read-write).
    pub torn_tail: Option<Corrupt>,
    /// One superblock copy was bad or stale (and rewritten when read-write).
    pub superblock_repaired: Option<String>,
    /// Inodes with no links that were still allocated (deleted-while-open
    /// files at the crash); freed when read-write.
    pub unlinked_inodes: Vec<Ino>,
}

pub struct Image {
    /// Kept open: its flock is the image lock when writable, and holes are
    /// punched in it to give freed pages back. `None` for an image on a
    /// persistence domain that is not a file (tests).
    file: Option<File>,
    pmem: Pmem,
    sb: Superblock,
    meta: Meta,
    /// Durably free data pages (value 1).
    free: RangeMap<u32>,
    free_pages: u64,
    /// Give freed pages back to the image file as they are freed
    /// (`-o discard`).
    discard: bool,
    /// Where the next journal entry goes.
    journal: JournalPos,
    ckpt_pfns: Vec<u64>,
    recovery: Recovery,
    /// Replayed patches not stored in place: an image opened read-only
    /// reads its share tree through them (empty once writable).
    unstored: Overlay,
    /// Share-tree nodes freed in this journal run, and by the transaction
    /// the checkpoint carries: not free until the journal restarts (the
    /// module's rules).
    meta_freed: Vec<u64>,
    carried_freed: Vec<u64>,
    /// Bytes of tree pages the last commit changed (its patches).
    last_patch_bytes: usize,
    /// Tree nodes found whole since the image was opened: read again
    /// without a checksum (`btree::checked`).
    checked: Checked,
}

/// Seconds since the Unix epoch.
pub fn now() -> Time {
    let d = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    Time {
        secs: d.as_secs() as i64,
        nsecs: d.subsec_nanos(),
    }
}

/// Formats the whole of `file` (already sized and locked by the caller).
/// Returns the new superblock and the persistence domain in use.
pub fn format(file: &File, opts: &FormatOptions) -> Result<(Superblock, crate::pmem::DomainKind)> {
    let len = crate::pmem::media_len(file)?;
    let geometry = Geometry::for_size(len).ok_or(Error::TooSmall {
        size: len,
        min: crate::layout::MIN_IMAGE_BYTES,
    })?;
    // Superblocks and journal must read as zero, whatever was there: a stale
    // journal entry of an earlier file system must never replay into this one.
    let discarded = discard(file, 0, geometry.data_start * PAGE_SIZE);
    let pmem = Pmem::map(file, true)?;
    let sb = format_on(&pmem, opts, !discarded)?;
    Ok((sb, pmem.kind()))
}

/// Formats a persistence domain that is not a file (the crash tests').
pub fn format_pmem(pmem: &Pmem, opts: &FormatOptions) -> Result<Superblock> {
    format_on(pmem, opts, true)
}

fn format_on(pmem: &Pmem, opts: &FormatOptions, zero_head: bool) -> Result<Superblock> {
    let len = pmem.len();
    let geometry = Geometry::for_size(len).ok_or(Error::TooSmall {
        size: len,
        min: crate::layout::MIN_IMAGE_BYTES,
    })?;
    if zero_head {
        pmem.zero(0, geometry.data_start * PAGE_SIZE)?;
        pmem.persist(0, geometry.data_start * PAGE_SIZE)?;
    }
    // The root's entries are a tree: its node is stored and flushed here,
    // and fenced with the checkpoint, which follows it.
    let mut free = RangeMap::new();
    free.insert(geometry.data_start, geometry.data_pages(), 1u32);
    let mut free_pages = geometry.data_pages();
    let mut txn = Txn::new(pmem, &mut free, &mut free_pages, &geometry);
    let meta = Meta::new(opts.uid, opts.gid, opts.now, &mut txn)?;
    Overlay::store(pmem, &txn.over.patches(pmem)?)?;
    let first = free.first_at_or_after(0).ok_or(Error::NoSpace)?.start;
    let pfns: Vec<u64> = (0..checkpoint::pages_for(checkpoint::encoded_len(&meta, &[])?))
        .map(|i| first + i)
        .collect();
    checkpoint::write_meta(pmem, 1, &meta, &[], &pfns)?;
    pmem.fence()?;
    let sb = Superblock {
        uuid: opts.uuid,
        label: opts.label.clone(),
        state: State::Clean,
        geometry,
        generation: 1,
        created: opts.now.secs.max(0) as u64,
        checkpoint: CheckpointRef {
            pfn: pfns[0],
            pages: pfns.len() as u64,
            id: 1,
        },
        journal: JournalPos::restart(1)?,
    };
    superblock::write_copies(pmem, &sb)?;
    Ok(sb)
}

/// Zeroes a byte range of a regular file by punching a hole, which costs
/// nothing and allocates nothing, and makes the hole durable (the
/// superblock format writes relies on it). Returns false where that is not
/// possible (a device, a file system without hole punching): the caller
/// then writes zeroes.
fn discard(file: &File, off: u64, len: u64) -> bool {
    file.metadata().is_ok_and(|m| m.is_file())
        && punch_hole(file, off, len).is_ok()
        && file.sync_all().is_ok()
}

/// Punches `[off, off + len)` out of `file`: the range reads as zeros and
/// takes no space (EOPNOTSUPP where the file system or device cannot).
fn punch_hole(file: &File, off: u64, len: u64) -> std::io::Result<()> {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate on a valid descriptor has no memory effects.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            off as libc::off_t,
            len as libc::off_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Pages in a 2 MiB block: large allocations start at a pfn congruent to
/// the file's page index modulo this.
pub const ALIGN: u64 = 512;

/// Pages kept back from data allocations so that a checkpoint can always be
/// written, which is what lets a full file system still delete files.
fn reserve(ckpt_pages: usize) -> u64 {
    2 * ckpt_pages as u64 + 64
}

/// Free pages a transaction's new tree nodes may not take. One that only
/// drops references or names (deletes, unmaps, unlinks) may go down to
/// what a checkpoint of about today's size needs, so that a full file
/// system can still free space; one that adds references, maps or names
/// (a clone, a write, a create) keeps half the reserve, and fails with no
/// space rather than leave a checkpoint nowhere to go.
fn node_floor(ckpt_pages: usize, ops: &[Op]) -> u64 {
    let grows = ops
        .iter()
        .any(|op| matches!(op, Op::Map { .. } | Op::Clone { .. } | Op::Link { .. }));
    let checkpoint = ckpt_pages as u64 + ckpt_pages as u64 / 8 + 8;
    if grows {
        checkpoint.max(reserve(ckpt_pages) / 2)
    } else {
        checkpoint
    }
}

impl Image {
    /// Opens the image at `path`; see [`Image::open_file`].
    pub fn open(path: &Path, access: Access) -> Result<Image> {
        let file = File::options()
            .read(true)
            .write(access == Access::ReadWrite)
            .open(path)?;
        Image::open_file(file, access)
    }

    /// Opens an image: takes the lock (read-write), picks a superblock,
    /// loads the checkpoint and replays the journal. Read-write, it also
    /// writes the recovery back: torn tail cut, superblock copies made
    /// equal, unlinked inodes freed, state marked in use.
    pub fn open_file(file: File, access: Access) -> Result<Image> {
        let writable = access == Access::ReadWrite;
        if writable {
            lock::lock_exclusive(&file)?;
        }
        let pmem = Pmem::map(&file, writable)?;
        Image::open_on(Some(file), pmem)
    }

    /// Opens an image on any persistence domain (the crash tests' recording
    /// one, say); read-write when `pmem` is writable. No lock is taken.
    pub fn open_pmem(pmem: Pmem) -> Result<Image> {
        Image::open_on(None, pmem)
    }

    fn open_on(file: Option<File>, pmem: Pmem) -> Result<Image> {
        let writable = pmem.is_writable();
        let copies = superblock::read_copies(&pmem);
        let sb = match superblock::choose(&copies) {
            Some(sb) => sb.clone(),
            None if !superblock::has_magic(&pmem) => {
                return Err(Error::NotPmemfs(
                    "no pmemfs superblock (bad magic in both copies)".into(),
                ))
            }
            None => {
                if let Some(v) = superblock::other_version(&pmem) {
                    return Err(Error::Version(superblock::version_mismatch(v)));
                }
                let e = copies
                    .into_iter()
                    .find_map(|c| c.err())
                    .unwrap_or_else(|| Corrupt::new("superblock", "unreadable"));
                return Err(Error::Corrupt(e));
            }
        };
        if sb.geometry.total_pages * PAGE_SIZE > pmem.len() {
            return Err(Error::Corrupt(Corrupt::new(
                "superblock",
                format!(
                    "the image is {} bytes, shorter than the {} the superblock records",
                    pmem.len(),
                    sb.geometry.total_pages * PAGE_SIZE
                ),
            )));
        }
        let mut recovery = Recovery {
            was_in_use: sb.state == State::InUse,
            ..Recovery::default()
        };
        if let Some(bad) = copies.iter().find_map(|c| match c {
            Err(e) => Some(e.to_string()),
            Ok(c) if c != &sb => Some(format!(
                "superblock copy at generation {} is older than {}",
                c.generation, sb.generation
            )),
            Ok(_) => None,
        }) {
            recovery.superblock_repaired = Some(bad);
        }
        let ck = checkpoint::read(&pmem, &sb.geometry, &sb.checkpoint)?;
        let (mut meta, ckpt_pfns) = (ck.meta, ck.pfns);
        let mut over = Overlay::default();
        over.apply(&pmem, &ck.patches)?;
        let scan = journal::scan(&pmem, &sb.geometry, sb.journal);
        for e in &scan.entries {
            let bad = |c: String| {
                Error::Corrupt(Corrupt::new(
                    format!("journal entry seq {}", e.seq),
                    format!("{c}; run fsck.pmemfs"),
                ))
            };
            for op in &e.ops {
                meta.apply(op).map_err(|c| bad(c.detail))?;
            }
            over.apply(&pmem, &e.patches)
                .map_err(|c| bad(c.to_string()))?;
        }
        recovery.entries_replayed = scan.entries.len();
        match &scan.end {
            End::Clean => {}
            End::Torn(t) => recovery.torn_tail = Some(t.clone()),
            End::Damaged { at, lost } => {
                return Err(Error::Corrupt(Corrupt::new(
                    at.what.clone(),
                    format!("{}, and {lost} committed entries follow it; run fsck.pmemfs -y (it drops them)", at.detail),
                )))
            }
        }
        let mut image = Image::from_parts(
            file,
            pmem,
            sb,
            meta,
            ckpt_pfns,
            scan.next,
            over,
            Rebuild::default(),
        )?;
        recovery.unlinked_inodes = unlinked_inodes(&image.meta, &image.view())?;
        image.recovery = recovery;
        if writable {
            image.recover()?;
        }
        Ok(image)
    }

    /// Assembles an image from parts a caller has read and checked (fsck,
    /// after repairing them): the metadata pages read through `over` (the
    /// patches replay found that are not stored in place yet). Derives the
    /// free set; fails when page maps or directories cannot be read, when
    /// maps reach outside the data area, into a tree or into the
    /// checkpoint, or when the share tree disagrees with the page maps.
    /// Writes what `rebuild` asks for.
    #[allow(clippy::too_many_arguments)]
    pub fn from_parts(
        file: Option<File>,
        pmem: Pmem,
        sb: Superblock,
        mut meta: Meta,
        ckpt_pfns: Vec<u64>,
        journal: JournalPos,
        over: Overlay,
        rebuild: Rebuild,
    ) -> Result<Image> {
        let fsck = |e: Error| match e {
            Error::Corrupt(c) => Error::Corrupt(Corrupt::new(
                c.what,
                format!("{}; run fsck.pmemfs -y", c.detail),
            )),
            e => e,
        };
        if rebuild.shares {
            meta.share_root = 0;
        }
        let g = sb.geometry;
        let mut free = RangeMap::new();
        free.insert(g.data_start, g.data_pages(), 1u32);
        // Every page map and directory walked and checked once: a map's
        // runs counted, every tree's nodes in use.
        let view = over.view(&pmem);
        let mut counted = RangeMap::new();
        let mut nodes = Vec::new();
        let mut count = |r: Run<u64>| count_run(&mut counted, r);
        for (&ino, i) in &meta.inodes {
            let whose = |e: Error| match e {
                Error::Corrupt(c) => {
                    Error::Corrupt(Corrupt::new(format!("inode {ino}: {}", c.what), c.detail))
                }
                e => e,
            };
            match &i.body {
                Body::File(m) => {
                    let (runs, _) = m
                        .check(&view, |p| nodes.push((p, ino)))
                        .map_err(whose)
                        .map_err(fsck)?;
                    runs.into_iter().for_each(&mut count);
                }
                Body::Dir(d) if !rebuild.dirs.contains_key(&ino) => {
                    d.check(&view, |p| nodes.push((p, ino)))
                        .map_err(whose)
                        .map_err(fsck)?;
                }
                _ => {}
            }
        }
        rebuild
            .maps
            .values()
            .flatten()
            .copied()
            .for_each(&mut count);
        for r in counted.iter() {
            if !g.in_data(r.start, r.len) {
                return Err(Error::Corrupt(Corrupt::new(
                    "page maps",
                    format!(
                        "pfns {}+{} lie outside the data area; run fsck.pmemfs -y",
                        r.start, r.len
                    ),
                )));
            }
            free.remove(r.start, r.len);
        }
        for (p, ino) in nodes {
            if free.remove(p, 1).is_empty() {
                return Err(Error::Corrupt(Corrupt::new(
                    format!("inode {ino}: tree"),
                    format!(
                        "node {p} is outside the data area, mapped by a file or in another tree; run fsck.pmemfs -y"
                    ),
                )));
            }
        }
        let mut share_nodes = Vec::new();
        // An empty tree (root 0) when rebuilding: nothing to walk.
        let (stored, _) = ShareTree::new(meta.share_root)
            .check(&view, |p| share_nodes.push(p))
            .map_err(fsck)?;
        if !rebuild.shares && !same_shares(&stored, &counted) {
            return Err(Error::Corrupt(Corrupt::new(
                "share counts",
                "they disagree with the page maps; run fsck.pmemfs -y",
            )));
        }
        for p in share_nodes {
            if free.remove(p, 1).is_empty() {
                return Err(Error::Corrupt(Corrupt::new(
                    "share tree",
                    format!(
                        "node {p} is outside the data area, mapped by a file or in a page map; run fsck.pmemfs -y"
                    ),
                )));
            }
        }
        for &p in &ckpt_pfns {
            if free.remove(p, 1).is_empty() {
                return Err(Error::Corrupt(Corrupt::new(
                    "checkpoint",
                    format!("page {p} is also mapped by a file or in a tree; run fsck.pmemfs -y"),
                )));
            }
        }
        let free_pages = free.pages();
        let checked = Checked::new(sb.geometry.total_pages);
        let mut image = Image {
            file,
            pmem,
            sb,
            meta,
            free,
            free_pages,
            discard: false,
            journal,
            ckpt_pfns,
            recovery: Recovery::default(),
            unstored: over,
            meta_freed: Vec::new(),
            carried_freed: Vec::new(),
            last_patch_bytes: 0,
            checked,
        };
        if rebuild.shares || !rebuild.maps.is_empty() || !rebuild.dirs.is_empty() {
            image.rebuild(&counted, rebuild)?;
        }
        Ok(image)
    }

    /// Builds what `rebuild` asks for in pages nothing else uses, and
    /// writes a checkpoint that carries it: until that checkpoint is
    /// durable the media holds the old state whole.
    fn rebuild(&mut self, counted: &RangeMap<u32>, rebuild: Rebuild) -> Result<()> {
        let mut txn = Txn::new(
            &self.pmem,
            &mut self.free,
            &mut self.free_pages,
            &self.sb.geometry,
        );
        for (ino, runs) in &rebuild.maps {
            if let Some(Body::File(m)) = self.meta.inodes.get_mut(ino).map(|i| &mut i.body) {
                *m = FileMap::new();
                m.replace(&mut txn, *ino, 0, u64::MAX, runs)?;
            }
        }
        for (ino, entries) in rebuild.dirs {
            if let Some(Body::Dir(d)) = self.meta.inodes.get_mut(&ino).map(|i| &mut i.body) {
                *d = Dir::build(&mut txn, ino, d.parent, entries)?;
            }
        }
        if rebuild.shares {
            let tree = ShareTree::build(&mut txn, counted.iter().filter(|r| r.value >= 2))?;
            self.meta.share_root = tree.root();
        }
        let patches = txn.over.patches(&self.pmem)?;
        self.checkpoint_carrying(self.sb.state, &patches, Vec::new())
    }

    /// Writes back what recovery found: frees unlinked inodes, then one
    /// checkpoint that also cuts any torn tail (the journal restarts past
    /// it), makes both superblock copies equal and marks the image in use.
    fn recover(&mut self) -> Result<()> {
        // Replayed patches go in place; the checkpoint below fences them
        // before the journal that holds them restarts.
        let over = std::mem::take(&mut self.unstored);
        Overlay::store(&self.pmem, &over.patches(&self.pmem)?)?;
        if self.recovery.torn_tail.is_some() {
            journal::cut(&self.pmem, &self.sb.geometry, self.journal.off)?;
        }
        let deletes: Vec<Op> = self
            .recovery
            .unlinked_inodes
            .iter()
            .map(|&ino| Op::Delete { ino })
            .collect();
        if !deletes.is_empty() {
            self.commit(&deletes)?;
        }
        self.checkpoint_with(State::InUse)
    }

    pub fn pmem(&self) -> &Pmem {
        &self.pmem
    }

    pub fn superblock(&self) -> &Superblock {
        &self.sb
    }

    pub fn geometry(&self) -> Geometry {
        self.sb.geometry
    }

    /// The metadata pages as this image reads them: the media, and
    /// replayed patches not stored in place when read-only.
    pub fn view(&self) -> View<'_> {
        self.unstored.view(&self.pmem).checking(&self.checked)
    }

    /// The page map of file `ino`, read through [`Image::view`]; `None`
    /// when `ino` is not a file.
    pub fn file_map(&self, ino: Ino) -> Option<MapView<'_, View<'_>>> {
        Some(self.meta.get(ino)?.pages()?.view(self.view()))
    }

    /// Bytes of tree pages the last commit changed: a clone of a file of
    /// many runs changes megabytes, and its caller may want the buffers
    /// that took given back to the system.
    pub fn last_patch_bytes(&self) -> usize {
        self.last_patch_bytes
    }

    /// Pages of the trees inodes own (page maps and directories), by
    /// walking them all (tests, fsck-like accounting).
    pub fn inode_tree_pages(&self) -> Result<u64> {
        let view = self.view();
        let mut n = 0;
        for i in self.meta.inodes.values() {
            n += match &i.body {
                Body::File(m) => m.check(&view, |_| {})?.1.pages,
                Body::Dir(d) => d.check(&view, |_| {})?.1.pages,
                _ => 0,
            };
        }
        Ok(n)
    }

    /// The inode `name` names in directory `dir` (`None`: no such entry);
    /// fails when `dir` is not a directory.
    pub fn lookup(&self, dir: Ino, name: &[u8]) -> Result<Option<Ino>> {
        self.dir(dir)?.get(&self.view(), name)
    }

    /// Every entry of directory `dir`, in the order of its tree.
    pub fn entries(&self, dir: Ino) -> Result<Vec<Entry>> {
        self.dir(dir)?.list(&self.view())
    }

    fn dir(&self, dir: Ino) -> Result<&Dir> {
        self.meta
            .get(dir)
            .and_then(|i| i.dir())
            .ok_or_else(|| Error::Corrupt(Corrupt::new(format!("inode {dir}"), "not a directory")))
    }

    /// How many times the page maps map each pfn ([`Meta::counted_shares`]).
    pub fn counted_shares(&self) -> Result<RangeMap<u32>> {
        self.meta.counted_shares(&self.view())
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn recovery(&self) -> &Recovery {
        &self.recovery
    }

    /// Free data pages, the checkpoint reserve included.
    pub fn free_pages(&self) -> u64 {
        self.free_pages
    }

    /// Free data pages that data allocations may take: the free pages less
    /// the checkpoint reserve.
    pub fn available_pages(&self) -> u64 {
        self.free_pages
            .saturating_sub(reserve(self.ckpt_pfns.len()))
    }

    /// Pages the current checkpoint occupies.
    pub fn checkpoint_pfns(&self) -> &[u64] {
        &self.ckpt_pfns
    }

    /// Where the next journal entry goes.
    pub fn journal_pos(&self) -> JournalPos {
        self.journal
    }

    /// Takes up to `max` contiguous free pages for data. They belong to the
    /// caller until a committed `Map` references them or [`Image::release`]
    /// returns them; a crash returns them by itself.
    pub fn alloc(&mut self, max: u64) -> Result<Run<u64>> {
        self.alloc_for(max, None, 0)
    }

    /// [`Image::alloc`] for pages of a file from page `index` on: from
    /// `goal` (the pfn after the file's previous page) when it is free, so
    /// a file grows in one run; else low in the image, and for a large
    /// request at a pfn congruent to `index` modulo [`ALIGN`], so that the
    /// page cache can map whole 2 MiB blocks with one entry.
    pub fn alloc_for(&mut self, max: u64, goal: Option<u64>, index: u64) -> Result<Run<u64>> {
        if self.free_pages < reserve(self.ckpt_pfns.len()) + max.min(1) {
            return Err(Error::NoSpace);
        }
        let max = max.min(self.free_pages - reserve(self.ckpt_pfns.len()));
        if let Some(run) =
            goal.and_then(|g| self.free.first_at_or_after(g).filter(|r| r.start == g))
        {
            return Ok(self.take_at(run.start, run.len.min(max)));
        }
        if max >= ALIGN / 8 {
            let want = max.min(ALIGN);
            let aligned = self.free.iter().take(64).find_map(|r| {
                let skip = (index.wrapping_sub(r.start)) % ALIGN;
                (r.len >= skip + want).then(|| (r.start + skip, (r.len - skip).min(max)))
            });
            if let Some((start, len)) = aligned {
                return Ok(self.take_at(start, len));
            }
        }
        self.take(max)
    }

    /// First fit from the lowest free pfn: pages freed before are reused
    /// before pages never touched, so an image file (sparse, or trimmed)
    /// grows only when the file system does.
    fn take(&mut self, max: u64) -> Result<Run<u64>> {
        let run = self.free.first_at_or_after(0).ok_or(Error::NoSpace)?;
        Ok(self.take_at(run.start, run.len.min(max).max(1)))
    }

    /// Takes the `len` free pages from `start`.
    fn take_at(&mut self, start: u64, len: u64) -> Run<u64> {
        self.free.remove(start, len);
        self.free_pages -= len;
        Run {
            start,
            len,
            value: start,
        }
    }

    /// Gives back pages from [`Image::alloc`] that were never mapped.
    pub fn release(&mut self, pfn: u64, len: u64) {
        self.free.insert(pfn, len, 1);
        self.free_pages += len;
    }

    /// Applies `ops` and makes them durable as one transaction.
    ///
    /// If an op does not fit the state, or a tree needs a node and the
    /// free pages are down to what the next checkpoint needs
    /// ([`Error::NoSpace`]), nothing changes. If the journal cannot be
    /// written, the in-memory state no longer matches the media and the
    /// image refuses writes from then on.
    pub fn commit(&mut self, ops: &[Op]) -> Result<()> {
        if !self.pmem.is_writable() {
            return Err(Error::ReadOnly);
        }
        // Refused before anything changes if it could never be journaled
        // (the 4 bytes are an empty patch list); what the journal records
        // for page-map ops is about as long as the ops.
        let asked = journal::encode_ops(ops)?;
        let bare = journal::entry_bytes(asked.len() + 4);
        if bare > self.sb.geometry.journal_bytes() {
            return Err(Error::TransactionTooLarge(bare as usize));
        }
        // A transaction that cannot be applied (an op that does not fit,
        // no page for a tree node) has changed nothing.
        let (mut journaled, patches, freed, meta_freed, root) = self.apply_all(ops)?;
        // What the journal holds: the page-map ops' outcomes, and the share
        // tree's root if it moved.
        if root != self.meta.share_root {
            self.meta.share_root = root;
            journaled.push(Cow::Owned(Op::SetShareRoot { root }));
        }
        // Most transactions journal the ops as asked: encoded already.
        let payload = if journaled.iter().all(|c| matches!(c, Cow::Borrowed(_))) {
            asked
        } else {
            match journal::encode_ops(journaled.iter().map(|c| c.as_ref())) {
                Ok(p) => p,
                Err(e) => {
                    self.pmem.poison();
                    return Err(e);
                }
            }
        };
        self.last_patch_bytes = patches.iter().map(|p| p.bytes.len()).sum();
        let written = journal::entry_of(self.journal, &payload, &patches).and_then(|entry| {
            let fits = journal::append(&self.pmem, &self.sb.geometry, self.journal, &entry)?;
            if fits {
                self.journal = self.journal.after(self.journal.off + entry.len() as u64);
                self.meta_freed.extend(&meta_freed);
                Overlay::store(&self.pmem, &patches)
            } else {
                // The journal is full: a checkpoint holds this transaction
                // too, and carries its patches.
                self.checkpoint_carrying(self.sb.state, &patches, meta_freed.clone())
            }
        });
        if let Err(e) = written {
            self.pmem.poison();
            return Err(e);
        }
        for r in freed {
            self.release(r.start, r.len);
            if self.discard {
                // Best effort: a page not given back is merely kept.
                let _ = self.punch(r.start, r.len);
            }
        }
        Ok(())
    }

    /// Applies `ops` to the metadata, their page-map changes and their
    /// reference changes to the trees in an overlay; returns the ops the
    /// journal records ([`Meta::execute`]), the overlay's patches, the
    /// data pages nobody maps any more, the tree nodes freed and the share
    /// tree's root. On an error nothing has changed: the ops applied are
    /// undone, and the pages taken for nodes are free again.
    #[allow(clippy::type_complexity)]
    fn apply_all<'o>(
        &mut self,
        ops: &'o [Op],
    ) -> Result<(Vec<Cow<'o, Op>>, Vec<Patch>, Vec<Run<u64>>, Vec<u64>, u64)> {
        let mut txn = Txn::new(
            &self.pmem,
            &mut self.free,
            &mut self.free_pages,
            &self.sb.geometry,
        );
        txn.floor = node_floor(self.ckpt_pfns.len(), ops);
        txn.checked = Some(&self.checked);
        let mut undo = Vec::with_capacity(ops.len());
        let mut tree = ShareTree::new(self.meta.share_root);
        let mut freed = Vec::new();
        let mut journaled: Vec<Cow<Op>> = Vec::with_capacity(ops.len());
        let mut run = || -> Result<()> {
            for op in ops {
                let (refs, rec, u) = self.meta.execute(op, &mut txn)?;
                undo.push((u, op));
                tree.add_all(&mut txn, &refs.added)?;
                freed.extend(tree.drop_all(&mut txn, &refs.dropped)?);
                let Some(rec) = rec else {
                    journaled.push(Cow::Borrowed(op));
                    continue;
                };
                // A file's later map says all its earlier one did, and a
                // directory's later entries likewise.
                let same = match (&rec, journaled.last().map(|c| c.as_ref())) {
                    (Op::SetFileMap { ino, .. }, Some(Op::SetFileMap { ino: last, .. })) => {
                        ino == last
                    }
                    (Op::SetDir { dir, .. }, Some(Op::SetDir { dir: last, .. })) => dir == last,
                    _ => false,
                };
                if same {
                    journaled.pop();
                }
                journaled.push(Cow::Owned(rec));
            }
            Ok(())
        };
        let done = run().and_then(|()| txn.over.patches(&self.pmem));
        match done {
            Ok(patches) => Ok((journaled, patches, freed, txn.freed, tree.root())),
            Err(e) => {
                txn.abandon();
                for (u, op) in undo.into_iter().rev() {
                    self.meta.undo(u, op);
                }
                Err(e)
            }
        }
    }

    /// Gives freed pages back to the image file as they are freed (or not).
    pub fn set_discard(&mut self, on: bool) {
        self.discard = on;
    }

    /// Gives every free run of at least `min_pages` pages in
    /// `[first, first + len)` back to the image file (FITRIM): the file
    /// system's pages read as zeros, and a sparse or tmpfs image shrinks.
    /// Returns the bytes trimmed. Free pages belong to no durable state
    /// (a page goes back to the free set only once the transaction that
    /// freed it is durable), so nothing a crash brings back is touched.
    pub fn trim(&mut self, first: u64, len: u64, min_pages: u64) -> Result<u64> {
        if !self.pmem.is_writable() {
            return Err(Error::ReadOnly);
        }
        let mut trimmed = 0;
        for r in self.free.range(first, len) {
            if r.len >= min_pages.max(1) {
                self.punch(r.start, r.len)?;
                trimmed += r.len * PAGE_SIZE;
            }
        }
        Ok(trimmed)
    }

    /// Punches pages `[pfn, pfn + len)` out of the image file. Fails with
    /// an I/O error of EOPNOTSUPP where the image cannot give pages back
    /// (no file, or a file system or device without hole punching).
    fn punch(&self, pfn: u64, len: u64) -> Result<()> {
        let unsupported = || Error::Io(std::io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        let file = self.file.as_ref().ok_or_else(unsupported)?;
        // The pages are free, so no mapping of them is read or written.
        punch_hole(file, pfn * PAGE_SIZE, len * PAGE_SIZE).map_err(Error::Io)
    }

    /// Writes the whole metadata as a new checkpoint and restarts the
    /// journal.
    pub fn checkpoint(&mut self) -> Result<()> {
        self.checkpoint_with(self.sb.state)
    }

    fn checkpoint_with(&mut self, state: State) -> Result<()> {
        self.checkpoint_carrying(state, &[], Vec::new())
    }

    /// A checkpoint that also carries `patches`, of a transaction the
    /// metadata already holds, with the tree nodes it freed: they are
    /// stored in place once the superblock names the checkpoint. Replayed
    /// patches not stored yet (an image fsck assembled) go first: the
    /// journal that holds them restarts here.
    fn checkpoint_carrying(
        &mut self,
        state: State,
        patches: &[Patch],
        freed: Vec<u64>,
    ) -> Result<()> {
        let unstored;
        let patches = if self.unstored.is_empty() {
            patches
        } else {
            let mut all = self.unstored.patches(&self.pmem)?;
            all.extend_from_slice(patches);
            unstored = all;
            &unstored[..]
        };
        // Measured first and then written a page at a time: the payload is
        // never in memory whole.
        let n = checkpoint::pages_for(checkpoint::encoded_len(&self.meta, patches)?);
        let mut pfns = Vec::with_capacity(n as usize);
        while (pfns.len() as u64) < n {
            match self.take(n - pfns.len() as u64) {
                Ok(r) => pfns.extend(r.start..r.start + r.len),
                Err(e) => {
                    for &p in &pfns {
                        self.release(p, 1);
                    }
                    return Err(e);
                }
            }
        }
        let mut sb = self.sb.clone();
        sb.generation += 1;
        sb.state = state;
        sb.checkpoint = CheckpointRef {
            pfn: pfns[0],
            pages: n,
            id: sb.generation,
        };
        sb.journal = JournalPos::restart(self.journal.seq)?;
        // The fence also makes the in-place stores of every entry of the
        // journal run that ends here durable.
        let written =
            checkpoint::write_meta(&self.pmem, sb.checkpoint.id, &self.meta, patches, &pfns)
                .and_then(|()| self.pmem.fence())
                .and_then(|()| superblock::write_copies(&self.pmem, &sb))
                .and_then(|()| Overlay::store(&self.pmem, patches));
        if let Err(e) = written {
            self.pmem.poison();
            return Err(e);
        }
        for p in std::mem::replace(&mut self.ckpt_pfns, pfns) {
            self.release(p, 1);
        }
        let reusable: Vec<u64> = self
            .meta_freed
            .drain(..)
            .chain(std::mem::replace(&mut self.carried_freed, freed))
            .collect();
        for p in reusable {
            self.release(p, 1);
        }
        self.sb = sb;
        self.journal = self.sb.journal;
        self.unstored = Overlay::default();
        Ok(())
    }

    /// Checkpoints and marks the image clean. Dropping an image without
    /// closing it leaves it as a crash would (in use, journal to replay).
    pub fn close(mut self) -> Result<()> {
        self.mark_clean()
    }

    /// Checkpoints and marks the image clean, keeping it open: for owners
    /// that cannot give the image up by value (a FUSE session's destroy).
    /// Later commits mark nothing in use again, so call it last.
    pub fn mark_clean(&mut self) -> Result<()> {
        if self.pmem.is_writable() {
            self.checkpoint_with(State::Clean)?;
        }
        Ok(())
    }

    /// A new inode number.
    pub fn next_ino(&self) -> Ino {
        self.meta.next_ino
    }

    /// Attributes of `ino`.
    pub fn attr(&self, ino: Ino) -> Option<&Attr> {
        self.meta.get(ino).map(|i| &i.attr)
    }

    /// The share tree's pages as they are now.
    fn share_pages(&self) -> View<'_> {
        self.view()
    }

    fn shares(&self) -> ShareTree {
        ShareTree::new(self.meta.share_root)
    }

    /// How many (file, index) pairs map `pfn`, a mapped pfn.
    pub fn share_count(&self, pfn: u64) -> Result<u32> {
        self.shares().count(&self.share_pages(), pfn)
    }

    /// Runs of pfns in `[start, start + len)` mapped twice or more.
    pub fn shared_in(&self, start: u64, len: u64) -> Result<Vec<Run<u32>>> {
        self.shares().shared_in(&self.share_pages(), start, len)
    }

    /// The share counts of mapped pfns `[start, start + len)`, as runs
    /// that cover them all (count 1 where the tree has no run).
    pub fn share_counts_in(&self, start: u64, len: u64) -> Result<Vec<Run<u32>>> {
        self.shares().counts_in(&self.share_pages(), start, len)
    }

    /// Every run of pfns mapped twice or more, and the tree's shape.
    pub fn shared_runs(&self) -> Result<(RangeMap<u32>, Shape)> {
        self.shares().check(&self.share_pages(), |_| {})
    }

    /// Share-tree nodes freed but not yet free (the module's rules).
    pub fn deferred_pages(&self) -> u64 {
        (self.meta_freed.len() + self.carried_freed.len()) as u64
    }
}

/// Whether the share tree's runs are the counts of 2 and more of `counted`.
pub fn same_shares(stored: &RangeMap<u32>, counted: &RangeMap<u32>) -> bool {
    stored
        .iter()
        .eq(RangeMap::from_runs(counted.iter().filter(|r| r.value >= 2))
            .unwrap_or_default()
            .iter())
}

/// Inodes with no links that no directory names: files deleted while open.
/// Directories (read through `pages`) are walked only when some inode has
/// no links, which is rare.
pub fn unlinked_inodes(meta: &Meta, pages: &impl Pages) -> Result<Vec<Ino>> {
    let mut unlinked: BTreeSet<Ino> = meta
        .inodes
        .iter()
        .filter(|(ino, i)| i.attr.nlink == 0 && **ino != crate::meta::ROOT_INO)
        .map(|(&ino, _)| ino)
        .collect();
    for d in meta.inodes.values().filter_map(|i| i.dir()) {
        if unlinked.is_empty() {
            break;
        }
        d.each(pages, |_, ino| {
            unlinked.remove(&ino);
            !unlinked.is_empty()
        })?;
    }
    Ok(unlinked.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Kind, NewBody, ROOT_INO};

    struct Tmp(std::path::PathBuf);
    impl Drop for Tmp {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn fresh(name: &str, size: u64) -> Tmp {
        let p = std::env::temp_dir().join(format!("pmemfs-image-{name}-{}", std::process::id()));
        let f = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&p)
            .unwrap();
        f.set_len(size).unwrap();
        lock::lock_exclusive(&f).unwrap();
        format(
            &f,
            &FormatOptions {
                label: "t".into(),
                uuid: [1; 16],
                uid: 0,
                gid: 0,
                now: Time::default(),
            },
        )
        .unwrap();
        Tmp(p)
    }

    fn add_file(img: &mut Image, name: &str, pages: u64) -> Ino {
        let ino = img.next_ino();
        img.commit(&[
            Op::Create {
                ino,
                attr: Attr::new(Kind::File, 0o644, 0, 0, Time::default()),
                body: NewBody::File,
            },
            Op::Link {
                dir: ROOT_INO,
                name: name.into(),
                ino,
            },
        ])
        .unwrap();
        let mut index = 0;
        while index < pages {
            let r = img.alloc(pages - index).unwrap();
            img.pmem()
                .write(r.start * PAGE_SIZE, name.as_bytes())
                .unwrap();
            img.pmem().persist(r.start * PAGE_SIZE, PAGE_SIZE).unwrap();
            img.commit(&[Op::Map {
                ino,
                index,
                pfn: r.start,
                len: r.len,
            }])
            .unwrap();
            index += r.len;
        }
        ino
    }

    #[test]
    fn format_then_open_is_clean() {
        let t = fresh("fmt", 16 << 20);
        let img = Image::open(&t.0, Access::ReadOnly).unwrap();
        assert!(!img.recovery().was_in_use);
        assert_eq!(img.meta().lost_found(&img.view()).unwrap(), Some(2));
        // The root's entries' tree and the checkpoint.
        assert_eq!(img.free_pages(), img.geometry().data_pages() - 2);
        assert_eq!(img.inode_tree_pages().unwrap(), 1);
    }

    #[test]
    fn freed_pages_are_reused_first_and_trim_gives_them_back() {
        use std::os::unix::fs::MetadataExt;
        let t = fresh("reuse", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 64);
        let a_pfns: Vec<u64> = img
            .file_map(a)
            .unwrap()
            .all()
            .unwrap()
            .iter()
            .map(|r| r.value)
            .collect();
        // Every page of a written, so the image file holds them.
        for r in img.file_map(a).unwrap().all().unwrap() {
            let bytes = vec![7u8; (r.len * PAGE_SIZE) as usize];
            img.pmem().write(r.value * PAGE_SIZE, &bytes).unwrap();
            img.pmem()
                .persist(r.value * PAGE_SIZE, r.len * PAGE_SIZE)
                .unwrap();
        }
        add_file(&mut img, "b", 64);
        img.commit(&[
            Op::Unlink {
                dir: ROOT_INO,
                name: b"a".to_vec(),
            },
            Op::Delete { ino: a },
        ])
        .unwrap();
        let blocks = |t: &Tmp| std::fs::metadata(&t.0).unwrap().blocks();
        let before = blocks(&t);
        let trimmed = img.trim(0, u64::MAX, 1).unwrap();
        assert!(trimmed >= 64 * PAGE_SIZE, "trimmed {trimmed}");
        assert!(
            blocks(&t) * 512 + 64 * PAGE_SIZE <= before * 512,
            "the file gave the pages back"
        );
        // The next allocation takes a's old pages, not untouched ones.
        let r = img.alloc(64).unwrap();
        assert_eq!(r.start, a_pfns[0]);
        img.release(r.start, r.len);
        img.close().unwrap();
    }

    #[test]
    fn crash_replays_the_journal() {
        let t = fresh("replay", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 10);
        assert!(matches!(
            Image::open(&t.0, Access::ReadWrite),
            Err(Error::Locked)
        ));
        let free = img.free_pages();
        drop(img); // a crash: no close
        let img = Image::open(&t.0, Access::ReadWrite).unwrap();
        assert!(img.recovery().was_in_use);
        assert_eq!(img.meta().get(a).unwrap().pages().unwrap().pages(), 10);
        assert_eq!(img.free_pages(), free);
        img.close().unwrap();
        let img = Image::open(&t.0, Access::ReadOnly).unwrap();
        assert!(!img.recovery().was_in_use);
        assert_eq!(img.recovery().entries_replayed, 0);
    }

    #[test]
    fn full_journal_checkpoints_and_space_comes_back() {
        let t = fresh("full", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        // Enough transactions to fill the 1 MiB journal several times.
        for round in 0..3 {
            let mut inos = vec![];
            for i in 0..3000 {
                inos.push(add_file(&mut img, &format!("f{round}-{i}"), 1));
            }
            for (i, ino) in inos.into_iter().enumerate() {
                img.commit(&[
                    Op::Unlink {
                        dir: ROOT_INO,
                        name: format!("f{round}-{i}").into_bytes(),
                    },
                    Op::Delete { ino },
                ])
                .unwrap();
            }
        }
        // Every data page is free again but for the checkpoint's own, the
        // root's tree (lost+found) and the tree nodes freed since the
        // journal last restarted (reused once it does).
        assert_eq!(img.inode_tree_pages().unwrap(), 1);
        assert_eq!(
            img.free_pages() + img.checkpoint_pfns().len() as u64 + 1 + img.deferred_pages(),
            img.geometry().data_pages()
        );
        drop(img);
        let img = Image::open(&t.0, Access::ReadOnly).unwrap();
        assert_eq!(img.meta().inodes.len(), 2);
        assert_eq!(img.counted_shares().unwrap().pages(), 0);
    }

    /// Scattered clones grow the share tree over several journal-full
    /// checkpoints (which carry the patches of the transaction that found
    /// the journal full); opening after a crash, read-only (patches read
    /// through) or read-write (stored), finds the counts the page maps
    /// say, and deleting everything frees every page again.
    #[test]
    fn share_counts_survive_crashes_and_checkpoints() {
        let t = fresh("shares", 64 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 2000);
        let b = add_file(&mut img, "b", 0);
        let pfn0 = img.file_map(a).unwrap().get(0).unwrap().unwrap();
        let ckpt = img.superblock().checkpoint.id;
        // The even pages of a, round after round, until the journal has
        // filled twice: 1000 runs, each of count rounds + 1.
        let mut rounds = 0;
        while img.superblock().checkpoint.id < ckpt + 2 {
            assert!(rounds < 50, "the journal never filled");
            for i in (0..2000).step_by(2) {
                img.commit(&[Op::Clone {
                    src: a,
                    src_index: i,
                    dst: b,
                    dst_index: i + 2000 * rounds,
                    len: 1,
                }])
                .unwrap();
            }
            rounds += 1;
        }
        let check = |img: &Image| {
            let (runs, shape) = img.shared_runs().unwrap();
            assert!(same_shares(&runs, &img.counted_shares().unwrap()));
            assert_eq!((runs.pages(), runs.run_count()), (1000, 1000));
            assert!(shape.depth >= 2, "{shape:?}");
            assert_eq!(img.share_count(pfn0).unwrap(), rounds as u32 + 1);
            assert_eq!(img.share_count(pfn0 + 1).unwrap(), 1);
        };
        check(&img);
        drop(img);
        let ro = Image::open(&t.0, Access::ReadOnly).unwrap();
        check(&ro);
        drop(ro);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        check(&img);
        for (ino, name) in [(b, "b"), (a, "a")] {
            img.commit(&[
                Op::Unlink {
                    dir: ROOT_INO,
                    name: name.into(),
                },
                Op::Delete { ino },
            ])
            .unwrap();
        }
        assert_eq!(img.meta().share_root, 0);
        img.checkpoint().unwrap();
        // The root's tree (lost+found) stays.
        assert_eq!(
            img.free_pages() + img.checkpoint_pfns().len() as u64 + 1,
            img.geometry().data_pages(),
            "every node was freed and given back"
        );
    }

    /// A clone of a file of scattered pages is one op of as many runs,
    /// which rebuilds the share tree whole; so is deleting it.
    #[test]
    fn a_clone_of_scattered_pages_builds_the_tree_whole() {
        let t = fresh("scatter", 64 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let x = add_file(&mut img, "x", 0);
        let y = add_file(&mut img, "y", 0);
        let z = add_file(&mut img, "z", 0);
        for i in 0..1000 {
            for ino in [x, y] {
                let r = img.alloc(1).unwrap();
                img.commit(&[Op::Map {
                    ino,
                    index: i,
                    pfn: r.start,
                    len: 1,
                }])
                .unwrap();
            }
        }
        let clone = |img: &mut Image, dst_index| {
            img.commit(&[Op::Clone {
                src: x,
                src_index: 0,
                dst: z,
                dst_index,
                len: 1000,
            }])
            .unwrap()
        };
        clone(&mut img, 0);
        clone(&mut img, 5000);
        let check = |img: &Image, shared: u64| {
            let (runs, _) = img.shared_runs().unwrap();
            assert!(same_shares(&runs, &img.counted_shares().unwrap()));
            assert_eq!(runs.pages(), shared);
        };
        check(&img, 1000);
        drop(img);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        check(&img, 1000);
        img.commit(&[Op::Unmap {
            ino: z,
            index: 0,
            len: 1000,
        }])
        .unwrap();
        check(&img, 1000);
        img.commit(&[Op::Unmap {
            ino: z,
            index: 5000,
            len: 1000,
        }])
        .unwrap();
        check(&img, 0);
        assert_eq!(img.meta().share_root, 0);
        drop(img);
        check(&Image::open(&t.0, Access::ReadOnly).unwrap(), 0);
    }

    #[test]
    fn device_full_is_enospc_and_keeps_earlier_files() {
        let t = fresh("enospc", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 100);
        let mut got = 0;
        loop {
            match img.alloc(1 << 20) {
                Ok(r) => got += r.len,
                Err(Error::NoSpace) => break,
                Err(e) => panic!("{e}"),
            }
        }
        assert!(got > 3000);
        // The reserve still lets metadata commit and checkpoint.
        img.commit(&[
            Op::Unlink {
                dir: ROOT_INO,
                name: b"a".to_vec(),
            },
            Op::Delete { ino: a },
        ])
        .unwrap();
        img.close().unwrap();
        let img = Image::open(&t.0, Access::ReadOnly).unwrap();
        assert!(img.meta().get(a).is_none());
    }

    #[test]
    fn unlinked_inodes_are_freed_by_recovery() {
        let t = fresh("orph", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 3);
        let mut attr = *img.attr(a).unwrap();
        attr.nlink = 0;
        img.commit(&[
            Op::Unlink {
                dir: ROOT_INO,
                name: b"a".to_vec(),
            },
            Op::SetAttr { ino: a, attr },
        ])
        .unwrap();
        drop(img);
        let img = Image::open(&t.0, Access::ReadWrite).unwrap();
        assert_eq!(img.recovery().unlinked_inodes, vec![a]);
        assert!(img.meta().get(a).is_none());
        assert!(img.counted_shares().unwrap().is_empty());
    }

    /// A transaction with an op that does not fit, after ops that did:
    /// refused, and nothing of it stays (in memory or on the media), so
    /// the image goes on.
    #[test]
    fn a_transaction_that_cannot_apply_changes_nothing() {
        let t = fresh("undo", 16 << 20);
        let mut img = Image::open(&t.0, Access::ReadWrite).unwrap();
        let a = add_file(&mut img, "a", 6);
        let b = add_file(&mut img, "b", 1);
        // Scattered: a's map becomes a tree.
        let r = img.alloc(1).unwrap();
        img.commit(&[Op::Map {
            ino: a,
            index: 10,
            pfn: r.start,
            len: 1,
        }])
        .unwrap();
        assert_ne!(img.meta().get(a).unwrap().pages().unwrap().parts().root, 0);
        let (before, free) = (img.meta().clone(), img.free_pages());
        let ino = img.next_ino();
        let attr = Attr::new(Kind::File, 0o600, 0, 0, Time::default());
        let bad = [
            Op::Create {
                ino,
                attr,
                body: NewBody::File,
            },
            Op::Link {
                dir: ROOT_INO,
                name: b"new".to_vec(),
                ino,
            },
            Op::SetXattr {
                ino: a,
                name: b"user.k".to_vec(),
                value: b"v".to_vec(),
            },
            Op::Unmap {
                ino: a,
                index: 2,
                len: 1,
            },
            Op::Clone {
                src: a,
                src_index: 0,
                dst: b,
                dst_index: 0,
                len: 20,
            },
            Op::Delete { ino: b },
            Op::SetAttr { ino: 999, attr },
        ];
        assert!(img.commit(&bad).is_err());
        assert_eq!(img.meta(), &before, "the metadata as it was");
        assert_eq!(img.free_pages(), free, "the pages taken for nodes are free");
        add_file(&mut img, "c", 3);
        drop(img);
        let img = Image::open(&t.0, Access::ReadOnly).unwrap();
        assert!(img.lookup(ROOT_INO, b"c").unwrap().is_some());
        assert!(img.lookup(ROOT_INO, b"new").unwrap().is_none());
        assert_eq!(img.file_map(a).unwrap().pages(), 7);
    }
}
