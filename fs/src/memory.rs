//! The daemon's memory after bursts.
//!
//! A large transaction (a clone of a file of many scattered pages) builds
//! and frees tens of megabytes of buffers: overlay pages, patches, the
//! maps it read, the journal entry, and then the DAX space of a file with
//! many entries. glibc's malloc would keep the daemon's resident memory at
//! such a burst's peak long after: it raises its mmap threshold after a
//! large buffer is freed, so that the next large ones come from the heap
//! among live data, and it keeps small freed pieces for reuse. So the
//! threshold is fixed ([`tune_allocator`]) and, after a burst, freed
//! memory is given back (`give_back_freed`); the daemon's memory is then
//! what it holds (README, memory for sharing: a clone of 262,144
//! scattered pages costs about 130 kB, where it cost 15 to 35 MB).

/// A commit whose patches are at least this many bytes was a burst.
pub(crate) const BIG_PATCHES: usize = 1 << 20;

/// A DAX space of at least this many XArray nodes was a burst when it
/// goes.
pub(crate) const BIG_SPACE_NODES: usize = 1024;

/// Buffers of 128 KiB and more get mappings of their own, given back
/// when freed. Call once, before the daemon's threads start.
pub fn tune_allocator() {
    // SAFETY: mallopt changes allocator settings only.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 128 << 10);
    }
}

/// Gives the allocator's free memory back to the system.
pub(crate) fn give_back_freed() {
    // SAFETY: malloc_trim only releases memory malloc holds free; it
    // touches nothing this program references.
    #[cfg(target_env = "gnu")]
    unsafe {
        libc::malloc_trim(0);
    }
}
