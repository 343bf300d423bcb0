//! An XArray: a 64-way radix tree from `u64` index to tagged word, after
//! Linux `lib/xarray.c`.
//!
//! Two tiers, as in Linux: the methods of [`XArray`] take the lock for you;
//! a cursor ([`XaState`] for changes, [`XaReader`] for reads) holds the lock
//! across several steps and carries a position and a pending error.
//!
//! # Locking
//!
//! One `parking_lot::RwLock` per array. Readers (`load`, `find*`,
//! `get_mark`, [`XaReader`]) take it shared and never block each other;
//! writers (`store`, `erase`, `insert`, `cmpxchg`, marks, [`XaState`]) take
//! it exclusive. Lock-free (RCU) reads are not attempted.

mod cursor;
mod entry;
mod node;
mod tree;

pub use cursor::{Iter, XaReader, XaState};
pub use entry::{
    split_add_pfn, split_add_value, split_copy, Entry, PfnFlags, Splitter, PFN_FLAG_BITS,
};

use parking_lot::RwLock;
use std::fmt;
use tree::Tree;

/// Number of marks per slot.
pub const MARKS: usize = 3;

/// Largest order of a multi-order entry (the entry covers `2^order` indexes).
pub const MAX_ORDER: u8 = 63;

/// Bytes of one tree node, for memory accounting.
pub const NODE_BYTES: usize = std::mem::size_of::<node::Node>();

/// A per-slot mark, propagated to ancestors so that searching for the next
/// marked entry is a descent.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum Mark {
    /// The page is (or was) shared with another file: a write must copy it.
    /// A hint that may stay set after the last sharer left, never missing.
    Shared = 0,
    /// The page has been written since it was last flushed.
    Dirty = 1,
    /// The page is in the set of a running writeback.
    Towrite = 2,
}

/// An entry found by a search or a lookup, with the range it covers.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub struct Found {
    /// First index of the entry (a multi-order entry may begin before the
    /// index that was asked for).
    pub index: u64,
    /// The entry covers `2^order` indexes.
    pub order: u8,
    /// What is stored.
    pub entry: Entry,
}

impl Found {
    /// Last index the entry covers.
    ///
    /// # Locking
    /// None.
    pub fn last(&self) -> u64 {
        self.index | ((1u64 << self.order) - 1)
    }
}

/// Why an operation failed.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub enum XaError {
    /// `insert` found the range occupied.
    Occupied,
    /// An order above [`MAX_ORDER`] was given.
    BadOrder,
}

impl fmt::Display for XaError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            XaError::Occupied => "index range is occupied",
            XaError::BadOrder => "order too large",
        })
    }
}

impl std::error::Error for XaError {}

/// The array. See the module doc for the locking scheme.
pub struct XArray {
    tree: RwLock<Tree>,
}

impl Default for XArray {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for XArray {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("XArray")
            .field("nodes", &self.node_count())
            .finish()
    }
}

impl XArray {
    /// An empty array whose multi-order entries split into copies of
    /// themselves.
    ///
    /// # Locking
    /// None.
    pub fn new() -> XArray {
        Self::with_splitter(split_copy)
    }

    /// An empty array whose multi-order entries split with `split` (e.g.
    /// [`split_add_pfn`] for DAX mappings).
    ///
    /// # Locking
    /// None.
    pub fn with_splitter(split: Splitter) -> XArray {
        XArray {
            tree: RwLock::new(Tree::new(split)),
        }
    }

