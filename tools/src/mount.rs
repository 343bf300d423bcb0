//! `pmemfs-mount [-o OPTIONS] [-f] [-d] IMAGE MOUNTPOINT`, also installed
//! as `mount.pmemfs` for `mount -t pmemfs` and fstab.
//!
//! By default it returns once the mount is ready and keeps serving in the
//! background (a forked daemon reports success or failure through a pipe).
//! It exits cleanly, writing a final checkpoint first, on umount,
//! `fusermount3 -u` or SIGTERM/SIGINT/SIGHUP; the image lock goes only then.

use std::ffi::OsString;
use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd, OwnedFd};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use pmemfs_fs::{MountOptions, PmemFs};

const USAGE: &str = "\
usage: pmemfs-mount [-o OPTIONS] [-f] [-d] IMAGE MOUNTPOINT
       mount -t pmemfs [-o OPTIONS] IMAGE MOUNTPOINT

  -o OPTIONS  comma-separated: ro, rw, allow_other (the default when
              permitted), noallow_other, acl (default), noacl, nosuid,
              nodev, noexec, default_permissions (always on), threads=N,
              poll=USECS (200), nopoll, dedupe=online, dedupe_pages=N,
              numa_nodes=N, dram_cache=SIZE, writeback_cache
  -f          stay in the foreground
  -d          foreground, and report what recovery did";

#[derive(Debug)]
pub struct Options {
    pub image: PathBuf,
    pub mountpoint: PathBuf,
    pub mount: MountOptions,
    pub foreground: bool,
    pub debug: bool,
    /// `-o remount,...`: change the flags of the mount at MOUNTPOINT
    /// (only ro and rw mean anything then) instead of mounting.
    pub remount: bool,
}

pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Options, String> {
    use lexopt::prelude::*;
    let mut p = lexopt::Parser::from_args(args);
    let mut mount = MountOptions::default();
    let (mut foreground, mut debug, mut remount) = (false, false, false);
    let mut paths = Vec::new();
    while let Some(arg) = p.next().map_err(|e| e.to_string())? {
        match arg {
            Short('o') => {
                let v = p.value().map_err(|e| e.to_string())?;
                let v = v.to_string_lossy();
                if v.split(',').any(|o| o == "remount") {
                    // mount(8) passes every option of the mount, those the
                    // kernel shows (user_id=, ...) included: keep the
                    // flags a remount can change.
                    remount = true;
                    let changeable = [
                        "ro", "rw", "suid", "nosuid", "dev", "nodev", "exec", "noexec",
                    ];
                    for o in v.split(',').filter(|o| changeable.contains(o)) {
                        mount.apply(o)?;
                    }
                } else {
                    mount.apply(&v)?;
                }
            }
            Short('f') => foreground = true,
            Short('d') => (foreground, debug) = (true, true),
            // mount(8) passes these to helpers: sloppy, fake, verbose,
            // no-mtab. None changes what a FUSE mount does.
            Short('s' | 'n' | 'v') => {}
            Short('t') => {
                p.value().map_err(|e| e.to_string())?;
            }
            Short('h') | Long("help") => return Err(String::new()),
            Value(v) => paths.push(PathBuf::from(v)),
            _ => return Err(arg.unexpected().to_string()),
        }
    }
    let [image, mountpoint]: [PathBuf; 2] = paths
        .try_into()
        .map_err(|_| "need IMAGE and MOUNTPOINT".to_string())?;
    // The source as the kernel shows it (mount.fuse3 passes that).
    let image = match image.to_str().and_then(|s| s.strip_prefix("pmemfs:")) {
        Some(path) => PathBuf::from(path),
        None => image,
    };
    Ok(Options {
        image,
        mountpoint,
        mount,
        foreground,
        debug,
        remount,
    })
}

