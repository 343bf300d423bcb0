//! XArray tests in the manner of Linux `lib/test_xarray.c`: values equal
//! their index, boundary indexes, multi-order entries, marks; each test ends
//! with the array empty and no node leaked.

use pmemfs_pagecache::xarray::{split_add_value, Entry, Found, Mark, XArray, XaError};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

fn v(i: u64) -> Entry {
    Entry::from_value(i & Entry::MAX_VALUE)
}

fn xa() -> XArray {
    XArray::with_splitter(split_add_value)
}

fn assert_empty(xa: &XArray) {
    xa.check().expect("invariants");
    assert!(xa.is_empty(), "array not empty");
    assert_eq!(xa.node_count(), 0, "nodes leaked");
}

const BOUNDARIES: &[u64] = &[
    0,
    1,
    63,
    64,
    65,
    4095,
    4096,
    1 << 18,
    (1 << 30) - 1,
    1 << 32,
    1 << 48,
    (1 << 60) - 1,
    1 << 60,
    1 << 63,
    u64::MAX - 1,
    u64::MAX,
];

#[test]
fn value_equals_index_at_boundaries() {
    let xa = xa();
    for &i in BOUNDARIES {
        assert_eq!(xa.store(i, v(i)), None);
        assert_eq!(xa.load(i), Some(v(i)));
        xa.check().unwrap();
    }
    for &i in BOUNDARIES {
        assert_eq!(xa.load(i), Some(v(i)), "index {i:#x}");
        if i > 0 && !BOUNDARIES.contains(&(i - 1)) {
            assert_eq!(xa.load(i - 1), None);
        }
    }
    let found: Vec<u64> = xa.read().iter(0, u64::MAX).map(|f| f.index).collect();
    assert_eq!(found, BOUNDARIES);
    for &i in BOUNDARIES {
        assert_eq!(xa.erase(i), Some(v(i)));
        assert_eq!(xa.load(i), None);
        xa.check().unwrap();
    }
    assert_empty(&xa);
}

#[test]
fn each_boundary_alone() {
    for &i in BOUNDARIES {
        let xa = xa();
        xa.store(i, v(i));
        assert_eq!(xa.find(0, u64::MAX).map(|f| f.index), Some(i));
        assert_eq!(xa.erase(i), Some(v(i)));
        assert_empty(&xa);
    }
}

#[test]
fn insert_fails_when_occupied_and_cmpxchg() {
    let xa = xa();
    assert_eq!(xa.insert(5, v(5)), Ok(()));
    assert_eq!(xa.insert(5, v(6)), Err(XaError::Occupied));
    assert_eq!(xa.insert_order(0, 3, v(0)), Err(XaError::Occupied));
    assert_eq!(xa.cmpxchg(5, Some(v(4)), Some(v(7))), Err(Some(v(5))));
    assert_eq!(xa.cmpxchg(5, Some(v(5)), None), Ok(Some(v(5))));
    assert_eq!(xa.cmpxchg(6, None, Some(v(6))), Ok(None));
    assert_eq!(xa.insert_order(8, 3, v(8)), Ok(()));
    assert_eq!(xa.load(15), Some(v(15)));
    assert_eq!(xa.store_order(0, 64, None), Err(XaError::BadOrder));
    xa.erase_range(0, u64::MAX);
    assert_empty(&xa);
}

