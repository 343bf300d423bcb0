//! A progress bar on stderr, shown only when stderr is a terminal and the
//! work is large enough for a user to wait on it.

use std::io::{IsTerminal, Write};

/// Work below this many items finishes too fast to need a bar.
const MIN_ITEMS: u64 = 100_000;

pub struct Progress {
    label: &'static str,
    total: u64,
    done: u64,
    shown: u64,
    active: bool,
}

impl Progress {
    pub fn new(label: &'static str, total: u64) -> Progress {
        let active = total >= MIN_ITEMS && std::io::stderr().is_terminal();
        Progress {
            label,
            total,
            done: 0,
            shown: u64::MAX,
            active,
        }
    }

    /// Counts `n` more items done.
    pub fn tick(&mut self, n: u64) {
        self.done += n;
        if !self.active {
            return;
        }
        let pct = (self.done * 100 / self.total.max(1)).min(100);
        if pct != self.shown {
            self.shown = pct;
            let bar = (pct / 4) as usize;
            eprint!(
                "\r{:<28} [{}{}] {pct:3}%",
                self.label,
                "=".repeat(bar),
                " ".repeat(25 - bar)
            );
            let _ = std::io::stderr().flush();
        }
    }

    /// Clears the bar.
    pub fn finish(self) {
        if self.active {
            eprint!("\r{:60}\r", "");
        }
    }
}
