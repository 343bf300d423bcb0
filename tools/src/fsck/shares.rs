//! Pass 5: share counts against the page maps, and free space.

use pmemfs_ondisk::RangeMap;

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

pub fn check(c: &mut Check, l: &mut Loaded) {
    let counted = l.meta.counted_shares();
    let mut fix = false;
    let mut lines = [0usize; 3];
    let mut hidden = [0u64; 3];
    for (start, len, stored, refs) in diff(&l.meta.shares, &counted) {
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
        l.meta.shares = counted;
    }
    let g = l.sb.geometry;
    let used = l.meta.shares.pages();
    let shared: u64 = l
        .meta
        .shares
        .iter()
        .filter(|r| r.value > 1)
        .map(|r| r.len)
        .sum();
    let free = g
        .data_pages()
        .saturating_sub(used + l.ckpt_pfns.len() as u64);
    c.note(format!(
        "{used} data pages in use ({shared} shared), {} checkpoint pages, {free} of {} free",
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
}
