//! Crash consistency, proven at every fence.
//!
//! The file system runs in process (`pmemfs_fs::state::State` on
//! `Image::open_pmem`, the code paths FUSE calls, without the kernel) on the
//! recording persistence domain (`pmemfs_ondisk::recording`), which notes
//! every store, flush and fence. Each sequence of operations starts from a
//! small tree set up beforehand; then every *crash point* of the sequence
//! (just before each fence, and the end) is tried with chosen subsets of
//! the cache lines in flight there (stored or flushed, not yet fenced), and
//! each resulting image is checked.
//!
//! # What is checked, and what is legal
//!
//! For a crash image at crash point `k`, with ops `0..d` having returned
//! before it (every fence they issued is at or before `k`) and op `d` (if
//! any) in flight:
//!
//! 1. `fsck -n` on the crash image, before recovery, finds nothing but what
//!    a crash may leave: a torn journal tail (JN1), a superblock copy torn
//!    or older than the other (SB1, SB2).
//! 2. Recovery succeeds: `Image::open_pmem` read-write, on a copy in memory.
//! 3. `fsck -n` after recovery finds nothing at all (on every third state:
//!    it costs as much as the rest together).
//! 4. The recovered metadata (namespace, attributes, xattrs, page maps,
//!    share counts, next inode number) is *exactly* the metadata after op
//!    `d - 1` returned ("before") or after op `d` ("after"), as recovery
//!    leaves it (files unlinked while open are freed): ops are
//!    synchronous, so every op that returned is durable, and the op in
//!    flight is all or nothing (a rename, a link, a clone, a truncate
//!    included). The share counts equal the references (open refuses
//!    otherwise, fsck checks it again), and free space adds up: free pages
//!    plus checkpoint pages plus pages in use is the data area.
//! 5. File contents, read through `State::read`: after "after", every file
//!    holds exactly what it held when op `d` returned. After "before",
//!    every file holds what it held before op `d`, with one exception:
//!    bytes that op `d` overwrites *in place* (pages its file alone maps:
//!    a write's or a clone's unaligned head and tail, the zeroed edges of a
//!    punched hole or of a truncation) may each hold the old or the new
//!    value, because in-place stores reach the media before the commit
//!    point and no earlier state can be restored. New pages (holes filled,
//!    copy on write of shared pages, appended pages) appear all together
//!    with the transaction or not at all. Nothing else is allowed: no file
//!    shows bytes it never held (a stale page, or another file's).
//! 6. Growing a file exposes zeros. Its pages may hold nonzero bytes past
//!    its size after a crash (an in-place write past the end, cut short
//!    before its commit, leaves them there; nothing reads them), so every
//!    file that holds some is grown over them, by truncate, a write past a
//!    gap, fallocate or a copy past a gap in turn, and the part grown must
//!    read as zeros.
//! 7. The file system is usable after recovery: a new file written over
//!    freshly allocated pages disturbs no other file (every third state).
//!
//! Besides, after each op the live file system is compared with a simple
//! model of file contents; and for some crash images, the recovery is
//! itself recorded and crashed at each of its crash points: a crash while
//! mounting must leave an image as legal as the first.
//!
//! Writers run at once on a mount where one stores bytes in place with the
//! state shared while another's write is staged (`State::stage_write`: its
//! fresh pages taken and filled before its commit). A crash sees only the
//! order of their stores and fences, so one thread replays such an
//! interleaving (`Act::Interleaved`) and the checks above hold it to the
//! same rules, as one op.
//!
//! The crash model is the recording domain's: a line in flight reaches the
//! media whole with its last value, or not at all (see
//! `pmemfs_ondisk::recording` for what that leaves out).
//!
//! # What runs
//!
//! Sequences start from the tree `base_image` makes, after one of several
//! preparations (`Prep`): none; a few committed transactions first; the
//! journal genuinely filled to a few hundred bytes from its end, or started
//! there (so that a commit of the sequence checkpoints instead); or the
//! mount itself, crashed from fence 0.
//!
//! The bounded set (`bounded_crash_states`, run by CI) covers every crash
//! point of every one- and two-operation sequence over the templates
//! (`templates`), the pairs also with the journal about to fill and after
//! a few transactions, a sample of three-operation sequences, and seeded
//! random sequences of 20 ops. At each crash point it tries the empty and
//! full subsets of the lines in flight, every single line, every pair and
//! every set but one line (sampled beyond 48 lines, 16 for pairs), the
//! lines of each region (superblocks, journal, data) alone and all but
//! them, and random subsets. It prints `crash states checked: N,
//! violations: V`, and each kind of violation with its first instance.
//!
//! - `PMEMFS_CRASH_LONG=SECONDS` runs a long random campaign
//!   (`long_random_campaign`) for that long, from `PMEMFS_CRASH_SEED` (the
//!   time by default; printed).
//! - `PMEMFS_CRASH_FILTER=TEXT` keeps the bounded jobs whose description
//!   holds TEXT, to chase one violation.
//!
//! Every test here runs the file system under a process-wide lock, because
//! the tests that prove the harness can fail turn on deliberate ordering
//! bugs (`pmemfs_ondisk::testing`) for the whole process.

use std::collections::{BTreeMap, HashSet};
use std::io::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};

use pmemfs_fs::data::Writer;
use pmemfs_fs::namespace::{Caller, NewInode};
use pmemfs_fs::state::State;
use pmemfs_ondisk::recording::{Recording, ReplayBuffers, Trace};
use pmemfs_ondisk::{checkpoint, superblock};
use pmemfs_ondisk::{
    format_pmem, FormatOptions, Geometry, Image, Ino, Kind, Meta, Op, Pmem, MIN_IMAGE_BYTES,
    PAGE_SIZE, ROOT_INO,
};
use pmemfs_tools::fsck::{self, problem::Code};

const PAGE: u64 = PAGE_SIZE;
const ROOT: Caller = Caller { uid: 0, gid: 0 };

// ---------------------------------------------------------------------------
// Small helpers

/// splitmix64: a seeded generator, good enough to pick tests.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    fn below(&mut self, n: u64) -> u64 {
        if n == 0 {
            0
        } else {
            self.next() % n
        }
    }

    fn chance(&mut self, pct: u64) -> bool {
        self.below(100) < pct
    }
}

/// Bytes a write with `seed` stores: never zero, different in every page
/// and every seed, so that a stale or foreign page shows.
fn pattern(seed: u64, len: u64) -> Vec<u8> {
    (0..len)
        .map(|i| 1 + ((seed.wrapping_mul(0x9e37) + i * 31 + (i >> 12) * 97) % 251) as u8)
        .collect()
}

fn split(path: &str) -> (&str, &str) {
    match path.rfind('/') {
        Some(0) => ("/", &path[1..]),
        Some(i) => (&path[..i], &path[i + 1..]),
        None => ("/", path),
    }
}

fn resolve(s: &State, path: &str) -> Result<Ino, String> {
    let mut ino = ROOT_INO;
    for part in path.split('/').filter(|p| !p.is_empty()) {
        ino = s
            .lookup(ino, part.as_bytes())
            .map_err(|e| format!("{path}: {e}"))?;
    }
    Ok(ino)
}

// ---------------------------------------------------------------------------
// Operations

#[derive(Clone, Debug)]
enum Act {
    Create(String),
    Mkdir(String),
    Symlink(String, String),
    Write(String, u64, u64, u64),
    Append(String, u64, u64),
    Fsync(String),
    Rename(String, String),
    Link(String, String),
    Unlink(String),
    Rmdir(String),
    Truncate(String, u64),
    Punch(String, u64, u64),
    Setxattr(String, String, u64, u64),
    Clone(String, u64, String, u64, u64),
    /// FIDEDUPERANGE of one destination: shares only if the bytes are
    /// equal, and never changes a byte.
    Dedupe(String, u64, String, u64, u64),
    /// rename(2) with RENAME_EXCHANGE.
    Exchange(String, String),
    Removexattr(String, String),
    /// fallocate(2) with this mode (not a punch).
    Fallocate(String, u64, u64, i32),
    /// A fifo.
    Mknod(String),
    /// Opens a file: it lives on, unlinked, until closed (or until the
    /// recovery after a crash frees it).
    Open(String),
    /// Closes the file opened last.
    Close,
    /// Two writers at once, as the mount runs them: a write of the first
    /// file staged (fresh pages taken, its bytes stored, then its commit)
    /// with an in-place write of the second between its store and its
    /// commit. One op for the checks: the second's bytes are in place, the
    /// first's new pages come with its commit. The second is left out when
    /// it is the same file (its data lock keeps them apart) or would
    /// commit anything (it then waits for the first's commit).
    Interleaved(String, u64, u64, u64, String, u64, u64, u64),
}

