//! The records the journal and the checkpoints are made of, each a fixed,
//! little-endian layout in the module named after it: [`attr`] (an inode's
//! attributes and its times), [`inode`] (an inode in a checkpoint),
//! [`xattr`], [`dirent`] (a directory entry), [`dir`] (a directory's
//! entries: the root of their tree), [`extent`] (a run of a
//! file's page map), [`op`] (one change in a journal entry), [`patch`]
//! (new bytes for part of a metadata page) and [`meta`] (a checkpoint's
//! payload: a header, inode records, then the patches it carries); and,
//! for the inode table planned in docs/format.md §7 (not used by images
//! yet), [`slot`] (an inode's slot). The share tree's and other B+trees'
//! records are in `btree::kinds`. `docs/format.md` §2.4 has the
//! byte tables; each module repeats its own.
//!
//! A record is a fixed part followed, where it has one, by bytes whose
//! length the fixed part gives. Decoding goes through a [`Reader`] and
//! refuses anything that does not fit, with a message that says what:
//! input that ends early, an unknown tag, a length past the input, a
//! value out of range, bytes left over. It never allocates more than the
//! input could hold. Encoding refuses a length its field cannot hold.

pub mod attr;
pub mod dir;
pub mod dirent;
pub mod extent;
pub mod filemap;
pub mod inode;
pub mod meta;
pub mod op;
pub mod patch;
pub mod slot;
pub mod xattr;

use std::borrow::Cow;

use zerocopy::{FromBytes, Immutable, KnownLayout, Unaligned};

/// Why bytes did not decode, or a value could not be encoded.
pub type Decode<T> = Result<T, String>;

/// Reads records front to back from bytes in one or more pieces (a
/// checkpoint's payload is the pages of its chain, read where they lie
/// in the mapping, not copied together first).
#[derive(Debug)]
pub struct Reader<'a> {
    pieces: Vec<&'a [u8]>,
    /// The piece being read and the offset in it.
    piece: usize,
    at: usize,
    /// Bytes read so far, of `len` in all.
    pos: usize,
    len: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader::pieces(vec![buf])
    }

    /// Reads `pieces` as if they were one slice.
    pub fn pieces(pieces: Vec<&'a [u8]>) -> Self {
        let len = pieces.iter().map(|p| p.len()).sum();
        Reader {
            pieces,
            piece: 0,
            at: 0,
            pos: 0,
            len,
        }
    }

    /// Bytes not read yet.
    pub fn remaining(&self) -> usize {
        self.len - self.pos
    }

    /// The next `n` bytes: borrowed where they lie in one piece, copied
    /// where they span two.
    pub fn take(&mut self, n: usize, what: &str) -> Decode<Cow<'a, [u8]>> {
        if n > self.remaining() {
            return Err(format!(
                "{what} at byte {} needs {n} bytes, {} are left",
                self.pos,
                self.remaining()
            ));
        }
        // One piece (a node, an entry): no piece to step over.
        if let [only] = self.pieces[..] {
            let b = &only[self.pos..self.pos + n];
            self.pos += n;
            self.at = self.pos;
            return Ok(Cow::Borrowed(b));
        }
        self.pos += n;
        // Pieces read to their end (and empty ones) are behind us.
        while self.piece < self.pieces.len() && self.at == self.pieces[self.piece].len() {
            self.piece += 1;
            self.at = 0;
        }
        if n == 0 {
            return Ok(Cow::Borrowed(&[]));
        }
        let first = self.pieces[self.piece];
        if self.at + n <= first.len() {
            let b = &first[self.at..self.at + n];
            self.at += n;
            return Ok(Cow::Borrowed(b));
        }
        let mut out = Vec::with_capacity(n);
        while out.len() < n {
            let p = self.pieces[self.piece];
            let k = (n - out.len()).min(p.len() - self.at);
            out.extend_from_slice(&p[self.at..self.at + k]);
            self.at += k;
            if self.at == p.len() {
                self.piece += 1;
                self.at = 0;
            }
        }
        Ok(Cow::Owned(out))
    }

    /// A fixed part.
    pub fn fixed<T: FromBytes + KnownLayout + Immutable + Unaligned>(
        &mut self,
        what: &str,
    ) -> Decode<T> {
        let b = self.take(std::mem::size_of::<T>(), what)?;
        T::read_from_bytes(&b).map_err(|_| format!("{what}: bad length"))
    }

    pub fn u8(&mut self, what: &str) -> Decode<u8> {
        Ok(self.take(1, what)?[0])
    }

    pub fn u16(&mut self, what: &str) -> Decode<u16> {
        let b = self.take(2, what)?;
        Ok(u16::from_le_bytes([b[0], b[1]]))
    }

    pub fn u32(&mut self, what: &str) -> Decode<u32> {
        let b = self.take(4, what)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn u64(&mut self, what: &str) -> Decode<u64> {
        let mut a = [0u8; 8];
        a.copy_from_slice(&self.take(8, what)?);
        Ok(u64::from_le_bytes(a))
    }

    /// A count of records of at least `min_bytes` each: refused when the
    /// input cannot hold that many, so that nobody allocates for a count
    /// that damage made up.
    pub fn count(&mut self, n: u64, min_bytes: usize, what: &str) -> Decode<usize> {
        let fits = (self.remaining() / min_bytes.max(1)) as u64;
        if n > fits {
            return Err(format!(
                "{what}: {n} records cannot fit in the {} bytes left",
                self.remaining()
            ));
        }
        Ok(n as usize)
    }

    /// Ends decoding: nothing may be left over.
    pub fn finish(&self, what: &str) -> Decode<()> {
        if self.remaining() != 0 {
            return Err(format!(
                "{what}: {} bytes left over after the last record",
                self.remaining()
            ));
        }
        Ok(())
    }
}

