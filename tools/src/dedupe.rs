//! `pmemfs dedupe [-r] [-n] PATH...`: the offline deduplicator. Files
//! never cloned that hold the same pages (VM images from one base,
//! container layers, build trees, backups) come to share them, as `jdupes
//! -B` or `duperemove` make them share on XFS and btrfs.
//!
//! How: the daemon fingerprints every mapped whole page from pmem
//! (`PMEMFS_IOC_PAGE_HASHES`, no file data crosses FUSE); pages are grouped
//! by fingerprint, the first page of a group kept and every other page of
//! it (on another pfn: pages on one pfn are shared already) deduped
//! against it through `PMEMFS_IOC_DEDUPE`, the ioctl behind FIDEDUPERANGE,
//! which compares the bytes and shares only equal ones. Runs of pages that
//! follow each other on both sides go as one range, and the destinations
//! of one source range as one request.
//!
//! Memory stays bounded: a record is 32 bytes a page, and a tree with more
//! than [`RECORD_BUDGET`] pages is scanned in passes, each keeping the
//! pages whose fingerprint falls in its share of the hash space.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fs::File;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use anyhow::{bail, Context};
use pmemfs_fs::dedupe::{Outcome, MAX_DEDUPE};
use pmemfs_fs::ioctl::{
    DedupeAnswer, DedupeRequest, PageHashes, DEDUPE_DESTS, PMEMFS_IOC_DEDUPE,
    PMEMFS_IOC_PAGE_HASHES,
};
use pmemfs_ondisk::PAGE_SIZE;

use crate::client::finish;
use crate::control;
use crate::progress::Progress;
use crate::size::human;

const USAGE: &str = "usage: pmemfs dedupe [-r] [-n] PATH...";

/// Page records one pass keeps: 4 Mi records, 128 MiB.
pub const RECORD_BUDGET: u64 = 4 << 20;

/// `pmemfs dedupe [-r] [-n] PATH...`: `-r` descends into directories (else
/// a directory contributes the files in it), `-n` reports what would be
/// shared and changes nothing.
pub fn dedupe(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut recurse, mut dry, mut paths) = (false, false, vec![]);
    loop {
        match p.next() {
            Ok(Some(Short('r'))) => recurse = true,
            Ok(Some(Short('n'))) => dry = true,
            Ok(Some(Value(v))) => paths.push(PathBuf::from(v)),
            Ok(Some(other)) => return usage_error(other.unexpected()),
            Ok(None) => break,
            Err(e) => return usage_error(e),
        }
    }
    if paths.is_empty() {
        return usage_error("need at least one PATH");
    }
    finish("dedupe", run(&paths, recurse, dry))
}

fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("pmemfs dedupe: {e}\n{USAGE}");
    ExitCode::from(2)
}

/// One file to scan.
struct Target {
    path: PathBuf,
    ino: u64,
    pages: u64,
}

/// One mapped page, as a pass keeps it.
#[derive(Clone, Copy)]
struct Rec {
    hash: u64,
    pfn: u64,
    index: u64,
    file: u32,
}

/// A range to share: `len` pages of `src` from `src_index` into `dst` from
/// `dst_index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Share {
    src: u32,
    src_index: u64,
    dst: u32,
    dst_index: u64,
    len: u64,
}

/// What a run found and did.
#[derive(Default)]
struct Tally {
    scanned_pages: u64,
    duplicate_pages: u64,
    /// Distinct pfns that hold a duplicate: what sharing frees at most.
    freeable_pages: u64,
    shared_bytes: u64,
    differed: u64,
    refused: u64,
    first_refusal: Option<String>,
}

