//! A local file system to every user (issue 10): a root mount with default
//! options admits other users with the kernel checking mode bits and POSIX
//! ACLs; `nosuid`, `nodev` and `noexec` are honoured; set-gid is cleared
//! when another user writes. Each test works as root and, in forked
//! children, as uid 65534 (nobody) and a second uid.

mod util;

use std::path::Path;

use util::*;

const SIZE: &str = "256M";
/// A second unprivileged user, with a group of its own.
const OTHER: u32 = 1234;

/// Opens the way down to the mount point to every user, whatever the
/// umask the temporary directories were made with.
fn open_path(m: &Mount) {
    sh(&format!(
        "chmod 755 '{}' '{}'",
        m.dir().display(),
        m.path().display()
    ));
}

/// Fails with a message saying what is missing when `tool` is not
/// installed: these tests need it, and skipping quietly would hide that.
fn need(tool: &str, package: &str) {
    let o = sh_output(&format!("command -v {tool}"));
    assert!(
        o.status.success(),
        "this test needs `{tool}` (Debian package `{package}`); .ci/run installs it"
    );
}

#[test]
fn default_root_mount_admits_every_user() {
    let m = Mount::new("users", SIZE, "");
    open_path(&m);
    let opts = sh(&format!("findmnt -no OPTIONS '{}'", m.path().display()));
    assert!(
        opts.contains("allow_other"),
        "a root mount admits everyone: {opts}"
    );
    // What the issue saw: `ls` as nobody was refused on every path.
    let ls = sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups ls -la '{}'",
        m.path().display()
    ));
    assert!(ls.contains("lost+found"), "ls as nobody: {ls}");
    py_args(
        m.path(),
        r#"
        other = int(ARGS[0])
        write(P("secret"), b"secret", 0o600)
        os.chmod(P("secret"), 0o600)
        write(P("public"), b"public", 0o644)
        os.chmod(P("public"), 0o644)
        os.mkdir(P("private"), 0o700)
        os.mkdir(P("open"))
        os.chmod(P("open"), 0o777)
        os.mkdir(P("sticky"))
        os.chmod(P("sticky"), 0o1777)

        def nobody():
            eq(read(P("public")), b"public", "reading a 0644 file")
            expect_errno(errno.EACCES, open, P("secret"), "rb")
            expect_errno(errno.EACCES, open, P("public"), "ab")
            expect_errno(errno.EACCES, os.truncate, P("public"), 0)
            expect_errno(errno.EACCES, os.listdir, P("private"))
            expect_errno(errno.EACCES, open, P("new_in_root"), "wb")
            expect_errno(errno.EACCES, os.unlink, P("public"))
            expect_errno(errno.EACCES, os.rename, P("public"), P("open/moved"))
            expect_errno(errno.EACCES, os.mkdir, P("private/d"))
            expect_errno(errno.EPERM, os.chmod, P("public"), 0o666)
            expect_errno(errno.EPERM, os.chown, P("public"), 65534, 65534)
            # Where the mode lets it, it creates, writes, renames, chmods.
            write(P("open/mine"), b"mine", 0o644)
            os.chmod(P("open/mine"), 0o644)
            st = os.stat(P("open/mine"))
            eq((st.st_uid, st.st_gid), (65534, 65534), "owner of nobody's file")
            os.rename(P("open/mine"), P("open/mine2"))
            eq(read(P("open/mine2")), b"mine", "after rename")
            write(P("sticky/nobodys"), b"n", 0o666)
            os.chmod(P("sticky/nobodys"), 0o666)

        def second():
            eq(read(P("open/mine2")), b"mine", "another user's 0644 file")
            expect_errno(errno.EACCES, open, P("open/mine2"), "ab")
            expect_errno(errno.EPERM, os.chmod, P("open/mine2"), 0o600)
            # The sticky bit: a writable file in a 1777 directory, but not
            # ours to remove or rename (EPERM, as POSIX specifies).
            with open(P("sticky/nobodys"), "ab") as f:
                f.write(b"2")
            expect_errno(errno.EPERM, os.unlink, P("sticky/nobodys"))
            expect_errno(errno.EPERM, os.rename, P("sticky/nobodys"), P("sticky/x"))
            # A name of its own in the open directory it may unlink.
            write(P("open/second"), b"s")
            os.unlink(P("open/second"))
            # Unlinking a file of another user in a writable directory
            # without the sticky bit is allowed.
            os.unlink(P("open/mine2"))

        as_user(65534, 65534, nobody)
        as_user(other, other, second)
        eq(read(P("secret")), b"secret", "root still reads the 0600 file")
        eq(read(P("sticky/nobodys")), b"n2", "the sticky file")
        eq(sorted(os.listdir(P("open"))), [], "the open directory")
        "#,
        &[&OTHER.to_string()],
    );
    m.finish();
}

