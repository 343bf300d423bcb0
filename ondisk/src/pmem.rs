//! The pmem mapping and the persistence domain behind it.
//!
//! Stores to the mapping reach persistence only when the lines they touched
//! are flushed and a fence is issued after the flush. One trait,
//! [`PersistenceDomain`], says how that is done; [`Pmem`] wraps it with bounds
//! checks and is what the rest of the crate uses.
//!
//! Backends:
//! - [`DomainKind::MapSync`]: the image lies on a DAX file system (or is a
//!   pmem device) and could be mapped with `MAP_SYNC`; a flush is a cache-line
//!   write-back (`clwb`, else `clflushopt`, else `clflush`), a fence `sfence`.
//! - [`DomainKind::Msync`]: anything else; a flush is `msync(MS_SYNC)` of the
//!   pages touched, which is durable once it returns, so the fence is empty.
//! - [`DomainKind::Memory`]: a heap buffer for tests; nothing is durable.
//! - [`DomainKind::Recording`]: a heap buffer that records every store,
//!   flush and fence, so that crash tests can build the image of a crash at
//!   any fence ([`crate::recording`]).
//!
//! What the format assumes of any domain (docs/format.md): aligned 8-byte
//! stores are atomic; nothing else is, and stores may reach the media in any
//! order until a flush of their lines is followed by a fence.

use std::fs::File;
use std::io::{self, Seek, SeekFrom};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::error::{Error, Result};

/// Cache-line size that flushes work in.
pub const CACHE_LINE: u64 = 64;

/// How stores are made durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DomainKind {
    MapSync,
    Msync,
    /// A file on a memory file system (tmpfs, ramfs): see [`Shm`].
    Shm,
    Memory,
    /// A test backend that records stores between fences.
    Recording,
}

impl DomainKind {
    /// A short description for tools to print.
    pub fn describe(self) -> &'static str {
        match self {
            DomainKind::MapSync => "MAP_SYNC (cache-line write-back + fence: the image is on DAX)",
            DomainKind::Msync => "msync (the image is not on a DAX file system)",
            DomainKind::Shm => "memory file system (tmpfs): stores are durable against a killed daemon at once, and nothing survives the machine, so nothing is flushed",
            DomainKind::Memory => "memory (nothing is durable)",
            DomainKind::Recording => "recording (test backend)",
        }
    }
}

/// A mapped range of persistent memory and the way to make stores to it
/// durable.
///
/// # Safety
/// `base()` must point to `len()` bytes that stay mapped, readable (and
/// writable when the owning [`Pmem`] is writable) for the life of the value.
// A mapping is never empty (Pmem::map refuses empty files), so `is_empty`
// would have nothing to say.
#[allow(clippy::len_without_is_empty)]
pub unsafe trait PersistenceDomain: Send + Sync {
    fn kind(&self) -> DomainKind;
    fn base(&self) -> *mut u8;
    fn len(&self) -> u64;
    /// Called after bytes `[off, off + len)` were stored; a recording backend
    /// notes them, the others do nothing.
    fn stored(&self, _off: u64, _len: u64) {}
    /// Starts write-back of the lines covering `[off, off + len)`.
    fn flush(&self, off: u64, len: u64) -> io::Result<()>;
    /// Orders: every flush before it is durable before any store after it.
    fn fence(&self) -> io::Result<()>;
}

/// The size of a file or block device.
pub fn media_len(file: &File) -> io::Result<u64> {
    let meta = file.metadata()?;
    if meta.is_file() {
        return Ok(meta.len());
    }
    // Block devices report 0 in their metadata; their end is their size.
    let mut f = file;
    let len = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(len)
}

/// A bounds-checked view of a persistence domain.
pub struct Pmem {
    domain: Box<dyn PersistenceDomain>,
    writable: bool,
    /// Set when a flush or fence failed: the durable state is then unknown,
    /// so the image refuses further writes until it is opened again.
    poisoned: AtomicBool,
}

