//! Measures the page-cache index against `BTreeMap` on the same operations
//! and prints one JSON object.
//!
//! `cargo run --release -p pmemfs-pagecache --example index_bench`
//!
//! Memory figures come from a counting global allocator (bytes requested,
//! malloc's own overhead not included, for both sides alike).

use pmemfs_pagecache::xarray::{Entry, Mark, PfnFlags, XArray};
use pmemfs_pagecache::{DescTable, PageCache, Topology, WAIT_TABLE_BYTES};
use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to `System` and only adds bookkeeping.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: same contract as ours.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

const N: u64 = 1 << 20;
const LOOKUPS: usize = 4_000_000;

fn live() -> usize {
    LIVE.load(Ordering::Relaxed)
}

/// xorshift64*: deterministic random indexes without a dependency.
fn random_indexes(n: usize, range: u64) -> Vec<u64> {
    let mut x = 0x9E37_79B9_7F4A_7C15u64;
    (0..n)
        .map(|_| {
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            x.wrapping_mul(0x2545_F491_4F6C_DD1D) % range
        })
        .collect()
}

fn ns_per(start: Instant, ops: usize) -> f64 {
    start.elapsed().as_nanos() as f64 / ops as f64
}

fn main() {
    let order: Vec<u64> = random_indexes(N as usize, N);
    let lookups = random_indexes(LOOKUPS, N);

    // Stores: random order over the 1 M dense indexes (duplicates overwrite).
    let before = live();
    let xa = XArray::new();
    let t = Instant::now();
    for &i in &order {
        xa.store(i, Entry::from_pfn(i, PfnFlags::NONE));
    }
    for i in 0..N {
        xa.store(i, Entry::from_pfn(i, PfnFlags::NONE));
    }
    let xarray_store_ns = ns_per(t, order.len() + N as usize);
    let xarray_bytes_per_entry = (live() - before) as f64 / N as f64;

    let before = live();
    let mut bt = BTreeMap::new();
    let t = Instant::now();
    for &i in &order {
        bt.insert(i, i);
    }
    for i in 0..N {
        bt.insert(i, i);
    }
    let btree_store_ns = ns_per(t, order.len() + N as usize);
    let btree_bytes_per_entry = (live() - before) as f64 / N as f64;

    // Random loads, alternating rounds so neither side gets a warmer cache.
    let mut xarray_load_ns = f64::MAX;
    let mut btree_load_ns = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let mut sum = 0u64;
        for &i in &lookups {
            sum = sum.wrapping_add(xa.load(i).map_or(0, |e| e.raw()));
        }
        black_box(sum);
        xarray_load_ns = xarray_load_ns.min(ns_per(t, lookups.len()));

        let t = Instant::now();
        let mut sum = 0u64;
        for &i in &lookups {
            sum = sum.wrapping_add(*bt.get(&i).unwrap_or(&0));
        }
        black_box(sum);
        btree_load_ns = btree_load_ns.min(ns_per(t, lookups.len()));
    }

    // Next marked: one index in 1000 marked, walk them all.
    for i in (0..N).step_by(1000) {
        xa.set_mark(i, Mark::Dirty);
    }
    let t = Instant::now();
    let mut steps = 0;
    let mut i = 0;
    while let Some(f) = xa.next_marked(i, Mark::Dirty) {
        steps += 1;
        i = f.index + 1;
    }
    let xarray_next_marked_ns = ns_per(t, steps);
    drop(xa);
    drop(bt);

    let clone = bench_clone();
    let desc = bench_desc();

    println!(
        "{{\"xarray_load_ns\": {xarray_load_ns:.1}, \"btree_load_ns\": {btree_load_ns:.1}, \
         \"xarray_store_ns\": {xarray_store_ns:.1}, \"btree_store_ns\": {btree_store_ns:.1}, \
         \"xarray_next_marked_ns\": {xarray_next_marked_ns:.1}, \
         \"xarray_bytes_per_entry\": {xarray_bytes_per_entry:.2}, \"btree_bytes_per_entry\": {btree_bytes_per_entry:.2}, \
         \"clone_1gib_us\": {:.1}, \"clone_1gib_entries\": \"order9\", \"clone_1gib_order0_us\": {:.1}, \
         \"erase_1gib_us\": {:.1}, \"erase_1gib_order0_us\": {:.1}, \
         \"desc_bytes_unshared\": {}, \"desc_bytes_per_shared_page\": {:.2}, \"desc_heap_bytes_per_shared_page\": {:.2}}}",
        clone.order9_us, clone.order0_us, clone.erase9_us, clone.erase0_us, desc.unshared, desc.per_shared, desc.heap_per_shared
    );
}

