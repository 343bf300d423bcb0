#!/bin/bash
# usage: bench/concurrent.sh [DIR...]   (as root; needs fio; uses /dev/shm/conc)
# Two clients at once (issue 13): 4 KiB random writes and reads with one
# and two fio jobs (a file each), and the p99 of 4 KiB random reads of one
# file alone and beside a job writing another 1 GiB file sequentially.
# Each DIR holds a `pmemfs` binary (default: this checkout's
# target/release); several DIRs are run interleaved, 3 rounds, on a fresh
# 4 GiB image in /dev/shm each time, so that builds compare in one run.
set -eu
[ $# -gt 0 ] || set -- "$(cd "$(dirname "$0")/.." && pwd)/target/release"
command -v fio >/dev/null || { echo "concurrent.sh: fio is missing (apt-get install -y fio)" >&2; exit 2; }
W=/dev/shm/conc; M=$W/m; umount $M 2>/dev/null || true; rm -rf $W; mkdir -p $M
T="--time_based --runtime=5 --ioengine=psync --bs=4k --size=256M --directory=$M"
iops() { fio --name=r --rw="$1" --numjobs="$2" $T --group_reporting --output-format=terse --terse-version=3 2>/dev/null |
  awk -F';' -v rw="$1" '{print (rw == "randread") ? $8 : $49}'; }
p99() { python3 -c 'import json, sys; print(json.load(sys.stdin)["jobs"][0]["read"]["clat_ns"]["percentile"]["99.000000"] // 1000)'; }
for round in 1 2 3; do for b in "$@"; do
  "$b/pmemfs" mkfs -q -s 4G $W/img; "$b/pmemfs" mount $W/img $M
  line="$b round $round:"
  for rw in randwrite randread; do for j in 1 2; do line="$line $rw/$j=$(iops $rw $j)"; done; done
  # (fio takes --directory only before --filename)
  alone=$(fio --output-format=json --lat_percentiles=1 --name=rr $T --filename=rr --rw=randread 2>/dev/null | p99)
  beside=$(fio --output-format=json --lat_percentiles=1 --name=rr $T --filename=rr --rw=randread \
    --name=sw --directory=$M --filename=sw --rw=write --bs=1M --size=1G --ioengine=psync 2>/dev/null | p99)
  echo "$line randread-p99 alone=${alone}us beside-a-writer=${beside}us"
  umount $M; rm -f $W/img
done; done
