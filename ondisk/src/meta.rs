//! The metadata model: inodes, directories, page maps and share counts.
//!
//! A checkpoint is this model encoded whole; a journal entry is a list of
//! [`Op`]s that change it. Mount, fsck and the crash tests all rebuild the
//! state the same way, checkpoint then [`Meta::apply`] for each op, so what
//! an op means is written once, here.
//!
//! What lives in trees on the media is not here but for the trees' roots:
//! page maps of two or more runs (`filemap`), directory entries (`dir`)
//! and share counts (`shares`), changed in a commit's transaction. Share
//! counts change with the page maps. `apply` says which pfns an
//! op gave a reference and took one from ([`Refs`]); the image changes the
//! counts to match, and `share_root` records where the tree is.

use std::collections::BTreeMap;

use crate::btree::Pages;
use crate::dir::Dir;
use crate::error::{Corrupt, Result as MediaResult};
use crate::filemap::FileMap;
use crate::rangemap::{RangeMap, Run};

/// Inode number.
pub type Ino = u64;
/// The root directory.
pub const ROOT_INO: Ino = 1;
/// Longest name of a directory entry, in bytes.
pub const MAX_NAME: usize = 255;
/// Name of the directory fsck puts orphaned inodes in.
pub const LOST_FOUND: &[u8] = b"lost+found";

/// Stored enums only grow at the end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink,
    Fifo,
    Socket,
    CharDev,
    BlockDev,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Time {
    pub secs: i64,
    pub nsecs: u32,
}

/// Attributes of an inode, as stat(2) shows them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Attr {
    pub kind: Kind,
    /// Permission bits with setuid, setgid and sticky (mode & 0o7777).
    pub perm: u16,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub size: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub crtime: Time,
    pub rdev: u32,
    /// Inode flags ([`flag`]), with the values `chattr` uses.
    pub flags: u32,
}

/// The inode flags kept in [`Attr::flags`], numbered as Linux's `FS_*_FL`
/// (what `FS_IOC_GETFLAGS` returns). No other bit is ever set.
pub mod flag {
    /// `chattr +i`: no change at all, even by root.
    pub const IMMUTABLE: u32 = 0x10;
    /// `chattr +a`: only appends.
    pub const APPEND: u32 = 0x20;
    /// `chattr +d`: dump(8) skips it.
    pub const NODUMP: u32 = 0x40;
    /// `chattr +A`: reads leave the access time.
    pub const NOATIME: u32 = 0x80;
    /// Every flag pmemfs keeps.
    pub const KNOWN: u32 = IMMUTABLE | APPEND | NODUMP | NOATIME;
}

impl Attr {
    /// Attributes of a new inode: one link (two for a directory), size 0,
    /// all times `now`.
    pub fn new(kind: Kind, perm: u16, uid: u32, gid: u32, now: Time) -> Attr {
        Attr {
            kind,
            perm: perm & 0o7777,
            uid,
            gid,
            nlink: if kind == Kind::Dir { 2 } else { 1 },
            size: 0,
            atime: now,
            mtime: now,
            ctime: now,
            crtime: now,
            rdev: 0,
            flags: 0,
        }
    }
}

/// What an inode holds besides its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// Page index -> pfn. Pages not mapped are holes.
    File(FileMap),
    Dir(Dir),
    Symlink(Vec<u8>),
    /// Fifos, sockets and device nodes.
    Special,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inode {
    pub attr: Attr,
    pub xattrs: BTreeMap<Vec<u8>, Vec<u8>>,
    pub body: Body,
}

impl Inode {
    pub fn pages(&self) -> Option<&FileMap> {
        match &self.body {
            Body::File(m) => Some(m),
            _ => None,
        }
    }

    pub fn dir(&self) -> Option<&Dir> {
        match &self.body {
            Body::Dir(d) => Some(d),
            _ => None,
        }
    }
}

/// The body a new inode starts with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NewBody {
    File,
    Dir { parent: Ino },
    Symlink(Vec<u8>),
    Special,
}

