//! Every problem fsck can report, in one table: a stable code, what is
//! wrong, what a repair does, and whether `-y` and `-p` may repair it.

/// A problem fsck knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Code {
    SbCopyBad,
    SbCopiesDiffer,
    SbNone,
    ImageShort,
    CheckpointBad,
    JournalTorn,
    JournalEntryBad,
    JournalDamaged,
    MapOutsideData,
    MapOverCheckpoint,
    MapBad,
    MapTreeMisplaced,
    DirBad,
    DirTreeMisplaced,
    SymlinkBad,
    RootBad,
    DentryDangling,
    DentryBadName,
    DirExtraLink,
    DirParent,
    LostFoundMissing,
    Orphan,
    Nlink,
    ShareWrong,
    PageLeaked,
    PageUncounted,
    AclBad,
    FlagsUnknown,
    ShareTreeBad,
}

pub struct Problem {
    /// Stable identifier, printed with every finding.
    pub id: &'static str,
    pub summary: &'static str,
    /// What `-y` does about it; `None` when nothing can.
    pub repair: Option<&'static str>,
    /// Whether `-p` (preen) may repair it without a person deciding:
    /// repairs that lose no data a user could still want.
    pub preen: bool,
}

impl Code {
    pub fn problem(self) -> Problem {
        use Code::*;
        let p = |id, summary, repair, preen| Problem {
            id,
            summary,
            repair,
            preen,
        };
        match self {
            SbCopyBad => p(
                "SB1",
                "a superblock copy is damaged",
                Some("rewritten from the other copy"),
                true,
            ),
            SbCopiesDiffer => p(
                "SB2",
                "the superblock copies differ",
                Some("the older copy rewritten from the newer"),
                true,
            ),
            SbNone => p("SB3", "no superblock copy is valid", None, false),
            ImageShort => p(
                "SB4",
                "the image is shorter than its superblock says",
                None,
                false,
            ),
            CheckpointBad => p("CK1", "the checkpoint is damaged", None, false),
            JournalTorn => p(
                "JN1",
                "torn journal tail (a transaction that never committed)",
                Some("dropped"),
                true,
            ),
            JournalEntryBad => p(
                "JN2",
                "a journal entry does not apply to the metadata",
                Some("dropped with every entry after it"),
                false,
            ),
            JournalDamaged => p(
                "JN3",
                "a damaged journal entry hides committed transactions after it",
                Some("dropped with every entry after it"),
                false,
            ),
            MapOutsideData => p(
                "IN1",
                "a file maps pages outside the data area",
                Some("unmapped; those pages now read as zeros"),
                false,
            ),
            MapOverCheckpoint => p(
                "IN2",
                "a file maps pages the checkpoint uses",
                Some("unmapped; those pages now read as zeros"),
                false,
            ),
            MapBad => p(
                "IN6",
                "a file's page map cannot be read",
                Some("the map is dropped; the file reads as zeros"),
                false,
            ),
            MapTreeMisplaced => p(
                "IN7",
                "a node of a file's page-map tree lies outside the data area, in the checkpoint, on a mapped page or in another tree",
                Some("the map is written anew elsewhere; nothing it maps is lost"),
                false,
            ),
            DirBad => p(
                "IN8",
                "a directory's entries cannot be read",
                Some("the directory is emptied; what it named goes to lost+found"),
                false,
            ),
            DirTreeMisplaced => p(
                "IN9",
                "a node of a directory's tree lies outside the data area, in the checkpoint, on a mapped page or in another tree",
                Some("the entries are written anew elsewhere; none is lost"),
                false,
            ),
            SymlinkBad => p(
                "IN3",
                "a symbolic link target is empty or too long",
                Some("replaced by \"?\""),
                false,
            ),
            FlagsUnknown => p(
                "IN5",
                "an inode has flags pmemfs does not know",
                Some("the unknown flags are cleared"),
                true,
            ),
            AclBad => p(
                "IN4",
                "a stored POSIX ACL does not decode (or is a default ACL of a non-directory)",
                Some("the ACL is removed; the mode bits stay"),
                false,
            ),
            RootBad => p(
                "DR1",
                "the root directory is missing or not a directory",
                None,
                false,
            ),
            DentryDangling => p(
                "DR2",
                "a directory entry names an inode that does not exist",
                Some("entry removed"),
                true,
            ),
            DentryBadName => p(
                "DR3",
                "a directory entry has an invalid name",
                Some("entry removed"),
                true,
            ),
            DirExtraLink => p(
                "DR4",
                "a directory has more than one name",
                Some("the extra name removed"),
                true,
            ),
            DirParent => p(
                "DR5",
                "a directory's '..' is wrong",
                Some("set to the directory holding it"),
                true,
            ),
            LostFoundMissing => p("DR6", "lost+found is missing", Some("recreated"), true),
            Orphan => p(
                "DR7",
                "an inode is not reachable from the root",
                Some("moved to lost+found"),
                true,
            ),
            Nlink => p(
                "DR8",
                "a link count is wrong",
                Some("set to the number of names"),
                true,
            ),
            ShareWrong => p(
                "SH1",
                "share counts disagree with the page maps",
                Some("set to the number of references"),
                true,
            ),
            PageLeaked => p(
                "SH2",
                "pages are marked in use but no file maps them",
                Some("freed"),
                true,
            ),
            PageUncounted => p(
                "SH3",
                "pages mapped by files are counted free",
                Some("counted"),
                true,
            ),
            ShareTreeBad => p(
                "SH4",
                "the share-count tree is damaged, or its nodes lie where they may not",
                Some("rebuilt from the page maps"),
                true,
            ),
        }
    }
}

/// One problem found in one place.
#[derive(Debug, Clone)]
pub struct Finding {
    pub code: Code,
    /// Where and what, e.g. "inode 12: nlink is 3, 2 names".
    pub detail: String,
    /// Whether the repair will be written.
    pub fixed: bool,
}
