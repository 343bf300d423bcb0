//! Errors of the media layer.
//!
//! `Corrupt` says what on the media failed to decode or check, and where;
//! `Error` is everything else an operation on an image can run into.

use std::io;

/// A structure on the media failed to decode or violates an invariant.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct Corrupt {
    /// The structure, e.g. "superblock copy 1" or "checkpoint page 7".
    pub what: String,
    /// What is wrong with it, in words a user can act on.
    pub detail: String,
}

impl Corrupt {
    pub fn new(what: impl Into<String>, detail: impl Into<String>) -> Self {
        Corrupt {
            what: what.into(),
            detail: detail.into(),
        }
    }
}

/// Errors of image-level operations.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("corrupt {0}")]
    Corrupt(#[from] Corrupt),
    #[error("the image is in use: another process (pmemfs-mount or a tool) holds its lock")]
    Locked,
    #[error("image too small: {size} bytes; the minimum is {min} bytes")]
    TooSmall { size: u64, min: u64 },
    #[error("not a pmemfs image: {0}")]
    NotPmemfs(String),
    /// A whole superblock of another format version (the message says
    /// what to do).
    #[error("the image is of {0}")]
    Version(String),
    #[error("no space left on the device")]
    NoSpace,
    #[error("a journal transaction of {0} bytes does not fit in the journal")]
    TransactionTooLarge(usize),
    #[error("the image is opened read-only")]
    ReadOnly,
    #[error("an earlier flush failed; the image refuses writes until it is opened again")]
    Poisoned,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
