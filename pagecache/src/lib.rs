//! The pmemfs page cache: which pmem page backs each page of each file,
//! which pages are shared between files (reflink), and which have DRAM
//! copies on which NUMA node.
//!
//! - [`xarray`]: the index, a 64-way radix tree of tagged words with marks
//!   and multi-order entries, after Linux `lib/xarray.c`.
//! - [`desc`]: page descriptors (share count, flags, wait/wake), made
//!   lazily in chunks and freed when idle.
//! - [`space`]: per-inode address_spaces, one DAX space and one DRAM space
//!   per NUMA node, and the write path (copy on write under an exclusive
//!   entry).
//! - [`clone`](PageCache::clone_range): range clone and range erase.
//! - [`numa`]: topology from sysfs, node emulation, current node.
//!
//! Pfns are plain `u64` page numbers inside the mapped pmem; this crate
//! never touches pmem or FUSE. Every public method documents its locking
//! in a `# Locking` section.

mod clone;
pub mod desc;
pub mod dram;
pub mod numa;
pub mod space;
mod wait;
pub mod xarray;

pub use clone::{CloneError, CloneReport};
pub use desc::{DescTable, PfnRange};
pub use dram::{DramPage, PAGE_SIZE};
pub use numa::Topology;
pub use space::{DaxSpace, DramSpace, InodeSpaces, PageCache, WriteBegin, WriteGuard};
pub use wait::WAIT_TABLE_BYTES;
