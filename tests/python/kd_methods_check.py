#!/usr/bin/env python3
"""kd_methods_check.py — recompute what tests/tools/kd_methods_dump wrote (the MoE-teacher distillation methods
kd.method = topk | all | ka | sar of src/distill.c) with an independent PyTorch implementation in float64.

Usage: /usr/bin/python3 kd_methods_check.py DUMP.h5

Written here from the definitions in include/mome/moe.h, distill.h and kd.h, from the dumped float32 parameters:
  teacher     the pre-LayerNorm GPT of torch_check.gpt_forward with every MLP replaced by the MoE layer
              (gate logits = ln2(x) Wg^T, probs = softmax; experts gelu_tanh MLPs; a shared expert every token
              passes through), in each gate mode:
                TOPK  torch.topk by logit (slot 0 largest), w = p / sum chosen p (top_k > 1), capacity
                      ceil(cf * N * k / E) per expert admitted in (token, slot) order, the rest dropped;
                ALL   every expert, w = softmax over all E logits;
                KA    the dumped chosen sets (torch cannot replay mome's RNG), w = softmax over the chosen logits;
                      with lambda = 0 the sets are torch's own top n instead (and the dumped ones must equal them);
  student     torch_check.gpt_forward (dense), checked against the dumped student logits;
  KD loss     alpha * CE + (1 - alpha) * T^2 * (1/M) sum_m KL_m (kd_check.kd_loss for each pass: forward / reverse
              KL, full logits or top-k targets rebuilt here with torch.topk from torch's own teacher logits),
              summed over rows; the logits gradient = grad_scale * autograd;
  sar         L_router = T^2 * mean over positions of KL(teacher, fixed student) in kd.direction + sar_aux_coef *
              sum_l E sum_e f_e P_e (f_e: fractions of the top_k assignments by probability, constant; P_e: mean
              gate probability), teacher in ALL mode; the gate gradient by autograd; one step of
              torch.optim.AdamW(lr = sar_lr, weight_decay = 0: distill.c's router AdamW has none) on gate_w; the
              targets then come from the teacher with mome's updated gate (itself checked against torch's step).
Also checked: the dumped KA sets are valid (n distinct experts in [0, E) per token, in slot order = logit
descending; lambda 0: exactly torch's top n; lambda 0.5: some tokens sampled off the top n, the two passes differ),
the TOPK routing (chosen experts and kept flags, exactly), the routing margins that make those comparisons
well-posed. Each comparison prints its max errors and tolerance (refcheck.check); the exit status is 1 on any
failure.
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from kd_check import kd_loss
from refcheck import check, failures
from torch_check import attention, embed, gpt_forward, head, layer

# (rtol, atol) per quantity: mome is float32 end to end, the reference float64 from the same float32 inputs.
TOL = {
    "logits": (1e-4, 2e-5),       # teacher / student logits
    "sums": (2e-6, 1e-7),         # loss, ce_sum, kl_sum (sums over 24 rows, ~10 to ~70)
    "grad": (1e-4, 1e-5),         # atol times max|grad| of the case
    "topk_logp": (1e-5, 2e-6),
    "topk_tail": (1e-4, 1e-9),
    "router": (1e-6, 1e-8),       # router loss and its parts (~2)
    "gate_grad": (1e-3, 1e-5),    # atol times max|grad| (the gradient runs back through the whole teacher)
    "gate_after": (0.0, 1e-6),    # |p| ~ 1 in float32, one step of lr 1e-2
}
MIN_MARGIN = 2e-5  # gaps between sorted gate logits (and teacher log-probs up to the top-k boundary) must exceed
                   # this: ~10x the largest float32 error of mome's logits here (~1.5e-6)
SENSITIVE_REL = 1e-4  # gate-gradient entries below this fraction of the largest: Adam's step sign is float noise

TEACHER = ["wte", "wpe", "blocks/ln1_w", "blocks/ln1_b", "blocks/qkv_w", "blocks/qkv_b", "blocks/attn_proj_w",
           "blocks/attn_proj_b", "blocks/ln2_w", "blocks/ln2_b", "ln_f_w", "ln_f_b", "blocks/gate_w",
           "blocks/shared_fc_w", "blocks/shared_fc_b", "blocks/shared_proj_w", "blocks/shared_proj_b",
           "blocks/experts_fc_w", "blocks/experts_fc_b", "blocks/experts_proj_w", "blocks/experts_proj_b"]
STUDENT = ["wte", "wpe", "blocks/ln1_w", "blocks/ln1_b", "blocks/qkv_w", "blocks/qkv_b", "blocks/attn_proj_w",
           "blocks/attn_proj_b", "blocks/ln2_w", "blocks/ln2_b", "blocks/fc_w", "blocks/fc_b", "blocks/fc_proj_w",
           "blocks/fc_proj_b", "ln_f_w", "ln_f_b"]
DIRS = ("forward", "reverse")
FMTS = ("full", "topk")


def check_exact(what, got, ref, width=40):
    got, ref = np.asarray(got), np.asarray(ref)
    ok = got.shape == ref.shape and bool(np.all(got == ref))
    n_bad = int(np.sum(got != ref)) if got.shape == ref.shape else -1
    print(f"{what:{width}s} {'equal' if ok else f'{n_bad} differ'}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


def expect(ok, what, detail="", width=40):
    print(f"{what:{width}s} {detail}  {'ok' if ok else 'FAIL'}")
    if not ok:
        failures.append(what)


def min_gap(logits):
    """Smallest gap between adjacent sorted values of any row: every ordering and top-n choice is well-posed when
    it exceeds the float32 error of the logits."""
    s = torch.sort(logits.detach(), dim=-1, descending=True).values
    return float((s[:, :-1] - s[:, 1:]).min())


def moe_layer(P, l, x, mode, cfg, sets=None):
    """One MoE FFN of block l on x (N, C). mode 'topk' | 'all' | 'ka' (sets (N, n): chosen experts, slot order).
    Returns y (N, C) and a dict with the gate logits, probs, chosen experts and kept flags."""
    E, k, Fs, cf = cfg["E"], cfg["k"], cfg["Fs"], cfg["cf"]
    N = x.shape[0]
    logits = x @ P["blocks/gate_w"][l].t()             # (N, E)
    probs = torch.softmax(logits, dim=-1)
    if mode == "topk":
        chosen = torch.topk(logits, k, dim=-1).indices   # sorted: slot 0 the largest
        pc = probs.gather(1, chosen)
        w = pc / pc.sum(dim=-1, keepdim=True) if k > 1 else pc
        capacity = math.ceil(cf * N * k / E) if cf > 0 else 0
        ch = chosen.numpy()
        kept = np.zeros(ch.shape, dtype=np.int64)
        taken = np.zeros(E, dtype=np.int64)
        for t in range(N):
            for s in range(k):
                if capacity == 0 or taken[ch[t, s]] < capacity:
                    kept[t, s] = 1
                    taken[ch[t, s]] += 1
    elif mode == "all":
        chosen = torch.arange(E).expand(N, E)
        w = probs
        kept = np.ones((N, E), dtype=np.int64)
    else:
        chosen = torch.as_tensor(sets, dtype=torch.int64)
        w = torch.softmax(logits.gather(1, chosen), dim=-1)  # the softmax over the chosen logits
        kept = np.ones(tuple(chosen.shape), dtype=np.int64)
    # every expert on every token, then the chosen ones picked: simple and exact
    outs = torch.stack([F.linear(F.gelu(F.linear(x, P["blocks/experts_fc_w"][l][e], P["blocks/experts_fc_b"][l][e]),
                                        approximate="tanh"),
                                 P["blocks/experts_proj_w"][l][e], P["blocks/experts_proj_b"][l][e])
                        for e in range(E)])               # (E, N, C)
    rows = torch.arange(N)
    keep = torch.from_numpy(kept).to(x.dtype)
    y = sum(w[:, s:s + 1] * keep[:, s:s + 1] * outs[chosen[:, s], rows] for s in range(chosen.shape[1]))
    if Fs > 0:
        h = F.gelu(F.linear(x, P["blocks/shared_fc_w"][l], P["blocks/shared_fc_b"][l]), approximate="tanh")
        y = y + F.linear(h, P["blocks/shared_proj_w"][l], P["blocks/shared_proj_b"][l])
    return y, {"logits": logits, "probs": probs, "chosen": chosen.numpy(), "kept": kept}


def teacher_forward(P, idx, cfg, mode, sets=None):
    """Logits (B*T, V) of the MoE teacher and the per-layer gate info. sets: (L, N, n) for mode 'ka'."""
    L, NH, C = cfg["L"], cfg["NH"], cfg["C"]
    B, T = idx.shape
    x = embed(P, idx)
    layers = []
    for l in range(L):
        x = attention(x, layer(P, l), NH)
        h = F.layer_norm(x, (C,), P["blocks/ln2_w"][l], P["blocks/ln2_b"][l], eps=1e-5)
        y, info = moe_layer(P, l, h.reshape(B * T, C), mode, cfg, None if sets is None else sets[l])
        x = x + y.view(B, T, C)
        layers.append(info)
    return head(P, x).reshape(B * T, -1), layers


def topk_targets(t, T, k):
    """The top-k targets of kd.h from teacher logits (N, V): ids, log-probs at temperature T, tail mass."""
    lp = F.log_softmax(t / T, dim=-1)
    logp, ids = torch.topk(lp, k, dim=-1)
    mask = torch.zeros_like(lp, dtype=torch.bool).scatter_(1, ids, True)
    tail = torch.logsumexp(lp.masked_fill(mask, float("-inf")), dim=-1).exp()
    srt = torch.sort(lp, dim=-1, descending=True).values
    margin = float((srt[:, :k] - srt[:, 1:k + 1]).min())  # ids order and top-k boundary
    return ids, logp, tail, margin


def kd_multi(z0, passes, tg, T, alpha, direction, fmt, k, floor):
    """loss = alpha * CE + (1 - alpha) * T^2 * mean_m KL_m summed over rows; returns (sums, dloss/dz, top-k)."""
    z = z0.clone().requires_grad_(True)
    ce, kls, tks = None, [], []
    for t in passes:
        ids, logp, tail, margin = topk_targets(t, T, k)
        tks.append((ids, logp, tail, margin))
        _, ce_m, kl_m = kd_loss(z, t, tg, T, alpha, 1.0 - alpha, fmt, direction, ids, logp, tail, floor)
        ce = ce_m if ce is None else ce
        kls.append(kl_m)
    kl = sum(kls) / len(kls)
    loss = alpha * ce + (1.0 - alpha) * T * T * kl
    loss.backward()
    n_valid = int((tg >= 0).sum())
    return np.array([loss.item(), ce.item(), kl.item(), n_valid, z0.shape[0]]), z.grad.numpy(), tks


def router_loss(P, gate, idx, cfg, z, T, direction, aux_coef):
    """The sar router loss with the teacher in ALL mode and gate_w = gate; returns (loss, KL part, balance, f)."""
    Pg = dict(P)
    Pg["blocks/gate_w"] = gate
    t, layers = teacher_forward(Pg, idx, cfg, "all")
    lp = F.log_softmax(t / T, dim=-1)
    lq = F.log_softmax(z / T, dim=-1)
    if direction == "forward":
        kl_rows = (lp.exp() * (lp - lq)).sum(-1)
    else:
        kl_rows = (lq.exp() * (lq - lp)).sum(-1)
    kl_part = T * T * kl_rows.mean()
    E, k = cfg["E"], cfg["k"]
    bal, loads = 0.0, []
    for info in layers:
        probs = info["probs"]
        top = torch.topk(probs.detach(), k, dim=-1).indices
        f = torch.bincount(top.reshape(-1), minlength=E).to(probs.dtype) / (probs.shape[0] * k)  # constant
        bal = bal + E * (f * probs.mean(dim=0)).sum()
        loads.append(f.numpy())
    return kl_part + aux_coef * bal, kl_part, bal, np.stack(loads), layers


def main():
    if len(sys.argv) != 2:
        print("usage: kd_methods_check.py DUMP.h5", file=sys.stderr)
        return 2
    torch.set_default_dtype(torch.float64)
    f = h5py.File(sys.argv[1], "r")
    V, Tm, L, NH, C, Fd, E, k, Fs, B, T = (int(x) for x in f["config/teacher"][()])
    scfg = tuple(int(x) for x in f["config/student"][()])
    cf, temp, alpha, gs, sar_lr, sar_aux, beta1, beta2, eps, floor, ktop = (float(x) for x in f["coefs"][()])
    ktop = int(ktop)
    cfg = {"L": L, "NH": NH, "C": C, "E": E, "k": k, "Fs": Fs, "cf": cf}
    N = B * T
    P = {n: torch.from_numpy(f["teacher/params/" + n][()].astype(np.float64)) for n in TEACHER}
    S = {n: torch.from_numpy(f["student/params/" + n][()].astype(np.float64)) for n in STUDENT}
    idx = torch.from_numpy(f["inputs"][()].astype(np.int64))
    tg = torch.from_numpy(f["targets"][()].astype(np.int64)).reshape(-1)
    z = torch.from_numpy(f["student_logits"][()].astype(np.float64))
    print(f"teacher V={V} T_max={Tm} L={L} NH={NH} C={C} F={Fd} E={E} top_k={k} Fs={Fs} capacity_factor={cf:g}; "
          f"student {scfg}; batch {B}x{T}; T={temp:g} alpha={alpha:g} top-{ktop}; sar lr {sar_lr:g} aux {sar_aux:g} "
          f"betas ({beta1:g}, {beta2:g}) eps {eps:g}")

    zs = gpt_forward(S, idx, scfg).reshape(N, V)
    check("student logits (torch_check.gpt_forward)", f["student_logits"][()], zs.numpy(), *TOL["logits"])

    margins = []  # (what, margin) of every ordering the comparisons rely on

    def kd_cases(group, passes, what):
        for direction in DIRS:
            for fmt in FMTS:
                sums, grad, tks = kd_multi(z, passes, tg, temp, alpha, direction, fmt, ktop, floor)
                g = f[f"{group}/{direction}/{fmt}"]
                check(f"{what} {direction} {fmt}: sums", g["sums"][()], sums, *TOL["sums"])
                ref = gs * grad
                rtol, atol = TOL["grad"]
                check(f"{what} {direction} {fmt}: logits grad", g["grad"][()], ref, rtol,
                      atol * float(np.abs(ref).max()))
                if fmt == "topk":
                    gt = f[f"{group}/{direction}/topk"]
                    ids = np.stack([t[0].numpy() for t in tks])
                    check_exact(f"{what} {direction} top-{ktop} ids", gt["ids"][()], ids)
                    check(f"{what} {direction} top-{ktop} logp", gt["logp"][()],
                          np.stack([t[1].numpy() for t in tks]), *TOL["topk_logp"])
                    check(f"{what} {direction} top-{ktop} tail", gt["tail"][()],
                          np.stack([t[2].numpy() for t in tks]), *TOL["topk_tail"])
                    margins.extend((f"{what} teacher top-{ktop} log-probs", t[3]) for t in tks)

    # ---- topk: the teacher as trained (TOPK with capacity)
    print("-- topk: the teacher routes as trained")
    t, layers = teacher_forward(P, idx, cfg, "topk")
    check("topk teacher logits", f["topk/teacher_logits"][0], t.numpy(), *TOL["logits"])
    check_exact("topk chosen experts", f["topk/experts"][0], np.stack([x["chosen"] for x in layers]))
    kept = np.stack([x["kept"] for x in layers])
    check_exact("topk kept / dropped (capacity)", f["topk/kept"][0], kept)
    n_drop = int((kept == 0).sum())
    expect(n_drop > 0, "topk: capacity drops some assignments", f"{n_drop} of {kept.size} dropped")
    margins.extend(("topk gate logits", min_gap(x["logits"])) for x in layers)
    kd_cases("topk", [t.detach()], "topk")

    # ---- all: every expert, softmax weights
    print("-- all: every expert of every layer")
    t_all, layers = teacher_forward(P, idx, cfg, "all")
    check("all teacher logits", f["all/teacher_logits"][0], t_all.numpy(), *TOL["logits"])
    kd_cases("all", [t_all.detach()], "all")

    # ---- ka with lambda 0: torch's own top n (the dumped sets must be exactly those)
    M, n, lam = (f["ka0/info"][()])
    M, n = int(M), int(n)
    print(f"-- ka0: lambda {lam:g}, n = {n}, M = {M}")
    expect(n == E - 1 and lam == 0.0 and M == 1, "ka0: n = E - 1, lambda 0, one pass", f"n {n} lambda {lam:g} M {M}")
    sets0 = []
    for l in range(L):  # top n of each layer depends on the layers below: build them layer by layer
        _, lay = teacher_forward(P, idx, cfg, "ka", sets0 + [np.zeros((N, n), dtype=np.int64)] * (L - l))
        sets0.append(torch.topk(lay[l]["logits"], n, dim=-1).indices.numpy())
    t_ka0, layers = teacher_forward(P, idx, cfg, "ka", sets0)
    check_exact("ka0 chosen sets == torch top n", f["ka0/experts"][0], np.stack(sets0))
    check("ka0 teacher logits", f["ka0/teacher_logits"][0], t_ka0.numpy(), *TOL["logits"])
    margins.extend(("ka0 gate logits", min_gap(x["logits"])) for x in layers)
    kd_cases("ka0", [t_ka0.detach()], "ka0")

    # ---- ka with lambda 0.5, M passes: the dumped sets, validated
    M, n, lam = (f["ka/info"][()])
    M, n = int(M), int(n)
    print(f"-- ka: lambda {lam:g}, n = {n}, M = {M}")
    sets = f["ka/experts"][()]                        # (M, L, N, n)
    expect(sets.shape == (M, L, N, n) and M == 2 and n == E - 1, "ka: sets of n = E - 1 experts, 2 passes",
           f"shape {sets.shape}")
    in_range = bool(np.all((sets >= 0) & (sets < E)))
    distinct = all(len(set(row)) == n for row in sets.reshape(-1, n).tolist())
    expect(in_range and distinct, "ka: n distinct experts in [0, E) per token")
    passes, off_top = [], 0
    for m in range(M):
        t_m, layers = teacher_forward(P, idx, cfg, "ka", sets[m])
        check(f"ka pass {m} teacher logits", f["ka/teacher_logits"][m], t_m.numpy(), *TOL["logits"])
        passes.append(t_m.detach())
        for l, info in enumerate(layers):
            lg = info["logits"].detach()
            order = torch.sort(lg.gather(1, torch.from_numpy(sets[m, l]).long()), dim=-1, descending=True).indices
            check_exact(f"ka pass {m} layer {l}: slot order = logit order", order.numpy(),
                        np.broadcast_to(np.arange(n), order.shape))
            top = torch.topk(lg, n, dim=-1).indices.numpy()
            off_top += int(sum(set(a) != set(b) for a, b in zip(sets[m, l].tolist(), top.tolist())))
            margins.append(("ka gate logits", min_gap(lg)))
    expect(off_top > 0, "ka: some tokens sampled off the top n", f"{off_top} of {M * L * N} token sets")
    n_diff = int(np.sum(np.any(sets[0] != sets[1], axis=-1)))
    expect(n_diff > 0, "ka: the two passes draw differently", f"{n_diff} of {L * N} token sets differ")
    kd_cases("ka", passes, "ka")

    # ---- sar: router loss, gate gradient, one AdamW step, the updated teacher's targets
    print(f"-- sar: router loss, gate gradient, one AdamW step (lr {sar_lr:g}, weight_decay 0)")
    for direction in DIRS:
        g = f[f"sar/{direction}"]
        gate = P["blocks/gate_w"].clone().requires_grad_(True)
        loss, kl_part, bal, loads, layers = router_loss(P, gate, idx, cfg, z, temp, direction, sar_aux)
        loss.backward()
        router = g["router"][()]
        check(f"sar {direction}: router loss", router[:1], [loss.item()], *TOL["router"])
        check(f"sar {direction}: router loss (from the step)", router[1:2], [loss.item()], *TOL["router"])
        check(f"sar {direction}: KL part, balance", router[2:], [kl_part.item(), bal.item()], *TOL["router"])
        check_exact(f"sar {direction}: top_k fractions f_e", g["load"][()], loads)
        margins.extend(("sar gate logits", min_gap(x["logits"])) for x in layers)
        ref = gate.grad.numpy().copy()
        rtol, atol = TOL["gate_grad"]
        gmax = float(np.abs(ref).max())
        check(f"sar {direction}: gate gradient", g["gate_grad"][()], ref, rtol, atol * gmax)
        opt = torch.optim.AdamW([gate], lr=sar_lr, betas=(beta1, beta2), eps=eps, weight_decay=0.0)
        opt.step()
        after = gate.detach().numpy()
        # where the gradient is float noise, the sign of Adam's first step (~lr * sign(g)) is too
        sens = np.abs(ref) < SENSITIVE_REL * gmax
        got = g["gate_after"][()]
        check(f"sar {direction}: gate after the step", got[~sens], after[~sens], *TOL["gate_after"])
        if sens.any():
            check(f"sar {direction}: gate after ({int(sens.sum())} Adam-sensitive)", got[sens], after[sens], 0.0,
                  2.0 * sar_lr)
        moved = float(np.abs(got - P["blocks/gate_w"].numpy()).max())
        expect(moved > 0.5 * sar_lr, f"sar {direction}: the step moved the gate", f"max |change| {moved:.3e}")
        # the targets of the updated teacher (mome's gate: its step was checked just above)
        Pa = dict(P)
        Pa["blocks/gate_w"] = torch.from_numpy(got.astype(np.float64))
        t_sar, _ = teacher_forward(Pa, idx, cfg, "all")
        check(f"sar {direction}: teacher logits after the step", g["teacher_logits"][0], t_sar.numpy(),
              *TOL["logits"])
        for fmt in FMTS:
            sums, grad, tks = kd_multi(z, [t_sar.detach()], tg, temp, alpha, direction, fmt, ktop, floor)
            gg = g[fmt]
            check(f"sar {direction} {fmt}: sums", gg["sums"][()], sums, *TOL["sums"])
            refg = gs * grad
            rtol, atol = TOL["grad"]
            check(f"sar {direction} {fmt}: logits grad", gg["grad"][()], refg, rtol, atol * float(np.abs(refg).max()))
            if fmt == "topk":
                check_exact(f"sar {direction} top-{ktop} ids", g["topk/ids"][()], np.stack([t[0].numpy() for t in tks]))
                check(f"sar {direction} top-{ktop} logp", g["topk/logp"][()], np.stack([t[1].numpy() for t in tks]),
                      *TOL["topk_logp"])
                check(f"sar {direction} top-{ktop} tail", g["topk/tail"][()], np.stack([t[2].numpy() for t in tks]),
                      *TOL["topk_tail"])
                margins.extend((f"sar teacher top-{ktop} log-probs", t[3]) for t in tks)
    f.close()

    # ---- the orderings above are well-posed only with margins beyond float32 noise
    worst = {}
    for what, m in margins:
        worst[what] = min(worst.get(what, math.inf), m)
    for what, m in worst.items():
        expect(m > MIN_MARGIN, f"margin: {what}", f"smallest gap {m:.3e} (> {MIN_MARGIN:.0e})")

    if failures:
        print(f"kd_methods_check: {len(failures)} comparison(s) FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("kd_methods_check: all comparisons passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
