//! B+trees over metadata pages: a file's page map, a directory's entries
//! and the share counts, kept on the media and changed in place (the
//! design is docs/format.md §7).
//!
//! A tree is its root pfn (0 for an empty tree) and the inode that owns it.
//! Every node is one page ([`node`]): records in ascending key order, a
//! leaf's carrying values, an interior node's the pfns of its children.
//! The tree reads and changes pages through [`Pages`], which decides what
//! a change costs: a transaction (`overlay::Txn`) keeps the pages it
//! changed aside and journals the bytes that differ before anything is
//! stored in place, so the tree itself never needs to be crash-consistent
//! between two writes.
//!
//! The rules, kept here and checked by [`Tree::check`]:
//! - every node but an empty tree's (which has none) holds at least one
//!   record, and fits its page;
//! - a child's level is its parent's less one; leaves are level 0;
//! - in an interior node, the keys under child `i` (for `i > 0`) are at
//!   least record `i`'s key and below record `i + 1`'s; the first record's
//!   key bounds nothing.
//!
//! Removing records merges a node that falls under a quarter full with a
//! neighbour when both fit one page, and frees nodes left empty, so a tree
//! shrinks as it empties: a tree with no records has no pages.

pub mod checked;
pub mod kinds;
#[cfg(test)]
pub(crate) mod mem;
pub mod node;
pub mod runs;

use std::collections::HashSet;
use std::fmt::Debug;
use std::marker::PhantomData;

pub use checked::Checked;
pub use kinds::{Dirents, Extent, Extents, NameKey, ShareRun, Shares};
use node::{Entries, Node, CAPACITY, MAX_LEVEL};

use crate::error::{Corrupt, Error, Result};
use crate::record::{Decode, Reader};

/// A kind of tree: its node type and the layout of its keys and values.
pub trait Kind {
    /// The node header's type byte.
    const TYPE: u8;
    /// What the tree is, for messages.
    const NAME: &'static str;
    type Key: Ord + Clone + Debug;
    type Value: Clone + PartialEq + Debug;
    /// The fewest bytes a key takes.
    const MIN_KEY_BYTES: usize;
    /// Bytes of a value: every kind's values have one size.
    const VALUE_BYTES: usize;

    fn key_bytes(k: &Self::Key) -> usize;
    /// Whether every key is `MIN_KEY_BYTES` long, so that nodes decode
    /// with [`Kind::fixed_record`] and [`Kind::fixed_key`].
    const FIXED: bool = false;
    /// A record of a leaf, from exactly its bytes, when keys have one size
    /// (`None` otherwise): what nodes decode with on the hot path, without
    /// a reader's bookkeeping per field.
    fn fixed_record(_b: &[u8]) -> Option<Decode<(Self::Key, Self::Value)>> {
        None
    }
    /// An interior record's key, likewise (its child is the last 8 bytes).
    fn fixed_key(_b: &[u8]) -> Option<Decode<Self::Key>> {
        None
    }
    /// How the key at the start of `b` compares with `key`, and its bytes,
    /// read where it lies (`None`: the kind does not do this): what lookups
    /// in trees of keys of many sizes search with, decoding no record.
    fn cmp_in_place(_b: &[u8], _key: &Self::Key) -> Option<Decode<(std::cmp::Ordering, usize)>> {
        None
    }
    fn encode_key(k: &Self::Key, out: &mut Vec<u8>);
    fn decode_key(r: &mut Reader) -> Decode<Self::Key>;
    fn encode_value(v: &Self::Value, out: &mut Vec<u8>);
    fn decode_value(r: &mut Reader) -> Decode<Self::Value>;
}

/// Where the nodes live: reading a page, changing bytes of it, and
/// allocating and freeing pages for nodes.
pub trait Pages {
    /// The page's current bytes (`PAGE_SIZE` of them), including what this
    /// transaction wrote to it.
    fn page(&self, pfn: u64) -> Result<&[u8]>;
    /// Stores `bytes` at `off` in the page.
    fn write(&mut self, pfn: u64, off: usize, bytes: &[u8]) -> Result<()>;
    /// [`Pages::write`] of bytes the caller knows to differ from the
    /// page's almost everywhere (records moved): a transaction may take
    /// them as they are rather than find what changed.
    fn write_new(&mut self, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        self.write(pfn, off, bytes)
    }
    /// Replaces the `remove` bytes at `at` with `insert`, the bytes after
    /// them up to `end` moving along: a record put in or taken out of a
    /// node. Written as changed, as by [`Pages::write_new`].
    fn splice(
        &mut self,
        pfn: u64,
        at: usize,
        end: usize,
        remove: usize,
        insert: &[u8],
    ) -> Result<()> {
        let mut tail = Vec::with_capacity(insert.len() + end - at - remove);
        tail.extend_from_slice(insert);
        tail.extend_from_slice(&self.page(pfn)?[at + remove..end]);
        self.write_new(pfn, at, &tail)
    }
    /// A page for a new node; its bytes are undefined until written.
    fn alloc(&mut self) -> Result<u64>;
    /// A node's page is no longer part of the tree.
    fn free(&mut self, pfn: u64) -> Result<()>;
    /// The record of nodes already found whole, where the pages keep one
    /// (a mounted image's): a node recorded there is not checksummed
    /// again. Without one, every node read is checksummed.
    fn checked(&self) -> Option<&Checked> {
        None
    }
}

