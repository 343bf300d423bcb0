//! A recording persistence domain, for crash tests.
//!
//! [`Recording`] is a [`PersistenceDomain`] that keeps the image twice: the
//! *live* copy that the code under test reads and writes (the CPU's view),
//! and a *durable* copy (what the media holds). It follows every store,
//! flush and fence at cache-line granularity (64 bytes):
//!
//! - a store marks the lines it touched *dirty*;
//! - a flush turns the dirty lines of its range into *flushed*, taking a
//!   copy of each as it is then (what the write-back carries);
//! - a fence makes every flushed line durable with that copy. A line stored
//!   again after its flush stays dirty (in flight) after the fence.
//!
//! Fences are numbered from 1; *crash point* `k` is the instant just before
//! fence `k + 1` is issued (or the end of the recording, for `k` equal to
//! [`RecordingHandle::fences`]): the media then holds what fences `1..=k`
//! made durable, plus any subset of the lines *in flight* (stored, or
//! flushed, and not yet durable), each of which may or may not have reached
//! the media. [`Trace::crash_image`] builds that image for any subset.
//! Crash point 0 is the image the recording started from with any subset of
//! the stores before the first fence.
//!
//! What the model leaves out: an in-flight line offers only its content at
//! the crash point, not earlier values it held since its last durable one
//! (a line stored twice between two fences might reach the media with the
//! first value); and a line reaches the media whole, where real hardware
//! only promises 8-byte atomicity. The code under test never stores to a
//! line twice between fences where it matters, and every structure on the
//! media is covered by a checksum, so neither changes what is tested.
//!
//! For speed, the durable copy is kept as a log: for every fence, the lines
//! it made durable ([`Trace::durable_lines`]), with a full snapshot of the
//! durable image every time the log grows by the size of the image, so the
//! durable image at any fence is a copy plus a short replay. A
//! [`Replayer`] walks the crash points in order and hands out each crash
//! image as a [`Pmem`] over one reusable buffer, undoing what was written
//! to it between uses, so that checking a crash state costs what recovery
//! touches rather than a copy of the whole image.
//!
//! ```
//! use pmemfs_ondisk::recording::Recording;
//! let (pmem, rec) = Recording::new(1 << 20);
//! pmem.write(0, b"durable").unwrap();
//! pmem.persist(0, 7).unwrap();
//! pmem.write(4096, b"in flight").unwrap();
//! assert_eq!(rec.fences(), 1);
//! let trace = rec.trace();
//! assert_eq!(trace.in_flight_lines(1), vec![4096]);
//! let lost = trace.crash_image(1, &[]).unwrap();
//! assert_eq!(&lost[4096..4105], &[0; 9]);
//! let kept = trace.crash_image(1, &[4096]).unwrap();
//! assert_eq!(&kept[4096..4105], b"in flight");
//! assert_eq!(&trace.crash_image(0, &[]).unwrap()[0..7], &[0; 7]);
//! ```

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex, MutexGuard};

use crate::error::{Error, Result};
use crate::pmem::{DomainKind, PersistenceDomain, Pmem, CACHE_LINE};

/// Bytes in a line.
const LINE: usize = CACHE_LINE as usize;
/// The contents of one cache line.
pub type Line = [u8; LINE];

const DIRTY: u8 = 1;
const FLUSHED: u8 = 2;

/// A heap buffer reached through raw pointers, as a mapping is.
struct RawBuf {
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the bytes are plain memory; who may touch them when is the
// business of the owners (documented on each use).
unsafe impl Send for RawBuf {}
unsafe impl Sync for RawBuf {}

impl RawBuf {
    fn from_vec(v: Vec<u8>) -> RawBuf {
        let b = v.into_boxed_slice();
        let len = b.len();
        RawBuf {
            ptr: Box::into_raw(b).cast::<u8>(),
            len,
        }
    }

    /// Copies `len` bytes at `off` out.
    ///
    /// # Safety
    /// Nobody may store to the range meanwhile.
    unsafe fn line(&self, off: u64) -> Line {
        let mut l = [0u8; LINE];
        // SAFETY: callers pass line offsets inside the buffer (the domain
        // only records lines of ranges Pmem checked); no store races
        // (caller).
        unsafe { std::ptr::copy_nonoverlapping(self.ptr.add(off as usize), l.as_mut_ptr(), LINE) };
        l
    }

