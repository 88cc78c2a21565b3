"""faultlib.py — what the fault scripts of tests/faults/ share: a scratch workspace with a small corpus, the
mome runs (always under `timeout`), the ranks' process ids, checkpoint comparison, reference runs, and the
trial/verdict bookkeeping the driver (tests/faults/run) turns into its summary table.

Every script draws its randomness from one seeded generator per trial (Trial.rng, seeded from the seed, the
class and the trial number), prints it, and can replay one trial: `tests/faults/run --only NAME --seed S
--trial K`. The kind of fault a trial tries (which policy, which damage, which target) cycles with the trial
number, so that a run of a few trials covers every kind; the rest (ranks, step, offsets, delays) is drawn.
"""
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import tempfile
import time
import zlib

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TINY = os.path.join(REPO, "configs", "tiny.ini")
MPI_ENV = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1",
           "OMPI_MCA_rmaps_base_oversubscribe": "1"}

# The run every kill test trains: configs/tiny.ini with 4 MoE experts spread over the ranks (so that the
# expert-parallel dispatch and the checkpoint's gather of every expert are exercised), one thread per rank,
# a checkpoint every 5 of 30 steps, all of them kept. batch_size 12 divides 1, 2, 3 and 4 ranks.
STEPS = 30
EVERY = 5
BASE_ARGS = ["train.steps=%d" % STEPS, "train.threads=1", "train.batch_size=12", "train.eval_batches=1",
             "train.eval_every=0", "train.log_every=1", "moe.n_experts=4", "checkpoint.every=%d" % EVERY,
             "checkpoint.keep=0", "monitor.sgemm_probe=0"]


def say(*a):
    print(*a, flush=True)


class Ctx:
    """The workspace: one corpus, the binary, reference runs cached by their arguments."""

    def __init__(self, work=None, bin=None, keep=False, verbose=False):
        self.bin = os.path.abspath(bin or os.environ.get("MOME_BIN") or os.path.join(REPO, "build", "mome"))
        if not os.access(self.bin, os.X_OK):
            sys.exit(f"faults: no mome binary at {self.bin} (build first, or pass --bin / set MOME_BIN)")
        self.own_work = work is None
        self.work = os.path.abspath(work or tempfile.mkdtemp(prefix="mome-faults-"))
        os.makedirs(self.work, exist_ok=True)
        self.keep = keep
        self.verbose = verbose
        self.refs = {}
        self.corpus = os.path.join(self.work, "corpus")
        if not os.path.exists(os.path.join(self.corpus, "tokenizer.h5")):
            self.make_corpus()

    def make_corpus(self):
        """Two small domains of Python standard library sources, vocabulary 512 (as tests/lib/common.sh)."""
        src = sysconfig.get_paths()["stdlib"]
        tree = os.path.join(self.work, "src")
        for dom, dirs in (("alpha", ["email"]), ("beta", ["json", "http", "logging", "urllib"])):
            for d in dirs:
                shutil.copytree(os.path.join(src, d), os.path.join(tree, dom, d), dirs_exist_ok=True,
                                ignore=shutil.ignore_patterns("__pycache__"))
        cmd = [self.bin, "data", "build", "--out", self.corpus, "--vocab", "512", "--val-fraction", "0.2",
               "--domain", "alpha=" + os.path.join(tree, "alpha"), "--domain", "beta=" + os.path.join(tree, "beta")]
        r = subprocess.run(["timeout", "300"] + cmd, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit("faults: mome data build failed:\n" + r.stdout + r.stderr)

    def cleanup(self):
        if self.own_work and not self.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    def trial_dir(self, name):
        d = os.path.join(self.work, name)
        shutil.rmtree(d, ignore_errors=True)
        os.makedirs(d)
        return d

    def train_cmd(self, world, run, ckpt_dir, extra=(), mpi_extra=(), limit=300, tag=None, prefix=()):
        """The command line of one training run: `timeout LIMIT [PREFIX] mpirun -np WORLD ... mome train tiny.ini
        ...` (PREFIX: `ip netns exec NS` to start mpirun on another "host")."""
        args = (["data.dir=" + self.corpus, "checkpoint.dir=" + ckpt_dir, "train.run_name=" + run] + BASE_ARGS
                + list(extra))
        mpi = ["mpirun", "-np", str(world), "--oversubscribe", "--bind-to", "none"]
        if tag:
            mpi += ["-x", "MOME_FAULT_TAG"]
        return (["timeout", "-k", "10", str(limit)] + list(prefix) + mpi + list(mpi_extra) + [self.bin, "train", TINY]
                + args)

    def start(self, cmd, log, cwd, env=None):
        e = dict(os.environ, **MPI_ENV)
        if env:
            e.update(env)
        f = open(log, "w")
        p = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, cwd=cwd, env=e, start_new_session=True)
        p.logfile = f
        p.t0 = time.monotonic()
        return p

    def run(self, cmd, log, cwd, env=None):
        """Runs to the end; returns (exit code, seconds)."""
        p = self.start(cmd, log, cwd, env)
        rc = p.wait()
        p.logfile.close()
        return rc, time.monotonic() - p.t0

    def resume(self, world, d, extra=()):
        """Restarts a trial's run "cut" (in d, checkpoints in d/ckpt) with train.resume=auto, logging to
        d/resume.log; returns (exit code, the step it says it resumed at, 0 when none)."""
        log = os.path.join(d, "resume.log")
        rc, _ = self.run(self.train_cmd(world, "cut", "ckpt", list(extra) + ["train.resume=auto"]), log, d)
        m = re.search(r"resumed from \S+ at step (\d+)", read(log))
        return rc, int(m.group(1)) if m else 0

    def reference(self, world, extra=(), mpi_extra=(), prefix=(), label=""):
        """An uninterrupted run (cached): its directory, holding ckpt/ref/step_*.h5 and runs/ref/."""
        key = (world, tuple(extra), tuple(mpi_extra), tuple(prefix))
        if key in self.refs:
            return self.refs[key]
        d = self.trial_dir("ref%d" % len(self.refs))
        rc, secs = self.run(self.train_cmd(world, "ref", "ckpt", extra, mpi_extra, prefix=prefix),
                            os.path.join(d, "ref.log"), d)
        if rc != 0:
            sys.exit(f"faults: the uninterrupted reference run failed (exit {rc}):\n"
                     + tail(os.path.join(d, "ref.log")))
        say(f"  reference: {world} rank(s){label}, {STEPS} steps uninterrupted in {secs:.1f} s ({d})")
        self.refs[key] = d
        return d


