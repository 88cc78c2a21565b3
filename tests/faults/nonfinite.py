#!/usr/bin/python3
"""nonfinite — a NaN or an Inf in the loss, the gradients or the weights, injected at a random step on a random
rank through MOME_FAULT_NONFINITE (src/train.c), under each train.nonfinite policy.

  skip:  the step's update is skipped on every rank (one fewer AdamW step in the end), a warning reaches the
         monitor (a mome.log record) and the step's mome.train record has "skipped": true; the run completes;
  stop:  the run ends at that step with an error (exit 76, mome.end "failed"), writes no checkpoint, and
         `latest` stays the last one before the fault; resume=auto (no fault) then ends bit-identical to an
         uninterrupted run;
  limit: the weights themselves go bad (param), so every later step is non-finite: after train.nonfinite_limit
         of them in a row the run stops as with stop, and no checkpoint of non-finite weights is written.
"""
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "nonfinite"
LIMIT = 3


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    mode = ["skip", "stop", "limit"][t.k % 3]
    value = t.rng.choice(["nan", "inf"])
    where = "param" if mode == "limit" else t.rng.choice(["loss", "grad"])
    rank = "all" if mode == "limit" else t.rng.randrange(world)  # bad weights: on every replica alike
    step = t.rng.randint(3, fl.STEPS - 5)
    ref = ctx.reference(world)
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    ckdir = os.path.join(d, "ckpt", "cut")
    extra = ["train.nonfinite=" + ("skip" if mode == "limit" else mode), "train.nonfinite_limit=%d" % LIMIT]
    log = os.path.join(d, "cut.log")
    spec = f"{where}:{value}:{step}@{rank}"
    rc, secs = ctx.run(ctx.train_cmd(world, "cut", "ckpt", extra), log, d, {"MOME_FAULT_NONFINITE": spec})
    text = fl.read(log)
    recs = fl.records(os.path.join(d, "runs", "cut"), "mome.train")
    logs = [r for r in fl.records(os.path.join(d, "runs", "cut"), "mome.log") if "non-finite" in r["message"]]
    ends = fl.records(os.path.join(d, "runs", "cut"), "mome.end")
    skipped = [r["step"] for r in recs if r.get("skipped")]
    t.note(f"{world} ranks, train.nonfinite={mode if mode != 'limit' else 'skip (limit %d)' % LIMIT}, "
           f"{value} in the {where} of rank {rank} at step {step}: exit {rc}, skipped steps {skipped}, "
           f"latest {fl.latest_step(ckdir)}")
    t.check(any(r["level"] == "warn" for r in logs), "no non-finite warning on the monitor (mome.log)")
    if mode == "skip":
        t.check(rc == 0, f"exit {rc}: " + fl.tail(log, 3).replace("\n", " | "))
        t.check(skipped == [step], f"skipped steps {skipped}, expected [{step}]")
        ref_l, cut_l = fl.step_losses(os.path.join(ref, "runs", "ref")), fl.step_losses(os.path.join(d, "runs", "cut"))
        t.check(all(ref_l[s] == cut_l[s] for s in range(1, step)), "losses before the fault differ")
        import h5py
        import numpy as np
        with h5py.File(os.path.join(ckdir, "step_%08d.h5" % fl.STEPS), "r") as f:
            adam = int(f["optimizer"].attrs["step"])
            finite = all(np.isfinite(f[n][()]).all() for n in ("model/wte", "model/blocks/qkv_w"))
        t.check(adam == fl.STEPS - 1, f"AdamW step {adam}, expected {fl.STEPS - 1} (one update skipped)")
        t.check(finite, "non-finite weights in the final checkpoint")
        t.note(f"AdamW steps {adam} of {fl.STEPS}, weights finite")
        return
    last = step if mode == "stop" else None
    if mode == "limit":  # the weights go bad after step `step`: steps step+1 .. step+LIMIT are non-finite
        last = step + LIMIT
        t.check(skipped == list(range(step + 1, last + 1)), f"skipped steps {skipped}, expected "
                f"{list(range(step + 1, last + 1))}")
        refused = re.findall(r"checkpoint at step (\d+) failed: .*no checkpoint of non-finite weights", text)
        if refused:
            t.note(f"checkpoint of step(s) {refused} refused (non-finite weights)")
    t.check(rc == 76, f"exit {rc}, expected 76 (MOME_EXIT_NONFINITE)")
    t.check(re.search(r"step %d: non-finite loss or gradients.*stopping without a checkpoint" % last, text) is not None,
            "no stop message naming the step")
    t.check(ends and ends[-1]["status"] == "failed", "mome.end is not 'failed'")
    # the last checkpoint before the weights or the step went bad (a checkpoint after a param fault is refused)
    want = ((step - 1) // fl.EVERY) * fl.EVERY
    ck = fl.latest_step(ckdir)
    t.check(ck == (want or None), f"latest = {ck}, expected the last good checkpoint {want}")
    rc2, _ = ctx.resume(world, d, extra)
    t.check(rc2 == 0, f"restart exit {rc2}")
    t.redone = last - want
    fl.check_end_state(t, ref, ckdir, rc2 == 0, f"resumed at step {want} without the fault")


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
