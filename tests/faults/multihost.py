#!/usr/bin/python3
"""multihost — two "hosts" as Linux network namespaces joined by a veth pair, ranks talking TCP.

mpirun starts in namespace A and reaches namespace B through an rsh agent that runs the Open MPI daemon with
`ip netns exec B` (written to the scratch directory); `--mca pml ob1 --mca btl tcp,self` with
btl_tcp_if_include / oob_tcp_if_include on the veth subnet, so no byte goes through shared memory, even
between two ranks of one host. Per trial (1 or 2 ranks per host, the 4 MoE experts spread over all ranks):
  1. the uninterrupted run on two hosts must give the same per-step losses and a bit-identical end state as the
     same ranks on one host over shared memory;
  2. host B's link is cut (`ip link set down`) at a random step: the job must end within 30 s on both sides
     (Open MPI's daemons notice the lost connection by TCP keepalive: the oob_tcp_keepalive_* settings that
     launch/mpirun adds for a hostfile, 4 s + 3 x 2 s; with Open MPI's defaults, 300 s + 9 x 20 s, the job hangs
     for about 8 minutes);
  3. the run resumes on host A alone with half the ranks (resume=auto: every expert read from the checkpoint and
     resharded over the remaining ranks), from the last complete checkpoint, and must end bit-identical to the
     one-host run that does the same (the one-host run's checkpoint at that step resumed on half the ranks).
Needs root and `ip netns` (iproute2); skipped with the reason otherwise.
"""
import os
import re
import shutil
import subprocess
import sys
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import faultlib as fl  # noqa: E402

FAULT = "multihost"
STOP_LIMIT = 30.0
LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "launch", "mpirun")


def launcher_keepalive(work):
    """The oob_tcp_keepalive_* settings that launch/mpirun gives a multi-host job (read from its --dry-run with a
    hostfile), so that this test checks what users get rather than settings of its own."""
    hostfile = os.path.join(work, "keepalive-hosts")
    with open(hostfile, "w") as f:
        f.write("hostA slots=1\nhostB slots=1\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OMPI_MCA_oob_tcp_keepalive")}
    env.pop("MOME_MPIRUN_ARGS", None)
    r = subprocess.run([LAUNCHER, "-n", "2", "--hostfile", hostfile, "--dry-run", "--", "true"],
                       capture_output=True, text=True, env=env, check=True)
    found = re.findall(r"--mca (oob_tcp_keepalive_\w+) (\S+)", r.stderr)
    if len(found) != 3:
        raise RuntimeError(f"launch/mpirun --hostfile sets {found}, expected the three oob_tcp_keepalive_* settings")
    return [a for k, v in found for a in ("--mca", k, v)]


def ip(*args, check=True):
    return subprocess.run(["ip"] + list(args), capture_output=True, text=True, check=check)


