#!/usr/bin/env python3
"""PyTorch CPU peer of kiln's train-step benchmark (benches/benches/train.rs).

Same model as kiln (GPT-2: learned positions, pre-LayerNorm, GELU tanh, tied
embeddings, vocab padded like kiln), fp32, AdamW (betas 0.9/0.95, wd 0.1 on
2-D weights), global-norm clip 1.0, the same thread count. Times full steps
(forward + backward + clip + AdamW) after warm-up steps and prints one JSON
line: {"config", "batch", "seq", "threads", "step_s", "tokens_per_s",
"peak_rss_mib"}. With --save PATH it then writes a checkpoint the usual
PyTorch way (`torch.save` of the model's and the optimizer's state_dict)
and adds "peak_rss_after_save_mib" (issue 17's checkpoint-memory peer).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

PRESETS = {  # n_layer, n_embd, n_head
    "tiny": (2, 64, 4),
    "small": (6, 384, 6),
    "gpt2-124m": (12, 768, 12),
}


def padded_vocab(v):
    m = 128 if v >= 16384 else 64
    return (v + m - 1) // m * m


class Block(nn.Module):
    def __init__(self, c, nh):
        super().__init__()
        self.nh = nh
        self.ln_1 = nn.LayerNorm(c)
        self.c_attn = nn.Linear(c, 3 * c)
        self.c_proj = nn.Linear(c, c)
        self.ln_2 = nn.LayerNorm(c)
        self.c_fc = nn.Linear(c, 4 * c)
        self.c_proj2 = nn.Linear(4 * c, c)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.nh, c // self.nh).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.c_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.c_proj2(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))


class Gpt(nn.Module):
    def __init__(self, vocab, max_t, n_layer, c, nh):
        super().__init__()
        self.vocab = vocab
        self.wte = nn.Embedding(padded_vocab(vocab), c)
        self.wpe = nn.Embedding(max_t, c)
        self.h = nn.ModuleList(Block(c, nh) for _ in range(n_layer))
        self.ln_f = nn.LayerNorm(c)
        for p in self.parameters():
            if p.dim() == 2:
                nn.init.normal_(p, 0.0, 0.02)

    def forward(self, idx, targets):
        t = idx.shape[1]
        x = self.wte(idx) + self.wpe(torch.arange(t))
        for blk in self.h:
            x = blk(x)
        logits = self.ln_f(x) @ self.wte.weight[: self.vocab].t()
        return F.cross_entropy(logits.view(-1, self.vocab), targets.view(-1))


def adamw(model):
    """kiln's AdamW: betas 0.9/0.95, weight decay 0.1 on 2-D weights only."""
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    return torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=3e-4, betas=(0.9, 0.95), eps=1e-8, foreach=True,
    )


def peak_rss_mib():
    """VmHWM of this process (Linux). getrusage's ru_maxrss is inherited from
    the parent across fork+exec, so it would report the caller's peak."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024.0
    return float("nan")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default="small", choices=sorted(PRESETS))
    ap.add_argument("--vocab", type=int, default=8192)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--seq", type=int, default=256)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--precision", default="f32", choices=["f32", "bf16"],
                    help="bf16: torch.autocast(cpu, bfloat16) around forward (f32 weights)")
    ap.add_argument("--save", default=None, help="torch.save model + optimizer here at the end")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    n_layer, c, nh = PRESETS[a.config]
    model = Gpt(a.vocab, a.seq, n_layer, c, nh)
    opt = adamw(model)
    x = torch.randint(0, a.vocab, (a.batch, a.seq))
    y = torch.randint(0, a.vocab, (a.batch, a.seq))

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=a.precision == "bf16"):
            loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss.item()

    for _ in range(a.warmup):
        step()
    times = []
    for _ in range(a.steps):
        t0 = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t0)
    assert math.isfinite(loss)
    med = sorted(times)[len(times) // 2]
    out = {
        "config": a.config, "batch": a.batch, "seq": a.seq, "threads": a.threads,
        "precision": a.precision,
        "step_s": med, "tokens_per_s": a.batch * a.seq / med,
        "peak_rss_mib": peak_rss_mib(),
        "torch": torch.__version__,
    }
    if a.save:
        torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, a.save)
        out["peak_rss_after_save_mib"] = peak_rss_mib()
    print(json.dumps(out))


if __name__ == "__main__":
    main()
