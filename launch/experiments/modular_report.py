#!/usr/bin/python3
"""Tables and plots of launch/experiments/modular: reads runs/mx-*/metrics.jsonl and experiments/modular/eval/,
writes experiments/modular/results.json, experiments/modular/report.md and docs/img/exp-*.png."""
import json
import os
import statistics
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from expstats import final_eval, fmt, ms, records, report_args, table_file  # noqa: E402

args, seeds = report_args("experiments/modular")


teacher = {d: v["loss"] for d, v in table_file(f"{args.out}/eval/teacher.txt").items()}
domains = list(teacher)
results = {"domains": domains, "seeds": seeds, "teacher": teacher}
md = []

# ---- 1. router
md.append("### 1. Router classifiers (held-out segments)\n")
md.append("| classifier | " + " | ".join(f"F1 {c}" for c in domains) + " | macro P | macro R | macro F1 | accuracy |")
md.append("|---|" + "---|" * (len(domains) + 4))
router = {}
for c in ("lr", "svm", "nb"):
    r = json.load(open(f"{args.out}/eval/router-{c}.json"))
    router[c] = r
    per = {k["label"]: k for k in r["classes"]} if isinstance(r["classes"], list) else r["classes"]
    f1 = [per[d]["f1"] for d in domains]
    md.append(f"| {c} | " + " | ".join(f"{x:.4f}" for x in f1) +
              f" | {r['macro']['precision']:.4f} | {r['macro']['recall']:.4f} | {r['macro']['f1']:.4f} | {r['accuracy']:.4f} |")
md.append("")
for c in ("lr", "svm", "nb"):
    r = router[c]
    md.append(f"Confusion matrix, {c} (rows: true, columns: predicted, order {' '.join(r['labels'])}): " +
              "; ".join(" ".join(str(x) for x in row) for row in r["confusion"]))
md.append("")
results["router"] = {c: {"macro_f1": router[c]["macro"]["f1"], "accuracy": router[c]["accuracy"]} for c in router}


def per_domain(run_of_seed, key=None):
    """{domain: (mean, std)} of the final routed validation loss (or variant `key`) over seeds."""
    out = {}
    for d in domains:
        vals = []
        for s in seeds:
            e = final_eval(run_of_seed(s))
            vals.append((e["variants"][key] if key else e["val_loss"]).get(d))
        out[d] = ms(vals)
    return out


def mean_over_domains(run_of_seed, key=None):
    vals = []
    for s in seeds:
        e = final_eval(run_of_seed(s))
        losses = e["variants"][key] if key else e["val_loss"]
        vals.append(statistics.mean(losses[d] for d in domains))
    return ms(vals)


def row(name, pd, mean):
    return f"| {name} | " + " | ".join(fmt(pd[d]) for d in domains) + f" | {fmt(mean)} |"


head = "| " + " | ".join(["student"] + domains + ["mean"]) + " |\n|" + "---|" * (len(domains) + 2)

# ---- 2. distillation
kd = {"fixed, combined": "mx-kd-fixed-comb", "adaptive, combined": "mx-kd-adapt-comb",
      "fixed, alternating": "mx-kd-fixed-alt", "adaptive, alternating": "mx-kd-adapt-alt"}
md.append("### 2. Knowledge distillation: alpha fixed vs adaptive, loss combined vs alternating (MoE-CE)\n")
md.append("Validation loss (nats per token) after training, routed by the router; mean ± std over seeds.\n")
md.append(head)
results["kd"] = {}
for name, run in kd.items():
    pd, mean = per_domain(lambda s: f"{run}-s{s}"), mean_over_domains(lambda s: f"{run}-s{s}")
    results["kd"][name] = {"per_domain": pd, "mean": mean}
    md.append(row(name, pd, mean))
md.append(row("teacher", {d: (teacher[d], 0.0) for d in domains}, (statistics.mean(teacher.values()), 0.0)))
md.append("")
fig, axes = plt.subplots(1, 3, figsize=(15, 4))
for name, run in kd.items():
    steps = [r["step"] for r in records(f"{run}-s1", "mome.train")]
    for ax, key in zip(axes[:2], ("ce", "alpha")):
        curves = [[r[key] for r in records(f"{run}-s{s}", "mome.train")] for s in seeds]
        mean = [statistics.mean(c[i] for c in curves) for i in range(len(steps))]
        ax.plot(steps, mean, label=name)
    ev = [[statistics.mean(r["val_loss"][d] for d in domains) for r in records(f"{run}-s{s}", "mome.eval")]
          for s in seeds]
    evs = [r["step"] for r in records(f"{run}-s1", "mome.eval")]
    m = [statistics.mean(c[i] for c in ev) for i in range(len(evs))]
    sd = [statistics.stdev(c[i] for c in ev) if len(ev) > 1 else 0 for i in range(len(evs))]
    axes[2].errorbar(evs, m, yerr=sd, label=name, capsize=3)
axes[0].set_title("training CE (mean over seeds)")
axes[1].set_title("alpha (CE weight)")
axes[2].set_title("validation loss, mean of domains (± std over seeds)")
for ax in axes:
    ax.set_xlabel("step")
    ax.legend(fontsize=7)
fig.tight_layout()
fig.savefig(f"{args.img}/exp-kd.png", dpi=90)

