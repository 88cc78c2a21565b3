#!/usr/bin/env bash
# Distilling an MoE teacher (kd.method, docs/distillation.md) on 2 ranks.
#  - kd_methods_check (tests/tools): ka targets are identical with the coordinator and each placements and on one
#    process; the student-aware router's steps agree between placements and keep the ranks' gates identical;
#  - through `mome train`: an MoE teacher is trained, then students distil from it with kd.method=ka (coordinator
#    and each give the same losses; the coordinator sends M = 2 target sets), all (the offline cache made with
#    method=all gives the coordinator's losses), and topk (different from ka);
#  - refusals: method=ka with a dense teacher (naming it), ka with the cache placement, `mome teacher cache` with
#    ka, a cache written for another method.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
mkdir chk
timeout 300 mpirun -np 2 --oversubscribe --bind-to none "$MOME_TOOLS_DIR/kd_methods_check" chk > chk.log 2>&1 \
  || { cat chk.log; fail "kd_methods_check on 2 ranks"; }
cat chk.log

make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
base=(data.dir=corpus checkpoint.dir=ckpt train.threads=1 train.eval_batches=1 train.log_every=2)
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=10 train.run_name=teacher moe.n_experts=4 moe.top_k=2 \
  > teacher.log 2>&1 || { cat teacher.log; fail "MoE teacher"; }
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=2 train.run_name=dense > dense.log 2>&1 \
  || { cat dense.log; fail "dense teacher"; }
kd=("${base[@]}" train.steps=6 teacher.checkpoint=ckpt/teacher)
run() { # run NP NAME [overrides...]
  local np=$1 name=$2; shift 2
  timeout 300 mpirun -np "$np" --oversubscribe --bind-to none "$MOME_BIN" train "$tiny" "${kd[@]}" \
    train.run_name="$name" "$@" > "$name.log" 2>&1 || { cat "$name.log"; fail "mpirun -np $np ($name)"; }
}
run 2 ka_coord teacher.placement=coordinator kd.method=ka kd.ka_lambda=0.5
run 2 ka_each teacher.placement=each kd.method=ka kd.ka_lambda=0.5
run 2 topk_coord teacher.placement=coordinator kd.method=topk
run 2 all_coord teacher.placement=coordinator kd.method=all kd.teacher_topk=8
"$MOME_BIN" teacher cache "$tiny" "${kd[@]}" kd.method=all kd.teacher_topk=8 teacher.cache=all.h5 > cache.log 2>&1 \
  || { cat cache.log; fail "mome teacher cache (method all)"; }
run 2 all_cache teacher.placement=cache kd.method=all kd.teacher_topk=8 teacher.cache=all.h5

# the student-aware router through mome train: the teacher's gate trained at every step (lr large enough to
# move it in 6 steps), coordinator vs each, saved with the checkpoints, resumed exactly
run 2 sar_coord teacher.placement=coordinator kd.method=sar kd.sar_lr=1e-2 checkpoint.every=3
run 2 sar_each teacher.placement=each kd.method=sar kd.sar_lr=1e-2
run 2 sar_coord teacher.placement=coordinator kd.method=sar kd.sar_lr=1e-2 train.resume=ckpt/sar_coord/step_00000003.h5
cp runs/sar_coord/metrics.jsonl sar_resumed.jsonl
run 2 sar_whole teacher.placement=coordinator kd.method=sar kd.sar_lr=1e-2
[ -f ckpt/sar_coord/teacher_router/latest ] || fail "no trained teacher router saved with the sar run"
"$MOME_BIN" eval "ckpt/sar_coord/teacher_router/$(cat ckpt/sar_coord/teacher_router/latest)" --windows 2 \
  > sar_router_eval.txt 2>&1 || { cat sar_router_eval.txt; fail "the saved teacher router does not load"; }
"$PYTHON" - <<'PY' || fail "sar through mome train"
import json
def recs(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if r.get("topic") == "mome.train"}
c, e = recs("runs/sar_coord/metrics.jsonl"), recs("runs/sar_each/metrics.jsonl")
w, r = recs("runs/sar_whole/metrics.jsonl"), recs("sar_resumed.jsonl")
worst = max(abs(c[s]["loss"] - e[s]["loss"]) / abs(c[s]["loss"]) for s in range(1, 7))
print(f"sar coordinator vs each: max relative loss difference {worst:.2e} (tolerance 1e-5)")
rl = [w[s]["teacher_router_loss"] for s in range(1, 7)]
print("teacher router loss per step:", " ".join(f"{x:.4f}" for x in rl))
diff = max(abs(w[s]["loss"] - r[s]["loss"]) for s in range(4, 7))
print(f"sar resumed at step 3 vs uninterrupted, steps 4-6: max loss difference {diff:.2e} (must be 0)")
assert worst < 1e-5 and diff == 0 and all(x is not None for x in rl)
PY
expect_fail "method = ka distils an MoE teacher, but teacher ckpt/dense/step_00000002.h5 is dense" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=bad teacher.checkpoint=ckpt/dense kd.method=ka
expect_fail "method = ka needs the teacher itself at every step" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=bad teacher.placement=cache kd.teacher_topk=8 kd.method=ka \
  teacher.cache=all.h5
expect_fail "writes one fixed set of targets per sample: \[kd\] method = ka" \
  "$MOME_BIN" teacher cache "$tiny" "${kd[@]}" kd.method=ka kd.teacher_topk=8 teacher.cache=ka.h5
expect_fail "all.h5 was made with \[kd\] method = all, this run has topk: rebuild the cache" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=bad teacher.placement=cache kd.teacher_topk=8 \
  teacher.cache=all.h5

"$PYTHON" - <<'PY'
import json, sys
def recs(run):
    return {r["step"]: r for r in map(json.loads, open(f"runs/{run}/metrics.jsonl")) if r.get("topic") == "mome.train"}
bad = 0
def rel(a, b, s):
    return abs(a[s]["loss"] - b[s]["loss"]) / abs(a[s]["loss"])
def same(x, y, what, tol=1e-6):
    global bad
    a, b = recs(x), recs(y)
    worst = max(rel(a, b, s) for s in range(1, 7))
    print(f"{what}: max relative loss difference over 6 steps {worst:.2e} (tolerance {tol:g})")
    bad += worst > tol
same("ka_coord", "ka_each", "ka M=2, coordinator vs each")
same("all_coord", "all_cache", "all top-8, coordinator vs offline cache")
ka, topk = recs("ka_coord"), recs("topk_coord")
d = max(rel(ka, topk, s) for s in range(1, 7))
print(f"ka vs topk teacher routing: max relative loss difference {d:.2e} (must be > 1e-6)")
bad += d <= 1e-6
kb, tb = ka[1]["teacher_bytes"], topk[1]["teacher_bytes"]
print(f"teacher bytes per step: ka M=2 {kb:.0f}, topk {tb:.0f}")
if kb != 2 * tb:
    print("the coordinator should send M = 2 target sets with ka"); bad += 1
print(f"ka student: loss {ka[1]['loss']:.4f} -> {ka[6]['loss']:.4f}, kd {ka[1]['kd']:.4f} -> {ka[6]['kd']:.4f}")
sys.exit(1 if bad else 0)
PY
pass "MoE teacher methods: ka/all/sar across placements, ka and all through mome train, refusals"
