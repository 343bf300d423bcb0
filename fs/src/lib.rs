//! The pmemfs FUSE file system: inodes, directories, read, write, copy on
//! write, reflink, xattrs, statfs, built on `pmemfs-ondisk` for the media
//! and `pmemfs-pagecache` for the DAX page cache.
//!
//! Not written yet: issue 4 builds it. The crate exists so that the
//! workspace has its final shape and the dependency arrows
//! (`tools -> fs -> pagecache, ondisk`) are fixed from the start.
