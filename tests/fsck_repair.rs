//! Damage-and-repair tests in the e2fsprogs shape: a damaged image;
//! `fsck.pmemfs -y` exits 1 (corrected); a second `fsck.pmemfs -n` exits 0.
//! Images with files are built through the ondisk API.

mod util;

use pmemfs_ondisk::filemap::MapParts;
use pmemfs_ondisk::journal;
use pmemfs_ondisk::meta::LOST_FOUND;
use pmemfs_ondisk::{Access, FileMap, Image, Op, PAGE_SIZE, ROOT_INO};
use util::*;

const SIZE: u64 = 32 << 20;

/// An image with a directory, two files and a clone sharing pages.
fn populated(dir: &TempDir) -> std::path::PathBuf {
    let path = dir.join("fs.img");
    format_image(&path, SIZE);
    let mut b = Builder::open(&path);
    let d = b.mkdir(ROOT_INO, "docs");
    b.file(d, "a", 5, 1);
    let big = b.file(ROOT_INO, "big", 40, 100);
    b.clone_file(big, "big.clone");
    b.image.close().expect("close");
    assert_eq!(fsck("-n", &path).0, 0, "the undamaged image is clean");
    path
}

/// The e2fsprogs shape: -n finds it (exit 4), -y fixes it (exit 1), -n
/// again is clean (exit 0). Returns the -n and -y outputs.
fn repair_cycle(path: &std::path::Path, expect_id: &str) -> (String, String) {
    let (code_n, out_n) = fsck("-n", path);
    assert_eq!(code_n, 4, "fsck -n must report the damage:\n{out_n}");
    assert!(
        out_n.contains(expect_id),
        "expected [{expect_id}] in:\n{out_n}"
    );
    let (code_y, out_y) = fsck("-y", path);
    assert_eq!(code_y, 1, "fsck -y must correct it:\n{out_y}");
    let (code_again, out_again) = fsck("-n", path);
    assert_eq!(
        code_again, 0,
        "the repaired image must be clean:\n{out_again}"
    );
    (out_n, out_y)
}

/// Mount must refuse a damaged image, naming fsck.
fn assert_mount_refused(path: &std::path::Path) {
    let e = Image::open(path, Access::ReadWrite).err().expect("refused");
    assert!(e.to_string().contains("fsck.pmemfs"), "{e}");
}

/// Writes `entry` (bytes of a journal entry) where the image's next entry
/// goes, durably, as a commit would have before a crash.
fn put_entry(b: &Builder, entry: &[u8]) {
    let at = b.image.geometry().journal_offset() + b.image.journal_pos().off;
    b.image.pmem().write(at, entry).unwrap();
    b.image.pmem().persist(at, entry.len() as u64).unwrap();
}

#[test]
fn first_superblock_zeroed() {
    let dir = TempDir::new("sb0");
    let path = populated(&dir);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0u8; PAGE_SIZE as usize], 0).unwrap();
    drop(f);
    let (out_n, _) = repair_cycle(&path, "SB1");
    assert!(
        out_n.contains("superblock copy 0"),
        "the bad copy is named:\n{out_n}"
    );
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(img.meta().inodes.len(), 6, "nothing lost");
}

#[test]
fn torn_journal_tail() {
    let dir = TempDir::new("torn");
    let path = populated(&dir);
    // A transaction that was being written when the power failed: its
    // header made it to the media, its payload only partly.
    let mut b = Builder::open(&path);
    b.file(ROOT_INO, "committed", 2, 7);
    let pos = b.image.journal_pos();
    let mut entry = journal::encode_entry(
        pos,
        &[Op::Unlink {
            dir: ROOT_INO,
            name: b"big".to_vec(),
        }],
        &[],
    )
    .unwrap();
    // The header and the first payload byte landed; the rest did not.
    entry[journal::HEADER_BYTES as usize + 1..].fill(0);
    put_entry(&b, &entry);
    drop(b); // the crash
    let (_, out_y) = repair_cycle(&path, "JN1");
    assert!(out_y.contains("fixed: dropped"), "{out_y}");
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    assert!(
        img.lookup(ROOT_INO, b"committed").unwrap().is_some(),
        "the committed transaction survives"
    );
    assert!(
        img.lookup(ROOT_INO, b"big").unwrap().is_some(),
        "the torn one never happened"
    );
}

