//! `pmemfs reflink`, `pmemfs du` and `pmemfs stat`: the client side of a
//! mounted pmemfs.

use std::ffi::OsString;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::control;
use crate::size::human;
use pmemfs_fs::ioctl::Usage;

const USAGE: &str = "\
usage: pmemfs reflink [--range SRC_OFF:LEN:DST_OFF] SRC DST
       pmemfs du [--raw] PATH...
       pmemfs stat [--ops [--reset]] MOUNTPOINT";

/// Exit status of `pmemfs TOOL`: the error, if any, on one line.
pub(crate) fn finish(tool: &str, r: anyhow::Result<()>) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmemfs {tool}: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn usage_error(tool: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("pmemfs {tool}: {e}\n{USAGE}");
    ExitCode::from(16)
}

/// `pmemfs reflink [--range SRC_OFF:LEN:DST_OFF] SRC DST`: DST shares SRC's
/// pages. Without --range DST is created or truncated and becomes a clone
/// of all of SRC; with it, that range of DST is replaced.
pub fn reflink(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut range = None;
    let mut paths = vec![];
    loop {
        match p.next() {
            Ok(Some(Long("range"))) => {
                let v = match p.value() {
                    Ok(v) => v.to_string_lossy().into_owned(),
                    Err(e) => return usage_error("reflink", e),
                };
                let parts: Vec<Option<u64>> = v
                    .split(':')
                    .map(|x| crate::size::parse_size(x).ok())
                    .collect();
                match parts.as_slice() {
                    [Some(a), Some(b), Some(c)] => range = Some((*a, *b, *c)),
                    _ => {
                        return usage_error(
                            "reflink",
                            format!("--range {v}: want SRC_OFF:LEN:DST_OFF"),
                        )
                    }
                }
            }
            Ok(Some(Value(v))) => paths.push(PathBuf::from(v)),
            Ok(Some(other)) => return usage_error("reflink", other.unexpected()),
            Ok(None) => break,
            Err(e) => return usage_error("reflink", e),
        }
    }
    let [src, dst]: [PathBuf; 2] = match paths.try_into() {
        Ok(p) => p,
        Err(_) => return usage_error("reflink", "need SRC and DST"),
    };
    finish("reflink", do_reflink(&src, &dst, range))
}

fn do_reflink(src: &Path, dst: &Path, range: Option<(u64, u64, u64)>) -> anyhow::Result<()> {
    let s = File::open(src).with_context(|| format!("cannot open {}", src.display()))?;
    control::stats(src)?; // refuse anything but pmemfs: elsewhere it would copy bytes
    let d = File::options()
        .write(true)
        .create(true)
        .truncate(range.is_none())
        .open(dst)
        .with_context(|| format!("cannot open {}", dst.display()))?;
    control::stats(dst)?;
    let (so, len, doff) = match range {
        Some((a, b, c)) => (a, Some(b), c),
        None => (0, None, 0),
    };
    let n = control::clone_range(&s, so, len, &d, doff)
        .with_context(|| format!("cannot clone {} to {}", src.display(), dst.display()))?;
    if len.is_some_and(|l| l != n) {
        bail!("cloned {n} bytes: {} ends early", src.display());
    }
    Ok(())
}

/// `pmemfs du [--raw] PATH...`: per file, total, exclusive and shared bytes
/// (as `btrfs filesystem du`), then the sums.
pub fn du(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut raw, mut paths) = (false, vec![]);
    loop {
        match p.next() {
            Ok(Some(Long("raw"))) => raw = true,
            Ok(Some(Value(v))) => paths.push(PathBuf::from(v)),
            Ok(Some(other)) => return usage_error("du", other.unexpected()),
            Ok(None) => break,
            Err(e) => return usage_error("du", e),
        }
    }
    if paths.is_empty() {
        return usage_error("du", "need at least one PATH");
    }
    finish("du", do_du(&paths, raw))
}

/// Totals so far, and how to print them.
struct Du {
    raw: bool,
    sum: Usage,
}

impl Du {
    /// One line: the three figures, then what they are of.
    fn line(&self, u: Usage, what: &str) {
        let fmt = |b: u64| if self.raw { b.to_string() } else { human(b) };
        println!(
            "{:>14} {:>14} {:>14}  {what}",
            fmt(u.total),
            fmt(u.exclusive),
            fmt(u.shared)
        );
    }

    fn file(&mut self, path: &Path, u: Usage) {
        self.line(u, &path.display().to_string());
        self.sum.total += u.total;
        self.sum.exclusive += u.exclusive;
        self.sum.shared += u.shared;
    }

    /// A directory: its regular files' usage comes in a few requests for
    /// the whole directory (no open, stat or ioctl per file), then the
    /// subdirectories, in name order.
    fn dir(&mut self, path: &Path) -> anyhow::Result<()> {
        use std::os::unix::fs::DirEntryExt;
        let mut entries = Vec::new();
        for e in std::fs::read_dir(path).with_context(|| format!("{}", path.display()))? {
            let e = e.with_context(|| format!("{}", path.display()))?;
            let kind = e
                .file_type()
                .with_context(|| format!("{}", e.path().display()))?;
            entries.push((e.file_name(), e.ino(), kind));
        }
        entries.sort_by(|a, b| a.0.cmp(&b.0));
        let usage = if entries.iter().any(|e| e.2.is_file()) {
            control::dir_usage(path)?
        } else {
            Default::default()
        };
        for (name, ino, kind) in entries {
            let p = path.join(&name);
            if kind.is_dir() {
                self.dir(&p)?;
            } else if kind.is_file() {
                // A file made since the directory was asked is asked alone.
                let u = match usage.get(&ino) {
                    Some(u) => *u,
                    None => control::usage(&p)?,
                };
                self.file(&p, u);
            }
        }
        Ok(())
    }
}

