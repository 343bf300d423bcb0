//! The metadata journal: a write-ahead log of checksummed transactions.
//!
//! The journal is a region of `journal_pages` pages. Entries are appended
//! from the offset the superblock names, each starting on a 64-byte
//! boundary so that a header never straddles a cache line:
//!
//! ```text
//! off  size  field
//!   0     4  magic    "JRNL" (0x4c4e524a as a little-endian u32)
//!   4     4  len      payload bytes
//!   8     8  seq      sequence number; each entry is the previous + 1
//!  16     4  crc32    of the header with this field zero, then the payload
//!  20     8  nonce    the run's nonce, from the superblock
//!  28     4  reserved zero
//!  32   len  payload  the ops (record::op), then the patches of the
//!                     metadata pages the transaction changed (record::patch)
//! ```
//! then zero padding to the next 64-byte boundary.
//!
//! An entry is durable once its bytes are flushed and fenced; it is then
//! the commit point of its ops. Replay reads entries while the magic and
//! nonce match and the seq is the one expected. An entry with the expected
//! seq and nonce whose length or checksum is wrong is a torn tail: a crash
//! hit it before its fence, so it never committed and is ignored. Anything
//! else ends the log cleanly (zeroes, or an entry of an earlier run). A
//! checkpoint restarts the journal at offset 0 with the next seq and a new
//! random nonce, so the journal never wraps.
//!
//! The nonce is what makes stale bytes harmless. Payloads hold bytes users
//! chose (xattr values, names), and a payload can contain a well-formed
//! entry for any seq; once its run is over it lies in the region as stale
//! bytes where replay or the damage probe may look. Without the run's nonce,
//! which no user can read, such bytes are never taken for an entry.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Corrupt, Error, Result};
use crate::layout::Geometry;
use crate::meta::Op;
use crate::pmem::{Pmem, CACHE_LINE};
use crate::record::patch::{self, Patch};
use crate::record::Reader;
use crate::superblock::JournalPos;

pub const ENTRY_MAGIC: u32 = u32::from_le_bytes(*b"JRNL");
pub const HEADER_BYTES: u64 = 32;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawHeader {
    magic: U32,
    len: U32,
    seq: U64,
    crc: U32,
    nonce: U64,
    reserved: [u8; 4],
}

const _: () = assert!(std::mem::size_of::<RawHeader>() == HEADER_BYTES as usize);

fn entry_crc(header: &RawHeader, payload: &[u8]) -> u32 {
    let mut h = *header;
    h.crc = 0.into();
    let mut c = crc32fast::Hasher::new();
    c.update(h.as_bytes());
    c.update(payload);
    c.finalize()
}

/// Bytes an entry of `payload` bytes takes, padding included.
pub fn entry_bytes(payload: usize) -> u64 {
    (HEADER_BYTES + payload as u64).div_ceil(CACHE_LINE) * CACHE_LINE
}

/// Encodes a transaction as the entry that goes at `pos`.
pub fn encode_entry(pos: JournalPos, ops: &[Op], patches: &[Patch]) -> Result<Vec<u8>> {
    entry_of(pos, &encode_ops(ops)?, patches)
}

/// The ops part of an entry's payload, for [`entry_of`]: a commit encodes
/// its ops once, before it knows its patches.
pub fn encode_ops<'a, I>(ops: I) -> Result<Vec<u8>>
where
    I: IntoIterator<Item = &'a Op>,
    I::IntoIter: ExactSizeIterator,
{
    crate::record::op::encode(ops).map_err(|e| Error::Io(std::io::Error::other(e)))
}

/// The entry at `pos` of ops already encoded (`encode_ops`) and patches.
pub fn entry_of(pos: JournalPos, ops: &[u8], patches: &[Patch]) -> Result<Vec<u8>> {
    // The patch list: a count, then each patch's 12 bytes and its bytes,
    // encoded after the header and the ops, in the one buffer the entry is
    // written from (a commit's patches are kilobytes; copied once).
    let header = HEADER_BYTES as usize;
    let patch_bytes = 4 + patches.iter().map(|p| 12 + p.bytes.len()).sum::<usize>();
    let mut out = Vec::with_capacity(entry_bytes(ops.len() + patch_bytes) as usize);
    out.resize(header, 0);
    out.extend_from_slice(ops);
    patch::encode(patches, &mut out).map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let payload = out.len() - header;
    let len = u32::try_from(payload).map_err(|_| Error::TransactionTooLarge(payload))?;
    let mut h = RawHeader {
        magic: ENTRY_MAGIC.into(),
        len: len.into(),
        seq: pos.seq.into(),
        crc: 0.into(),
        nonce: pos.nonce.into(),
        reserved: [0; 4],
    };
    h.crc = entry_crc(&h, &out[header..]).into();
    out[..header].copy_from_slice(h.as_bytes());
    out.resize(entry_bytes(payload) as usize, 0);
    Ok(out)
}

