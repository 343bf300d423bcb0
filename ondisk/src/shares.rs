//! Share counts on the media: a B+tree ([`crate::btree::Shares`]) of runs of pfns
//! mapped by two or more (file, page index) pairs. A mapped pfn without a
//! run is mapped once, so a file system that shares nothing stores nothing
//! here, and a page's count costs no memory (docs/format.md §7).
//!
//! Whether a pfn is mapped at all is the page maps' to say, not this
//! tree's: [`ShareTree::add`] and [`ShareTree::drop`] are given pfns that
//! are mapped, and `drop` says which ones that leaves mapped by nobody.
//!
//! Runs are kept as few as they can be: after a change, adjacent runs of
//! one count are one record.

use crate::btree::runs::RunKind;
use crate::btree::{Pages, Shape, Shares, Tree};
use crate::error::{Corrupt, Error, Result};
use crate::rangemap::{RangeMap, Run};

/// The share tree: its root, 0 when nothing is shared.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShareTree {
    tree: Tree<Shares>,
}

/// The tree is the file system's, owned by no inode.
const OWNER: u64 = 0;

impl ShareTree {
    pub fn new(root: u64) -> Self {
        ShareTree {
            tree: Tree::new(root, OWNER),
        }
    }

    pub fn root(&self) -> u64 {
        self.tree.root()
    }

    /// How many (file, index) pairs map `pfn`, given that it is mapped.
    pub fn count(&self, pages: &impl Pages, pfn: u64) -> Result<u32> {
        Ok(match self.tree.floor(pages, &pfn)? {
            Some((k, r)) if pfn - k < r.len => r.count,
            _ => 1,
        })
    }

    /// The runs of count 2 or more in `[start, start + len)`, clipped to it.
    pub fn shared_in(&self, pages: &impl Pages, start: u64, len: u64) -> Result<Vec<Run<u32>>> {
        let (_, m) = self.around(pages, start, len)?;
        Ok(m.range(start, len))
    }

    /// The counts of mapped pfns `[start, start + len)` as runs covering
    /// them all: the tree's runs, and count 1 between them.
    pub fn counts_in(&self, pages: &impl Pages, start: u64, len: u64) -> Result<Vec<Run<u32>>> {
        let (_, mut m) = self.around(pages, start, len)?;
        Self::fill_once(&mut m, start, len);
        Ok(m.range(start, len))
    }

    /// Every run, in pfn order, until `visit` returns false.
    pub fn each(&self, pages: &impl Pages, visit: impl FnMut(Run<u32>) -> bool) -> Result<()> {
        self.tree.each_run(pages, visit)
    }

    fn around(
        &self,
        pages: &impl Pages,
        start: u64,
        len: u64,
    ) -> Result<(Vec<u64>, RangeMap<u32>)> {
        self.tree.around(pages, start, len)
    }

    /// Replaces the records `old` with the runs of `new` that count 2 or
    /// more.
    fn rewrite(&mut self, pages: &mut impl Pages, old: &[u64], new: &RangeMap<u32>) -> Result<()> {
        self.tree
            .rewrite(pages, old, new.iter().filter(|r| r.value >= 2))
            .map(|_| ())
    }

    /// `m` with the pages of `[start, start + len)` that have no run given
    /// count 1: they are mapped once.
    fn fill_once(m: &mut RangeMap<u32>, start: u64, len: u64) {
        let mut next = start;
        let end = start + len;
        let gaps: Vec<(u64, u64)> = m
            .range(start, len)
            .iter()
            .chain(std::iter::once(&Run {
                start: end,
                len: 0,
                value: 0,
            }))
            .filter_map(|r| {
                let gap = (r.start > next).then(|| (next, r.start - next));
                next = next.max(r.start + r.len);
                gap
            })
            .collect();
        for (s, l) in gaps {
            m.insert(s, l, 1);
        }
    }

    fn out_of_range(start: u64, len: u64) -> Error {
        Corrupt::new(
            "share counts",
            format!("pfns {start}+{len}: a count would pass the limit or go below zero"),
        )
        .into()
    }