fn run(paths: &[PathBuf], recurse: bool, dry: bool) -> anyhow::Result<()> {
    let start = Instant::now();
    let files = collect(paths, recurse)?;
    let Some(first) = files.first() else {
        println!("pmemfs dedupe: no files");
        return Ok(());
    };
    crate::control::stats(&first.path)?; // pmemfs, or a clear error
    let free_before = free_bytes(&first.path)?;
    let total_pages: u64 = files.iter().map(|f| f.pages).sum();
    let passes = total_pages.div_ceil(RECORD_BUDGET).max(1);
    let mut t = Tally::default();
    for pass in 0..passes {
        let label = if passes == 1 {
            "pmemfs dedupe: scanning"
        } else {
            "pmemfs dedupe: pass"
        };
        let mut progress = Progress::new(label, total_pages);
        let mut recs = Vec::new();
        for (n, f) in files.iter().enumerate() {
            let file = u32::try_from(n).context("too many files")?;
            scan(f, |h| {
                t.scanned_pages += u64::from(pass == 0);
                progress.tick(1);
                if h.hash % passes == pass {
                    recs.push(Rec {
                        hash: h.hash,
                        pfn: h.pfn,
                        index: h.index,
                        file,
                    });
                }
            })?;
        }
        progress.finish();
        let shares = plan(&mut recs, &mut t);
        drop(recs);
        if !dry {
            apply(&files, &shares, &mut t)?;
        }
    }
    let took = start.elapsed().as_secs_f64();
    let scanned = t.scanned_pages * PAGE_SIZE;
    let rate = scanned as f64 / took.max(1e-9) / (1u64 << 30) as f64;
    let mut line = format!(
        "pmemfs dedupe: {} files, {} scanned in {took:.2} s ({rate:.2} GiB/s); {} duplicate pages ({}) on {} pages of their own",
        files.len(),
        human(scanned),
        t.duplicate_pages,
        human(t.duplicate_pages * PAGE_SIZE),
        t.freeable_pages,
    );
    if dry {
        line += &format!(
            "; would free up to {} (-n: nothing changed)",
            human(t.freeable_pages * PAGE_SIZE)
        );
    } else {
        let freed = free_bytes(&first.path)?.saturating_sub(free_before);
        line += &format!("; {} shared, {} freed", human(t.shared_bytes), human(freed));
        if t.differed > 0 {
            line += &format!("; {} ranges differed (changed since the scan)", t.differed);
        }
    }
    println!("{line}");
    if let Some(e) = t.first_refusal {
        bail!("{} ranges refused, the first: {e}", t.refused);
    }
    Ok(())
}

/// The regular files under `paths`, each inode once (hard links), all on
/// one mount.
fn collect(paths: &[PathBuf], recurse: bool) -> anyhow::Result<Vec<Target>> {
    let mut out = Vec::new();
    let mut seen = HashSet::new();
    let mut dev = None;
    let mut add = |path: PathBuf, md: &std::fs::Metadata| -> anyhow::Result<()> {
        if *dev.get_or_insert(md.dev()) != md.dev() {
            bail!(
                "{}: on another file system than the first file; pages are shared within one",
                path.display()
            );
        }
        if seen.insert(md.ino()) {
            out.push(Target {
                path,
                ino: md.ino(),
                pages: md.size() / PAGE_SIZE,
            });
        }
        Ok(())
    };
    let mut stack: Vec<(PathBuf, bool)> = paths.iter().map(|p| (p.clone(), true)).collect();
    while let Some((path, top)) = stack.pop() {
        let md = std::fs::symlink_metadata(&path).with_context(|| format!("{}", path.display()))?;
        if md.is_file() {
            add(path, &md)?;
        } else if md.is_dir() && (top || recurse) {
            let mut names = Vec::new();
            for e in std::fs::read_dir(&path).with_context(|| format!("{}", path.display()))? {
                names.push(e.with_context(|| format!("{}", path.display()))?.path());
            }
            names.sort();
            stack.extend(names.into_iter().rev().map(|p| (p, false)));
        }
    }
    Ok(out)
}

/// Every mapped whole page of `f`, with its fingerprint, from the daemon.
fn scan(f: &Target, mut each: impl FnMut(pmemfs_fs::ioctl::PageHash)) -> anyhow::Result<()> {
    let file = File::open(&f.path).with_context(|| format!("cannot open {}", f.path.display()))?;
    let mut from = 0u64;
    loop {
        let mut buf = vec![0u8; PageHashes::BYTES];
        buf[..8].copy_from_slice(&from.to_le_bytes());
        control::ask(&file, PMEMFS_IOC_PAGE_HASHES, &mut buf)
            .map_err(|e| control::on_pmemfs(e, &f.path))?;
        let h = PageHashes::decode(&buf).context("a malformed answer")?;
        h.pages.iter().copied().for_each(&mut each);
        if h.last {
            return Ok(());
        }
        from = h.next;
    }
}

/// Groups one pass's pages by fingerprint and returns the ranges to share:
/// in each group the first page stays, every page on another pfn goes.
fn plan(recs: &mut [Rec], t: &mut Tally) -> Vec<Share> {
    recs.sort_unstable_by_key(|r| (r.hash, r.pfn, r.file, r.index));
    let mut pairs = Vec::new();
    for group in recs.chunk_by(|a, b| a.hash == b.hash) {
        let keep = group[0];
        let mut last_pfn = keep.pfn;
        for r in group.iter().filter(|r| r.pfn != keep.pfn) {
            t.duplicate_pages += 1;
            if r.pfn != last_pfn {
                t.freeable_pages += 1;
                last_pfn = r.pfn;
            }
            pairs.push(Share {
                src: keep.file,
                src_index: keep.index,
                dst: r.file,
                dst_index: r.index,
                len: 1,
            });
        }
    }
    merge(pairs)
}

