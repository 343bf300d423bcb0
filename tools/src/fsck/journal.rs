//! Pass 2: the checkpoint chain, then journal replay.

use pmemfs_ondisk::journal::{self, End, Entry};
use pmemfs_ondisk::overlay::Overlay;
use pmemfs_ondisk::superblock::{JournalPos, State, Superblock};
use pmemfs_ondisk::{checkpoint, Corrupt, Meta, Pmem};

use super::problem::Code;
use super::{Check, Loaded};

/// Applies `entries` in order, their ops to `meta` and their patches to
/// `over`; stops at the first that does not apply and returns its
/// position and why.
fn replay(
    pmem: &Pmem,
    meta: &mut Meta,
    over: &mut Overlay,
    entries: &[Entry],
) -> Option<(usize, Corrupt)> {
    for (i, e) in entries.iter().enumerate() {
        for op in &e.ops {
            if let Err(c) = meta.apply(op) {
                return Some((i, c));
            }
        }
        if let Err(err) = over.apply(pmem, &e.patches) {
            return Some((i, Corrupt::new("patches", err.to_string())));
        }
    }
    None
}

/// The checkpoint, with the patches it carries applied to an overlay.
fn load(pmem: &Pmem, sb: &Superblock) -> Result<(Meta, Vec<u64>, Overlay), String> {
    let ck = checkpoint::read(pmem, &sb.geometry, &sb.checkpoint).map_err(|e| e.to_string())?;
    let mut over = Overlay::default();
    over.apply(pmem, &ck.patches)
        .map_err(|e| format!("checkpoint {}: its patches: {e}", sb.checkpoint.id))?;
    Ok((ck.meta, ck.pfns, over))
}

pub fn check(c: &mut Check, pmem: &Pmem, sb: Superblock) -> Option<Loaded> {
    let (mut meta, ckpt_pfns, mut over) = match load(pmem, &sb) {
        Ok(x) => x,
        Err(e) => {
            c.found(Code::CheckpointBad, e);
            return None;
        }
    };
    c.note(format!(
        "checkpoint {}: {} pages, {} inodes",
        sb.checkpoint.id,
        ckpt_pfns.len(),
        meta.inodes.len()
    ));
    let scan = journal::scan(pmem, &sb.geometry, sb.journal);
    if let Some((i, why)) = replay(pmem, &mut meta, &mut over, &scan.entries) {
        // The failed entry may have half-applied: start again from the
        // checkpoint and stop before it.
        let e = &scan.entries[i];
        c.found(
            Code::JournalEntryBad,
            format!(
                "entry seq {} at journal offset {} ({} of {} entries): {}",
                e.seq,
                e.off,
                i + 1,
                scan.entries.len(),
                why.detail
            ),
        );
        (meta, _, over) = load(pmem, &sb).ok()?;
        replay(pmem, &mut meta, &mut over, &scan.entries[..i]);
    }
    c.note(format!(
        "journal: {} entries replayed from offset {}",
        scan.entries.len(),
        sb.journal.off
    ));
    if sb.state == State::InUse {
        // Not a problem (recovery handles it), but a check that only says
        // "clean" would hide that the image was not closed.
        let n = scan.entries.len();
        c.tell(if n == 0 {
            "not unmounted cleanly (in use, or the daemon was killed); the journal is empty".to_string()
        } else {
            format!("not unmounted cleanly: the next mount replays {n} journal entries (checked here as replayed)")
        });
    }
    let mut torn_at = None;
    match &scan.end {
        End::Clean => {}
        End::Torn(t) => {
            if c.found(Code::JournalTorn, t.to_string()) {
                torn_at = Some(scan.next.off);
            }
        }
        End::Damaged { at, lost } => {
            if c.found(
                Code::JournalDamaged,
                format!("{at}; {lost} committed entries follow it"),
            ) {
                torn_at = Some(scan.next.off);
            }
        }
    }
    // Writing repairs checkpoints, which starts a run with a fresh nonce:
    // nothing now in the region, dropped damaged entries included, can
    // replay after it.
    let journal_restart = JournalPos {
        off: 0,
        seq: scan.next.seq + 1,
        nonce: sb.journal.nonce,
    };
    Some(Loaded {
        sb,
        meta,
        ckpt_pfns,
        over,
        rebuild: Default::default(),
        tree_nodes: Default::default(),
        dirs: Default::default(),
        journal_restart,
        torn_at,
    })
}
