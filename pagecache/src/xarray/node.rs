//! Tree nodes: 64 slots, three mark bitmaps, and where the node hangs.
//!
//! A node is 552 bytes and nothing else is allocated per node, so a dense
//! array costs about 552 / 64 < 9 bytes per entry.

use super::entry::{classify, Slot};
use super::MARKS;
use std::ptr::NonNull;

/// Bits of the index consumed per level.
pub(crate) const BITS: u32 = 6;
/// Slots per node.
pub(crate) const SLOTS: usize = 1 << BITS;
/// Largest shift a node has (its slots cover 2^60 indexes each).
pub(crate) const MAX_SHIFT: u8 = 60;

/// One level of the radix tree.
///
/// Invariants (kept by `Tree`):
/// - `count` is the number of non-empty slots, siblings included.
/// - bit `i` of `marks[m]` is set iff slot `i` holds a canonical entry
///   with mark `m`, or a child node whose `marks[m]` is non-zero. Sibling
///   and empty slots are never marked.
/// - a child node's `shift` is `shift - 6`, its `parent` is this node and
///   its `offset` the slot that points to it.
pub(crate) struct Node {
    /// Slot `i` covers indexes `base + i << shift ..` for `1 << shift` indexes.
    pub(crate) shift: u8,
    /// Our slot in the parent.
    pub(crate) offset: u8,
    pub(crate) count: u8,
    pub(crate) parent: Option<NodePtr>,
    pub(crate) marks: [u64; MARKS],
    pub(crate) slots: [u64; SLOTS],
}

/// The address of a live node owned by one `Tree`.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) struct NodePtr(NonNull<Node>);

impl NodePtr {
    pub(crate) fn addr(self) -> usize {
        self.0.as_ptr() as usize
    }

    /// The node at the address of a `Slot::Node`.
    pub(crate) fn from_addr(addr: usize) -> NodePtr {
        NodePtr(NonNull::new(addr as *mut Node).expect("node words are never null"))
    }

    pub(crate) fn alloc(shift: u8, parent: Option<NodePtr>, offset: u8) -> NodePtr {
        let node = Box::new(Node {
            shift,
            offset,
            count: 0,
            parent,
            marks: [0; MARKS],
            slots: [0; SLOTS],
        });
        NodePtr(NonNull::from(Box::leak(node)))
    }

    /// # Safety
    /// `self` came from [`NodePtr::alloc`], is no longer reachable from any
    /// tree, and is freed once.
    pub(crate) unsafe fn free(self) {
        // SAFETY: per the contract, the pointer came from `Box::leak` and
        // this is the only remaining use.
        drop(unsafe { Box::from_raw(self.0.as_ptr()) });
    }

    /// # Safety
    /// The node is live and no `&mut` to it exists for `'a`.
    pub(crate) unsafe fn get<'a>(self) -> &'a Node {
        // SAFETY: per the contract.
        unsafe { self.0.as_ref() }
    }

    /// # Safety
    /// The node is live and no other reference to it exists for `'a`.
    #[allow(clippy::mut_from_ref)]
    pub(crate) unsafe fn get_mut<'a>(self) -> &'a mut Node {
        // SAFETY: per the contract.
        unsafe { &mut *self.0.as_ptr() }
    }
}

impl Node {
    /// Slot of `index` in a node of this shift.
    pub(crate) fn offset_of(&self, index: u64) -> usize {
        offset_of(index, self.shift)
    }

    /// Number of slots the entry with canonical slot `c` occupies.
    pub(crate) fn extent(&self, c: usize) -> usize {
        let sib = super::entry::sibling_word(c);
        let mut e = 1;
        while c + e < SLOTS && self.slots[c + e] == sib {
            e += 1;
        }
        e
    }

    pub(crate) fn marked(&self, m: usize, slot: usize) -> bool {
        self.marks[m] >> slot & 1 == 1
    }

    /// Marks of `slot` as a bit set (bit m = mark m).
    pub(crate) fn slot_marks(&self, slot: usize) -> u8 {
        (0..MARKS).fold(0, |acc, m| acc | (self.marked(m, slot) as u8) << m)
    }

    pub(crate) fn slot(&self, i: usize) -> Slot {
        classify(self.slots[i])
    }
}

pub(crate) fn offset_of(index: u64, shift: u8) -> usize {
    ((index >> shift) & (SLOTS as u64 - 1)) as usize
}

/// Mask of the index bits below a node of `shift` (the node covers
/// `index & !span_mask ..= index | span_mask`).
pub(crate) const fn span_mask(shift: u8) -> u64 {
    if shift as u32 + BITS >= 64 {
        u64::MAX
    } else {
        (1u64 << (shift as u32 + BITS)) - 1
    }
}

/// First index covered by the node of `shift` that covers `index`.
pub(crate) const fn node_base(index: u64, shift: u8) -> u64 {
    index & !span_mask(shift)
}
