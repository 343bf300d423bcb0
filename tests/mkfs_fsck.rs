//! mkfs.pmemfs and fsck.pmemfs from the command line, as a user runs them.

mod util;

use std::io::Read;

use pmemfs_ondisk::{Access, Image};
use util::*;

fn mkfs(args: &[&str]) -> (i32, String) {
    let mut c = tool("mkfs.pmemfs");
    c.args(args);
    let o = run(c);
    (code(&o), stdout(&o) + &String::from_utf8_lossy(&o.stderr))
}

/// Whether two files hold the same bytes.
fn same_bytes(a: &std::path::Path, b: &std::path::Path) -> bool {
    let (mut fa, mut fb) = (
        std::fs::File::open(a).unwrap(),
        std::fs::File::open(b).unwrap(),
    );
    let (mut ba, mut bb) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    loop {
        let n = fa.read(&mut ba).unwrap();
        let m = fb.read(&mut bb[..n.max(1)]).unwrap();
        if n != m || ba[..n] != bb[..m] {
            return false;
        }
        if n == 0 {
            return true;
        }
    }
}

#[test]
fn mkfs_then_fsck_is_clean() {
    let d = TempDir::new("mkfs");
    let img = d.join("img");
    let (c, out) = mkfs(&["-s", "1G", img.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("persistence:"),
        "mkfs says which persistence domain is in use:\n{out}"
    );
    assert_eq!(std::fs::metadata(&img).unwrap().len(), 1 << 30);
    let (c, out) = fsck("-n", &img);
    assert_eq!(c, 0, "{out}");
    // A reader that stops early ends the tool as it would `ls`: quietly.
    let o = sh_output(&format!(
        "'{}' fsck -n -v '{}' | head -c 1 >/dev/null; sleep 0.1",
        env!("CARGO_BIN_EXE_pmemfs"),
        img.display()
    ));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!err.contains("panicked"), "fsck into a closed pipe: {err}");
}

