//! Pass 3: inodes, their page maps and directories' entries (read from
//! their trees into `Loaded::dirs`), flags and stored ACLs.

use std::collections::{BTreeMap, BTreeSet};

use pmemfs_ondisk::acl::{self, Acl};
use pmemfs_ondisk::meta::{count_run, flag};
use pmemfs_ondisk::{Body, Dir, FileMap, Ino, Pmem, RangeMap, Run};

use super::problem::Code;
use super::{Check, Loaded};
use crate::progress::Progress;

/// Longest symbolic link target, as PATH_MAX.
const MAX_SYMLINK: usize = 4096;

pub fn check(c: &mut Check, l: &mut Loaded, pmem: &Pmem) {
    let g = l.sb.geometry;
    let ckpt: BTreeSet<u64> = l.ckpt_pfns.iter().copied().collect();
    let mut progress = Progress::new("pass 3: inodes", l.meta.inodes.len() as u64);
    let (mut files, mut dirs, mut other, mut mapped) = (0u64, 0u64, 0u64, 0u64);
    let view = l.over.view(pmem);
    // Pages the maps kept map, and the trees' pages by inode: where a tree
    // may not lie is known once every map is read.
    let mut in_use: RangeMap<u32> = RangeMap::new();
    let mut trees: Vec<(Ino, Vec<u64>, Holds)> = Vec::new();
    for (&ino, inode) in l.meta.inodes.iter_mut() {
        progress.tick(1);
        match &mut inode.body {
            Body::File(map) => {
                files += 1;
                let mut tree = Vec::new();
                let runs = match map.check(&view, |p| tree.push(p)) {
                    Ok((runs, _)) => runs,
                    Err(e) => {
                        if c.found(Code::MapBad, format!("inode {ino}: {e}")) {
                            *map = FileMap::new();
                        }
                        continue;
                    }
                };
                let mut bad = Vec::new();
                for &r in &runs {
                    mapped += r.len;
                    if !g.in_data(r.value, r.len) {
                        bad.push((r, Code::MapOutsideData));
                    } else if ckpt.range(r.value..r.value + r.len).next().is_some() {
                        bad.push((r, Code::MapOverCheckpoint));
                    }
                }
                let mut dropped = BTreeSet::new();
                for (r, code) in bad {
                    let detail = format!(
                        "inode {ino}: pages {}..{} map pfns {}..{}",
                        r.start,
                        r.start + r.len,
                        r.value,
                        r.value.wrapping_add(r.len)
                    );
                    if c.found(code, detail) {
                        dropped.insert(r.start);
                    }
                }
                if dropped.is_empty() {
                    for r in &runs {
                        count_run(&mut in_use, *r);
                    }
                    if !tree.is_empty() {
                        trees.push((ino, tree, Holds::Runs(runs)));
                    }
                } else {
                    // The rest of the map is written anew: what it was,
                    // less the bad runs.
                    let kept: Vec<Run<u64>> = runs
                        .into_iter()
                        .filter(|r| !dropped.contains(&r.start))
                        .collect();
                    for r in &kept {
                        count_run(&mut in_use, *r);
                    }
                    l.rebuild.maps.insert(ino, kept);
                    *map = FileMap::new();
                }
            }
            Body::Symlink(target) => {
                other += 1;
                let bad = target.is_empty() || target.len() > MAX_SYMLINK;
                if bad
                    && c.found(
                        Code::SymlinkBad,
                        format!("inode {ino}: target of {} bytes", target.len()),
                    )
                {
                    *target = b"?".to_vec();
                }
            }
            Body::Dir(d) => {
                dirs += 1;
                let mut tree = Vec::new();
                match d.check(&view, |p| tree.push(p)) {
                    Ok((entries, _)) => {
                        l.dirs.entries.insert(ino, entries.into_iter().collect());
                        if !tree.is_empty() {
                            trees.push((ino, tree, Holds::Entries));
                        }
                    }
                    Err(e) => {
                        l.dirs.entries.insert(ino, BTreeMap::new());
                        if c.found(Code::DirBad, format!("inode {ino}: {e}")) {
                            *d = Dir::new(ino, d.parent);
                        }
                    }
                }
            }
            Body::Special => other += 1,
        }
        let unknown = inode.attr.flags & !flag::KNOWN;
        if unknown != 0
            && c.found(
                Code::FlagsUnknown,
                format!(
                    "inode {ino}: flags {:#x}, unknown {unknown:#x}",
                    inode.attr.flags
                ),
            )
        {
            inode.attr.flags &= flag::KNOWN;
        }
        let is_dir = matches!(inode.body, Body::Dir(_));
        for name in [acl::ACCESS, acl::DEFAULT] {
            let Some(value) = inode.xattrs.get(name) else {
                continue;
            };
            let why = match Acl::decode(value) {
                Err(e) => e.detail,
                Ok(_) if name == acl::DEFAULT && !is_dir => {
                    "a default ACL on a non-directory".into()
                }
                Ok(_) => continue,
            };
            let detail = format!("inode {ino}: {}: {why}", String::from_utf8_lossy(name));
            if c.found(Code::AclBad, detail) {
                inode.xattrs.remove(name);
            }
        }
    }
    progress.finish();
    place_trees(c, l, &in_use, trees);
    c.note(format!(
        "{files} files, {dirs} directories, {other} others; {mapped} pages mapped, {} pages of inodes' trees",
        l.tree_nodes.len()
    ));
}

