#!/usr/bin/env bash
# `mome analyze gates` (docs/analysis.md): the gate statistics of a trained MoE model.
#  - a dropless top-2 model of 4 experts with a shared expert (tiny config, 30 steps): the JSON's numbers, overall
#    and per domain, against tests/python/gates_check.py, which re-runs the model from the checkpoint's weights in
#    float64 torch over the validation windows read from the corpus and recomputes every number from the raw gate
#    probabilities; plus their invariants; the printed table agrees with the JSON; the SVG parses and has one
#    line per layer; the same numbers from a run directory and under mpirun -np 2;
#  - a top-1 model with capacity 1.25 over every validation window: the invariants, dropped assignments;
#  - refusals: a dense checkpoint, a modular student, a missing file, a file that is no checkpoint, a run directory
#    without checkpoints, bad options, an unwritable --json.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
export OMP_NUM_THREADS=1 # one thread per process: on a busy machine two spinning threads per core run 10x slower
make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
base=(data.dir=corpus checkpoint.dir=ckpt train.threads=1 train.eval_batches=1 train.log_every=10)
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=30 train.run_name=moe moe.n_experts=4 moe.top_k=2 \
  moe.capacity_factor=0 moe.shared_d_ff=32 > moe.log 2>&1 || { cat moe.log; fail "training the top-2 MoE model"; }
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=10 train.run_name=top1 moe.n_experts=4 moe.top_k=1 \
  moe.capacity_factor=1.25 > top1.log 2>&1 || { cat top1.log; fail "training the top-1 MoE model"; }
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=2 train.run_name=dense > dense.log 2>&1 \
  || { cat dense.log; fail "training the dense model"; }
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=2 train.run_name=modular modular.enabled=1 \
  modular.experts=alpha,beta modular.routing=gold > modular.log 2>&1 || { cat modular.log; fail "a modular student"; }

ck=ckpt/moe/step_00000030.h5
"$MOME_BIN" analyze gates "$ck" --windows 24 --json moe.json --plot moe.svg > moe.txt 2> moe.err \
  || { cat moe.txt moe.err; fail "mome analyze gates"; }
cat moe.txt
export PYTHONPATH="$MOME_SOURCE_DIR/tests/python"
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/gates_check.py" moe.json "$ck" corpus \
  || fail "the gate statistics differ from the float64 recomputation"
"$MOME_BIN" analyze gates ckpt/moe --windows 24 --json dir.json > dir.txt 2>&1 \
  || { cat dir.txt; fail "a run directory"; }
timeout 120 mpirun -np 2 --oversubscribe --bind-to none "$MOME_BIN" analyze gates "$ck" --windows 24 \
  --json np2.json > np2.txt 2>&1 || { cat np2.txt; fail "mome analyze gates under mpirun -np 2"; }
"$PYTHON" - <<'PY' || fail "table, run directory, ranks or figure"
import json, re, sys, xml.etree.ElementTree as ET
import numpy as np
g = json.load(open("moe.json"))
bad = []
# the table: header, then one row per layer with the rank means, activated and non-activated mass
txt = open("moe.txt").read().splitlines()
if not txt[0].startswith("gates of ckpt/moe/step_00000030.h5: 2 layers, E = 4 experts, top_k = 2"):
    bad.append(f"header: {txt[0]!r}")
if not txt[1].startswith(f"{g['tokens']} tokens (alpha {g['per_domain']['alpha']['tokens']}, beta "):
    bad.append(f"tokens line: {txt[1]!r}")
head = next(i for i, s in enumerate(txt) if s.split()[:1] == ["layer"])
if txt[head].split() != ["layer", "rank1", "rank2", "rank3", "rank4", "activated", "non-activated"]:
    bad.append(f"table header: {txt[head]!r}")
for l in range(2):
    row = [float(x) for x in txt[head + 1 + l].split()]
    y = g["overall"]["layers"][l]
    want = [l] + y["sorted_mean"] + [y["activated"], y["non_activated"]]
    if len(row) != len(want) or np.max(np.abs(np.array(row) - want)) > 5.1e-5:
        bad.append(f"table row {l} {row} != JSON {want}")
# a run directory gives its latest checkpoint; two ranks the same numbers (sums in another order)
d = json.load(open("dir.json"))
if d["overall"] != g["overall"]:
    bad.append("ckpt/moe (its latest) gives other numbers than its checkpoint file")
