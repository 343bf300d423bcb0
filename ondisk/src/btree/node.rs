//! One node of a B+tree: a metadata page of a 32-byte header and records
//! in ascending key order.
//!
//! ```text
//! off  size  field
//!   0     4  magic     "MPAG"
//!   4     1  type      the tree's kind (Kind::TYPE: 1 page map, 2 directory,
//!                      3 share counts)
//!   5     1  level     0 for a leaf; a child's level is its parent's less 1
//!   6     2  count     records
//!   8     2  bytes     room the records take: their bytes, and in a slotted
//!                      node their slots' (2 each)
//!  10     2  heap      slotted: offset of the lowest record byte; else zero
//!  12     4  crc       crc32 of bytes 0..32 (this field zero) and the records
//!                      (slotted: the slots, then bytes heap..4096)
//!  16     8  owner     the inode whose tree it is
//!  24     8  reserved  zero
//!  32        packed (kinds of fixed-size keys): the records, a leaf's key
//!            then value (the kind's layouts), an interior node's key then
//!            child pfn (u64); bytes after the records are not read
//!  32        slotted (kinds whose keys vary: directories): `count` slots,
//!            each the u16 offset in the page of a record, in key order;
//!            the records lie at `heap` and above in any order, with bytes
//!            of removed records between them; the bytes between the slots
//!            and `heap` are not read
//! ```
//!
//! A slotted node changes where it lies at the cost of a few dozen bytes:
//! a record goes in below the others and a slot into the array, one comes
//! out by its slot alone (its bytes stay until the node is next written
//! whole), where packed records of varying size would all move; and a
//! search bisects the slots.
//!
//! An interior record's key is a lower bound of every key under its child
//! and above the previous child's; the first record's key is not used in
//! searches (everything below the second key goes to the first child) and
//! is kept below the second.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::Kind;
use crate::layout::PAGE_SIZE;
use crate::record::{put_u64, Decode, Reader};

pub const MAGIC: [u8; 4] = *b"MPAG";
pub const HEADER_BYTES: usize = 32;
/// Room for records in one node.
pub const CAPACITY: usize = PAGE_SIZE as usize - HEADER_BYTES;
/// Bytes of a record's slot in a slotted node.
pub const SLOT_BYTES: usize = 2;
const PAGE: usize = PAGE_SIZE as usize;
/// The deepest a tree may be: far more than 2^64 keys need.
pub const MAX_LEVEL: u8 = 16;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawHeader {
    magic: [u8; 4],
    kind: u8,
    level: u8,
    count: U16,
    bytes: U16,
    heap: U16,
    crc: U32,
    owner: U64,
    reserved2: U64,
}

/// Whether nodes of kind `K` are slotted: those whose keys vary in size.
pub const fn slotted<K: Kind>() -> bool {
    !K::FIXED
}

/// Room a record of `key` takes in a node of kind `K`: the key, the
/// value (a leaf's) or child pfn, and the slot in a slotted node.
pub fn room<K: Kind>(key: &K::Key, leaf: bool) -> usize {
    let slot = if slotted::<K>() { SLOT_BYTES } else { 0 };
    K::key_bytes(key) + if leaf { K::VALUE_BYTES } else { 8 } + slot
}

/// A node's checked header and its records' bytes (`Node::raw`).
pub struct Raw<'a> {
    pub level: u8,
    pub owner: u64,
    pub count: usize,
    /// Room the records take (the header's `bytes`).
    pub bytes: usize,
    /// Packed: the records. Slotted: the slots.
    pub body: &'a [u8],
    /// The page, and (slotted) where its records start.
    pub page: &'a [u8],
    pub heap: usize,
}

