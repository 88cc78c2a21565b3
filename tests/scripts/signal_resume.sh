#!/usr/bin/env bash
# Stop on a signal, then resume: a run interrupted by SIGTERM at whatever step it has reached writes a
# checkpoint and exits 75; `train.resume=auto` continues it; the final weights must be bit-identical to an
# uninterrupted run, and the per-step losses after the stop must match too.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=60 train.threads=1 train.eval_batches=1 train.log_every=1
      model.d_model=96 model.n_head=2)
"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=full > full.log 2>&1 \
  || { cat full.log; fail "uninterrupted run"; }

"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=cut > cut1.log 2>&1 &
pid=$!
# Wait until training has made progress, then interrupt.
for _ in $(seq 1 200); do grep -qE "^step +5/" cut1.log 2>/dev/null && break; sleep 0.05; done
kill -TERM $pid
rc=0; wait $pid || rc=$?
[ $rc -eq 75 ] || { cat cut1.log; fail "expected exit code 75 after SIGTERM, got $rc"; }
stop=$(sed -n 's/.*checkpointing at step \([0-9]*\) and stopping.*/\1/p' cut1.log)
[ -n "$stop" ] && [ "$stop" -lt 60 ] || { cat cut1.log; fail "no stop step found"; }
pass "stopped at step $stop with exit 75"

"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=cut train.resume=auto > cut2.log 2>&1 \
  || { cat cut2.log; fail "resumed run"; }
grep -q "resumed from .* at step $stop" cut2.log || { cat cut2.log; fail "did not resume at step $stop"; }

STOP=$stop "$PYTHON" - <<'PY'
import json, os, sys, h5py, numpy as np
stop = int(os.environ["STOP"])
def losses(run):
    out = {}
    for r in map(json.loads, open(f"runs/{run}/metrics.jsonl")):
        if r.get("topic") == "mome.train":
            out.setdefault(r["step"], []).append(r["loss"])
    return out
full, cut = losses("full"), losses("cut")
bad = [s for s in range(1, 61) if full[s] != cut[s]]
if bad: print("steps whose losses differ:", bad[:10], [(full[s], cut[s]) for s in bad[:3]])
a = h5py.File("ckpt/full/step_00000060.h5", "r"); b = h5py.File("ckpt/cut/step_00000060.h5", "r")
names = []
a.visit(lambda n: names.append(n) if isinstance(a[n], h5py.Dataset) and n.startswith(("model/", "optimizer/")) else None)
diff = [n for n in names if not np.array_equal(a[n][()], b[n][()])]
if diff: print("tensors that differ:", diff)
print(f"stopped at {stop}; compared {len(names)} tensors and 60 step losses")
sys.exit(1 if bad or diff or not names else 0)
PY
pass "signal, checkpoint, resume: identical to the uninterrupted run"
