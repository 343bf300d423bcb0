//! POSIX ACLs, in the form the Linux kernel hands them over.
//!
//! The kernel passes an ACL as the value of the extended attribute
//! [`ACCESS`] (`system.posix_acl_access`) or [`DEFAULT`]
//! (`system.posix_acl_default`), in the "posix_acl_xattr" format of
//! `include/uapi/linux/posix_acl_xattr.h`. pmemfs stores that value on the
//! media byte for byte, after [`Acl::decode`] has accepted it, so this
//! module is also the one place fsck decodes and checks stored ACLs with.
//! All integers little-endian.
//!
//! ```text
//! off  size  field
//!   0     4  a_version  2 (POSIX_ACL_XATTR_VERSION)
//!   4     8  entry 0
//!  12     8  entry 1 ...           (any number of entries, 8 bytes each)
//!
//! entry:
//!   0     2  e_tag      USER_OBJ 0x01, USER 0x02, GROUP_OBJ 0x04,
//!                       GROUP 0x08, MASK 0x10, OTHER 0x20
//!   2     2  e_perm     read 4 | write 2 | execute 1
//!   4     4  e_id       uid (USER) or gid (GROUP); the kernel writes
//!                       0xFFFFFFFF (ACL_UNDEFINED_ID) for the other tags
//! ```
//!
//! The mode arithmetic ([`Acl::equiv_mode`], [`Acl::mode_bits`],
//! [`Acl::chmod`], [`Acl::create`]) follows `fs/posix_acl.c`, because a
//! FUSE file system that keeps ACLs must keep the mode in step with them
//! exactly as the kernel's own file systems do.

use crate::error::Corrupt;

/// Name of the extended attribute holding a file's access ACL.
pub const ACCESS: &[u8] = b"system.posix_acl_access";
/// Name of the extended attribute holding a directory's default ACL, the
/// one new entries in the directory inherit.
pub const DEFAULT: &[u8] = b"system.posix_acl_default";

/// `a_version` of every ACL the kernel writes (POSIX_ACL_XATTR_VERSION).
pub const VERSION: u32 = 2;
/// The `e_id` of entries that name nobody (ACL_UNDEFINED_ID, `(uid_t)-1`).
pub const UNDEFINED_ID: u32 = u32::MAX;

/// Bytes of the header.
const HEADER_BYTES: usize = 4;
/// Bytes of one entry.
const ENTRY_BYTES: usize = 8;
/// The permission bits an entry may carry: read, write, execute.
const PERM_BITS: u16 = 0o7;
/// The permission bits of a mode (S_IRWXUGO); the rest (file type,
/// set-id, sticky) is never touched here.
const MODE_PERMS: u32 = 0o777;

/// What an entry applies to.
///
/// The variants are declared in the order entries must appear in, which
/// is also the order of their codes, so the derived `Ord` is that order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tag {
    /// The file's owner (ACL_USER_OBJ).
    UserObj,
    /// The user named by `id` (ACL_USER).
    User,
    /// The file's group (ACL_GROUP_OBJ).
    GroupObj,
    /// The group named by `id` (ACL_GROUP).
    Group,
    /// The upper bound of what `User`, `GroupObj` and `Group` grant
    /// (ACL_MASK).
    Mask,
    /// Everybody else (ACL_OTHER).
    Other,
}

impl Tag {
    /// The `e_tag` code of this tag.
    pub fn code(self) -> u16 {
        match self {
            Tag::UserObj => 0x01,
            Tag::User => 0x02,
            Tag::GroupObj => 0x04,
            Tag::Group => 0x08,
            Tag::Mask => 0x10,
            Tag::Other => 0x20,
        }
    }

    fn from_code(code: u16) -> Option<Tag> {
        Some(match code {
            0x01 => Tag::UserObj,
            0x02 => Tag::User,
            0x04 => Tag::GroupObj,
            0x08 => Tag::Group,
            0x10 => Tag::Mask,
            0x20 => Tag::Other,
            _ => return None,
        })
    }

