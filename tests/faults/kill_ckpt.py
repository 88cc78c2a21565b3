#!/usr/bin/python3
"""kill_ckpt — kill -9 a rank while rank 0 writes a checkpoint.

The kill lands at a random point of a random checkpoint's write: the harness polls the checkpoint directory
every 0.5 ms for the temporary step_XXXXXXXX.h5.tmp, then waits a random 0 to 1.5 times the write time (so
some kills fall in the rename and the `latest` update) before the SIGKILL. Whatever the point, `latest` must
name a complete checkpoint, the restart must choose it (or the newer one, if its write had completed) and end
bit-identical to an uninterrupted run, and no temporary file may survive the restart.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
import kill_rank  # noqa: E402

FAULT = "kill_ckpt"
# A wider model than tiny.ini's, so that a checkpoint (weights and both AdamW moments, 4 experts) takes long
# enough to write for a kill to land inside it.
EXTRA = ["model.d_model=128"]


def write_seconds(ctx, world):
    """The checkpoint write time of the reference run (its log's 'checkpoint: ... (step N, S s)' lines)."""
    ref = ctx.reference(world, EXTRA)
    secs = [float(x) for x in re.findall(r"checkpoint: .*, ([0-9.]+) s\)", fl.read(os.path.join(ref, "ref.log")))]
    return max(0.005, sorted(secs)[len(secs) // 2]) if secs else 0.05


def phase(ckdir):
    tmp = [n for n in os.listdir(ckdir) if n.endswith(".h5.tmp")]
    ltmp = [n for n in os.listdir(ckdir) if n.startswith("latest.tmp")]
    done = sorted(int(n[5:13]) for n in os.listdir(ckdir) if re.fullmatch(r"step_\d{8}\.h5", n))
    ck = fl.latest_step(ckdir)
    if tmp:
        return f"interrupted mid-write ({tmp[0]} left)"
    if ltmp:
        return f"interrupted writing latest ({ltmp[0]} left)"
    if done and (ck is None or done[-1] > ck):
        return f"interrupted after the rename, before latest (step {done[-1]} complete, latest {ck})"
    return "the write had completed"


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    # Rank 0 writes; another rank's death only reaches it as mpirun's SIGTERM, which it turns into a stop flag,
    # so its write completes before the SIGKILL that follows. Two trials in three kill the writer itself.
    victim = 0 if t.k % 3 != 2 else t.rng.randrange(1, world)
    which = t.rng.randint(1, fl.STEPS // fl.EVERY - 1)  # the checkpoint (1st .. 5th) to interrupt
    w = write_seconds(ctx, world)
    delay = t.rng.uniform(0, 1.5 * w)

    def trigger(log, ckdir):
        return os.path.exists(os.path.join(ckdir, "step_%08d.h5.tmp" % (which * fl.EVERY)))

    kill_and = kill_rank.kill_and_resume
    kill_and(ctx, t, world, victim, trigger, f"{delay * 1e3:.1f} ms into the step-{which * fl.EVERY} checkpoint "
             f"(write ~{w * 1e3:.0f} ms)", EXTRA, delay=delay, inspect=phase)


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