struct CloneFigures {
    order9_us: f64,
    order0_us: f64,
    erase9_us: f64,
    erase0_us: f64,
}

const GIB_PAGES: u64 = 262_144;

/// Clones 1 GiB (262,144 pages) from one file to another, once as 512
/// entries of 2 MiB and once as single pages, then erases both copies.
fn bench_clone() -> CloneFigures {
    let pc = PageCache::new(Topology::single(1));
    let (a, b) = (pc.new_inode(1), pc.new_inode(2));
    for k in 0..GIB_PAGES / 512 {
        a.dax()
            .map(k * 512, 9, (1 << 20) + k * 512)
            .expect("fresh file");
    }
    let t = Instant::now();
    let r = pc
        .clone_range(&a, 0, &b, 0, GIB_PAGES)
        .expect("valid range");
    let order9_us = t.elapsed().as_secs_f64() * 1e6;
    assert_eq!(r.entries, 512);
    let t = Instant::now();
    assert!(pc.erase_range(&b, 0, u64::MAX).is_empty());
    let erase9_us = t.elapsed().as_secs_f64() * 1e6;
    pc.erase_range(&a, 0, u64::MAX);

    for i in 0..GIB_PAGES {
        a.dax().map(i, 0, (1 << 20) + i).expect("fresh file");
    }
    let t = Instant::now();
    pc.clone_range(&a, 0, &b, 0, GIB_PAGES)
        .expect("valid range");
    let order0_us = t.elapsed().as_secs_f64() * 1e6;
    let t = Instant::now();
    assert!(pc.erase_range(&b, 0, u64::MAX).is_empty());
    let erase0_us = t.elapsed().as_secs_f64() * 1e6;
    pc.erase_range(&a, 0, u64::MAX);
    assert_eq!(pc.descs().chunk_count(), 0);
    CloneFigures {
        order9_us,
        order0_us,
        erase9_us,
        erase0_us,
    }
}

struct DescFigures {
    unshared: usize,
    per_shared: f64,
    heap_per_shared: f64,
}

/// Descriptor memory for a 1 TiB device (2^28 pfns): with nothing shared
/// (after lookups and frees all over the device), then with 262,144
/// single pages shared.
fn bench_desc() -> DescFigures {
    const PFNS: u64 = 1 << 28;
    let heap0 = live();
    let t = DescTable::new();
    let mut freed = Vec::new();
    for pfn in (0..PFNS).step_by(4093) {
        black_box(t.lookup(pfn).is_some());
        black_box(t.share_count(pfn));
        t.put_range(pfn & !511, 9, &mut freed);
        freed.clear();
    }
    // A page shared then unshared leaves nothing behind either.
    t.get_page(12345);
    t.put_page(12345);
    let unshared = t.bytes() + WAIT_TABLE_BYTES;
    let base = t.bytes();
    let heap_base = live();
    // Shared pages spread over the device, 64 per chunk-sized run.
    for k in 0..GIB_PAGES {
        let pfn = (k / 64) * (PFNS / (GIB_PAGES / 64)) + k % 64;
        t.get_page(pfn);
    }
    let per_shared = (t.bytes() - base) as f64 / GIB_PAGES as f64;
    let heap_per_shared = (live() - heap_base) as f64 / GIB_PAGES as f64;
    for k in 0..GIB_PAGES {
        let pfn = (k / 64) * (PFNS / (GIB_PAGES / 64)) + k % 64;
        t.put_page(pfn);
    }
    assert_eq!(t.chunk_count(), 0);
    black_box(heap0);
    DescFigures {
        unshared,
        per_shared,
        heap_per_shared,
    }
}
