//! A file's page map: page index -> pfn, pages not mapped being holes.
//!
//! A map of one run is kept in the inode (`Inline`): most files are
//! written in one go and lie in one run, and cost no page more. A map of
//! two or more runs is a B+tree of extent records on the media
//! ([`crate::btree::Extents`], owned by the file's inode), changed in a commit's
//! transaction like the share tree and read in place; the inode holds its
//! root. Either way the inode also holds the number of runs and of pages
//! (a file's blocks), so that `stat` reads no tree.
//!
//! Everything outside this crate reads a map through [`MapView`] (the map
//! and the pages it is read from) and changes it through `Meta`'s ops.
//! Runs are as few as they can be: consecutive indexes on consecutive
//! pfns are one run, in the tree as in memory (`btree::runs`).
//!
//! The rule kept here: a map is inline exactly when it has at most one run.

use crate::btree::runs::RunKind;
use crate::btree::{Extents, Pages, Shape, Tree};
use crate::error::{Corrupt, Result};
use crate::meta::Ino;
use crate::rangemap::{RangeMap, Run};

/// The page map of one file.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileMap {
    form: Form,
    /// Pages mapped.
    pages: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Form {
    Inline(Option<Run<u64>>),
    Tree { tree: Tree<Extents>, runs: u64 },
}

impl Default for Form {
    fn default() -> Self {
        Form::Inline(None)
    }
}

/// What a map's record holds (`record::filemap`): the tree's root (0 for
/// an inline map), its runs, its pages, and an inline map's run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MapParts {
    pub root: u64,
    pub runs: u64,
    pub pages: u64,
    pub inline: Option<Run<u64>>,
}

/// Batches of at least this many runs, and at least a sixteenth of the
/// map, build the tree anew rather than change it run by run (a clone of
/// a file of many scattered pages is one op of as many runs).
const BATCH: usize = 256;

impl FileMap {
    /// An empty map: a file of holes.
    pub fn new() -> Self {
        FileMap::default()
    }

    /// The map a record describes (`owner`: the file's inode). Checks what
    /// the record alone can say.
    pub fn from_parts(owner: Ino, p: MapParts) -> std::result::Result<Self, String> {
        if p.root == 0 {
            let (runs, pages) = p.inline.map_or((0, 0), |r| (1, r.len));
            if (p.runs, p.pages) != (runs, pages) {
                return Err(format!(
                    "an inline map of {runs} runs and {pages} pages recorded as {} and {}",
                    p.runs, p.pages
                ));
            }
            return Ok(FileMap {
                form: Form::Inline(p.inline),
                pages,
            });
        }
        if p.inline.is_some() || p.runs < 2 || p.pages < p.runs {
            return Err(format!(
                "a tree of {} runs and {} pages (with an inline run: {})",
                p.runs,
                p.pages,
                p.inline.is_some()
            ));
        }
        Ok(FileMap {
            form: Form::Tree {
                tree: Tree::new(p.root, owner),
                runs: p.runs,
            },
            pages: p.pages,
        })
    }

    /// What the map's record holds.
    pub fn parts(&self) -> MapParts {
        match self.form {
            Form::Inline(r) => MapParts {
                root: 0,
                runs: u64::from(r.is_some()),
                pages: self.pages,
                inline: r,
            },
            Form::Tree { tree, runs } => MapParts {
                root: tree.root(),
                runs,
                pages: self.pages,
                inline: None,
            },
        }
    }

    /// Pages mapped (a file's blocks).
    pub fn pages(&self) -> u64 {
        self.pages
    }

    /// Runs of the map.
    pub fn runs(&self) -> u64 {
        self.parts().runs
    }

    pub fn is_empty(&self) -> bool {
        self.pages == 0
    }

