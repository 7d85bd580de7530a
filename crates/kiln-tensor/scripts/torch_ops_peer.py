#!/usr/bin/env python3
"""PyTorch CPU peer for benches/benches/ops.rs: the same ops at the same
shapes (small config: B=8, T=256, C=384, NH=6, Vp=8192; fp32), median of
repeated timings, printed as one line per op. Usage:

    python3 crates/kiln-tensor/scripts/torch_ops_peer.py [THREADS]
"""
import sys
import time

import torch
import torch.nn.functional as F

threads = int(sys.argv[1]) if len(sys.argv) > 1 else torch.get_num_threads()
torch.set_num_threads(threads)
torch.manual_seed(0)
B, T, C, NH, VP = 8, 256, 384, 6, 8192
BT = B * T


def timeit(fn, reps=10):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    times.sort()
    return times[len(times) // 2]


def report(name, sec, flops=None):
    extra = f"  {flops / sec / 1e9:7.1f} GFLOP/s" if flops else ""
    print(f"torch {name:28s} {sec * 1e3:9.3f} ms{extra}")


print(f"torch {torch.__version__}, threads={threads}")
with torch.no_grad():
    for label, m, n, k, ta, tb in [
        ("small qkv fwd", BT, 3 * C, C, False, True),
        ("small fc fwd", BT, 4 * C, C, False, True),
        ("small fcproj fwd", BT, C, 4 * C, False, True),
        ("small lm_head fwd", BT, VP, C, False, True),
        ("small lm_head dinp", BT, C, VP, False, False),
        ("small lm_head dW", VP, C, BT, True, False),
        ("gpt2 1024x768x768", 1024, 768, 768, False, True),
        ("gpt2 1024x3072x768", 1024, 3072, 768, False, True),
    ]:
        a = torch.randn(k, m) if ta else torch.randn(m, k)
        b = torch.randn(n, k) if tb else torch.randn(k, n)
        a_op = a.t() if ta else a
        b_op = b.t() if tb else b
        out = torch.empty(m, n)
        report(f"matmul {label}", timeit(lambda: torch.matmul(a_op, b_op, out=out)), 2 * m * n * k)


def attention(qkv):
    q, k, v = qkv.split(C, dim=2)
    q = q.view(B, T, NH, C // NH).transpose(1, 2)
    k = k.view(B, T, NH, C // NH).transpose(1, 2)
    v = v.view(B, T, NH, C // NH).transpose(1, 2)
    att = (q @ k.transpose(-2, -1)) * (1.0 / (C // NH) ** 0.5)
    att = att.masked_fill(mask[:, :, :T, :T] == 0, float("-inf"))
    att = F.softmax(att, dim=-1)
    y = att @ v
    return y.transpose(1, 2).contiguous().view(B, T, C)


mask = torch.tril(torch.ones(T, T)).view(1, 1, T, T)
qkv = torch.randn(B, T, 3 * C, requires_grad=True)
dout = torch.randn(B, T, C)
with torch.no_grad():
    report("attention_forward (manual)", timeit(lambda: attention(qkv)))


def attn_bwd():
    y = attention(qkv)
    y.backward(dout)


report("attention fwd+bwd (manual)", timeit(attn_bwd))


def sdpa():
    q, k, v = qkv.split(C, dim=2)
    q, k, v = (x.view(B, T, NH, C // NH).transpose(1, 2) for x in (q, k, v))
    return F.scaled_dot_product_attention(q, k, v, is_causal=True)


with torch.no_grad():
    report("attention_forward (sdpa)", timeit(sdpa))
report("attention fwd+bwd (sdpa)", timeit(lambda: sdpa().backward(dout.view(B, T, NH, C // NH).transpose(1, 2))))

x = torch.randn(BT, C, requires_grad=True)
ln = torch.nn.LayerNorm(C)
g = torch.randn(BT, C)
with torch.no_grad():
    report("layernorm_forward", timeit(lambda: ln(x)))
y = ln(x)
report("layernorm_backward", timeit(lambda: torch.autograd.grad(y, [x, ln.weight, ln.bias], g, retain_graph=True)))

h = torch.randn(BT, 4 * C, requires_grad=True)
gh = torch.randn(BT, 4 * C)
with torch.no_grad():
    report("gelu_forward (tanh)", timeit(lambda: F.gelu(h, approximate="tanh")))
yh = F.gelu(h, approximate="tanh")
report("gelu_backward (tanh)", timeit(lambda: torch.autograd.grad(yh, h, gh, retain_graph=True)))

logits = torch.randn(BT, VP, requires_grad=True)
targets = torch.randint(0, VP, (BT,))
with torch.no_grad():
    report("crossentropy_forward", timeit(lambda: F.cross_entropy(logits, targets)))
loss = F.cross_entropy(logits, targets)
report("crossentropy_backward", timeit(lambda: torch.autograd.grad(loss, logits, retain_graph=True)))