    /// The entry for `index`. Inside a multi-order entry this is the piece
    /// the splitter gives for `index` (with [`split_add_pfn`], the pfn of
    /// that very page); [`XArray::load_found`] gives the whole entry.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn load(&self, index: u64) -> Option<Entry> {
        self.tree.read().load(index)
    }

    /// The whole entry covering `index`, with its range.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn load_found(&self, index: u64) -> Option<Found> {
        self.tree.read().load_found(index)
    }

    /// Stores `entry` at `index`, splitting a multi-order entry that covered
    /// it. Returns the previous entry. The new entry keeps the marks of the
    /// one it replaces.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn store(&self, index: u64, entry: Entry) -> Option<Entry> {
        self.tree.write().store(index, 0, Some(entry))
    }

    /// Stores (or with `None` erases) the aligned range of `2^order`
    /// indexes containing `index` as one entry. Entries that straddle the
    /// range are split; entries inside it are replaced. Returns the entry
    /// that covered the first index.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn store_order(
        &self,
        index: u64,
        order: u8,
        entry: Option<Entry>,
    ) -> Result<Option<Entry>, XaError> {
        if order > MAX_ORDER {
            return Err(XaError::BadOrder);
        }
        Ok(self.tree.write().store(index, order, entry))
    }

    /// Erases the entry at `index` only (a multi-order entry covering it is
    /// split and keeps the rest). Returns what was there.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn erase(&self, index: u64) -> Option<Entry> {
        self.tree.write().store(index, 0, None)
    }

    /// Erases every index in `first..=last`, freeing nodes that become empty.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn erase_range(&self, first: u64, last: u64) {
        self.lock().erase_range(first, last);
    }

    /// Stores `entry` at `index` if that index is empty.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn insert(&self, index: u64, entry: Entry) -> Result<(), XaError> {
        self.insert_order(index, 0, entry)
    }

    /// Stores `entry` over the aligned `2^order` range containing `index`
    /// if no index of it is occupied.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn insert_order(&self, index: u64, order: u8, entry: Entry) -> Result<(), XaError> {
        let mut xas = self.lock();
        xas.set_order(index, order);
        xas.insert(entry);
        xas.error().map_or(Ok(()), Err)
    }

    /// Replaces the entry at `index` with `new` if it is `old`; returns the
    /// previous entry on success and the current one on failure.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn cmpxchg(
        &self,
        index: u64,
        old: Option<Entry>,
        new: Option<Entry>,
    ) -> Result<Option<Entry>, Option<Entry>> {
        let mut t = self.tree.write();
        let cur = t.load(index);
        if cur != old {
            return Err(cur);
        }
        if cur.is_some() || new.is_some() {
            t.store(index, 0, new);
        }
        Ok(cur)
    }

    /// Sets `mark` on the entry covering `index` (no-op on an empty index).
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn set_mark(&self, index: u64, mark: Mark) {
        self.tree.write().set_mark(index, mark as usize);
    }

    /// Clears `mark` on the entry covering `index`.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn clear_mark(&self, index: u64, mark: Mark) {
        self.tree.write().clear_mark(index, mark as usize);
    }

    /// Whether the entry covering `index` has `mark`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn get_mark(&self, index: u64, mark: Mark) -> bool {
        self.tree.read().get_mark(index, mark as usize)
    }

    /// The first entry covering or after `start` and starting at most at `max`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn find(&self, start: u64, max: u64) -> Option<Found> {
        self.tree.read().find(start, max, None)
    }

    /// Like [`XArray::find`], among entries with `mark`. A descent guided
    /// by the propagated marks, not a scan.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn find_marked(&self, start: u64, max: u64, mark: Mark) -> Option<Found> {
        self.tree.read().find(start, max, Some(mark as usize))
    }

    /// The next entry with `mark` covering or after `index`.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn next_marked(&self, index: u64, mark: Mark) -> Option<Found> {
        self.find_marked(index, u64::MAX, mark)
    }

    /// Whether no index holds an entry.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn is_empty(&self) -> bool {
        self.tree.read().is_empty()
    }

    /// Live tree nodes (tests use it to prove that erasing frees nodes).
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn node_count(&self) -> usize {
        self.tree.read().node_count()
    }

    /// Bytes of tree nodes.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn bytes(&self) -> usize {
        self.node_count() * NODE_BYTES
    }

    /// Erases everything.
    ///
    /// # Locking
    /// Takes the write lock.
    pub fn clear(&self) {
        self.tree.write().clear();
    }

    /// A read cursor holding the read lock until dropped.
    ///
    /// # Locking
    /// Takes the read lock for the cursor's lifetime; other readers proceed.
    pub fn read(&self) -> XaReader<'_> {
        XaReader::new(self.tree.read())
    }

    /// A write cursor at index 0 holding the write lock until dropped.
    ///
    /// # Locking
    /// Takes the write lock for the cursor's lifetime.
    pub fn lock(&self) -> XaState<'_> {
        XaState::new(self.tree.write())
    }

    /// Checks the structural invariants (marks propagated, counts, links,
    /// node count); for tests.
    ///
    /// # Locking
    /// Takes the read lock.
    pub fn check(&self) -> Result<(), String> {
        self.tree.read().check()
    }
}

/// Splits `first..=last` into maximal aligned power-of-two blocks
/// `(start, order)` of order at most `cap`, in order.
pub(crate) fn aligned_blocks(first: u64, last: u64, cap: u8) -> impl Iterator<Item = (u64, u8)> {
    let mut next = Some(first).filter(|&f| f <= last);
    std::iter::from_fn(move || {
        let i = next?;
        let remaining = last - i; // count - 1
        let align = if i == 0 {
            63
        } else {
            i.trailing_zeros().min(63)
        };
        let fit = if remaining == u64::MAX {
            63
        } else {
            63 - (remaining + 1).leading_zeros()
        };
        let order = align.min(fit).min(cap as u32) as u8;
        let end = i | ((1u64 << order) - 1);
        next = if end >= last { None } else { Some(end + 1) };
        Some((i, order))
    })
}
