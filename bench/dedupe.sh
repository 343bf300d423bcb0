#!/bin/bash
# usage: bench/dedupe.sh   (as root, after cargo build --release; needs jdupes; uses /dev/shm/acc14)
# Dedupe at full size (issue 14): 10 byte-identical copies of a 100 MiB
# file made without reflinks, plus one differing by a byte.
set -eu
B=${B:-$(cd "$(dirname "$0")/.." && pwd)/target/release}; L=$B/libpmemfs_reflink.so
W=/dev/shm/acc14; umount $W/m 2>/dev/null || true; rm -rf $W; mkdir -p $W/m
$B/mkfs.pmemfs -q -s 4G $W/img; $B/pmemfs-mount $W/img $W/m
mk() { rm -rf $W/m/t; mkdir $W/m/t; head -c 100M /dev/urandom > $W/m/t/f0
  for i in 1 2 3 4 5 6 7 8 9; do cp --reflink=never $W/m/t/f0 $W/m/t/f$i; done
  cp --reflink=never $W/m/t/f0 $W/m/t/g; printf Y | dd of=$W/m/t/g bs=1 seek=77777777 conv=notrunc status=none
  (cd $W/m/t && sha256sum * > $W/sums); sync; }
used() { df -B1 --output=used $W/m | tail -1; }
mk; u0=$(used); echo "== jdupes -rB: used before $u0"
LD_PRELOAD=$L jdupes -rBq $W/m/t >/dev/null; u1=$(used)
echo "freed $((u0-u1)) of $((9*104857600)) duplicate bytes ($(( (u0-u1)*100/(9*104857600) ))%)"; $B/pmemfs du --raw $W/m/t | tail -1
(cd $W/m/t && sha256sum -c --quiet $W/sums) && echo "sha256 unchanged"
mk; u0=$(used); echo "== pmemfs dedupe -r -n"; $B/pmemfs dedupe -r -n $W/m/t; [ "$(used)" = "$u0" ] && echo "-n: used unchanged"
echo "== pmemfs dedupe -r"; /usr/bin/time -f "peak RSS %M KiB, %e s" $B/pmemfs dedupe -r $W/m/t; u1=$(used)
echo "freed $((u0-u1)) bytes"; $B/pmemfs du --raw $W/m/t | tail -1
(cd $W/m/t && sha256sum -c --quiet $W/sums) && echo "sha256 unchanged"
umount $W/m; sleep 1; $B/fsck.pmemfs -n $W/img | tail -2
rm -rf $W
