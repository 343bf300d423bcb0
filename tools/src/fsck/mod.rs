//! `fsck.pmemfs [-n|-y|-p] [-f] [-v] IMAGE`: checks an image and repairs it.
//!
//! Passes, each in its own module, run in order on the metadata as mount
//! would see it (checkpoint plus journal replay):
//! 1. [`superblock`]: both copies, geometry against the image size;
//! 2. [`journal`]: the checkpoint chain and journal replay;
//! 3. [`inodes`]: inodes and page maps;
//! 4. [`dirs`]: directories and connectivity, link counts;
//! 5. [`shares`]: share counts and free space.
//!
//! Repairs are made to the metadata in memory and written as one new
//! checkpoint at the end, with both superblock copies, so an interrupted
//! repair leaves the image as it was. Exit codes add up as in fsck(8):
//! 0 clean, 1 corrected, 4 left uncorrected, 8 operational error, 16 usage.

mod dirs;
mod inodes;
mod journal;
pub mod problem;
mod shares;
mod superblock;

use std::collections::BTreeSet;
use std::fs::File;
use std::path::PathBuf;
use std::process::ExitCode;

use pmemfs_ondisk::image::Rebuild;
use pmemfs_ondisk::overlay::Overlay;
use pmemfs_ondisk::superblock::{JournalPos, State, Superblock};
use pmemfs_ondisk::{lock, Error, Image, Meta, Pmem};

use problem::{Code, Finding};

pub const EXIT_CLEAN: u8 = 0;
pub const EXIT_CORRECTED: u8 = 1;
pub const EXIT_UNCORRECTED: u8 = 4;
pub const EXIT_OPERATIONAL: u8 = 8;
pub const EXIT_USAGE: u8 = 16;

const USAGE: &str = "\
usage: fsck.pmemfs [-n|-y|-p] [-f] [-v] IMAGE

  -n   check only; open read-only and change nothing (the default)
  -y   repair every problem that can be repaired
  -p   preen: repair what is safe without asking, leave the rest
  -f   check even when the image was closed cleanly (-p skips clean images)
  -v   say what each pass found

exit status (bits add): 0 clean, 1 corrected, 4 left uncorrected,
8 operational error, 16 usage error";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Check,
    Yes,
    Preen,
}

#[derive(Debug)]
pub struct Options {
    pub mode: Mode,
    pub force: bool,
    pub verbose: bool,
    pub image: PathBuf,
}

pub fn parse(args: impl IntoIterator<Item = std::ffi::OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let (mut mode, mut force, mut verbose, mut image) = (None, false, false, None);
    let set = |m: Mode, mode: &mut Option<Mode>| match mode {
        Some(old) if *old != m => Err("-n, -y and -p exclude each other".to_string()),
        _ => {
            *mode = Some(m);
            Ok(())
        }
    };
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('n') => set(Mode::Check, &mut mode)?,
            Short('y') => set(Mode::Yes, &mut mode)?,
            Short('p') | Short('a') => set(Mode::Preen, &mut mode)?,
            Short('f') => force = true,
            Short('v') => verbose = true,
            Short('h') | Long("help") => return Err(String::new()),
            Value(v) if image.is_none() => image = Some(PathBuf::from(v)),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let image = image.ok_or("missing IMAGE")?;
    Ok(Options {
        mode: mode.unwrap_or(Mode::Check),
        force,
        verbose,
        image,
    })
}

/// Runs fsck.pmemfs with `args` (without the program name).
pub fn main(args: impl IntoIterator<Item = std::ffi::OsString>) -> ExitCode {
    let opts = match parse(args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("fsck.pmemfs: {e}\n{USAGE}");
            return ExitCode::from(EXIT_USAGE);
        }
    };
    ExitCode::from(run(&opts))
}

/// The state of one check: what was found, and the mode that decides what
/// gets repaired.
pub struct Check {
    name: String,
    mode: Mode,
    verbose: bool,
    /// Prints nothing at all (checks of images held in memory).
    quiet: bool,
    pub findings: Vec<Finding>,
}

impl Check {
    /// Records a finding. Returns whether to repair it.
    pub fn found(&mut self, code: Code, detail: impl Into<String>) -> bool {
        let p = code.problem();
        let fixed = match (p.repair, self.mode) {
            (None, _) | (_, Mode::Check) => false,
            (Some(_), Mode::Yes) => true,
            (Some(_), Mode::Preen) => p.preen,
        };
        self.findings.push(Finding {
            code,
            detail: detail.into(),
            fixed,
        });
        fixed
    }

