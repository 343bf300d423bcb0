//! An inode's attributes (80 bytes) and a time (12 bytes).
//!
//! ```text
//! time (12 bytes)
//! off  size  field
//!   0     8  secs   i64, seconds since the Unix epoch (negative before)
//!   8     4  nsecs  u32, below 1,000,000,000
//!
//! attr (80 bytes)
//! off  size  field
//!   0     1  kind   0 file, 1 directory, 2 symlink, 3 fifo, 4 socket,
//!                   5 character device, 6 block device
//!   1     1  reserved  zero
//!   2     2  perm   mode & 0o7777
//!   4     4  uid
//!   8     4  gid
//!  12     4  nlink
//!  16     8  size   bytes
//!  24    12  atime
//!  36    12  mtime
//!  48    12  ctime
//!  60    12  crtime
//!  72     4  rdev
//!  76     4  flags  Linux's FS_*_FL values (meta::flag)
//! ```

use zerocopy::little_endian::{I64, U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

use super::{Decode, Reader};
use crate::meta::{Attr, Kind, Time};

/// Bytes of an attr record.
pub const ATTR_BYTES: usize = 80;

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawTime {
    secs: I64,
    nsecs: U32,
}

#[derive(FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned, Clone, Copy)]
#[repr(C)]
struct RawAttr {
    kind: u8,
    reserved: u8,
    perm: U16,
    uid: U32,
    gid: U32,
    nlink: U32,
    size: U64,
    atime: RawTime,
    mtime: RawTime,
    ctime: RawTime,
    crtime: RawTime,
    rdev: U32,
    flags: U32,
}

const _: () = assert!(std::mem::size_of::<RawAttr>() == ATTR_BYTES);

/// The byte a kind is stored as.
pub fn kind_byte(k: Kind) -> u8 {
    match k {
        Kind::File => 0,
        Kind::Dir => 1,
        Kind::Symlink => 2,
        Kind::Fifo => 3,
        Kind::Socket => 4,
        Kind::CharDev => 5,
        Kind::BlockDev => 6,
    }
}

fn kind_of(b: u8) -> Decode<Kind> {
    Ok(match b {
        0 => Kind::File,
        1 => Kind::Dir,
        2 => Kind::Symlink,
        3 => Kind::Fifo,
        4 => Kind::Socket,
        5 => Kind::CharDev,
        6 => Kind::BlockDev,
        _ => return Err(format!("unknown inode kind {b}")),
    })
}

fn raw_time(t: Time) -> RawTime {
    RawTime {
        secs: t.secs.into(),
        nsecs: t.nsecs.into(),
    }
}

fn time(r: RawTime, what: &str) -> Decode<Time> {
    let nsecs = r.nsecs.get();
    if nsecs >= 1_000_000_000 {
        return Err(format!("{what}: {nsecs} nanoseconds is a second or more"));
    }
    Ok(Time {
        secs: r.secs.get(),
        nsecs,
    })
}

pub fn encode(a: &Attr, out: &mut Vec<u8>) {
    let r = RawAttr {
        kind: kind_byte(a.kind),
        reserved: 0,
        perm: a.perm.into(),
        uid: a.uid.into(),
        gid: a.gid.into(),
        nlink: a.nlink.into(),
        size: a.size.into(),
        atime: raw_time(a.atime),
        mtime: raw_time(a.mtime),
        ctime: raw_time(a.ctime),
        crtime: raw_time(a.crtime),
        rdev: a.rdev.into(),
        flags: a.flags.into(),
    };
    out.extend_from_slice(r.as_bytes());
}

pub fn decode(r: &mut Reader) -> Decode<Attr> {
    let raw: RawAttr = r.fixed("attributes")?;
    if raw.reserved != 0 {
        return Err(format!("attributes: reserved byte is {}", raw.reserved));
    }
    let perm = raw.perm.get();
    if perm & !0o7777 != 0 {
        return Err(format!("attributes: permission bits {perm:#o} past 0o7777"));
    }
    Ok(Attr {
        kind: kind_of(raw.kind)?,
        perm,
        uid: raw.uid.get(),
        gid: raw.gid.get(),
        nlink: raw.nlink.get(),
        size: raw.size.get(),
        atime: time(raw.atime, "atime")?,
        mtime: time(raw.mtime, "mtime")?,
        ctime: time(raw.ctime, "ctime")?,
        crtime: time(raw.crtime, "crtime")?,
        rdev: raw.rdev.get(),
        flags: raw.flags.get(),
    })
}

#[cfg(test)]
pub(crate) fn sample() -> Attr {
    Attr {
        kind: Kind::Symlink,
        perm: 0o4755,
        uid: 1000,
        gid: 0x0102_0304,
        nlink: 2,
        size: 0x1122_3344_5566,
        atime: Time { secs: -1, nsecs: 5 },
        mtime: Time {
            secs: 1_800_000_000,
            nsecs: 999_999_999,
        },
        ctime: Time { secs: 0, nsecs: 0 },
        crtime: Time { secs: 7, nsecs: 8 },
        rdev: 0x0801,
        flags: 0x10,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode_all(b: &[u8]) -> Decode<Attr> {
        super::super::whole(b, decode)
    }

    #[test]
    fn round_trip() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        assert_eq!(out.len(), ATTR_BYTES);
        assert_eq!(decode_all(&out).unwrap(), sample());
    }

    #[test]
    fn fixed_bytes() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        let want: [u8; ATTR_BYTES] = [
            2, 0, 0xed, 0x09, // kind symlink, reserved, perm 0o4755
            0xe8, 0x03, 0, 0, // uid 1000
            0x04, 0x03, 0x02, 0x01, // gid
            2, 0, 0, 0, // nlink
            0x66, 0x55, 0x44, 0x33, 0x22, 0x11, 0, 0, // size
            0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 5, 0, 0, 0, // atime -1 s, 5 ns
            0x00, 0xd2, 0x49, 0x6b, 0, 0, 0, 0, 0xff, 0xc9, 0x9a, 0x3b, // mtime
            0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, // ctime
            7, 0, 0, 0, 0, 0, 0, 0, 8, 0, 0, 0, // crtime
            0x01, 0x08, 0, 0, // rdev
            0x10, 0, 0, 0, // flags
        ];
        assert_eq!(out, want);
    }

    #[test]
    fn damage_is_refused() {
        let mut out = Vec::new();
        encode(&sample(), &mut out);
        super::super::assert_refuses_damage(&out, decode_all);
        let mut bad = out.clone();
        bad[0] = 7;
        assert!(decode_all(&bad).unwrap_err().contains("kind"));
        let mut bad = out.clone();
        bad[1] = 1;
        assert!(decode_all(&bad).unwrap_err().contains("reserved"));
        let mut bad = out.clone();
        bad[3] = 0x10;
        assert!(decode_all(&bad).unwrap_err().contains("permission"));
        let mut bad = out;
        bad[32..36].copy_from_slice(&1_000_000_000u32.to_le_bytes());
        assert!(decode_all(&bad).unwrap_err().contains("atime"));
    }
}
