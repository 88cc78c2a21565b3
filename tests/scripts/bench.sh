#!/usr/bin/env bash
# `mome bench` and bench/torch_reference.py at toy sizes: the output format that bench/compare and users rely on,
# the same student loss on 1 and 2 ranks (the batch split and the experts spread change nothing), and errors.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
small=(--seq-len 32 --batch 4 --d-model 32 --layers 2 --heads 2 --experts 2 --vocab 128 --steps 2 --warmup 1)

"$MOME_BIN" bench --help | grep -q "usage: mome bench" || fail "mome bench --help"
"$MOME_BIN" bench --threads 1 --profile "${small[@]}" > one.log 2>&1 || { cat one.log; fail "mome bench"; }
cat one.log
head -n 1 one.log | grep -qE '^student_train_tok_s=[0-9]+ teacher_infer_tok_s=[0-9]+$' || fail "first line"
for key in sgemm_gflops student_mfu teacher_mfu student_flop_per_token teacher_flop_per_token peak_rss_mb \
           page_faults_per_step student_loss; do
  v=$(grep -oE "(^| )$key=[-0-9.e+]+" one.log | head -n 1 | cut -d= -f2)
  [ -n "$v" ] || fail "no $key in the output"
  "$PYTHON" -c "import math,sys; v=float('$v'); sys.exit(0 if math.isfinite(v) and v >= 0 else 1)" \
    || fail "$key=$v is not a finite non-negative number"
done
grep -qE "^kernels .*ffn=[0-9.]+" one.log || fail "no kernel profile"
pass "output format"

timeout 300 mpirun -np 2 "$MOME_BIN" bench --threads 1 --student "${small[@]}" > two.log 2>&1 \
  || { cat two.log; fail "mpirun -np 2 mome bench"; }
grep -q "ranks=2 threads=1" two.log || { cat two.log; fail "layout line"; }
l1=$(grep -oE "student_loss=[0-9.]+" one.log | cut -d= -f2)
l2=$(grep -oE "student_loss=[0-9.]+" two.log | cut -d= -f2)
"$PYTHON" -c "import sys; a, b = $l1, $l2; print('loss 1 rank', a, '2 ranks', b); sys.exit(0 if abs(a - b) <= 1e-5 * abs(a) else 1)" \
  || fail "student loss differs between 1 and 2 ranks: $l1 vs $l2"
pass "same student loss on 1 and 2 ranks"

expect_fail "bad, unknown or incomplete option '--steps 0'" "$MOME_BIN" bench --steps 0
expect_fail "unknown or incomplete option '--frobnicate'" "$MOME_BIN" bench --frobnicate
expect_fail "batch 3 is not divisible by the 2 ranks" timeout 120 mpirun -np 2 "$MOME_BIN" bench --threads 1 \
  --batch 3 --seq-len 32 --d-model 32 --layers 1 --heads 2 --experts 2 --vocab 128

"$PYTHON" "$MOME_SOURCE_DIR/bench/torch_reference.py" --threads 1 "${small[@]}" > torch.log 2>&1 \
  || { cat torch.log; fail "torch_reference.py"; }
head -n 1 torch.log | grep -qE '^student_train_tok_s=[0-9]+ teacher_infer_tok_s=[0-9]+$' \
  || { cat torch.log; fail "torch_reference first line"; }
grep -qE "^peak_rss_mb=[0-9.]+" torch.log || fail "torch_reference peak memory"
pass "torch reference output format"