    /// Prints every finding, one line each, with what became of it.
    /// `stopped` says the check ended early on a problem that cannot be
    /// repaired, so no repair was written.
    fn report(&mut self, stopped: bool) {
        for f in &mut self.findings {
            let p = f.code.problem();
            let outcome = match p.repair {
                Some(r) if f.fixed && !stopped => format!("fixed: {r}"),
                Some(_) if stopped => {
                    "NOT fixed: fsck stopped at a problem it cannot repair".to_string()
                }
                Some(_) if self.mode == Mode::Check => {
                    "NOT fixed: run fsck.pmemfs -y to repair".to_string()
                }
                Some(_) => "NOT fixed: needs fsck.pmemfs -y".to_string(),
                None => "NOT fixed: cannot be repaired".to_string(),
            };
            f.fixed &= !stopped;
            println!(
                "{}: [{}] {}: {}; {outcome}",
                self.name, p.id, p.summary, f.detail
            );
        }
    }

    fn pass(&self, n: u32, name: &str) {
        if self.verbose {
            println!("{}: pass {n}: {name}", self.name);
        }
    }

    /// A fact about the image that is not a problem but that a user must
    /// know (a journal the next mount replays), printed even without -v.
    fn tell(&self, text: impl AsRef<str>) {
        if !self.quiet {
            println!("{}: {}", self.name, text.as_ref());
        }
    }

    fn note(&self, text: impl AsRef<str>) {
        if self.verbose {
            println!("{}:   {}", self.name, text.as_ref());
        }
    }

    /// Reports and sums up; returns the exit code.
    fn finish(&mut self, stopped: bool) -> u8 {
        self.report(stopped);
        let code = self.exit_code();
        match code {
            EXIT_CLEAN => println!("{}: clean", self.name),
            EXIT_CORRECTED => println!("{}: repaired", self.name),
            _ => {
                let left = self.findings.iter().filter(|f| !f.fixed).count();
                println!("{}: {left} problem(s) left", self.name);
            }
        }
        code
    }

    fn exit_code(&self) -> u8 {
        let mut code = EXIT_CLEAN;
        if self.findings.iter().any(|f| f.fixed) {
            code |= EXIT_CORRECTED;
        }
        if self.findings.iter().any(|f| !f.fixed) {
            code |= EXIT_UNCORRECTED;
        }
        code
    }
}

/// What passes 1 and 2 hand on: the image as mount would assemble it.
pub struct Loaded {
    pub sb: Superblock,
    pub meta: Meta,
    pub ckpt_pfns: Vec<u64>,
    /// The patches replay found (the checkpoint's and the entries'), over
    /// the media: the share tree as mount would see it.
    pub over: Overlay,
    /// Trees to be built anew: the share tree from the page maps, the
    /// page maps of files whose trees could not stay, and directories
    /// whose entries a repair changed.
    pub rebuild: Rebuild,
    /// The pages of the inodes' trees (page maps, directories) that stay
    /// (pass 3).
    pub tree_nodes: BTreeSet<u64>,
    /// Every directory's entries (pass 3 reads them, pass 4 repairs them).
    pub dirs: dirs::Dirs,
    /// Where the journal restarts after a repair, past every entry that
    /// was read; the checkpoint that writes the repairs draws a new nonce.
    pub journal_restart: JournalPos,
    /// Offset of a torn entry to cut.
    pub torn_at: Option<u64>,
}

/// Checks (and repairs) the image; returns the exit code.
pub fn run(o: &Options) -> u8 {
    let name = o.image.display().to_string();
    let writable = o.mode != Mode::Check;
    let fail = |what: String| {
        eprintln!("fsck.pmemfs: {name}: {what}");
        EXIT_OPERATIONAL
    };
    let file = match File::options().read(true).write(writable).open(&o.image) {
        Ok(f) => f,
        Err(e) => return fail(format!("cannot open: {e}")),
    };
    let mounted = crate::control::mount_of(&o.image);
    if writable {
        if let Some(at) = &mounted {
            return fail(format!(
                "the image is mounted on {}; unmount it before repairing",
                at.display()
            ));
        }
        match lock::lock_exclusive(&file) {
            Ok(()) => {}
            Err(Error::Locked) => {
                return fail("the image is in use (mounted by pmemfs-mount, or open in a tool); unmount it before repairing".into())
            }
            Err(e) => return fail(format!("cannot lock: {e}")),
        }
    } else if let Some(at) = &mounted {
        eprintln!(
            "fsck.pmemfs: {name}: warning: the image is mounted on {}; what is checked may change under the check",
            at.display()
        );
    } else if !lock::released_within(&o.image, lock::LOCK_PATIENCE).unwrap_or(true) {
        // Not mounted, yet held: a tool has it open, or a daemon is still
        // writing its final checkpoint after umount (waited for above).
        eprintln!("fsck.pmemfs: {name}: warning: the image is in use; what is checked may change under the check");
    }
    let mut check = Check {
        name: name.clone(),
        mode: o.mode,
        verbose: o.verbose,
        quiet: false,
        findings: Vec::new(),
    };
    if let (Some(a), Ok(md)) = (crate::size::allocated(&file), file.metadata()) {
        check.tell(format!(
            "image {} ({} bytes), {} allocated",
            crate::size::human(md.len()),
            md.len(),
            crate::size::human(a)
        ));
    }
    let pmem = match Pmem::map(&file, writable) {
        Ok(p) => p,
        Err(e) => return fail(format!("cannot map: {e}")),
    };

    let loaded = match passes(&mut check, &pmem, o.mode == Mode::Preen && !o.force) {
        Passes::Done(loaded) => loaded,
        Passes::NotPmemfs => {
            return fail("not a pmemfs image (no superblock magic in either copy)".into())
        }
        // Like e2fsck on features it does not know: nothing is checked
        // or changed, and the exit code says the check could not run.
        Passes::OtherVersion(why) => return fail(format!("the image is of {why}")),
        Passes::Stopped => return check.finish(true),
        Passes::CleanSkipped => {
            // Like e2fsck -p: a cleanly closed image is trusted unless -f.
            println!("{name}: clean");
            return EXIT_CLEAN;
        }
    };
    if check.findings.iter().any(|f| f.fixed) {
        if let Err(e) = write_repairs(file, pmem, *loaded) {
            let code = check.finish(true);
            eprintln!("fsck.pmemfs: {name}: the repairs could not be written; the image is as it was: {e}");
            return code | EXIT_OPERATIONAL;
        }
    }
    check.finish(false)
}

