//! A seeded randomized test against an in-memory model, through a real
//! mount, across four files: writes at any offset, reads, truncates, hole
//! punches, mmap writes, fsyncs, renames, clones (copy_file_range at aligned
//! and unaligned offsets), unlinks, and unmount plus mount (each followed by
//! fsck, which checks share counts against references), with sizes and the touched bytes
//! compared after every step and whole contents every 250 steps and after
//! every remount.
//!
//! `PMEMFS_MODEL_OPS=N` sets the operations per seed (default 20,000);
//! `PMEMFS_MODEL_SEEDS=a,b,c` the seeds (default 1,2,3).

mod util;

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::Instant;

use util::*;

const FILES: usize = 4;
const MAX_SIZE: u64 = 1 << 20;

struct Fs {
    image: PathBuf,
    dir: PathBuf,
    daemon: Option<Child>,
}

impl Fs {
    fn mount(&mut self) {
        self.daemon = Some(mount_foreground(&self.image, &self.dir));
    }

    fn unmount(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.dir)
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "umount failed");
        if let Some(mut d) = self.daemon.take() {
            assert!(d.wait().unwrap().success(), "the daemon failed");
        }
        let (c, out) = fsck("-n", &self.image);
        assert_eq!(c, 0, "fsck after unmount:\n{out}");
    }
}

impl Drop for Fs {
    fn drop(&mut self) {
        if is_mount_point(&self.dir) {
            unmount(&self.dir);
        }
    }
}

fn open(p: &Path) -> File {
    OpenOptions::new()
        .read(true)
        .write(true)
        .open(p)
        .unwrap_or_else(|e| panic!("open {}: {e}", p.display()))
}

fn check_range(step: usize, what: &str, p: &Path, model: &[u8], from: u64, to: u64) {
    let f = open(p);
    let size = f.metadata().unwrap().len();
    assert_eq!(
        size,
        model.len() as u64,
        "step {step} ({what}): size of {}",
        p.display()
    );
    let (a, b) = (from.min(size) as usize, to.min(size) as usize);
    let mut buf = vec![0u8; b - a];
    f.read_exact_at(&mut buf, a as u64).unwrap();
    if buf != model[a..b] {
        let at = buf
            .iter()
            .zip(&model[a..b])
            .position(|(x, y)| x != y)
            .unwrap_or(0)
            + a;
        panic!(
            "step {step} ({what}): {} differs from the model at byte {at}",
            p.display()
        );
    }
}