/// The node at `pfn`, its header checked and its checksum verified unless
/// `pages` records it as found whole already (and recorded so once it is).
fn raw_node<K: Kind>(pages: &impl Pages, pfn: u64, owner: u64) -> Result<node::Raw<'_>> {
    let page = pages.page(pfn)?;
    let checked = pages.checked();
    let whole = checked.is_some_and(|c| c.is_whole(pfn));
    let raw = Node::<K>::raw_trusting(page, whole)
        .map_err(|e| Corrupt::new(format!("{} node at pfn {pfn} of inode {owner}", K::NAME), e))?;
    if let (false, Some(c)) = (whole, checked) {
        c.set_whole(pfn);
    }
    Ok(raw)
}

/// What [`Tree::check`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Shape {
    pub records: u64,
    pub pages: u64,
    /// Levels: 0 for an empty tree, 1 for a single leaf.
    pub depth: u8,
}

/// A B+tree of kind `K`, owned by inode `owner`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tree<K: Kind> {
    root: u64,
    owner: u64,
    kind: PhantomData<K>,
}

/// A node split in two: the right half's first key and page, and the left
/// half's first key (what a new root needs).
struct Split<K: Kind> {
    left_first: K::Key,
    sep: K::Key,
    right: u64,
}

/// Where a key is or would go in a slotted leaf, found in place
/// (`Tree::leaf_spot`).
struct Spot {
    pfn: u64,
    /// Records, the room they take, and where the lowest lies.
    count: usize,
    bytes: usize,
    heap: usize,
    /// The slot of the key's record, or of the first with a greater key
    /// (`count` if none).
    index: usize,
    /// The key's record, when the key is there: its offset in the page
    /// and its key's bytes.
    found: Option<(usize, usize)>,
    /// The leaf a removal would merge this one with; `None` for a root or
    /// an only child, which no removal merges.
    sibling: Option<u64>,
}

/// A record, if the in-place search could say (`Tree::floor_in_place`).
type Found<K> = Option<Option<(<K as Kind>::Key, <K as Kind>::Value)>>;

/// How a walk over records ended.
#[derive(Debug, PartialEq, Eq)]
enum Walk {
    /// Every record was visited.
    More,
    /// The visitor asked to stop.
    Stop,
    /// The record before the bound is in an earlier leaf (`range_back`).
    Back,
}

/// What removing from a subtree left of its root: records and bytes.
struct Left {
    len: usize,
    bytes: usize,
}

/// The child whose subtree holds `key`: the last whose key is at most
/// `key`, or the first.
fn child_index<K: Ord, V>(v: &[(K, V)], key: &K) -> usize {
    match v.binary_search_by(|(k, _)| k.cmp(key)) {
        Ok(i) => i,
        Err(0) => 0,
        Err(i) => i - 1,
    }
}

impl<K: Kind> Tree<K> {
    /// The tree whose root is at `root` (0: empty).
    pub fn new(root: u64, owner: u64) -> Self {
        Tree {
            root,
            owner,
            kind: PhantomData,
        }
    }

    /// The root pfn, 0 when the tree is empty; it changes when the root
    /// splits or collapses, and whoever records the root stores it again.
    pub fn root(&self) -> u64 {
        self.root
    }

    fn load(&self, pages: &impl Pages, pfn: u64, level: Option<u8>) -> Result<Node<K>> {
        let what = || format!("{} node at pfn {pfn} of inode {}", K::NAME, self.owner);
        let checked = pages.checked();
        let whole = checked.is_some_and(|c| c.is_whole(pfn));
        let n = Node::<K>::decode_trusting(pages.page(pfn)?, whole)
            .map_err(|e| Corrupt::new(what(), e))?;
        if let (false, Some(c)) = (whole, checked) {
            c.set_whole(pfn);
        }
        if n.owner != self.owner {
            return Err(Corrupt::new(what(), format!("belongs to inode {}", n.owner)).into());
        }
        if level.is_some_and(|l| l != n.level) {
            return Err(Corrupt::new(
                what(),
                format!("level {} where its parent expects {level:?}", n.level),
            )
            .into());
        }
        if n.records() == 0 {
            return Err(Corrupt::new(what(), "an empty node").into());
        }
        Ok(n)
    }

    fn encode(node: &Node<K>) -> Result<Vec<u8>> {
        node.encode()
            .map_err(|e| Corrupt::new(format!("a new {} node", K::NAME), e).into())
    }

    /// Writes `node` over the page at `pfn`: its header and records (a
    /// transaction's pages find what changed once, at commit).
    fn store(pages: &mut impl Pages, pfn: u64, node: &Node<K>) -> Result<()> {
        pages.write(pfn, 0, &Self::encode(node)?)
    }

    fn store_new(pages: &mut impl Pages, node: &Node<K>) -> Result<u64> {
        let bytes = Self::encode(node)?;
        let pfn = pages.alloc()?;
        pages.write(pfn, 0, &bytes)?;
        Ok(pfn)
    }

