#!/usr/bin/env bash
# launch/mpirun and launch/slurm/train.sbatch against a real SLURM on this machine.
#   1. launch/mpirun: 2 ranks stopped by SIGUSR1 through mpirun; the wrapper exits 75 and printed its command.
#   2. A private SLURM in the test's directory (munged, slurmctld, slurmd on 127.0.0.1, no cgroups), then
#      train.sbatch for 2 ranks x 1 thread under mpirun: `scancel -b -s USR1` while it trains; the checkpoint
#      at the stop step, the job requeued by the script (Restarts=1), the second run resumed from that
#      checkpoint with the step numbers continuing, then the job COMPLETED with a checkpoint at the last step.
#   3. The same cycle with MOME_LAUNCHER=srun (srun --mpi=pmix).
#   4. A job whose mome fails (missing config): FAILED, not requeued.
#   5. A job cancelled with plain scancel (srun, so the ranks exit 75 after a checkpoint): CANCELLED, not requeued.
# The daemons are stopped on exit, also on failure. Needs root (slurmd starts the jobs as their users).
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
say() { printf '[%3ss] %s\n' "$SECONDS" "$*"; }
SECONDS=0
# Everything started here is stopped on exit, failure included: the launch/mpirun run if still there, our SLURM
# jobs (a slurmstepd outlives a killed slurmd), then the daemons in reverse order of start.
daemons=()  # munged, slurmctld, slurmd: children of this shell
job_ids=()
wrap_pid=""
cleanup() {
  local rc=$? pid i
  set +e
  if [ -n "$wrap_pid" ]; then  # mpirun: SIGTERM makes it end its ranks
    kill -TERM "$wrap_pid" 2>/dev/null
    timeout 10 tail --pid="$wrap_pid" -f /dev/null
    kill -KILL "$wrap_pid" 2>/dev/null
  fi
  if [ ${#job_ids[@]} -gt 0 ] && [ -n "${SLURM_CONF:-}" ]; then
    timeout 10 scancel "${job_ids[@]}" 2>/dev/null
    for _ in $(seq 1 100); do
      [ -z "$(timeout 5 squeue -h -t RUNNING,COMPLETING -j "$(IFS=,; echo "${job_ids[*]}")" 2>/dev/null)" ] && break
      sleep 0.2
    done
  fi
  for (( i = ${#daemons[@]} - 1; i >= 0; i-- )); do
    pid=${daemons[i]}
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -KILL "$pid" 2>/dev/null
  done
  rm -rf "$tmp"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM
if [ "$(id -u)" -ne 0 ]; then echo "SKIP: needs root to run slurmd"; exit 0; fi
"$MOME_SOURCE_DIR/launch/install-deps" slurm > install.log 2>&1 || { cat install.log; fail "launch/install-deps slurm"; }
launch=$MOME_SOURCE_DIR/launch
config=$MOME_SOURCE_DIR/configs/tiny.ini
make_corpus corpus
say "corpus built"

# ---- 1. launch/mpirun passes mome's exit code through -----------------------------------------------------------
"$launch/mpirun" -n 2 -t 1 -- "$MOME_BIN" train "$config" data.dir=corpus checkpoint.dir=ckpt train.run_name=wrap \
  train.steps=5000 train.log_every=10 train.eval_every=0 > wrap.log 2>&1 &
wrap_pid=$!
for _ in $(seq 1 300); do grep -qE "^step +20/" wrap.log && break; sleep 0.1; done
grep -qE "^step +20/" wrap.log || { cat wrap.log; fail "launch/mpirun: no training progress in 30 s"; }
kill -USR1 $wrap_pid
timeout 60 tail --pid=$wrap_pid -f /dev/null || fail "launch/mpirun did not stop within 60 s"
rc=0
wait $wrap_pid || rc=$?
wrap_pid=""
grep -q "^launch/mpirun: OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 mpirun -np 2 .*--bind-to core" wrap.log \
  || { cat wrap.log; fail "launch/mpirun did not print its mpirun command"; }
[ $rc -eq 75 ] || { cat wrap.log; fail "launch/mpirun: exit code $rc after SIGUSR1, expected 75"; }
stop=$(sed -n 's/.*checkpointing at step \([0-9]*\) and stopping.*/\1/p' wrap.log | head -n 1)
[ -n "$stop" ] && [ -f "ckpt/wrap/step_$(printf %08d "$stop").h5" ] || { cat wrap.log; fail "launch/mpirun: no checkpoint"; }
say "launch/mpirun: SIGUSR1 -> checkpoint at step $stop, exit 75"

# A hostfile (several hosts) adds the daemons' TCP keepalive settings; one the user sets is left alone.
printf 'nodeA slots=1\nnodeB slots=1\n' > hosts
"$launch/mpirun" -n 2 --hostfile hosts --dry-run -- true 2> dry.log
grep -q -- "--mca oob_tcp_keepalive_time 4 --mca oob_tcp_keepalive_intvl 2 --mca oob_tcp_keepalive_probes 3" dry.log \
  || { cat dry.log; fail "launch/mpirun --hostfile: no keepalive settings"; }
OMPI_MCA_oob_tcp_keepalive_time=30 "$launch/mpirun" -n 2 --hostfile hosts --dry-run -- true 2> dry.log
! grep -q -- "oob_tcp_keepalive_time" dry.log && grep -q -- "oob_tcp_keepalive_probes 3" dry.log \
  || { cat dry.log; fail "launch/mpirun --hostfile: overrode the user's OMPI_MCA_oob_tcp_keepalive_time"; }
"$launch/mpirun" -n 2 --dry-run -- true 2> dry.log
! grep -q keepalive dry.log || { cat dry.log; fail "launch/mpirun: keepalive settings without a hostfile"; }
say "launch/mpirun --hostfile: keepalive 4 s + 3 x 2 s, a user's setting kept"

# ---- 2. a private SLURM ---------------------------------------------------------------------------------------

# munged refuses a socket in a directory not searchable by everyone, and a key readable by others.
chmod 755 "$tmp"
mkdir -p munge sock slurm/state slurm/spool
chmod 700 munge
chmod 755 sock
mungekey --create --keyfile="$tmp/munge/munge.key"
munged -F --key-file="$tmp/munge/munge.key" --socket="$tmp/sock/munge.socket" --pid-file="$tmp/munge/munged.pid" \
  --log-file="$tmp/munge/munged.log" --seed-file="$tmp/munge/munged.seed" > munge/stdout.log 2>&1 &
daemons+=($!)
for _ in $(seq 1 100); do [ -S sock/munge.socket ] && break; sleep 0.1; done
[ -S sock/munge.socket ] || { cat munge/munged.log munge/stdout.log; fail "munged did not start"; }

# Two free ports, so that nothing collides with a SLURM already on this machine.
read -r ctld_port slurmd_port < <("$PYTHON" -c '
import socket
s = [socket.socket() for _ in range(2)]
for x in s: x.bind(("127.0.0.1", 0))
print(*[x.getsockname()[1] for x in s])')
node=$(hostname -s)
# The node as slurmd sees it (CPUs, sockets, cores, threads, memory); it must not claim more than it has.
hw=$(slurmd -C | head -n 1 | sed 's/^NodeName=[^ ]* //')
export SLURM_CONF=$tmp/slurm.conf
# cred_expire=5 and sched_interval=1: a requeued job may start 5 s after it ended (the default is 120 s, then
# up to 60 s more until the scheduler's next pass). JobRequeue=0: the job is requeueable only through the
# script's own --requeue.
cat > "$SLURM_CONF" <<EOF
ClusterName=mometest
SlurmctldHost=$node(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$tmp/sock/munge.socket,cred_expire=5
StateSaveLocation=$tmp/slurm/state
SlurmdSpoolDir=$tmp/slurm/spool
SlurmctldPidFile=$tmp/slurm/slurmctld.pid
SlurmdPidFile=$tmp/slurm/slurmd.pid
SlurmctldLogFile=$tmp/slurm/slurmctld.log
SlurmdLogFile=$tmp/slurm/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/builtin
SchedulerParameters=sched_interval=1
MpiDefault=none
MailProg=/bin/true
ReturnToService=2
JobRequeue=0
MinJobAge=600
KillWait=5
InactiveLimit=0
NodeName=$node NodeAddr=127.0.0.1 $hw State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP
EOF
slurmctld -D -i > slurm/slurmctld.stdout 2>&1 &
daemons+=($!)
slurmd -D -N "$node" > slurm/slurmd.stdout 2>&1 &
daemons+=($!)
state=""
for _ in $(seq 1 150); do
  state=$(timeout 5 sinfo -h -N -o %T 2>/dev/null || true)
  [ "$state" = idle ] && break
  sleep 0.2
done
[ "$state" = idle ] || { tail -n 20 slurm/*.log slurm/*.stdout; fail "SLURM node not idle after 30 s (state '$state')"; }
say "SLURM up: slurmctld :$ctld_port, slurmd :$slurmd_port, node $node ($hw)"

# job_field JOBID KEY: one field of `scontrol show job`.
job_field() { timeout 10 scontrol show job -o "$1" | tr ' ' '\n' | sed -n "s/^$2=//p"; }
# wait_job JOBID SECONDS: until the job is in a final state; prints that state.
wait_job() {
  local s=""
  for _ in $(seq 1 $(( $2 * 5 ))); do
    s=$(job_field "$1" JobState)
    case "$s" in COMPLETED | FAILED | CANCELLED | TIMEOUT | NODE_FAIL | OUT_OF_MEMORY | BOOT_FAIL) break ;; esac
    sleep 0.2
  done
  echo "$s"
}

# cycle NAME LAUNCHER: one job stopped by USR1, requeued by the script, resumed, completed; every check.
steps=800
cycle() {
  local name=$1 launcher=$2 out jid stop s
  out=$tmp/$name.out
  jid=$(MOME_BIN=$MOME_BIN MOME_LAUNCHER=$launcher timeout 20 sbatch --parsable --output="$out" \
    "$launch/slurm/train.sbatch" "$config" data.dir=corpus checkpoint.dir=ckpt train.run_name="$name" \
    train.steps=$steps train.log_every=10 train.eval_every=100 train.eval_batches=1) || fail "sbatch"
  job_ids+=("$jid")
  for _ in $(seq 1 300); do grep -qE "^step +20/" "$out" 2>/dev/null && break; sleep 0.1; done
  grep -qE "^step +20/" "$out" 2>/dev/null || { cat "$out"; fail "$name: job $jid not training after 30 s"; }
  say "$name: job $jid training; scancel -b -s USR1 $jid"
  timeout 10 scancel -b -s USR1 "$jid" || fail "scancel"
  s=$(wait_job "$jid" 90)
  say "$name: job $jid $s, Restarts=$(job_field "$jid" Restarts)"
  [ "$s" = COMPLETED ] || { cat "$out"; timeout 10 scontrol show job "$jid"; fail "$name: job $jid ended $s"; }

  # The first run: stopped at a step before the end, with a checkpoint there, then requeued by the script.
  stop=$(sed -n 's/.*checkpointing at step \([0-9]*\) and stopping.*/\1/p' "$out" | head -n 1)
  [ -n "$stop" ] && [ "$stop" -lt $steps ] || { cat "$out"; fail "$name: no stop before step $steps"; }
  [ -f "ckpt/$name/step_$(printf %08d "$stop").h5" ] || { cat "$out"; fail "$name: no checkpoint at step $stop"; }
  grep -q "train.sbatch: mome stopped after a checkpoint (exit 75) .*requeueing job $jid" "$out" \
    || { cat "$out"; fail "$name: the script did not requeue on exit 75"; }
  [ "$(job_field "$jid" Restarts)" = 1 ] || { timeout 10 scontrol show job "$jid"; fail "$name: Restarts != 1"; }
  [ "$(job_field "$jid" ExitCode)" = 0:0 ] || { timeout 10 scontrol show job "$jid"; fail "$name: ExitCode"; }
  # The second run: the same job, restart 1, resumed from that checkpoint, steps after it only, to the end.
  sed -n "/^train.sbatch: job $jid restart 1 /,\$p" "$out" > "$name.run2"
  [ -s "$name.run2" ] || { cat "$out"; fail "$name: no second run in the job's log"; }
  grep -q "resumed from ckpt/$name/step_$(printf %08d "$stop").h5 at step $stop" "$name.run2" \
    || { cat "$out"; fail "$name: the second run did not resume from step $stop"; }
  awk -v stop="$stop" '/^step +[0-9]+\// { split($2, a, "/"); n++; if (a[1] + 0 <= stop) bad++ }
    END { exit (n > 0 && !bad) ? 0 : 1 }' "$name.run2" || { cat "$out"; fail "$name: second run steps not after $stop"; }
  grep -q "train.sbatch: training finished" "$name.run2" || { cat "$out"; fail "$name: no clean finish"; }
  [ -f "ckpt/$name/step_$(printf %08d $steps).h5" ] && [ "$(cat "ckpt/$name/latest")" = "step_$(printf %08d $steps).h5" ] \
    || { ls "ckpt/$name"; fail "$name: no final checkpoint at step $steps"; }
  # Every step trained exactly once over the two runs.
  STEPS=$steps "$PYTHON" - "runs/$name/metrics.jsonl" <<'PY' || { cat "$out"; fail "$name: step records"; }
import json, os, sys
steps = [r["step"] for r in map(json.loads, open(sys.argv[1]))
         if r.get("event") == "train" or r.get("topic") == "mome.train"]
want = list(range(1, int(os.environ["STEPS"]) + 1))
if sorted(steps) != want:
    dup = sorted({s for s in steps if steps.count(s) > 1})
    print(f"{len(steps)} step records; missing {sorted(set(want) - set(steps))[:10]}, repeated {dup[:10]}")
    sys.exit(1)
PY
  say "$name: stopped at step $stop (checkpoint), requeued (Restarts=1), resumed at $stop, completed at $steps"
}

cycle sbatch_mpirun mpirun
cycle sbatch_srun srun

# ---- 4. a failure is not requeued (config and overrides given through the environment this time) ----------------
jid=$(MOME_CONFIG=$tmp/no-such-config.ini MOME_OVERRIDES="train.steps=3 train.threads=1" timeout 20 \
  sbatch --parsable --output="$tmp/bad.out" "$launch/slurm/train.sbatch") || fail "sbatch"
job_ids+=("$jid")
s=$(wait_job "$jid" 60)
[ "$s" = FAILED ] && [ "$(job_field "$jid" Restarts)" = 0 ] \
  || { cat bad.out; timeout 10 scontrol show job "$jid"; fail "a failing job ended $s, expected FAILED without restart"; }
grep -q "train $tmp/no-such-config.ini train.steps=3 train.threads=1 train.resume=auto" bad.out \
  || { cat bad.out; fail "MOME_CONFIG / MOME_OVERRIDES not used"; }
grep -q "train.sbatch: mpirun exited with code [1-9]" bad.out || { cat bad.out; fail "no failure message"; }
say "a failing mome: job $jid FAILED (ExitCode=$(job_field "$jid" ExitCode)), not requeued"
# ---- 5. a job cancelled by the user is not requeued, even though mome exits 75 -----------------------------------
# Plain scancel sends SIGTERM to every process of the job; under srun the ranks get SLURM's KillWait to checkpoint
# and all exit 75, which the script must not turn into a requeue.
out=$tmp/cancel.out
jid=$(MOME_LAUNCHER=srun timeout 20 sbatch --parsable --output="$out" "$launch/slurm/train.sbatch" "$config" \
  data.dir=corpus checkpoint.dir=ckpt train.run_name=cancel train.steps=5000 train.log_every=10 train.eval_every=0) \
  || fail "sbatch"
job_ids+=("$jid")
for _ in $(seq 1 300); do grep -qE "^step +20/" "$out" 2>/dev/null && break; sleep 0.1; done
grep -qE "^step +20/" "$out" 2>/dev/null || { cat "$out"; fail "cancel: job $jid not training after 30 s"; }
timeout 10 scancel "$jid" || fail "scancel"
s=$(wait_job "$jid" 60)
[ "$s" = CANCELLED ] && [ "$(job_field "$jid" Restarts)" = 0 ] \
  || { cat "$out"; timeout 10 scontrol show job "$jid"; fail "a cancelled job ended $s, expected CANCELLED without restart"; }
grep -q "not requeueing" "$out" && [ -f ckpt/cancel/latest ] || { cat "$out"; fail "cancel: no checkpoint, or no message"; }
say "scancel $jid: CANCELLED, not requeued, checkpoint ckpt/cancel/$(cat ckpt/cancel/latest)"
pass "launch/mpirun and train.sbatch on SLURM: stop, checkpoint, requeue, resume, complete (${SECONDS} s)"