/// How the passes ended.
enum Passes {
    /// All five ran.
    Done(Box<Loaded>),
    NotPmemfs,
    /// A whole superblock of another format version: what to tell.
    OtherVersion(String),
    /// A pass found a problem nothing further can be checked past.
    Stopped,
    /// The image was closed cleanly and preen trusts it.
    CleanSkipped,
}

/// Runs the five passes in order on `pmem`.
fn passes(check: &mut Check, pmem: &Pmem, skip_clean: bool) -> Passes {
    check.pass(1, "superblock");
    let sb = match superblock::check(check, pmem) {
        superblock::Outcome::Good(sb) => sb,
        superblock::Outcome::NotPmemfs => return Passes::NotPmemfs,
        superblock::Outcome::OtherVersion(v) => {
            return Passes::OtherVersion(pmemfs_ondisk::superblock::version_mismatch(v))
        }
        superblock::Outcome::Fatal => return Passes::Stopped,
    };
    if skip_clean && sb.state == State::Clean && check.findings.is_empty() {
        return Passes::CleanSkipped;
    }
    check.note(format!("persistence: {}", pmem.kind().describe()));

    check.pass(2, "checkpoint and journal");
    let Some(mut loaded) = journal::check(check, pmem, sb) else {
        return Passes::Stopped;
    };

    check.pass(3, "inodes and page maps");
    inodes::check(check, &mut loaded, pmem);

    check.pass(4, "directories and connectivity");
    if !dirs::check(check, &mut loaded.meta, &mut loaded.dirs) {
        return Passes::Stopped;
    }
    loaded.dirs.settle(&mut loaded.meta, &mut loaded.rebuild);

    check.pass(5, "share counts and free space");
    shares::check(check, &mut loaded, pmem);
    Passes::Done(Box::new(loaded))
}

/// Checks an image that is already mapped, as `fsck.pmemfs -n` would, and
/// prints nothing: for tests that hold images in memory (the crash tests).
/// Returns every finding; an image with no superblock magic at all is
/// reported as [`Code::SbNone`].
pub fn check_pmem(pmem: &Pmem) -> Vec<Finding> {
    check_pmem_loaded(pmem).0
}

/// [`check_pmem`], also returning the metadata as mount would load it
/// (checkpoint plus journal replay), or `None` when a pass stopped early.
pub fn check_pmem_loaded(pmem: &Pmem) -> (Vec<Finding>, Option<Meta>) {
    let mut check = Check {
        name: String::new(),
        mode: Mode::Check,
        verbose: false,
        quiet: true,
        findings: Vec::new(),
    };
    let meta = match passes(&mut check, pmem, false) {
        Passes::Done(loaded) => Some(loaded.meta),
        Passes::NotPmemfs => {
            check.found(Code::SbNone, "no superblock magic in either copy");
            None
        }
        Passes::OtherVersion(why) => {
            check.found(Code::SbNone, why);
            None
        }
        Passes::Stopped | Passes::CleanSkipped => None,
    };
    (check.findings, meta)
}

/// Writes the repaired metadata as a new checkpoint with both superblock
/// copies, and cuts a torn journal tail.
fn write_repairs(file: File, pmem: Pmem, loaded: Loaded) -> Result<(), Error> {
    if let Some(off) = loaded.torn_at {
        pmemfs_ondisk::journal::cut(&pmem, &loaded.sb.geometry, off)?;
    }
    let image = Image::from_parts(
        Some(file),
        pmem,
        loaded.sb,
        loaded.meta,
        loaded.ckpt_pfns,
        loaded.journal_restart,
        loaded.over,
        loaded.rebuild,
    )?;
    image.close()
}
