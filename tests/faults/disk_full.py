#!/usr/bin/python3
"""disk_full — checkpoints on a small tmpfs that fills up.

Two ways, one per trial at random:
  fills:  the tmpfs holds between 1.3 and 3.7 checkpoints and every checkpoint is kept, so the disk fills at the
          2nd to 4th one and every later one fails too (the final one included: the run exits 1);
  filler: a roomy tmpfs that a filler file fills, leaving less than a checkpoint free, at a random step, and
          frees a few steps later: the checkpoints in between fail, the later ones succeed, the run exits 0.
Each failed checkpoint must be reported with "No space left on device" and what it needed; `latest` and every
earlier checkpoint must stay intact (bit-identical to the uninterrupted run's), no temporary file may stay,
training must go on with the same losses, and (fills) once there is room a restart with resume=auto must end
bit-identical to an uninterrupted run. Needs root (mount -t tmpfs); skipped with the reason otherwise.
"""
import errno
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "disk_full"


def can_mount(ctx):
    d = os.path.join(ctx.work, "mount_probe")
    os.makedirs(d, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", d], capture_output=True, text=True)
    if r.returncode != 0:
        return "mount -t tmpfs is not permitted here (%s)" % (r.stderr.strip() or "exit %d" % r.returncode)
    subprocess.run(["umount", d])
    return None


def skip_reason(ctx):
    return can_mount(ctx)


def fill(path, mnt, leave):
    """Leave `leave` bytes free on mnt. The trainer writes to the same file system meanwhile (a checkpoint
    reserves its space at once), so the free space can shrink between statvfs and fallocate: measure again
    and retry rather than fail the trial on the race."""
    with open(path, "wb") as f:
        for _ in range(50):
            st = os.statvfs(mnt)
            n = st.f_bavail * st.f_frsize - leave
            if n <= 0:
                return
            try:
                os.posix_fallocate(f.fileno(), 0, n)
                return
            except OSError as e:
                if e.errno != errno.ENOSPC:
                    raise
                f.truncate(0)
                time.sleep(0.01)
    raise RuntimeError(f"could not fill {mnt}: the free space kept shrinking")


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    mode = ["fills", "filler"][t.k % 2]
    ref = ctx.reference(world)
    refck = os.path.join(ref, "ckpt", "ref")
    size = os.path.getsize(os.path.join(refck, "step_%08d.h5" % fl.STEPS))
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    mnt = os.path.join(d, "ckfs")
    os.makedirs(mnt)
    cap = int(size * (t.rng.uniform(1.3, 3.7) if mode == "fills" else 12))
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={cap}", "tmpfs", mnt], check=True)
    try:
        ckdir = os.path.join(mnt, "cut")
        log = os.path.join(d, "run.log")
        p = ctx.start(ctx.train_cmd(world, "cut", mnt, limit=300), log, d)
        fill_at = unfill_at = None
        if mode == "filler":
            fill_at = t.rng.randint(3, fl.STEPS - 12)
            unfill_at = fill_at + t.rng.randint(6, 9)
            filler = os.path.join(mnt, "filler")
            fl.wait_for(lambda: p.poll() is not None or fl.last_step(log) >= fill_at, 120, 0.002)
            fill(filler, mnt, int(t.rng.uniform(0.0, 0.9) * size))
            fl.wait_for(lambda: p.poll() is not None or fl.last_step(log) >= unfill_at, 120, 0.002)
            os.unlink(filler)
        rc, _ = fl.wait_exit(p, 300)
        p.logfile.close()
        text = fl.read(log)
        failed = [int(s) for s in re.findall(r"checkpoint at step (\d+) failed", text)]
        saved = [int(s) for s in re.findall(r"checkpoint: \S+ \(step (\d+),", text)]
        enospc = [ln for ln in text.splitlines() if "checkpoint at step" in ln and "failed" in ln]
        t.note(f"{world} ranks, {mode}: tmpfs {cap} bytes for {size}-byte checkpoints"
               + (f", filled after step {fill_at}, freed after step {unfill_at}" if mode == "filler" else "")
               + f"; saved {saved}, failed {failed}; exit {rc}")
        if enospc:
            t.note("reported: ..." + enospc[0].split(".h5.tmp", 1)[-1][:200])
        t.check(failed, "no checkpoint failed: the disk never filled (test set-up)")
        t.check(all("No space left on device" in ln for ln in enospc), "a failure without 'No space left on device'")
        t.check(rc == (1 if fl.STEPS in failed else 0), f"exit {rc}, expected {1 if fl.STEPS in failed else 0}"
                " (139 would be the HDF5 crash at exit)")
        t.check(fl.latest_step(ckdir) == (max(saved) if saved else None),
                f"latest = {fl.latest_step(ckdir)}, the newest saved checkpoint is {max(saved) if saved else None}")
        left = sorted(os.listdir(ckdir))
        t.check(not [n for n in left if ".tmp" in n], f"temporary files left: {left}")
        bad = [s for s in saved if fl.compare_ckpt(os.path.join(refck, "step_%08d.h5" % s),
                                                   os.path.join(ckdir, "step_%08d.h5" % s))]
        t.check(not bad, f"saved checkpoints that differ from the uninterrupted run's: {bad}")
        ref_l, cut_l = fl.step_losses(os.path.join(ref, "runs", "ref")), fl.step_losses(os.path.join(d, "runs", "cut"))
        t.check(ref_l == cut_l, "the losses differ from the uninterrupted run's: training state disturbed")
        if fl.STEPS in failed:
            # Room again (as an operator would make it), then resume=auto.
            subprocess.run(["mount", "-o", f"remount,size={20 * size}", mnt], check=True)
            rc2, _ = ctx.run(ctx.train_cmd(world, "cut", mnt, ["train.resume=auto"]), os.path.join(d, "resume.log"), d)
            m = re.search(r"resumed from \S+ at step (\d+)", fl.read(os.path.join(d, "resume.log")))
            start = int(m.group(1)) if m else 0
            t.check(rc2 == 0 and start == max(saved, default=0), f"restart exit {rc2}, resumed at step {start}")
            t.redone = fl.STEPS - start
        if os.path.exists(os.path.join(ckdir, "step_%08d.h5" % fl.STEPS)):
            diff = fl.compare_ckpt(os.path.join(refck, "step_%08d.h5" % fl.STEPS),
                                   os.path.join(ckdir, "step_%08d.h5" % fl.STEPS))
            t.check(not diff, f"end state differs from the uninterrupted run: {diff[:4]}")
            t.lost = 1 if diff else 0
            if not diff:
                t.note("end state bit-identical" + (f" after resuming at step {start}" if fl.STEPS in failed else ""))
        else:
            t.check(False, "no final checkpoint")
    finally:
        subprocess.run(["umount", "-l", mnt])


def run(ctx, trials, seed, only=None):
    why = skip_reason(ctx)
    if why:
        fl.say(f"== {FAULT}: SKIPPED: {why}")
        return {"fault": FAULT, "trials": 0, "passed": 0, "skipped": why}
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
