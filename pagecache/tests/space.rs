//! address_spaces, range clone and erase, copy on write, DRAM copies and
//! NUMA node emulation. Each test ends with every space empty, no tree
//! node and no descriptor chunk left.

use pmemfs_pagecache::numa::{parse_list, Topology};
use pmemfs_pagecache::xarray::{Mark, PfnFlags};
use pmemfs_pagecache::{CloneError, InodeSpaces, PageCache, PfnRange, WriteBegin};
use proptest::prelude::*;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

fn pc(nodes: usize) -> PageCache {
    PageCache::new(Topology::single(4).emulate(nodes))
}

fn pages(r: &[PfnRange]) -> BTreeSet<u64> {
    r.iter().flat_map(|r| r.pfn..r.pfn + r.count).collect()
}

/// Erases everything left in `files` and checks nothing leaked.
fn finish(pc: &PageCache, files: &[&InodeSpaces]) {
    for f in files {
        pc.erase_range(f, 0, u64::MAX);
        assert!(f.dax().is_empty());
        assert_eq!(f.dax().node_count(), 0, "tree nodes leaked");
        for n in 0..f.nodes() {
            assert!(f.dram(n).unwrap().is_empty());
        }
    }
    assert_eq!(pc.descs().chunk_count(), 0, "descriptor chunks leaked");
}

#[test]
fn map_lookup_and_multi_order_pages() {
    let pc = pc(1);
    let f = pc.new_inode(1);
    f.dax().map(0, 9, 4096).unwrap();
    f.dax().map(512, 0, 77).unwrap();
    assert_eq!(f.dax().lookup(5), Some((4101, PfnFlags::NONE)));
    assert_eq!(f.dax().lookup(512), Some((77, PfnFlags::NONE)));
    assert!(f.dax().map(3, 0, 1).is_err(), "occupied");
    assert!(f.dax().map(1024, 0, u64::MAX).is_err(), "pfn too large");
    assert_eq!(pc.descs().chunk_count(), 0, "mapping makes no descriptor");
    let freed = pc.erase_range(&f, 0, 1000);
    assert_eq!(
        freed,
        vec![
            PfnRange {
                pfn: 4096,
                count: 512
            },
            PfnRange { pfn: 77, count: 1 }
        ]
    );
    finish(&pc, &[&f]);
}

#[test]
fn clone_order0_between_files() {
    let pc = pc(1);
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    for i in 0..300 {
        a.dax().map(i, 0, 1000 + i).unwrap();
    }
    let r = pc.clone_range(&a, 10, &b, 5000, 200).unwrap();
    assert_eq!(r.entries, 200);
    assert!(r.freed.is_empty());
    assert_eq!(b.dax().lookup(5000), Some((1010, PfnFlags::NONE)));
    assert!(b.dax().get_mark(5000, Mark::Shared) && a.dax().get_mark(10, Mark::Shared));
    assert!(!a.dax().get_mark(9, Mark::Shared));
    assert_eq!(pc.descs().share_count(1010), 2);
    assert_eq!(pc.descs().share_count(1009), 1);
    // Erasing the source frees only its unshared pages.
    let freed = pc.erase_range(&a, 0, u64::MAX);
    let want: BTreeSet<u64> = (1000..1010).chain(1210..1300).collect();
    assert_eq!(pages(&freed), want);
    let freed = pc.erase_range(&b, 0, u64::MAX);
    assert_eq!(pages(&freed), (1010..1210).collect());
    finish(&pc, &[&a, &b]);
}

#[test]
fn clone_multi_order_counts_once() {
    let pc = pc(1);
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    for k in 0..8u64 {
        a.dax().map(k * 512, 9, (1 << 20) + k * 512).unwrap();
    }
    let r = pc.clone_range(&a, 0, &b, 512 * 100, 8 * 512).unwrap();
    assert_eq!(r.entries, 8, "one entry per 2 MiB");
    assert_eq!(pc.descs().chunk_count(), 8, "one descriptor per 2 MiB");
    assert_eq!(b.dax().lookup_entry(512 * 100 + 3).unwrap().order, 9);
    assert_eq!(pc.descs().share_count((1 << 20) + 700), 2);
    finish(&pc, &[&a, &b]);
}

