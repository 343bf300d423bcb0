//! Checkpoints: the whole metadata, written to free pages as a chain.
//!
//! A checkpoint is [`Meta`] encoded as records (`record::meta`), cut into
//! pages as it is encoded and read where it lies, never whole in memory. Every
//! page starts with a header; the superblock names the first page, the
//! number of pages and the checkpoint id:
//!
//! ```text
//! off  size  field
//!   0     4  magic    "CKPT"
//!   4     4  crc32    of the header with this field zero, then `used` bytes
//!   8     8  id       checkpoint id (the superblock's ckpt_id)
//!  16     8  next     pfn of the next page; 0 on the last page
//!  24     4  used     payload bytes in this page (at most 4064)
//!  28     4  index    position of this page in the chain, from 0
//!  32  4064  payload
//! ```
//!
//! A new checkpoint goes to pages that are free in the current state, so
//! the one the superblock names stays intact until the superblock points
//! elsewhere; only then are its pages freed.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::error::{Corrupt, Result};
use crate::layout::{Geometry, PAGE_SIZE};
use crate::meta::Meta;
use crate::pmem::Pmem;
use crate::record::patch::Patch;
use crate::superblock::CheckpointRef;

pub const PAGE_MAGIC: u32 = u32::from_le_bytes(*b"CKPT");
const HEADER_BYTES: usize = 32;
/// Payload bytes per checkpoint page.
pub const PAYLOAD_PER_PAGE: usize = PAGE_SIZE as usize - HEADER_BYTES;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawPageHeader {
    magic: U32,
    crc: U32,
    id: U64,
    next: U64,
    used: U32,
    index: U32,
}

const _: () = assert!(std::mem::size_of::<RawPageHeader>() == HEADER_BYTES);

fn page_crc(h: &RawPageHeader, payload: &[u8]) -> u32 {
    let mut h = *h;
    h.crc = 0.into();
    let mut c = crc32fast::Hasher::new();
    c.update(h.as_bytes());
    c.update(payload);
    c.finalize()
}

/// Why metadata could not be encoded: a length its record cannot hold (a
/// name or value of more than 64 KiB or 4 GiB, which nothing writes).
fn refused(e: String) -> Corrupt {
    Corrupt::new("metadata to checkpoint", e)
}

/// Bytes of `meta`'s payload, found by encoding it without keeping it.
pub fn encoded_len(meta: &Meta, patches: &[Patch]) -> Result<usize, Corrupt> {
    let mut n = 0;
    crate::record::meta::encode_each(meta, patches, |b| n += b.len()).map_err(refused)?;
    Ok(n)
}

/// Pages a payload of `bytes` bytes needs.
pub fn pages_for(bytes: usize) -> u64 {
    bytes.div_ceil(PAYLOAD_PER_PAGE).max(1) as u64
}

/// Writes `meta` as a checkpoint to `pfns` (exactly [`pages_for`] its
/// [`encoded_len`]) and flushes them, a page at a time; the caller fences
/// before pointing a superblock at it.
pub fn write_meta(
    pmem: &Pmem,
    id: u64,
    meta: &Meta,
    patches: &[Patch],
    pfns: &[u64],
) -> Result<()> {
    let mut w = PageWriter::new(pmem, id, pfns);
    crate::record::meta::encode_each(meta, patches, |b| w.push(b)).map_err(refused)?;
    w.finish()
}

/// Cuts a payload into the pages of a chain as it comes.
struct PageWriter<'a> {
    pmem: &'a Pmem,
    id: u64,
    pfns: &'a [u64],
    /// The next page's payload so far.
    buf: Vec<u8>,
    written: usize,
    /// The first error: later pushes are dropped.
    error: Option<crate::error::Error>,
}

impl<'a> PageWriter<'a> {
    fn new(pmem: &'a Pmem, id: u64, pfns: &'a [u64]) -> Self {
        PageWriter {
            pmem,
            id,
            pfns,
            buf: Vec::with_capacity(PAYLOAD_PER_PAGE),
            written: 0,
            error: None,
        }
    }

    fn push(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() && self.error.is_none() {
            let k = (PAYLOAD_PER_PAGE - self.buf.len()).min(bytes.len());
            self.buf.extend_from_slice(&bytes[..k]);
            bytes = &bytes[k..];
            if self.buf.len() == PAYLOAD_PER_PAGE {
                if let Err(e) = self.page() {
                    self.error = Some(e);
                }
            }
        }
    }