    /// Whether `id` means something: only for named users and groups.
    pub fn is_named(self) -> bool {
        matches!(self, Tag::User | Tag::Group)
    }

    fn name(self) -> &'static str {
        match self {
            Tag::UserObj => "USER_OBJ",
            Tag::User => "USER",
            Tag::GroupObj => "GROUP_OBJ",
            Tag::Group => "GROUP",
            Tag::Mask => "MASK",
            Tag::Other => "OTHER",
        }
    }
}

/// One entry of an ACL.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Entry {
    pub tag: Tag,
    /// Read 4 | write 2 | execute 1.
    pub perm: u16,
    /// The uid or gid for [`Tag::User`] and [`Tag::Group`];
    /// [`UNDEFINED_ID`] for the other tags, whatever the bytes said, so
    /// that two ACLs that mean the same compare equal.
    pub id: u32,
}

impl Entry {
    fn new(tag: Tag, perm: u16) -> Entry {
        Entry {
            tag,
            perm,
            id: UNDEFINED_ID,
        }
    }
}

/// A POSIX ACL that passed the kernel's validity check, or an empty one.
///
/// Every way to get an `Acl` checks it, so the methods may count on
/// exactly one USER_OBJ, GROUP_OBJ and OTHER being there.
///
/// An empty ACL (a header without entries) is what the kernel reads as
/// "no ACL": given one in setxattr it removes the ACL instead. The caller
/// therefore acts on [`Acl::is_empty`] first (remove the attribute; at
/// create, apply the umask as when the directory has no default ACL); the
/// mode methods describe non-empty ACLs: on an empty one
/// [`Acl::mode_bits`] and [`Acl::equiv_mode`] report no permissions and
/// [`Acl::create`] leaves the mode as given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acl {
    entries: Vec<Entry>,
}

impl Acl {
    /// Decode and check an ACL attribute value as the kernel does in
    /// `posix_acl_from_xattr()` and `posix_acl_valid()`.
    ///
    /// Refused: a version other than 2 (the kernel answers EOPNOTSUPP to
    /// that one, EINVAL to the rest), a length that is not 4 + 8k, an
    /// unknown tag, permission bits beyond rwx, a named entry whose id is
    /// 0xFFFFFFFF (`(uid_t)-1` is no valid id, the kernel refuses it too),
    /// and a violation of the rules of [`Acl::entries`].
    pub fn decode(bytes: &[u8]) -> Result<Acl, Corrupt> {
        let bad = |detail: String| Corrupt::new("POSIX ACL", detail);
        let (header, body) = match bytes.split_first_chunk::<HEADER_BYTES>() {
            Some(split) => split,
            None => {
                return Err(bad(format!(
                    "{} bytes, shorter than the {HEADER_BYTES}-byte header",
                    bytes.len()
                )))
            }
        };
        let version = u32::from_le_bytes(*header);
        if version != VERSION {
            return Err(bad(format!("version {version}, expected {VERSION}")));
        }
        if body.len() % ENTRY_BYTES != 0 {
            return Err(bad(format!(
                "{} bytes is not a {HEADER_BYTES}-byte header and whole \
                 {ENTRY_BYTES}-byte entries",
                bytes.len()
            )));
        }
        let mut entries = Vec::with_capacity(body.len() / ENTRY_BYTES);
        for (i, raw) in body.chunks_exact(ENTRY_BYTES).enumerate() {
            let code = u16::from_le_bytes([raw[0], raw[1]]);
            let perm = u16::from_le_bytes([raw[2], raw[3]]);
            let id = u32::from_le_bytes([raw[4], raw[5], raw[6], raw[7]]);
            let tag = Tag::from_code(code)
                .ok_or_else(|| bad(format!("entry {i}: unknown tag {code:#x}")))?;
            if tag.is_named() && id == UNDEFINED_ID {
                return Err(bad(format!(
                    "entry {i}: {} entry with the undefined id {UNDEFINED_ID:#x}",
                    tag.name()
                )));
            }
            let id = if tag.is_named() { id } else { UNDEFINED_ID };
            entries.push(Entry { tag, perm, id });
        }
        check(&entries).map_err(bad)?;
        Ok(Acl { entries })
    }

