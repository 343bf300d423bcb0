//! FUSE over io_uring (Linux 6.14 and later, with the `fuse` module's
//! `enable_uring` parameter set). Added to fuser 0.18 for pmemfs; see
//! PATCHES.md.
//!
//! The kernel keeps one request queue per possible CPU and gives a request
//! to the queue of the CPU its caller runs on. Here each queue has one
//! thread, pinned to that CPU, with a ring of its own holding a few
//! entries (a header buffer and a payload buffer each). The thread is
//! woken on the caller's CPU and its reply (COMMIT_AND_FETCH, which also
//! hands the entry back for the next request) wakes the caller there: no
//! wake-up crosses CPUs, which is most of what a round trip through
//! read(2) and writev(2) on /dev/fuse costs. FORGET, INTERRUPT and
//! notifications still go through /dev/fuse, whose readers keep running,
//! and so do all requests until every queue has registered its entries.
//!
//! A request arrives split in three: `fuse_in_header` in the header
//! buffer's `in_out` area, the per-opcode struct (the request's first
//! argument) in its `op_in` area, the other arguments in the payload.
//! They are put back together in front of the payload so that the parser
//! sees the message read(2) would have given, without copying the payload.

use std::io;
use std::io::IoSlice;
use std::os::fd::AsFd;
use std::os::fd::AsRawFd;
use std::os::fd::FromRawFd;
use std::os::fd::OwnedFd;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::thread::JoinHandle;

use io_uring::IoUring;
use io_uring::cqueue;
use io_uring::opcode;
use io_uring::squeue;
use io_uring::types;
use log::debug;
use log::error;
use log::warn;
use parking_lot::Mutex;

use crate::Filesystem;
use crate::ReplyEmpty;
use crate::channel::Channel;
use crate::ll::Operation;
use crate::request::RequestWithSender;
use crate::session::FilesystemHolder;
use crate::session::SessionACL;
use crate::session::SessionEventLoop;

mod placement;
use placement::Placement;

/// `fuse_uring_cmd`: register an entry and fetch a request into it.
const CMD_REGISTER: u32 = 1;
/// `fuse_uring_cmd`: commit the reply in an entry and fetch the next request.
const CMD_COMMIT_AND_FETCH: u32 = 2;

/// `fuse_uring_req_header`: `in_out[128]`, `op_in[128]`, then
/// `fuse_uring_ent_in_out` (`flags: u64, commit_id: u64, payload_sz: u32,
/// padding: u32, reserved: u64`).
const OP_IN: usize = 128;
const ENT_IN_OUT: usize = 256;
const COMMIT_ID: usize = ENT_IN_OUT + 8;
const PAYLOAD_SZ: usize = ENT_IN_OUT + 16;
const HEADER_SIZE: usize = ENT_IN_OUT + 32;
const IN_HEADER: usize = 40;
const OUT_HEADER: usize = 16;
/// Where the payload starts in an entry's buffer: after the header area
/// and room for a request's `fuse_in_header` and per-op struct.
const PAYLOAD_AT: usize = 512;
const _: () = assert!(PAYLOAD_AT >= HEADER_SIZE + IN_HEADER + OP_IN && PAYLOAD_AT % 8 == 0);
const _: () = assert!(size_of::<squeue::Entry128>() == 128);

/// Entries per queue: one is being served while the kernel fills the
/// others (background requests, readahead, writeback).
const DEPTH: usize = 4;
/// `user_data` of the eventfd poll that wakes a queue's thread.
const WAKE: u64 = u64::MAX;

/// What an entry is doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// In the kernel, waiting for a request or being filled.
    Kernel,
    /// Its request is being dispatched. `aliased`: the request has a
    /// payload, which the dispatcher may still be reading, so a reply sent
    /// now waits in `staged` until the dispatch returns.
    Dispatching { aliased: bool },
    /// Dispatch returned without a reply; one will come from another thread.
    Detached,
    /// Replied, not yet committed.
    Replied,
    /// Out of the kernel for good (the connection ended).
    Gone,
}

