#!/usr/bin/env python3
"""Regenerates tests/fixtures/moe_tiny/reference.safetensors: PyTorch reference values for
kiln-model's sparse MoE layer (crates/kiln-model/src/moe/).

A tiny MoE MLP (C=8, H=16, E=4, N=6 token rows), fixed seed, in three cases:
  softmax_top2  -- softmax gates, top-2 renormalised (Mixtral), one shared expert
  sigmoid_top1  -- sigmoid gates, top-1 raw gate, selection-only bias (DeepSeek-V3)
  sigmoid_top2  -- sigmoid gates, top-2 renormalised, selection-only bias
Each runs with the Switch aux loss and the ST-MoE router z-loss, with coefficients larger
than the defaults so that their gradients are visible next to the gate path. The objective is
  loss = sum(y * dy) + aux + z
so `dy` is d loss / d y. The values are drawn in f32 and the reference computed in f64.

Tensors (f32), per case `<case>.`:
  x [N,C], dy [N,C], bias [E] (selection bias), y [N,C], aux [], z [], chosen [N,k],
  load [E], <name> for every parameter, grad.x and grad.<name> for every parameter,
  where <name> is mlp.gate.weight [E,C], mlp.experts.{e}.c_fc.weight [H,C], .c_fc.bias [H],
  .c_proj.weight [C,H], .c_proj.bias [C], then mlp.shared_experts.{s}.* (nn.Linear layout).
Metadata: "cases", a JSON object of each case's settings.

Definitions (as kiln's): scores s = softmax(u) or sigmoid(u), u = x @ Wr^T; choose top-k by
s + bias; gates g = s[chosen] (/ their sum when normalised); y = sum_j g_j MLP_j(x) + shared;
aux = alpha * E * sum_e f_e P_e, f_e = load_e / (N k), P_e = mean_n p[n, e] with p = s for
softmax and s / sum_e s for sigmoid; z = beta * mean_n logsumexp(u_n)^2; MLP = c_proj(gelu_tanh(c_fc)).

Run from the repository root:  python3 scripts/make_moe_fixtures.py
"""
import json
import os

import torch
import torch.nn.functional as F
from safetensors.torch import save_file

OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "tests", "fixtures", "moe_tiny")
C, H, E, N = 8, 16, 4, 6
CASES = {
    "softmax_top2": dict(gate="softmax", k=2, normalize=True, shared=1, bias=False, aux=0.3, z=0.05),
    "sigmoid_top1": dict(gate="sigmoid", k=1, normalize=False, shared=0, bias=True, aux=0.3, z=0.05),
    "sigmoid_top2": dict(gate="sigmoid", k=2, normalize=True, shared=0, bias=True, aux=0.3, z=0.05),
}


def param_names(shared):
    names = ["mlp.gate.weight"]
    for group, count in (("experts", E), ("shared_experts", shared)):
        for i in range(count):
            p = f"mlp.{group}.{i}"
            names += [f"{p}.c_fc.weight", f"{p}.c_fc.bias", f"{p}.c_proj.weight", f"{p}.c_proj.bias"]
    return names


def shape_of(name):
    if name.endswith("gate.weight"):
        return (E, C)
    return {"c_fc.weight": (H, C), "c_fc.bias": (H,), "c_proj.weight": (C, H), "c_proj.bias": (C,)}[
        ".".join(name.split(".")[-2:])
    ]


def draw(g, shape, std):
    return (std * torch.randn(shape, generator=g, dtype=torch.float32)).double()


def mlp(x, params, prefix):
    h = F.linear(x, params[f"{prefix}.c_fc.weight"], params[f"{prefix}.c_fc.bias"])
    return F.linear(F.gelu(h, approximate="tanh"), params[f"{prefix}.c_proj.weight"], params[f"{prefix}.c_proj.bias"])


def moe(x, params, bias, s):
    k = s["k"]
    logits = x @ params["mlp.gate.weight"].T
    scores = torch.softmax(logits, -1) if s["gate"] == "softmax" else torch.sigmoid(logits)
    # The choice is not differentiated (as torch.topk's indices are not).
    key = (scores + bias).detach()
    top = torch.topk(key, k + 1 if k < E else k, dim=-1)
    if k < E:
        margin = (top.values[:, k - 1] - top.values[:, k]).min().item()
        assert margin > 1e-3, f"selection too close to a tie ({margin}); change the seed"
    chosen = top.indices[:, :k]
    gates = scores.gather(1, chosen)
    if s["normalize"]:
        gates = gates / gates.sum(-1, keepdim=True)
    y = torch.zeros_like(x)
    for e in range(E):
        rows, slot = (chosen == e).nonzero(as_tuple=True)
        if len(rows) == 0:
            continue
        out = mlp(x[rows], params, f"mlp.experts.{e}")
        y = y.index_add(0, rows, gates[rows, slot].unsqueeze(1) * out)
    for i in range(s["shared"]):
        y = y + mlp(x, params, f"mlp.shared_experts.{i}")
    load = F.one_hot(chosen, E).sum((0, 1)).double()
    probs = scores if s["gate"] == "softmax" else scores / scores.sum(-1, keepdim=True)
    aux = s["aux"] * E * ((load / (N * k)) * probs.mean(0)).sum()
    z = s["z"] * (torch.logsumexp(logits, -1) ** 2).mean()
    return y, aux, z, chosen, load


def make_case(seed, s):
    g = torch.Generator().manual_seed(seed)
    names = param_names(s["shared"])
    params = {}
    for name in names:
        std = 0.6 if name.endswith("gate.weight") else (0.3 if name.endswith("weight") else 0.1)
        params[name] = draw(g, shape_of(name), std).requires_grad_(True)
    x = draw(g, (N, C), 1.0).requires_grad_(True)
    dy = draw(g, (N, C), 1.0)
    bias = draw(g, (E,), 0.05) if s["bias"] else torch.zeros(E, dtype=torch.float64)
    y, aux, z, chosen, load = moe(x, params, bias, s)
    loss = (y * dy).sum() + aux + z
    loss.backward()
    out = {"x": x, "dy": dy, "bias": bias, "y": y, "aux": aux, "z": z, "chosen": chosen, "load": load}
    out.update(params)
    out["grad.x"] = x.grad
    out.update({f"grad.{n}": p.grad for n, p in params.items()})
    return out


def main():
    os.makedirs(OUT, exist_ok=True)
    tensors = {}
    for i, (case, s) in enumerate(CASES.items()):
        for name, t in make_case(1000 + i, s).items():
            tensors[f"{case}.{name}"] = t.detach().to(torch.float32).contiguous()
    meta = {"format": "pt", "cases": json.dumps(dict(C=C, H=H, E=E, N=N, cases=CASES), sort_keys=True)}
    path = os.path.join(OUT, "reference.safetensors")
    save_file(tensors, path, metadata=meta)
    print(f"wrote {path}: {len(tensors)} tensors, {os.path.getsize(path)} bytes")


if __name__ == "__main__":
    main()