    /// Stores `data` at `off`.
    ///
    /// # Safety
    /// Nobody else may read or store the range meanwhile.
    unsafe fn store(&self, off: usize, data: &[u8]) {
        debug_assert!(off + data.len() <= self.len);
        // SAFETY: in bounds (callers), exclusive (caller).
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), self.ptr.add(off), data.len()) };
    }
}

impl Drop for RawBuf {
    fn drop(&mut self) {
        // SAFETY: rebuilds exactly the box `from_vec` gave up.
        drop(unsafe { Box::from_raw(std::ptr::slice_from_raw_parts_mut(self.ptr, self.len)) });
    }
}

/// One line made durable by one fence.
#[derive(Debug, Clone)]
pub struct DurableLine {
    /// The fence (from 1) that made it durable.
    pub fence: u64,
    /// Byte offset of the line.
    pub off: u64,
    pub data: Line,
}

/// Everything a recording saw, frozen: the durable image at every fence and
/// the lines in flight at every crash point. Cheap to share between
/// threads by reference.
#[derive(Clone)]
pub struct Trace {
    len: u64,
    fences: u64,
    /// Lines made durable, fence by fence, in line order within a fence.
    durable: Vec<DurableLine>,
    /// `fence_end[k]`: entries of `durable` made by fences `1..=k`.
    fence_end: Vec<usize>,
    /// `in_flight[k]`: lines in flight at crash point `k`, by offset, with
    /// the content they had then. Complete (`fences + 1` entries) once
    /// frozen by [`RecordingHandle::trace`].
    in_flight: Vec<Vec<(u64, Line)>>,
    /// (fence, durable image after it), ascending; the first is fence 0.
    snapshots: Vec<(u64, Arc<Vec<u8>>)>,
}

impl Trace {
    /// Bytes in the image.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Fences recorded; crash points are `0..=fences()`.
    pub fn fences(&self) -> u64 {
        self.fences
    }

