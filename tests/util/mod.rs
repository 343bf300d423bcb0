//! Helpers shared by the end-to-end tests: temporary directories, running
//! the tools by their installed names, and building images through the
//! ondisk API.
#![allow(dead_code)]

use std::fs::File;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use pmemfs_ondisk::superblock;
use pmemfs_ondisk::{
    Access, Attr, Body, FormatOptions, Image, Ino, Kind, Meta, NewBody, Op, Pmem, Time, PAGE_SIZE,
    ROOT_INO,
};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        TempDir::new_in(&std::env::temp_dir(), tag)
    }

    /// A temporary directory under `base` (/dev/shm, say).
    pub fn new_in(base: &Path, tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = base.join(format!(
            "pmemfs-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("temp dir");
        TempDir(p)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A tool (`mkfs.pmemfs`, `fsck.pmemfs`) called by its own name, as the
/// links from build.rs or an installation would call it.
pub fn tool(name: &str) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_pmemfs"));
    c.arg0(name);
    c
}

/// Runs a command to completion, killing it (and failing the test) past
/// `limit`: a hang is a bug like any other.
pub fn run_with_limit(mut cmd: Command, limit: Duration) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn tool");
    let start = Instant::now();
    loop {
        match child.try_wait().expect("wait") {
            Some(_) => return child.wait_with_output().expect("output"),
            None if start.elapsed() > limit => {
                let _ = child.kill();
                let out = child.wait_with_output().expect("output");
                panic!(
                    "{cmd:?} hung for {limit:?}; stdout:\n{}",
                    String::from_utf8_lossy(&out.stdout)
                );
            }
            None => std::thread::sleep(Duration::from_millis(2)),
        }
    }
}

pub fn run(cmd: Command) -> Output {
    run_with_limit(cmd, Duration::from_secs(60))
}

/// Exit code, or a panic message when a signal ended the process.
pub fn code(o: &Output) -> i32 {
    o.status
        .code()
        .unwrap_or_else(|| panic!("killed by a signal: {:?}", o.status))
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `fsck.pmemfs FLAG IMAGE`: (exit code, stdout).
pub fn fsck(flag: &str, image: &Path) -> (i32, String) {
    let mut c = tool("fsck.pmemfs");
    c.arg(flag).arg(image);
    let o = run(c);
    (code(&o), stdout(&o) + &String::from_utf8_lossy(&o.stderr))
}

/// Formats a new image file of `size` bytes through the ondisk API.
pub fn format_image(path: &Path, size: u64) {
    let f = File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .expect("create image");
    f.set_len(size).expect("size image");
    pmemfs_ondisk::lock::lock_exclusive(&f).expect("lock");
    let opts = FormatOptions::fixed("test");
    pmemfs_ondisk::format(&f, &opts).expect("format");
}

/// Builds files in an open image the way the file system will: create,
/// link, then allocate, write, flush and map data pages.
pub struct Builder {
    pub image: Image,
}

impl Builder {
    pub fn open(path: &Path) -> Builder {
        Builder {
            image: Image::open(path, Access::ReadWrite).expect("open image"),
        }
    }

    pub fn mkdir(&mut self, parent: Ino, name: &str) -> Ino {
        let ino = self.image.next_ino();
        let mut pattr = *self.image.attr(parent).expect("parent");
        pattr.nlink += 1;
        self.image
            .commit(&[
                Op::Create {
                    ino,
                    attr: Attr::new(Kind::Dir, 0o755, 0, 0, Time::default()),
                    body: NewBody::Dir { parent },
                },
                Op::Link {
                    dir: parent,
                    name: name.into(),
                    ino,
                },
                Op::SetAttr {
                    ino: parent,
                    attr: pattr,
                },
            ])
            .expect("mkdir");
        ino
    }

    /// A file of `pages` pages, page i filled with byte `seed + i`.
    pub fn file(&mut self, parent: Ino, name: &str, pages: u64, seed: u8) -> Ino {
        let ino = self.image.next_ino();
        let mut attr = Attr::new(Kind::File, 0o644, 0, 0, Time::default());
        attr.size = pages * PAGE_SIZE;
        self.image
            .commit(&[
                Op::Create {
                    ino,
                    attr,
                    body: NewBody::File,
                },
                Op::Link {
                    dir: parent,
                    name: name.into(),
                    ino,
                },
            ])
            .expect("create");
        let mut index = 0;
        while index < pages {
            let r = self.image.alloc(pages - index).expect("alloc");
            for i in 0..r.len {
                let fill = seed.wrapping_add((index + i) as u8);
                self.image
                    .pmem()
                    .write((r.start + i) * PAGE_SIZE, &[fill; PAGE_SIZE as usize])
                    .expect("write");
            }
            self.image
                .pmem()
                .persist(r.start * PAGE_SIZE, r.len * PAGE_SIZE)
                .expect("persist");
            self.image
                .commit(&[Op::Map {
                    ino,
                    index,
                    pfn: r.start,
                    len: r.len,
                }])
                .expect("map");
            index += r.len;
        }
        ino
    }

    /// A file of `pages` pages that lie in no order: page i (filled with
    /// byte `seed + i`) at a pfn below page i - 1's, so that every page is
    /// a run of its own and the page map is a tree on the media.
    pub fn fragmented(&mut self, parent: Ino, name: &str, pages: u64, seed: u8) -> Ino {
        let ino = self.file(parent, name, 0, seed);
        let mut attr = *self.image.attr(ino).expect("the file");
        attr.size = pages * PAGE_SIZE;
        let r = self.image.alloc(pages).expect("alloc");
        assert_eq!(r.len, pages, "one run to scatter");
        let mut ops = vec![Op::SetAttr { ino, attr }];
        for i in 0..pages {
            let pfn = r.start + pages - 1 - i;
            let fill = seed.wrapping_add(i as u8);
            self.image
                .pmem()
                .write(pfn * PAGE_SIZE, &[fill; PAGE_SIZE as usize])
                .expect("write");
            ops.push(Op::Map {
                ino,
                index: i,
                pfn,
                len: 1,
            });
        }
        self.image
            .pmem()
            .persist(r.start * PAGE_SIZE, pages * PAGE_SIZE)
            .expect("persist");
        self.image.commit(&ops).expect("map");
        ino
    }

    /// A reflink copy of `src` named `name` in the root.
    pub fn clone_file(&mut self, src: Ino, name: &str) -> Ino {
        let attr = *self.image.attr(src).expect("src");
        let pages = attr.size.div_ceil(PAGE_SIZE);
        let ino = self.image.next_ino();
        self.image
            .commit(&[
                Op::Create {
                    ino,
                    attr: Attr { nlink: 1, ..attr },
                    body: NewBody::File,
                },
                Op::Link {
                    dir: ROOT_INO,
                    name: name.into(),
                    ino,
                },
                Op::Clone {
                    src,
                    src_index: 0,
                    dst: ino,
                    dst_index: 0,
                    len: pages,
                },
            ])
            .expect("clone");
        ino
    }
}

/// A closed image mapped for writing, locked: its superblock and its
/// checkpoint as read, for tests that damage what they find.
fn open_closed(
    path: &Path,
) -> (
    File,
    Pmem,
    superblock::Superblock,
    pmemfs_ondisk::checkpoint::Loaded,
) {
    let img = Image::open(path, Access::ReadWrite).expect("open");
    img.close().expect("close");
    let file = File::options()
        .read(true)
        .write(true)
        .open(path)
        .expect("open");
    pmemfs_ondisk::lock::lock_exclusive(&file).expect("lock");
    let pmem = Pmem::map(&file, true).expect("map");
    let sb = superblock::choose(&superblock::read_copies(&pmem))
        .expect("superblock")
        .clone();
    let ck =
        pmemfs_ondisk::checkpoint::read(&pmem, &sb.geometry, &sb.checkpoint).expect("checkpoint");
    (file, pmem, sb, ck)
}

/// Rewrites the image's metadata after `damage` changed it, as a valid
/// checkpoint: logical damage that checksums cannot catch.
pub fn damage_meta(path: &Path, damage: impl FnOnce(&mut Meta)) {
    damage_dirs(path, |m, _| damage(m));
}

/// Every directory's entries, by directory, as a test damages them.
pub type Entries = std::collections::BTreeMap<Ino, std::collections::BTreeMap<Vec<u8>, Ino>>;

/// [`damage_meta`], with the directories' entries (read from their trees)
/// to damage too: a directory whose entries changed gets a tree of them.
pub fn damage_dirs(path: &Path, damage: impl FnOnce(&mut Meta, &mut Entries)) {
    let (file, pmem, sb, ck) = open_closed(path);
    let mut meta = ck.meta;
    let mut over = pmemfs_ondisk::overlay::Overlay::default();
    over.apply(&pmem, &ck.patches).expect("patches");
    let mut entries: Entries = {
        let view = over.view(&pmem);
        meta.inodes
            .iter()
            .filter_map(|(&ino, i)| {
                let e = i.dir()?.list(&view).expect("entries");
                Some((ino, e.into_iter().collect()))
            })
            .collect()
    };
    let before = entries.clone();
    damage(&mut meta, &mut entries);
    let mut rebuild = pmemfs_ondisk::image::Rebuild::default();
    for (ino, e) in entries {
        if before.get(&ino) == Some(&e) {
            continue;
        }
        if let Some(Body::Dir(d)) = meta.inodes.get_mut(&ino).map(|i| &mut i.body) {
            *d = pmemfs_ondisk::Dir::new(ino, d.parent);
            rebuild.dirs.insert(ino, e.into_iter().collect());
        }
    }
    let journal = sb.journal;
    Image::from_parts(Some(file), pmem, sb, meta, ck.pfns, journal, over, rebuild)
        .expect("assemble")
        .close()
        .expect("write damaged checkpoint");
}

/// Changes the share tree of a closed image in place with `damage`, past
/// every check but fsck's: counts that disagree with the page maps.
/// `damage` may not need new nodes (the tree gets no free pages).
pub fn damage_shares(
    path: &Path,
    damage: impl FnOnce(&mut pmemfs_ondisk::shares::ShareTree, &mut pmemfs_ondisk::overlay::Txn),
) {
    let (_file, pmem, sb, ck) = open_closed(path);
    let mut tree = pmemfs_ondisk::shares::ShareTree::new(ck.meta.share_root);
    let (mut free, mut free_pages) = (pmemfs_ondisk::RangeMap::new(), 0);
    let mut txn = pmemfs_ondisk::overlay::Txn::new(&pmem, &mut free, &mut free_pages, &sb.geometry);
    damage(&mut tree, &mut txn);
    assert_eq!(tree.root(), ck.meta.share_root, "the damage moved the root");
    let patches = txn.over.patches(&pmem).expect("patches");
    pmemfs_ondisk::overlay::Overlay::store(&pmem, &patches).expect("store");
    pmem.fence().expect("fence");
}

/// The root of file `ino`'s page-map tree (0: its map is inline).
pub fn map_root(img: &Image, ino: Ino) -> u64 {
    let map = img.meta().get(ino).and_then(|i| i.pages());
    map.expect("a file").parts().root
}

/// The contents of page `index` of file `ino`, read straight from the image.
pub fn page_of(img: &Image, ino: Ino, index: u64) -> Option<Vec<u8>> {
    let pfn = img.file_map(ino)?.get(index).expect("page map")?;
    Some(img.pmem().bytes(pfn * PAGE_SIZE, PAGE_SIZE).ok()?.to_vec())
}

// ---------------------------------------------------------------------------
// Mounted file systems, for the end-to-end tests through FUSE.

/// Runs a command to completion and returns its output, reading stdout and
/// stderr while it runs (so a chatty command cannot fill a pipe and hang);
/// kills it and fails the test past `limit`.
pub fn run_captured(mut cmd: Command, limit: Duration) -> Output {
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(child.wait_with_output());
    });
    match rx.recv_timeout(limit) {
        Ok(o) => o.expect("wait for command"),
        Err(_) => {
            // SAFETY: signalling our own child, which has not been reaped
            // (the waiting thread is still blocked on it).
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
            panic!("{cmd:?} hung for {limit:?}");
        }
    }
}

