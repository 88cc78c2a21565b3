#!/usr/bin/env bash
# On-policy distillation (kd.on_policy, docs/distillation.md) through `mome train`:
#  - an MoE student (4 experts, top-1, dropless) with kd.on_policy = 0.5 on 1 rank and on 2 ranks (experts spread,
#    so the sampling forwards are collective): the same micro-batches go on-policy and the losses agree;
#  - the on-policy share in the records follows the coin (both kinds of step occur) and differs from off-policy;
#  - with on_policy = 1 and on_policy_tokens = seq_len - 1 every target is the student's own token: no CE at all
#    (ce is null), the loss is the KD term alone;
#  - resumed from its step-3 checkpoint, an on-policy run repeats steps 4-6 exactly;
#  - refusals: no teacher, the cache placement, a modular student, on_policy_tokens >= seq_len.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
base=(data.dir=corpus checkpoint.dir=ckpt train.threads=1 train.eval_batches=1 train.log_every=2 train.eval_every=0)
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=4 train.run_name=teacher > teacher.log 2>&1 \
  || { cat teacher.log; fail "teacher"; }
kd=("${base[@]}" train.steps=6 teacher.checkpoint=ckpt/teacher kd.on_policy_tokens=8
    moe.n_experts=4 moe.top_k=1 moe.capacity_factor=0)
run() { # run NP NAME [overrides...]
  local np=$1 name=$2; shift 2
  timeout 300 mpirun -np "$np" --oversubscribe --bind-to none "$MOME_BIN" train "$tiny" "${kd[@]}" \
    train.run_name="$name" "$@" > "$name.log" 2>&1 || { cat "$name.log"; fail "mpirun -np $np ($name)"; }
}
run 1 op1 kd.on_policy=0.5 checkpoint.every=3
run 2 op2 kd.on_policy=0.5
run 1 off kd.on_policy=0
run 1 all kd.on_policy=1 kd.on_policy_tokens=63
run 1 op1 kd.on_policy=0.5 checkpoint.every=3 train.resume=ckpt/op1/step_00000003.h5
cp runs/op1/metrics.jsonl resumed.jsonl

"$PYTHON" - <<'PY'
import json, sys
def recs(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if r.get("topic") == "mome.train"}
bad = 0
def expect(ok, msg):
    global bad
    print(("ok: " if ok else "FAIL: ") + msg)
    bad += not ok
op2 = recs("runs/op2/metrics.jsonl")
op1 = recs("resumed.jsonl")  # steps 1-3 of the first run, 4-6 of the resumed one (a repeated step keeps the later)
off, full = recs("runs/off/metrics.jsonl"), recs("runs/all/metrics.jsonl")
share1 = [op1[s]["on_policy"] for s in range(1, 7)]
share2 = [op2[s]["on_policy"] for s in range(1, 7)]
expect(share1 == share2, f"the same steps go on-policy on 1 and 2 ranks: {share1} vs {share2}")
expect(0.0 in share1 and 1.0 in share1, "both on-policy and data steps occur with on_policy = 0.5")
worst = max(abs(op1[s]["loss"] - op2[s]["loss"]) / abs(op2[s]["loss"]) for s in range(1, 7))
expect(worst < 1e-5, f"1 vs 2 ranks: max relative loss difference {worst:.2e} (tolerance 1e-5)")
on = [s for s in range(1, 7) if share1[s - 1] == 1.0 and s > 1]
if on:
    s = on[0]
    expect(abs(op1[s]["kd"] - off[s]["kd"]) > 1e-6,
           f"step {s}: the on-policy KD term {op1[s]['kd']:.5f} differs from the off-policy one {off[s]['kd']:.5f}")
expect(all(off[s]["on_policy"] is None for s in range(1, 7)), "on_policy is null when off")
expect(all(full[s]["on_policy"] == 1.0 and full[s]["ce"] is None for s in range(1, 7)),
       "on_policy = 1 with 63 of 64 tokens sampled: every step on-policy, no CE left (ce null)")
alpha, aux_coef, z_coef = 0.5, 0.01, 0.001  # kd.alpha and the [moe] defaults
gap = max(abs(full[s]["loss"] - (1 - alpha) * full[s]["kd"] - aux_coef * full[s]["aux"] - z_coef * full[s]["z_loss"])
          / full[s]["loss"] for s in range(1, 7))
expect(gap < 1e-5, f"  and the loss is (1 - alpha) * KD + the MoE regularizers (max relative gap {gap:.1e})")
sys.exit(1 if bad else 0)
PY
# resumed from step 3: steps 4-6 as in an uninterrupted run
"$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=whole kd.on_policy=0.5 > whole.log 2>&1 \
  || { cat whole.log; fail "uninterrupted run"; }
"$PYTHON" - <<'PY' || fail "on-policy resume"
import json
def recs(path):
    return {r["step"]: r for r in map(json.loads, open(path)) if r.get("topic") == "mome.train"}
w, r = recs("runs/whole/metrics.jsonl"), recs("resumed.jsonl")
diff = max(abs(w[s]["loss"] - r[s]["loss"]) for s in range(4, 7))
print(f"on-policy run resumed at step 3 vs uninterrupted, steps 4-6: max loss difference {diff:.2e} (must be 0)")
assert diff == 0
PY
expect_fail "\[kd\] on_policy = 0.5: there is no \[teacher\] checkpoint" \
  "$MOME_BIN" train "$tiny" "${base[@]}" train.run_name=bad kd.on_policy=0.5
expect_fail "on_policy = 0.5: \[teacher\] placement = cache holds targets for the corpus's samples only" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=bad kd.on_policy=0.5 teacher.placement=cache kd.teacher_topk=8
expect_fail "on_policy = 0.5: a modular student cannot sample yet" \
  "$MOME_BIN" train "$tiny" "${base[@]}" train.run_name=bad teacher.checkpoint=ckpt/teacher kd.on_policy=0.5 \
  modular.enabled=1
expect_fail "on_policy = 0.5: on_policy_tokens leaves no prefix" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=bad kd.on_policy=0.5 kd.on_policy_tokens=64
pass "on-policy distillation: 1 vs 2 ranks, no CE on sampled tokens, exact resume, refusals"