    /// The value stored under `key`.
    pub fn get(&self, pages: &impl Pages, key: &K::Key) -> Result<Option<K::Value>> {
        if self.root == 0 {
            return Ok(None);
        }
        if let Some(found) = self.get_in_place(pages, key)? {
            return Ok(found);
        }
        let mut n = self.load(pages, self.root, None)?;
        loop {
            match n.entries {
                Entries::Leaf(v) => {
                    return Ok(v
                        .binary_search_by(|(k, _)| k.cmp(key))
                        .ok()
                        .map(|i| v[i].1.clone()))
                }
                Entries::Interior(v) => {
                    let child = v[child_index(&v, key)].1;
                    n = self.load(pages, child, Some(n.level - 1))?;
                }
            }
        }
    }

    /// The record with the greatest key at most `key` (for a page map: the
    /// extent that may hold page `key`).
    pub fn floor(&self, pages: &impl Pages, key: &K::Key) -> Result<Option<(K::Key, K::Value)>> {
        if self.root == 0 {
            return Ok(None);
        }
        if K::FIXED {
            if let Some(found) = self.floor_in_place(pages, key)? {
                return Ok(found);
            }
        }
        let root = self.load(pages, self.root, None)?;
        self.floor_in(pages, root, key, false)
    }

    /// [`Tree::floor`] for fixed-size records, by binary search in the
    /// nodes' bytes instead of decoding them (the share count of every
    /// page a write touches is one of these). `None` when the answer is
    /// not in the leaf the search reaches (a key below that leaf's first),
    /// which the decoding search then finds.
    fn floor_in_place(&self, pages: &impl Pages, key: &K::Key) -> Result<Found<K>> {
        let (mut pfn, mut level) = (self.root, None);
        loop {
            let what = || format!("{} node at pfn {pfn} of inode {}", K::NAME, self.owner);
            let bad = |e: String| -> Error { Corrupt::new(what(), e).into() };
            let raw = raw_node::<K>(pages, pfn, self.owner)?;
            if raw.owner != self.owner || level.is_some_and(|l| l != raw.level) || raw.count == 0 {
                return Ok(None);
            }
            let rec = K::MIN_KEY_BYTES + if raw.level == 0 { K::VALUE_BYTES } else { 8 };
            if raw.body.len() != raw.count * rec {
                return Err(bad(format!(
                    "{} bytes for {} records",
                    raw.body.len(),
                    raw.count
                )));
            }
            let at = |i: usize| &raw.body[i * rec..(i + 1) * rec];
            let key_at = |i: usize| {
                K::fixed_key(&at(i)[..K::MIN_KEY_BYTES])
                    .unwrap_or_else(|| Err("a key of another size".into()))
                    .map_err(bad)
            };
            // How many records have a key at most `key`.
            let (mut lo, mut hi) = (0, raw.count);
            while lo < hi {
                let mid = (lo + hi) / 2;
                if key_at(mid)? <= *key {
                    lo = mid + 1;
                } else {
                    hi = mid;
                }
            }
            if raw.level == 0 {
                if lo == 0 {
                    return Ok(None);
                }
                let r = K::fixed_record(at(lo - 1))
                    .unwrap_or_else(|| Err("a record of another size".into()))
                    .map_err(bad)?;
                return Ok(Some(Some(r)));
            }
            let mut child = [0u8; 8];
            child.copy_from_slice(&at(lo.saturating_sub(1))[rec - 8..]);
            pfn = u64::from_le_bytes(child);
            level = Some(raw.level - 1);
        }
    }