/// Bytes an op stores in place over existing pages (before its commit):
/// (inode, byte offset, new bytes).
type InPlace = Vec<(Ino, u64, Vec<u8>)>;

/// File contents by inode: the model the live file system is checked
/// against after every op.
type Contents = BTreeMap<Ino, Vec<u8>>;

fn s(x: &str) -> String {
    x.to_string()
}

/// `data` written at byte `off` of file `ino` in `model`.
fn model_write(model: &mut Contents, ino: Ino, off: u64, data: &[u8]) {
    let c = model.entry(ino).or_default();
    let end = off as usize + data.len();
    if c.len() < end {
        c.resize(end, 0);
    }
    c[off as usize..end].copy_from_slice(data);
}

/// Runs `act`; on success updates `model` and returns what it stores in
/// place. Errors (ENOENT after an earlier unlink, say) are part of the
/// game: the op must then change nothing.
fn exec(
    st: &mut State,
    act: &Act,
    model: &mut Contents,
    handles: &mut Vec<Ino>,
) -> Result<InPlace, String> {
    let e = |x: pmemfs_fs::error::FsError| x.to_string();
    let size_of = |st: &State, ino: Ino| st.attr(ino).map(|a| a.size).map_err(e);
    match act {
        Act::Create(p) | Act::Mkdir(p) | Act::Symlink(p, _) | Act::Mknod(p) => {
            let (dir, name) = split(p);
            let parent = resolve(st, dir)?;
            let (mode, target) = match act {
                Act::Create(_) => (libc::S_IFREG | 0o644, None),
                Act::Mkdir(_) => (libc::S_IFDIR | 0o755, None),
                Act::Symlink(_, t) => (libc::S_IFLNK | 0o777, Some(t.as_bytes())),
                _ => (libc::S_IFIFO | 0o600, None),
            };
            let new = NewInode {
                mode,
                rdev: 0,
                target,
            };
            let ino = st.make(parent, name.as_bytes(), new, ROOT).map_err(e)?;
            if matches!(act, Act::Create(_)) {
                model.insert(ino, Vec::new());
            }
            Ok(vec![])
        }
        Act::Write(p, off, len, seed) => {
            let ino = resolve(st, p)?;
            let data = pattern(*seed, *len);
            st.write(ino, *off, &data).map_err(e)?;
            model_write(model, ino, *off, &data);
            Ok(vec![(ino, *off, data)])
        }
        Act::Interleaved(pa, oa, la, sa, pb, ob, lb, sb) => {
            let (a, b) = (resolve(st, pa)?, resolve(st, pb)?);
            let (da, db) = (pattern(*sa, *la), pattern(*sb, *lb));
            let who = Writer::default();
            let mut b_done = false;
            match st.stage_write(a, *oa, &da).map_err(e)? {
                Some(mut w) => {
                    st.take_staged(a, &mut w).map_err(e)?;
                    let filled = st.fill_staged(a, *oa, &da, &w);
                    if a != b {
                        b_done = st.write_in_place(b, *ob, &db, who).map_err(e)?.is_some();
                    }
                    st.finish_staged(a, *oa, &da, who, w, filled).map_err(e)?;
                }
                // The first goes the whole way with the state alone: the
                // second can only run before or after it, before here, so
                // that the op's commit comes last as in every op.
                None => {
                    if a != b {
                        b_done = st.write_in_place(b, *ob, &db, who).map_err(e)?.is_some();
                    }
                    st.write(a, *oa, &da).map_err(e)?;
                }
            }
            let mut in_place = Vec::new();
            for (ino, off, data, done) in [(a, *oa, da, true), (b, *ob, db, b_done)] {
                if done {
                    model_write(model, ino, off, &data);
                    in_place.push((ino, off, data));
                }
            }
            Ok(in_place)
        }
        Act::Append(p, len, seed) => {
            let ino = resolve(st, p)?;
            let off = size_of(st, ino)?;
            exec(st, &Act::Write(p.clone(), off, *len, *seed), model, handles)
        }
        Act::Fsync(p) => {
            // Every op is durable when it returns: fsync has nothing to do.
            resolve(st, p)?;
            Ok(vec![])
        }
        Act::Rename(from, to) | Act::Exchange(from, to) => {
            let (fd, fname) = split(from);
            let (td, tname) = split(to);
            let (fd, td) = (resolve(st, fd)?, resolve(st, td)?);
            let flags = match act {
                Act::Exchange(..) => libc::RENAME_EXCHANGE,
                _ => 0,
            };
            st.rename(fd, fname.as_bytes(), td, tname.as_bytes(), flags)
                .map_err(e)?;
            Ok(vec![])
        }
        Act::Removexattr(p, name) => {
            let ino = resolve(st, p)?;
            st.removexattr(ino, name.as_bytes()).map_err(e)?;
            Ok(vec![])
        }
        Act::Fallocate(p, off, len, mode) => {
            let ino = resolve(st, p)?;
            let size = size_of(st, ino)?;
            st.fallocate(ino, *off, *len, *mode).map_err(e)?;
            let end = off + len;
            let c = model.entry(ino).or_default();
            if *mode & libc::FALLOC_FL_KEEP_SIZE == 0 && c.len() < end as usize {
                c.resize(end as usize, 0);
            }
            if *mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
                let to = end.min(c.len() as u64);
                if *off < to {
                    c[*off as usize..to as usize].fill(0);
                }
                // Partial edges are zeroed in place.
                let to = end.min(size);
                if *off < to {
                    return Ok(vec![(ino, *off, vec![0; (to - off) as usize])]);
                }
            }
            Ok(vec![])
        }
        Act::Open(p) => {
            let ino = resolve(st, p)?;
            st.opened(ino, false).map_err(e)?;
            handles.push(ino);
            Ok(vec![])
        }
        Act::Close => {
            let Some(ino) = handles.pop() else {
                return Err("nothing open".into());
            };
            st.closed(ino, false).map_err(e)?;
            Ok(vec![])
        }
        Act::Link(from, to) => {
            let ino = resolve(st, from)?;
            let (td, tname) = split(to);
            let td = resolve(st, td)?;
            st.link(ino, td, tname.as_bytes()).map_err(e)?;
            Ok(vec![])
        }
        Act::Unlink(p) | Act::Rmdir(p) => {
            let (dir, name) = split(p);
            let dir = resolve(st, dir)?;
            st.unlink(dir, name.as_bytes(), matches!(act, Act::Rmdir(_)))
                .map_err(e)?;
            Ok(vec![])
        }
        Act::Truncate(p, size) => {
            let ino = resolve(st, p)?;
            let old = size_of(st, ino)?;
            st.set_size(ino, *size, |_| {}).map_err(e)?;
            model.entry(ino).or_default().resize(*size as usize, 0);
            // Shrinking zeroes the new last page's tail in place.
            Ok(if *size < old {
                vec![(ino, *size, vec![0; (old - size) as usize])]
            } else {
                vec![]
            })
        }
        Act::Punch(p, off, len) => {
            let ino = resolve(st, p)?;
            let size = size_of(st, ino)?;
            let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
            st.fallocate(ino, *off, *len, mode).map_err(e)?;
            let end = (off + len).min(size);
            if *off < end {
                let c = model.entry(ino).or_default();
                c[*off as usize..end as usize].fill(0);
                return Ok(vec![(ino, *off, vec![0; (end - off) as usize])]);
            }
            Ok(vec![])
        }
        Act::Setxattr(p, name, len, seed) => {
            let ino = resolve(st, p)?;
            st.setxattr(ino, name.as_bytes(), &pattern(*seed, *len), 0)
                .map_err(e)?;
            Ok(vec![])
        }
        Act::Dedupe(src, so, dst, dof, len) => {
            let (si, di) = (resolve(st, src)?, resolve(st, dst)?);
            let out = st
                .dedupe(si, *so, *len, &[(di, *dof)], |_| true)
                .map_err(e)?;
            match out.as_slice() {
                [pmemfs_fs::dedupe::Outcome::Failed(code)] => Err(format!("dedupe: errno {code}")),
                [_] => Ok(vec![]),
                other => Err(format!("dedupe: {other:?}")),
            }
        }
        Act::Clone(src, so, dst, dof, len) => {
            let (si, di) = (resolve(st, src)?, resolve(st, dst)?);
            let n = st.copy_range(si, *so, di, *dof, *len).map_err(e)?;
            if n == 0 {
                return Ok(vec![]);
            }
            let bytes = model.entry(si).or_default()[*so as usize..(*so + n) as usize].to_vec();
            model_write(model, di, *dof, &bytes);
            Ok(vec![(di, *dof, bytes)])
        }
    }
}

