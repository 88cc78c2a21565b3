#!/usr/bin/env bash
# `mome train` under mpirun: 1 and 2 ranks run the same global batch; the per-step losses must agree to
# float summation order (relative 1e-5), and both must write a checkpoint. Gradient accumulation is checked the
# same way: batch 4 x 2 micro-batches draws the same samples as batch 8 x 1 and must give the same losses.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=10 train.threads=1 train.eval_batches=1)
timeout 300 mpirun -np 1 --bind-to none "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" \
  train.run_name=np1 > np1.log 2>&1 || { cat np1.log; fail "mpirun -np 1"; }
timeout 300 mpirun -np 2 --oversubscribe --bind-to none "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" \
  "${args[@]}" train.run_name=np2 > np2.log 2>&1 || { cat np2.log; fail "mpirun -np 2"; }
timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=accum \
  train.batch_size=4 train.grad_accum=2 > accum.log 2>&1 || { cat accum.log; fail "grad_accum=2"; }
"$PYTHON" - <<'PY'
import json, sys
def losses(run):
    return {r["step"]: r["loss"] for r in map(json.loads, open(f"runs/{run}/metrics.jsonl")) if r.get("topic") == "mome.train"}
a = losses("np1")
bad = 0
for run, what in (("np2", "1 vs 2 ranks"), ("accum", "batch 8 vs 4 x 2 accumulation")):
    b = losses(run)
    assert sorted(a) == sorted(b) == list(range(1, 11)), (sorted(a), sorted(b))
    worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in a)
    print(f"max relative loss difference {what} over 10 steps: {worst:.3e} (tolerance 1e-5)")
    bad += worst > 1e-5
sys.exit(1 if bad else 0)
PY
[ -f ckpt/np2/step_00000010.h5 ] || fail "no checkpoint from the 2-rank run"
pass "mpirun 1 vs 2 ranks"