#[test]
fn clone_misaligned_and_partial_entries() {
    let pc = pc(1);
    let (a, c) = (pc.new_inode(1), pc.new_inode(3));
    a.dax().map(0, 9, 1 << 20).unwrap();
    // Offset by 4: blocks of order <= 2 on both sides.
    let r = pc.clone_range(&a, 0, &c, 4, 512).unwrap();
    assert_eq!(r.entries, 128);
    for i in [0u64, 1, 255, 511] {
        assert_eq!(c.dax().lookup(4 + i), Some(((1 << 20) + i, PfnFlags::NONE)));
        assert_eq!(pc.descs().share_count((1 << 20) + i), 2);
    }
    // Part of a multi-order entry, into the same file.
    let r = pc.clone_range(&a, 100, &a, 10_000, 7).unwrap();
    assert!(r.entries >= 3);
    assert_eq!(pc.descs().share_count((1 << 20) + 103), 3);
    assert_eq!(pc.descs().share_count((1 << 20) + 99), 2);
    assert_eq!(
        pc.clone_range(&a, 0, &a, 100, 200),
        Err(CloneError::Overlap)
    );
    assert_eq!(
        pc.clone_range(&a, u64::MAX, &c, 0, 2),
        Err(CloneError::Range)
    );
    // Erase half of the multi-order entry in the source.
    let freed = pc.erase_range(&a, 256, 511);
    assert!(freed.is_empty(), "c still maps them");
    assert_eq!(a.dax().lookup(255), Some(((1 << 20) + 255, PfnFlags::NONE)));
    let freed = pc.erase_range(&c, 0, u64::MAX);
    let want: BTreeSet<u64> = ((1 << 20) + 256..(1 << 20) + 512).collect();
    assert_eq!(pages(&freed), want);
    finish(&pc, &[&a, &c]);
}

#[test]
fn clone_replaces_destination() {
    let pc = pc(1);
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    a.dax().map(0, 3, 8).unwrap();
    b.dax().map(0, 3, 16).unwrap();
    b.dax().map(8, 0, 99).unwrap();
    let r = pc.clone_range(&a, 0, &b, 4, 8).unwrap();
    // b's 16+4..16+8 and 99 were replaced.
    assert_eq!(pages(&r.freed), (20..24).chain([99]).collect());
    assert_eq!(b.dax().lookup(3), Some((19, PfnFlags::NONE)));
    assert_eq!(b.dax().lookup(4), Some((8, PfnFlags::NONE)));
    finish(&pc, &[&a, &b]);
}

