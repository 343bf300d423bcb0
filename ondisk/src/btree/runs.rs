//! Trees whose records are runs of pages keyed by their first page (page
//! maps, share counts): a change reads the records around a range into a
//! [`RangeMap`], changes the map, and writes back the records that differ,
//! so that the map's rules (runs never overlap, adjacent runs that could
//! be one are one) are the tree's too.

use super::{Extent, Extents, Kind, Pages, ShareRun, Shares, Tree};
use crate::error::Result;
use crate::rangemap::{RangeMap, Run, RunValue};

/// A kind of tree whose records are runs.
pub trait RunKind: Kind<Key = u64> {
    type V: RunValue;
    fn run(start: u64, v: &Self::Value) -> Run<Self::V>;
    fn value(r: &Run<Self::V>) -> Self::Value;
}

impl RunKind for Extents {
    type V = u64;
    fn run(start: u64, v: &Extent) -> Run<u64> {
        Run {
            start,
            len: v.len,
            value: v.pfn,
        }
    }
    fn value(r: &Run<u64>) -> Extent {
        Extent {
            pfn: r.value,
            len: r.len,
        }
    }
}

impl RunKind for Shares {
    type V = u32;
    fn run(start: u64, v: &ShareRun) -> Run<u32> {
        Run {
            start,
            len: v.len,
            value: v.count,
        }
    }
    fn value(r: &Run<u32>) -> ShareRun {
        ShareRun {
            len: r.len,
            count: r.value,
        }
    }
}

impl<K: RunKind> Tree<K> {
    /// The records overlapping `[start, start + len)` or touching it, by
    /// key, and as a map: what a change of that range reads and rewrites.
    pub fn around(
        &self,
        pages: &impl Pages,
        start: u64,
        len: u64,
    ) -> Result<(Vec<u64>, RangeMap<K::V>)> {
        let lo = start.saturating_sub(1);
        let hi = start.saturating_add(len);
        let mut keys = Vec::new();
        let mut m = RangeMap::new();
        self.range_back(pages, &lo, |&k, v| {
            if k > hi {
                return false;
            }
            let r = K::run(k, v);
            // The record before `lo` counts only if it reaches it.
            if k >= lo || k.saturating_add(r.len) >= lo {
                keys.push(k);
                m.insert(r.start, r.len, r.value);
            }
            true
        })?;
        Ok((keys, m))
    }

    /// Every record, in key order, until `visit` returns false.
    pub fn each_run(
        &self,
        pages: &impl Pages,
        mut visit: impl FnMut(Run<K::V>) -> bool,
    ) -> Result<()> {
        self.range(pages, None, |&k, v| visit(K::run(k, v)))
    }

    /// Replaces the records `old` (keys [`Tree::around`] returned) with
    /// `new`: new values first (a key kept is changed where it lies), then
    /// the keys that are gone, so that the tree is not emptied and grown
    /// again on the way. Returns the records added less those removed.
    pub fn rewrite(
        &mut self,
        pages: &mut impl Pages,
        old: &[u64],
        new: impl IntoIterator<Item = Run<K::V>>,
    ) -> Result<i64> {
        let mut kept = Vec::new();
        let mut delta = 0i64;
        for r in new {
            if self.insert(pages, r.start, K::value(&r))?.is_none() {
                delta += 1;
            }
            kept.push(r.start);
        }
        for k in old.iter().filter(|k| !kept.contains(k)) {
            if self.remove(pages, k)?.is_some() {
                delta -= 1;
            }
        }
        Ok(delta)
    }
}
