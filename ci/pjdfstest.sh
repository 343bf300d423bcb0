#!/usr/bin/env bash
# Runs the POSIX conformance suite pjdfstest (the Rust rewrite on crates.io)
# against a fresh pmemfs mount, then checks the image with fsck.pmemfs -n.
#
#   ci/pjdfstest.sh [BINDIR]
#
# BINDIR holds the multi-call `pmemfs` binary (default: target/release of
# this checkout). Must run as root: the suite switches users, and it makes
# device nodes. It needs /dev/fuse, mount(8) and flock(1) (util-linux), and
# cargo when pjdfstest is not installed yet.
#
# Steps: create the `tests` user and group when missing; install pjdfstest
# when missing; make an image; mount it with allow_other; run the suite in
# a directory on the mount; unmount; wait for the daemon to let go of the
# image; run fsck.pmemfs -n. Exits non-zero if a test failed (or passed
# though listed as an expected failure), or fsck is not clean, or any step
# failed.
#
# The suite runs in two passes; ci/pjdfstest.toml says why. Pass 1 runs
# every test with allow_remount = false. Pass 2 runs the *erofs* tests in a
# fresh pjdfstest process with allow_remount = true.
#
# Environment:
#   PJDFSTEST_VERSION  version to install (default 0.2.2; the config and
#                      the two-pass workaround were checked against it)
#   PJDFSTEST_TIMEOUT  seconds each pass may take (default 1200)
#   PMEMFS_MOUNT_OPTS  extra -o options for pmemfs-mount (default none),
#                      e.g. threads=1, or no_default_permissions
#   PMEMFS_IMAGE_SIZE  image size (default 1G)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/.." && pwd)
bindir=$(cd "${1:-$root/target/release}" && pwd)
config="$here/pjdfstest.toml"
version=${PJDFSTEST_VERSION:-0.2.2}
pass_timeout=${PJDFSTEST_TIMEOUT:-1200}
size=${PMEMFS_IMAGE_SIZE:-1G}
# Default options, as a user mounts it: a root mount admits every user
# (allow_other) by itself, and the suite's non-root cases need that.
mount_opts="${PMEMFS_MOUNT_OPTS:-}"
pmemfs="$bindir/pmemfs"

say() { echo "pjdfstest.sh: $*"; }
die() { echo "pjdfstest.sh: error: $*" >&2; exit 2; }

[ "$(id -u)" = 0 ] || die "must run as root"
[ -x "$pmemfs" ] || die "$pmemfs: not found (build with cargo build --release -p pmemfs-tools)"
[ -c /dev/fuse ] || die "/dev/fuse: missing"
[ -f "$config" ] || die "$config: missing"
for tool in mount umount flock timeout; do
    command -v "$tool" >/dev/null || die "$tool: not found"
done

# --- dummy users -------------------------------------------------------------
# The default [dummy_auth] of pjdfstest: `nobody` and `tests`, each with its
# primary group.
if ! getent group tests >/dev/null; then
    groupadd tests
    say "created group tests"
fi
if ! getent passwd tests >/dev/null; then
    useradd -g tests -M -d / -s /usr/sbin/nologin -c "Dummy user for pjdfstest" tests
    say "created user tests"
fi
if ! getent passwd nobody >/dev/null; then
    if ! getent group nogroup >/dev/null && ! getent group nobody >/dev/null; then
        groupadd nogroup
    fi
    group=$(getent group nogroup >/dev/null && echo nogroup || echo nobody)
    useradd -g "$group" -M -d /nonexistent -s /usr/sbin/nologin nobody
    say "created user nobody"
fi