class Hosts:
    """Two network namespaces A and B, a veth pair between them, an rsh agent."""

    def __init__(self, work, rng):
        tag = "%04x" % (os.getpid() & 0xffff)
        self.ns = [f"momef{tag}a", f"momef{tag}b"]
        self.dev = [f"mf{tag}a", f"mf{tag}b"]
        self.net = rng.randrange(1, 250)
        self.addr = [f"10.213.{self.net}.1", f"10.213.{self.net}.2"]
        self.cidr = f"10.213.{self.net}.0/24"
        self.up = False
        for n in self.ns:
            ip("netns", "add", n)
        self.up = True
        ip("link", "add", self.dev[0], "type", "veth", "peer", "name", self.dev[1])
        for i in range(2):
            ip("link", "set", self.dev[i], "netns", self.ns[i])
            ip("-n", self.ns[i], "addr", "add", self.addr[i] + "/24", "dev", self.dev[i])
            ip("-n", self.ns[i], "link", "set", "lo", "up")
            ip("-n", self.ns[i], "link", "set", self.dev[i], "up")
        self.agent = os.path.join(work, "netns-agent")
        with open(self.agent, "w") as f:
            f.write("#!/bin/sh\n# rsh agent for mpirun: the daemon of 'host' ADDRESS runs in that address's network "
                    "namespace.\nhost=$1; shift\ncase \"$host\" in\n")
            for a, n in zip(self.addr, self.ns):
                f.write(f"  {a}) ns={n} ;;\n")
            f.write("  *) echo \"netns-agent: unknown host $host\" >&2; exit 1 ;;\nesac\n"
                    "exec ip netns exec \"$ns\" /bin/sh -c \"$*\"\n")
        os.chmod(self.agent, 0o755)
        self.keepalive = launcher_keepalive(work)

    def mpi(self, per_host, hosts=2):
        return (["--host", ",".join(f"{a}:{per_host}" for a in self.addr[:hosts]), "--mca", "plm_rsh_agent",
                 self.agent, "--mca", "pml", "ob1", "--mca", "btl", "tcp,self", "--mca", "btl_tcp_if_include",
                 self.cidr, "--mca", "oob_tcp_if_include", self.cidr, "-x", "OMPI_ALLOW_RUN_AS_ROOT", "-x",
                 "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM"] + self.keepalive)

    def prefix(self):
        return ["ip", "netns", "exec", self.ns[0]]

    def link(self, up):
        ip("-n", self.ns[1], "link", "set", self.dev[1], "up" if up else "down")

    def close(self):
        if self.up:
            for n in self.ns:
                ip("netns", "del", n, check=False)  # takes the veth pair with it
            self.up = False


def skip_reason(ctx):
    probe = "momefprobe%d" % (os.getpid() & 0xffff)
    r = ip("netns", "add", probe, check=False) if shutil.which("ip") else None
    if r is None:
        return "no `ip` command (Debian package iproute2)"
    if r.returncode != 0:
        return "ip netns add is not permitted here (%s)" % r.stderr.strip()
    ip("netns", "del", probe, check=False)
    return None


