//! pmemfs media layout.
//!
//! Everything that is stored on the persistent-memory image, and the rules
//! that keep it consistent across crashes: the [`superblock`] (two copies),
//! the metadata [`journal`], [`checkpoint`]s of the whole [`meta`]data, the
//! page allocator and the persistence domain ([`pmem`]). [`Image`] ties
//! them together: format, open (with recovery), commit, checkpoint.
//! POSIX ACLs, stored as extended attributes, are decoded and checked in
//! [`acl`].
//!
//! The byte layout of every structure is in `docs/format.md`; each module
//! also carries the diagram of what it encodes. The records the journal
//! and checkpoints are made of are in [`record`], one module each.
//!
//! This crate knows nothing of FUSE or of the page cache.

pub mod acl;
pub mod btree;
pub mod checkpoint;
pub mod dir;
pub mod error;
pub mod filemap;
pub mod image;
pub mod journal;
pub mod layout;
pub mod lock;
pub mod meta;
pub mod overlay;
pub mod pmem;
pub mod rangemap;
pub mod record;
pub mod recording;
pub mod shares;
pub mod superblock;
#[doc(hidden)]
pub mod testing;

pub use dir::Dir;
pub use error::{Corrupt, Error, Result};
pub use filemap::{FileMap, MapView};
pub use image::{format, format_pmem, now, Access, FormatOptions, Image, Recovery};
pub use layout::{Geometry, MIN_IMAGE_BYTES, PAGE_SIZE};
pub use meta::{Attr, Body, Ino, Inode, Kind, Meta, NewBody, Op, Time, ROOT_INO};
pub use pmem::{DomainKind, Pmem};
pub use rangemap::{RangeMap, Run};
pub use superblock::Superblock;
