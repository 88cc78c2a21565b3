"""Shared by the experiment reports (launch/experiments/*_report.py): their command line, a run's monitor records,
`mome eval` tables, mean and standard deviation over seeds, and their formatting."""
import argparse
import json
import math
import os
import statistics


def report_args(out):
    """The command line of a report: --seeds N (the runs of seeds 1..N), --out (the experiment's directory, default
    out), --img (where the plots go, created). Returns (args, seeds)."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--out", default=out)
    ap.add_argument("--img", default="docs/img")
    args = ap.parse_args()
    os.makedirs(args.img, exist_ok=True)
    return args, list(range(1, args.seeds + 1))


def records(run, topic):
    path = f"runs/{run}/metrics.jsonl"
    return [r for r in map(json.loads, open(path)) if r.get("topic") == topic]


def final_eval(run):
    return records(run, "mome.eval")[-1]


def table_file(path):
    """A `mome eval` table: {row name: {column: value}} (first line a title, then a header line)."""
    rows, cols = {}, None
    for line in open(path):
        f = line.split()
        if not f:
            continue
        if f[0] in ("variant", "domain"):
            cols = f[1:]
            continue
        if cols and len(f) == len(cols) + 1:
            try:
                rows[f[0]] = dict(zip(cols, map(float, f[1:])))
            except ValueError:
                pass
    return rows


def ms(values):
    values = [v for v in values if v is not None and math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    return statistics.mean(values), (statistics.stdev(values) if len(values) > 1 else 0.0)


def fmt(pair):
    m, s = pair
    return f"{m:.3f} ± {s:.3f}" if math.isfinite(m) else "n/a"
