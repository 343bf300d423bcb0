// The names the multi-call `pmemfs` binary answers to, linked to it: by
// build.rs in target/<profile>/ (which includes this file) and by
// `pmemfs install`. `mount.fuse.pmemfs` is what mount(8) runs for type
// `fuse.pmemfs`, the type the kernel shows for our mounts.
pub const LINKS: [&str; 5] = [
    "mkfs.pmemfs",
    "fsck.pmemfs",
    "pmemfs-mount",
    "mount.pmemfs",
    "mount.fuse.pmemfs",
];
