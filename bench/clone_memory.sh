#!/bin/bash
# usage: bench/clone_memory.sh [DIR...]   (as root; uses /dev/shm/clonemem)
# The daemon's anonymous memory around clones (issue 13): a 1 GiB file
# written with dd (contiguous pages) and a file of 262,144 pages written
# in random order (scattered pages), each cloned with cp --reflink=auto,
# RssAnon before and after each. Each DIR holds a `pmemfs` binary
# (default: this checkout's target/release), each on a fresh 4 GiB image.
set -eu
[ $# -gt 0 ] || set -- "$(cd "$(dirname "$0")/.." && pwd)/target/release"
W=/dev/shm/clonemem
for b in "$@"; do
  umount $W/m 2>/dev/null || true; rm -rf $W; mkdir -p $W/m
  "$b/pmemfs" mkfs -q -s 4G $W/img; "$b/pmemfs" mount $W/img $W/m
  pid=$(pgrep -nf "pmemfs mount $W/img")
  rss() { awk '/RssAnon/ {print $2}' /proc/$pid/status; }
  dd if=/dev/urandom of=$W/m/big bs=1M count=1024 status=none
  python3 - $W/m/scattered <<'PY'
import os, random, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT, 0o644)
idx = list(range(262144)); random.Random(1).shuffle(idx)
page = os.urandom(4096)
for i in idx:
    os.pwrite(fd, page, i * 4096)
os.close(fd)
PY
  sleep 1; r0=$(rss)
  cp --reflink=auto $W/m/big $W/m/big2; r1=$(rss)
  cp --reflink=auto $W/m/scattered $W/m/scattered2; r2=$(rss)
  echo "$b: RssAnon $r0 kB; contiguous 1 GiB clone +$((r1 - r0)) kB; clone of 262,144 scattered pages +$((r2 - r1)) kB ($(( (r2 - r1) * 1024 / 262144 )) bytes a page)"
  umount $W/m; while pgrep -f "pmemfs mount $W/img" >/dev/null; do sleep 0.2; done
done
rm -rf $W