    /// The map read through `pages`.
    pub fn view<P: Pages>(&self, pages: P) -> MapView<'_, P> {
        MapView { map: self, pages }
    }

    /// The pfn of page `index`; `None` for a hole.
    pub fn get(&self, p: &impl Pages, index: u64) -> Result<Option<u64>> {
        let r = match self.form {
            Form::Inline(r) => r,
            Form::Tree { tree, .. } => tree.floor(p, &index)?.map(|(k, v)| Extents::run(k, &v)),
        };
        Ok(r.filter(|r| index >= r.start && index - r.start < r.len)
            .map(|r| r.value + (index - r.start)))
    }

    /// The mapped parts of `[start, start + len)`, clipped to it.
    pub fn range(&self, p: &impl Pages, start: u64, len: u64) -> Result<Vec<Run<u64>>> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        self.each_from(p, start, |r| {
            if r.start >= end {
                return false;
            }
            let (a, b) = (r.start.max(start), (r.start + r.len).min(end));
            if a < b {
                out.push(Run {
                    start: a,
                    len: b - a,
                    value: r.value + (a - r.start),
                });
            }
            true
        })?;
        Ok(out)
    }

    /// The first run that covers or follows page `from`, clipped to start
    /// at `from`.
    pub fn first_at_or_after(&self, p: &impl Pages, from: u64) -> Result<Option<Run<u64>>> {
        let mut found = None;
        self.each_from(p, from, |r| {
            if r.start + r.len <= from {
                return true;
            }
            let skip = from.saturating_sub(r.start);
            found = Some(Run {
                start: r.start + skip,
                len: r.len - skip,
                value: r.value + skip,
            });
            false
        })?;
        Ok(found)
    }

    /// Every run, in index order, until `visit` returns false.
    pub fn each(&self, p: &impl Pages, visit: impl FnMut(Run<u64>) -> bool) -> Result<()> {
        self.each_from(p, 0, visit)
    }

    /// The runs from the one that may hold page `from` (the last starting
    /// at or before it) on, until `visit` returns false.
    fn each_from(
        &self,
        p: &impl Pages,
        from: u64,
        mut visit: impl FnMut(Run<u64>) -> bool,
    ) -> Result<()> {
        match self.form {
            Form::Inline(r) => {
                if let Some(r) = r {
                    visit(r);
                }
                Ok(())
            }
            Form::Tree { tree, .. } => tree.range_back(p, &from, |&k, v| visit(Extents::run(k, v))),
        }
    }

    /// Every run, as a map.
    fn all(&self, p: &impl Pages) -> Result<RangeMap<u64>> {
        let mut m = RangeMap::new();
        self.each(p, |r| {
            m.insert(r.start, r.len, r.value);
            true
        })?;
        Ok(m)
    }

    /// Walks the map and checks it: a tree's rules (`Tree::check`), runs
    /// that neither overlap nor wrap nor could be one, and the runs and
    /// pages the inode records. Calls `on_page` for each tree page;
    /// returns the runs and the tree's shape.
    pub fn check(
        &self,
        p: &impl Pages,
        on_page: impl FnMut(u64),
    ) -> Result<(Vec<Run<u64>>, Shape)> {
        let shape = match self.form {
            Form::Inline(_) => Shape::default(),
            Form::Tree { tree, .. } => tree.check(p, on_page)?,
        };
        let mut runs: Vec<Run<u64>> = Vec::new();
        let mut bad = None;
        self.each(p, |r| {
            let ok = r.start.checked_add(r.len).is_some()
                && r.value.checked_add(r.len).is_some()
                && runs.last().is_none_or(|l| {
                    let end = l.start + l.len;
                    r.start > end || (r.start == end && l.value + l.len != r.value)
                });
            if !ok {
                bad = Some(r.start);
            }
            runs.push(r);
            ok
        })?;
        if let Some(at) = bad {
            return Err(Corrupt::new(
                "page map",
                format!("the run at index {at} overlaps the one before it, continues it, or wraps"),
            )
            .into());
        }
        let pages: u64 = runs.iter().map(|r| r.len).sum();
        let parts = self.parts();
        if (runs.len() as u64, pages) != (parts.runs, parts.pages) {
            return Err(Corrupt::new(
                "page map",
                format!(
                    "{} runs of {pages} pages, recorded as {} and {}",
                    runs.len(),
                    parts.runs,
                    parts.pages
                ),
            )
            .into());
        }
        Ok((runs, shape))
    }

    /// Maps `[index, index + len)` to `runs` (index runs inside it, as a
    /// map's are), replacing what was mapped there; returns what was, as
    /// runs of index -> pfn. `owner` is the file's inode, whose tree a
    /// map that grows past one run becomes.
    pub(crate) fn replace(
        &mut self,
        p: &mut impl Pages,
        owner: Ino,
        index: u64,
        len: u64,
        runs: &[Run<u64>],
    ) -> Result<Vec<Run<u64>>> {
        let len = index.saturating_add(len) - index;
        if len == 0 && runs.is_empty() {
            return Ok(Vec::new());
        }
        let big = |k: usize, n: u64| k >= BATCH && (k as u64).saturating_mul(16) >= n;
        let mut window = None;
        if let Form::Tree { tree, runs: n } = self.form {
            if !big(runs.len(), n) {
                let (keys, m) = tree.around(p, index, len)?;
                // A change of most of a big tree (a whole file unmapped)
                // builds it anew too.
                if !big(keys.len(), n) {
                    window = Some((tree, n, keys, m));
                }
            }
        }
        let old = match window {
            Some((mut tree, n, keys, mut m)) => {
                let old = m.remove(index, len);
                for r in runs {
                    m.insert(r.start, r.len, r.value);
                }
                let delta = tree.rewrite(p, &keys, m.iter())?;
                let n = n.checked_add_signed(delta).ok_or_else(|| {
                    Corrupt::new(
                        "page map",
                        format!("of inode {owner}: a run count below zero"),
                    )
                })?;
                self.form = Form::Tree { tree, runs: n };
                if n <= 1 {
                    let m = self.all(p)?;
                    self.set(p, owner, &m)?;
                }
                old
            }
            None => {
                let mut m = self.all(p)?;
                let old = m.remove(index, len);
                for r in runs {
                    m.insert(r.start, r.len, r.value);
                }
                self.set(p, owner, &m)?;
                old
            }
        };
        let added: u64 = runs.iter().map(|r| r.len).sum();
        let removed: u64 = old.iter().map(|r| r.len).sum();
        self.pages = self
            .pages
            .checked_sub(removed)
            .and_then(|p| p.checked_add(added))
            .ok_or_else(|| {
                Corrupt::new(
                    "page map",
                    format!("of inode {owner}: a page count out of range"),
                )
            })?;
        Ok(old)
    }

    /// The map becomes `m`: inline if it has one run or none, else a tree
    /// built anew; the old tree's pages are freed.
    fn set(&mut self, p: &mut impl Pages, owner: Ino, m: &RangeMap<u64>) -> Result<()> {
        if let Form::Tree { mut tree, .. } = self.form {
            tree.free_all(p)?;
        }
        self.form = if m.run_count() <= 1 {
            Form::Inline(m.iter().next())
        } else {
            Form::Tree {
                tree: Tree::build(p, owner, m.iter().map(|r| (r.start, Extents::value(&r))))?,
                runs: m.run_count() as u64,
            }
        };
        Ok(())
    }

    /// Empties the map, freeing its tree's pages; returns what it mapped.
    pub(crate) fn clear(&mut self, p: &mut impl Pages) -> Result<Vec<Run<u64>>> {
        let old: Vec<Run<u64>> = self.all(p)?.iter().collect();
        if let Form::Tree { mut tree, .. } = self.form {
            tree.free_all(p)?;
        }
        *self = FileMap::new();
        Ok(old)
    }
}