/// One change to the metadata. A journal entry holds a list of them that
/// takes effect together. Variants only grow at the end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// A new inode; it has no names until `Link`.
    Create {
        ino: Ino,
        attr: Attr,
        body: NewBody,
    },
    /// Replaces the attributes (the kind must not change). Changing the size
    /// does not unmap pages: that is `Unmap`.
    SetAttr {
        ino: Ino,
        attr: Attr,
    },
    /// Names `ino` `name` in `dir`.
    Link {
        dir: Ino,
        name: Vec<u8>,
        ino: Ino,
    },
    Unlink {
        dir: Ino,
        name: Vec<u8>,
    },
    /// Removes an inode and drops its pages. A directory must be empty.
    Delete {
        ino: Ino,
    },
    /// Maps `len` pages at `index` to fresh pfns `pfn..pfn + len` (share
    /// count 0 before), dropping what was mapped there.
    Map {
        ino: Ino,
        index: u64,
        pfn: u64,
        len: u64,
    },
    /// Turns `len` pages at `index` into a hole.
    Unmap {
        ino: Ino,
        index: u64,
        len: u64,
    },
    /// Makes `dst` pages `dst_index..+len` share the pages (and holes) of
    /// `src` at `src_index`. Ranges of one file must not overlap.
    Clone {
        src: Ino,
        src_index: u64,
        dst: Ino,
        dst_index: u64,
        len: u64,
    },
    SetXattr {
        ino: Ino,
        name: Vec<u8>,
        value: Vec<u8>,
    },
    RemoveXattr {
        ino: Ino,
        name: Vec<u8>,
    },
    /// Records a directory's new parent after a rename.
    SetParent {
        dir: Ino,
        parent: Ino,
    },
    /// Records the share tree's new root (0: nothing shared), after a
    /// transaction's share-count changes moved it.
    SetShareRoot {
        root: u64,
    },
    /// Records a file's page map after a commit changed it: what the
    /// journal holds in place of `Map`, `Unmap` and `Clone`, whose changes
    /// to the map's tree are the entry's patches (`filemap`).
    SetFileMap {
        ino: Ino,
        map: FileMap,
    },
    /// Records a directory's entries (their tree's root and count) after a
    /// commit changed them: what the journal holds in place of `Link` and
    /// `Unlink`, whose changes to the tree are the entry's patches (`dir`).
    SetDir {
        dir: Ino,
        root: u64,
        entries: u64,
    },
}

/// What an op did to page references: pfn runs `(pfn, len)` that gained a
/// reference, and runs that lost one. The share counts take the gains
/// first, so that a clone over pages it shares frees nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Refs {
    pub added: Vec<(u64, u64)>,
    pub dropped: Vec<(u64, u64)>,
}

/// What undoes one op [`Meta::execute`] applied: what it changed, as it
/// was. A commit that cannot finish (no page for a tree node) undoes its
/// ops in reverse and changes nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Undo {
    /// A created inode goes, and `next_ino` is what it was.
    Create {
        ino: Ino,
        next_ino: Ino,
    },
    /// An inode comes back (a delete, or a changed page map or attributes).
    Inode {
        ino: Ino,
        inode: Box<Inode>,
    },
    Attr {
        ino: Ino,
        attr: Attr,
    },
    /// A directory's entries are what they were (its tree's pages are the
    /// failed transaction's, dropped with it).
    Entries {
        dir: Ino,
        was: Dir,
    },
    /// The op's xattr of `ino` is `value` again (`None`: none).
    Xattr {
        ino: Ino,
        value: Option<Vec<u8>>,
    },
    Parent {
        dir: Ino,
        parent: Ino,
    },
    Map {
        ino: Ino,
        map: FileMap,
    },
    ShareRoot(u64),
}

/// The whole metadata of a file system.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Meta {
    /// Smallest inode number never handed out.
    pub next_ino: Ino,
    pub inodes: BTreeMap<Ino, Inode>,
    /// Root pfn of the share tree on the media (`shares::ShareTree`); 0
    /// when no page is shared.
    pub share_root: u64,
}

/// Whether `name` may be a directory entry.
pub fn valid_name(name: &[u8]) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && name != b"."
        && name != b".."
        && !name.contains(&b'/')
        && !name.contains(&0)
}

impl Meta {
    /// A new file system: root directory and lost+found, owned by
    /// `uid`:`gid`; the root's entries are written through `pages`.
    pub fn new(uid: u32, gid: u32, now: Time, pages: &mut impl Pages) -> MediaResult<Meta> {
        let mut m = Meta {
            next_ino: ROOT_INO,
            ..Meta::default()
        };
        let root = m.next_ino;
        let lf = root + 1;
        let ops = [
            Op::Create {
                ino: root,
                attr: Attr::new(Kind::Dir, 0o755, uid, gid, now),
                body: NewBody::Dir { parent: root },
            },
            Op::Create {
                ino: lf,
                attr: Attr::new(Kind::Dir, 0o700, uid, gid, now),
                body: NewBody::Dir { parent: root },
            },
            Op::Link {
                dir: root,
                name: LOST_FOUND.to_vec(),
                ino: lf,
            },
        ];
        for op in &ops {
            m.execute(op, pages)?;
        }
        m.inode_mut(root)?.attr.nlink = 3;
        Ok(m)
    }

