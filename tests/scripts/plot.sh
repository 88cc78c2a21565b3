#!/usr/bin/env bash
# launch/plot: plots a short MoE run (loss parts, validation per domain, expert-load heatmap with one panel per
# layer, learning rate, tokens/s) as valid PNGs whose summary.json agrees with metrics.jsonl; a dense run gets
# no expert-load plot and says so; a file in the other record format ("topic" vs "event"), with malformed lines,
# a restart that repeats steps (the later record wins) and a teacher's alpha still plots. Needs python3-matplotlib.
source "$MOME_SOURCE_DIR/tests/lib/common.sh"
plot="$MOME_SOURCE_DIR/launch/plot"
make_corpus corpus
tiny="$MOME_SOURCE_DIR/configs/tiny.ini"
args=(data.dir=corpus checkpoint.dir=ckpt train.threads=2 train.eval_batches=1 train.log_every=10)
# 3 layers, so that the heatmap's panel count cannot match the tiny config's 2 by accident.
"$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=moe train.steps=30 train.eval_every=10 model.n_layer=3 \
  moe.n_experts=4 moe.top_k=1 moe.capacity_factor=1.25 > moe.log 2>&1 || { cat moe.log; fail "MoE run"; }
"$MOME_BIN" train "$tiny" "${args[@]}" train.run_name=dense train.steps=10 train.eval_every=5 \
  > dense.log 2>&1 || { cat dense.log; fail "dense run"; }

"$plot" runs/moe > moe.out 2> moe.err || { cat moe.out moe.err; fail "launch/plot runs/moe"; }
"$plot" runs/dense > dense.out 2> dense.err || { cat dense.out dense.err; fail "launch/plot runs/dense"; }
grep -q "skipped expert_load.png" dense.out || { cat dense.out; fail "the dense run does not say it has no expert loads"; }
[ ! -e runs/dense/plots/expert_load.png ] || fail "a dense run got an expert-load plot"
grep -q "skipped alpha.png" moe.out || { cat moe.out; fail "a run without a teacher does not say it has no alpha"; }
[ ! -s moe.err ] || { cat moe.err; fail "warnings on a well-formed file"; }

# The other record format, with a teacher's kd and alpha added, malformed lines, and a restart: steps 21..30 again
# (with a different loss, which must win) as a resumed session from the step 20 checkpoint would write them.
"$PYTHON" - <<'PY'
import json
lines = open("runs/moe/metrics.jsonl").read().splitlines()
out = []
for i, line in enumerate(lines):
    r = json.loads(line)
    if "topic" in r:  # new format -> old, and old -> new: the same file must plot either way
        r["event"] = r.pop("topic").removeprefix("mome.")
    else:
        r["topic"] = "mome." + r.pop("event")
    k = r.get("topic", r.get("event")).removeprefix("mome.")
    if k == "train":
        r["kd"], r["alpha"] = 0.5, min(1.0, r["step"] / 20)
    out.append(json.dumps(r))
    if i == 1:
        out.append("this is not json {")  # line 3
        out.append("[1, 2, 3]")           # line 4: JSON, but not an object
for line in list(out):
    r = json.loads(line) if line.startswith("{") else None
    if r and r.get("topic", r.get("event")).removeprefix("mome.") == "train" and r["step"] > 20:
        r["loss"] = 100.0 + r["step"]
        out.append(json.dumps(r))
out.append('{"topic": "mome.train", "step": 31, "loss": 1.')  # a line cut short by a kill
import os
os.makedirs("bad", exist_ok=True)
open("bad/metrics.jsonl", "w").write("\n".join(out) + "\n")
print(f"bad/metrics.jsonl: {len(out)} lines")
PY
"$plot" bad --out bad_plots > bad.out 2> bad.err || { cat bad.out bad.err; fail "launch/plot on a file with malformed lines"; }
for n in 3 4 $(wc -l < bad/metrics.jsonl); do
  grep -q "metrics.jsonl:$n:" bad.err || { cat bad.err; fail "no warning naming line $n"; }
done
[ ! -e bad/plots ] || fail "--out ignored: bad/plots written"

"$PYTHON" - <<'PY'
import json, os, sys
import matplotlib
matplotlib.use("Agg")
import matplotlib.image as mpimg
import numpy as np

bad = 0
def check(cond, msg):
    global bad
    if not cond:
        print("FAIL:", msg); bad += 1

def records(path):
    """train and eval records by step, the later of repeated steps, from either record format."""
    train, evals = {}, {}
    for line in open(path):
        try:
            r = json.loads(line)
        except ValueError:
            continue
        if not isinstance(r, dict):
            continue
        k = r.get("topic", r.get("event"))
        k = k.removeprefix("mome.") if isinstance(k, str) else k
        if k == "train":
            train[r["step"]] = r
        elif k == "eval":
            evals[r["step"]] = r
    return train, evals