#[derive(Debug)]
struct State {
    phase: Phase,
    commit_id: u64,
    reply_len: usize,
    staged: Vec<u8>,
    last_cmd: u32,
}

/// Wakes a queue's thread: for a reply sent from another thread, and to stop.
#[derive(Debug)]
struct Shared {
    eventfd: OwnedFd,
    done: Mutex<Vec<usize>>,
    stop: AtomicBool,
}

impl Shared {
    fn wake(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer to an eventfd.
        unsafe { libc::write(self.eventfd.as_raw_fd(), one.as_ptr().cast(), 8) };
    }
}

/// One ring entry: its buffers, registered with the kernel, and the state
/// of the request in it. Reply senders hold it while the request is served.
#[derive(Debug)]
pub(crate) struct Slot {
    index: usize,
    qid: u16,
    /// Header area, then the payload at `PAYLOAD_AT`; 8-byte aligned.
    mem: *mut u8,
    mem_words: usize,
    payload_cap: usize,
    /// The two iovecs REGISTER points at (header, payload).
    iov: [libc::iovec; 2],
    state: Mutex<State>,
    shared: Arc<Shared>,
}

// SAFETY: `mem` is owned by the slot and touched only by the kernel while
// the entry is in the kernel, and under `state`'s rules otherwise.
unsafe impl Send for Slot {}
// SAFETY: as above.
unsafe impl Sync for Slot {}

impl Drop for Slot {
    fn drop(&mut self) {
        // SAFETY: allocated in `Slot::new` as a boxed slice of `mem_words`.
        unsafe {
            drop(Box::from_raw(std::ptr::slice_from_raw_parts_mut(
                self.mem.cast::<u64>(),
                self.mem_words,
            )));
        }
    }
}

impl Slot {
    fn new(index: usize, qid: u16, payload_cap: usize, shared: Arc<Shared>) -> Slot {
        let mem_words = (PAYLOAD_AT + payload_cap).div_ceil(8);
        let mem = Box::into_raw(vec![0u64; mem_words].into_boxed_slice()).cast::<u8>();
        Slot {
            index,
            qid,
            mem,
            mem_words,
            payload_cap,
            iov: [
                libc::iovec {
                    iov_base: mem.cast(),
                    iov_len: HEADER_SIZE,
                },
                libc::iovec {
                    // SAFETY: within the allocation.
                    iov_base: unsafe { mem.add(PAYLOAD_AT) }.cast(),
                    iov_len: payload_cap,
                },
            ],
            state: Mutex::new(State {
                phase: Phase::Kernel,
                commit_id: 0,
                reply_len: 0,
                staged: Vec::new(),
                last_cmd: CMD_REGISTER,
            }),
            shared,
        }
    }

