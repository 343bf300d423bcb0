//! Mount options, parsed from the `-o` list that `pmemfs-mount` and
//! `mount -t pmemfs` pass.

/// What a mount asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    pub allow_other: bool,
    /// Let the kernel check permissions from the mode bits (on by default).
    pub default_permissions: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// Emulated NUMA nodes; `None` uses the machine's topology.
    pub numa_nodes: Option<usize>,
    /// Bytes of DRAM copies allowed across nodes; 0 disables the DRAM cache.
    pub dram_cache: u64,
    /// The kernel's writeback cache: faster small writes, but SEEK_HOLE
    /// does not see data still in the kernel.
    pub writeback_cache: bool,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: false,
            default_permissions: true,
            threads: std::thread::available_parallelism()
                .map_or(2, |n| n.get())
                .clamp(2, 16),
            numa_nodes: None,
            dram_cache: 0,
            writeback_cache: false,
        }
    }
}

impl MountOptions {
    /// Applies a comma-separated option list. Options mount(8) passes that
    /// mean nothing here (`defaults`, `auto`, `dev`, ...) are accepted and
    /// ignored, as other file systems do; unknown ones are refused.
    pub fn apply(&mut self, list: &str) -> Result<(), String> {
        for opt in list.split(',').filter(|o| !o.is_empty()) {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (opt, None),
            };
            let number = |v: Option<&str>| -> Result<u64, String> {
                let v = v.ok_or(format!("{key} needs a value"))?;
                parse_size(v).ok_or(format!("{key}={v}: not a number"))
            };
            match key {
                "ro" => self.read_only = true,
                "rw" => self.read_only = false,
                "allow_other" => self.allow_other = true,
                "default_permissions" => self.default_permissions = true,
                // The kernel does every permission check; the daemon does
                // none (FUSE does not even tell it the caller's
                // supplementary groups), so turning the kernel's off would
                // let anyone do anything.
                "no_default_permissions" => {
                    return Err("no_default_permissions is not supported: pmemfs relies on the kernel's permission checks".into())
                }
                "threads" => self.threads = (number(value)? as usize).clamp(1, 256),
                "numa_nodes" => {
                    let n = number(value)? as usize;
                    if n == 0 || n > 64 {
                        return Err(format!("numa_nodes={n}: between 1 and 64"));
                    }
                    self.numa_nodes = Some(n);
                }
                "dram_cache" => self.dram_cache = number(value)?,
                "writeback_cache" => self.writeback_cache = true,
                "no_writeback_cache" => self.writeback_cache = false,
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "dev" | "nodev" | "suid"
                | "nosuid" | "exec" | "noexec" | "atime" | "noatime" | "relatime" | "_netdev"
                | "nofail" => {}
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

/// A byte count with an optional k/M/G/T suffix.
fn parse_size(s: &str) -> Option<u64> {
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let n: u64 = s[..digits].parse().ok()?;
    let shift = match s[digits..].to_ascii_lowercase().as_str() {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_parse() {
        let mut o = MountOptions::default();
        o.apply("ro,threads=4,numa_nodes=2,dram_cache=64M,defaults,allow_other")
            .unwrap();
        assert!(o.read_only && o.allow_other && o.default_permissions);
        assert_eq!(
            (o.threads, o.numa_nodes, o.dram_cache),
            (4, Some(2), 64 << 20)
        );
        assert!(o.apply("bogus").is_err());
        assert!(o.apply("numa_nodes=0").is_err());
        assert!(o.apply("threads=x").is_err());
    }
}
