//! The radix tree proper, without locking: `XArray` wraps it in a lock,
//! cursors borrow it through a guard.
//!
//! Multi-order entries are stored as in Linux: an entry of order `k` lives
//! in the node whose `shift` is `k` rounded down to a multiple of 6, in
//! `2^(k - shift)` slots: the first (canonical) holds the entry, the others
//! hold sibling words naming the canonical slot. Marks live on the
//! canonical slot only. A store or erase of part of a multi-order entry
//! first splits it ("explode" into one-slot pieces, then "push down" one
//! piece into a full child node), asking the tree's `Splitter` what each
//! piece holds.

use super::entry::{classify, is_sibling, node_word, sibling_word, Entry, Slot, Splitter};
use super::node::{node_base, offset_of, span_mask, Node, NodePtr, BITS, MAX_SHIFT, SLOTS};
use super::{Found, MARKS};

pub(crate) struct Tree {
    root: Option<NodePtr>,
    nodes: usize,
    split: Splitter,
}

// SAFETY: the tree owns its nodes exclusively (they are reachable only
// through `root`), holds no thread-bound state, and all access to nodes
// goes through `&self` (shared reads) or `&mut self` (exclusive writes), so
// moving or sharing it across threads is as safe as for a `Box` tree.
unsafe impl Send for Tree {}
// SAFETY: see `Send`; `&Tree` only permits reads.
unsafe impl Sync for Tree {}

impl Drop for Tree {
    fn drop(&mut self) {
        self.clear();
    }
}

impl Tree {
    pub(crate) fn new(split: Splitter) -> Tree {
        Tree {
            root: None,
            nodes: 0,
            split,
        }
    }

    pub(crate) fn node_count(&self) -> usize {
        self.nodes
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.root.is_none()
    }

    fn n(&self, p: NodePtr) -> &Node {
        // SAFETY: every NodePtr handled by the tree is live (freed only when
        // unlinked) and `&self` excludes any `&mut Node` (those are only
        // made from `&mut self`).
        unsafe { p.get() }
    }

    fn nm(&mut self, p: NodePtr) -> &mut Node {
        // SAFETY: as in `n`; `&mut self` makes this the only reference.
        unsafe { p.get_mut() }
    }

    fn alloc(&mut self, shift: u8, parent: Option<NodePtr>, offset: u8) -> NodePtr {
        self.nodes += 1;
        NodePtr::alloc(shift, parent, offset)
    }

    /// Frees `p` and everything below it; the caller unlinks `p`.
    fn free_subtree(&mut self, p: NodePtr) {
        for i in 0..SLOTS {
            if let Slot::Node(c) = self.n(p).slot(i) {
                self.free_subtree(NodePtr::from_addr(c));
            }
        }
        self.nodes -= 1;
        // SAFETY: `p` was made by `alloc`, the caller has unlinked it and
        // its children are freed above; nothing refers to it any more.
        unsafe { p.free() };
    }

    /// Empties the tree, freeing every node.
    pub(crate) fn clear(&mut self) {
        if let Some(r) = self.root.take() {
            self.free_subtree(r);
        }
        debug_assert_eq!(self.nodes, 0);
    }

    /// Where the entry covering `index` lives: node and canonical slot.
    fn walk(&self, index: u64) -> Option<(NodePtr, usize)> {
        let mut p = self.root?;
        if index & !span_mask(self.n(p).shift) != 0 {
            return None;
        }
        loop {
            let n = self.n(p);
            let off = n.offset_of(index);
            match n.slot(off) {
                Slot::Empty => return None,
                Slot::Entry(_) => return Some((p, off)),
                Slot::Sibling(c) => return Some((p, c)),
                Slot::Node(c) => p = NodePtr::from_addr(c),
            }
        }
    }

    fn found_at(&self, p: NodePtr, c: usize, any_index: u64) -> Found {
        let n = self.n(p);
        let Slot::Entry(entry) = n.slot(c) else {
            unreachable!("found_at is only called on canonical entry slots")
        };
        Found {
            index: node_base(any_index, n.shift) | (c as u64) << n.shift,
            order: n.shift + n.extent(c).trailing_zeros() as u8,
            entry,
        }
    }

    /// The entry for `index`: for a multi-order entry, the piece the
    /// splitter gives for `index` (the entry itself at its first index).
    pub(crate) fn load(&self, index: u64) -> Option<Entry> {
        let (p, c) = self.walk(index)?;
        let f = self.found_at(p, c, index);
        Some(self.piece(&f, index))
    }

    fn piece(&self, f: &Found, index: u64) -> Entry {
        match index - f.index {
            0 => f.entry,
            off => (self.split)(f.entry, off),
        }
    }