    /// Writes the page `buf` holds as the next of the chain.
    fn page(&mut self) -> Result<()> {
        let i = self.written;
        let Some(&pfn) = self.pfns.get(i) else {
            return Err(Corrupt::new(
                "checkpoint",
                format!(
                    "the payload needs more than the {} pages given",
                    self.pfns.len()
                ),
            )
            .into());
        };
        let mut h = RawPageHeader {
            magic: PAGE_MAGIC.into(),
            crc: 0.into(),
            id: self.id.into(),
            next: self.pfns.get(i + 1).copied().unwrap_or(0).into(),
            used: (self.buf.len() as u32).into(),
            index: (i as u32).into(),
        };
        h.crc = page_crc(&h, &self.buf).into();
        let off = pfn * PAGE_SIZE;
        self.pmem.write(off, h.as_bytes())?;
        self.pmem.write(off + HEADER_BYTES as u64, &self.buf)?;
        self.pmem.flush(off, PAGE_SIZE)?;
        self.buf.clear();
        self.written += 1;
        Ok(())
    }

    /// Writes what is left, and empty pages to the end of the chain.
    fn finish(mut self) -> Result<()> {
        if let Some(e) = self.error.take() {
            return Err(e);
        }
        if !self.buf.is_empty() || self.written == 0 {
            self.page()?;
        }
        while self.written < self.pfns.len() {
            self.page()?;
        }
        Ok(())
    }
}

/// Reads and decodes the checkpoint `r` names. Returns the metadata and the
/// pfns the checkpoint occupies.
/// A checkpoint as read: the metadata, the pages of its chain, and the
/// patches of the transaction it carries (stored in place by whoever opens
/// the image for writing; read through by those who only look).
#[derive(Debug)]
pub struct Loaded {
    pub meta: Meta,
    pub pfns: Vec<u64>,
    pub patches: Vec<Patch>,
}

