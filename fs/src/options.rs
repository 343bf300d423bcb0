//! Mount options, parsed from the `-o` list that `pmemfs-mount` and
//! `mount -t pmemfs` pass.

use crate::atime::{AtimeMode, AtimePolicy};

/// The polling window by default: longer than the gap between the
/// requests of one busy caller (a few to a few tens of microseconds), short
/// enough that an idle mount stops spinning at once.
pub const DEFAULT_POLL: std::time::Duration = std::time::Duration::from_micros(200);

/// The longest polling window a mount may ask for.
pub const MAX_POLL_US: u64 = 100_000;

/// What a mount asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    pub read_only: bool,
    /// Admit every user, not only the one who mounted. `None` until an
    /// option says: then root mounts admit everyone, as a kernel file
    /// system does, and other users' mounts do when /etc/fuse.conf lets
    /// them (see [`MountOptions::resolve_allow_other`]).
    pub allow_other: Option<bool>,
    /// POSIX ACLs, stored in `system.posix_acl_*` and enforced by the
    /// kernel (on by default, `noacl` turns them off).
    pub acl: bool,
    /// Set-uid and set-gid bits honoured on exec (`nosuid` clears it).
    pub suid: bool,
    /// Device nodes may be opened (`nodev` clears it).
    pub dev: bool,
    /// Files may be executed (`noexec` clears it).
    pub exec: bool,
    /// Freed pages go back to the image file as they are freed, not only
    /// on `fstrim` (`discard`).
    pub discard: bool,
    /// How reads update access times (`relatime` by default).
    pub atime: AtimePolicy,
    /// Let the kernel check permissions from the mode bits (on by default).
    pub default_permissions: bool,
    /// FUSE worker threads.
    pub threads: usize,
    /// How long one worker keeps polling `/dev/fuse` after a request
    /// before it sleeps in read again (`poll=USECS`; 0 never polls; see
    /// [`crate::poll`]).
    pub poll: std::time::Duration,
    /// Serve requests through FUSE over io_uring when the kernel offers it
    /// (`nouring` turns it off; see `fuser`'s vendored `uring` module).
    pub uring: bool,
    /// Emulated NUMA nodes; `None` uses the machine's topology.
    pub numa_nodes: Option<usize>,
    /// Bytes of DRAM copies allowed across nodes; 0 disables the DRAM cache.
    pub dram_cache: u64,
    /// The kernel's writeback cache: faster small writes, but SEEK_HOLE
    /// does not see data still in the kernel.
    pub writeback_cache: bool,
    /// Online dedupe (`dedupe=online`): a scanner merges identical pages
    /// of written files (see [`crate::ksm`]); off by default.
    pub dedupe_online: bool,
    /// Its rate (`dedupe_pages=N`: pages per 20 ms).
    pub dedupe_rate: crate::ksm::Rate,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            read_only: false,
            allow_other: None,
            acl: true,
            suid: true,
            dev: true,
            exec: true,
            discard: false,
            atime: AtimePolicy::default(),
            default_permissions: true,
            // Half the CPUs: while requests come quickly one worker polls
            // (crate::poll) and keeps a CPU, and the callers need the rest.
            // On two CPUs one worker serves a single caller's requests
            // fastest; a second would be woken for every request only to
            // find the poller has taken it.
            threads: std::thread::available_parallelism()
                .map_or(1, |n| n.get() / 2)
                .clamp(1, 16),
            poll: DEFAULT_POLL,
            uring: true,
            numa_nodes: None,
            dram_cache: 0,
            writeback_cache: false,
            dedupe_online: false,
            dedupe_rate: crate::ksm::Rate::default(),
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
                "allow_other" => self.allow_other = Some(true),
                "noallow_other" => self.allow_other = Some(false),
                "acl" => self.acl = true,
                "noacl" => self.acl = false,
                "suid" => self.suid = true,
                "nosuid" => self.suid = false,
                "dev" => self.dev = true,
                "nodev" => self.dev = false,
                "exec" => self.exec = true,
                "noexec" => self.exec = false,
                "discard" => self.discard = true,
                "nodiscard" => self.discard = false,
                "default_permissions" => self.default_permissions = true,
                // The kernel does every permission check; the daemon does
                // none (FUSE does not even tell it the caller's
                // supplementary groups), so turning the kernel's off would
                // let anyone do anything.
                "no_default_permissions" => {
                    return Err("no_default_permissions is not supported: pmemfs relies on the kernel's permission checks".into())
                }
                "threads" => self.threads = (number(value)? as usize).clamp(1, 256),
                "poll" => {
                    let us = number(value)?;
                    if us > MAX_POLL_US {
                        return Err(format!("poll={us}: at most {MAX_POLL_US} microseconds"));
                    }
                    self.poll = std::time::Duration::from_micros(us);
                }
                "nopoll" => self.poll = std::time::Duration::ZERO,
                "uring" => self.uring = true,
                "nouring" => self.uring = false,
                "numa_nodes" => {
                    let n = number(value)? as usize;
                    if n == 0 || n > 64 {
                        return Err(format!("numa_nodes={n}: between 1 and 64"));
                    }
                    self.numa_nodes = Some(n);
                }
                "dram_cache" => self.dram_cache = number(value)?,
                "writeback_cache" => self.writeback_cache = true,
                "dedupe" => match value {
                    Some("online") => self.dedupe_online = true,
                    Some("off") => self.dedupe_online = false,
                    _ => return Err(format!("{opt}: dedupe=online or dedupe=off")),
                },
                "dedupe_pages" => {
                    let n = number(value)?;
                    if !(1..=1_000_000).contains(&n) {
                        return Err(format!("dedupe_pages={n}: between 1 and 1000000"));
                    }
                    self.dedupe_rate.pages = n;
                }
                "no_writeback_cache" => self.writeback_cache = false,
                "relatime" | "atime" => self.atime.mode = AtimeMode::Relatime,
                "strictatime" | "norelatime" => self.atime.mode = AtimeMode::Strict,
                "noatime" => self.atime.mode = AtimeMode::Never,
                "nodiratime" => self.atime.nodiratime = true,
                "diratime" => self.atime.nodiratime = false,
                // Access times are always written lazily (crate::atime),
                // and every other change is durable when its reply goes
                // out, which is all that sync and dirsync ask.
                "lazytime" | "nolazytime" | "sync" | "async" | "dirsync" => {}
                "defaults" | "auto" | "noauto" | "user" | "nouser" | "_netdev" | "nofail" => {}
                _ => return Err(format!("unknown mount option {opt:?}")),
            }
        }
        Ok(())
    }
}

