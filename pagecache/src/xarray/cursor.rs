//! Cursors: a position (and for writers a pending error) carried across
//! several steps under one lock acquisition, like Linux's `XA_STATE`.

use super::tree::Tree;
use super::{aligned_blocks, Entry, Found, Mark, XaError, MAX_ORDER};
use parking_lot::{RwLockReadGuard, RwLockWriteGuard};

/// A write cursor. Holds the array's write lock until dropped.
///
/// Once an operation fails, the error is kept and later operations that
/// change the array do nothing until [`XaState::clear_error`], so a
/// multi-step update can be written straight and checked once.
pub struct XaState<'a> {
    tree: RwLockWriteGuard<'a, Tree>,
    index: u64,
    order: u8,
    /// Where the next `find*` starts; `None` once past `u64::MAX`.
    next: Option<u64>,
    error: Option<XaError>,
}

impl<'a> XaState<'a> {
    pub(super) fn new(tree: RwLockWriteGuard<'a, Tree>) -> Self {
        XaState {
            tree,
            index: 0,
            order: 0,
            next: Some(0),
            error: None,
        }
    }

    /// Moves to `index` (order 0).
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn set(&mut self, index: u64) {
        self.index = index;
        self.order = 0;
        self.next = Some(index);
    }

    /// Moves to the aligned range of `2^order` indexes containing `index`.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn set_order(&mut self, index: u64, order: u8) {
        if order > MAX_ORDER {
            self.error = Some(XaError::BadOrder);
            return;
        }
        self.index = index & !((1u64 << order) - 1);
        self.order = order;
        self.next = Some(self.index);
    }

    /// Current index.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn index(&self) -> u64 {
        self.index
    }

    /// Current order.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn order(&self) -> u8 {
        self.order
    }

    /// The pending error, if an operation failed.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn error(&self) -> Option<XaError> {
        self.error
    }

    /// Forgets the pending error.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn clear_error(&mut self) {
        self.error = None;
    }

    /// The entry at the current index.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn load(&self) -> Option<Entry> {
        self.tree.load(self.index)
    }

    /// The entry covering the current index, with its range.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn load_found(&self) -> Option<Found> {
        self.tree.load_found(self.index)
    }

    /// Stores `entry` (or erases) over the current range; returns the entry
    /// that covered its first index. Does nothing while an error is pending.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn store(&mut self, entry: Option<Entry>) -> Option<Entry> {
        if self.error.is_some() {
            return None;
        }
        self.tree.store(self.index, self.order, entry)
    }

    /// Stores `entry` over the current range if all of it is empty, else
    /// sets the pending error to [`XaError::Occupied`].
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn insert(&mut self, entry: Entry) {
        if self.error.is_some() {
            return;
        }
        let last = self.index | ((1u64 << self.order) - 1);
        if self.tree.find(self.index, last, None).is_some() {
            self.error = Some(XaError::Occupied);
            return;
        }
        self.tree.store(self.index, self.order, Some(entry));
    }

    /// Erases `first..=last` as a few aligned block stores.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn erase_range(&mut self, first: u64, last: u64) {
        if self.error.is_some() {
            return;
        }
        for (i, order) in aligned_blocks(first, last, MAX_ORDER) {
            self.tree.store(i, order, None);
        }
    }

    /// Sets `mark` on the entry at the current index.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn set_mark(&mut self, mark: Mark) {
        if self.error.is_none() {
            self.tree.set_mark(self.index, mark as usize);
        }
    }

    /// Clears `mark` on the entry at the current index.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn clear_mark(&mut self, mark: Mark) {
        if self.error.is_none() {
            self.tree.clear_mark(self.index, mark as usize);
        }
    }

    /// Whether the entry at the current index has `mark`.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn get_mark(&self, mark: Mark) -> bool {
        self.tree.get_mark(self.index, mark as usize)
    }

    /// The next entry (from the current index on the first call, after the
    /// last found entry afterwards) starting at most at `max`. Moves the
    /// cursor to it (index and order), so `store` then replaces it whole.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn find(&mut self, max: u64) -> Option<Found> {
        self.find_inner(max, None)
    }

    /// Like [`XaState::find`], among entries with `mark`.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn find_marked(&mut self, max: u64, mark: Mark) -> Option<Found> {
        self.find_inner(max, Some(mark as usize))
    }

    fn find_inner(&mut self, max: u64, mark: Option<usize>) -> Option<Found> {
        let f = self.tree.find(self.next?, max, mark)?;
        self.index = f.index;
        self.order = f.order;
        self.next = f.last().checked_add(1);
        Some(f)
    }

    /// Live nodes of the array.
    ///
    /// # Locking
    /// None taken: the cursor already holds the write lock.
    pub fn node_count(&self) -> usize {
        self.tree.node_count()
    }
}

/// A read cursor. Holds the array's read lock until dropped; other readers
/// are not blocked.
pub struct XaReader<'a> {
    tree: RwLockReadGuard<'a, Tree>,
}

impl<'a> XaReader<'a> {
    pub(super) fn new(tree: RwLockReadGuard<'a, Tree>) -> Self {
        XaReader { tree }
    }

    /// The entry at `index`.
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn load(&self, index: u64) -> Option<Entry> {
        self.tree.load(index)
    }

    /// The entry covering `index`, with its range.
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn load_found(&self, index: u64) -> Option<Found> {
        self.tree.load_found(index)
    }

    /// Whether the entry covering `index` has `mark`.
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn get_mark(&self, index: u64, mark: Mark) -> bool {
        self.tree.get_mark(index, mark as usize)
    }

    /// See [`super::XArray::find`].
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn find(&self, start: u64, max: u64) -> Option<Found> {
        self.tree.find(start, max, None)
    }

    /// See [`super::XArray::find_marked`].
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn find_marked(&self, start: u64, max: u64, mark: Mark) -> Option<Found> {
        self.tree.find(start, max, Some(mark as usize))
    }

    /// The entries covering `start..=max`, in index order.
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn iter(&self, start: u64, max: u64) -> Iter<'_> {
        Iter {
            tree: &self.tree,
            next: Some(start),
            max,
            mark: None,
        }
    }

    /// The entries with `mark` covering `start..=max`, in index order.
    ///
    /// # Locking
    /// None taken: the cursor already holds the read lock.
    pub fn iter_marked(&self, start: u64, max: u64, mark: Mark) -> Iter<'_> {
        Iter {
            tree: &self.tree,
            next: Some(start),
            max,
            mark: Some(mark as usize),
        }
    }
}

/// Iterator over a range, see [`XaReader::iter`].
pub struct Iter<'r> {
    tree: &'r Tree,
    next: Option<u64>,
    max: u64,
    mark: Option<usize>,
}

impl Iterator for Iter<'_> {
    type Item = Found;

    fn next(&mut self) -> Option<Found> {
        let f = self.tree.find(self.next?, self.max, self.mark)?;
        self.next = f.last().checked_add(1);
        Some(f)
    }
}