/// Runs pmemfs-mount with `args` (without the program name).
pub fn main(args: impl IntoIterator<Item = OsString>) -> ExitCode {
    let mut opts = match parse(args) {
        Ok(o) => o,
        Err(e) if e.is_empty() => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            eprintln!("pmemfs-mount: {e}\n{USAGE}");
            return ExitCode::from(16);
        }
    };
    if !opts.remount {
        // SAFETY: getuid cannot fail.
        let uid = unsafe { libc::getuid() };
        let conf = std::fs::read_to_string("/etc/fuse.conf").ok();
        match opts.mount.resolve_allow_other(uid, conf.as_deref()) {
            Ok(None) => {}
            Ok(Some(why)) => eprintln!("pmemfs-mount: {why}"),
            Err(e) => {
                eprintln!("pmemfs-mount: {e}");
                return ExitCode::from(1);
            }
        }
    }
    match run(&opts) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pmemfs-mount: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(o: &Options) -> anyhow::Result<()> {
    if !o.mountpoint.is_dir() {
        bail!("{}: not a directory", o.mountpoint.display());
    }
    if o.remount {
        return remount(o);
    }
    if let Some(at) = crate::control::mount_of(&o.image) {
        bail!(
            "{} is already mounted on {}",
            o.image.display(),
            at.display()
        );
    }
    if o.foreground {
        return serve(o, None);
    }
    let mut fds = [0; 2];
    // SAFETY: pipe fills the two descriptors it returns.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error()).context("pipe");
    }
    // SAFETY: the descriptors are fresh and owned here from now on.
    let (rx, tx) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: nothing but this thread runs yet, so the child starts sane.
    match unsafe { libc::fork() } {
        -1 => Err(std::io::Error::last_os_error()).context("fork"),
        0 => {
            drop(rx);
            // SAFETY: setsid in the child detaches it from the terminal.
            unsafe { libc::setsid() };
            let code = match serve(o, Some(tx)) {
                Ok(()) => 0,
                Err(_) => 1,
            };
            std::process::exit(code);
        }
        _ => {
            drop(tx);
            let mut msg = String::new();
            std::fs::File::from(rx).read_to_string(&mut msg)?;
            match msg.strip_prefix("ready") {
                Some(_) => Ok(()),
                None if msg.is_empty() => {
                    bail!("the file system daemon died before the mount was ready")
                }
                None => bail!("{msg}"),
            }
        }
    }
}

/// Changes the flags of the mount at the mountpoint: read-only or
/// read-write, nosuid, nodev, noexec (each flag left out is cleared, as
/// mount(8) passes the whole set). The kernel enforces them; the daemon
/// needs no word of it (it still writes its final checkpoint at unmount).
fn remount(o: &Options) -> anyhow::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let target = std::ffi::CString::new(o.mountpoint.as_os_str().as_bytes())
        .context("mountpoint holds a NUL byte")?;
    let m = &o.mount;
    let mut flags = libc::MS_REMOUNT;
    for (set, flag) in [
        (m.read_only, libc::MS_RDONLY),
        (!m.suid, libc::MS_NOSUID),
        (!m.dev, libc::MS_NODEV),
        (!m.exec, libc::MS_NOEXEC),
    ] {
        if set {
            flags |= flag;
        }
    }
    // SAFETY: `target` is NUL-terminated; a remount takes no source, type
    // or data.
    let r = unsafe {
        libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("remounting {}", o.mountpoint.display()));
    }
    Ok(())
}