fn do_du(paths: &[PathBuf], raw: bool) -> anyhow::Result<()> {
    println!("{:>14} {:>14} {:>14}  PATH", "TOTAL", "EXCLUSIVE", "SHARED");
    let mut du = Du {
        raw,
        sum: Usage::default(),
    };
    for p in paths {
        let md = std::fs::symlink_metadata(p).with_context(|| format!("{}", p.display()))?;
        if md.is_dir() {
            du.dir(p)?;
        } else if md.is_file() {
            du.file(p, control::usage(p)?);
        }
    }
    du.line(du.sum, "total");
    Ok(())
}

/// `pmemfs stat [--ops [--reset]] MOUNTPOINT`: usage, sharing, page-map and
/// page-cache figures; or, with `--ops`, the requests the daemon served
/// per FUSE opcode (`--reset` zeroes them after printing).
pub fn stat(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut ops, mut reset, mut paths) = (false, false, vec![]);
    loop {
        match p.next() {
            Ok(Some(Long("ops"))) => ops = true,
            Ok(Some(Long("reset"))) => reset = true,
            Ok(Some(Value(v))) => paths.push(PathBuf::from(v)),
            Ok(Some(other)) => return usage_error("stat", other.unexpected()),
            Ok(None) => break,
            Err(e) => return usage_error("stat", e),
        }
    }
    let [mnt] = paths.as_slice() else {
        return usage_error("stat", "need MOUNTPOINT");
    };
    if reset && !ops {
        return usage_error("stat", "--reset goes with --ops");
    }
    if ops {
        return finish("stat", do_ops(mnt, reset));
    }
    finish("stat", do_stat(mnt))
}

/// `NAME COUNT TOTAL_US MAX_US`, one opcode a line, those that were asked.
fn do_ops(mnt: &Path, reset: bool) -> anyhow::Result<()> {
    let ops = control::ops(mnt)?;
    for (name, s) in ops.iter().filter(|(_, s)| s.count > 0) {
        println!(
            "{name} {} {} {}",
            s.count,
            s.total_ns / 1000,
            s.max_ns / 1000
        );
    }
    if reset {
        control::reset_ops(mnt)?;
    }
    Ok(())
}

fn do_stat(mnt: &Path) -> anyhow::Result<()> {
    let s = control::stats(mnt)?;
    let pg = |n: u64| human(n * pmemfs_ondisk::PAGE_SIZE);
    let ratio = if s.used_pages == 0 {
        1.0
    } else {
        s.referenced_pages as f64 / s.used_pages as f64
    };
    println!("{}", mnt.display());
    println!("  data       {} ({} pages)", pg(s.data_pages), s.data_pages);
    println!(
        "  used       {} ({} pages), free {} ({} pages)",
        pg(s.used_pages),
        s.used_pages,
        pg(s.free_pages),
        s.free_pages
    );
    println!("  inodes     {}", s.inodes);
    println!(
        "  sharing    {} pages shared; files reference {} ({} pages): ratio {ratio:.2}, {} saved",
        s.shared_pages,
        pg(s.referenced_pages),
        s.referenced_pages,
        pg(s.referenced_pages - s.used_pages)
    );
    println!(
        "  page maps  {} runs for {} mapped pages; checkpoint {} pages",
        s.map_runs, s.referenced_pages, s.checkpoint_pages
    );
    let c = &s.cache;
    println!(
        "  DAX        {} entries for {} pages in {} files; XArray {} nodes ({})",
        c.dax_entries,
        c.dax_pages,
        c.inodes,
        c.xa_nodes,
        human(c.xa_bytes)
    );
    if c.dram_budget == 0 {
        println!("  DRAM cache off ({} NUMA nodes)", c.numa_nodes);
    } else {
        println!(
            "  DRAM cache {} copies ({}) of {} on {} NUMA nodes; {} hits, {} misses, {} refused (budget full); descriptors {}",
            c.dram_copies,
            human(c.dram_bytes),
            human(c.dram_budget),
            c.numa_nodes,
            c.dram_hits,
            c.dram_misses,
            c.dram_refused,
            human(c.desc_bytes)
        );
    }
    let k = &s.ksm;
    if k.on {
        // As /sys/kernel/mm/ksm: pages_scanned, pages_shared (shared),
        // pages_sharing (merged), pages_unshared.
        println!(
            "  dedupe     online: {} pages scanned in {} files ({} queued); {} shared, {} merged into them ({} saved), {} without a twin, {} differed",
            k.scanned,
            k.files,
            k.queued,
            k.shared,
            k.merged,
            pg(k.merged),
            k.unshared,
            k.differed
        );
    } else {
        println!("  dedupe     online off");
    }
    Ok(())
}