#[test]
fn noallow_other_keeps_a_mount_private() {
    let m = Mount::new("private", SIZE, "noallow_other");
    open_path(&m);
    let o = sh_output(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups ls '{}'",
        m.path().display()
    ));
    assert!(
        !o.status.success(),
        "noallow_other admitted nobody: {}",
        both(&o)
    );
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("Permission denied"),
        "{}",
        both(&o)
    );
    m.finish();
}

#[test]
fn acls_grant_inherit_and_survive() {
    need("setfacl", "acl");
    let mut m = Mount::new("acl", SIZE, "");
    open_path(&m);
    let d = m.path().display().to_string();
    // An entry for nobody lets it write a 0600 root file; before it, no.
    sh(&format!("printf root > '{d}/f' && chmod 600 '{d}/f'"));
    let as_nobody = |cmd: &str| {
        sh_output(&format!(
            "setpriv --reuid=65534 --regid=65534 --clear-groups sh -c '{cmd}'"
        ))
    };
    assert!(!as_nobody(&format!("echo x >> {d}/f")).status.success());
    sh(&format!("setfacl -m u:65534:rw '{d}/f'"));
    let o = as_nobody(&format!("echo nobody >> {d}/f"));
    assert!(
        o.status.success(),
        "u:65534:rw did not let nobody write: {}",
        both(&o)
    );
    assert_eq!(sh(&format!("cat '{d}/f'")), "rootnobody\n");
    // The mode shows the mask, and a chmod changes the mask.
    assert_eq!(sh(&format!("stat -c %a '{d}/f'")).trim(), "660");
    sh(&format!("chmod 640 '{d}/f'"));
    let acl = sh(&format!("getfacl -cpn '{d}/f'"));
    assert!(
        acl.contains("user:65534:rw-") && acl.contains("mask::r--"),
        "{acl}"
    );
    assert!(!as_nobody(&format!("echo y >> {d}/f")).status.success());
    // A default ACL is inherited by a new file and a new subdirectory.
    sh(&format!(
        "mkdir '{d}/dir' && setfacl -d -m u:65534:rwx,g::rx,o::- '{d}/dir' && touch '{d}/dir/new' && mkdir '{d}/dir/sub'"
    ));
    let new = sh(&format!("getfacl -cpn '{d}/dir/new'"));
    assert!(new.contains("user:65534:rwx"), "a new file inherits: {new}");
    let sub = sh(&format!("getfacl -cpn '{d}/dir/sub'"));
    assert!(
        sub.contains("user:65534:rwx") && sub.contains("default:user:65534:rwx"),
        "a new directory inherits both: {sub}"
    );
    let o = as_nobody(&format!("echo z > {d}/dir/sub/by-nobody"));
    assert!(
        o.status.success(),
        "the inherited entry lets nobody create: {}",
        both(&o)
    );
    // Without a default ACL the umask applies as before.
    sh(&format!(
        "umask 027 && mkdir '{d}/plain' && touch '{d}/plain/x'"
    ));
    assert_eq!(sh(&format!("stat -c %a '{d}/plain/x'")).trim(), "640");
    // getfacl -R survives cp -a, setfacl --restore, and a remount.
    let dump = |root: &str| {
        sh(&format!(
            "cd '{root}' && getfacl -Rpn . | grep -v '^# owner\\|^# group'"
        ))
    };
    sh(&format!("cp -a '{d}/dir' '{d}/copy'"));
    assert_eq!(
        sh(&format!(
            "cd '{d}' && getfacl -Rpn dir | sed 's,^# file: dir,# file: copy,'"
        )),
        sh(&format!("cd '{d}' && getfacl -Rpn copy")),
        "cp -a keeps the ACLs"
    );
    let before = dump(&d);
    let saved = m.dir().join("acls");
    sh(&format!(
        "cd '{d}' && getfacl -Rpn . > '{}'",
        saved.display()
    ));
    sh(&format!("cd '{d}' && setfacl -R -b -k ."));
    let stripped = dump(&d);
    assert!(
        !stripped.contains("65534"),
        "setfacl -b -k left entries: {stripped}"
    );
    sh(&format!(
        "cd '{d}' && setfacl --restore='{}'",
        saved.display()
    ));
    assert_eq!(dump(&d), before, "setfacl --restore");
    m.remount();
    let after = dump(&m.path().display().to_string());
    assert_eq!(after, before, "ACLs after a remount");
    assert!(after.contains("user:65534:rw-"), "{after}");
    // -o noacl: ACLs are refused, and the mode bits rule.
    m.remount_with("noacl");
    let o = sh_output(&format!("setfacl -m u:65534:rw '{}/f'", m.path().display()));
    assert!(
        !o.status.success(),
        "setfacl on a noacl mount: {}",
        both(&o)
    );
    m.finish();
}