# --- pjdfstest ---------------------------------------------------------------
cargo_bin="${CARGO_HOME:-$HOME/.cargo}/bin"
pjdfstest="$cargo_bin/pjdfstest"
[ -x "$pjdfstest" ] || pjdfstest=$(command -v pjdfstest || true)
if [ -z "$pjdfstest" ] || [ "$("$pjdfstest" --version 2>/dev/null)" != "pjdfstest $version" ]; then
    say "installing pjdfstest $version"
    # A target directory of its own, so the workspace's build lock is
    # not involved.
    CARGO_TARGET_DIR="${TMPDIR:-/tmp}/pjdfstest-build" \
        cargo install --locked --force --version "$version" pjdfstest
    rm -rf "${TMPDIR:-/tmp}/pjdfstest-build"
    pjdfstest="$cargo_bin/pjdfstest"
fi
say "using $("$pjdfstest" --version) ($pjdfstest)"

# --- image and mount ---------------------------------------------------------
work=$(mktemp -d "${TMPDIR:-/tmp}/pmemfs-pjd.XXXXXX")
image="$work/pjd.img"
mnt="$work/mnt"
second="$work/secondary" # a different file system, for the EXDEV tests
mkdir "$mnt" "$second"
chmod 0755 "$work" "$mnt" "$second"
mounted=

# Waits until no process holds the image's lock, i.e. the daemon exited
# after writing its final checkpoint. umount returns before that.
wait_released() {
    for _ in $(seq 300); do
        if flock -n -s "$image" true 2>/dev/null; then
            return 0
        fi
        sleep 0.1
    done
    return 1
}

