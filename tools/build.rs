//! Links the tool names (mkfs.pmemfs, fsck.pmemfs) to the multi-call
//! `pmemfs` binary in the profile directory (target/<profile>/), so that a
//! plain `cargo build` leaves every tool runnable under its own name.
//! Cargo cannot build a binary whose name has a dot; see Cargo.toml.

use std::path::PathBuf;

include!("src/links.rs");

fn main() {
    println!("cargo::rerun-if-changed=build.rs");
    println!("cargo::rerun-if-changed=src/links.rs");
    // OUT_DIR is target/<profile>/build/<pkg>-<hash>/out.
    let Some(out) = std::env::var_os("OUT_DIR").map(PathBuf::from) else {
        return;
    };
    let Some(profile_dir) = out.ancestors().nth(3) else {
        return;
    };
    for name in LINKS {
        let link = profile_dir.join(name);
        if std::fs::read_link(&link).is_ok_and(|t| t == std::path::Path::new("pmemfs")) {
            continue;
        }
        let _ = std::fs::remove_file(&link);
        if let Err(e) = std::os::unix::fs::symlink("pmemfs", &link) {
            println!("cargo::warning=cannot link {}: {e}", link.display());
        }
    }
}