    pub fn get(&self, ino: Ino) -> Option<&Inode> {
        self.inodes.get(&ino)
    }

    /// The inode number of lost+found, if the root has one.
    pub fn lost_found(&self, pages: &impl Pages) -> MediaResult<Option<Ino>> {
        match self.get(ROOT_INO).and_then(|i| i.dir()) {
            Some(d) => d.get(pages, LOST_FOUND),
            None => Ok(None),
        }
    }

    fn inode_mut(&mut self, ino: Ino) -> Result<&mut Inode, Corrupt> {
        self.inodes
            .get_mut(&ino)
            .ok_or_else(|| bad(format!("inode {ino} does not exist")))
    }

    fn file_mut(&mut self, ino: Ino) -> Result<&mut FileMap, Corrupt> {
        match &mut self.inode_mut(ino)?.body {
            Body::File(m) => Ok(m),
            _ => Err(bad(format!("inode {ino} is not a regular file"))),
        }
    }

    fn dir_mut(&mut self, ino: Ino) -> Result<&mut Dir, Corrupt> {
        match &mut self.inode_mut(ino)?.body {
            Body::Dir(d) => Ok(d),
            _ => Err(bad(format!("inode {ino} is not a directory"))),
        }
    }

    /// Applies one op as a commit does, tree changes made through `pages`
    /// (a transaction); returns the references it added and dropped, the
    /// op the journal records for it if not the op itself (for `Map`,
    /// `Unmap` and `Clone`: the file's new map, `SetFileMap`; for `Link`
    /// and `Unlink`: the directory's entries, `SetDir`), and what undoes
    /// it ([`Meta::undo`]).
    ///
    /// An op that does not fit the state (a missing inode, a name that
    /// exists) is refused, and the checks that can fail come before any
    /// change but those to `pages`, which a failed commit drops.
    pub fn execute(
        &mut self,
        op: &Op,
        pages: &mut impl Pages,
    ) -> MediaResult<(Refs, Option<Op>, Undo)> {
        let undo = self.undo_for(op)?;
        let (refs, rec) = self.execute_op(op, pages)?;
        Ok((refs, rec, undo))
    }

    /// What undoes `op`, from the state before it.
    fn undo_for(&self, op: &Op) -> Result<Undo, Corrupt> {
        let inode = |ino: Ino| {
            self.get(ino)
                .ok_or_else(|| bad(format!("inode {ino} does not exist")))
        };
        let entries = |dir: Ino| -> Result<Undo, Corrupt> {
            let was = *inode(dir)?
                .dir()
                .ok_or_else(|| bad(format!("inode {dir} is not a directory")))?;
            Ok(Undo::Entries { dir, was })
        };
        let map = |ino: Ino| -> Result<Undo, Corrupt> {
            let map = *inode(ino)?
                .pages()
                .ok_or_else(|| bad(format!("inode {ino} is not a regular file")))?;
            Ok(Undo::Map { ino, map })
        };
        Ok(match op {
            Op::Create { ino, .. } => Undo::Create {
                ino: *ino,
                next_ino: self.next_ino,
            },
            Op::SetAttr { ino, .. } => Undo::Attr {
                ino: *ino,
                attr: inode(*ino)?.attr,
            },
            Op::Link { dir, .. } | Op::Unlink { dir, .. } | Op::SetDir { dir, .. } => {
                entries(*dir)?
            }
            Op::Delete { ino } => Undo::Inode {
                ino: *ino,
                inode: Box::new(inode(*ino)?.clone()),
            },
            Op::Map { ino, .. } | Op::Unmap { ino, .. } => map(*ino)?,
            Op::Clone { dst, .. } => map(*dst)?,
            Op::SetXattr { ino, name, .. } | Op::RemoveXattr { ino, name } => Undo::Xattr {
                ino: *ino,
                value: inode(*ino)?.xattrs.get(name).cloned(),
            },
            Op::SetParent { dir, .. } => Undo::Parent {
                dir: *dir,
                parent: inode(*dir)?.dir().map_or(0, |d| d.parent),
            },
            Op::SetShareRoot { .. } => Undo::ShareRoot(self.share_root),
            Op::SetFileMap { ino, .. } => map(*ino)?,
        })
    }

