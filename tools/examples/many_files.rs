//! Fills an image made by mkfs.pmemfs with many empty files, through the
//! ondisk API (as fast as metadata can be written), for timing mount and
//! fsck at scale:
//!
//! ```sh
//! target/release/mkfs.pmemfs -q -s 4G /dev/shm/many.img
//! cargo run --release -p pmemfs-tools --example many_files -- /dev/shm/many.img 1000000
//! time target/release/fsck.pmemfs -n /dev/shm/many.img
//! time target/release/pmemfs-mount /dev/shm/many.img /mnt && time umount /mnt
//! ```
//!
//! Files go 1000 to a directory, `/dNNNN/fNNN`, one transaction per
//! directory; the image is closed (checkpointed) at the end.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use pmemfs_ondisk::{now, Access, Attr, Image, Kind, NewBody, Op, ROOT_INO};

const PER_DIR: u64 = 1000;

fn main() -> Result<()> {
    let mut args = std::env::args_os().skip(1);
    let (Some(path), Some(n)) = (args.next(), args.next()) else {
        bail!("usage: many_files IMAGE COUNT");
    };
    let path = PathBuf::from(path);
    let n: u64 = n
        .to_str()
        .and_then(|s| s.parse().ok())
        .context("COUNT must be a number")?;
    let start = Instant::now();
    let mut image = Image::open(&path, Access::ReadWrite)
        .with_context(|| format!("opening {}", path.display()))?;
    let t = now();
    let mut made = 0;
    for d in 0..n.div_ceil(PER_DIR) {
        let dir = image.next_ino();
        let mut root = *image.attr(ROOT_INO).context("root inode")?;
        root.nlink += 1;
        let mut ops = vec![
            Op::Create {
                ino: dir,
                attr: Attr::new(Kind::Dir, 0o755, 0, 0, t),
                body: NewBody::Dir { parent: ROOT_INO },
            },
            Op::Link {
                dir: ROOT_INO,
                name: format!("d{d:04}").into_bytes(),
                ino: dir,
            },
            Op::SetAttr {
                ino: ROOT_INO,
                attr: root,
            },
        ];
        let files = PER_DIR.min(n - made);
        for f in 0..files {
            let ino = dir + 1 + f;
            ops.push(Op::Create {
                ino,
                attr: Attr::new(Kind::File, 0o644, 0, 0, t),
                body: NewBody::File,
            });
            ops.push(Op::Link {
                dir,
                name: format!("f{f:03}").into_bytes(),
                ino,
            });
        }
        image.commit(&ops).context("commit")?;
        made += files;
    }
    image.close().context("closing the image")?;
    println!(
        "{made} files in {} directories in {:.1} s",
        n.div_ceil(PER_DIR),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
