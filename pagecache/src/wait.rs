//! Hashed wait queues, like Linux's `page_wait_table`: a few mutex and
//! condvar pairs shared by every key (pfn), so nothing that can be waited
//! on needs a queue of its own.
//!
//! Protocol (no lost wake-ups): a waiter takes the bucket mutex, then
//! re-checks its condition and announces itself (e.g. sets a WAITERS bit)
//! in `should_sleep`, then sleeps, releasing the mutex atomically. A waker
//! first changes the state, then takes the bucket mutex and notifies, so it
//! either runs before the waiter's check or finds the waiter asleep.

use parking_lot::{Condvar, Mutex};

const BUCKETS: usize = 64;

struct Queue {
    lock: Mutex<()>,
    cond: Condvar,
}

static TABLE: [Queue; BUCKETS] = [const {
    Queue {
        lock: Mutex::new(()),
        cond: Condvar::new(),
    }
}; BUCKETS];

/// Bytes of the (global, shared) wait table.
pub const WAIT_TABLE_BYTES: usize = std::mem::size_of::<[Queue; BUCKETS]>();

fn bucket(key: u64) -> &'static Queue {
    &TABLE[(key.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 58) as usize]
}

/// Sleeps once on `key`'s queue if `should_sleep` (run under the bucket
/// lock) says so. Callers loop: wake-ups may be for another key.
pub(crate) fn wait(key: u64, should_sleep: impl FnOnce() -> bool) {
    let q = bucket(key);
    let mut g = q.lock.lock();
    if should_sleep() {
        q.cond.wait(&mut g);
    }
}

/// Wakes every waiter of `key`'s bucket (they re-check their condition).
pub(crate) fn wake(key: u64) {
    let q = bucket(key);
    let _g = q.lock.lock();
    q.cond.notify_all();
}