/// stdout and stderr of `o`, for failure messages.
pub fn both(o: &Output) -> String {
    format!(
        "status {:?}\n--- stdout:\n{}--- stderr:\n{}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// Runs a shell script (`sh -e -c`), failing the test unless it succeeds;
/// returns its stdout.
pub fn sh(script: &str) -> String {
    let o = sh_output(script);
    assert!(o.status.success(), "sh -c {script:?} failed: {}", both(&o));
    stdout(&o)
}

/// Runs a shell script (`sh -e -c`) and returns its output, whatever the
/// exit status.
pub fn sh_output(script: &str) -> Output {
    let mut c = Command::new("sh");
    c.arg("-e").arg("-c").arg(script);
    run_captured(c, Duration::from_secs(60))
}

/// The Python helpers every [`py`] snippet starts with.
pub const PY_PRELUDE: &str = include_str!("../e2e/prelude.py");

/// The `python3` interpreter itself, looked up once: a version manager's
/// shim in PATH can cost more than the snippet it runs.
pub fn python3() -> &'static Path {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let o = Command::new("python3")
            .args(["-c", "import sys; print(sys.executable)"])
            .output()
            .unwrap_or_else(|e| panic!("the mount tests need python3: {e}"));
        let exe = PathBuf::from(String::from_utf8_lossy(&o.stdout).trim());
        if o.status.success() && exe.is_file() {
            exe
        } else {
            PathBuf::from("python3")
        }
    })
}

