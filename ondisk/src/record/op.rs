//! A journal entry's payload: a count, then that many op records, each a
//! tag byte and the op's fields. All numbers are u64 unless said.
//!
//! ```text
//! payload: count u32, then the op records
//!
//! tag  op           fields after the tag
//!   0  Create       ino, attr (attr.rs, 80 bytes), body u8 (0 file,
//!                   1 directory, 2 symlink, 3 special), parent (directory;
//!                   else 0), target_len u32 (symlink; else 0), target bytes
//!   1  SetAttr      ino, attr
//!   2  Link         dir, then a directory entry (dirent.rs: ino,
//!                   name_len u16, name)
//!   3  Unlink       dir, name_len u16, name
//!   4  Delete       ino
//!   5  Map          ino, then an extent (extent.rs: index, pfn, len)
//!   6  Unmap        ino, index, len
//!   7  Clone        src, src_index, dst, dst_index, len
//!   8  SetXattr     ino, then an xattr (xattr.rs: name_len u16,
//!                   value_len u32, name, value)
//!   9  RemoveXattr  ino, name_len u16, name
//!  10  SetParent    dir, parent
//!  11  SetShareRoot root (pfn of the share tree's root, 0 for none)
//!  12  SetFileMap   ino, then a page map (filemap.rs: root, runs, pages,
//!                   inline run)
//!  13  SetDir       dir, then a directory record (dir.rs: root, entries)
//! ```
//!
//! Tags 2, 3 and 5 to 7 (`Link`, `Unlink`, `Map`, `Unmap`, `Clone`) are
//! what the file system asks a commit for; a journal records their
//! outcome as tags 13 and 12 and the entry's patches, and replay refuses
//! them.
//!
//! Tags are never renumbered or reused; a new op takes the next one.

use super::{attr, dir, dirent, extent, filemap, len_u32, put_u32, put_u64, xattr, Decode, Reader};
use crate::meta::{NewBody, Op};
use crate::rangemap::Run;

/// Bytes of the smallest op record (`Delete`).
const MIN_OP_BYTES: usize = 9;

pub fn encode<'a, I>(ops: I) -> Decode<Vec<u8>>
where
    I: IntoIterator<Item = &'a Op>,
    I::IntoIter: ExactSizeIterator,
{
    let ops = ops.into_iter();
    // Most ops are under 128 bytes (an inode's attributes and a name):
    // one allocation for a commit's few.
    let mut out = Vec::with_capacity(4 + 128 * ops.len());
    put_u32(&mut out, len_u32(ops.len(), "a transaction")?);
    for op in ops {
        encode_op(op, &mut out)?;
    }
    Ok(out)
}

fn encode_op(op: &Op, out: &mut Vec<u8>) -> Decode<()> {
    match op {
        Op::Create { ino, attr: a, body } => {
            out.push(0);
            put_u64(out, *ino);
            attr::encode(a, out);
            let (tag, parent, target): (u8, u64, &[u8]) = match body {
                NewBody::File => (0, 0, &[]),
                NewBody::Dir { parent } => (1, *parent, &[]),
                NewBody::Symlink(t) => (2, 0, t),
                NewBody::Special => (3, 0, &[]),
            };
            out.push(tag);
            put_u64(out, parent);
            put_u32(out, len_u32(target.len(), "a symlink target")?);
            out.extend_from_slice(target);
        }
        Op::SetAttr { ino, attr: a } => {
            out.push(1);
            put_u64(out, *ino);
            attr::encode(a, out);
        }
        Op::Link { dir, name, ino } => {
            out.push(2);
            put_u64(out, *dir);
            dirent::encode(*ino, name, out)?;
        }
        Op::Unlink { dir, name } => {
            out.push(3);
            put_u64(out, *dir);
            dirent::encode_name(name, out)?;
        }
        Op::Delete { ino } => {
            out.push(4);
            put_u64(out, *ino);
        }
        Op::Map {
            ino,
            index,
            pfn,
            len,
        } => {
            out.push(5);
            put_u64(out, *ino);
            extent::encode(
                &Run {
                    start: *index,
                    len: *len,
                    value: *pfn,
                },
                out,
            );
        }
        Op::Unmap { ino, index, len } => {
            out.push(6);
            for v in [ino, index, len] {
                put_u64(out, *v);
            }
        }
        Op::Clone {
            src,
            src_index,
            dst,
            dst_index,
            len,
        } => {
            out.push(7);
            for v in [src, src_index, dst, dst_index, len] {
                put_u64(out, *v);
            }
        }
        Op::SetXattr { ino, name, value } => {
            out.push(8);
            put_u64(out, *ino);
            xattr::encode(name, value, out)?;
        }
        Op::RemoveXattr { ino, name } => {
            out.push(9);
            put_u64(out, *ino);
            dirent::encode_name(name, out)?;
        }
        Op::SetParent { dir, parent } => {
            out.push(10);
            put_u64(out, *dir);
            put_u64(out, *parent);
        }
        Op::SetShareRoot { root } => {
            out.push(11);
            put_u64(out, *root);
        }
        Op::SetFileMap { ino, map } => {
            out.push(12);
            put_u64(out, *ino);
            filemap::encode(map, out);
        }
        Op::SetDir {
            dir: d,
            root,
            entries,
        } => {
            out.push(13);
            put_u64(out, *d);
            dir::encode_parts(*root, *entries, out);
        }
    }
    Ok(())
}