impl<'a> Raw<'a> {
    /// Slotted: the page's bytes from record `i`'s start (its key, then
    /// its value or child) to the page's end.
    pub fn record(&self, i: usize) -> Decode<&'a [u8]> {
        let off = self
            .body
            .get(i * SLOT_BYTES..(i + 1) * SLOT_BYTES)
            .map(|b| usize::from(u16::from_le_bytes([b[0], b[1]])))
            .ok_or_else(|| format!("slot {i} of {}", self.count))?;
        if off < self.heap || off >= self.page.len() {
            return Err(format!("a record at {off}, outside the node's records"));
        }
        Ok(&self.page[off..])
    }

    /// Slotted: the offset in the page of record `i`.
    pub fn offset(&self, i: usize) -> usize {
        let b = &self.body[i * SLOT_BYTES..(i + 1) * SLOT_BYTES];
        usize::from(u16::from_le_bytes([b[0], b[1]]))
    }
}

/// A node's records, decoded.
#[derive(Debug, Clone, PartialEq)]
pub enum Entries<K: Kind> {
    Leaf(Vec<(K::Key, K::Value)>),
    Interior(Vec<(K::Key, u64)>),
}

#[derive(Debug, Clone, PartialEq)]
pub struct Node<K: Kind> {
    pub level: u8,
    pub owner: u64,
    pub entries: Entries<K>,
}

impl<K: Kind> Node<K> {
    pub fn leaf(owner: u64, recs: Vec<(K::Key, K::Value)>) -> Self {
        Node {
            level: 0,
            owner,
            entries: Entries::Leaf(recs),
        }
    }

    pub fn interior(level: u8, owner: u64, recs: Vec<(K::Key, u64)>) -> Self {
        Node {
            level,
            owner,
            entries: Entries::Interior(recs),
        }
    }

    pub fn records(&self) -> usize {
        match &self.entries {
            Entries::Leaf(v) => v.len(),
            Entries::Interior(v) => v.len(),
        }
    }

    /// Room the records take ([`room`] of each).
    pub fn bytes(&self) -> usize {
        match &self.entries {
            Entries::Leaf(v) => v.iter().map(|(k, _)| room::<K>(k, true)).sum(),
            Entries::Interior(v) => v.iter().map(|(k, _)| room::<K>(k, false)).sum(),
        }
    }

    pub fn first_key(&self) -> Option<&K::Key> {
        match &self.entries {
            Entries::Leaf(v) => v.first().map(|(k, _)| k),
            Entries::Interior(v) => v.first().map(|(k, _)| k),
        }
    }

    /// The page: header and records, `HEADER_BYTES + bytes()` long when
    /// packed, the whole page when slotted (records at its end, in key
    /// order). Refuses (rather than writes) a node whose records do not
    /// fit.
    pub fn encode(&self) -> Decode<Vec<u8>> {
        let bytes = self.bytes();
        if bytes > CAPACITY {
            return Err(format!(
                "{} node of {bytes} bytes of records does not fit a page",
                K::NAME
            ));
        }
        // The records after room for the header: a packed node's page as
        // it is written, a slotted node's records before they move to the
        // page's end (where each ends, for its slot).
        let slotted = slotted::<K>();
        let mut out = Vec::with_capacity(HEADER_BYTES + bytes);
        out.resize(HEADER_BYTES, 0);
        let mut ends = Vec::with_capacity(if slotted { self.records() } else { 0 });
        match &self.entries {
            Entries::Leaf(v) => {
                for (k, val) in v {
                    K::encode_key(k, &mut out);
                    K::encode_value(val, &mut out);
                    if slotted {
                        ends.push(out.len() - HEADER_BYTES);
                    }
                }
            }
            Entries::Interior(v) => {
                for (k, child) in v {
                    K::encode_key(k, &mut out);
                    put_u64(&mut out, *child);
                    if slotted {
                        ends.push(out.len() - HEADER_BYTES);
                    }
                }
            }
        }
        let count = self.records();
        if !slotted {
            let header = Self::header_with(
                self.level,
                self.owner,
                count,
                bytes,
                0,
                &[&out[HEADER_BYTES..]],
            );
            out[..HEADER_BYTES].copy_from_slice(&header);
            return Ok(out);
        }
        let records = &out[HEADER_BYTES..];
        let heap = PAGE - records.len();
        let mut page = vec![0u8; PAGE];
        let mut start = 0;
        for (i, &end) in ends.iter().enumerate() {
            let at = HEADER_BYTES + i * SLOT_BYTES;
            page[at..at + SLOT_BYTES].copy_from_slice(&((heap + start) as u16).to_le_bytes());
            start = end;
        }
        page[heap..].copy_from_slice(records);
        let slots_end = HEADER_BYTES + count * SLOT_BYTES;
        let header =
            Self::slotted_header(self.level, self.owner, count, bytes, heap, &page, slots_end);
        page[..HEADER_BYTES].copy_from_slice(&header);
        Ok(page)
    }

