#!/usr/bin/env python3
"""Regenerates tests/fixtures/dpo/: PyTorch reference values for kiln-align's preference losses.

losses.json -- loss level. Random per-pair log-probs (summed over completion tokens) and
    completion lengths; for each variant (sigmoid, robust, ipo, hinge, simpo) the mean loss
    over the batch and d loss / d policy log-probs from torch autograd (float64), plus the
    logged rewards. The formulas follow TRL's DPOTrainer / CPOTrainer(simpo):
      Δ = (pc - rc) - (pr - rr)
      sigmoid: -logσ(βΔ)        robust: (-(1-ε)logσ(βΔ) + ε logσ(-βΔ)) / (1-2ε)
      hinge:   relu(1 - βΔ)     ipo: (Δ̄ - 1/(2β))², Δ̄ with every log-prob divided by its length
      simpo:   -logσ(β(pc/|c| - pr/|r|) - γ)   (no reference)

model.safetensors -- end to end on the tiny GPT-2 of tests/fixtures/gpt2_tiny (the policy).
    The reference is the same model with a few tensors perturbed (stored as ref.<name>).
    Two preference pairs of token ids (pair<i>.prompt / .chosen / .rejected, i64); summed
    completion log-probs of policy and reference (policy_logps / ref_logps [pairs, 2]:
    chosen, rejected); the DPO sigmoid loss at BETA and grad.<name> for a subset of the
    policy's parameters (HF layout; subset keeps the fixture small).

Run from the repository root:  python3 scripts/make_dpo_fixtures.py
"""
import json
import math
import os
import sys

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from transformers import GPT2LMHeadModel

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "tests", "fixtures", "dpo")
GPT2_TINY = os.path.join(ROOT, "tests", "fixtures", "gpt2_tiny", "model")

BETA = 0.5
LABEL_SMOOTHING = 0.2
SIMPO_GAMMA = 0.5
PERTURBED = ["transformer.ln_f.weight", "transformer.ln_f.bias", "transformer.h.1.mlp.c_proj.bias"]
GRADS = [
    "transformer.wte.weight",
    "transformer.wpe.weight",
    "transformer.h.0.ln_1.weight",
    "transformer.h.0.attn.c_attn.bias",
    "transformer.h.1.attn.c_attn.weight",
    "transformer.h.1.mlp.c_fc.bias",
    "transformer.h.1.mlp.c_proj.bias",
    "transformer.ln_f.weight",
    "transformer.ln_f.bias",
]
# (prompt length, chosen length, rejected length) per pair.
PAIRS = [(3, 4, 6), (5, 2, 3)]


def variant_loss(kind, pc, pr, rc, rr, lc, lr, beta):
    if kind == "ipo":
        d = (pc - rc) / lc - (pr - rr) / lr
        return (d - 1.0 / (2.0 * beta)) ** 2
    if kind == "simpo":
        return -F.logsigmoid(beta * (pc / lc - pr / lr) - SIMPO_GAMMA)
    z = beta * ((pc - rc) - (pr - rr))
    if kind == "sigmoid":
        return -F.logsigmoid(z)
    if kind == "robust":
        e = LABEL_SMOOTHING
        return (-(1 - e) * F.logsigmoid(z) + e * F.logsigmoid(-z)) / (1 - 2 * e)
    if kind == "hinge":
        return torch.relu(1 - z)
    raise ValueError(kind)


