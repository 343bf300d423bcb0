//! Geometry: where each region of an image starts, derived from its size.
//!
//! ```text
//! pfn 0            superblock, copy 0
//! pfn 1            superblock, copy 1
//! pfn 2 ..         journal: journal_pages pages
//! data_start ..    data pages and checkpoint pages, handed out by the allocator
//! ```
//! The geometry is recorded in the superblock, so changing these rules
//! changes only new images.

/// Bytes in a page; pfns count pages of this size from the start of the image.
pub const PAGE_SIZE: u64 = 4096;
/// The smallest image mkfs accepts.
pub const MIN_IMAGE_BYTES: u64 = 16 << 20;
/// Pfns of the two superblock copies.
pub const SUPERBLOCK_PFNS: [u64; 2] = [0, 1];
/// First pfn of the journal.
pub const JOURNAL_START: u64 = 2;
const MIN_JOURNAL_PAGES: u64 = 256; // 1 MiB
const MAX_JOURNAL_PAGES: u64 = 16384; // 64 MiB

/// Where the regions of an image lie, in pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    pub total_pages: u64,
    pub journal_start: u64,
    pub journal_pages: u64,
    pub data_start: u64,
}

impl Geometry {
    /// The geometry mkfs gives an image of `bytes` bytes (rounded down to
    /// whole pages): a journal of 1/64 of the image, between 1 and 64 MiB.
    pub fn for_size(bytes: u64) -> Option<Geometry> {
        if bytes < MIN_IMAGE_BYTES {
            return None;
        }
        let total_pages = bytes / PAGE_SIZE;
        let journal_pages = (total_pages / 64).clamp(MIN_JOURNAL_PAGES, MAX_JOURNAL_PAGES);
        Some(Geometry {
            total_pages,
            journal_start: JOURNAL_START,
            journal_pages,
            data_start: JOURNAL_START + journal_pages,
        })
    }

    /// Number of data pages.
    pub fn data_pages(&self) -> u64 {
        self.total_pages - self.data_start
    }

    /// Whether `[pfn, pfn + len)` lies inside the data area.
    pub fn in_data(&self, pfn: u64, len: u64) -> bool {
        pfn >= self.data_start && len <= self.total_pages && pfn <= self.total_pages - len
    }

    /// Byte offset of the journal.
    pub fn journal_offset(&self) -> u64 {
        self.journal_start * PAGE_SIZE
    }

    /// Bytes in the journal.
    pub fn journal_bytes(&self) -> u64 {
        self.journal_pages * PAGE_SIZE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_images_are_refused() {
        assert_eq!(Geometry::for_size(MIN_IMAGE_BYTES - 1), None);
        let g = Geometry::for_size(MIN_IMAGE_BYTES).unwrap();
        assert_eq!(g.journal_pages, MIN_JOURNAL_PAGES);
        assert!(g.data_pages() > 3000);
    }

    #[test]
    fn journal_is_capped() {
        let g = Geometry::for_size(1 << 40).unwrap();
        assert_eq!(g.journal_pages, MAX_JOURNAL_PAGES);
        assert_eq!(g.data_start, JOURNAL_START + MAX_JOURNAL_PAGES);
    }

    #[test]
    fn data_range_checks() {
        let g = Geometry::for_size(MIN_IMAGE_BYTES).unwrap();
        assert!(g.in_data(g.data_start, 1));
        assert!(!g.in_data(g.data_start - 1, 1));
        assert!(g.in_data(g.total_pages - 1, 1));
        assert!(!g.in_data(g.total_pages - 1, 2));
        assert!(!g.in_data(u64::MAX, 2));
    }
}
