#!/usr/bin/env bash
# `mome train` with a modular student ([modular] enabled = 1): trunks named by domain, sequences routed by the
# router classifier of the corpus, a common trunk.
#  - 1 rank with every trunk vs 2 ranks with the trunks spread over them (sequences dispatched): the per-step
#    losses agree to float summation order;
#  - a run resumed from its middle checkpoint ends with the same losses as the uninterrupted run;
#  - `mome eval` on the final checkpoint prints every routing variant, and its "routed" row is the one training
#    printed at the end; the mome.eval record carries the variants;
#  - sequential data order trains one domain per phase;
#  - bad modular configurations are refused with a message that names the problem.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
"$MOME_BIN" route train --data corpus --out corpus/router.h5 --quiet > route.log 2>&1 || { cat route.log; fail "route train"; }
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=12 train.threads=1 train.eval_batches=1 train.eval_every=6
      modular.enabled=1 modular.common=1 monitor.sgemm_probe=0)
timeout 300 mpirun -np 1 --bind-to none "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" \
  train.run_name=np1 checkpoint.every=6 > np1.log 2>&1 || { cat np1.log; fail "modular, 1 rank"; }
grep -q "model: modular, 2 expert trunks (the data's domains) + a common trunk" np1.log || { cat np1.log; fail "model line"; }
timeout 300 mpirun -np 2 --oversubscribe --bind-to none "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" \
  "${args[@]}" train.run_name=np2 > np2.log 2>&1 || { cat np2.log; fail "modular, 2 ranks"; }
timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=np1 \
  train.resume=ckpt/np1/step_00000006.h5 > resumed.log 2>&1 || { cat resumed.log; fail "modular, resumed"; }
cp runs/np1/metrics.jsonl resumed.jsonl
timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=whole \
  > whole.log 2>&1 || { cat whole.log; fail "modular, uninterrupted"; }
"$PYTHON" - <<'PY'
import json, sys
def records(path, topic):
    return [r for r in map(json.loads, open(path)) if r.get("topic") == topic]
def losses(path):
    return {r["step"]: r["loss"] for r in records(path, "mome.train")}
a, b = losses("runs/np1/metrics.jsonl"), losses("runs/np2/metrics.jsonl")
assert sorted(b) == list(range(1, 13)), sorted(b)
worst = max(abs(a[s] - b[s]) / abs(a[s]) for s in b)
print(f"1 vs 2 ranks (trunks spread), 12 steps: max relative loss difference {worst:.3e} (tolerance 1e-5)")
whole, resumed = losses("runs/whole/metrics.jsonl"), losses("resumed.jsonl")
diff = max(abs(whole[s] - resumed[s]) for s in range(7, 13))
print(f"resumed at step 6 vs uninterrupted, steps 7-12: max loss difference {diff:.3e} (must be 0)")
load = records("runs/np2/metrics.jsonl", "mome.train")[-1]["expert_load"]
assert len(load) == 1 and len(load[0]) == 2 and abs(sum(load[0]) - 1) < 1e-9, load
last = records("runs/whole/metrics.jsonl", "mome.eval")[-1]
assert {"routed", "gold", "average", "alpha", "alpha+common", "beta", "beta+common", "common"} <= set(last["variants"]), last
assert last["variants"]["routed"] == last["val_loss"], last
json.dump(last["variants"]["routed"], open("routed.json", "w"))
sys.exit(1 if worst > 1e-5 or diff != 0 else 0)
PY
[ $? -eq 0 ] || fail "modular runs disagree"
"$MOME_BIN" eval ckpt/whole/step_00000012.h5 --windows 8 > eval.txt 2>&1 || { cat eval.txt; fail "mome eval"; }
for v in routed gold average alpha alpha+common beta beta+common common; do
  awk -v v="$v" '$1 == v && $2 ~ /^[0-9]/' eval.txt | grep -q . || { cat eval.txt; fail "mome eval: no row $v"; }
done
# the routed row of `mome eval` on the same 8 windows is the training's own final evaluation (eval_batches 1 x
# batch 8)
"$PYTHON" - <<'PY' || fail "mome eval differs from the training's final evaluation"
import json
routed = json.load(open("routed.json"))
cols, row = None, None
for line in open("eval.txt"):
    f = line.split()
    if f and f[0] == "variant": cols = f[1:-1]
    if f and f[0] == "routed": row = [float(x) for x in f[1:-1]]
for name, v in zip(cols, row):
    assert abs(v - routed[name]) < 1e-4, (name, v, routed[name])
print("mome eval routed row = training's final evaluation:", dict(zip(cols, row)))
PY
# sequential order: the first half of the steps draws alpha only, the second beta only
timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" train.run_name=seq data.order=sequential \
  modular.routing=gold > seq.log 2>&1 || { cat seq.log; fail "sequential"; }
"$PYTHON" - <<'PY' || fail "sequential order"
import json
load = {r["step"]: r["expert_load"][0] for r in map(json.loads, open("runs/seq/metrics.jsonl")) if r.get("topic") == "mome.train"}
assert all(load[s] == [1.0, 0.0] for s in range(1, 7)) and all(load[s] == [0.0, 1.0] for s in range(7, 13)), load
print("sequential: steps 1-6 all alpha, 7-12 all beta")
PY
# pre-trained language experts: one dense student per domain, combined by the router; the gold row of each
# domain is that domain's student alone
for d in alpha beta; do
  timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" data.dir=corpus checkpoint.dir=ckpt train.steps=6 \
    train.threads=1 monitor.sgemm_probe=0 data.domains=$d train.run_name=ple-$d > ple-$d.log 2>&1 || { cat ple-$d.log; fail "PLE $d"; }
  "$MOME_BIN" eval ckpt/ple-$d/step_00000006.h5 --data corpus --windows 8 > ple-$d.txt 2>&1 || { cat ple-$d.txt; fail "eval $d"; }
done
"$MOME_BIN" eval --experts alpha=ckpt/ple-alpha/step_00000006.h5,beta=ckpt/ple-beta/step_00000006.h5 --windows 8 \
  > ple.txt 2>&1 || { cat ple.txt; fail "eval --experts"; }
cat ple.txt
for d in alpha beta; do
  own=$(awk -v d=$d '$1 == d {print $2}' ple-$d.txt)
  col=$([ $d = alpha ] && echo 2 || echo 3)
  gold=$(awk -v c=$col '$1 == "gold" {print $c}' ple.txt)
  [ -n "$own" ] && [ "$own" = "$gold" ] || fail "PLE gold $d: $gold, the $d student alone: $own"
done
expect_fail "expected NAME=CHECKPOINT" "$MOME_BIN" eval --experts alpha
expect_fail "enabled = 1 with \[moe\] n_experts" "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" moe.n_experts=2
expect_fail "needs a router.*nope.h5" "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" modular.router=nope.h5
expect_fail "domain 'beta' has no trunk" "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" \
  modular.routing=gold modular.experts=alpha
expect_fail "'alpha' twice" "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" modular.experts=alpha,beta,alpha
expect_fail "routing = 'gild': expected one of router\|gold\|average" "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" \
  "${args[@]}" modular.routing=gild
expect_fail "holds a modular student: generation supports GPT checkpoints" "$MOME_BIN" generate ckpt/whole/step_00000012.h5
pass "modular student: 1 vs 2 ranks, resume, eval variants, sequential order, errors"