def loss_level():
    g = torch.Generator().manual_seed(11)
    n = 6
    pc = -30 * torch.rand(n, generator=g, dtype=torch.float64)
    pr = -30 * torch.rand(n, generator=g, dtype=torch.float64)
    rc = pc + torch.randn(n, generator=g, dtype=torch.float64)
    rr = pr + torch.randn(n, generator=g, dtype=torch.float64)
    lc = torch.randint(1, 12, (n,), generator=g).to(torch.float64)
    lr = torch.randint(1, 12, (n,), generator=g).to(torch.float64)
    out = {
        "beta": BETA,
        "label_smoothing": LABEL_SMOOTHING,
        "simpo_gamma": SIMPO_GAMMA,
        "policy_chosen": pc.tolist(),
        "policy_rejected": pr.tolist(),
        "ref_chosen": rc.tolist(),
        "ref_rejected": rr.tolist(),
        "chosen_len": [int(x) for x in lc],
        "rejected_len": [int(x) for x in lr],
        "variants": {},
    }
    for kind in ["sigmoid", "robust", "ipo", "hinge", "simpo"]:
        a = pc.clone().requires_grad_(True)
        b = pr.clone().requires_grad_(True)
        loss = variant_loss(kind, a, b, rc, rr, lc, lr, BETA).mean()
        loss.backward()
        if kind == "simpo":
            r_c, r_r = BETA * pc / lc, BETA * pr / lr
        else:
            r_c, r_r = BETA * (pc - rc), BETA * (pr - rr)
        out["variants"][kind] = {
            "loss": loss.item(),
            "grad_chosen": a.grad.tolist(),
            "grad_rejected": b.grad.tolist(),
            "rewards_chosen": r_c.mean().item(),
            "rewards_rejected": r_r.mean().item(),
            "rewards_margins": (r_c - r_r).mean().item(),
            "rewards_accuracies": (r_c > r_r).double().mean().item(),
        }
    return out


def completion_logp(model, prompt, completion):
    seq = torch.cat([prompt, completion]).unsqueeze(0)
    logits = model(input_ids=seq[:, :-1]).logits[0]
    logp = F.log_softmax(logits.float(), dim=-1)
    targets = seq[0, 1:]
    start = len(prompt) - 1  # the first target that is a completion token
    return logp[start:, :].gather(1, targets[start:].unsqueeze(1)).sum()


def end_to_end():
    policy = GPT2LMHeadModel.from_pretrained(GPT2_TINY).float().eval()
    reference = GPT2LMHeadModel.from_pretrained(GPT2_TINY).float().eval()
    vocab = policy.config.vocab_size
    g = torch.Generator().manual_seed(5)
    tensors = {}
    ref_params = dict(reference.named_parameters())
    with torch.no_grad():
        for name in PERTURBED:
            p = ref_params[name]
            p.add_(0.3 * torch.randn(p.shape, generator=g))
            tensors["ref." + name] = p.detach().clone().contiguous()
    pairs = []
    for i, (lp, lc, lr) in enumerate(PAIRS):
        prompt = torch.randint(0, vocab, (lp,), generator=g)
        chosen = torch.randint(0, vocab, (lc,), generator=g)
        rejected = torch.randint(0, vocab, (lr,), generator=g)
        tensors[f"pair{i}.prompt"] = prompt
        tensors[f"pair{i}.chosen"] = chosen
        tensors[f"pair{i}.rejected"] = rejected
        pairs.append((prompt, chosen, rejected))

    with torch.no_grad():
        ref = torch.stack(
            [torch.stack([completion_logp(reference, p, c), completion_logp(reference, p, r)])
             for p, c, r in pairs])
    policy.zero_grad()
    pol = torch.stack(
        [torch.stack([completion_logp(policy, p, c), completion_logp(policy, p, r)]) for p, c, r in pairs])
    delta = (pol[:, 0] - ref[:, 0]) - (pol[:, 1] - ref[:, 1])
    loss = -F.logsigmoid(BETA * delta).mean()
    loss.backward()
    tensors["policy_logps"] = pol.detach().contiguous()
    tensors["ref_logps"] = ref.contiguous()
    tensors["loss"] = loss.detach().reshape([]).contiguous()
    params = dict(policy.named_parameters())
    for name in GRADS:
        tensors["grad." + name] = params[name].grad.detach().clone().contiguous()
    return tensors, loss.item()


def main():
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    os.makedirs(OUT, exist_ok=True)
    with open(os.path.join(OUT, "losses.json"), "w") as f:
        json.dump(loss_level(), f, indent=1)
        f.write("\n")
    tensors, loss = end_to_end()
    save_file(tensors, os.path.join(OUT, "model.safetensors"),
              metadata={"generator": "scripts/make_dpo_fixtures.py", "torch": torch.__version__,
                        "beta": str(BETA), "loss_type": "sigmoid"})
    print(f"wrote {os.path.normpath(OUT)}: end-to-end DPO loss {loss:.6f} (ln 2 = {math.log(2):.6f})",
          file=sys.stderr)


if __name__ == "__main__":
    main()