/// The operation templates the ACE-style sequences are built from, over
/// the tree `setup` makes.
fn templates() -> Vec<Act> {
    use Act::*;
    vec![
        Create(s("/b/new")),
        Write(s("/a/f"), PAGE, PAGE, 11),  // aligned, in place
        Write(s("/a/f"), 1000, 6000, 12),  // unaligned, in place
        Append(s("/a/g"), 3000, 13),       // across a page boundary
        Write(s("/e"), 2 * PAGE, 100, 14), // into a hole past the end
        Write(s("/k"), 100, 5000, 15),     // copy on write into a clone
        Write(s("/a/f"), 2 * PAGE, 3 * PAGE, 16), // in place and new pages
        Fsync(s("/a/f")),
        Rename(s("/a/g"), s("/h")), // over an existing file
        Rename(s("/a/f"), s("/b/f2")),
        Rename(s("/b/sub"), s("/a/sub2")), // a directory
        Link(s("/a/f"), s("/b/lnk")),
        Unlink(s("/a/g")),
        Unlink(s("/k")), // drops a share
        Truncate(s("/a/f"), 5000),
        Truncate(s("/a/g"), 20000),
        Punch(s("/a/f"), 2000, 6000),
        Mkdir(s("/b/nd")),
        Rmdir(s("/b/sub")),
        Setxattr(s("/a/f"), s("user.y"), 100, 17),
        Setxattr(s("/h"), s("user.x"), 50, 18),
        Clone(s("/h"), 0, s("/e"), 0, 2 * PAGE),
        Clone(s("/a/f"), PAGE, s("/a/g"), PAGE, PAGE),
        Dedupe(s("/h"), 0, s("/q"), 0, 2 * PAGE), // equal: /q's pages go
        Dedupe(s("/a/f"), 0, s("/a/g"), 0, PAGE), // differs: nothing moves
        Write(s("/q"), 10, 100, 20),              // the destination, in place or by copy on write
        Write(s("/h"), 4000, 200, 21),            // the source, across a page edge
        Symlink(s("/b/sl"), s("../a/f")),
        Exchange(s("/a/f"), s("/h")),
        Rename(s("/b/sub"), s("/d")), // a directory over an empty one
        Removexattr(s("/h"), s("user.x")),
        Fallocate(s("/a/g"), 4000, 3 * PAGE, 0), // grows the file
        Fallocate(s("/a/f"), 3000, 2 * PAGE, libc::FALLOC_FL_ZERO_RANGE),
        Fallocate(s("/e"), 0, 2 * PAGE, libc::FALLOC_FL_KEEP_SIZE),
        Mknod(s("/b/fifo")),
        Write(s("/e"), 0, 40 * PAGE, 19), // many pages
        // Copy on write into the clone beside an in-place write of /a/f;
        // a write into a hole beside one of /h.
        Interleaved(s("/k"), 100, 5000, 22, s("/a/f"), 1000, 3000, 23),
        Interleaved(s("/e"), 2 * PAGE, 100, 24, s("/h"), 10, 5000, 25),
        Open(s("/a/g")), // then an unlink leaves an orphan
        Close,
        // The big directory: entries added, removed and renamed in a tree
        // of several nodes.
        Create(s("/m/new")),
        Unlink(big_name(7)),
        Rename(big_name(11), s("/m/renamed")),
        Rename(s("/a/f"), big_name(12)), // over an entry, from another directory
    ]
}

/// A random op over the live tree.
fn random_act(st: &State, rng: &mut Rng) -> Act {
    let mut files = Vec::new();
    let mut dirs = vec![s("/")];
    let mut all = Vec::new();
    let mut stack = vec![(s(""), ROOT_INO)];
    while let Some((path, ino)) = stack.pop() {
        for (child, kind, name) in st.list(ino).unwrap_or_default().into_iter().skip(2) {
            let p = format!("{path}/{}", String::from_utf8_lossy(&name));
            // The big directory is the templates': random ops stay with
            // the small tree, whose files have data.
            if p == "/lost+found" || p == "/m" {
                continue;
            }
            match kind {
                Kind::File => files.push(p.clone()),
                Kind::Dir => {
                    dirs.push(p.clone());
                    stack.push((p.clone(), child));
                }
                _ => {}
            }
            all.push(p);
        }
    }
    let pick = |v: &Vec<String>, rng: &mut Rng| v[rng.below(v.len() as u64) as usize].clone();
    let new_name = |rng: &mut Rng, dirs: &Vec<String>| {
        let d = pick(dirs, rng);
        let n = ["n0", "n1", "n2", "n3", "n4", "f", "g"][rng.below(7) as usize];
        if d == "/" {
            format!("/{n}")
        } else {
            format!("{d}/{n}")
        }
    };
    let off = |rng: &mut Rng| {
        if rng.chance(40) {
            rng.below(6) * PAGE
        } else {
            rng.below(6 * PAGE)
        }
    };
    let len = |rng: &mut Rng| {
        if rng.chance(40) {
            (1 + rng.below(3)) * PAGE
        } else {
            1 + rng.below(3 * PAGE)
        }
    };
    let seed = rng.next() % 100_000;
    if files.is_empty() {
        return Act::Create(new_name(rng, &dirs));
    }
    match rng.below(100) {
        0..=16 => Act::Write(pick(&files, rng), off(rng), len(rng), seed),
        17..=19 => Act::Interleaved(
            pick(&files, rng),
            off(rng),
            len(rng),
            seed,
            pick(&files, rng),
            off(rng),
            len(rng),
            seed + 1,
        ),
        20..=27 => Act::Append(pick(&files, rng), len(rng), seed),
        28..=34 => Act::Truncate(pick(&files, rng), off(rng)),
        35..=40 => Act::Punch(pick(&files, rng), off(rng), len(rng)),
        41..=48 => {
            let (so, n) = (rng.below(4) * PAGE, (1 + rng.below(3)) * PAGE);
            let dof = if rng.chance(80) {
                rng.below(4) * PAGE
            } else {
                rng.below(4 * PAGE)
            };
            let (src, dst) = (pick(&files, rng), pick(&files, rng));
            // Random ranges seldom match: dedupe mostly finds them
            // different, and shares what clones made equal.
            if rng.chance(25) {
                Act::Dedupe(src, so, dst, dof - dof % PAGE, n)
            } else {
                Act::Clone(src, so, dst, dof, n)
            }
        }
        49..=54 => Act::Create(new_name(rng, &dirs)),
        55..=56 => Act::Open(pick(&files, rng)),
        57..=60 => Act::Mkdir(new_name(rng, &dirs)),
        61..=70 => Act::Rename(pick(&all, rng), new_name(rng, &dirs)),
        71..=75 => Act::Link(pick(&files, rng), new_name(rng, &dirs)),
        76..=84 => Act::Unlink(pick(&files, rng)),
        85..=87 => Act::Rmdir(pick(&dirs, rng)),
        88..=94 => {
            let name = ["user.a", "user.b", "trusted.c"][rng.below(3) as usize];
            Act::Setxattr(pick(&files, rng), s(name), rng.below(300), seed)
        }
        95 => Act::Fsync(pick(&files, rng)),
        96 => Act::Symlink(new_name(rng, &dirs), s("target")),
        97 => match rng.below(4) {
            0 => Act::Exchange(pick(&all, rng), pick(&all, rng)),
            1 => Act::Removexattr(pick(&files, rng), s("user.a")),
            2 => Act::Mknod(new_name(rng, &dirs)),
            _ => Act::Fsync(pick(&files, rng)),
        },
        98 => {
            let mode = [
                0,
                libc::FALLOC_FL_KEEP_SIZE,
                libc::FALLOC_FL_ZERO_RANGE,
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
            ][rng.below(4) as usize];
            Act::Fallocate(pick(&files, rng), off(rng), len(rng), mode)
        }
        _ => Act::Close,
    }
}