#[test]
fn multi_order_store_load_and_split() {
    for order in [1u8, 3, 6, 9, 12, 13, 20] {
        let xa = xa();
        let base = 7u64 << order;
        xa.store_order(base, order, Some(v(base))).unwrap();
        xa.set_mark(base, Mark::Dirty);
        xa.check().unwrap();
        let f = xa.load_found(base + 1).unwrap();
        assert_eq!(
            f,
            Found {
                index: base,
                order,
                entry: v(base)
            }
        );
        assert_eq!(xa.load(base - 1), None);
        assert_eq!(xa.load(base + (1 << order)), None);
        assert!(xa.get_mark(base + (1 << order) - 1, Mark::Dirty));
        // A partial store splits: neighbours keep value == index and marks.
        let mid = base + (1 << order) / 2;
        xa.store(mid, v(1000));
        xa.check().unwrap();
        assert_eq!(xa.load(mid), Some(v(1000)));
        for i in [base, mid - 1, mid + 1, base + (1 << order) - 1] {
            if i != mid && i < base + (1 << order) {
                assert_eq!(xa.load(i), Some(v(i)), "order {order} index {i}");
                assert!(xa.get_mark(i, Mark::Dirty));
            }
        }
        assert!(xa.get_mark(mid, Mark::Dirty), "store keeps marks");
        // A partial erase splits too.
        assert_eq!(xa.erase(base), Some(v(base)));
        assert_eq!(xa.load(base), None);
        let want = if base + 1 == mid {
            v(1000)
        } else {
            v(base + 1)
        };
        assert_eq!(xa.load(base + 1), Some(want));
        let n: u64 = xa.read().iter(0, u64::MAX).map(|f| 1u64 << f.order).sum();
        assert_eq!(n, (1 << order) - 1);
        xa.erase_range(base, base + (1 << order) - 1);
        assert_empty(&xa);
    }
}

#[test]
fn multi_order_overwrite_and_whole_erase() {
    let xa = xa();
    for i in 0..600 {
        xa.store(i, v(i));
    }
    xa.store_order(512, 9, Some(v(512))).unwrap();
    xa.check().unwrap();
    assert_eq!(xa.load_found(700).unwrap().order, 9);
    assert_eq!(xa.read().iter(0, u64::MAX).count(), 513);
    xa.store_order(512, 9, None).unwrap();
    xa.check().unwrap();
    xa.erase_range(0, 511);
    assert_empty(&xa);
    // An entry of the largest order.
    xa.store_order(1 << 63, 63, Some(v(0))).unwrap();
    assert_eq!(xa.load(u64::MAX), Some(v(u64::MAX)));
    assert_eq!(xa.load((1 << 63) - 1), None);
    xa.store_order(0, 63, Some(v(0))).unwrap();
    xa.erase(u64::MAX);
    assert_eq!(xa.load(u64::MAX - 1), Some(v(u64::MAX - 1)));
    xa.check().unwrap();
    xa.erase_range(0, u64::MAX);
    assert_empty(&xa);
}

#[test]
fn marks_and_next_marked() {
    let xa = xa();
    for i in (0..100_000u64).step_by(3) {
        xa.store(i, v(i));
    }
    for i in (0..100_000u64).step_by(999) {
        xa.set_mark(i, Mark::Shared);
    }
    xa.set_mark(1, Mark::Shared); // empty: no-op
    xa.check().unwrap();
    let marked: Vec<u64> = (0..100_000u64)
        .step_by(999)
        .filter(|i| i % 3 == 0)
        .collect();
    let mut got = Vec::new();
    let mut i = 0;
    while let Some(f) = xa.next_marked(i, Mark::Shared) {
        got.push(f.index);
        i = f.index + 1;
    }
    assert_eq!(got, marked);
    assert_eq!(xa.find_marked(0, u64::MAX, Mark::Dirty), None);
    // Clearing marks clears ancestors too.
    for &m in &marked {
        xa.clear_mark(m, Mark::Shared);
    }
    xa.check().unwrap();
    assert_eq!(xa.next_marked(0, Mark::Shared), None);
    // Marks at the top of the index space.
    xa.store(u64::MAX, v(u64::MAX));
    xa.set_mark(u64::MAX, Mark::Towrite);
    assert_eq!(
        xa.next_marked(5, Mark::Towrite).map(|f| f.index),
        Some(u64::MAX)
    );
    assert_eq!(xa.find_marked(5, u64::MAX - 1, Mark::Towrite), None);
    // Cursor: clear marks while walking.
    {
        let mut xas = xa.lock();
        while xas.find_marked(u64::MAX, Mark::Towrite).is_some() {
            xas.clear_mark(Mark::Towrite);
        }
    }
    assert_eq!(xa.next_marked(0, Mark::Towrite), None);
    xa.erase_range(0, u64::MAX);
    assert_empty(&xa);
}