/// Runs a Python snippet after [`PY_PRELUDE`], with `M` the mount point
/// `mnt` and `ARGS` the extra arguments, failing the test (with the
/// traceback) unless it exits 0; returns its stdout.
pub fn py_args(mnt: &Path, code: &str, args: &[&str]) -> String {
    let mut c = Command::new(python3());
    c.arg("-c")
        .arg(format!("{PY_PRELUDE}\n{}", dedent(code)))
        .arg(mnt)
        .args(args);
    let o = run_captured(c, Duration::from_secs(60));
    assert!(
        o.status.success(),
        "python snippet failed:\n{code}\n{}",
        both(&o)
    );
    stdout(&o)
}

/// Runs a Python snippet after [`PY_PRELUDE`] and `helpers` with the
/// preload library in LD_PRELOAD, `M` the mount point `mnt` and `ARGS`
/// the paths in `args`, failing the test (with the traceback) unless it
/// exits 0 within `limit`; returns its stdout.
pub fn py_preloaded(
    mnt: &Path,
    helpers: &str,
    code: &str,
    args: &[&Path],
    limit: Duration,
) -> String {
    let mut c = Command::new(python3());
    c.env("LD_PRELOAD", preload_library())
        .arg("-c")
        .arg(format!("{PY_PRELUDE}\n{helpers}\n{}", dedent(code)))
        .arg(mnt)
        .args(args);
    let o = run_captured(c, limit);
    assert!(
        o.status.success(),
        "python snippet failed:\n{code}\n{}",
        both(&o)
    );
    stdout(&o)
}

