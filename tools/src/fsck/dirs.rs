//! Pass 4: directories and connectivity.
//!
//! Walks the tree from the root: every entry must name an existing inode by
//! a valid name, every directory must have exactly one name and a '..'
//! pointing at it, every inode must be reachable (files deleted while open,
//! with no links and no names, are left to recovery), and link counts must
//! match the names.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use pmemfs_ondisk::meta::{valid_name, LOST_FOUND};
use pmemfs_ondisk::{Attr, Body, Ino, Kind, Meta, NewBody, Op, ROOT_INO};

use super::problem::Code;
use super::Check;

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn is_dir(meta: &Meta, ino: Ino) -> bool {
    meta.get(ino).is_some_and(|i| i.dir().is_some())
}

fn entries(meta: &Meta, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
    meta.get(dir)
        .and_then(|i| i.dir())
        .map(|d| d.entries.iter().map(|(n, &i)| (n.clone(), i)).collect())
        .unwrap_or_default()
}

fn remove_entry(meta: &mut Meta, dir: Ino, name: &[u8]) {
    if let Some(Body::Dir(d)) = meta.inodes.get_mut(&dir).map(|i| &mut i.body) {
        d.entries.remove(name);
    }
}

/// The walk's state: which inodes are reached and where each directory was
/// found.
struct Walk {
    reached: BTreeSet<Ino>,
    found_in: BTreeMap<Ino, Ino>,
}

impl Walk {
    /// Reaches everything below `top` (itself reached already). A directory
    /// met a second time is an extra name.
    fn descend(&mut self, c: &mut Check, meta: &mut Meta, top: Ino) {
        let mut queue = VecDeque::from([top]);
        while let Some(d) = queue.pop_front() {
            for (name, t) in entries(meta, d) {
                if !valid_name(&name) || !meta.inodes.contains_key(&t) {
                    continue; // reported by the entry check
                }
                if is_dir(meta, t) {
                    if t == ROOT_INO || self.reached.contains(&t) {
                        let detail = format!(
                            "directory {t} is also named {:?} in directory {d}",
                            lossy(&name)
                        );
                        if c.found(Code::DirExtraLink, detail) {
                            remove_entry(meta, d, &name);
                        }
                        continue;
                    }
                    self.found_in.insert(t, d);
                    queue.push_back(t);
                }
                self.reached.insert(t);
            }
        }
    }
}

