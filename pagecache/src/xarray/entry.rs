//! What a slot holds: one tagged 64-bit word.
//!
//! # Entry encoding
//!
//! This is the one place the encoding is written down; everything else goes
//! through [`Entry`] and the `pub(crate)` helpers below.
//!
//! | word            | meaning                                                   |
//! |-----------------|-----------------------------------------------------------|
//! | `0`             | empty slot                                                |
//! | `....1`         | value entry: `word >> 1` is a 63-bit value                |
//! | `...00`, not 0  | pointer entry: a 4-byte aligned address, never dereferenced by the array |
//! | `...10`         | internal entry, `v = word >> 2`:                          |
//! |                 | `v < 64`: sibling, "see canonical slot `v` of this node"  |
//! |                 | `256 <= v < 1024`: special user entries ([`Entry::RESERVED`]) |
//! |                 | `v >= 1024`: pointer to a child node (`word & !3`)        |
//!
//! A *pfn entry* is a value entry whose value is `pfn << 4 | flags` (see
//! [`PfnFlags`]), so a DAX mapping costs no allocation. Node addresses are
//! heap addresses, hence at least 4096, hence `v >= 1024`.

use std::fmt;
use std::num::NonZeroU64;

/// Bits of a value entry's value used for [`PfnFlags`].
pub const PFN_FLAG_BITS: u32 = 4;

/// The tag of internal entries (low two bits `10`).
const INTERNAL_TAG: u64 = 0b10;

/// First internal value that is a node pointer (address 4096 and up).
const NODE_MIN: u64 = 1024;

/// Internal value of [`Entry::RESERVED`].
const RESERVED_V: u64 = 256;

/// A non-empty slot content: a value, a pfn, a pointer or a special entry.
///
/// `Entry` is `Copy` and never owns what it points to; the owner of an array
/// of pointer entries decides their lifetime (see `DramSpace`).
#[derive(Copy, Clone, PartialEq, Eq, Hash)]
pub struct Entry(NonZeroU64);

/// Flags carried inside a pfn entry (the low [`PFN_FLAG_BITS`] bits of its value).
#[derive(Copy, Clone, PartialEq, Eq, Hash, Default, Debug)]
pub struct PfnFlags(u8);

impl PfnFlags {
    /// No flag.
    pub const NONE: PfnFlags = PfnFlags(0);
    /// The page at this index is held for exclusive use (a write or a copy
    /// on write is in progress); others wait on the page's descriptor.
    pub const EXCLUSIVE: PfnFlags = PfnFlags(1);
    /// The page is known to hold zeros (allocated but never written).
    pub const ZERO: PfnFlags = PfnFlags(2);

    /// The raw bits.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn bits(self) -> u8 {
        self.0
    }
    /// Whether every flag of `other` is set in `self`.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn contains(self, other: PfnFlags) -> bool {
        self.0 & other.0 == other.0
    }
    /// `self` with the flags of `other` added.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn with(self, other: PfnFlags) -> PfnFlags {
        PfnFlags(self.0 | other.0)
    }
    /// `self` with the flags of `other` removed.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn without(self, other: PfnFlags) -> PfnFlags {
        PfnFlags(self.0 & !other.0)
    }
}

impl Entry {
    /// Largest value a value entry holds.
    pub const MAX_VALUE: u64 = u64::MAX >> 1;
    /// Largest pfn a pfn entry holds.
    pub const MAX_PFN: u64 = Self::MAX_VALUE >> PFN_FLAG_BITS;
    /// A special entry: the index is reserved (e.g. a hole being filled for
    /// exclusive use) but holds no page yet.
    pub const RESERVED: Entry = Entry(match NonZeroU64::new(RESERVED_V << 2 | INTERNAL_TAG) {
        Some(w) => w,
        None => unreachable!(),
    });

