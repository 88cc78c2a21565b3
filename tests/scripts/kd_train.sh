#!/usr/bin/env bash
# Distillation through the command line: a small teacher is trained, then students learn from it.
#  - coordinator placement (rank 0 runs the teacher and scatters targets), each-rank placement and the offline
#    cache (`mome teacher cache`) give the same losses, for full logits and for top-k targets, on 2 ranks; top-k
#    sends far fewer bytes; a cache made for another seed is refused;
#  - adaptive alpha and the alternating schedule run, log alpha/ce/kd, and resume exactly (alpha state in the
#    checkpoint);
#  - an MoE student with its experts spread over 2 ranks distills from the dense teacher;
#  - a teacher with another tokenizer is refused, naming both.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
base=(data.dir=corpus checkpoint.dir=ckpt train.threads=1 train.eval_batches=1 train.log_every=5)
"$MOME_BIN" train "$tiny" "${base[@]}" train.steps=20 train.run_name=teacher > teacher.log 2>&1 || { cat teacher.log; fail "teacher"; }
kd=("${base[@]}" train.steps=10 teacher.checkpoint=ckpt/teacher)
run() { # run NP NAME [overrides...]
  local np=$1 name=$2; shift 2
  timeout 300 mpirun -np "$np" --oversubscribe --bind-to none "$MOME_BIN" train "$tiny" "${kd[@]}" \
    train.run_name="$name" "$@" > "$name.log" 2>&1 || { cat "$name.log"; fail "mpirun -np $np ($name)"; }
}
run 2 coord_full teacher.placement=coordinator
run 2 each_full teacher.placement=each
run 2 coord_top teacher.placement=coordinator kd.teacher_topk=8
run 2 each_top teacher.placement=each kd.teacher_topk=8
"$MOME_BIN" teacher cache "$tiny" "${kd[@]}" kd.teacher_topk=8 teacher.cache=cache.h5 > cache.log 2>&1 \
  || { cat cache.log; fail "mome teacher cache"; }
run 2 cache_top teacher.placement=cache kd.teacher_topk=8 teacher.cache=cache.h5
expect_fail "cache.h5 was made with seed = 1337, this run has 7" \
  "$MOME_BIN" train "$tiny" "${kd[@]}" train.run_name=badcache teacher.placement=cache kd.teacher_topk=8 \
  teacher.cache=cache.h5 train.seed=7
# A high learning rate makes the losses bump up now and then, so adaptive alpha moves off 0.5 after its window.
adaptive=(kd.alpha_mode=adaptive kd.direction=reverse train.lr=0.02 train.steps=40)
run 1 adaptive "${adaptive[@]}" checkpoint.every=25 checkpoint.keep=5
mkdir -p ckpt/adaptive_r && cp ckpt/adaptive/step_00000025.h5 ckpt/adaptive_r/ && echo step_00000025.h5 > ckpt/adaptive_r/latest
run 1 adaptive_r "${adaptive[@]}" train.resume=auto
run 1 alternating kd.schedule=alternating train.grad_accum=2 train.batch_size=4
run 2 moe_student moe.n_experts=4 moe.top_k=1 teacher.placement=coordinator kd.teacher_topk=8

# A teacher trained on a corpus with another tokenizer.
"$MOME_BIN" data build --out corpus2 --vocab 300 --val-fraction 0.2 --domain alpha="$tmp/src/alpha" \
  --domain beta="$tmp/src/beta" > corpus2.log 2>&1 || { cat corpus2.log; fail "second corpus"; }
"$MOME_BIN" train "$tiny" "${base[@]}" data.dir=corpus2 train.steps=2 train.run_name=other > other.log 2>&1 \
  || { cat other.log; fail "second teacher"; }
expect_fail "tokenizer [0-9a-f]{16} but the student's corpus uses tokenizer [0-9a-f]{16}" \
  "$MOME_BIN" train "$tiny" "${base[@]}" train.steps=2 train.run_name=bad teacher.checkpoint=ckpt/other

"$PYTHON" - <<'PY'
import json, sys
def recs(run):
    return {r["step"]: r for r in map(json.loads, open(f"runs/{run}/metrics.jsonl")) if r.get("topic") == "mome.train"}
bad = 0
def same(a, b, steps, what):
    global bad
    ra, rb = recs(a), recs(b)
    worst = max(abs(ra[s]["loss"] - rb[s]["loss"]) / abs(ra[s]["loss"]) for s in steps)
    print(f"{what}: max relative loss difference {worst:.2e} (tolerance 1e-5)")
    bad += worst > 1e-5
same("coord_full", "each_full", range(1, 11), "full logits, coordinator vs each rank")
same("coord_top", "each_top", range(1, 11), "top-8, coordinator vs each rank")
same("coord_top", "cache_top", range(1, 11), "top-8, coordinator vs offline cache")
full_b, top_b = recs("coord_full")[1]["teacher_bytes"], recs("coord_top")[1]["teacher_bytes"]
print(f"teacher bytes sent per step: full {full_b:.0f}, top-8 {top_b:.0f} ({full_b / top_b:.0f}x fewer)")
bad += not (top_b > 0 and full_b > 10 * top_b)
if recs("each_full")[1]["teacher_bytes"] != 0:
    print("each-rank placement should send no teacher bytes"); bad += 1
for r in recs("coord_full").values():
    if not (r["kd"] > 0 and r["ce"] > 0 and r["alpha"] == 0.5):
        print("coordinator run: bad kd/ce/alpha", r); bad += 1; break
a, b = recs("adaptive"), recs("adaptive_r")
for s in range(26, 41):
    if a[s]["loss"] != b[s]["loss"] or a[s]["alpha"] != b[s]["alpha"]:
        print(f"step {s}: uninterrupted (loss {a[s]['loss']!r}, alpha {a[s]['alpha']!r}) vs resumed "
              f"(loss {b[s]['loss']!r}, alpha {b[s]['alpha']!r})"); bad += 1
alphas = [a[s]["alpha"] for s in sorted(a)]
print(f"adaptive alpha: {alphas[0]:.3f} for the first 20 steps (window), then {min(alphas[20:]):.4f}..{max(alphas[20:]):.4f}")
if any(x != 0.5 for x in alphas[:20]):
    print("adaptive alpha must stay 0.5 until the window of 20 losses is full"); bad += 1
if all(a[s]["alpha"] == 0.5 for s in range(26, 41)):
    print("adaptive alpha never left 0.5 after the resume point: the resume check would not test the saved windows"); bad += 1
alt = recs("alternating")
if not all(r["kd"] > 0 and r["ce"] > 0 for r in alt.values()):
    print("alternating with 2 micro-batches per step should log both losses"); bad += 1
moe = recs("moe_student")
if not all("expert_load" in r and r["kd"] > 0 for r in moe.values()):
    print("the MoE student should log expert loads and a KD loss"); bad += 1
print(f"MoE student: loss {moe[1]['loss']:.4f} -> {moe[10]['loss']:.4f}")
sys.exit(1 if bad else 0)
PY
pass "distillation: placements, top-k, adaptive alpha, alternating, MoE student, tokenizer check"