/// Returns false when the tree has no usable root.
pub fn check(c: &mut Check, meta: &mut Meta) -> bool {
    if !is_dir(meta, ROOT_INO) {
        c.found(Code::RootBad, format!("inode {ROOT_INO}"));
        return false;
    }
    // Entries that name nothing, or by an invalid name.
    let dirs: Vec<Ino> = meta
        .inodes
        .iter()
        .filter(|(_, i)| i.dir().is_some())
        .map(|(&n, _)| n)
        .collect();
    for &d in &dirs {
        for (name, t) in entries(meta, d) {
            let problem = if !valid_name(&name) {
                Some((
                    Code::DentryBadName,
                    format!("directory {d}: entry {:?} for inode {t}", lossy(&name)),
                ))
            } else if !meta.inodes.contains_key(&t) {
                Some((
                    Code::DentryDangling,
                    format!("directory {d}: {:?} names inode {t}", lossy(&name)),
                ))
            } else {
                None
            };
            if let Some((code, detail)) = problem {
                if c.found(code, detail) {
                    remove_entry(meta, d, &name);
                }
            }
        }
    }

    let mut walk = Walk {
        reached: BTreeSet::from([ROOT_INO]),
        found_in: BTreeMap::from([(ROOT_INO, ROOT_INO)]),
    };
    walk.descend(c, meta, ROOT_INO);

    let lost_found = ensure_lost_found(c, meta, &mut walk);

    // Unreachable inodes. Files deleted while open (no links, no names) are
    // recovery's to free, not orphans.
    let named: BTreeSet<Ino> = pmemfs_ondisk::image::unlinked_inodes(meta)
        .into_iter()
        .collect();
    let mut tops = BTreeSet::new();
    loop {
        let unreached: Vec<Ino> = meta
            .inodes
            .keys()
            .copied()
            .filter(|i| !walk.reached.contains(i) && !named.contains(i))
            .collect();
        if unreached.is_empty() {
            break;
        }
        // The top of an unreachable subtree is an inode that no unreachable
        // directory names; in a cycle, any member will do.
        let inner: BTreeSet<Ino> = unreached
            .iter()
            .flat_map(|&d| entries(meta, d))
            .map(|(_, t)| t)
            .collect();
        let top = unreached
            .iter()
            .copied()
            .find(|i| !inner.contains(i))
            .unwrap_or(unreached[0]);
        let kind = meta.get(top).map(|i| i.attr.kind);
        let fix = c.found(Code::Orphan, format!("inode {top} ({kind:?})"));
        if let (true, Some(lf)) = (fix, lost_found) {
            let name = format!("#{top}").into_bytes();
            if meta
                .apply(&Op::Link {
                    dir: lf,
                    name,
                    ino: top,
                })
                .is_ok()
                && is_dir(meta, top)
            {
                let _ = meta.apply(&Op::SetParent {
                    dir: top,
                    parent: lf,
                });
                walk.found_in.insert(top, lf);
            }
        } else {
            tops.insert(top);
        }
        walk.reached.insert(top);
        walk.descend(c, meta, top);
    }

    // '..' of every reached directory.
    for (&d, &holder) in &walk.found_in {
        let parent = meta.get(d).and_then(|i| i.dir()).map(|x| x.parent);
        if parent.is_some_and(|p| p != holder) {
            let detail = format!(
                "directory {d}: '..' is {}, it is held by {holder}",
                parent.unwrap_or_default()
            );
            if c.found(Code::DirParent, detail) {
                let _ = meta.apply(&Op::SetParent {
                    dir: d,
                    parent: holder,
                });
            }
        }
    }

    // Link counts: names for non-directories, 2 + subdirectories for
    // directories.
    let mut names: BTreeMap<Ino, u32> = BTreeMap::new();
    let mut subdirs: BTreeMap<Ino, u32> = BTreeMap::new();
    for &d in walk.reached.iter().filter(|&&d| is_dir(meta, d)) {
        for (_, t) in entries(meta, d) {
            *names.entry(t).or_default() += 1;
            if is_dir(meta, t) {
                *subdirs.entry(d).or_default() += 1;
            }
        }
    }
    let reached: Vec<Ino> = walk
        .reached
        .iter()
        .copied()
        .filter(|i| !tops.contains(i))
        .collect();
    for ino in reached {
        let Some(inode) = meta.inodes.get_mut(&ino) else {
            continue;
        };
        let want = if inode.attr.kind == Kind::Dir {
            2 + subdirs.get(&ino).copied().unwrap_or(0)
        } else {
            names.get(&ino).copied().unwrap_or(0)
        };
        if inode.attr.nlink != want {
            let detail = format!("inode {ino}: nlink is {}, it has {want}", inode.attr.nlink);
            if c.found(Code::Nlink, detail) {
                inode.attr.nlink = want;
            }
        }
    }
    c.note(format!("{} inodes reachable", walk.reached.len()));
    true
}

/// Finds lost+found, recreating it when missing and the repair is wanted.
fn ensure_lost_found(c: &mut Check, meta: &mut Meta, walk: &mut Walk) -> Option<Ino> {
    match meta.lost_found() {
        Some(lf) if is_dir(meta, lf) => return Some(lf),
        Some(other) => {
            // The name is taken by something else: leave it, and no orphan
            // can be placed.
            c.found(
                Code::LostFoundMissing,
                format!(
                    "the root's {:?} is inode {other}, not a directory",
                    lossy(LOST_FOUND)
                ),
            );
            return None;
        }
        None => {}
    }
    if !c.found(
        Code::LostFoundMissing,
        "the root has no lost+found directory",
    ) {
        return None;
    }
    let ino = meta.next_ino;
    let now = pmemfs_ondisk::now();
    let root = meta.get(ROOT_INO).map(|i| i.attr)?;
    let ops = [
        Op::Create {
            ino,
            attr: Attr::new(Kind::Dir, 0o700, root.uid, root.gid, now),
            body: NewBody::Dir { parent: ROOT_INO },
        },
        Op::Link {
            dir: ROOT_INO,
            name: LOST_FOUND.to_vec(),
            ino,
        },
    ];
    for op in &ops {
        meta.apply(op).ok()?;
    }
    walk.reached.insert(ino);
    walk.found_in.insert(ino, ROOT_INO);
    Some(ino)
}