// ---------------------------------------------------------------------------
// The tree every sequence starts from

/// The image every sequence starts from, closed cleanly:
///
/// ```text
/// /a/f    3 pages + 1000 bytes          /b/sub/  empty directory
/// /a/g    5000 bytes                    /h       2 pages, xattr user.x
/// /e      empty                         /k       a clone of /h (shared)
/// /s      symlink to a/f                /d/      empty directory
/// /q      /h's bytes, on pages of its own
/// ```
/// Entries of the base image's big directory, `/m`: three leaves, of
/// few inodes (so that checkpoints, which hold every inode, stay small).
const BIG_DIR: u64 = 40;

/// About how many of `/m`'s entries one tree node holds (206 bytes each).
const ONE_NODE: usize = 19;

/// The path of `/m`'s entry `i`: a name of 192 bytes.
fn big_name(i: u64) -> String {
    format!(
        "/m/{}-{i:03}",
        "an-entry-with-a-name-long-enough-to-fill-nodes-".repeat(4)
    )
}

fn base_image() -> &'static (Arc<Vec<u8>>, Contents) {
    static BASE: OnceLock<(Arc<Vec<u8>>, Contents)> = OnceLock::new();
    BASE.get_or_init(|| {
        let pmem = Pmem::memory(MIN_IMAGE_BYTES);
        let opts = FormatOptions::fixed("crash");
        format_pmem(&pmem, &opts).expect("format");
        let image = Image::open_pmem(pmem).expect("open");
        let mut st = State::new(image, false);
        let mut model = Contents::new();
        use Act::*;
        for act in [
            Mkdir(s("/a")),
            Mkdir(s("/b")),
            Mkdir(s("/b/sub")),
            Mkdir(s("/d")),
            Create(s("/a/f")),
            Write(s("/a/f"), 0, 3 * PAGE + 1000, 1),
            Create(s("/a/g")),
            Write(s("/a/g"), 0, 5000, 2),
            Create(s("/h")),
            Write(s("/h"), 0, 2 * PAGE, 3),
            Setxattr(s("/h"), s("user.x"), 3, 4),
            Create(s("/k")),
            Clone(s("/h"), 0, s("/k"), 0, 2 * PAGE),
            Create(s("/e")),
            Symlink(s("/s"), s("a/f")),
            Create(s("/q")),
            Write(s("/q"), 0, 2 * PAGE, 3),
            Mkdir(s("/m")),
        ] {
            exec(&mut st, &act, &mut model, &mut vec![]).expect("setup");
        }
        // A directory of several tree nodes, which the templates change.
        for i in 0..BIG_DIR {
            exec(&mut st, &Create(big_name(i)), &mut model, &mut vec![]).expect("setup");
        }
        st.image.mark_clean().expect("close");
        let bytes = st.image.pmem().bytes(0, MIN_IMAGE_BYTES).expect("bytes");
        (Arc::new(bytes.to_vec()), model)
    })
}

/// What happens between opening the image on the recording and the first
/// crash point checked.
#[derive(Clone, Copy, Debug)]
enum Prep {
    /// Nothing: the journal starts empty.
    Fresh,
    /// A few committed transactions first, so that recovery replays more
    /// than the sequence's own.
    Warm,
    /// The journal filled to about this many free bytes, so that a commit
    /// of the sequence finds it full and checkpoints instead.
    Full(u64),
    /// The journal starts this many bytes before its end, so that a commit
    /// of the sequence finds it full: like `Full`, without a megabyte of
    /// entries to replay at every check. The image is taken up as it is
    /// (`Image::from_parts`, no recovery), from a base whose superblocks
    /// say the journal starts there.
    Tail(u64),
    /// Crash points from fence 0: the open (recovery) itself; no ops.
    Mount,
}

fn prep(st: &mut State, p: Prep) {
    let lf = 2;
    match p {
        Prep::Fresh | Prep::Mount | Prep::Tail(_) => {}
        Prep::Warm => {
            for i in 0..5u64 {
                st.setxattr(lf, b"user.warm", &pattern(i, 10 + i * 40), 0)
                    .expect("warm");
            }
        }
        Prep::Full(target) => {
            let jb = st.image.geometry().journal_bytes();
            loop {
                let rem = jb - st.image.journal_pos().off;
                if rem <= target + 256 {
                    break;
                }
                // Big values first, then small ones, so that the value left
                // (and the checkpoint) is small.
                let room = rem - target - 256;
                let v = if room > 70_000 {
                    room.min(60_000)
                } else {
                    room.min(1000)
                };
                st.setxattr(lf, b"user.fill", &pattern(v, v.max(1)), 0)
                    .expect("fill");
            }
        }
    }
}

// ---------------------------------------------------------------------------
// Recording a sequence

/// The state after some ops: what a legal crash image may recover to.
struct Snap {
    meta: Meta,
    /// Every directory's entries, read from its tree.
    entries: Entries,
    contents: Contents,
}

/// Directories' entries by directory.
type Entries = BTreeMap<Ino, BTreeMap<Vec<u8>, Ino>>;

/// Every directory's entries in `image`.
fn entries_of(image: &Image) -> Result<Entries, String> {
    let mut out = Entries::new();
    for (&ino, i) in &image.meta().inodes {
        if i.dir().is_some() {
            let e = image
                .entries(ino)
                .map_err(|e| format!("directory {ino}: {e}"))?;
            out.insert(ino, e.into_iter().collect());
        }
    }
    Ok(out)
}

/// The state after some ops, as recovery leaves it: files unlinked while
/// open (orphans) are freed.
fn snap(st: &State) -> Snap {
    let mut meta = st.image.meta().clone();
    let unlinked = pmemfs_ondisk::image::unlinked_inodes(&meta, &st.image.view())
        .expect("the directories read");
    for ino in unlinked {
        meta.apply(&Op::Delete { ino })
            .expect("an orphan can be deleted");
    }
    // Where the share tree's root lies is the allocator's business; what
    // it holds must match the page maps, which every open checks.
    meta.share_root = 0;
    let contents = file_contents(st).unwrap_or_default();
    let entries = entries_of(&st.image).expect("the directories read");
    Snap {
        meta,
        entries,
        contents,
    }
}

/// Every file's bytes, read as FUSE reads them.
fn file_contents(st: &State) -> Result<Contents, String> {
    let mut out = Contents::new();
    for (&ino, inode) in &st.image.meta().inodes {
        if inode.attr.kind == Kind::File {
            let size = inode.attr.size;
            let data = st
                .read(ino, 0, size as u32)
                .map_err(|e| format!("read inode {ino}: {e}"))?;
            out.insert(ino, data.as_slice().to_vec());
        }
    }
    Ok(out)
}