    /// The attribute value of this ACL, as the kernel's
    /// `posix_acl_to_xattr()` writes it.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER_BYTES + ENTRY_BYTES * self.entries.len());
        out.extend_from_slice(&VERSION.to_le_bytes());
        for e in &self.entries {
            out.extend_from_slice(&e.tag.code().to_le_bytes());
            out.extend_from_slice(&e.perm.to_le_bytes());
            let id = if e.tag.is_named() { e.id } else { UNDEFINED_ID };
            out.extend_from_slice(&id.to_le_bytes());
        }
        out
    }

    /// The three-entry ACL that says what the permission bits of `mode`
    /// say (`posix_acl_from_mode()`).
    pub fn from_mode(mode: u32) -> Acl {
        Acl {
            entries: vec![
                Entry::new(Tag::UserObj, perm_of(mode >> 6)),
                Entry::new(Tag::GroupObj, perm_of(mode >> 3)),
                Entry::new(Tag::Other, perm_of(mode)),
            ],
        }
    }

    /// The entries, in the order the kernel requires: by tag as in
    /// [`Tag`], named users and named groups each by id strictly
    /// ascending; exactly one USER_OBJ, GROUP_OBJ and OTHER; at most one
    /// MASK, and one is required when there is a named user or group.
    ///
    /// The ascending-id rule is stricter than the kernel's
    /// `posix_acl_valid()`, which lets unsorted and repeated ids through;
    /// it is the order libacl keeps entries in (its `acl_check()` refuses
    /// repeats), so `setfacl` never sends such an ACL, and refusing it
    /// keeps one encoding per stored ACL.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// Whether this is the empty ACL, which the kernel treats as no ACL.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The kernel's `posix_acl_equiv_mode()`: `Some` with the 0o777 bits
    /// when the mode alone says all this ACL says, so a file system need
    /// not keep the ACL (the kernel's own file systems drop it when one is
    /// set, and after [`Acl::create`]).
    ///
    /// Exactly as the kernel, that is only an ACL of USER_OBJ, GROUP_OBJ
    /// and OTHER: a MASK makes it not equivalent even without named
    /// entries, though the mode's group bits would then be the mask's.
    /// (An empty ACL gives `Some(0)`, what the kernel's loop gives for no
    /// entries; see [`Acl`] on why callers check [`Acl::is_empty`] first.)
    pub fn equiv_mode(&self) -> Option<u32> {
        let extended = self
            .entries
            .iter()
            .any(|e| matches!(e.tag, Tag::User | Tag::Group | Tag::Mask));
        (!extended).then(|| self.mode_bits())
    }

    /// The 0o777 bits of a file whose access ACL this is: user from
    /// USER_OBJ, group from MASK if there is one, else from GROUP_OBJ,
    /// other from OTHER. Setting an access ACL sets the mode's permission
    /// bits to these (`posix_acl_update_mode()`), so that `stat` and
    /// `chmod` keep meaning what they did before ACLs.
    pub fn mode_bits(&self) -> u32 {
        let perm = |tag| self.find(tag).map_or(0, |e| u32::from(e.perm));
        let group = self
            .find(Tag::Mask)
            .or_else(|| self.find(Tag::GroupObj))
            .map_or(0, |e| u32::from(e.perm));
        (perm(Tag::UserObj) << 6) | (group << 3) | perm(Tag::Other)
    }

    /// Bring this access ACL in step with a chmod to `mode`, as the
    /// kernel's `__posix_acl_chmod()`: USER_OBJ and OTHER take the user
    /// and other bits; the group bits go to the MASK if there is one (the
    /// named entries and GROUP_OBJ keep their grants, now capped by the
    /// mask), else to GROUP_OBJ.
    pub fn chmod(&mut self, mode: u32) {
        let has_mask = self.find(Tag::Mask).is_some();
        for e in &mut self.entries {
            match e.tag {
                Tag::UserObj => e.perm = perm_of(mode >> 6),
                Tag::Other => e.perm = perm_of(mode),
                Tag::Mask => e.perm = perm_of(mode >> 3),
                Tag::GroupObj if !has_mask => e.perm = perm_of(mode >> 3),
                Tag::User | Tag::Group | Tag::GroupObj => {}
            }
        }
    }

    /// The access ACL and mode of a new inode created with `mode` in a
    /// directory whose default ACL this is, as the kernel's
    /// `posix_acl_create_masq()`: each class keeps only what both the ACL
    /// and the requested mode grant. USER_OBJ and OTHER are ANDed with
    /// the user and other bits; the group bits with the MASK if there is
    /// one, else with GROUP_OBJ. The returned mode has the permission bits
    /// of the resulting ACL ([`Acl::mode_bits`]) and the rest of `mode`
    /// (file type, set-id, sticky) as given. The umask plays no part: a
    /// default ACL replaces it.
    ///
    /// When the result is [`Acl::equiv_mode`] the kernel stores no access
    /// ACL, only the mode; that is left to the caller. A new directory
    /// also inherits this ACL itself as its default ACL, unchanged.
    /// An empty ACL is no default ACL: it gives an empty ACL and `mode`
    /// unchanged, and the caller applies the umask.
    pub fn create(&self, mode: u32) -> (Acl, u32) {
        if self.is_empty() {
            return (self.clone(), mode);
        }
        let mut acl = self.clone();
        let mut bits = mode & MODE_PERMS;
        let has_mask = acl.find(Tag::Mask).is_some();
        for e in &mut acl.entries {
            match e.tag {
                Tag::UserObj => {
                    e.perm &= perm_of(bits >> 6);
                    bits = (bits & !0o700) | (u32::from(e.perm) << 6);
                }
                Tag::Other => {
                    e.perm &= perm_of(bits);
                    bits = (bits & !0o007) | u32::from(e.perm);
                }
                Tag::User | Tag::Group | Tag::GroupObj | Tag::Mask => {}
            }
        }
        // As the kernel, the group class is done last: the mask, or
        // GROUP_OBJ without one, is the group class's upper bound.
        let group_tag = if has_mask { Tag::Mask } else { Tag::GroupObj };
        for e in acl.entries.iter_mut().filter(|e| e.tag == group_tag) {
            e.perm &= perm_of(bits >> 3);
            bits = (bits & !0o070) | (u32::from(e.perm) << 3);
        }
        (acl, (mode & !MODE_PERMS) | bits)
    }

    fn find(&self, tag: Tag) -> Option<&Entry> {
        self.entries.iter().find(|e| e.tag == tag)
    }
}