fn run_seed(seed: u64, ops: usize) {
    let tmp = TempDir::new(&format!("model{seed}"));
    let image = tmp.join("fs.img");
    let dir = tmp.join("mnt");
    std::fs::create_dir(&dir).unwrap();
    let mut c = tool("mkfs.pmemfs");
    c.args(["-q", "-s", "64M"]).arg(&image);
    assert_eq!(code(&run(c)), 0);
    let mut fs = Fs {
        image,
        dir: dir.clone(),
        daemon: None,
    };
    fs.mount();
    let mut rng = Rng(seed);
    let mut names: Vec<String> = (0..FILES).map(|i| format!("file{i}")).collect();
    let mut model: Vec<Vec<u8>> = vec![Vec::new(); FILES];
    for n in &names {
        File::create(dir.join(n)).unwrap();
    }
    let mut renames = 0;
    for step in 0..ops {
        let i = rng.below(FILES as u64) as usize;
        let p = dir.join(&names[i]);
        let m = &mut model[i];
        let (what, from, to) = match rng.below(120) {
            0..=34 => {
                let off = rng.offset(MAX_SIZE - 1);
                let max_len = if rng.below(4) == 0 { 70_000 } else { 5000 };
                let len = 1 + rng.below(max_len).min(MAX_SIZE - off - 1);
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                open(&p).write_all_at(&data, off).unwrap();
                if m.len() < (off + len) as usize {
                    m.resize((off + len) as usize, 0);
                }
                m[off as usize..(off + len) as usize].copy_from_slice(&data);
                ("write", off.saturating_sub(4096), off + len + 4096)
            }
            35..=49 => {
                let off = rng.offset(MAX_SIZE);
                ("read", off, off + rng.below(200_000))
            }
            50..=59 => {
                let size = rng.offset(MAX_SIZE);
                open(&p).set_len(size).unwrap();
                let old = m.len() as u64;
                m.resize(size as usize, 0);
                (
                    "truncate",
                    old.min(size).saturating_sub(4096),
                    old.max(size) + 4096,
                )
            }
            60..=69 => {
                let off = rng.offset(MAX_SIZE);
                let len = 1 + rng.below(100_000);
                let f = open(&p);
                // SAFETY: fallocate on an open descriptor.
                let r = unsafe {
                    libc::fallocate(
                        f.as_raw_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        off as i64,
                        len as i64,
                    )
                };
                assert_eq!(
                    r,
                    0,
                    "step {step}: punch hole: {}",
                    std::io::Error::last_os_error()
                );
                let end = ((off + len) as usize).min(m.len());
                if (off as usize) < end {
                    m[off as usize..end].fill(0);
                }
                ("punch", off.saturating_sub(4096), off + len + 4096)
            }
            70..=79 if !m.is_empty() => {
                let off = rng.below(m.len() as u64);
                let len = 1 + rng.below((m.len() as u64 - off).min(20_000));
                let data: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
                mmap_write(&p, m.len(), off as usize, &data);
                m[off as usize..(off + len) as usize].copy_from_slice(&data);
                ("mmap write", off, off + len)
            }
            80..=87 => {
                open(&p).sync_all().unwrap();
                ("fsync", 0, 4096)
            }
            // About one step in a thousand remounts.
            98..=99 if rng.below(20) != 0 => {
                open(&p).sync_data().unwrap();
                ("fdatasync", 0, 4096)
            }
            88..=97 => {
                renames += 1;
                let new = format!("file{i}.{renames}");
                std::fs::rename(&p, dir.join(&new)).unwrap();
                names[i] = new;
                ("rename", 0, 4096)
            }
            100..=113 => {
                // A clone from another file: page-aligned offsets half the
                // time (shared pages), anywhere otherwise (copied bytes).
                let j = (i + 1 + rng.below(FILES as u64 - 1) as usize) % FILES;
                let src_len = model[j].len() as u64;
                let aligned = rng.below(2) == 0;
                let mut so = rng.offset(src_len);
                let mut doff = rng.offset(MAX_SIZE - 1);
                if aligned {
                    so -= so % 4096;
                    doff -= doff % 4096;
                }
                let len = rng.below(MAX_SIZE - doff).min(src_len.saturating_sub(so));
                let src = open(&dir.join(&names[j]));
                let dst = open(&p);
                let copied = pmemfs_tools::control::clone_range(&src, so, Some(len), &dst, doff)
                    .unwrap_or_else(|e| panic!("step {step}: copy_file_range: {e}"));
                assert_eq!(copied, len, "step {step}: short clone");
                let bytes = model[j][so as usize..(so + len) as usize].to_vec();
                let m = &mut model[i];
                if len > 0 {
                    if m.len() < (doff + len) as usize {
                        m.resize((doff + len) as usize, 0);
                    }
                    m[doff as usize..(doff + len) as usize].copy_from_slice(&bytes);
                }
                ("clone", doff.saturating_sub(4096), doff + len + 4096)
            }
            114..=119 => {
                std::fs::remove_file(&p).unwrap();
                File::create(&p).unwrap();
                model[i].clear();
                ("unlink and create", 0, 4096)
            }
            98..=99 => {
                fs.unmount();
                fs.mount();
                for (k, n) in names.iter().enumerate() {
                    check_range(step, "remount", &dir.join(n), &model[k], 0, u64::MAX);
                }
                continue;
            }
            // An mmap write into an empty file: read instead.
            _ => ("read", 0, 4096),
        };
        let p = dir.join(&names[i]);
        check_range(step, what, &p, &model[i], from, to);
        if step % 250 == 249 {
            for (k, n) in names.iter().enumerate() {
                check_range(step, "full check", &dir.join(n), &model[k], 0, u64::MAX);
            }
        }
    }
    fs.unmount();
}

fn mmap_write(p: &Path, size: usize, off: usize, data: &[u8]) {
    let f = open(p);
    // SAFETY: a shared mapping of `size` bytes of an open file, written
    // within bounds, synced and unmapped before returning.
    unsafe {
        let m = libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            f.as_raw_fd(),
            0,
        );
        assert_ne!(
            m,
            libc::MAP_FAILED,
            "mmap: {}",
            std::io::Error::last_os_error()
        );
        std::ptr::copy_nonoverlapping(data.as_ptr(), (m as *mut u8).add(off), data.len());
        assert_eq!(libc::msync(m, size, libc::MS_SYNC), 0);
        libc::munmap(m, size);
    }
}

#[test]
fn random_operations_match_the_model() {
    let ops: usize = std::env::var("PMEMFS_MODEL_OPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20_000);
    let seeds: Vec<u64> = std::env::var("PMEMFS_MODEL_SEEDS")
        .ok()
        .map(|v| v.split(',').filter_map(|s| s.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2, 3]);
    for seed in seeds {
        let start = Instant::now();
        run_seed(seed, ops);
        eprintln!("seed {seed}: {ops} operations in {:.1?}", start.elapsed());
    }
}
