//! The trees against a `BTreeMap` model, and against damage.

use std::collections::{BTreeMap, HashSet};

use proptest::prelude::*;

use super::*;
use crate::btree::mem::Mem;

/// Checks the tree and that its pages are exactly the allocated ones.
fn assert_sound<K: Kind>(t: &Tree<K>, m: &Mem, records: usize) -> Shape {
    let mut pfns = HashSet::new();
    let shape = t.check(m, |p| {
        pfns.insert(p);
    });
    let shape = shape.unwrap();
    assert_eq!(shape.records, records as u64);
    assert_eq!(pfns, m.in_use(), "pages leaked or lost");
    shape
}

fn ext(pfn: u64) -> Extent {
    Extent { pfn, len: 1 }
}

#[test]
fn grows_and_shrinks_in_order_and_out_of_order() {
    for order in [0, 1, 2] {
        let mut m = Mem::default();
        let mut t = Tree::<Extents>::new(0, 5);
        let n = 60_000u64;
        let key = |i: u64| match order {
            0 => i,
            1 => n - i,
            _ => (i * 7919) % n,
        };
        for i in 0..n {
            assert_eq!(t.insert(&mut m, key(i) * 4, ext(i)).unwrap(), None);
        }
        let shape = assert_sound(&t, &m, n as usize);
        assert!(shape.depth >= 3, "{shape:?}");
        // Half-full leaves at worst: at most 2x the pages of packed ones.
        assert!(shape.pages <= 2 * n / 169 + 20, "{shape:?}");
        for i in 0..n {
            let k = key(i) * 4;
            assert_eq!(t.get(&m, &k).unwrap(), Some(ext(i)));
            assert_eq!(t.get(&m, &(k + 1)).unwrap(), None);
            assert_eq!(t.floor(&m, &(k + 3)).unwrap(), Some((k, ext(i))));
        }
        assert_eq!(
            t.floor(&m, &u64::MAX).unwrap().map(|r| r.0),
            Some((n - 1) * 4 + if order == 1 { 4 } else { 0 })
        );
        for i in 0..n {
            assert_eq!(t.remove(&mut m, &(key(i) * 4)).unwrap(), Some(ext(i)));
            if i % 997 == 0 {
                assert_sound(&t, &m, (n - i - 1) as usize);
            }
        }
        assert_eq!(t.root(), 0);
        assert!(m.pages.is_empty(), "an empty tree has no pages");
    }
}

/// A node found whole is read again without its checksum until its page
/// leaves the tree; a page that left is checked again when it is a node
/// once more. Without the record, damage is found at every read.
#[test]
fn nodes_found_whole_are_trusted_until_their_page_leaves() {
    let name = |i: u32| NameKey::new(format!("{i:0>100}").as_bytes());
    let mut m = Mem::checking();
    let mut t = Tree::<Dirents>::new(0, 9);
    for i in 0..200u32 {
        t.insert(&mut m, name(i), u64::from(i) + 1).unwrap();
    }
    for i in 0..200u32 {
        assert_eq!(t.get(&m, &name(i)).unwrap(), Some(u64::from(i) + 1));
    }
    let checked = m.checked.as_ref().unwrap();
    let nodes: Vec<u64> = m.in_use().into_iter().collect();
    assert!(nodes.len() > 5);
    assert!(
        nodes.iter().all(|&p| checked.is_whole(p)),
        "every node read"
    );
    // A byte of a name changed behind the tree's back, in a leaf: the
    // trusting read does not see it; a fresh record does.
    let leaf = t.leaf_spot(&m, &name(7)).unwrap().unwrap().pfn;
    m.pages.get_mut(&leaf).unwrap()[node::HEADER_BYTES + 20] ^= 1;
    assert!(t.get(&m, &name(7)).is_ok());
    m.checked = Some(Checked::new(1 << 20));
    assert!(
        t.get(&m, &name(7)).is_err(),
        "damage found when not trusted"
    );
    m.pages.get_mut(&leaf).unwrap()[node::HEADER_BYTES + 20] ^= 1;
    for i in 0..200u32 {
        t.get(&m, &name(i)).unwrap();
    }
    // Emptied, the tree frees its nodes, and they leave the record.
    for i in 0..200u32 {
        t.remove(&mut m, &name(i)).unwrap();
    }
    let checked = m.checked.as_ref().unwrap();
    assert!(
        nodes.iter().all(|&p| !checked.is_whole(p)),
        "freed nodes forgotten"
    );
}

