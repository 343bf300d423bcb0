//! Which node pages were found whole since the image was opened, so that
//! a node read again is not checksummed again.
//!
//! The daemon is the image's only writer, and every node it writes it
//! writes with a fresh checksum, so a node that matched its checksum once
//! stays whole until its page leaves the trees. Verifying the checksum of
//! every node on every descent cost a create a tenth of its time (two 4 KiB
//! checksums per lookup); XFS likewise verifies a buffer when it is read
//! from the device, not at every use. fsck keeps no such record and checks
//! every node it reads.
//!
//! One bit per page, in chunks made when a page of theirs is first found
//! whole: metadata pages cluster at the start of the data area, so an
//! image of any size costs only the chunks its trees reach.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

/// Pages per chunk: 32,768, a 4 KiB chunk covering 128 MiB of image.
const CHUNK_PAGES: u64 = 1 << 15;
const WORDS: usize = (CHUNK_PAGES / 64) as usize;

type Chunk = Box<[AtomicU64; WORDS]>;

/// Node pages whose checksum matched, shared by the readers and the
/// writer of one image (atomic, so readers holding only a shared lock may
/// record what they checked).
#[derive(Debug)]
pub struct Checked {
    chunks: Box<[OnceLock<Chunk>]>,
}

impl Checked {
    /// Room for pages `0..total_pages`; pages beyond are never recorded.
    pub fn new(total_pages: u64) -> Self {
        let n = total_pages.div_ceil(CHUNK_PAGES) as usize;
        Checked {
            chunks: (0..n).map(|_| OnceLock::new()).collect(),
        }
    }

    fn at(pfn: u64) -> (usize, usize, u64) {
        let chunk = (pfn / CHUNK_PAGES) as usize;
        let bit = pfn % CHUNK_PAGES;
        (chunk, (bit / 64) as usize, 1 << (bit % 64))
    }

    /// Whether the node at `pfn` was found whole and its page has not
    /// left the trees since.
    pub fn is_whole(&self, pfn: u64) -> bool {
        let (c, w, b) = Self::at(pfn);
        self.chunks
            .get(c)
            .and_then(OnceLock::get)
            .is_some_and(|chunk| chunk[w].load(Ordering::Relaxed) & b != 0)
    }

    /// Records that the node at `pfn` matched its checksum.
    pub fn set_whole(&self, pfn: u64) {
        let (c, w, b) = Self::at(pfn);
        if let Some(slot) = self.chunks.get(c) {
            let chunk = slot.get_or_init(|| Box::new(std::array::from_fn(|_| AtomicU64::new(0))));
            chunk[w].fetch_or(b, Ordering::Relaxed);
        }
    }

    /// The page at `pfn` left the trees: whatever is written there next
    /// is checked when a node is read from it.
    pub fn forget(&self, pfn: u64) {
        let (c, w, b) = Self::at(pfn);
        if let Some(chunk) = self.chunks.get(c).and_then(OnceLock::get) {
            chunk[w].fetch_and(!b, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pages_are_whole_once_set_until_forgotten() {
        let c = Checked::new(3 * CHUNK_PAGES + 5);
        let pfns = [0, 63, 64, CHUNK_PAGES - 1, CHUNK_PAGES, 3 * CHUNK_PAGES + 4];
        for &p in &pfns {
            assert!(!c.is_whole(p));
            c.set_whole(p);
        }
        for &p in &pfns {
            assert!(c.is_whole(p), "pfn {p}");
        }
        assert!(!c.is_whole(1) && !c.is_whole(65) && !c.is_whole(CHUNK_PAGES + 1));
        c.forget(64);
        assert!(!c.is_whole(64) && c.is_whole(63));
        // Past the end: never recorded, never whole, no panic.
        c.set_whole(4 * CHUNK_PAGES);
        assert!(!c.is_whole(4 * CHUNK_PAGES));
        c.forget(u64::MAX);
        // Untouched chunks cost nothing.
        assert!(c.chunks[2].get().is_none());
    }
}