/// What a tree holds: a file's runs, or a directory's entries (those are
/// in `Loaded::dirs`).
enum Holds {
    Runs(Vec<Run<u64>>),
    Entries,
}

/// An inode's tree's pages must lie in the data area, apart from the
/// checkpoint, from the pages files map and from every other tree: a tree
/// that does not is written anew elsewhere, what it holds kept. The pages
/// of the trees that stay go to `l.tree_nodes`.
fn place_trees(
    c: &mut Check,
    l: &mut Loaded,
    in_use: &RangeMap<u32>,
    trees: Vec<(Ino, Vec<u64>, Holds)>,
) {
    let g = l.sb.geometry;
    let ckpt: BTreeSet<u64> = l.ckpt_pfns.iter().copied().collect();
    let mut owner: BTreeMap<u64, Ino> = BTreeMap::new();
    let mut moved = BTreeSet::new();
    for (ino, pages, holds) in &trees {
        for &p in pages {
            let clash = if !g.in_data(p, 1) {
                Some("outside the data area".to_string())
            } else if ckpt.contains(&p) {
                Some("in the checkpoint".to_string())
            } else if in_use.get(p).is_some() {
                Some("on a page a file maps".to_string())
            } else {
                owner
                    .insert(p, *ino)
                    .map(|other| format!("in the tree of inode {other} too"))
            };
            if let Some(why) = clash {
                let (code, what) = match holds {
                    Holds::Runs(_) => (Code::MapTreeMisplaced, "page-map"),
                    Holds::Entries => (Code::DirTreeMisplaced, "directory"),
                };
                if c.found(code, format!("inode {ino}: {what} node {p} lies {why}")) {
                    moved.insert(*ino);
                }
            }
        }
    }
    for (ino, pages, holds) in trees {
        if !moved.contains(&ino) {
            l.tree_nodes.extend(pages);
            continue;
        }
        match holds {
            Holds::Runs(runs) => {
                if let Some(Body::File(map)) = l.meta.inodes.get_mut(&ino).map(|i| &mut i.body) {
                    *map = FileMap::new();
                    l.rebuild.maps.insert(ino, runs);
                }
            }
            // Written anew with the directories pass 4 changes.
            Holds::Entries => {
                l.dirs.changed.insert(ino);
            }
        }
    }
}