#[test]
fn directories_with_long_names_split_by_bytes() {
    let mut m = Mem::default();
    let mut t = Tree::<Dirents>::new(0, 9);
    let name = |i: u32| format!("{i:0>250}").into_bytes();
    for i in 0..2000u32 {
        t.insert(&mut m, NameKey::new(&name(i)), u64::from(i) + 1)
            .unwrap();
    }
    let shape = assert_sound(&t, &m, 2000);
    // 15 entries of 264 bytes fit a page.
    assert!(shape.pages >= 2000 / 15, "{shape:?}");
    let mut seen = 0;
    t.range(&m, None, |k, ino| {
        assert_eq!(k.name, name((*ino - 1) as u32));
        seen += 1;
        true
    })
    .unwrap();
    assert_eq!(seen, 2000);
    // Out of order, so that interior nodes of 15 keys empty and merge
    // everywhere in the tree.
    for j in 0..2000u32 {
        let i = (j * 7) % 2000;
        assert_eq!(
            t.remove(&mut m, &NameKey::new(&name(i))).unwrap(),
            Some(u64::from(i) + 1)
        );
        if j % 50 == 0 {
            assert_sound(&t, &m, (1999 - j) as usize);
        }
    }
    assert!(m.pages.is_empty());
}

#[test]
fn built_trees_are_sound_and_change_like_any() {
    for n in [0u64, 1, 150, 5000, 60_000] {
        let mut m = Mem::default();
        let mut t = Tree::<Extents>::build(&mut m, 5, (0..n).map(|i| (i * 2, ext(i)))).unwrap();
        let shape = assert_sound(&t, &m, n as usize);
        assert!(shape.pages <= n / 120 + 2, "{n}: {shape:?}");
        let est = t.estimate(&m).unwrap();
        assert!(est >= n / 4 && est <= n * 4 + 200, "{n}: estimate {est}");
        for i in 0..n.min(3000) {
            assert_eq!(t.get(&m, &(i * 2)).unwrap(), Some(ext(i)));
            t.insert(&mut m, i * 2 + 1, ext(i)).unwrap();
        }
        assert_sound(&t, &m, (n + n.min(3000)) as usize);
    }
    let mut m = Mem::default();
    assert!(Tree::<Extents>::build(&mut m, 5, [(3, ext(1)), (3, ext(2))]).is_err());
}

#[test]
fn free_all_frees_every_page() {
    let mut m = Mem::default();
    let mut t = Tree::<Shares>::new(0, 0);
    for i in 0..5000 {
        t.insert(&mut m, i * 10, ShareRun { len: 3, count: 2 })
            .unwrap();
    }
    assert!(m.pages.len() > 20);
    t.free_all(&mut m).unwrap();
    assert_eq!(t.root(), 0);
    assert!(m.pages.is_empty());
}

