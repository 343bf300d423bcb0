//! Regression, found by the crash harness (tests/crash.rs): a checkpoint always overwrote superblock copy 0 first, even when copy 0 was the only valid copy or copy 1 was stale, so a crash during the recovery that follows a crash mid-checkpoint could leave no usable superblock. Fixed by `superblock::write_order`: the damaged or older copy is overwritten first.
//!
//! Two double faults, each checked at every crash point of the second
//! recovery with every single in-flight line, every set but one and all of
//! them: the image must still open, to the same metadata.
//! 1. Copy 1 torn (a crash while it was written), copy 0 valid.
//! 2. Copy 0 of a new generation landed, copy 1 did not (a crash between
//!    the two): copy 1 is stale and names a checkpoint whose pages are free
//!    again, which the next checkpoint may overwrite.

use pmemfs_ondisk::layout::SUPERBLOCK_PFNS;
use pmemfs_ondisk::recording::Recording;
use pmemfs_ondisk::{format_pmem, FormatOptions, Image, Meta, MIN_IMAGE_BYTES, PAGE_SIZE};

/// A formatted image, opened twice, and checkpointed once more in the
/// second session, with the recording of that session: the crash points
/// of the last checkpoint are its last three.
///
/// Checkpoints go to the first free pages from the allocator's cursor,
/// which starts at the data area on every open: the second open's recovery
/// puts its checkpoint on the first data page, the checkpoint after it
/// on the next, so that a crash between the two superblock copies of the
/// latter leaves the stale copy naming the first data page, which the
/// next recovery takes again for its own checkpoint.
fn checkpointed() -> (pmemfs_ondisk::recording::Trace, u64) {
    let (pmem, rec) = Recording::new(MIN_IMAGE_BYTES);
    let opts = FormatOptions::fixed("sb");
    format_pmem(&pmem, &opts).unwrap();
    drop(Image::open_pmem(pmem).unwrap());
    let (pmem, rec) = Recording::with_image(rec.durable_now());
    let mut image = Image::open_pmem(pmem).unwrap();
    let before = rec.fences();
    image.checkpoint().unwrap();
    let trace = rec.trace();
    drop(image);
    (trace, before)
}

/// Opens `img` under a recording, then every crash image of that recovery
/// (every crash point; no in-flight line, each one alone, all but one, all)
/// must open again to the same metadata.
fn recovery_survives_a_crash(img: Vec<u8>) {
    let (pmem, rec) = Recording::with_image(img);
    let want: Meta = Image::open_pmem(pmem)
        .expect("the first crash is recoverable")
        .meta()
        .clone();
    let t = rec.trace();
    assert!(t.fences() >= 3, "recovery checkpoints: pages, copy, copy");
    for k in 0..=t.fences() {
        let lines = t.in_flight_lines(k);
        let mut sets = vec![vec![], lines.clone()];
        for i in 0..lines.len() {
            sets.push(vec![lines[i]]);
            let mut v = lines.clone();
            v.remove(i);
            sets.push(v);
        }
        for set in sets {
            let crashed = t.crash_image(k, &set).unwrap();
            let (pmem, _) = Recording::with_image(crashed);
            match Image::open_pmem(pmem) {
                Ok(image) => assert_eq!(image.meta(), &want, "crash point {k}, lines {set:?}"),
                Err(e) => panic!(
                    "a crash during recovery, at its crash point {k} with lines {set:?} \
                     in flight, left an image that does not open: {e}"
                ),
            }
        }
    }
}

#[test]
fn a_torn_copy_1_is_rewritten_before_copy_0() {
    let (t, _) = checkpointed();
    let mut img = t.durable_image(t.fences()).unwrap();
    // Tear copy 1: a byte of it changed, as if a crash cut its write.
    img[(SUPERBLOCK_PFNS[1] * PAGE_SIZE + 140) as usize] ^= 0x5a;
    recovery_survives_a_crash(img);
}

#[test]
fn a_stale_copy_1_is_rewritten_before_copy_0() {
    let (t, before) = checkpointed();
    // The checkpoint's fences: its pages, copy 0, copy 1. Crash after the
    // second: copy 0 is new, copy 1 old.
    assert_eq!(t.fences(), before + 3);
    let img = t.durable_image(before + 2).unwrap();
    let old = |pfn: u64| img[(pfn * PAGE_SIZE) as usize..(pfn * PAGE_SIZE + 256) as usize].to_vec();
    assert_ne!(
        old(SUPERBLOCK_PFNS[0]),
        old(SUPERBLOCK_PFNS[1]),
        "copy 1 is stale"
    );
    recovery_survives_a_crash(img);
}
