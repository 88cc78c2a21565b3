#!/usr/bin/python3
"""hang — a rank that stops making progress (SIGSTOP: a hung process, or one whose network went silent).

The other ranks wait for it in a collective, where MPI has no timeout. Each rank's watchdog (train.watchdog,
set here to 3 to 6 s) must end its rank with exit 77 once nothing has progressed for that long, mpirun must
then end the job (the stopped rank included: SIGKILL reaches a stopped process) within the watchdog's time plus
10 s, no process may be left, and a restart with train.resume=auto must continue from the last complete
checkpoint and end bit-identical to an uninterrupted run with the same settings.
"""
import os
import signal
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402
from kill_rank import kill_and_resume  # noqa: E402

FAULT = "hang"
EXIT_WATCHDOG = 77


def trial(ctx, t):
    world = t.rng.choice([2, 3])
    victim = t.rng.randrange(world)
    target = t.rng.randint(2, fl.STEPS - 3)
    watchdog = t.rng.randint(3, 6)
    kill_and_resume(ctx, t, world, victim, lambda log, ck: fl.last_step(log) >= target,
                    f"after step {target} (train.watchdog = {watchdog})", extra=[f"train.watchdog={watchdog}"],
                    sig=signal.SIGSTOP, fault=FAULT, expect_rc=EXIT_WATCHDOG, stop_limit=watchdog + 10.0)


def run(ctx, trials, seed, only=None):
    return fl.run_trials(FAULT, trial, ctx, trials, seed, only)


if __name__ == "__main__":
    fl.main_single(FAULT, trial)
