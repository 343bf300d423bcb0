//! Regression: a user could forge journal entries. Journal payloads hold
//! bytes users choose (an xattr value here), and once a checkpoint restarted
//! the journal those payloads lay in the region as stale bytes. An xattr
//! value holding a well-formed entry with the seq that would come next made
//! the next mount see "committed entries after the log end" and refuse the
//! image until fsck dropped them (a denial of service by any user who can
//! set an xattr); one placed where a later run's log would end would even
//! have replayed its ops. Fixed in ondisk/src/journal.rs: every run has a
//! random nonce, kept in the superblock, that each of its entries carries.

use pmemfs_fs::namespace::{Caller, NewInode};
use pmemfs_fs::state::State;
use pmemfs_ondisk::journal;
use pmemfs_ondisk::pmem::CACHE_LINE;
use pmemfs_ondisk::recording::Recording;
use pmemfs_ondisk::superblock::JournalPos;
use pmemfs_ondisk::{format_pmem, FormatOptions, Image, Op, MIN_IMAGE_BYTES, ROOT_INO};
use pmemfs_tools::fsck;

const ROOT: Caller = Caller { uid: 0, gid: 0 };

#[test]
fn an_xattr_value_full_of_forged_entries_changes_nothing() {
    let (pmem, rec) = Recording::new(MIN_IMAGE_BYTES);
    let opts = FormatOptions::fixed("forged");
    format_pmem(&pmem, &opts).unwrap();
    let mut st = State::new(Image::open_pmem(pmem).unwrap(), false);
    let new = NewInode {
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: None,
    };
    let f = st.make(ROOT_INO, b"f", new, ROOT).unwrap();
    st.write(f, 0, b"keep me").unwrap();
    st.image.checkpoint().unwrap();

    // The setxattr is the first entry of this run, seq S, at offset 0. The
    // clean close that follows restarts the journal at seq S + 1, so the
    // damage probe then looks for seq S + 2: forge that one, at every
    // alignment the value may land on, and with every nonce a user could
    // know (none: the field was reserved and zero before the fix).
    let s = st.image.journal_pos().seq;
    let forged = journal::encode_entry(
        JournalPos {
            off: 0,
            seq: s + 2,
            nonce: 0,
        },
        &[Op::Unlink {
            dir: ROOT_INO,
            name: b"f".to_vec(),
        }],
        &[],
    )
    .unwrap();
    let mut value = Vec::new();
    for shift in 0..CACHE_LINE as usize {
        value.resize(value.len() + shift, 0);
        value.extend_from_slice(&forged);
    }
    st.setxattr(f, b"user.forged", &value, 0).unwrap();
    assert_eq!(st.image.journal_pos().seq, s + 1);
    st.image.checkpoint().unwrap();

    let t = rec.trace();
    let img = t.crash_image(t.fences(), &[]).unwrap();
    let (pmem, _) = Recording::with_image(img);
    let findings = fsck::check_pmem(&pmem);
    assert!(findings.is_empty(), "fsck: {findings:?}");
    let st = State::new(
        Image::open_pmem(pmem).expect("the image still mounts"),
        false,
    );
    assert_eq!(st.lookup(ROOT_INO, b"f").unwrap(), f);
    assert_eq!(st.read(f, 0, 7).unwrap().as_slice(), b"keep me");
    assert_eq!(st.getxattr(f, b"user.forged").unwrap(), value);
}
