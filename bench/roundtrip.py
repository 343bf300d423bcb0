#!/usr/bin/env python3
"""FUSE round trips on a mount, the figures README's "Where the time goes"
quotes: a getxattr of a missing name (one request, little work) timed over
20,000 calls, three times; then create, write 100 bytes and close, 2,000
files. usage: python3 bench/roundtrip.py MOUNTPOINT (run beside tmpfs,
e.g. /dev/shm, for the floor)."""
import os
import sys
import time

mnt = sys.argv[1]
probe = os.path.join(mnt, "rtfile")
open(probe, "w").close()
N = 20000
for _ in range(3):
    t = time.perf_counter()
    for _ in range(N):
        try:
            os.getxattr(probe, "user.none")
        except OSError:
            pass
    print(f"getxattr round trip: {(time.perf_counter() - t) / N * 1e6:.1f} us")
M = 2000
t = time.perf_counter()
for i in range(M):
    fd = os.open(os.path.join(mnt, f"rt{i}"), os.O_CREAT | os.O_WRONLY, 0o644)
    os.write(fd, b"x" * 100)
    os.close(fd)
print(f"create+write+close: {(time.perf_counter() - t) / M * 1e6:.1f} us")
for i in range(M):
    os.unlink(os.path.join(mnt, f"rt{i}"))
os.unlink(probe)
