//! A file's page map as an inode (in a checkpoint) or a `SetFileMap` op
//! holds it: the root of its extent tree, or its one run inline.
//!
//! ```text
//! off  size  field
//!   0     8  root   pfn of the extent tree's root (btree/); 0: inline
//!   8     8  runs   runs of the map (inline: 0 or 1; a tree: 2 or more)
//!  16     8  pages  pages mapped (the file's blocks)
//!  24    24  run    an inline map's run as an extent record (extent.rs);
//!                   24 zero bytes for an empty map or a tree
//! ```

use super::{extent, put_u64, Decode, Reader};
use crate::filemap::{FileMap, MapParts};
use crate::meta::Ino;

pub const BYTES: usize = 48;

pub fn encode(m: &FileMap, out: &mut Vec<u8>) {
    let p = m.parts();
    for v in [p.root, p.runs, p.pages] {
        put_u64(out, v);
    }
    match &p.inline {
        Some(r) => extent::encode(r, out),
        None => out.extend_from_slice(&[0; extent::BYTES]),
    }
}

/// The map of inode `owner` (the owner its tree's nodes must name).
pub fn decode(r: &mut Reader, owner: Ino) -> Decode<FileMap> {
    let root = r.u64("map root")?;
    let runs = r.u64("map runs")?;
    let pages = r.u64("map pages")?;
    let run = r.take(extent::BYTES, "map run")?;
    let inline = if run.iter().all(|&b| b == 0) {
        None
    } else {
        Some(extent::decode(&mut Reader::new(&run))?)
    };
    FileMap::from_parts(
        owner,
        MapParts {
            root,
            runs,
            pages,
            inline,
        },
    )
    .map_err(|e| format!("page map: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::mem::Mem;
    use crate::rangemap::Run;

    fn decode_all(b: &[u8]) -> Decode<FileMap> {
        super::super::whole(b, |r| decode(r, 7))
    }

    fn bytes(m: &FileMap) -> Vec<u8> {
        let mut out = Vec::new();
        encode(m, &mut out);
        assert_eq!(out.len(), BYTES);
        out
    }

    fn run(start: u64, len: u64, value: u64) -> Run<u64> {
        Run { start, len, value }
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let mut mem = Mem::default();
        let mut m = FileMap::new();
        assert_eq!(bytes(&m), [0; BYTES]);
        m.replace(&mut mem, 7, 1, 3, &[run(1, 3, 0x1000)]).unwrap();
        let b = bytes(&m);
        let mut want = vec![0u8; 8];
        want.extend_from_slice(&1u64.to_le_bytes());
        want.extend_from_slice(&3u64.to_le_bytes());
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b, want);
        assert_eq!(decode_all(&b).unwrap(), m);
        // Two runs: a tree, its root in the record and no run.
        m.replace(&mut mem, 7, 10, 1, &[run(10, 1, 0x2000)])
            .unwrap();
        let b = bytes(&m);
        let root = m.parts().root;
        assert_ne!(root, 0);
        assert_eq!(b[..8], root.to_le_bytes());
        assert_eq!(b[8..24], [2, 0, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(b[24..], [0; 24]);
        assert_eq!(decode_all(&b).unwrap(), m);
    }

    #[test]
    fn damage_is_refused() {
        let mut mem = Mem::default();
        let mut m = FileMap::new();
        m.replace(&mut mem, 7, 5, 2, &[run(5, 2, 9)]).unwrap();
        let b = bytes(&m);
        super::super::assert_refuses_damage(&b, decode_all);
        for (at, v) in [(8, 2u64), (16, 3), (0, 44)] {
            let mut d = b.clone();
            d[at..at + 8].copy_from_slice(&v.to_le_bytes());
            assert!(decode_all(&d).is_err(), "field at {at} = {v}");
        }
        let mut d = vec![0u8; BYTES];
        d[0] = 9;
        d[8] = 1;
        d[16] = 1;
        assert!(decode_all(&d).is_err(), "a tree of one run");
    }
}
