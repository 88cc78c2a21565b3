#!/usr/bin/env python3
"""modular_check.py — recompute what tests/tools/modular_dump wrote with an independent PyTorch implementation
of the modular student (modular.h): shared embedding and tied head, expert trunks of pre-LayerNorm GPT blocks
(torch_check.block), an optional common trunk; a sequence's hidden state is the mean of the trunks it went through (its expert, all
experts for route -1, and the common trunk). Compares logits, loss and every gradient (autograd).

Usage: /usr/bin/python3 modular_check.py DUMP.h5     (exit 1 on any difference beyond the stated tolerances)
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from refcheck import check, failures
from torch_check import block

LEAVES = ["ln1_w", "ln1_b", "qkv_w", "qkv_b", "attn_proj_w", "attn_proj_b", "ln2_w", "ln2_b", "fc_w", "fc_b",
          "fc_proj_w", "fc_proj_b"]


def trunk(x, P, prefix, index, L, NH):
    for l in range(L):
        W = {n: (P[f"{prefix}/{n}"][index][l] if index is not None else P[f"{prefix}/{n}"][l]) for n in LEAVES}
        x = block(x, W, NH)
    return x


def run(g, name):
    V, T, C, NH, Fd, E, L, common, B = [int(v) for v in g["config"][()]]
    P = {k: torch.tensor(np.array(g["params"][k]), dtype=torch.float64, requires_grad=True)
         for k in list_tensors(g["params"])}
    idx = torch.tensor(np.array(g["inputs"]), dtype=torch.long)
    tgt = torch.tensor(np.array(g["targets"]), dtype=torch.long)
    routes = [int(r) for r in g["routes"][()]]
    x = P["wte"][idx] + P["wpe"][:T].unsqueeze(0)
    hs = []
    for b in range(B):
        xb = x[b:b + 1]
        outs = [trunk(xb, P, "experts", e, L, NH) for e in (range(E) if routes[b] == -1 else [routes[b]])]
        if common:
            outs.append(trunk(xb, P, "common", None, L, NH))
        hs.append(sum(outs) / len(outs))
    h = torch.cat(hs, 0)
    logits = F.linear(F.layer_norm(h, (C,), P["ln_f_w"], P["ln_f_b"], eps=1e-5), P["wte"])
    loss = F.cross_entropy(logits.reshape(-1, V), tgt.reshape(-1))
    loss.backward()
    check(f"{name}: logits", np.array(g["logits"]), logits.detach().numpy(), 1e-4, 1e-5)
    check(f"{name}: loss", float(g["loss"][0]), loss.item(), 1e-5, 1e-6)
    for k, p in P.items():
        ref = p.grad.numpy()
        scale = float(np.abs(ref).max()) if ref.size else 0.0
        check(f"{name}: grad {k}", np.array(g["grads"][k]), ref, 1e-3, 1e-6 * max(scale, 1e-12))


def list_tensors(group, prefix=""):
    out = []
    for k, v in group.items():
        if isinstance(v, h5py.Group):
            out += list_tensors(v, prefix + k + "/")
        else:
            out.append(prefix + k)
    return out


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    torch.set_default_dtype(torch.float64)
    with h5py.File(sys.argv[1], "r") as f:
        for name in ("common", "plain"):
            run(f[name], name)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