#[derive(Debug, Clone)]
enum Op {
    Insert(u16, u64),
    Remove(u16),
    Get(u16),
    Floor(u16),
    Range(u16, u8),
    Back(u16, u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (any::<u16>(), 1..1000u64).prop_map(|(k, v)| Op::Insert(k % 3000, v)),
        3 => any::<u16>().prop_map(|k| Op::Remove(k % 3000)),
        1 => any::<u16>().prop_map(|k| Op::Get(k % 3000)),
        1 => any::<u16>().prop_map(|k| Op::Floor(k % 3000)),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(k, n)| Op::Range(k % 3000, n)),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(k, n)| Op::Back(k % 3000, n)),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Any sequence of changes leaves the tree equal to the model, sound,
    /// and owning exactly the pages it allocated.
    #[test]
    fn behaves_like_a_map(ops in prop::collection::vec(op(), 1..3000), checking: bool) {
        let mut m = if checking { Mem::checking() } else { Mem::default() };
        let mut t = Tree::<Dirents>::new(0, 3);
        let mut model = BTreeMap::new();
        // Names of 40 to 140 bytes: 30 to 80 entries a node.
        let key = |k: u16| NameKey::new(format!("{k:0>w$}", w = 40 + usize::from(k % 100)).as_bytes());
        for (i, o) in ops.iter().enumerate() {
            match *o {
                Op::Insert(k, v) => {
                    prop_assert_eq!(t.insert(&mut m, key(k), v).unwrap(), model.insert(key(k), v));
                }
                Op::Remove(k) => {
                    prop_assert_eq!(t.remove(&mut m, &key(k)).unwrap(), model.remove(&key(k)));
                }
                Op::Get(k) => prop_assert_eq!(t.get(&m, &key(k)).unwrap(), model.get(&key(k)).copied()),
                Op::Floor(k) => prop_assert_eq!(
                    t.floor(&m, &key(k)).unwrap(),
                    model.range(..=key(k)).next_back().map(|(k, v)| (k.clone(), *v))
                ),
                Op::Range(k, n) => {
                    let mut got = Vec::new();
                    t.range(&m, Some(&key(k)), |k, v| {
                        got.push((k.clone(), *v));
                        got.len() < usize::from(n)
                    }).unwrap();
                    let want: Vec<_> = model
                        .range(key(k)..)
                        .take(usize::from(n).max(1))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    prop_assert_eq!(got, want);
                }
                Op::Back(k, n) => {
                    let mut got = Vec::new();
                    t.range_back(&m, &key(k), |k, v| {
                        got.push((k.clone(), *v));
                        got.len() < usize::from(n)
                    }).unwrap();
                    let want: Vec<_> = model
                        .range(..key(k))
                        .next_back()
                        .into_iter()
                        .chain(model.range(key(k)..))
                        .take(usize::from(n).max(1))
                        .map(|(k, v)| (k.clone(), *v))
                        .collect();
                    prop_assert_eq!(got, want);
                }
            }
            if i % 100 == 0 {
                assert_sound(&t, &m, model.len());
            }
        }
        assert_sound(&t, &m, model.len());
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(32))]

    /// The in-place floor of fixed-size records (page maps, share counts)
    /// answers as the model does, after inserts and removes in any order.
    #[test]
    fn floor_in_place_matches_the_model(
        keys in prop::collection::vec((0..20_000u64, any::<bool>()), 1..4000),
        probes in prop::collection::vec(0..20_100u64, 1..200),
    ) {
        let mut m = Mem::default();
        let mut t = Tree::<Extents>::new(0, 5);
        let mut model = BTreeMap::new();
        for (k, insert) in keys {
            if insert {
                t.insert(&mut m, k, ext(k + 1)).unwrap();
                model.insert(k, ext(k + 1));
            } else {
                t.remove(&mut m, &k).unwrap();
                model.remove(&k);
            }
        }
        for p in probes {
            let want = model.range(..=p).next_back().map(|(k, v)| (*k, *v));
            prop_assert_eq!(t.floor(&m, &p).unwrap(), want);
        }
    }
}

/// A tree of a few levels to damage.
fn damaged_base() -> (Mem, Tree<Extents>) {
    let mut m = Mem::default();
    let mut t = Tree::<Extents>::new(0, 5);
    for i in 0..3000 {
        t.insert(&mut m, i * 3, ext(i + 1)).unwrap();
    }
    (m, t)
}