impl Pmem {
    /// Maps `file` whole. Writable mappings use `MAP_SYNC` where the file
    /// system allows it and fall back to msync otherwise.
    pub fn map(file: &File, writable: bool) -> io::Result<Pmem> {
        let len = media_len(file)?;
        if len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "the image is empty",
            ));
        }
        let domain: Box<dyn PersistenceDomain> = if writable {
            match MapSync::map(file, len) {
                Ok(m) => Box::new(m),
                Err(_) if on_memory_fs(file) => Box::new(Shm(Msync::map(file, true)?)),
                Err(_) => Box::new(Msync::map(file, true)?),
            }
        } else {
            Box::new(Msync::map(file, false)?)
        };
        Ok(Pmem::from_domain(domain, writable))
    }

    /// A zeroed in-memory image of `len` bytes, for tests.
    pub fn memory(len: u64) -> Pmem {
        Pmem::from_domain(Box::new(Memory::new(len)), true)
    }

    pub fn from_domain(domain: Box<dyn PersistenceDomain>, writable: bool) -> Pmem {
        Pmem {
            domain,
            writable,
            poisoned: AtomicBool::new(false),
        }
    }

    pub fn kind(&self) -> DomainKind {
        self.domain.kind()
    }

    pub fn len(&self) -> u64 {
        self.domain.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn is_writable(&self) -> bool {
        self.writable
    }

    fn check(&self, off: u64, len: u64) -> Result<usize> {
        match off.checked_add(len) {
            Some(end) if end <= self.len() => Ok(off as usize),
            _ => Err(Error::Io(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                format!(
                    "range {off}+{len} lies past the end of the image ({} bytes)",
                    self.len()
                ),
            ))),
        }
    }

    fn check_write(&self, off: u64, len: u64) -> Result<usize> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        if self.poisoned.load(Ordering::Relaxed) {
            return Err(Error::Poisoned);
        }
        self.check(off, len)
    }

    /// The bytes `[off, off + len)` of the media, borrowed in place.
    ///
    /// The media layer is the only writer while it holds `&self`, so the
    /// slice does not change under the borrower.
    pub fn bytes(&self, off: u64, len: u64) -> Result<&[u8]> {
        let start = self.check(off, len)?;
        // SAFETY: the range is inside the mapping (checked above), which
        // stays mapped for the life of `self` (trait contract).
        Ok(unsafe { std::slice::from_raw_parts(self.domain.base().add(start), len as usize) })
    }

    /// Copies `buf.len()` bytes at `off` into `buf`.
    pub fn read(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        buf.copy_from_slice(self.bytes(off, buf.len() as u64)?);
        Ok(())
    }

    /// Stores `data` at `off`. Not durable until flushed and fenced.
    pub fn write(&self, off: u64, data: &[u8]) -> Result<()> {
        let start = self.check_write(off, data.len() as u64)?;
        // SAFETY: in bounds and writable (checked); `data` cannot overlap the
        // mapping's bytes mutably borrowed elsewhere because writes only go
        // through raw pointers.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), self.domain.base().add(start), data.len())
        };
        self.domain.stored(off, data.len() as u64);
        Ok(())
    }

    /// Stores `len` zero bytes at `off`.
    pub fn zero(&self, off: u64, len: u64) -> Result<()> {
        let start = self.check_write(off, len)?;
        // SAFETY: as in `write`.
        unsafe { std::ptr::write_bytes(self.domain.base().add(start), 0, len as usize) };
        self.domain.stored(off, len);
        Ok(())
    }

    /// Starts write-back of `[off, off + len)`.
    pub fn flush(&self, off: u64, len: u64) -> Result<()> {
        self.check_write(off, len)?;
        self.domain.flush(off, len).map_err(|e| self.poisoned_by(e))
    }

    /// Makes every earlier flush durable.
    pub fn fence(&self) -> Result<()> {
        if !self.writable {
            return Err(Error::ReadOnly);
        }
        self.domain.fence().map_err(|e| self.poisoned_by(e))
    }

    /// Flush then fence: `[off, off + len)` is durable on return.
    pub fn persist(&self, off: u64, len: u64) -> Result<()> {
        self.flush(off, len)?;
        self.fence()
    }

    /// Refuses writes from now on: the caller lost track of what is
    /// durable (a failed flush, or memory state ahead of the media).
    pub fn poison(&self) {
        self.poisoned.store(true, Ordering::Relaxed);
    }

    fn poisoned_by(&self, e: io::Error) -> Error {
        self.poison();
        Error::Io(e)
    }
}

