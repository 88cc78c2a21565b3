#!/usr/bin/env python3
"""torch_check.py — recompute what tests/tools/gpt_dump wrote, with an independent PyTorch implementation.

Usage: /usr/bin/python3 torch_check.py DUMP.h5

The model is written here from torch.nn.functional ops (F.layer_norm, F.linear, F.gelu(approximate='tanh'),
an explicit causal softmax attention, F.cross_entropy) with the tied output head of GPT-2; the optimizer is
torch.optim.AdamW with two parameter groups (weight decay only on the tensors the dump marks decay=1),
torch.nn.utils.clip_grad_norm_ over all parameters, and the warmup + cosine schedule written out below.
Compared, each against a stated tolerance (|mome - torch| <= atol + rtol * |torch|, element-wise):
logits, loss, every parameter gradient, the 10 training losses, learning rates, gradient norms and the final
parameters. Max errors are printed per tensor; the exit status is 1 if any comparison fails.
"""
import math
import sys

import h5py
import numpy as np
import torch
import torch.nn.functional as F

from refcheck import check, failures

# (rtol, atol) per quantity, for float32 computed in two different orders.
TOL = {
    "logits": (1e-4, 1e-5),
    "loss": (1e-5, 1e-6),
    "grad": (1e-3, 1e-6),   # atol is multiplied by max|grad| of the tensor (tensors differ in scale)
    "train_loss": (1e-5, 1e-6),
    "lr": (1e-6, 0.0),
    "grad_norm": (1e-5, 0.0),
    "final_param": (1e-4, 1e-5),
}

SENSITIVE_REL = 1e-5

NAMES = ["wte", "wpe", "blocks/ln1_w", "blocks/ln1_b", "blocks/qkv_w", "blocks/qkv_b", "blocks/attn_proj_w",
         "blocks/attn_proj_b", "blocks/ln2_w", "blocks/ln2_b", "blocks/fc_w", "blocks/fc_b", "blocks/fc_proj_w",
         "blocks/fc_proj_b", "ln_f_w", "ln_f_b"]

def embed(P, idx):
    """Token plus position embeddings (B, T, C) of idx (B, T)."""
    return P["wte"][idx] + P["wpe"][:idx.shape[1]].unsqueeze(0)


def layer(P, l):
    """The weights of block l by leaf name (ln1_w, qkv_w, ...): layer l of every stacked blocks/<leaf> of P."""
    return {n[len("blocks/"):]: v[l] for n, v in P.items() if n.startswith("blocks/")}


def attention(x, W, NH):
    """x (B, T, C) plus the causal self-attention of a pre-LayerNorm block with weights W (ln1, qkv, attn_proj)."""
    B, T, C = x.shape
    hs = C // NH
    h = F.layer_norm(x, (C,), W["ln1_w"], W["ln1_b"], eps=1e-5)
    qkv = F.linear(h, W["qkv_w"], W["qkv_b"])
    q, k, v = (u.view(B, T, NH, hs).transpose(1, 2) for u in qkv.split(C, dim=-1))
    att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
    att = F.softmax(att.masked_fill(~torch.tril(torch.ones(T, T, dtype=torch.bool)), float("-inf")), dim=-1)
    return x + F.linear((att @ v).transpose(1, 2).reshape(B, T, C), W["attn_proj_w"], W["attn_proj_b"])


def block(x, W, NH):
    """A dense pre-LayerNorm GPT-2 block: attention, then x plus the GELU MLP (ln2, fc, fc_proj)."""
    x = attention(x, W, NH)
    h = F.layer_norm(x, (x.shape[-1],), W["ln2_w"], W["ln2_b"], eps=1e-5)
    h = F.gelu(F.linear(h, W["fc_w"], W["fc_b"]), approximate="tanh")
    return x + F.linear(h, W["fc_proj_w"], W["fc_proj_b"])


def head(P, x):
    """Logits of the tied head after the final LayerNorm."""
    x = F.layer_norm(x, (x.shape[-1],), P["ln_f_w"], P["ln_f_b"], eps=1e-5)
    return F.linear(x, P["wte"])


def gpt_forward(P, idx, cfg):
    """Logits (B, T, V) of the pre-LayerNorm GPT-2 with tied head."""
    V, Tm, L, NH, C, Fd = cfg
    x = embed(P, idx)
    for l in range(L):
        x = block(x, layer(P, l), NH)
    return head(P, x)