/// Every operation on a damaged tree returns, with a value or an error;
/// `check` reports the damage.
fn assert_survives(m: &mut Mem, t: &mut Tree<Extents>) -> bool {
    let checked = t.check(m, |_| {}).is_ok();
    let _ = t.get(m, &1500);
    let _ = t.floor(m, &4000);
    let _ = t.range(m, Some(&10), |_, _| true);
    let _ = t.insert(m, 7, ext(9));
    let _ = t.remove(m, &9);
    checked
}

#[test]
fn damage_is_found_and_never_panics() {
    let (m0, t0) = damaged_base();
    let mut pfns: Vec<u64> = m0.in_use().into_iter().collect();
    pfns.sort();
    let mut rng = 0x9e3779b97f4a7c15u64;
    let mut next = || {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        rng
    };
    for _ in 0..300 {
        let (mut m, mut t) = (
            Mem {
                pages: m0.pages.clone(),
                ..Mem::default()
            },
            t0,
        );
        m.next = 10_000;
        let pfn = pfns[(next() % pfns.len() as u64) as usize];
        let used = u16::from_le_bytes([m.pages[&pfn][8], m.pages[&pfn][9]]);
        let at = (next() % (32 + u64::from(used))) as usize;
        m.pages.get_mut(&pfn).unwrap()[at] ^= 1 << (next() % 8);
        assert!(
            !assert_survives(&mut m, &mut t),
            "a flip at {pfn}:{at} was not found"
        );
    }
}

#[test]
fn damage_behind_a_valid_crc_is_found() {
    let (m0, t0) = damaged_base();
    let root: Node<Extents> = Node::decode(m0.page(t0.root()).unwrap()).unwrap();
    let Entries::Interior(kids) = &root.entries else {
        panic!("the root is a leaf")
    };
    let child = kids[1].1;
    type Damage = Box<dyn Fn(&mut Node<Extents>)>;
    let cases: Vec<(&str, Damage)> = vec![
        (
            "a child that is its parent",
            Box::new(move |n| {
                if let Entries::Interior(v) = &mut n.entries {
                    v[0].1 = t0.root();
                }
            }),
        ),
        (
            "a child reached twice",
            Box::new(move |n| {
                if let Entries::Interior(v) = &mut n.entries {
                    v[0].1 = child;
                }
            }),
        ),
        (
            "a child not in the image",
            Box::new(|n| {
                if let Entries::Interior(v) = &mut n.entries {
                    v[2].1 = 1 << 40;
                }
            }),
        ),
        ("another owner", Box::new(|n| n.owner = 6)),
        (
            "keys outside their bounds",
            Box::new(|n| {
                if let Entries::Interior(v) = &mut n.entries {
                    v[1].0 -= 30;
                }
            }),
        ),
    ];
    for (what, damage) in cases {
        let mut m = Mem {
            pages: m0.pages.clone(),
            next: 10_000,
            ..Mem::default()
        };
        let mut n = root.clone();
        damage(&mut n);
        let bytes = n.encode().unwrap();
        m.pages.get_mut(&t0.root()).unwrap()[..bytes.len()].copy_from_slice(&bytes);
        let mut t = t0;
        assert!(!assert_survives(&mut m, &mut t), "{what} was not found");
    }
}

#[test]
fn range_back_starts_one_before() {
    let mut m = Mem::default();
    let mut t = Tree::<Extents>::new(0, 5);
    let mut model = BTreeMap::new();
    for i in 0..3000u64 {
        t.insert(&mut m, i * 2, ext(i + 1)).unwrap();
        model.insert(i * 2, ext(i + 1));
    }
    for from in 0..6010u64 {
        let mut got = Vec::new();
        t.range_back(&m, &from, |k, _| {
            got.push(*k);
            got.len() < 3
        })
        .unwrap();
        let want: Vec<u64> = model
            .range(..from)
            .next_back()
            .into_iter()
            .chain(model.range(from..))
            .take(3)
            .map(|(k, _)| *k)
            .collect();
        assert_eq!(got, want, "from {from}");
    }
}
