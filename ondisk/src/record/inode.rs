//! An inode in a checkpoint: its number and attributes, then its xattrs,
//! then its body.
//!
//! ```text
//! off  size  field
//!   0     8  ino
//!   8    80  attr      (attr.rs)
//!  88     4  xattrs    number of xattr records that follow (xattr.rs)
//!  92     4  reserved  zero
//!  96     8  count     file: 1 when a page map record (filemap.rs)
//!                      follows, 0 for an empty map; directory: 1 when a
//!                      directory record (dir.rs) follows, 0 for no
//!                      entries; symlink: bytes of the target; other
//!                      kinds: 0
//! 104     8  parent    directory: its parent (the root's is itself); else 0
//! 112        the xattr records, in ascending name order; then a file's
//!            page map record (filemap.rs), a directory's record
//!            (dir.rs: the root of its entries' tree), or the target's
//!            bytes
//! ```

use std::collections::BTreeMap;

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{attr, dir, filemap, len_u32, xattr, Decode, Reader};
use crate::dir::Dir;
use crate::filemap::FileMap;
use crate::meta::{Body, Ino, Inode, Kind};

/// Bytes of the fixed part.
pub const FIXED_BYTES: usize = 112;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawTail {
    xattrs: U32,
    reserved: U32,
    count: U64,
    parent: U64,
}

pub fn encode(ino: Ino, i: &Inode, out: &mut Vec<u8>) -> Decode<()> {
    out.extend_from_slice(&ino.to_le_bytes());
    attr::encode(&i.attr, out);
    let (count, parent) = match &i.body {
        Body::File(m) => (u64::from(!m.is_empty()), 0),
        Body::Dir(d) => (u64::from(!d.is_empty()), d.parent),
        Body::Symlink(t) => (u64::from(len_u32(t.len(), "a symlink target")?), 0),
        Body::Special => (0, 0),
    };
    let tail = RawTail {
        xattrs: len_u32(i.xattrs.len(), "an xattr list")?.into(),
        reserved: 0.into(),
        count: count.into(),
        parent: parent.into(),
    };
    out.extend_from_slice(tail.as_bytes());
    for (name, value) in &i.xattrs {
        xattr::encode(name, value, out)?;
    }
    match &i.body {
        Body::File(m) if m.is_empty() => {}
        Body::File(m) => filemap::encode(m, out),
        Body::Dir(d) if d.is_empty() => {}
        Body::Dir(d) => dir::encode(d, out),
        Body::Symlink(t) => out.extend_from_slice(t),
        Body::Special => {}
    }
    Ok(())
}

pub fn decode(r: &mut Reader) -> Decode<(Ino, Inode)> {
    let ino = r.u64("inode number")?;
    let attr = attr::decode(r).map_err(|e| format!("inode {ino}: {e}"))?;
    let tail: RawTail = r.fixed("inode record")?;
    let bad = |e: String| format!("inode {ino}: {e}");
    if tail.reserved.get() != 0 {
        return Err(bad("reserved field is not zero".into()));
    }
    let n = r.count(u64::from(tail.xattrs.get()), xattr::FIXED_BYTES, "xattrs")?;
    let mut xattrs = BTreeMap::new();
    for _ in 0..n {
        let (name, value) = xattr::decode(r).map_err(bad)?;
        if xattrs.last_key_value().is_some_and(|(k, _)| *k >= name) {
            return Err(bad("xattrs are not in ascending name order".into()));
        }
        xattrs.insert(name, value);
    }
    let count = tail.count.get();
    let parent = tail.parent.get();
    if attr.kind != Kind::Dir && parent != 0 {
        return Err(bad(format!("a {:?} with parent {parent}", attr.kind)));
    }
    let body = match attr.kind {
        Kind::File => match count {
            0 => Body::File(FileMap::new()),
            1 => {
                let m = filemap::decode(r, ino).map_err(bad)?;
                if m.is_empty() {
                    return Err(bad("an empty page map recorded".into()));
                }
                Body::File(m)
            }
            n => return Err(bad(format!("a file with a count of {n}"))),
        },
        Kind::Dir => match count {
            0 => Body::Dir(Dir::new(ino, parent)),
            1 => {
                let d = dir::decode(r, ino, parent).map_err(bad)?;
                if d.is_empty() {
                    return Err(bad("an empty directory recorded".into()));
                }
                Body::Dir(d)
            }
            n => return Err(bad(format!("a directory with a count of {n}"))),
        },
        Kind::Symlink => {
            let n = r.count(count, 1, "symlink target")?;
            Body::Symlink(r.take(n, "symlink target").map_err(bad)?.to_vec())
        }
        Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev => {
            if count != 0 {
                return Err(bad(format!("a {:?} with a body of {count}", attr.kind)));
            }
            Body::Special
        }
    };
    Ok((ino, Inode { attr, xattrs, body }))
}

