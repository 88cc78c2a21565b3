#!/usr/bin/python3
"""The `mome bench` model in PyTorch, written the way a PyTorch user would write it, to measure against.

Same model, same step, same sizes as `mome bench` (docs/performance.md):
  student: GPT, pre-LayerNorm, learned positions, d_model 256, 4 layers, 4 heads, every FFN a top-1 MoE of
           4 experts (hidden 4 x d_model, GELU tanh), tied embedding/output head, Switch load-balancing loss 0.01;
           one step = forward, KD (alpha 0.5, T 2, forward KL at T scaled by T^2) + CE against fixed teacher
           logits, backward, AdamW;
  teacher: dense GPT, d_model 384, 6 layers, 6 heads, MLP 4 x d_model; inference only (torch.inference_mode).
Random tokens, vocabulary 4096, sequence length 256, batch 8. Prints the same key=value lines as `mome bench`.

Run with Debian's interpreter (it owns python3-torch):  /usr/bin/python3 bench/torch_reference.py --threads 2
"""
import argparse
import math
import resource
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Attention(nn.Module):
    def __init__(self, C, NH, T):
        super().__init__()
        self.NH = NH
        self.qkv = nn.Linear(C, 3 * C)
        self.proj = nn.Linear(C, C)
        self.register_buffer("mask", torch.tril(torch.ones(T, T, dtype=torch.bool)))

    def forward(self, x):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.qkv(x).split(C, dim=2)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(~self.mask[:T, :T], float("-inf"))
        att = F.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).contiguous().view(B, T, C)
        return self.proj(y)


class MLP(nn.Module):
    def __init__(self, C, Fh):
        super().__init__()
        self.fc = nn.Linear(C, Fh)
        self.proj = nn.Linear(Fh, C)

    def forward(self, x):
        return self.proj(F.gelu(self.fc(x), approximate="tanh"))


class MoE(nn.Module):
    """Top-1 Switch MoE without capacity (dropless): y = p_e(x) * expert_e(x), aux = E * sum_e f_e * P_e."""

    def __init__(self, C, Fh, E):
        super().__init__()
        self.E = E
        self.gate = nn.Linear(C, E, bias=False)
        self.experts = nn.ModuleList(MLP(C, Fh) for _ in range(E))
        self.aux = None

    def forward(self, x):
        B, T, C = x.shape
        xf = x.reshape(-1, C)
        probs = F.softmax(self.gate(xf), dim=-1)
        p, idx = probs.max(dim=-1)
        out = torch.zeros_like(xf)
        for e, expert in enumerate(self.experts):
            rows = (idx == e).nonzero(as_tuple=True)[0]
            if rows.numel():
                out.index_add_(0, rows, expert(xf[rows]) * p[rows, None])
        frac = torch.bincount(idx, minlength=self.E).to(xf.dtype) / xf.shape[0]
        self.aux = self.E * (frac * probs.mean(dim=0)).sum()
        return out.view(B, T, C)


class Block(nn.Module):
    def __init__(self, C, NH, T, Fh, E):
        super().__init__()
        self.ln1 = nn.LayerNorm(C)
        self.attn = Attention(C, NH, T)
        self.ln2 = nn.LayerNorm(C)
        self.ffn = MoE(C, Fh, E) if E > 0 else MLP(C, Fh)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.ffn(self.ln2(x))


class GPT(nn.Module):
    def __init__(self, V, T, C, L, NH, E):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(T, C)
        self.blocks = nn.ModuleList(Block(C, NH, T, 4 * C, E) for _ in range(L))
        self.ln_f = nn.LayerNorm(C)
        for name, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, std=0.02)
            elif name.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T))
        for b in self.blocks:
            x = b(x)
        return self.ln_f(x) @ self.wte.weight.t()

    def aux_loss(self):
        return sum(b.ffn.aux for b in self.blocks if isinstance(b.ffn, MoE))


def kd_loss(logits, teacher_logits, targets, alpha, temp):
    V = logits.shape[-1]
    s = logits.view(-1, V)
    t = teacher_logits.view(-1, V)
    ce = F.cross_entropy(s, targets.view(-1))
    kl = F.kl_div(F.log_softmax(s / temp, dim=-1), F.log_softmax(t / temp, dim=-1), log_target=True,
                  reduction="batchmean")
    return alpha * ce + (1 - alpha) * temp * temp * kl


def peak_rss_mb():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--threads", type=int, default=0, help="torch threads (default: all cores)")
    ap.add_argument("--steps", type=int, default=5, help="timed student steps / teacher forwards")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--what", choices=["both", "student", "teacher"], default="both")
    ap.add_argument("--vocab", type=int, default=4096)
    ap.add_argument("--seq-len", type=int, default=256)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--d-model", type=int, default=256)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--experts", type=int, default=4)
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args()
    if a.threads > 0:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    V, T, B = a.vocab, a.seq_len, a.batch
    base_rss = peak_rss_mb()

    idx = torch.randint(0, V, (B, T + 1))
    inputs, targets = idx[:, :-1].contiguous(), idx[:, 1:].contiguous()
    teacher = GPT(V, T, 384, 6, 6, 0)
    teacher.eval()
    with torch.inference_mode():
        teacher_logits = teacher(inputs)
    teacher_logits = teacher_logits.clone()  # a normal tensor, usable under autograd

    out = {}
    if a.what in ("both", "teacher"):
        with torch.inference_mode():
            for _ in range(a.warmup):
                teacher(inputs)
            t0 = time.perf_counter()
            for _ in range(a.steps):
                teacher(inputs)
            dt = (time.perf_counter() - t0) / a.steps
        out["teacher_infer_tok_s"] = B * T / dt
        out["teacher_forward_s"] = dt

    if a.what in ("both", "student"):
        student = GPT(V, T, a.d_model, a.layers, a.heads, a.experts)
        opt = torch.optim.AdamW(student.parameters(), lr=1e-4, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)

        def step():
            opt.zero_grad(set_to_none=True)
            logits = student(inputs)
            loss = kd_loss(logits, teacher_logits, targets, 0.5, 2.0)
            if a.experts > 0:
                loss = loss + 0.01 * student.aux_loss()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
            opt.step()
            return loss.item()

        for _ in range(a.warmup):
            step()
        t0 = time.perf_counter()
        for _ in range(a.steps):
            loss = step()
        dt = (time.perf_counter() - t0) / a.steps
        if not math.isfinite(loss):
            sys.exit("torch_reference: the loss is not finite")
        out["student_train_tok_s"] = B * T / dt
        out["student_step_s"] = dt

    line = " ".join(f"{k}={out[k]:.0f}" for k in ("student_train_tok_s", "teacher_infer_tok_s") if k in out)
    print(line)
    for k in ("student_step_s", "teacher_forward_s"):
        if k in out:
            print(f"{k}={out[k]:.4f}")
    print(f"threads={torch.get_num_threads()}")
    print(f"peak_rss_mb={peak_rss_mb():.1f}")
    print(f"baseline_rss_mb={base_rss:.1f}")


if __name__ == "__main__":
    main()
