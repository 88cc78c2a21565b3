#!/usr/bin/env python3
"""moe_check.py — recompute what tests/tools/moe_dump wrote, with an independent PyTorch implementation.

Usage: /usr/bin/python3 moe_check.py DUMP.h5

The token-level MoE layer of include/mome/moe.h is written here from its definition with torch ops, in float64
(so the comparison measures mome's float32 error against the exact values):
  logits = x Wg^T; probs = softmax; top-k by torch.topk (slot 0 = largest); w = p / sum chosen p (renormalize)
  or p; capacity ceil(cf * N * k / E) with assignments admitted in (token, slot) order, the rest dropped;
  experts y += w * (gelu_tanh(x fc_w^T + fc_b) proj_w^T + proj_b) for kept assignments; + shared expert;
  aux = E * sum_e f_e P_e with f_e the (constant) routed fraction and P_e = mean probs; z = mean lse^2.
Gradients come from autograd of grad_scale * (sum(y * R) + aux_coef * aux + z_coef * z).
Compared, each against a stated tolerance (|mome - torch| <= atol + rtol * |torch| element-wise; for
gradients atol is relative to the tensor's largest gradient): routing (chosen experts, kept/dropped, counts,
capacity: exactly), y, aux, z, and the gradients of x and every parameter. Max errors are printed per tensor;
the exit status is 1 if any comparison fails.
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from refcheck import check, failures

# (rtol, atol) per quantity: mome is float32, the reference float64.
TOL = {
    "y": (1e-4, 5e-6),
    "loss": (1e-5, 1e-7),
    "grad": (1e-3, 2e-6),   # atol is multiplied by max|grad| of the tensor (measured worst ~3e-7)
}
MIN_MARGIN = 1e-4  # a top-k logit margin below this would make the routing comparison ill-posed

PARAMS = ["gate_w", "experts_fc_w", "experts_fc_b", "experts_proj_w", "experts_proj_b"]
SHARED = ["shared_fc_w", "shared_fc_b", "shared_proj_w", "shared_proj_b"]

def check_exact(what, got, ref):
    got = np.asarray(got)
    ref = np.asarray(ref)
    ok = got.shape == ref.shape and bool(np.all(got == ref))
    n_bad = int(np.sum(got != ref)) if got.shape == ref.shape else -1
    print(f"{what:44s} {'equal' if ok else f'{n_bad} differ'}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)
        print(f"    {what}: mome {got.ravel()[:16]} ... torch {ref.ravel()[:16]} ...", file=sys.stderr)


def moe_torch(P, x, R, cfg, coefs):
    """Returns y, aux, z, chosen (N,k), kept (N,k), routed (E,), capacity, the scalar loss and min margin."""
    C, E, Fd, k, Fs, renorm, N = cfg
    cf, aux_coef, z_coef, gs = coefs
    logits = x @ P["gate_w"].t()                       # (N, E)
    probs = torch.softmax(logits, dim=-1)
    top_logit, chosen = torch.topk(logits, k, dim=-1)  # sorted, slot 0 largest
    srt = torch.sort(logits.detach(), dim=-1, descending=True).values
    margin = float((srt[:, k - 1] - srt[:, k]).min()) if k < E else math.inf
    pc = probs.gather(1, chosen)                       # (N, k)
    w = pc / pc.sum(dim=-1, keepdim=True) if renorm else pc
    capacity = math.ceil(cf * N * k / E) if cf > 0 else 0
    ch = chosen.numpy()
    kept = np.zeros((N, k), dtype=np.int64)
    taken = np.zeros(E, dtype=np.int64)
    for t in range(N):
        for s in range(k):
            e = ch[t, s]
            if capacity == 0 or taken[e] < capacity:
                kept[t, s] = 1
                taken[e] += 1
    routed = np.bincount(ch.ravel(), minlength=E)
    y = torch.zeros(N, C, dtype=x.dtype)
    for e in range(E):
        tok, slot = np.nonzero((ch == e) & (kept == 1))
        if tok.size == 0:
            continue
        tok_t, slot_t = torch.from_numpy(tok), torch.from_numpy(slot)
        h = F.gelu(F.linear(x[tok_t], P["experts_fc_w"][e], P["experts_fc_b"][e]), approximate="tanh")
        out = F.linear(h, P["experts_proj_w"][e], P["experts_proj_b"][e])
        y = y.index_add(0, tok_t, w[tok_t, slot_t].unsqueeze(1) * out)
    if Fs > 0:
        h = F.gelu(F.linear(x, P["shared_fc_w"], P["shared_fc_b"]), approximate="tanh")
        y = y + F.linear(h, P["shared_proj_w"], P["shared_proj_b"])
    f = torch.from_numpy(routed.astype(np.float64) / (N * k))   # constant: no gradient, as in Switch
    aux = E * (f * probs.mean(dim=0)).sum()
    z = torch.logsumexp(logits, dim=-1).pow(2).mean()
    loss = gs * ((y * R).sum() + aux_coef * aux + z_coef * z)
    return y, aux, z, ch, kept, routed, capacity, loss, margin


def check_case(f, name):
    g = f[name]
    cfg = tuple(int(v) for v in g["config"][...])
    C, E, Fd, k, Fs, renorm, N = cfg
    coefs = tuple(float(v) for v in g["coefs"][...])
    cf, aux_coef, z_coef, gs = coefs
    print(f"-- {name}: N={N} C={C} E={E} F={Fd} k={k} Fs={Fs} renormalize={renorm} capacity_factor={cf:g} "
          f"aux_coef={aux_coef:g} z_coef={z_coef:g} grad_scale={gs:g}")
    names = PARAMS + (SHARED if Fs > 0 else [])
    P = {n: torch.tensor(np.array(g["params/" + n][...]), dtype=torch.float64, requires_grad=True) for n in names}
    x = torch.tensor(np.array(g["x"][...]), dtype=torch.float64, requires_grad=True)
    R = torch.tensor(np.array(g["R"][...]), dtype=torch.float64)
    y, aux, z, ch, kept, routed, capacity, loss, margin = moe_torch(P, x, R, cfg, coefs)
    loss.backward()
    print(f"   torch: capacity {capacity}, dropped {int((kept == 0).sum())} of {N * k}, smallest top-k logit margin "
          f"{margin:.3e}, aux {aux.item():.6f}, z {z.item():.6f}")
    if margin < MIN_MARGIN:
        print(f"{name}: top-k margin {margin:.3e} < {MIN_MARGIN:.0e}: routing comparison ill-posed  FAIL")
        failures.append(f"{name} margin")

    check_exact(f"{name} chosen experts", np.array(g["expert"][...]).astype(np.int64), ch)
    check_exact(f"{name} kept / dropped", np.array(g["kept"][...]).astype(np.int64), kept)
    check_exact(f"{name} routed counts", np.array(g["routed"][...]).astype(np.int64), routed)
    check_exact(f"{name} kept counts", np.array(g["counts"][...]).astype(np.int64),
                np.bincount(ch[kept == 1], minlength=E))
    check_exact(f"{name} capacity", int(g["capacity"][0]), capacity)
    check_exact(f"{name} dropped", int(g["n_dropped"][0]), int((kept == 0).sum()))
    if cf > 0 and int((kept == 0).sum()) == 0:
        print(f"{name}: capacity factor {cf:g} was meant to drop assignments, none dropped  FAIL")
        failures.append(f"{name} no drops")

    rtol, atol = TOL["y"]
    check(f"{name} y", g["y"][...], y.detach().numpy(), rtol, atol)
    rtol, atol = TOL["loss"]
    check(f"{name} aux loss", g["aux"][0], aux.item(), rtol, atol)
    check(f"{name} z-loss", g["z"][0], z.item(), rtol, atol)
    rtol, atol = TOL["grad"]
    ref = x.grad.numpy()
    check(f"{name} grad x", g["grads/x"][...], ref, rtol, atol * float(np.abs(ref).max()))
    for n in names:
        ref = P[n].grad.numpy()
        check(f"{name} grad {n}", g["grads/" + n][...], ref, rtol, atol * max(float(np.abs(ref).max()), 1e-30))


def main():
    if len(sys.argv) != 2:
        print("usage: moe_check.py DUMP.h5", file=sys.stderr)
        return 2
    with h5py.File(sys.argv[1], "r") as f:
        for name in ("top1_cap", "top2_shared"):
            if name not in f:
                print(f"{name}: group missing from the dump  FAIL")
                failures.append(name)
                continue
            check_case(f, name)
    if failures:
        print(f"moe_check: {len(failures)} comparison(s) FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("moe_check: all comparisons passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
