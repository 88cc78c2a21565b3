#!/usr/bin/python3
"""hang — a rank that stops making progress (SIGSTOP: a hung process, or one whose network went silent).

The other ranks wait for it in a collective, where MPI has no timeout. Each rank's watchdog (train.watchdog,
set here to 3 to 6 s) must end its rank with exit 77 once nothing has progressed for that long, mpirun must
then end the job (the stopped rank included: SIGKILL reaches a stopped process) within the watchdog's time plus
10 s, no process may be left, and a restart with train.resume=auto must continue from the last complete
checkpoint and end bit-identical to an uninterrupted run with the same settings.

Every other trial hangs the start-up instead: the checkpoint to resume from, or the teacher's, is a named pipe
that no one writes, so opening it blocks the way a read from a hung network file system does. The watchdog runs
from the start of `mome train`, so the job must end the same way (exit 77 within the watchdog's time plus 10 s,
no process left), saying which stage of the start-up was stuck, and leave no file in the checkpoint directory.
"""
import os
import signal
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
from kill_rank import kill_and_resume  # noqa: E402

FAULT = "hang"
EXIT_WATCHDOG = 77


STUCK = {  # what a start-up trial makes unreadable: the setting that names it, the stage the watchdog reports
    "resume": ("train.resume", "reading a checkpoint to resume from"),
    "teacher": ("teacher.checkpoint", "loading the teacher"),
}


def stuck_startup(ctx, t, world, watchdog):
    what = sorted(STUCK)[(t.k // 2) % len(STUCK)]
    key, stage = STUCK[what]
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    pipe = os.path.join(d, "stuck.h5")
    os.mkfifo(pipe)
    tag = uuid.uuid4().hex
    log = os.path.join(d, "stuck.log")
    extra = [f"train.watchdog={watchdog}", f"{key}={pipe}"]
    p = ctx.start(ctx.train_cmd(world, "stuck", "ckpt", extra, tag=tag, limit=300), log, d, {"MOME_FAULT_TAG": tag})
    rc, secs = fl.await_end(p, t, limit=watchdog + 60)
    left = fl.wait_for(lambda: not fl.leftovers(tag), 10) or fl.leftovers(tag)
    ckdir = os.path.join(d, "ckpt", "stuck")
    written = sorted(os.listdir(ckdir)) if os.path.isdir(ckdir) else []
    said = [line for line in fl.read(log).splitlines() if "no progress" in line]
    t.note(f"{world} ranks, {key} is a pipe no one writes (train.watchdog = {watchdog}); job ended in {secs:.2f} s "
           f"with exit {rc}; {len(said)} rank(s) reported")
    t.check(rc == EXIT_WATCHDOG, f"exit {rc}, expected {EXIT_WATCHDOG}: " + fl.tail(log, 4).replace("\n", " | "))
    t.check(secs <= watchdog + 10.0, f"the job took {secs:.1f} s to end (limit {watchdog + 10} s)")
    t.check(left is True, f"processes left behind: {left}")
    t.check(said and all(f"in the start-up ({stage})" in line for line in said),
            f"the watchdog's message does not name the stage '{stage}': {said[:1]}")
    t.check(not written, f"files written to the checkpoint directory: {written}")


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    victim = t.rng.randrange(world)
    target = t.rng.randint(2, fl.STEPS - 3)
    watchdog = t.rng.randint(3, 6)
    if t.k % 2 == 1:
        return stuck_startup(ctx, t, world, watchdog)
    kill_and_resume(ctx, t, world, victim, lambda log, ck: fl.last_step(log) >= target,
                    f"after step {target} (train.watchdog = {watchdog})", extra=[f"train.watchdog={watchdog}"],
                    sig=signal.SIGSTOP, fault=FAULT, expect_rc=EXIT_WATCHDOG, stop_limit=watchdog + 10.0)


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
