//! Maps from ranges of page numbers to values, kept as runs.
//!
//! One structure serves three uses: a file's page map (index -> pfn, where a
//! run's pfns are consecutive), share counts (pfn -> count) and the
//! allocator's free set (pfn -> 1). A run stores the value of its first page;
//! [`RunValue::advance`] gives the value `n` pages in.
//!
//! Invariants, kept by every method here and checked by [`RangeMap::check`]
//! after decoding: runs have `len > 0`, do not overlap, do not wrap past
//! `u64::MAX`, and two adjacent runs that could be one are one.

use std::collections::BTreeMap;

/// A value of a run of pages.
pub trait RunValue: Copy + Eq + std::fmt::Debug {
    /// The value of the page `offset` pages into a run starting with `self`.
    fn advance(self, offset: u64) -> Self;
}

/// A pfn: consecutive pages of a run lie at consecutive pfns.
impl RunValue for u64 {
    fn advance(self, offset: u64) -> u64 {
        self.wrapping_add(offset)
    }
}

/// A count: every page of a run has the same count.
impl RunValue for u32 {
    fn advance(self, _offset: u64) -> u32 {
        self
    }
}

/// One run: `len` pages from `start`, the first with value `value`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run<V> {
    pub start: u64,
    pub len: u64,
    pub value: V,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RangeMap<V> {
    /// start -> (len, value of the first page)
    runs: BTreeMap<u64, (u64, V)>,
}

impl<V: RunValue> RangeMap<V> {
    pub fn new() -> Self {
        RangeMap {
            runs: BTreeMap::new(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.runs.is_empty()
    }

    /// Number of runs (not pages).
    pub fn run_count(&self) -> usize {
        self.runs.len()
    }

    /// Total pages covered.
    pub fn pages(&self) -> u64 {
        self.runs.values().map(|(len, _)| len).sum()
    }

    /// The value at page `at`, if any run covers it.
    pub fn get(&self, at: u64) -> Option<V> {
        let (&s, &(len, v)) = self.runs.range(..=at).next_back()?;
        (at - s < len).then(|| v.advance(at - s))
    }

    /// All runs in order.
    pub fn iter(&self) -> impl Iterator<Item = Run<V>> + '_ {
        self.runs
            .iter()
            .map(|(&start, &(len, value))| Run { start, len, value })
    }

    /// The parts of runs inside `[start, start + len)`, clipped to it.
    pub fn range(&self, start: u64, len: u64) -> Vec<Run<V>> {
        let end = start.saturating_add(len);
        let mut out = Vec::new();
        let first = self
            .runs
            .range(..start)
            .next_back()
            .map(|(&s, _)| s)
            .unwrap_or(start);
        for (&s, &(l, v)) in self.runs.range(first..end) {
            let (a, b) = (s.max(start), (s + l).min(end));
            if a < b {
                out.push(Run {
                    start: a,
                    len: b - a,
                    value: v.advance(a - s),
                });
            }
        }
        out
    }

    /// The first run that covers or follows page `from`, clipped to start
    /// at `from`.
    pub fn first_at_or_after(&self, from: u64) -> Option<Run<V>> {
        if let Some((&s, &(l, v))) = self.runs.range(..=from).next_back() {
            if from - s < l {
                return Some(Run {
                    start: from,
                    len: l - (from - s),
                    value: v.advance(from - s),
                });
            }
        }
        let (&s, &(l, v)) = self.runs.range(from..).next()?;
        Some(Run {
            start: s,
            len: l,
            value: v,
        })
    }

    /// Splits the run covering `at` (if it starts before `at`) in two.
    fn split_at(&mut self, at: u64) {
        if let Some((&s, &(l, v))) = self.runs.range(..at).next_back() {
            if at - s < l {
                self.runs.insert(s, (at - s, v));
                self.runs.insert(at, (l - (at - s), v.advance(at - s)));
            }
        }
    }

    /// Removes everything in `[start, start + len)` and returns it.
    pub fn remove(&mut self, start: u64, len: u64) -> Vec<Run<V>> {
        if len == 0 {
            return Vec::new();
        }
        let end = start.saturating_add(len);
        self.split_at(start);
        self.split_at(end);
        let keys: Vec<u64> = self.runs.range(start..end).map(|(&s, _)| s).collect();
        keys.into_iter()
            .filter_map(|s| {
                self.runs.remove(&s).map(|(len, value)| Run {
                    start: s,
                    len,
                    value,
                })
            })
            .collect()
    }

    /// Sets `[start, start + len)` to a run starting with `value`,
    /// replacing what was there, and returns what was replaced.
    pub fn insert(&mut self, start: u64, len: u64, value: V) -> Vec<Run<V>> {
        let len = start.saturating_add(len) - start;
        let old = self.remove(start, len);
        if len == 0 {
            return old;
        }
        let (mut s, mut l, v) = (start, len, value);
        let mut first = v;
        // Join the run ending at `start` when this one continues it.
        if let Some((&ps, &(pl, pv))) = self.runs.range(..start).next_back() {
            if ps + pl == start && pv.advance(pl) == v {
                self.runs.remove(&ps);
                s = ps;
                l += pl;
                first = pv;
            }
        }
        // Join the run starting right after.
        if let Some(&(nl, nv)) = self.runs.get(&(start + len)) {
            if v.advance(len) == nv {
                self.runs.remove(&(start + len));
                l += nl;
            }
        }
        self.runs.insert(s, (l, first));
        old
    }

    /// The map of `runs` exactly as given (as a decoder reads them): they
    /// must be in ascending order and canonical, or `Err` says which is not.
    pub fn from_runs(runs: impl IntoIterator<Item = Run<V>>) -> Result<Self, String> {
        let mut m = RangeMap::new();
        let mut last = None;
        for r in runs {
            if last.is_some_and(|l| r.start <= l) {
                return Err(format!("run at {} is out of order", r.start));
            }
            last = Some(r.start);
            m.runs.insert(r.start, (r.len, r.value));
        }
        m.check()?;
        Ok(m)
    }

    /// Checks the invariants; `Err` says which run breaks them.
    pub fn check(&self) -> Result<(), String> {
        let mut prev: Option<Run<V>> = None;
        for r in self.iter() {
            if r.len == 0 {
                return Err(format!("empty run at {}", r.start));
            }
            if r.start.checked_add(r.len).is_none() {
                return Err(format!("run at {} of {} pages wraps", r.start, r.len));
            }
            if let Some(p) = prev {
                if p.start + p.len > r.start {
                    return Err(format!("runs at {} and {} overlap", p.start, r.start));
                }
                if p.start + p.len == r.start && p.value.advance(p.len) == r.value {
                    return Err(format!("runs at {} and {} should be one", p.start, r.start));
                }
            }
            prev = Some(r);
        }
        Ok(())
    }
}

/// A count would leave `0..=u32::MAX`: a page dropped more often than it
/// was referenced, or referenced more than four billion times.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CountOutOfRange {
    pub pfn: u64,
}

