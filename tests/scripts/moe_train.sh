#!/usr/bin/env bash
# MoE students through the command line: a token-level MoE model (4 experts, top-1, capacity 1.25, and top-2
# dropless with a shared expert) trains, logs its aux loss, dropped fraction and per-layer expert loads, writes
# every expert by global id into the checkpoint, and resumes exactly.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=12 checkpoint.every=6 checkpoint.keep=5 train.threads=2
      train.eval_batches=1 train.log_every=6 moe.n_experts=4 moe.top_k=1 moe.capacity_factor=1.25)
"$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=m1 > m1.log 2>&1 || { cat m1.log; fail "MoE run"; }
grep -q "aux" m1.log || { cat m1.log; fail "no aux loss in the log"; }
mkdir -p ckpt/m1r && cp ckpt/m1/step_00000006.h5 ckpt/m1r/ && echo step_00000006.h5 > ckpt/m1r/latest
"$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=m1r train.resume=auto > m1r.log 2>&1 || { cat m1r.log; fail "MoE resume"; }
"$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=m2 moe.top_k=2 moe.capacity_factor=0 moe.shared_d_ff=64 \
  > m2.log 2>&1 || { cat m2.log; fail "top-2 dropless shared-expert run"; }

"$PYTHON" - <<'PY'
import json, sys, h5py, numpy as np
def recs(run):
    return [r for r in map(json.loads, open(f"runs/{run}/metrics.jsonl")) if r.get("topic") == "mome.train"]
bad = 0
for run, dropless in (("m1", False), ("m2", True)):
    rs = recs(run)
    assert len(rs) == 12, len(rs)
    for r in rs:
        load = np.array(r["expert_load"])
        if load.shape != (2, 4) or abs(load.sum(axis=1) - 1).max() > 1e-6:
            print(f"{run} step {r['step']}: expert_load {load.tolist()} is not (layers, experts) summing to 1"); bad += 1
        if dropless and r["dropped_frac"] != 0:
            print(f"{run}: dropless run dropped {r['dropped_frac']}"); bad += 1
        if abs(r["loss"] - (r["ce"] + 0.01 * r["aux"] + 0.001 * r["z_loss"])) > 1e-6 * abs(r["loss"]):
            print(f"{run} step {r['step']}: loss != ce + 0.01 aux + 0.001 z"); bad += 1
    print(f"{run}: final loss {rs[-1]['loss']:.4f}, aux {rs[-1]['aux']:.4f}, dropped {rs[-1]['dropped_frac']:.3f}")
f = h5py.File("ckpt/m1/step_00000012.h5", "r")
shape = f["model/blocks/experts_fc_w"].shape
if shape != (2, 4, 256, 64):
    print("experts_fc_w shape", shape, "expected (2, 4, 256, 64)"); bad += 1
if "blocks/fc_w" in f["model"]:
    print("an MoE checkpoint should not hold the dense MLP"); bad += 1
a = {r["step"]: r["loss"] for r in recs("m1")}
b = {r["step"]: r["loss"] for r in recs("m1r")}
for s in range(7, 13):
    if a[s] != b[s]:
        print(f"step {s}: {a[s]!r} uninterrupted vs {b[s]!r} resumed"); bad += 1
g = h5py.File("ckpt/m1r/step_00000012.h5", "r")
names = []
f.visit(lambda n: names.append(n) if isinstance(f[n], h5py.Dataset) and n.startswith(("model/", "optimizer/")) else None)
for n in names:
    if not np.array_equal(f[n][()], g[n][()]):
        print("resumed tensor differs:", n); bad += 1
print(f"checked {len(names)} tensors; experts_fc_w {shape}")
sys.exit(1 if bad else 0)
PY
pass "MoE training, logging, checkpoint layout and exact resume"