    /// Where `key` is, or would go, in the leaf its search leads to, found
    /// by bisecting each slotted node's slots and comparing keys where
    /// they lie (`Kind::cmp_in_place`); `None` when it cannot say (a kind
    /// of packed nodes, or a node that fails a check the decoding search
    /// reports in full).
    fn leaf_spot(&self, pages: &impl Pages, key: &K::Key) -> Result<Option<Spot>> {
        if !node::slotted::<K>() {
            return Ok(None);
        }
        let (mut pfn, mut level, mut sibling) = (self.root, None, None);
        loop {
            let what = || format!("{} node at pfn {pfn} of inode {}", K::NAME, self.owner);
            let bad = |e: String| -> Error { Corrupt::new(what(), e).into() };
            let raw = raw_node::<K>(pages, pfn, self.owner)?;
            if raw.owner != self.owner || level.is_some_and(|l| l != raw.level) || raw.count == 0 {
                return Ok(None);
            }
            let value_bytes = if raw.level == 0 { K::VALUE_BYTES } else { 8 };
            // Record `i`'s key against `key`, and its key's bytes.
            let cmp = |i: usize| -> Result<Option<(std::cmp::Ordering, usize)>> {
                let rec = raw.record(i).map_err(bad)?;
                let Some(c) = K::cmp_in_place(rec, key) else {
                    return Ok(None);
                };
                let (ord, key_bytes) = c.map_err(bad)?;
                if key_bytes + value_bytes > rec.len() {
                    return Err(bad("a record past the page's end".into()));
                }
                Ok(Some((ord, key_bytes)))
            };
            // The first record in `lo..count` whose key compares as
            // `past` says, or `count`; `None` when a key cannot be read in
            // place.
            let first = |lo: usize, past: fn(std::cmp::Ordering) -> bool| {
                let (mut lo, mut hi) = (lo, raw.count);
                while lo < hi {
                    let mid = (lo + hi) / 2;
                    let Some((ord, _)) = cmp(mid)? else {
                        return Ok(None);
                    };
                    if past(ord) {
                        hi = mid;
                    } else {
                        lo = mid + 1;
                    }
                }
                Ok::<_, Error>(Some(lo))
            };
            if raw.level == 0 {
                // The first record whose key is at or above `key`.
                let Some(lo) = first(0, |o| o != std::cmp::Ordering::Less)? else {
                    return Ok(None);
                };
                let mut found = None;
                if lo < raw.count {
                    let Some((ord, key_bytes)) = cmp(lo)? else {
                        return Ok(None);
                    };
                    if ord == std::cmp::Ordering::Equal {
                        found = Some((raw.offset(lo), key_bytes));
                    }
                }
                return Ok(Some(Spot {
                    pfn,
                    count: raw.count,
                    bytes: raw.bytes,
                    heap: raw.heap,
                    index: lo,
                    found,
                    sibling,
                }));
            }
            // The last child whose key is at most `key`, keys below the
            // second record's going to the first child; and the sibling a
            // removal would merge it with (`remove_in`): the next child,
            // or the previous one for the last.
            let Some(lo) = first(1, |o| o == std::cmp::Ordering::Greater)? else {
                return Ok(None);
            };
            let child = |i: usize| -> Result<Option<u64>> {
                let Some((_, key_bytes)) = cmp(i)? else {
                    return Ok(None);
                };
                let rec = raw.record(i).map_err(bad)?;
                let mut c = [0u8; 8];
                c.copy_from_slice(&rec[key_bytes..key_bytes + 8]);
                Ok(Some(u64::from_le_bytes(c)))
            };
            let i = lo - 1;
            sibling = match raw.count {
                1 => None,
                n => child(if i + 1 < n { i + 1 } else { i - 1 })?,
            };
            let Some(next) = child(i)? else {
                return Ok(None);
            };
            pfn = next;
            level = Some(raw.level - 1);
        }
    }

    /// [`Tree::get`] in place ([`Tree::leaf_spot`]).
    fn get_in_place(&self, pages: &impl Pages, key: &K::Key) -> Result<Option<Option<K::Value>>> {
        let Some(spot) = self.leaf_spot(pages, key)? else {
            return Ok(None);
        };
        let Some((off, key_bytes)) = spot.found else {
            return Ok(Some(None));
        };
        Ok(Some(Some(self.value_at(
            pages,
            spot.pfn,
            off + key_bytes,
        )?)))
    }

    /// The value at `at` in the leaf at `pfn`.
    fn value_at(&self, pages: &impl Pages, pfn: u64, at: usize) -> Result<K::Value> {
        let page = pages.page(pfn)?;
        let mut r = Reader::new(&page[at..at + K::VALUE_BYTES]);
        K::decode_value(&mut r)
            .map_err(|e| Corrupt::new(format!("{} node at pfn {pfn}", K::NAME), e).into())
    }

    /// Stores `value` under `key` if no record has that key; returns
    /// whether it did. One descent where `get` and `insert` take two, for
    /// kinds that compare keys in place.
    pub fn insert_new(
        &mut self,
        pages: &mut impl Pages,
        key: K::Key,
        value: K::Value,
    ) -> Result<bool> {
        if self.root != 0 {
            if let Some(spot) = self.leaf_spot(pages, &key)? {
                if spot.found.is_some() {
                    return Ok(false);
                }
                if self.insert_at(pages, &spot, &key, &value)? {
                    return Ok(true);
                }
            } else if self.get(pages, &key)?.is_some() {
                return Ok(false);
            }
        }
        self.insert(pages, key, value)?;
        Ok(true)
    }

    /// [`Tree::insert`] of a new key into a leaf with room for it, its
    /// records moved where they lie; `None` (nothing changed) when the
    /// key is there or the leaf is full: the decoding path's to do.
    fn insert_in_place(
        &self,
        pages: &mut impl Pages,
        key: &K::Key,
        value: &K::Value,
    ) -> Result<Option<Option<K::Value>>> {
        let Some(spot) = self.leaf_spot(pages, key)? else {
            return Ok(None);
        };
        if spot.found.is_some() || !self.insert_at(pages, &spot, key, value)? {
            return Ok(None);
        }
        Ok(Some(None))
    }

