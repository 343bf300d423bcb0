//! `mkfs.pmemfs [-s SIZE] [-L LABEL] [-U UUID] [-f] [-n] [-q] IMAGE`
//!
//! Formats IMAGE (a file, made sparse of SIZE when it does not exist, or a
//! pmem device). It refuses to overwrite an existing pmemfs without -f and
//! leaves such an image untouched; -n prints what it would make and writes
//! nothing.

use std::fs::File;
use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context};
use pmemfs_ondisk::layout::{Geometry, MIN_IMAGE_BYTES, PAGE_SIZE};
use pmemfs_ondisk::superblock::{self, Superblock, MAX_LABEL};
use pmemfs_ondisk::{lock, pmem, Error, FormatOptions};

use crate::size::{human, parse_size};

const USAGE: &str = "\
usage: mkfs.pmemfs [-s SIZE] [-L LABEL] [-U UUID] [-f] [-n] [-q] IMAGE

  -s SIZE   create IMAGE of SIZE bytes (k/M/G/T suffixes) when it does not
            exist, or resize an existing regular file; sparse
  -L LABEL  file system label, at most 63 bytes
  -U UUID   file system UUID (default: random)
  -f        overwrite an existing pmemfs file system
  -n        print the geometry and write nothing
  -q        print nothing on success";

/// Validated options.
#[derive(Debug)]
pub struct Options {
    pub size: Option<u64>,
    pub label: String,
    pub uuid: Option<[u8; 16]>,
    pub force: bool,
    pub dry_run: bool,
    pub quiet: bool,
    pub image: PathBuf,
}

/// Parses and validates the command line.
pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut size, mut label, mut uuid, mut force, mut dry_run, mut quiet, mut image) =
        (None, String::new(), None, false, false, false, None);
    let text = |v: std::ffi::OsString| {
        v.into_string()
            .map_err(|_| "arguments must be UTF-8".to_string())
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('s') => size = Some(parse_size(&text(p.value().map_err(|e| e.to_string())?)?)?),
            Short('L') => label = text(p.value().map_err(|e| e.to_string())?)?,
            Short('U') => {
                let v = text(p.value().map_err(|e| e.to_string())?)?;
                let u = uuid::Uuid::parse_str(&v).map_err(|e| format!("-U {v}: {e}"))?;
                uuid = Some(u.into_bytes());
            }
            Short('f') => force = true,
            Short('n') => dry_run = true,
            Short('q') => quiet = true,
            Short('h') | Long("help") => return Err(String::new()),
            Value(v) if image.is_none() => image = Some(PathBuf::from(v)),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    if label.len() > MAX_LABEL {
        return Err(format!(
            "label is {} bytes; the longest is {MAX_LABEL}",
            label.len()
        ));
    }
    if label.contains('\0') {
        return Err("label must not contain NUL".into());
    }
    let image = image.ok_or("missing IMAGE")?;
    Ok(Options {
        size,
        label,
        uuid,
        force,
        dry_run,
        quiet,
        image,
    })
}

/// Runs mkfs.pmemfs with `args` (without the program name).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) => {
            if e.is_empty() {
                println!("{USAGE}");
                return ExitCode::SUCCESS;
            }
            eprintln!("mkfs.pmemfs: {e}\n{USAGE}");
            return ExitCode::from(16);
        }
    };
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("mkfs.pmemfs: {e:#}");
            ExitCode::from(1)
        }
    }
}

/// The superblock at the start of `file`, if it looks like pmemfs at all.
fn existing_pmemfs(file: &File) -> std::io::Result<Option<Result<Superblock, String>>> {
    let mut head = vec![0u8; (2 * PAGE_SIZE) as usize];
    let mut f = file;
    let mut got = 0;
    while got < head.len() {
        match f.read(&mut head[got..])? {
            0 => break,
            n => got += n,
        }
    }
    let copies: Vec<_> = [0usize, 1]
        .iter()
        .filter(|&&i| head[i * PAGE_SIZE as usize..][..8] == superblock::MAGIC)
        .map(|&i| {
            Superblock::decode(&head[i * PAGE_SIZE as usize..], "superblock")
                .map_err(|e| e.to_string())
        })
        .collect();
    Ok(copies.into_iter().max_by_key(|c| c.is_ok()))
}