#[test]
fn wrong_share_count() {
    let dir = TempDir::new("share");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let shared = img
        .shared_runs()
        .unwrap()
        .0
        .iter()
        .find(|r| r.value == 2)
        .expect("the clone shares pages")
        .start;
    drop(img);
    damage_shares(&path, |t, pages| t.add(pages, shared, 3).unwrap());
    // Mount must refuse an image whose counts are wrong, naming fsck.
    assert_mount_refused(&path);
    repair_cycle(&path, "SH1");
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    assert_eq!(img.share_count(shared).unwrap(), 2);
}

/// A share-tree node damaged on the media (its checksum catches it):
/// mount refuses, naming fsck; fsck rebuilds the tree from the page maps.
#[test]
fn damaged_share_tree_node() {
    let dir = TempDir::new("sharenode");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let root = img.meta().share_root;
    assert_ne!(root, 0, "the clone made a share tree");
    let (runs, _) = img.shared_runs().unwrap();
    drop(img);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 8], root * PAGE_SIZE + 40).unwrap();
    drop(f);
    assert_mount_refused(&path);
    repair_cycle(&path, "SH4");
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    assert_eq!(img.shared_runs().unwrap().0, runs, "the counts are back");
}

/// A node of a file's page-map tree damaged on the media: mount refuses,
/// naming fsck; fsck drops that map (the file reads as zeros, its size
/// kept) and nothing else.
#[test]
fn damaged_page_map_node() {
    let dir = TempDir::new("mapnode");
    let path = populated(&dir);
    let mut b = Builder::open(&path);
    let frag = b.fragmented(ROOT_INO, "frag", 30, 7);
    let root = map_root(&b.image, frag);
    assert_ne!(root, 0, "30 scattered pages make a tree");
    b.image.close().unwrap();
    assert_eq!(fsck("-n", &path).0, 0, "the image with a tree is clean");
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(page_of(&img, frag, 29).unwrap()[0], 7 + 29);
    drop(img);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 8], root * PAGE_SIZE + 40).unwrap();
    drop(f);
    assert_mount_refused(&path);
    repair_cycle(&path, "IN6");
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    let i = img.meta().get(frag).unwrap();
    assert_eq!(
        (i.attr.size, i.pages().unwrap().pages()),
        (30 * PAGE_SIZE, 0)
    );
    assert_eq!(img.meta().inodes.len(), 7, "nothing else lost");
}

/// A committed entry that maps a page of one file onto a node of another
/// file's page-map tree: fsck writes that tree anew elsewhere, and both
/// files keep what they map.
/// Commits an entry that maps page 0 of file `one` onto `pfn` (a tree's
/// node), and crashes with it committed.
fn crash_mapping(b: Builder, one: pmemfs_ondisk::Ino, pfn: u64) {
    let run = pmemfs_ondisk::Run {
        start: 0,
        len: 1,
        value: pfn,
    };
    let parts = MapParts {
        root: 0,
        runs: 1,
        pages: 1,
        inline: Some(run),
    };
    let map = FileMap::from_parts(one, parts).unwrap();
    let pos = b.image.journal_pos();
    let entry = journal::encode_entry(pos, &[Op::SetFileMap { ino: one, map }], &[]).unwrap();
    put_entry(&b, &entry);
    drop(b);
}

#[test]
fn page_map_tree_on_a_mapped_page() {
    let dir = TempDir::new("mapclash");
    let path = populated(&dir);
    let mut b = Builder::open(&path);
    let frag = b.fragmented(ROOT_INO, "frag", 30, 7);
    let one = b.file(ROOT_INO, "one", 1, 50);
    let root = map_root(&b.image, frag);
    crash_mapping(b, one, root);
    let (out_n, _) = repair_cycle(&path, "IN7");
    assert!(out_n.contains(&format!("node {root}")), "{out_n}");
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    let moved = map_root(&img, frag);
    assert_ne!(moved, root, "the tree lies elsewhere now");
    for i in 0..30 {
        assert_eq!(page_of(&img, frag, i).unwrap()[0], 7 + i as u8, "page {i}");
    }
    assert_eq!(img.file_map(one).unwrap().get(0).unwrap(), Some(root));
}