    /// One reference more to each pfn of `[start, start + len)` (all
    /// mapped). Changes nothing when a count would pass `u32::MAX`.
    pub fn add(&mut self, pages: &mut impl Pages, start: u64, len: u64) -> Result<()> {
        if len == 0 {
            return Ok(());
        }
        let (keys, mut m) = self.around(pages, start, len)?;
        Self::fill_once(&mut m, start, len);
        m.add(start, len, 1)
            .map_err(|_| Self::out_of_range(start, len))?;
        self.rewrite(pages, &keys, &m)
    }

    /// One reference fewer to each pfn of `[start, start + len)` (all
    /// mapped); returns the pfn runs now mapped by nobody.
    pub fn drop(&mut self, pages: &mut impl Pages, start: u64, len: u64) -> Result<Vec<Run<u64>>> {
        if len == 0 {
            return Ok(Vec::new());
        }
        let (keys, mut m) = self.around(pages, start, len)?;
        Self::fill_once(&mut m, start, len);
        let freed = m
            .add(start, len, -1)
            .map_err(|_| Self::out_of_range(start, len))?;
        if !keys.is_empty() {
            self.rewrite(pages, &keys, &m)?;
        }
        Ok(freed
            .into_iter()
            .map(|r| Run {
                start: r.start,
                len: r.len,
                value: r.start,
            })
            .collect())
    }

    /// Batches at least this long, and at least a sixteenth of the tree,
    /// rebuild the tree rather than change it run by run (a clone of a
    /// file of many scattered pages is one op of as many runs).
    const BATCH: usize = 256;

    fn rebuild_for(&self, pages: &impl Pages, runs: usize) -> Result<bool> {
        Ok(runs >= Self::BATCH && (runs as u64).saturating_mul(16) >= self.tree.estimate(pages)?)
    }

    /// Every run of the tree, as a map.
    fn all(&self, pages: &impl Pages) -> Result<RangeMap<u32>> {
        let mut m = RangeMap::new();
        self.each(pages, |r| {
            m.insert(r.start, r.len, r.value);
            true
        })?;
        Ok(m)
    }

    /// The tree anew from `m`'s runs of 2 and more; the old nodes freed.
    fn replace(&mut self, pages: &mut impl Pages, m: &RangeMap<u32>) -> Result<()> {
        self.tree.free_all(pages)?;
        *self = Self::build(pages, m.iter().filter(|r| r.value >= 2))?;
        Ok(())
    }

    /// [`ShareTree::add`] for each of `runs` `(pfn, len)`, in order.
    pub fn add_all(&mut self, pages: &mut impl Pages, runs: &[(u64, u64)]) -> Result<()> {
        if !self.rebuild_for(pages, runs.len())? {
            return runs.iter().try_for_each(|&(s, l)| self.add(pages, s, l));
        }
        let mut m = self.all(pages)?;
        for &(s, l) in runs {
            Self::fill_once(&mut m, s, l);
            m.add(s, l, 1).map_err(|_| Self::out_of_range(s, l))?;
        }
        self.replace(pages, &m)
    }

    /// [`ShareTree::drop`] for each of `runs` `(pfn, len)`, in order;
    /// returns the pfn runs now mapped by nobody.
    pub fn drop_all(
        &mut self,
        pages: &mut impl Pages,
        runs: &[(u64, u64)],
    ) -> Result<Vec<Run<u64>>> {
        let mut freed = Vec::new();
        if !self.rebuild_for(pages, runs.len())? {
            for &(s, l) in runs {
                freed.extend(self.drop(pages, s, l)?);
            }
            return Ok(freed);
        }
        let mut m = self.all(pages)?;
        for &(s, l) in runs {
            Self::fill_once(&mut m, s, l);
            let f = m.add(s, l, -1).map_err(|_| Self::out_of_range(s, l))?;
            freed.extend(f.into_iter().map(|r| Run {
                start: r.start,
                len: r.len,
                value: r.start,
            }));
        }
        // Counts of 1 are not stored; the map keeps them for this batch
        // only (a later run of it may meet them again).
        self.replace(pages, &m)?;
        Ok(freed)
    }