    fn check_fence(&self, at_fence: u64) -> Result<()> {
        if at_fence > self.fences {
            return Err(Error::Io(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "crash point {at_fence} lies past the last fence ({})",
                    self.fences
                ),
            )));
        }
        Ok(())
    }

    /// The lines fence `fence` (from 1) made durable.
    pub fn durable_lines(&self, fence: u64) -> &[DurableLine] {
        match (fence, self.fence_end.get(fence as usize)) {
            (1.., Some(&end)) => &self.durable[self.fence_end[fence as usize - 1]..end],
            _ => &[],
        }
    }

    /// Byte offsets of the lines in flight at crash point `at_fence`:
    /// stored or flushed, not yet made durable by a fence. Empty past the
    /// last crash point.
    pub fn in_flight_lines(&self, at_fence: u64) -> Vec<u64> {
        self.in_flight(at_fence).iter().map(|(o, _)| *o).collect()
    }

    /// The lines in flight at crash point `at_fence`, with the content each
    /// would carry to the media.
    pub fn in_flight(&self, at_fence: u64) -> &[(u64, Line)] {
        self.in_flight
            .get(at_fence as usize)
            .map_or(&[], |v| v.as_slice())
    }

    /// The latest snapshot taken at or before fence `at_fence`, and its
    /// fence.
    fn snapshot_before(&self, at_fence: u64) -> Result<(u64, &[u8])> {
        self.snapshots
            .iter()
            .rev()
            .find(|(f, _)| *f <= at_fence)
            .map(|(f, s)| (*f, s.as_slice()))
            .ok_or_else(|| Error::Io(io::Error::other("a recording has no fence-0 image")))
    }

    /// The durable image after `at_fence` fences.
    pub fn durable_image(&self, at_fence: u64) -> Result<Vec<u8>> {
        self.check_fence(at_fence)?;
        let (from, snap) = self.snapshot_before(at_fence)?;
        let mut img = snap.to_vec();
        self.replay(&mut img, from, at_fence);
        Ok(img)
    }

    /// Applies to `img` (the durable image after `from` fences) the lines
    /// fences `from + 1 ..= to` made durable.
    fn replay(&self, img: &mut [u8], from: u64, to: u64) {
        let (a, b) = (self.fence_end[from as usize], self.fence_end[to as usize]);
        for l in &self.durable[a..b] {
            let o = l.off as usize;
            img[o..o + LINE].copy_from_slice(&l.data);
        }
    }

    /// The image a crash at crash point `at_fence` leaves when the in-flight
    /// lines at offsets `subset` reached the media and the others did not.
    /// Fails if `at_fence` is past the last fence or a line of `subset` was
    /// not in flight there.
    pub fn crash_image(&self, at_fence: u64, subset: &[u64]) -> Result<Vec<u8>> {
        let mut img = self.durable_image(at_fence)?;
        for (off, data) in self.subset_lines(at_fence, subset)? {
            img[off as usize..off as usize + LINE].copy_from_slice(data);
        }
        Ok(img)
    }

    fn subset_lines(&self, at_fence: u64, subset: &[u64]) -> Result<Vec<(u64, &Line)>> {
        let flying = self.in_flight(at_fence);
        subset
            .iter()
            .map(|&off| {
                flying
                    .binary_search_by_key(&off, |(o, _)| *o)
                    .map(|i| (off, &flying[i].1))
                    .map_err(|_| {
                        Error::Io(io::Error::new(
                            io::ErrorKind::InvalidInput,
                            format!("line {off} is not in flight at crash point {at_fence}"),
                        ))
                    })
            })
            .collect()
    }

    /// A [`Replayer`] positioned at crash point `at_fence`.
    pub fn replayer(&self, at_fence: u64) -> Result<Replayer<'_>> {
        let reference = self.durable_image(at_fence)?;
        let scratch = Arc::new(Scratch::new(reference.clone()));
        Ok(Replayer {
            trace: self,
            at: at_fence,
            reference,
            scratch,
        })
    }

    /// [`Trace::replayer`] in the buffers of a replayer done with
    /// ([`Replayer::into_buffers`], of any trace): no allocation and no page
    /// faults when many recordings are replayed one after another.
    pub fn replayer_in(&self, bufs: ReplayBuffers, at_fence: u64) -> Result<Replayer<'_>> {
        self.check_fence(at_fence)?;
        let ReplayBuffers {
            mut reference,
            mut scratch,
        } = bufs;
        if reference.len() as u64 != self.len {
            return self.replayer(at_fence);
        }
        let (from, snap) = self.snapshot_before(at_fence)?;
        reference.copy_from_slice(snap);
        self.replay(&mut reference, from, at_fence);
        match Arc::get_mut(&mut scratch) {
            Some(s) => {
                s.touched();
                // SAFETY: ours alone (get_mut); as long as `reference`.
                unsafe { s.buf.store(0, &reference) };
            }
            None => scratch = Arc::new(Scratch::new(reference.clone())),
        }
        Ok(Replayer {
            trace: self,
            at: at_fence,
            reference,
            scratch,
        })
    }
}

/// The recording's working state, behind the domain's lock.
struct Log {
    /// Per line: DIRTY and FLUSHED bits.
    state: Vec<u8>,
    /// Lines whose state is not 0 (each once).
    pending: Vec<u64>,
    /// What each flushed line carries to the media.
    flushed: HashMap<u64, Line>,
    /// Bytes of durable lines logged since the last snapshot.
    since_snapshot: u64,
    /// Completed epochs only: `in_flight.len() == fences`.
    trace: Trace,
}

struct Shared {
    live: RawBuf,
    log: Mutex<Log>,
}

impl Shared {
    fn log(&self) -> MutexGuard<'_, Log> {
        // A panic while the log was held leaves it as consistent as any
        // crash would: use it anyway.
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The recording persistence domain; see the module documentation.
pub struct Recording {
    shared: Arc<Shared>,
}

/// The test's side of a [`Recording`]: asks what was recorded.
#[derive(Clone)]
pub struct RecordingHandle {
    shared: Arc<Shared>,
}

impl Recording {
    /// A zeroed recording image of `len` bytes, writable, and its handle.
    // The domain lives inside the Pmem: the caller gets that and a handle.
    #[allow(clippy::new_ret_no_self)]
    pub fn new(len: u64) -> (Pmem, RecordingHandle) {
        Recording::with_image(vec![0; len as usize])
    }