    /// A value entry, or `None` when `v > MAX_VALUE`.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn try_from_value(v: u64) -> Option<Entry> {
        if v > Self::MAX_VALUE {
            return None;
        }
        match NonZeroU64::new(v << 1 | 1) {
            Some(w) => Some(Entry(w)),
            None => None,
        }
    }

    /// A value entry.
    ///
    /// # Panics
    /// When `v > Entry::MAX_VALUE`; use [`Entry::try_from_value`] for
    /// values that come from outside.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn from_value(v: u64) -> Entry {
        match Self::try_from_value(v) {
            Some(e) => e,
            None => panic!("value does not fit a value entry"),
        }
    }

    /// A pfn entry, or `None` when `pfn > MAX_PFN`.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn try_from_pfn(pfn: u64, flags: PfnFlags) -> Option<Entry> {
        if pfn > Self::MAX_PFN {
            return None;
        }
        Self::try_from_value(pfn << PFN_FLAG_BITS | flags.0 as u64)
    }

    /// A pfn entry.
    ///
    /// # Panics
    /// When `pfn > Entry::MAX_PFN` (2^59 - 1, far beyond any device).
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn from_pfn(pfn: u64, flags: PfnFlags) -> Entry {
        match Self::try_from_pfn(pfn, flags) {
            Some(e) => e,
            None => panic!("pfn does not fit a pfn entry"),
        }
    }

    /// A pointer entry, or `None` if `p` is null or not 4-byte aligned.
    ///
    /// # Locking
    /// None (a pure function).
    pub fn from_ptr<T>(p: *const T) -> Option<Entry> {
        let w = p as usize as u64;
        if w & 3 != 0 {
            return None;
        }
        NonZeroU64::new(w).map(Entry)
    }

    /// The value of a value entry.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn value(self) -> Option<u64> {
        let w = self.0.get();
        if w & 1 == 1 {
            Some(w >> 1)
        } else {
            None
        }
    }

    /// The pfn of a value entry read as a pfn entry.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn pfn(self) -> Option<u64> {
        match self.value() {
            Some(v) => Some(v >> PFN_FLAG_BITS),
            None => None,
        }
    }

    /// The flags of a pfn entry (none for other entries).
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn pfn_flags(self) -> PfnFlags {
        match self.value() {
            Some(v) => PfnFlags((v & ((1 << PFN_FLAG_BITS) - 1)) as u8),
            None => PfnFlags::NONE,
        }
    }

    /// The same pfn entry with `flags` instead of its own; other entries unchanged.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn with_pfn_flags(self, flags: PfnFlags) -> Entry {
        match self.pfn() {
            Some(pfn) => Self::from_pfn(pfn, flags),
            None => self,
        }
    }

    /// The address of a pointer entry.
    ///
    /// # Locking
    /// None (a pure function).
    pub fn ptr<T>(self) -> Option<*const T> {
        let w = self.0.get();
        if w & 3 == 0 {
            Some(w as usize as *const T)
        } else {
            None
        }
    }

    /// Whether this is a value (or pfn) entry.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn is_value(self) -> bool {
        self.0.get() & 1 == 1
    }

    /// Whether this is a pointer entry.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn is_pointer(self) -> bool {
        self.0.get() & 3 == 0
    }

    /// Whether this is a special entry such as [`Entry::RESERVED`].
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn is_special(self) -> bool {
        self.0.get() & 3 == INTERNAL_TAG
    }

    /// The raw word.
    ///
    /// # Locking
    /// None (a pure function).
    pub const fn raw(self) -> u64 {
        self.0.get()
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(pfn) = self.pfn() {
            write!(
                f,
                "Entry(value {:#x} = pfn {pfn:#x} {:?})",
                self.raw() >> 1,
                self.pfn_flags()
            )
        } else if *self == Entry::RESERVED {
            f.write_str("Entry(RESERVED)")
        } else {
            write!(f, "Entry(ptr {:#x})", self.raw())
        }
    }
}

/// How a slot word reads inside the tree.
#[derive(Copy, Clone, PartialEq, Eq, Debug)]
pub(crate) enum Slot {
    Empty,
    Entry(Entry),
    /// Part of the multi-slot entry whose canonical slot is this offset.
    Sibling(usize),
    /// A child node at this address.
    Node(usize),
}