struct Recorded {
    trace: Trace,
    /// First crash point to check.
    start: u64,
    /// `snaps[0]` before the first op, `snaps[j + 1]` after op `j`.
    snaps: Vec<Snap>,
    /// Fences when op `j` started and returned.
    spans: Vec<(u64, u64)>,
    inplace: Vec<InPlace>,
    acts: Vec<Act>,
    /// Where the live file system disagreed with the content model.
    model_errors: Vec<String>,
    /// Whether an op wrote a checkpoint (the journal was full).
    checkpointed: bool,
}

/// How a sequence's ops are chosen.
#[derive(Clone, Debug)]
enum Ops {
    Fixed(Vec<Act>),
    /// `n` random ops from this seed.
    Random(u64, usize),
}

/// The base image with its journal starting `tail` bytes before the end
/// (the same for both superblock copies), cached per `tail`.
fn tail_image(tail: u64) -> Arc<Vec<u8>> {
    static TAILS: Mutex<BTreeMap<u64, Arc<Vec<u8>>>> = Mutex::new(BTreeMap::new());
    let mut cache = TAILS.lock().unwrap_or_else(|p| p.into_inner());
    let made = cache.entry(tail).or_insert_with(|| {
        let (base, _) = base_image();
        let pmem = Pmem::memory(base.len() as u64);
        pmem.write(0, base).expect("copy");
        let copies = superblock::read_copies(&pmem);
        let mut sb = superblock::choose(&copies).expect("superblock").clone();
        sb.journal.off = (sb.geometry.journal_bytes() - tail) / 64 * 64;
        superblock::write_copies(&pmem, &sb).expect("superblocks");
        Arc::new(pmem.bytes(0, base.len() as u64).expect("bytes").to_vec())
    });
    Arc::clone(made)
}

/// Takes up the image on `pmem` as it is, without recovery, appending to
/// the journal where its superblock says replay starts.
fn take_up(pmem: Pmem) -> Image {
    let copies = superblock::read_copies(&pmem);
    let sb = superblock::choose(&copies).expect("superblock").clone();
    let ck = checkpoint::read(&pmem, &sb.geometry, &sb.checkpoint).expect("checkpoint");
    let journal = sb.journal;
    let mut over = pmemfs_ondisk::overlay::Overlay::default();
    over.apply(&pmem, &ck.patches).expect("patches");
    let rebuild = pmemfs_ondisk::image::Rebuild::default();
    Image::from_parts(None, pmem, sb, ck.meta, ck.pfns, journal, over, rebuild).expect("image")
}

fn record(p: Prep, ops: &Ops) -> Recorded {
    let (base, base_model) = base_image();
    let image = match p {
        Prep::Tail(tail) => {
            let (pmem, rec) = Recording::with_shared_image(tail_image(tail));
            (take_up(pmem), rec)
        }
        _ => {
            let (pmem, rec) = Recording::with_shared_image(Arc::clone(base));
            (Image::open_pmem(pmem).expect("open the base image"), rec)
        }
    };
    let (image, rec) = image;
    let mut st = State::new(image, false);
    prep(&mut st, p);
    let start = if matches!(p, Prep::Mount) {
        0
    } else {
        rec.fences()
    };
    let mut model = base_model.clone();
    let mut handles = Vec::new();
    let generation = st.image.superblock().generation;
    let mut snaps = vec![snap(&st)];
    let (mut spans, mut inplace, mut acts, mut model_errors) = (vec![], vec![], vec![], vec![]);
    let mut rng = match ops {
        Ops::Random(seed, _) => Rng(*seed),
        Ops::Fixed(_) => Rng(0),
    };
    let n = match ops {
        Ops::Fixed(v) => v.len(),
        Ops::Random(_, n) => *n,
    };
    for j in 0..n {
        let act = match ops {
            Ops::Fixed(v) => v[j].clone(),
            Ops::Random(..) => random_act(&st, &mut rng),
        };
        let b = rec.fences();
        let r = exec(&mut st, &act, &mut model, &mut handles);
        let e = rec.fences();
        spans.push((b, e));
        inplace.push(r.unwrap_or_default());
        let sn = snap(&st);
        for (ino, c) in &sn.contents {
            if model.get(ino) != Some(c) {
                model_errors.push(format!(
                    "after op {j} ({act:?}) inode {ino} holds {} bytes that differ from the model's {}",
                    c.len(),
                    model.get(ino).map_or(0, |m| m.len())
                ));
            }
        }
        snaps.push(sn);
        acts.push(act);
    }
    let trace = rec.trace();
    let checkpointed = st.image.superblock().generation != generation;
    drop(st);
    Recorded {
        trace,
        start,
        snaps,
        spans,
        inplace,
        acts,
        model_errors,
        checkpointed,
    }
}

// ---------------------------------------------------------------------------
// Checking one crash image

/// What a crash image may recover to.
struct Legal<'a> {
    before: &'a Snap,
    /// The op in flight: the state after it, and what it stores in place.
    after: Option<(&'a Snap, &'a InPlace)>,
}

/// Crashes allowed to leave these for recovery or fsck to tidy.
fn crash_leftover(c: Code) -> bool {
    matches!(
        c,
        Code::JournalTorn | Code::SbCopyBad | Code::SbCopiesDiffer
    )
}

fn findings(f: &[fsck::problem::Finding]) -> String {
    f.iter()
        .map(|f| format!("[{}] {}", f.code.problem().id, f.detail))
        .collect::<Vec<_>>()
        .join("; ")
}

/// Says how `got` differs from `want`, briefly.
fn meta_diff(got: &Meta, want: &Meta) -> String {
    let mut d = Vec::new();
    if got.next_ino != want.next_ino {
        d.push(format!("next_ino {} vs {}", got.next_ino, want.next_ino));
    }
    for (ino, i) in &got.inodes {
        match want.inodes.get(ino) {
            None => d.push(format!("inode {ino} extra")),
            Some(w) if w != i => {
                let what = if w.attr != i.attr {
                    "attributes"
                } else if w.xattrs != i.xattrs {
                    "xattrs"
                } else {
                    "body"
                };
                d.push(format!("inode {ino} {what}"));
            }
            _ => {}
        }
    }
    for ino in want.inodes.keys() {
        if !got.inodes.contains_key(ino) {
            d.push(format!("inode {ino} missing"));
        }
    }
    d.join(", ")
}