    pub(crate) fn load_found(&self, index: u64) -> Option<Found> {
        let (p, c) = self.walk(index)?;
        Some(self.found_at(p, c, index))
    }

    pub(crate) fn get_mark(&self, index: u64, m: usize) -> bool {
        self.walk(index)
            .is_some_and(|(p, c)| self.n(p).marked(m, c))
    }

    pub(crate) fn set_mark(&mut self, index: u64, m: usize) {
        if let Some((p, c)) = self.walk(index) {
            self.nm(p).marks[m] |= 1 << c;
            self.propagate(p, m);
        }
    }

    pub(crate) fn clear_mark(&mut self, index: u64, m: usize) {
        if let Some((p, c)) = self.walk(index) {
            self.nm(p).marks[m] &= !(1 << c);
            self.propagate(p, m);
        }
    }

    /// Makes the parent chain of `p` agree with `p.marks[m]`.
    fn propagate(&mut self, mut p: NodePtr, m: usize) {
        loop {
            let n = self.n(p);
            let any = n.marks[m] != 0;
            let (Some(q), off) = (n.parent, n.offset) else {
                return;
            };
            let pn = self.nm(q);
            if pn.marked(m, off as usize) == any {
                return;
            }
            pn.marks[m] ^= 1 << off;
            p = q;
        }
    }

    /// Grows the tree upwards until the root has at least `min_shift` and
    /// covers `last`.
    fn extend(&mut self, min_shift: u8, last: u64) {
        let fits = |s: u8| s >= min_shift && last & !span_mask(s) == 0;
        let Some(mut r) = self.root else {
            let mut s = min_shift;
            while !fits(s) {
                s += BITS as u8;
            }
            self.root = Some(self.alloc(s, None, 0));
            return;
        };
        while !fits(self.n(r).shift) {
            let old = self.n(r);
            let (shift, marks) = (old.shift, old.marks);
            debug_assert!(shift < MAX_SHIFT);
            let nr = self.alloc(shift + BITS as u8, None, 0);
            let n = self.nm(nr);
            n.slots[0] = node_word(r.addr());
            n.count = 1;
            n.marks = marks.map(|m| (m != 0) as u64);
            let o = self.nm(r);
            o.parent = Some(nr);
            o.offset = 0;
            self.root = Some(nr);
            r = nr;
        }
    }

    /// Turns the multi-slot entry covering slot `off` of `p` into one-slot
    /// pieces with the same marks.
    fn explode(&mut self, p: NodePtr, off: usize) {
        let split = self.split;
        let n = self.nm(p);
        let c = match n.slot(off) {
            Slot::Sibling(c) => c,
            Slot::Entry(_) => off,
            _ => return,
        };
        let ext = n.extent(c);
        let Slot::Entry(e) = n.slot(c) else {
            unreachable!("a sibling's canonical slot holds an entry")
        };
        let marks = n.slot_marks(c);
        for t in 1..ext {
            n.slots[c + t] = split(e, (t as u64) << n.shift).raw();
            for m in 0..MARKS {
                n.marks[m] |= ((marks >> m & 1) as u64) << (c + t);
            }
        }
    }

    /// Replaces the one-slot entry at `off` of `p` by a full child node of
    /// its pieces; returns the child.
    fn push_down(&mut self, p: NodePtr, off: usize) -> NodePtr {
        let split = self.split;
        let (shift, w, marks) = {
            let n = self.n(p);
            (n.shift, n.slots[off], n.slot_marks(off))
        };
        let Slot::Entry(e) = classify(w) else {
            unreachable!("push_down is only called on one-slot entries")
        };
        debug_assert!(!is_sibling(w) && shift >= BITS as u8);
        let cshift = shift - BITS as u8;
        let child = self.alloc(cshift, Some(p), off as u8);
        let cn = self.nm(child);
        for (t, s) in cn.slots.iter_mut().enumerate() {
            *s = split(e, (t as u64) << cshift).raw();
        }
        cn.count = SLOTS as u8;
        for m in 0..MARKS {
            if marks >> m & 1 == 1 {
                cn.marks[m] = u64::MAX;
            }
        }
        self.nm(p).slots[off] = node_word(child.addr());
        child
    }