pub(crate) fn put_u16(out: &mut Vec<u8>, v: u16) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u32(out: &mut Vec<u8>, v: u32) {
    out.extend_from_slice(&v.to_le_bytes());
}

pub(crate) fn put_u64(out: &mut Vec<u8>, v: u64) {
    out.extend_from_slice(&v.to_le_bytes());
}

/// A length that must fit its field.
pub(crate) fn len_u16(n: usize, what: &str) -> Decode<u16> {
    u16::try_from(n).map_err(|_| format!("{what} of {n} bytes is longer than the media holds"))
}

pub(crate) fn len_u32(n: usize, what: &str) -> Decode<u32> {
    u32::try_from(n).map_err(|_| format!("{what} of {n} bytes is longer than the media holds"))
}

/// Decodes one record with `decode` from all of `b`, nothing left over.
#[cfg(test)]
pub(crate) fn whole<T>(b: &[u8], decode: impl Fn(&mut Reader) -> Decode<T>) -> Decode<T> {
    let mut r = Reader::new(b);
    let v = decode(&mut r)?;
    r.finish("record")?;
    Ok(v)
}

/// Shared by the records' tests: `bytes` with one byte changed at each
/// position in turn never decodes into something that panics, and
/// truncating it anywhere is refused.
#[cfg(test)]
pub(crate) fn assert_refuses_damage<T>(bytes: &[u8], decode: impl Fn(&[u8]) -> Decode<T>) {
    for cut in 0..bytes.len() {
        assert!(decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
    }
    let mut longer = bytes.to_vec();
    longer.push(0);
    assert!(decode(&longer).is_err(), "a byte left over decoded");
    for i in 0..bytes.len() {
        for flip in [0x01u8, 0x80, 0xff] {
            let mut b = bytes.to_vec();
            b[i] ^= flip;
            let _ = decode(&b);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pieces_read_as_one() {
        let bytes: Vec<u8> = (0..40).collect();
        let whole = {
            let mut r = Reader::new(&bytes);
            (
                r.u64("a").unwrap(),
                r.take(20, "b").unwrap().to_vec(),
                r.u32("c").unwrap(),
            )
        };
        for cuts in [
            vec![0, 3, 3, 8, 39],
            vec![1, 2, 3, 4, 5, 6, 7],
            vec![20],
            vec![0, 40],
        ] {
            let mut pieces = Vec::new();
            let mut from = 0;
            for c in cuts.iter().copied().chain([bytes.len()]) {
                pieces.push(&bytes[from..c]);
                from = c;
            }
            let mut r = Reader::pieces(pieces);
            let got = (
                r.u64("a").unwrap(),
                r.take(20, "b").unwrap().to_vec(),
                r.u32("c").unwrap(),
            );
            assert_eq!(got, whole, "{cuts:?}");
            assert_eq!(r.remaining(), 8);
            assert!(r.take(9, "d").is_err());
            r.take(8, "d").unwrap();
            r.finish("e").unwrap();
        }
    }
}