/// A directory of inode `ino` with one entry, its tree at pfn 0x0102 (a
/// record names the root; its pages are not read here).
#[cfg(test)]
pub(crate) fn sample_dir(ino: Ino) -> Inode {
    let mut a = attr::sample();
    a.kind = Kind::Dir;
    Inode {
        attr: a,
        xattrs: BTreeMap::from([(b"user.a".to_vec(), b"1".to_vec())]),
        body: Body::Dir(Dir::from_parts(ino, 1, 0x0102, 1).expect("a valid directory")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::mem::Mem;
    use crate::meta::Time;
    use crate::rangemap::Run;

    fn decode_all(b: &[u8]) -> Decode<(Ino, Inode)> {
        super::super::whole(b, decode)
    }

    /// Inodes of each kind, for inode `ino`.
    fn inodes(ino: Ino) -> Vec<Inode> {
        let mut file = sample_dir(ino);
        file.attr.kind = Kind::File;
        file.xattrs.clear();
        // One run: inline, so that it decodes the same under any inode.
        let mut map = FileMap::new();
        let run = Run {
            start: 5,
            len: 2,
            value: 100,
        };
        map.replace(&mut Mem::default(), ino, 5, 2, &[run]).unwrap();
        file.body = Body::File(map);
        let mut link = file.clone();
        link.attr.kind = Kind::Symlink;
        link.body = Body::Symlink(b"../target".to_vec());
        let mut fifo = file.clone();
        fifo.attr.kind = Kind::Fifo;
        fifo.body = Body::Special;
        vec![sample_dir(ino), file, link, fifo]
    }

    #[test]
    fn round_trip() {
        for i in inodes(10) {
            let mut out = Vec::new();
            encode(10, &i, &mut out).unwrap();
            assert_eq!(decode_all(&out).unwrap(), (10, i));
        }
        // An empty directory is no record at all.
        let mut empty = inodes(10)[0].clone();
        empty.body = Body::Dir(Dir::new(10, 1));
        let mut out = Vec::new();
        encode(10, &empty, &mut out).unwrap();
        assert_eq!(out.len(), FIXED_BYTES + 13);
        assert_eq!(decode_all(&out).unwrap(), (10, empty));
    }

    #[test]
    fn fixed_bytes() {
        let mut i = sample_dir(2);
        i.attr = crate::meta::Attr::new(Kind::Dir, 0o755, 0, 0, Time::default());
        let mut out = Vec::new();
        encode(2, &i, &mut out).unwrap();
        let mut want = vec![2, 0, 0, 0, 0, 0, 0, 0];
        attr::encode(&i.attr, &mut want);
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // one xattr, reserved
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // a directory record
        want.extend_from_slice(&[1, 0, 0, 0, 0, 0, 0, 0]); // parent 1
        want.extend_from_slice(&[6, 0, 1, 0, 0, 0]);
        want.extend_from_slice(b"user.a1");
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(out, want);
        assert_eq!(out[..FIXED_BYTES].len(), 112);
    }

    #[test]
    fn damage_is_refused() {
        for i in inodes(1) {
            let mut out = Vec::new();
            encode(1, &i, &mut out).unwrap();
            super::super::assert_refuses_damage(&out, decode_all);
        }
        // A file with a count, and a directory with a huge one, are
        // refused.
        let mut out = Vec::new();
        encode(5, &inodes(5)[1], &mut out).unwrap();
        assert_eq!(out.len(), FIXED_BYTES + filemap::BYTES);
        out[96] = 2;
        assert!(decode_all(&out).unwrap_err().contains("count"));
        // An empty map is no record at all.
        let mut empty = inodes(5)[1].clone();
        empty.body = Body::File(FileMap::new());
        let mut out = Vec::new();
        encode(5, &empty, &mut out).unwrap();
        assert_eq!(out.len(), FIXED_BYTES);
        assert_eq!(decode_all(&out).unwrap(), (5, empty));
        let mut two = Vec::new();
        encode(5, &inodes(5)[0], &mut two).unwrap();
        two[96] = 2;
        assert!(decode_all(&two).unwrap_err().contains("count"));
        let mut symlink = Vec::new();
        encode(5, &inodes(5)[2], &mut symlink).unwrap();
        symlink[96..104].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_all(&symlink).unwrap_err().contains("cannot fit"));
    }
}
