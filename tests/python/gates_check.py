#!/usr/bin/env python3
"""gates_check.py — checks what `mome analyze gates --json` wrote.

Usage: /usr/bin/python3 gates_check.py GATES.json [CHECKPOINT.h5 CORPUS_DIR]

Always: the invariants of the numbers (per part and layer: the sorted means are non-increasing and sum to 1, the
top_k of them equal the activated mass, activated + non-activated = 1, activated >= top_k / E, the per-expert mean
probabilities and routed shares sum to 1; the overall part is the token-weighted mean of the domains).
With a checkpoint and a corpus: an independent recomputation. The MoE GPT is written here from its definition
with torch ops in float64 (pre-LayerNorm blocks, the causal attention of torch_check.py, top-k gate by logit,
combine weights renormalised for top_k > 1 and the raw probability for top_k = 1, shared expert), its weights
read with h5py from the checkpoint, run over the validation windows read from CORPUS_DIR/tokens/<domain>.h5
(window w of a domain = val[w*T : w*T + T], up to the JSON's "windows" per domain), and the gate statistics are
computed with numpy from the raw probabilities. Only a dropless model is recomputed (with capacity, which tokens
are dropped depends on the batching and float rounding). Every number of the JSON is compared, tolerance stated;
the exit status is 1 if any check fails.
"""
import configparser
import json
import math
import sys

import h5py
import numpy as np

from refcheck import check, failures

TOL_MEAN = (1e-5, 1e-6)   # (rtol, atol): means of float32 probabilities against float64 ones
TOL_EXACT = 1e-9          # identities that hold up to double rounding
TOL_SUM1 = 1e-5           # sums of float32 softmax rows
MARGIN = 1e-5             # a k-th vs (k+1)-th logit gap below this may route differently in float32


def fail(msg):
    print("FAIL:", msg)
    failures.append(msg)


def invariants(g):
    E, k = g["n_experts"], g["top_k"]
    parts = [("overall", g["overall"])] + [(d, g["per_domain"][d]) for d in g["domains"]]
    for name, p in parts:
        if len(p["layers"]) != g["n_layer"]:
            fail(f"{name}: {len(p['layers'])} layers, expected {g['n_layer']}")
        for y in p["layers"]:
            where = f"{name} layer {y['layer']}"
            s = np.array(y["sorted_mean"])
            if s.shape != (E,):
                fail(f"{where}: sorted_mean has {s.shape}, expected ({E},)")
                continue
            if np.any(np.diff(s) > TOL_EXACT):
                fail(f"{where}: sorted means increase: {s}")
            if abs(s.sum() - 1) > TOL_SUM1:
                fail(f"{where}: sorted means sum to {s.sum():.9f}")
            if abs(y["activated"] + y["non_activated"] - 1) > TOL_EXACT:
                fail(f"{where}: activated {y['activated']} + non-activated {y['non_activated']} != 1")
            if y["activated"] < k / E - 1e-6:
                fail(f"{where}: activated {y['activated']} below top_k/E = {k / E}")
            if abs(y["activated"] - s[:k].sum()) > 1e-6:
                fail(f"{where}: activated {y['activated']} != sum of the top {k} sorted means {s[:k].sum()}")
            if abs(sum(y["expert_prob"]) - 1) > TOL_SUM1:
                fail(f"{where}: expert_prob sums to {sum(y['expert_prob'])}")
            if abs(sum(y["expert_routed"]) - 1) > TOL_EXACT:
                fail(f"{where}: expert_routed sums to {sum(y['expert_routed'])}")
            if not 0 <= y["dropped"] <= 1:
                fail(f"{where}: dropped {y['dropped']}")
    tot = sum(g["per_domain"][d]["tokens"] for d in g["domains"])
    if tot != g["tokens"] or g["overall"]["tokens"] != g["tokens"]:
        fail(f"tokens: overall {g['overall']['tokens']}, header {g['tokens']}, sum of domains {tot}")
    for l in range(g["n_layer"]):
        for key in ("sorted_mean", "activated", "expert_prob", "expert_routed", "dropped"):
            mix = sum(np.array(g["per_domain"][d]["layers"][l][key]) * g["per_domain"][d]["tokens"]
                      for d in g["domains"]) / tot
            if np.max(np.abs(mix - np.array(g["overall"]["layers"][l][key]))) > TOL_EXACT:
                fail(f"overall layer {l} {key} is not the token-weighted mean of the domains")
    print(f"invariants: {len(parts)} parts x {g['n_layer']} layers checked")


def read_config(f):
    text = f["config"][()]
    text = text[0] if isinstance(text, np.ndarray) else text
    cp = configparser.ConfigParser()
    cp.read_string(text.decode() if isinstance(text, bytes) else text)
    return cp