    /// Puts a record of a key not in the leaf at its spot, if the leaf has
    /// room below its records; returns whether it did (a leaf whose free
    /// bytes lie between removed records is written whole by the decoding
    /// path, which packs them).
    fn insert_at(
        &self,
        pages: &mut impl Pages,
        spot: &Spot,
        key: &K::Key,
        value: &K::Value,
    ) -> Result<bool> {
        let mut rec = Vec::with_capacity(K::key_bytes(key) + K::VALUE_BYTES);
        K::encode_key(key, &mut rec);
        K::encode_value(value, &mut rec);
        let room = rec.len() + node::SLOT_BYTES;
        let slots_end = node::HEADER_BYTES + spot.count * node::SLOT_BYTES;
        if spot.bytes + room > CAPACITY || spot.heap < slots_end + room {
            return Ok(false);
        }
        let at = spot.heap - rec.len();
        pages.write_new(spot.pfn, at, &rec)?;
        let slot = node::HEADER_BYTES + spot.index * node::SLOT_BYTES;
        pages.splice(spot.pfn, slot, slots_end, 0, &(at as u16).to_le_bytes())?;
        self.write_header(pages, spot, spot.count + 1, spot.bytes + room, at)?;
        Ok(true)
    }

    /// [`Tree::remove`] from a leaf that keeps a record and that the
    /// decoding path would not merge (it stays a quarter full, or it and
    /// its sibling do not fit one page), by taking out its slot; `None`
    /// (nothing changed) when that path must merge or free nodes.
    fn remove_in_place(
        &self,
        pages: &mut impl Pages,
        key: &K::Key,
    ) -> Result<Option<Option<K::Value>>> {
        let Some(spot) = self.leaf_spot(pages, key)? else {
            return Ok(None);
        };
        let Some((off, key_bytes)) = spot.found else {
            return Ok(Some(None));
        };
        let len = key_bytes + K::VALUE_BYTES;
        let left = spot.bytes - len - node::SLOT_BYTES;
        if spot.count == 1 {
            return Ok(None);
        }
        if let (true, Some(sib)) = (left < CAPACITY / 4, spot.sibling) {
            let raw = raw_node::<K>(pages, sib, self.owner)?;
            if left + raw.bytes <= CAPACITY {
                return Ok(None);
            }
        }
        let old = self.value_at(pages, spot.pfn, off + key_bytes)?;
        let slot = node::HEADER_BYTES + spot.index * node::SLOT_BYTES;
        let slots_end = node::HEADER_BYTES + spot.count * node::SLOT_BYTES;
        pages.splice(spot.pfn, slot, slots_end, node::SLOT_BYTES, &[])?;
        // The lowest record's bytes go back to the free room; any other's
        // stay until the node is next written whole.
        let heap = if off == spot.heap {
            off + len
        } else {
            spot.heap
        };
        self.write_header(pages, &spot, spot.count - 1, left, heap)?;
        Ok(Some(Some(old)))
    }

    /// Writes the header of the slotted leaf at the spot, now of `count`
    /// records taking `bytes`, the lowest at `heap`.
    fn write_header(
        &self,
        pages: &mut impl Pages,
        spot: &Spot,
        count: usize,
        bytes: usize,
        heap: usize,
    ) -> Result<()> {
        let slots_end = node::HEADER_BYTES + count * node::SLOT_BYTES;
        let header = node::Node::<K>::slotted_header(
            0,
            self.owner,
            count,
            bytes,
            heap,
            pages.page(spot.pfn)?,
            slots_end,
        );
        pages.write_new(spot.pfn, 0, &header)
    }

    /// `strict`: the greatest key below `key`, not at most.
    fn floor_in(
        &self,
        pages: &impl Pages,
        n: Node<K>,
        key: &K::Key,
        strict: bool,
    ) -> Result<Option<(K::Key, K::Value)>> {
        match n.entries {
            Entries::Leaf(mut v) => {
                let at = match v.binary_search_by(|(k, _)| k.cmp(key)) {
                    Ok(i) if strict => i,
                    Ok(i) => i + 1,
                    Err(i) => i,
                };
                v.truncate(at);
                Ok(v.pop())
            }
            Entries::Interior(v) => {
                // The child that would hold `key` may hold only greater
                // keys; then the answer is the greatest of an earlier one
                // (nodes are never empty, so the one before has it).
                for i in (0..=child_index(&v, key)).rev() {
                    let child = self.load(pages, v[i].1, Some(n.level - 1))?;
                    if let Some(r) = self.floor_in(pages, child, key, strict)? {
                        return Ok(Some(r));
                    }
                }
                Ok(None)
            }
        }
    }

    /// Visits the records in ascending key order from the first at least
    /// `from` (all of them for `None`) until `visit` returns false.
    pub fn range(
        &self,
        pages: &impl Pages,
        from: Option<&K::Key>,
        mut visit: impl FnMut(&K::Key, &K::Value) -> bool,
    ) -> Result<()> {
        if self.root == 0 {
            return Ok(());
        }
        let root = self.load(pages, self.root, None)?;
        self.range_in(pages, root, from, false, &mut visit)
            .map(|_| ())
    }

    /// [`Tree::range`] from `from`, but first the record before it (the
    /// greatest key below `from`), if there is one: a record that may
    /// reach past `from`. One descent where `floor` and `range` take two,
    /// unless that record is the last of an earlier leaf.
    pub fn range_back(
        &self,
        pages: &impl Pages,
        from: &K::Key,
        mut visit: impl FnMut(&K::Key, &K::Value) -> bool,
    ) -> Result<()> {
        if self.root == 0 {
            return Ok(());
        }
        let root = self.load(pages, self.root, None)?;
        if self.range_in(pages, root, Some(from), true, &mut visit)? != Walk::Back {
            return Ok(());
        }
        let root = self.load(pages, self.root, None)?;
        if let Some((k, v)) = self.floor_in(pages, root, from, true)? {
            if !visit(&k, &v) {
                return Ok(());
            }
        }
        self.range(pages, Some(from), visit)
    }