    fn read_u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        // SAFETY: `at + 4` is within the header area; the entry is ours.
        unsafe { std::ptr::copy_nonoverlapping(self.mem.add(at), b.as_mut_ptr(), 4) };
        u32::from_le_bytes(b)
    }

    fn read_u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        // SAFETY: as in `read_u32`.
        unsafe { std::ptr::copy_nonoverlapping(self.mem.add(at), b.as_mut_ptr(), 8) };
        u64::from_le_bytes(b)
    }

    /// Writes a reply (`fuse_out_header` then its arguments, as fuser
    /// builds it) into the entry: the header into `in_out`, the rest into
    /// the payload.
    ///
    /// # Safety
    /// The entry must be out of the kernel and no reference to its payload
    /// may be alive.
    unsafe fn write_reply<'a>(&self, parts: impl IntoIterator<Item = &'a [u8]>) {
        let mut pos = 0usize;
        for part in parts {
            let mut p: &[u8] = part;
            if pos < OUT_HEADER {
                let n = (OUT_HEADER - pos).min(p.len());
                // SAFETY: within the header area.
                unsafe { std::ptr::copy_nonoverlapping(p.as_ptr(), self.mem.add(pos), n) };
                pos += n;
                p = &p[n..];
            }
            if !p.is_empty() {
                // SAFETY: the caller checked the length against the payload.
                unsafe {
                    std::ptr::copy_nonoverlapping(
                        p.as_ptr(),
                        self.mem.add(PAYLOAD_AT + pos - OUT_HEADER),
                        p.len(),
                    )
                };
                pos += p.len();
            }
        }
    }

    /// The reply sender's half: store the reply; the queue's thread commits it.
    pub(crate) fn send(&self, data: &[IoSlice<'_>]) -> io::Result<()> {
        let total: usize = data.iter().map(|d| d.len()).sum();
        if total < OUT_HEADER || total - OUT_HEADER > self.payload_cap {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("reply of {total} bytes does not fit the ring entry"),
            ));
        }
        let mut st = self.state.lock();
        let detached = match st.phase {
            Phase::Dispatching { aliased: true } => {
                st.staged.clear();
                for d in data {
                    st.staged.extend_from_slice(d);
                }
                false
            }
            Phase::Dispatching { aliased: false } | Phase::Detached => {
                // SAFETY: the entry is out of the kernel (dispatching or
                // detached) and the request has no payload alive (not aliased,
                // or its dispatch returned).
                unsafe { self.write_reply(data.iter().map(|d| &**d)) };
                st.phase == Phase::Detached
            }
            phase => {
                return Err(io::Error::other(format!(
                    "reply to ring entry in phase {phase:?}"
                )));
            }
        };
        st.reply_len = total;
        st.phase = Phase::Replied;
        drop(st);
        if detached {
            self.shared.done.lock().push(self.index);
            self.shared.wake();
        }
        Ok(())
    }

    fn cmd(&self, cmd_op: u32, commit_id: u64, fd: i32) -> squeue::Entry128 {
        // fuse_uring_cmd_req: flags u64, commit_id u64, qid u16, padding.
        let mut cmd = [0u8; 80];
        cmd[8..16].copy_from_slice(&commit_id.to_le_bytes());
        cmd[16..18].copy_from_slice(&self.qid.to_le_bytes());
        let mut op = opcode::UringCmd80::new(types::Fd(fd), cmd_op).cmd(cmd);
        if cmd_op == CMD_REGISTER {
            op = op.addr(Some(self.iov.as_ptr() as u64));
        }
        let entry = op.build().user_data(self.index as u64);
        if cmd_op != CMD_REGISTER {
            return entry;
        }
        // REGISTER also needs sqe->len = 2 (the iovec count), which the
        // builder has no setter for: it sits at bytes 24..28 of the SQE.
        // SAFETY: Entry128 is a repr(C) 128-byte SQE (asserted above), and
        // every bit pattern of it is valid.
        let mut raw: [u8; 128] = unsafe { std::mem::transmute(entry) };
        raw[24..28].copy_from_slice(&2u32.to_le_bytes());
        // SAFETY: as above.
        unsafe { std::mem::transmute::<[u8; 128], squeue::Entry128>(raw) }
    }
}

/// The ring threads of a session.
#[derive(Debug)]
pub(crate) struct Rings {
    threads: Vec<JoinHandle<()>>,
    shared: Vec<Arc<Shared>>,
    placement: Arc<Placement>,
    governor: Option<JoinHandle<()>>,
}

impl Rings {
    /// Tells every queue's thread to stop and waits for them.
    pub(crate) fn stop(self) {
        self.placement.stop();
        if let Some(g) = self.governor {
            let _ = g.join();
        }
        for s in &self.shared {
            s.stop.store(true, Ordering::SeqCst);
            s.wake();
        }
        for t in self.threads {
            let _ = t.join();
        }
    }
}

/// Whether this process can make the rings the transport needs.
pub(crate) fn usable() -> bool {
    match IoUring::<squeue::Entry128, cqueue::Entry>::builder().build(2) {
        Ok(_) => true,
        Err(e) => {
            warn!("io_uring is not usable here ({e}); serving /dev/fuse only");
            false
        }
    }
}