/// The rwx bits of the low three bits of `bits`.
fn perm_of(bits: u32) -> u16 {
    // The mask makes the value fit; `as` cannot lose anything here.
    (bits & u32::from(PERM_BITS)) as u16
}

/// The rules of [`Acl::entries`] and of permission bits, the kernel's
/// `posix_acl_valid()` plus ascending ids. An empty list passes: it is
/// "no ACL", which the kernel never gets as far as checking.
fn check(entries: &[Entry]) -> Result<(), String> {
    if entries.is_empty() {
        return Ok(());
    }
    let mut prev: Option<&Entry> = None;
    let mut named = false;
    for (i, e) in entries.iter().enumerate() {
        if e.perm & !PERM_BITS != 0 {
            return Err(format!(
                "entry {i}: permission bits {:#o} beyond rwx",
                e.perm
            ));
        }
        named |= e.tag.is_named();
        if let Some(p) = prev {
            if e.tag < p.tag {
                return Err(format!(
                    "entry {i}: {} after {}, entries are not sorted by tag",
                    e.tag.name(),
                    p.tag.name()
                ));
            }
            if e.tag == p.tag {
                if !e.tag.is_named() {
                    return Err(format!("entry {i}: a second {} entry", e.tag.name()));
                }
                if e.id == p.id {
                    return Err(format!(
                        "entry {i}: duplicate {} entry for id {}",
                        e.tag.name(),
                        e.id
                    ));
                }
                if e.id < p.id {
                    return Err(format!(
                        "entry {i}: {} id {} after {}, ids are not ascending",
                        e.tag.name(),
                        e.id,
                        p.id
                    ));
                }
            }
        }
        prev = Some(e);
    }
    for tag in [Tag::UserObj, Tag::GroupObj, Tag::Other] {
        if !entries.iter().any(|e| e.tag == tag) {
            return Err(format!("no {} entry", tag.name()));
        }
    }
    if named && !entries.iter().any(|e| e.tag == Tag::Mask) {
        return Err("named USER or GROUP entries without a MASK entry".to_string());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An ACL in `setfacl` short text, e.g. `u::rw-,u:1000:rwx,m::r--`,
    /// in the order given; not checked, so tests can build bad ones.
    fn entries(text: &str) -> Vec<Entry> {
        text.split(',')
            .map(|part| {
                let f: Vec<&str> = part.split(':').collect();
                assert_eq!(f.len(), 3, "{part}");
                let named = !f[1].is_empty();
                let tag = match (f[0], named) {
                    ("u", false) => Tag::UserObj,
                    ("u", true) => Tag::User,
                    ("g", false) => Tag::GroupObj,
                    ("g", true) => Tag::Group,
                    ("m", false) => Tag::Mask,
                    ("o", false) => Tag::Other,
                    _ => panic!("{part}"),
                };
                let perm = f[2]
                    .chars()
                    .zip([4, 2, 1])
                    .map(|(c, bit)| if c == '-' { 0 } else { bit })
                    .sum();
                let id = if named {
                    f[1].parse().unwrap()
                } else {
                    UNDEFINED_ID
                };
                Entry { tag, perm, id }
            })
            .collect()
    }

    /// The attribute value of `text`, written with the raw encoder (so
    /// bad ACLs can be written too).
    fn bytes(text: &str) -> Vec<u8> {
        Acl {
            entries: entries(text),
        }
        .encode()
    }

    fn acl(text: &str) -> Acl {
        Acl::decode(&bytes(text)).unwrap()
    }

    /// Assert that `b` is refused, for a reason that mentions `why`.
    fn refused(b: &[u8], why: &str) {
        let err = Acl::decode(b).expect_err(why);
        assert!(err.detail.contains(why), "{why:?} not in {:?}", err.detail);
    }

    #[test]
    fn realistic_acl_round_trips() {
        let b = bytes("u::rw-,u:65534:rw-,g::r--,m::rw-,o::---");
        let a = Acl::decode(&b).unwrap();
        assert_eq!(a.entries().len(), 5);
        assert_eq!(
            a.entries()[1],
            Entry {
                tag: Tag::User,
                perm: 6,
                id: 65534
            }
        );
        assert_eq!(a.encode(), b);
    }

    #[test]
    fn hand_written_bytes_decode_and_encode_back() {
        // u::rw-,g::r--,o::---
        #[rustfmt::skip]
        let b: &[u8] = &[
            0x02, 0x00, 0x00, 0x00,
            0x01, 0x00, 0x06, 0x00, 0xff, 0xff, 0xff, 0xff,
            0x04, 0x00, 0x04, 0x00, 0xff, 0xff, 0xff, 0xff,
            0x20, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff,
        ];
        let a = Acl::decode(b).unwrap();
        assert_eq!(
            a.entries(),
            &[
                Entry {
                    tag: Tag::UserObj,
                    perm: 6,
                    id: UNDEFINED_ID
                },
                Entry {
                    tag: Tag::GroupObj,
                    perm: 4,
                    id: UNDEFINED_ID
                },
                Entry {
                    tag: Tag::Other,
                    perm: 0,
                    id: UNDEFINED_ID
                },
            ]
        );
        assert_eq!(a.encode(), b);
        assert_eq!(a, Acl::from_mode(0o640));
    }

    #[test]
    fn named_entry_id_is_little_endian() {
        // u::rwx,u:0x01020304:r--,g::---,m::r--,o::---
        let mut b = bytes("u::rwx,u:16909060:r--,g::---,m::r--,o::---");
        assert_eq!(
            &b[12..20],
            &[0x02, 0x00, 0x04, 0x00, 0x04, 0x03, 0x02, 0x01]
        );
        assert_eq!(
            acl("u::rwx,u:16909060:r--,g::---,m::r--,o::---").encode(),
            b
        );
        b[16] = 0x05;
        assert_eq!(Acl::decode(&b).unwrap().entries()[1].id, 0x0102_0305);
    }

    #[test]
    fn unnamed_ids_are_accepted_and_written_as_undefined() {
        let mut b = bytes("u::rw-,g::r--,o::r--");
        // Some writers put 0 in e_id of USER_OBJ; the kernel ignores it.
        b[8..12].copy_from_slice(&0u32.to_le_bytes());
        let a = Acl::decode(&b).unwrap();
        assert_eq!(a.entries()[0].id, UNDEFINED_ID);
        assert_eq!(a, Acl::from_mode(0o644));
        assert_eq!(a.encode(), bytes("u::rw-,g::r--,o::r--"));
    }

    #[test]
    fn empty_acl_is_valid_and_empty() {
        let a = Acl::decode(&[2, 0, 0, 0]).unwrap();
        assert!(a.is_empty());
        assert_eq!(a.encode(), [2, 0, 0, 0]);
        assert!(!acl("u::rw-,g::r--,o::r--").is_empty());
        assert_eq!(a.create(0o100644), (a.clone(), 0o100644));
    }

    #[test]
    fn corrupt_values_are_refused() {
        let good = bytes("u::rw-,u:1000:rw-,g::r--,m::rw-,o::---");
        Acl::decode(&good).unwrap();

        let mut b = good.clone();
        b[0] = 1;
        refused(&b, "version 1");
        refused(&[2, 0], "shorter than");

        let mut b = good.clone();
        b.extend_from_slice(&[0, 0, 0]);
        refused(&b, "whole");

        let mut b = good.clone();
        b[ENTRY_BYTES * 4 + HEADER_BYTES] = 0x40; // OTHER's tag
        refused(&b, "unknown tag 0x40");

        let mut b = good.clone();
        b[HEADER_BYTES + 2] = 8; // USER_OBJ's perm
        refused(&b, "beyond rwx");

        refused(
            &bytes("u::rw-,u:1000:rw-,u:1000:r--,g::r--,m::rw-,o::---"),
            "duplicate USER",
        );
        refused(
            &bytes("u::rw-,u:1001:rw-,u:1000:r--,g::r--,m::rw-,o::---"),
            "not ascending",
        );
        refused(
            &bytes("u::rw-,g::r--,g:7:r--,g:5:r--,m::rw-,o::---"),
            "not ascending",
        );
        refused(&bytes("u::rw-,g::r--,o::---,m::rw-"), "not sorted");
        refused(&bytes("g::r--,u::rw-,o::---"), "not sorted");
        refused(&bytes("u::rw-,g::r--,m::rw-"), "no OTHER");
        refused(&bytes("u::rw-,o::---"), "no GROUP_OBJ");
        refused(&bytes("u:1:rw-,g::r--,m::rw-,o::---"), "no USER_OBJ");
        refused(&bytes("u::rw-,u:1000:rw-,g::r--,o::---"), "without a MASK");
        refused(&bytes("u::rw-,g::r--,g:1000:rw-,o::---"), "without a MASK");
        refused(&bytes("u::rw-,g::r--,m::rw-,m::rw-,o::---"), "second MASK");
        refused(&bytes("u::rw-,u::rw-,g::r--,o::---"), "second USER_OBJ");
        refused(&bytes("u::rw-,g::r--,o::---,o::---"), "second OTHER");
        refused(
            &bytes("u::rw-,u:4294967295:rw-,g::r--,m::rw-,o::---"),
            "undefined id",
        );
    }

    #[test]
    fn from_mode_gives_the_three_classes() {
        assert_eq!(Acl::from_mode(0o100751), acl("u::rwx,g::r-x,o::--x"));
        assert_eq!(Acl::from_mode(0o4000), acl("u::---,g::---,o::---"));
    }

    #[test]
    fn equiv_mode_as_the_kernel() {
        assert_eq!(acl("u::rwx,g::r-x,o::--x").equiv_mode(), Some(0o751));
        assert_eq!(Acl::from_mode(0o640).equiv_mode(), Some(0o640));
        // A mask alone already makes it not equivalent, in the kernel too.
        assert_eq!(acl("u::rw-,g::r--,m::rw-,o::---").equiv_mode(), None);
        assert_eq!(
            acl("u::rw-,u:5:r--,g::r--,m::r--,o::---").equiv_mode(),
            None
        );
        assert_eq!(
            acl("u::rw-,g::r--,g:5:r--,m::r--,o::---").equiv_mode(),
            None
        );
    }

    #[test]
    fn mode_bits_take_the_group_class_from_the_mask() {
        assert_eq!(acl("u::rwx,g::r-x,o::--x").mode_bits(), 0o751);
        assert_eq!(acl("u::rw-,g::r--,m::rwx,o::---").mode_bits(), 0o670);
        assert_eq!(
            acl("u::rw-,u:1:rwx,g::rwx,m::---,o::r--").mode_bits(),
            0o604
        );
    }

    #[test]
    fn chmod_as_the_kernel() {
        let mut a = acl("u::rw-,u:1000:rwx,g::r-x,m::rwx,o::r-x");
        a.chmod(0o100640);
        assert_eq!(a, acl("u::rw-,u:1000:rwx,g::r-x,m::r--,o::---"));
        assert_eq!(a.mode_bits(), 0o640);

        let mut a = acl("u::rw-,g::r--,o::r--");
        a.chmod(0o751);
        assert_eq!(a, acl("u::rwx,g::r-x,o::--x"));

        let mut a = acl("u::rw-,g::r--,m::r--,o::r--");
        a.chmod(0o000);
        assert_eq!(a, acl("u::---,g::r--,m::---,o::---"));
    }

    #[test]
    fn create_as_the_kernel() {
        let default = acl("u::rwx,u:1000:rwx,g::r-x,m::rwx,o::r-x");

        let (access, mode) = default.create(0o644);
        assert_eq!(access, acl("u::rw-,u:1000:rwx,g::r-x,m::r--,o::r--"));
        assert_eq!(mode, 0o644);
        assert_eq!(access.equiv_mode(), None);

        let (access, mode) = default.create(0o600);
        assert_eq!(access, acl("u::rw-,u:1000:rwx,g::r-x,m::---,o::---"));
        assert_eq!(mode, 0o600);

        // The file type and set-id bits pass through untouched.
        let (_, mode) = default.create(0o102755);
        assert_eq!(mode, 0o102755);
        assert_eq!(default, acl("u::rwx,u:1000:rwx,g::r-x,m::rwx,o::r-x"));
    }

    #[test]
    fn create_narrows_the_mode_to_what_the_acl_grants() {
        // Without a mask GROUP_OBJ is the group class: the umask-like case.
        let default = acl("u::rwx,g::r-x,o::---");
        let (access, mode) = default.create(0o100666);
        assert_eq!(access, acl("u::rw-,g::r--,o::---"));
        assert_eq!(mode, 0o100640);
        // Equivalent to the mode: the kernel keeps no access ACL here.
        assert_eq!(access.equiv_mode(), Some(0o640));

        let default = acl("u::r-x,g::---,g:20:rwx,m::r-x,o::r--");
        let (access, mode) = default.create(0o40777);
        assert_eq!(access, acl("u::r-x,g::---,g:20:rwx,m::r-x,o::r--"));
        assert_eq!(mode, 0o40554);
        assert_eq!(access.mode_bits(), mode & 0o777);
    }

    /// An ACL value close to valid: the five classes in order, with perms
    /// up to 8 and ids from a small set (so repeats and disorder happen),
    /// a MASK or not, and perhaps one byte flipped.
    fn arb_value() -> impl Strategy<Value = (Vec<u8>, Option<bool>)> {
        let perm = 0u16..9;
        let ids = proptest::collection::vec(prop::sample::select(vec![0u32, 1, 2, 1000]), 0..3);
        (
            (perm.clone(), ids.clone(), perm.clone(), ids),
            (proptest::option::of(perm.clone()), perm),
            proptest::option::of((any::<prop::sample::Index>(), 1u8..=255)),
        )
            .prop_map(|((uo, users, go, groups), (mask, other), flip)| {
                let mut entries = vec![(Tag::UserObj, uo, UNDEFINED_ID)];
                entries.extend(users.iter().map(|&id| (Tag::User, 4, id)));
                entries.push((Tag::GroupObj, go, UNDEFINED_ID));
                entries.extend(groups.iter().map(|&id| (Tag::Group, 1, id)));
                entries.extend(mask.map(|m| (Tag::Mask, m, UNDEFINED_ID)));
                entries.push((Tag::Other, other, UNDEFINED_ID));
                let ascending = |ids: &[u32]| ids.windows(2).all(|w| w[0] < w[1]);
                let valid = entries.iter().all(|e| e.1 <= 7)
                    && ascending(&users)
                    && ascending(&groups)
                    && (mask.is_some() || (users.is_empty() && groups.is_empty()));
                let mut b = Acl {
                    entries: entries
                        .into_iter()
                        .map(|(tag, perm, id)| Entry { tag, perm, id })
                        .collect(),
                }
                .encode();
                if let Some((at, x)) = flip {
                    let at = at.index(b.len());
                    b[at] ^= x;
                }
                // Whether it is valid, unless a flipped byte made that unknown.
                (b, flip.is_none().then_some(valid))
            })
    }

    proptest! {
        /// Decode accepts what the rules allow, does not panic on the
        /// rest, and what it accepts re-encodes to the same ACL and keeps
        /// the invariants the mode methods rely on.
        #[test]
        fn decode_accepts_exactly_the_valid((b, valid) in arb_value(), cut in 0usize..3) {
            let b = &b[..b.len() - cut.min(b.len())];
            let decoded = Acl::decode(b);
            match (valid, cut) {
                (Some(true), 0) => prop_assert_eq!(decoded.unwrap().encode(), b),
                (Some(false), _) => prop_assert!(decoded.is_err()),
                _ => {}
            }
            if let Ok(a) = Acl::decode(b) {
                prop_assert_eq!(Acl::decode(&a.encode()).unwrap(), a.clone());
                prop_assert!(check(a.entries()).is_ok());
                if !a.is_empty() {
                    let (c, mode) = a.create(0o777);
                    prop_assert_eq!(c.mode_bits(), mode);
                    prop_assert!(Acl::decode(&c.encode()).is_ok());
                    prop_assert_eq!(a.mode_bits() & mode, mode);
                }
            }
        }
    }
}
