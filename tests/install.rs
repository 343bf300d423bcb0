//! Installed like any file system (issue 10): the README's install command,
//! then `mount -t pmemfs IMG DIR`, `mount -t fuse.pmemfs IMG DIR`, an
//! fstab line with a plain image path (`mount DIR`), `mount -o
//! remount,ro DIR`, and `umount DIR && fsck.pmemfs -n IMG` with no
//! warning, at once, every time. Changes the machine (/usr/sbin,
//! /etc/fstab) and puts it back; one test, so nothing else runs beside it
//! in this binary.

mod util;

use std::path::Path;

use util::*;

/// The fstab line this test adds, removed again however the test ends.
struct FstabLine(String);

impl FstabLine {
    fn add(line: String) -> FstabLine {
        let mut tab = std::fs::read_to_string("/etc/fstab").unwrap_or_default();
        if !tab.is_empty() && !tab.ends_with('\n') {
            tab.push('\n');
        }
        tab.push_str(&line);
        tab.push('\n');
        std::fs::write("/etc/fstab", tab).expect("this test needs to write /etc/fstab (as root)");
        FstabLine(line)
    }
}

impl Drop for FstabLine {
    fn drop(&mut self) {
        if let Ok(tab) = std::fs::read_to_string("/etc/fstab") {
            let kept: String = tab
                .lines()
                .filter(|l| *l != self.0)
                .map(|l| format!("{l}\n"))
                .collect();
            let _ = std::fs::write("/etc/fstab", kept);
        }
    }
}

/// Uninstalls when the test ends, unless pmemfs was installed before it.
struct Installed {
    was_there: bool,
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.was_there {
            let mut c = tool("pmemfs");
            c.arg("uninstall");
            let _ = run(c);
        }
    }
}

fn umount_then_fsck(mnt: &Path, image: &Path) {
    let out = sh(&format!(
        "umount '{}' && fsck.pmemfs -n '{}' 2>&1",
        mnt.display(),
        image.display()
    ));
    assert!(
        !out.contains("warning") && out.contains("clean"),
        "umount && fsck.pmemfs -n: {out}"
    );
}

#[test]
fn install_then_mount_fstab_remount_umount_fsck() {
    let was_there = Path::new("/usr/sbin/pmemfs").exists() || Path::new("/sbin/pmemfs").exists();
    // The README's install command.
    let mut c = tool("pmemfs");
    c.arg("install");
    let o = run(c);
    let _installed = Installed { was_there };
    assert!(o.status.success(), "pmemfs install: {}", both(&o));
    for helper in [
        "mount.pmemfs",
        "mount.fuse.pmemfs",
        "fsck.pmemfs",
        "mkfs.pmemfs",
    ] {
        let found = sh(&format!("PATH=/sbin:/usr/sbin command -v {helper} || true"));
        assert!(
            !found.trim().is_empty(),
            "{helper} is not where mount(8) looks"
        );
    }
    let d = TempDir::new("install");
    let (image, mnt) = (d.join("img"), d.join("mnt"));
    std::fs::create_dir(&mnt).unwrap();
    let (i, m) = (image.display(), mnt.display());
    sh(&format!("mkfs.pmemfs -q -s 128M '{i}'"));
    // Several rounds: the race between umount and the daemon's final
    // checkpoint is what the fsck must never see.
    for round in 0..3 {
        sh(&format!(
            "mount -t pmemfs '{i}' '{m}' && echo {round} > '{m}/f{round}'"
        ));
        assert!(is_mount_point(&mnt));
        umount_then_fsck(&mnt, &image);
        sh(&format!(
            "mount -t fuse.pmemfs '{i}' '{m}' && cat '{m}/f{round}'"
        ));
        umount_then_fsck(&mnt, &image);
    }
    // An fstab line with a plain image path, then remount ro and rw.
    let _line = FstabLine::add(format!("{i} {m} fuse.pmemfs defaults,nodev 0 0"));
    sh(&format!("mount '{m}'"));
    let opts = sh(&format!("findmnt -no VFS-OPTIONS '{m}'"));
    assert!(opts.contains("nodev") && opts.contains("rw"), "{opts}");
    sh(&format!("mount -o remount,ro '{m}'"));
    let o = sh_output(&format!("touch '{m}/ro'"));
    assert!(
        !o.status.success(),
        "a write after remount,ro: {}",
        both(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Read-only"),
        "{}",
        both(&o)
    );
    sh(&format!("mount -o remount,rw '{m}' && touch '{m}/rw'"));
    umount_then_fsck(&mnt, &image);
    // A second mount right after umount finds the image free too.
    sh(&format!(
        "mount '{m}' && umount '{m}' && mount '{m}' && test -e '{m}/rw'"
    ));
    umount_then_fsck(&mnt, &image);
}