/// A whole payload of ops, nothing after them.
pub fn decode(bytes: &[u8]) -> Decode<Vec<Op>> {
    let mut r = Reader::new(bytes);
    let ops = decode_list(&mut r)?;
    r.finish("transaction")?;
    Ok(ops)
}

/// The count and the op records, from where `r` stands.
pub fn decode_list(r: &mut Reader) -> Decode<Vec<Op>> {
    let n = r.u32("op count")?;
    let n = r.count(u64::from(n), MIN_OP_BYTES, "ops")?;
    (0..n)
        .map(|i| decode_op(r).map_err(|e| format!("op {i}: {e}")))
        .collect()
}

fn decode_op(r: &mut Reader) -> Decode<Op> {
    let tag = r.u8("op tag")?;
    Ok(match tag {
        0 => {
            let ino = r.u64("ino")?;
            let a = attr::decode(r)?;
            let body = r.u8("body")?;
            let parent = r.u64("parent")?;
            let len = r.u32("target length")?;
            let target = r.take(len as usize, "target")?.to_vec();
            if (body != 1 && parent != 0) || (body != 2 && !target.is_empty()) {
                return Err(format!("create of body {body} with a parent or a target"));
            }
            let body = match body {
                0 => NewBody::File,
                1 => NewBody::Dir { parent },
                2 => NewBody::Symlink(target),
                3 => NewBody::Special,
                b => return Err(format!("unknown body {b}")),
            };
            Op::Create { ino, attr: a, body }
        }
        1 => Op::SetAttr {
            ino: r.u64("ino")?,
            attr: attr::decode(r)?,
        },
        2 => {
            let dir = r.u64("dir")?;
            let (ino, name) = dirent::decode(r)?;
            Op::Link { dir, name, ino }
        }
        3 => Op::Unlink {
            dir: r.u64("dir")?,
            name: dirent::name(r)?,
        },
        4 => Op::Delete { ino: r.u64("ino")? },
        5 => {
            let ino = r.u64("ino")?;
            let e = extent::decode(r)?;
            Op::Map {
                ino,
                index: e.start,
                pfn: e.value,
                len: e.len,
            }
        }
        6 => Op::Unmap {
            ino: r.u64("ino")?,
            index: r.u64("index")?,
            len: r.u64("len")?,
        },
        7 => Op::Clone {
            src: r.u64("src")?,
            src_index: r.u64("src_index")?,
            dst: r.u64("dst")?,
            dst_index: r.u64("dst_index")?,
            len: r.u64("len")?,
        },
        8 => {
            let ino = r.u64("ino")?;
            let (name, value) = xattr::decode(r)?;
            Op::SetXattr { ino, name, value }
        }
        9 => Op::RemoveXattr {
            ino: r.u64("ino")?,
            name: dirent::name(r)?,
        },
        10 => Op::SetParent {
            dir: r.u64("dir")?,
            parent: r.u64("parent")?,
        },
        11 => Op::SetShareRoot {
            root: r.u64("share root")?,
        },
        12 => {
            let ino = r.u64("ino")?;
            Op::SetFileMap {
                ino,
                map: filemap::decode(r, ino)?,
            }
        }
        13 => {
            let d = r.u64("dir")?;
            let (root, entries) = dir::decode_parts(r)?;
            Op::SetDir {
                dir: d,
                root,
                entries,
            }
        }
        t => return Err(format!("unknown op tag {t}")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filemap::FileMap;
    use crate::meta::{Attr, Kind, Time};

    /// One op of every kind.
    fn every_op() -> Vec<Op> {
        let a = Attr::new(Kind::File, 0o644, 1, 2, Time { secs: 3, nsecs: 4 });
        let d = Attr::new(Kind::Dir, 0o755, 1, 2, Time::default());
        let l = Attr::new(Kind::Symlink, 0o777, 0, 0, Time::default());
        let f = Attr::new(Kind::Fifo, 0o600, 0, 0, Time::default());
        vec![
            Op::Create {
                ino: 3,
                attr: a,
                body: NewBody::File,
            },
            Op::Create {
                ino: 4,
                attr: d,
                body: NewBody::Dir { parent: 1 },
            },
            Op::Create {
                ino: 5,
                attr: l,
                body: NewBody::Symlink(b"t".to_vec()),
            },
            Op::Create {
                ino: 6,
                attr: f,
                body: NewBody::Special,
            },
            Op::SetAttr { ino: 3, attr: a },
            Op::Link {
                dir: 1,
                name: b"f".to_vec(),
                ino: 3,
            },
            Op::Unlink {
                dir: 1,
                name: b"f".to_vec(),
            },
            Op::Delete { ino: 3 },
            Op::Map {
                ino: 3,
                index: 1,
                pfn: 2,
                len: 3,
            },
            Op::Unmap {
                ino: 3,
                index: 0,
                len: u64::MAX,
            },
            Op::Clone {
                src: 3,
                src_index: 1,
                dst: 4,
                dst_index: 2,
                len: 5,
            },
            Op::SetXattr {
                ino: 3,
                name: b"user.k".to_vec(),
                value: vec![0, 1],
            },
            Op::RemoveXattr {
                ino: 3,
                name: b"user.k".to_vec(),
            },
            Op::SetParent { dir: 4, parent: 1 },
            Op::SetShareRoot { root: 0x0102 },
            Op::SetFileMap {
                ino: 3,
                map: FileMap::default(),
            },
            Op::SetDir {
                dir: 4,
                root: 0x0102,
                entries: 7,
            },
        ]
    }

    #[test]
    fn round_trip() {
        let ops = every_op();
        assert_eq!(decode(&encode(&ops).unwrap()).unwrap(), ops);
        assert_eq!(decode(&encode(&[]).unwrap()).unwrap(), vec![]);
    }

    #[test]
    fn fixed_bytes() {
        let ops = [
            Op::Delete { ino: 0x0102 },
            Op::Unlink {
                dir: 1,
                name: b"ab".to_vec(),
            },
            Op::Map {
                ino: 3,
                index: 4,
                pfn: 5,
                len: 6,
            },
        ];
        let mut want = vec![3, 0, 0, 0];
        want.extend_from_slice(&[4, 0x02, 0x01, 0, 0, 0, 0, 0, 0]);
        want.extend_from_slice(&[3, 1, 0, 0, 0, 0, 0, 0, 0, 2, 0, b'a', b'b']);
        want.push(5);
        for v in [3u64, 4, 5, 6] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        assert_eq!(encode(&ops).unwrap(), want);
        // A Create: tag, ino, attr, body, parent, target length, target.
        let a = Attr::new(Kind::Symlink, 0o777, 0, 0, Time::default());
        let bytes = encode(&[Op::Create {
            ino: 9,
            attr: a,
            body: NewBody::Symlink(b"xy".to_vec()),
        }])
        .unwrap();
        let mut attr_bytes = Vec::new();
        attr::encode(&a, &mut attr_bytes);
        let mut want = vec![1, 0, 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&attr_bytes);
        want.extend_from_slice(&[2, 0, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0, b'x', b'y']);
        assert_eq!(bytes, want);
        let bytes = encode(&[Op::SetShareRoot { root: 0x0102 }]).unwrap();
        assert_eq!(bytes, [1, 0, 0, 0, 11, 2, 1, 0, 0, 0, 0, 0, 0]);
        // A SetFileMap: tag, ino, the map record (filemap.rs).
        let bytes = encode(&[Op::SetFileMap {
            ino: 5,
            map: FileMap::default(),
        }])
        .unwrap();
        let mut want = vec![1, 0, 0, 0, 12, 5, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[0; filemap::BYTES]);
        assert_eq!(bytes, want);
        // A SetDir: tag, dir, the directory record (dir.rs).
        let bytes = encode(&[Op::SetDir {
            dir: 5,
            root: 0x0102,
            entries: 3,
        }])
        .unwrap();
        let mut want = vec![1, 0, 0, 0, 13, 5, 0, 0, 0, 0, 0, 0, 0];
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(bytes, want);
        let mut bad = bytes.clone();
        bad[21] = 0;
        bad[22] = 0;
        assert!(decode(&bad).unwrap_err().contains("entries"));
    }

    #[test]
    fn damage_is_refused() {
        let bytes = encode(&every_op()).unwrap();
        super::super::assert_refuses_damage(&bytes, decode);
        let mut bad = encode(&[Op::Delete { ino: 1 }]).unwrap();
        bad[4] = 14;
        assert!(decode(&bad).unwrap_err().contains("unknown op tag 14"));
        let mut bad = encode(&[Op::Delete { ino: 1 }]).unwrap();
        bad[0] = 0xff;
        assert!(decode(&bad).unwrap_err().contains("cannot fit"));
    }
}