# Two ranks run batches of 4 windows instead of 8: float32 sums in another order, a few 1e-9 on the means;
# a near-tie could route a token differently: one assignment
n = json.load(open("np2.json"))
def flat(x, keys):
    return np.array([v for y in x["layers"] for k in keys for v in np.atleast_1d(y[k])])
for part in ["overall"] + g["domains"]:
    a = g["overall"] if part == "overall" else g["per_domain"][part]
    b = n["overall"] if part == "overall" else n["per_domain"][part]
    diff = np.max(np.abs(flat(a, ("sorted_mean", "expert_prob", "activated")) -
                         flat(b, ("sorted_mean", "expert_prob", "activated"))))
    droute = np.max(np.abs(flat(a, ("expert_routed",)) - flat(b, ("expert_routed",)))) * a["tokens"] * 2
    print(f"mpirun -np 2 vs one process, {part}: max difference of the means {diff:.1e} (tolerance 1e-7), "
          f"routed assignments {droute:.0f} (tolerance 1), tokens {b['tokens']} vs {a['tokens']}")
    if diff > 1e-7 or droute > 1.01 or a["tokens"] != b["tokens"]:
        bad.append(f"{part}: 2 ranks differ from one by {diff} (means), {droute} (assignments)")
# the figure: well-formed SVG, one line of rank means per layer, two bar segments per layer
svg = ET.parse("moe.svg").getroot()
ns = "{http://www.w3.org/2000/svg}"
lines = svg.findall(f"{ns}polyline")
if len(lines) != 2 or any(len(p.get("points").split()) != 4 for p in lines):
    bad.append(f"svg: {len(lines)} polylines, expected 2 of 4 points")
if len([r for r in svg.findall(f"{ns}rect") if r.get("fill") in ("#4e79a7", "#f28e2b")]) < 4:
    bad.append("svg: missing the stacked bars")
print("\n".join(bad) or "table, run directory, 2 ranks and figure agree")
sys.exit(1 if bad else 0)
PY
ls | grep -q '\.tmp\.' && fail "a temporary file was left behind: $(ls | grep '\.tmp\.')"

# capacity 1.25, top-1, every window: invariants, and some assignments dropped
"$MOME_BIN" analyze gates ckpt/top1 --json top1.json > top1.txt 2>&1 || { cat top1.txt; fail "the top-1 model"; }
grep -q "every validation window" top1.txt || { cat top1.txt; fail "no 'every validation window' in the header"; }
"$PYTHON" "$MOME_SOURCE_DIR/tests/python/gates_check.py" top1.json || fail "invariants of the top-1 model"
"$PYTHON" -c '
import json, sys
g = json.load(open("top1.json"))
d = [y["dropped"] for y in g["overall"]["layers"]]
print("top-1, capacity 1.25:", g["tokens"], "tokens, dropped per layer", d)
sys.exit(0 if g["windows"] == 0 and g["top_k"] == 1 and max(d) > 0 else 1)' || fail "top-1 model: no drops or header"

# refusals
expect_fail "ckpt/dense/step_00000002.h5 holds a dense GPT \(\[moe\] n_experts = 0\)" \
  "$MOME_BIN" analyze gates ckpt/dense
expect_fail "ckpt/modular/step_00000002.h5 holds a 'modular' model \(a modular student" \
  "$MOME_BIN" analyze gates ckpt/modular
expect_fail "nothing.h5: no such checkpoint" "$MOME_BIN" analyze gates nothing.h5
expect_fail "corpus/tokens/alpha.h5: not a mome checkpoint" "$MOME_BIN" analyze gates corpus/tokens/alpha.h5
mkdir empty_run
expect_fail "empty_run: no checkpoint yet" "$MOME_BIN" analyze gates empty_run
expect_fail "--windows 0: expected a positive integer" "$MOME_BIN" analyze gates "$ck" --windows 0
expect_fail "unknown analysis 'experts'" "$MOME_BIN" analyze experts "$ck"
expect_fail "unknown or incomplete option '--plot'" "$MOME_BIN" analyze gates "$ck" --plot
expect_fail "no/such/dir/g.json" "$MOME_BIN" analyze gates "$ck" --windows 1 --json no/such/dir/g.json
"$MOME_BIN" analyze gates --help | grep -q "usage: mome analyze gates CHECKPOINT" || fail "analyze gates --help"
"$MOME_BIN" --help | grep -q "analyze gates CHECKPOINT" || fail "analyze is not listed in mome --help"
pass "mome analyze gates: numbers against a float64 recomputation, invariants, table, JSON, SVG, ranks, refusals"