#[test]
fn copy_on_write_under_exclusive_entry() {
    let pc = pc(1);
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    a.dax().map(0, 9, 512).unwrap();
    pc.clone_range(&a, 0, &b, 0, 512).unwrap();
    let WriteBegin::Page(g) = pc.write_begin(&b, 7) else {
        panic!("mapped")
    };
    assert!(g.needs_copy());
    assert_eq!(g.pfn(), 519);
    assert!(b.dax().lookup(7).unwrap().1.contains(PfnFlags::EXCLUSIVE));
    assert_eq!(g.commit_copy(5000), None, "a still maps 519");
    assert_eq!(b.dax().lookup(7), Some((5000, PfnFlags::NONE)));
    assert!(b.dax().get_mark(7, Mark::Dirty) && !b.dax().get_mark(7, Mark::Shared));
    assert_eq!(
        a.dax().lookup(7),
        Some((519, PfnFlags::NONE)),
        "the source never changes"
    );
    // Now `a` is the only user of 519: writes go in place.
    let WriteBegin::Page(g) = pc.write_begin(&a, 7) else {
        panic!("mapped")
    };
    assert!(!g.needs_copy());
    g.commit_in_place();
    assert!(!a.dax().get_mark(7, Mark::Shared), "stale hint cleared");
    // Abandoned write: entry restored.
    let WriteBegin::Page(g) = pc.write_begin(&a, 8) else {
        panic!("mapped")
    };
    drop(g);
    assert_eq!(a.dax().lookup(8), Some((520, PfnFlags::NONE)));
    assert!(matches!(pc.write_begin(&a, 600), WriteBegin::Hole));
    // A writer waits for another one on the same page.
    let pc = Arc::new(pc);
    let a = Arc::new(a);
    let WriteBegin::Page(g) = pc.write_begin(&a, 9) else {
        panic!("mapped")
    };
    let (pc2, a2) = (pc.clone(), a.clone());
    let other = std::thread::spawn(move || {
        let WriteBegin::Page(g) = pc2.write_begin(&a2, 9) else {
            panic!("mapped")
        };
        let copy = g.needs_copy();
        let pfn = g.pfn();
        drop(g);
        (copy, pfn)
    });
    std::thread::sleep(std::time::Duration::from_millis(20));
    assert!(!other.is_finished());
    assert!(g.needs_copy());
    assert_eq!(g.commit_copy(6000), None);
    assert_eq!(
        other.join().expect("writer panicked"),
        (false, 6000),
        "alone on the copy now"
    );
    let mut freed = pages(&pc.erase_range(&a, 0, u64::MAX));
    freed.extend(pages(&pc.erase_range(&b, 0, u64::MAX)));
    let want: BTreeSet<u64> = (512..1024).chain([5000, 6000]).collect();
    assert_eq!(freed, want);
    finish(&pc, &[&a, &b]);
}

#[test]
fn dram_copies_shared_per_node_and_dropped_on_write() {
    let pc = pc(3);
    assert_eq!(pc.topology().node_count(), 3);
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    a.dax().map(0, 0, 40).unwrap();
    pc.clone_range(&a, 0, &b, 10, 1).unwrap();
    let fills = AtomicUsize::new(0);
    let fill = |pfn: u64, buf: &mut [u8; 4096]| {
        fills.fetch_add(1, Ordering::SeqCst);
        buf[0] = pfn as u8;
    };
    for node in 0..3 {
        let p1 = pc.read_cached(&a, 0, node, fill).unwrap();
        let p2 = pc.read_cached(&b, 10, node, fill).unwrap();
        assert!(
            Arc::ptr_eq(&p1, &p2),
            "one copy per node, shared by both files"
        );
        assert_eq!(p1.data()[0], 40);
    }
    assert_eq!(fills.load(Ordering::SeqCst), 3);
    assert!(pc.read_cached(&a, 1, 0, fill).is_none(), "hole");
    assert!(pc.read_cached(&a, 0, 7, fill).is_none(), "no such node");
    assert_eq!(a.dram(1).unwrap().len(), 1);
    let here = pc.read_cached_here(&a, 0, fill).unwrap();
    assert_eq!(here.pfn(), 40);
    // b copies on write: b's cached copies go, a's stay valid.
    let WriteBegin::Page(g) = pc.write_begin(&b, 10) else {
        panic!("mapped")
    };
    assert_eq!(g.commit_copy(41), None);
    assert!(b.dram(0).unwrap().is_empty());
    assert_eq!(a.dram(2).unwrap().len(), 1);
    // a writes in place: the copies on every node go.
    let WriteBegin::Page(g) = pc.write_begin(&a, 0) else {
        panic!("mapped")
    };
    g.commit_in_place();
    for n in 0..3 {
        assert!(a.dram(n).unwrap().is_empty());
        assert!(pc.descs().dram_copy(40, n as u32).is_none());
    }
    let p = pc.read_cached(&a, 0, 1, fill).unwrap();
    assert_eq!(fills.load(Ordering::SeqCst), 4);
    drop(p);
    finish(&pc, &[&a, &b]);
}

