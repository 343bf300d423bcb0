//! `pmemfs install [--dest DIR]` and `pmemfs uninstall [--dest DIR]`: put
//! the tools where mount(8), mount.fuse3 and fsck(8) look for them.
//!
//! mount(8) runs `/sbin/mount.TYPE` for `mount -t TYPE` and fstab lines,
//! so `mount.pmemfs` serves type `pmemfs` and `mount.fuse.pmemfs` type
//! `fuse.pmemfs` (what the kernel shows for our mounts, hence also what
//! `mount -o remount` asks for); fsck(8) runs `fsck.pmemfs` from the same
//! place. mount.fuse3, when it is the one called, runs the program `pmemfs`
//! from a fixed PATH that has /usr/sbin. So everything goes in /usr/sbin
//! (or /sbin on a system without one); where /sbin is a directory of its
//! own and not the same as DIR, the helpers are linked there too. The
//! preload library goes beside, in `/usr/lib/pmemfs/`.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context};

use crate::client::finish;

pub use crate::links::LINKS;
/// The helpers mount(8) and fsck(8) look for in /sbin.
const SBIN_HELPERS: [&str; 3] = ["mount.pmemfs", "mount.fuse.pmemfs", "fsck.pmemfs"];
const PRELOAD: &str = "libpmemfs_reflink.so";
const LIB_DIR: &str = "/usr/lib/pmemfs";

const USAGE: &str = "\
usage: pmemfs install [--dest DIR]     (as root; DIR: /usr/sbin by default)
       pmemfs uninstall [--dest DIR]";

struct Places {
    bin_dir: PathBuf,
    /// /sbin when it is a directory of its own, apart from `bin_dir`.
    sbin: Option<PathBuf>,
    lib_dir: PathBuf,
}

fn places(dest: Option<PathBuf>) -> Places {
    let default = if Path::new("/usr/sbin").is_dir() {
        PathBuf::from("/usr/sbin")
    } else {
        PathBuf::from("/sbin")
    };
    let explicit = dest.is_some();
    let bin_dir = dest.unwrap_or(default);
    let same = |a: &Path, b: &Path| match (a.canonicalize(), b.canonicalize()) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let sbin = Path::new("/sbin");
    let sbin = (!explicit && sbin.is_dir() && !same(sbin, &bin_dir)).then(|| sbin.to_path_buf());
    let lib_dir = if explicit {
        bin_dir.join("lib")
    } else {
        PathBuf::from(LIB_DIR)
    };
    Places {
        bin_dir,
        sbin,
        lib_dir,
    }
}

fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Option<PathBuf>, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut dest = None;
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Long("dest") => dest = Some(PathBuf::from(p.value().map_err(|e| e.to_string())?)),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    Ok(dest)
}

pub fn install(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match parse(args) {
        Ok(dest) => finish("install", do_install(&places(dest))),
        Err(e) => {
            eprintln!("pmemfs install: {e}\n{USAGE}");
            ExitCode::from(16)
        }
    }
}

pub fn uninstall(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    match parse(args) {
        Ok(dest) => finish("uninstall", do_uninstall(&places(dest))),
        Err(e) => {
            eprintln!("pmemfs uninstall: {e}\n{USAGE}");
            ExitCode::from(16)
        }
    }
}

/// Makes `link` a symbolic link to `target`, replacing a link or file of
/// ours; refuses to replace anything else.
fn link(target: &Path, link: &Path) -> anyhow::Result<()> {
    if let Ok(md) = std::fs::symlink_metadata(link) {
        if !md.file_type().is_symlink() {
            bail!(
                "{} exists and is not a link; remove it first",
                link.display()
            );
        }
        std::fs::remove_file(link).with_context(|| format!("removing {}", link.display()))?;
    }
    std::os::unix::fs::symlink(target, link)
        .with_context(|| format!("linking {} to {}", link.display(), target.display()))
}

/// Copies `from` to `to` through a temporary name, so a running copy of
/// the old binary keeps its file.
fn copy_exe(from: &Path, to: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    let tmp = to.with_extension("new");
    std::fs::copy(from, &tmp)
        .with_context(|| format!("copying {} to {}", from.display(), tmp.display()))?;
    std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode))?;
    std::fs::rename(&tmp, to).with_context(|| format!("installing {}", to.display()))
}

fn do_install(p: &Places) -> anyhow::Result<()> {
    let exe = std::env::current_exe().context("cannot find this program")?;
    std::fs::create_dir_all(&p.bin_dir)
        .with_context(|| format!("creating {}", p.bin_dir.display()))?;
    let bin = p.bin_dir.join("pmemfs");
    if exe.canonicalize().ok() != bin.canonicalize().ok() {
        copy_exe(&exe, &bin, 0o755)?;
    }
    println!("installed {}", bin.display());
    for name in LINKS {
        link(Path::new("pmemfs"), &p.bin_dir.join(name))?;
    }
    println!("  linked {}", LINKS.join(", "));
    if let Some(sbin) = &p.sbin {
        for name in SBIN_HELPERS {
            link(&bin, &sbin.join(name))?;
        }
        println!("  linked {} in {}", SBIN_HELPERS.join(", "), sbin.display());
    }
    let preload = exe.with_file_name(PRELOAD);
    if preload.is_file() {
        std::fs::create_dir_all(&p.lib_dir)
            .with_context(|| format!("creating {}", p.lib_dir.display()))?;
        let to = p.lib_dir.join(PRELOAD);
        copy_exe(&preload, &to, 0o644)?;
        println!(
            "installed {} (LD_PRELOAD it for cp --reflink=always)",
            to.display()
        );
    }
    Ok(())
}

/// Removes what [`do_install`] put in place; links are removed only when
/// they point to pmemfs.
fn do_uninstall(p: &Places) -> anyhow::Result<()> {
    let ours = |l: &Path| {
        std::fs::read_link(l).is_ok_and(|t| t.file_name().is_some_and(|n| n == "pmemfs"))
    };
    let mut gone = Vec::new();
    let mut links: Vec<PathBuf> = LINKS.iter().map(|n| p.bin_dir.join(n)).collect();
    if let Some(sbin) = &p.sbin {
        links.extend(SBIN_HELPERS.iter().map(|n| sbin.join(n)));
    }
    for l in links.iter().filter(|l| ours(l)) {
        std::fs::remove_file(l).with_context(|| format!("removing {}", l.display()))?;
        gone.push(l.display().to_string());
    }
    for f in [p.bin_dir.join("pmemfs"), p.lib_dir.join(PRELOAD)] {
        if f.is_file() {
            std::fs::remove_file(&f).with_context(|| format!("removing {}", f.display()))?;
            gone.push(f.display().to_string());
        }
    }
    let _ = std::fs::remove_dir(&p.lib_dir);
    if gone.is_empty() {
        println!(
            "nothing to remove: pmemfs is not installed in {}",
            p.bin_dir.display()
        );
    } else {
        println!("removed {}", gone.join(", "));
    }
    Ok(())
}