/// A committed entry found by [`scan`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Offset inside the journal region.
    pub off: u64,
    pub seq: u64,
    pub ops: Vec<Op>,
    pub patches: Vec<Patch>,
}

/// How the log ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Zeroes, an older entry, or the end of the region.
    Clean,
    /// An entry with the expected seq that did not commit.
    Torn(Corrupt),
    /// The log stops at a damaged entry, yet committed entries follow it:
    /// not a crash (entries are durable one after another), but damage
    /// that would silently lose `lost` committed transactions.
    Damaged { at: Corrupt, lost: u64 },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scan {
    pub entries: Vec<Entry>,
    pub end: End,
    /// Where the next entry goes.
    pub next: JournalPos,
}

/// What lies at one offset when the entry for a position is expected.
enum Found {
    Entry(Entry, u64),
    /// Not an entry of that seq and run: zeroes, an older entry.
    Nothing,
    /// The entry's header is there but the entry is not whole.
    Torn(String),
}

fn read_entry(pmem: &Pmem, g: &Geometry, at: JournalPos) -> Found {
    let JournalPos { off, seq, nonce } = at;
    let (base, size) = (g.journal_offset(), g.journal_bytes());
    if off % CACHE_LINE != 0 || off + HEADER_BYTES > size {
        return Found::Nothing;
    }
    let Some(header) = pmem
        .bytes(base + off, HEADER_BYTES)
        .ok()
        .and_then(|b| RawHeader::read_from_bytes(b).ok())
    else {
        return Found::Nothing;
    };
    if header.magic.get() != ENTRY_MAGIC || header.seq.get() != seq || header.nonce.get() != nonce {
        return Found::Nothing;
    }
    let len = u64::from(header.len.get());
    if HEADER_BYTES + len > size - off {
        return Found::Torn(format!("seq {seq}: length {len} runs past the journal"));
    }
    let payload = match pmem.bytes(base + off + HEADER_BYTES, len) {
        Ok(p) => p,
        Err(e) => return Found::Torn(e.to_string()),
    };
    if entry_crc(&header, payload) != header.crc.get() {
        return Found::Torn(format!("seq {seq}: checksum mismatch"));
    }
    let mut r = Reader::new(payload);
    let decoded = crate::record::op::decode_list(&mut r).and_then(|ops| {
        let patches = patch::decode_list(&mut r)?;
        r.finish("journal entry")?;
        Ok((ops, patches))
    });
    match decoded {
        Ok((ops, patches)) => Found::Entry(
            Entry {
                off,
                seq,
                ops,
                patches,
            },
            off + entry_bytes(len as usize),
        ),
        Err(e) => Found::Torn(format!("seq {seq}: does not decode: {e}")),
    }
}

/// Reads the committed entries from `start`.
pub fn scan(pmem: &Pmem, g: &Geometry, start: JournalPos) -> Scan {
    let mut pos = start;
    let mut entries = Vec::new();
    let torn = loop {
        match read_entry(pmem, g, pos) {
            Found::Entry(e, next) => {
                entries.push(e);
                pos = pos.after(next);
            }
            Found::Nothing => break None,
            Found::Torn(why) => break Some(why),
        }
    };
    let end = match (later_entries(pmem, g, pos), torn) {
        (0, None) => End::Clean,
        (0, Some(why)) => End::Torn(Corrupt::new(
            format!("journal entry at offset {}", pos.off),
            why,
        )),
        (lost, why) => End::Damaged {
            at: Corrupt::new(
                format!("journal entry at offset {}", pos.off),
                why.unwrap_or_else(|| format!("seq {}: header damaged", pos.seq)),
            ),
            lost,
        },
    };
    Scan {
        entries,
        end,
        next: pos,
    }
}