fn run(o: &Options) -> anyhow::Result<()> {
    let path = &o.image;
    let exists = path.exists();
    let file = if exists {
        let f = File::options()
            .read(true)
            .write(!o.dry_run)
            .open(path)
            .with_context(|| format!("cannot open {}", path.display()))?;
        let md = f.metadata()?;
        if !o.dry_run {
            if let Some(at) = crate::control::mount_of(path) {
                bail!(
                    "{} is mounted on {}; unmount it first",
                    path.display(),
                    at.display()
                );
            }
            match lock::lock_exclusive(&f) {
                Err(Error::Locked) => bail!(
                    "{} is in use (mounted by pmemfs-mount, or open in a tool); unmount it first",
                    path.display()
                ),
                r => r?,
            }
        }
        if let Some(found) = existing_pmemfs(&f)? {
            if !o.force {
                let what = match found {
                    Ok(sb) => format!("label {:?}, UUID {}", sb.label, sb.uuid_string()),
                    Err(e) => format!("damaged: {e}"),
                };
                bail!(
                    "{} already holds a pmemfs file system ({what}); give -f to overwrite it",
                    path.display()
                );
            }
        }
        if o.size.is_some() && !md.is_file() {
            bail!(
                "-s cannot resize {}: it is not a regular file",
                path.display()
            );
        }
        Some(f)
    } else {
        if o.size.is_none() {
            bail!(
                "{} does not exist; give -s SIZE to create it",
                path.display()
            );
        }
        None
    };
    let size = match (o.size, &file) {
        (Some(s), _) => s,
        (None, Some(f)) => pmem::media_len(f)?,
        (None, None) => unreachable!("checked above"),
    };
    let g = Geometry::for_size(size).with_context(|| {
        format!(
            "{} bytes is too small: the minimum image size is {} ({MIN_IMAGE_BYTES} bytes)",
            size,
            human(MIN_IMAGE_BYTES)
        )
    })?;
    let uuid = o.uuid.unwrap_or_else(|| uuid::Uuid::new_v4().into_bytes());
    if o.dry_run {
        print_geometry(o, &g, &uuid, None);
        return Ok(());
    }
    let file = match file {
        Some(f) => f,
        None => {
            let f = File::options()
                .read(true)
                .write(true)
                .create_new(true)
                .open(path)
                .with_context(|| format!("cannot create {}", path.display()))?;
            lock::lock_exclusive(&f)?;
            f
        }
    };
    if file.metadata()?.is_file() && pmem::media_len(&file)? != size {
        file.set_len(size)
            .with_context(|| format!("cannot size {} to {size} bytes", path.display()))?;
    }
    let now = pmemfs_ondisk::now();
    // SAFETY: getuid/getgid cannot fail.
    let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
    let (_, domain) = pmemfs_ondisk::format(
        &file,
        &FormatOptions {
            label: o.label.clone(),
            uuid,
            uid,
            gid,
            now,
        },
    )
    .with_context(|| format!("cannot format {}", path.display()))?;
    file.sync_all()?;
    print_geometry(o, &g, &uuid, Some(domain));
    if let Some(a) = crate::size::allocated(&file).filter(|_| !o.quiet) {
        println!(
            "  allocated: {} of {} in the image file",
            human(a),
            human(size)
        );
    }
    Ok(())
}

fn print_geometry(o: &Options, g: &Geometry, uuid: &[u8; 16], domain: Option<pmem::DomainKind>) {
    if o.quiet {
        return;
    }
    let p = |pages: u64| human(pages * PAGE_SIZE);
    println!(
        "{}{}: pmemfs, {} ({} pages of {PAGE_SIZE} bytes)",
        if o.dry_run { "would format " } else { "" },
        o.image.display(),
        p(g.total_pages),
        g.total_pages
    );
    println!(
        "  label {:?}, UUID {}",
        o.label,
        superblock::format_uuid(uuid)
    );
    println!("  superblocks at pages 0 and 1");
    println!(
        "  journal: {} pages ({}) from page {}",
        g.journal_pages,
        p(g.journal_pages),
        g.journal_start
    );
    println!(
        "  data: {} pages ({}) from page {}",
        g.data_pages(),
        p(g.data_pages()),
        g.data_start
    );
    if let Some(d) = domain {
        println!("  persistence: {}", d.describe());
    }
}