def lr_at(step, lr, min_lr, warmup, total):
    """Linear warmup from lr/warmup to lr, then cosine to min_lr at `total` (0-based step)."""
    if warmup > 0 and step < warmup:
        return lr * (step + 1) / warmup
    if step >= total:
        return min_lr
    ratio = (step - warmup) / (total - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def main():
    if len(sys.argv) != 2:
        print("usage: torch_check.py DUMP.h5", file=sys.stderr)
        return 2
    torch.manual_seed(0)
    with h5py.File(sys.argv[1], "r") as f:
        V, Tm, L, NH, C, Fd, B, T, nsteps = (int(x) for x in f["config"][...])
        lr, min_lr, warmup, total, beta1, beta2, eps, wd, clip = (float(x) for x in f["optim"][...])
        warmup, total = int(warmup), int(total)
        params0 = {n: np.array(f["params/" + n][...]) for n in NAMES}
        decay = {n: int(f["decay/" + n][0]) for n in NAMES}
        inputs = torch.from_numpy(np.array(f["inputs"][...]).astype(np.int64))
        targets = torch.from_numpy(np.array(f["targets"][...]).astype(np.int64))
        logits_c = np.array(f["logits"][...])
        loss_c = float(f["loss"][0])
        grads_c = {n: np.array(f["grads/" + n][...]) for n in NAMES}
        train_loss_c = np.array(f["train/loss"][...])
        train_lr_c = np.array(f["train/lr"][...])
        train_norm_c = np.array(f["train/grad_norm"][...])
        final_c = {n: np.array(f["final_params/" + n][...]) for n in NAMES}
    cfg = (V, Tm, L, NH, C, Fd)
    print(f"model V={V} T_max={Tm} L={L} NH={NH} C={C} F={Fd}; batch {B}x{T}; {nsteps} AdamW steps "
          f"(lr {lr:g}, min_lr {min_lr:g}, warmup {warmup}, total {total}, wd {wd:g}, clip {clip:g})")
    want_decay = {n: int(n == "wte" or n.endswith("_w") and n.split("/")[-1] in
                         ("qkv_w", "attn_proj_w", "fc_w", "fc_proj_w")) for n in NAMES}
    if decay != want_decay:
        print(f"decay flags differ from the GPT-2 convention: got {decay}, want {want_decay}  FAIL")
        failures.append("decay flags")

    P = {n: torch.tensor(params0[n], dtype=torch.float32, requires_grad=True) for n in NAMES}

    # ---- one forward/backward at the initial parameters ----
    logits = gpt_forward(P, inputs, cfg)
    loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
    loss.backward()
    rtol, atol = TOL["logits"]
    check("logits", logits_c, logits.detach().numpy(), rtol, atol)
    rtol, atol = TOL["loss"]
    check("loss", loss_c, loss.item(), rtol, atol)
    rtol, atol = TOL["grad"]
    for n in NAMES:
        ref = P[n].grad.numpy()
        check(f"grad {n}", grads_c[n], ref, rtol, atol * float(np.abs(ref).max()))

    # The key bias cannot change any softmax, so its true gradient is 0: mome's must vanish to rounding.
    gk = np.abs(grads_c["blocks/qkv_b"][:, C:2 * C]).max()
    gscale = np.abs(grads_c["blocks/qkv_b"]).max()
    check("grad key bias ~ 0 (relative to max|grad qkv_b|)", gk / gscale, 0.0, 0.0, 1e-6)

    # ---- training: AdamW with decay only on decay=1 tensors, clipping over all parameters ----
    P = {n: torch.tensor(params0[n], dtype=torch.float32, requires_grad=True) for n in NAMES}
    groups = [{"params": [P[n] for n in NAMES if decay[n]], "weight_decay": wd},
              {"params": [P[n] for n in NAMES if not decay[n]], "weight_decay": 0.0}]
    opt = torch.optim.AdamW(groups, lr=lr, betas=(beta1, beta2), eps=eps)
    losses, lrs, norms = [], [], []
    # smallest |grad| / max|grad of the tensor| seen by each element over the steps (see "Adam-sensitive" below)
    min_rel_grad = {n: np.full(params0[n].shape, np.inf) for n in NAMES}
    for step in range(nsteps):
        opt.zero_grad(set_to_none=True)
        logits = gpt_forward(P, inputs, cfg)
        loss = F.cross_entropy(logits.view(-1, V), targets.view(-1))
        loss.backward()
        for n in NAMES:
            g = np.abs(P[n].grad.numpy().astype(np.float64))
            min_rel_grad[n] = np.minimum(min_rel_grad[n], g / max(float(g.max()), 1e-30))
        norm = torch.nn.utils.clip_grad_norm_([P[n] for n in NAMES], clip)
        step_lr = lr_at(step, lr, min_lr, warmup, total)
        for g in opt.param_groups:
            g["lr"] = step_lr
        opt.step()
        losses.append(loss.item())
        lrs.append(step_lr)
        norms.append(float(norm))
    print("torch losses: " + " ".join(f"{x:.6f}" for x in losses))
    rtol, atol = TOL["train_loss"]
    check(f"train losses ({nsteps} steps)", train_loss_c, losses, rtol, atol)
    rtol, atol = TOL["lr"]
    check("learning rates", train_lr_c, lrs, rtol, atol)
    rtol, atol = TOL["grad_norm"]
    check("gradient norms (before clipping)", train_norm_c, norms, rtol, atol)
    # Adam-sensitive elements: where a gradient is within SENSITIVE_REL of zero (relative to the tensor's largest)
    # float32 rounding decides the sign of m / sqrt(v), so the update can differ by up to ~lr per step between
    # two correct implementations. The key bias (qkv_b[:, C:2C]) is such a case throughout: softmax is
    # invariant to it, its true gradient is exactly 0. Those elements are only held to the bound of Adam's
    # total movement, 2 * sum(lr); all others to the strict tolerance.
    rtol, atol = TOL["final_param"]
    bound = 2.0 * sum(lrs)
    for n in NAMES:
        ref = P[n].detach().numpy()
        sens = min_rel_grad[n] < SENSITIVE_REL
        check(f"final {n}", final_c[n][~sens], ref[~sens], rtol, atol)
        if sens.any():
            check(f"final {n} ({int(sens.sum())} Adam-sensitive)", final_c[n][sens], ref[sens], 0.0, bound)

    if failures:
        print(f"torch_check: {len(failures)} comparison(s) FAILED: {', '.join(failures)}", file=sys.stderr)
        return 1
    print("torch_check: all comparisons passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