/// A page map and the pages it is read from.
pub struct MapView<'a, P: Pages> {
    map: &'a FileMap,
    pages: P,
}

impl<P: Pages> MapView<'_, P> {
    /// The pfn of page `index`; `None` for a hole.
    pub fn get(&self, index: u64) -> Result<Option<u64>> {
        self.map.get(&self.pages, index)
    }

    /// The mapped parts of `[start, start + len)`, clipped to it.
    pub fn range(&self, start: u64, len: u64) -> Result<Vec<Run<u64>>> {
        self.map.range(&self.pages, start, len)
    }

    /// The first run that covers or follows page `from`, clipped to start
    /// at `from`.
    pub fn first_at_or_after(&self, from: u64) -> Result<Option<Run<u64>>> {
        self.map.first_at_or_after(&self.pages, from)
    }

    /// Every run, in index order, until `visit` returns false.
    pub fn each(&self, visit: impl FnMut(Run<u64>) -> bool) -> Result<()> {
        self.map.each(&self.pages, visit)
    }

    /// Every run, in index order.
    pub fn all(&self) -> Result<Vec<Run<u64>>> {
        let mut v = Vec::new();
        self.each(|r| {
            v.push(r);
            true
        })?;
        Ok(v)
    }

    /// Pages mapped.
    pub fn pages(&self) -> u64 {
        self.map.pages()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use proptest::prelude::*;

    use super::*;
    use crate::btree::mem::Mem;

    const OWNER: Ino = 9;

    fn run(start: u64, len: u64, value: u64) -> Run<u64> {
        Run { start, len, value }
    }

    /// The map says what `model` does, by every read, and its pages are
    /// exactly the tree's.
    fn assert_same(m: &FileMap, mem: &Mem, model: &RangeMap<u64>) {
        let mut nodes = HashSet::new();
        let (runs, shape) = m
            .check(mem, |p| {
                nodes.insert(p);
            })
            .unwrap();
        assert_eq!(runs, model.iter().collect::<Vec<_>>());
        assert_eq!(nodes, mem.in_use(), "tree pages leaked or lost");
        assert_eq!(
            (m.pages(), m.runs()),
            (model.pages(), model.run_count() as u64)
        );
        assert_eq!(
            m.parts().root == 0,
            model.run_count() <= 1,
            "inline iff one run"
        );
        assert_eq!(
            shape.records,
            if m.parts().root == 0 { 0 } else { m.runs() }
        );
        for at in [0, 1, 7, 63, 64, 65, 200, 500, 1000] {
            assert_eq!(m.get(mem, at).unwrap(), model.get(at), "get {at}");
            assert_eq!(
                m.first_at_or_after(mem, at).unwrap(),
                model.first_at_or_after(at),
                "first at or after {at}"
            );
            for len in [1, 5, 100] {
                assert_eq!(m.range(mem, at, len).unwrap(), model.range(at, len));
            }
        }
    }

    #[derive(Debug, Clone)]
    enum Change {
        Map(u64, u64, u64),
        Unmap(u64, u64),
        /// Many single pages at once, every other index (a clone of a
        /// scattered file).
        Scatter(u64, u64, u64),
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            4 => (0u64..600, 1u64..40, 0u64..5000).prop_map(|(i, l, p)| Change::Map(i, l, p)),
            2 => (0u64..600, 1u64..200).prop_map(|(i, l)| Change::Unmap(i, l)),
            1 => (0u64..100, 1u64..400, 0u64..5000).prop_map(|(i, n, p)| Change::Scatter(i, n, p)),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn the_map_matches_a_model(changes in proptest::collection::vec(change(), 1..40)) {
            let (mut mem, mut m, mut model) = (Mem::default(), FileMap::new(), RangeMap::new());
            for c in changes {
                let (index, len, runs) = match c {
                    Change::Map(i, l, p) => (i, l, vec![run(i, l, 100_000 + p)]),
                    Change::Unmap(i, l) => (i, l, vec![]),
                    Change::Scatter(i, n, p) => (
                        i,
                        2 * n,
                        (0..n).map(|k| run(i + 2 * k, 1, 200_000 + p + 3 * k)).collect(),
                    ),
                };
                let want = model.remove(index, len);
                for r in &runs {
                    model.insert(r.start, r.len, r.value);
                }
                let got = m.replace(&mut mem, OWNER, index, len, &runs).unwrap();
                prop_assert_eq!(got, want);
                assert_same(&m, &mem, &model);
            }
            let old = m.clear(&mut mem).unwrap();
            prop_assert_eq!(old, model.iter().collect::<Vec<_>>());
            prop_assert!(mem.in_use().is_empty(), "a cleared map keeps no pages");
        }
    }

    #[test]
    fn one_run_costs_no_page_and_a_second_makes_a_tree() {
        let (mut mem, mut m) = (Mem::default(), FileMap::new());
        m.replace(&mut mem, OWNER, 0, 10, &[run(0, 10, 500)])
            .unwrap();
        // Continuing the run keeps it one.
        m.replace(&mut mem, OWNER, 10, 5, &[run(10, 5, 510)])
            .unwrap();
        assert_eq!((m.parts().root, m.runs(), m.pages()), (0, 1, 15));
        assert!(mem.in_use().is_empty());
        m.replace(&mut mem, OWNER, 20, 1, &[run(20, 1, 9)]).unwrap();
        assert_ne!(m.parts().root, 0);
        assert_eq!(mem.in_use().len(), 1);
        // Unmapping the second run goes back inline and frees the tree.
        m.replace(&mut mem, OWNER, 20, 1, &[]).unwrap();
        assert_eq!((m.parts().root, m.runs()), (0, 1));
        assert!(mem.in_use().is_empty());
    }

    #[test]
    fn a_damaged_tree_is_reported_not_trusted() {
        let (mut mem, mut m) = (Mem::default(), FileMap::new());
        let runs: Vec<Run<u64>> = (0..50).map(|k| run(2 * k, 1, 1000 + 5 * k)).collect();
        m.replace(&mut mem, OWNER, 0, 100, &runs).unwrap();
        let root = m.parts().root;
        // The same tree under another inode's name is not this file's.
        let other = FileMap::from_parts(OWNER + 1, m.parts()).unwrap();
        assert!(other.check(&mem, |_| {}).is_err());
        assert!(other.get(&mem, 0).is_err());
        // A page count that disagrees with the tree.
        let mut parts = m.parts();
        parts.pages += 1;
        let off = FileMap::from_parts(OWNER, parts).unwrap();
        assert!(off
            .check(&mem, |_| {})
            .unwrap_err()
            .to_string()
            .contains("recorded"));
        // A flipped byte in the node.
        mem.pages.get_mut(&root).unwrap()[40] ^= 0x10;
        assert!(m.check(&mem, |_| {}).is_err());
    }
}
