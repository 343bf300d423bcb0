//! Errors of file-system operations and their errno, mapped in one place.

use fuser::Errno;

/// Why an operation failed.
#[derive(Debug, thiserror::Error)]
pub enum FsError {
    /// A POSIX condition the caller caused (ENOENT, EEXIST, ...).
    #[error("errno {0}")]
    Posix(i32),
    /// The media layer failed.
    #[error(transparent)]
    Media(#[from] pmemfs_ondisk::Error),
    /// A page map the page cache cannot hold (a pfn out of range).
    #[error("page cache: {0}")]
    Cache(#[from] pmemfs_pagecache::xarray::XaError),
}

pub type FsResult<T> = Result<T, FsError>;

/// Shorthand for a POSIX failure.
pub fn fail<T>(errno: i32) -> FsResult<T> {
    Err(FsError::Posix(errno))
}

impl FsError {
    /// The errno the kernel gets. The only place errors become errnos.
    pub fn errno(&self) -> Errno {
        use pmemfs_ondisk::Error as E;
        Errno::from_i32(match self {
            FsError::Posix(e) => *e,
            FsError::Media(E::NoSpace) => libc::ENOSPC,
            FsError::Media(E::ReadOnly) => libc::EROFS,
            FsError::Media(E::TransactionTooLarge(_)) => libc::E2BIG,
            // A media failure or an image that disagrees with itself: the
            // operation cannot be trusted, and the image refuses writes.
            FsError::Media(E::Poisoned | E::Corrupt(_) | E::Io(_)) => libc::EIO,
            FsError::Media(E::Locked | E::TooSmall { .. } | E::NotPmemfs(_) | E::Version(_)) => {
                libc::EIO
            }
            FsError::Cache(_) => libc::EIO,
        })
    }
}