/// Counts the committed entries that follow a log end at `pos`: a chain
/// of this run starting with seq `pos.seq + 1` anywhere after it. There are
/// none after a crash, as each entry is durable before the next is written.
fn later_entries(pmem: &Pmem, g: &Geometry, pos: JournalPos) -> u64 {
    let mut off = pos.off + CACHE_LINE;
    let magic = ENTRY_MAGIC.to_le_bytes();
    while off + HEADER_BYTES <= g.journal_bytes() {
        if pmem
            .bytes(g.journal_offset() + off, 4)
            .is_ok_and(|b| b == magic)
        {
            let mut at = JournalPos {
                off,
                seq: pos.seq + 1,
                nonce: pos.nonce,
            };
            let mut n = 0;
            while let Found::Entry(_, next) = read_entry(pmem, g, at) {
                n += 1;
                at = at.after(next);
            }
            if n > 0 {
                return n;
            }
        }
        off += CACHE_LINE;
    }
    0
}

/// Writes `entry` (from [`encode_entry`]) at `pos` and makes it durable.
/// Returns `Ok(false)`, writing nothing, when it does not fit before the
/// end of the journal.
pub fn append(pmem: &Pmem, g: &Geometry, pos: JournalPos, entry: &[u8]) -> Result<bool> {
    let len = entry.len() as u64;
    if pos.off + len > g.journal_bytes() {
        return Ok(false);
    }
    let off = g.journal_offset() + pos.off;
    pmem.write(off, entry)?;
    if !crate::testing::skip_journal_fence() {
        pmem.persist(off, len)?;
    }
    Ok(true)
}