/// Checks a crash image. `thorough` also runs fsck after recovery and
/// writes a file (these cost as much as the rest, and are sampled); `turn`
/// varies how files are grown.
fn check_image(pmem: Pmem, legal: &Legal, thorough: bool, turn: u64) -> Result<(), String> {
    let f = fsck::check_pmem(&pmem);
    if f.iter().any(|f| !crash_leftover(f.code)) {
        return Err(format!("fsck on the crash image: {}", findings(&f)));
    }
    let image = Image::open_pmem(pmem).map_err(|e| format!("recovery failed: {e}"))?;
    if thorough {
        let f = fsck::check_pmem(image.pmem());
        if !f.is_empty() {
            return Err(format!("fsck after recovery: {}", findings(&f)));
        }
    }
    let mut rootless = image.meta().clone();
    rootless.share_root = 0;
    let meta = &rootless;
    // A legal state's metadata, and its directories' entries: the
    // metadata holds only the roots of the directories' trees.
    let entries = entries_of(&image)?;
    let is = |snap: &Snap| *meta == snap.meta && entries == snap.entries;
    let (which, want, inplace) = if is(legal.before) {
        ("before", legal.before, legal.after.map(|(_, p)| p))
    } else {
        match legal.after {
            Some((after, _)) if is(after) => ("after", after, None),
            _ => {
                let against = |snap: &Snap| {
                    let dirs: Vec<&Ino> = entries
                        .iter()
                        .filter(|(d, e)| snap.entries.get(d) != Some(e))
                        .map(|(d, _)| d)
                        .collect();
                    format!(
                        "{}; entries of directories {dirs:?}",
                        meta_diff(meta, &snap.meta)
                    )
                };
                let mut why = format!(
                    "the recovered metadata is no legal state; against before: {}",
                    against(legal.before)
                );
                if let Some((after, _)) = legal.after {
                    why += &format!("; against after: {}", against(after));
                }
                return Err(why);
            }
        }
    };
    let g = image.geometry();
    let (runs, tree) = image
        .shared_runs()
        .map_err(|e| format!("the share tree: {e}"))?;
    let counted = image
        .counted_shares()
        .map_err(|e| format!("the page maps: {e}"))?;
    let inode_tree_pages = image
        .inode_tree_pages()
        .map_err(|e| format!("the page maps: {e}"))?;
    let accounted = image.free_pages()
        + image.checkpoint_pfns().len() as u64
        + counted.pages()
        + tree.pages
        + inode_tree_pages
        + image.deferred_pages();
    if accounted != g.data_pages() {
        return Err(format!(
            "free space does not add up: {} free + {} checkpoint + {} in use + {} share-tree pages + {inode_tree_pages} pages of inodes' trees != {} data pages",
            image.free_pages(),
            image.checkpoint_pfns().len(),
            counted.pages(),
            tree.pages,
            g.data_pages()
        ));
    }
    if !pmemfs_ondisk::image::same_shares(&runs, &counted) {
        return Err("share counts differ from the references".into());
    }
    let mut st = State::new(image, false);
    let got = file_contents(&st)?;
    for (ino, have) in &got {
        let old = want.contents.get(ino).map_or(&[][..], |v| v.as_slice());
        if have.as_slice() == old {
            continue;
        }
        if have.len() != old.len() {
            return Err(format!(
                "inode {ino} ({which}) reads {} bytes, not {}",
                have.len(),
                old.len()
            ));
        }
        for (i, (&h, &o)) in have.iter().zip(old).enumerate() {
            if h == o {
                continue;
            }
            let i = i as u64;
            let new_ok = inplace.into_iter().flatten().any(|(pino, at, bytes)| {
                pino == ino
                    && i >= *at
                    && i < at + bytes.len() as u64
                    && bytes[(i - at) as usize] == h
            });
            if !new_ok {
                return Err(format!(
                    "inode {ino} ({which}) byte {i} is {h:#04x}, legal is {o:#04x}{}",
                    if inplace.is_some() {
                        " or the in-flight op's in-place bytes"
                    } else {
                        ""
                    }
                ));
            }
        }
    }
    if thorough {
        let ino = st
            .make(
                ROOT_INO,
                b"after-crash",
                NewInode {
                    mode: libc::S_IFREG | 0o600,
                    rdev: 0,
                    target: None,
                },
                ROOT,
            )
            .map_err(|e| format!("create after recovery: {e}"))?;
        let data = pattern(999, 3 * PAGE + 10);
        st.write(ino, 0, &data)
            .map_err(|e| format!("write after recovery: {e}"))?;
        let back = file_contents(&st)?;
        if back.get(&ino) != Some(&data) {
            return Err("a file written after recovery reads back wrong".into());
        }
        for (i, c) in &got {
            if back.get(i) != Some(c) {
                return Err(format!(
                    "writing a new file after recovery changed inode {i}: a page in use was free"
                ));
            }
        }
    }
    growth_exposes_zeros(&mut st, turn)
}

/// Files whose mapped pages hold nonzero bytes past their size, with the
/// end of their last such page: (inode, size, end).
fn stale_past_eof(st: &State) -> Result<Vec<(Ino, u64, u64)>, String> {
    let pmem = st.image.pmem();
    let mut out = Vec::new();
    for (&ino, inode) in &st.image.meta().inodes {
        let Some(map) = st.image.file_map(ino) else {
            continue;
        };
        let size = inode.attr.size;
        let mut end = None;
        for r in map.all().map_err(|e| e.to_string())? {
            for i in 0..r.len {
                let idx = r.start + i;
                if (idx + 1) * PAGE <= size {
                    continue;
                }
                let from = size.saturating_sub(idx * PAGE);
                let page = pmem
                    .bytes((r.value + i) * PAGE, PAGE)
                    .map_err(|e| e.to_string())?;
                if page[from as usize..].iter().any(|&b| b != 0) {
                    end = Some((idx + 1) * PAGE);
                }
            }
        }
        if let Some(end) = end {
            out.push((ino, size, end));
        }
    }
    Ok(out)
}