def trial(ctx, t, hosts):
    per = [1, 2][t.k % 2]
    world = 2 * per
    cut_after = t.rng.randint(fl.EVERY + 1, fl.STEPS - 6)  # after the first checkpoint: a resharded resume
    hosts.link(True)
    one = ctx.reference(world)
    two = ctx.reference(world, mpi_extra=hosts.mpi(per), prefix=hosts.prefix(), label=" on 2 hosts over TCP")
    # 1. the same numbers
    l1, l2 = fl.step_losses(os.path.join(one, "runs", "ref")), fl.step_losses(os.path.join(two, "runs", "ref"))
    final = "step_%08d.h5" % fl.STEPS
    diff = fl.compare_ckpt(os.path.join(one, "ckpt", "ref", final), os.path.join(two, "ckpt", "ref", final))
    t.check(l1 == l2 and len(l1) == fl.STEPS, "per-step losses differ between one host and two hosts")
    t.check(not diff, f"end states differ between one host and two hosts: {diff[:4]}")
    # 2. the cut
    d = ctx.trial_dir(f"{FAULT}{t.k}")
    ckdir = os.path.join(d, "ckpt", "cut")
    tag = uuid.uuid4().hex
    log = os.path.join(d, "cut.log")
    p = ctx.start(ctx.train_cmd(world, "cut", "ckpt", mpi_extra=hosts.mpi(per), prefix=hosts.prefix(), tag=tag),
                  log, d, {"MOME_FAULT_TAG": tag})
    fl.wait_for(lambda: p.poll() is not None or fl.last_step(log) >= cut_after, 240, 0.005)
    if p.poll() is not None:
        t.check(False, "the run ended before the cut: " + fl.tail(log, 4).replace("\n", " | "))
        p.logfile.close()
        return
    at = fl.last_step(log)
    hosts.link(False)
    rc, secs = fl.await_end(p, t)
    left = fl.wait_for(lambda: not fl.leftovers(tag), 15) or fl.leftovers(tag)
    for pid in (left if left is not True else {}).values():  # do not leave them spinning
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
    ck = fl.latest_step(ckdir)
    lost_msg = "lost communication" in fl.read(log)
    t.note(f"{per} rank(s) per host, host B cut off after step {at}: job ended in {secs:.2f} s with exit {rc}"
           + (" (Open MPI: lost communication with a remote daemon)" if lost_msg else "") + f"; latest {ck}")
    t.check(rc is not None and secs <= STOP_LIMIT, f"the job took {secs:.1f} s to end (limit {STOP_LIMIT:.0f} s)")
    t.check(left is True, f"processes left behind on a host: {left}")
    # 3. resume on host A alone, half the ranks
    log2 = os.path.join(d, "resume.log")
    rc2, _ = ctx.run(ctx.train_cmd(per, "cut", "ckpt", ["train.resume=auto"], mpi_extra=hosts.mpi(per, hosts=1),
                                   prefix=hosts.prefix()), log2, d)
    text = fl.read(log2)
    m = re.search(r"resumed from \S+ at step (\d+)", text)
    start = int(m.group(1)) if m else 0
    t.check(rc2 == 0, "the resumed run failed: " + fl.tail(log2, 4).replace("\n", " | "))
    t.check(start == (ck or 0), f"resumed at step {start}, latest was {ck}")
    t.check(start == 0 or "continuing on %d" % per in text, "no 'checkpoint written by N ranks, continuing on M' (resharding)")
    t.redone = at - start
    t.lost = int(start != (ck or 0))
    if rc2 != 0:
        return
    # the same path on one host: the uninterrupted run's checkpoint at `start`, resumed on `per` ranks
    cd = ctx.trial_dir(f"{FAULT}{t.k}_onehost")
    os.makedirs(os.path.join(cd, "ckpt", "cut"))
    if start:
        shutil.copy(os.path.join(one, "ckpt", "ref", "step_%08d.h5" % start), os.path.join(cd, "ckpt", "cut"))
        with open(os.path.join(cd, "ckpt", "cut", "latest"), "w") as f:
            f.write("step_%08d.h5\n" % start)
    rc3, _ = ctx.run(ctx.train_cmd(per, "cut", "ckpt", ["train.resume=auto"]), os.path.join(cd, "resume.log"), cd)
    diff = fl.compare_ckpt(os.path.join(cd, "ckpt", "cut", final), os.path.join(ckdir, final)) if rc3 == 0 else ["-"]
    t.check(not diff, f"the resumed end state differs from the one-host run doing the same: {diff[:4]}")
    t.lost |= int(bool(diff))
    dev = fl.close_ckpt(os.path.join(one, "ckpt", "ref", final), os.path.join(ckdir, final))
    if not diff:
        t.note(f"resumed on host A with {per} rank(s) at step {start} (experts resharded {world} -> {per} ranks), "
               f"end state bit-identical to the one-host run on the same path; vs the uninterrupted {world}-rank "
               f"run: largest weight difference {dev:.1e} of the tensor's scale")


def run(ctx, trials, seed, only=None):
    why = skip_reason(ctx)
    if why:
        fl.say(f"== {FAULT}: SKIPPED: {why}")
        return {"fault": FAULT, "trials": 0, "passed": 0, "skipped": why}
    import random
    hosts = Hosts(ctx.work, random.Random(seed))
    try:
        fl.say(f"  hosts: namespaces {hosts.ns[0]} ({hosts.addr[0]}) and {hosts.ns[1]} ({hosts.addr[1]}), veth pair")
        return fl.run_trials(FAULT, lambda c, t: trial(c, t, hosts), ctx, trials, seed, only)
    finally:
        hosts.close()


if __name__ == "__main__":
    import random
    _hosts = []

    def body(c, t):
        if not _hosts:
            _hosts.append(Hosts(c.work, random.Random(t.seed)))
        trial(c, t, _hosts[0])
    try:
        fl.main_single(FAULT, body)
    finally:
        for h in _hosts:
            h.close()
