//! Pages in memory, for the tests of what is built on the trees.

use std::collections::{HashMap, HashSet};

use super::{Checked, Pages};
use crate::error::{Corrupt, Result};
use crate::layout::PAGE_SIZE;

/// Pages in memory, counting what the tree writes.
#[derive(Default)]
pub(crate) struct Mem {
    pub(crate) pages: HashMap<u64, Vec<u8>>,
    pub(crate) free: Vec<u64>,
    pub(crate) next: u64,
    /// Bytes written, and writes.
    pub(crate) written: usize,
    pub(crate) writes: usize,
    /// Nodes found whole, when the test asks for the record a mounted
    /// image keeps (`Mem::checking`).
    pub(crate) checked: Option<Checked>,
}

impl Mem {
    /// Pages that record the nodes found whole, as an image's do.
    pub(crate) fn checking() -> Self {
        Mem {
            checked: Some(Checked::new(1 << 20)),
            ..Mem::default()
        }
    }

    pub(crate) fn in_use(&self) -> HashSet<u64> {
        self.pages.keys().copied().collect()
    }
}

impl Pages for Mem {
    fn page(&self, pfn: u64) -> Result<&[u8]> {
        self.pages
            .get(&pfn)
            .map(|p| p.as_slice())
            .ok_or_else(|| Corrupt::new(format!("pfn {pfn}"), "not a page of the image").into())
    }
    fn write(&mut self, pfn: u64, off: usize, bytes: &[u8]) -> Result<()> {
        let p = self
            .pages
            .get_mut(&pfn)
            .ok_or_else(|| Corrupt::new(format!("pfn {pfn}"), "written but not allocated"))?;
        p[off..off + bytes.len()].copy_from_slice(bytes);
        self.written += bytes.len();
        self.writes += 1;
        Ok(())
    }
    fn alloc(&mut self) -> Result<u64> {
        let pfn = self.free.pop().unwrap_or_else(|| {
            self.next += 1;
            self.next + 100
        });
        // Undefined contents: whatever a reused page held, or noise.
        self.pages.insert(pfn, vec![0xa5; PAGE_SIZE as usize]);
        Ok(pfn)
    }
    fn free(&mut self, pfn: u64) -> Result<()> {
        if self.pages.remove(&pfn).is_none() {
            return Err(Corrupt::new(format!("pfn {pfn}"), "freed twice").into());
        }
        if let Some(c) = &self.checked {
            c.forget(pfn);
        }
        self.free.push(pfn);
        Ok(())
    }
    fn checked(&self) -> Option<&Checked> {
        self.checked.as_ref()
    }
}
