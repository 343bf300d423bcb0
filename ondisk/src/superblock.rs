//! The superblock: identity, geometry and the root of the metadata.
//!
//! Two copies, at pfn 0 and pfn 1, each the first 256 bytes of its page
//! (the rest of the page is zero). A torn write can ruin at most the copy
//! being written; the reader takes the valid copy with the higher
//! generation. All integers little-endian.
//!
//! ```text
//! off  size  field
//!   0     8  magic        "PMEMFS\0\x01"
//!   8     4  version      FORMAT_VERSION
//!  12     4  incompat     feature bits a reader must know; none yet (0)
//!  16    16  uuid
//!  32    64  label        UTF-8, NUL-padded, at most 63 bytes
//!  96     4  page_size    4096
//! 100     4  state        0 clean, 1 in use (opened read-write)
//! 104     8  total_pages
//! 112     8  journal_start  pfn
//! 120     8  journal_pages
//! 128     8  data_start     pfn
//! 136     8  generation   +1 on every superblock write
//! 144     8  created      seconds since the Unix epoch
//! 152     8  ckpt_pfn     first page of the current checkpoint
//! 160     8  ckpt_pages   pages in the checkpoint chain
//! 168     8  ckpt_id      id written in every page of that checkpoint
//! 176     8  journal_off  byte offset in the journal where replay starts
//! 184     8  journal_seq  sequence number of the first entry to replay
//! 192     8  journal_nonce  random, new at every journal restart; every
//!                         entry of this run carries it
//! 200    52  reserved     zero
//! 252     4  crc32        of bytes 0..252
//! ```

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Corrupt, Error};
use crate::layout::{Geometry, PAGE_SIZE, SUPERBLOCK_PFNS};
use crate::pmem::Pmem;

pub const MAGIC: [u8; 8] = *b"PMEMFS\0\x01";
/// Version of the on-media format this code reads and writes.
pub const FORMAT_VERSION: u32 = 5;
/// Bytes of a superblock copy.
pub const SUPERBLOCK_BYTES: usize = 256;
/// Longest label, in bytes.
pub const MAX_LABEL: usize = 63;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct RawSuperblock {
    magic: [u8; 8],
    version: U32,
    incompat: U32,
    uuid: [u8; 16],
    label: [u8; 64],
    page_size: U32,
    state: U32,
    total_pages: U64,
    journal_start: U64,
    journal_pages: U64,
    data_start: U64,
    generation: U64,
    created: U64,
    ckpt_pfn: U64,
    ckpt_pages: U64,
    ckpt_id: U64,
    journal_off: U64,
    journal_seq: U64,
    journal_nonce: U64,
    reserved: [u8; 52],
    crc: U32,
}

const _: () = assert!(std::mem::size_of::<RawSuperblock>() == SUPERBLOCK_BYTES);

/// Whether the image was closed cleanly.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Clean,
    InUse,
}

/// Where the current checkpoint lies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CheckpointRef {
    pub pfn: u64,
    pub pages: u64,
    pub id: u64,
}

/// Where journal replay starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JournalPos {
    pub off: u64,
    pub seq: u64,
    /// The run's nonce. Entry payloads hold bytes users chose (xattr
    /// values, names), so stale payloads left in the region by earlier runs
    /// can look like whole entries with any seq; only entries carrying this
    /// secret, random value belong to the run.
    pub nonce: u64,
}

impl JournalPos {
    /// The start of a new journal run at offset 0: first seq `seq` and a
    /// fresh random nonce, so nothing already in the region can replay.
    pub fn restart(seq: u64) -> Result<JournalPos, Error> {
        let mut b = [0u8; 8];
        // SAFETY: `b` is a valid, writable buffer of b.len() bytes.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
        if n != b.len() as isize {
            return Err(Error::Io(std::io::Error::last_os_error()));
        }
        Ok(JournalPos {
            off: 0,
            seq,
            nonce: u64::from_le_bytes(b),
        })
    }

    /// The position of the entry that follows, which starts at `off`.
    pub fn after(self, off: u64) -> JournalPos {
        JournalPos {
            off,
            seq: self.seq + 1,
            nonce: self.nonce,
        }
    }
}

/// A decoded superblock.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Superblock {
    pub uuid: [u8; 16],
    pub label: String,
    pub state: State,
    pub geometry: Geometry,
    pub generation: u64,
    pub created: u64,
    pub checkpoint: CheckpointRef,
    pub journal: JournalPos,
}