/// Growing a file must expose zeros, whatever its pages hold past its end
/// (a write cut short by a crash leaves its bytes there). Grows every file
/// that holds such bytes over all of them, each by one of four ways in
/// turn (truncate, a write past a gap, fallocate, a copy past a gap), and
/// reads the part grown.
fn growth_exposes_zeros(st: &mut State, turn: u64) -> Result<(), String> {
    let e = |what: &str, x: pmemfs_fs::error::FsError| format!("{what} after recovery: {x}");
    for (i, (ino, size, end)) in stale_past_eof(st)?.into_iter().enumerate() {
        let way = (turn + i as u64) % 4;
        match way {
            0 => st
                .set_size(ino, end, |_| {})
                .map_err(|x| e("truncate", x))?,
            1 => {
                st.write(ino, end, b"!").map_err(|x| e("write", x))?;
            }
            2 => st
                .fallocate(ino, size, end - size, 0)
                .map_err(|x| e("fallocate", x))?,
            _ if size > 0 => {
                st.copy_range(ino, 0, ino, end, 1)
                    .map_err(|x| e("copy_file_range", x))?;
            }
            _ => st
                .set_size(ino, end, |_| {})
                .map_err(|x| e("truncate", x))?,
        }
        let grown = st
            .read(ino, size, (end - size) as u32)
            .map_err(|x| e("read", x))?;
        if let Some(at) = grown.as_slice().iter().position(|&b| b != 0) {
            let how = ["truncate", "write", "fallocate", "copy_file_range"][way as usize];
            return Err(format!(
                "inode {ino} grown from {size} to {end} by {how} shows nonzero bytes at {}: \
                 what its pages held past its end",
                size + at as u64
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------
// Choosing subsets of the lines in flight

#[derive(Clone, Copy)]
struct Budget {
    /// Try every single line / every pair / every all-but-one up to these
    /// counts of lines, and a sample beyond.
    singles: usize,
    pairs: usize,
    random: usize,
}

const BOUNDED: Budget = Budget {
    singles: 48,
    pairs: 16,
    random: 8,
};

const LIGHT: Budget = Budget {
    singles: 8,
    pairs: 6,
    random: 4,
};

fn subsets(lines: &[u64], g: &Geometry, rng: &mut Rng, b: Budget) -> Vec<Vec<u64>> {
    let n = lines.len();
    let mut out: Vec<Vec<u64>> = vec![vec![]];
    if n == 0 {
        return out;
    }
    out.push(lines.to_vec());
    let pick = |rng: &mut Rng| lines[rng.below(n as u64) as usize];
    // Single lines, and all but one.
    if n <= b.singles {
        for i in 0..n {
            out.push(vec![lines[i]]);
            let mut v = lines.to_vec();
            v.remove(i);
            out.push(v);
        }
    } else {
        for _ in 0..b.singles / 2 {
            let l = pick(rng);
            out.push(vec![l]);
            out.push(lines.iter().copied().filter(|&x| x != l).collect());
        }
    }
    // Pairs.
    if n <= b.pairs {
        for i in 0..n {
            for j in i + 1..n {
                out.push(vec![lines[i], lines[j]]);
            }
        }
    } else {
        for _ in 0..b.pairs * 2 {
            let (x, y) = (pick(rng), pick(rng));
            if x != y {
                out.push(vec![x.min(y), x.max(y)]);
            }
        }
    }
    // By region: superblocks, journal, data; each alone, and all but it.
    let region = |off: u64| {
        if off < 2 * PAGE {
            0
        } else if off < g.data_start * PAGE {
            1
        } else {
            2
        }
    };
    for r in 0..3 {
        let only: Vec<u64> = lines.iter().copied().filter(|&l| region(l) == r).collect();
        if !only.is_empty() && only.len() < n {
            let rest: Vec<u64> = lines.iter().copied().filter(|&l| region(l) != r).collect();
            out.push(only);
            out.push(rest);
        }
    }
    // Random subsets.
    for _ in 0..b.random {
        let p = 1 + rng.below(99);
        out.push(
            lines
                .iter()
                .copied()
                .filter(|_| rng.below(100) < p)
                .collect(),
        );
    }
    let mut seen = HashSet::new();
    out.retain(|v| seen.insert(v.clone()));
    out
}

// ---------------------------------------------------------------------------
// Running sequences and counting

#[derive(Default)]
struct Tally {
    states: AtomicU64,
    violations: AtomicU64,
    sequences: AtomicU64,
    /// Violations by kind (the reason with its numbers blanked): how many,
    /// and the first one in full.
    kinds: Mutex<BTreeMap<String, (u64, String)>>,
    /// Sequences during which an op checkpointed (the journal was full).
    checkpointed: AtomicU64,
    /// Sequences in which an op made, moved or freed the root of a file's
    /// page-map tree on the media.
    with_trees: AtomicU64,
    /// Sequences in which an op changed the entries of a directory whose
    /// tree has several nodes.
    with_big_dirs: AtomicU64,
    /// Per preparation: sequences, crash states, seconds.
    per_prep: Mutex<BTreeMap<String, (u64, u64, f64)>>,
}

impl Tally {
    /// Records a violation: `what` says where, `why` what is wrong.
    fn violation(&self, what: String, why: &str) {
        self.violations.fetch_add(1, Ordering::Relaxed);
        let kind: String = why
            .chars()
            .map(|c| if c.is_ascii_digit() { '#' } else { c })
            .collect();
        let mut m = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        let e = m
            .entry(kind)
            .or_insert_with(|| (0, format!("{what}: {why}")));
        e.0 += 1;
    }
}

#[derive(Clone, Debug)]
struct Job {
    prep: Prep,
    ops: Ops,
    budget: Budget,
    /// Also crash the recovery of some crash images, and check each.
    nested: bool,
    /// Run fsck after recovery and write a file, for every this many
    /// states (1: all).
    thorough_every: u64,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}/{}", self.singles, self.pairs, self.random)
    }
}

/// Runs one job; `bufs` carries replay buffers from job to job.
fn run_job(job: &Job, seed: u64, tally: &Tally, bufs: &mut Option<ReplayBuffers>) {
    let began = Instant::now();
    let rec = record(job.prep, &job.ops);
    let label = || format!("{:?} {:?}", job.prep, rec.acts);
    for m in &rec.model_errors {
        tally.violation(label(), m);
    }
    let t = &rec.trace;
    let g = Geometry::for_size(t.len()).expect("geometry");
    let mut rng = Rng(seed);
    let mut rp = match bufs.take() {
        Some(b) => t.replayer_in(b, rec.start),
        None => t.replayer(rec.start),
    }
    .expect("replayer");
    let mut n = 0u64;
    for k in rec.start..=t.fences() {
        rp.seek(k).expect("seek");
        let done = rec.spans.iter().filter(|(_, e)| *e <= k).count();
        let legal = Legal {
            before: &rec.snaps[done],
            after: rec
                .acts
                .get(done)
                .map(|_| (&rec.snaps[done + 1], &rec.inplace[done])),
        };
        let lines = rp.effective_lines();
        let sets = subsets(&lines, &g, &mut rng, job.budget);
        for (si, set) in sets.iter().enumerate() {
            n += 1;
            let thorough = n % job.thorough_every.max(1) == 0;
            let r = rp
                .with_image(set, |pmem| check_image(pmem, &legal, thorough, n))
                .expect("crash image");
            if let Err(why) = r {
                let at = format!(
                    "{}: crash point {k} (op {done} in flight), {} of {} lines in flight",
                    label(),
                    set.len(),
                    lines.len()
                );
                tally.violation(at, &why);
            }
            // Crash the recovery of this image too, at every fence of it.
            if job.nested && (si == 1 || si + 1 == sets.len()) {
                let img = t.crash_image(k, set).expect("crash image");
                n += check_recovery_crashes(img, &legal, &g, &mut rng, tally, &label);
            }
        }
    }
    *bufs = Some(rp.into_buffers());
    // Roots of the page-map trees: an op that changes one changed a tree.
    let roots = |s: &Snap| -> Vec<(Ino, u64)> {
        s.meta
            .inodes
            .iter()
            .filter_map(|(&ino, i)| Some((ino, i.pages()?.parts().root)))
            .filter(|&(_, root)| root != 0)
            .collect()
    };
    if rec.snaps.windows(2).any(|w| roots(&w[0]) != roots(&w[1])) {
        tally.with_trees.fetch_add(1, Ordering::Relaxed);
    }
    // A directory of more entries than one node holds, changed.
    let big_changed = |a: &Snap, b: &Snap| {
        a.entries
            .iter()
            .any(|(d, e)| e.len() > ONE_NODE && b.entries.get(d) != Some(e))
    };
    if rec.snaps.windows(2).any(|w| big_changed(&w[0], &w[1])) {
        tally.with_big_dirs.fetch_add(1, Ordering::Relaxed);
    }
    if rec.checkpointed {
        tally.checkpointed.fetch_add(1, Ordering::Relaxed);
    }
    tally.states.fetch_add(n, Ordering::Relaxed);
    tally.sequences.fetch_add(1, Ordering::Relaxed);
    let kind = format!("{:?}", job.prep).replace(|c: char| c.is_ascii_digit(), "");
    let mut p = tally.per_prep.lock().unwrap_or_else(|p| p.into_inner());
    let e = p.entry(kind).or_default();
    e.0 += 1;
    e.1 += n;
    e.2 += began.elapsed().as_secs_f64();
}

/// Runs recovery on `img` under a recording, then checks every crash point
/// of the recovery: a crash while mounting must leave an image whose
/// recovery is as legal as the first one's.
fn check_recovery_crashes(
    img: Vec<u8>,
    legal: &Legal,
    g: &Geometry,
    rng: &mut Rng,
    tally: &Tally,
    label: &dyn Fn() -> String,
) -> u64 {
    let (pmem, rec) = Recording::with_image(img);
    let Ok(image) = Image::open_pmem(pmem) else {
        return 0; // reported by the plain check of this image
    };
    drop(image);
    let t = rec.trace();
    let mut rp = t.replayer(0).expect("replayer");
    let mut n = 0;
    for k in 0..=t.fences() {
        rp.seek(k).expect("seek");
        let lines = rp.effective_lines();
        for set in subsets(&lines, g, rng, LIGHT) {
            n += 1;
            let r = rp
                .with_image(&set, |pmem| check_image(pmem, legal, n % 4 == 0, n))
                .expect("crash image");
            if let Err(why) = r {
                let at = format!(
                    "{}: a crash during recovery, at its crash point {k}",
                    label()
                );
                tally.violation(at, &format!("(during recovery) {why}"));
            }
        }
    }
    n
}

/// Runs `jobs` on every core; stops early past `deadline`.
fn run_jobs(jobs: &[Job], deadline: Option<Instant>) -> Tally {
    let tally = Tally::default();
    let next = AtomicUsize::new(0);
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get());
    std::thread::scope(|sc| {
        for _ in 0..threads {
            sc.spawn(|| {
                let mut bufs = None;
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= jobs.len() || deadline.is_some_and(|d| Instant::now() > d) {
                        break;
                    }
                    let job = &jobs[i];
                    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        run_job(job, 0x5eed ^ i as u64, &tally, &mut bufs)
                    }));
                    if let Err(p) = r {
                        let why = p
                            .downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default();
                        tally
                            .violation(format!("{job:?}"), &format!("the harness panicked: {why}"));
                    }
                }
            });
        }
    });
    tally
}

