//! Readers, writers and clones of files at once, through a real mount:
//! in-place writes run with the state shared (fs/src/datalock.rs), so
//! these check that a reader never sees half a write, that writers of
//! different files lose nothing, and that copy on write under a clone
//! stays whole.

mod util;

use util::*;

/// O_DIRECT readers and writers go to the daemon every time (no kernel
/// page cache between), four processes for three seconds: A is written
/// with units of 16 pages of one byte value each, in place and, after each
/// clone, by copy on write; its reader and the cloner check that every
/// page they see is whole; B is written beside it, in place, past its end
/// and into holes, and must end as its writer's model says.
#[test]
fn readers_see_whole_writes_and_writers_of_two_files_lose_nothing() {
    let m = Mount::new("concurrent", "512M", "");
    let out = py(
        m.path(),
        r#"
import random
# A is written and read in units of 16 pages, one FUSE request each
# (the kernel splits direct I/O only past max_pages, 32 at least).
PAGES, UNIT, SECS = 256, 16, 3.0
UB = UNIT * 4096
def direct(name):
    return os.open(P(name), os.O_RDWR | os.O_CREAT | os.O_DIRECT, 0o644)
def unit_buf(v):
    b = mmap.mmap(-1, UB)
    b.write(bytes([v]) * UB)
    return b
a = direct("a")
for i in range(PAGES // UNIT):
    os.pwritev(a, [unit_buf(1)], i * UB)
stop = time.monotonic() + SECS
errors, counts = [], {"w": 0, "r": 0, "c": 0, "b": 0}

def whole(buf, what):
    v = buf[0]
    if buf[:] != bytes([v]) * len(buf):
        errors.append(f"{what}: a write's unit mixes bytes {sorted(set(buf[:]))}")

def writer_a():
    rng = random.Random(1)
    bufs = [unit_buf(v) for v in range(2, 256)]
    while time.monotonic() < stop:
        os.pwritev(a, [rng.choice(bufs)], rng.randrange(PAGES // UNIT) * UB)
        counts["w"] += 1

def reader_a():
    rng, buf = random.Random(2), mmap.mmap(-1, UB)
    fd = os.open(P("a"), os.O_RDONLY | os.O_DIRECT)
    while time.monotonic() < stop:
        n = os.preadv(fd, [buf], rng.randrange(PAGES // UNIT) * UB)
        assert n == UB, n
        whole(buf, "reader of a")
        counts["r"] += 1
    os.close(fd)

def cloner():
    buf, k = mmap.mmap(-1, UB), 0
    while time.monotonic() < stop:
        src = os.open(P("a"), os.O_RDONLY)
        dst = os.open(P(f"c{k}"), os.O_RDWR | os.O_CREAT, 0o644)
        assert os.copy_file_range(src, dst, PAGES * 4096) == PAGES * 4096
        os.close(src)
        os.close(dst)
        fd = os.open(P(f"c{k}"), os.O_RDONLY | os.O_DIRECT)
        for i in range(PAGES // UNIT):
            os.preadv(fd, [buf], i * UB)
            whole(buf, f"clone c{k}")
        os.close(fd)
        os.unlink(P(f"c{k}"))
        k += 1
        counts["c"] += 1
        time.sleep(0.02)

def writer_b():
    rng = random.Random(3)
    fd = os.open(P("b"), os.O_RDWR | os.O_CREAT, 0o644)
    model = bytearray()
    while time.monotonic() < stop:
        size = len(model)
        kind = rng.randrange(4)
        if kind == 0 or size < 8192:
            off = size                              # append: the size grows
        elif kind == 1:
            off = size + rng.randrange(1, 3) * 4096  # past the end: a hole
        else:
            off = rng.randrange(size - 100)         # in place
        data = rng.randbytes(rng.randrange(1, 6000))
        assert os.pwrite(fd, data, off) == len(data)
        if off > len(model):
            model.extend(bytes(off - len(model)))
        model[off:off + len(data)] = data
        counts["b"] += 1
        time.sleep(0.001)  # CPU for the others: this is a 2-CPU machine
        if len(model) > (4 << 20):
            os.ftruncate(fd, 0)
            model = bytearray()
    got = os.pread(fd, len(model) + 1, 0)
    os.close(fd)
    if got != bytes(model):
        first = next(i for i in range(min(len(got), len(model))) if got[i] != model[i]) \
            if len(got) == len(model) else None
        errors.append(f"b: {len(got)} bytes read, {len(model)} written, first difference at {first}")

# One process each, so that nothing but the mount orders them.
kids = []
for f in (writer_a, reader_a, cloner, writer_b):
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        try:
            f()
        except Exception:
            errors.append(traceback.format_exc())
        os.write(w, json.dumps([errors, counts]).encode())
        os._exit(0)
    os.close(w)
    kids.append((pid, r))
for pid, r in kids:
    with os.fdopen(r, "rb") as fh:
        e, c = json.loads(fh.read())
    os.waitpid(pid, 0)
    errors += e
    for k in c:
        counts[k] += c[k]
assert not errors, errors[:5]
assert min(counts.values()) > 0, counts
print("ok", counts)
"#,
    );
    assert!(out.starts_with("ok"), "{out}");
    eprintln!("{out}");
    m.finish(); // fsck -n clean after unmount
}