impl Superblock {
    /// Encodes into the 256 bytes of a copy.
    pub fn encode(&self) -> [u8; SUPERBLOCK_BYTES] {
        let mut label = [0u8; 64];
        let l = self.label.as_bytes();
        // Cut at a character boundary: a split UTF-8 sequence would make
        // both copies undecodable.
        let n = (0..=l.len().min(MAX_LABEL))
            .rev()
            .find(|&i| self.label.is_char_boundary(i))
            .unwrap_or(0);
        label[..n].copy_from_slice(&l[..n]);
        let mut raw = RawSuperblock {
            magic: MAGIC,
            version: FORMAT_VERSION.into(),
            incompat: 0.into(),
            uuid: self.uuid,
            label,
            page_size: (PAGE_SIZE as u32).into(),
            state: match self.state {
                State::Clean => 0,
                State::InUse => 1,
            }
            .into(),
            total_pages: self.geometry.total_pages.into(),
            journal_start: self.geometry.journal_start.into(),
            journal_pages: self.geometry.journal_pages.into(),
            data_start: self.geometry.data_start.into(),
            generation: self.generation.into(),
            created: self.created.into(),
            ckpt_pfn: self.checkpoint.pfn.into(),
            ckpt_pages: self.checkpoint.pages.into(),
            ckpt_id: self.checkpoint.id.into(),
            journal_off: self.journal.off.into(),
            journal_seq: self.journal.seq.into(),
            journal_nonce: self.journal.nonce.into(),
            reserved: [0; 52],
            crc: 0.into(),
        };
        raw.crc = crc32fast::hash(&raw.as_bytes()[..SUPERBLOCK_BYTES - 4]).into();
        let mut out = [0u8; SUPERBLOCK_BYTES];
        out.copy_from_slice(raw.as_bytes());
        out
    }

    /// Decodes and checks one copy. `what` names the copy in errors.
    pub fn decode(bytes: &[u8], what: &str) -> Result<Superblock, Corrupt> {
        let bad = |d: String| Corrupt::new(what, d);
        let raw = bytes
            .get(..SUPERBLOCK_BYTES)
            .and_then(|b| RawSuperblock::read_from_bytes(b).ok())
            .ok_or_else(|| bad("shorter than a superblock".into()))?;
        if raw.magic != MAGIC {
            return Err(bad("bad magic number (not a pmemfs superblock)".into()));
        }
        let crc = crc32fast::hash(&raw.as_bytes()[..SUPERBLOCK_BYTES - 4]);
        if crc != raw.crc.get() {
            return Err(bad(format!(
                "checksum mismatch (stored {:#010x}, computed {crc:#010x})",
                raw.crc.get()
            )));
        }
        if raw.version.get() != FORMAT_VERSION {
            return Err(bad(version_mismatch(raw.version.get())));
        }
        if raw.incompat.get() != 0 {
            return Err(bad(format!(
                "unknown incompatible features {:#x}",
                raw.incompat.get()
            )));
        }
        if u64::from(raw.page_size.get()) != PAGE_SIZE {
            return Err(bad(format!(
                "page size {} is not {PAGE_SIZE}",
                raw.page_size.get()
            )));
        }
        let state = match raw.state.get() {
            0 => State::Clean,
            1 => State::InUse,
            s => return Err(bad(format!("unknown state {s}"))),
        };
        let geometry = Geometry {
            total_pages: raw.total_pages.get(),
            journal_start: raw.journal_start.get(),
            journal_pages: raw.journal_pages.get(),
            data_start: raw.data_start.get(),
        };
        let expected = Geometry::for_size(geometry.total_pages.saturating_mul(PAGE_SIZE));
        if expected != Some(geometry) {
            return Err(bad(format!("inconsistent geometry {geometry:?}")));
        }
        let checkpoint = CheckpointRef {
            pfn: raw.ckpt_pfn.get(),
            pages: raw.ckpt_pages.get(),
            id: raw.ckpt_id.get(),
        };
        if checkpoint.pages == 0
            || !geometry.in_data(checkpoint.pfn, 1)
            || checkpoint.pages > geometry.data_pages()
        {
            return Err(bad(format!(
                "checkpoint reference {checkpoint:?} lies outside the data area"
            )));
        }
        let journal = JournalPos {
            off: raw.journal_off.get(),
            seq: raw.journal_seq.get(),
            nonce: raw.journal_nonce.get(),
        };
        if journal.off > geometry.journal_bytes() || journal.off % crate::pmem::CACHE_LINE != 0 {
            return Err(bad(format!(
                "journal offset {} is not a 64-byte boundary inside the journal",
                journal.off
            )));
        }
        let label_len = raw.label.iter().position(|&b| b == 0).unwrap_or(64);
        if label_len > MAX_LABEL {
            return Err(bad("label is not NUL-terminated".into()));
        }
        let label = std::str::from_utf8(&raw.label[..label_len])
            .map_err(|_| bad("label is not UTF-8".into()))?
            .to_string();
        Ok(Superblock {
            uuid: raw.uuid,
            label,
            state,
            geometry,
            generation: raw.generation.get(),
            created: raw.created.get(),
            checkpoint,
            journal,
        })
    }