#[test]
fn next_marked_inside_multi_order() {
    let xa = xa();
    xa.store_order(4096, 9, Some(v(4096))).unwrap();
    xa.set_mark(4100, Mark::Shared);
    let f = xa.next_marked(4200, Mark::Shared).unwrap();
    assert_eq!((f.index, f.order), (4096, 9));
    assert_eq!(xa.next_marked(4096 + 512, Mark::Shared), None);
    xa.erase_range(0, 1 << 20);
    assert_empty(&xa);
}

#[test]
fn cursor_pending_error() {
    let xa = xa();
    xa.store(10, v(10));
    let mut xas = xa.lock();
    xas.set(10);
    xas.insert(v(11));
    assert_eq!(xas.error(), Some(XaError::Occupied));
    xas.set(12);
    xas.store(Some(v(12)));
    assert_eq!(xas.load(), None, "no-op while an error is pending");
    xas.clear_error();
    xas.store(Some(v(12)));
    assert_eq!(xas.load(), Some(v(12)));
    xas.erase_range(0, 100);
    drop(xas);
    assert_empty(&xa);
}

#[test]
fn dense_million_then_erase_frees_every_node() {
    let xa = xa();
    let n = 1u64 << 16;
    for i in 0..n {
        xa.store(i, v(i));
    }
    // 1024 leaves + 16 + 1.
    assert_eq!(xa.node_count(), 1024 + 16 + 1);
    for i in (0..n).rev() {
        assert_eq!(xa.erase(i), Some(v(i)));
    }
    assert_empty(&xa);
}

#[test]
fn concurrent_readers_with_a_writer() {
    let xa = Arc::new(xa());
    for i in 0..4096 {
        xa.store(i * 2, v(i * 2));
    }
    let stop = Arc::new(AtomicBool::new(false));
    let readers: Vec<_> = (0..3)
        .map(|t| {
            let (xa, stop) = (xa.clone(), stop.clone());
            std::thread::spawn(move || {
                let mut loads = 0u64;
                while !stop.load(Ordering::Relaxed) || loads < 10_000 {
                    let i = (loads * 7919 + t) % 16384;
                    if let Some(e) = xa.load(i) {
                        assert_eq!(e, v(i), "a reader saw a value at the wrong index");
                    }
                    if loads % 64 == 0 {
                        let r = xa.read();
                        let mut prev = None;
                        for f in r.iter(0, 16384) {
                            assert_eq!(f.entry, v(f.index));
                            assert!(prev < Some(f.index));
                            prev = Some(f.index);
                        }
                    }
                    loads += 1;
                }
            })
        })
        .collect();
    for round in 0..20u64 {
        for i in 0..8192 {
            if (i + round) % 3 == 0 {
                xa.erase(i);
            } else {
                xa.store(i, v(i));
            }
        }
        xa.store_order(8192, 12, Some(v(8192))).unwrap();
        xa.erase(8192 + round);
    }
    stop.store(true, Ordering::Relaxed);
    for r in readers {
        r.join().expect("reader panicked");
    }
    xa.check().unwrap();
    xa.erase_range(0, u64::MAX);
    assert_empty(&xa);
}

#[derive(Clone, Debug)]
enum Op {
    Store(u64),
    StoreOrder(u64, u8),
    Erase(u64),
    EraseRange(u64, u64),
    Insert(u64),
    Cmpxchg(u64),
    SetMark(u64, u8),
    ClearMark(u64, u8),
    NextMarked(u64, u8),
    Find(u64),
}