    /// The node of shift `target` covering `index`, splitting larger
    /// entries on the way; with `create`, missing nodes are made, without
    /// it `None` says the range is empty.
    fn descend(&mut self, index: u64, target: u8, create: bool) -> Option<NodePtr> {
        let mut p = self.root?;
        loop {
            let (shift, off, slot) = {
                let n = self.n(p);
                let off = n.offset_of(index);
                (n.shift, off, n.slot(off))
            };
            if shift == target {
                return Some(p);
            }
            p = match slot {
                Slot::Node(c) => NodePtr::from_addr(c),
                Slot::Empty if !create => return None,
                Slot::Empty => {
                    let c = self.alloc(shift - BITS as u8, Some(p), off as u8);
                    let n = self.nm(p);
                    n.slots[off] = node_word(c.addr());
                    n.count += 1;
                    c
                }
                Slot::Entry(_) | Slot::Sibling(_) => {
                    self.explode(p, off);
                    self.push_down(p, off)
                }
            };
        }
    }

    /// Stores `new` (or erases, with `None`) over the aligned range of
    /// `2^order` indexes containing `index`. Returns the entry for the first
    /// index of the range (as `load` would). The new entry keeps the marks of that
    /// entry; erased indexes lose theirs.
    pub(crate) fn store(&mut self, index: u64, order: u8, new: Option<Entry>) -> Option<Entry> {
        debug_assert!(order < 64);
        let size_mask = (1u64 << order) - 1;
        let first = index & !size_mask;
        let last = first | size_mask;
        let (old, old_marks) = match self.walk(first) {
            Some((p, c)) => {
                let f = self.found_at(p, c, first);
                (Some(self.piece(&f, first)), self.n(p).slot_marks(c))
            }
            None => (None, 0),
        };
        let target = order - order % BITS as u8;
        let p = match new {
            Some(_) => {
                self.extend(target, last);
                self.descend(first, target, true)
            }
            None => {
                let root = self.root?;
                let rs = self.n(root).shift;
                if order as u32 >= rs as u32 + BITS {
                    // Aligned ranges nest or are disjoint: this one covers
                    // the whole tree or lies beyond it.
                    if first == 0 {
                        self.clear();
                    }
                    return old;
                }
                if first & !span_mask(rs) != 0 {
                    return old;
                }
                self.descend(first, target, false)
            }
        };
        let Some(p) = p else { return old };
        let slots = 1usize << (order - target);
        let c = offset_of(first, target);
        self.place(p, c, slots, new, old_marks);
        if new.is_none() {
            self.delete_empty(p);
            self.shrink();
        }
        old
    }

    /// Puts `new` in slots `c .. c + n` of `p` (the whole of each slot).
    fn place(&mut self, p: NodePtr, c: usize, n: usize, new: Option<Entry>, marks: u8) {
        // Entries straddling the edges of the range are split first so the
        // range holds only whole entries.
        if matches!(self.n(p).slot(c), Slot::Sibling(_)) {
            self.explode(p, c);
        }
        if c + n < SLOTS && matches!(self.n(p).slot(c + n), Slot::Sibling(_)) {
            self.explode(p, c + n);
        }
        let mut freed = Vec::new();
        let node = self.nm(p);
        for t in c..c + n {
            match classify(node.slots[t]) {
                Slot::Empty => {}
                Slot::Node(ch) => {
                    freed.push(NodePtr::from_addr(ch));
                    node.count -= 1;
                }
                _ => node.count -= 1,
            }
            node.slots[t] = 0;
        }
        let range_bits = if n == SLOTS {
            u64::MAX
        } else {
            ((1u64 << n) - 1) << c
        };
        for m in 0..MARKS {
            node.marks[m] &= !range_bits;
        }
        if let Some(e) = new {
            node.slots[c] = e.raw();
            for t in 1..n {
                node.slots[c + t] = sibling_word(c);
            }
            node.count += n as u8;
            for m in 0..MARKS {
                node.marks[m] |= ((marks >> m & 1) as u64) << c;
            }
        }
        for ch in freed {
            self.free_subtree(ch);
        }
        for m in 0..MARKS {
            self.propagate(p, m);
        }
    }

    /// Frees `p` and its ancestors while they are empty.
    fn delete_empty(&mut self, mut p: NodePtr) {
        loop {
            let n = self.n(p);
            if n.count != 0 {
                return;
            }
            let (parent, off) = (n.parent, n.offset as usize);
            self.nodes -= 1;
            // SAFETY: `p` is empty (no children) and is unlinked right below
            // (from its parent, or as the root).
            unsafe { p.free() };
            let Some(q) = parent else {
                self.root = None;
                return;
            };
            let pn = self.nm(q);
            pn.slots[off] = 0;
            pn.count -= 1;
            for m in 0..MARKS {
                pn.marks[m] &= !(1 << off);
            }
            for m in 0..MARKS {
                self.propagate(q, m);
            }
            p = q;
        }
    }