/// The queues the kernel expects: one per possible CPU.
fn possible_cpus() -> usize {
    let parsed = std::fs::read_to_string("/sys/devices/system/cpu/possible")
        .ok()
        .and_then(|s| {
            // "0-7" or "0" or "0-3,5": the highest number plus one.
            s.trim()
                .split([',', '-'])
                .filter_map(|n| n.parse::<usize>().ok())
                .max()
                .map(|m| m + 1)
        });
    // SAFETY: sysconf has no preconditions.
    parsed.unwrap_or_else(|| unsafe { libc::sysconf(libc::_SC_NPROCESSORS_CONF) }.max(1) as usize)
}

/// Starts one thread per queue. `payload` is the payload buffer size
/// the kernel requires (the larger of max_write and max_pages pages).
pub(crate) fn start<FS: Filesystem>(
    filesystem: &Arc<FilesystemHolder<FS>>,
    ch: &Channel,
    allowed: SessionACL,
    session_owner: nix::unistd::Uid,
    payload: usize,
) -> io::Result<Rings> {
    let queues = possible_cpus();
    let mut rings = Rings {
        threads: Vec::with_capacity(queues),
        shared: Vec::with_capacity(queues),
        placement: Arc::new(Placement::default()),
        governor: None,
    };
    for qid in 0..queues {
        // SAFETY: eventfd has no memory preconditions.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            let e = io::Error::last_os_error();
            rings.stop();
            return Err(e);
        }
        let shared = Arc::new(Shared {
            // SAFETY: a fresh descriptor we own.
            eventfd: unsafe { OwnedFd::from_raw_fd(efd) },
            done: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        });
        let event_loop = SessionEventLoop {
            thread_name: format!("fuser-ring-{qid}"),
            filesystem: filesystem.clone(),
            ch: ch.clone(),
            allowed,
            session_owner,
        };
        let sh = shared.clone();
        let placement = rings.placement.clone();
        let t = std::thread::Builder::new()
            .name(format!("fuser-ring-{qid}"))
            .spawn(move || {
                if let Err(e) = serve(qid as u16, payload, &sh, &placement, &event_loop) {
                    error!("io_uring queue {qid}: {e}");
                }
            });
        match t {
            Ok(t) => {
                rings.threads.push(t);
                rings.shared.push(shared);
            }
            Err(e) => {
                rings.stop();
                return Err(e);
            }
        }
    }
    match placement::govern(rings.placement.clone()) {
        Ok(g) => rings.governor = Some(g),
        Err(e) => warn!("ring threads stay SCHED_OTHER: no governor thread ({e})"),
    }
    Ok(rings)
}