fn index() -> impl Strategy<Value = u64> {
    prop_oneof![
        0u64..300,
        (0u64..300).prop_map(|i| (1 << 20) + i),
        (0u64..40).prop_map(|i| u64::MAX - i),
        any::<u64>(),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => index().prop_map(Op::Store),
        2 => (index(), 0u8..=13).prop_map(|(i, o)| Op::StoreOrder(i, o)),
        3 => index().prop_map(Op::Erase),
        1 => (index(), 0u64..2000).prop_map(|(i, n)| Op::EraseRange(i, n)),
        1 => index().prop_map(Op::Insert),
        1 => index().prop_map(Op::Cmpxchg),
        2 => (index(), 0u8..3).prop_map(|(i, m)| Op::SetMark(i, m)),
        1 => (index(), 0u8..3).prop_map(|(i, m)| Op::ClearMark(i, m)),
        2 => (index(), 0u8..3).prop_map(|(i, m)| Op::NextMarked(i, m)),
        1 => index().prop_map(Op::Find),
    ]
}

const MARK: [Mark; 3] = [Mark::Shared, Mark::Dirty, Mark::Towrite];

/// The model: per index, (value, marks). A multi-order entry is the set of
/// its indexes with value = index, sharing marks while it stays whole.
#[derive(Default)]
struct Model {
    map: BTreeMap<u64, (u64, u8)>,
    /// Multi-order entries still whole: first index -> order.
    whole: BTreeMap<u64, u8>,
}

impl Model {
    /// Removes any whole-entry record overlapping `a..=b` (it was split).
    fn break_wholes(&mut self, a: u64, b: u64) {
        let keys: Vec<u64> = self
            .whole
            .iter()
            .filter(|(&s, &o)| s <= b && (s | ((1u64 << o) - 1)) >= a)
            .map(|(&s, _)| s)
            .collect();
        for k in keys {
            self.whole.remove(&k);
        }
    }

    /// The range a mark on `i` applies to: the entry covering `i`. Splits
    /// leave pieces of several orders whose shape the model does not
    /// predict, so it asks the array, and checks that the piece lies inside
    /// the multi-order entry it came from (or is a single index).
    fn entry_range(&self, xa: &XArray, i: u64) -> (u64, u64) {
        let f = xa.load_found(i).expect("model says present");
        let (a, b) = (f.index, f.last());
        let (wa, wb) = match self.whole.range(..=i).next_back() {
            Some((&s, &o)) if (s | ((1u64 << o) - 1)) >= i => (s, s | ((1u64 << o) - 1)),
            _ => (a, b),
        };
        assert!(
            wa <= a && b <= wb,
            "piece {a}..={b} outside entry {wa}..={wb}"
        );
        assert_eq!(
            self.map.range(a..=b).count() as u64,
            b - a + 1,
            "piece has holes"
        );
        (a, b)
    }
}

