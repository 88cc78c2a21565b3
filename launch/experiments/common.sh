# Shared by the experiment scripts (launch/experiments/*): sourced after they set
#   mome (the binary), cfg (the student config), steps (per run), out (the results directory) and, optionally,
#   evals (validations per run, default 4).
say() { printf '\n== %s\n' "$*"; }
run() { # run NAME [overrides...]: one training run, skipped when it has completed with as many steps before
  local name=$1; shift
  local want=$steps a
  for a in "$@"; do case $a in train.steps=*) want=${a#train.steps=} ;; esac; done
  if [ -f "checkpoints/$name/latest" ] &&
     grep -q "\"step\":$want,\"topic\":\"mome.end\"" "runs/$name/metrics.jsonl" 2>/dev/null &&
     grep -q '"status":"completed"' "runs/$name/metrics.jsonl"; then
    echo "   $name: done already"; return; fi
  rm -rf "checkpoints/$name" "runs/$name"
  local t0=$SECONDS
  "$mome" train "$cfg" train.run_name="$name" train.steps="$steps" train.eval_every=$(( steps / ${evals:-4} )) "$@" \
    > "$out/logs/$name.log" 2>&1 \
    || { tail -20 "$out/logs/$name.log"; echo "run $name failed" >&2; exit 1; }
  echo "   $name: $((SECONDS - t0)) s"
}