pub fn read(pmem: &Pmem, g: &Geometry, r: &CheckpointRef) -> Result<Loaded, Corrupt> {
    // The pages' payloads where they lie in the mapping: decoding reads
    // them in place, so a checkpoint is never copied whole into memory.
    let mut payload: Vec<&[u8]> = Vec::new();
    let mut pfns = Vec::new();
    let mut pfn = r.pfn;
    if r.pages > u64::from(u32::MAX) {
        return Err(Corrupt::new(
            format!("checkpoint {}", r.id),
            format!("{} pages is more than a chain can hold", r.pages),
        ));
    }
    for index in 0..r.pages {
        let what = || format!("checkpoint page {index} (pfn {pfn})");
        if !g.in_data(pfn, 1) {
            return Err(Corrupt::new(what(), "lies outside the data area"));
        }
        let page = pmem
            .bytes(pfn * PAGE_SIZE, PAGE_SIZE)
            .map_err(|e| Corrupt::new(what(), e.to_string()))?;
        let h = RawPageHeader::read_from_bytes(&page[..HEADER_BYTES])
            .map_err(|_| Corrupt::new(what(), "short header"))?;
        if h.magic.get() != PAGE_MAGIC {
            return Err(Corrupt::new(what(), "bad magic"));
        }
        let used = h.used.get() as usize;
        if used > PAYLOAD_PER_PAGE {
            return Err(Corrupt::new(what(), format!("claims {used} payload bytes")));
        }
        let chunk = &page[HEADER_BYTES..HEADER_BYTES + used];
        if page_crc(&h, chunk) != h.crc.get() {
            return Err(Corrupt::new(what(), "checksum mismatch"));
        }
        if h.id.get() != r.id || u64::from(h.index.get()) != index {
            return Err(Corrupt::new(
                what(),
                format!(
                    "belongs to checkpoint {} page {}, not {} page {index}",
                    h.id.get(),
                    h.index.get(),
                    r.id
                ),
            ));
        }
        let next = h.next.get();
        let last = index + 1 == r.pages;
        if !last && used != PAYLOAD_PER_PAGE {
            return Err(Corrupt::new(
                what(),
                format!("holds {used} bytes, but only the last page may be partly used"),
            ));
        }
        if last != (next == 0) {
            return Err(Corrupt::new(
                what(),
                format!(
                    "chain ends after {} pages, the superblock says {}",
                    index + 1,
                    r.pages
                ),
            ));
        }
        payload.push(chunk);
        pfns.push(pfn);
        pfn = next;
    }
    let (meta, patches) = crate::record::meta::decode_pieces(payload).map_err(|e| {
        Corrupt::new(
            format!("checkpoint {}", r.id),
            format!("metadata does not decode: {e}"),
        )
    })?;
    meta.check_shape()
        .map_err(|e| Corrupt::new(format!("checkpoint {}", r.id), e.to_string()))?;
    Ok(Loaded {
        meta,
        pfns,
        patches,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layout::MIN_IMAGE_BYTES;
    use crate::meta::{Attr, Kind, NewBody, Op, Time, ROOT_INO};

    fn sample() -> Meta {
        // The page maps' changes go to pages of their own, which the
        // encoding does not read: one inline run each, or a tree's root.
        let mut mem = crate::btree::mem::Mem::default();
        let mut m = Meta::new(1000, 1000, Time { secs: 5, nsecs: 6 }, &mut mem).unwrap();
        for i in 0..200u64 {
            let ino = m.next_ino;
            m.apply(&Op::Create {
                ino,
                attr: Attr::new(Kind::File, 0o600, 1, 2, Time::default()),
                body: NewBody::File,
            })
            .unwrap();
            m.execute(
                &Op::Link {
                    dir: ROOT_INO,
                    name: format!("file-{i:04}-with-a-longish-name").into_bytes(),
                    ino,
                },
                &mut mem,
            )
            .unwrap();
            m.execute(
                &Op::Map {
                    ino,
                    index: i,
                    pfn: 10_000 + i * 3,
                    len: 2,
                },
                &mut mem,
            )
            .unwrap();
        }
        m
    }

    fn setup(meta: &Meta) -> (Pmem, Geometry, CheckpointRef) {
        let g = Geometry::for_size(MIN_IMAGE_BYTES).unwrap();
        let p = Pmem::memory(MIN_IMAGE_BYTES);
        let n = pages_for(encoded_len(meta, &[]).unwrap());
        assert!(n > 1, "the sample spans several pages");
        // Scatter the chain, last page first, to exercise `next`.
        let pfns: Vec<u64> = (0..n).map(|i| g.data_start + 10 + (n - i) * 2).collect();
        write_meta(&p, 33, meta, &[], &pfns).unwrap();
        (
            p,
            g,
            CheckpointRef {
                pfn: pfns[0],
                pages: n,
                id: 33,
            },
        )
    }

    /// A one-page checkpoint of a new file system: the page header of the
    /// module's diagram, byte for byte, then the payload.
    #[test]
    fn fixed_bytes() {
        let g = Geometry::for_size(MIN_IMAGE_BYTES).unwrap();
        let p = Pmem::memory(MIN_IMAGE_BYTES);
        let m = Meta::new(
            0,
            0,
            Time::default(),
            &mut crate::btree::mem::Mem::default(),
        )
        .unwrap();
        let len = encoded_len(&m, &[]).unwrap();
        let pfn = g.data_start;
        write_meta(&p, 5, &m, &[], &[pfn]).unwrap();
        let page = p.bytes(pfn * PAGE_SIZE, PAGE_SIZE).unwrap();
        let payload = crate::record::meta::encode(&m, &[]).unwrap();
        assert_eq!(&page[..4], b"CKPT");
        let mut h = page[..32].to_vec();
        h[4..8].fill(0);
        let crc = {
            let mut c = crc32fast::Hasher::new();
            c.update(&h);
            c.update(&payload);
            c.finalize()
        };
        let mut want = b"CKPT".to_vec();
        want.extend_from_slice(&crc.to_le_bytes());
        want.extend_from_slice(&5u64.to_le_bytes()); // id
        want.extend_from_slice(&0u64.to_le_bytes()); // next: the last page
        want.extend_from_slice(&(len as u32).to_le_bytes()); // used
        want.extend_from_slice(&0u32.to_le_bytes()); // index
        want.extend_from_slice(&payload);
        assert_eq!(&page[..32 + len], &want[..]);
    }

    #[test]
    fn round_trip() {
        let m = sample();
        let (p, g, r) = setup(&m);
        let crate::checkpoint::Loaded {
            meta: back, pfns, ..
        } = read(&p, &g, &r).unwrap();
        assert_eq!(back, m);
        assert_eq!(pfns.len() as u64, r.pages);
    }

    #[test]
    fn corruption_is_caught() {
        let m = sample();
        let (p, g, r) = setup(&m);
        // A flipped payload byte in the second page.
        let pfns = read(&p, &g, &r).unwrap().pfns;
        let at = pfns[1] * PAGE_SIZE + 100;
        let b = p.bytes(at, 1).unwrap()[0];
        p.write(at, &[b ^ 1]).unwrap();
        let e = read(&p, &g, &r).unwrap_err();
        assert!(e.to_string().contains("checkpoint page 1"), "{e}");
        p.write(at, &[b]).unwrap();
        // Wrong id, wrong length, outside the data area.
        assert!(read(&p, &g, &CheckpointRef { id: 34, ..r }).is_err());
        assert!(read(
            &p,
            &g,
            &CheckpointRef {
                pages: r.pages + 1,
                ..r
            }
        )
        .is_err());
        assert!(read(
            &p,
            &g,
            &CheckpointRef {
                pages: r.pages - 1,
                ..r
            }
        )
        .is_err());
        assert!(read(&p, &g, &CheckpointRef { pfn: 1, ..r }).is_err());
        read(&p, &g, &r).unwrap();
    }
}