    /// A recording that starts from `image`, durable as it is.
    pub fn with_image(image: Vec<u8>) -> (Pmem, RecordingHandle) {
        Recording::with_shared_image(Arc::new(image))
    }

    /// [`Recording::with_image`] from an image shared with others (many
    /// recordings from one starting image): one copy fewer.
    pub fn with_shared_image(image: Arc<Vec<u8>>) -> (Pmem, RecordingHandle) {
        let len = image.len() as u64;
        let lines = image.len().div_ceil(LINE);
        let live = RawBuf::from_vec(image.to_vec());
        let base = image;
        let log = Log {
            state: vec![0; lines],
            pending: Vec::new(),
            flushed: HashMap::new(),
            since_snapshot: 0,
            trace: Trace {
                len,
                fences: 0,
                durable: Vec::new(),
                fence_end: vec![0],
                in_flight: Vec::new(),
                snapshots: vec![(0, base)],
            },
        };
        let shared = Arc::new(Shared {
            live,
            log: Mutex::new(log),
        });
        let handle = RecordingHandle {
            shared: Arc::clone(&shared),
        };
        (
            Pmem::from_domain(Box::new(Recording { shared }), true),
            handle,
        )
    }
}

impl Log {
    fn lines(off: u64, len: u64) -> std::ops::Range<u64> {
        if len == 0 {
            return 0..0;
        }
        off / CACHE_LINE..(off + len - 1) / CACHE_LINE + 1
    }

    fn stored(&mut self, off: u64, len: u64) {
        for l in Log::lines(off, len) {
            let s = &mut self.state[l as usize];
            if *s == 0 {
                self.pending.push(l);
            }
            *s |= DIRTY;
        }
    }

    fn flush(&mut self, live: &RawBuf, off: u64, len: u64) {
        for l in Log::lines(off, len) {
            let s = &mut self.state[l as usize];
            if *s & DIRTY != 0 {
                *s = FLUSHED;
                // SAFETY: the store that dirtied it has returned; the
                // writer is the thread flushing now.
                self.flushed.insert(l, unsafe { live.line(l * CACHE_LINE) });
            }
        }
    }

    /// The lines in flight now, by offset, with their live content.
    fn flying(&self, live: &RawBuf) -> Vec<(u64, Line)> {
        let mut v: Vec<(u64, Line)> = self
            .pending
            .iter()
            .filter(|&&l| self.state[l as usize] != 0)
            // SAFETY: as in `flush`: the writer is the thread asking.
            .map(|&l| (l * CACHE_LINE, unsafe { live.line(l * CACHE_LINE) }))
            .collect();
        v.sort_unstable_by_key(|(o, _)| *o);
        v
    }

    fn fence(&mut self, live: &RawBuf) {
        let flying = self.flying(live);
        self.trace.in_flight.push(flying);
        let fence = self.trace.fences + 1;
        let mut made: Vec<u64> = self
            .pending
            .iter()
            .copied()
            .filter(|&l| self.state[l as usize] & FLUSHED != 0)
            .collect();
        made.sort_unstable();
        for l in made {
            let data = self.flushed.remove(&l).unwrap_or([0; LINE]);
            self.state[l as usize] &= !FLUSHED;
            let off = l * CACHE_LINE;
            self.trace.durable.push(DurableLine { fence, off, data });
            self.since_snapshot += CACHE_LINE;
        }
        let state = &self.state;
        self.pending.retain(|&l| state[l as usize] != 0);
        self.trace.fences = fence;
        self.trace.fence_end.push(self.trace.durable.len());
        if self.since_snapshot >= self.trace.len.max(CACHE_LINE) {
            self.since_snapshot = 0;
            // The log since the last snapshot is as long as the image: a
            // replay from here on costs at most a copy.
            if let Ok(img) = self.trace.durable_image(fence) {
                self.trace.snapshots.push((fence, Arc::new(img)));
            }
        }
    }
}

// SAFETY: `live` is a heap buffer of `len` bytes that lives as long as the
// Arc, which the domain holds.
unsafe impl PersistenceDomain for Recording {
    fn kind(&self) -> DomainKind {
        DomainKind::Recording
    }
    fn base(&self) -> *mut u8 {
        self.shared.live.ptr
    }
    fn len(&self) -> u64 {
        self.shared.live.len as u64
    }
    fn stored(&self, off: u64, len: u64) {
        self.shared.log().stored(off, len);
    }
    fn flush(&self, off: u64, len: u64) -> io::Result<()> {
        self.shared.log().flush(&self.shared.live, off, len);
        Ok(())
    }
    fn fence(&self) -> io::Result<()> {
        self.shared.log().fence(&self.shared.live);
        Ok(())
    }
}

impl RecordingHandle {
    /// Fences so far.
    pub fn fences(&self) -> u64 {
        self.shared.log().trace.fences
    }

