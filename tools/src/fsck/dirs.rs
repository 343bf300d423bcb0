//! Pass 4: directories and connectivity.
//!
//! Walks the tree from the root: every entry must name an existing inode by
//! a valid name, every directory must have exactly one name and a '..'
//! pointing at it, every inode must be reachable (files deleted while open,
//! with no links and no names, are left to recovery), and link counts must
//! match the names.
//!
//! The entries are pass 3's copies ([`Dirs`]), read from the directories'
//! trees; a directory whose entries a repair changes has its tree written
//! anew when the repairs are ([`Dirs::settle`]).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use pmemfs_ondisk::image::Rebuild;
use pmemfs_ondisk::meta::{valid_name, LOST_FOUND};
use pmemfs_ondisk::{Attr, Body, Dir, Ino, Kind, Meta, NewBody, Op, ROOT_INO};

use super::problem::Code;
use super::Check;

fn lossy(name: &[u8]) -> String {
    String::from_utf8_lossy(name).into_owned()
}

fn is_dir(meta: &Meta, ino: Ino) -> bool {
    meta.get(ino).is_some_and(|i| i.dir().is_some())
}

/// Every directory's entries as fsck checks and repairs them, and which
/// of them a repair changed.
#[derive(Debug, Default)]
pub struct Dirs {
    pub entries: BTreeMap<Ino, BTreeMap<Vec<u8>, Ino>>,
    pub changed: BTreeSet<Ino>,
}

impl Dirs {
    fn list(&self, dir: Ino) -> Vec<(Vec<u8>, Ino)> {
        self.entries
            .get(&dir)
            .map(|e| e.iter().map(|(n, &i)| (n.clone(), i)).collect())
            .unwrap_or_default()
    }

    fn get(&self, dir: Ino, name: &[u8]) -> Option<Ino> {
        self.entries.get(&dir)?.get(name).copied()
    }

    fn remove(&mut self, dir: Ino, name: &[u8]) {
        if let Some(e) = self.entries.get_mut(&dir) {
            e.remove(name);
            self.changed.insert(dir);
        }
    }

    /// Adds an entry; false if the name is taken.
    fn insert(&mut self, dir: Ino, name: Vec<u8>, ino: Ino) -> bool {
        let e = self.entries.entry(dir).or_default();
        if e.contains_key(&name) {
            return false;
        }
        e.insert(name, ino);
        self.changed.insert(dir);
        true
    }

    /// Hands the changed directories' entries to `rebuild`, their trees to
    /// be written anew (their inodes empty meanwhile, the old trees'
    /// nodes free).
    pub fn settle(&mut self, meta: &mut Meta, rebuild: &mut Rebuild) {
        for &ino in &self.changed {
            if let Some(Body::Dir(d)) = meta.inodes.get_mut(&ino).map(|i| &mut i.body) {
                *d = Dir::new(ino, d.parent);
                let e = self.entries.get(&ino).cloned().unwrap_or_default();
                rebuild.dirs.insert(ino, e.into_iter().collect());
            }
        }
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
    fn descend(&mut self, c: &mut Check, meta: &Meta, dirs: &mut Dirs, top: Ino) {
        let mut queue = VecDeque::from([top]);
        while let Some(d) = queue.pop_front() {
            for (name, t) in dirs.list(d) {
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
                            dirs.remove(d, &name);
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
pub fn check(c: &mut Check, meta: &mut Meta, dirs: &mut Dirs) -> bool {
    if !is_dir(meta, ROOT_INO) {
        c.found(Code::RootBad, format!("inode {ROOT_INO}"));
        return false;
    }
    // Entries that name nothing, or by an invalid name.
    let all: Vec<Ino> = dirs.entries.keys().copied().collect();
    for d in all {
        for (name, t) in dirs.list(d) {
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
                    dirs.remove(d, &name);
                }
            }
        }
    }

    let mut walk = Walk {
        reached: BTreeSet::from([ROOT_INO]),
        found_in: BTreeMap::from([(ROOT_INO, ROOT_INO)]),
    };
    walk.descend(c, meta, dirs, ROOT_INO);

    let lost_found = ensure_lost_found(c, meta, dirs, &mut walk);

    // Unreachable inodes. Files deleted while open (no links, no names) are
    // recovery's to free, not orphans.
    let named_somewhere: BTreeSet<Ino> = dirs
        .entries
        .values()
        .flat_map(|e| e.values())
        .copied()
        .collect();
    let named: BTreeSet<Ino> = meta
        .inodes
        .iter()
        .filter(|(ino, i)| i.attr.nlink == 0 && **ino != ROOT_INO && !named_somewhere.contains(ino))
        .map(|(&ino, _)| ino)
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
            .flat_map(|&d| dirs.list(d))
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
            if dirs.insert(lf, name, top) && is_dir(meta, top) {
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
        walk.descend(c, meta, dirs, top);
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
        for (_, t) in dirs.list(d) {
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
fn ensure_lost_found(
    c: &mut Check,
    meta: &mut Meta,
    dirs: &mut Dirs,
    walk: &mut Walk,
) -> Option<Ino> {
    match dirs.get(ROOT_INO, LOST_FOUND) {
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
    meta.apply(&Op::Create {
        ino,
        attr: Attr::new(Kind::Dir, 0o700, root.uid, root.gid, now),
        body: NewBody::Dir { parent: ROOT_INO },
    })
    .ok()?;
    dirs.entries.insert(ino, BTreeMap::new());
    if !dirs.insert(ROOT_INO, LOST_FOUND.to_vec(), ino) {
        return None;
    }
    walk.reached.insert(ino);
    walk.found_in.insert(ino, ROOT_INO);
    Some(ino)
}