/// Whether a mount by `uid` may admit other users, and the one line to say
/// when it may not: FUSE lets a user other than root ask for `allow_other`
/// only when /etc/fuse.conf has `user_allow_other` (fusermount3 refuses it
/// otherwise).
pub fn allow_other_permitted(uid: u32, fuse_conf: Option<&str>) -> Result<(), &'static str> {
    if uid == 0 {
        return Ok(());
    }
    let allowed = fuse_conf.is_some_and(|conf| {
        conf.lines()
            .map(|l| l.split('#').next().unwrap_or("").trim())
            .any(|l| l == "user_allow_other")
    });
    if allowed {
        Ok(())
    } else {
        Err("only you can use this mount: /etc/fuse.conf lacks user_allow_other, so other users are kept out (noallow_other says so quietly)")
    }
}

impl MountOptions {
    /// Settles `allow_other` for a mount made by `uid`: an explicit choice
    /// stands (an impossible `allow_other` is an error); otherwise every
    /// user is admitted when FUSE permits it. The message is the line to
    /// show when the mount stays private by default.
    pub fn resolve_allow_other(
        &mut self,
        uid: u32,
        fuse_conf: Option<&str>,
    ) -> Result<Option<&'static str>, String> {
        let permitted = allow_other_permitted(uid, fuse_conf);
        match (self.allow_other, permitted) {
            (Some(true), Err(why)) => Err(format!("allow_other: {why}")),
            (Some(_), _) => Ok(None),
            (None, Ok(())) => {
                self.allow_other = Some(true);
                Ok(None)
            }
            (None, Err(why)) => {
                self.allow_other = Some(false);
                Ok(Some(why))
            }
        }
    }

    /// Whether every user is admitted (after [`Self::resolve_allow_other`]).
    pub fn admits_everyone(&self) -> bool {
        self.allow_other == Some(true)
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
        assert!(o.read_only && o.allow_other == Some(true) && o.default_permissions);
        assert_eq!(
            (o.threads, o.numa_nodes, o.dram_cache),
            (4, Some(2), 64 << 20)
        );
        assert!(o.apply("bogus").is_err());
        assert!(o.apply("numa_nodes=0").is_err());
        assert!(o.apply("threads=x").is_err());
        o.apply("nosuid,nodev,noexec,noacl").unwrap();
        assert!(!o.suid && !o.dev && !o.exec && !o.acl);
        o.apply("suid,dev,exec,acl").unwrap();
        assert!(o.suid && o.dev && o.exec && o.acl);
        assert_eq!(o.atime.mode, AtimeMode::Relatime);
        o.apply("strictatime,nodiratime,lazytime,sync,dirsync")
            .unwrap();
        assert!(o.atime.mode == AtimeMode::Strict && o.atime.nodiratime);
        o.apply("noatime").unwrap();
        assert_eq!(o.atime.mode, AtimeMode::Never);
        assert!(!o.dedupe_online);
        o.apply("dedupe=online,dedupe_pages=500").unwrap();
        assert!(o.dedupe_online && o.dedupe_rate.pages == 500);
        o.apply("dedupe=off").unwrap();
        assert!(!o.dedupe_online);
        for bad in ["dedupe", "dedupe=yes", "dedupe_pages=0", "dedupe_pages=x"] {
            assert!(o.apply(bad).is_err(), "{bad}");
        }
        assert_eq!(o.poll, DEFAULT_POLL);
        o.apply("poll=0").unwrap();
        assert!(o.poll.is_zero());
        o.apply("poll=100000").unwrap();
        assert!(o.apply("poll=100001").is_err());
        o.apply("nopoll").unwrap();
        assert!(o.uring);
        o.apply("nouring").unwrap();
        assert!(!o.uring);
        o.apply("uring").unwrap();
        assert!(o.uring);
        assert!(o.poll.is_zero());
    }

    #[test]
    fn allow_other_follows_the_caller_and_fuse_conf() {
        let resolve = |opts: &str, uid, conf| {
            let mut o = MountOptions::default();
            o.apply(opts).unwrap();
            o.resolve_allow_other(uid, conf)
                .map(|m| (o.allow_other, m.is_some()))
        };
        assert_eq!(resolve("", 0, None), Ok((Some(true), false)));
        assert_eq!(resolve("noallow_other", 0, None), Ok((Some(false), false)));
        assert_eq!(resolve("", 1000, None), Ok((Some(false), true)));
        assert_eq!(
            resolve("", 1000, Some("# user_allow_other\n")),
            Ok((Some(false), true))
        );
        assert_eq!(
            resolve("", 1000, Some("mount_max = 9\n user_allow_other \n")),
            Ok((Some(true), false))
        );
        assert!(resolve("allow_other", 1000, None).is_err());
        assert_eq!(
            resolve("noallow_other", 1000, None),
            Ok((Some(false), false))
        );
    }
}