    /// The header of a slotted node of `count` records taking `bytes` of
    /// room, its records at `heap` and above in `page` (whose slots,
    /// ending at `slots_end`, and records its crc covers): for changes
    /// made where the records lie (`Tree`'s in-place inserts and removes).
    pub fn slotted_header(
        level: u8,
        owner: u64,
        count: usize,
        bytes: usize,
        heap: usize,
        page: &[u8],
        slots_end: usize,
    ) -> [u8; HEADER_BYTES] {
        Self::header_with(
            level,
            owner,
            count,
            bytes,
            heap,
            &[&page[HEADER_BYTES..slots_end], &page[heap..PAGE]],
        )
    }

    fn header_with(
        level: u8,
        owner: u64,
        count: usize,
        bytes: usize,
        heap: usize,
        covered: &[&[u8]],
    ) -> [u8; HEADER_BYTES] {
        let mut h = RawHeader {
            magic: MAGIC,
            kind: K::TYPE,
            level,
            count: U16::new(count as u16),
            bytes: U16::new(bytes as u16),
            heap: U16::new(heap as u16),
            crc: U32::new(0),
            owner: U64::new(owner),
            reserved2: U64::new(0),
        };
        let mut c = crc32fast::Hasher::new();
        c.update(h.as_bytes());
        for b in covered {
            c.update(b);
        }
        h.crc = U32::new(c.finalize());
        let mut out = [0u8; HEADER_BYTES];
        out.copy_from_slice(h.as_bytes());
        out
    }

    /// Records of one size (`Kind::fixed_record`), straight from their
    /// bytes; `None` for kinds whose keys vary.
    fn decode_fixed(level: u8, count: usize, body: &[u8]) -> Option<Decode<Entries<K>>> {
        let size = |b: usize| {
            if b * count != body.len() {
                return Err(format!(
                    "{count} records of {b} bytes in {} bytes",
                    body.len()
                ));
            }
            Ok(b)
        };
        if !K::FIXED {
            return None;
        }
        // Plain loops: collecting an iterator of results grows the vector
        // a push at a time.
        let decode = || -> Decode<Entries<K>> {
            if level == 0 {
                let b = size(K::MIN_KEY_BYTES + K::VALUE_BYTES)?;
                let mut v = Vec::with_capacity(count);
                for c in body.chunks_exact(b) {
                    v.push(
                        K::fixed_record(c)
                            .unwrap_or_else(|| Err("a record of another size".into()))?,
                    );
                }
                Ok(Entries::Leaf(v))
            } else {
                let b = size(K::MIN_KEY_BYTES + 8)?;
                let mut v = Vec::with_capacity(count);
                for c in body.chunks_exact(b) {
                    let key = K::fixed_key(&c[..b - 8])
                        .unwrap_or_else(|| Err("a key of another size".into()))?;
                    let mut child = [0u8; 8];
                    child.copy_from_slice(&c[b - 8..]);
                    v.push((key, u64::from_le_bytes(child)));
                }
                Ok(Entries::Interior(v))
            }
        };
        Some(decode())
    }