    /// Everything recorded so far, frozen; crash point `fences()` holds the
    /// lines in flight now.
    ///
    /// Call it while nobody stores to the recording's [`Pmem`] (the live
    /// copy is read for the lines in flight now).
    pub fn trace(&self) -> Trace {
        let log = self.shared.log();
        let mut t = log.trace.clone();
        t.in_flight.push(log.flying(&self.shared.live));
        t
    }

    /// Byte offsets of the lines in flight at crash point `at_fence`.
    pub fn in_flight_lines(&self, at_fence: u64) -> Vec<u64> {
        self.trace().in_flight_lines(at_fence)
    }

    /// See [`Trace::crash_image`].
    pub fn crash_image(&self, at_fence: u64, subset: &[u64]) -> Result<Vec<u8>> {
        self.trace().crash_image(at_fence, subset)
    }

    /// The durable image now: what a crash that lost every line in flight
    /// would leave.
    pub fn durable_now(&self) -> Vec<u8> {
        let log = self.shared.log();
        // Every fence up to `fences` is in the log.
        log.trace
            .durable_image(log.trace.fences)
            .unwrap_or_default()
    }
}

/// The buffer a [`Replayer`] lends out, and which of its ranges were stored
/// to since it last matched the reference.
struct Scratch {
    buf: RawBuf,
    touched: Mutex<Vec<(u64, u64)>>,
}

impl Scratch {
    fn new(image: Vec<u8>) -> Scratch {
        Scratch {
            buf: RawBuf::from_vec(image),
            touched: Mutex::new(Vec::new()),
        }
    }

    fn touched(&mut self) -> Vec<(u64, u64)> {
        std::mem::take(self.touched.get_mut().unwrap_or_else(|p| p.into_inner()))
    }
}

/// A memory domain over a [`Scratch`] buffer that notes what is stored.
struct ScratchDomain(Arc<Scratch>);

// SAFETY: the buffer lives as long as the Arc the domain holds.
unsafe impl PersistenceDomain for ScratchDomain {
    fn kind(&self) -> DomainKind {
        DomainKind::Memory
    }
    fn base(&self) -> *mut u8 {
        self.0.buf.ptr
    }
    fn len(&self) -> u64 {
        self.0.buf.len as u64
    }
    fn stored(&self, off: u64, len: u64) {
        self.0
            .touched
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((off, len));
    }
    fn flush(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn fence(&self) -> io::Result<()> {
        Ok(())
    }
}

/// The buffers of a [`Replayer`], kept to be reused by
/// [`Trace::replayer_in`].
pub struct ReplayBuffers {
    reference: Vec<u8>,
    scratch: Arc<Scratch>,
}

/// Hands out the crash images of a [`Trace`] one after another, cheaply.
///
/// It keeps the durable image at its crash point and a scratch copy; each
/// [`Replayer::with_image`] puts the chosen in-flight lines into the
/// scratch copy, lends it out as a writable in-memory [`Pmem`] (so recovery
/// can run on it), and afterwards copies back from the durable image only
/// what was changed. Moving forward ([`Replayer::seek`]) replays the lines
/// the fences in between made durable.
pub struct Replayer<'t> {
    trace: &'t Trace,
    at: u64,
    reference: Vec<u8>,
    scratch: Arc<Scratch>,
}

impl Replayer<'_> {
    /// The crash point the replayer is at.
    pub fn at(&self) -> u64 {
        self.at
    }

    /// The durable image at the current crash point.
    pub fn durable(&self) -> &[u8] {
        &self.reference
    }

