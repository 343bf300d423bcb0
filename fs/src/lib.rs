//! The pmemfs FUSE file system.
//!
//! - [`state`]: the open image and the namespace operations (create, link,
//!   unlink, rename, xattrs), each one journal transaction;
//! - [`cache`]: the page cache: per-inode DAX spaces that reads find pfns
//!   in, kept equal to the page maps, and DRAM copies of hot pages;
//! - [`data`]: file data (read, write with copy on write, truncate,
//!   fallocate, seek, copy_file_range as a reflink);
//! - [`fuse`]: the `fuser::Filesystem` methods, thin: decode, call, reply;
//! - [`ioctl`]: usage and statistics for `pmemfs du` and `pmemfs stat`;
//! - [`attr`]: conversions to FUSE attributes; [`error`]: errno mapping;
//!   [`options`]: mount options.
//!
//! Built on `pmemfs-ondisk` for the media. Reads reply with slices of the
//! pmem mapping itself where a range lies in one run of pages.

pub mod attr;
pub mod cache;
pub mod data;
pub mod error;
pub mod fuse;
pub mod ioctl;
pub mod options;
pub mod state;

pub use fuse::PmemFs;
pub use options::MountOptions;