def tail(path, n=25):
    try:
        with open(path, errors="replace") as f:
            return "".join(f.readlines()[-n:])
    except OSError:
        return ""


def read(path):
    try:
        with open(path, errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def rank_pids(tag):
    """{rank: pid} of the live processes started with MOME_FAULT_TAG=tag (mpirun's children and remote orted's)."""
    out = {}
    for p in os.listdir("/proc"):
        if not p.isdigit():
            continue
        try:
            with open(f"/proc/{p}/environ", "rb") as f:
                env = f.read().split(b"\0")
        except OSError:
            continue
        if b"MOME_FAULT_TAG=" + tag.encode() not in env:
            continue
        for kv in env:
            if kv.startswith(b"OMPI_COMM_WORLD_RANK="):
                out[int(kv.split(b"=", 1)[1])] = int(p)
    return out


def last_step(log):
    """The last 'step N/M' progress line of rank 0 in a log, 0 when none."""
    s = 0
    for line in read(log).splitlines():
        if line.startswith("step ") and "/" in line:
            try:
                s = int(line.split()[1].split("/")[0])
            except ValueError:
                pass
    return s


def wait_for(pred, timeout, poll=0.01):
    t_end = time.monotonic() + timeout
    while time.monotonic() < t_end:
        if pred():
            return True
        time.sleep(poll)
    return pred()


def latest_step(ckpt_run_dir):
    """The step `latest` names, or None."""
    try:
        with open(os.path.join(ckpt_run_dir, "latest")) as f:
            name = f.read().strip()
        return int(name[5:13]) if name.startswith("step_") else None
    except (OSError, ValueError):
        return None


def wait_exit(p, limit):
    """Waits for a started run; returns (exit code or None if still running after `limit` s, seconds waited)."""
    t0 = time.monotonic()
    try:
        rc = p.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        rc = None
    return rc, time.monotonic() - t0


def await_end(p, t, limit=120):
    """After a fault: waits up to `limit` s for the job to end, records the time in t.stop_s, and kills the group
    if it is still running (else closes its log). Returns (exit code or None, seconds)."""
    rc, secs = wait_exit(p, limit)
    t.stop_s = secs
    if rc is None:
        kill_group(p)
    else:
        p.logfile.close()
    return rc, secs


def kill_group(p):
    """Ends a started run and everything it started (its own session)."""
    try:
        os.killpg(p.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    p.wait()
    p.logfile.close()


def leftovers(tag):
    """Processes still alive with the tag (a hang or orphans)."""
    return rank_pids(tag)


def compare_ckpt(a, b):
    """Datasets and attributes of two checkpoints that differ (model, optimizer, rng, data, step counters)."""
    import h5py
    import numpy as np
    diff = []
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        for k in ("step", "tokens_seen"):
            if fa.attrs[k] != fb.attrs[k]:
                diff.append(f"attr {k} {fa.attrs[k]} != {fb.attrs[k]}")
        if fa["optimizer"].attrs["step"] != fb["optimizer"].attrs["step"]:
            diff.append("attr /optimizer step")
        names = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) and
                 n.startswith(("model/", "optimizer/", "rng/", "data/")) else None)
        for n in names:
            if n not in fb or not np.array_equal(fa[n][()], fb[n][()]):
                diff.append(n)
        if not names:
            diff.append("no tensors found")
    return diff


