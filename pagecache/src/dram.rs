//! DRAM copies of pmem pages, one per (pfn, node) at most.
//!
//! The copies belong to the page (found through its descriptor's
//! DRAM_CACHED flag and this side table), not to any file: files sharing a
//! page share its copies. Per-file DRAM address_spaces only cache pointers
//! to them.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::sync::Arc;

/// Bytes in a page.
pub const PAGE_SIZE: usize = 4096;

/// A DRAM copy of one pmem page, filled once and read-only afterwards.
///
/// Memory comes from the allocator of the thread that fills it; with the
/// kernel's default first-touch policy, a page filled by a thread running
/// on node N lives on node N.
pub struct DramPage {
    data: Box<[u8; PAGE_SIZE]>,
    pfn: u64,
    node: u32,
}

impl DramPage {
    pub(crate) fn new(pfn: u64, node: u32, fill: impl FnOnce(&mut [u8; PAGE_SIZE])) -> DramPage {
        let mut data: Box<[u8; PAGE_SIZE]> = vec![0u8; PAGE_SIZE]
            .into_boxed_slice()
            .try_into()
            .expect("the vector has PAGE_SIZE bytes");
        fill(&mut data);
        DramPage { data, pfn, node }
    }

    /// The page's bytes.
    ///
    /// # Locking
    /// None: the page is immutable once filled.
    pub fn data(&self) -> &[u8; PAGE_SIZE] {
        &self.data
    }

    /// The pmem page this copies.
    ///
    /// # Locking
    /// None: the page is immutable once filled.
    pub fn pfn(&self) -> u64 {
        self.pfn
    }

    /// The NUMA node (index in the topology) it was made for.
    ///
    /// # Locking
    /// None: the page is immutable once filled.
    pub fn node(&self) -> u32 {
        self.node
    }
}

impl std::fmt::Debug for DramPage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DramPage(pfn {:#x}, node {})", self.pfn, self.node)
    }
}

const SHARDS: usize = 16;

/// pfn -> its copies, one per node. Sharded so fills of different pages
/// rarely contend; a fill holds its shard lock while copying so that a
/// write's `remove` cannot slip between reading pmem and publishing.
pub(crate) struct CopyTable {
    shards: [Mutex<HashMap<u64, Vec<Arc<DramPage>>>>; SHARDS],
}

impl CopyTable {
    pub(crate) fn new() -> CopyTable {
        CopyTable {
            shards: std::array::from_fn(|_| Mutex::new(HashMap::new())),
        }
    }

    pub(crate) fn shard(
        &self,
        pfn: u64,
    ) -> parking_lot::MutexGuard<'_, HashMap<u64, Vec<Arc<DramPage>>>> {
        self.shards[(pfn.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 60) as usize].lock()
    }
}
