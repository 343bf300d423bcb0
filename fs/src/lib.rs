//! The pmemfs FUSE file system.
//!
//! - [`state`]: the open image and the namespace operations (create, link,
//!   unlink, rename, xattrs), each one journal transaction;
//! - [`cache`]: the page cache: per-inode DAX spaces that reads find pfns
//!   in, kept equal to the page maps, and DRAM copies of hot pages;
//! - [`data`]: file data (read, write with copy on write, truncate,
//!   fallocate, seek, copy_file_range as a reflink);
//! - [`flags`]: inode flags (chattr): immutable, append-only, nodump, noatime;
//! - [`fuse`]: the `fuser::Filesystem` methods, thin: decode, call, reply;
//! - [`ioctl`]: usage and statistics for `pmemfs du` and `pmemfs stat`;
//! - [`acl`]: POSIX ACLs kept in step with the mode, inherited on create;
//! - [`atime`]: access times under relatime, strictatime, noatime, batched;
//! - [`ops`]: per-opcode request counters (`pmemfs stat --ops`);
//! - [`opens`]: open handles per inode, and which bypass the page cache;
//! - [`privs`]: set-uid, set-gid and capabilities dropped as the kernel would;
//! - [`attr`]: conversions to FUSE attributes; [`error`]: errno mapping;
//!   [`options`]: mount options.
//!
//! Built on `pmemfs-ondisk` for the media. Reads reply with slices of the
//! pmem mapping itself where a range lies in one run of pages.

pub mod acl;
pub mod atime;
pub mod attr;
pub mod cache;
pub mod commit;
pub mod data;
pub mod datalock;
pub mod dedupe;
pub mod error;
pub mod flags;
pub mod fuse;
pub mod ioctl;
pub mod ksm;
pub mod lifetime;
pub mod memory;
pub mod namespace;
pub mod opens;
pub mod ops;
pub mod options;
pub mod poll;
pub mod privs;
pub mod state;
pub mod xattr;

pub use fuse::PmemFs;
pub use options::MountOptions;