    /// A slotted node's records, each read at its slot's offset; their
    /// bytes must add up to the header's room.
    fn decode_slotted(raw: &Raw) -> Decode<Entries<K>> {
        let mut used = raw.count * SLOT_BYTES;
        let mut leaf = Vec::with_capacity(if raw.level == 0 { raw.count } else { 0 });
        let mut interior = Vec::with_capacity(if raw.level == 0 { 0 } else { raw.count });
        for i in 0..raw.count {
            let rec = raw.record(i)?;
            let mut r = Reader::new(rec);
            let key = K::decode_key(&mut r)?;
            if raw.level == 0 {
                leaf.push((key, K::decode_value(&mut r)?));
            } else {
                interior.push((key, r.u64("child pfn")?));
            }
            used += rec.len() - r.remaining();
        }
        if used != raw.bytes {
            return Err(format!(
                "records taking {used} bytes where the header says {}",
                raw.bytes
            ));
        }
        Ok(if raw.level == 0 {
            Entries::Leaf(leaf)
        } else {
            Entries::Interior(interior)
        })
    }

    /// Decodes a page, refusing anything that is not a well-formed node of
    /// this kind: wrong magic, type or crc, a count or length that does
    /// not fit, keys out of order, a record that does not decode.
    pub fn decode(page: &[u8]) -> Decode<Node<K>> {
        Self::decode_trusting(page, false)
    }