fn report(what: &str, t: &Tally, took: Duration) -> (u64, u64) {
    let (n, v) = (
        t.states.load(Ordering::Relaxed),
        t.violations.load(Ordering::Relaxed),
    );
    let mut err = std::io::stderr().lock();
    for (n, first) in t.kinds.lock().unwrap_or_else(|p| p.into_inner()).values() {
        let _ = writeln!(err, "violation (x{n}, the first): {first}");
    }
    for (prep, (seqs, states, secs)) in t.per_prep.lock().unwrap_or_else(|p| p.into_inner()).iter()
    {
        let _ = writeln!(
            err,
            "  {prep}: {seqs} sequences, {states} states, {secs:.1} thread-seconds ({:.0} us/state)",
            secs * 1e6 / (*states).max(1) as f64
        );
    }
    // Written to stderr directly, so that CI shows it without --nocapture.
    let _ = writeln!(
        err,
        "{what}: {} sequences ({} through a journal-full checkpoint, {} changing a page-map tree's root, {} changing a directory of several tree nodes) in {:.1}s; \
         crash states checked: {n}, violations: {v}",
        t.sequences.load(Ordering::Relaxed),
        t.checkpointed.load(Ordering::Relaxed),
        t.with_trees.load(Ordering::Relaxed),
        t.with_big_dirs.load(Ordering::Relaxed),
        took.as_secs_f64()
    );
    (n, v)
}

/// The bounded set CI runs.
fn bounded_jobs() -> Vec<Job> {
    let tpl = templates();
    let mut jobs = Vec::new();
    let job = |prep, ops, budget| Job {
        prep,
        ops,
        budget,
        nested: false,
        thorough_every: 3,
    };
    jobs.push(Job {
        nested: true,
        ..job(Prep::Mount, Ops::Fixed(vec![]), BOUNDED)
    });
    // One op, in every preparation; the recovery of some of its crash
    // images is crashed too.
    for a in &tpl {
        let one = || Ops::Fixed(vec![a.clone()]);
        for prep in [Prep::Fresh, Prep::Warm, Prep::Tail(64)] {
            jobs.push(Job {
                nested: true,
                ..job(prep, one(), BOUNDED)
            });
        }
        jobs.push(job(Prep::Full(64), one(), LIGHT));
    }
    // Every pair, and again with the journal about to fill, and after a
    // few transactions.
    for (i, a) in tpl.iter().enumerate() {
        for (j, b) in tpl.iter().enumerate() {
            let ops = Ops::Fixed(vec![a.clone(), b.clone()]);
            jobs.push(job(Prep::Fresh, ops.clone(), BOUNDED));
            jobs.push(Job {
                nested: (i + j) % 2 == 0,
                ..job(Prep::Tail(256), ops.clone(), BOUNDED)
            });
            jobs.push(job(Prep::Warm, ops, LIGHT));
        }
    }
    // A sample of triples.
    let mut rng = Rng(3);
    for i in 0..2400 {
        let ops: Vec<Act> = (0..3)
            .map(|_| tpl[rng.below(tpl.len() as u64) as usize].clone())
            .collect();
        let prep = [Prep::Fresh, Prep::Warm, Prep::Tail(400)][i % 3];
        jobs.push(job(prep, Ops::Fixed(ops), LIGHT));
    }
    // Seeded random longer sequences.
    for i in 0..128u64 {
        let prep = match i % 8 {
            7 => Prep::Full(700),
            3 | 5 => Prep::Tail(900),
            1 => Prep::Warm,
            _ => Prep::Fresh,
        };
        jobs.push(job(prep, Ops::Random(1000 + i, 20), LIGHT));
    }
    jobs
}

/// Tests that turn on a deliberate bug must run alone.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Turns a deliberate bug on for the life of the guard.
struct Switch(&'static AtomicBool);

impl Switch {
    fn on(s: &'static AtomicBool) -> Switch {
        s.store(true, Ordering::Relaxed);
        Switch(s)
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Relaxed);
    }
}

/// `PMEMFS_CRASH_FILTER=TEXT` keeps the jobs whose description holds it
/// (to chase one violation); the count is then not checked.
fn filtered(jobs: Vec<Job>) -> (Vec<Job>, bool) {
    match std::env::var("PMEMFS_CRASH_FILTER") {
        Ok(f) => (
            jobs.into_iter()
                .filter(|j| format!("{j:?}").contains(&f))
                .collect(),
            true,
        ),
        Err(_) => (jobs, false),
    }
}

#[test]
fn bounded_crash_states() {
    let _g = serial();
    let (jobs, partial) = filtered(bounded_jobs());
    let start = Instant::now();
    let t = run_jobs(&jobs, None);
    let (n, v) = report("bounded set", &t, start.elapsed());
    assert_eq!(v, 0, "crash consistency violations (see above)");
    assert!(partial || n >= 100_000, "only {n} crash states checked");
    assert!(
        partial || t.checkpointed.load(Ordering::Relaxed) >= 100,
        "too few sequences went through a journal-full checkpoint"
    );
    assert!(
        partial || t.with_trees.load(Ordering::Relaxed) >= 100,
        "too few sequences changed a page-map tree"
    );
    assert!(
        partial || t.with_big_dirs.load(Ordering::Relaxed) >= 100,
        "too few sequences changed a directory of several tree nodes"
    );
}

/// `PMEMFS_CRASH_LONG=SECONDS`: random sequences until the time is up.
#[test]
fn long_random_campaign() {
    let Some(secs) = std::env::var("PMEMFS_CRASH_LONG")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
    else {
        return;
    };
    let _g = serial();
    let seed0 = std::env::var("PMEMFS_CRASH_SEED")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(1, |d| d.as_secs())
        });
    let _ = writeln!(
        std::io::stderr(),
        "long campaign: seed {seed0} (PMEMFS_CRASH_SEED)"
    );
    let preps = [
        Prep::Fresh,
        Prep::Warm,
        Prep::Tail(400),
        Prep::Tail(3000),
        Prep::Fresh,
        Prep::Full(1500),
    ];
    let jobs: Vec<Job> = (0..1_000_000u64)
        .map(|i| Job {
            prep: preps[(i % 6) as usize],
            ops: Ops::Random(seed0.wrapping_add(i), 8 + (i % 5) as usize * 8),
            budget: if i % 3 == 0 { BOUNDED } else { LIGHT },
            nested: i % 7 == 0,
            thorough_every: 3,
        })
        .collect();
    let start = Instant::now();
    let t = run_jobs(&jobs, Some(start + Duration::from_secs(secs)));
    let (_, v) = report("long campaign", &t, start.elapsed());
    assert_eq!(v, 0, "crash consistency violations (see above)");
}

/// Jobs small enough for the tests that prove the harness can fail.
fn bug_jobs() -> Vec<Job> {
    templates()
        .into_iter()
        .map(|a| Job {
            prep: Prep::Fresh,
            ops: Ops::Fixed(vec![a, Act::Create(s("/b/after"))]),
            budget: LIGHT,
            nested: false,
            thorough_every: 0,
        })
        .collect()
}

/// Runs the bug jobs with the deliberate bug `switch` on; returns the
/// violations found.
fn violations_with(switch: &'static AtomicBool, name: &str, what: &str) -> u64 {
    let _g = serial();
    let _bug = Switch::on(switch);
    let start = Instant::now();
    let t = run_jobs(&bug_jobs(), None);
    let _ = writeln!(
        std::io::stderr(),
        "(the violations below are expected: {what} is on)"
    );
    report(name, &t, start.elapsed()).1
}

#[test]
fn harness_catches_a_missing_journal_fence() {
    let v = violations_with(
        &pmemfs_ondisk::testing::SKIP_JOURNAL_FENCE,
        "missing journal fence",
        "SKIP_JOURNAL_FENCE",
    );
    assert!(v > 0, "the harness missed commits that were not durable");
}

#[test]
fn harness_catches_a_missing_data_fence() {
    let v = violations_with(
        &pmemfs_ondisk::testing::SKIP_DATA_FENCE,
        "missing data fence",
        "SKIP_DATA_FENCE",
    );
    assert!(
        v > 0,
        "the harness missed data pages mapped before they were durable"
    );
}
