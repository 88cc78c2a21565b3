#!/usr/bin/env bash
# Bad input through the command line: configuration errors name the file and line; corrupted, truncated and
# mismatched checkpoints are refused with a message naming the file; usage errors exit 2.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"

"$MOME_BIN" --help | grep -q "train CONFIG" || fail "mome --help"
for verb in data train eval generate; do
  "$MOME_BIN" $verb --help | grep -q "usage: mome $verb" || fail "mome $verb --help"
done
pass "help for every verb"
rc=0; "$MOME_BIN" frobnicate >/dev/null 2>&1 || rc=$?
[ $rc -eq 2 ] || fail "unknown verb should exit 2, got $rc"

printf '[model]\nn_layer = 2\n[train]\nstepz = 10\n' > bad_key.ini
expect_fail "bad_key.ini:4.*stepz" "$MOME_BIN" train bad_key.ini
printf '[model]\nn_layer = 2\n[trian]\n' > bad_section.ini
expect_fail "bad_section.ini:3.*trian" "$MOME_BIN" train bad_section.ini
printf '[train]\nsteps = ten\n' > bad_int.ini
expect_fail "bad_int.ini:2.*steps" "$MOME_BIN" train bad_int.ini
printf '[train]\nlr = -1\n' > bad_range.ini
expect_fail "bad_range.ini:2.*lr" "$MOME_BIN" train bad_range.ini
expect_fail "train.nope" "$MOME_BIN" train "$tiny" train.nope=1
expect_fail "no_such.ini" "$MOME_BIN" train no_such.ini
expect_fail "corpus_missing" "$MOME_BIN" train "$tiny" data.dir=corpus_missing
# the monitor stream beyond loopback needs a CURVE key, or an explicit monitor.insecure
expect_fail "monitor.*0.0.0.0.*curve_secret_key" "$MOME_BIN" train "$tiny" monitor.bind=tcp://0.0.0.0:0

make_corpus corpus
expect_fail "monitor.*CURVE secret key file no_such.key" "$MOME_BIN" train "$tiny" data.dir=corpus \
  monitor.bind=tcp://0.0.0.0:0 monitor.curve_secret_key=no_such.key
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=4 train.threads=1 train.eval_batches=1 train.run_name=t)
"$MOME_BIN" train "$tiny" "${args[@]}" > t.log 2>&1 || { cat t.log; fail "training run"; }
good=ckpt/t/step_00000004.h5
[ -f "$good" ] || fail "no checkpoint written"
"$MOME_BIN" eval "$good" > eval.log 2>&1 || { cat eval.log; fail "eval of a good checkpoint"; }
grep -qE "^alpha +[0-9.]+ +[0-9.]+" eval.log || { cat eval.log; fail "eval table"; }
"$MOME_BIN" generate "$good" --prompt "def " --tokens 20 > gen.log 2>&1 || { cat gen.log; fail "generate"; }
pass "eval and generate on a good checkpoint"

# A flipped byte in the middle of the first model tensor's data.
cp "$good" flipped.h5
off=$("$PYTHON" -c '
import h5py, sys
f = h5py.File("flipped.h5", "r"); d = f["model/wte"]
info = d.id.get_chunk_info(0) if d.chunks else None
print((info.byte_offset + info.size // 2) if info else d.id.get_offset() + d.id.get_storage_size() // 2)')
printf '\x5a' | dd of=flipped.h5 bs=1 seek="$off" conv=notrunc status=none
expect_fail "flipped.h5" "$MOME_BIN" eval flipped.h5
expect_fail "flipped.h5" "$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=t2 train.resume="$tmp/flipped.h5"

# Truncated.
head -c $(( $(stat -c %s "$good") / 2 )) "$good" > truncated.h5
expect_fail "truncated.h5" "$MOME_BIN" eval truncated.h5
expect_fail "truncated.h5" "$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=t3 train.resume="$tmp/truncated.h5"

# Not a checkpoint at all.
echo "hello" > notckpt.h5
expect_fail "notckpt.h5" "$MOME_BIN" eval notckpt.h5

# A checkpoint whose model shape does not match the config.
expect_fail "shape|d_model|expects" "$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=t4 model.d_model=96 \
  train.resume="$tmp/$good"
pass "bad checkpoints refused"
