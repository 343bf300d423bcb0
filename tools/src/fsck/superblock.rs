//! Pass 1: the superblock copies and the geometry.

use pmemfs_ondisk::layout::PAGE_SIZE;
use pmemfs_ondisk::superblock::{self, Superblock};
use pmemfs_ondisk::Pmem;

use super::problem::Code;
use super::Check;

pub enum Outcome {
    Good(Superblock),
    NotPmemfs,
    /// No valid copy, but a whole one of another format version.
    OtherVersion(u32),
    /// Nothing further can be checked.
    Fatal,
}

pub fn check(c: &mut Check, pmem: &Pmem) -> Outcome {
    let copies = superblock::read_copies(pmem);
    let Some(sb) = superblock::choose(&copies).cloned() else {
        if !superblock::has_magic(pmem) {
            return Outcome::NotPmemfs;
        }
        if let Some(v) = superblock::other_version(pmem) {
            return Outcome::OtherVersion(v);
        }
        let why: Vec<String> = copies
            .iter()
            .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
            .collect();
        c.found(Code::SbNone, why.join("; "));
        return Outcome::Fatal;
    };
    for (i, copy) in copies.iter().enumerate() {
        match copy {
            Err(e) => {
                c.found(Code::SbCopyBad, e.to_string());
            }
            Ok(s) if s != &sb => {
                c.found(
                    Code::SbCopiesDiffer,
                    format!(
                        "copy {i} is at generation {}, the other at {}",
                        s.generation, sb.generation
                    ),
                );
            }
            Ok(_) => {}
        }
    }
    let needed = sb.geometry.total_pages * PAGE_SIZE;
    if needed > pmem.len() {
        c.found(
            Code::ImageShort,
            format!(
                "the image has {} bytes, the superblock records {needed}",
                pmem.len()
            ),
        );
        return Outcome::Fatal;
    }
    c.note(format!(
        "label {:?}, UUID {}, generation {}, {} pages",
        sb.label,
        sb.uuid_string(),
        sb.generation,
        sb.geometry.total_pages
    ));
    Outcome::Good(sb)
}
