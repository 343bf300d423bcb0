//! A checkpoint's payload: a header, one inode record per inode, then the
//! patches of the transaction the checkpoint carries (the one that found
//! the journal full: its share-tree pages are stored in place only once
//! the checkpoint is durable, and every mount from it stores them again).
//!
//! ```text
//! off  size  field
//!   0     4  magic       "META"
//!   4     4  reserved    zero
//!   8     8  next_ino    smallest inode number never handed out
//!  16     8  inodes      inode records that follow (inode.rs), in ascending
//!                        inode number order
//!  24     8  share_root  pfn of the share tree's root; 0: nothing shared
//!  32        the inode records, then a patch list (patch.rs)
//! ```
//!
//! Decoding checks what each record can check alone, that the records are
//! in order and the payload ends with the last one; `Meta::check_shape`
//! checks the rest.

use std::collections::BTreeMap;

use super::patch::{self, Patch};
use super::{inode, put_u32, put_u64, Decode, Reader};
use crate::meta::Meta;

pub const MAGIC: u32 = u32::from_le_bytes(*b"META");
/// Bytes of the header.
pub const HEADER_BYTES: usize = 32;

/// The whole payload in one buffer (tests; checkpoints use [`encode_each`]).
#[cfg(test)]
pub fn encode(m: &Meta, patches: &[Patch]) -> Decode<Vec<u8>> {
    let mut out = Vec::new();
    encode_each(m, patches, |b| out.extend_from_slice(b))?;
    Ok(out)
}

/// Encodes `m` and `patches` a record at a time into `sink`, so that a
/// checkpoint is written (or measured) without the whole payload in
/// memory.
pub fn encode_each(m: &Meta, patches: &[Patch], mut sink: impl FnMut(&[u8])) -> Decode<()> {
    let mut out = Vec::with_capacity(4096);
    put_u32(&mut out, MAGIC);
    put_u32(&mut out, 0);
    put_u64(&mut out, m.next_ino);
    put_u64(&mut out, m.inodes.len() as u64);
    put_u64(&mut out, m.share_root);
    sink(&out);
    for (&ino, i) in &m.inodes {
        out.clear();
        inode::encode(ino, i, &mut out)?;
        sink(&out);
    }
    out.clear();
    patch::encode(patches, &mut out)?;
    sink(&out);
    Ok(())
}

/// A payload in one buffer (tests; checkpoints use [`decode_pieces`]).
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Decode<(Meta, Vec<Patch>)> {
    decode_pieces(vec![bytes])
}

/// Decodes a payload that lies in `pieces`, one after another (the pages
/// of a checkpoint's chain).
pub fn decode_pieces(pieces: Vec<&[u8]>) -> Decode<(Meta, Vec<Patch>)> {
    let mut r = Reader::pieces(pieces);
    if r.u32("metadata header")? != MAGIC {
        return Err("the metadata does not start with \"META\"".into());
    }
    if r.u32("metadata header")? != 0 {
        return Err("the metadata header's reserved field is not zero".into());
    }
    let next_ino = r.u64("metadata header")?;
    let inodes = r.u64("metadata header")?;
    let share_root = r.u64("metadata header")?;
    let n = r.count(inodes, inode::FIXED_BYTES, "inodes")?;
    let mut m = Meta {
        next_ino,
        inodes: BTreeMap::new(),
        share_root,
    };
    for _ in 0..n {
        let (ino, i) = inode::decode(&mut r)?;
        if m.inodes.last_key_value().is_some_and(|(&k, _)| k >= ino) {
            return Err(format!("inode {ino} is out of order"));
        }
        m.inodes.insert(ino, i);
    }
    let patches = patch::decode_list(&mut r)?;
    r.finish("metadata")?;
    Ok((m, patches))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Attr, Kind, NewBody, Op, Time, ROOT_INO};

    fn sample() -> Meta {
        // The page maps' changes go to pages of their own, which the
        // encoding does not read: one inline run each, or a tree's root.
        let mut mem = crate::btree::mem::Mem::default();
        let mut m = Meta::new(1000, 1000, Time { secs: 5, nsecs: 6 }, &mut mem).unwrap();
        for (i, kind) in [Kind::File, Kind::File, Kind::Symlink, Kind::Fifo]
            .into_iter()
            .enumerate()
        {
            let ino = m.next_ino;
            let body = match kind {
                Kind::File => NewBody::File,
                Kind::Symlink => NewBody::Symlink(b"a".to_vec()),
                _ => NewBody::Special,
            };
            m.apply(&Op::Create {
                ino,
                attr: Attr::new(kind, 0o600, 1, 2, Time::default()),
                body,
            })
            .unwrap();
            m.execute(
                &Op::Link {
                    dir: ROOT_INO,
                    name: format!("n{i}").into_bytes(),
                    ino,
                },
                &mut mem,
            )
            .unwrap();
        }
        m.execute(
            &Op::Map {
                ino: 3,
                index: 0,
                pfn: 500,
                len: 4,
            },
            &mut mem,
        )
        .unwrap();
        m.execute(
            &Op::Clone {
                src: 3,
                src_index: 1,
                dst: 4,
                dst_index: 9,
                len: 2,
            },
            &mut mem,
        )
        .unwrap();
        m.apply(&Op::SetXattr {
            ino: 3,
            name: b"user.x".to_vec(),
            value: vec![1, 2, 3],
        })
        .unwrap();
        m
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let bytes = encode(&m, &[]).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (m.clone(), vec![]));
        m.check_shape().unwrap();
        let p = vec![Patch {
            pfn: 9,
            off: 1,
            bytes: vec![2, 3],
        }];
        let bytes = encode(&m, &p).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (m, p));
    }

    #[test]
    fn fixed_bytes_of_a_new_file_system() {
        let mut m = Meta::new(
            0,
            0,
            Time::default(),
            &mut crate::btree::mem::Mem::default(),
        )
        .unwrap();
        m.share_root = 0x0102;
        let bytes = encode(&m, &[]).unwrap();
        assert_eq!(
            bytes[..HEADER_BYTES],
            [
                b'M', b'E', b'T', b'A', 0, 0, 0, 0, // magic, reserved
                3, 0, 0, 0, 0, 0, 0, 0, // next_ino
                2, 0, 0, 0, 0, 0, 0, 0, // two inodes
                2, 1, 0, 0, 0, 0, 0, 0, // share_root
            ]
        );
        // The root (its entries' tree holds lost+found) and lost+found,
        // then no patches.
        let root = inode::FIXED_BYTES + super::super::dir::BYTES;
        assert_eq!(bytes.len(), HEADER_BYTES + root + inode::FIXED_BYTES + 4);
        assert_eq!(bytes[bytes.len() - 4..], [0, 0, 0, 0]);
        assert_eq!(
            bytes[HEADER_BYTES..HEADER_BYTES + 8],
            [1, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(
            bytes[HEADER_BYTES + root..HEADER_BYTES + root + 8],
            [2, 0, 0, 0, 0, 0, 0, 0]
        );
    }

    #[test]
    fn decodes_from_pieces() {
        let m = sample();
        let bytes = encode(&m, &[]).unwrap();
        let pieces: Vec<&[u8]> = bytes.chunks(7).collect();
        assert_eq!(decode_pieces(pieces).unwrap().0, m);
    }

    #[test]
    fn damage_is_refused() {
        let bytes = encode(&sample(), &[]).unwrap();
        super::super::assert_refuses_damage(&bytes, decode);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().contains("META"));
        let mut bad = bytes;
        bad[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode(&bad).unwrap_err().contains("cannot fit"));
    }
}
