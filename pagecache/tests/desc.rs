//! Page descriptors: lazy chunks, reclamation, share counts with compound
//! heads, exclusive wait/wake, DRAM copies. Each test ends with no chunk.

use pmemfs_pagecache::desc::{DescTable, PfnRange};
use proptest::prelude::*;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};

fn assert_clean(t: &DescTable) {
    assert_eq!(t.chunk_count(), 0, "chunks left");
    assert_eq!(t.bytes(), DescTable::new().bytes(), "directory not shrunk");
}

fn pages(r: &[PfnRange]) -> Vec<u64> {
    r.iter().flat_map(|r| r.pfn..r.pfn + r.count).collect()
}

#[test]
fn lookup_never_allocates() {
    let t = DescTable::new();
    let base = t.bytes();
    for pfn in (0..1u64 << 28).step_by(4099) {
        assert!(t.lookup(pfn).is_none());
        assert_eq!(t.share_count(pfn), 1);
    }
    assert_eq!(t.bytes(), base);
    assert!(base <= 4096, "empty table costs {base} bytes");
    assert_clean(&t);
}

#[test]
fn idle_chunks_are_freed() {
    let t = DescTable::new();
    {
        let a = t.get_or_make(5);
        let b = t.get_or_make(70);
        assert!(a.is_idle() && b.is_idle());
        assert_eq!(t.chunk_count(), 2);
        assert!(t.lookup(63).is_some(), "same chunk as 5");
    }
    assert_clean(&t);
    // A busy descriptor keeps its chunk after the references go.
    t.get_page(130);
    assert_eq!(t.chunk_count(), 1);
    assert_eq!(t.share_count(130), 2);
    assert!(t.lookup(130).unwrap().flags().shared);
    assert!(!t.put_page(130));
    assert_clean(&t);
    // Many chunks at once, then all freed.
    for p in (0..64 * 1000).step_by(64) {
        t.get_page(p);
    }
    assert_eq!(t.chunk_count(), 1000);
    for p in (0..64 * 1000).step_by(64) {
        assert!(!t.put_page(p));
        assert!(t.put_page(p), "last reference");
    }
    assert_clean(&t);
}

#[test]
fn compound_counts_once_and_splits() {
    let t = DescTable::new();
    t.get_range(1024, 9);
    t.get_range(1024, 9);
    assert_eq!(t.chunk_count(), 1, "one descriptor for 512 pages");
    for p in [1024, 1025, 1024 + 300, 1024 + 511] {
        assert_eq!(t.share_count(p), 3);
    }
    assert_eq!(t.share_count(1024 + 512), 1);
    // Dropping one page's reference splits the compound.
    assert!(!t.put_page(1024 + 300));
    assert_eq!(t.share_count(1024 + 300), 2);
    assert_eq!(t.share_count(1024 + 301), 3);
    assert_eq!(t.lookup(1024).unwrap().order(), 0);
    let mut freed = Vec::new();
    t.put_range(1024, 9, &mut freed);
    assert!(freed.is_empty());
    t.put_range(1024, 9, &mut freed);
    assert_eq!(pages(&freed), vec![1024 + 300]);
    freed.clear();
    let rest: Vec<u64> = (1024..1024 + 512).filter(|&p| p != 1024 + 300).collect();
    for &p in &rest {
        assert!(t.put_page(p));
    }
    assert_clean(&t);
    // An unaligned range is counted per page.
    t.get_range(7, 3);
    assert_eq!(t.share_count(14), 2);
    t.put_range(7, 3, &mut freed);
    assert!(freed.is_empty());
    t.put_range(7, 3, &mut freed);
    assert_eq!(freed, vec![PfnRange { pfn: 7, count: 8 }]);
    assert_clean(&t);
    // Orders above 9 become several compounds.
    t.get_range(0, 11);
    assert_eq!(t.chunk_count(), 4);
    freed.clear();
    t.put_range(0, 11, &mut freed);
    t.put_range(0, 11, &mut freed);
    assert_eq!(
        freed,
        vec![PfnRange {
            pfn: 0,
            count: 2048
        }]
    );
    assert_clean(&t);
}

