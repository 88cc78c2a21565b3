#!/usr/bin/python3
"""Tables and plots of launch/experiments/moe-kd: reads runs/ek-*/metrics.jsonl and experiments/moe-kd/eval/,
writes experiments/moe-kd/results.json, experiments/moe-kd/report.md and docs/img/exp-moe-kd*.png."""
import json
import math
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from expstats import final_eval, fmt, ms, records, report_args, table_file  # noqa: E402

args, seeds = report_args("experiments/moe-kd")

# method label -> run name prefix, in the order of the tables
methods = {
    "topk (as trained)": "ek-topk",
    "all": "ek-all",
    "ka M=1 λ=0.05": "ek-ka1-l05",
    "ka M=1 λ=0.2": "ek-ka1-l20",
    "ka M=2 λ=0.05": "ek-ka2-l05",
    "ka M=2 λ=0.2": "ek-ka2-l20",
    "ka M=4 λ=0.05": "ek-ka4-l05",
    "ka M=4 λ=0.2": "ek-ka4-l20",
    "sar (router lr 1e-6)": "ek-sar",
    "sar (router lr 1e-3)": "ek-sar-lr3",
    "dense teacher": "ek-dense",
    "no teacher (CE)": "ek-ce",
}
teachers = {name: {d: v["loss"] for d, v in table_file(f"{args.out}/eval/{name}.txt").items()}
            for name in ("teacher-moe", "teacher-dense")}
domains = list(teachers["teacher-moe"])
results = {"domains": domains, "seeds": seeds, "teachers": teachers, "students": {}}
md = []

md.append("### Teachers\n")
md.append("Validation loss (nats per token) at the teachers' own context of 128 tokens (`mome eval --windows 64`).\n")
md.append("| teacher | " + " | ".join(domains) + " | mean |\n|" + "---|" * (len(domains) + 2))
for name, t in teachers.items():
    md.append(f"| {name} | " + " | ".join(f"{t[d]:.3f}" for d in domains) + f" | {statistics.mean(t.values()):.3f} |")
md.append("")


def mean_loss(run):
    e = final_eval(run)["val_loss"]
    return statistics.mean(e[d] for d in domains)


def step_ms(run):
    return statistics.median(r["step_ms"] for r in records(run, "mome.train"))


md.append("### Students\n")
md.append("Validation loss (nats per token, 64-token windows, 8192 tokens per domain) after training; mean ± std over "
          "seeds. Δ topk: the mean over seeds of (method − topk) for the same seed (negative: better than topk), ± "
          "its std. Step: median milliseconds per training step (teacher passes included).\n")
md.append("| student | " + " | ".join(domains) + " | mean | ppl | Δ topk | step ms |\n|" + "---|" * (len(domains) + 5))
topk = {s: mean_loss(f"ek-topk-s{s}") for s in seeds}
for label, prefix in methods.items():
    runs = {s: f"{prefix}-s{s}" for s in seeds}
    pd = {d: ms([final_eval(r)["val_loss"][d] for r in runs.values()]) for d in domains}
    mean = ms([mean_loss(r) for r in runs.values()])
    delta = ms([mean_loss(runs[s]) - topk[s] for s in seeds])
    speed = statistics.mean(step_ms(r) for r in runs.values())
    results["students"][label] = {"run": prefix, "per_domain": pd, "mean": mean, "delta_topk": delta,
                                  "step_ms": speed}
    md.append(f"| {label} | " + " | ".join(fmt(pd[d]) for d in domains) +
              f" | {fmt(mean)} | {math.exp(mean[0]):.1f} | {delta[0]:+.4f} ± {delta[1]:.4f} | {speed:.0f} |")
md.append("")
md.append("Validation perplexity per domain (exp of each seed's loss; mean ± std over seeds).\n")
md.append("| student | " + " | ".join(domains) + " |\n|" + "---|" * (len(domains) + 1))
for label, prefix in methods.items():
    ppl = {d: ms([math.exp(final_eval(f"{prefix}-s{s}")["val_loss"][d]) for s in seeds]) for d in domains}
    results["students"][label]["ppl_per_domain"] = ppl
    md.append(f"| {label} | " + " | ".join(f"{ppl[d][0]:.0f} ± {ppl[d][1]:.0f}" for d in domains) + " |")
md.append("")

# curves: the mean validation loss over domains at each evaluation, mean over seeds
fig, ax = plt.subplots(1, 2, figsize=(14, 4.5))
for label, prefix in methods.items():
    curves = []
    for s in seeds:
        ev = records(f"{prefix}-s{s}", "mome.eval")
        curves.append({e["step"]: statistics.mean(e["val_loss"][d] for d in domains) for e in ev})
    steps = sorted(set.intersection(*(set(c) for c in curves)))
    ys = [statistics.mean(c[x] for c in curves) for x in steps]
    style = "--" if prefix in ("ek-dense", "ek-ce") else "-"
    ax[0].plot(steps, ys, style, marker="o", ms=3, label=label)
    later = [i for i, x in enumerate(steps) if x >= steps[-1] // 2]
    ax[1].plot([steps[i] for i in later], [ys[i] for i in later], style, marker="o", ms=3, label=label)
ax[0].set_title("validation loss (mean over domains and seeds)")
ax[1].set_title("second half of training")
for a in ax:
    a.set_xlabel("step")
    a.set_ylabel("nats per token")
    a.grid(alpha=0.3)
ax[1].legend(fontsize=8, ncol=2)
fig.tight_layout()
fig.savefig(f"{args.img}/exp-moe-kd-curves.png", dpi=110)

fig, ax = plt.subplots(figsize=(10, 4.5))
labels = list(methods)
d = [results["students"][m]["delta_topk"] for m in labels]
ax.bar(range(len(labels)), [x[0] for x in d], yerr=[x[1] for x in d], capsize=3,
       color=["C0" if x[0] < 0 else "C3" for x in d])
ax.axhline(0, color="k", lw=0.8)
ax.set_xticks(range(len(labels)))
ax.set_xticklabels(labels, rotation=30, ha="right", fontsize=8)
ax.set_ylabel("validation loss − topk's, same seed (nats)")
ax.set_title(f"distilling the MoE teacher: difference to ordinary KD ({len(seeds)} seeds, mean ± std)")
ax.grid(axis="y", alpha=0.3)
fig.tight_layout()
fig.savefig(f"{args.img}/exp-moe-kd.png", dpi=110)

gates = f"{args.out}/eval/gates.txt"
if os.path.exists(gates):
    md.append("### The MoE teacher's gates (`mome analyze gates`)\n")
    md.append("```\n" + open(gates).read().rstrip() + "\n```\n")

json.dump(results, open(f"{args.out}/results.json", "w"), indent=1)
open(f"{args.out}/report.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
