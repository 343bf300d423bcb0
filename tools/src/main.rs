//! `pmemfs`: the multi-call binary behind every pmemfs tool. Called as
//! `mkfs.pmemfs` or `fsck.pmemfs` (links made by the build, or installed),
//! it is that tool; called as `pmemfs TOOL ARGS...` it runs TOOL.
//!
//! Called as `pmemfs IMAGE MOUNTPOINT -o OPTIONS` (IMAGE a path, or
//! `pmemfs:PATH` as the kernel shows the source), it mounts (or, with
//! `remount` among the options, remounts): that is how fuse3's
//! `mount.fuse3` runs the program of a `fuse.pmemfs` mount, the type the
//! kernel shows for ours, for `mount -t fuse.pmemfs`, `mount -o remount`
//! and fstab.

use std::process::ExitCode;

const USAGE: &str = "\
usage: pmemfs TOOL [ARGS...]   (or call the tool by its own name)

tools:
  mkfs   format an image           (mkfs.pmemfs)
  fsck   check and repair an image (fsck.pmemfs)
  mount  mount an image            (pmemfs-mount, mount.pmemfs)
  reflink SRC DST                  clone a file (shares its pages)
  du [--raw] PATH...               total, exclusive and shared bytes
  dedupe [-r] [-n] PATH...         share the equal pages of files
  stat [--ops [--reset]] MOUNTPOINT
                                   usage, sharing ratio, page maps; or
                                   requests served per FUSE opcode
  install [--dest DIR]             put the tools where mount(8) finds them
  uninstall [--dest DIR]           take them away again";

const TOOLS: [&str; 12] = [
    "mkfs",
    "fsck",
    "mount",
    "reflink",
    "du",
    "dedupe",
    "stat",
    "install",
    "uninstall",
    "-h",
    "--help",
    "help",
];

/// Whether the first argument is a mount source rather than a tool: a
/// `pmemfs:` source, or a path to an existing file that no tool is named.
fn names_an_image(arg: &std::ffi::OsStr) -> bool {
    let s = arg.to_string_lossy();
    use std::os::unix::fs::FileTypeExt;
    let image =
        std::fs::metadata(arg).is_ok_and(|m| m.is_file() || m.file_type().is_block_device());
    s.starts_with("pmemfs:") || (!TOOLS.contains(&s.as_ref()) && image)
}

fn main() -> ExitCode {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let called = args
        .first()
        .and_then(|a| std::path::Path::new(a).file_name())
        .and_then(|n| n.to_str())
        .unwrap_or("pmemfs")
        .to_string();
    let tool = match called.as_str() {
        "mkfs.pmemfs" => "mkfs".to_string(),
        "fsck.pmemfs" => "fsck".to_string(),
        "pmemfs-mount" | "mount.pmemfs" | "mount.fuse.pmemfs" => "mount".to_string(),
        _ if args.get(1).is_some_and(|a| names_an_image(a)) => "mount".to_string(),
        _ => {
            if args.len() < 2 {
                eprintln!("{USAGE}");
                return ExitCode::from(16);
            }
            // `pmemfs TOOL ARGS`: drop the program name, TOOL leads.
            args.remove(0);
            args[0].to_string_lossy().into_owned()
        }
    };
    let rest = args.into_iter().skip(1);
    if tool != "mount" {
        // As other Unix tools: `pmemfs stat M | head` ends quietly when
        // head does. The daemon keeps Rust's default (ignored): a reader
        // that goes away must not kill it.
        // SAFETY: sets a signal disposition before any thread starts.
        unsafe {
            libc::signal(libc::SIGPIPE, libc::SIG_DFL);
        }
    }
    match tool.as_str() {
        "mkfs" => pmemfs_tools::mkfs::main(rest),
        "fsck" => pmemfs_tools::fsck::main(rest),
        "mount" => pmemfs_tools::mount::main(rest),
        "reflink" => pmemfs_tools::client::reflink(rest),
        "du" => pmemfs_tools::client::du(rest),
        "dedupe" => pmemfs_tools::dedupe::dedupe(rest),
        "stat" => pmemfs_tools::client::stat(rest),
        "install" => pmemfs_tools::install::install(rest),
        "uninstall" => pmemfs_tools::install::uninstall(rest),
        "-h" | "--help" | "help" => {
            println!("{USAGE}");
            ExitCode::SUCCESS
        }
        other => {
            eprintln!("pmemfs: unknown tool {other:?}\n{USAGE}");
            ExitCode::from(16)
        }
    }
}
