#!/usr/bin/env bash
# The ZeroMQ monitor stream of a real `mome train` (2 ranks), watched by pyzmq subscribers: every topic arrives
# well-formed; a late joiner is sent mome.meta on subscribing; a subscriber that never reads loses messages but
# does not stop the run or cost the reading subscriber a single record (counted). metrics.jsonl holds the same
# records. The five-line example of docs/monitoring.md works as written. A restart appends with monotone steps.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
make_corpus corpus
steps=120
args=(data.dir=corpus checkpoint.dir=ckpt train.steps=$steps train.threads=1 train.eval_every=40
      train.eval_batches=1 train.log_every=20 checkpoint.every=60 moe.n_experts=16 moe.top_k=2
      train.run_name=mon monitor.hwm=4 monitor.sndbuf=4096 monitor.meta_every_s=0.5)

"$PYTHON" "$MOME_SOURCE_DIR/tests/python/monitor_subscribers.py" runs/mon $steps seen.json &
subs=$!
timeout 300 mpirun -np 2 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" > train.log 2>&1 \
  || { cat train.log; fail "training with the monitor"; }
timeout 60 tail --pid=$subs -f /dev/null || fail "subscribers did not finish"
wait $subs || fail "subscribers failed"

"$PYTHON" - "$steps" <<'PY' || fail "stream checks"
import json, sys
steps = int(sys.argv[1])
seen = json.load(open("seen.json"))
main, late, stalled = seen["main"], seen["late"], seen["stalled"]
assert seen["ended"], "the main subscriber never saw mome.end"
common = {"v": int, "run_id": str, "session": str, "seq": int, "t": float, "step": int}
for m in main:
    for k, ty in common.items():
        assert isinstance(m.get(k), ty), f"{m['topic']}: field {k} = {m.get(k)!r} is not {ty.__name__}"
    assert m["v"] == 1 and m["run_id"] == "mon"
topics = {m["topic"] for m in main}
want = {"mome.meta", "mome.train", "mome.eval", "mome.ckpt", "mome.log", "mome.end"}
assert want <= topics, f"topics missing: {want - topics}"
seqs = [m["seq"] for m in main]
assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs), "seq not increasing"
trains = [m for m in main if m["topic"] == "mome.train"]
for m in trains:
    for k in ("loss", "ce", "aux", "lr", "grad_norm", "tokens_per_s", "mfu", "step_ms", "eta_s", "dropped_frac"):
        assert isinstance(m[k], float), f"mome.train {k} = {m[k]!r}"
    assert len(m["expert_load"]) == 2 and all(abs(sum(r) - 1) < 1e-9 for r in m["expert_load"]), m["expert_load"]
# the reading subscriber lost nothing once subscribed: every step from its first to the last
got = [m["step"] for m in trains]
assert got == list(range(got[0], steps + 1)), f"train steps received: {got[:5]}...{got[-5:]}"
assert got[0] <= 2, f"the first train message seen was step {got[0]}"
end = [m for m in main if m["topic"] == "mome.end"][0]
assert end["status"] == "completed" and end["exit_code"] == 0 and end["published"] == end["seq"] + 1
evals = [m for m in main if m["topic"] == "mome.eval"]
assert all(set(e["val_loss"]) == {"alpha", "beta"} for e in evals)
ck = [m for m in main if m["topic"] == "mome.ckpt"]
assert ck and all(c["ok"] for c in ck) and ck[-1]["step"] == steps
print(f"main: {len(main)} messages, {len(trains)} mome.train (steps {got[0]}..{got[-1]}), topics {sorted(topics)}")
# late joiner: the welcome mome.meta comes at the end of the step in which it subscribed, so before its
# second mome.train at the latest
tl = [m["topic"] for m in late]
assert "mome.meta" in tl, f"late joiner got {tl}"
assert tl.index("mome.meta") < ([i for i, t in enumerate(tl) if t == "mome.train"] + [99, 99])[1], tl
meta = late[tl.index("mome.meta")]
assert meta["steps"] == steps and meta["world"] == 2 and "[model]" in meta["config"] and meta["model"]["n_experts"] == 16
print(f"late joiner: messages {tl}, mome.meta at step {meta['step']}")
# stalled subscriber: lost messages (its queue overflowed) while the run and the main subscriber went on
total = end["published"]
print(f"stalled subscriber: received {len(stalled)} of {total} messages")
assert len(stalled) < total / 2, "the stalled subscriber's queue never overflowed: the test proves nothing"
PY
pass "every topic, late joiner, stalled subscriber"