#[derive(Clone, Debug)]
enum Op {
    Get(u64, u8),
    Put(u64, u8),
    Count(u64),
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0u64..2048, 0u8..=10).prop_map(|(p, o)| {
        // Mostly aligned, sometimes not.
        let p = if p % 3 == 0 {
            p
        } else {
            p & !((1u64 << o) - 1)
        };
        (p.min(4096 - (1 << o)), o)
    });
    prop_oneof![
        3 => range.clone().prop_map(|(p, o)| Op::Get(p, o)),
        3 => range.prop_map(|(p, o)| Op::Put(p, o)),
        1 => (0u64..4096).prop_map(Op::Count),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]
    /// Share counts against a per-page model; pages start with one
    /// reference, a put that would touch a free page is skipped.
    #[test]
    fn counts_match_model(ops in proptest::collection::vec(op(), 1..80)) {
        let t = DescTable::new();
        let mut refs = vec![1u64; 4096];
        for op in ops {
            match op {
                Op::Get(p, o) => {
                    let r = p as usize..(p + (1 << o)) as usize;
                    if refs[r.clone()].iter().all(|&n| n > 0) {
                        t.get_range(p, o);
                        refs[r].iter_mut().for_each(|n| *n += 1);
                    }
                }
                Op::Put(p, o) => {
                    let r = p as usize..(p + (1 << o)) as usize;
                    if refs[r.clone()].iter().all(|&n| n > 0) {
                        let mut freed = Vec::new();
                        t.put_range(p, o, &mut freed);
                        let want: Vec<u64> = r.clone().filter(|&i| refs[i] == 1).map(|i| i as u64).collect();
                        refs[r].iter_mut().for_each(|n| *n -= 1);
                        prop_assert_eq!(pages(&freed), want);
                    }
                }
                Op::Count(p) => {
                    if refs[p as usize] > 0 {
                        prop_assert_eq!(t.share_count(p), refs[p as usize]);
                    }
                }
            }
        }
        for p in 0..4096u64 {
            if refs[p as usize] > 0 {
                prop_assert_eq!(t.share_count(p), refs[p as usize], "pfn {}", p);
            }
            while refs[p as usize] > 0 {
                refs[p as usize] -= 1;
                prop_assert_eq!(t.put_page(p), refs[p as usize] == 0);
            }
        }
        assert_clean(&t);
    }
}

#[test]
fn concurrent_counting_is_exact() {
    let t = Arc::new(DescTable::new());
    let threads = 4;
    let barrier = Arc::new(Barrier::new(threads));
    let handles: Vec<_> = (0..threads)
        .map(|k| {
            let (t, barrier) = (t.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                for round in 0..200u64 {
                    // Compound and per-page references on the same pages.
                    t.get_range(0, 9);
                    t.get_page(5 + k as u64);
                    t.get_page(600 + round % 64);
                    assert!(!t.put_page(5 + k as u64));
                    let mut freed = Vec::new();
                    t.put_range(0, 9, &mut freed);
                    assert!(!t.put_page(600 + round % 64));
                    assert!(freed.is_empty(), "never below the base reference");
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    for p in 0..1024 {
        assert_eq!(t.share_count(p), 1);
    }
    assert_clean(&t);
}

#[test]
fn exclusive_wait_and_wake() {
    let t = Arc::new(DescTable::new());
    let inside = Arc::new(AtomicUsize::new(0));
    let total = Arc::new(AtomicUsize::new(0));
    let handles: Vec<_> = (0..4)
        .map(|_| {
            let (t, inside, total) = (t.clone(), inside.clone(), total.clone());
            std::thread::spawn(move || {
                for _ in 0..300 {
                    let g = t.lock_exclusive(77);
                    assert_eq!(inside.fetch_add(1, Ordering::SeqCst), 0, "two holders");
                    assert!(t.lookup(77).unwrap().flags().exclusive);
                    std::thread::yield_now();
                    inside.fetch_sub(1, Ordering::SeqCst);
                    total.fetch_add(1, Ordering::SeqCst);
                    drop(g);
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("worker panicked");
    }
    assert_eq!(total.load(Ordering::SeqCst), 1200);
    let g = t.try_lock_exclusive(77).expect("free now");
    assert!(t.try_lock_exclusive(77).is_none());
    assert_eq!(g.pfn(), 77);
    // A waiter sleeps until the holder lets go.
    let t2 = t.clone();
    let waiter = std::thread::spawn(move || t2.wait_exclusive(77));
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!waiter.is_finished());
    drop(g);
    waiter.join().expect("waiter panicked");
    assert_clean(&t);
}

#[test]
fn dram_copies_one_per_node() {
    let t = DescTable::new();
    let fills = AtomicUsize::new(0);
    let fill = |b: &mut [u8; 4096]| {
        fills.fetch_add(1, Ordering::SeqCst);
        b[0] = 42;
    };
    let a = t.dram_copy_or_fill(9, 0, fill);
    let b = t.dram_copy_or_fill(9, 0, fill);
    assert!(Arc::ptr_eq(&a, &b));
    let c = t.dram_copy_or_fill(9, 1, fill);
    assert_eq!(fills.load(Ordering::SeqCst), 2);
    assert_eq!((c.pfn(), c.node(), c.data()[0]), (9, 1, 42));
    assert!(t.lookup(9).unwrap().flags().dram_cached);
    assert!(t.dram_copy(9, 1).is_some());
    assert!(t.dram_copy(9, 2).is_none());
    assert_eq!(t.drop_dram_copies(9), 2);
    assert!(t.dram_copy(9, 0).is_none());
    // Holders of the Arc keep the bytes; the table forgot them.
    assert_eq!(a.data()[0], 42);
    assert_clean(&t);
}