/// Bytes in use on the file system holding `path`, as df says.
pub fn df_used(path: &Path) -> u64 {
    sh(&format!(
        "df -B1 --output=used {} | tail -1",
        path.display()
    ))
    .trim()
    .parse()
    .expect("df's used bytes")
}

/// `code` without the indentation all its non-blank lines share, so that
/// snippets can sit indented in the Rust source.
pub fn dedent(code: &str) -> String {
    let indent = code
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| l.len() - l.trim_start().len())
        .min()
        .unwrap_or(0);
    code.lines()
        .map(|l| l.get(indent..).unwrap_or("").trim_end())
        .collect::<Vec<_>>()
        .join("\n")
}

pub fn py(mnt: &Path, code: &str) -> String {
    py_args(mnt, code, &[])
}

/// Whether some process holds a lock on the image (a read-write mount
/// holds it exclusive, a read-only one shared): probes with a
/// non-blocking exclusive lock, dropped at once.
pub fn image_in_use(image: &Path) -> bool {
    use std::os::fd::AsRawFd;
    let Ok(f) = File::open(image) else {
        return false;
    };
    // SAFETY: flock on a valid descriptor; the lock goes with `f`.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// Waits until no process holds the image's lock; false on timeout.
pub fn wait_image_released(image: &Path, limit: Duration) -> bool {
    let start = Instant::now();
    while image_in_use(image) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// Whether `path` is a mount point right now (from /proc/self/mountinfo).
pub fn is_mount_point(path: &Path) -> bool {
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    let want = path.to_string_lossy().replace(' ', "\\040");
    info.lines()
        .any(|l| l.split(' ').nth(4) == Some(want.as_str()))
}

/// A process, told apart from a later one with the same pid by its start
/// time (field 22 of /proc/PID/stat).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub start: u64,
}

impl Proc {
    fn stat(pid: u32) -> Option<(char, u64)> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // The command name may hold spaces and parentheses: fields count
        // from the last ')'.
        let rest = &stat[stat.rfind(')')? + 1..];
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let state = fields.first()?.chars().next()?;
        Some((state, fields.get(19)?.parse().ok()?))
    }

    /// Whether the process still runs (a zombie has exited).
    pub fn alive(&self) -> bool {
        matches!(Proc::stat(self.pid), Some((state, start)) if start == self.start && state != 'Z' && state != 'X')
    }
}