    /// `back`: start one record before `from`; `Walk::Back` (nothing
    /// visited) when that record is not in the leaf `from` leads to.
    fn range_in(
        &self,
        pages: &impl Pages,
        n: Node<K>,
        from: Option<&K::Key>,
        back: bool,
        visit: &mut impl FnMut(&K::Key, &K::Value) -> bool,
    ) -> Result<Walk> {
        match n.entries {
            Entries::Leaf(v) => {
                let mut start = from.map_or(0, |f| v.partition_point(|(k, _)| k < f));
                if back {
                    if start == 0 {
                        return Ok(Walk::Back);
                    }
                    start -= 1;
                }
                Ok(if v[start..].iter().all(|(k, val)| visit(k, val)) {
                    Walk::More
                } else {
                    Walk::Stop
                })
            }
            Entries::Interior(v) => {
                let start = from.map_or(0, |f| child_index(&v, f));
                for (i, (_, child)) in v.iter().enumerate().skip(start) {
                    let c = self.load(pages, *child, Some(n.level - 1))?;
                    let (bound, back) = if i == start {
                        (from, back)
                    } else {
                        (None, false)
                    };
                    match self.range_in(pages, c, bound, back, visit)? {
                        Walk::More => {}
                        w => return Ok(w),
                    }
                }
                Ok(Walk::More)
            }
        }
    }

    /// Stores `value` under `key`, returning the value it replaced.
    pub fn insert(
        &mut self,
        pages: &mut impl Pages,
        key: K::Key,
        value: K::Value,
    ) -> Result<Option<K::Value>> {
        if self.root == 0 {
            self.root = Self::store_new(pages, &Node::leaf(self.owner, vec![(key, value)]))?;
            return Ok(None);
        }
        if let Some(old) = self.insert_in_place(pages, &key, &value)? {
            return Ok(old);
        }
        let (old, split, level) = self.insert_in(pages, self.root, None, key, value)?;
        if let Some(s) = split {
            if level >= MAX_LEVEL {
                return Err(Corrupt::new(
                    format!("{} tree of inode {}", K::NAME, self.owner),
                    "deeper than a tree can grow",
                )
                .into());
            }
            let root = Node::interior(
                level + 1,
                self.owner,
                vec![(s.left_first, self.root), (s.sep, s.right)],
            );
            self.root = Self::store_new(pages, &root)?;
        }
        Ok(old)
    }

    /// Inserts under the node at `pfn`; returns the replaced value, the
    /// split if the node overflowed, and the node's level.
    #[allow(clippy::type_complexity)]
    fn insert_in(
        &self,
        pages: &mut impl Pages,
        pfn: u64,
        level: Option<u8>,
        key: K::Key,
        value: K::Value,
    ) -> Result<(Option<K::Value>, Option<Split<K>>, u8)> {
        let mut n = self.load(pages, pfn, level)?;
        let old = match &mut n.entries {
            Entries::Leaf(v) => match v.binary_search_by(|(k, _)| k.cmp(&key)) {
                Ok(i) => {
                    if v[i].1 == value {
                        return Ok((Some(value), None, 0));
                    }
                    Some(std::mem::replace(&mut v[i].1, value))
                }
                Err(i) => {
                    v.insert(i, (key, value));
                    None
                }
            },
            Entries::Interior(v) => {
                let i = child_index(v, &key);
                let (old, split, _) =
                    self.insert_in(pages, v[i].1, Some(n.level - 1), key, value)?;
                let Some(s) = split else {
                    return Ok((old, None, n.level));
                };
                // The first key bounds nothing, so keys below it may have
                // gone into the first child; the split's left key is one
                // of them and keeps the records in order.
                if i == 0 && s.left_first < v[0].0 {
                    v[0].0 = s.left_first;
                }
                v.insert(i + 1, (s.sep, s.right));
                old
            }
        };
        if n.bytes() <= CAPACITY {
            Self::store(pages, pfn, &n)?;
            return Ok((old, None, n.level));
        }
        let (left, right) = Self::halves(n);
        Self::store(pages, pfn, &left)?;
        let right_pfn = Self::store_new(pages, &right)?;
        let split = Split {
            left_first: left.first_key().cloned().ok_or_else(Self::lost)?,
            sep: right.first_key().cloned().ok_or_else(Self::lost)?,
            right: right_pfn,
        };
        Ok((old, Some(split), left.level))
    }

    fn lost() -> Error {
        Corrupt::new(format!("a {} node split", K::NAME), "left a half empty").into()
    }

