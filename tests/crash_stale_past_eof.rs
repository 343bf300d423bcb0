//! Regression, found by the crash harness (tests/crash.rs): a write past the end of a file, stored in place into its last page and cut by a crash before its commit, left its bytes past the end, and growing the file afterwards (truncate, a write past a gap, fallocate, a copy past a gap) showed them instead of zeros. Fixed in fs/src/data.rs: whatever grows a file first zeroes the bytes it exposes (`State::expose`).

use pmemfs_fs::namespace::{Caller, NewInode};
use pmemfs_fs::state::State;
use pmemfs_ondisk::recording::Recording;
use pmemfs_ondisk::{format_pmem, FormatOptions, Image, MIN_IMAGE_BYTES, PAGE_SIZE, ROOT_INO};

const ROOT: Caller = Caller { uid: 0, gid: 0 };

fn file(st: &mut State, name: &str) -> u64 {
    let new = NewInode {
        mode: libc::S_IFREG | 0o644,
        rdev: 0,
        target: None,
    };
    st.make(ROOT_INO, name.as_bytes(), new, ROOT).unwrap()
}

/// An image where file "f" holds 5000 bytes of 0x11 and its last page holds
/// 0x22 past them: an append of 3000 bytes whose in-place store reached
/// the media and whose commit did not.
fn crashed_append() -> (Vec<u8>, u64) {
    let (pmem, rec) = Recording::new(MIN_IMAGE_BYTES);
    let opts = FormatOptions::fixed("eof");
    format_pmem(&pmem, &opts).unwrap();
    let mut st = State::new(Image::open_pmem(pmem).unwrap(), false);
    let f = file(&mut st, "f");
    st.write(f, 0, &[0x11; 5000]).unwrap();
    let before = rec.fences();
    st.write(f, 5000, &[0x22; 3000]).unwrap();
    let t = rec.trace();
    // The append's fences: its data (stored in place, flushed), then its
    // commit. Crash just before the commit: the data is durable, no line
    // of the journal entry landed.
    let k = t.fences() - 1;
    assert!(k > before);
    let journal_end = st.image.geometry().data_start * PAGE_SIZE;
    let flying = t.in_flight_lines(k);
    assert!(!flying.is_empty() && flying.iter().all(|&l| l < journal_end));
    (t.crash_image(k, &[]).unwrap(), f)
}

/// Recovers the crashed image, grows "f" to 8192 bytes by `grow`, and
/// returns bytes 5000.. of it.
fn grown(grow: impl FnOnce(&mut State, u64)) -> Vec<u8> {
    let (img, f) = crashed_append();
    let (pmem, _) = Recording::with_image(img);
    let mut st = State::new(Image::open_pmem(pmem).unwrap(), false);
    assert_eq!(st.attr(f).unwrap().size, 5000, "the append did not commit");
    grow(&mut st, f);
    let size = st.attr(f).unwrap().size;
    assert!(size >= 8192);
    st.read(f, 5000, 3192).unwrap().as_slice().to_vec()
}

#[test]
fn truncate_up_shows_zeros() {
    let got = grown(|st, f| st.set_size(f, 8192, |_| {}).unwrap());
    assert_eq!(got, vec![0; 3192]);
}

#[test]
fn a_write_past_a_gap_shows_zeros_in_the_gap() {
    let got = grown(|st, f| {
        st.write(f, 8191, b"!").unwrap();
    });
    assert_eq!(&got[..3191], &[0; 3191][..]);
    assert_eq!(got[3191], b'!');
}

#[test]
fn fallocate_shows_zeros() {
    let got = grown(|st, f| st.fallocate(f, 5000, 3192, 0).unwrap());
    assert_eq!(got, vec![0; 3192]);
}

#[test]
fn a_copy_past_a_gap_shows_zeros_in_the_gap() {
    let got = grown(|st, f| {
        let g = file(st, "g");
        st.write(g, 0, b"?").unwrap();
        st.copy_range(g, 0, f, 8191, 1).unwrap();
    });
    assert_eq!(&got[..3191], &[0; 3191][..]);
    assert_eq!(got[3191], b'?');
}

#[test]
fn an_append_after_the_crash_keeps_the_tail_zero() {
    // An append of 10 bytes, then a truncate up: the bytes past the
    // append's end were the crashed write's; they must not show either.
    let got = grown(|st, f| {
        st.write(f, 5000, &[0x33; 10]).unwrap();
        st.set_size(f, 8192, |_| {}).unwrap();
    });
    assert_eq!(&got[..10], &[0x33; 10][..]);
    assert_eq!(&got[10..], &vec![0; 3182][..]);
}
