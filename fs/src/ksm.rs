//! Online dedupe (`-o dedupe=online`): a scanner thread in the daemon that
//! merges identical pages of recently written files, as the kernel's KSM
//! merges identical anonymous pages.
//!
//! Writes queue their file ([`Queue::push`]); the scanner takes the files
//! in turn and fingerprints their pages from pmem, a few at a time under the
//! shared lock ([`State::page_hashes`]). A page whose fingerprint it has
//! seen before, on another pfn, is merged with the page seen first through
//! [`State::dedupe`], which compares the bytes under the exclusive lock and
//! shares only equal ones, in one transaction: the scanner never merges
//! pages that differ, and a writer waits for it at most one page
//! comparison and one commit. Pages are fingerprinted once per write of
//! their file; the fingerprints seen are kept up to a bound (the oldest
//! go), so memory stays bounded.
//!
//! The rate is KSM's: `pages` pages per `interval`, then sleep; at the
//! default (100 pages every 20 ms, 20 MB/s) the scanner takes a few
//! percent of one CPU while it has work and none when the queue is empty.
//! Its counters, in the manner of `/sys/kernel/mm/ksm`, are in `pmemfs
//! stat`.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};
use pmemfs_ondisk::{Ino, PAGE_SIZE};

use crate::dedupe::Outcome;
use crate::state::State;

/// How fast the scanner goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Pages fingerprinted per interval (KSM's pages_to_scan).
    pub pages: u64,
    /// Sleep between intervals (KSM's sleep_millisecs).
    pub interval: Duration,
}

impl Default for Rate {
    fn default() -> Rate {
        Rate {
            pages: 100,
            interval: Duration::from_millis(20),
        }
    }
}

/// Fingerprints kept: 1 Mi pages seen (4 GiB of data), about 48 MiB.
const SEEN_LIMIT: usize = 1 << 20;

/// Pages fingerprinted under one hold of the shared lock.
const BATCH: u64 = 16;

/// The scanner's counters, as KSM's.
#[derive(Debug, Default)]
pub struct Counters {
    /// Pages fingerprinted.
    pub scanned: AtomicU64,
    /// Pages others were merged into (KSM's pages_shared).
    pub shared: AtomicU64,
    /// Pages merged into an equal page (KSM's pages_sharing): each saves a
    /// page, unless something else still maps the one it had.
    pub merged: AtomicU64,
    /// Pages fingerprinted that had no twin yet (pages_unshared).
    pub unshared: AtomicU64,
    /// Twins by fingerprint whose bytes differed (or changed before the
    /// merge): left alone.
    pub differed: AtomicU64,
    /// Files fully scanned.
    pub files: AtomicU64,
}

/// A snapshot of [`Counters`], with the queue's length.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KsmStats {
    pub on: bool,
    pub scanned: u64,
    pub shared: u64,
    pub merged: u64,
    pub unshared: u64,
    pub differed: u64,
    pub files: u64,
    pub queued: u64,
}

/// The running scanner: stopped and joined by [`Scanner::stop`].
pub struct Scanner {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<std::thread::JoinHandle<()>>,
}

/// Where a page was seen first.
#[derive(Clone, Copy)]
struct Seen {
    ino: Ino,
    index: u64,
    pfn: u64,
    /// Some page has been merged into this one.
    sharing: bool,
}

impl Scanner {
    /// Starts scanning the files `state` queues, at `rate`.
    pub fn start(state: Arc<RwLock<State>>, rate: Rate) -> std::io::Result<Scanner> {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s = Arc::clone(&stop);
        let thread = std::thread::Builder::new()
            .name("pmemfs-ksm".into())
            .spawn(move || run(&state, rate, &s))?;
        Ok(Scanner {
            stop,
            thread: Some(thread),
        })
    }