def forward_gates(P, idx, c):
    """Runs the MoE GPT on idx (B, T) in float64; returns per layer (probs (B*T, E), chosen (B*T, k), logit
    margin between the k-th and (k+1)-th logit (B*T,))."""
    import torch  # only here and in recompute: the invariants alone need no torch
    import torch.nn.functional as F
    from torch_check import attention, embed, layer
    L, NH, C, E, k = c["L"], c["NH"], c["C"], c["E"], c["k"]
    B, T = idx.shape
    x = embed(P, idx)
    out = []
    for l in range(L):
        x = attention(x, layer(P, l), NH)
        h = F.layer_norm(x, (C,), P["blocks/ln2_w"][l], P["blocks/ln2_b"][l], eps=1e-5).reshape(B * T, C)
        logits = h @ P["blocks/gate_w"][l].t()
        probs = logits.softmax(-1)
        srt = logits.sort(-1, descending=True).values
        margin = (srt[:, k - 1] - srt[:, k]) if k < E else torch.full((B * T,), math.inf, dtype=h.dtype)
        chosen = logits.topk(k, dim=-1).indices
        pc = probs.gather(1, chosen)
        w = pc / pc.sum(-1, keepdim=True) if k > 1 else pc
        y = torch.zeros_like(h)
        for e in range(E):
            tok, slot = (chosen == e).nonzero(as_tuple=True)
            if tok.numel() == 0:
                continue
            a = F.gelu(F.linear(h[tok], P["blocks/experts_fc_w"][l][e], P["blocks/experts_fc_b"][l][e]),
                       approximate="tanh")
            y = y.index_add(0, tok, w[tok, slot].unsqueeze(1) *
                            F.linear(a, P["blocks/experts_proj_w"][l][e], P["blocks/experts_proj_b"][l][e]))
        if "blocks/shared_fc_w" in P:
            a = F.gelu(F.linear(h, P["blocks/shared_fc_w"][l], P["blocks/shared_fc_b"][l]), approximate="tanh")
            y = y + F.linear(a, P["blocks/shared_proj_w"][l], P["blocks/shared_proj_b"][l])
        x = x + y.view(B, T, C)
        out.append((probs.numpy(), chosen.numpy(), margin.numpy()))
    return out


def recompute(g, ckpt, corpus):
    import torch  # only here and in forward_gates: the invariants alone need no torch
    with h5py.File(ckpt, "r") as f:
        cp = read_config(f)
        P = {}
        f["model"].visititems(lambda n, o: P.__setitem__(n, torch.from_numpy(o[()].astype(np.float64)))
                              if isinstance(o, h5py.Dataset) else None)
    c = {"L": cp.getint("model", "n_layer"), "NH": cp.getint("model", "n_head"), "C": cp.getint("model", "d_model"),
         "T": cp.getint("model", "seq_len"), "E": cp.getint("moe", "n_experts"), "k": cp.getint("moe", "top_k")}
    cf = cp.getfloat("moe", "capacity_factor")
    if cf != 0:
        fail(f"the recomputation needs a dropless model, {ckpt} has capacity_factor {cf}")
        return
    if (c["L"], c["E"], c["k"], c["T"]) != (g["n_layer"], g["n_experts"], g["top_k"], g["seq_len"]):
        fail(f"JSON header {g['n_layer'], g['n_experts'], g['top_k'], g['seq_len']} != checkpoint "
             f"{c['L'], c['E'], c['k'], c['T']} (L, E, k, T)")
        return
    T, E, k, L = c["T"], c["E"], c["k"], c["L"]
    ref = {}
    for d in g["domains"]:
        with h5py.File(f"{corpus}/tokens/{d}.h5", "r") as f:
            val = f["val"][()].astype(np.int64)
        W = (len(val) - 1) // T if len(val) > T else 0
        if g["windows"] > 0:
            W = min(W, g["windows"])
        if W == 0:
            fail(f"domain {d}: no validation window of {T + 1} tokens to recompute")
            return
        idx = torch.from_numpy(np.stack([val[w * T:w * T + T] for w in range(W)]))
        layers = forward_gates(P, idx, c)
        ref[d] = (W * T, layers)
    parts = {d: [ref[d]] for d in g["domains"]}
    parts["overall"] = [ref[d] for d in g["domains"]]
    for name, srcs in parts.items():
        got = g["overall"] if name == "overall" else g["per_domain"][name]
        n = sum(s[0] for s in srcs)
        if got["tokens"] != n:
            fail(f"{name}: {got['tokens']} tokens, the windows hold {n}")
            continue
        for l in range(L):
            probs = np.concatenate([s[1][l][0] for s in srcs])
            chosen = np.concatenate([s[1][l][1] for s in srcs])
            close = int(sum((s[1][l][2] < MARGIN).sum() for s in srcs))
            y = got["layers"][l]
            w = f"{name} layer {l}"
            check(f"{w} sorted_mean", y["sorted_mean"], (-np.sort(-probs, axis=1)).mean(0), *TOL_MEAN)
            check(f"{w} activated", y["activated"], np.take_along_axis(probs, chosen, 1).sum(1).mean(), *TOL_MEAN)
            check(f"{w} expert_prob", y["expert_prob"], probs.mean(0), *TOL_MEAN)
            # a near-tie may route one token differently: allow one assignment per close token
            check(f"{w} expert_routed", y["expert_routed"], np.bincount(chosen.ravel(), minlength=E) / (n * k),
                  0.0, (close + 0.5) / (n * k))
            check(f"{w} dropped", y["dropped"], 0.0, 0.0, 0.0)
    print(f"recomputed {sum(r[0] for r in ref.values())} tokens of {len(ref)} domains in float64 torch")


def main():
    if len(sys.argv) not in (2, 4):
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    g = json.load(open(sys.argv[1]))
    invariants(g)
    if len(sys.argv) == 4:
        recompute(g, sys.argv[2], sys.argv[3])
    if failures:
        print(f"{len(failures)} check(s) failed")
        return 1
    print("all checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
