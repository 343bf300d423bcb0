//! An inode's slot in the inode table (docs/format.md §7, format version
//! 3; not used by images yet): 128 bytes, 32 to a page.
//!
//! ```text
//! off  size  field
//!   0    80  attr      (attr.rs)
//!  80     8  parent    a directory's parent (the root's is itself); else 0
//!  88     8  xattrs    first page of the inode's xattr records; 0: none
//!  96     1  used      1: the slot holds an inode; 0: free, every byte zero
//!  97     1  body      0 none, 1 tree, 2 one extent, 3 inline target,
//!                      4 target page
//!  98     2  body_len  bytes of the symlink target (inline: at most 24)
//! 100     4  reserved  zero
//! 104    24  body      tree: root pfn u64, records u64, 8 zero bytes;
//!                      one extent: the extent record (extent.rs);
//!                      inline target: its bytes, zero padded;
//!                      target page: pfn u64, 16 zero bytes
//! ```
//!
//! Which bodies a kind may have: a file none, a tree (page map) or one
//! extent; a directory none or a tree (entries); a symlink an inline
//! target or a target page; fifos, sockets and devices none.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{attr, extent, Decode, Reader};
use crate::meta::{Attr, Ino, Kind};
use crate::rangemap::Run;

pub const BYTES: usize = 128;
/// Slots in a page of the table.
pub const PER_PAGE: u64 = 32;
/// The longest symlink target kept in the slot itself.
pub const INLINE_TARGET: usize = 24;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawTail {
    parent: U64,
    xattrs: U64,
    used: u8,
    body: u8,
    body_len: U16,
    reserved: U32,
    a: U64,
    b: U64,
    c: U64,
}

const _: () = assert!(attr::ATTR_BYTES + std::mem::size_of::<RawTail>() == BYTES);