    /// Stops the scanner and waits for it (it finishes the page at hand).
    pub fn stop(&mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Scanner {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(state: &RwLock<State>, rate: Rate, stop: &(Mutex<bool>, Condvar)) {
    let mut seen: HashMap<u64, Seen> = HashMap::new();
    let mut order: VecDeque<u64> = VecDeque::new();
    let mut cursor: Option<(Ino, u64)> = None;
    let counters = state.read().ksm_queue().counters();
    loop {
        {
            let mut stopped = stop.0.lock();
            if !*stopped {
                let idle = cursor.is_none() && state.read().ksm_queue().is_empty();
                // With nothing queued, sleep until stopped or a while
                // passes (a write queues its file without waking us).
                let wait = if idle {
                    rate.interval * 10
                } else {
                    rate.interval
                };
                stop.1.wait_for(&mut stopped, wait);
            }
            if *stopped {
                return;
            }
        }
        let mut budget = rate.pages;
        while budget > 0 {
            let (ino, from) = match cursor {
                Some(c) => c,
                None => match state.read().ksm_queue().pop_front() {
                    Some(ino) => (ino, 0),
                    None => break,
                },
            };
            let n = budget.min(BATCH);
            let Ok((pages, next)) = state.read().page_hashes_from(ino, from, n as usize) else {
                // Gone, or no longer a file.
                cursor = None;
                continue;
            };
            budget = budget.saturating_sub(n);
            cursor = next.map(|next| (ino, next));
            if cursor.is_none() {
                counters.files.fetch_add(1, Ordering::Relaxed);
            }
            for p in pages {
                counters.scanned.fetch_add(1, Ordering::Relaxed);
                // This page, as the one to stand for its fingerprint.
                let here = Seen {
                    ino,
                    index: p.index,
                    pfn: p.pfn,
                    sharing: false,
                };
                match seen.get(&p.hash).copied() {
                    Some(first) if first.pfn == p.pfn => {}
                    Some(first) if first.ino == ino && first.index == p.index => {
                        // Rewritten since: this is the page now.
                        seen.insert(p.hash, here);
                    }
                    Some(first) => {
                        let out = state.write().dedupe(
                            first.ino,
                            first.index * PAGE_SIZE,
                            PAGE_SIZE,
                            &[(ino, p.index * PAGE_SIZE)],
                            |_| true,
                        );
                        match out.as_deref() {
                            Ok([Outcome::Same { .. }]) => {
                                counters.merged.fetch_add(1, Ordering::Relaxed);
                                if !first.sharing {
                                    counters.shared.fetch_add(1, Ordering::Relaxed);
                                    seen.insert(
                                        p.hash,
                                        Seen {
                                            sharing: true,
                                            ..first
                                        },
                                    );
                                }
                            }
                            Ok([Outcome::Differs]) => {
                                counters.differed.fetch_add(1, Ordering::Relaxed);
                                // The first page changed (or collides):
                                // this one stands for the fingerprint now.
                                seen.insert(p.hash, here);
                            }
                            // The first page's file is gone or refuses
                            // (append-only, say): this one takes its place.
                            _ => {
                                seen.insert(p.hash, here);
                            }
                        }
                    }
                    None => {
                        counters.unshared.fetch_add(1, Ordering::Relaxed);
                        if seen.len() >= SEEN_LIMIT {
                            if let Some(old) = order.pop_front() {
                                seen.remove(&old);
                            }
                        }
                        seen.insert(p.hash, here);
                        order.push_back(p.hash);
                    }
                }
            }
        }
    }
}

/// The scanner's view of the state: which files to scan, and its counters.
/// Files are taken in inode order.
#[derive(Debug, Default)]
pub struct Queue {
    on: AtomicBool,
    files: Mutex<BTreeSet<Ino>>,
    counters: Arc<Counters>,
}

impl Queue {
    /// Turns queueing on (the mount scans).
    pub fn enable(&self) {
        self.on.store(true, Ordering::Relaxed);
    }

    /// Queues `ino` (once, however often it is written before its scan).
    pub fn push(&self, ino: Ino) {
        if self.on.load(Ordering::Relaxed) {
            self.files.lock().insert(ino);
        }
    }

    pub fn pop_front(&self) -> Option<Ino> {
        self.files.lock().pop_first()
    }

    pub fn is_empty(&self) -> bool {
        self.files.lock().is_empty()
    }

    pub fn counters(&self) -> Arc<Counters> {
        Arc::clone(&self.counters)
    }

    pub fn stats(&self) -> KsmStats {
        let c = &self.counters;
        KsmStats {
            on: self.on.load(Ordering::Relaxed),
            scanned: c.scanned.load(Ordering::Relaxed),
            shared: c.shared.load(Ordering::Relaxed),
            merged: c.merged.load(Ordering::Relaxed),
            unshared: c.unshared.load(Ordering::Relaxed),
            differed: c.differed.load(Ordering::Relaxed),
            files: c.files.load(Ordering::Relaxed),
            queued: self.files.lock().len() as u64,
        }
    }
}