pub(crate) fn classify(w: u64) -> Slot {
    match NonZeroU64::new(w) {
        None => Slot::Empty,
        Some(nz) if w & 3 == INTERNAL_TAG => {
            let v = w >> 2;
            if v < 64 {
                Slot::Sibling(v as usize)
            } else if v >= NODE_MIN {
                Slot::Node((w & !3) as usize)
            } else {
                Slot::Entry(Entry(nz))
            }
        }
        Some(nz) => Slot::Entry(Entry(nz)),
    }
}

pub(crate) const fn sibling_word(canonical: usize) -> u64 {
    (canonical as u64) << 2 | INTERNAL_TAG
}

pub(crate) const fn is_sibling(w: u64) -> bool {
    w & 3 == INTERNAL_TAG && (w >> 2) < 64
}

pub(crate) fn node_word(addr: usize) -> u64 {
    debug_assert!(addr as u64 >= NODE_MIN << 2 && addr & 3 == 0);
    addr as u64 | INTERNAL_TAG
}

/// How a multi-order entry is cut into pieces when part of it is
/// overwritten or erased: `split(entry, offset)` is the piece starting
/// `offset` indexes into `entry`. It must satisfy `split(e, 0) == e` and
/// `split(split(e, a), b) == split(e, a + b)`.
pub type Splitter = fn(Entry, u64) -> Entry;

/// Every piece is the entry itself (as Linux `xas_split` does).
///
/// # Locking
/// None (a pure function).
pub fn split_copy(e: Entry, _offset: u64) -> Entry {
    e
}

/// Value entries: piece value = value + offset (so "value equals index"
/// survives splits). Other entries are copied.
///
/// # Locking
/// None (a pure function).
pub fn split_add_value(e: Entry, offset: u64) -> Entry {
    match e.value() {
        Some(v) => Entry::from_value(v.wrapping_add(offset) & Entry::MAX_VALUE),
        None => e,
    }
}

/// Pfn entries: piece pfn = pfn + offset, flags kept (a 2 MiB entry maps
/// 512 consecutive pfns). Other entries are copied.
///
/// # Locking
/// None (a pure function).
pub fn split_add_pfn(e: Entry, offset: u64) -> Entry {
    match e.pfn() {
        Some(pfn) => Entry::from_pfn(pfn.wrapping_add(offset) & Entry::MAX_PFN, e.pfn_flags()),
        None => e,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings_do_not_overlap() {
        let v = Entry::from_value(0);
        assert_eq!(classify(v.raw()), Slot::Entry(v));
        assert_eq!(v.value(), Some(0));
        let m = Entry::from_value(Entry::MAX_VALUE);
        assert_eq!(m.value(), Some(Entry::MAX_VALUE));
        assert!(Entry::try_from_value(Entry::MAX_VALUE + 1).is_none());
        let p = Entry::from_pfn(12345, PfnFlags::EXCLUSIVE);
        assert_eq!(p.pfn(), Some(12345));
        assert!(p.pfn_flags().contains(PfnFlags::EXCLUSIVE));
        assert_eq!(p.with_pfn_flags(PfnFlags::NONE).pfn_flags(), PfnFlags::NONE);
        let x = 0u64;
        let q = Entry::from_ptr(&x as *const u64).expect("aligned");
        assert!(q.is_pointer());
        assert_eq!(q.ptr::<u64>(), Some(&x as *const u64));
        assert!(Entry::from_ptr(std::ptr::null::<u64>()).is_none());
        assert!(Entry::RESERVED.is_special());
        assert_eq!(
            classify(Entry::RESERVED.raw()),
            Slot::Entry(Entry::RESERVED)
        );
        assert_eq!(classify(sibling_word(63)), Slot::Sibling(63));
        assert_eq!(classify(node_word(0x10000)), Slot::Node(0x10000));
        assert_eq!(split_add_pfn(p, 5).pfn(), Some(12350));
    }
}