def check_end_state(t, ref, ckdir, ended, how):
    """Checks that a trial's run ended (`ended`) with the final checkpoint in ckdir bit-identical to the one of the
    uninterrupted run ref (Ctx.reference): the trial counts as lost otherwise, and notes `how` it got there if so."""
    diff = compare_ckpt(os.path.join(ref, "ckpt", "ref", "step_%08d.h5" % STEPS),
                        os.path.join(ckdir, "step_%08d.h5" % STEPS)) if ended else ["no end"]
    t.check(not diff, f"end state differs from the uninterrupted run: {diff[:4]}")
    t.lost = 1 if diff else 0
    if not diff:
        t.note(f"{how}, end state bit-identical")


def close_ckpt(a, b):
    """Largest relative difference of the model tensors of two checkpoints (to compare different rank counts)."""
    import h5py
    import numpy as np
    worst = 0.0
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names = []
        fa.visit(lambda n: names.append(n) if isinstance(fa[n], h5py.Dataset) and n.startswith("model/") else None)
        for n in names:
            x, y = fa[n][()].astype(np.float64), fb[n][()].astype(np.float64)
            worst = max(worst, float(np.max(np.abs(x - y)) / (np.max(np.abs(x)) + 1e-30)))
    return worst


def step_losses(run_dir):
    """{step: loss} of runs/<run>/metrics.jsonl (the later record wins for a repeated step)."""
    out = {}
    try:
        for line in open(os.path.join(run_dir, "metrics.jsonl")):
            r = json.loads(line)
            if r.get("topic") == "mome.train":
                out[r["step"]] = r["loss"]
    except OSError:
        pass
    return out


def records(run_dir, topic):
    out = []
    try:
        for line in open(os.path.join(run_dir, "metrics.jsonl")):
            r = json.loads(line)
            if r.get("topic") == topic:
                out.append(r)
    except OSError:
        pass
    return out


class Trial:
    """One trial: its generator, what it did, its verdict."""

    def __init__(self, fault, seed, k):
        self.fault, self.k = fault, k
        self.seed = seed * 1000003 + k * 7919 + zlib.crc32(fault.encode())  # classes draw differently
        self.rng = random.Random(self.seed)
        self.ok = True
        self.notes = []
        self.stop_s = None   # seconds from the fault to the job's end, where that applies
        self.lost = 0        # checkpointed steps lost (the goal: 0)
        self.redone = 0      # steps done after the last checkpoint, recomputed after the restart

    def check(self, cond, what):
        if not cond:
            self.ok = False
            self.notes.append("FAIL: " + what)
        return cond

    def note(self, what):
        self.notes.append(what)


def run_trials(fault, body, ctx, trials, seed, only_trial=None):
    """Runs body(ctx, trial) for each trial, prints a line per trial, returns the summary row."""
    say(f"== {fault}: {trials} trial(s), seed {seed}")
    done = []
    for k in range(trials):
        if only_trial is not None and k != only_trial:
            continue
        t = Trial(fault, seed, k)
        t0 = time.monotonic()
        try:
            body(ctx, t)
        except Exception as e:  # a harness error is a failed trial, with the reason
            import traceback
            t.ok = False
            t.notes.append("harness error: %r" % e)
            if ctx.verbose:
                traceback.print_exc()
        verdict = "PASS" if t.ok else "FAIL"
        say(f"  [{fault} #{k} seed {t.seed}] {verdict} ({time.monotonic() - t0:.1f} s): " + "; ".join(t.notes))
        if not t.ok:
            say(f"  replay: tests/faults/run --only {fault} --seed {seed} --trial {k} --trials {trials} --keep -v")
        done.append(t)
    stops = [t.stop_s for t in done if t.stop_s is not None]
    return {"fault": fault, "trials": len(done), "passed": sum(t.ok for t in done),
            "max_stop_s": max(stops) if stops else None, "lost": sum(t.lost for t in done),
            "max_redone": max((t.redone for t in done), default=0), "seed": seed}


def main_single(fault, body, default_trials=2):
    """`python3 tests/faults/X.py [--trials N] [--seed S] [--trial K] [--work DIR] [--bin PATH]`."""
    import argparse
    ap = argparse.ArgumentParser(description=f"fault class {fault} (see tests/faults/run)")
    ap.add_argument("--trials", type=int, default=default_trials)
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--trial", type=int, default=None, help="replay only this trial number")
    ap.add_argument("--work", default=None)
    ap.add_argument("--bin", default=None)
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("-v", "--verbose", action="store_true")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else random.SystemRandom().randrange(1 << 31)
    ctx = Ctx(a.work, a.bin, a.keep, a.verbose)
    try:
        row = run_trials(fault, body, ctx, a.trials, seed, a.trial)
    finally:
        ctx.cleanup()
    say(json.dumps(row))
    sys.exit(0 if row["passed"] == row["trials"] else 1)
