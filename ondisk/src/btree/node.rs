//! One node of a B+tree: a metadata page of a 32-byte header and records
//! packed in ascending key order.
//!
//! ```text
//! off  size  field
//!   0     4  magic     "MPAG"
//!   4     1  type      the tree's kind (Kind::TYPE: 1 page map, 2 directory,
//!                      3 share counts)
//!   5     1  level     0 for a leaf; a child's level is its parent's less 1
//!   6     2  count     records
//!   8     2  bytes     bytes of the records, from offset 32
//!  10     2  reserved  zero
//!  12     4  crc       crc32 of bytes 0..32 (this field zero) and the records
//!  16     8  owner     the inode whose tree it is
//!  24     8  reserved  zero
//!  32        records: a leaf's are key then value (the kind's layouts), an
//!            interior node's key then child pfn (u64); bytes after the
//!            records are not read
//! ```
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
    reserved: U16,
    crc: U32,
    owner: U64,
    reserved2: U64,
}

/// A node's checked header and its records' bytes (`Node::raw`).
pub struct Raw<'a> {
    pub level: u8,
    pub owner: u64,
    pub count: usize,
    pub body: &'a [u8],
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

    /// Bytes of the records.
    pub fn bytes(&self) -> usize {
        match &self.entries {
            Entries::Leaf(v) => v
                .iter()
                .map(|(k, _)| K::key_bytes(k) + K::VALUE_BYTES)
                .sum(),
            Entries::Interior(v) => v.iter().map(|(k, _)| K::key_bytes(k) + 8).sum(),
        }
    }

    pub fn first_key(&self) -> Option<&K::Key> {
        match &self.entries {
            Entries::Leaf(v) => v.first().map(|(k, _)| k),
            Entries::Interior(v) => v.first().map(|(k, _)| k),
        }
    }

    /// The page: header and records, `HEADER_BYTES + bytes()` long.
    /// Refuses (rather than writes) a node whose records do not fit.
    pub fn encode(&self) -> Decode<Vec<u8>> {
        let bytes = self.bytes();
        if bytes > CAPACITY {
            return Err(format!(
                "{} node of {bytes} bytes of records does not fit a page",
                K::NAME
            ));
        }
        let mut out = Vec::with_capacity(HEADER_BYTES + bytes);
        let header = RawHeader {
            magic: MAGIC,
            kind: K::TYPE,
            level: self.level,
            count: U16::new(self.records() as u16),
            bytes: U16::new(bytes as u16),
            reserved: U16::new(0),
            crc: U32::new(0),
            owner: U64::new(self.owner),
            reserved2: U64::new(0),
        };
        out.extend_from_slice(header.as_bytes());
        match &self.entries {
            Entries::Leaf(v) => {
                for (k, val) in v {
                    K::encode_key(k, &mut out);
                    K::encode_value(val, &mut out);
                }
            }
            Entries::Interior(v) => {
                for (k, child) in v {
                    K::encode_key(k, &mut out);
                    put_u64(&mut out, *child);
                }
            }
        }
        let crc = crc32fast::hash(&out);
        out[12..16].copy_from_slice(&crc.to_le_bytes());
        Ok(out)
    }

    /// The header of a node of `count` records, `records` its records'
    /// bytes (whose crc it holds): for changes made to records where they
    /// lie (`Tree`'s in-place inserts and removes).
    pub fn header(level: u8, owner: u64, count: usize, records: &[u8]) -> [u8; HEADER_BYTES] {
        let mut h = RawHeader {
            magic: MAGIC,
            kind: K::TYPE,
            level,
            count: U16::new(count as u16),
            bytes: U16::new(records.len() as u16),
            reserved: U16::new(0),
            crc: U32::new(0),
            owner: U64::new(owner),
            reserved2: U64::new(0),
        };
        let mut c = crc32fast::Hasher::new();
        c.update(h.as_bytes());
        c.update(records);
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
        if h.reserved.get() != 0 || h.reserved2.get() != 0 {
            return Err("reserved header field is not zero".into());
        }
        let bytes = usize::from(h.bytes.get());
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
        let min = K::MIN_KEY_BYTES + if h.level == 0 { K::VALUE_BYTES } else { 8 };
        let count = r.count(u64::from(h.count.get()), min, "node records")?;
        Ok(Raw {
            level: h.level,
            owner: h.owner.get(),
            count,
            body,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Extent, Extents};
    use super::*;

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