    /// Drops roots that only lead to their slot-0 child.
    fn shrink(&mut self) {
        while let Some(r) = self.root {
            let n = self.n(r);
            if n.count != 1 || n.shift == 0 {
                return;
            }
            let Slot::Node(c) = n.slot(0) else { return };
            let c = NodePtr::from_addr(c);
            self.nodes -= 1;
            // SAFETY: the old root's only content is `c`, which becomes the
            // root, so nothing refers to the old root any more.
            unsafe { r.free() };
            self.nm(c).parent = None;
            self.nm(c).offset = 0;
            self.root = Some(c);
        }
    }

    /// The first entry at or after `start` (or covering it) that starts at
    /// most at `max`, carrying mark `mark` if given.
    pub(crate) fn find(&self, start: u64, max: u64, mark: Option<usize>) -> Option<Found> {
        let mut p = self.root?;
        if start > max || start & !span_mask(self.n(p).shift) != 0 {
            return None;
        }
        let mut index = start;
        loop {
            let n = self.n(p);
            let shift = n.shift;
            let base = node_base(index, shift);
            let mut off = offset_of(index, shift);
            // Only on the path of `start` can the slot be the tail of an
            // entry that began before it.
            if let Slot::Sibling(c) = n.slot(off) {
                if mark.is_none_or(|m| n.marked(m, c)) {
                    return Some(self.found_at(p, c, index));
                }
                off = c + n.extent(c);
            }
            let cand = if off >= SLOTS {
                None
            } else {
                match mark {
                    Some(m) => {
                        let bits = n.marks[m] & (u64::MAX << off);
                        (bits != 0).then(|| bits.trailing_zeros() as usize)
                    }
                    None => (off..SLOTS).find(|&t| n.slots[t] != 0 && !is_sibling(n.slots[t])),
                }
            };
            match cand {
                Some(t) => {
                    let slot_start = base | (t as u64) << shift;
                    if slot_start > max {
                        return None;
                    }
                    index = index.max(slot_start);
                    match n.slot(t) {
                        Slot::Node(c) => p = NodePtr::from_addr(c),
                        Slot::Entry(_) => return Some(self.found_at(p, t, index)),
                        _ => unreachable!("marks and candidates are only on canonical slots"),
                    }
                }
                None => {
                    // Climb to the first ancestor with slots after this node.
                    let next = (base | span_mask(shift)).checked_add(1)?;
                    if next > max {
                        return None;
                    }
                    let mut q = n.parent?;
                    while node_base(next, self.n(q).shift) != node_base(index, self.n(q).shift) {
                        q = self.n(q).parent?;
                    }
                    index = next;
                    p = q;
                }
            }
        }
    }

    /// Checks every structural invariant; for tests.
    pub(crate) fn check(&self) -> Result<(), String> {
        let mut count = 0;
        if let Some(r) = self.root {
            if self.n(r).parent.is_some() {
                return Err("root has a parent".into());
            }
            self.check_node(r, &mut count)?;
        }
        if count != self.nodes {
            return Err(format!("node count {} but {} reachable", self.nodes, count));
        }
        Ok(())
    }

    fn check_node(&self, p: NodePtr, total: &mut usize) -> Result<(), String> {
        *total += 1;
        let n = self.n(p);
        let mut count = 0;
        if n.count == 0 {
            return Err("empty node left in the tree".into());
        }
        for i in 0..SLOTS {
            let slot = n.slot(i);
            if slot != Slot::Empty {
                count += 1;
            }
            for m in 0..MARKS {
                let want = match slot {
                    Slot::Empty | Slot::Sibling(_) => false,
                    Slot::Entry(_) => n.marked(m, i),
                    Slot::Node(c) => self.n(NodePtr::from_addr(c)).marks[m] != 0,
                };
                if n.marked(m, i) != want {
                    return Err(format!("mark {m} wrong at slot {i} of shift {}", n.shift));
                }
            }
            match slot {
                Slot::Sibling(c) if c >= i || !matches!(n.slot(c), Slot::Entry(_)) => {
                    return Err("sibling without canonical".into());
                }
                Slot::Node(c) => {
                    let c = NodePtr::from_addr(c);
                    let cn = self.n(c);
                    if cn.parent != Some(p)
                        || cn.offset as usize != i
                        || cn.shift + BITS as u8 != n.shift
                    {
                        return Err("bad child link".into());
                    }
                    self.check_node(c, total)?;
                }
                _ => {}
            }
        }
        if count != n.count as usize {
            return Err(format!("count {} but {} slots used", n.count, count));
        }
        Ok(())
    }
}