/// The root of directory `ino`'s entries' tree.
fn dir_root(img: &Image, ino: pmemfs_ondisk::Ino) -> u64 {
    img.meta()
        .get(ino)
        .and_then(|i| i.dir())
        .expect("a directory")
        .root()
}

/// A node of a directory's tree damaged on the media: mount refuses,
/// naming fsck; fsck empties that directory and moves what it named to
/// lost+found, data intact, and nothing else changes.
#[test]
fn damaged_directory_node() {
    let dir = TempDir::new("dirnode");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let docs = img.lookup(ROOT_INO, b"docs").unwrap().unwrap();
    let a = img.lookup(docs, b"a").unwrap().unwrap();
    let before = page_of(&img, a, 3).unwrap();
    let root = dir_root(&img, docs);
    assert_ne!(root, 0, "a directory with an entry has a tree");
    drop(img);
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    // Into its record, which a slotted node keeps at the page's end.
    std::os::unix::fs::FileExt::write_all_at(&f, &[0x5a; 8], root * PAGE_SIZE + PAGE_SIZE - 12)
        .unwrap();
    drop(f);
    assert_mount_refused(&path);
    let (out_n, _) = repair_cycle(&path, "IN8");
    assert!(
        out_n.contains(&format!("inode {a}")),
        "the orphan is named:\n{out_n}"
    );
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    assert!(
        img.entries(docs).unwrap().is_empty(),
        "the directory is empty"
    );
    let lf = img.lookup(ROOT_INO, LOST_FOUND).unwrap().unwrap();
    assert_eq!(img.lookup(lf, format!("#{a}").as_bytes()).unwrap(), Some(a));
    assert_eq!(page_of(&img, a, 3).unwrap(), before, "its data is intact");
    assert!(img.lookup(ROOT_INO, b"big.clone").unwrap().is_some());
    assert_eq!(img.meta().inodes.len(), 6, "no inode lost");
}

/// A committed entry that maps a page of a file onto a node of a
/// directory's tree: fsck writes the directory's tree anew elsewhere, and
/// both keep what they hold.
#[test]
fn directory_tree_on_a_mapped_page() {
    let dir = TempDir::new("dirclash");
    let path = populated(&dir);
    let mut b = Builder::open(&path);
    let one = b.file(ROOT_INO, "one", 1, 50);
    let docs = b.image.lookup(ROOT_INO, b"docs").unwrap().unwrap();
    let root = dir_root(&b.image, docs);
    crash_mapping(b, one, root);
    let (out_n, _) = repair_cycle(&path, "IN9");
    assert!(out_n.contains(&format!("node {root}")), "{out_n}");
    let img = Image::open(&path, Access::ReadWrite).unwrap();
    assert_ne!(dir_root(&img, docs), root, "the tree lies elsewhere now");
    assert!(img.lookup(docs, b"a").unwrap().is_some(), "the entry kept");
    assert_eq!(img.file_map(one).unwrap().get(0).unwrap(), Some(root));
}

#[test]
fn leaked_page() {
    let dir = TempDir::new("leak");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let free_before = img.free_pages();
    let far = img.geometry().total_pages - 10;
    drop(img);
    damage_shares(&path, |t, pages| t.add(pages, far, 4).unwrap());
    let (out_n, _) = repair_cycle(&path, "SH2");
    assert!(
        out_n.contains(&format!("pfns {far}..{}", far + 4)),
        "{out_n}"
    );
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    assert_eq!(
        img.free_pages(),
        free_before,
        "the leaked pages are free again"
    );
}