    /// Splits an overfull node in two of about equal bytes.
    fn halves(n: Node<K>) -> (Node<K>, Node<K>) {
        fn cut<T>(v: &[T], size: impl Fn(&T) -> usize) -> usize {
            let total: usize = v.iter().map(&size).sum();
            let mut acc = 0;
            for (i, r) in v.iter().enumerate() {
                acc += size(r);
                if acc >= total / 2 {
                    return (i + 1).clamp(1, v.len() - 1);
                }
            }
            v.len() / 2
        }
        let (level, owner) = (n.level, n.owner);
        match n.entries {
            Entries::Leaf(mut v) => {
                let right = v.split_off(cut(&v, |(k, _)| node::room::<K>(k, true)));
                (Node::leaf(owner, v), Node::leaf(owner, right))
            }
            Entries::Interior(mut v) => {
                let right = v.split_off(cut(&v, |(k, _)| node::room::<K>(k, false)));
                (
                    Node::interior(level, owner, v),
                    Node::interior(level, owner, right),
                )
            }
        }
    }

    /// Removes `key`, returning its value.
    pub fn remove(&mut self, pages: &mut impl Pages, key: &K::Key) -> Result<Option<K::Value>> {
        if self.root == 0 {
            return Ok(None);
        }
        if let Some(old) = self.remove_in_place(pages, key)? {
            return Ok(old);
        }
        let (old, left) = self.remove_in(pages, self.root, None, key)?;
        if left.len == 0 {
            pages.free(self.root)?;
            self.root = 0;
            return Ok(old);
        }
        // A root with one child gives way to it.
        loop {
            let n = self.load(pages, self.root, None)?;
            match n.entries {
                Entries::Interior(v) if v.len() == 1 => {
                    pages.free(self.root)?;
                    self.root = v[0].1;
                }
                _ => return Ok(old),
            }
        }
    }

    /// Removes under the node at `pfn`; the node is written unless it was
    /// left empty, which its parent frees.
    fn remove_in(
        &self,
        pages: &mut impl Pages,
        pfn: u64,
        level: Option<u8>,
        key: &K::Key,
    ) -> Result<(Option<K::Value>, Left)> {
        let mut n = self.load(pages, pfn, level)?;
        let left_of = |n: &Node<K>| Left {
            len: n.records(),
            bytes: n.bytes(),
        };
        let old = match &mut n.entries {
            Entries::Leaf(v) => match v.binary_search_by(|(k, _)| k.cmp(key)) {
                Ok(i) => v.remove(i).1,
                Err(_) => return Ok((None, left_of(&n))),
            },
            Entries::Interior(v) => {
                let i = child_index(v, key);
                let child = v[i].1;
                let (old, left) = self.remove_in(pages, child, Some(n.level - 1), key)?;
                let Some(old) = old else {
                    return Ok((None, left_of(&n)));
                };
                if left.len == 0 {
                    pages.free(child)?;
                    v.remove(i);
                } else if left.bytes < CAPACITY / 4 && v.len() > 1 {
                    let j = if i + 1 < v.len() { i + 1 } else { i - 1 };
                    self.merge(pages, v, i.min(j), n.level - 1)?;
                } else {
                    return Ok((Some(old), left_of(&n)));
                }
                old
            }
        };
        if n.records() > 0 {
            Self::store(pages, pfn, &n)?;
        }
        Ok((Some(old), left_of(&n)))
    }

    /// Merges children `l` and `l + 1` of an interior node into `l` when
    /// their records fit one page.
    fn merge(
        &self,
        pages: &mut impl Pages,
        v: &mut Vec<(K::Key, u64)>,
        l: usize,
        level: u8,
    ) -> Result<()> {
        let (lp, rp) = (v[l].1, v[l + 1].1);
        let mut a = self.load(pages, lp, Some(level))?;
        let b = self.load(pages, rp, Some(level))?;
        // Under `l`, the right child's first key becomes a bound that
        // counts; the parent's key for it is the bound that holds.
        let sep = v[l + 1].0.clone();
        match (&mut a.entries, b.entries) {
            (Entries::Leaf(x), Entries::Leaf(y)) => x.extend(y),
            (Entries::Interior(x), Entries::Interior(mut y)) => {
                y[0].0 = sep;
                x.extend(y);
            }
            _ => {
                return Err(Corrupt::new(
                    format!("{} tree of inode {}", K::NAME, self.owner),
                    "siblings of one level are a leaf and an interior node",
                )
                .into())
            }
        }
        if a.bytes() > CAPACITY {
            return Ok(());
        }
        Self::store(pages, lp, &a)?;
        pages.free(rp)?;
        v.remove(l + 1);
        Ok(())
    }

