#!/usr/bin/env bash
# Exact resume and bit-for-bit reproducibility through the command line:
#  a) 20 steps in one run (checkpoint every 10);
#  b) the step-10 checkpoint of (a) resumed for the remaining 10 steps;
#  c) (a) again from scratch.
# Per-step losses of (b) must equal those of (a) for steps 11-20, and the final weights and AdamW moments of
# (a), (b) and (c) must be bit-identical.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=20 checkpoint.every=10 checkpoint.keep=5 train.threads=2
      train.eval_batches=1 train.log_every=5)
"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=a > a.log 2>&1 || { cat a.log; fail "run a"; }
mkdir -p ckpt/b
cp ckpt/a/step_00000010.h5 ckpt/b/
echo step_00000010.h5 > ckpt/b/latest
"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=b train.resume=auto > b.log 2>&1 || { cat b.log; fail "run b"; }
grep -q "resumed from ckpt/b/step_00000010.h5 at step 10" b.log || { cat b.log; fail "run b did not resume at step 10"; }
"$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=c > c.log 2>&1 || { cat c.log; fail "run c"; }

"$PYTHON" - <<'PY'
import json, sys, h5py, numpy as np
def losses(run):
    out = {}
    for line in open(f"runs/{run}/metrics.jsonl"):
        r = json.loads(line)
        if r.get("topic") == "mome.train":
            out[r["step"]] = r["loss"]
    return out
a, b, c = losses("a"), losses("b"), losses("c")
bad = 0
assert sorted(a) == list(range(1, 21)), sorted(a)
assert sorted(b) == list(range(11, 21)), sorted(b)
for s in range(11, 21):
    if a[s] != b[s]:
        print(f"step {s}: uninterrupted loss {a[s]!r} != resumed loss {b[s]!r}"); bad += 1
for s in range(1, 21):
    if a[s] != c[s]:
        print(f"step {s}: run a loss {a[s]!r} != rerun loss {c[s]!r}"); bad += 1
fa, fb, fc = (h5py.File(f"ckpt/{r}/step_00000020.h5", "r") for r in "abc")
n = 0
def visit(name, obj):
    global bad, n
    if isinstance(obj, h5py.Dataset) and (name.startswith("model/") or name.startswith("optimizer/")):
        x = obj[()]
        for other, label in ((fb, "resumed"), (fc, "rerun")):
            y = other[name][()]
            if x.shape != y.shape or not np.array_equal(x, y):
                d = np.max(np.abs(x - y)) if x.shape == y.shape else "shape"
                print(f"{name}: {label} differs from uninterrupted (max abs diff {d})"); bad += 1
        n += 1
fa.visititems(visit)
print(f"compared {n} tensors and {len(a)} step losses")
print(f"final loss {a[20]:.6f}")
sys.exit(1 if bad or n == 0 else 0)
PY
pass "exact resume and reproducibility"
