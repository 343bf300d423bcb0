//! A directory entry: a name and the inode it names.
//!
//! ```text
//! off  size  field
//!   0     8  ino       the inode the entry names
//!   8     2  name_len  bytes of the name
//!  10     n  name
//! ```
//!
//! The same record follows the directory's number in a `Link` op. What a
//! valid name is (1 to 255 bytes, no `/` or NUL, not `.` or `..`) is the
//! metadata's rule (`meta::valid_name`), checked where names are used.

use super::{len_u16, put_u16, put_u64, Decode, Reader};
use crate::meta::Ino;

/// Bytes of the fixed part.
pub const FIXED_BYTES: usize = 10;

pub fn encode(ino: Ino, name: &[u8], out: &mut Vec<u8>) -> Decode<()> {
    let len = len_u16(name.len(), "a name")?;
    put_u64(out, ino);
    put_u16(out, len);
    out.extend_from_slice(name);
    Ok(())
}

pub fn decode(r: &mut Reader) -> Decode<(Ino, Vec<u8>)> {
    let ino = r.u64("directory entry")?;
    let name = name(r)?;
    Ok((ino, name))
}

/// A name alone: its length, then its bytes (`Unlink`, `RemoveXattr`).
pub fn encode_name(name: &[u8], out: &mut Vec<u8>) -> Decode<()> {
    put_u16(out, len_u16(name.len(), "a name")?);
    out.extend_from_slice(name);
    Ok(())
}

pub fn name(r: &mut Reader) -> Decode<Vec<u8>> {
    let len = r.u16("name length")?;
    Ok(r.take(usize::from(len), "name")?.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<(Ino, Vec<u8>)> {
        super::super::whole(b, decode)
    }

    #[test]
    fn round_trip_and_fixed_bytes() {
        let mut out = Vec::new();
        encode(0x0102, b"ab", &mut out).unwrap();
        assert_eq!(out, [0x02, 0x01, 0, 0, 0, 0, 0, 0, 2, 0, b'a', b'b']);
        assert_eq!(decode_all(&out).unwrap(), (0x0102, b"ab".to_vec()));
        let long = vec![b'x'; 255];
        let mut out = Vec::new();
        encode(9, &long, &mut out).unwrap();
        assert_eq!(decode_all(&out).unwrap(), (9, long));
    }

    #[test]
    fn damage_is_refused() {
        let mut out = Vec::new();
        encode(7, b"name", &mut out).unwrap();
        super::super::assert_refuses_damage(&out, decode_all);
        out[8] = 0xff;
        assert!(decode_all(&out).unwrap_err().contains("name"));
        assert!(encode(1, &vec![0; 70_000], &mut Vec::new()).is_err());
    }
}
