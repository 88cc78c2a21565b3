#!/usr/bin/python3
"""corrupt_ckpt — damage the newest checkpoint (or `latest`) of a run, then restart it with resume=auto.

Damage, one kind per trial: a flipped bit inside a dataset's stored data (what Fletcher32 covers), a flipped
byte anywhere in the file (metadata included, which no checksum covers in this HDF5 format), a flipped byte of
the `step` attribute, a truncation at a random length (0 included), `latest` overwritten with garbage or naming
a file that does not exist. The restart must either detect the damage, name the file and what failed, and
resume from the previous checkpoint, or (a flipped byte the file never uses) resume from the damaged one
unharmed; either way the run must end bit-identical to an uninterrupted run. A run that ends differently is
silent corruption: a failure.
"""
import os
import re
import shutil
import struct
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "corrupt_ckpt"
KINDS = ["flip_data", "flip_any", "flip_step_attr", "truncate", "latest_garbage", "latest_missing"]


def flip_data(path, rng):
    """Flips one bit inside the stored chunk of a random dataset; returns what it did."""
    import h5py
    with h5py.File(path, "r") as f:
        names = []
        f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) and f[n].chunks else None)
        name = rng.choice(sorted(names))
        d = f[name]
        info = d.id.get_chunk_info(rng.randrange(d.id.get_num_chunks()))
        off = info.byte_offset + rng.randrange(info.size)
    bit = rng.randrange(8)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ (1 << bit)]))
    return f"bit {bit} of byte {off} (in /{name})"


def flip_any(path, rng):
    size = os.path.getsize(path)
    off = rng.randrange(size)
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ rng.randrange(1, 256)]))
    return f"byte {off} of {size}"


def flip_step_attr(path, rng, step):
    """Flips a byte of the root attribute `step` (its name, then its 8-byte value, within the object header)."""
    data = open(path, "rb").read()
    val = struct.pack("<q", step)
    hits = []
    for m in re.finditer(rb"step\0", data):
        at = data.find(val, m.end(), m.end() + 96)
        if at >= 0:
            hits.append(at)
    if not hits:
        return None
    off = rng.choice(hits) + rng.randrange(2)  # the low bytes: a plausible, different step
    with open(path, "r+b") as f:
        f.seek(off)
        b = f.read(1)[0]
        f.seek(off)
        f.write(bytes([b ^ (1 << rng.randrange(8))]))
    return f"byte {off} (a 'step' attribute value)"


def truncate(path, rng):
    size = os.path.getsize(path)
    n = rng.choice([0, rng.randrange(size)])
    os.truncate(path, n)
    return f"truncated to {n} of {size} bytes"


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    kind = KINDS[t.k % len(KINDS)]
    newest = t.rng.choice([10, 15, 20, 25])
    ref = ctx.reference(world)
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    ckdir = os.path.join(d, "ckpt", "cut")
    os.makedirs(ckdir)
    for s in range(fl.EVERY, newest + 1, fl.EVERY):
        shutil.copy(os.path.join(ref, "ckpt", "ref", "step_%08d.h5" % s), ckdir)
    with open(os.path.join(ckdir, "latest"), "w") as f:
        f.write("step_%08d.h5\n" % newest)
    victim = os.path.join(ckdir, "step_%08d.h5" % newest)
    want = {newest - fl.EVERY}  # detected: the previous checkpoint
    if kind == "flip_data":
        what = flip_data(victim, t.rng)
    elif kind == "flip_any":
        what = flip_any(victim, t.rng)
        want.add(newest)  # a byte the file never uses: resuming from it is harmless (checked by the end state)
    elif kind == "flip_step_attr":
        what = flip_step_attr(victim, t.rng, newest) or flip_any(victim, t.rng)
        want.add(newest)
    elif kind == "truncate":
        what = truncate(victim, t.rng)
    elif kind == "latest_garbage":
        garbage = bytes(t.rng.randrange(256) for _ in range(t.rng.randrange(1, 40)))
        with open(os.path.join(ckdir, "latest"), "wb") as f:
            f.write(garbage)
        what, want = f"latest = {garbage[:12]!r}...", {newest}  # the files are fine: the newest one
    else:
        with open(os.path.join(ckdir, "latest"), "w") as f:
            f.write("step_%08d.h5\n" % (newest + 50))
        what, want = f"latest names step_{newest + 50:08d}.h5, which does not exist", {newest}
    log = os.path.join(d, "resume.log")
    rc, secs = ctx.run(ctx.train_cmd(world, "cut", "ckpt", ["train.resume=auto"]), log, d)
    text = fl.read(log)
    m = re.search(r"resumed from \S+ at step (\d+)", text)
    start = int(m.group(1)) if m else -1
    warn = [ln for ln in text.splitlines() if "warning: resume:" in ln]
    t.note(f"{world} ranks, {kind}: {what}; restart exit {rc}, resumed at step {start}")
    if warn:
        t.note("reported: " + warn[0].split("warning: ", 1)[1][:240])
    t.check(rc == 0, "the restart failed: " + fl.tail(log, 4).replace("\n", " | "))
    t.check(start in want, f"resumed at step {start}, expected one of {sorted(want)}")
    if start == newest - fl.EVERY and kind not in ("latest_garbage", "latest_missing"):
        t.check(any("step_%08d.h5" % newest in w for w in warn), "the damaged file is not named in a warning")
    if start == newest and kind in ("flip_any", "flip_step_attr"):
        t.note("not detected: the byte is not used, or changes nothing read")
    t.redone = max(0, newest - max(start, 0))  # the damaged checkpoint's steps, recomputed
    if rc == 0:
        diff = fl.compare_ckpt(os.path.join(ref, "ckpt", "ref", "step_%08d.h5" % fl.STEPS),
                               os.path.join(ckdir, "step_%08d.h5" % fl.STEPS))
        t.check(not diff, f"SILENT CORRUPTION: the end state differs from the uninterrupted run: {diff[:4]}")
        t.lost = 1 if diff else 0
        if not diff:
            t.note("end state bit-identical")


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
