//! The pmemfs command-line tools, as a library so that each binary stays a
//! thin `main` and the tests can reach the parts.
//!
//! - [`mkfs`]: `mkfs.pmemfs`, formats an image.
//! - [`fsck`]: `fsck.pmemfs`, checks and repairs one.
//! - [`client`]: `pmemfs reflink`, `pmemfs du`, `pmemfs stat`, talking to a
//!   mount through [`control`].
//! - [`mount`]: `pmemfs-mount` (and `mount.pmemfs`), serves one over FUSE.
//! - [`install`]: `pmemfs install`, puts the tools where mount(8) looks.

pub mod client;
pub mod control;
pub mod dedupe;
pub mod fsck;
pub mod install;
pub mod links;
pub mod mkfs;
pub mod mount;
pub mod progress;
pub mod size;