#[test]
fn mkfs_refuses_to_overwrite_without_force() {
    let d = TempDir::new("mkfs-again");
    let img = d.join("img");
    assert_eq!(
        mkfs(&["-s", "1G", "-L", "first", img.to_str().unwrap()]).0,
        0
    );
    let before = d.join("before");
    let cp = std::process::Command::new("cp")
        .arg("--sparse=always")
        .arg(&img)
        .arg(&before)
        .status()
        .unwrap();
    assert!(cp.success());
    let (c, out) = mkfs(&["-s", "1G", img.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(
        out.contains("already holds a pmemfs") && out.contains("-f"),
        "{out}"
    );
    assert!(
        same_bytes(&img, &before),
        "the image is byte-for-byte unchanged"
    );
    // -f overwrites, with the label and UUID asked for.
    let (c, out) = mkfs(&[
        "-f",
        "-L",
        "second",
        "-U",
        "01234567-89ab-cdef-0123-456789abcdef",
        img.to_str().unwrap(),
    ]);
    assert_eq!(c, 0, "{out}");
    let i = Image::open(&img, Access::ReadOnly).unwrap();
    assert_eq!(i.superblock().label, "second");
    assert_eq!(
        i.superblock().uuid_string(),
        "01234567-89ab-cdef-0123-456789abcdef"
    );
}

#[test]
fn mkfs_refuses_small_sizes_and_bad_arguments() {
    let d = TempDir::new("mkfs-small");
    let img = d.join("img");
    let (c, out) = mkfs(&["-s", "8M", img.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(out.contains("minimum image size is 16.0 MiB"), "{out}");
    assert!(!img.exists(), "nothing was created");
    let (c, out) = mkfs(&[img.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(out.contains("-s SIZE"), "{out}");
    assert_eq!(mkfs(&["-s", "1Q", img.to_str().unwrap()]).0, 16);
    assert_eq!(
        mkfs(&["-L", &"x".repeat(64), "-s", "1G", img.to_str().unwrap()]).0,
        16
    );
    assert_eq!(
        mkfs(&["-U", "not-a-uuid", "-s", "1G", img.to_str().unwrap()]).0,
        16
    );
}

#[test]
fn mkfs_dry_run_writes_nothing() {
    let d = TempDir::new("mkfs-n");
    let img = d.join("img");
    let (c, out) = mkfs(&["-n", "-s", "16G", img.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}");
    assert!(
        out.contains("4194304 pages") && out.contains("journal"),
        "{out}"
    );
    assert!(!img.exists());
}

#[test]
fn locked_images_are_refused() {
    let d = TempDir::new("locked");
    let img = d.join("img");
    assert_eq!(mkfs(&["-s", "64M", img.to_str().unwrap()]).0, 0);
    let open = Image::open(&img, Access::ReadWrite).unwrap();
    let (c, out) = mkfs(&["-f", img.to_str().unwrap()]);
    assert_ne!(c, 0);
    assert!(out.contains("in use"), "{out}");
    let (c, out) = fsck("-y", &img);
    assert_eq!(c, 8, "{out}");
    assert!(out.contains("in use"), "{out}");
    let (c, out) = fsck("-p", &img);
    assert_eq!(c, 8, "{out}");
    // A read-only check still runs, with a warning.
    let (c, out) = fsck("-n", &img);
    assert_eq!(c, 0, "{out}");
    assert!(out.contains("warning"), "{out}");
    drop(open);
    assert_eq!(fsck("-y", &img).0, 0);
}

#[test]
fn fsck_usage_and_operational_errors() {
    let d = TempDir::new("fsck-usage");
    let mut c = tool("fsck.pmemfs");
    c.arg("-n").arg("-y").arg("x");
    assert_eq!(code(&run(c)), 16);
    assert_eq!(code(&run(tool("fsck.pmemfs"))), 16);
    let (c, out) = fsck("-n", &d.join("missing"));
    assert_eq!(c, 8, "{out}");
    let junk = d.join("junk");
    std::fs::write(&junk, vec![7u8; 1 << 20]).unwrap();
    let (c, out) = fsck("-n", &junk);
    assert_eq!(c, 8, "{out}");
    assert!(out.contains("not a pmemfs image"), "{out}");
}

#[test]
fn preen_skips_a_clean_image_unless_forced() {
    let d = TempDir::new("preen-clean");
    let img = d.join("img");
    assert_eq!(mkfs(&["-q", "-s", "32M", img.to_str().unwrap()]).0, 0);
    let (c, out) = fsck("-p", &img);
    assert_eq!((c, out.trim_end().ends_with("clean")), (0, true), "{out}");
    let mut cmd = tool("fsck.pmemfs");
    cmd.args(["-p", "-f", "-v"]).arg(&img);
    let o = run(cmd);
    assert_eq!(code(&o), 0);
    assert!(stdout(&o).contains("pass 5"), "{}", stdout(&o));
}

/// An image of the format before this one (version 1, whose records were
/// serde's field order) is refused by fsck (exit 8, nothing changed) and
/// by mount, each saying that it needs a new image from mkfs.
#[test]
fn an_image_of_an_older_format_needs_mkfs() {
    use std::os::unix::fs::FileExt;
    let d = TempDir::new("oldformat");
    let img = d.join("img");
    let (c, out) = mkfs(&["-q", "-s", "64M", img.to_str().unwrap()]);
    assert_eq!(c, 0, "{out}");
    // Both superblock copies say version 1 (bytes 8..12), checksums right.
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .open(&img)
        .unwrap();
    for copy in 0..2u64 {
        let mut sb = [0u8; 256];
        f.read_exact_at(&mut sb, copy * 4096).unwrap();
        sb[8..12].copy_from_slice(&1u32.to_le_bytes());
        let crc = crc32fast::hash(&sb[..252]);
        sb[252..].copy_from_slice(&crc.to_le_bytes());
        f.write_all_at(&sb, copy * 4096).unwrap();
    }
    drop(f);
    let kept = d.join("kept");
    std::fs::copy(&img, &kept).unwrap();
    for flag in ["-n", "-y", "-p"] {
        let (c, out) = fsck(flag, &img);
        assert_eq!(c, 8, "fsck {flag} of a version-1 image: {out}");
        assert!(
            out.contains("format version 1") && out.contains("mkfs.pmemfs"),
            "fsck {flag} should say the image is of version 1 and needs mkfs: {out}"
        );
    }
    assert!(same_bytes(&img, &kept), "fsck changed a version-1 image");
    let mnt = d.join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let mut m = tool("pmemfs-mount");
    m.arg(&img).arg(&mnt);
    let o = run(m);
    let said = both(&o);
    assert!(!o.status.success(), "a version-1 image mounted: {said}");
    assert!(
        said.contains("format version 1") && said.contains("mkfs.pmemfs") && !said.contains("fsck"),
        "mount should send the user to mkfs, not fsck: {said}"
    );
    assert!(same_bytes(&img, &kept), "mount changed a version-1 image");
}