    /// The UUID in its usual text form.
    pub fn uuid_string(&self) -> String {
        format_uuid(&self.uuid)
    }
}

/// Formats 16 bytes as `xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx`.
pub fn format_uuid(u: &[u8; 16]) -> String {
    let h: String = u.iter().map(|b| format!("{b:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

/// Reads and decodes both copies.
pub fn read_copies(pmem: &Pmem) -> [Result<Superblock, Corrupt>; 2] {
    SUPERBLOCK_PFNS.map(|pfn| {
        let what = format!("superblock copy {pfn} (page {pfn})");
        match pmem.bytes(pfn * PAGE_SIZE, SUPERBLOCK_BYTES as u64) {
            Ok(b) => Superblock::decode(b, &what),
            Err(e) => Err(Corrupt::new(what, e.to_string())),
        }
    })
}

/// The copy to use: the valid one with the higher generation.
pub fn choose(copies: &[Result<Superblock, Corrupt>; 2]) -> Option<&Superblock> {
    copies
        .iter()
        .filter_map(|c| c.as_ref().ok())
        .max_by_key(|s| s.generation)
}

/// What to tell a user whose image is of format `version`.
pub fn version_mismatch(version: u32) -> String {
    if version < FORMAT_VERSION {
        format!(
            "format version {version}, older than this pmemfs's {FORMAT_VERSION}: it cannot be \
             read or converted here; copy its files off with the pmemfs that made it, then \
             make a new image with mkfs.pmemfs"
        )
    } else {
        format!(
            "format version {version}, newer than this pmemfs's {FORMAT_VERSION}: use the \
             pmemfs that made it"
        )
    }
}

/// The format version of an image whose superblock is whole (magic and
/// checksum right) but of another version than this build's, if either
/// copy is such.
pub fn other_version(pmem: &Pmem) -> Option<u32> {
    SUPERBLOCK_PFNS.iter().find_map(|pfn| {
        let b = pmem.bytes(pfn * PAGE_SIZE, SUPERBLOCK_BYTES as u64).ok()?;
        let raw = RawSuperblock::read_from_bytes(b).ok()?;
        let whole = raw.magic == MAGIC
            && crc32fast::hash(&raw.as_bytes()[..SUPERBLOCK_BYTES - 4]) == raw.crc.get();
        (whole && raw.version.get() != FORMAT_VERSION).then(|| raw.version.get())
    })
}

/// Whether the first bytes of either copy carry the pmemfs magic, valid or
/// not: mkfs refuses to format over such an image without -f.
pub fn has_magic(pmem: &Pmem) -> bool {
    SUPERBLOCK_PFNS
        .iter()
        .any(|pfn| pmem.bytes(pfn * PAGE_SIZE, 8).is_ok_and(|b| b == MAGIC))
}

/// The order to overwrite the copies in: a damaged or older copy first,
/// copy 0 first when both are valid and of one generation. While a copy is
/// written the other must be valid and the newest: valid, or a crash that
/// tears the one being written leaves none; the newest, because an older
/// copy names a checkpoint whose pages are free and may just have been
/// overwritten by the new one.
pub fn write_order(copies: &[Result<Superblock, Corrupt>; 2]) -> [u64; 2] {
    match copies {
        [Ok(a), Ok(b)] if b.generation < a.generation => [SUPERBLOCK_PFNS[1], SUPERBLOCK_PFNS[0]],
        [Ok(_), Err(_)] => [SUPERBLOCK_PFNS[1], SUPERBLOCK_PFNS[0]],
        _ => SUPERBLOCK_PFNS,
    }
}

/// Writes both copies, each made durable before the next is written, in
/// [`write_order`]: a crash tears at most one, and the other is then the
/// valid, newest copy.
pub fn write_copies(pmem: &Pmem, sb: &Superblock) -> Result<(), Error> {
    let bytes = sb.encode();
    for pfn in write_order(&read_copies(pmem)) {
        pmem.write(pfn * PAGE_SIZE, &bytes)?;
        pmem.persist(pfn * PAGE_SIZE, SUPERBLOCK_BYTES as u64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Superblock {
        let geometry = Geometry::for_size(1 << 30).unwrap();
        Superblock {
            uuid: [7; 16],
            label: "scratch".into(),
            state: State::InUse,
            geometry,
            generation: 42,
            created: 1_700_000_000,
            checkpoint: CheckpointRef {
                pfn: geometry.data_start,
                pages: 3,
                id: 9,
            },
            journal: JournalPos {
                off: 4096,
                seq: 77,
                nonce: 0x0123_4567_89ab_cdef,
            },
        }
    }

    #[test]
    fn round_trip() {
        let sb = sample();
        let bytes = sb.encode();
        assert_eq!(Superblock::decode(&bytes, "sb").unwrap(), sb);
    }

    /// The layout of the module's diagram (and docs/format.md §2.1), byte
    /// for byte.
    #[test]
    fn fixed_bytes() {
        let mut want = Vec::new();
        want.extend_from_slice(b"PMEMFS\0\x01");
        want.extend_from_slice(&[5, 0, 0, 0, 0, 0, 0, 0]); // version 5, incompat
        want.extend_from_slice(&[7; 16]);
        let mut label = b"scratch".to_vec();
        label.resize(64, 0);
        want.extend_from_slice(&label);
        want.extend_from_slice(&[0, 0x10, 0, 0, 1, 0, 0, 0]); // page size, in use
        for v in [
            262_144u64,
            2,
            4096,
            4098,
            42,
            1_700_000_000,
            4098,
            3,
            9,
            4096,
            77,
            0x0123_4567_89ab_cdef,
        ] {
            want.extend_from_slice(&v.to_le_bytes());
        }
        want.resize(252, 0);
        want.extend_from_slice(&0x03d2_5752u32.to_le_bytes());
        assert_eq!(sample().encode().to_vec(), want);
    }

    #[test]
    fn every_flipped_byte_is_caught() {
        let bytes = sample().encode();
        for i in 0..SUPERBLOCK_BYTES {
            let mut b = bytes;
            b[i] ^= 0x40;
            assert!(
                Superblock::decode(&b, "sb").is_err(),
                "flip at {i} went unnoticed"
            );
        }
    }

    #[test]
    fn zeroed_and_short_copies_are_refused() {
        let e = Superblock::decode(&[0u8; 4096], "superblock copy 0").unwrap_err();
        assert!(e.to_string().contains("bad magic"), "{e}");
        assert!(Superblock::decode(&[0u8; 10], "sb").is_err());
    }

    #[test]
    fn bad_geometry_with_valid_crc_is_refused() {
        let mut sb = sample();
        sb.geometry.journal_pages += 1;
        assert!(Superblock::decode(&sb.encode(), "sb").is_err());
        let mut sb = sample();
        sb.checkpoint.pfn = 1;
        assert!(Superblock::decode(&sb.encode(), "sb").is_err());
    }

    #[test]
    fn long_labels_are_cut_at_a_character_boundary() {
        let mut sb = sample();
        sb.label = "é".repeat(40); // 80 bytes, two per character
        let back = Superblock::decode(&sb.encode(), "sb").unwrap();
        assert_eq!(back.label, "é".repeat(31));
    }

    #[test]
    fn uuid_text() {
        let mut u = [0u8; 16];
        u[0] = 0xab;
        u[15] = 0x01;
        assert_eq!(format_uuid(&u), "ab000000-0000-0000-0000-000000000001");
    }

    #[test]
    fn a_bad_or_older_copy_is_overwritten_first() {
        let sb = sample();
        let older = Superblock {
            generation: sb.generation - 1,
            ..sb.clone()
        };
        let bad = || Err(Corrupt::new("copy", "torn"));
        assert_eq!(write_order(&[Ok(sb.clone()), Ok(sb.clone())]), [0, 1]);
        assert_eq!(write_order(&[bad(), Ok(sb.clone())]), [0, 1]);
        assert_eq!(write_order(&[Ok(sb.clone()), bad()]), [1, 0]);
        assert_eq!(write_order(&[Ok(older.clone()), Ok(sb.clone())]), [0, 1]);
        assert_eq!(write_order(&[Ok(sb.clone()), Ok(older)]), [1, 0]);
        assert_eq!(write_order(&[bad(), bad()]), [0, 1]);
    }
}