    /// [`Node::decode`] of a node found whole before ([`Node::raw_trusting`]).
    pub fn decode_trusting(page: &[u8], whole: bool) -> Decode<Node<K>> {
        let raw = Self::raw_trusting(page, whole)?;
        let (body, level) = (raw.body, raw.level);
        let count = raw.count;
        let mut r = Reader::new(body);
        let entries = if let Some(entries) = Self::decode_fixed(level, count, body) {
            r = Reader::new(&[]);
            entries?
        } else if slotted::<K>() {
            r = Reader::new(&[]);
            Self::decode_slotted(&raw)?
        } else if level == 0 {
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                v.push((K::decode_key(&mut r)?, K::decode_value(&mut r)?));
            }
            Entries::Leaf(v)
        } else {
            let mut v = Vec::with_capacity(count);
            for _ in 0..count {
                v.push((K::decode_key(&mut r)?, r.u64("child pfn")?));
            }
            Entries::Interior(v)
        };
        r.finish("node records")?;
        let node = Node {
            level,
            owner: raw.owner,
            entries,
        };
        let ascending = match &node.entries {
            Entries::Leaf(v) => v.windows(2).all(|w| w[0].0 < w[1].0),
            Entries::Interior(v) => v.windows(2).all(|w| w[0].0 < w[1].0),
        };
        if !ascending {
            return Err("node keys are not in ascending order".into());
        }
        Ok(node)
    }

    /// A page's header checked (magic, type, level, reserved fields, crc,
    /// a count its bytes can hold) and its records' bytes, not decoded:
    /// what [`Node::decode`] starts from, and what lookups in trees of
    /// fixed-size records search in place.
    pub fn raw(page: &[u8]) -> Decode<Raw<'_>> {
        Self::raw_trusting(page, false)
    }

    /// [`Node::raw`], taking the checksum as matching when `whole` (the
    /// node was found whole before: `checked::Checked`); every other check
    /// is made, so a damaged page is refused, never read past its bounds.
    pub fn raw_trusting(page: &[u8], whole: bool) -> Decode<Raw<'_>> {
        let mut r = Reader::new(page);
        let h: RawHeader = r.fixed("node header")?;
        if h.magic != MAGIC {
            return Err("not a metadata node (bad magic)".into());
        }
        if h.kind != K::TYPE {
            return Err(format!(
                "a node of type {}, expected {} ({})",
                h.kind,
                K::TYPE,
                K::NAME
            ));
        }
        if h.level > MAX_LEVEL {
            return Err(format!("node level {} is above {MAX_LEVEL}", h.level));
        }
        if h.reserved2.get() != 0 || (!slotted::<K>() && h.heap.get() != 0) {
            return Err("reserved header field is not zero".into());
        }
        let bytes = usize::from(h.bytes.get());
        let min = K::MIN_KEY_BYTES + if h.level == 0 { K::VALUE_BYTES } else { 8 };
        if slotted::<K>() {
            return Self::raw_slotted(page, h, whole, min);
        }
        if bytes > CAPACITY || HEADER_BYTES + bytes > page.len() {
            return Err(format!("{bytes} bytes of records do not fit in the page"));
        }
        let body = &page[HEADER_BYTES..HEADER_BYTES + bytes];
        if !whole {
            let mut c = crc32fast::Hasher::new();
            c.update(&page[..12]);
            c.update(&[0; 4]);
            c.update(&page[16..HEADER_BYTES]);
            c.update(body);
            if c.finalize() != h.crc.get() {
                return Err("node checksum does not match".into());
            }
        }
        let mut r = Reader::new(body);
        let count = r.count(u64::from(h.count.get()), min, "node records")?;
        Ok(Raw {
            level: h.level,
            owner: h.owner.get(),
            count,
            bytes,
            body,
            page,
            heap: 0,
        })
    }

    /// [`Node::raw_trusting`] of a slotted node: the slots and the heap
    /// must lie in the page, apart, with room for `count` records of at
    /// least `min` bytes.
    fn raw_slotted(page: &[u8], h: RawHeader, whole: bool, min: usize) -> Decode<Raw<'_>> {
        let (count, bytes) = (usize::from(h.count.get()), usize::from(h.bytes.get()));
        let heap = usize::from(h.heap.get());
        let slots_end = HEADER_BYTES + count * SLOT_BYTES;
        if page.len() != PAGE {
            return Err(format!(
                "a slotted node of {} bytes, not a page",
                page.len()
            ));
        }
        if bytes > CAPACITY
            || count * (min + SLOT_BYTES) > bytes
            || heap < slots_end
            || heap > PAGE
            || bytes - count * SLOT_BYTES > PAGE - heap
        {
            return Err(format!(
                "{count} records taking {bytes} bytes, from {heap}, do not fit in the page"
            ));
        }
        if !whole {
            let mut c = crc32fast::Hasher::new();
            c.update(&page[..12]);
            c.update(&[0; 4]);
            c.update(&page[16..slots_end]);
            c.update(&page[heap..]);
            if c.finalize() != h.crc.get() {
                return Err("node checksum does not match".into());
            }
        }
        Ok(Raw {
            level: h.level,
            owner: h.owner.get(),
            count,
            bytes,
            body: &page[HEADER_BYTES..slots_end],
            page,
            heap,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Dirents, Extent, Extents, NameKey};
    use super::*;

    /// A directory leaf of `names` (ino 100 + i), in key order.
    fn dir_leaf(names: &[&[u8]]) -> Node<Dirents> {
        let mut v: Vec<(NameKey, u64)> = names
            .iter()
            .enumerate()
            .map(|(i, n)| (NameKey::new(n), 100 + i as u64))
            .collect();
        v.sort();
        Node::leaf(5, v)
    }

    /// A slotted page's crc made right again after a change.
    fn reseal_slotted(mut d: Vec<u8>) -> Vec<u8> {
        let count = usize::from(u16::from_le_bytes([d[6], d[7]]));
        let heap = usize::from(u16::from_le_bytes([d[10], d[11]]));
        d[12..16].fill(0);
        let mut c = crc32fast::Hasher::new();
        c.update(&d[..HEADER_BYTES + count * SLOT_BYTES]);
        c.update(&d[heap.min(PAGE)..]);
        let crc = c.finalize();
        d[12..16].copy_from_slice(&crc.to_le_bytes());
        d
    }

    #[test]
    fn slotted_fixed_bytes() {
        let n = dir_leaf(&[b"a", b"bc"]);
        let b = n.encode().unwrap();
        assert_eq!(b.len(), PAGE);
        let Entries::Leaf(v) = &n.entries else {
            unreachable!()
        };
        // Each record: hash u32, name length u16, name, ino u64.
        let rec = |k: &NameKey, ino: u64| {
            let mut r = k.hash.to_le_bytes().to_vec();
            r.extend_from_slice(&(k.name.len() as u16).to_le_bytes());
            r.extend_from_slice(&k.name);
            r.extend_from_slice(&ino.to_le_bytes());
            r
        };
        let records = [rec(&v[0].0, v[0].1), rec(&v[1].0, v[1].1)].concat();
        assert_eq!(records.len(), 15 + 16);
        let heap = PAGE - 31;
        let mut want = vec![0u8; PAGE];
        want[..4].copy_from_slice(b"MPAG");
        // type 2, level 0, count 2, bytes 31 + 2 slots, heap.
        want[4..12].copy_from_slice(&[2, 0, 2, 0, 35, 0, (heap & 0xff) as u8, (heap >> 8) as u8]);
        want[16] = 5;
        let first = v[0].0.name.len() + 14;
        want[32..34].copy_from_slice(&(heap as u16).to_le_bytes());
        want[34..36].copy_from_slice(&((heap + first) as u16).to_le_bytes());
        want[heap..].copy_from_slice(&records);
        let want = reseal_slotted(want);
        assert_eq!(b, want);
        // The bytes between the slots and the records are not read.
        let mut page = b.clone();
        page[36..heap].fill(0xee);
        assert_eq!(Node::<Dirents>::decode(&page).unwrap(), n);
    }

    #[test]
    fn slotted_damage_is_refused() {
        let names: Vec<Vec<u8>> = (0..40).map(|i| format!("entry-{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = names.iter().map(|n| n.as_slice()).collect();
        let n = dir_leaf(&refs);
        let b = n.encode().unwrap();
        let heap = usize::from(u16::from_le_bytes([b[10], b[11]]));
        let slots_end = HEADER_BYTES + 40 * SLOT_BYTES;
        assert!(
            Node::<Dirents>::decode(&b[..PAGE - 1]).is_err(),
            "a cut page"
        );
        // The crc catches every flipped byte it covers; the gap is free.
        for i in (0..PAGE).filter(|i| !(12..16).contains(i)) {
            let mut d = b.clone();
            d[i] ^= 0x40;
            let covered = i < slots_end || i >= heap;
            assert_eq!(Node::<Dirents>::decode(&d).is_err(), covered, "flip at {i}");
        }
        // Damage with a valid crc is still refused.
        let slot = |d: &mut Vec<u8>, i: usize, off: usize| {
            d[32 + 2 * i..34 + 2 * i].copy_from_slice(&(off as u16).to_le_bytes());
        };
        let mut d = b.clone();
        slot(&mut d, 3, heap - 1);
        assert!(Node::<Dirents>::decode(&reseal_slotted(d))
            .unwrap_err()
            .contains("outside"));
        let mut d = b.clone();
        slot(&mut d, 3, PAGE);
        assert!(Node::<Dirents>::decode(&reseal_slotted(d)).is_err());
        let mut d = b.clone();
        let second = u16::from_le_bytes([d[34], d[35]]) as usize;
        slot(&mut d, 0, second);
        assert!(Node::<Dirents>::decode(&reseal_slotted(d))
            .unwrap_err()
            .contains("ascending"));
        // The room the header gives, and where the records start.
        let mut d = b.clone();
        d[8] = d[8].wrapping_add(1);
        assert!(Node::<Dirents>::decode(&reseal_slotted(d))
            .unwrap_err()
            .contains("bytes"));
        let mut d = b.clone();
        d[10..12].copy_from_slice(&((slots_end - 2) as u16).to_le_bytes());
        assert!(Node::<Dirents>::decode(&reseal_slotted(d)).is_err());
        // A packed kind's heap field is reserved.
        let e: Node<Extents> = Node::leaf(7, vec![(1, Extent { pfn: 9, len: 1 })]);
        let mut d = e.encode().unwrap();
        d[10] = 1;
        d[12..16].fill(0);
        let crc = crc32fast::hash(&d);
        d[12..16].copy_from_slice(&crc.to_le_bytes());
        assert!(Node::<Extents>::decode(&d)
            .unwrap_err()
            .contains("reserved"));
    }

    #[test]
    fn fixed_bytes() {
        let n: Node<Extents> = Node::leaf(
            7,
            vec![(
                1,
                Extent {
                    pfn: 0x1000,
                    len: 3,
                },
            )],
        );
        let b = n.encode().unwrap();
        let crc = crc32fast::hash(
            &[
                &b"MPAG"[..],
                &[1, 0, 1, 0, 24, 0, 0, 0, 0, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0],
                &[0; 8],
                &[1, 0, 0, 0, 0, 0, 0, 0],
                &[0, 0x10, 0, 0, 0, 0, 0, 0],
                &[3, 0, 0, 0, 0, 0, 0, 0],
            ]
            .concat(),
        );
        let mut want = b"MPAG".to_vec();
        want.extend_from_slice(&[1, 0, 1, 0, 24, 0, 0, 0]);
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0; 8]);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[0, 0x10, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b, want);
        // Bytes past the records are not read.
        let mut page = b.clone();
        page.resize(PAGE_SIZE as usize, 0xee);
        assert_eq!(Node::<Extents>::decode(&page).unwrap(), n);
    }

    #[test]
    fn interior_round_trip() {
        let n: Node<Extents> = Node::interior(2, 9, vec![(0, 100), (50, 101), (900, 102)]);
        let b = n.encode().unwrap();
        assert_eq!(b.len(), HEADER_BYTES + 3 * 16);
        assert_eq!(Node::<Extents>::decode(&b).unwrap(), n);
    }

    #[test]
    fn damage_is_refused() {
        let n: Node<Extents> = Node::leaf(
            7,
            (0..10)
                .map(|i| {
                    (
                        i * 10,
                        Extent {
                            pfn: 500 + i,
                            len: 2,
                        },
                    )
                })
                .collect(),
        );
        let b = n.encode().unwrap();
        for cut in 0..b.len() {
            assert!(Node::<Extents>::decode(&b[..cut]).is_err(), "cut at {cut}");
        }
        // The crc catches every single flipped byte.
        for i in 0..b.len() {
            let mut d = b.clone();
            d[i] ^= 0x40;
            assert!(Node::<Extents>::decode(&d).is_err(), "flip at {i}");
        }
        // Damage with a valid crc is still refused: keys out of order, a
        // count past the bytes, the wrong kind.
        let reseal = |mut d: Vec<u8>| {
            d[12..16].fill(0);
            let crc = crc32fast::hash(&d);
            d[12..16].copy_from_slice(&crc.to_le_bytes());
            d
        };
        let mut d = b.clone();
        d[32..40].copy_from_slice(&1000u64.to_le_bytes());
        assert!(Node::<Extents>::decode(&reseal(d))
            .unwrap_err()
            .contains("ascending"));
        let mut d = b.clone();
        d[6] = 200;
        assert!(Node::<Extents>::decode(&reseal(d)).is_err());
        let mut d = b.clone();
        d[4] = 2;
        assert!(Node::<Extents>::decode(&reseal(d))
            .unwrap_err()
            .contains("type"));
        let mut d = b;
        d[5] = MAX_LEVEL + 1;
        assert!(Node::<Extents>::decode(&reseal(d)).is_err());
    }

    #[test]
    fn an_overfull_node_is_not_encoded() {
        let n: Node<Extents> = Node::leaf(
            1,
            (0..170).map(|i| (i, Extent { pfn: i, len: 1 })).collect(),
        );
        assert!(n.encode().is_err());
        let n: Node<Extents> = Node::leaf(
            1,
            (0..169).map(|i| (i, Extent { pfn: i, len: 1 })).collect(),
        );
        assert_eq!(n.encode().unwrap().len(), 32 + 169 * 24);
    }
}