/// `MAP_SYNC` mapping: stores are durable once their lines are written back.
struct MapSync {
    base: *mut u8,
    len: u64,
    writeback: Writeback,
}

// SAFETY: the mapping is plain shared memory; synchronisation of stores is
// the caller's business, exactly as for any memory shared between threads.
unsafe impl Send for MapSync {}
unsafe impl Sync for MapSync {}

impl MapSync {
    fn map(file: &File, len: u64) -> io::Result<MapSync> {
        if !cfg!(target_arch = "x86_64") {
            return Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "no cache-line flush",
            ));
        }
        // SAFETY: a fresh shared mapping of the whole file; the kernel
        // refuses MAP_SYNC (EOPNOTSUPP) unless the file is on DAX.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED_VALIDATE | libc::MAP_SYNC,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(MapSync {
            base: p.cast(),
            len,
            writeback: Writeback::detect(),
        })
    }
}

impl Drop for MapSync {
    fn drop(&mut self) {
        // SAFETY: unmaps exactly what `map` mapped.
        unsafe { libc::munmap(self.base.cast(), self.len as usize) };
    }
}

unsafe impl PersistenceDomain for MapSync {
    fn kind(&self) -> DomainKind {
        DomainKind::MapSync
    }
    fn base(&self) -> *mut u8 {
        self.base
    }
    fn len(&self) -> u64 {
        self.len
    }
    fn flush(&self, off: u64, len: u64) -> io::Result<()> {
        let start = off & !(CACHE_LINE - 1);
        let mut line = start;
        while line < off + len {
            // SAFETY: the line is inside the mapping (Pmem checked the range).
            unsafe { self.writeback.line(self.base.add(line as usize)) };
            line += CACHE_LINE;
        }
        Ok(())
    }
    fn fence(&self) -> io::Result<()> {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: sfence has no memory operands.
        unsafe {
            std::arch::x86_64::_mm_sfence()
        };
        Ok(())
    }
}

/// The cache-line write-back instruction this CPU has.
#[derive(Debug, Clone, Copy)]
enum Writeback {
    Clwb,
    Clflushopt,
    Clflush,
}

