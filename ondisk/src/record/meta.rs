//! A checkpoint's payload: the whole metadata, as a header, then one inode
//! record per inode, then the share counts.
//!
//! ```text
//! off  size  field
//!   0     4  magic     "META"
//!   4     4  reserved  zero
//!   8     8  next_ino  smallest inode number never handed out
//!  16     8  inodes    inode records that follow (inode.rs), in ascending
//!                      inode number order
//!  24     8  shares    share records after them (share.rs), in ascending
//!                      pfn order
//!  32        the records
//! ```
//!
//! Decoding checks what each record can check alone, that the records are
//! in order and the payload ends with the last one; `Meta::check_shape`
//! checks the rest.

use std::collections::BTreeMap;

use super::{inode, put_u32, put_u64, share, Decode, Reader};
use crate::meta::Meta;
use crate::rangemap::RangeMap;

pub const MAGIC: u32 = u32::from_le_bytes(*b"META");
/// Bytes of the header.
pub const HEADER_BYTES: usize = 32;

/// The whole payload in one buffer (tests; checkpoints use [`encode_each`]).
#[cfg(test)]
pub fn encode(m: &Meta) -> Decode<Vec<u8>> {
    let mut out = Vec::new();
    encode_each(m, |b| out.extend_from_slice(b))?;
    Ok(out)
}

/// Encodes `m` a record at a time into `sink`, so that a checkpoint is
/// written (or measured) without the whole payload in memory.
pub fn encode_each(m: &Meta, mut sink: impl FnMut(&[u8])) -> Decode<()> {
    let mut out = Vec::with_capacity(4096);
    put_u32(&mut out, MAGIC);
    put_u32(&mut out, 0);
    put_u64(&mut out, m.next_ino);
    put_u64(&mut out, m.inodes.len() as u64);
    put_u64(&mut out, m.shares.run_count() as u64);
    sink(&out);
    for (&ino, i) in &m.inodes {
        out.clear();
        inode::encode(ino, i, &mut out)?;
        sink(&out);
    }
    for r in m.shares.iter() {
        out.clear();
        share::encode(&r, &mut out);
        sink(&out);
    }
    Ok(())
}

/// A payload in one buffer (tests; checkpoints use [`decode_pieces`]).
#[cfg(test)]
pub fn decode(bytes: &[u8]) -> Decode<Meta> {
    decode_pieces(vec![bytes])
}

/// Decodes a payload that lies in `pieces`, one after another (the pages
/// of a checkpoint's chain).
pub fn decode_pieces(pieces: Vec<&[u8]>) -> Decode<Meta> {
    let mut r = Reader::pieces(pieces);
    if r.u32("metadata header")? != MAGIC {
        return Err("the metadata does not start with \"META\"".into());
    }
    if r.u32("metadata header")? != 0 {
        return Err("the metadata header's reserved field is not zero".into());
    }
    let next_ino = r.u64("metadata header")?;
    let inodes = r.u64("metadata header")?;
    let shares = r.u64("metadata header")?;
    let n = r.count(inodes, inode::FIXED_BYTES, "inodes")?;
    let mut m = Meta {
        next_ino,
        inodes: BTreeMap::new(),
        shares: RangeMap::new(),
    };
    for _ in 0..n {
        let (ino, i) = inode::decode(&mut r)?;
        if m.inodes.last_key_value().is_some_and(|(&k, _)| k >= ino) {
            return Err(format!("inode {ino} is out of order"));
        }
        m.inodes.insert(ino, i);
    }
    let n = r.count(shares, share::BYTES, "share runs")?;
    let runs = (0..n)
        .map(|_| share::decode(&mut r))
        .collect::<Decode<Vec<_>>>()?;
    m.shares = RangeMap::from_runs(runs).map_err(|e| format!("share counts: {e}"))?;
    r.finish("metadata")?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::{Attr, Kind, NewBody, Op, Time, ROOT_INO};

    fn sample() -> Meta {
        let mut m = Meta::new(1000, 1000, Time { secs: 5, nsecs: 6 });
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
            m.apply(&Op::Link {
                dir: ROOT_INO,
                name: format!("n{i}").into_bytes(),
                ino,
            })
            .unwrap();
        }
        m.apply(&Op::Map {
            ino: 3,
            index: 0,
            pfn: 500,
            len: 4,
        })
        .unwrap();
        m.apply(&Op::Clone {
            src: 3,
            src_index: 1,
            dst: 4,
            dst_index: 9,
            len: 2,
        })
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
        let bytes = encode(&m).unwrap();
        assert_eq!(decode(&bytes).unwrap(), m);
        m.check_shape().unwrap();
    }

    #[test]
    fn fixed_bytes_of_a_new_file_system() {
        let m = Meta::new(0, 0, Time::default());
        let bytes = encode(&m).unwrap();
        assert_eq!(
            bytes[..HEADER_BYTES],
            [
                b'M', b'E', b'T', b'A', 0, 0, 0, 0, // magic, reserved
                3, 0, 0, 0, 0, 0, 0, 0, // next_ino
                2, 0, 0, 0, 0, 0, 0, 0, // two inodes
                0, 0, 0, 0, 0, 0, 0, 0, // no shares
            ]
        );
        // The root (entry lost+found) and lost+found, nothing after.
        let root = inode::FIXED_BYTES + 10 + b"lost+found".len();
        assert_eq!(bytes.len(), HEADER_BYTES + root + inode::FIXED_BYTES);
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
        let bytes = encode(&m).unwrap();
        let pieces: Vec<&[u8]> = bytes.chunks(7).collect();
        assert_eq!(decode_pieces(pieces).unwrap(), m);
    }

    #[test]
    fn damage_is_refused() {
        let bytes = encode(&sample()).unwrap();
        super::super::assert_refuses_damage(&bytes, decode);
        let mut bad = bytes.clone();
        bad[0] = b'X';
        assert!(decode(&bad).unwrap_err().contains("META"));
        let mut bad = bytes;
        bad[16..24].copy_from_slice(&(1u64 << 40).to_le_bytes());
        assert!(decode(&bad).unwrap_err().contains("cannot fit"));
    }
}