/// Processes other than this one that have `path` open.
pub fn holders(path: &Path) -> Vec<Proc> {
    let Ok(want) = path.canonicalize() else {
        return Vec::new();
    };
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(e.path().join("fd")) else {
            continue;
        };
        let holds = fds
            .flatten()
            .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == want));
        if let (true, Some((_, start))) = (holds, Proc::stat(pid)) {
            out.push(Proc { pid, start });
        }
    }
    out
}

/// Waits until none of `procs` runs; false on timeout.
pub fn wait_exited(procs: &[Proc], limit: Duration) -> bool {
    let start = Instant::now();
    while procs.iter().any(Proc::alive) {
        if start.elapsed() > limit {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// A freshly made image mounted through `pmemfs-mount` in a temporary
/// directory. Every unmount waits for the daemon to exit (the image lock
/// goes) and checks the image with `fsck.pmemfs -n`; dropping it unmounts
/// best-effort (lazily if needed), so a failing test leaves no mount.
pub struct Mount {
    dir: TempDir,
    image: PathBuf,
    mnt: PathBuf,
    opts: String,
    mounted: bool,
    /// The daemon serving the mount (the process holding the image open).
    daemon: Vec<Proc>,
}

/// How long the daemon may take to exit after umount.
const DAEMON_EXIT_LIMIT: Duration = Duration::from_secs(20);

impl Mount {
    /// mkfs.pmemfs -q -s SIZE, then pmemfs-mount [-o OPTS] (no -o when
    /// `opts` is empty). Fails the test, saying what is missing, when it
    /// cannot mount.
    pub fn new(tag: &str, size: &str, opts: &str) -> Mount {
        Mount::new_at(TempDir::new(tag), size, opts)
    }

    /// As [`Mount::new`], with the image in /dev/shm (memory, as pmem
    /// would be): where an image file's allocated size is measured.
    pub fn new_shm(tag: &str, size: &str, opts: &str) -> Mount {
        let shm = Path::new("/dev/shm");
        assert!(shm.is_dir(), "this test needs /dev/shm (a tmpfs)");
        Mount::new_at(TempDir::new_in(shm, tag), size, opts)
    }

    fn new_at(dir: TempDir, size: &str, opts: &str) -> Mount {
        let image = dir.join("img");
        let mnt = dir.join("mnt");
        std::fs::create_dir(&mnt).expect("mount point");
        let mut c = tool("mkfs.pmemfs");
        c.args(["-q", "-s", size]).arg(&image);
        let o = run_captured(c, Duration::from_secs(60));
        assert!(
            o.status.success(),
            "mkfs.pmemfs -s {size} failed: {}",
            both(&o)
        );
        let mut m = Mount {
            dir,
            image,
            mnt,
            opts: opts.to_string(),
            mounted: false,
            daemon: Vec::new(),
        };
        m.mount();
        m
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        &self.mnt
    }

    /// A path inside the mount.
    pub fn p(&self, rel: &str) -> PathBuf {
        self.mnt.join(rel)
    }

    pub fn image(&self) -> &Path {
        &self.image
    }

    /// The temporary directory holding the image and the mount point.
    pub fn dir(&self) -> &Path {
        &self.dir.0
    }

    fn mount(&mut self) {
        let fuse = Path::new("/dev/fuse");
        assert!(
            fuse.exists(),
            "cannot mount: /dev/fuse is missing; the end-to-end mount tests need the FUSE \
             device (load the fuse module, or give the container --device /dev/fuse)"
        );
        if let Err(e) = File::options().read(true).write(true).open(fuse) {
            panic!("cannot mount: /dev/fuse cannot be opened read-write ({e}); the mount tests need it");
        }
        let mut c = tool("pmemfs-mount");
        // PMEMFS_TEST_MOUNT_OPTS adds options to every test mount (e.g.
        // writeback_cache, to run the suites on such mounts).
        let extra = std::env::var("PMEMFS_TEST_MOUNT_OPTS").unwrap_or_default();
        let opts: Vec<&str> = [self.opts.as_str(), extra.as_str()]
            .into_iter()
            .filter(|o| !o.is_empty())
            .collect();
        if !opts.is_empty() {
            c.arg("-o").arg(opts.join(","));
        }
        c.arg(&self.image).arg(&self.mnt);
        let o = run_captured(c, Duration::from_secs(30));
        assert!(
            o.status.success(),
            "cannot mount: pmemfs-mount -o {:?} {} {} failed: {}",
            self.opts,
            self.image.display(),
            self.mnt.display(),
            both(&o)
        );
        assert!(
            is_mount_point(&self.mnt),
            "pmemfs-mount returned success but {} is not a mount point",
            self.mnt.display()
        );
        self.mounted = true;
        let start = Instant::now();
        loop {
            self.daemon = holders(&self.image);
            if !self.daemon.is_empty() {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(5),
                "mounted {}, but no process holds the image {} open",
                self.mnt.display(),
                self.image.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The daemon serving the mount.
    pub fn daemon(&self) -> &[Proc] {
        &self.daemon
    }

    /// umount, wait for the daemon to exit, and check the image.
    fn unmount_checked(&mut self) {
        let mut tries = 0;
        loop {
            let o = run_captured(
                {
                    let mut c = Command::new("umount");
                    c.arg(&self.mnt);
                    c
                },
                Duration::from_secs(30),
            );
            if o.status.success() {
                break;
            }
            tries += 1;
            // A process that just closed a file may keep the mount busy a
            // moment.
            assert!(
                tries < 50,
                "umount {} failed: {}",
                self.mnt.display(),
                both(&o)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        self.mounted = false;
        assert!(
            wait_image_released(&self.image, DAEMON_EXIT_LIMIT),
            "the pmemfs daemon still holds {} {DAEMON_EXIT_LIMIT:?} after umount",
            self.image.display()
        );
        // The lock alone does not show the daemon is gone (it may drop the
        // image before it finishes exiting): wait for the process itself.
        assert!(
            wait_exited(&self.daemon, DAEMON_EXIT_LIMIT),
            "the pmemfs daemon {:?} of {} still runs {DAEMON_EXIT_LIMIT:?} after umount",
            self.daemon,
            self.mnt.display()
        );
        let (c, out) = fsck("-n", &self.image);
        assert_eq!(c, 0, "fsck.pmemfs -n after unmount is not clean:\n{out}");
    }

    /// Unmounts (waiting for the daemon, checking the image) and mounts
    /// again with the same options.
    pub fn remount(&mut self) {
        self.unmount_checked();
        self.mount();
    }

    /// As [`Mount::remount`], with other options from now on.
    pub fn remount_with(&mut self, opts: &str) {
        self.unmount_checked();
        self.opts = opts.to_string();
        self.mount();
    }

    /// Unmounts, waits for the daemon to exit and asserts fsck is clean.
    pub fn finish(mut self) {
        self.unmount_checked();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        let quiet = |args: &[&str]| {
            Command::new("umount")
                .args(args)
                .arg(&self.mnt)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        };
        if !quiet(&[]) {
            std::thread::sleep(Duration::from_millis(200));
            if !quiet(&[]) {
                quiet(&["-l"]);
            }
        }
        let _ = wait_image_released(&self.image, Duration::from_secs(10));
        let _ = wait_exited(&self.daemon, Duration::from_secs(10));
    }
}

/// splitmix64: small, seedable, good enough to pick offsets and operations.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e3779b97f4a7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58476d1ce4e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d049bb133111eb);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }

    /// An offset in `0..=max` that clusters on page boundaries, where the
    /// bugs live.
    pub fn offset(&mut self, max: u64) -> u64 {
        match self.below(4) {
            0 => (self.below(max / 4096 + 1) * 4096).min(max),
            1 => (self.below(max / 4096 + 1) * 4096)
                .saturating_sub(self.below(3))
                .min(max),
            _ => self.below(max + 1),
        }
    }
}

/// Mounts IMAGE on DIR with `pmemfs-mount -f` as a child the test can kill,
/// and waits until the mount is there.
pub fn mount_foreground(image: &Path, dir: &Path) -> std::process::Child {
    assert!(
        Path::new("/dev/fuse").exists(),
        "/dev/fuse is missing: this test needs FUSE"
    );
    let mut c = tool("pmemfs-mount");
    c.arg("-f").arg(image).arg(dir).stdout(Stdio::null());
    let child = c.spawn().expect("start pmemfs-mount");
    let start = Instant::now();
    while !is_mount_point(dir) {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "pmemfs-mount did not mount {}",
            dir.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    child
}

/// umount DIR, lazily when a plain umount fails (a killed daemon).
pub fn unmount(dir: &Path) -> bool {
    let ok = Command::new("umount")
        .arg(dir)
        .status()
        .is_ok_and(|s| s.success());
    if !ok {
        let _ = Command::new("umount").arg("-l").arg(dir).status();
    }
    ok
}

/// `pmemfs du --raw FILE`: (total, exclusive, shared) of its one file.
pub fn du(file: &Path) -> (u64, u64, u64) {
    let mut c = tool("pmemfs");
    c.args(["du", "--raw"]).arg(file);
    let o = run(c);
    assert_eq!(code(&o), 0, "pmemfs du: {}", both(&o));
    let out = stdout(&o);
    let line = out
        .lines()
        .nth(1)
        .unwrap_or_else(|| panic!("pmemfs du printed:\n{out}"));
    let f: Vec<u64> = line
        .split_whitespace()
        .take(3)
        .map(|w| w.parse().expect("a byte count"))
        .collect();
    (f[0], f[1], f[2])
}

/// The preload library beside the binaries of this build, wherever
/// CARGO_TARGET_DIR put them.
pub fn preload_library() -> PathBuf {
    let dir = Path::new(env!("CARGO_BIN_EXE_pmemfs"))
        .parent()
        .expect("profile dir")
        .to_path_buf();
    let lib = dir.join("libpmemfs_reflink.so");
    assert!(
        lib.exists(),
        "{} is missing: build it with cargo build --release --workspace",
        lib.display()
    );
    lib
}

/// CPU time (user + system, in clock ticks) the process has used.
pub fn cpu_ticks(p: &Proc) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)).expect("daemon's stat");
    let rest = &stat[stat.rfind(')').expect("stat format") + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15; after the name, 12 and 13.
    f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime")
}

/// Ticks per second of the counters in /proc/PID/stat.
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf with a constant name.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).unwrap_or(100)
}

/// Waits out the longest polling window, then asserts that `daemon` used
/// under a tenth of a CPU in the next second: a thread that kept polling
/// or spinning would use all of one. `what` says which mount, in the message.
pub fn assert_idle(daemon: &Proc, what: &str) {
    std::thread::sleep(Duration::from_millis(300));
    let before = cpu_ticks(daemon);
    std::thread::sleep(Duration::from_secs(1));
    let used = cpu_ticks(daemon) - before;
    assert!(
        used * 10 < ticks_per_second(),
        "{what}: the idle daemon used {used} ticks of CPU in a second (of {} a second)",
        ticks_per_second()
    );
}
