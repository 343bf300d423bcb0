//! The kinds of tree and their records.
//!
//! ```text
//! page map (type 1): key index u64, value pfn u64, len u64 (at least 1);
//!                    a leaf record is the extent record of §2.4
//! directory (type 2): key hash u32 (crc32 of the name), name_len u16, name;
//!                     value ino u64
//! share counts (type 3): key pfn u64, value len u64 (at least 1),
//!                        count u32 (at least 2: a mapped pfn without a
//!                        run is mapped once)
//! ```

use super::Kind;

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}
use crate::meta::Ino;
use crate::record::{put_u16, put_u32, put_u64, Decode, Reader};

/// A file's page map: `len` pages from the key's index lie from `pfn`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Extents {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    pub pfn: u64,
    pub len: u64,
}

impl Kind for Extents {
    const TYPE: u8 = 1;
    const NAME: &'static str = "page map";
    type Key = u64;
    type Value = Extent;
    const MIN_KEY_BYTES: usize = 8;
    const VALUE_BYTES: usize = 16;

    fn key_bytes(_: &u64) -> usize {
        8
    }
    const FIXED: bool = true;
    fn fixed_record(b: &[u8]) -> Option<Decode<(u64, Extent)>> {
        (b.len() == 24).then(|| {
            let (pfn, len) = (u64_at(b, 8), u64_at(b, 16));
            if len == 0 || pfn.checked_add(len).is_none() {
                return Err(format!("extent of {len} pages at pfn {pfn}"));
            }
            Ok((u64_at(b, 0), Extent { pfn, len }))
        })
    }
    fn fixed_key(b: &[u8]) -> Option<Decode<u64>> {
        (b.len() == 8).then(|| Ok(u64_at(b, 0)))
    }
    fn encode_key(k: &u64, out: &mut Vec<u8>) {
        put_u64(out, *k);
    }
    fn decode_key(r: &mut Reader) -> Decode<u64> {
        r.u64("extent index")
    }
    fn encode_value(v: &Extent, out: &mut Vec<u8>) {
        put_u64(out, v.pfn);
        put_u64(out, v.len);
    }
    fn decode_value(r: &mut Reader) -> Decode<Extent> {
        let pfn = r.u64("extent pfn")?;
        let len = r.u64("extent length")?;
        if len == 0 || pfn.checked_add(len).is_none() {
            return Err(format!("extent of {len} pages at pfn {pfn}"));
        }
        Ok(Extent { pfn, len })
    }
}

/// A directory's entries, in the order of their names' hashes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dirents {}

/// A directory entry's key: the name's hash first, so that a directory's
/// nodes fill evenly whatever its names look like.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NameKey {
    pub hash: u32,
    pub name: Vec<u8>,
}

impl NameKey {
    pub fn new(name: &[u8]) -> Self {
        NameKey {
            hash: crc32fast::hash(name),
            name: name.to_vec(),
        }
    }
}

impl Kind for Dirents {
    const TYPE: u8 = 2;
    const NAME: &'static str = "directory";
    type Key = NameKey;
    type Value = Ino;
    const MIN_KEY_BYTES: usize = 7;
    const VALUE_BYTES: usize = 8;

    fn key_bytes(k: &NameKey) -> usize {
        6 + k.name.len()
    }
    fn cmp_in_place(b: &[u8], key: &NameKey) -> Option<Decode<(std::cmp::Ordering, usize)>> {
        Some((|| {
            if b.len() < 6 {
                return Err("a name key past the node's bytes".into());
            }
            let hash = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            let len = usize::from(u16::from_le_bytes([b[4], b[5]]));
            if len == 0 || len > 255 || b.len() < 6 + len {
                return Err(format!("a name of {len} bytes"));
            }
            let name = &b[6..6 + len];
            Ok(((hash, name).cmp(&(key.hash, key.name.as_slice())), 6 + len))
        })())
    }
    fn encode_key(k: &NameKey, out: &mut Vec<u8>) {
        put_u32(out, k.hash);
        // Names are at most 255 bytes (meta::valid_name), checked before
        // they reach a tree.
        put_u16(out, k.name.len() as u16);
        out.extend_from_slice(&k.name);
    }
    fn decode_key(r: &mut Reader) -> Decode<NameKey> {
        let hash = r.u32("name hash")?;
        let len = r.u16("name length")?;
        if len == 0 || len > 255 {
            return Err(format!("a name of {len} bytes"));
        }
        let name = r.take(usize::from(len), "name")?.to_vec();
        if crc32fast::hash(&name) != hash {
            return Err("a name that does not match its hash".into());
        }
        Ok(NameKey { hash, name })
    }
    fn encode_value(v: &Ino, out: &mut Vec<u8>) {
        put_u64(out, *v);
    }
    fn decode_value(r: &mut Reader) -> Decode<Ino> {
        let ino = r.u64("entry inode")?;
        if ino == 0 {
            return Err("an entry naming inode 0".into());
        }
        Ok(ino)
    }
}

