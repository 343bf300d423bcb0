//! Pass 5: share counts against the page maps, and free space.
//!
//! The share tree holds counts of 2 and more; a mapped page without a run
//! is mapped once. What the page maps say is the truth: any disagreement,
//! or a tree that cannot be read or whose nodes lie on pages in use, is
//! repaired by building the tree anew from them.

use std::collections::BTreeSet;

use pmemfs_ondisk::meta::count_run;
use pmemfs_ondisk::shares::ShareTree;
use pmemfs_ondisk::{Pmem, RangeMap};

use super::problem::Code;
use super::{Check, Loaded};

/// Findings of one kind printed before the rest are summed up in one line.
const MAX_LINES: usize = 10;

/// Segments where `a` and `b` differ: (start, len, count in a, count in b).
fn diff(a: &RangeMap<u32>, b: &RangeMap<u32>) -> Vec<(u64, u64, u32, u32)> {
    let mut cuts: Vec<u64> = a
        .iter()
        .chain(b.iter())
        .flat_map(|r| [r.start, r.start + r.len])
        .collect();
    cuts.sort_unstable();
    cuts.dedup();
    let mut out: Vec<(u64, u64, u32, u32)> = Vec::new();
    for w in cuts.windows(2) {
        let (x, y) = (w[0], w[1]);
        let (ca, cb) = (a.get(x).unwrap_or(0), b.get(x).unwrap_or(0));
        if ca == cb {
            continue;
        }
        match out.last_mut() {
            Some(last) if last.0 + last.1 == x && last.2 == ca && last.3 == cb => last.1 += y - x,
            _ => out.push((x, y - x, ca, cb)),
        }
    }
    out
}

/// What the tree says of every page: count 1 where a file maps it and the
/// tree has no run, the tree's count where it has one.
fn stored_counts(counted: &RangeMap<u32>, tree: &RangeMap<u32>) -> RangeMap<u32> {
    let mut s = RangeMap::new();
    for r in counted.iter() {
        s.insert(r.start, r.len, 1);
    }
    for r in tree.iter() {
        s.insert(r.start, r.len, r.value);
    }
    s
}

pub fn check(c: &mut Check, l: &mut Loaded, pmem: &Pmem) {
    // A map that cannot be read is pass 3's finding; without every map
    // there is nothing to count against.
    let Ok(mut counted) = l.meta.counted_shares(&l.over.view(pmem)) else {
        c.note("share counts not checked: a page map cannot be read");
        return;
    };
    // Maps to be written anew count as they will be, for files that are
    // still there (pass 4 may have freed some).
    let meta = &l.meta;
    l.rebuild
        .maps
        .retain(|ino, _| meta.inodes.contains_key(ino));
    for &r in l.rebuild.maps.values().flatten() {
        count_run(&mut counted, r);
    }
    let g = l.sb.geometry;
    let mut nodes = Vec::new();
    let tree = ShareTree::new(l.meta.share_root).check(&l.over.view(pmem), |p| nodes.push(p));
    let mut fix = false;
    let mut tree_pages = nodes.len() as u64;
    let stored = match tree {
        Ok((runs, _)) => {
            let ckpt: BTreeSet<u64> = l.ckpt_pfns.iter().copied().collect();
            let misplaced = nodes.iter().find(|&&p| {
                !g.in_data(p, 1)
                    || ckpt.contains(&p)
                    || counted.get(p).is_some()
                    || l.tree_nodes.contains(&p)
            });
            if let Some(p) = misplaced {
                fix |= c.found(
                    Code::ShareTreeBad,
                    format!("node {p} lies outside the data area, in the checkpoint, on a mapped page or in an inode's tree"),
                );
            }
            Some(stored_counts(&counted, &runs))
        }
        Err(e) => {
            tree_pages = 0;
            fix |= c.found(Code::ShareTreeBad, e.to_string());
            None
        }
    };
    let mut lines = [0usize; 3];
    let mut hidden = [0u64; 3];
    for (start, len, stored, refs) in stored.as_ref().map_or(vec![], |s| diff(s, &counted)) {
        let (k, code, detail) = match (stored, refs) {
            (_, 0) => (
                0,
                Code::PageLeaked,
                format!(
                    "pfns {start}..{} have share count {stored}, no file maps them",
                    start + len
                ),
            ),
            (0, _) => (
                1,
                Code::PageUncounted,
                format!(
                    "pfns {start}..{} are mapped {refs} times, counted free",
                    start + len
                ),
            ),
            _ => (
                2,
                Code::ShareWrong,
                format!(
                    "pfns {start}..{} have share count {stored}, files map them {refs} times",
                    start + len
                ),
            ),
        };
        lines[k] += 1;
        if lines[k] <= MAX_LINES {
            fix |= c.found(code, detail);
        } else {
            hidden[k] += 1;
        }
    }
    for (k, code) in [Code::PageLeaked, Code::PageUncounted, Code::ShareWrong]
        .into_iter()
        .enumerate()
    {
        if hidden[k] > 0 {
            fix |= c.found(code, format!("and {} more ranges like it", hidden[k]));
        }
    }
    if fix {
        // The old tree's nodes are free from here on; the new one is
        // written where nothing in use lies (`Image::from_parts`).
        l.meta.share_root = 0;
        l.rebuild.shares = true;
    }
    let used = counted.pages();
    let shared: u64 = counted.iter().filter(|r| r.value > 1).map(|r| r.len).sum();
    let inode_tree_pages = l.tree_nodes.len() as u64;
    let free = g
        .data_pages()
        .saturating_sub(used + tree_pages + inode_tree_pages + l.ckpt_pfns.len() as u64);
    c.note(format!(
        "{used} data pages in use ({shared} shared), {tree_pages} share-tree pages, {inode_tree_pages} pages of inodes' trees, {} checkpoint pages, {free} of {} free",
        l.ckpt_pfns.len(),
        g.data_pages()
    ));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_finds_each_kind() {
        let mut a = RangeMap::new();
        let mut b = RangeMap::new();
        a.add(10, 10, 1).unwrap();
        b.add(10, 10, 1).unwrap();
        assert!(diff(&a, &b).is_empty());
        a.add(30, 2, 1).unwrap(); // leaked
        b.add(40, 1, 1).unwrap(); // uncounted
        b.add(12, 2, 1).unwrap(); // wrong
        assert_eq!(
            diff(&a, &b),
            vec![(12, 2, 1, 2), (30, 2, 1, 0), (40, 1, 0, 1)]
        );
    }

    #[test]
    fn stored_counts_fill_in_the_ones() {
        let mut counted = RangeMap::new();
        counted.insert(10, 10, 1);
        counted.insert(12, 2, 2);
        let mut tree = RangeMap::new();
        tree.insert(12, 2, 3);
        tree.insert(50, 1, 2);
        let s = stored_counts(&counted, &tree);
        assert_eq!(diff(&s, &counted), vec![(12, 2, 3, 2), (50, 1, 2, 0)]);
    }
}