    /// A new tree holding `runs` (counts of 2 and more, in pfn order, not
    /// overlapping), built bottom up: fsck's rebuild, and big batches.
    pub fn build(pages: &mut impl Pages, runs: impl IntoIterator<Item = Run<u32>>) -> Result<Self> {
        Ok(ShareTree {
            tree: Tree::build(
                pages,
                OWNER,
                runs.into_iter().map(|r| (r.start, Shares::value(&r))),
            )?,
        })
    }

    /// Checks the tree (`btree::Tree::check`) and that its runs neither
    /// overlap nor wrap; returns them and the tree's shape.
    pub fn check(
        &self,
        pages: &impl Pages,
        on_page: impl FnMut(u64),
    ) -> Result<(RangeMap<u32>, Shape)> {
        let shape = self.tree.check(pages, on_page)?;
        let mut runs = RangeMap::new();
        let mut end = 0u64;
        let mut bad = None;
        self.each(pages, |r| match r.start.checked_add(r.len) {
            Some(e) if r.start >= end => {
                end = e;
                runs.insert(r.start, r.len, r.value);
                true
            }
            _ => {
                bad = Some(r);
                false
            }
        })?;
        if let Some(r) = bad {
            return Err(Corrupt::new(
                "share counts",
                format!(
                    "the run at pfn {} overlaps the one before it or wraps",
                    r.start
                ),
            )
            .into());
        }
        Ok((runs, shape))
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::btree::mem::Mem;

    #[test]
    fn nothing_shared_stores_nothing() {
        let mut m = Mem::default();
        let mut t = ShareTree::new(0);
        assert_eq!(t.count(&m, 5).unwrap(), 1);
        let freed = t.drop(&mut m, 10, 4).unwrap();
        assert_eq!(
            freed,
            vec![Run {
                start: 10,
                len: 4,
                value: 10
            }]
        );
        assert_eq!((t.root(), m.writes), (0, 0));
    }

    #[test]
    fn a_clone_and_its_undoing() {
        let mut m = Mem::default();
        let mut t = ShareTree::new(0);
        t.add(&mut m, 100, 50).unwrap();
        t.add(&mut m, 120, 10).unwrap();
        assert_eq!(t.count(&m, 99).unwrap(), 1);
        assert_eq!(t.count(&m, 100).unwrap(), 2);
        assert_eq!(t.count(&m, 125).unwrap(), 3);
        assert_eq!(t.shared_in(&m, 118, 4).unwrap().len(), 2);
        let runs: Vec<(u64, u64, u32)> = t
            .counts_in(&m, 95, 60)
            .unwrap()
            .iter()
            .map(|r| (r.start, r.len, r.value))
            .collect();
        assert_eq!(
            runs,
            vec![
                (95, 5, 1),
                (100, 20, 2),
                (120, 10, 3),
                (130, 20, 2),
                (150, 5, 1)
            ]
        );
        assert!(t.drop(&mut m, 100, 50).unwrap().is_empty());
        assert_eq!(t.count(&m, 100).unwrap(), 1);
        assert_eq!(t.count(&m, 125).unwrap(), 2);
        assert!(t.drop(&mut m, 120, 10).unwrap().is_empty());
        assert_eq!(t.root(), 0, "nothing shared: no pages");
        assert!(m.pages.is_empty());
    }

    #[test]
    fn adjacent_clones_make_one_run() {
        let mut m = Mem::default();
        let mut t = ShareTree::new(0);
        for p in 0..1000 {
            t.add(&mut m, p, 1).unwrap();
        }
        let (runs, shape) = t.check(&m, |_| {}).unwrap();
        assert_eq!(runs.run_count(), 1);
        assert_eq!(shape.records, 1);
    }

    /// Batches long enough to rebuild the tree give what run-by-run
    /// changes give.
    #[test]
    fn batches_match_runs_one_by_one() {
        let runs: Vec<(u64, u64)> = (0..3000u64)
            .map(|i| (i * 2 + (i % 7) * 10_000, 1 + i % 3))
            .collect();
        let mut full: RangeMap<u32> = RangeMap::new();
        for &(s, l) in &runs {
            full.insert(s, l, 1);
        }
        let (mut a, mut b) = (Mem::default(), Mem::default());
        let (mut ta, mut tb) = (ShareTree::new(0), ShareTree::new(0));
        let halves: Vec<Vec<(u64, u64)>> = vec![
            runs.clone(),
            runs.iter().copied().step_by(2).collect(),
            runs.iter().copied().skip(100).take(400).collect(),
        ];
        for batch in &halves {
            ta.add_all(&mut a, batch).unwrap();
            for &(s, l) in batch {
                tb.add(&mut b, s, l).unwrap();
                full.add(s, l, 1).unwrap();
            }
            let (ra, sa) = ta.check(&a, |_| {}).unwrap();
            let (rb, _) = tb.check(&b, |_| {}).unwrap();
            assert_eq!(ra, rb);
            assert!(sa.depth >= 2, "{sa:?}");
        }
        let drop: Vec<(u64, u64)> = runs
            .iter()
            .copied()
            .chain(runs.iter().copied().step_by(3))
            .collect();
        let fa = ta.drop_all(&mut a, &drop).unwrap();
        let mut fb = Vec::new();
        for &(s, l) in &drop {
            fb.extend(tb.drop(&mut b, s, l).unwrap());
        }
        let canon = |v: Vec<Run<u64>>| {
            let mut m: RangeMap<u64> = RangeMap::new();
            for r in v {
                m.insert(r.start, r.len, r.value);
            }
            m.iter().collect::<Vec<_>>()
        };
        assert_eq!(canon(fa), canon(fb));
        assert_eq!(
            ta.check(&a, |_| {}).unwrap().0,
            tb.check(&b, |_| {}).unwrap().0
        );
        // Every node of the trees built and dropped was freed or is in use.
        let mut pfns = std::collections::HashSet::new();
        ta.check(&a, |p| {
            pfns.insert(p);
        })
        .unwrap();
        assert_eq!(pfns.len(), a.pages.len());
    }

    #[derive(Debug, Clone)]
    enum Op {
        Map(u16, u8),
        Add(u16, u8),
        Drop(u16, u8),
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]

        /// Against full counts kept in a map: the tree holds exactly the
        /// counts of 2 and more, and drop frees exactly what falls to 0.
        #[test]
        fn matches_full_counts(ops in prop::collection::vec(
            prop_oneof![
                (0..2000u16, 1..40u8).prop_map(|(s, l)| Op::Map(s, l)),
                (0..2000u16, 1..40u8).prop_map(|(s, l)| Op::Add(s, l)),
                (0..2000u16, 1..40u8).prop_map(|(s, l)| Op::Drop(s, l)),
            ],
            1..400,
        )) {
            let mut m = Mem::default();
            let mut t = ShareTree::new(0);
            let mut full: RangeMap<u32> = RangeMap::new();
            for o in ops {
                match o {
                    Op::Map(s, l) => {
                        let (s, l) = (u64::from(s) * 3, u64::from(l));
                        if full.range(s, l).is_empty() {
                            full.insert(s, l, 1);
                        }
                    }
                    // Within a mapped run: the `s`-th, from `l % 8` on.
                    Op::Add(s, l) | Op::Drop(s, l) => {
                        let runs: Vec<_> = full.iter().collect();
                        if runs.is_empty() {
                            continue;
                        }
                        let r = runs[usize::from(s) % runs.len()];
                        let off = u64::from(l % 8).min(r.len - 1);
                        let (s, l) = (r.start + off, (r.len - off).min(u64::from(l)));
                        if let Op::Add(..) = o {
                            t.add(&mut m, s, l).unwrap();
                            full.add(s, l, 1).unwrap();
                        } else {
                            let got = t.drop(&mut m, s, l).unwrap();
                            let want: Vec<_> = full.add(s, l, -1).unwrap().into_iter()
                                .map(|r| Run { start: r.start, len: r.len, value: r.start }).collect();
                            prop_assert_eq!(got, want);
                        }
                    }
                }
                let (runs, _) = t.check(&m, |_| {}).unwrap();
                let want = RangeMap::from_runs(full.iter().filter(|r| r.value >= 2)).unwrap();
                prop_assert_eq!(runs.iter().collect::<Vec<_>>(), want.iter().collect::<Vec<_>>());
                for r in full.iter().take(5) {
                    prop_assert_eq!(t.count(&m, r.start).unwrap(), r.value);
                }
            }
        }
    }
}