#[test]
fn cached_reads_race_in_place_writes_without_staleness() {
    use std::sync::atomic::AtomicU64;
    let pc = Arc::new(pc(2));
    let a = Arc::new(pc.new_inode(1));
    a.dax().map(0, 0, 3).unwrap();
    // Stand-in for pmem: the first 8 bytes of pfn 3.
    let pmem = Arc::new(AtomicU64::new(0));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let readers: Vec<_> = (0..2)
        .map(|node| {
            let (pc, a, pmem, done) = (pc.clone(), a.clone(), pmem.clone(), done.clone());
            std::thread::spawn(move || {
                while !done.load(Ordering::SeqCst) {
                    let fill = |_pfn: u64, buf: &mut [u8; 4096]| {
                        buf[..8].copy_from_slice(&pmem.load(Ordering::SeqCst).to_le_bytes());
                    };
                    let p = pc.read_cached(&a, 0, node, fill).unwrap();
                    let seen = u64::from_le_bytes(p.data()[..8].try_into().unwrap());
                    assert!(seen <= pmem.load(Ordering::SeqCst), "copy newer than pmem");
                }
            })
        })
        .collect();
    for _ in 0..2000 {
        let WriteBegin::Page(g) = pc.write_begin(&a, 0) else {
            panic!("mapped")
        };
        assert!(!g.needs_copy());
        pmem.fetch_add(1, Ordering::SeqCst);
        g.commit_in_place();
    }
    done.store(true, Ordering::SeqCst);
    for r in readers {
        r.join().expect("reader panicked");
    }
    // Whatever the readers left cached is the last write, on every node.
    for node in 0..2 {
        let fill = |_pfn: u64, buf: &mut [u8; 4096]| {
            buf[..8].copy_from_slice(&pmem.load(Ordering::SeqCst).to_le_bytes());
        };
        let p = pc.read_cached(&a, 0, node, fill).unwrap();
        assert_eq!(u64::from_le_bytes(p.data()[..8].try_into().unwrap()), 2000);
    }
    finish(&pc, &[&a]);
}