# The pmemfs daemons serving our image: every process with it open.
image_holders() {
    local fd
    for fd in /proc/[0-9]*/fd/*; do
        if [ "$(readlink "$fd" 2>/dev/null)" = "$image" ]; then
            echo "${fd#/proc/}"
        fi
    done | cut -d/ -f1 | sort -u
}

# Unmounts, and waits for the daemon to write its final checkpoint and exit.
# A daemon that will not exit gets SIGTERM, then SIGKILL. Fails if the lazy
# fallback or a signal was needed.
unmount() {
    local ok=0 pids
    if ! timeout 60 umount "$mnt"; then
        say "umount $mnt failed; detaching it lazily"
        umount -l "$mnt" || true
        ok=1
    fi
    mounted=
    wait_released && return "$ok"
    pids=$(image_holders)
    say "the daemon (pid ${pids:-?}) still holds $image 30 s after umount; stopping it"
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -TERM $pids 2>/dev/null
    sleep 5
    # shellcheck disable=SC2086
    [ -n "$pids" ] && kill -KILL $pids 2>/dev/null
    return 1
}

cleanup() {
    [ -z "$mounted" ] || unmount || true
    rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM HUP # so that cleanup runs

"$pmemfs" mkfs -q -s "$size" "$image"
"$pmemfs" mount ${mount_opts:+-o "$mount_opts"} "$image" "$mnt"
mounted=1
say "mounted $image on $mnt (-o ${mount_opts:-defaults}): $(findmnt -no OPTIONS "$mnt")"
mkdir -m 0755 "$mnt/pjdfstest"

# --- the suite ---------------------------------------------------------------
# NO_COLOR keeps the log plain. Backtraces are off: each failure's assertion
# message is what matters.
export NO_COLOR=1 RUST_BACKTRACE=0 RUST_LIB_BACKTRACE=0
sed 's/^allow_remount *=.*/allow_remount = true/' "$config" >"$work/remount.toml"
# The erofs tests remount with `mount -o remount,ro MOUNTPOINT`, which runs
# the first mount(8) on PATH. Once fuse3 is installed (.ci/run installs it),
# mount(8) hands a remount of a "fuse.pmemfs" mount to mount.fuse3, which
# runs the program `pmemfs` from a fixed PATH, where CI has not installed
# it. `mount -i` (no helpers) makes the remount(2) call directly, so pass 2
# gets a mount(8) that always adds -i.
real_mount=$(command -v mount)
mkdir "$work/bin"
printf '#!/bin/sh\nexec %s -i "$@"\n' "$real_mount" >"$work/bin/mount"
chmod 0755 "$work/bin/mount"

total_pass=0 total_fail=0 total_skip=0 total_xfail=0 broken=0
run_pass() { # NAME CONFIG [PATTERN...]
    local name=$1 conf=$2 log="$work/$1.log" rc=0 start end summary
    shift 2
    say "pass $name: pjdfstest -c $(basename "$conf")${*:+ $*}"
    start=$(date +%s.%N)
    # Run from the work directory: pjdfstest makes its temporary directories
    # under -p and gets nothing from its cwd, but a cwd on the mount would
    # block remounting.
    (cd "$work" && timeout "$pass_timeout" "$pjdfstest" -c "$conf" \
        -p "$mnt/pjdfstest" -s "$second" "$@") >"$log" 2>&1 || rc=$?
    end=$(date +%s.%N)
    # Drop the stack traces that anyhow prints with the final error.
    sed -e '/^Stack backtrace:/,$d' "$log"
    summary=$(grep -a '^Summary: ' "$log" | tail -n1 || true)
    if [ -z "$summary" ]; then
        say "pass $name: pjdfstest gave no summary (exit $rc)"
        broken=1
        return
    fi
    local re='^Summary: ([0-9]+) failed, ([0-9]+) skipped, ([0-9]+) passed, ([0-9]+) expected failures'
    if ! [[ $summary =~ $re ]]; then
        say "pass $name: cannot read the summary: $summary"
        broken=1
        return
    fi
    local f=${BASH_REMATCH[1]} s=${BASH_REMATCH[2]} p=${BASH_REMATCH[3]} x=${BASH_REMATCH[4]}
    total_fail=$((total_fail + f)) total_skip=$((total_skip + s))
    total_pass=$((total_pass + p)) total_xfail=$((total_xfail + x))
    if [ "$rc" != 0 ] && [ "$f" = 0 ]; then
        say "pass $name: pjdfstest exited $rc"
        broken=1
    fi
    say "pass $name took $(awk -v a="$start" -v b="$end" 'BEGIN { printf "%.1f", b - a }') s"
}

# Pass 1: everything. The *erofs* tests are skipped here (allow_remount =
# false in the config).
run_pass main "$config"
# Pass 2: the 13 *erofs* tests, in a process that has leaked no fds, with
# remounts allowed. The remounts reach the whole mount, so nothing else may
# be using it meanwhile.
PATH="$work/bin:$PATH" run_pass erofs "$work/remount.toml" erofs
# The 13 erofs tests ran in pass 2, so their pass-1 skips do not count.
erofs_tests=$(grep -ac '^[^ ]*erofs[^ ]* .*skipped$' "$work/main.log" || true)
total_skip=$((total_skip - erofs_tests))
[ "$total_skip" -ge 0 ] || total_skip=0 # pass 1 died before its summary

# --- unmount and check -------------------------------------------------------
if [ -n "$(ls -A "$mnt/pjdfstest")" ]; then
    say "pjdfstest left files behind in $mnt/pjdfstest:"
    ls -la "$mnt/pjdfstest"
fi
# A failed erofs test can leave the mount read-only. Put it back to rw, so
# the mount ends as it began.
mount -i -o remount,rw "$mnt" 2>/dev/null || true
unmount || broken=1
fsck_rc=0
"$pmemfs" fsck -n -v "$image" || fsck_rc=$?
[ "$fsck_rc" = 0 ] || say "fsck.pmemfs -n exited $fsck_rc: the image is not clean"

echo
say "summary: $total_fail failed, $total_skip skipped, $total_pass passed, $total_xfail expected failures; fsck exit $fsck_rc"
# The plain closing line CI reads.
echo "pjdfstest: $total_pass passed, $total_fail failed, $total_skip skipped"
if [ "$total_fail" != 0 ] || [ "$fsck_rc" != 0 ] || [ "$broken" != 0 ]; then
    exit 1
fi