impl RangeMap<u32> {
    /// Adds `delta` to the count of every page in `[start, start + len)`;
    /// pages without a run count 0. Returns the runs whose count fell to 0.
    /// When a count would go below 0 or past `u32::MAX`, nothing changes.
    pub fn add(
        &mut self,
        start: u64,
        len: u64,
        delta: i64,
    ) -> Result<Vec<Run<u32>>, CountOutOfRange> {
        if delta < 0 {
            let mut next = start;
            for r in self.range(start, len) {
                if r.start != next || i64::from(r.value) < -delta {
                    return Err(CountOutOfRange {
                        pfn: if r.start != next { next } else { r.start },
                    });
                }
                next = r.start + r.len;
            }
            if next != start.saturating_add(len) {
                return Err(CountOutOfRange { pfn: next });
            }
        } else if let Some(r) = self
            .range(start, len)
            .into_iter()
            .find(|r| i64::from(r.value) + delta > i64::from(u32::MAX))
        {
            return Err(CountOutOfRange { pfn: r.start });
        }
        let old = self.remove(start, len);
        let mut freed = Vec::new();
        let mut put = |s: u64, l: u64, c: i64, map: &mut Self| {
            if c > 0 {
                map.insert(s, l, c as u32);
            } else {
                freed.push(Run {
                    start: s,
                    len: l,
                    value: 0,
                });
            }
        };
        let mut next = start;
        for r in old {
            if r.start > next {
                put(next, r.start - next, delta, self);
            }
            put(r.start, r.len, i64::from(r.value) + delta, self);
            next = r.start + r.len;
        }
        let end = start.saturating_add(len);
        if next < end {
            put(next, end - next, delta, self);
        }
        Ok(freed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn extents_merge_and_split() {
        let mut m: RangeMap<u64> = RangeMap::new();
        m.insert(0, 4, 100);
        m.insert(4, 4, 104);
        assert_eq!(m.run_count(), 1, "contiguous pfns join");
        let old = m.insert(2, 1, 500);
        assert_eq!(
            old,
            vec![Run {
                start: 2,
                len: 1,
                value: 102
            }]
        );
        assert_eq!(m.run_count(), 3);
        assert_eq!(m.get(3), Some(103));
        assert_eq!(m.get(2), Some(500));
        assert_eq!(m.get(8), None);
        m.insert(2, 1, 102);
        assert_eq!(m.run_count(), 1, "restoring the pfn rejoins");
        assert_eq!(m.remove(0, 8).len(), 1);
        assert!(m.is_empty());
        m.check().unwrap();
    }

    #[test]
    fn boundaries() {
        let mut m: RangeMap<u64> = RangeMap::new();
        m.insert(u64::MAX - 1, 1, 7);
        assert_eq!(m.get(u64::MAX - 1), Some(7));
        m.insert(0, 1, 9);
        assert_eq!(m.range(0, u64::MAX).len(), 2);
        m.check().unwrap();
    }

    #[test]
    fn counts_add_and_free() {
        let mut c: RangeMap<u32> = RangeMap::new();
        c.add(10, 10, 1).unwrap();
        c.add(15, 10, 1).unwrap();
        assert_eq!(c.get(14), Some(1));
        assert_eq!(c.get(15), Some(2));
        assert_eq!(c.get(24), Some(1));
        assert_eq!(c.add(5, 10, -1), Err(CountOutOfRange { pfn: 5 }));
        assert_eq!(c.get(12), Some(1), "failed add changes nothing");
        let freed = c.add(10, 15, -1).unwrap();
        assert_eq!(freed.iter().map(|r| r.len).sum::<u64>(), 10);
        assert_eq!(c.pages(), 5);
        c.add(15, 5, -1).unwrap();
        assert!(c.is_empty());
        c.add(0, 2, i64::from(u32::MAX)).unwrap();
        assert_eq!(c.add(1, 1, 1), Err(CountOutOfRange { pfn: 1 }));
        assert_eq!(c.get(1), Some(u32::MAX));
        c.check().unwrap();
    }

    #[test]
    fn runs_as_decoded_are_checked() {
        let mut m: RangeMap<u32> = RangeMap::new();
        m.add(5, 10, 2).unwrap();
        m.add(100, 1, 1).unwrap();
        let back = RangeMap::from_runs(m.iter()).unwrap();
        assert_eq!(back, m);
        // Runs that overlap, are empty, wrap, should have been merged or
        // come out of order are refused.
        let run = |start, len, value| Run { start, len, value };
        for bad in [
            vec![run(5u64, 10u64, 1u32), run(8, 2, 1)],
            vec![run(5, 0, 1)],
            vec![run(u64::MAX - 1, 5, 1)],
            vec![run(5, 2, 1), run(7, 2, 1)],
            vec![run(9, 1, 1), run(5, 2, 1)],
            vec![run(5, 1, 1), run(5, 1, 2)],
        ] {
            assert!(RangeMap::from_runs(bad.clone()).is_err(), "{bad:?}");
        }
    }

    proptest! {
        #[test]
        fn counts_match_a_model(ops in proptest::collection::vec((0u64..64, 1u64..16, prop::bool::ANY), 1..60)) {
            let mut c: RangeMap<u32> = RangeMap::new();
            let mut model = [0i64; 96];
            for (s, l, up) in ops {
                let d = if up { 1 } else { -1 };
                let ok = (s..s + l).all(|i| model[i as usize] + d >= 0);
                let r = c.add(s, l, d);
                prop_assert_eq!(r.is_ok(), ok);
                if ok {
                    for i in s..s + l { model[i as usize] += d; }
                }
                c.check().unwrap();
                for (i, &m) in model.iter().enumerate() {
                    prop_assert_eq!(c.get(i as u64).map(i64::from).unwrap_or(0), m);
                }
            }
        }

        #[test]
        fn extents_match_a_model(ops in proptest::collection::vec((0u64..64, 1u64..16, 0u64..8, prop::bool::ANY), 1..60)) {
            let mut m: RangeMap<u64> = RangeMap::new();
            let mut model: [Option<u64>; 96] = [None; 96];
            for (s, l, p, ins) in ops {
                if ins {
                    m.insert(s, l, 1000 + p * 7);
                    for i in s..s + l { model[i as usize] = Some(1000 + p * 7 + (i - s)); }
                } else {
                    let gone = m.remove(s, l);
                    let n: u64 = gone.iter().map(|r| r.len).sum();
                    let expect = (s..s + l).filter(|&i| model[i as usize].is_some()).count() as u64;
                    prop_assert_eq!(n, expect);
                    for i in s..s + l { model[i as usize] = None; }
                }
                m.check().unwrap();
                for (i, &v) in model.iter().enumerate() {
                    prop_assert_eq!(m.get(i as u64), v);
                }
            }
        }
    }
}