    /// Undoes `op`, which [`Meta::execute`] applied and said `u` undoes;
    /// undos go in reverse order.
    pub fn undo(&mut self, u: Undo, op: &Op) {
        let name = match op {
            Op::SetXattr { name, .. } | Op::RemoveXattr { name, .. } => name.clone(),
            _ => Vec::new(),
        };
        match u {
            Undo::Create { ino, next_ino } => {
                self.inodes.remove(&ino);
                self.next_ino = next_ino;
            }
            Undo::Inode { ino, inode } => {
                self.inodes.insert(ino, *inode);
            }
            Undo::Attr { ino, attr } => {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    i.attr = attr;
                }
            }
            Undo::Entries { dir, was } => {
                if let Some(Body::Dir(d)) = self.inodes.get_mut(&dir).map(|i| &mut i.body) {
                    *d = was;
                }
            }
            Undo::Xattr { ino, value } => {
                if let Some(i) = self.inodes.get_mut(&ino) {
                    match value {
                        Some(v) => i.xattrs.insert(name, v),
                        None => i.xattrs.remove(&name),
                    };
                }
            }
            Undo::Parent { dir, parent } => {
                if let Some(Body::Dir(d)) = self.inodes.get_mut(&dir).map(|i| &mut i.body) {
                    d.parent = parent;
                }
            }
            Undo::Map { ino, map } => {
                if let Some(Body::File(m)) = self.inodes.get_mut(&ino).map(|i| &mut i.body) {
                    *m = map;
                }
            }
            Undo::ShareRoot(root) => self.share_root = root,
        }
    }

    fn execute_op(&mut self, op: &Op, pages: &mut impl Pages) -> MediaResult<(Refs, Option<Op>)> {
        let mut refs = Refs::default();
        let pfns = |runs: Vec<Run<u64>>| runs.into_iter().map(|r| (r.value, r.len)).collect();
        let ino = match op {
            Op::Map {
                ino,
                index,
                pfn,
                len,
            } => {
                if index.checked_add(*len).is_none() || pfn.checked_add(*len).is_none() || *len == 0
                {
                    return Err(bad(format!("map: bad range {index}+{len} -> {pfn}")).into());
                }
                // Fresh pfns: their count goes from 0 to 1, which the share
                // tree does not store.
                let run = Run {
                    start: *index,
                    len: *len,
                    value: *pfn,
                };
                let old = self
                    .file_mut(*ino)?
                    .replace(pages, *ino, *index, *len, &[run])?;
                refs.dropped = pfns(old);
                *ino
            }
            Op::Unmap { ino, index, len } => {
                let old = self
                    .file_mut(*ino)?
                    .replace(pages, *ino, *index, *len, &[])?;
                refs.dropped = pfns(old);
                *ino
            }
            Op::Clone {
                src,
                src_index,
                dst,
                dst_index,
                len,
            } => {
                if src_index.checked_add(*len).is_none() || dst_index.checked_add(*len).is_none() {
                    return Err(bad(format!("clone: range of {len} pages wraps")).into());
                }
                if src == dst && src_index < &(dst_index + len) && dst_index < &(src_index + len) {
                    return Err(bad(format!("clone: overlapping ranges in inode {src}")).into());
                }
                self.file_mut(*dst)?;
                let runs = self.file_mut(*src)?.range(pages, *src_index, *len)?;
                let moved: Vec<Run<u64>> = runs
                    .iter()
                    .map(|r| Run {
                        start: dst_index + (r.start - src_index),
                        ..*r
                    })
                    .collect();
                let old = self
                    .file_mut(*dst)?
                    .replace(pages, *dst, *dst_index, *len, &moved)?;
                refs.added = pfns(runs);
                refs.dropped = pfns(old);
                *dst
            }
            Op::Delete { ino } => {
                // The checks first: the map is cleared only for a delete
                // that will happen.
                self.check_delete(*ino)?;
                if let Some(Inode {
                    body: Body::File(m),
                    ..
                }) = self.inodes.get_mut(ino)
                {
                    refs.dropped = pfns(m.clear(pages)?);
                }
                self.apply(op)?;
                return Ok((refs, None));
            }
            Op::Link { dir, name, ino } => {
                if !valid_name(name) {
                    return Err(bad(format!(
                        "link: invalid name {:?}",
                        String::from_utf8_lossy(name)
                    ))
                    .into());
                }
                if !self.inodes.contains_key(ino) {
                    return Err(bad(format!("link: inode {ino} does not exist")).into());
                }
                if !self.dir_mut(*dir)?.insert(pages, name, *ino)? {
                    return Err(bad(format!(
                        "link: {:?} exists in directory {dir}",
                        String::from_utf8_lossy(name)
                    ))
                    .into());
                }
                return Ok((refs, Some(self.set_dir(*dir)?)));
            }
            Op::Unlink { dir, name } => {
                if self.dir_mut(*dir)?.remove(pages, name)?.is_none() {
                    return Err(bad(format!(
                        "unlink: no {:?} in directory {dir}",
                        String::from_utf8_lossy(name)
                    ))
                    .into());
                }
                return Ok((refs, Some(self.set_dir(*dir)?)));
            }
            Op::SetFileMap { .. } | Op::SetDir { .. } => {
                return Err(bad(format!("{op:?}: recorded by commits, not made")).into())
            }
            _ => {
                self.apply(op)?;
                return Ok((refs, None));
            }
        };
        let map = *self.file_mut(ino)?;
        Ok((refs, Some(Op::SetFileMap { ino, map })))
    }

    /// What the journal records of directory `dir`'s entries.
    fn set_dir(&mut self, dir: Ino) -> Result<Op, Corrupt> {
        let d = *self.dir_mut(dir)?;
        Ok(Op::SetDir {
            dir,
            root: d.root(),
            entries: d.len(),
        })
    }

    fn check_delete(&self, ino: Ino) -> Result<(), Corrupt> {
        let i = self
            .inodes
            .get(&ino)
            .ok_or_else(|| bad(format!("delete: inode {ino} does not exist")))?;
        if i.dir().is_some_and(|d| !d.is_empty()) {
            return Err(bad(format!("delete: directory {ino} is not empty")));
        }
        if ino == ROOT_INO {
            return Err(bad("delete: the root directory".to_string()));
        }
        Ok(())
    }

    /// Applies one op as the journal holds it (replay, and commits for the
    /// ops that change no tree). `Map`, `Unmap`, `Clone`, `Link` and
    /// `Unlink` are [`Meta::execute`]'s: a journal records their outcome.
    ///
    /// An op that does not fit the state (a missing inode, a name that
    /// exists) is refused with `Corrupt`, and the checks that can fail come
    /// before any change.
    pub fn apply(&mut self, op: &Op) -> Result<(), Corrupt> {
        match op {
            Op::Create { ino, attr, body } => {
                if *ino == 0 || self.inodes.contains_key(ino) {
                    return Err(bad(format!(
                        "create: inode {ino} already exists or is invalid"
                    )));
                }
                let body = match (attr.kind, body) {
                    (Kind::File, NewBody::File) => Body::File(FileMap::new()),
                    (Kind::Dir, NewBody::Dir { parent }) => Body::Dir(Dir::new(*ino, *parent)),
                    (Kind::Symlink, NewBody::Symlink(t)) => Body::Symlink(t.clone()),
                    (
                        Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev,
                        NewBody::Special,
                    ) => Body::Special,
                    (k, b) => {
                        return Err(bad(format!(
                            "create: inode {ino} of kind {k:?} with body {b:?}"
                        )))
                    }
                };
                self.inodes.insert(
                    *ino,
                    Inode {
                        attr: *attr,
                        xattrs: BTreeMap::new(),
                        body,
                    },
                );
                self.next_ino = self.next_ino.max(ino + 1);
            }
            Op::SetAttr { ino, attr } => {
                let i = self.inode_mut(*ino)?;
                if i.attr.kind != attr.kind {
                    return Err(bad(format!("setattr: inode {ino} would change kind")));
                }
                i.attr = *attr;
            }
            Op::Delete { ino } => {
                self.check_delete(*ino)?;
                self.inodes.remove(ino);
            }
            Op::Map { .. }
            | Op::Unmap { .. }
            | Op::Clone { .. }
            | Op::Link { .. }
            | Op::Unlink { .. } => {
                return Err(bad(format!(
                    "{op:?}: an op that changes a tree, where the journal records its outcome"
                )))
            }
            Op::SetFileMap { ino, map } => *self.file_mut(*ino)? = *map,
            Op::SetDir { dir, root, entries } => {
                let d = self.dir_mut(*dir)?;
                *d = Dir::from_parts(*dir, d.parent, *root, *entries)
                    .map_err(|e| bad(format!("setdir: directory {dir}: {e}")))?;
            }
            Op::SetXattr { ino, name, value } => {
                self.inode_mut(*ino)?
                    .xattrs
                    .insert(name.clone(), value.clone());
            }
            Op::RemoveXattr { ino, name } => {
                if self.inode_mut(*ino)?.xattrs.remove(name).is_none() {
                    return Err(bad(format!(
                        "removexattr: inode {ino} has no such attribute"
                    )));
                }
            }
            Op::SetParent { dir, parent } => {
                self.dir_mut(*dir)?.parent = *parent;
            }
            Op::SetShareRoot { root } => self.share_root = *root,
        }
        Ok(())
    }

    /// How many times the page maps map each pfn (1 and more): the pages in
    /// use, and, where 2 or more, what the share tree must hold.
    /// The page maps are read through `pages`.
    pub fn counted_shares(&self, pages: &impl Pages) -> MediaResult<RangeMap<u32>> {
        let mut c = RangeMap::new();
        for i in self.inodes.values() {
            if let Some(m) = i.pages() {
                m.each(pages, |r| {
                    count_run(&mut c, r);
                    true
                })?;
            }
        }
        Ok(c)
    }

    /// Checks what decoding alone cannot: runs well formed, bodies matching
    /// kinds. Semantic checks (connectivity, counts) are fsck's.
    pub fn check_shape(&self) -> Result<(), Corrupt> {
        for (ino, i) in &self.inodes {
            let ok = matches!(
                (i.attr.kind, &i.body),
                (Kind::File, Body::File(_))
                    | (Kind::Dir, Body::Dir(_))
                    | (Kind::Symlink, Body::Symlink(_))
                    | (
                        Kind::Fifo | Kind::Socket | Kind::CharDev | Kind::BlockDev,
                        Body::Special
                    )
            );
            if !ok || *ino == 0 || *ino >= self.next_ino {
                return Err(bad(format!(
                    "inode {ino}: kind {:?} does not match its body or number",
                    i.attr.kind
                )));
            }
        }
        Ok(())
    }
}

