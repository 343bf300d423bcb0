//! Times the metadata cost of a create and of an unlink in one directory,
//! through the ondisk API (one transaction each, as the daemon commits
//! them, without FUSE): what a directory's tree costs per entry.
//!
//! ```sh
//! target/release/mkfs.pmemfs -q -s 1G /dev/shm/dir.img
//! cargo run --release -p pmemfs-tools --example dir_ops -- /dev/shm/dir.img 10000
//! ```
//!
//! Makes `/d`, then COUNT files in it (`Create` and `Link` in one
//! transaction each), then removes them (`Unlink` and `Delete`), and
//! prints the microseconds each took on average.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pmemfs_ondisk::{now, Access, Attr, Image, Kind, NewBody, Op, ROOT_INO};

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        bail!("usage: dir_ops IMAGE COUNT");
    };
    let path = PathBuf::from(path);
    let n: u64 = n
        .to_str()
        .and_then(|s| s.parse().ok())
        .context("COUNT must be a number")?;
    let mut image = Image::open(&path, Access::ReadWrite)
        .with_context(|| format!("opening {}", path.display()))?;
    let t = now();
    let dir = image.next_ino();
    image.commit(&[
        Op::Create {
            ino: dir,
            attr: Attr::new(Kind::Dir, 0o755, 0, 0, t),
            body: NewBody::Dir { parent: ROOT_INO },
        },
        Op::Link {
            dir: ROOT_INO,
            name: b"d".to_vec(),
            ino: dir,
        },
    ])?;
    // Names alike, as a source tree's are.
    let name = |i: u64| format!("some-file-name-{i:06}.h").into_bytes();
    let mut inos = Vec::new();
    let start = Instant::now();
    for i in 0..n {
        let ino = image.next_ino();
        image.commit(&[
            Op::Create {
                ino,
                attr: Attr::new(Kind::File, 0o644, 0, 0, t),
                body: NewBody::File,
            },
            Op::Link {
                dir,
                name: name(i),
                ino,
            },
        ])?;
        inos.push(ino);
    }
    let created = start.elapsed();
    let start = Instant::now();
    for (i, ino) in (0..n).zip(inos) {
        image.commit(&[Op::Unlink { dir, name: name(i) }, Op::Delete { ino }])?;
    }
    let removed = start.elapsed();
    let per = |d: std::time::Duration| d.as_secs_f64() * 1e6 / n.max(1) as f64;
    println!(
        "{n} creates: {:.2} us each; {n} unlinks: {:.2} us each",
        per(created),
        per(removed)
    );
    image.close()?;
    Ok(())
}