/// Runs `exe` as nobody and returns what `id -u` (the effective uid) says.
fn euid_of(exe: &Path) -> String {
    sh(&format!(
        "setpriv --reuid=65534 --regid=65534 --clear-groups '{}' -u",
        exe.display()
    ))
    .trim()
    .to_string()
}

#[test]
fn nosuid_nodev_noexec_are_honoured() {
    let mut m = Mount::new("flags", SIZE, "");
    open_path(&m);
    let id = m.p("id");
    sh(&format!(
        "cp /usr/bin/id '{0}' && chown root:root '{0}' && chmod 4755 '{0}' && mknod '{1}' c 1 3 && chmod 666 '{1}'",
        id.display(),
        m.p("null").display()
    ));
    // By default, as a kernel file system: set-uid works, devices open.
    assert_eq!(euid_of(&id), "0", "a set-uid-root id on a default mount");
    sh(&format!("head -c 1 '{}' | wc -c", m.p("null").display()));
    m.remount_with("nosuid,nodev,noexec");
    let opts = sh(&format!("findmnt -no VFS-OPTIONS '{}'", m.path().display()));
    assert!(
        opts.contains("nosuid") && opts.contains("nodev") && opts.contains("noexec"),
        "{opts}"
    );
    py_args(
        m.path(),
        r#"
        expect_errno(errno.EACCES, os.open, P("null"), os.O_RDONLY)
        expect_errno(errno.EACCES, os.execv, P("id"), [P("id")])
        "#,
        &[],
    );
    // nosuid alone: the set-uid bit is ignored on exec.
    m.remount_with("nosuid");
    assert_eq!(euid_of(&id), "65534", "nosuid: the set-uid bit is ignored");
    // And a remount through the mount helper changes the flags in place.
    let src = format!("pmemfs:{}", m.image().canonicalize().unwrap().display());
    let mut c = tool("pmemfs");
    c.arg(&src).arg(m.path()).args(["-o", "remount,rw,noexec"]);
    let o = run(c);
    assert!(o.status.success(), "remount,noexec: {}", both(&o));
    let opts = sh(&format!("findmnt -no VFS-OPTIONS '{}'", m.path().display()));
    assert!(
        opts.contains("noexec") && !opts.contains("nosuid"),
        "{opts}"
    );
    m.finish();
}

#[test]
fn writes_and_chown_by_others_clear_set_id_bits() {
    let m = Mount::new("sgid", SIZE, "");
    open_path(&m);
    py_args(
        m.path(),
        r#"
        other = int(ARGS[0])
        write(P("g"), b"group file")
        os.chown(P("g"), 0, other)
        os.chmod(P("g"), 0o2775)
        eq(stat.S_IMODE(os.stat(P("g")).st_mode), 0o2775, "set-gid set by root")
        def writer():
            with open(P("g"), "ab") as f:
                f.write(b" and more")
        # nobody, a member of the file's group, writes to it.
        as_user(65534, 65534, writer, groups=[other])
        eq(stat.S_IMODE(os.stat(P("g")).st_mode), 0o775, "set-gid after another user's write")
        eq(read(P("g")), b"group file and more", "contents")
        # A truncate by another user clears it too; root's own writes do not.
        os.chmod(P("g"), 0o2775)
        as_user(65534, 65534, lambda: os.truncate(P("g"), 3), groups=[other])
        eq(stat.S_IMODE(os.stat(P("g")).st_mode), 0o775, "set-gid after another user's truncate")
        os.chmod(P("g"), 0o2775)
        with open(P("g"), "ab") as f:
            f.write(b"!")
        eq(stat.S_IMODE(os.stat(P("g")).st_mode), 0o2775, "root's write keeps set-gid")
        # A write drops file capabilities, whoever writes (the kernel no
        # longer asks for them before each write: the daemon does it).
        # struct vfs_cap_data, revision 2, effective: cap_net_bind_service.
        caps = b"".join(x.to_bytes(4, "little") for x in (0x02000001, 1 << 10, 0, 0, 0))
        os.setxattr(P("g"), "security.capability", caps)
        eq(os.getxattr(P("g"), "security.capability"), caps, "capabilities set")
        with open(P("g"), "ab") as f:
            f.write(b"?")
        expect_errno(errno.ENODATA, os.getxattr, P("g"), "security.capability")
        # A chown (chgrp) by a non-root owner clears set-uid and set-gid.
        os.mkdir(P("open"))
        os.chmod(P("open"), 0o777)
        def chgrp():
            write(P("open/mine"), b"exit 0")
            os.chmod(P("open/mine"), 0o6755)
            eq(stat.S_IMODE(os.stat(P("open/mine")).st_mode), 0o6755, "set by the owner")
            os.chown(P("open/mine"), -1, other)
            eq(stat.S_IMODE(os.stat(P("open/mine")).st_mode), 0o755, "after chgrp by the owner")
        as_user(65534, 65534, chgrp, groups=[other])
        "#,
        &[&OTHER.to_string()],
    );
    m.finish();
}