#[test]
fn orphaned_inode() {
    let dir = TempDir::new("orphan");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let docs = img.lookup(ROOT_INO, b"docs").unwrap().unwrap();
    let a = img.lookup(docs, b"a").unwrap().unwrap();
    let before = page_of(&img, a, 3).unwrap();
    drop(img);
    // The name goes, the inode (with its link count of 1) stays.
    damage_dirs(&path, |_, e| {
        e.get_mut(&docs).unwrap().remove(b"a".as_slice());
    });
    let (out_n, out_y) = repair_cycle(&path, "DR7");
    assert!(out_n.contains(&format!("inode {a}")), "{out_n}");
    assert!(out_y.contains("moved to lost+found"), "{out_y}");
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let lf = img.meta().lost_found(&img.view()).unwrap().unwrap();
    let name = format!("#{a}");
    assert_eq!(img.lookup(lf, name.as_bytes()).unwrap(), Some(a));
    assert_eq!(page_of(&img, a, 3).unwrap(), before, "its data is intact");
    assert_eq!(img.lookup(ROOT_INO, LOST_FOUND).unwrap(), Some(lf));
}

#[test]
fn orphaned_directory_tree_and_missing_lost_found() {
    let dir = TempDir::new("orphandir");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let docs = img.lookup(ROOT_INO, b"docs").unwrap().unwrap();
    let lf = img.lookup(ROOT_INO, LOST_FOUND).unwrap().unwrap();
    drop(img);
    damage_dirs(&path, |m, e| {
        let root = e.get_mut(&ROOT_INO).unwrap();
        root.remove(b"docs".as_slice());
        root.remove(LOST_FOUND);
        m.inodes.remove(&lf);
    });
    let (out_n, _) = repair_cycle(&path, "DR6");
    assert!(out_n.contains("DR7"), "{out_n}");
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let lf = img.lookup(ROOT_INO, LOST_FOUND).unwrap().unwrap();
    let moved = img.lookup(lf, format!("#{docs}").as_bytes()).unwrap();
    assert_eq!(
        moved,
        Some(docs),
        "the directory moved whole, with its file"
    );
    assert_eq!(img.meta().get(docs).unwrap().dir().unwrap().parent, lf);
    assert_eq!(img.entries(docs).unwrap().len(), 1);
}

#[test]
fn preen_fixes_safe_problems_only() {
    let dir = TempDir::new("preen");
    let path = populated(&dir);
    damage_dirs(&path, |m, e| {
        let big = e[&ROOT_INO][b"big".as_slice()];
        m.inodes.get_mut(&big).unwrap().attr.nlink = 5;
    });
    // The image was closed cleanly: -p alone would skip it, -f checks.
    let (code, out) = fsck("-pf", &path);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("DR8"), "{out}");
    assert_eq!(fsck("-n", &path).0, 0);
}

#[test]
fn bad_acl_and_unknown_flags() {
    let dir = TempDir::new("acl");
    let path = populated(&dir);
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let file = img.lookup(ROOT_INO, b"big").unwrap().unwrap();
    drop(img);
    let good = pmemfs_ondisk::acl::Acl::from_mode(0o640).encode();
    damage_meta(&path, |m| {
        let inode = m.inodes.get_mut(&file).unwrap();
        // A truncated access ACL, and a default ACL on a file.
        inode.xattrs.insert(
            pmemfs_ondisk::acl::ACCESS.to_vec(),
            good[..good.len() - 3].to_vec(),
        );
        inode
            .xattrs
            .insert(pmemfs_ondisk::acl::DEFAULT.to_vec(), good.clone());
        inode.attr.flags = 0x10 | 0x4000_0000;
    });
    let (out_n, _) = repair_cycle(&path, "IN4");
    assert!(out_n.contains("IN5"), "unknown flags reported:\n{out_n}");
    let img = Image::open(&path, Access::ReadOnly).unwrap();
    let inode = img.meta().get(file).unwrap();
    assert!(inode.xattrs.is_empty(), "both bad ACLs removed");
    assert_eq!(inode.attr.flags, 0x10, "the known flag kept");
}