    /// A new tree of `records` (ascending, unique keys), built bottom up:
    /// leaves filled to three quarters, then each level of interior nodes
    /// over the one below. Costs a page write per node, however many
    /// records, where inserting them one by one would cost a descent each.
    pub fn build(
        pages: &mut impl Pages,
        owner: u64,
        records: impl IntoIterator<Item = (K::Key, K::Value)>,
    ) -> Result<Self> {
        let fill = CAPACITY * 3 / 4;
        let mut level: Vec<(K::Key, u64)> = Vec::new();
        let mut leaf: Vec<(K::Key, K::Value)> = Vec::new();
        let mut bytes = 0;
        let mut prev: Option<K::Key> = None;
        for (k, v) in records {
            if prev.as_ref().is_some_and(|p| *p >= k) {
                return Err(Corrupt::new(
                    format!("a new {} tree", K::NAME),
                    "records out of order",
                )
                .into());
            }
            prev = Some(k.clone());
            let n = node::room::<K>(&k, true);
            if bytes + n > fill && !leaf.is_empty() {
                let first = leaf[0].0.clone();
                let pfn = Self::store_new(pages, &Node::leaf(owner, std::mem::take(&mut leaf)))?;
                level.push((first, pfn));
                bytes = 0;
            }
            bytes += n;
            leaf.push((k, v));
        }
        if !leaf.is_empty() {
            let first = leaf[0].0.clone();
            level.push((first, Self::store_new(pages, &Node::leaf(owner, leaf))?));
        }
        let mut depth = 0u8;
        while level.len() > 1 {
            depth += 1;
            let mut up = Vec::new();
            let mut node: Vec<(K::Key, u64)> = Vec::new();
            let mut bytes = 0;
            for (k, pfn) in level {
                let n = node::room::<K>(&k, false);
                if bytes + n > fill && !node.is_empty() {
                    let first = node[0].0.clone();
                    let p = Self::store_new(
                        pages,
                        &Node::interior(depth, owner, std::mem::take(&mut node)),
                    )?;
                    up.push((first, p));
                    bytes = 0;
                }
                bytes += n;
                node.push((k, pfn));
            }
            let first = node[0].0.clone();
            up.push((
                first,
                Self::store_new(pages, &Node::interior(depth, owner, node))?,
            ));
            level = up;
        }
        Ok(Tree::new(level.first().map_or(0, |r| r.1), owner))
    }

    /// About how many records the tree holds, from its root alone (nodes
    /// below taken as half full): to choose between changing records one
    /// by one and building the tree again.
    pub fn estimate(&self, pages: &impl Pages) -> Result<u64> {
        if self.root == 0 {
            return Ok(0);
        }
        let n = self.load(pages, self.root, None)?;
        let per_node = (CAPACITY / (2 * (K::MIN_KEY_BYTES + K::VALUE_BYTES))) as u64;
        Ok((n.records() as u64).saturating_mul(per_node.saturating_pow(u32::from(n.level))))
    }

    /// Frees every page of the tree, leaving it empty.
    pub fn free_all(&mut self, pages: &mut impl Pages) -> Result<()> {
        if self.root != 0 {
            self.free_in(pages, self.root, None)?;
            self.root = 0;
        }
        Ok(())
    }

    fn free_in(&self, pages: &mut impl Pages, pfn: u64, level: Option<u8>) -> Result<()> {
        let n = self.load(pages, pfn, level)?;
        if let Entries::Interior(v) = n.entries {
            for (_, child) in v {
                self.free_in(pages, child, Some(n.level - 1))?;
            }
        }
        pages.free(pfn)
    }

    /// Walks the whole tree and checks every rule of the module's; calls
    /// `on_page` for each node's pfn (fsck marks them in use).
    pub fn check(&self, pages: &impl Pages, mut on_page: impl FnMut(u64)) -> Result<Shape> {
        let mut shape = Shape::default();
        if self.root == 0 {
            return Ok(shape);
        }
        let mut seen = HashSet::new();
        let root = self.load(pages, self.root, None)?;
        shape.depth = root.level + 1;
        self.check_in(
            pages,
            self.root,
            root,
            None,
            None,
            &mut seen,
            &mut shape,
            &mut on_page,
        )?;
        Ok(shape)
    }

    #[allow(clippy::too_many_arguments)]
    fn check_in(
        &self,
        pages: &impl Pages,
        pfn: u64,
        n: Node<K>,
        lo: Option<&K::Key>,
        hi: Option<&K::Key>,
        seen: &mut HashSet<u64>,
        shape: &mut Shape,
        on_page: &mut impl FnMut(u64),
    ) -> Result<()> {
        let bad = |detail: String| -> Error {
            Corrupt::new(
                format!("{} node at pfn {pfn} of inode {}", K::NAME, self.owner),
                detail,
            )
            .into()
        };
        if !seen.insert(pfn) {
            return Err(bad("reached twice".into()));
        }
        on_page(pfn);
        shape.pages += 1;
        let inside = |k: &K::Key| lo.is_none_or(|lo| lo <= k) && hi.is_none_or(|hi| k < hi);
        match n.entries {
            Entries::Leaf(v) => {
                if let Some((k, _)) = v.iter().find(|(k, _)| !inside(k)) {
                    return Err(bad(format!("key {k:?} outside its parent's bounds")));
                }
                shape.records += v.len() as u64;
            }
            Entries::Interior(v) => {
                if let Some((k, _)) = v.iter().skip(1).find(|(k, _)| !inside(k)) {
                    return Err(bad(format!("key {k:?} outside its parent's bounds")));
                }
                for (i, (k, child)) in v.iter().enumerate() {
                    let c = self.load(pages, *child, Some(n.level - 1))?;
                    let clo = if i == 0 { lo } else { Some(k) };
                    let chi = v.get(i + 1).map(|(k, _)| k).or(hi);
                    self.check_in(pages, *child, c, clo, chi, seen, shape, on_page)?;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