    /// Whether the scratch buffer can be used exclusively; replaces it with
    /// a fresh copy of the reference when a lent [`Pmem`] outlived its use.
    fn scratch(&mut self) -> &mut Scratch {
        if Arc::get_mut(&mut self.scratch).is_none() {
            self.scratch = Arc::new(Scratch::new(self.reference.clone()));
        }
        // The Arc was unique, or was just made.
        match Arc::get_mut(&mut self.scratch) {
            Some(s) => s,
            None => unreachable!("a new Arc is unique"),
        }
    }

    /// Gives up the buffers, for [`Trace::replayer_in`].
    pub fn into_buffers(self) -> ReplayBuffers {
        ReplayBuffers {
            reference: self.reference,
            scratch: self.scratch,
        }
    }

    /// Moves to crash point `at_fence`.
    pub fn seek(&mut self, at_fence: u64) -> Result<()> {
        self.trace.check_fence(at_fence)?;
        if at_fence < self.at {
            self.reference = self.trace.durable_image(at_fence)?;
            self.scratch = Arc::new(Scratch::new(self.reference.clone()));
            self.at = at_fence;
            return Ok(());
        }
        let (a, b) = (
            self.trace.fence_end[self.at as usize],
            self.trace.fence_end[at_fence as usize],
        );
        let lines = &self.trace.durable[a..b];
        for l in lines {
            let o = l.off as usize;
            self.reference[o..o + LINE].copy_from_slice(&l.data);
        }
        let scratch = self.scratch();
        for l in lines {
            // SAFETY: the scratch buffer is ours alone (`scratch()`).
            unsafe { scratch.buf.store(l.off as usize, &l.data) };
        }
        self.at = at_fence;
        Ok(())
    }

    /// The in-flight lines at the current crash point whose content differs
    /// from the durable image: the only ones whose fate changes the image.
    pub fn effective_lines(&self) -> Vec<u64> {
        self.trace
            .in_flight(self.at)
            .iter()
            .filter(|(o, data)| &self.reference[*o as usize..*o as usize + LINE] != data)
            .map(|(o, _)| *o)
            .collect()
    }