/// One reference more to each pfn of the page-map run `r` in `counted`
/// (pfn -> references). A count past u32::MAX stays at the limit; the
/// share tree never gets there, so the two differ and mount and fsck
/// notice.
pub fn count_run(counted: &mut RangeMap<u32>, r: Run<u64>) {
    if counted.add(r.value, r.len, 1).is_err() {
        counted.insert(r.value, r.len, u32::MAX);
    }
}

fn bad(detail: String) -> Corrupt {
    Corrupt::new("metadata", detail)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::mem::Mem;

    fn file(m: &mut Meta, mem: &mut Mem, name: &str) -> Ino {
        let ino = m.next_ino;
        m.apply(&Op::Create {
            ino,
            attr: Attr::new(Kind::File, 0o644, 0, 0, Time::default()),
            body: NewBody::File,
        })
        .unwrap();
        exec(
            m,
            mem,
            &Op::Link {
                dir: ROOT_INO,
                name: name.into(),
                ino,
            },
        )
        .unwrap();
        ino
    }

    /// A new file system, its trees in memory.
    fn fresh() -> (Meta, Mem) {
        let mut mem = Mem::default();
        let m = Meta::new(0, 0, Time::default(), &mut mem).unwrap();
        (m, mem)
    }

    /// `op` as a commit applies it, its page-map changes in `mem`.
    fn exec(m: &mut Meta, mem: &mut Mem, op: &Op) -> MediaResult<Refs> {
        m.execute(op, mem).map(|(refs, _, _)| refs)
    }

    #[test]
    fn new_fs_has_root_and_lost_found() {
        let (m, mem) = fresh();
        assert_eq!(m.lost_found(&mem).unwrap(), Some(2));
        assert_eq!(m.get(ROOT_INO).unwrap().attr.nlink, 3);
        m.check_shape().unwrap();
    }

    #[test]
    fn ops_say_which_references_they_add_and_drop() {
        let (mut m, mut mem) = fresh();
        let a = file(&mut m, &mut mem, "a");
        let b = file(&mut m, &mut mem, "b");
        let map = |ino, index, pfn, len| Op::Map {
            ino,
            index,
            pfn,
            len,
        };
        assert_eq!(
            exec(&mut m, &mut mem, &map(a, 0, 1000, 8)).unwrap(),
            Refs::default()
        );
        let r = exec(
            &mut m,
            &mut mem,
            &Op::Clone {
                src: a,
                src_index: 0,
                dst: b,
                dst_index: 2,
                len: 8,
            },
        )
        .unwrap();
        assert_eq!(r.added, vec![(1000, 8)]);
        assert!(r.dropped.is_empty());
        assert_eq!(m.counted_shares(&mem).unwrap().get(1000), Some(2));
        // Overwrite one page of b with a fresh one: the old one loses b.
        let r = exec(&mut m, &mut mem, &map(b, 3, 2000, 1)).unwrap();
        assert_eq!(r.dropped, vec![(1001, 1)]);
        assert_eq!(m.counted_shares(&mem).unwrap().get(1001), Some(1));
        let r = exec(&mut m, &mut mem, &Op::Delete { ino: a }).unwrap();
        assert_eq!(r.dropped, vec![(1000, 8)]);
        exec(
            &mut m,
            &mut mem,
            &Op::Unlink {
                dir: ROOT_INO,
                name: b"a".to_vec(),
            },
        )
        .unwrap();
        let r = exec(
            &mut m,
            &mut mem,
            &Op::Unmap {
                ino: b,
                index: 0,
                len: 100,
            },
        )
        .unwrap();
        assert_eq!(r.dropped, vec![(1000, 1), (2000, 1), (1002, 6)]);
        assert!(m.counted_shares(&mem).unwrap().is_empty());
        exec(&mut m, &mut mem, &Op::SetShareRoot { root: 77 }).unwrap();
        assert_eq!(m.share_root, 77);
    }

    /// Random transactions of every kind of op, each undone in reverse:
    /// the metadata is what it was, whatever the ops did or refused.
    #[test]
    fn undo_restores_the_metadata_after_any_ops() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let attr = |kind| Attr::new(kind, 0o644, 0, 0, Time::default());
        for round in 0..300 {
            let (mut m, mut mem) = fresh();
            let a = file(&mut m, &mut mem, "a");
            let b = file(&mut m, &mut mem, "b");
            exec(
                &mut m,
                &mut mem,
                &Op::Map {
                    ino: a,
                    index: 0,
                    pfn: 100,
                    len: 4,
                },
            )
            .unwrap();
            exec(
                &mut m,
                &mut mem,
                &Op::Map {
                    ino: a,
                    index: 9,
                    pfn: 300,
                    len: 2,
                },
            )
            .unwrap();
            exec(
                &mut m,
                &mut mem,
                &Op::SetXattr {
                    ino: b,
                    name: b"user.k".to_vec(),
                    value: vec![1],
                },
            )
            .unwrap();
            let before = m.clone();
            let mut undone = Vec::new();
            for _ in 0..1 + next(12) {
                let ino = [a, b, ROOT_INO, m.next_ino, 999][next(5) as usize];
                let name = [&b"a"[..], b"b", b"n"][next(3) as usize].to_vec();
                let op = match next(12) {
                    0 => Op::Create {
                        ino: m.next_ino,
                        attr: attr(Kind::File),
                        body: NewBody::File,
                    },
                    1 => Op::Link {
                        dir: ROOT_INO,
                        name,
                        ino,
                    },
                    2 => Op::Unlink {
                        dir: ROOT_INO,
                        name,
                    },
                    3 => Op::SetAttr {
                        ino,
                        attr: Attr {
                            size: 1 + next(1000),
                            ..attr(Kind::File)
                        },
                    },
                    4 => Op::SetXattr {
                        ino,
                        name: b"user.k".to_vec(),
                        value: vec![round as u8],
                    },
                    5 => Op::RemoveXattr {
                        ino,
                        name: b"user.k".to_vec(),
                    },
                    6 => Op::Map {
                        ino,
                        index: next(12),
                        pfn: 1000 + 10 * next(50),
                        len: 1 + next(3),
                    },
                    7 => Op::Unmap {
                        ino,
                        index: next(12),
                        len: 1 + next(5),
                    },
                    8 => Op::Clone {
                        src: a,
                        src_index: 0,
                        dst: ino,
                        dst_index: 20 + next(4),
                        len: 12,
                    },
                    9 => Op::Delete { ino },
                    10 => Op::SetParent {
                        dir: ROOT_INO,
                        parent: ROOT_INO,
                    },
                    _ => Op::SetShareRoot { root: next(100) },
                };
                if let Ok((_, _, u)) = m.execute(&op, &mut mem) {
                    undone.push((u, op));
                }
            }
            for (u, op) in undone.into_iter().rev() {
                m.undo(u, &op);
            }
            assert_eq!(m, before, "round {round}");
        }
    }

    #[test]
    fn clone_within_one_file_and_over_itself() {
        let (mut m, mut mem) = fresh();
        let a = file(&mut m, &mut mem, "a");
        exec(
            &mut m,
            &mut mem,
            &Op::Map {
                ino: a,
                index: 0,
                pfn: 500,
                len: 4,
            },
        )
        .unwrap();
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Clone {
                src: a,
                src_index: 0,
                dst: a,
                dst_index: 2,
                len: 4
            }
        )
        .is_err());
        exec(
            &mut m,
            &mut mem,
            &Op::Clone {
                src: a,
                src_index: 0,
                dst: a,
                dst_index: 4,
                len: 4,
            },
        )
        .unwrap();
        assert_eq!(m.counted_shares(&mem).unwrap().get(500), Some(2));
        // Cloning a's own pages back over their twins: the gains come
        // first, so no count passes through 0.
        let r = exec(
            &mut m,
            &mut mem,
            &Op::Clone {
                src: a,
                src_index: 4,
                dst: a,
                dst_index: 0,
                len: 4,
            },
        )
        .unwrap();
        assert_eq!((r.added, r.dropped), (vec![(500, 4)], vec![(500, 4)]));
        assert_eq!(m.counted_shares(&mem).unwrap().get(500), Some(2));
    }

    #[test]
    fn encoding_round_trips_and_shape_errors_are_caught() {
        let (mut m, mut mem) = fresh();
        let a = file(&mut m, &mut mem, "a");
        exec(
            &mut m,
            &mut mem,
            &Op::Map {
                ino: a,
                index: 3,
                pfn: 77,
                len: 2,
            },
        )
        .unwrap();
        exec(
            &mut m,
            &mut mem,
            &Op::SetXattr {
                ino: a,
                name: b"user.x".to_vec(),
                value: vec![1, 2],
            },
        )
        .unwrap();
        let bytes = crate::record::meta::encode(&m, &[]).unwrap();
        let (back, _) = crate::record::meta::decode(&bytes).unwrap();
        assert_eq!(back, m);
        back.check_shape().unwrap();
        // A file whose body is a directory, an inode past next_ino.
        let mut bad = m.clone();
        bad.inodes.get_mut(&a).unwrap().attr.kind = Kind::Dir;
        assert!(bad.check_shape().is_err());
        let mut bad = m.clone();
        bad.next_ino = a;
        assert!(bad.check_shape().is_err());
    }

    #[test]
    fn bad_ops_are_refused() {
        let (mut m, mut mem) = fresh();
        let a = file(&mut m, &mut mem, "a");
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Link {
                dir: ROOT_INO,
                name: b"a".to_vec(),
                ino: a
            }
        )
        .is_err());
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Link {
                dir: a,
                name: b"x".to_vec(),
                ino: a
            }
        )
        .is_err());
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Link {
                dir: ROOT_INO,
                name: vec![b'x'; 256],
                ino: a
            }
        )
        .is_err());
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Unlink {
                dir: ROOT_INO,
                name: b"zz".to_vec()
            }
        )
        .is_err());
        assert!(exec(&mut m, &mut mem, &Op::Delete { ino: ROOT_INO }).is_err());
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Map {
                ino: a,
                index: u64::MAX,
                pfn: 1,
                len: 2
            }
        )
        .is_err());
        let attr = m.get(a).unwrap().attr;
        assert!(exec(
            &mut m,
            &mut mem,
            &Op::Create {
                ino: a,
                attr,
                body: NewBody::File
            }
        )
        .is_err());
        // A tree-changing op is a commit's; the journal holds its outcome.
        assert!(m
            .apply(&Op::Unmap {
                ino: a,
                index: 0,
                len: 1
            })
            .is_err());
        assert!(m
            .apply(&Op::Unlink {
                dir: ROOT_INO,
                name: b"a".to_vec()
            })
            .is_err());
    }
}
