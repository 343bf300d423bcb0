//! A run of share counts: each of the `len` pfns from `pfn` is mapped by
//! `count` (file, page index) pairs.
//!
//! ```text
//! off  size  field
//!   0     8  pfn
//!   8     8  len    pfns, at least 1
//!  16     4  count  at least 1 (a pfn without a run has count 0)
//! ```

use super::{put_u32, put_u64, Decode, Reader};
use crate::rangemap::Run;

pub const BYTES: usize = 20;

pub fn encode(r: &Run<u32>, out: &mut Vec<u8>) {
    put_u64(out, r.start);
    put_u64(out, r.len);
    put_u32(out, r.value);
}

pub fn decode(r: &mut Reader) -> Decode<Run<u32>> {
    let start = r.u64("share run pfn")?;
    let len = r.u64("share run length")?;
    let value = r.u32("share count")?;
    if len == 0 || start.checked_add(len).is_none() || value == 0 {
        return Err(format!(
            "share run of {len} pfns at {start} with count {value}"
        ));
    }
    Ok(Run { start, len, value })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<Run<u32>> {
        super::super::whole(b, decode)
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let run = Run {
            start: 0x0203,
            len: 4,
            value: 2,
        };
        let mut out = Vec::new();
        encode(&run, &mut out);
        assert_eq!(
            out,
            [3, 2, 0, 0, 0, 0, 0, 0, 4, 0, 0, 0, 0, 0, 0, 0, 2, 0, 0, 0]
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
                value: 1,
            },
            &mut out,
        );
        super::super::assert_refuses_damage(&out, decode_all);
        out[16..20].copy_from_slice(&0u32.to_le_bytes());
        assert!(decode_all(&out).is_err(), "a count of 0 is no run");
    }
}
