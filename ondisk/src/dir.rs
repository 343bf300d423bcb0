//! A directory: its parent and its entries, name -> inode.
//!
//! The entries are a B+tree on the media ([`crate::btree::Dirents`], owned
//! by the directory's inode), keyed by a hash of the name and then the
//! name, so that nodes fill evenly whatever the names look like; an empty
//! directory has no tree and costs no page. The tree is changed in a
//! commit's transaction like a page map and read in place: the daemon
//! keeps no entry in DRAM. The inode holds the root and the number of
//! entries, so that `rmdir` and `stat` read no tree.
//!
//! Everything outside this crate reads entries through the methods here,
//! with the pages they are read from, and changes them through `Meta`'s
//! ops. The rule kept here: the root is 0 exactly when there are no
//! entries, and the count is the tree's records.

use crate::btree::{Dirents, NameKey, Pages, Shape, Tree};
use crate::error::{Corrupt, Result};
use crate::meta::Ino;

/// A directory's parent and entries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dir {
    /// The directory that names this one (the root's is itself).
    pub parent: Ino,
    tree: Tree<Dirents>,
    entries: u64,
}

/// A directory entry as a directory lists it.
pub type Entry = (Vec<u8>, Ino);

impl Dir {
    /// An empty directory of inode `owner` under `parent`.
    pub fn new(owner: Ino, parent: Ino) -> Self {
        Dir {
            parent,
            tree: Tree::new(0, owner),
            entries: 0,
        }
    }

    /// The directory a record describes (`owner`: its inode): its tree's
    /// root and entries. Checks what the record alone can say.
    pub fn from_parts(
        owner: Ino,
        parent: Ino,
        root: u64,
        entries: u64,
    ) -> std::result::Result<Self, String> {
        if (root == 0) != (entries == 0) {
            return Err(format!(
                "a directory of {entries} entries with tree root {root}"
            ));
        }
        Ok(Dir {
            parent,
            tree: Tree::new(root, owner),
            entries,
        })
    }

    /// The tree's root pfn (0: no entries).
    pub fn root(&self) -> u64 {
        self.tree.root()
    }

    /// Entries, `.` and `..` not counted.
    pub fn len(&self) -> u64 {
        self.entries
    }

    pub fn is_empty(&self) -> bool {
        self.entries == 0
    }

    /// The inode `name` names here.
    pub fn get(&self, p: &impl Pages, name: &[u8]) -> Result<Option<Ino>> {
        if self.entries == 0 {
            return Ok(None);
        }
        self.tree.get(p, &NameKey::new(name))
    }

    /// Every entry, in the tree's order (of the names' hashes), until
    /// `visit` returns false.
    pub fn each(&self, p: &impl Pages, mut visit: impl FnMut(&[u8], Ino) -> bool) -> Result<()> {
        self.tree.range(p, None, |k, &ino| visit(&k.name, ino))
    }

    /// Every entry, in the tree's order.
    pub fn list(&self, p: &impl Pages) -> Result<Vec<Entry>> {
        let mut out = Vec::with_capacity(self.entries.min(1 << 16) as usize);
        self.each(p, |name, ino| {
            out.push((name.to_vec(), ino));
            true
        })?;
        Ok(out)
    }

    /// Adds `name` -> `ino`; false (and nothing changed) if the name
    /// exists. The name must be valid (`meta::valid_name`).
    pub fn insert(&mut self, p: &mut impl Pages, name: &[u8], ino: Ino) -> Result<bool> {
        let added = self.tree.insert_new(p, NameKey::new(name), ino)?;
        self.entries += u64::from(added);
        Ok(added)
    }

    /// Removes `name`, returning the inode it named.
    pub fn remove(&mut self, p: &mut impl Pages, name: &[u8]) -> Result<Option<Ino>> {
        let old = self.tree.remove(p, &NameKey::new(name))?;
        if old.is_some() {
            self.entries -= 1;
        }
        Ok(old)
    }

    /// A directory of inode `owner` holding `entries` (any order, names
    /// unique and valid), its tree built in one go in `p`.
    pub fn build(
        p: &mut impl Pages,
        owner: Ino,
        parent: Ino,
        entries: impl IntoIterator<Item = Entry>,
    ) -> Result<Self> {
        let mut records: Vec<(NameKey, Ino)> = entries
            .into_iter()
            .map(|(name, ino)| (NameKey::new(&name), ino))
            .collect();
        records.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        let n = records.len() as u64;
        let tree = Tree::build(p, owner, records)?;
        Ok(Dir {
            parent,
            tree,
            entries: n,
        })
    }