    /// Calls `f` with the crash image at the current crash point where the
    /// in-flight lines `subset` reached the media, as a writable in-memory
    /// [`Pmem`], then restores the scratch buffer. Fails, without calling
    /// `f`, if a line of `subset` was not in flight.
    pub fn with_image<R>(&mut self, subset: &[u64], f: impl FnOnce(Pmem) -> R) -> Result<R> {
        let lines: Vec<(u64, Line)> = self
            .trace
            .subset_lines(self.at, subset)?
            .into_iter()
            .map(|(o, l)| (o, *l))
            .collect();
        let scratch = self.scratch();
        for (off, data) in &lines {
            // SAFETY: the scratch buffer is ours alone (`scratch()`).
            unsafe { scratch.buf.store(*off as usize, data) };
        }
        let pmem = Pmem::from_domain(Box::new(ScratchDomain(Arc::clone(&self.scratch))), true);
        let r = f(pmem);
        // Undo: when `f` kept the Pmem, `scratch()` gives up the buffer and
        // starts from a fresh copy instead.
        if let Some(s) = Arc::get_mut(&mut self.scratch) {
            let mut undo = s.touched();
            undo.extend(lines.iter().map(|(o, _)| (*o, CACHE_LINE)));
            for (off, len) in undo {
                let (a, b) = (off as usize, (off + len) as usize);
                // SAFETY: ours alone (get_mut); the range was stored through
                // a bounds-checked Pmem, so it lies inside both buffers.
                unsafe { s.buf.store(a, &self.reference[a..b]) };
            }
        }
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stores_flushes_and_fences_are_tracked_per_line() {
        let (p, rec) = Recording::new(8192);
        p.write(0, &[1; 100]).unwrap(); // lines 0, 1
        p.flush(0, 64).unwrap(); // line 0 flushed, line 1 dirty
        p.write(200, &[2; 8]).unwrap(); // line 3
        p.fence().unwrap(); // fence 1: line 0 durable
        assert_eq!(rec.fences(), 1);
        let t = rec.trace();
        assert_eq!(t.in_flight_lines(0), vec![0, 64, 192]);
        assert_eq!(t.in_flight_lines(1), vec![64, 192]);
        assert_eq!(t.durable_lines(1).len(), 1);
        let img = t.durable_image(1).unwrap();
        assert_eq!(&img[..64], &[1; 64]);
        assert_eq!(img[64], 0);
        let img = t.crash_image(1, &[192]).unwrap();
        assert_eq!(&img[200..208], &[2; 8]);
        assert_eq!(img[64], 0);
        assert!(t.crash_image(1, &[0]).is_err(), "line 0 is durable already");
        assert!(t.crash_image(2, &[]).is_err());
        // Crash point 0: nothing durable yet, any of the three lines.
        let img = t.crash_image(0, &[64]).unwrap();
        assert_eq!((img[0], img[64], img[99], img[100]), (0, 1, 1, 0));
    }

    #[test]
    fn a_flush_carries_the_line_as_it_was() {
        let (p, rec) = Recording::new(4096);
        p.write(0, &[1; 8]).unwrap();
        p.flush(0, 8).unwrap();
        p.write(0, &[2; 8]).unwrap(); // after the flush: stays in flight
        p.fence().unwrap();
        let t = rec.trace();
        assert_eq!(&t.durable_image(1).unwrap()[..8], &[1; 8]);
        assert_eq!(t.in_flight_lines(1), vec![0]);
        assert_eq!(&t.crash_image(1, &[0]).unwrap()[..8], &[2; 8]);
        p.persist(0, 8).unwrap();
        let t = rec.trace();
        assert_eq!(&t.durable_image(2).unwrap()[..8], &[2; 8]);
        assert!(t.in_flight_lines(2).is_empty());
        assert_eq!(rec.durable_now()[..8], [2; 8]);
    }

    #[test]
    fn snapshots_and_replayer_agree_with_full_replay() {
        let len = 64 * 1024;
        let (p, rec) = Recording::new(len);
        // Enough durable lines to take several snapshots (one per image size).
        for i in 0..40u64 {
            let fill = [i as u8 + 1; 4096];
            let at = (i * 4096 * 3) % len;
            p.write(at, &fill).unwrap();
            p.persist(at, 4096).unwrap();
            p.write((at + 64) % len, &[0xee; 64]).unwrap();
        }
        let t = rec.trace();
        assert!(t.snapshots.len() > 1);
        let mut r = t.replayer(0).unwrap();
        for k in 0..=t.fences() {
            r.seek(k).unwrap();
            let mut full = vec![0u8; len as usize];
            for l in &t.durable[..t.fence_end[k as usize]] {
                full[l.off as usize..l.off as usize + LINE].copy_from_slice(&l.data);
            }
            assert_eq!(r.durable(), &full[..], "fence {k}");
            assert_eq!(t.durable_image(k).unwrap(), full);
            let lines = r.effective_lines();
            let want = t.crash_image(k, &lines).unwrap();
            let got = r
                .with_image(&lines, |pm| {
                    let img = pm.bytes(0, len).unwrap().to_vec();
                    // Recovery's stores are undone afterwards.
                    pm.write(100, b"scribble").unwrap();
                    img
                })
                .unwrap();
            assert_eq!(got, want);
            let again = r.with_image(&[], |pm| pm.bytes(0, len).unwrap().to_vec());
            assert_eq!(again.unwrap(), full, "restored after use");
        }
        // Reused.
        let mut r2 = t.replayer_in(r.into_buffers(), 2).unwrap();
        assert_eq!(r2.durable(), &t.durable_image(2).unwrap()[..]);
        let img = r2.with_image(&[], |pm| pm.bytes(0, len).unwrap().to_vec());
        assert_eq!(img.unwrap(), t.durable_image(2).unwrap());
        let mut r = r2;
        // Backwards, and a Pmem kept past its use.
        r.seek(1).unwrap();
        let kept = r.with_image(&[], |pm| pm).unwrap();
        kept.write(0, &[9; 64]).unwrap();
        let img = r.with_image(&[], |pm| pm.bytes(0, 64).unwrap().to_vec());
        assert_eq!(img.unwrap(), t.durable_image(1).unwrap()[..64].to_vec());
    }
}
