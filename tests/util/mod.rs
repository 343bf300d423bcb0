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
    Access, Attr, FormatOptions, Image, Ino, Kind, Meta, NewBody, Op, Pmem, Time, PAGE_SIZE,
    ROOT_INO,
};

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
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
    let opts = FormatOptions {
        label: "test".into(),
        uuid: [0x42; 16],
        uid: 0,
        gid: 0,
        now: Time { secs: 1, nsecs: 0 },
    };
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

/// Rewrites the image's metadata after `damage` changed it, as a valid
/// checkpoint: logical damage that checksums cannot catch.
pub fn damage_meta(path: &Path, damage: impl FnOnce(&mut Meta)) {
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
    let (mut meta, pfns) =
        pmemfs_ondisk::checkpoint::read(&pmem, &sb.geometry, &sb.checkpoint).expect("checkpoint");
    damage(&mut meta);
    let journal = sb.journal;
    Image::from_parts(file, pmem, sb, meta, pfns, journal)
        .expect("assemble")
        .close()
        .expect("write damaged checkpoint");
}

/// The contents of page `index` of file `ino`, read straight from the image.
pub fn page_of(img: &Image, ino: Ino, index: u64) -> Option<Vec<u8>> {
    let pfn = img.meta().get(ino)?.pages()?.get(index)?;
    Some(img.pmem().bytes(pfn * PAGE_SIZE, PAGE_SIZE).ok()?.to_vec())
}