fn run(ops: Vec<Op>) {
    let xa = xa();
    let mut m = Model::default();
    for op in ops {
        match op {
            Op::Store(i) => {
                let old_marks = m.map.get(&i).map_or(0, |x| x.1);
                m.break_wholes(i, i);
                let old = xa.store(i, v(i ^ 1));
                assert_eq!(old, m.map.get(&i).map(|x| v(x.0)));
                m.map.insert(i, (i ^ 1, old_marks));
            }
            Op::StoreOrder(i, o) => {
                let first = i & !((1u64 << o) - 1);
                let last = first | ((1u64 << o) - 1);
                let marks = m.map.get(&first).map_or(0, |x| x.1);
                m.break_wholes(first, last);
                xa.store_order(i, o, Some(v(first))).unwrap();
                let keys: Vec<u64> = m.map.range(first..=last).map(|(k, _)| *k).collect();
                for k in keys {
                    m.map.remove(&k);
                }
                for k in first..=last {
                    m.map.insert(k, (k, marks));
                }
                if o > 0 {
                    m.whole.insert(first, o);
                }
            }
            Op::Erase(i) => {
                m.break_wholes(i, i);
                assert_eq!(xa.erase(i), m.map.remove(&i).map(|x| v(x.0)));
            }
            Op::EraseRange(i, n) => {
                let last = i.saturating_add(n);
                m.break_wholes(i, last);
                xa.erase_range(i, last);
                let keys: Vec<u64> = m.map.range(i..=last).map(|(k, _)| *k).collect();
                for k in keys {
                    m.map.remove(&k);
                }
            }
            Op::Insert(i) => {
                let r = xa.insert(i, v(i));
                match m.map.entry(i) {
                    std::collections::btree_map::Entry::Occupied(_) => {
                        assert_eq!(r, Err(XaError::Occupied))
                    }
                    std::collections::btree_map::Entry::Vacant(slot) => {
                        assert_eq!(r, Ok(()));
                        slot.insert((i, 0));
                    }
                }
            }
            Op::Cmpxchg(i) => {
                let cur = m.map.get(&i).map(|x| x.0);
                let r = xa.cmpxchg(i, cur.map(v), None);
                assert_eq!(r, Ok(cur.map(v)));
                m.break_wholes(i, i);
                m.map.remove(&i);
            }
            Op::SetMark(i, k) => {
                xa.set_mark(i, MARK[k as usize]);
                if m.map.contains_key(&i) {
                    let (a, b) = m.entry_range(&xa, i);
                    for (_, x) in m.map.range_mut(a..=b) {
                        x.1 |= 1 << k;
                    }
                }
            }
            Op::ClearMark(i, k) => {
                xa.clear_mark(i, MARK[k as usize]);
                if m.map.contains_key(&i) {
                    let (a, b) = m.entry_range(&xa, i);
                    for (_, x) in m.map.range_mut(a..=b) {
                        x.1 &= !(1 << k);
                    }
                }
            }
            Op::NextMarked(i, k) => {
                let got = xa.next_marked(i, MARK[k as usize]);
                let want = m
                    .map
                    .range(i..)
                    .find(|(_, x)| x.1 >> k & 1 == 1)
                    .map(|(k, _)| *k);
                match (got, want) {
                    (None, None) => {}
                    (Some(f), Some(w)) => {
                        assert!(f.index <= w.max(i) && f.last() >= w.max(i), "{f:?} vs {w}");
                    }
                    (g, w) => panic!("next_marked({i}, {k}) = {g:?}, model says {w:?}"),
                }
            }
            Op::Find(i) => {
                let got = xa.find(i, u64::MAX);
                let want = m.map.range(i..).next().map(|(k, _)| *k);
                match (got, want) {
                    (None, None) => {}
                    (Some(f), Some(w)) => assert!(f.index <= w && f.last() >= w, "{f:?} vs {w}"),
                    (g, w) => panic!("find({i}) = {g:?}, model says {w:?}"),
                }
            }
        }
        xa.check().unwrap();
    }
    // Full comparison: every model key loads, every array entry is modelled.
    for (&k, &(val, marks)) in &m.map {
        assert_eq!(xa.load(k), Some(v(val)), "index {k}");
        for (b, &mk) in MARK.iter().enumerate() {
            assert_eq!(xa.get_mark(k, mk), marks >> b & 1 == 1, "mark {b} at {k}");
        }
    }
    let total: u128 = xa.read().iter(0, u64::MAX).map(|f| 1u128 << f.order).sum();
    assert_eq!(total, m.map.len() as u128);
    xa.erase_range(0, u64::MAX);
    assert_empty(&xa);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]
    #[test]
    fn model_against_btreemap(ops in proptest::collection::vec(op(), 1..120)) {
        run(ops);
    }
}
