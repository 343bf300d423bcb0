//! Seeded damage: 1,000 images, each damaged at random offsets, most of
//! them where metadata lives. fsck must never panic or hang, must exit 0,
//! 1, 4 or 8, and after `-y` a recheck must report only what `-y` said it
//! could not fix.
//!
//! `PMEMFS_FUZZ_IMAGES=N` runs N images instead of 1,000;
//! `PMEMFS_FUZZ_SEED=S` starts from seed S.

mod util;

use std::collections::BTreeSet;
use std::os::unix::fs::FileExt;
use std::time::Duration;

use pmemfs_ondisk::{Access, Image, Op, PAGE_SIZE, ROOT_INO};
use util::*;

const SIZE: u64 = 16 << 20;

/// Where the template keeps its metadata, to aim the damage.
struct Template {
    pages: Vec<(u64, Vec<u8>)>,
    journal: (u64, u64),
    checkpoint: Vec<u64>,
    /// Roots of page-map trees.
    trees: Vec<u64>,
}

/// A crashed image: files, a directory, clones sharing pages, deletions,
/// a checkpoint and journal entries after it.
fn template(dir: &TempDir) -> Template {
    let path = dir.join("template.img");
    format_image(&path, SIZE);
    let mut b = Builder::open(&path);
    let d = b.mkdir(ROOT_INO, "d");
    let mut files = vec![];
    for i in 0..12 {
        files.push(b.file(
            if i % 3 == 0 { d } else { ROOT_INO },
            &format!("f{i}"),
            1 + i % 5,
            i as u8,
        ));
    }
    b.clone_file(files[4], "clone4");
    // Page maps of many runs: trees on the media, one in the checkpoint's
    // state, one made after it, and a clone sharing the first's pages.
    let frag = b.fragmented(d, "frag", 40, 3);
    b.clone_file(frag, "clonefrag");
    b.image.checkpoint().unwrap();
    b.clone_file(files[7], "clone7");
    b.file(d, "late", 3, 9);
    let late_frag = b.fragmented(ROOT_INO, "late-frag", 25, 5);
    b.image
        .commit(&[
            Op::Unlink {
                dir: ROOT_INO,
                name: b"f1".to_vec(),
            },
            Op::Delete { ino: files[1] },
        ])
        .unwrap();
    let sb = b.image.superblock().clone();
    let g = b.image.geometry();
    let journal = (
        g.journal_offset() + sb.journal.off,
        g.journal_offset() + b.image.journal_pos().off,
    );
    let checkpoint = b.image.checkpoint_pfns().to_vec();
    let trees: Vec<u64> = [frag, late_frag]
        .iter()
        .map(|&i| map_root(&b.image, i))
        .collect();
    assert!(
        trees.iter().all(|&r| r != 0),
        "the fragmented files have trees"
    );
    drop(b); // crash: the journal holds the last transactions
    assert_eq!(fsck("-n", &path).0, 0, "the template is clean");
    let f = std::fs::File::open(&path).unwrap();
    let mut pages = vec![];
    let mut buf = vec![0u8; PAGE_SIZE as usize];
    for pfn in 0..SIZE / PAGE_SIZE {
        f.read_exact_at(&mut buf, pfn * PAGE_SIZE).unwrap();
        if buf.iter().any(|&x| x != 0) {
            pages.push((pfn * PAGE_SIZE, buf.clone()));
        }
    }
    Template {
        pages,
        journal,
        checkpoint,
        trees,
    }
}