/// What the slot says of the inode's body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SlotBody {
    None,
    /// A page map's or a directory's tree and its record count.
    Tree {
        root: u64,
        records: u64,
    },
    /// A file whose page map is one run.
    Extent(Run<u64>),
    Inline(Vec<u8>),
    TargetPage {
        pfn: u64,
        len: u16,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slot {
    pub attr: Attr,
    pub parent: Ino,
    pub xattrs: u64,
    pub body: SlotBody,
}

/// The bytes of a slot; `None` is a free one.
pub fn encode(s: Option<&Slot>) -> Decode<[u8; BYTES]> {
    let mut out = [0u8; BYTES];
    let Some(s) = s else { return Ok(out) };
    let mut a = Vec::with_capacity(attr::ATTR_BYTES);
    attr::encode(&s.attr, &mut a);
    out[..attr::ATTR_BYTES].copy_from_slice(&a);
    let mut tail = RawTail {
        parent: s.parent.into(),
        xattrs: s.xattrs.into(),
        used: 1,
        body: 0,
        body_len: 0.into(),
        reserved: 0.into(),
        a: 0.into(),
        b: 0.into(),
        c: 0.into(),
    };
    let mut inline = [0u8; INLINE_TARGET];
    match &s.body {
        SlotBody::None => {}
        SlotBody::Tree { root, records } => {
            tail.body = 1;
            tail.a = (*root).into();
            tail.b = (*records).into();
        }
        SlotBody::Extent(r) => {
            tail.body = 2;
            let mut e = Vec::with_capacity(extent::BYTES);
            extent::encode(r, &mut e);
            inline.copy_from_slice(&e);
        }
        SlotBody::Inline(t) => {
            if t.len() > INLINE_TARGET {
                return Err(format!("an inline target of {} bytes", t.len()));
            }
            tail.body = 3;
            tail.body_len = (t.len() as u16).into();
            inline[..t.len()].copy_from_slice(t);
        }
        SlotBody::TargetPage { pfn, len } => {
            tail.body = 4;
            tail.body_len = (*len).into();
            tail.a = (*pfn).into();
        }
    }
    out[attr::ATTR_BYTES..].copy_from_slice(tail.as_bytes());
    if matches!(s.body, SlotBody::Extent(_) | SlotBody::Inline(_)) {
        out[104..].copy_from_slice(&inline);
    }
    check(s)?;
    Ok(out)
}

/// Which bodies each kind may have, and what a directory needs.
fn check(s: &Slot) -> Decode<()> {
    let fits = match (s.attr.kind, &s.body) {
        (Kind::File, SlotBody::None | SlotBody::Tree { .. } | SlotBody::Extent(_)) => true,
        (Kind::Dir, SlotBody::None | SlotBody::Tree { .. }) => true,
        (Kind::Symlink, SlotBody::Inline(_)) => true,
        (Kind::Symlink, SlotBody::TargetPage { len, .. }) => usize::from(*len) > INLINE_TARGET,
        (Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev, SlotBody::None) => true,
        _ => false,
    };
    if !fits {
        return Err(format!("a {:?} inode with body {:?}", s.attr.kind, s.body));
    }
    if (s.attr.kind == Kind::Dir) != (s.parent != 0) {
        return Err(format!(
            "a {:?} inode with parent {}",
            s.attr.kind, s.parent
        ));
    }
    if let SlotBody::Tree { root: 0, .. } | SlotBody::TargetPage { pfn: 0, .. } = s.body {
        return Err("a body at pfn 0".into());
    }
    Ok(())
}

pub fn decode(b: &[u8; BYTES]) -> Decode<Option<Slot>> {
    let mut r = Reader::new(b);
    if b[96] == 0 {
        if b.iter().any(|&x| x != 0) {
            return Err("a free inode slot that is not all zero".into());
        }
        return Ok(None);
    }
    let attr = attr::decode(&mut r)?;
    let t: RawTail = r.fixed("inode slot")?;
    if t.used != 1 || t.reserved.get() != 0 {
        return Err(format!(
            "inode slot: used byte {}, reserved {}",
            t.used,
            t.reserved.get()
        ));
    }
    let len = t.body_len.get();
    let zero_after = |from: usize| b[from..].iter().all(|&x| x == 0);
    let body = match t.body {
        0 if len == 0 && zero_after(104) => SlotBody::None,
        1 if len == 0 && t.c.get() == 0 => SlotBody::Tree {
            root: t.a.get(),
            records: t.b.get(),
        },
        2 if len == 0 => SlotBody::Extent(extent::decode(&mut Reader::new(&b[104..]))?),
        3 if usize::from(len) <= INLINE_TARGET && zero_after(104 + usize::from(len)) => {
            SlotBody::Inline(b[104..104 + usize::from(len)].to_vec())
        }
        4 if len < 4096 && zero_after(112) => SlotBody::TargetPage {
            pfn: t.a.get(),
            len,
        },
        _ => {
            return Err(format!(
                "inode slot: body type {} with length {len}",
                t.body
            ))
        }
    };
    let s = Slot {
        attr,
        parent: t.parent.get(),
        xattrs: t.xattrs.get(),
        body,
    };
    check(&s)?;
    Ok(Some(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir() -> Slot {
        let mut attr = attr::sample();
        attr.kind = Kind::Dir;
        Slot {
            attr,
            parent: 1,
            xattrs: 0x77,
            body: SlotBody::Tree {
                root: 0x1234,
                records: 3,
            },
        }
    }

    fn samples() -> Vec<Slot> {
        let mut file = dir();
        file.attr.kind = Kind::File;
        file.parent = 0;
        let mut one = file.clone();
        one.body = SlotBody::Extent(Run {
            start: 4,
            len: 2,
            value: 99,
        });
        let mut link = file.clone();
        link.attr.kind = Kind::Symlink;
        link.body = SlotBody::Inline(b"../target".to_vec());
        let mut long = link.clone();
        long.body = SlotBody::TargetPage { pfn: 5, len: 300 };
        let mut fifo = file.clone();
        fifo.attr.kind = Kind::Fifo;
        fifo.body = SlotBody::None;
        vec![dir(), file, one, link, long, fifo]
    }

    #[test]
    fn round_trips() {
        for s in samples() {
            let b = encode(Some(&s)).unwrap();
            assert_eq!(decode(&b).unwrap(), Some(s));
        }
        assert_eq!(decode(&encode(None).unwrap()).unwrap(), None);
    }

    #[test]
    fn fixed_bytes() {
        let b = encode(Some(&dir())).unwrap();
        let mut a = Vec::new();
        attr::encode(&dir().attr, &mut a);
        assert_eq!(&b[..80], &a[..]);
        let tail: [u8; 48] = [
            1, 0, 0, 0, 0, 0, 0, 0, // parent
            0x77, 0, 0, 0, 0, 0, 0, 0, // xattrs
            1, 1, 0, 0, 0, 0, 0, 0, // used, tree, body_len, reserved
            0x34, 0x12, 0, 0, 0, 0, 0, 0, // root
            3, 0, 0, 0, 0, 0, 0, 0, // records
            0, 0, 0, 0, 0, 0, 0, 0,
        ];
        assert_eq!(&b[80..], &tail);
        let mut link = samples()[3].clone();
        link.parent = 0;
        let b = encode(Some(&link)).unwrap();
        assert_eq!(&b[96..100], &[1, 3, 9, 0]);
        assert_eq!(&b[104..113], b"../target");
        assert!(b[113..].iter().all(|&x| x == 0));
    }

    #[test]
    fn damage_is_refused() {
        for s in samples() {
            let b = encode(Some(&s)).unwrap();
            for i in 0..BYTES {
                for flip in [0x01u8, 0x80] {
                    let mut d = b;
                    d[i] ^= flip;
                    // Anything may decode but a panic; a used slot whose
                    // used byte is cleared is refused.
                    let got = decode(&d);
                    if i == 96 && flip == 0x01 {
                        assert!(got.is_err());
                    }
                }
            }
        }
        let mut d = encode(Some(&dir())).unwrap();
        d[80] = 0;
        assert!(
            decode(&d).unwrap_err().contains("parent"),
            "a directory without a parent"
        );
        let mut d = encode(None).unwrap();
        d[5] = 1;
        assert!(decode(&d).is_err(), "a free slot with bytes in it");
        let mut s = dir();
        s.body = SlotBody::Inline(b"x".to_vec());
        assert!(encode(Some(&s)).is_err(), "a directory with a target");
        let mut s = samples()[3].clone();
        s.body = SlotBody::Inline(vec![b'x'; 25]);
        assert!(encode(Some(&s)).is_err(), "an inline target too long");
    }
}
