//! A run of a file's page map: `len` pages from page `index` lie at pfns
//! `pfn ..= pfn + len - 1`.
//!
//! ```text
//! off  size  field
//!   0     8  index  first page of the run in the file
//!   8     8  pfn    where that page lies
//!  16     8  len    pages, at least 1
//! ```
//!
//! The same record follows the inode number in a `Map` op.

use super::{put_u64, Decode, Reader};
use crate::rangemap::Run;

pub const BYTES: usize = 24;

pub fn encode(r: &Run<u64>, out: &mut Vec<u8>) {
    put_u64(out, r.start);
    put_u64(out, r.value);
    put_u64(out, r.len);
}

pub fn decode(r: &mut Reader) -> Decode<Run<u64>> {
    let start = r.u64("extent index")?;
    let value = r.u64("extent pfn")?;
    let len = r.u64("extent length")?;
    if len == 0 || start.checked_add(len).is_none() || value.checked_add(len).is_none() {
        return Err(format!(
            "extent of {len} pages at index {start}, pfn {value}"
        ));
    }
    Ok(Run { start, len, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<Run<u64>> {
        super::super::whole(b, decode)
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let run = Run {
            start: 1,
            len: 3,
            value: 0x1000,
        };
        let mut out = Vec::new();
        encode(&run, &mut out);
        assert_eq!(
            out,
            [1, 0, 0, 0, 0, 0, 0, 0, 0, 0x10, 0, 0, 0, 0, 0, 0, 3, 0, 0, 0, 0, 0, 0, 0]
        );
        assert_eq!(decode_all(&out).unwrap(), run);
    }

    #[test]
    fn damage_is_refused() {
        let mut out = Vec::new();
        encode(
            &Run {
                start: 5,
                len: 2,
                value: 9,
            },
            &mut out,
        );
        super::super::assert_refuses_damage(&out, decode_all);
        out[16..24].copy_from_slice(&0u64.to_le_bytes());
        assert!(decode_all(&out).is_err(), "an empty run");
        out[16..24].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(decode_all(&out).is_err(), "a run that wraps");
    }
}
