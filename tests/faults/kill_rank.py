#!/usr/bin/python3
"""kill_rank — kill -9 a random rank at a random step of an MoE run on 2 or 3 ranks.

The job must end within 30 s (Open MPI aborts the others when a rank dies), leave no process behind, and a
restart with train.resume=auto must continue from the last complete checkpoint and end with weights, AdamW
moments, random states and data cursors bit-identical to an uninterrupted run.
"""
import os
import re
import signal
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "kill_rank"
STOP_LIMIT = 30.0


def expected_start(ckdir):
    """Where a restart must resume: the step `latest` names; without a `latest`, the newest complete step file
    (renamed into place, so complete: a kill between the rename and `latest`); else from scratch (0)."""
    ck = fl.latest_step(ckdir)
    if ck is not None:
        return ck
    if not os.path.isdir(ckdir):
        return 0
    steps = [int(n[5:13]) for n in os.listdir(ckdir) if re.fullmatch(r"step_\d{8}\.h5", n)]
    return max(steps, default=0)


def kill_and_resume(ctx, t, world, victim, trigger, label, extra=(), delay=0.0, inspect=None, sig=signal.SIGKILL,
                    fault=FAULT, expect_rc=None, stop_limit=STOP_LIMIT):
    """Starts a run, waits for trigger(log, ckpt) to hold, waits `delay` s more, sends `sig` (kill -9) to rank
    `victim`, checks the job ends in time (and with exit expect_rc, when given), restarts with resume=auto and
    compares the end with an uninterrupted run. inspect(ckdir), when given, describes the checkpoint directory as
    the fault left it."""
    d = ctx.trial_dir(f"{fault}{t.k}")
    ref = ctx.reference(world, extra)
    tag = uuid.uuid4().hex
    log = os.path.join(d, "cut.log")
    ckdir = os.path.join(d, "ckpt", "cut")
    p = ctx.start(ctx.train_cmd(world, "cut", "ckpt", extra, tag=tag, limit=300), log, d, {"MOME_FAULT_TAG": tag})
    # The ranks' pids first (a /proc scan takes milliseconds), then the fault point, polled every 0.5 ms.
    pids = {}
    fl.wait_for(lambda: p.poll() is not None or len(pids.update(fl.rank_pids(tag)) or pids) == world, 60, 0.05)
    fired = fl.wait_for(lambda: p.poll() is not None or trigger(log, ckdir), 240, poll=0.0005)
    if p.poll() is not None or not fired or victim not in pids:
        fl.kill_group(p)
        t.check(False, f"the run ended or never reached the fault point (exit {p.returncode}): "
                + fl.tail(log, 5).replace("\n", " | "))
        return None
    if delay > 0:
        time.sleep(delay)
    at = fl.last_step(log)
    os.kill(pids[victim], sig)
    rc, secs = fl.await_end(p, t)
    left = fl.wait_for(lambda: not fl.leftovers(tag), 10) or fl.leftovers(tag)
    ck = fl.latest_step(ckdir)
    want = expected_start(ckdir)
    tmp = [n for n in os.listdir(ckdir) if ".tmp" in n] if os.path.isdir(ckdir) else []
    what = "killed" if sig == signal.SIGKILL else f"sent {signal.Signals(sig).name} to"
    t.note(f"{world} ranks, {what} rank {victim} (pid {pids[victim]}) {label} at step {at}; job ended in "
           f"{secs:.2f} s with exit {rc}; latest = step {ck}" + (f"; left {tmp}" if tmp else "")
           + (f"; {inspect(ckdir)}" if inspect else ""))
    t.check(rc is not None and rc != 0, "mpirun still running after 120 s, or exited 0 after a rank was killed")
    t.check(secs <= stop_limit, f"the job took {secs:.1f} s to end (limit {stop_limit:.0f} s)")
    if expect_rc is not None:
        t.check(rc == expect_rc, f"exit {rc}, expected {expect_rc}")
    t.check(left is True, f"processes left behind: {left}")

    # Restart: resume=auto from whatever the checkpoint directory holds.
    log2 = os.path.join(d, "resume.log")
    rc2, _ = ctx.run(ctx.train_cmd(world, "cut", "ckpt", list(extra) + ["train.resume=auto"]), log2, d)
    text = fl.read(log2)
    t.check(rc2 == 0, f"the restarted run failed (exit {rc2}): " + fl.tail(log2, 6).replace("\n", " | "))
    m = re.search(r"resumed from \S+ at step (\d+)", text)
    start = int(m.group(1)) if m else 0
    t.check(start == want, f"resumed at step {start}, the last complete checkpoint was step {want}")
    t.lost = int(start != want)
    t.redone = max(0, at - start)
    final = os.path.join(ckdir, "step_%08d.h5" % fl.STEPS)
    if rc2 == 0:
        diff = fl.compare_ckpt(os.path.join(ref, "ckpt", "ref", "step_%08d.h5" % fl.STEPS), final)
        t.check(not diff, f"final state differs from the uninterrupted run: {diff[:5]}")
        t.lost |= int(bool(diff))
        if not diff:
            t.note(f"resumed at step {start}, {t.redone} step(s) redone, final state bit-identical")
    stale = [n for n in os.listdir(ckdir) if ".tmp" in n]
    t.check(not stale, f"stale temporary files after the restart: {stale}")
    return want


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    victim = t.rng.randrange(world)
    target = t.rng.randint(2, fl.STEPS - 3)
    kill_and_resume(ctx, t, world, victim, lambda log, ck: fl.last_step(log) >= target, "after step %d" % target)


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