# metrics.jsonl: the same records (same seq numbers) with their topic
"$PYTHON" - <<'PY' || fail "metrics.jsonl"
import json
recs = [json.loads(l) for l in open("runs/mon/metrics.jsonl")]
seen = json.load(open("seen.json"))["main"]
by_seq = {r["seq"]: r for r in recs if r["topic"] != "mome.meta"}
for m in seen:
    if m["topic"] == "mome.meta":
        continue
    r = by_seq[m["seq"]]
    assert r == m, f"record {m['seq']} differs:\n{r}\n{m}"
print(f"{len(recs)} records in metrics.jsonl, all {len(seen)} streamed ones identical")
PY
pass "metrics.jsonl holds the streamed records"

# The example of docs/monitoring.md, as written, against a new run (it prints the first mome.train and exits).
"$PYTHON" - "$MOME_SOURCE_DIR/docs/monitoring.md" > example.py <<'PY'
import re, sys
text = open(sys.argv[1]).read()
block = re.search(r"<!-- example -->\s*```python\n(.*?)```", text, re.S).group(1)
assert len(block.strip().splitlines()) <= 5, "the example is longer than five lines"
print(block)
PY
timeout 120 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" data.dir=corpus checkpoint.dir=ckpt \
  train.steps=400 train.threads=1 train.run_name=teacher > ex.log 2>&1 &
run=$!
for _ in $(seq 200); do [ -f runs/teacher/monitor.json ] && break; sleep 0.05; done
[ -f runs/teacher/monitor.json ] || fail "no runs/teacher/monitor.json"
rc=0; PYTHONUNBUFFERED=1 timeout 8 "$PYTHON" example.py > example.out 2>&1 || rc=$?
kill $run 2>/dev/null || true; wait $run 2>/dev/null || true
[ $rc -eq 0 ] || [ $rc -eq 124 ] || { cat example.out; fail "docs example exited $rc"; }
grep -q "^mome.train {" example.out || { cat example.out; fail "docs example printed no mome.train"; }
pass "the docs example: $(grep -c "^mome.train" example.out) mome.train records printed"

# Restart: resume the stopped run from its step-60 checkpoint: records after step 60 go, steps stay monotone.
"$PYTHON" - <<'PY'
import json
recs = [json.loads(l) for l in open("runs/mon/metrics.jsonl")]
with open("runs/mon/metrics.jsonl", "w") as f:   # pretend the first session was killed at step 90
    for r in recs:
        if r["step"] <= 90:
            f.write(json.dumps(r) + "\n")
PY
timeout 300 "$MOME_BIN" train "$MOME_SOURCE_DIR/configs/tiny.ini" "${args[@]}" \
  train.resume=ckpt/mon/step_00000060.h5 > resume.log 2>&1 || { cat resume.log; fail "resume"; }
grep -q "dropped .* records after step 60" resume.log || { cat resume.log; fail "no drop message"; }
"$PYTHON" - <<'PY' || fail "monotone steps after the restart"
import json
recs = [json.loads(l) for l in open("runs/mon/metrics.jsonl")]
steps = [r["step"] for r in recs if r["topic"] == "mome.train"]
assert steps == list(range(1, 121)), steps
sessions = [r["session"] for r in recs if r["topic"] == "mome.meta"]
assert len(set(sessions)) == 2, sessions
print("train steps 1..120 once each across two sessions")
PY
pass "restart appends with monotone steps"