/// Opens, mounts and serves until unmounted or told to stop. `ready` gets
/// "ready" once the mount is up, or the error that prevented it.
fn serve(o: &Options, ready: Option<OwnedFd>) -> anyhow::Result<()> {
    pmemfs_fs::memory::tune_allocator();
    let signals = block_signals();
    let tell = |ready: Option<OwnedFd>, what: &str| {
        if let Some(fd) = ready {
            let _ = std::fs::File::from(fd).write_all(what.as_bytes());
        }
    };
    let fs = match PmemFs::open(&o.image, o.mount.clone()) {
        Ok(fs) => fs,
        Err(e) => {
            let hint = match &e {
                pmemfs_ondisk::Error::Corrupt(_) => {
                    format!("; run fsck.pmemfs -y {}", o.image.display())
                }
                _ => String::new(),
            };
            let msg = format!("cannot mount {}: {e}{hint}", o.image.display());
            eprintln!("pmemfs-mount: {msg}");
            tell(ready, &msg);
            bail!("{msg}");
        }
    };
    if o.debug {
        eprintln!(
            "pmemfs-mount: {}: recovery: {:?}",
            o.image.display(),
            fs.recovery()
        );
    }
    let config = fs.config();
    let poller = fs.poller();
    let session = match fuser::Session::new(fs, &o.mountpoint, &config).and_then(|s| {
        // Polling needs the device after INIT, which Session::new did.
        poller.attach(s.as_fd())?;
        s.spawn()
    }) {
        Ok(s) => s,
        Err(e) => {
            let msg = format!("cannot mount on {}: {e}", o.mountpoint.display());
            eprintln!("pmemfs-mount: {msg}");
            tell(ready, &msg);
            bail!("{msg}");
        }
    };
    if o.mount.writeback_cache {
        if let Err(e) = lift_dirty_limits(&o.mountpoint) {
            if o.debug {
                eprintln!("pmemfs-mount: the kernel's FUSE dirty limits stay: {e}");
            }
        }
    }
    if ready.is_some() {
        tell(ready, "ready");
        detach_stdio();
    }
    loop {
        if wait_signal(&signals, Duration::from_millis(200)) {
            // Unmounting ends the session; its destroy checkpoints.
            let _ = session.umount_and_join();
            return Ok(());
        }
        if session.guard.is_finished() {
            // Unmounted from outside (umount, fusermount3 -u): the session
            // has checkpointed and closed the image. Dropping the session
            // now would unmount the mount point by path again, and by then
            // it may hold a new mount of the same image; so forget it.
            std::mem::forget(session);
            return Ok(());
        }
    }
}

/// Under the writeback cache the kernel holds written pages until it
/// writes them back, and it lets a FUSE mount have at most 1% of the
/// dirty memory limit, strictly (`strict_limit`: an unprivileged daemon
/// must not pin memory), 48 MB on a 24 GiB machine; a writer past that
/// waits for writeback page by page, which for random 4 KiB writes is a
/// round trip each. A daemon the superuser mounted is trusted as much as
/// a local file system, so it takes a local file system's limits: the
/// system-wide dirty limits alone. Elsewhere (not root, or a kernel
/// without these knobs) the FUSE limits stay.
fn lift_dirty_limits(mountpoint: &std::path::Path) -> std::io::Result<()> {
    use std::os::unix::fs::MetadataExt;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Err(std::io::Error::from_raw_os_error(libc::EPERM));
    }
    let dev = std::fs::metadata(mountpoint)?.dev();
    let bdi = PathBuf::from(format!(
        "/sys/class/bdi/{}:{}",
        libc::major(dev),
        libc::minor(dev)
    ));
    std::fs::write(bdi.join("strict_limit"), "0")?;
    std::fs::write(bdi.join("max_ratio"), "100")
}

/// Blocks the stop signals in this thread and every thread it starts, so
/// that only [`wait_signal`] sees them.
fn block_signals() -> libc::sigset_t {
    // SAFETY: plain signal-set manipulation on a local set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn wait_signal(set: &libc::sigset_t, timeout: Duration) -> bool {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs() as libc::time_t,
        tv_nsec: timeout.subsec_nanos() as libc::c_long,
    };
    // SAFETY: the set and timespec are valid for the call.
    unsafe { libc::sigtimedwait(set, std::ptr::null_mut(), &ts) > 0 }
}

/// A daemon keeps no terminal: its standard streams go to /dev/null.
fn detach_stdio() {
    if let Ok(null) = std::fs::File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
    {
        use std::os::fd::AsRawFd;
        for fd in 0..3 {
            // SAFETY: dup2 onto the standard descriptors.
            unsafe { libc::dup2(null.as_raw_fd(), fd) };
        }
    }
}
