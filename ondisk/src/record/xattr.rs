//! An extended attribute: a name and a value.
//!
//! ```text
//! off  size  field
//!   0     2  name_len
//!   2     4  value_len
//!   6     n  name
//! 6+n     v  value
//! ```
//!
//! The same record follows the inode number in a `SetXattr` op.

use super::{len_u16, len_u32, put_u16, put_u32, Decode, Reader};

/// Bytes of the fixed part.
pub const FIXED_BYTES: usize = 6;

pub fn encode(name: &[u8], value: &[u8], out: &mut Vec<u8>) -> Decode<()> {
    put_u16(out, len_u16(name.len(), "an xattr name")?);
    put_u32(out, len_u32(value.len(), "an xattr value")?);
    out.extend_from_slice(name);
    out.extend_from_slice(value);
    Ok(())
}

pub fn decode(r: &mut Reader) -> Decode<(Vec<u8>, Vec<u8>)> {
    let name_len = r.u16("xattr name length")?;
    let value_len = r.u32("xattr value length")?;
    let name = r.take(usize::from(name_len), "xattr name")?.to_vec();
    let value = r.take(value_len as usize, "xattr value")?.to_vec();
    Ok((name, value))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<(Vec<u8>, Vec<u8>)> {
        super::super::whole(b, decode)
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let mut out = Vec::new();
        encode(b"user.k", b"\x00v", &mut out).unwrap();
        assert_eq!(
            out,
            [6, 0, 2, 0, 0, 0, b'u', b's', b'e', b'r', b'.', b'k', 0, b'v']
        );
        assert_eq!(
            decode_all(&out).unwrap(),
            (b"user.k".to_vec(), b"\x00v".to_vec())
        );
    }

    #[test]
    fn damage_is_refused() {
        let mut out = Vec::new();
        encode(b"user.a", b"value", &mut out).unwrap();
        super::super::assert_refuses_damage(&out, decode_all);
        out[2] = 0xff;
        assert!(decode_all(&out).unwrap_err().contains("xattr value"));
    }
}