#[test]
fn node_emulation_and_sysfs() {
    let t = Topology::single(8).emulate(4);
    assert!(t.is_emulated());
    assert_eq!(t.node_count(), 4);
    for cpu in 0..8 {
        assert_eq!(t.node_of_cpu(cpu), cpu as usize / 2);
    }
    let t = Topology::single(2).emulate(4);
    assert_eq!(t.nodes().iter().map(|n| n.cpus.len()).sum::<usize>(), 2);
    assert!(t.current_node() < 4);
    assert_eq!(Topology::single(2).emulate(1).node_count(), 1);
    // A fake sysfs with nodes 0 and 2.
    let dir = std::env::temp_dir().join(format!("pmemfs-numa-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("node0")).unwrap();
    std::fs::create_dir_all(dir.join("node2")).unwrap();
    std::fs::write(dir.join("online"), "0,2\n").unwrap();
    std::fs::write(dir.join("node0/cpulist"), "0-3,8\n").unwrap();
    std::fs::write(dir.join("node2/cpulist"), "4-7\n").unwrap();
    let t = Topology::from_sysfs(&dir).unwrap();
    assert_eq!(t.node_count(), 2);
    assert_eq!(t.nodes()[1].id, 2);
    assert_eq!(t.node_of_cpu(8), 0);
    assert_eq!(t.node_of_cpu(5), 1);
    assert_eq!(t.clone().emulate(4), t, "real multi-node kept");
    std::fs::write(dir.join("online"), "0-3\n").unwrap();
    assert!(Topology::from_sysfs(&dir).is_err(), "node1 missing");
    std::fs::remove_dir_all(&dir).unwrap();
    assert_eq!(parse_list("1-2,5").unwrap(), vec![1, 2, 5]);
    assert!(Topology::detect().node_count() >= 1);
}

#[derive(Clone, Debug)]
enum Op {
    Map(usize, u64, u8),
    Clone(usize, u64, usize, u64, u64),
    Erase(usize, u64, u64),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        2 => (0usize..3, 0u64..2048, prop_oneof![Just(0u8), Just(3), Just(9)])
            .prop_map(|(f, i, o)| Op::Map(f, i & !((1 << o) - 1), o)),
        3 => (0usize..3, 0u64..2048, 0usize..3, 0u64..2048, 1u64..700)
            .prop_map(|(a, i, b, j, n)| Op::Clone(a, i, b, j, n)),
        2 => (0usize..3, 0u64..2048, 1u64..600).prop_map(|(f, i, n)| Op::Erase(f, i, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    /// Clone and erase against a model: per file index -> pfn, per pfn a
    /// reference count; freed pages must be exactly those reaching zero.
    #[test]
    fn clone_erase_model(ops in proptest::collection::vec(op(), 1..40)) {
        let pc = pc(2);
        let files: Vec<InodeSpaces> = (0..3).map(|i| pc.new_inode(i)).collect();
        let mut maps: Vec<BTreeMap<u64, u64>> = vec![BTreeMap::new(); 3];
        let mut refs: BTreeMap<u64, u64> = BTreeMap::new();
        let mut next_pfn = 1u64 << 16;
        let drop_ref = |refs: &mut BTreeMap<u64, u64>, p: u64, freed: &mut BTreeSet<u64>| {
            let n = refs.get_mut(&p).expect("mapped pfn has refs");
            *n -= 1;
            if *n == 0 {
                refs.remove(&p);
                freed.insert(p);
            }
        };
        for op in ops {
            match op {
                Op::Map(f, i, o) => {
                    let n = 1u64 << o;
                    if maps[f].range(i..i + n).next().is_none() {
                        next_pfn = (next_pfn + n - 1) & !(n - 1);
                        files[f].dax().map(i, o, next_pfn).unwrap();
                        for k in 0..n {
                            maps[f].insert(i + k, next_pfn + k);
                            refs.insert(next_pfn + k, 1);
                        }
                        next_pfn += n;
                    }
                }
                Op::Clone(a, i, b, j, n) => {
                    let r = pc.clone_range(&files[a], i, &files[b], j, n);
                    if a == b && i < j + n && j < i + n {
                        prop_assert_eq!(r, Err(CloneError::Overlap));
                        continue;
                    }
                    let r = r.unwrap();
                    let src: Vec<(u64, u64)> = maps[a].range(i..i + n).map(|(&k, &p)| (k, p)).collect();
                    let mut freed = BTreeSet::new();
                    let old: Vec<(u64, u64)> = maps[b].range(j..j + n).map(|(&k, &p)| (k, p)).collect();
                    for (k, p) in old {
                        maps[b].remove(&k);
                        drop_ref(&mut refs, p, &mut freed);
                    }
                    for (k, p) in src {
                        maps[b].insert(k - i + j, p);
                        *refs.get_mut(&p).expect("mapped") += 1;
                    }
                    prop_assert_eq!(pages(&r.freed), freed);
                }
                Op::Erase(f, i, n) => {
                    let got = pc.erase_range(&files[f], i, i + n - 1);
                    let mut freed = BTreeSet::new();
                    let old: Vec<(u64, u64)> = maps[f].range(i..i + n).map(|(&k, &p)| (k, p)).collect();
                    for (k, p) in old {
                        maps[f].remove(&k);
                        drop_ref(&mut refs, p, &mut freed);
                    }
                    prop_assert_eq!(pages(&got), freed);
                }
            }
        }
        for (f, m) in maps.iter().enumerate() {
            let mut n = 0;
            for fd in files[f].dax().read().iter(0, u64::MAX) {
                n += 1u64 << fd.order;
            }
            prop_assert_eq!(n, m.len() as u64);
            for (&k, &p) in m {
                prop_assert_eq!(files[f].dax().lookup(k), Some((p, PfnFlags::NONE)));
                prop_assert_eq!(pc.descs().share_count(p), refs[&p]);
                if refs[&p] > 1 {
                    prop_assert!(files[f].dax().get_mark(k, Mark::Shared));
                }
            }
        }
        let mut freed = BTreeSet::new();
        for f in &files {
            freed.extend(pages(&pc.erase_range(f, 0, u64::MAX)));
        }
        prop_assert_eq!(freed, refs.keys().copied().collect::<BTreeSet<u64>>());
        finish(&pc, &files.iter().collect::<Vec<_>>());
    }
}
