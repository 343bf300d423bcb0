//! A patch: new bytes for a range of a metadata page (a B+tree node).
//! Journal entries and checkpoints carry the patches of their
//! transactions; replay stores them where they belong, which is
//! idempotent (a patch holds absolute bytes), so a page stored in place
//! before a crash, or half stored, is rewritten whole.
//!
//! ```text
//! patches: count u32, then the patch records
//!
//! off  size  field
//!   0     8  pfn
//!   8     2  off    byte offset in the page
//!  10     2  len    bytes, at least 1; off + len at most 4096
//!  12   len  the bytes
//! ```

use super::{len_u32, put_u16, put_u32, put_u64, Decode, Reader};
use crate::layout::PAGE_SIZE;

/// Bytes of a patch record's fixed part.
pub const FIXED_BYTES: usize = 12;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patch {
    pub pfn: u64,
    pub off: u16,
    pub bytes: Vec<u8>,
}

pub fn encode(patches: &[Patch], out: &mut Vec<u8>) -> Decode<()> {
    put_u32(out, len_u32(patches.len(), "a list of patches")?);
    for p in patches {
        if p.bytes.is_empty() || usize::from(p.off) + p.bytes.len() > PAGE_SIZE as usize {
            return Err(format!(
                "a patch of {} bytes at offset {} of a page",
                p.bytes.len(),
                p.off
            ));
        }
        put_u64(out, p.pfn);
        put_u16(out, p.off);
        put_u16(out, p.bytes.len() as u16);
        out.extend_from_slice(&p.bytes);
    }
    Ok(())
}

pub fn decode_list(r: &mut Reader) -> Decode<Vec<Patch>> {
    let n = r.u32("patch count")?;
    let n = r.count(u64::from(n), FIXED_BYTES + 1, "patches")?;
    (0..n)
        .map(|i| {
            let pfn = r.u64("patch pfn")?;
            let off = r.u16("patch offset")?;
            let len = r.u16("patch length")?;
            if len == 0 || u64::from(off) + u64::from(len) > PAGE_SIZE {
                return Err(format!("patch {i}: {len} bytes at offset {off} of a page"));
            }
            let bytes = r.take(usize::from(len), "patch bytes")?.to_vec();
            Ok(Patch { pfn, off, bytes })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<Vec<Patch>> {
        super::super::whole(b, decode_list)
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let ps = vec![
            Patch {
                pfn: 0x0102,
                off: 3,
                bytes: vec![9, 8],
            },
            Patch {
                pfn: 7,
                off: 4094,
                bytes: vec![1, 2],
            },
        ];
        let mut out = Vec::new();
        encode(&ps, &mut out).unwrap();
        let mut want = vec![2, 0, 0, 0];
        want.extend_from_slice(&[2, 1, 0, 0, 0, 0, 0, 0, 3, 0, 2, 0, 9, 8]);
        want.extend_from_slice(&[7, 0, 0, 0, 0, 0, 0, 0, 0xfe, 0x0f, 2, 0, 1, 2]);
        assert_eq!(out, want);
        assert_eq!(decode_all(&out).unwrap(), ps);
    }

    #[test]
    fn damage_is_refused() {
        let ps = vec![Patch {
            pfn: 5,
            off: 100,
            bytes: vec![1; 30],
        }];
        let mut out = Vec::new();
        encode(&ps, &mut out).unwrap();
        super::super::assert_refuses_damage(&out, decode_all);
        let mut d = out.clone();
        d[12..14].copy_from_slice(&4090u16.to_le_bytes());
        assert!(
            decode_all(&d).unwrap_err().contains("offset"),
            "past the page"
        );
        let bad = Patch {
            pfn: 1,
            off: 4095,
            bytes: vec![1, 2],
        };
        assert!(encode(&[bad], &mut Vec::new()).is_err());
    }
}