def check_png(path):
    with open(path, "rb") as f:
        check(f.read(8) == b"\x89PNG\r\n\x1a\n", f"{path}: not a PNG")
    img = mpimg.imread(path)
    check(img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 600, f"{path}: size {img.shape}")
    check(float(img[..., :3].std()) > 0.05, f"{path}: blank image")
    return img.shape

def check_run(run_dir, out_dir, stdout, want, alpha_expected):
    train, evals = records(os.path.join(run_dir, "metrics.jsonl"))
    s = json.load(open(os.path.join(out_dir, "summary.json")))
    printed = [l for l in open(stdout).read().splitlines() if not l.startswith("plot:")]
    figs = s["figures"]
    check(sorted(figs) == sorted(want), f"{run_dir}: figures {sorted(figs)}, expected {sorted(want)}")
    check(sorted(printed) == sorted([os.path.join(out_dir, f + ".png") for f in want] +
                                    [os.path.join(out_dir, "summary.json")]), f"{run_dir}: printed {printed}")
    for name, f in figs.items():
        shape = check_png(f["path"])
        check(os.path.samefile(os.path.dirname(f["path"]), out_dir), f"{f['path']} not in {out_dir}")
        print(f"{f['path']}: {shape[1]}x{shape[0]}, {f['panels']} panel(s), {f['steps']} steps")
    n = len(train)
    check(s["train_records"] == n and s["eval_records"] == len(evals), f"{run_dir}: record counts {s}")
    loss = figs["loss"]["series"]
    parts = [k for k in ("loss", "ce", "kd", "aux", "z_loss") if any(r.get(k) is not None for r in train.values())]
    check(sorted(loss) == sorted(parts), f"{run_dir}: loss series {sorted(loss)}, expected {parts}")
    for k in parts:
        check(loss[k]["points"] == n, f"{run_dir}: {k} has {loss[k]['points']} points, expected {n}")
        check(loss[k]["last"] == train[max(train)][k], f"{run_dir}: last {k} {loss[k]['last']}")
    # one panel for loss/ce/kd, one each for aux and z_loss
    check(figs["loss"]["panels"] == 1 + ("aux" in parts) + ("z_loss" in parts), f"{run_dir}: loss panels")
    domains = sorted({d for r in evals.values() for d in r["val_loss"]})
    vs = figs["val_loss"]["series"]
    check(sorted(vs) == domains and all(v["points"] == len(evals) for v in vs.values()),
          f"{run_dir}: val_loss series {vs}, expected {domains} x {len(evals)}")
    for k in ("lr", "tokens_per_s"):
        check(figs[k]["steps"] == n, f"{run_dir}: {k} steps {figs[k]['steps']}, expected {n}")
    if "expert_load" in want:
        e = figs["expert_load"]
        load = np.array(train[max(train)]["expert_load"])
        check(e["panels"] == load.shape[0] == 3, f"{run_dir}: {e['panels']} heatmap panels, {load.shape[0]} layers")
        check(e["experts"] == load.shape[1] == 4 and e["steps"] == n, f"{run_dir}: heatmap {e}")
    else:
        check("expert_load" in s["skipped"], f"{run_dir}: expert_load not listed as skipped")
    if alpha_expected:
        a = figs["alpha"]["series"]["alpha"]
        check(a["points"] == n and a["max"] == 1.0, f"{run_dir}: alpha {a}")
    else:
        check("alpha" in s["skipped"], f"{run_dir}: alpha not listed as skipped")
    return s, train

every = ["loss", "val_loss", "lr", "tokens_per_s"]
check_run("runs/moe", "runs/moe/plots", "moe.out", every + ["expert_load"], False)
check_run("runs/dense", "runs/dense/plots", "dense.out", every, False)
s, train = check_run("bad", "bad_plots", "bad.out", every + ["expert_load", "alpha"], True)
check(len(train) == 30, f"bad: {len(train)} distinct steps")
check(s["malformed_lines"] == [3, 4, sum(1 for _ in open("bad/metrics.jsonl"))], f"malformed {s['malformed_lines']}")
loss = s["figures"]["loss"]["series"]["loss"]
check(loss["last"] == 130.0 and loss["max"] == 130.0 and loss["points"] == 30,
      f"repeated steps: the later record should win: {loss}")
sys.exit(1 if bad else 0)
PY
pass "launch/plot: MoE and dense runs, either record format, malformed lines and repeated steps"