/// Damages a copy of the template: 1 to 3 hits, each a flipped bit, a
/// random byte or a zeroed cache line.
fn damaged_copy(t: &Template, path: &std::path::Path, rng: &mut Rng) -> Vec<String> {
    let f = std::fs::File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .open(path)
        .unwrap();
    f.set_len(SIZE).unwrap();
    for (off, page) in &t.pages {
        f.write_all_at(page, *off).unwrap();
    }
    let mut what = vec![];
    for _ in 0..1 + rng.below(3) {
        let off = match rng.below(10) {
            0..=2 => rng.below(2) * PAGE_SIZE + rng.below(256),
            3..=5 => t.journal.0 + rng.below(t.journal.1 - t.journal.0),
            6..=8 => {
                t.checkpoint[rng.below(t.checkpoint.len() as u64) as usize] * PAGE_SIZE
                    + rng.below(PAGE_SIZE)
            }
            9 if rng.below(2) == 0 => {
                t.trees[rng.below(t.trees.len() as u64) as usize] * PAGE_SIZE + rng.below(PAGE_SIZE)
            }
            _ => t.pages[rng.below(t.pages.len() as u64) as usize].0 + rng.below(PAGE_SIZE),
        };
        let mut b = [0u8; 1];
        f.read_exact_at(&mut b, off).unwrap();
        match rng.below(3) {
            0 => {
                f.write_all_at(&[b[0] ^ (1 << rng.below(8))], off).unwrap();
                what.push(format!("bit flip at {off}"));
            }
            1 => {
                f.write_all_at(&[rng.below(256) as u8], off).unwrap();
                what.push(format!("byte at {off}"));
            }
            _ => {
                f.write_all_at(&[0u8; 64], off & !63).unwrap();
                what.push(format!("zeroed line at {}", off & !63));
            }
        }
    }
    what
}

/// Problem ids in fsck output lines, split into fixed and not fixed.
fn ids(out: &str) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut fixed, mut not) = (BTreeSet::new(), BTreeSet::new());
    for line in out.lines() {
        let Some(id) = line
            .split_once(": [")
            .and_then(|(_, r)| r.split_once(']'))
            .map(|(id, _)| id.to_string())
        else {
            continue;
        };
        if line.contains("; fixed: ") {
            fixed.insert(id);
        } else {
            not.insert(id);
        }
    }
    (fixed, not)
}

fn fsck_limited(flag: &str, image: &std::path::Path) -> (i32, String) {
    let mut c = tool("fsck.pmemfs");
    c.arg(flag).arg(image);
    let o = run_with_limit(c, Duration::from_secs(30));
    let code = o.status.code().unwrap_or(-1);
    (code, stdout(&o) + &String::from_utf8_lossy(&o.stderr))
}

#[test]
fn a_thousand_damaged_images() {
    let n: u64 = std::env::var("PMEMFS_FUZZ_IMAGES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let first: u64 = std::env::var("PMEMFS_FUZZ_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let dir = TempDir::new("fuzz");
    let t = template(&dir);
    let path = dir.join("damaged.img");
    let allowed = [0, 1, 4, 8];
    let mut tally = std::collections::BTreeMap::new();
    for seed in first..first + n {
        let mut rng = Rng(seed);
        let what = damaged_copy(&t, &path, &mut rng);
        let ctx =
            |step: &str, out: &str| format!("seed {seed} ({}), {step}:\n{out}", what.join(", "));

        let (c_n, out_n) = fsck_limited("-n", &path);
        assert!(
            allowed.contains(&c_n),
            "{}",
            ctx("fsck -n exit code (101 = panic)", &out_n)
        );
        let (c_y, out_y) = fsck_limited("-y", &path);
        assert!(
            allowed.contains(&c_y) || c_y == 5,
            "{}",
            ctx("fsck -y exit code", &out_y)
        );
        let (c_again, out_again) = fsck_limited("-n", &path);
        assert!(
            allowed.contains(&c_again),
            "{}",
            ctx("recheck exit code", &out_again)
        );

        let (_, not_fixed) = ids(&out_y);
        let (_, found_again) = ids(&out_again);
        assert!(
            found_again.is_subset(&not_fixed),
            "{}",
            ctx(
                "recheck found what -y did not call unfixable",
                &format!("-y said:\n{out_y}\nrecheck said:\n{out_again}")
            )
        );
        if c_y & 4 == 0 && c_y != 8 {
            assert_eq!(
                c_again,
                0,
                "{}",
                ctx("-y left nothing, yet the recheck is not clean", &out_again)
            );
            // A clean image mounts: recovery succeeds on it.
            Image::open(&path, Access::ReadWrite)
                .unwrap_or_else(|e| panic!("{}", ctx("open after repair", &e.to_string())));
        }
        *tally.entry(c_y).or_insert(0u32) += 1;
    }
    eprintln!("fsck -y exit codes over {n} damaged images: {tally:?}");
}