/// Zeroes the header of the entry at `off` so that the log ends there.
pub fn cut(pmem: &Pmem, g: &Geometry, off: u64) -> Result<()> {
    let at = g.journal_offset() + off;
    pmem.zero(at, HEADER_BYTES)?;
    pmem.persist(at, HEADER_BYTES)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIN_IMAGE_BYTES;
    use crate::meta::ROOT_INO;

    const START: JournalPos = JournalPos {
        off: 0,
        seq: 1,
        nonce: 0x5eed_0fa1_2345,
    };

    fn setup() -> (Pmem, Geometry) {
        (
            Pmem::memory(MIN_IMAGE_BYTES),
            Geometry::for_size(MIN_IMAGE_BYTES).unwrap(),
        )
    }

    fn op(i: u64) -> Vec<Op> {
        vec![
            Op::Unmap {
                ino: ROOT_INO,
                index: i,
                len: i + 1,
            },
            Op::SetParent { dir: i, parent: 7 },
        ]
    }

    fn write_n(p: &Pmem, g: &Geometry, n: u64) -> Vec<u64> {
        let mut pos = START;
        let mut offs = vec![];
        for i in 0..n {
            let e = encode_entry(pos, &op(i), &[]).unwrap();
            assert!(append(p, g, pos, &e).unwrap());
            offs.push(pos.off);
            pos = pos.after(pos.off + e.len() as u64);
        }
        offs
    }

    #[test]
    fn round_trip() {
        let (p, g) = setup();
        write_n(&p, &g, 5);
        let s = scan(&p, &g, START);
        assert_eq!(s.end, End::Clean);
        assert_eq!(s.entries.len(), 5);
        for (i, e) in s.entries.iter().enumerate() {
            assert_eq!(e.ops, op(i as u64));
            assert_eq!(e.seq, i as u64 + 1);
        }
        assert_eq!(s.next.seq, 6);
    }

    #[test]
    fn torn_tail_is_detected_and_cut() {
        let (p, g) = setup();
        let offs = write_n(&p, &g, 3);
        // A crash left the last entry's payload half written.
        p.write(
            g.journal_offset() + offs[2] + HEADER_BYTES + 1,
            &[0xff, 0xee],
        )
        .unwrap();
        let s = scan(&p, &g, START);
        assert_eq!(s.entries.len(), 2);
        assert!(matches!(s.end, End::Torn(_)));
        cut(&p, &g, s.next.off).unwrap();
        let s = scan(&p, &g, START);
        assert_eq!((s.entries.len(), s.end), (2, End::Clean));
    }

    #[test]
    fn corrupted_length_and_stale_entries() {
        let (p, g) = setup();
        let offs = write_n(&p, &g, 2);
        // An older log (lower seq) is a clean end, not damage.
        let s = scan(&p, &g, JournalPos { seq: 9, ..START });
        assert_eq!((s.entries.len(), s.end), (0, End::Clean));
        p.write(g.journal_offset() + offs[1] + 4, &u32::MAX.to_le_bytes())
            .unwrap();
        let s = scan(&p, &g, START);
        assert_eq!(s.entries.len(), 1);
        assert!(matches!(s.end, End::Torn(_)));
    }

    #[test]
    fn damage_in_the_middle_is_not_a_torn_tail() {
        let (p, g) = setup();
        let offs = write_n(&p, &g, 5);
        // A flipped payload byte in entry 2 of 5.
        let at = g.journal_offset() + offs[1] + HEADER_BYTES;
        let b = p.bytes(at, 1).unwrap()[0];
        p.write(at, &[b ^ 4]).unwrap();
        let s = scan(&p, &g, START);
        assert_eq!(s.entries.len(), 1);
        assert!(matches!(s.end, End::Damaged { lost: 3, .. }), "{:?}", s.end);
        // A wiped header hides the rest just the same.
        p.write(at, &[b]).unwrap();
        p.zero(g.journal_offset() + offs[1], HEADER_BYTES).unwrap();
        let s = scan(&p, &g, START);
        assert!(matches!(s.end, End::Damaged { lost: 3, .. }), "{:?}", s.end);
    }

    #[test]
    fn full_journal_refuses_without_writing() {
        let (p, g) = setup();
        let ops: Vec<Op> = (0..20).flat_map(op).collect();
        let e = encode_entry(START, &ops, &[]).unwrap();
        assert!(e.len() > 64);
        let at = JournalPos {
            off: g.journal_bytes() - 64,
            ..START
        };
        assert!(!append(&p, &g, at, &e).unwrap());
        assert!(p
            .bytes(g.journal_offset() + at.off, 64)
            .unwrap()
            .iter()
            .all(|&b| b == 0));
    }

    /// Stale bytes that form well-formed entries (a user can put them in an
    /// xattr value, which a journal payload holds) neither replay at the
    /// start of a new run nor pass for committed entries after its end.
    #[test]
    fn entries_of_another_run_never_count() {
        let (p, g) = setup();
        let run = JournalPos { seq: 2, ..START };
        let guessed = JournalPos { nonce: 0, ..run };
        let forged = encode_entry(guessed, &op(99), &[]).unwrap();
        p.write(g.journal_offset(), &forged).unwrap();
        let later = JournalPos {
            off: 1024,
            seq: 4,
            ..guessed
        };
        p.write(
            g.journal_offset() + later.off,
            &encode_entry(later, &op(98), &[]).unwrap(),
        )
        .unwrap();
        let s = scan(&p, &g, run);
        assert_eq!((s.entries.len(), s.end, s.next), (0, End::Clean, run));
        // The same bytes are whole entries of the run whose nonce they carry.
        let s = scan(&p, &g, guessed);
        assert_eq!(s.entries.len(), 1);
        assert!(matches!(s.end, End::Damaged { lost: 1, .. }), "{:?}", s.end);
    }

    /// The example in docs/format.md §2.2, byte for byte.
    #[test]
    fn documented_example() {
        let pos = JournalPos {
            off: 0,
            seq: 1,
            nonce: 0,
        };
        let e = encode_entry(pos, &[Op::Delete { ino: 300 }], &[]).unwrap();
        let mut want = vec![0u8; 64];
        want[..20].copy_from_slice(&[
            0x4a, 0x52, 0x4e, 0x4c, 17, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0x22, 0x5a, 0xe2, 0x3b,
        ]);
        // One op, a Delete of inode 300; then no patches.
        want[32..49].copy_from_slice(&[1, 0, 0, 0, 4, 0x2c, 0x01, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(e, want);
    }

    #[test]
    fn restarts_draw_different_nonces() {
        let a = JournalPos::restart(5).unwrap();
        let b = JournalPos::restart(5).unwrap();
        assert_eq!((a.off, a.seq), (0, 5));
        assert_ne!(a.nonce, b.nonce);
    }
}