impl Writeback {
    /// From CPUID leaf 7: EBX bit 24 is CLWB, bit 23 CLFLUSHOPT.
    #[cfg(target_arch = "x86_64")]
    fn detect() -> Writeback {
        let ebx = std::arch::x86_64::__cpuid_count(7, 0).ebx;
        if ebx & (1 << 24) != 0 {
            Writeback::Clwb
        } else if ebx & (1 << 23) != 0 {
            Writeback::Clflushopt
        } else {
            Writeback::Clflush
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    fn detect() -> Writeback {
        Writeback::Clflush
    }

    /// Writes back the line holding `p`.
    ///
    /// # Safety
    /// `p` must be a mapped address.
    #[cfg(target_arch = "x86_64")]
    unsafe fn line(self, p: *mut u8) {
        // SAFETY: p is mapped (caller); these only write the line back.
        unsafe {
            match self {
                Writeback::Clwb => {
                    std::arch::asm!("clwb [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                Writeback::Clflushopt => {
                    std::arch::asm!("clflushopt [{0}]", in(reg) p, options(nostack, preserves_flags))
                }
                Writeback::Clflush => std::arch::x86_64::_mm_clflush(p),
            }
        }
    }

    #[cfg(not(target_arch = "x86_64"))]
    unsafe fn line(self, _p: *mut u8) {}
}

/// Ordinary mapping made durable with msync.
struct Msync {
    map: memmap2::MmapRaw,
}

impl Msync {
    fn map(file: &File, writable: bool) -> io::Result<Msync> {
        let opts = memmap2::MmapOptions::new();
        let map = if writable {
            opts.map_raw(file)?
        } else {
            opts.map_raw_read_only(file)?
        };
        Ok(Msync { map })
    }
}

unsafe impl PersistenceDomain for Msync {
    fn kind(&self) -> DomainKind {
        DomainKind::Msync
    }
    fn base(&self) -> *mut u8 {
        self.map.as_mut_ptr()
    }
    fn len(&self) -> u64 {
        self.map.len() as u64
    }
    fn flush(&self, off: u64, len: u64) -> io::Result<()> {
        self.map.flush_range(off as usize, len as usize)
    }
    fn fence(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Whether `file` lives on a memory file system (tmpfs or ramfs), whose
/// pages are the page cache itself.
fn on_memory_fs(file: &File) -> bool {
    const TMPFS_MAGIC: i64 = 0x0102_1994;
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    // SAFETY: fstatfs fills the struct for a descriptor; zeroed is valid.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::fstatfs(file.as_raw_fd(), &mut st) } != 0 {
        return false;
    }
    matches!(st.f_type as i64, TMPFS_MAGIC | RAMFS_MAGIC)
}

/// An image file on tmpfs (`/dev/shm`): a shared mapping of it is the
/// page cache, which is all the storage there is. A store is in the file
/// the moment it is made, so a killed daemon loses nothing, and no flush
/// can make anything survive a crash of the machine: msync would cost a
/// system call per commit and buy nothing. Ordering still holds, as the
/// stores of one thread reach the page cache in program order.
struct Shm(Msync);

// SAFETY: the inner mapping's guarantees, unchanged.
unsafe impl PersistenceDomain for Shm {
    fn kind(&self) -> DomainKind {
        DomainKind::Shm
    }
    fn base(&self) -> *mut u8 {
        self.0.base()
    }
    fn len(&self) -> u64 {
        self.0.len()
    }
    fn flush(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn fence(&self) -> io::Result<()> {
        Ok(())
    }
}

/// A heap buffer standing in for pmem in tests.
struct Memory {
    buf: Box<[std::cell::UnsafeCell<u8>]>,
}

// SAFETY: bytes are only reached through raw pointers, as for a mapping.
unsafe impl Sync for Memory {}

impl Memory {
    fn new(len: u64) -> Memory {
        Memory {
            buf: (0..len).map(|_| std::cell::UnsafeCell::new(0)).collect(),
        }
    }
}

unsafe impl PersistenceDomain for Memory {
    fn kind(&self) -> DomainKind {
        DomainKind::Memory
    }
    fn base(&self) -> *mut u8 {
        self.buf.as_ptr() as *mut u8
    }
    fn len(&self) -> u64 {
        self.buf.len() as u64
    }
    fn flush(&self, _off: u64, _len: u64) -> io::Result<()> {
        Ok(())
    }
    fn fence(&self) -> io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_are_checked() {
        let p = Pmem::memory(8192);
        p.write(8190, b"ab").unwrap();
        assert!(p.write(8191, b"ab").is_err());
        assert!(p.bytes(u64::MAX, 2).is_err());
        let mut b = [0u8; 2];
        p.read(8190, &mut b).unwrap();
        assert_eq!(&b, b"ab");
        p.persist(0, 8192).unwrap();
    }

    #[test]
    fn file_mapping_round_trips_and_is_msync_off_dax() {
        let dir = std::env::temp_dir().join(format!("pmem-map-{}", std::process::id()));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&dir)
            .unwrap();
        f.set_len(1 << 20).unwrap();
        {
            let p = Pmem::map(&f, true).unwrap();
            p.write(4096, b"hello").unwrap();
            p.persist(4096, 5).unwrap();
            // /tmp is not DAX here; the fallback must have been taken.
            assert_ne!(p.kind(), DomainKind::Memory);
        }
        let ro = Pmem::map(&f, false).unwrap();
        assert_eq!(ro.bytes(4096, 5).unwrap(), b"hello");
        assert!(matches!(ro.write(0, b"x"), Err(Error::ReadOnly)));
        drop(ro);
        std::fs::remove_file(&dir).unwrap();
    }
}