/// Joins pairs that continue each other on both sides into ranges of at
/// most [`MAX_DEDUPE`] bytes.
fn merge(mut pairs: Vec<Share>) -> Vec<Share> {
    pairs.sort_unstable_by_key(|s| (s.dst, s.dst_index));
    let max = MAX_DEDUPE / PAGE_SIZE;
    let mut out: Vec<Share> = Vec::new();
    for p in pairs {
        match out.last_mut() {
            Some(l)
                if l.dst == p.dst
                    && l.src == p.src
                    && l.dst_index + l.len == p.dst_index
                    && l.src_index + l.len == p.src_index
                    && l.len < max =>
            {
                l.len += 1
            }
            _ => out.push(p),
        }
    }
    out
}

/// Shares the ranges, one request per source range and up to
/// [`DEDUPE_DESTS`] destinations.
fn apply(files: &[Target], shares: &[Share], t: &mut Tally) -> anyhow::Result<()> {
    let mut by_src = shares.to_vec();
    by_src.sort_unstable_by_key(|s| (s.src, s.src_index, s.len, s.dst, s.dst_index));
    for batch in by_src.chunk_by(|a, b| (a.src, a.src_index, a.len) == (b.src, b.src_index, b.len))
    {
        let src = &files[batch[0].src as usize];
        let file =
            File::open(&src.path).with_context(|| format!("cannot open {}", src.path.display()))?;
        for chunk in batch.chunks(DEDUPE_DESTS) {
            let req = DedupeRequest {
                src_off: chunk[0].src_index * PAGE_SIZE,
                len: chunk[0].len * PAGE_SIZE,
                dsts: chunk
                    .iter()
                    .map(|s| (files[s.dst as usize].ino, s.dst_index * PAGE_SIZE))
                    .collect(),
            };
            let mut buf = req.encode();
            if let Err(e) = control::ask(&file, PMEMFS_IOC_DEDUPE, &mut buf) {
                t.refused += chunk.len() as u64;
                t.first_refusal
                    .get_or_insert(format!("{}: {e}", src.path.display()));
                continue;
            }
            let answer = DedupeAnswer::decode(&buf).context("a malformed answer")?;
            for (s, o) in chunk.iter().zip(answer.0) {
                match o {
                    Outcome::Same { bytes } => t.shared_bytes += bytes,
                    Outcome::Differs => t.differed += 1,
                    Outcome::Failed(e) => {
                        t.refused += 1;
                        t.first_refusal.get_or_insert(format!(
                            "{}: {}",
                            files[s.dst as usize].path.display(),
                            std::io::Error::from_raw_os_error(e)
                        ));
                    }
                }
            }
        }
    }
    Ok(())
}

/// Free bytes of the file system holding `path`.
fn free_bytes(path: &Path) -> anyhow::Result<u64> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).context("a NUL in the path")?;
    // SAFETY: statvfs fills the struct for a NUL-terminated path; zeroed
    // is valid.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("{}", path.display()));
    }
    Ok(st.f_bfree * st.f_frsize)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(src: u32, si: u64, dst: u32, di: u64, len: u64) -> Share {
        Share {
            src,
            src_index: si,
            dst,
            dst_index: di,
            len,
        }
    }

    #[test]
    fn runs_merge_only_where_both_sides_continue() {
        let pairs = vec![
            s(0, 0, 1, 0, 1),
            s(0, 1, 1, 1, 1),
            s(0, 2, 1, 2, 1),
            s(0, 9, 1, 3, 1), // the source jumps
            s(0, 3, 2, 5, 1),
            s(0, 4, 2, 6, 1),
        ];
        assert_eq!(
            merge(pairs),
            [s(0, 0, 1, 0, 3), s(0, 9, 1, 3, 1), s(0, 3, 2, 5, 2)]
        );
    }

    #[test]
    fn groups_keep_the_first_page_and_skip_shared_ones() {
        let r = |hash, pfn, file, index| Rec {
            hash,
            pfn,
            index,
            file,
        };
        let mut recs = vec![
            r(7, 100, 0, 0),
            r(7, 200, 1, 0),
            r(7, 100, 2, 0), // already shares the kept page
            r(7, 300, 3, 0),
            r(7, 300, 4, 0), // one pfn, two files
            r(8, 400, 0, 1), // alone
        ];
        let mut t = Tally::default();
        let shares = plan(&mut recs, &mut t);
        assert_eq!((t.duplicate_pages, t.freeable_pages), (3, 2));
        assert_eq!(
            shares,
            [s(0, 0, 1, 0, 1), s(0, 0, 3, 0, 1), s(0, 0, 4, 0, 1)]
        );
    }
}
