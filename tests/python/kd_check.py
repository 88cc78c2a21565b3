#!/usr/bin/env python3
"""kd_check.py — recompute what tests/tools/kd_dump wrote (the fused KD + CE loss of src/kd.c) with PyTorch.

Usage: /usr/bin/python3 kd_check.py DUMP.h5

Everything here is float64 torch autograd from the dumped float32 inputs:
  CE          F.cross_entropy(z, target, reduction='sum') over rows with target >= 0 (temperature 1);
  forward KL  F.kl_div(log q, log p, log_target=True, reduction='sum') with q = softmax(z/T), p = softmax(t/T);
  reverse KL  sum q (log q - log p), written out;
  top-k       k+1 buckets from the dumped ids / log-probs / tail: student bucket log-probs gathered from
              F.log_softmax(z/T), student tail = torch.logsumexp over the non-top-k ids; reverse KL floors the
              teacher tail at tail_floor inside the log (as kd.h documents);
  loss        w_ce * CE + w_kd * T^2 * KL summed over rows; gradient = grad_scale * d loss / d z (autograd).
The top-k targets are also rebuilt from the teacher with torch.topk (ids exact, log-probs, tail).
Compared, each against a stated tolerance (|mome - torch| <= atol + rtol * |torch|, element-wise): the sums
(loss, ce_sum, kl_sum, n_valid, n_kd) and every gradient. Max errors are printed; exit status 1 on any failure.
"""
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from refcheck import check, failures

# (rtol, atol) for float32 computations against float64 references.
TOL = {
    "sums": (1e-5, 1e-7),
    "grad": (1e-4, 1e-5),   # atol is multiplied by max|grad| of the case
    "topk_logp": (1e-5, 1e-6),
    "topk_tail": (1e-4, 1e-12),
}


def kd_loss(z, t, tg, T, w_ce, w_kd, fmt, direction, ids, logp, tail, floor):
    """Returns (loss, ce_sum, kl_sum) as float64 tensors; z requires grad."""
    valid = tg >= 0
    ce = F.cross_entropy(z[valid], tg[valid].long(), reduction="sum")
    lq = F.log_softmax(z / T, dim=-1)
    if fmt == "full":
        lp = F.log_softmax(t / T, dim=-1)
        if direction == "forward":
            kl = F.kl_div(lq, lp, log_target=True, reduction="sum")
        else:
            kl = (lq.exp() * (lq - lp)).sum()
    else:
        ids = ids.long()
        lq_k = lq.gather(1, ids)
        mask = torch.zeros_like(lq, dtype=torch.bool).scatter_(1, ids, True)
        lq_tail = torch.logsumexp(lq.masked_fill(mask, float("-inf")), dim=-1)
        if direction == "forward":
            P = logp.exp()
            kl_rows = (P * (logp - lq_k)).sum(-1)
            pos = tail > 0
            kl_rows = kl_rows + torch.where(pos, tail * (torch.log(tail.clamp_min(1e-300)) - lq_tail),
                                            torch.zeros_like(tail))
        else:
            kl_rows = (lq_k.exp() * (lq_k - logp)).sum(-1)
            kl_rows = kl_rows + lq_tail.exp() * (lq_tail - torch.log(tail.clamp_min(floor)))
        kl = kl_rows.sum()
    return w_ce * ce + w_kd * T * T * kl, ce, kl


def main():
    if len(sys.argv) != 2:
        print("usage: kd_check.py DUMP.h5", file=sys.stderr)
        return 2
    torch.set_default_dtype(torch.float64)
    with h5py.File(sys.argv[1], "r") as f:
        N, V, k = (int(x) for x in f["config"][()])
        T, w_ce, w_kd, gs, floor = (float(x) for x in f["params"][()])
        z0 = torch.from_numpy(f["student"][()].astype(np.float64))
        t = torch.from_numpy(f["teacher"][()].astype(np.float64))
        tg = torch.from_numpy(f["targets"][()].astype(np.int64))
        ids = torch.from_numpy(f["topk/ids"][()].astype(np.int64))
        logp = torch.from_numpy(f["topk/logp"][()].astype(np.float64))
        tail = torch.from_numpy(f["topk/tail"][()].astype(np.float64))
        cases = {name: (f[name + "/sums"][()], f[name + "/grad"][()]) for name in
                 ("full_forward", "full_reverse", "topk_forward", "topk_reverse")}
    print(f"kd_check: N={N} V={V} k={k} T={T} w_ce={w_ce} w_kd={w_kd} grad_scale={gs}")

    # the top-k builder against torch.topk (random float data: no ties)
    lp_full = F.log_softmax(t / T, dim=-1)
    ref_lp, ref_ids = torch.topk(lp_full, k, dim=-1)
    ids_ok = bool(torch.equal(ref_ids, ids))
    print(f"{'topk ids == torch.topk':36s} {'ok' if ids_ok else 'FAIL'}")
    if not ids_ok:
        failures.append("topk ids")
    check("topk logp", logp.numpy(), ref_lp.numpy(), *TOL["topk_logp"])
    mask = torch.zeros_like(lp_full, dtype=torch.bool).scatter_(1, ref_ids, True)
    ref_tail = torch.logsumexp(lp_full.masked_fill(mask, float("-inf")), dim=-1).exp()
    check("topk tail", tail.numpy(), ref_tail.numpy(), *TOL["topk_tail"])
    print(f"    (tail range {float(ref_tail.min()):.3e} .. {float(ref_tail.max()):.3e})")

    n_valid = int((tg >= 0).sum())
    for name, (sums, grad) in cases.items():
        fmt, direction = name.split("_")
        z = z0.clone().requires_grad_(True)
        loss, ce, kl = kd_loss(z, t, tg, T, w_ce, w_kd, fmt, direction, ids, logp, tail, floor)
        loss.backward()
        ref_grad = (gs * z.grad).numpy()
        ref_sums = np.array([loss.item(), ce.item(), kl.item(), n_valid, N])
        check(f"{name} sums", sums, ref_sums, *TOL["sums"])
        rtol, atol = TOL["grad"]
        check(f"{name} grad", grad, ref_grad, rtol, atol * float(np.abs(ref_grad).max()))

    if failures:
        print(f"kd_check: {len(failures)} comparison(s) failed: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("kd_check: all comparisons passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