    /// Walks the tree and checks it: the tree's rules (`Tree::check`), and
    /// the count the inode records. Calls `on_page` for each tree page;
    /// returns the entries and the tree's shape. Whether each name is one
    /// a directory may hold (`meta::valid_name`) is fsck's to say, which
    /// drops the entry rather than the directory.
    pub fn check(&self, p: &impl Pages, on_page: impl FnMut(u64)) -> Result<(Vec<Entry>, Shape)> {
        let shape = self.tree.check(p, on_page)?;
        let entries = self.list(p)?;
        if entries.len() as u64 != self.entries || shape.records != self.entries {
            return Err(Corrupt::new(
                "directory",
                format!("{} entries, recorded as {}", entries.len(), self.entries),
            )
            .into());
        }
        Ok((entries, shape))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::btree::mem::Mem;
    use std::collections::BTreeMap;

    #[test]
    fn entries_follow_a_model_through_inserts_and_removes() {
        let mut p = Mem::default();
        let mut d = Dir::new(5, 1);
        let mut model = BTreeMap::new();
        for i in 0..3000u64 {
            let name = format!("name-{}", (i * 7919) % 2000).into_bytes();
            if i % 3 == 2 {
                assert_eq!(d.remove(&mut p, &name).unwrap(), model.remove(&name));
            } else {
                let fresh = !model.contains_key(&name);
                assert_eq!(d.insert(&mut p, &name, i + 10).unwrap(), fresh);
                model.entry(name).or_insert(i + 10);
            }
            assert_eq!(d.len(), model.len() as u64);
            if i % 97 == 0 {
                // Changes made in place keep every rule of the tree's.
                let (listed, _) = d.check(&p, |_| {}).unwrap();
                assert_eq!(listed.len(), model.len());
            }
        }
        let (listed, shape) = d.check(&p, |_| {}).unwrap();
        assert!(shape.depth >= 2, "a directory of many pages");
        let listed: BTreeMap<_, _> = listed.into_iter().collect();
        assert_eq!(listed, model);
        for (name, ino) in &model {
            assert_eq!(d.get(&p, name).unwrap(), Some(*ino));
        }
        // Lookups read nodes in place: names that are not there, whatever
        // their hashes, find nothing.
        for i in 2000..3000u64 {
            assert_eq!(d.get(&p, format!("name-{i}").as_bytes()).unwrap(), None);
        }
        let built = Dir::build(&mut p, 5, 1, model.clone()).unwrap();
        assert_eq!(built.len(), model.len() as u64);
        let (again, _) = built.check(&p, |_| {}).unwrap();
        assert_eq!(again.into_iter().collect::<BTreeMap<_, _>>(), model);
        for name in model.keys() {
            d.remove(&mut p, name).unwrap();
        }
        assert_eq!(
            (d.root(), d.len()),
            (0, 0),
            "an empty directory has no tree"
        );
    }

    /// An entry added to a leaf with room is written below its records and
    /// its slot put in the array (three writes: the record, the slots from
    /// its on, the header); one removed takes out its slot (two); no node
    /// is decoded or written whole, and only a few dozen bytes change.
    #[test]
    fn changes_within_a_leaf_are_made_in_place() {
        let mut p = Mem::default();
        let mut d = Dir::new(5, 1);
        for i in 0..20u64 {
            d.insert(&mut p, format!("f{i}").as_bytes(), i + 10)
                .unwrap();
        }
        let (writes, written) = (p.writes, p.written);
        assert!(d.insert(&mut p, b"new", 99).unwrap());
        assert_eq!(p.writes - writes, 3);
        assert!(
            !d.insert(&mut p, b"new", 98).unwrap(),
            "a name is added once"
        );
        assert_eq!(d.len(), 21);
        // The record (6 + 3 + 8), at most 21 slots, the header.
        assert!(
            p.written - written <= 17 + 21 * 2 + 32,
            "{}",
            p.written - written
        );
        let writes = p.writes;
        assert_eq!(d.remove(&mut p, b"f3").unwrap(), Some(13));
        assert_eq!(p.writes - writes, 2);
        let (listed, _) = d.check(&p, |_| {}).unwrap();
        assert_eq!(listed.len(), 20);
        assert_eq!(d.get(&p, b"new").unwrap(), Some(99));
        assert_eq!(d.get(&p, b"f3").unwrap(), None);
    }

    #[test]
    fn a_record_must_agree_with_itself_and_its_tree() {
        assert!(Dir::from_parts(5, 1, 0, 3).is_err());
        assert!(Dir::from_parts(5, 1, 9, 0).is_err());
        let mut p = Mem::default();
        let mut d = Dir::new(5, 1);
        d.insert(&mut p, b"a", 7).unwrap();
        d.insert(&mut p, b"b", 8).unwrap();
        let wrong = Dir::from_parts(5, 1, d.root(), 3).unwrap();
        assert!(wrong
            .check(&p, |_| {})
            .unwrap_err()
            .to_string()
            .contains("recorded"));
        let stranger = Dir::from_parts(6, 1, d.root(), 2).unwrap();
        assert!(
            stranger.check(&p, |_| {}).is_err(),
            "nodes name their owner"
        );
    }
}