fn pin_to_cpu(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; CPU_SET and sched_setaffinity
    // take a valid set of the right size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set) != 0 {
            warn!(
                "cannot pin the io_uring thread to CPU {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }
}

fn serve<FS: Filesystem>(
    qid: u16,
    payload: usize,
    shared: &Arc<Shared>,
    placement: &Placement,
    se: &SessionEventLoop<FS>,
) -> io::Result<()> {
    pin_to_cpu(qid as usize);
    placement.register();
    let fd = se.ch.as_fd().as_raw_fd();
    let mut ring: IoUring<squeue::Entry128, cqueue::Entry> =
        IoUring::builder().build((2 * DEPTH + 2) as u32)?;
    let slots: Vec<Arc<Slot>> = (0..DEPTH)
        .map(|i| Arc::new(Slot::new(i, qid, payload, shared.clone())))
        .collect();
    let poll = || {
        opcode::PollAdd::new(types::Fd(shared.eventfd.as_raw_fd()), libc::POLLIN as u32)
            .build()
            .user_data(WAKE)
            .into()
    };
    let mut pending: Vec<squeue::Entry128> =
        slots.iter().map(|s| s.cmd(CMD_REGISTER, 0, fd)).collect();
    pending.push(poll());
    let mut live = DEPTH;
    let mut scratch: Vec<u64> = Vec::new();
    let mut cqes: Vec<(u64, i32)> = Vec::with_capacity(2 * DEPTH + 2);
    while live > 0 {
        {
            let mut sq = ring.submission();
            for e in pending.drain(..) {
                // SAFETY: every buffer an entry points at (the slots' iovecs
                // and memory) lives as long as the ring: the slots are
                // dropped after it.
                if unsafe { sq.push(&e) }.is_err() {
                    return Err(io::Error::other("submission queue full"));
                }
            }
        }
        match ring.submit_and_wait(1) {
            Ok(_) => {}
            Err(e) if e.raw_os_error() == Some(libc::EINTR) => continue,
            Err(e) => return Err(e),
        }
        cqes.clear();
        cqes.extend(ring.completion().map(|c| (c.user_data(), c.result())));
        placement.active();
        for &(ud, res) in &cqes {
            if ud == WAKE {
                let mut buf = [0u8; 8];
                // SAFETY: reads 8 bytes into a live buffer from the eventfd.
                unsafe { libc::read(shared.eventfd.as_raw_fd(), buf.as_mut_ptr().cast(), 8) };
                if shared.stop.load(Ordering::SeqCst) {
                    debug!("io_uring queue {qid}: stopped");
                    leak_if_busy(&slots, live, ring);
                    return Ok(());
                }
                let done: Vec<usize> = std::mem::take(&mut *shared.done.lock());
                for i in done {
                    if let Some(e) = commit(&slots[i], fd) {
                        pending.push(e);
                    }
                }
                pending.push(poll());
                continue;
            }
            let Some(slot) = slots.get(ud as usize) else {
                continue;
            };
            if res < 0 {
                match -res {
                    libc::EINTR | libc::EAGAIN => {
                        let st = slot.state.lock();
                        pending.push(slot.cmd(st.last_cmd, st.commit_id, fd));
                    }
                    e => {
                        if e != libc::ENOTCONN && e != libc::ENODEV && e != libc::ECANCELED {
                            error!(
                                "io_uring queue {qid}: entry {ud}: {}",
                                io::Error::from_raw_os_error(e)
                            );
                        }
                        slot.state.lock().phase = Phase::Gone;
                        live -= 1;
                    }
                }
                continue;
            }
            if let Some(e) = handle(slot, se, fd, &mut scratch) {
                pending.push(e);
            }
        }
    }
    debug!("io_uring queue {qid}: connection ended");
    Ok(())
}

/// At a stop with entries still in the kernel, their buffers may yet be
/// written to until the ring's teardown ends: keep them allocated.
fn leak_if_busy(slots: &[Arc<Slot>], live: usize, ring: IoUring<squeue::Entry128, cqueue::Entry>) {
    drop(ring);
    if live > 0 {
        for s in slots {
            std::mem::forget(s.clone());
        }
    }
}

/// Serves the request the kernel put in `slot`; returns the commit to
/// submit if the reply is ready.
fn handle<FS: Filesystem>(
    slot: &Arc<Slot>,
    se: &SessionEventLoop<FS>,
    fd: i32,
    scratch: &mut Vec<u64>,
) -> Option<squeue::Entry128> {
    let len = slot.read_u32(0) as usize;
    let unique = slot.read_u64(8);
    let commit_id = slot.read_u64(COMMIT_ID);
    let payload_sz = slot.read_u32(PAYLOAD_SZ) as usize;
    {
        let mut st = slot.state.lock();
        st.commit_id = commit_id;
        st.last_cmd = CMD_COMMIT_AND_FETCH;
        st.staged.clear();
        st.phase = Phase::Dispatching {
            aliased: payload_sz > 0,
        };
    }
    let arg0 = len.checked_sub(IN_HEADER + payload_sz);
    let Some(arg0) = arg0.filter(|&a| a <= OP_IN && payload_sz <= slot.payload_cap) else {
        error!("io_uring: malformed request: len {len}, payload {payload_sz}");
        return error_reply(slot, unique, libc::EIO, fd);
    };
    let start = PAYLOAD_AT - IN_HEADER - arg0;
    // SAFETY: the entry is out of the kernel; the copies stay within the
    // header area and the room before the payload.
    unsafe {
        std::ptr::copy_nonoverlapping(slot.mem, slot.mem.add(start), IN_HEADER);
        std::ptr::copy_nonoverlapping(slot.mem.add(OP_IN), slot.mem.add(start + IN_HEADER), arg0);
    }
    let data: &[u8] = if start % 8 == 0 {
        // SAFETY: within the allocation; nothing writes it while the
        // request is dispatched (replies are staged, see Phase::Dispatching).
        unsafe { std::slice::from_raw_parts(slot.mem.add(start), len) }
    } else {
        // A per-op struct of a size the kernel does not pad to 8 bytes:
        // copy the message to an aligned buffer for the parser.
        scratch.clear();
        scratch.resize(len.div_ceil(8), 0);
        // SAFETY: both ranges are `len` bytes within their allocations.
        unsafe {
            std::ptr::copy_nonoverlapping(
                slot.mem.add(start),
                scratch.as_mut_ptr().cast::<u8>(),
                len,
            );
            std::slice::from_raw_parts(scratch.as_ptr().cast::<u8>(), len)
        }
    };
    match RequestWithSender::new_ring(se.ch.sender(), slot.clone(), data) {
        Some(req) => {
            if let Ok(Operation::Destroy(_)) = req.request.operation() {
                req.reply::<ReplyEmpty>().ok();
            } else {
                req.dispatch(se);
            }
        }
        None => {
            slot.state.lock().phase = Phase::Dispatching { aliased: false };
            return error_reply(slot, unique, libc::EIO, fd);
        }
    }
    let mut st = slot.state.lock();
    match st.phase {
        Phase::Replied => {
            drop(st);
            commit(slot, fd)
        }
        Phase::Dispatching { .. } => {
            st.phase = Phase::Detached;
            None
        }
        _ => None,
    }
}

fn error_reply(slot: &Arc<Slot>, unique: u64, errno: i32, fd: i32) -> Option<squeue::Entry128> {
    let mut out = [0u8; OUT_HEADER];
    out[0..4].copy_from_slice(&(OUT_HEADER as u32).to_le_bytes());
    out[4..8].copy_from_slice(&(-errno).to_le_bytes());
    out[8..16].copy_from_slice(&unique.to_le_bytes());
    // SAFETY: the entry is out of the kernel and its request is not parsed.
    unsafe { slot.write_reply([&out[..]]) };
    {
        let mut st = slot.state.lock();
        st.reply_len = OUT_HEADER;
        st.phase = Phase::Replied;
    }
    commit(slot, fd)
}

/// Moves a staged reply into place and makes the commit for a replied entry.
fn commit(slot: &Arc<Slot>, fd: i32) -> Option<squeue::Entry128> {
    let mut st = slot.state.lock();
    if st.phase != Phase::Replied {
        return None;
    }
    if !st.staged.is_empty() {
        let staged = std::mem::take(&mut st.staged);
        // SAFETY: the dispatch that held the request's payload returned.
        unsafe { slot.write_reply([&staged[..]]) };
        st.staged = staged;
        st.staged.clear();
    }
    let payload_sz = (st.reply_len - OUT_HEADER) as u32;
    // SAFETY: within the header area; the entry is out of the kernel.
    unsafe {
        std::ptr::copy_nonoverlapping(
            payload_sz.to_le_bytes().as_ptr(),
            slot.mem.add(PAYLOAD_SZ),
            4,
        )
    };
    st.phase = Phase::Kernel;
    Some(slot.cmd(CMD_COMMIT_AND_FETCH, st.commit_id, fd))
}
