//! The kernel's writeback cache (`-o writeback_cache`), through a mount:
//! a tree unpacked and removed on such a mount syncs (`sync -f`) without
//! error and leaves a clean image, and a root mount takes a local file
//! system's dirty limits. (The other suites run on such mounts with
//! `PMEMFS_TEST_MOUNT_OPTS=writeback_cache`; see README.)

mod util;

use util::*;

/// Unpacks a tree of a few thousand files (the kernel's headers), syncs,
/// removes it and syncs again: the writeback of pages and times of files
/// the daemon has already dropped once failed `sync -f` with ENOENT.
#[test]
fn a_tree_unpacked_and_removed_syncs_cleanly() {
    let m = Mount::new_shm("wbtree", "512M", "writeback_cache");
    let tar = m.dir().join("tree.tar");
    sh(&format!(
        "tar -C / -cf '{}' usr/include/linux usr/include/asm-generic",
        tar.display()
    ));
    let mnt = m.path().display().to_string();
    sh(&format!(
        "mkdir '{mnt}/a' && tar -C '{mnt}/a' -xf '{}' && sync -f '{mnt}'",
        tar.display()
    ));
    sh(&format!(
        "cd / && tar -cf - usr/include/linux usr/include/asm-generic | tar -C '{mnt}/a' -df - && \
         cp -a '{mnt}/a' '{mnt}/b' && sync -f '{mnt}' && rm -rf '{mnt}/a' && sync -f '{mnt}' && \
         rm -rf '{mnt}/b' && sync -f '{mnt}'"
    ));
    let left = sh(&format!("ls -A '{mnt}'"));
    assert_eq!(left.trim(), "lost+found", "after rm -rf of both trees");
    m.finish();
}

/// A writeback-cache mount by root takes a local file system's dirty
/// limits, not FUSE's strict 1% (tools/src/mount.rs, lift_dirty_limits):
/// otherwise a writer of more than 48 MB waits on writeback page by page.
#[test]
fn writeback_cache_mount_has_a_local_file_systems_dirty_limits() {
    use std::os::unix::fs::MetadataExt;
    let m = Mount::new("wbdirty", "64M", "writeback_cache");
    let dev = std::fs::metadata(m.path()).expect("stat the mount").dev();
    let bdi = std::path::PathBuf::from(format!(
        "/sys/class/bdi/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    let read = |knob: &str| {
        std::fs::read_to_string(bdi.join(knob))
            .unwrap_or_else(|e| panic!("{}: {e}", bdi.join(knob).display()))
            .trim()
            .to_string()
    };
    assert_eq!(
        read("strict_limit"),
        "0",
        "strict_limit of {}",
        bdi.display()
    );
    assert_eq!(read("max_ratio"), "100", "max_ratio of {}", bdi.display());
    m.finish();
}
