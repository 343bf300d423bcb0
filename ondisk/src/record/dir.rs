//! A directory's entries as an inode (in a checkpoint) or a `SetDir` op
//! holds them: the root of their tree and how many there are.
//!
//! ```text
//! off  size  field
//!   0     8  root     pfn of the entries' tree's root (btree/); 0: none
//!   8     8  entries  entries in the tree (0 exactly when root is 0)
//! ```

use super::{put_u64, Decode, Reader};
use crate::dir::Dir;
use crate::meta::Ino;

pub const BYTES: usize = 16;

pub fn encode(d: &Dir, out: &mut Vec<u8>) {
    encode_parts(d.root(), d.len(), out);
}

/// The record of a tree at `root` of `entries` entries (a `SetDir` op's).
pub fn encode_parts(root: u64, entries: u64, out: &mut Vec<u8>) {
    put_u64(out, root);
    put_u64(out, entries);
}

/// The entries of directory `owner` (the owner its tree's nodes must name)
/// under `parent`.
pub fn decode(r: &mut Reader, owner: Ino, parent: Ino) -> Decode<Dir> {
    let (root, entries) = decode_parts(r)?;
    Dir::from_parts(owner, parent, root, entries)
}

/// A record's root and entries, checked against each other.
pub fn decode_parts(r: &mut Reader) -> Decode<(u64, u64)> {
    let root = r.u64("directory root")?;
    let entries = r.u64("directory entries")?;
    if (root == 0) != (entries == 0) {
        return Err(format!(
            "a directory of {entries} entries with tree root {root}"
        ));
    }
    Ok((root, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::mem::Mem;

    fn decode_all(b: &[u8]) -> Decode<Dir> {
        super::super::whole(b, |r| decode(r, 7, 1))
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let mut out = Vec::new();
        encode(&Dir::new(7, 1), &mut out);
        assert_eq!(out, [0; BYTES]);
        assert_eq!(decode_all(&out).unwrap(), Dir::new(7, 1));
        // The root at pfn 0x0102 (`Mem` hands out `next + 101` first).
        let mut mem = Mem {
            next: 0x0102 - 101,
            ..Mem::default()
        };
        let mut d = Dir::new(7, 1);
        d.insert(&mut mem, b"a", 9).unwrap();
        d.insert(&mut mem, b"b", 9).unwrap();
        let mut out = Vec::new();
        encode(&d, &mut out);
        assert_eq!(out, [0x02, 0x01, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(decode_all(&out).unwrap(), d);
    }

    #[test]
    fn damage_is_refused() {
        let b = [5, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0];
        assert!(decode_all(&b).is_ok());
        super::super::assert_refuses_damage(&b, decode_all);
        assert!(decode_all(&[5, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]).is_err());
        assert!(decode_all(&[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]).is_err());
    }
}
