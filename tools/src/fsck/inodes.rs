//! Pass 3: inodes, their page maps, flags and stored ACLs.

use std::collections::BTreeSet;

use pmemfs_ondisk::acl::{self, Acl};
use pmemfs_ondisk::meta::flag;
use pmemfs_ondisk::Body;

use super::problem::Code;
use super::{Check, Loaded};
use crate::progress::Progress;

/// Longest symbolic link target, as PATH_MAX.
const MAX_SYMLINK: usize = 4096;

pub fn check(c: &mut Check, l: &mut Loaded) {
    let g = l.sb.geometry;
    let ckpt: BTreeSet<u64> = l.ckpt_pfns.iter().copied().collect();
    let mut progress = Progress::new("pass 3: inodes", l.meta.inodes.len() as u64);
    let (mut files, mut dirs, mut other, mut mapped) = (0u64, 0u64, 0u64, 0u64);
    for (&ino, inode) in l.meta.inodes.iter_mut() {
        progress.tick(1);
        match &mut inode.body {
            Body::File(map) => {
                files += 1;
                let mut bad = Vec::new();
                for r in map.iter() {
                    mapped += r.len;
                    if !g.in_data(r.value, r.len) {
                        bad.push((r, Code::MapOutsideData));
                    } else if ckpt.range(r.value..r.value + r.len).next().is_some() {
                        bad.push((r, Code::MapOverCheckpoint));
                    }
                }
                for (r, code) in bad {
                    let detail = format!(
                        "inode {ino}: pages {}..{} map pfns {}..{}",
                        r.start,
                        r.start + r.len,
                        r.value,
                        r.value.wrapping_add(r.len)
                    );
                    if c.found(code, detail) {
                        map.remove(r.start, r.len);
                    }
                }
            }
            Body::Symlink(target) => {
                other += 1;
                let bad = target.is_empty() || target.len() > MAX_SYMLINK;
                if bad
                    && c.found(
                        Code::SymlinkBad,
                        format!("inode {ino}: target of {} bytes", target.len()),
                    )
                {
                    *target = b"?".to_vec();
                }
            }
            Body::Dir(_) => dirs += 1,
            Body::Special => other += 1,
        }
        let unknown = inode.attr.flags & !flag::KNOWN;
        if unknown != 0
            && c.found(
                Code::FlagsUnknown,
                format!(
                    "inode {ino}: flags {:#x}, unknown {unknown:#x}",
                    inode.attr.flags
                ),
            )
        {
            inode.attr.flags &= flag::KNOWN;
        }
        let is_dir = matches!(inode.body, Body::Dir(_));
        for name in [acl::ACCESS, acl::DEFAULT] {
            let Some(value) = inode.xattrs.get(name) else {
                continue;
            };
            let why = match Acl::decode(value) {
                Err(e) => e.detail,
                Ok(_) if name == acl::DEFAULT && !is_dir => {
                    "a default ACL on a non-directory".into()
                }
                Ok(_) => continue,
            };
            let detail = format!("inode {ino}: {}: {why}", String::from_utf8_lossy(name));
            if c.found(Code::AclBad, detail) {
                inode.xattrs.remove(name);
            }
        }
    }
    progress.finish();
    c.note(format!(
        "{files} files, {dirs} directories, {other} others; {mapped} pages mapped"
    ));
}