# ---- 3. architectures
md.append("### 3. Architectures, per domain\n")
md.append("Validation loss after training, mean ± std over seeds. PLE: one dense 2-block student per domain, combined "
          "by the router; JEET: joint expert trunks, shared embedding; MoE-CE: JEET plus a common trunk; dense: one "
          "student with the active depth of JEET (2 blocks) or MoE-CE (4 blocks).\n")
md.append(head)
ple = {d: ms([table_file(f"{args.out}/eval/mx-ple-s{s}.txt")["routed"][d] for s in seeds]) for d in domains}
ple_mean = ms([statistics.mean(table_file(f"{args.out}/eval/mx-ple-s{s}.txt")["routed"][d] for d in domains)
               for s in seeds])
arch = {"PLE (routed)": (ple, ple_mean)}
for name, run in (("JEET", "mx-jeet"), ("MoE-CE", "mx-kd-fixed-comb"), ("dense, 2 blocks", "mx-dense2"),
                  ("dense, 4 blocks", "mx-dense4")):
    arch[name] = (per_domain(lambda s: f"{run}-s{s}"), mean_over_domains(lambda s: f"{run}-s{s}"))
arch["teacher"] = ({d: (teacher[d], 0.0) for d in domains}, (statistics.mean(teacher.values()), 0.0))
for name, (pd, mean) in arch.items():
    md.append(row(name, pd, mean))
results["architectures"] = {k: {"per_domain": v[0], "mean": v[1]} for k, v in arch.items()}
md.append("")
md.append("MoE-CE evaluated every way (routing variants; mean ± std over seeds):\n")
md.append(head.replace("student", "variant"))
variants = list(final_eval("mx-kd-fixed-comb-s1")["variants"])
results["moece_variants"] = {}
for v in variants:
    pd, mean = per_domain(lambda s: f"mx-kd-fixed-comb-s{s}", v), mean_over_domains(lambda s: f"mx-kd-fixed-comb-s{s}", v)
    results["moece_variants"][v] = {"per_domain": pd, "mean": mean}
    md.append(row(v, pd, mean))
md.append("")
fig, ax = plt.subplots(figsize=(9, 4))
names = list(arch)
width = 0.8 / len(names)
for i, name in enumerate(names):
    pd = arch[name][0]
    ax.bar([j + i * width for j in range(len(domains))], [pd[d][0] for d in domains], width,
           yerr=[pd[d][1] for d in domains], label=name, capsize=2)
ax.set_xticks([j + 0.4 - width / 2 for j in range(len(domains))])
ax.set_xticklabels(domains)
ax.set_ylabel("validation loss")
lo = min(min(arch[n][0][d][0] for d in domains) for n in names)
ax.set_ylim(lo - 0.3, None)
ax.legend(fontsize=7, ncol=3)
ax.set_title("architectures: validation loss per domain (mean ± std over seeds)")
fig.tight_layout()
fig.savefig(f"{args.img}/exp-architectures.png", dpi=90)

# ---- 4. forgetting
md.append("### 4. Catastrophic forgetting: sequential phases vs balanced batches\n")
md.append(f"Sequential runs train {' → '.join(domains)}, one quarter of the steps each; validation loss per domain "
          "after each phase (mean over seeds).\n")
results["forgetting"] = {}
fig, axes = plt.subplots(1, 2, figsize=(12, 4), sharey=True)
for ax, (label, seq_run, bal_run) in zip(axes, (("dense, 4 blocks", "mx-seq-dense4", "mx-dense4"),
                                                ("MoE-CE", "mx-seq-moece", "mx-kd-fixed-comb"))):
    md.append(f"**{label}**\n")
    md.append("| run | after phase | " + " | ".join(domains) + " | mean |\n|" + "---|" * (len(domains) + 3))
    results["forgetting"][label] = {}
    for kind, run in (("sequential", seq_run), ("balanced", bal_run)):
        evs = [[r for r in records(f"{run}-s{s}", "mome.eval") if r["step"] > 0] for s in seeds]
        n = min(len(e) for e in evs)
        table = []
        for i in range(n):
            pd = {d: ms([e[i]["val_loss"][d] for e in evs]) for d in domains}
            mean = ms([statistics.mean(e[i]["val_loss"][d] for d in domains) for e in evs])
            table.append({"step": evs[0][i]["step"], "per_domain": pd, "mean": mean})
            md.append(f"| {kind} | {i + 1} (step {evs[0][i]['step']}) | " +
                      " | ".join(fmt(pd[d]) for d in domains) + f" | {fmt(mean)} |")
        results["forgetting"][label][kind] = table
        for d in domains:
            ax.plot([t["step"] for t in table], [t["per_domain"][d][0] for t in table],
                    "-" if kind == "sequential" else ":", marker="o", label=f"{d} ({kind})")
    md.append("")
    ax.set_title(f"{label}: validation loss per domain")
    ax.set_xlabel("step (end of each phase)")
    ax.legend(fontsize=6, ncol=2)
axes[0].set_ylabel("validation loss")
fig.tight_layout()
fig.savefig(f"{args.img}/exp-forgetting.png", dpi=90)

json.dump(results, open(f"{args.out}/results.json", "w"), indent=1)
open(f"{args.out}/report.md", "w").write("\n".join(md) + "\n")
print("\n".join(md))
