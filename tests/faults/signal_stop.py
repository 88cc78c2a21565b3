#!/usr/bin/python3
"""signal_stop — SIGTERM or SIGUSR1 to one random rank (or SIGUSR1 / SIGTERM to mpirun) at a random step.

A signal to a rank: every rank must stop at the same step (the flag is all-reduced after each step), write one
checkpoint there, and the job must exit 75 (MOME_EXIT_STOPPED). SIGUSR1 to mpirun is forwarded to every rank:
the same. SIGTERM to mpirun is not forwarded as such: mpirun sends SIGTERM to the ranks and SIGKILL shortly
after, and exits 1 itself; the ranks still stop together and checkpoint when the write fits in that grace
(checked: `latest` names a complete checkpoint, whatever the exit code). Then resume=auto must end
bit-identical to an uninterrupted run with nothing redone.
"""
import os
import re
import signal
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "signal_stop"
STOP_LIMIT = 30.0


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    target, sig = [("rank", signal.SIGTERM), ("rank", signal.SIGUSR1), ("mpirun", signal.SIGUSR1),
                   ("rank", signal.SIGTERM), ("mpirun", signal.SIGTERM)][t.k % 5]
    victim = t.rng.randrange(world)
    at_step = t.rng.randint(2, fl.STEPS - 4)
    ref = ctx.reference(world)
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    ckdir = os.path.join(d, "ckpt", "cut")
    tag = uuid.uuid4().hex
    log = os.path.join(d, "cut.log")
    p = ctx.start(ctx.train_cmd(world, "cut", "ckpt", tag=tag), log, d, {"MOME_FAULT_TAG": tag})
    pids = {}
    fl.wait_for(lambda: p.poll() is not None or len(pids.update(fl.rank_pids(tag)) or pids) == world, 60, 0.05)
    fl.wait_for(lambda: p.poll() is not None or fl.last_step(log) >= at_step, 240, 0.002)
    if p.poll() is not None or len(pids) != world:
        fl.kill_group(p)
        t.check(False, "the run ended before the signal: " + fl.tail(log, 4).replace("\n", " | "))
        return
    at = fl.last_step(log)
    # mpirun is the child of `timeout`, the process group leader
    pid = pids[victim] if target == "rank" else int(open(f"/proc/{p.pid}/task/{p.pid}/children").read().split()[0])
    os.kill(pid, sig)
    rc, secs = fl.await_end(p, t)
    text = fl.read(log)
    m = re.search(r"signal (\d+) received: checkpointing at step (\d+)", text)
    stop = int(m.group(2)) if m else None
    ck = fl.latest_step(ckdir)
    who = f"rank {victim}" if target == "rank" else "mpirun"
    t.note(f"{world} ranks, {signal.Signals(sig).name} to {who} after step {at}: stopped at step {stop}, "
           f"latest {ck}, exit {rc} in {secs:.2f} s")
    strict = not (target == "mpirun" and sig == signal.SIGTERM)
    if strict:
        t.check(rc == 75, f"exit {rc}, expected 75")
        t.check(stop is not None and ck == stop, f"latest = {ck}, the stop step is {stop}")
    t.check(secs <= STOP_LIMIT, f"took {secs:.1f} s to stop")
    t.check(not fl.leftovers(tag), "processes left behind")
    if stop is not None and ck == stop:
        # the stop checkpoint holds every rank's data cursor, all at the agreed step (batch 12 split evenly)
        import h5py
        with h5py.File(os.path.join(ckdir, "step_%08d.h5" % ck), "r") as f:
            cur = f["data/cursor"][()]
            t.check(len(cur) == world and all(c == ck * (12 // world) for c in cur),
                    f"data cursors {list(cur)} do not all say step {ck}")
    rc2, start = ctx.resume(world, d)
    t.check(rc2 == 0 and start == (ck or 0), f"restart exit {rc2}, resumed at step {start}, latest was {ck}")
    t.redone = max(0, (stop or at) - start)
    fl.check_end_state(t, ref, ckdir, rc2 == 0, f"resumed at step {start}, {t.redone} step(s) redone")


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
