//! Switches that plant deliberate ordering bugs, for the test that proves
//! the crash harness (`tests/crash.rs`) can fail. Nothing else may set
//! them.
//!
//! Every switch is off unless a test turns it on, and costs one relaxed
//! atomic load where it is consulted. They are process-wide: a test that
//! turns one on must not run alongside tests that expect correct code.

use std::sync::atomic::{AtomicBool, Ordering};

/// When set, `journal::append` writes an entry without flushing and
/// fencing it: a commit is not durable when it returns.
#[doc(hidden)]
pub static SKIP_JOURNAL_FENCE: AtomicBool = AtomicBool::new(false);

/// When set, the file system does not fence new data pages before the
/// transaction that maps them: the `Map` can reach the media before the
/// data.
#[doc(hidden)]
pub static SKIP_DATA_FENCE: AtomicBool = AtomicBool::new(false);

/// Whether [`SKIP_JOURNAL_FENCE`] is set.
#[doc(hidden)]
#[inline]
pub fn skip_journal_fence() -> bool {
    SKIP_JOURNAL_FENCE.load(Ordering::Relaxed)
}

/// Whether [`SKIP_DATA_FENCE`] is set.
#[doc(hidden)]
#[inline]
pub fn skip_data_fence() -> bool {
    SKIP_DATA_FENCE.load(Ordering::Relaxed)
}