/// Share counts of pfns mapped twice or more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shares {}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareRun {
    pub len: u64,
    pub count: u32,
}

impl Kind for Shares {
    const TYPE: u8 = 3;
    const NAME: &'static str = "share counts";
    type Key = u64;
    type Value = ShareRun;
    const MIN_KEY_BYTES: usize = 8;
    const VALUE_BYTES: usize = 12;

    fn key_bytes(_: &u64) -> usize {
        8
    }
    const FIXED: bool = true;
    fn fixed_record(b: &[u8]) -> Option<Decode<(u64, ShareRun)>> {
        (b.len() == 20).then(|| {
            let len = u64_at(b, 8);
            let count = u32::from_le_bytes([b[16], b[17], b[18], b[19]]);
            if len == 0 || count < 2 {
                return Err(format!("share run of {len} pfns with count {count}"));
            }
            Ok((u64_at(b, 0), ShareRun { len, count }))
        })
    }
    fn fixed_key(b: &[u8]) -> Option<Decode<u64>> {
        (b.len() == 8).then(|| Ok(u64_at(b, 0)))
    }
    fn encode_key(k: &u64, out: &mut Vec<u8>) {
        put_u64(out, *k);
    }
    fn decode_key(r: &mut Reader) -> Decode<u64> {
        r.u64("share run pfn")
    }
    fn encode_value(v: &ShareRun, out: &mut Vec<u8>) {
        put_u64(out, v.len);
        put_u32(out, v.count);
    }
    fn decode_value(r: &mut Reader) -> Decode<ShareRun> {
        let len = r.u64("share run length")?;
        let count = r.u32("share count")?;
        if len == 0 || count < 2 {
            return Err(format!("share run of {len} pfns with count {count}"));
        }
        Ok(ShareRun { len, count })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes<K: Kind>(k: &K::Key, v: &K::Value) -> Vec<u8> {
        let mut out = Vec::new();
        K::encode_key(k, &mut out);
        K::encode_value(v, &mut out);
        assert_eq!(out.len(), K::key_bytes(k) + K::VALUE_BYTES);
        out
    }

    fn decode<K: Kind>(b: &[u8]) -> Decode<(K::Key, K::Value)> {
        let mut r = Reader::new(b);
        let k = K::decode_key(&mut r)?;
        let v = K::decode_value(&mut r)?;
        r.finish("record")?;
        Ok((k, v))
    }

    #[test]
    fn fixed_bytes_and_round_trips() {
        let e = Extent {
            pfn: 0x1000,
            len: 3,
        };
        let b = bytes::<Extents>(&1, &e);
        assert_eq!(
            b,
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode::<Extents>(&b).unwrap(), (1, e));

        let k = NameKey::new(b"ab");
        let b = bytes::<Dirents>(&k, &0x0102);
        let mut want = crc32fast::hash(b"ab").to_le_bytes().to_vec();
        want.extend_from_slice(&[2, 0, b'a', b'b', 2, 1, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(decode::<Dirents>(&b).unwrap(), (k, 0x0102));

        let s = ShareRun { len: 2, count: 3 };
        let b = bytes::<Shares>(&9, &s);
        assert_eq!(
            b,
            [9, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0]
        );
        assert_eq!(decode::<Shares>(&b).unwrap(), (9, s));
    }

    #[test]
    fn damage_is_refused() {
        let b = bytes::<Extents>(&5, &Extent { pfn: 9, len: 2 });
        crate::record::assert_refuses_damage(&b, decode::<Extents>);
        let mut d = b.clone();
        d[16..24].fill(0);
        assert!(decode::<Extents>(&d).is_err(), "an empty extent");

        let b = bytes::<Dirents>(&NameKey::new(b"name"), &7);
        crate::record::assert_refuses_damage(&b, decode::<Dirents>);
        let mut d = b.clone();
        d[6] = b'N';
        assert!(decode::<Dirents>(&d).unwrap_err().contains("hash"));
        let mut d = b.clone();
        d[10..18].fill(0);
        assert!(decode::<Dirents>(&d).is_err(), "inode 0");

        let b = bytes::<Shares>(&5, &ShareRun { len: 1, count: 2 });
        crate::record::assert_refuses_damage(&b, decode::<Shares>);
        let mut d = b;
        d[16] = 1;
        assert!(decode::<Shares>(&d).is_err(), "a count of 1 is not stored");
    }
}
